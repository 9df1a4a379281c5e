"""The trusted evaluation of a run, for targets that declare `evaluate` in ar-ray.toml.

A candidate's own process must not produce the number that decides: it could print any value, rewrite a
result file, or replace the harness's evaluation function in memory. So the trainer starts the target's
`evaluate` command beside each run, in a sandbox of its own:

- it starts when the run starts and prepares meanwhile (imports, loads the held-out data), then waits on
  its stdin, so only the evaluation itself is on the run's critical path;
- once the run exited 0 (and broke no rule), the trainer writes `go` to its stdin; it then scores what the
  run left in its run dir (for trainers/gpt: a graph of ATen operations, never the candidate's Python) and
  prints the metric on its stdout, a pipe only the trainer reads. Anything that reached the pipe before
  `go` (while candidate code was alive) is never searched for the metric (it only goes to the log);
- it runs from a copy of the target's read-only files that the trainer wrote (never the run dir's, which a
  candidate could change, nor the run dir on its path), and under bubblewrap it sees the run dir read-only,
  the held-out data read-only, no other experiment, no network, and no writable path at all;
- it is under a reaper like the run (trainers/reaper.py): killed, discarded or orphaned, it leaves no process;
- its copy of the target's files (a folder `ar-ray-eval-<trainer's identity>-*` in the temp dir) goes with it,
  even when the trainer is SIGKILLed: both of its reapers remove it once its tree is gone (the outer one, a child
  of the trainer, may be SIGKILLed with the trainer by Ray; the inner one, out of Ray's reach, then does), and a
  folder whose trainer died before either reaper started is removed by the next evaluation on the node.

The target's `heldout` paths (its validation split) are hidden from training runs under bubblewrap
(trainers/sandbox.py `cover`). With `--sandbox none` nothing is hidden and a hostile candidate, running as
the same user, can reach everything this user can: README, "What a candidate can and cannot do".

The evaluation's output lines: the metric (the target's metric_pattern), a summary block after `---`
(into the ledger's `extra`), and `INTEGRITY: why` when it refuses to score the run (status `integrity`).
"""

from __future__ import annotations

import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ar_ray.target import Target, format_command
from trainers import cleanup, outcome, sandbox
from trainers.sandbox import REAPER

DIR_PREFIX = "ar-ray-eval-"
OUTPUT_MAX_BYTES = 1 << 20  # what is kept of the evaluation's output (its last MiB)
INTEGRITY = re.compile(r"^INTEGRITY:\s*(.+)$", re.MULTILINE)
LOG_HEADER = "\n=== trusted evaluation (trainers/evaluate.py): the metric comes from here ===\n"


def heldout_paths(target: Target, env: dict[str, str]) -> tuple[str, ...]:
    """The target's held-out paths on this node (~ and $VARS expanded; entries whose variable is unset dropped)."""
    return tuple(p for p in (sandbox.expand(h, env) for h in target.heldout) if p)


@dataclass
class Verdict:
    """What the evaluation said. status None: it did not run (the run failed first): the trainer's own
    classification stands, and no metric."""
    status: str | None
    metric: float | None = None
    error: str = ""
    summary: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None  # from `go` to the evaluation's exit: the evaluation's share of the run

    def merge(self, summary: dict[str, str], metric: str) -> dict[str, str]:
        """The run's summary lines with the evaluation's over them. A value of the metric the run printed
        itself is never believed: it is kept as printed_<metric> (the ledger's `extra`)."""
        out = dict(summary)
        if metric in out:
            out[f"printed_{metric}"] = out.pop(metric)
        if self.status == "ok":
            out.update(self.summary)
        return out


class Evaluation:
    """The evaluation child of one run: started with the run, then concluded (`conclude`) or discarded."""

    def __init__(self, target: Target, run_dir: Path, env: dict[str, str], *, mode: str | None, box: sandbox.Sandbox,
                 grace: float, gpu: bool, cpu_share: float, hide: tuple[Path, ...]):
        self.target = target
        self.grace = grace
        cleanup.sweep_orphans(tempfile.gettempdir(), DIR_PREFIX)  # of trainers SIGKILLed before their reapers ran
        # the trusted copy of the target's read-only files, named after this process (cleanup.owned_prefix)
        self.home = Path(tempfile.mkdtemp(prefix=cleanup.owned_prefix(DIR_PREFIX)))
        try:
            self.proc = self._spawn(run_dir, env, mode, box, gpu, cpu_share, hide)
        except BaseException:
            shutil.rmtree(self.home, ignore_errors=True)
            raise
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.started = time.monotonic()

    def _spawn(self, run_dir: Path, env: dict[str, str], mode: str | None, box: sandbox.Sandbox, gpu: bool,
               cpu_share: float, hide: tuple[Path, ...]) -> subprocess.Popen:
        """Write the home and start the evaluation there, under two reapers that remove the home when it ends."""
        target, grace = self.target, self.grace
        for rel in target.readonly:
            dst = self.home / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(target.contents[rel])
        env = {k: v for k, v in env.items() if k != "AR_RESULT_FILE"}  # (nothing to write: the output is the pipe)
        argv = format_command(target.evaluate, run_dir=str(run_dir), seed=env.get("AR_SEED", 0), budget_seconds="",
                              budget_tokens="", result_file="")
        remove = ["--remove", str(self.home)]  # (by whichever of the two reapers outlives the other)
        flags = ["--grace", str(grace), "--max-procs", str(box.max_processes), *remove]
        for name, limit in sandbox.rlimits(box, gpu, cpu_share).items():
            flags += ["--rlimit", f"{name}={limit}"]
        if mode == "bwrap" and shutil.which(argv[0], path=env.get("PATH")):
            data = [sandbox.expand(d, env) for d in (*target.data, *target.heldout)]
            argv = sandbox.bwrap_argv(argv, run_dir, (), hide, network=False, read_only=True, chdir=self.home,
                                      keep=(*sandbox.python_paths(env), *filter(None, data), str(self.home)))
        # a second reaper out of Ray's reach holds the tree, as for an unconfined run (trainers/trainer.py), and
        # removes the home when Ray SIGKILLs the first one with the trainer
        inner = [sys.executable, "-I", "-S", REAPER, "--grace", str(grace), *remove, "--", *argv]
        return subprocess.Popen([sys.executable, "-I", "-S", REAPER, "--parent", str(os.getpid()), *flags, "--", *inner],
                                cwd=self.home, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def _read(self, out: bytearray) -> bool:
        """Append what the pipe holds now to `out` (its last OUTPUT_MAX_BYTES); False at end of file."""
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            out += chunk
            del out[:-OUTPUT_MAX_BYTES]

    def conclude(self, ran_ok: bool, timeout: float, stopped, log: Path | None = None) -> Verdict:
        """`ran_ok`: the run exited 0 and broke no rule: score it (else discard, Verdict(None)). Waits up to
        `timeout` s; `stopped()` true ends it early (the driver stops the trainer). The evaluation's output
        is appended to `log` (the run's log.txt), after a header line."""
        if not ran_ok:
            self.discard()
            return Verdict(None)
        before = bytearray()
        self._read(before)  # written before `go`: never searched for the metric
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:  # it already exited (it failed to start): its output says why
            pass
        after, fd, why = bytearray(), self.proc.stdout.fileno(), None
        while True:
            if select.select([fd], [], [], 0.1)[0] and not self._read(after):
                break
            if stopped():
                why = "stopped"
                break
            if time.monotonic() - t0 > timeout:
                why = "timeout"
                break
        if why:
            self.discard()
        else:
            self._wait_or_kill()
            self._cleanup()
        seconds = time.monotonic() - t0
        text, code = after.decode(errors="replace"), self.proc.returncode
        if log is not None:
            try:
                with open(log, "ab") as f:
                    f.write(LOG_HEADER.encode() + bytes(before) + bytes(after))
            except OSError:
                pass
        return self._verdict(text, code, why, timeout, seconds)

    def _verdict(self, text: str, code: int | None, why: str | None, timeout: float, seconds: float) -> Verdict:
        t = self.target
        if why == "stopped":
            return Verdict("infra", error="stopped by the driver during the trusted evaluation", seconds=seconds)
        if why == "timeout":
            return Verdict("timeout", error=f"the trusted evaluation did not finish within {timeout:.0f} s "
                           f"(the run's hard timeout); its output ends with:\n{outcome.error_tail(text)}",
                           seconds=seconds)
        if found := INTEGRITY.findall(text):
            return Verdict("integrity", error=f"the trusted evaluation refused to score the run: {found[-1].strip()}",
                           seconds=seconds)
        if code != 0:
            return Verdict("crash", error=f"the trusted evaluation failed ({outcome.exit_text(code) or f'exit code {code}'})"
                           f"; its output ends with:\n{outcome.error_tail(text)}", seconds=seconds)
        metric = outcome.parse_metric(text, t.metric_pattern)
        if metric is None:
            return Verdict("no_metric", error=f"the trusted evaluation printed no line matching metric_pattern "
                           f"'{t.metric_pattern}'; its output ends with:\n{outcome.error_tail(text)}", seconds=seconds)
        if not math.isfinite(metric):
            return Verdict("diverged", error=f"the trusted evaluation scored {t.metric} = {metric}", seconds=seconds)
        return Verdict("ok", metric=metric, summary=outcome.parse_summary(text), seconds=seconds)

    def _wait_or_kill(self) -> None:
        try:
            self.proc.wait(timeout=self.grace + 10)
        except subprocess.TimeoutExpired:  # the reaper itself does not end: end its group
            self._killpg()

    def _killpg(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def discard(self) -> None:
        """End the evaluation without scoring anything: its whole tree goes (the reaper TERMs it, then KILLs)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # (end of input: it would exit by itself)
            except OSError:
                pass
            self.proc.send_signal(signal.SIGTERM)
            self._wait_or_kill()
        self._cleanup()

    def _cleanup(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        shutil.rmtree(self.home, ignore_errors=True)

    def __del__(self):  # an exception between start and conclude: never leave the child waiting
        try:
            if self.proc.poll() is None:
                self.discard()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def start(trainer, run_dir: Path, env: dict[str, str]) -> Evaluation:
    """Start the evaluation of the run about to start in `run_dir` (its environment `env`) on `trainer`."""
    return Evaluation(trainer.target, run_dir, env, mode=trainer._box_mode, box=trainer.box, grace=trainer.grace,
                      gpu=bool(trainer.gpu_ids), cpu_share=trainer.cpu_share,
                      hide=(trainer.work_root.parent, trainer.work_root))
