"""The identity of a piece of code: a hash equal for cosmetic variants (whitespace, CRLF, blank lines,
comments) and different for any real change. Duplicate detection and the noise pool key on it."""

from __future__ import annotations

import hashlib
import io
import tokenize

from ar_ray.code.textlines import split_lines


def _python_cuts(text: str) -> tuple[dict[int, int], set[int]] | None:
    """Via tokenize: {row: column where a comment starts}, rows ending inside a string."""
    cuts: dict[int, int] = {}
    protected: set[int] = set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                cuts[tok.start[0]] = tok.start[1]
            elif tok.start[0] != tok.end[0] and tok.type not in (tokenize.NL, tokenize.NEWLINE):
                protected.update(range(tok.start[0], tok.end[0]))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return cuts, protected


def _scan_cuts(text: str) -> tuple[dict[int, int], set[int]]:
    """Fallback comment finder for code tokenize rejects: tracks quotes by hand."""
    cuts: dict[int, int] = {}
    protected: set[int] = set()
    row, col, i, n = 1, 0, 0, len(text)
    quote: str | None = None
    while i < n:
        c = text[i]
        if c == "\n":
            if quote and len(quote) == 3:
                protected.add(row)
            elif quote:
                quote = None  # unterminated single-quoted string ends at the line
            row, col, i = row + 1, 0, i + 1
            continue
        if quote:
            if c == "\\":
                i += 2 if i + 1 < n and text[i + 1] != "\n" else 1
                col += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                col += len(quote)
                quote = None
                continue
        elif c == "#":
            cuts[row] = col
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote)
            col += len(quote)
            continue
        i += 1
        col += 1
    return cuts, protected


def _normalize_code(path: str, text: str) -> str:
    lines, _ = split_lines(text)
    cuts: dict[int, int] = {}
    protected: set[int] = set()
    if path.endswith(".py"):
        t = "\n".join(lines) + "\n"
        res = _python_cuts(t)
        cuts, protected = res if res is not None else _scan_cuts(t)
    out = []
    for row, line in enumerate(lines, 1):
        if row in protected:
            out.append(line)
            continue
        if row in cuts:
            line = line[: cuts[row]]
        line = line.rstrip()
        if line:
            out.append(line)
    return "\n".join(out)


def edit_hash(old: dict[str, str], new: dict[str, str]) -> str:
    """16-hex-char sha256 of the normalised content of the really-changed files in ``new``.

    Normalisation ignores CRLF, trailing whitespace, blank lines and (for ``.py``
    files) ``#`` comments, so cosmetic variants of the same change hash equal.
    """
    h = hashlib.sha256()
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        na = None if a is None else _normalize_code(path, a)
        nb = None if b is None else _normalize_code(path, b)
        if na == nb:
            continue
        h.update(path.encode() + b"\0")
        h.update(b"\x01<deleted>" if nb is None else nb.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def code_hash(files: dict[str, str]) -> str:
    """The hash of a complete set of editable files (every file counts as changed)."""
    return edit_hash({}, files)
