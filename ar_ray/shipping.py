"""Ship the driver's code to every node: a Ray runtime_env carrying ar_ray, trainers and proposers.

Ray zips each `py_modules` directory, content-addressed by hash, uploads it to the GCS once, and each node
unpacks it under its runtime-resources dir and puts it first on the workers' PYTHONPATH, so nodes without
the package (or with an old one) run exactly the driver's code. Notes on Ray 2.60's packaging:

- `excludes` are gitwildmatch patterns relative to each module's own directory; Ray's default excludes
  (.git, .venv, __pycache__) apply to working_dir only, not py_modules, so we list them ourselves.
- A pattern with a trailing slash ("runs/") matches only what is inside the dir: we use bare names.
- Ray honours .gitignore / .rayignore files found in the shipped directories themselves (not the
  repository's top-level .gitignore, which lies above them); RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 turns
  the .gitignore part off.
- One upload may be at most ~500 MiB (the gRPC message limit); we refuse far earlier.
- Without a working_dir, Ray puts the driver's current directory (and script directory) FIRST on every
  worker's sys.path, ahead of py_modules: a driver started in a checkout (cluster.yaml mounts one at the same
  path on every node) would make each node import its own, possibly stale, copy. A tiny placeholder
  working_dir turns that off; workers then start in its unpacked copy instead of the raylet's directory.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

import ar_ray
import proposers
import trainers
from ar_ray.config import ConfigError
from ar_ray.ledger import RUN_FILE

PACKAGES = (ar_ray, trainers, proposers)
# never needed on a node: caches, VCS and venvs, run dirs and ledgers, data and checkpoints
EXCLUDES = [
    "__pycache__", "*.pyc", "*.pyo", ".git", ".venv", "venv", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints",
    "runs", "ledger", ".cache", "wandb", "checkpoints",
    "*.parquet", "*.arrow", "*.feather", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.npy", "*.npz",
    "*.h5", "*.log",
]
MAX_BYTES = 50 * 1024 * 1024


class ShippingError(ConfigError):
    """The package folders hold too much to ship; the CLI shows it as a user error."""


def package_dirs() -> list[str]:
    return [str(Path(m.__file__).resolve().parent) for m in PACKAGES]


def _shipped_files(root: str, excludes: list[str]):
    """(relative path, bytes) of each file Ray would ship from root, and the run dirs found (to exclude)."""
    files, run_dirs = [], []
    for d, dirs, names in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel != "." and RUN_FILE in names:  # a run dir someone put inside the package
            run_dirs.append("/" + rel.replace(os.sep, "/"))
            dirs[:] = []
            continue
        dirs[:] = [x for x in dirs if not _excluded(x, excludes)]
        for n in names:
            p = os.path.join(d, n)
            if not _excluded(n, excludes) and os.path.isfile(p):
                files.append((os.path.relpath(p, root), os.path.getsize(p)))
    return files, run_dirs


def _excluded(name: str, excludes: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in excludes if "/" not in pat)


def package_runtime_env(existing: dict | None = None, max_bytes: int = MAX_BYTES) -> dict:
    """`existing` (left unchanged) plus py_modules for our packages and excludes; raises ShippingError if too big."""
    env = dict(existing or {})
    excludes = list(dict.fromkeys([*(env.get("excludes") or []), *EXCLUDES]))
    dirs, sizes = package_dirs(), []
    for root in dirs:
        files, run_dirs = _shipped_files(root, excludes)
        excludes += [r for r in run_dirs if r not in excludes]
        sizes += [(n, os.path.join(root, f)) for f, n in files]
    total = sum(n for n, _ in sizes)
    if total > max_bytes:
        big = ", ".join(f"{p} ({n / 2**20:.1f} MB)" for n, p in sorted(sizes, reverse=True)[:5])
        raise ShippingError(f"the code to ship to the Ray nodes is {total / 2**20:.1f} MB (over {max_bytes / 2**20:.0f} MB); "
                            f"largest: {big}. Move these out of the package folders, or install the package on every "
                            "node and turn code shipping off (connect(..., ship_code=False)).")
    env["py_modules"] = list(dict.fromkeys([*(env.get("py_modules") or []), *dirs]))
    env["excludes"] = excludes
    env.setdefault("working_dir", placeholder_working_dir())
    return env


def placeholder_working_dir() -> str:
    """A directory holding one small fixed file (so one upload, content-addressed, serves every run)."""
    d = Path(tempfile.gettempdir()) / f"ar-ray-workdir-{os.getuid()}"
    f = d / "README"
    text = "ar-ray: placeholder working_dir, so Ray workers import the shipped py_modules (ar_ray/shipping.py)\n"
    if not f.is_file() or f.read_text() != text:
        d.mkdir(exist_ok=True)
        tmp = d / f".README.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, f)
    return str(d)
