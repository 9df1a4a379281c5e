"""`ar-ray check`: toy targets (each run well under a second) and the nanoGPT fixture's knobs; no Ray."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from ar_ray.cli.check_cmd import check_target, reads_budget, render
from ar_ray.cli.check_scratch import SCRATCH_PREFIX
from ar_ray.cli.names_read import names_in_code
from ar_ray.cli.main import main
from ar_ray.target import load_target
from helpers_targets import marked_pids, new_mark, wait_for
from trainers.sandbox import bwrap_problem

pytestmark = pytest.mark.timeout(60)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

NOISY = """
import os, random
import time
budget, t0 = float(os.environ["AR_BUDGET_SECONDS"]), time.monotonic()
while time.monotonic() - t0 < budget:  # "training" until the budget is spent
    pass
random.seed(int(os.environ["AR_SEED"]))
LEARNING_RATE = 0.01
print(f"val_bpb: {1.0 + random.gauss(0, 0.01):.6f}")
"""
DETERMINISTIC = """
import os, time
budget, t0 = float(os.environ["AR_BUDGET_SECONDS"]), time.monotonic()
while time.monotonic() - t0 < budget:
    pass
LEARNING_RATE = 0.01
print("val_bpb: 1.5")
"""
NO_BUDGET = """
import os, random
random.seed(int(os.environ["AR_SEED"]))
LEARNING_RATE = 0.01
print(f"val_bpb: {1.0 + random.random():.6f}")
"""


def toy(tmp_path: Path, train: str, files: dict[str, bytes] | None = None) -> Path:
    root = tmp_path / "target"
    root.mkdir()
    (root / "train.py").write_text(textwrap.dedent(train))
    (root / "prepare.py").write_text("VOCAB = 42\n")
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "ar-ray.toml").write_text('[target]\neditable = ["train.py"]\nbudget_seconds = 0.3\n')
    return root


def levels(report, level: str) -> str:
    return "\n".join(f.text for f in report.findings if f.level == level)


def test_noisy_toy_reports_its_noise_floor_and_estimates(tmp_path):
    report = check_target(str(toy(tmp_path, NOISY)), repeats=3, sandbox="none", gpus=[])
    text = render(report)
    assert report.facts["deterministic"] is False and report.facts["noise"] > 0
    assert "noise floor" in text and "deterministic" not in text
    assert "LEARNING_RATE" in report.facts["knobs"] and report.facts["budget_honoured"]
    assert report.facts["min_gain"] == pytest.approx(2 * report.facts["noise"] * (1 / 2 + 1 / 3) ** 0.5)
    assert "experiments per" in text and report.verdict == "ready" and report.exit_code == 0, text


def test_deterministic_toy_is_called_deterministic(tmp_path):
    report = check_target(str(toy(tmp_path, DETERMINISTIC)), repeats=2, sandbox="none", gpus=[])
    text = render(report)
    assert report.facts["deterministic"] is True
    assert "deterministic: ignores AR_SEED" in text
    assert report.verdict == "ready, with warnings" and report.exit_code == 0


def test_leftover_checkpoint_and_large_file_are_warned_about(tmp_path):
    root = toy(tmp_path, NOISY, {"out/ckpt.pt": b"\0" * 100, "data/big.txt": b"x" * (2 * 2**20)})
    report = check_target(str(root), repeats=2, sandbox="none", gpus=[])
    warns = levels(report, "warn")
    assert "out/ckpt.pt is a checkpoint" in warns and "Remove it" in warns
    assert "data/big.txt is 2.0 MB" in warns and "data = [...]" in warns


def test_target_ignoring_its_budget_is_not_a_clock(tmp_path):
    report = check_target(str(toy(tmp_path, NO_BUDGET)), repeats=2, sandbox="none", gpus=[], budget_check=True)
    assert report.facts["budget_honoured"] is False
    assert "the budget is not a clock: results depend on the compute you allow" in levels(report, "warn")
    assert "AR_BUDGET_SECONDS is named in no editable or read-only file" in render(report)


def test_metric_pattern_matching_nothing_must_be_fixed_and_exits_1(tmp_path, monkeypatch):
    root = toy(tmp_path, 'import os\nos.environ["AR_BUDGET_SECONDS"]\nLR = 0.1\nprint("loss 1.0")\n')
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["check", str(root), "--repeats", "1", "--sandbox", "none"])
    assert r.exit_code == 1, r.output
    assert "FIX" in r.output and "matches no line" in r.output and "verdict: not ready" in r.output
    # the log named is one that outlives the check: under runs/check-<time>/ here, with what the run printed
    kept = [Path(p) for p in re.findall(r"full log kept in (\S+?\.log)", r.output)]
    assert kept and all(p.is_file() for p in kept), r.output
    assert kept[0].parent.parent == tmp_path / "runs" and kept[0].parent.name.startswith("check-")
    assert "loss 1.0" in kept[0].read_text() and "loss 1.0" in r.output.split("its last lines")[1]
    assert SCRATCH_PREFIX not in r.output, "the report names a file in the check's temporary folder"


CRASHES = """
import os
os.environ["AR_BUDGET_SECONDS"]
LR = 0.1
print("loading the data from ./nowhere")
raise SystemExit("no data in ./nowhere")
"""


def test_a_failing_runs_log_is_kept_where_the_report_says(tmp_path):
    logs = tmp_path / "kept"
    r = CliRunner().invoke(main, ["check", str(toy(tmp_path, CRASHES)), "--repeats", "2", "--sandbox", "none",
                                  "--log-dir", str(logs)])
    assert r.exit_code == 1, r.output
    fix = next(line for line in r.output.splitlines() if "does not run" in line)
    kept = Path(re.search(r"full log kept in (\S+?\.log)", fix).group(1))
    assert kept == (logs / "check-0.log").resolve() and kept.is_file()
    assert "no data in ./nowhere" in kept.read_text() and "loading the data" in kept.read_text()
    assert "no data in ./nowhere" in r.output.split("Log of check-0")[1]  # and its tail shown in the report
    assert SCRATCH_PREFIX not in r.output and "log.txt" not in r.output


def test_a_check_whose_runs_pass_keeps_no_log(tmp_path):
    logs = tmp_path / "kept"
    report = check_target(str(toy(tmp_path, NOISY)), repeats=1, sandbox="none", gpus=[], log_dir=logs)
    assert report.exit_code == 0, render(report)
    assert not logs.exists()


def test_budget_named_only_in_comments_docs_or_ar_ray_toml_is_not_read(tmp_path):
    """ar-ray.toml (read-only by default) says 'passed as AR_BUDGET_SECONDS' in a comment, as `ar-ray init` writes it;
    the script names it in a comment and a docstring only: the budget is not read."""
    train = '"""Trains. TODO: stop at AR_BUDGET_SECONDS."""\n# AR_BUDGET_SECONDS: not yet\n' + NO_BUDGET
    root = toy(tmp_path, train, {"run.sh": b"# exports AR_BUDGET_SECONDS?\npython train.py\n",
                                 "NOTES.md": b"read AR_BUDGET_SECONDS some day\n"})
    (root / "ar-ray.toml").write_text('[target]\neditable = ["train.py"]\n'
                                      "budget_seconds = 30   # passed as AR_BUDGET_SECONDS: stop there\n")
    target = load_target(root)
    assert "ar-ray.toml" in target.readonly and reads_budget(target) == []
    report = check_target(str(root), repeats=1, sandbox="none", gpus=[])
    text = render(report)
    assert "budget in seconds: AR_BUDGET_SECONDS is named in no editable or read-only file" in text
    assert "read in" not in text and "The target never reads AR_BUDGET_SECONDS" in levels(report, "warn")
    assert report.facts["budget_honoured"] is False


def test_budget_read_in_code_is_found_whatever_the_language():
    py = b'import os\n"""docstring"""\nbudget = float(os.environ.get("AR_BUDGET_SECONDS", 60))  # the clock\n'
    assert names_in_code("train.py", py, "AR_BUDGET_SECONDS")
    assert names_in_code("train.py", b'b = os.environ[f"AR_BUDGET_{kind}"] if 0 else os.getenv("AR_BUDGET_SECONDS")\n',
                         "AR_BUDGET_SECONDS")
    assert names_in_code("run.sh", b'#!/bin/sh\ntimeout "$AR_BUDGET_SECONDS" python train.py # go\n',
                         "AR_BUDGET_SECONDS")
    assert names_in_code("conf.yaml", b"budget: ${oc.env:AR_BUDGET_SECONDS}\n", "AR_BUDGET_SECONDS")
    assert not names_in_code("conf.yaml", b"budget: 60  # AR_BUDGET_SECONDS\n", "AR_BUDGET_SECONDS")
    assert not names_in_code("old.py", b"print 'py2'  # AR_BUDGET_SECONDS\n", "AR_BUDGET_SECONDS")  # no parse
    assert not names_in_code("sub/ar-ray.toml", b'command = "x {budget_seconds}"  # AR_BUDGET_SECONDS\n'
                             b'env = { B = "AR_BUDGET_SECONDS" }\n', "AR_BUDGET_SECONDS")


def test_metric_pattern_matching_several_values_is_warned_about(tmp_path):
    train = NOISY + 'print("val_bpb: 7.0")\nprint("val_bpb: 1.0")\n'
    report = check_target(str(toy(tmp_path, train)), repeats=1, sandbox="none", gpus=[])
    assert "matches 3 lines with 3 different values" in levels(report, "warn")


def test_cli_on_nanogpt_fixture_names_its_lowercase_knobs_and_determinism(tmp_path):
    root = tmp_path / "nanogpt"
    shutil.copytree(FIXTURES / "nanogpt", root)
    # a shorter run than the fixture's (30 iterations): the check is about what it finds, not the model
    config = root / "config" / "train_tiny_char.py"
    config.write_text(config.read_text().replace("max_iters = 30", "max_iters = 3"))
    r = CliRunner().invoke(main, ["check", str(root), "--repeats", "2", "--sandbox", "none"])
    assert r.exit_code == 0, r.output
    for knob in ("learning_rate = 0.001", "n_layer = 2", "n_embd = 32", "batch_size = 8", "beta2 = 0.99"):
        assert knob in r.output
    assert "n_head" not in r.output.split("What the proposers see")[1].split("==")[1]  # declared off
    assert "deterministic: ignores AR_SEED" in r.output
    assert "the budget is not a clock" in r.output  # nanoGPT trains max_iters, whatever the budget
    assert "verdict: ready, with warnings" in r.output


# -- nothing a check makes outlives it: a real `ar-ray check` process, stopped while its run sleeps ------------

SLEEPS = """
import time
LEARNING_RATE = 0.01
open("started", "w").close()
time.sleep(600)
"""


def start_check(tmp_path: Path, sandbox: str = "none"):
    """An `ar-ray check` process (its own session, as a shell runs it) whose first run sleeps: (process, the mark
    in its runs' environment, the check's temporary folder), once the run is going."""
    mark = new_mark()
    root = toy(tmp_path, SLEEPS)
    with open(root / "ar-ray.toml", "a") as f:
        f.write(f'env = {{ AR_TEST_MARK = "{mark}" }}\n')
    proc = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "check", str(root), "--repeats", "2",
                             "--sandbox", sandbox], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    pattern = f"{SCRATCH_PREFIX}*-{proc.pid}-*/work/check-0/started"  # (named after the check's process)
    started = wait_for(lambda: list(Path(tempfile.gettempdir()).glob(pattern)), 30, "the check's first run")
    assert marked_pids(mark)
    return proc, mark, started[0].parents[2]


@pytest.mark.parametrize("how, sandbox", [("Ctrl-C", "none"), ("SIGTERM", "none"), ("SIGHUP", "none"),
                                          ("SIGTERM", "bwrap")])
def test_a_stopped_check_ends_its_run_and_removes_its_folder(tmp_path, how, sandbox):
    if sandbox == "bwrap" and bwrap_problem():
        pytest.fail(f"bubblewrap is needed here: {bwrap_problem()}")
    proc, mark, scratch = start_check(tmp_path, sandbox)
    try:
        if how == "Ctrl-C":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, getattr(signal, how))
        out, err = proc.communicate(timeout=30)
        sig = signal.SIGINT if how == "Ctrl-C" else getattr(signal, how)
        assert proc.returncode == 128 + sig, (proc.returncode, out, err)
        assert f"stopped by {signal.Signals(sig).name}" in err.decode()
        assert not marked_pids(mark), "the check's run outlived it"
        assert not scratch.exists(), f"{scratch} outlived the check"
    finally:
        proc.kill()
        proc.wait()


def test_the_folder_of_a_sigkilled_check_goes_at_the_next_check(tmp_path):
    """SIGKILL runs no handler: the run's reaper ends the run, and the next check, whatever its target, removes
    the folder of the check that is gone."""
    proc, mark, scratch = start_check(tmp_path)
    proc.kill()
    proc.wait()
    wait_for(lambda: not marked_pids(mark), 15, "the run to end with its check")
    assert scratch.is_dir()
    (tmp_path / "next").mkdir()
    report = check_target(str(toy(tmp_path / "next", NOISY)), repeats=1, sandbox="none", gpus=[])
    assert report.facts["metrics"], render(report)
    assert not scratch.exists(), f"{scratch} of a SIGKILLed check is still there"
