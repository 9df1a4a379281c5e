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
