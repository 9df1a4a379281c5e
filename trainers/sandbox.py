"""Confinement for candidate code: every training run is code an LLM wrote.

Two layers, so a machine without the first still gets the second:

1. **bubblewrap** (`--sandbox bwrap`, or `auto` when it works here): the child sees
   the whole filesystem read-only, a private /tmp, /proc of its own PID
   namespace (no other process's environment), no network unless the target
   opts in, no capabilities; only its run dir is writable. The run dir's
   read-only files, other experiments, the ledger and credential folders
   (~/.ray, ~/.aws, ~/.ssh, ...) are hidden or read-only. GPU device nodes are
   passed through. When the namespace's first process dies the kernel kills
   everything in it, so nothing can escape the reaper.
2. **Always**, with or without bubblewrap: an environment with credentials
   removed (trainers/trainer.py), resource limits (open files, size of any
   file written, data memory on CPU runs), a pids cgroup per run where the
   machine allows one, and watchdogs in the reaper for the number of processes
   and the size of the run dir. After the run the trainer
   checks the read-only files and the data by hash and fingerprint.

`Sandbox` is plain data (it travels to trainer actors); `resolve` decides what
`auto` means on this node and says why, once.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REAPER = str(Path(__file__).with_name("reaper.py"))  # the supervisor every run and child starts under

MODES = ("auto", "bwrap", "none")
# Credentials a candidate must never read, relative to $HOME: hidden behind an empty tmpfs or /dev/null.
SECRET_DIRS = (".ray", ".aws", ".ssh", ".gnupg", ".azure", ".kube", ".docker", ".config/gcloud", ".config/gh",
               ".huggingface", ".cache/huggingface/token")
SECRET_FILES = (".netrc", ".git-credentials", ".pypirc", ".config/openai", ".openai")
GiB = 2**30
# Under bubblewrap only /tmp (private to the run) and the run dir are writable: point what defaults to the
# read-only home folder there. The compile caches (Triton's kernels, Inductor's) are set for every run by
# trainers/compile_cache.py: a private copy of a node cache that only runs of the unmodified target write.
CACHE_ENV = {"TRITON_HOME": "/tmp", "MPLCONFIGDIR": "/tmp/matplotlib"}


class SandboxError(RuntimeError):
    """The sandbox asked for cannot work on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Sandbox:
    mode: str = "auto"  # auto | bwrap | none
    network: bool = False  # the target may opt in (`network = true` in ar-ray.toml)
    max_processes: int = 512  # processes in the run's tree (the reaper's watchdog)
    max_tasks: int | None = None  # tasks (threads too) in the run's pids cgroup, where one can be made; None: 8 x max_processes
    max_open_files: int = 4096
    max_file_gb: float = 64.0  # any one file the run writes (RLIMIT_FSIZE)
    disk_quota_gb: float = 64.0  # the whole run dir, checked during the run
    max_memory_gb: float | None = None  # CPU runs' data memory (RLIMIT_DATA); None: this node's share of RAM

    def __post_init__(self):
        if self.mode not in MODES:
            raise SandboxError(f"--sandbox must be one of {', '.join(MODES)}, got {self.mode!r}")
        flags = {"max_processes": "--max-processes", "disk_quota_gb": "--disk-quota-gb", "max_memory_gb": "--max-memory-gb"}
        for name in ("max_processes", "max_open_files", "max_file_gb", "disk_quota_gb", "max_memory_gb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SandboxError(f"{flags.get(name, 'sandbox limit ' + name)} must be positive, got {value:g}")


@functools.cache
def bwrap_problem() -> str | None:
    """None when bubblewrap can start a confined process here; otherwise why not, and what to do."""
    exe = shutil.which("bwrap")
    if not exe:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = [exe, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net",
             "--die-with-parent", "--", "/bin/true"]
    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap could not start: {e}"
    if out.returncode != 0:
        return (f"bubblewrap cannot create namespaces here ({out.stderr.strip() or out.returncode}); allow unprivileged "
                "user namespaces (sysctl kernel.unprivileged_userns_clone=1, or the AppArmor rule "
                "kernel.apparmor_restrict_unprivileged_userns=0) or run the trainers as root")
    return None


def resolve(mode: str) -> tuple[str, str]:
    """('bwrap' | 'none', a sentence for the user). `bwrap` fails loudly when it cannot work."""
    if mode == "none":
        return "none", "sandbox: none (asked for): candidates run with a stripped environment, limits and watchdogs only"
    problem = bwrap_problem()
    if problem is None:
        return "bwrap", "sandbox: bubblewrap (read-only system, private /tmp and /proc, no network, writable run dir only)"
    if mode == "bwrap":
        raise SandboxError(f"--sandbox bwrap: {problem}. Or pass --sandbox auto to fall back to limits and watchdogs.")
    return "none", (f"sandbox: none ({problem}); candidates run with a stripped environment, limits and watchdogs "
                    "only: they can read files this user can read and open network connections")


def memory_limit_bytes(box: Sandbox, share: float) -> int:
    """RLIMIT_DATA for a CPU run: the configured limit, or this trainer's share of the node's RAM (at least 2 GiB)."""
    if box.max_memory_gb is not None:
        return int(box.max_memory_gb * GiB)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(2 * GiB, int(0.9 * ram * min(1.0, share)))


def rlimits(box: Sandbox, gpu: bool, cpu_share: float) -> dict[str, int]:
    """Resource limits for the child, by `resource.RLIMIT_*` name (lower case). No memory limit on GPU runs:
    CUDA maps far more address space than it uses."""
    limits = {"nofile": box.max_open_files, "fsize": int(box.max_file_gb * GiB), "core": 0}
    if not gpu:
        limits["data"] = memory_limit_bytes(box, cpu_share)
    return limits


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def bwrap_argv(argv: list[str], run_dir: Path, readonly: tuple[str, ...], hide: tuple[Path, ...],
               network: bool, keep: tuple[str, ...] = (), writable: tuple[Path, ...] = (),
               cover: tuple[str, ...] = (), read_only: bool = False, chdir: Path | None = None) -> list[str]:
    """`argv` wrapped in bubblewrap. `hide`: folders to cover with an empty tmpfs (other experiments, the ledger).
    `keep`: paths the run needs that may lie under a covered folder (the Python installation, its sys.path, the
    data): bound back read-only, unless that would uncover a hidden folder or the run dir's parents.
    `writable`: folders a trusted run may write besides its run dir (the node's compile cache).
    `cover`: paths the run must not read (a target's held-out data): an empty folder or file in their place.
    `read_only`: nothing is writable, the run dir and /tmp included (the trusted evaluation: trainers/evaluate.py).
    `chdir`: the working directory (default: the run dir)."""
    run_dir = Path(run_dir).resolve()
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if not network:
        args.append("--unshare-net")
    for dev in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):  # GPUs stay usable
        args += ["--dev-bind", dev, dev]
    # Mount order matters: cover the run's parents, bind back what the run needs, hide the credentials,
    # then bind the run dir itself on top.
    hidden = []
    for folder in hide:
        folder = Path(folder).resolve()
        if folder.is_dir() and run_dir.is_relative_to(folder):
            args += ["--tmpfs", str(folder)]
            hidden.append(folder)
    for path in kept(keep, hidden, run_dir):
        args += ["--ro-bind", str(path), str(path)]
    for path in sorted({os.path.realpath(p) for p in cover if p and os.path.isabs(p) and os.path.lexists(p)}):
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    home = _home()
    for rel in SECRET_DIRS:
        if (home / rel).is_dir():
            args += ["--tmpfs", str(home / rel)]
        elif (home / rel).exists():
            args += ["--ro-bind", "/dev/null", str(home / rel)]
    for rel in SECRET_FILES:
        if (home / rel).exists() and not (home / rel).is_dir():
            args += ["--ro-bind", "/dev/null", str(home / rel)]
    if read_only:
        if writable:
            raise ValueError("bwrap_argv: read_only with writable folders")
        args += ["--ro-bind", str(run_dir), str(run_dir), "--remount-ro", "/tmp"]
    else:
        args += ["--bind", str(run_dir), str(run_dir)]
    for folder in writable:
        args += ["--bind", str(folder), str(folder)]
    for rel in readonly:
        if (run_dir / rel).exists():
            args += ["--ro-bind", str(run_dir / rel), str(run_dir / rel)]
    args += ["--chdir", str(chdir or run_dir), "--", *argv]
    return args


def kept(paths, hidden: list[Path], run_dir: Path) -> list[Path]:
    """Of `paths`, those under /tmp (replaced by an empty private one) that can be bound back without uncovering
    anything: not inside a hidden folder, not /tmp itself, not an ancestor of a hidden folder or of the run
    dir. Sorted, without paths inside another."""
    tmp = Path("/tmp")
    out: list[Path] = []
    for raw in sorted({str(Path(p).resolve()) for p in paths if p and os.path.isabs(p) and os.path.exists(p)}):
        p = Path(raw)
        if p == tmp or not p.is_relative_to(tmp) or any(p.is_relative_to(h) for h in hidden):
            continue
        if any(h.is_relative_to(p) for h in hidden) or run_dir.is_relative_to(p):
            continue
        if not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return out


def python_paths(env: dict[str, str]) -> list[str]:
    """Where the child's Python lives and looks for modules: the installation, sys.path, PYTHONPATH."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             os.path.dirname(sys.executable), *sys.path]
    return paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def expand(path: str, env: dict[str, str]) -> str | None:
    """`~` and `$VAR` / `${VAR}` from `env`; None when a variable is unset (the entry does not apply here)."""
    missing = []

    def var(m):
        name = m.group(1) or m.group(2)
        if name not in env:
            missing.append(name)
        return env.get(name, "")
    out = re.sub(r"\$(\w+)|\$\{(\w+)\}", var, path)
    return None if missing or not out else os.path.expanduser(out)


def fingerprint(paths: tuple[str, ...], env: dict[str, str]) -> dict[str, tuple[int, int, int]]:
    """(size, inode, ctime) of every file under `paths`: a write, a rename or a `touch` changes it, and a candidate
    cannot set ctime back. Cheap enough to take before and after every run (no file is read)."""
    out = {}
    for entry in paths:
        root = expand(entry, env)
        if root is None:
            continue
        if os.path.isfile(root):
            files = [root]
        else:
            files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names]
        for f in files:
            try:
                st = os.lstat(f)
            except OSError:
                continue
            out[f] = (st.st_size, st.st_ino, st.st_ctime_ns)
    return out


def changed(before: dict, after: dict) -> list[str]:
    """Files modified or removed between two fingerprints, sorted. Files added are not counted: on a shared
    node another job's setup may build a cache of its own beside this one while a run is in flight."""
    return sorted(k for k in before if before[k] != after.get(k))
