"""A compile cache every run can read and no candidate can write into.

torch.compile spends tens of seconds of each run compiling kernels (the small GPT on CPU: 54 s cold, 5 s
from a copied cache; docs/BENCHMARKS.md). The budget does not count it, but the GPU sits idle meanwhile.
One cache shared by all runs would let a candidate plant code that later runs load. So the node keeps one
cache per target, written only by runs of the unmodified target (trusted code: the baseline and its
repeats, a sweep's baseline variant), and every other run starts from a private copy of it in its own run
dir; whatever a candidate compiles there is thrown away with the run dir. Candidates that change only
hyperparameters, most of them, compile the same graphs and find them all.

Under bubblewrap the node's cache is read-only to candidates (only the run dir is writable); without it,
nothing confines a candidate's writes anyway (see the README's sandbox section).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

ROOT = "~/.cache/ar-ray/compile"  # per node; AR_COMPILE_CACHE (in the trainer's environment) moves it
PRIVATE = ".compile-cache"  # a candidate's copy, inside its run dir


def node_dir(target) -> Path:
    """This node's cache for the target as shipped (its editable and read-only files)."""
    key = json.dumps([sorted(target.readonly_hashes.items()), sorted(target.read_editable().items())])
    root = Path(os.path.expanduser(os.environ.get("AR_COMPILE_CACHE") or ROOT))
    return root / f"{target.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def for_run(target, files: dict[str, str], run_dir: Path) -> tuple[dict[str, str], Path | None]:
    """(the cache variables for a run, the node's cache folder when the run may write it: trusted runs only)."""
    shared = node_dir(target)
    own = Path(run_dir) / PRIVATE
    if files == target.read_editable():
        try:
            shared.mkdir(parents=True, exist_ok=True)
            return _env(shared), shared
        except OSError:  # no writable home on this node: the run compiles in its own dir, as a candidate does
            return _env(own), None
    if shared.is_dir():
        try:  # a copy, never links: a candidate writing into a hard-linked file would change the node's cache
            shutil.copytree(shared, own, symlinks=True, dirs_exist_ok=True)
        except (shutil.Error, OSError):
            pass  # a trusted run was writing meanwhile: what was copied still helps, the rest compiles
    return _env(own), None


def _env(folder: Path) -> dict[str, str]:
    return {"TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor"), "TRITON_CACHE_DIR": str(folder / "triton")}
