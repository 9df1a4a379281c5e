"""Validate and apply code edits proposed by an LLM (`ar_ray.code.answers` reads them from its answer); diffs.

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

from ar_ray.code.textlines import (
    fmt_lines,
    indent_of,
    is_crlf,
    join_lines,
    keepends,
    split_lines,
)

__all__ = [
    "EditError",
    "Edit",
    "apply_edits",
    "check_syntax",
    "unified_diff",
    "diff_stats",
]


_HUNK_RE = re.compile(r"^@@\s*(?:-(\d+)(?:,(\d+))?\s+\+(\d+)(?:,(\d+))?)?.*$")  # a unified diff hunk header


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
        iw, is_ = indent_of(w), indent_of(s)
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


CLOSEST_WINDOWS = 8  # windows compared character by character when a SEARCH block is not found
CLOSEST_CHARS = 4000  # characters of a window (and of the block) compared


def _closest(file_lines: list[str], search: list[str]) -> str:
    s = [x.strip() for x in search if x.strip()]
    if not s or not file_lines:
        return "the file is empty" if not file_lines else ""
    target = "\n".join(s)[:CLOSEST_CHARS]
    m = len(search)
    size = max(1, min(m, len(file_lines)))
    sm = difflib.SequenceMatcher(None, autojunk=False)
    sm.set_seq2(target)
    # ratio() is quadratic in the text's length: rank every window by quick_ratio() (an upper bound, linear)
    # and compare characters only for the few best (a 40-line block against train.py took minutes before)
    ranked = []
    for i in range(0, len(file_lines) - size + 1):
        sm.set_seq1("\n".join(x.strip() for x in file_lines[i : i + size] if x.strip())[:CLOSEST_CHARS])
        ranked.append((sm.quick_ratio(), -i))
    best, best_i = -1.0, 0
    for _, neg_i in sorted(ranked, reverse=True)[:CLOSEST_WINDOWS]:
        sm.set_seq1("\n".join(x.strip() for x in file_lines[-neg_i : -neg_i + size] if x.strip())[:CLOSEST_CHARS])
        if (r := sm.ratio()) > best:
            best, best_i = r, -neg_i
    window = file_lines[best_i : best_i + size]
    msg = (
        f"the closest lines are {best_i + 1}-{best_i + len(window)}:\n"
        f"{fmt_lines(window)}\n"
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
            if old is not None and is_crlf(old):
                new = join_lines(*split_lines(new), crlf=True)
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
    search, _ = split_lines(e.search)
    repl, _ = split_lines(e.replace)
    if old is None or not old.strip():
        if any(x.strip() for x in search):
            what = "does not exist" if old is None else "is empty"
            raise EditError(
                f"{label}: {e.path} {what}, so the SEARCH part must be empty; "
                "leave SEARCH empty to create the file with the REPLACE lines"
            )
        return join_lines(repl, True)
    crlf = is_crlf(old)
    lines, ends_nl = split_lines(old)
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
    return join_lines(lines, ends_nl, crlf)


def _parse_hunks(diff: str) -> list[tuple[int | None, list[str], list[str], str]]:
    """Hunks of a one-file diff as (1-based old start or None, old lines, new lines, header)."""
    hunks: list[tuple[int | None, list[str], list[str], str]] = []
    old: list[str] = []
    new: list[str] = []
    for line in split_lines(diff)[0]:
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
    crlf = bool(old) and is_crlf(old)
    lines, ends_nl = split_lines(old or "")
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
    return join_lines(lines, ends_nl, crlf)


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
            src_lines, _ = split_lines(src)
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
                keepends(a or ""),
                keepends(b or ""),
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
        al, bl = keepends(a or ""), keepends(b or "")
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, al, bl).get_opcodes():
            if tag != "equal":
                removed += i2 - i1
                added += j2 - j1
    return added, removed
