"""A CPU run that cannot get memory under the sandbox's memory limit (--max-memory-gb, RLIMIT_DATA) says so: its
error names the flag and its value as the likely cause and what to do, not only the loader's or Python's words.
Real children under the real reaper and the real limit; no Ray."""

from __future__ import annotations

import pytest

from helpers_targets import candidate, make_target
from trainers import outcome
from trainers.sandbox import GiB, Sandbox
from trainers.trainer import Trainer

pytestmark = pytest.mark.timeout(60)

ALLOCATES = """
x = bytearray(3 * 2**30)  # more than the limit below
print("val_bpb: 1.0")
"""
CRASHES = """
raise RuntimeError("a plain bug")
"""


def run_under(tmp_path, train: str, max_memory_gb: float | None):
    target = make_target(tmp_path / "target", train)
    trainer = Trainer(target, str(tmp_path / "work"), name="t-mem", grace_seconds=0.3,
                      box=Sandbox(mode="none", max_memory_gb=max_memory_gb))
    try:
        return trainer.run(candidate(target))
    finally:
        trainer.close()


def test_a_limit_too_small_for_the_interpreter_names_max_memory_gb(tmp_path):
    """--max-memory-gb 0.001: the interpreter cannot even be loaded ("cannot map zero-fill pages" where libpython is
    a shared library)."""
    res = run_under(tmp_path, "print('val_bpb: 1.0')\n", 0.001)
    assert res.status == "oom", res.error_tail
    assert "--max-memory-gb 0.001" in res.error_tail and "raise --max-memory-gb" in res.error_tail, res.error_tail
    assert res.error_tail.rstrip().endswith("share of the node's RAM."), res.error_tail  # last: the driver keeps the end


def test_a_memory_error_under_the_limit_names_it(tmp_path):
    res = run_under(tmp_path, ALLOCATES, 1.0)
    assert res.status == "oom" and "MemoryError" in res.error_tail, res.error_tail
    assert "under --max-memory-gb 1 (the 1 GiB" in res.error_tail, res.error_tail


def test_a_crash_that_is_not_about_memory_gets_no_memory_hint(tmp_path):
    res = run_under(tmp_path, CRASHES, 1.0)
    assert res.status == "crash" and "a plain bug" in res.error_tail and "--max-memory-gb" not in res.error_tail


@pytest.mark.parametrize("line", ["ld.so: error while loading shared libraries: libpython3.11.so.1.0: cannot map "
                                  "zero-fill pages", "OSError: [Errno 12] Cannot allocate memory",
                                  "error while loading shared libraries: libz.so.1: failed to map segment from "
                                  "shared object", "MemoryError", "terminate called after throwing an instance of "
                                  "'std::bad_alloc'"])
def test_allocation_failures_are_out_of_memory_with_the_hint(line):
    text = f"step 1\n{line}\n"
    assert outcome.classify(1, False, text, None) == "oom"
    assert "--max-memory-gb 2" in outcome.memory_limit_hint(text, 2 * GiB, 2.0)
    default = outcome.memory_limit_hint(text, 3 * GiB, None)
    assert "3 GiB" in default and "--max-memory-gb was not given" in default
    assert outcome.memory_limit_hint(text, None, None) is None  # a GPU run has no memory limit: not the cause
