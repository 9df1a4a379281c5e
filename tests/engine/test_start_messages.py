"""What `ar-ray run` says when it cannot start: a clear message with what to do, never a raw traceback."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner
from toys import make_toy

from ar_ray.cli.main import main

pytestmark = pytest.mark.timeout(300)


def test_a_local_ray_that_times_out_at_startup_is_a_clear_message(tmp_path, monkeypatch):
    """Ray raises a bare Exception when its raylet does not register within 30 s (a loaded machine); it cannot be
    made to happen on demand, so ray.init raises what Ray raises then."""
    import ray
    if ray.is_initialized():
        ray.shutdown()

    def slow_start(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the raylet "
                        "failed to startup or the GCS has become overloaded.")
    monkeypatch.setattr(ray, "init", slow_start)
    target = make_toy(tmp_path / "target")
    r = CliRunner().invoke(main, ["run", "--target", str(target), "--run-dir", str(tmp_path / "run"),
                                  "--max-experiments", "1", "--sandbox", "none"])
    assert r.exit_code != 0
    assert "Traceback" not in r.output and "timed out during startup" in r.output
    assert "did not start in time" in r.output and "ray start --head" in r.output and "--address auto" in r.output, \
        r.output
    assert type(r.exception) is SystemExit, repr(r.exception)  # handled: not an uncaught exception


def test_a_leftover_read_only_file_the_baseline_writes_names_the_file_and_the_fix(tmp_path):
    import subprocess
    target = make_toy(tmp_path / "target", train="import os\nLR = 0.5\nos.makedirs('out', exist_ok=True)\n"
                      "open('out/ckpt.pt', 'wb').write(b'new')\nprint('val_bpb: 1.0')\n")
    (target / "out").mkdir()
    (target / "out" / "ckpt.pt").write_bytes(b"a checkpoint left by a manual run")
    out = subprocess.run([sys.executable, "-m", "ar_ray.cli.main", "run", "--target", str(target), "--run-dir",
                          str(tmp_path / "run"), "--max-experiments", "1", "--trainers", "1", "--cpus-per-trainer", "1"],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "RAY_ADDRESS": ""})
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "the unmodified target failed" in text and "out/ckpt.pt" in text, text[-3000:]
    assert "remove it from the target folder" in text and "readonly = [" in text, text[-3000:]
    assert "ar_ray/" not in text  # (the traceback there is the candidate's, not ar-ray's)
