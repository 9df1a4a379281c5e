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
  That placeholder is itself first on the workers' sys.path, so it must be private to this user: see
  placeholder_working_dir.

Inside a Ray job (`ray job submit ... -- ar-ray run --address auto`) the job's runtime env is the driver's too, and
Ray refuses a ray.init runtime_env that sets any of the same fields ("Failed to merge the Job's runtime env"):
`driver_runtime_env` reuses the job's env, adding nothing when the job already ships our packages (its
working_dir, py_modules or pip hold them) and merging our py_modules into it otherwise.
"""

from __future__ import annotations

import atexit
import fnmatch
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import ar_ray
import proposers
import trainers
from ar_ray.errors import ConfigError
from ar_ray.ledger.store import RUN_FILE

PACKAGES = (ar_ray, trainers, proposers)
# never needed on a node: caches, VCS and venvs, run dirs and ledgers (their parts: *.parquet; not a folder named
# ledger, which is also ar_ray's own package), data and checkpoints
EXCLUDES = [
    "__pycache__", "*.pyc", "*.pyo", ".git", ".venv", "venv", ".pytest_cache", "*.egg-info", ".ipynb_checkpoints",
    "runs", ".cache", "wandb", "checkpoints",
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


PLACEHOLDER_TEXT = "ar-ray: placeholder working_dir, so Ray workers import the shipped py_modules (ar_ray/engine/shipping.py)\n"
_fallback_dir: str | None = None


def placeholder_working_dir(root: str | os.PathLike | None = None) -> str:
    """A private directory holding one small fixed file (so one upload, content-addressed, serves every run).

    Ray ships this directory to every node and puts it FIRST on the workers' PYTHONPATH, so anything in it (a
    numpy.py, say) is imported by every worker. It is therefore never a guessable shared path such as
    /tmp/ar-ray-workdir-<uid>, which another local user could create first: it is `workdir` in the user's own
    cache folder (~/.cache/ar-ray, or `root`), created mode 700, and refused (ShippingError, naming what to
    delete) unless it is a real directory owned by this user, writable by no one else, holding only README.
    Where the cache folder cannot be written (a read-only or missing home), a fresh private mkdtemp serves.
    """
    try:
        base = Path(root) if root is not None else Path.home() / ".cache" / "ar-ray"
        base.mkdir(parents=True, exist_ok=True)
        d = base / "workdir"
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
    except (OSError, RuntimeError):  # RuntimeError: Path.home() found no home
        if root is not None:
            raise
        return _private_tempdir()
    _check_private(d)
    f = d / "README"
    if not f.exists() or f.read_text() != PLACEHOLDER_TEXT:
        fd, tmp = tempfile.mkstemp(prefix=".workdir-README.", dir=base)  # beside d, so d never holds it
        try:
            with os.fdopen(fd, "w") as out:
                out.write(PLACEHOLDER_TEXT)
            os.chmod(tmp, 0o644)
            os.replace(tmp, f)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(d)


def _check_private(d: Path) -> None:
    st = os.lstat(d)
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.getuid():
        problem = f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    elif extra := sorted(set(os.listdir(d)) - {"README"}):
        problem = f"holds files other than its README: {', '.join(extra[:5])}"
    elif os.path.lexists(d / "README") and not stat.S_ISREG(os.lstat(d / "README").st_mode):
        problem = "has a README that is not a plain file"
    else:
        return
    raise ShippingError(f"the placeholder working_dir {d} {problem}. Ray ships it to every node, first on the "
                        f"workers' PYTHONPATH, so ar-ray will not use it: check what is in it, delete it "
                        f"(rm -r {d}) and run again; ar-ray recreates it.")


def _private_tempdir() -> str:
    """A fresh mkdtemp (mode 700, an unguessable name) holding the README, made once per process."""
    global _fallback_dir
    if _fallback_dir is None:
        d = tempfile.mkdtemp(prefix="ar-ray-workdir-")
        Path(d, "README").write_text(PLACEHOLDER_TEXT)
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _fallback_dir = d
    return _fallback_dir


JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager for a job's entrypoint (ray._private.runtime_env.constants)


def job_runtime_env(environ=None) -> dict | None:
    """The runtime env of the Ray job this process is the entrypoint of ({} for a job without one), None outside a job."""
    environ = os.environ if environ is None else environ
    raw = environ.get(JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        return dict(json.loads(raw).get("runtime_env") or {})
    except (ValueError, AttributeError, TypeError):
        return None


def _from_ray_package(path: str) -> bool:
    """A directory Ray unpacked from a runtime env (a job's working_dir, py_modules or pip env): Ray keeps them all
    under its session's runtime_resources folder."""
    return "runtime_resources" in Path(path).parts


def shipped_by_job(job_env: dict, dirs: list[str] | None = None) -> bool:
    """Does the job's runtime env already bring our packages to every node? It does when this driver imported them
    from what the job shipped: its working_dir (the job's entrypoint runs in it) or what Ray unpacked for it."""
    dirs = package_dirs() if dirs is None else dirs
    cwd = Path.cwd().resolve()
    in_working_dir = bool(job_env.get("working_dir")) and all(Path(d).resolve().is_relative_to(cwd) for d in dirs)
    return in_working_dir or all(_from_ray_package(d) for d in dirs)


def driver_runtime_env(environ=None, max_bytes: int = MAX_BYTES) -> tuple[dict | None, bool, str]:
    """(runtime_env for ray.init, whether Ray must let it override the job's, what was decided, in words).

    Outside a job: package_runtime_env() (py_modules and a placeholder working_dir). Inside one whose runtime env
    already carries our packages: None, the job's env as it is. Inside one that does not (say, a working_dir with
    only the target, ar-ray installed on the head): the job's env with our py_modules added to its own and the
    excludes joined, and its working_dir kept (the placeholder only when it has none). That env repeats the job's
    fields, so it is passed with RAY_OVERRIDE_JOB_RUNTIME_ENV: it overrides each field with a superset of it."""
    job_env = job_runtime_env(environ)
    if job_env is None:
        return package_runtime_env(max_bytes=max_bytes), False, "shipping ar-ray's packages to the nodes (py_modules)"
    if shipped_by_job(job_env):
        return None, False, "the Ray job's runtime env ships ar-ray's code: using it as it is"
    env = package_runtime_env({k: v for k, v in job_env.items() if k != "env_vars"}, max_bytes=max_bytes)
    override = bool(set(env) & set(job_env))  # (the job's env_vars Ray merges in itself, name by name)
    return env, override, "adding ar-ray's packages (py_modules) to the Ray job's runtime env"
