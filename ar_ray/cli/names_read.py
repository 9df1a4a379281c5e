"""Whether a target's file names an environment variable where a program reads it (`ar-ray check` for the
budget, `ar-ray init` for the seed and the budget): code, not comments, docstrings, prose or ar-ray.toml."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from ar_ray.target import CONFIG_NAME

NOT_CODE = (".md", ".rst", ".txt", ".html", ".csv")  # prose and data: naming a variable there reads nothing


def _strip_hash_comments(text: str) -> str:
    """Text without its '#' comments: from a '#' that starts a line or follows a blank to the end of the line (shell,
    YAML, TOML, INI; a '#' inside a quoted string that follows a blank is taken for a comment too: rare, and it can
    only make a file look as if it did not name something)."""
    return "\n".join(re.sub(r"(^|\s)#.*", r"\1", line) for line in text.splitlines())


def _python_names(text: str, name: str) -> bool | None:
    """Whether Python source names `name` in its code: in a string constant (an environment variable is read by
    its name as a string) that is not a docstring or another string statement on its own, which reads nothing;
    comments are not in the syntax tree. None if the source does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    inert = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        if id(node) in inert:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and name in node.value:
            return True
    return False


def names_in_code(rel: str, data: bytes, name: str) -> bool:
    """Whether a target file names `name` where a program reads it. The target's own ar-ray.toml, prose and data
    (.md, .txt, ...) never count, nor do comments: Python is read through its syntax tree (string constants,
    docstrings excluded), other files (shell, YAML, ...) with their '#' comments dropped."""
    if Path(rel).name == CONFIG_NAME or rel.lower().endswith(NOT_CODE) or name.encode() not in data:
        return False
    text = data.decode(errors="replace")
    if rel.endswith(".py") and (found := _python_names(text, name)) is not None:
        return found
    return name in _strip_hash_comments(text)
