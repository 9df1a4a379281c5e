"""Read an LLM's answer into edits: SEARCH/REPLACE blocks, unified diffs, or whole files, whichever the
model wrote, with the file each edit is for. Errors (`EditError`) are written to be shown back to the model:
they say what was wrong and what to write instead. Applying the edits is `ar_ray.code.edits`.
"""

from __future__ import annotations

import re

from ar_ray.code.edits import Edit, EditError
from ar_ray.code.textlines import split_lines

# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

_SEARCH_RE = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
_DIVIDER_RE = re.compile(r"^\s*={5,9}\s*$")
_REPLACE_RE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`]*?)\s*$")
_NEW_FILE_EXT = {
    "py", "txt", "md", "json", "yaml", "yml", "toml", "cfg", "ini", "sh", "csv", "rst",
}
_WHOLE_FILE_LANGS = {"", "python", "py", "python3", "text", "txt"}
_FORMAT_HELP = (
    "Answer with SEARCH/REPLACE blocks: the file path on its own line, then\n"
    "<<<<<<< SEARCH\n(exact lines copied from the current file)\n=======\n"
    "(the new lines)\n>>>>>>> REPLACE\n"
    "or with a unified diff (---/+++/@@ hunks), or with the complete new file "
    "in a fenced code block preceded by its path."
)

_NOT_FOUND = "no SEARCH/REPLACE block, unified diff or whole file found in the answer"


def short_reason(error: str) -> str:
    """The reason in a failed proposal's error, for one line of a table: the first line, without the answer
    format's help text and the generic lead-ins ("no usable edit after 3 tries; last problem: ...")."""
    text = (error or "").split(_FORMAT_HELP.split("\n")[0])[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line, tries = lines[0], ""
    m = re.match(r"no usable edit after (\d+ tr(?:y|ies))\b.*?; last problem: (.*)$", line)
    if m:
        line, tries = m.group(2), f" ({m.group(1)})"
    if line.startswith(_NOT_FOUND + " ("):  # the parenthesis says why nothing was found
        inner, _, rest = line[len(_NOT_FOUND) + 2 :].rpartition(")")
        line = inner + rest.rstrip(". ")
    return line.strip().rstrip(".") + tries


def _norm_path_token(s: str) -> str:
    s = s.strip()
    s = re.sub(r"^(?:#+|>+|[-*+]\s)\s*", "", s)  # markdown heading / quote / bullet
    s = s.strip().strip("*_`\"'").strip()
    s = re.sub(r"^(?:file(?:name)?|path)\s*[:=]\s*", "", s, flags=re.IGNORECASE)
    s = s.strip().strip("*_`\"'").strip().rstrip(":").strip().strip("*_`\"'").strip()
    if s.startswith("./"):
        s = s[2:]
    return s


def _resolve_path(s: str, known: list[str]) -> str | None:
    """Map a path-like token to a known file, or accept it as a new file path."""
    if not s or any(c.isspace() for c in s):
        return None
    if s in known:
        return s
    if s[:2] in ("a/", "b/") and s[2:] in known:
        return s[2:]
    tail = [k for k in known if k.endswith("/" + s) or s.endswith("/" + k)]
    if len(tail) == 1:
        return tail[0]
    m = re.fullmatch(r"(?:[\w.-]+/)*[\w-][\w.-]*\.(\w+)", s)
    if m and m.group(1).lower() in _NEW_FILE_EXT and not s.startswith("/"):
        return s
    return None


def _path_line(line: str, known: list[str]) -> str | None:
    """The path if ``line`` consists of nothing but a file path (possibly decorated)."""
    return _resolve_path(_norm_path_token(line), known)


def _mentioned(line: str, known: list[str]) -> str | None:
    """The single known file named inside a prose line, if exactly one is."""
    hits = []
    for k in known:
        if re.search(r"(?<![\w./-])" + re.escape(k) + r"(?![\w/-]|\.\w)", line):
            hits.append(k)
    hits = [h for h in hits if not any(h != o and o.endswith("/" + h) for o in hits)]
    return hits[0] if len(hits) == 1 else None


def _fence_info_path(info: str, known: list[str]) -> str | None:
    for tok in re.split(r"[\s:]+|title=", info):
        tok = tok.strip("\"'")
        if tok and tok.lower() not in _WHOLE_FILE_LANGS and tok.lower() not in ("diff", "patch"):
            p = _resolve_path(_norm_path_token(tok), known)
            if p:
                return p
    return None


def _find_path_before(lines: list[str], start: int, stop: int, known: list[str]) -> str | None:
    """Look backwards from ``start`` (exclusive) to ``stop`` for the block's file path."""
    mention = None
    for i in range(start - 1, stop - 1, -1):
        line = lines[i]
        if not line.strip():
            continue
        fm = _FENCE_RE.match(line)
        if fm:
            p = _fence_info_path(fm.group(2), known)
            if p:
                return p
            continue
        p = _path_line(line, known)
        if p:
            return p
        if mention is None:
            mention = _mentioned(line, known)
    return mention


def parse_answer(
    text: str, files: dict[str, str], editable: set[str] | None = None
) -> list[Edit]:
    """Turn an LLM answer into a list of :class:`Edit` (format auto-detected).

    ``editable`` (optional) narrows the set of files a path-less block may refer
    to; by default every file in ``files`` counts.
    """
    if not isinstance(text, str) or not text.strip():
        raise EditError(
            "no SEARCH/REPLACE block, unified diff or whole file found in the answer "
            "(the answer is empty). " + _FORMAT_HELP
        )
    lines = text.replace("\r\n", "\n").split("\n")
    known = sorted(set(files) | set(editable or ()))
    candidates = sorted(editable) if editable is not None else sorted(files)
    default = candidates[0] if len(candidates) == 1 else None

    if any(_SEARCH_RE.match(l) for l in lines):
        return _parse_search_replace(lines, known, default)
    if any(l.startswith("@@") for l in lines):
        edits = _parse_unified(lines, known, default)
        if edits:
            return edits
    edits, why = _parse_whole(lines, files, known, default)
    if edits:
        return edits
    msg = _NOT_FOUND
    if why:
        msg += f" ({why})"
    raise EditError(msg + ". " + _FORMAT_HELP)


def _parse_search_replace(lines: list[str], known: list[str], default: str | None) -> list[Edit]:
    edits: list[Edit] = []
    i, n, boundary, last_path, block = 0, len(lines), 0, None, 0
    while i < n:
        if not _SEARCH_RE.match(lines[i]):
            i += 1
            continue
        block += 1
        path = _find_path_before(lines, i, boundary, known) or last_path or default
        if path is None:
            raise EditError(
                f"SEARCH block {block} has no file path; put the file path "
                f"(one of: {', '.join(known)}) on its own line right before the block"
            )
        j = i + 1
        search: list[str] = []
        while j < n and not _DIVIDER_RE.match(lines[j]):
            if _SEARCH_RE.match(lines[j]) or _REPLACE_RE.match(lines[j]):
                raise EditError(
                    f"SEARCH block {block} for {path} has no ======= line between "
                    "the SEARCH and REPLACE parts; each block must be "
                    "<<<<<<< SEARCH / old lines / ======= / new lines / >>>>>>> REPLACE"
                )
            search.append(lines[j])
            j += 1
        if j >= n:
            raise EditError(
                f"SEARCH block {block} for {path} is missing its ======= line and "
                ">>>>>>> REPLACE line; finish every block with both"
            )
        j += 1
        replace: list[str] = []
        while j < n and not _REPLACE_RE.match(lines[j]):
            if _SEARCH_RE.match(lines[j]):
                break
            replace.append(lines[j])
            j += 1
        if j >= n or not _REPLACE_RE.match(lines[j]):
            raise EditError(
                f"SEARCH block {block} for {path} is missing its closing "
                ">>>>>>> REPLACE line; end every block with it"
            )
        edits.append(
            Edit(
                path=path,
                kind="replace",
                search="\n".join(search) + "\n" if search else "",
                replace="\n".join(replace) + "\n" if replace else "",
            )
        )
        last_path = path
        boundary = j + 1
        i = j + 1
    return edits


def _diff_header_path(line: str) -> str:
    p = line[4:].split("\t")[0].strip()
    if p != "/dev/null" and p[:2] in ("a/", "b/"):
        p = p[2:]
    return p


def _closes_hunk(lines: list[str], i: int) -> bool:
    """Whether lines[i] is a fence that ends the hunk it is in.

    A fence at column 0 does. An indented one (" ```") is a context line, a docstring's or Markdown's fence,
    unless no hunk line follows it (then it closes the answer's fence, and is at most trailing context)."""
    if not _FENCE_RE.match(lines[i]):
        return False
    if lines[i][:1] in ("`", "~"):
        return True
    for line in lines[i + 1 :]:
        if line.strip():
            return not line.startswith((" ", "+", "-", "\\", "@@"))
    return True


def _parse_unified(lines: list[str], known: list[str], default: str | None) -> list[Edit]:
    sections: list[tuple[str, list[str]]] = []  # (path, hunk text lines)
    path: str | None = None
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        if line.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
            old_p, new_p = _diff_header_path(line), _diff_header_path(lines[i + 1])
            if new_p == "/dev/null":
                raise EditError(
                    f"the diff deletes {old_p}; deleting files is not supported, "
                    "edit the file instead"
                )
            path = _resolve_path(_norm_path_token(new_p), known) or new_p
            sections.append((path, []))
            i += 2
            continue
        if line.startswith("@@"):
            if path is None:
                if default is None:
                    raise EditError(
                        "the unified diff has a @@ hunk without ---/+++ file header lines; "
                        f"start the diff for each file with '--- a/PATH' and '+++ b/PATH' "
                        f"(files: {', '.join(known)})"
                    )
                path = default
                sections.append((path, []))
            body = [line]
            i += 1
            while i < n:
                l = lines[i]
                if l.startswith(("@@", "diff --git")) or _closes_hunk(lines, i):
                    break
                if l.startswith("--- ") and i + 1 < n and lines[i + 1].startswith("+++ "):
                    break
                if l and l[0] not in " +-\\":
                    break
                body.append(l)
                i += 1
            while len(body) > 1 and body[-1] == "":
                body.pop()
            sections[-1][1].extend(body)
            continue
        i += 1
    edits = []
    for p, body in sections:
        if not body:
            continue
        content = f"--- a/{p}\n+++ b/{p}\n" + "\n".join(body) + "\n"
        edits.append(Edit(path=p, kind="diff", content=content))
    return edits


def _parse_whole(
    lines: list[str], files: dict[str, str], known: list[str], default: str | None
) -> tuple[list[Edit], str]:
    blocks: list[tuple[str | None, str, list[str]]] = []  # (explicit path, lang, body)
    i, n, boundary = 0, len(lines), 0
    while i < n:
        m = _FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group(1), m.group(2)
        j = i + 1
        while j < n:
            c = lines[j].strip()
            if c.startswith(fence[0] * len(fence)) and not c.strip(fence[0]):
                break
            j += 1
        body = lines[i + 1 : j]
        lang = info.split()[0].lower() if info.split() else ""
        path = _fence_info_path(info, known) or _find_path_before(lines, i, boundary, known)
        blocks.append((path, lang, body))
        boundary = j + 1
        i = j + 1

    chosen: dict[str, list[str]] = {}
    why = ""
    for path, lang, body in blocks:
        if lang in ("diff", "patch"):
            continue
        target = path or (default if lang in _WHOLE_FILE_LANGS else None)
        if target is None:
            continue
        old_lines, _ = split_lines(files.get(target, ""))
        if path is None and not _keeps_most_of(old_lines, body):
            # a bare block with no path (prose, a note, a snippet) is not a new file: a real model's
            # "I am ready.\n```\n# Refining this\n```" replaced a whole train.py with two comment lines
            why = (
                f"a code block of {len(body)} line(s) has no file path before it and is not a complete "
                f"copy of {target}; a whole file must be preceded by its path on its own line "
                f"(one of: {', '.join(known)}), and a change to part of a file is a SEARCH/REPLACE block"
            )
            continue
        if len(old_lines) >= 20 and len(body) < len(old_lines) // 2:
            why = (
                f"a code block for {target} has {len(body)} lines but the file has "
                f"{len(old_lines)}, so it looks like a fragment, not the complete file"
            )
            continue
        chosen[target] = body  # the last complete block for a path wins
    edits = [
        Edit(path=p, kind="whole", content="\n".join(b) + "\n" if b else "")
        for p, b in chosen.items()
    ]
    return edits, why


def _keeps_most_of(old_lines: list[str], body: list[str]) -> bool:
    """Whether a path-less block reads as the whole file rewritten: it keeps at least half of the file's
    non-blank lines (compared stripped)."""
    old = [l.strip() for l in old_lines if l.strip()]
    if not old:
        return False
    have = {l.strip() for l in body if l.strip()}
    return sum(l in have for l in old) * 2 >= len(old)
