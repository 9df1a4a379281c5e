"""The LLM proposer's prompt: pure functions from (program, files, history, in-flight) to chat messages.

The first message pair holds the research program, a compact history, what other
proposers are running now, the current best files in full, and the answer format.
The prompt fits a token budget (estimated from characters) by shortening and then
dropping history entries, the least useful first; the current files are never cut.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ar_ray.types import Attempt

CHARS_PER_TOKEN = 3.5  # code and prose mixed; a deliberately cautious average
MAX_DIFF_LINES = 14  # changed lines shown per history entry
MAX_LINE_CHARS = 160
MAX_ERROR_LINES = 8
MAX_IN_FLIGHT = 40
MAX_DESCRIPTION_CHARS = 200

SYSTEM = """\
You are an autonomous machine-learning researcher. You improve a training script one experiment \
at a time: each answer is one focused code change that you expect to improve the metric within the \
fixed training budget. A harness trains your version and records the result. You see the results of \
earlier experiments, including those of other researchers working in parallel, and what they are \
running right now.

Rules:
- You may edit only: {editable}. Every other file is read-only; an edit to it is refused.
- One clear idea per experiment, so its effect can be read from the result.
- Keep the code runnable: it is syntax-checked before it runs, and a crash wastes an experiment.
- Do not repeat an experiment from the history or one that is running now; build on what worked.

{format}"""

FORMAT = """\
Answer format. Start with one line

DESCRIPTION: <what you change and why, in one line>

then, optionally, a few sentences of reasoning, then one or more SEARCH/REPLACE blocks, each \
preceded by the path of the file it edits on a line of its own:

{path}
<<<<<<< SEARCH
<lines copied exactly from the current file, enough of them to be unique>
=======
<the lines that replace them>
>>>>>>> REPLACE

Each SEARCH part must match the current file exactly, indentation included, and only once. To insert \
code, search for the line next to it and repeat that line in the replacement. Keep blocks short; do \
not send whole files."""

REPAIR = """\
Your edit could not be used, so nothing was changed:

{reason}

The files are still exactly as shown in my first message. Answer again in the same format: the \
DESCRIPTION line, then SEARCH/REPLACE blocks whose SEARCH parts copy the current lines exactly."""


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def messages_tokens(messages: list[dict]) -> int:
    return sum(estimate_tokens(m.get("content") or "") + 4 for m in messages)


@dataclass
class Prompt:
    messages: list[dict]
    tokens: int  # estimated
    shown_full: list[str] = field(default_factory=list)  # experiment ids, with diff/error detail
    shown_short: list[str] = field(default_factory=list)  # experiment ids, one line each
    dropped: list[str] = field(default_factory=list)  # experiment ids left out to fit the budget
    in_flight_dropped: int = 0
    summary_shown: int = 0  # lines of the what-was-tried summary in the prompt
    near_shown: list[int] = field(default_factory=list)  # indices of the near-misses shown
    near_full: list[int] = field(default_factory=list)  # of those, the ones with their changed lines


def fence_for(text: str) -> str:
    """A backtick fence longer than any run of backticks inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _clip(line: str, n: int = MAX_LINE_CHARS) -> str:
    return line if len(line) <= n else line[: n - 3] + "..."


def _metric(value) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.6g}"


def diff_summary(diff: str) -> tuple[int, int, list[str]]:
    """(lines added, lines removed, the first changed lines) of a unified diff."""
    added = removed = 0
    shown: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            continue
        if line.startswith("+") or line.startswith("-"):
            if line.startswith("+"):
                added += 1
            else:
                removed += 1
            if len(shown) < MAX_DIFF_LINES and line[1:].strip():
                shown.append(_clip(line))
    return added, removed, shown


def _files_of(diff: str) -> list[str]:
    return re.findall(r"^\+\+\+ b/(.+)$", diff, flags=re.MULTILINE)


def format_attempt(a: Attempt, full: bool) -> str:
    """One history entry: a line, plus (full) the changed lines or the error tail."""
    added, removed, shown = diff_summary(a.diff or "")
    where = ", ".join(_files_of(a.diff or ""))
    size = f" ({where} +{added} -{removed})" if a.diff else ""
    outcome = a.decision if a.status == "ok" else f"{a.status}, {a.decision}"
    head = f"- {a.experiment_id} [{outcome}] metric {_metric(a.metric)}: {_clip(a.description or '(no description)', MAX_DESCRIPTION_CHARS)}{size}"
    if not full:
        return head
    parts = [head]
    if shown:
        parts.append("    " + "\n    ".join(shown) + ("\n    ..." if added + removed > len(shown) else ""))
    if a.status != "ok" and a.error_tail:
        tail = [_clip(x) for x in a.error_tail.strip().splitlines()[-MAX_ERROR_LINES:]]
        parts.append("    error: " + "\n           ".join(tail))
    return "\n".join(parts)


def _priority(history: list[Attempt]) -> list[int]:
    """Indices of history, most useful first: kept improvements (newest first), then the rest, newest first."""
    kept = [i for i in range(len(history) - 1, -1, -1) if history[i].decision in ("keep", "baseline")]
    rest = [i for i in range(len(history) - 1, -1, -1) if history[i].decision not in ("keep", "baseline")]
    return kept + rest


def format_files(files: dict[str, str]) -> str:
    out = []
    for path in sorted(files):
        text = files[path]
        fence = fence_for(text)
        lang = "python" if path.endswith(".py") else ""
        out.append(f"{path}\n{fence}{lang}\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}{fence}")
    return "\n\n".join(out)


def system_message(editable: tuple[str, ...] | list[str]) -> str:
    fmt = FORMAT.format(path=editable[0] if editable else "train.py")
    return SYSTEM.format(editable=", ".join(editable) or "(nothing)", format=fmt)


def build_prompt(program: str, files: dict[str, str], editable: tuple[str, ...] | list[str],
                 history: list[Attempt] = (), in_flight: list[str] = (), best_metric: float | None = None,
                 best_id: str | None = None, budget_tokens: int = 32000, reserve_tokens: int = 0,
                 summary: list[str] = (), near: list[tuple[str, str]] = (), task: str | None = None,
                 summary_total: int = 0) -> Prompt:
    """The opening [system, user] messages within `budget_tokens` (minus `reserve_tokens` for the answer).

    `summary`: lines of what was tried, grouped by what it touched (`proposers.history`), `summary_total`
    candidates in all; `near`: near-misses as (one line, with changed lines); `task`: a task part in place of the
    usual one (a combine request), never cut. What does not fit is left out in this order: history detail,
    near-miss detail, history lines, summary lines, near-miss lines (the last kept longest)."""
    history = list(history)
    summary, near = list(summary), list(near)
    system = system_message(tuple(editable))
    program_part = "== RESEARCH PROGRAM ==\n\n" + (program.strip() or "(no program given: improve the metric)")
    best = f"metric {_metric(best_metric)}, " + (f"from {best_id}" if best_id else "the target as shipped")
    files_part = f"== THE CURRENT BEST VERSION ({best}): EDIT THIS ==\n\n" + format_files(files)
    task = task or ("== YOUR TURN ==\n\nPropose the next experiment: one idea, different from everything above and "
                    "from what is running now. Answer in the format given (DESCRIPTION line, then SEARCH/REPLACE "
                    "blocks).")

    flights = [_clip(" ".join(d.split()), MAX_DESCRIPTION_CHARS) for d in in_flight if d and d.strip()]
    flights = flights[-MAX_IN_FLIGHT:]
    dropped_flights = len([d for d in in_flight if d and d.strip()]) - len(flights)

    def assemble(entries: dict[int, str], flights: list[str], sums: dict[int, str] | None = None,
                 nears: dict[int, str] | None = None) -> str:
        parts = [program_part]
        if sums:
            n_out = len(summary) - len(sums)
            note = f"\n({n_out} more groups not shown)" if n_out else ""
            parts.append(f"== WHAT WAS TRIED, BY WHAT IT CHANGED ({summary_total} experiments of this run; outcome: "
                         "values) ==\n\n" + "\n".join(sums[i] for i in sorted(sums)) + note)
        if nears:
            parts.append("== NEAR MISSES (looked better than the best of their time, not proven: worth pushing further "
                         "or combining; do not simply repeat them) ==\n\n" + "\n".join(nears[i] for i in sorted(nears)))
        if history:
            body = "\n".join(entries[i] for i in sorted(entries)) if entries else "(left out to fit the context)"
            n_out = len(history) - len(entries)
            note = f"\n({n_out} older or less relevant experiments not shown)" if n_out and entries else ""
            parts.append("== EXPERIMENTS SO FAR (oldest first: id [outcome] metric: description) ==\n\n"
                         + body + note)
        else:
            parts.append("== EXPERIMENTS SO FAR ==\n\nNone yet besides the starting point.")
        if flights:
            parts.append("== RUNNING RIGHT NOW (do not duplicate these) ==\n\n" + "\n".join("- " + d for d in flights))
        parts.append(files_part)
        parts.append(task)
        return "\n\n".join(parts)

    budget = budget_tokens - reserve_tokens
    base_cost = estimate_tokens(system) + estimate_tokens(assemble({}, flights)) + 8
    while flights and base_cost > budget:  # only once no history fits at all; the files stay whole regardless
        flights.pop(0)
        dropped_flights += 1
        base_cost = estimate_tokens(system) + estimate_tokens(assemble({}, flights)) + 8

    order = _priority(history)
    short = {i: format_attempt(history[i], False) for i in order}
    full = {i: format_attempt(history[i], True) for i in order}
    entries: dict[int, str] = {}
    room = budget - base_cost - 20  # the "not shown" note
    sums: dict[int, str] = {}
    nears: dict[int, str] = {}
    if summary or near:  # section headers, then near-miss lines and summary lines, before any history
        room -= 60 * bool(summary) + 50 * bool(near)
    for i, (line, _) in enumerate(near):
        cost = estimate_tokens(line) + 1
        if cost <= room:
            nears[i], room = line, room - cost
    for i, line in enumerate(summary):
        cost = estimate_tokens(line) + 1
        if cost <= room:
            sums[i], room = line, room - cost
    for i in order:  # first as many entries as fit, one line each
        cost = estimate_tokens(short[i]) + 1
        if cost <= room:
            entries[i] = short[i]
            room -= cost
    for k in sorted(nears):  # then the near-misses' changed lines
        extra = estimate_tokens(near[k][1]) - estimate_tokens(near[k][0])
        if extra <= room:
            nears[k], room = near[k][1], room - extra
    for i in order:  # then detail, most useful first
        if i in entries and full[i] != short[i]:
            extra = estimate_tokens(full[i]) - estimate_tokens(short[i])
            if extra <= room:
                entries[i] = full[i]
                room -= extra
    user = assemble(entries, flights, sums, nears)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    ids = lambda idx: [history[i].experiment_id for i in sorted(idx)]  # noqa: E731
    return Prompt(messages=messages, tokens=messages_tokens(messages),
                  shown_full=ids(i for i in entries if entries[i] == full[i] and full[i] != short[i]),
                  shown_short=ids(i for i in entries if entries[i] == short[i] or full[i] == short[i]),
                  dropped=ids(i for i in range(len(history)) if i not in entries),
                  in_flight_dropped=dropped_flights, summary_shown=len(sums),
                  near_shown=[k for k in sorted(nears)], near_full=[k for k in sorted(nears) if nears[k] == near[k][1]])


def repair_message(reason: str) -> str:
    """The follow-up turn after an unusable answer: the exact reason, and what to do."""
    return REPAIR.format(reason=reason.strip())


_DESCRIPTION_RE = re.compile(r"^[\s>*_#-]*DESCRIPTION\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_MARKER_RE = re.compile(r"^\s*(<{5,9}|={5,9}|>{5,9}|`{3,}|~{3,}|@@|\+\+\+ |--- )")
_REFUSAL_RE = re.compile(
    r"\b(I(?:'|’)?m sorry|I am sorry|I can(?:no|'|’)t|I cannot|I won(?:'|’)t|I will not|I(?:'|’)?m (?:not able|unable)|"
    r"I am (?:not able|unable)|unable to (?:help|assist|comply)|as an AI)\b", re.IGNORECASE)


def parse_description(text: str) -> str:
    """The one-line description: the DESCRIPTION line, else the first line of prose; '' if none."""
    m = _DESCRIPTION_RE.search(text or "")
    if m:
        line = m.group(1)
    else:
        line = ""
        for raw in (text or "").splitlines():
            s = raw.strip()
            if not s:
                continue
            if _MARKER_RE.match(s) or re.fullmatch(r"[\w./-]+\.\w+:?", s.strip("*`#> ")):
                break  # reached the edit itself
            line = s
            break
    line = line.strip().strip("*_`").strip()
    return _clip(" ".join(line.split()), MAX_DESCRIPTION_CHARS)


def looks_like_refusal(text: str) -> bool:
    """An answer that declines instead of editing (no edit markers, apologetic or refusing wording)."""
    if not text or any(_MARKER_RE.match(line) for line in text.splitlines()):
        return False
    return bool(_REFUSAL_RE.search(text[:2000]))
