"""Line handling shared by edits, merges and code hashes: split and join text without losing its line
endings, and show a few lines in an error message."""

from __future__ import annotations


def split_lines(text: str) -> tuple[list[str], bool]:
    """LF-normalise ``text`` and split into lines (no terminators) + 'ends with newline'."""
    t = text.replace("\r\n", "\n")
    if not t:
        return [], True
    ends_nl = t.endswith("\n")
    lines = t.split("\n")
    if ends_nl:
        lines.pop()
    return lines, ends_nl


def join_lines(lines: list[str], ends_nl: bool, crlf: bool = False) -> str:
    if not lines:
        return ""
    text = "\n".join(lines) + ("\n" if ends_nl else "")
    if crlf:
        text = text.replace("\n", "\r\n")
    return text


def is_crlf(text: str) -> bool:
    n_crlf = text.count("\r\n")
    return n_crlf > 0 and n_crlf * 2 >= text.count("\n")


def keepends(text: str) -> list[str]:
    """Split keeping line terminators; only '\\n' ends a line (unlike str.splitlines)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def fmt_lines(lines: list[str], limit: int = 30) -> str:
    shown = lines[:limit]
    body = "\n".join(shown)
    if len(lines) > limit:
        body += f"\n... ({len(lines) - limit} more lines)"
    return body
