"""Start-up hidden behind the previous run: a trainer's pre-started child (targets that opt in).

A target that lists `prestart = ["torch", "prepare"]` in ar-ray.toml lets the trainer start the NEXT run's
child while the current one trains: a fresh interpreter (trainers/warm_child.py) in the sandbox, limits
and run dir layout the next run will have, which imports those modules (the harness: the candidate is not
known yet) and then waits on its standard input. When the next candidate arrives, its editable files are
written into that run dir and the child is told to go: it runs the target's command in-process, the run's
clock and its limits starting then. It reaches the accelerator only after "go", which the trainer sends
once the previous run's whole tree has exited (runs are sequential).

What keeps this as safe as a cold start:
- the child is candidate-independent until "go": nothing of a candidate runs in it before, and it serves
  exactly one run (no warm state is shared between candidates);
- it sits under its own reaper, in its own sandbox, exactly like a run: a trainer killed, stopped or
  restarted takes it down the same way (parent-death signals, `bwrap --die-with-parent`, the reaper's tree
  kill); `discard()` ends it and removes its run dir;
- it is used only when the run's environment is the one it was started with, less the run's own values
  (PER_RUN: set at "go", never seen by the pre-imports); a run that differs (another budget or scale knob,
  a multi-GPU trainer's torchrun) discards it and starts cold, as without pre-start;
- its run dir is private to it and hidden from the current run by the sandbox; after the run it gets the
  experiment's name, as a cold run's has from the start.

The compile cache (trainers/compile_cache.py): a pre-started run starts from a private copy of the node's
cache made at pre-start, as a candidate's cold run does. A run of the unmodified target (trusted) cannot
get the writable node cache bound in (the sandbox was set up before the candidate was known), so what it
compiled is copied into the node cache by the trainer after the run (`publish`): same contents, same
writers as before.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainers import compile_cache
from trainers.cleanup import remove_tree
from trainers.sandbox import REAPER

WARM_CHILD = str(Path(__file__).with_name("warm_child.py"))
PER_RUN = ("AR_SEED", "AR_EXPERIMENT_ID", "AR_TIMEOUT_SECONDS")  # a run's own values: given at "go"
SLOT = ".warm-"  # a pre-started child's run dir, under the trainer's work root: .warm-<trainer>-<pid>-<n>


class Warm:
    """One pre-started child: its reaper, the pipe that says "go", its run dir and how it was started."""

    def __init__(self, slot: Path, proc: subprocess.Popen, verdict_fd: int | None, env: dict, cache_env: dict,
                 python: str):
        self.slot, self.proc, self.verdict_fd = slot, proc, verdict_fd
        self.env, self.cache_env, self.python = env, cache_env, python
        self.started_at = time.monotonic()
        self.launched = False

    def fits(self, argv: list[str], env: dict) -> str | None:
        """None when this child can run `argv` with `env` (the run's, in this child's run dir); else why not."""
        if self.proc.poll() is not None:
            return f"it exited (code {self.proc.returncode}) before the run"
        if len(argv) < 2 or argv[0] != self.python or (argv[1] == "-m" and len(argv) < 3) \
                or (argv[1] != "-m" and (argv[1].startswith("-") or not argv[1].endswith(".py"))):
            return f"the command is not `python SCRIPT.py ...` nor `python -m MODULE ...`: {argv[:3]}"
        if (want := {**stable(env), **self.cache_env}) != self.env:
            changed = sorted(k for k in set(want) | set(self.env) if want.get(k) != self.env.get(k))
            return f"the run's environment differs in {', '.join(changed[:5])}"
        return None

    def go(self, argv: list[str], env: dict) -> subprocess.Popen:
        """Tell the child to run `argv` with `env`: one JSON line on its standard input, which is then closed.
        Written by a thread of its own: a child still importing never blocks the trainer (its clock runs)."""
        self.launched = True
        line = (json.dumps({"argv": argv, "env": env}) + "\n").encode()
        pipe = self.proc.stdin

        def write():
            try:
                pipe.write(line)
                pipe.flush()
            except OSError:  # the child is gone: its reaper reports how it ended
                pass
            finally:
                try:
                    pipe.close()
                except OSError:
                    pass
        threading.Thread(target=write, name="ar-ray-go", daemon=True).start()
        return self.proc

    def end(self, grace: float) -> None:
        """End the child's whole tree (its reaper: TERM, then KILL after the grace period) and wait for it."""
        try:
            self.proc.stdin.close()  # end of input: a waiting child exits at once
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:  # the reaper itself does not end: end its group
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.verdict_fd is not None:
            os.close(self.verdict_fd)
            self.verdict_fd = None


def stable(env: dict) -> dict:
    """A run's environment less its own values (PER_RUN)."""
    return {k: v for k, v in env.items() if k not in PER_RUN}


class Prestarter:
    """Keeps at most one pre-started child for a Trainer. Inert for targets without `prestart`.

    Called from the trainer's run thread (tick, claim, settle) and from stop() on another thread (discard);
    children are spawned only from the run thread, whose life the reaper's parent-death signal follows."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.warm: Warm | None = None
        self.problem: str | None = None  # why pre-start stopped on this trainer (it then runs cold)
        self.used = self.discarded = 0
        self._lock = threading.Lock()
        self._n = 0
        self._claimed: Warm | None = None

    @property
    def enabled(self) -> bool:
        t = self.trainer
        return bool(t.target.prestart) and len(t.gpu_ids) <= 1 and self.problem is None

    def tick(self, plan, watch) -> None:
        """From the wait loop of a run: start the next run's child once the current one is past its start-up
        (its first progress line; at once for a target without progress lines, or `watch` None: after a run). `plan(run_dir)` gives the
        (argv, env) a run like the current one would get in `run_dir`: the guess of the next run's."""
        t = self.trainer
        if self.warm is not None or not self.enabled or t._stop.is_set() or t._box_mode is None:
            return  # (never before the trainer knows how this node confines runs)
        if watch is not None and watch.rx is not None and watch.first_progress_at is None:
            return
        try:
            self._start(plan)
        except Exception as e:  # never fails the current run: the next ones start cold
            self.problem = f"pre-start failed: {type(e).__name__}: {e}"
            print(f"ar-ray {t.name}: {self.problem}; runs start cold", file=sys.stderr, flush=True)

    def _start(self, plan) -> None:
        t = self.trainer
        if self._n == 0:  # slots left by an earlier life of this trainer (killed: its children went with it)
            for old in t.work_root.glob(f"{SLOT}{t.name}-*"):
                remove_tree(str(old))
        self._n += 1
        slot = t.work_root / f"{SLOT}{t.name}-{os.getpid()}-{self._n}"
        slot.mkdir(parents=True)
        try:
            self._spawn(slot, plan)
        except BaseException:
            remove_tree(str(slot))
            raise
        if t._stop.is_set():  # stop() came meanwhile
            self.discard()

    def _spawn(self, slot: Path, plan) -> None:
        t = self.trainer
        for rel in t.target.readonly:  # the harness; the editable files come with the candidate
            (slot / rel).parent.mkdir(parents=True, exist_ok=True)
            (slot / rel).write_bytes(t.target.contents[rel])
        argv, env = plan(slot)
        cache_env, _ = compile_cache.for_run(t.target, {}, slot)  # a private copy of the node's cache, now
        env = {**stable(env), **cache_env}
        child = [argv[0], WARM_CHILD, *t.target.prestart]
        read_fd, write_fd = os.pipe()
        try:
            rest = t._confinement(child, slot, env, write_fd)
            with open(slot / "log.txt", "wb") as out:
                proc = subprocess.Popen([sys.executable, "-I", "-S", REAPER, "--parent", str(os.getpid()),
                                         "--grace", str(t.grace), *rest],
                                        cwd=slot, env=env, stdin=subprocess.PIPE, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the reaper holds the only write end now
        warm = Warm(slot, proc, read_fd, env, cache_env, argv[0])
        with self._lock:
            self.warm = warm

    def claim(self, plan) -> Warm | None:
        """The pre-started child, when it fits the run that `plan(run_dir)` describes; otherwise None (and a
        child that does not fit is ended). The caller writes the candidate's files into `warm.slot`."""
        with self._lock:
            warm, self.warm = self.warm, None
        if warm is None:
            return None
        try:
            why = warm.fits(*plan(warm.slot))
        except BaseException:
            self._end(warm)
            raise
        if why:
            print(f"ar-ray {self.trainer.name}: pre-started child not used ({why}); this run starts cold",
                  file=sys.stderr, flush=True)
            self._end(warm)
            return None
        self._claimed = warm
        self.used += 1
        return warm

    def write_editable(self, warm: Warm, files: dict[str, str]) -> None:
        for rel in self.trainer.target.editable:
            dst = warm.slot / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(files[rel])

    def after_run(self, plan) -> None:
        """The run is over (or failed before it started): a claimed child never told to go is ended, and the
        next run's child starts now if the run ended before one was (a short run, a crash)."""
        warm, self._claimed = self._claimed, None
        if warm is not None and not warm.launched:
            self._end(warm)
        self.tick(plan, None)

    def settle(self, warm: Warm, files: dict[str, str], run_dir: Path) -> Path:
        """After the run: what a trusted run compiled goes into the node's cache, and the run dir gets the
        experiment's name (`run_dir`). Returns where the run's files are now."""
        if warm.verdict_fd is not None:
            os.close(warm.verdict_fd)
            warm.verdict_fd = None
        publish(self.trainer.target, files, warm.slot)
        try:
            if os.path.lexists(run_dir):
                remove_tree(str(run_dir))
            os.rename(warm.slot, run_dir)
            return run_dir
        except OSError as e:  # the files stay where they are, and the row says where
            print(f"ar-ray {self.trainer.name}: could not rename {warm.slot} to {run_dir}: {e}", file=sys.stderr)
            return warm.slot

    def discard(self) -> None:
        """End the pre-started child not yet claimed, if any (stop(), close(), a target change)."""
        with self._lock:
            warm, self.warm = self.warm, None
        if warm is not None:
            self._end(warm)

    def _end(self, warm: Warm) -> None:
        warm.end(self.trainer.grace)
        self.discarded += 1
        remove_tree(str(warm.slot))


def publish(target, files: dict[str, str], run_dir: Path) -> None:
    """A run of the unmodified target compiled into its private cache: copy what the node's cache lacks."""
    own = Path(run_dir) / compile_cache.PRIVATE
    if files != target.read_editable() or not own.is_dir():
        return
    shared = compile_cache.node_dir(target)
    try:
        for src in own.rglob("*"):
            dst = shared / src.relative_to(own)
            if src.is_symlink() or not src.is_file() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    except OSError:
        pass  # a cache is an optimization: what was not copied compiles again
