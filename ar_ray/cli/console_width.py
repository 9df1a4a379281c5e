"""The width of a table printed to a file or a pipe.

rich lays a table out for 80 columns when stdout is not a terminal, so `ar-ray ledger RUN > rows.txt` or `| grep`
got descriptions wrapped to a few characters a line. To a terminal a table keeps the terminal's width; elsewhere
it takes $COLUMNS when set, else a width no row of ours reaches, so each row stays on one line.
"""

from __future__ import annotations

import os

from rich.console import Console

UNWRAPPED = 1000  # columns: wider than any row `ar-ray ledger` prints (descriptions are cut to 80 characters)


def table_console(**kwargs) -> Console:
    """A Console for tables: the terminal's width, $COLUMNS, or (to a file or pipe) UNWRAPPED."""
    console = Console(**kwargs)
    if console.is_terminal or (os.environ.get("COLUMNS") or "").strip().isdigit():
        return console
    return Console(width=UNWRAPPED, **kwargs)
