"""Removing what a run left, even from folders it made read-only."""

from __future__ import annotations

import os
import shutil
import stat
import sys

ONEXC = "onexc" if sys.version_info >= (3, 12) else "onerror"  # rmtree's error handler (onerror: deprecated in 3.12)


def owner_rwx(path: str) -> None:
    """Give a directory (never a link's target) u+rwx back: a run may have made its own folders read-only."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode) and mode & stat.S_IRWXU != stat.S_IRWXU:
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IRWXU)
    except OSError:
        pass


def remove_tree(path: str) -> list[str]:
    """Remove a file, link or folder tree that a run left, also from folders it made read-only (chmod 500 stops
    a non-root trainer): on an error the entry's folder, and the entry when it is one, get u+rwx and it is tried
    once more. Never raises; returns the paths that could not be removed."""
    stuck: list[str] = []
    tried: set[str] = set()

    def remove(p: str) -> None:
        if stat.S_ISDIR(os.lstat(p).st_mode):
            shutil.rmtree(p, **{ONEXC: retry})
        else:
            os.unlink(p)  # (never rmtree on a FIFO: it would open it)

    def retry(_func, p: str, _exc) -> None:
        if p in tried:
            stuck.append(p)
            return
        tried.add(p)
        owner_rwx(os.path.dirname(p))
        owner_rwx(p)
        try:
            remove(p)
        except FileNotFoundError:
            pass
        except OSError:
            stuck.append(p)

    try:
        remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        retry(None, path, e)
    return stuck


# -- folders owned by a process: named after it, removed by whoever finds them after it died (a SIGKILL runs no
# cleanup handler). The owner's identity is the reaper's: `<pid namespace>-<pid>-<start time>` (a pid alone is
# reused, and means nothing in another pid namespace).

def owned_prefix(prefix: str, pid: int | None = None) -> str:
    """`prefix` + the identity of process `pid` (default: this one) + '-': the prefix of a temporary folder that
    `sweep_orphans` removes once that process is gone."""
    from trainers.reaper import _identity
    return f"{prefix}{_identity(pid or os.getpid())}-"


def owner_gone(name: str, prefix: str) -> bool:
    """Whether the process named by a folder `prefix<ns>-<pid>-<start>-<anything>` is gone. Names of another pid
    namespace, or not made by owned_prefix, are never judged gone."""
    from trainers.reaper import _identity
    parts = name[len(prefix):].split("-", 3)
    if not name.startswith(prefix) or len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
        return False
    here = _identity(os.getpid())
    if not here or here.split("-")[0] != parts[0]:
        return False
    return _identity(int(parts[1])) != "-".join(parts[:3])


def sweep_orphans(parent: str, prefix: str) -> list[str]:
    """Remove the folders in `parent` named `prefix<identity>-...` (owned_prefix) of this user whose process is
    gone. Never raises; returns the folders removed."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        try:
            mine = e.is_dir(follow_symlinks=False) and e.stat(follow_symlinks=False).st_uid == os.getuid()
        except OSError:
            continue
        if mine and owner_gone(e.name, prefix) and not remove_tree(e.path):
            removed.append(e.path)
    return removed
