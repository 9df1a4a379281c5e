"""Read a finished run's output: the summary block, the metric, and what went wrong."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import stat
from pathlib import Path
from typing import BinaryIO

TAIL_BYTES = 1 << 20  # the metric and summary are searched in the last MiB of the log
RESULT_MAX_BYTES = 1 << 20  # a result file is a small JSON object; past this it is not read
SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.\-]*):\s+(\S.*?)\s*$")
# the run asked for memory and got none: Python's MemoryError, ENOMEM's text, the dynamic loader's mapping errors (a
# limit below what the interpreter itself needs), C++'s bad_alloc, a library's "memory allocation failed"
ALLOC_FAILED = re.compile(r"MemoryError|Cannot allocate memory|cannot map zero-fill pages|failed to map segment|"
                          r"std::bad_alloc|memory allocation (?:still )?failed|out of memory|not enough memory", re.IGNORECASE)
OOM = re.compile(ALLOC_FAILED.pattern + r"|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|Killed process", re.IGNORECASE)
DIVERGED = re.compile(r"diverg|\bnan\b|non-finite|not finite", re.IGNORECASE)


class NotRegularFile(OSError):
    """What a run left where the trainer reads its output is not the regular file it should be; `strerror` says
    what it is instead ("a FIFO", "a symbolic link", ...)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def open_regular(path: Path) -> BinaryIO:
    """Open a file that a run could have replaced, for reading, trusting nothing about it: a symbolic link is not
    followed, a FIFO does not block, and anything but a regular file raises NotRegularFile. A missing file raises
    FileNotFoundError (callers read a bounded amount: the file may be huge)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "a symbolic link", str(path)) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, _kind(mode), str(path))
    return os.fdopen(fd, "rb")


def read_tail(path: Path, nbytes: int = TAIL_BYTES, same_as: tuple[int, int] | None = None) -> str:
    """The last `nbytes` of the log (see open_regular). `same_as`: the (st_dev, st_ino) the log must still have;
    NotRegularFile when the run put another file in its place."""
    with open_regular(path) as f:
        st = os.fstat(f.fileno())
        if same_as is not None and (st.st_dev, st.st_ino) != same_as:
            raise NotRegularFile(errno.EINVAL, "another file, not the one the run's output went to", str(path))
        f.seek(max(0, st.st_size - nbytes))
        return f.read(nbytes).decode("utf-8", errors="replace")


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
    """The metric in the result file; None when the file is missing, unreadable, over RESULT_MAX_BYTES or without
    it. A result file that is not a regular file (a FIFO, a link, ...) raises NotRegularFile."""
    try:
        with open_regular(path) as f:
            data = f.read(RESULT_MAX_BYTES + 1)
    except NotRegularFile:
        raise
    except OSError:
        return None
    if len(data) > RESULT_MAX_BYTES:
        return None
    try:
        return float(json.loads(data)[metric])
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None


def read_integrity(path: Path) -> str | None:
    """What the harness wrote under "integrity" in the result file (its causality probe failed), or None."""
    try:
        with open_regular(path) as f:
            data = f.read(RESULT_MAX_BYTES + 1)
        why = json.loads(data).get("integrity") if len(data) <= RESULT_MAX_BYTES else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return str(why)[:2000] if why else None


def _ending(text: str) -> str:
    """The last 30 lines of the output: they say how the run ended."""
    return "\n".join(text.rstrip().splitlines()[-30:])


def memory_limit_hint(text: str, limit_bytes: int | None, flag_gb: float | None) -> str | None:
    """When the output ends in a failed allocation (ALLOC_FAILED) and the run had a memory limit (`limit_bytes`, the
    sandbox's RLIMIT_DATA of a CPU run; None: no limit), that limit as the likely cause and what to do. `flag_gb`:
    the --max-memory-gb given (None: the default, the trainer's share of the node's RAM)."""
    if limit_bytes is None or not (m := ALLOC_FAILED.search(_ending(text))):
        return None
    size = f"{limit_bytes / 2**30:.3g} GiB" if limit_bytes >= 2**30 else f"{limit_bytes / 2**20:.3g} MiB"
    said = f"the run could not get memory (\"{m.group(0)}\")"
    if flag_gb is not None:
        return (f"{said} under --max-memory-gb {flag_gb:g} (the {size} of data memory a CPU run may use), the likely "
                f"cause: raise --max-memory-gb (a Python process needs a few hundred MiB before it trains) or leave "
                f"it out for the trainer's share of the node's RAM.")
    return (f"{said} under the {size} of data memory a CPU run may use (the trainer's share of the node's RAM, as "
            f"--max-memory-gb was not given), the likely cause: raise --max-memory-gb, or run fewer trainers per node "
            f"(--trainers, --cpus-per-trainer) for a larger share.")


def classify(returncode: int, timed_out: bool, text: str, metric: float | None) -> str:
    """One status per run: timeout, oom, diverged, crash, no_metric or ok."""
    if timed_out:
        return "timeout"
    tail = _ending(text)
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
