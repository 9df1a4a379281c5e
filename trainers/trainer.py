"""The trainer: run one candidate safely and report a Result.

`Trainer` is plain Python (tests use it without Ray); `trainers.actor` wraps it
as a Ray actor. CUDA never touches this process: the training child gets the
GPUs through CUDA_VISIBLE_DEVICES and is the only one to initialize them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ar_ray.target import Target, format_command, materialize, tampered_files
from ar_ray.timeouts import Limits, Stall, Timeouts, token_budgeted
from ar_ray.types import Candidate, Result
from trainers import compile_cache, outcome, prestart, sandbox
from trainers.cleanup import owner_rwx, remove_tree
from trainers.sandbox import REAPER, Sandbox
from trainers import watch as watch_mod
from trainers.watch import CurveWatch
from trainers import evaluate as trusted_eval  # the trusted evaluation step of targets that declare `evaluate`

UNTRUSTED_METRIC = ("metric_mismatch", "tampered", "integrity")  # statuses whose printed metric is not believed
KEEP_AFTER_RUN = ("log.txt", "result.json")
# The environment a candidate's child gets is an ALLOWLIST (child_env): candidate code is written by an LLM, and
# its log tail goes back into the ledger and the prompts. Exact names, then prefixes; the target adds its own
# `env` values and `env_passthrough` names in ar-ray.toml. Everything else in the trainer's environment is dropped.
ENV_ALLOWED = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "SHELL", "TMPDIR", "VIRTUAL_ENV",
    "LD_LIBRARY_PATH", "LIBRARY_PATH", "CPATH", "CC", "CXX", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME",
    "MPLCONFIGDIR", "MPLBACKEND", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
})
ENV_ALLOWED_PREFIXES = (
    "LC_", "PYTHON", "CONDA_", "AR_",  # locale, the Python/venv/conda settings, ar-ray's own (AR_PRESET, AR_DATA...)
    "CUDA_", "CUDNN_", "CUBLAS_", "NCCL_", "NVIDIA_", "TORCH", "PYTORCH_", "TRITON_",  # compute settings
    "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "HIP_", "HSA_", "ROCR_", "ROCM_", "XLA_", "JAX_", "TF_",
)
# Names that look like credentials (is_secret_name) never pass the allowlist's prefixes, and are listed (names only)
# in the run's start message when the trainer's environment holds them.
SECRET_MARKERS = ("API_KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "AWS_", "GOOGLE_APPLICATION", "AZURE_")
# Besides the markers above (matched anywhere in the upper-cased name), KEY as a word of the name: the name is
# split into words at every character other than a letter or digit and at camelCase humps ("vllmKey" ->
# vllm, Key), and a word KEY, KEYS or APIKEY(S), optionally followed by digits (KEY2), marks a secret. So
# VLLM_KEY, OPENROUTER_KEY, KEY, OPENAI_APIKEY, MY_KEY_FILE, SSL_KEY_PATH, GPG_KEY and vllmKey are scrubbed;
# MONKEY, KEYBOARD_LAYOUT, KEYRING_BACKEND and TURNKEY are not (KEY is only part of a longer word there).
_KEY_WORD = re.compile(r"(?:API)?KEYS?[0-9]*")
# Other words that name a credential: DB_AUTH, BASIC_AUTH, HTTP_AUTHORIZATION, DB_PASS, MYSQL_PWD, PASSPHRASE,
# GH_PAT, SENTRY_DSN, SESSION_COOKIE, ... (PWD alone is the shell's working directory); and a URL of a database
# or broker (DATABASE_URL, REDIS_URL), which usually holds a password.
_SECRET_WORDS = frozenset({"AUTH", "AUTHORIZATION", "PASS", "PASSWD", "PWD", "PASSPHRASE", "DSN", "PAT", "COOKIE",
                           "PRIVATE", "CREDS", "SIGNATURE"})
_STORE_WORDS = frozenset({"DATABASE", "DB", "REDIS", "MONGO", "MONGODB", "POSTGRES", "POSTGRESQL", "PG", "MYSQL",
                          "AMQP", "BROKER", "CELERY", "RABBITMQ"})


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name looks like a credential (see SECRET_MARKERS and the words)."""
    upper = name.upper()
    if any(m in upper for m in SECRET_MARKERS):
        return True
    words = re.split(r"[^A-Z0-9]+", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper())
    if any(_KEY_WORD.fullmatch(w) for w in words):
        return True
    if upper != "PWD" and _SECRET_WORDS & set(words):
        return True
    return bool({"URL", "URI"} & set(words) and _STORE_WORDS & set(words))


def env_allowed(name: str) -> bool:
    """Whether the trainer's variable `name` reaches a candidate's child without the target naming it."""
    return (name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES)) and not is_secret_name(name)


def dropped_credentials(target: Target, environ=None) -> list[str]:
    """Names (never values) in the trainer's environment that look like credentials and that no run gets."""
    environ = os.environ if environ is None else environ
    return sorted(k for k in environ if is_secret_name(k) and not env_allowed(k) and k not in target.env_passthrough
                  and k not in target.env)


def readonly_hint(target: Target, text: str, error: str) -> str | None:
    """When a run failed writing one of the target's read-only files (a leftover such as out/ckpt.pt in the target
    folder: every file there not listed as editable is read-only by default), which file, and what to do."""
    tail = text[-8000:]
    denied = "Read-only file system" in tail or "Permission denied" in tail
    named = [rel for rel in target.readonly if (denied and rel in tail) or rel in error]
    if not named or not (denied or "read-only files changed" in error):
        return None
    files = ", ".join(named[:5])
    return (f"the run writes {files}, a read-only file of the target (every file in the target folder that is not "
            f"editable is read-only in each run, and {target.root} holds it). If it is a leftover output, remove it "
            f"from the target folder; otherwise list the read-only files in {target.root}/ar-ray.toml without it, "
            f"e.g. readonly = [\"prepare.py\"].")


class SetupError(RuntimeError):
    pass


def child_env(target: Target, extra: dict[str, str]) -> dict[str, str]:
    """The child's environment: the allowlisted part of the trainer's, the names the target passes through, the
    target's `env` values, then ar-ray's own variables (`extra`)."""
    env = {k: v for k, v in os.environ.items() if env_allowed(k) or k in target.env_passthrough}
    env.update(target.env)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"  # the log shows progress as it happens
    return env


def gpu_model(gpu_ids: list) -> str:
    if not gpu_ids:
        return "cpu"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", str(gpu_ids[0])],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "gpu"
    except (OSError, subprocess.SubprocessError):
        return "gpu"


def distributed(argv: list[str], gpus: int) -> list[str]:
    """A trainer with several GPUs runs a `{python} script.py` target under torchrun, one process per GPU."""
    if gpus > 1 and argv[0] == sys.executable and len(argv) > 1 and argv[1].endswith(".py"):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *argv[1:]]
    return argv


def phases(start: float, end: float, watch: CurveWatch | None) -> dict[str, float | None]:
    """Where a run's time went (seconds), from its own log lines (timed by the watch) and the reaper's clock:
    `startup` child start -> first progress line; `train` -> the line that first reported its highest progress
    (or the child's exit, when it never got to 100 % nor printed its metric); `eval` -> the metric line;
    `teardown` metric line -> the child exited. A target without progress lines (no progress_pattern, or a run
    that printed none): startup and eval are null and `train` is the whole run up to its metric line."""
    out: dict[str, float | None] = dict.fromkeys(("startup", "train", "eval", "teardown"))
    w = watch
    metric_at = min(w.metric_at, end) if w and w.metric_at is not None else None
    if metric_at is not None:
        out["teardown"] = max(0.0, end - metric_at)
    if w is None or w.first_progress_at is None:
        out["train"] = max(0.0, (metric_at if metric_at is not None else end) - start)
        return out
    first = min(w.first_progress_at, end)
    out["startup"] = max(0.0, first - start)
    done = (w.progress or 0.0) >= 1.0 or metric_at is not None
    train_end = min(w.last_progress_at, end) if done else end
    out["train"] = max(0.0, train_end - first)
    if metric_at is not None:
        out["eval"] = max(0.0, metric_at - train_end)
    return out


def _records(verdict: bytes) -> list[dict]:
    """The reaper's JSON lines on the verdict pipe: {"limit": why} and {"exited": code}."""
    return [json.loads(line) for line in verdict.decode(errors="replace").splitlines() if line.strip()]


class Trainer:
    """Runs candidates one at a time; `status()` answers while a run is in flight."""

    def __init__(self, target: Target, work_root: str, name: str = "trainer-0", gpu_ids: list | None = None,
                 grace_seconds: float = 5.0, keep_files: bool = False, box: Sandbox | None = None,
                 cpus: float = 1.0):
        self.target = target
        self.work_root = Path(work_root)
        self.name = name
        self.gpu_ids = list(gpu_ids or [])
        self.grace = grace_seconds
        self.keep_files = keep_files
        self.node = socket.gethostname()
        self.gpu_model = gpu_model(self.gpu_ids)
        self._lock = threading.Lock()
        self._current: dict | None = None
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._setup_done = False
        self.completed = 0
        self.box = box or Sandbox()
        self.cpu_share = cpus / (os.cpu_count() or 1)
        self._box_mode: str | None = None  # 'bwrap' or 'none', once resolved on this node
        self._warm = prestart.Prestarter(self)  # the next run's pre-started child (targets with `prestart`)

    def sandbox_note(self) -> dict:
        """How candidates are confined on this trainer's node: {'mode', 'note', 'problem'} (problem: None or why
        `--sandbox bwrap` cannot work here)."""
        try:
            mode, note = sandbox.resolve(self.box.mode)
        except sandbox.SandboxError as e:
            return {"mode": None, "note": str(e), "problem": str(e)}
        self._box_mode = mode
        if dropped := dropped_credentials(self.target):  # names only, never values
            note += f"; kept from candidates (named like credentials): {', '.join(dropped)}"
        return {"mode": mode, "note": f"{self.node}: {note}", "problem": None}

    # -- status and control (called from another thread while run() is busy) --

    def status(self) -> dict:
        with self._lock:
            cur = dict(self._current) if self._current else None
        if cur:
            cur["elapsed"] = time.time() - cur["started_at"]
        return {"trainer": self.name, "node": self.node, "gpu_model": self.gpu_model, "running": cur,
                "completed": self.completed}

    def stop(self) -> None:
        """Kill the running child (its whole tree); run() then returns status 'infra' (not the candidate's fault)."""
        self._stop.set()
        self._terminate()
        self._warm.discard()

    def close(self) -> None:
        """End the pre-started child, if any (a trainer that will run nothing more)."""
        self._warm.discard()

    def _terminate(self) -> None:
        """TERM the reaper, which TERMs the run's whole tree and KILLs it after the grace period."""
        proc = self._proc
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    # -- one experiment --

    def setup(self) -> None:
        """Run the target's setup command once per node (file lock + marker; other trainers wait)."""
        if self._setup_done or not self.target.setup:
            return
        key = hashlib.sha256((str(self.target.root) + self.target.setup
                              + "".join(sorted(self.target.readonly_hashes.values()))).encode()).hexdigest()[:16]
        marker_dir = Path(tempfile.gettempdir()) / "ar-ray-setup"
        marker_dir.mkdir(exist_ok=True)
        marker = marker_dir / f"{self.target.name}-{key}.done"
        env = child_env(self.target, {})
        with open(marker_dir / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # the marker holds where the data goes and what setup built there (the target's data files): another
            # place (AR_CACHE_DIR now set, or empty), or files deleted or changed since, and it runs again
            if not marker.exists() or marker.read_text() != self._built(env):
                setup_dir = self.work_root / f"setup-{self.node}-{key}"
                materialize(self.target, self.target.read_editable(), setup_dir)
                log = setup_dir / "log.txt"
                argv = format_command(self.target.setup, run_dir=str(setup_dir), seed=0,
                                      budget_seconds=self.target.budget_seconds or "", budget_tokens=self.target.budget_tokens or "",
                                      result_file=str(setup_dir / "result.json"))
                code, timed_out, _, _, _ = self._spawn(argv, setup_dir, env, log, self.target.hard_timeout)
                if code != 0 or timed_out:
                    tail = outcome.error_tail(outcome.read_tail(log))
                    raise SetupError(f"setup command {self.target.setup!r} failed (exit {code}{', timed out' if timed_out else ''}); "
                                     f"log: {log}\n{tail}")
                marker.write_text(self._built(env))
        self._setup_done = True

    def _built(self, env: dict) -> str:
        return json.dumps({"where": [sandbox.expand(d, env) for d in self.target.data],
                           "files": sorted(sandbox.fingerprint(self.target.data, env).items())})

    def run(self, cand: Candidate) -> Result:
        t0 = time.time()
        self._stop.clear()
        with self._lock:
            self._current = {"experiment_id": cand.experiment_id, "started_at": t0}
        try:
            return self._run(cand, t0)
        finally:
            self._warm.after_run(self._launch(cand))  # (and the next run's child, if not yet)
            with self._lock:
                self._current = None
            self.completed += 1

    def _run(self, cand: Candidate, t0: float) -> Result:
        m0 = time.monotonic()  # durations on the monotonic clock; timestamps on the wall clock
        self.setup()
        if self._box_mode is None:  # resolved once per trainer; `--sandbox bwrap` without bubblewrap stops here
            problem = self.sandbox_note()["problem"]
            if problem:
                raise SetupError(problem)
        run_dir = self.work_root / cand.experiment_id
        if os.path.lexists(run_dir) and (stuck := remove_tree(str(run_dir))):  # a re-queued experiment: start clean
            raise OSError(f"cannot clear the run dir of an earlier run of {cand.experiment_id}: {', '.join(stuck[:3])}")
        final_dir = run_dir
        # the child pre-started during the previous run, when it fits this one (trainers/prestart.py): the run
        # goes on in its run dir, which gets the experiment's name afterwards
        if warm := self._warm.claim(self._launch(cand)):
            run_dir = warm.slot
            self._warm.write_editable(warm, cand.files)
        else:
            materialize(self.target, cand.files, run_dir)
            (run_dir / "log.txt").write_bytes(b"")  # made here, so that the file the output goes to is known
        log = run_dir / "log.txt"
        log_st = log.stat()
        result_file = run_dir / "result.json"
        budget, timeout, limits, argv, env = self._plan(cand, run_dir)
        if warm:  # its private copy of the node's compile cache was made when it started
            cache_env, writable_cache = warm.cache_env, None
        else:
            cache_env, writable_cache = compile_cache.for_run(self.target, cand.files, run_dir)
        env.update(cache_env)
        data_before = sandbox.fingerprint(self.target.data, env)
        watch = CurveWatch(log, self.target.progress_pattern, cand.prune, on_prune=self._terminate,
                           metric_pattern=self.target.metric_pattern)

        # (trainers/evaluate.py) the evaluation child starts with the run, prepares, and waits for it to end
        trusted = trusted_eval.start(self, run_dir, env) if self.target.evaluate else None
        code, timed_out, child_seconds, broken, (c0, c1) = self._spawn(
            argv, run_dir, env, log, limits, confine=True, writable=(writable_cache,) if writable_cache else (),
            watch=watch, warm=warm, on_tick=lambda w: self._warm.tick(self._launch(cand), w))
        curve = watch.finish(now=c1) if self.target.progress_pattern else ()
        spent = phases(c0, c1, watch)
        text, log_problem = "", None
        try:
            text = outcome.read_tail(log, same_as=(log_st.st_dev, log_st.st_ino))
        except FileNotFoundError:  # the run's doing (its run dir is its own to write), never a lost trainer
            log_problem = "log.txt was removed or replaced by the run: it is gone"
        except outcome.NotRegularFile as e:
            log_problem = f"log.txt was removed or replaced by the run: it is now {e.strerror}"
        except OSError as e:
            log_problem = f"log.txt could not be read after the run: {e.strerror or e}"
        metric = outcome.parse_metric(text, self.target.metric_pattern)
        status = outcome.classify(code, bool(timed_out), text, metric)
        error = ""
        data_changed = sandbox.changed(data_before, sandbox.fingerprint(self.target.data, env))
        if trusted is not None:  # the metric is the trusted evaluation's, never a number the run printed
            verdict = trusted.conclude(code == 0 and not timed_out and not broken and not data_changed
                                       and not log_problem and not self._stop.is_set(), timeout, self._stop.is_set, log)
            status, metric, error, spent["eval"] = verdict.status or status, verdict.metric, verdict.error, verdict.seconds
        if self._stop.is_set():
            status, error = "infra", "stopped by the driver"
        elif code == -signal.SIGKILL and not timed_out:  # the reaper itself, not the run: Ray is killing this trainer
            status, error = "infra", "the run's supervisor was killed from outside (the trainer is being stopped or restarted)"
        elif data_changed:
            status, error = "tampered", f"the run changed the target's data: {', '.join(data_changed[:5])}"
        elif log_problem:
            status, error = "tampered", log_problem
        elif self.target.result_file and (leak := outcome.read_integrity(result_file)):  # the harness's probe
            status, error = "integrity", f"the harness's integrity check failed: {leak}"
        elif watch and watch.reason and status != "ok":  # (a run that finished first keeps its metric)
            status, error = "pruned", watch.reason
        elif broken or code == 128 + signal.SIGXFSZ or (status == "crash" and "File too large" in text[-4000:]):
            status = "limit"
            error = broken or f"file size limit: the run wrote a file past {self.box.max_file_gb:g} GiB"
        elif status == "ok":
            bad = tampered_files(self.target, run_dir)
            reported, odd = metric, None
            if self.target.result_file:
                try:
                    reported = outcome.read_result_file(result_file, self.target.metric)
                except outcome.NotRegularFile as e:  # (a FIFO would block the trainer, a link lead outside)
                    reported, odd = None, f"the result file is not a regular file: it is {e.strerror}"
            if bad:
                status, error = "tampered", f"read-only files changed by the run: {', '.join(bad)}"
            elif odd:
                status, error = "tampered", odd
            elif reported is None or abs(reported - metric) > 1e-6 * max(1.0, abs(reported)):
                status = "metric_mismatch"
                error = f"printed {self.target.metric}={metric} but the harness's result file says {reported}"
        elif status == "timeout" and not error:
            error = timed_out if isinstance(timed_out, str) else f"killed after the hard timeout of {timeout:.0f} s (--timeout sets it)"
        if status != "ok" and not error:
            error = outcome.error_tail(text, status=status, returncode=code, metric_pattern=self.target.metric_pattern)
        if status in ("crash", "tampered") and (hint := readonly_hint(self.target, text, error)):
            error = f"{error}\n{hint}"
        if status in ("oom", "crash") and (hint := outcome.memory_limit_hint(
                text, sandbox.rlimits(self.box, bool(self.gpu_ids), self.cpu_share).get("data"), self.box.max_memory_gb)):
            error = f"{error}\n{hint}"  # (last: the driver keeps the end of a long error)
        if warm:  # what a trusted run compiled goes to the node's cache; the run dir gets the experiment's name
            run_dir = self._warm.settle(warm, cand.files, final_dir)
            log = run_dir / "log.txt"
        if stuck := self._clear(run_dir):
            error = (error + "\n" if error else "") + \
                f"the trainer could not remove {len(stuck)} path(s) the run left: {', '.join(stuck[:3])}"
        summary = outcome.parse_summary(text)
        if trusted is not None:
            summary = verdict.merge(summary, self.target.metric)
        if status in UNTRUSTED_METRIC and self.target.metric in summary:
            # the number a faked or tampered run printed is kept out of the metric columns (a plain min(val_bpb) over
            # the ledger must not find it): it stays in `extra`, under printed_<metric>, and in the error
            summary[f"printed_{self.target.metric}"] = summary.pop(self.target.metric)
        t1, m1 = time.time(), time.monotonic()
        return Result(
            experiment_id=cand.experiment_id, status=status, metric=metric if status == "ok" else None,
            metrics=summary, returncode=code, error_tail=error, log_path=str(log),
            trainer=self.name, node=self.node, gpu_model=self.gpu_model, started_at=t0, ended_at=t1,
            child_seconds=child_seconds, overhead_seconds=(m1 - m0) - child_seconds - ((trusted and verdict.seconds) or 0.0), budget_seconds=budget,
            curve=curve, phases=spent,
        )

    def _launch(self, cand: Candidate):
        """run_dir -> (argv, env) of a run like `cand`'s there: what a pre-started child is started for and checked
        against (trainers/prestart.py)."""
        return lambda run_dir: self._plan(cand, run_dir)[3:]

    def _plan(self, cand: Candidate, run_dir: Path) -> tuple:
        """What a run of `cand` in `run_dir` gets: (budget, timeout, limits, argv, env), env without the compile
        cache's variables."""
        result_file = run_dir / "result.json"
        budget = cand.budget_seconds or self.target.budget_for(len(self.gpu_ids))
        values = {"run_dir": str(run_dir), "seed": cand.seed, "budget_seconds": budget or "",
                  "result_file": str(result_file)}  # (budget_tokens: below, from the child's env)
        env = {"AR_RUN_DIR": str(run_dir), "AR_SEED": str(cand.seed), "AR_RESULT_FILE": str(result_file),
               "AR_EXPERIMENT_ID": cand.experiment_id, "CUDA_VISIBLE_DEVICES": ",".join(map(str, self.gpu_ids))}
        if budget:
            env["AR_BUDGET_SECONDS"] = str(budget)
        if self.target.budget_tokens:
            env["AR_BUDGET_TOKENS"] = str(self.target.budget_tokens)
        env.update({f"AR_{k.upper()}": str(v) for k, v in cand.knobs.items()})
        timeout = cand.timeout_seconds or Timeouts(self.target.timeout_seconds, self.target.budget_tokens).for_run(
            budget, cand.knobs)
        # cand.timeout_seconds is the driver's learned limit; the target's timeout_seconds (--timeout) is a ceiling
        limits = Limits.for_run(timeout, explicit=not cand.timeout_seconds and self.target.timeout_seconds is not None,
                                token_budgeted=token_budgeted(self.target.budget_tokens, cand.knobs),
                                progress_lines=bool(self.target.progress_pattern))
        env["AR_TIMEOUT_SECONDS"] = f"{timeout:g}"
        env = child_env(self.target, env)
        # {budget_tokens} says what AR_BUDGET_TOKENS says: a ladder rung's knob wins over the target's budget
        values["budget_tokens"] = env.get("AR_BUDGET_TOKENS", "")
        argv = distributed(format_command(self.target.command, **values), len(self.gpu_ids))
        if self._box_mode == "bwrap":  # caches that default to the (read-only) home go to the run's private /tmp
            env = {**sandbox.CACHE_ENV, **env}
        return budget, timeout, limits, argv, env

    def _clear(self, run_dir: Path) -> list[str]:
        """Remove what the run left in its folder but its log and result file (with keep_files, nothing else either).
        A log or result file that is not a regular file goes in any case: it is read again later (`ar-ray report`).
        Never raises; returns the paths that could not be removed."""
        if os.path.islink(run_dir):  # (only an unconfined run can swap its folder for a link: never follow it)
            return remove_tree(str(run_dir))
        owner_rwx(str(run_dir))  # a run may have made its own folder read-only too
        try:
            entries = list(os.scandir(run_dir))
        except OSError:
            return [] if not os.path.lexists(run_dir) else [str(run_dir)]
        stuck = []
        for e in entries:
            if not (e.is_file(follow_symlinks=False) if e.name in KEEP_AFTER_RUN else self.keep_files):
                stuck += remove_tree(e.path)
        return stuck

    def _confinement(self, argv: list[str], run_dir: Path, env: dict, verdict_fd: int,
                     writable: tuple[Path, ...] = ()) -> list[str]:
        """Reaper flags for the limits, and argv inside bubblewrap when this node has it (see trainers/sandbox.py)."""
        box = self.box
        flags = ["--max-procs", str(box.max_processes), "--max-tasks", str(box.max_tasks or 8 * box.max_processes),
                 "--quota-dir", str(run_dir),
                 "--quota-bytes", str(int(box.disk_quota_gb * sandbox.GiB)), "--verdict-fd", str(verdict_fd)]
        for name, limit in sandbox.rlimits(box, bool(self.gpu_ids), self.cpu_share).items():
            flags += ["--rlimit", f"{name}={limit}"]
        # (a command that does not exist is left to the reaper, whose error names it plainly)
        if self._box_mode == "bwrap" and shutil.which(argv[0], path=env.get("PATH")):
            data = [sandbox.expand(d, env) for d in self.target.data]
            argv = sandbox.bwrap_argv(argv, run_dir, self.target.readonly, (self.work_root.parent, self.work_root),
                                      self.target.network,
                                      # (the pre-starter's harness too: ar-ray itself may live under /tmp, which
                                      # the sandbox replaces, and an editable install puts no checkout on sys.path)
                                      keep=(*sandbox.python_paths(env), prestart.WARM_CHILD, *filter(None, data)),
                                      writable=writable, cover=trusted_eval.heldout_paths(self.target, env))
        else:
            # Unconfined, nothing kills the tree for us if the reaper dies: and Ray SIGKILLs a worker's direct
            # children when the worker exits (Ctrl-C, ray.kill), the reaper among them, before its grace period can
            # escalate. So a second reaper, out of Ray's reach (a grandchild of the worker), holds the tree: it is
            # the subreaper its orphans go to, and its parent's death (SIGKILL or not) makes it end the tree.
            # It reports the run's own exit on the verdict pipe, which the first one shares with it.
            argv = [sys.executable, "-I", "-S", REAPER, "--grace", str(self.grace), "--verdict-fd", str(verdict_fd),
                    "--", *argv]
            flags += ["--share-verdict", "1"]
        return [*flags, "--", *argv]

    def _spawn(self, argv: list[str], cwd: Path, env: dict, log: Path, limits: Limits | float,
               confine: bool = False, writable: tuple[Path, ...] = (),
               watch: CurveWatch | None = None, warm: prestart.Warm | None = None,
               on_tick=None) -> tuple[int, str | None, float, str | None, tuple[float, float]]:
        """Run argv under the reaper with output to `log`; returns (exit code, why it was timed out (None: it was
        not), seconds, broken limit, (start, exit) on the monotonic clock).
        `limits`: a plain number is a hard limit in seconds; `Limits` adds the stall rule (ar_ray/timeouts.py).
        `confine`: a candidate's run (sandboxed, limited); the target's own setup command is trusted.
        `watch`: reads the log while the run goes (its curve and progress; it may prune the run).
        `warm`: a pre-started child, already confined in `cwd` with its output to `log`, told here to run argv:
        the clock starts now. `on_tick(watch)`: called from the wait loop (it may pre-start the next run)."""
        if not isinstance(limits, Limits):
            limits = Limits(soft=limits, ceiling=limits)
        if warm is not None:
            read_fd, warm.verdict_fd = warm.verdict_fd, None  # (closed below)
            start = time.monotonic()
            proc = warm.go(argv, env)
        else:
            read_fd, write_fd = os.pipe() if confine else (None, None)
            rest = self._confinement(argv, cwd, env, write_fd, writable) if confine else ["--", *argv]
            with open(log, "wb") as out:
                start = time.monotonic()
                try:
                    proc = subprocess.Popen([sys.executable, "-I", "-S", REAPER, "--parent", str(os.getpid()),
                                             "--grace", str(self.grace), *rest],
                                            cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            pass_fds=(write_fd,) if confine else ())
                finally:
                    if confine:
                        os.close(write_fd)  # the reaper holds the only write end now
        self._proc = proc
        if self._stop.is_set():  # stop() arrived while the run dir was being written
            proc.send_signal(signal.SIGTERM)
        stall = Stall(limits, start)
        if watch:
            watch.on_progress = stall.progressed
        verdict = bytearray()
        try:
            code, why, exited_at = self._wait_loop(proc, read_fd, verdict, stall, watch, on_tick)
        finally:
            self._proc = None
        end = time.monotonic()
        seconds = end - start
        broken = None
        if confine:
            with os.fdopen(read_fd, "rb") as rest:
                verdict += rest.read(8192)
            broken = next((r["limit"] for r in _records(verdict) if "limit" in r), None)
        return code, why, seconds, broken, (start, exited_at or end)

    def _wait_loop(self, proc: subprocess.Popen, read_fd: int | None, verdict: bytearray, stall: Stall,
                   watch: CurveWatch | None, on_tick=None) -> tuple[int, str | None, float | None]:
        """Wait for the reaper, reading its verdict pipe and the log every POLL seconds, and TERM it when the
        stall rule or the ceiling says so. A child that exited before a limit struck is not timed out, even while
        the reaper still sweeps leftovers that ignore SIGTERM (its grace period may outlast the limit).
        Returns (exit code, why it was timed out or None, when the child exited (the reaper's record) or None)."""
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            pidfd = None
        why, exited_at, give_up = None, None, None
        try:
            while True:
                fds = [fd for fd in (pidfd, read_fd) if fd is not None]
                ready = select.select(fds, [], [], watch_mod.POLL)[0] if fds else time.sleep(watch_mod.POLL) or []
                now = time.monotonic()
                if read_fd is not None and read_fd in ready:
                    chunk = os.read(read_fd, 4096)
                    if not chunk:
                        read_fd = None  # the reaper closed its end (it is exiting): its pidfd tells the rest
                    verdict += chunk
                    if exited_at is None and any("exited" in r for r in _records(verdict)):
                        exited_at = now
                if (pidfd is not None and pidfd in ready) or proc.poll() is not None:
                    break
                if watch:
                    watch.poll(now=now)
                if on_tick is not None and exited_at is None:
                    on_tick(watch)
                if why is None and exited_at is None and (why := stall.verdict(now)):
                    proc.send_signal(signal.SIGTERM)  # the reaper TERMs the tree, then KILLs it after the grace period
                    give_up = now + self.grace + 10
                elif exited_at is not None and give_up is None:
                    give_up = exited_at + self.grace + 10
                if give_up is not None and now > give_up:  # the reaper itself does not end: end its group
                    os.killpg(proc.pid, signal.SIGKILL)
                    give_up = float("inf")
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return proc.wait(), why, exited_at
