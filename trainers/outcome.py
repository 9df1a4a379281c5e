"""Read a finished run's output: the summary block, the metric, and what went wrong."""

from __future__ import annotations

import json
import math
import re
import signal
from pathlib import Path

TAIL_BYTES = 1 << 20  # the metric and summary are searched in the last MiB of the log
SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):\s+(\S.*?)\s*$")
OOM = re.compile(r"out of memory|OutOfMemoryError|MemoryError|CUBLAS_STATUS_ALLOC_FAILED|Killed process", re.IGNORECASE)
DIVERGED = re.compile(r"diverg|\bnan\b|non-finite|not finite", re.IGNORECASE)


def read_tail(path: Path, nbytes: int = TAIL_BYTES) -> str:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - nbytes))
        return f.read().decode("utf-8", errors="replace")


def parse_summary(text: str) -> dict[str, str]:
    """Every `key: value` line after the last `---` line (the whole text when there is none)."""
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.strip() == "---"]
    body = lines[marks[-1] + 1:] if marks else lines
    out = {}
    for line in body:
        m = SUMMARY_LINE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def parse_metric(text: str, pattern: str) -> float | None:
    """The number captured by the last line that matches `pattern`; None when no line matches."""
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    if not matches:
        return None
    try:
        return float(matches[-1].group(1))
    except ValueError:
        return float("nan")


def signal_of(returncode: int | None) -> int | None:
    """The signal that killed the run: -N (Popen) or 128 + N (a shell's or the reaper's exit status); else None."""
    if returncode is None:
        return None
    n = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + signal.NSIG else None
    try:
        return int(signal.Signals(n)) if n else None
    except ValueError:
        return None


def exit_text(returncode: int | None) -> str | None:
    """How the run ended when a signal killed it, e.g. "killed by SIGSEGV (signal 11)"; None otherwise."""
    n = signal_of(returncode)
    if n is None:
        return None
    code = f", exit code {returncode}" if returncode > 0 else ""
    return f"killed by {signal.Signals(n).name} (signal {n}{code})"


def error_tail(text: str, lines: int = 15, *, status: str | None = None, returncode: int | None = None,
               metric_pattern: str | None = None) -> str:
    """The last lines of output, starting at the last traceback when there is one.

    With `status`, `returncode` and `metric_pattern` (what the trainer knows), a first line says what the output
    alone does not: the pattern no line matched (status no_metric), or the signal that killed the run."""
    all_lines = text.rstrip().splitlines()
    starts = [i for i, line in enumerate(all_lines) if line.startswith("Traceback (most recent call last)")]
    if starts and len(all_lines) - starts[-1] <= 60:
        tail = all_lines[starts[-1]:]
        # keep the head of the traceback and its last lines: the exception is at the end
        if len(tail) > lines:
            tail = tail[:2] + ["  ..."] + tail[-(lines - 3):]
    else:
        tail = all_lines[-lines:]
    body = "\n".join(tail)
    if status == "no_metric" and metric_pattern is not None:
        head = f"no line matched metric_pattern '{metric_pattern}'"
    elif status == "timeout":
        head = None  # killed by the harness: the trainer says so
    else:
        head = exit_text(returncode)
        if head is None and returncode and not body.strip():
            head = f"exited with code {returncode}"
    if head is None:
        return body
    return f"{head}; the output ends with:\n{body}" if body.strip() else f"{head}; the run printed nothing"


def read_result_file(path: Path, metric: str) -> float | None:
    try:
        return float(json.loads(path.read_text())[metric])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def classify(returncode: int, timed_out: bool, text: str, metric: float | None) -> str:
    """One status per run: timeout, oom, diverged, crash, no_metric or ok."""
    if timed_out:
        return "timeout"
    tail = "\n".join(text.rstrip().splitlines()[-30:])  # the end of the output says how it ended
    if returncode != 0:
        if OOM.search(tail) or returncode in (137, -9) and "Traceback" not in tail:
            return "oom"
        if DIVERGED.search(tail):
            return "diverged"
        return "crash"
    if metric is None:
        return "no_metric"
    if not math.isfinite(metric):
        return "diverged"
    return "ok"
