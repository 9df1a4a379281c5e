"""Parse, validate and apply code edits proposed by an LLM; diffs, hashes, merges.

Files are represented as ``dict[str, str]`` mapping a relative path to the
file's full text.  Everything here is pure standard-library Python.

Error messages (:class:`EditError`) are written to be shown back to the LLM
that produced the answer: they say what was wrong and what to do about it.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass

__all__ = [
    "EditError",
    "Edit",
    "parse_answer",
    "apply_edits",
    "check_syntax",
    "unified_diff",
    "diff_stats",
]


class EditError(ValueError):
    """An edit could not be parsed or applied; the message explains how to fix it."""


@dataclass(frozen=True)
class Edit:
    path: str
    kind: str  # "replace" | "diff" | "whole"
    search: str = ""  # for kind "replace"
    replace: str = ""  # for kind "replace"
    content: str = ""  # whole-file text (kind "whole") or the diff text (kind "diff")


# ---------------------------------------------------------------------------
# line helpers
# ---------------------------------------------------------------------------


def _split(text: str) -> tuple[list[str], bool]:
    """LF-normalise ``text`` and split into lines (no terminators) + 'ends with newline'."""
    t = text.replace("\r\n", "\n")
    if not t:
        return [], True
    ends_nl = t.endswith("\n")
    lines = t.split("\n")
    if ends_nl:
        lines.pop()
    return lines, ends_nl


def _join(lines: list[str], ends_nl: bool, crlf: bool = False) -> str:
    if not lines:
        return ""
    text = "\n".join(lines) + ("\n" if ends_nl else "")
    if crlf:
        text = text.replace("\n", "\r\n")
    return text


def _is_crlf(text: str) -> bool:
    n_crlf = text.count("\r\n")
    return n_crlf > 0 and n_crlf * 2 >= text.count("\n")


def _keepends(text: str) -> list[str]:
    """Split keeping line terminators; only '\\n' ends a line (unlike str.splitlines)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _fmt_lines(lines: list[str], limit: int = 30) -> str:
    shown = lines[:limit]
    body = "\n".join(shown)
    if len(lines) > limit:
        body += f"\n... ({len(lines) - limit} more lines)"
    return body


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

_SEARCH_RE = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
_DIVIDER_RE = re.compile(r"^\s*={5,9}\s*$")
_REPLACE_RE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
_FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`]*?)\s*$")
_HUNK_RE = re.compile(r"^@@\s*(?:-(\d+)(?:,(\d+))?\s+\+(\d+)(?:,(\d+))?)?.*$")
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
    msg = "no SEARCH/REPLACE block, unified diff or whole file found in the answer"
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
                if l.startswith("@@") or _FENCE_RE.match(l) or l.startswith("diff --git"):
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
        old_lines, _ = _split(files.get(target, ""))
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


# ---------------------------------------------------------------------------
# tolerant matching
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    start: int  # first matched file line (0-based)
    length: int  # number of file lines covered
    add: str = ""  # indentation to add to replacement lines
    remove: str = ""  # indentation to remove from replacement lines
    lead: int = 0  # blank lines trimmed from the start of search
    trail: int = 0  # blank lines trimmed from the end of search


def _eq_windows(file_lines: list[str], search: list[str], key) -> list[int]:
    m = len(search)
    if m == 0 or m > len(file_lines):
        return []
    s = [key(x) for x in search]
    f = [key(x) for x in file_lines]
    return [i for i in range(len(f) - m + 1) if f[i : i + m] == s]


def _drift(window: list[str], search: list[str]) -> tuple[str, str] | None:
    """If ``window`` equals ``search`` up to a uniform indentation delta, return (add, remove)."""
    delta: tuple[str, str] | None = None
    for w, s in zip(window, search):
        w, s = w.rstrip(), s.rstrip()
        if not w and not s:
            continue
        if not w or not s or w.lstrip() != s.lstrip():
            return None
        iw, is_ = _indent(w), _indent(s)
        if len(iw) >= len(is_) and iw.endswith(is_):
            d = (iw[: len(iw) - len(is_)], "")
        elif is_.endswith(iw):
            d = ("", is_[: len(is_) - len(iw)])
        else:
            return None
        if delta is None:
            delta = d
        elif d != delta:
            return None
    if delta is None or delta == ("", ""):
        return None
    return delta


def _find(file_lines: list[str], search: list[str]) -> list[_Match]:
    """Matches of ``search`` in ``file_lines`` at the first tolerance level that has any."""
    lead = 0
    while lead < len(search) and not search[lead].strip():
        lead += 1
    trail = 0
    while trail < len(search) - lead and not search[len(search) - 1 - trail].strip():
        trail += 1
    variants = [(search, 0, 0)]
    if lead or trail:
        variants.append((search[lead : len(search) - trail], lead, trail))
    for s, ld, tr in variants:
        if not s:
            continue
        m = len(s)
        for key in (lambda x: x, str.rstrip):
            hits = _eq_windows(file_lines, s, key)
            if hits:
                return [_Match(h, m, lead=ld, trail=tr) for h in hits]
        stripped = _eq_windows(file_lines, s, str.strip)
        out = []
        for h in stripped:
            d = _drift(file_lines[h : h + m], s)
            if d:
                out.append(_Match(h, m, add=d[0], remove=d[1], lead=ld, trail=tr))
        if out:
            return out
    return []


def _adapt_replacement(repl: list[str], m: _Match) -> list[str]:
    r = list(repl)
    # drop the blank lines that were trimmed from the search, if the replacement has them too
    for _ in range(m.lead):
        if r and not r[0].strip():
            r.pop(0)
    for _ in range(m.trail):
        if r and not r[-1].strip():
            r.pop()
    if m.add:
        r = [m.add + x if x.strip() else x for x in r]
    elif m.remove:
        r = [x[len(m.remove):] if x.startswith(m.remove) else x.lstrip() if x.strip() else x for x in r]
    return r


def _closest(file_lines: list[str], search: list[str]) -> str:
    s = [x.strip() for x in search if x.strip()]
    if not s or not file_lines:
        return "the file is empty" if not file_lines else ""
    target = "\n".join(s)
    m = len(search)
    size = max(1, min(m, len(file_lines)))
    best, best_i = -1.0, 0
    sm = difflib.SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    for i in range(0, len(file_lines) - size + 1):
        sm.set_seq1("\n".join(x.strip() for x in file_lines[i : i + size] if x.strip()))
        if sm.real_quick_ratio() <= best or sm.quick_ratio() <= best:
            continue
        r = sm.ratio()
        if r > best:
            best, best_i = r, i
    window = file_lines[best_i : best_i + size]
    msg = (
        f"the closest lines are {best_i + 1}-{best_i + len(window)}:\n"
        f"{_fmt_lines(window)}\n"
    )
    for k, (w, q) in enumerate(zip(window, search)):
        if w.rstrip() != q.rstrip():
            msg += (
                f"(your line {k + 1} {q.strip()!r} differs from file line "
                f"{best_i + k + 1} {w.strip()!r})\n"
            )
            break
    return msg


def _ranges(matches: list[_Match]) -> str:
    shown = ", ".join(
        f"{m.start + 1}" if m.length == 1 else f"{m.start + 1}-{m.start + m.length}"
        for m in matches[:6]
    )
    return shown + (", ..." if len(matches) > 6 else "")


# ---------------------------------------------------------------------------
# applying edits
# ---------------------------------------------------------------------------


def apply_edits(files: dict[str, str], edits: list[Edit], editable: set[str]) -> dict[str, str]:
    """Apply ``edits`` to a copy of ``files``; return the full new file dict."""
    out = dict(files)
    editable = set(editable)
    for idx, e in enumerate(edits, 1):
        if e.path not in editable:
            state = "is read-only" if e.path in files else "is not an editable file"
            raise EditError(
                f"{e.path} {state}; you may only edit: {', '.join(sorted(editable)) or '(nothing)'}"
            )
        old = out.get(e.path)
        if e.kind == "replace":
            new = _apply_replace(old, e, idx)
        elif e.kind == "diff":
            new = _apply_diff(old, e)
        elif e.kind == "whole":
            new = e.content
            if old is not None and _is_crlf(old):
                new = _join(*_split(new), crlf=True)
        else:
            raise EditError(f"unknown edit kind {e.kind!r} for {e.path}")
        if new == old:
            raise EditError(
                f"the edit leaves the file unchanged (edit {idx}, {e.path}); "
                "make a real change to the code"
            )
        out[e.path] = new
    if out == files:
        raise EditError("the edit leaves the file unchanged; make a real change to the code")
    return out


def _apply_replace(old: str | None, e: Edit, idx: int) -> str:
    label = f"SEARCH block {idx} for {e.path}"
    search, _ = _split(e.search)
    repl, _ = _split(e.replace)
    if old is None or not old.strip():
        if any(x.strip() for x in search):
            what = "does not exist" if old is None else "is empty"
            raise EditError(
                f"{label}: {e.path} {what}, so the SEARCH part must be empty; "
                "leave SEARCH empty to create the file with the REPLACE lines"
            )
        return _join(repl, True)
    crlf = _is_crlf(old)
    lines, ends_nl = _split(old)
    if not any(x.strip() for x in search):
        raise EditError(
            f"{label} has an empty SEARCH part but {e.path} is not empty; copy the "
            "lines you want to change (or the lines next to where new code goes) into SEARCH"
        )
    matches = _find(lines, search)
    if not matches:
        raise EditError(
            f"{label} did not match any lines; "
            + _closest(lines, search)
            + "copy the lines exactly from the current file"
            + (" (earlier blocks have already been applied)" if idx > 1 else "")
        )
    if len(matches) > 1:
        raise EditError(
            f"{label} matches {len(matches)} places (lines {_ranges(matches)}); "
            "add more surrounding lines to SEARCH so that it matches exactly one place"
        )
    m = matches[0]
    lines[m.start : m.start + m.length] = _adapt_replacement(repl, m)
    return _join(lines, ends_nl, crlf)


def _parse_hunks(diff: str) -> list[tuple[int | None, list[str], list[str], str]]:
    """Hunks of a one-file diff as (1-based old start or None, old lines, new lines, header)."""
    hunks: list[tuple[int | None, list[str], list[str], str]] = []
    old: list[str] = []
    new: list[str] = []
    for line in _split(diff)[0]:
        if line.startswith("@@"):
            m = _HUNK_RE.match(line)
            start = int(m.group(1)) if m and m.group(1) else None
            if start is not None and m.group(2) == "0":
                start += 1  # "-N,0" means "insert after line N"
            old, new = [], []
            hunks.append((start, old, new, line.strip()))
            continue
        if not hunks or line.startswith("\\"):
            continue  # file headers before the first hunk; "\ No newline at end of file"
        tag, body = (line[0], line[1:]) if line else (" ", "")
        if tag == " ":
            old.append(body)
            new.append(body)
        elif tag == "-":
            old.append(body)
        elif tag == "+":
            new.append(body)
    return hunks


def _apply_diff(old: str | None, e: Edit) -> str:
    hunks = _parse_hunks(e.content)
    if not hunks:
        raise EditError(f"the diff for {e.path} has no @@ hunks; add at least one hunk")
    crlf = bool(old) and _is_crlf(old)
    lines, ends_nl = _split(old or "")
    offset = 0
    for h, (start, old_l, new_l, header) in enumerate(hunks, 1):
        label = f"hunk {h} ({header}) of the diff for {e.path}"
        hint = None if start is None else max(0, start - 1 + offset)
        if not any(x.strip() for x in old_l):
            if lines and any(x.strip() for x in lines):
                if hint is None:
                    raise EditError(
                        f"{label} has no context or removed lines, so its position is unknown; "
                        "include 3 unchanged lines around the change"
                    )
                pos = min(hint, len(lines))
                lines[pos:pos] = new_l
                offset += len(new_l)
            else:
                lines = list(new_l)
            continue
        matches = _find(lines, old_l)
        if not matches:
            raise EditError(
                f"{label} did not match any lines; "
                + _closest(lines, old_l)
                + "copy the context and '-' lines exactly from the current file"
            )
        if hint is not None:
            matches.sort(key=lambda m: abs(m.start - m.lead - hint))
        elif len(matches) > 1:
            raise EditError(
                f"{label} matches {len(matches)} places (lines {_ranges(matches)}); "
                "add more context lines or correct @@ line numbers"
            )
        m = matches[0]
        repl = _adapt_replacement(new_l, m)
        lines[m.start : m.start + m.length] = repl
        if start is None:
            offset += len(repl) - m.length
        else:  # where later hunks should be, given where this one really was
            offset = (m.start - m.lead) - (start - 1) + len(repl) - m.length
    return _join(lines, ends_nl, crlf)


# ---------------------------------------------------------------------------
# syntax check
# ---------------------------------------------------------------------------


def check_syntax(files: dict[str, str]) -> None:
    """compile() every ``*.py`` file; raise EditError describing each syntax error."""
    problems = []
    for path in sorted(files):
        if not path.endswith(".py"):
            continue
        src = files[path]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(src, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            lineno = exc.lineno or 0
            src_lines, _ = _split(src)
            text = src_lines[lineno - 1] if 0 < lineno <= len(src_lines) else (exc.text or "")
            text = text.rstrip("\n")
            msg = f"{path} line {lineno}: {type(exc).__name__}: {exc.msg}"
            if text.strip():
                msg += f"\n    {text}"
                if exc.offset and exc.offset > 0 and exc.text:
                    msg += "\n    " + " " * (min(exc.offset, len(text) + 1) - 1) + "^"
            problems.append(msg)
        except ValueError as exc:  # e.g. null bytes
            problems.append(f"{path}: {exc}")
    if problems:
        raise EditError(
            "the edited code does not compile:\n" + "\n".join(problems) + "\nfix the syntax and resend"
        )


# ---------------------------------------------------------------------------
# diffs and stats
# ---------------------------------------------------------------------------


def unified_diff(old: dict[str, str], new: dict[str, str]) -> str:
    """git-style unified diff (a/ b/ prefixes, 3 lines of context); "" when identical."""
    out: list[str] = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        out.append(f"diff --git a/{path} b/{path}\n")
        if a is None:
            out.append("new file mode 100644\n")
        elif b is None:
            out.append("deleted file mode 100644\n")
        body = list(
            difflib.unified_diff(
                _keepends(a or ""),
                _keepends(b or ""),
                fromfile="/dev/null" if a is None else f"a/{path}",
                tofile="/dev/null" if b is None else f"b/{path}",
                n=3,
            )
        )
        for line in body:
            out.append(line)
            if not line.endswith("\n"):
                out.append("\n\\ No newline at end of file\n")
    return "".join(out)


def diff_stats(old: dict[str, str], new: dict[str, str]) -> tuple[int, int]:
    """(lines added, lines removed) over all files, consistent with :func:`unified_diff`."""
    added = removed = 0
    for path in set(old) | set(new):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        al, bl = _keepends(a or ""), _keepends(b or "")
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, al, bl).get_opcodes():
            if tag != "equal":
                removed += i2 - i1
                added += j2 - j1
    return added, removed
