"""Durations as the command line takes them."""

from __future__ import annotations

import re

import click


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '15m', '2h' -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration; use seconds or a number with s, m or h (e.g. 15m)")
    return float(m[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[m[2]]
