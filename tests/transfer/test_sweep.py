"""`ar-ray sweep`: a grid of scales x variants x repeats on real local Ray trainers, resume, fits and verdicts.

The toy target's loss is a known power law of compute, L = E + B * (C / C0)^-alpha + noise (seeded by AR_SEED),
with C = 6 * params * tokens derived from AR_DEPTH and AR_BUDGET_TOKENS; the second variant (a file) lowers the
loss by a constant at every scale, a win that holds.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from toys import make_toy

from ar_ray.cli.main import main
from ar_ray.engine.config import RunConfig
from ar_ray.errors import ConfigError
from ar_ray.lab import spend
from ar_ray.ledger import store as ledger
from ar_ray.target import load_target
from ar_ray.transfer import sweep as S
from ar_ray.transfer import sweep_analysis as A

ALPHA, E_TRUE, OFFSET = 0.3, 1.0, 0.05
POWER_TRAIN = '''\
import os, random
E, B, ALPHA = 1.0, 0.6, 0.3
OFFSET = 0.0  # the better variant lowers the loss by this much at every scale
NOISE = 0.002
depth = int(os.environ.get("AR_DEPTH", "1"))
tokens = int(os.environ.get("AR_BUDGET_TOKENS", "100000"))
params_M = 0.1 * 4 ** (depth - 1)
tokens_M = tokens / 1e6
C = 6 * params_M * 1e6 * tokens_M * 1e6
C0 = 6 * 0.1e6 * 1e5
rng = random.Random(f"{os.environ['AR_SEED']}-{depth}-{tokens}-{OFFSET}")
loss = E - OFFSET + B * (C / C0) ** -ALPHA + rng.gauss(0, NOISE)
def first_anywhere(marker):  # O_EXCL: of two runs that start at once, one only (both killed their trainers)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
if os.environ.get("TOY_DIE_ONCE") and first_anywhere(os.environ["TOY_DIE_ONCE"]):
    # the first run anywhere kills its trainer actor (the first ray:: process above it): a node lost mid-run
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if f.read().startswith(b"ray::"):
                os.kill(pid, 9)
                break
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
print("---")
print(f"val_bpb: {loss:.6f}")
print(f"num_params_M: {params_M:.6f}")
print(f"total_tokens_M: {tokens_M:.6f}")
print(f"depth: {depth}")
'''
DEPTHS, TOKENS = ["1", "2", "3"], ["100000", "400000"]  # compute levels where two sizes meet


def power_target(root: Path, env: str = "") -> Path:
    return make_toy(root, f"[target]\nbudget_seconds = 5\n{env}", train=POWER_TRAIN)


def config(target: Path, run_dir: Path, resume: bool = False, **kw) -> RunConfig:
    return RunConfig(target=str(target), run_dir=str(run_dir), resume=resume, trainers=kw.pop("trainers", 4),
                     gpus_per_trainer=0.0, cpus_per_trainer=1.0, **kw)


def sweep_rows(run_dir) -> pd.DataFrame:
    df = ledger.load(run_dir)
    return df[df.role == "sweep"]


# ---------------------------------------------------------------------------
# the spec, without Ray
# ---------------------------------------------------------------------------


def test_plan_is_deterministic_and_complete():
    files = {"train.py": "x = 1\n"}
    spec = S.SweepSpec(variants=[("baseline", files), ("mine", {"train.py": "x = 2\n"})],
                       grid=S.grid({"depth": ["2", "3"], "budget_tokens": ["100000"]}, [10]), repeats=3)
    plan = S.plan_runs(spec)
    assert len(plan) == 2 * 2 * 3 and len({c.experiment_id for c in plan}) == len(plan)
    first = plan[0]
    assert first.experiment_id == "baseline-d2-tok100k-10s-r0"
    assert first.seed == 0 and first.budget_seconds == 10 and first.knobs == {"depth": "2", "budget_tokens": "100000"}
    assert [c.seed for c in plan] == [0] * 4 + [1] * 4 + [2] * 4  # repeat by repeat
    assert S.plan_runs(spec) == plan
    assert S.Scale({"depth": "12", "budget_tokens": "2000000", "lr": "0.01", "w": "1500"}).label == "d12-tok2M-lr0.01-w1500"
    assert S.SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert S.SweepSpec(variants=[("b", files)], grid=[{"depth": 2, "budget_seconds": 5}]).grid[0] == S.Scale({"depth": "2"}, 5.0)


def test_a_paired_grid_is_a_path_not_every_combination():
    path = S.grid({"depth": ["2", "4", "8"], "budget_tokens": ["100000", "400000", "1600000"]}, paired=True)
    assert [s.label for s in path] == ["d2-tok100k", "d4-tok400k", "d8-tok1600k"]
    assert len(S.grid({"depth": ["2", "4", "8"], "budget_tokens": ["100000", "400000", "1600000"]})) == 9
    assert [s.budget_seconds for s in S.grid({"depth": ["1", "2"]}, [10, 20], paired=True)] == [10.0, 20.0]
    with pytest.raises(S.SweepError, match="same number of values; got depth 3, budget_tokens 2"):
        S.grid({"depth": ["2", "4", "8"], "budget_tokens": ["100000", "400000"]}, paired=True)


@pytest.mark.parametrize("kw, message", [
    (dict(grid=()), "the grid is empty"),
    (dict(variants=()), "no variant"),
    (dict(variants=[("a b", {})]), "variant name"),
    (dict(variants=[("a", {}), ("a", {})]), "given twice"),
    (dict(grid=[{"seed": "1"}]), "set by ar-ray"),
    (dict(grid=[{"budget_seconds": -1}]), "positive"),
    (dict(grid=[{"bad-name": "1"}]), "knob name"),
    (dict(repeats=0), "--repeats"),
])
def test_bad_specs_say_why(kw, message):
    args = {"variants": [("baseline", {"train.py": ""})], "grid": [{"depth": "1"}], "repeats": 1, **kw}
    with pytest.raises(S.SweepError, match=message):
        S.SweepSpec(**args)


def test_variants_resolve(tmp_path):
    target = load_target(power_target(tmp_path / "t"))
    other = tmp_path / "better" / "train.py"
    other.parent.mkdir()
    other.write_text("print('x')\n")
    assert S.resolve_variant("baseline", target) == ("baseline", target.read_editable())
    assert S.resolve_variant(str(other), target) == ("better", {"train.py": "print('x')\n"})
    assert S.resolve_variant(f"fast={other}", target)[0] == "fast"
    with pytest.raises(S.SweepError, match="unknown variant"):
        S.resolve_variant("nope/never", target)
    with pytest.raises(S.SweepError, match="not a run dir"):
        S.resolve_variant(str(tmp_path), target)


# ---------------------------------------------------------------------------
# analysis of hand-made ledgers
# ---------------------------------------------------------------------------


def fake_rows(variant: str, gain_at, compute_knob: bool = False, failed: int = 0) -> list[dict]:
    """Rows as the sweep writes them: variant x 5 scales x 3 repeats of a known law, B better by gain_at(C)."""
    rng = np.random.default_rng(zlib.crc32(variant.encode()))
    out = []
    for k, c in enumerate(np.geomspace(1e12, 1e14, 5)):
        for i in range(3):
            loss = 1.0 + 50 * c ** -0.2 - gain_at(c) + rng.normal(0, 0.002)
            r = {"experiment_id": f"{variant}-c{k}-r{i}", "group_id": variant, "role": "sweep", "decision": "sweep",
                 "status": "ok", "metric": loss, "knobs": {"c": str(k)}, "run_id": "x"}
            if compute_knob:
                r["knobs"]["compute"] = f"{c:g}"
            else:
                r.update(num_params_M=c / 6e12 * 10, total_tokens_M=0.1)
            out.append(r)
    for i in range(failed):
        out.append({"experiment_id": f"{variant}-c0-r{9 + i}", "group_id": variant, "role": "sweep", "status": "crash",
                    "decision": "sweep", "knobs": {}, "run_id": "x"})
    return out


def test_analyze_shrinking_win_and_compute_knob(tmp_path):
    Ledger = ledger.Ledger
    Ledger(tmp_path).append(fake_rows("base", lambda c: 0.0, compute_knob=True, failed=2)
                            + fake_rows("mine", lambda c: 0.08 * (c / 1e12) ** -0.5, compute_knob=True))
    out = A.analyze(ledger.load(tmp_path), tmp_path, bootstrap=100)
    assert out["error"] is None and out["compute_source"] == "the knob named compute"
    assert out["failed"] == 2 and out["failed_by_status"] == {"crash": 2} and out["variants"]["base"]["failed"] == 2
    fit = out["variants"]["base"]["fit"]
    assert fit["alpha_ci"][0] <= 0.2 <= fit["alpha_ci"][1]
    assert out["variants"]["base"]["tokens_per_param"] is None  # no params/tokens: no estimate, and it says so
    assert out["variants"]["base"]["tokens_per_param_error"]
    [cmp] = out["comparisons"]
    assert (cmp["a"], cmp["b"]) == ("base", "mine") and cmp["comparison"]["verdict"] == "shrinks"
    assert (tmp_path / "sweep.json").stat().st_size > 0 and (tmp_path / "sweep_gain.png").stat().st_size > 0
    text = "\n".join(A.describe(out))
    assert "2 failed (crash 2; left out of the fits)" in text and "verdict: shrinks" in text


def test_analyze_without_compute_or_enough_scales_says_why(tmp_path):
    rows = fake_rows("base", lambda c: 0.0)
    for r in rows:
        r.pop("num_params_M"), r.pop("total_tokens_M")
    ledger.Ledger(tmp_path / "a").append(rows)
    out = A.analyze(ledger.load(tmp_path / "a"), tmp_path / "a")
    assert "no num_params_M" in out["error"] and out["variants"]["base"]["fit"] is None and not out["plots"]
    ledger.Ledger(tmp_path / "b").append([r for r in fake_rows("base", lambda c: 0.0) if "-c0-" in r["experiment_id"]
                                          or "-c1-" in r["experiment_id"]])
    out = A.analyze(ledger.load(tmp_path / "b"), tmp_path / "b", bootstrap=10)
    assert out["error"] is None and "only 2 scale(s)" in out["variants"]["base"]["fit_error"]


def test_a_law_in_compute_that_does_not_hold_is_flagged(tmp_path):
    """Loss that depends on tokens only (bigger models do not help): a curve in compute misses, and it says so."""
    rng = np.random.default_rng(0)
    rows = []
    for p in (0.2, 0.7, 1.7):
        for t in (0.1, 0.2, 0.4):
            for i in range(2):
                rows.append({"experiment_id": f"base-p{p}-t{t}-r{i}", "group_id": "base", "role": "sweep",
                             "status": "ok", "metric": 1.0 + 0.1 * t ** -0.5 + rng.normal(0, 0.002),
                             "num_params_M": p, "total_tokens_M": t, "run_id": "x"})
    ledger.Ledger(tmp_path).append(rows)
    out = A.analyze(ledger.load(tmp_path), bootstrap=20)
    v = out["variants"]["base"]
    assert v["lack_of_fit"] > A.LACK_OF_FIT and "not a function of compute alone" in v["fit_warning"]
    assert "warning:" in "\n".join(A.describe(out))


def test_rerun_failed_reruns_only_failed_runs(tmp_path):
    ledger.Ledger(tmp_path).append([
        {"experiment_id": "a-r0", "role": "sweep", "status": "ok"},
        {"experiment_id": "a-r1", "role": "sweep", "status": "timeout"},
        {"experiment_id": "a-r2", "role": "sweep", "status": "infra"},
        {"experiment_id": "a-r3", "role": "sweep", "status": "crash"},
        {"experiment_id": "a-r3", "role": "sweep", "status": "ok"},  # re-run later: the last row counts
    ])
    assert S.done_ids(tmp_path) == {"a-r0", "a-r1", "a-r3"}
    assert S.done_ids(tmp_path, rerun_failed=True) == {"a-r0", "a-r3"}


# ---------------------------------------------------------------------------
# on Ray
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    """A sweep run with 1 repeat, then resumed with 2: every run exactly once."""
    tmp = tmp_path_factory.mktemp("sweep")
    target = power_target(tmp / "target")
    better = tmp / "better" / "train.py"
    better.parent.mkdir()
    better.write_text(POWER_TRAIN.replace("OFFSET = 0.0 ", f"OFFSET = {OFFSET} "))
    t = load_target(target)
    variants = [S.resolve_variant("baseline", t), S.resolve_variant(str(better), t)]
    run_dir = tmp / "run"
    seen = []
    first = S.run_sweep(config(target, run_dir), S.SweepSpec(variants, S.grid({"depth": DEPTHS, "budget_tokens": TOKENS}), 1),
                        on_row=lambda row, done, total: seen.append((row["experiment_id"], done, total)))
    rows_first = sweep_rows(run_dir)
    second = S.run_sweep(config(target, run_dir, resume=True),
                         S.SweepSpec(variants, S.grid({"depth": DEPTHS, "budget_tokens": TOKENS}), 2))
    return {"run_dir": run_dir, "target": target, "better": better, "first": first, "second": second,
            "rows_first": rows_first, "seen": seen}


def test_every_grid_point_runs_once_and_resume_runs_only_the_missing(swept):
    run_dir = swept["run_dir"]
    first, second = swept["first"], swept["second"]
    assert first["total"] == first["ran"] == 12 and first["already_done"] == 0 and first["failed"] == 0
    assert [s[1:] for s in swept["seen"]] == [(k, 12) for k in range(1, 13)]
    assert second["total"] == 24 and second["already_done"] == 12 and second["ran"] == 12
    df = sweep_rows(run_dir)
    assert len(df) == 24 and df.experiment_id.is_unique and set(df.status) == {"ok"}
    assert df.iloc[:12].experiment_id.tolist() == swept["rows_first"].experiment_id.tolist()  # nothing re-run
    assert set(df.iloc[12:].experiment_id.str[-2:]) == {"r1"}
    assert df.groupby(["group_id", "seed"]).size().to_dict() == {(v, s): 6 for v in ("baseline", "better") for s in (0, 1)}
    r = df[df.experiment_id == "better-d3-tok400k-r1"].iloc[0]
    assert r.knobs == {"depth": "3", "budget_tokens": "400000"} and r.depth == 3 and r.decision == "sweep"
    assert "better" in r.description and "depth=3" in r.description and "+OFFSET = 0.05" in r["diff"]
    assert json.loads((run_dir / "run.json").read_text())["sweep"]["repeats"] == 2
    # resumed again with nothing new to do: no row, no trainer started
    again = S.run_sweep(config(swept["target"], run_dir, resume=True), None)
    assert again["ran"] == 0 and again["already_done"] == 24 and len(sweep_rows(run_dir)) == 24


def test_fit_recovers_the_law_and_the_win_holds(swept):
    run_dir = swept["run_dir"]
    out = A.analyze(ledger.load(run_dir), run_dir, bootstrap=300)
    assert out["error"] is None and out["ok"] == 24 and out["failed"] == 0
    for v in ("baseline", "better"):
        fit = out["variants"][v]["fit"]
        assert fit["n_points"] == 6 and fit["n_runs"] == 12
        assert fit["alpha_ci"][0] <= ALPHA <= fit["alpha_ci"][1], fit
        assert fit["alpha_ci"][1] - fit["alpha_ci"][0] < 0.2
        assert out["variants"][v]["fit_warning"] is None and out["variants"][v]["spearman"] < -0.9
    assert out["variants"]["baseline"]["tokens_per_param"] is not None
    [cmp] = out["comparisons"]
    assert cmp["b"] == "better" and cmp["comparison"]["verdict"] == "holds"
    assert all(abs(r["gain"] - OFFSET) < 0.01 for r in cmp["comparison"]["rows"])
    for name in ("sweep.json", "sweep_fit.png", "sweep_gain.png"):
        assert (run_dir / name).stat().st_size > 0
    assert json.loads((run_dir / "sweep.json").read_text())["comparisons"][0]["comparison"]["verdict"] == "holds"


def test_cli_analyze_and_report(swept):
    run_dir = swept["run_dir"]
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(run_dir), "--bootstrap", "50"])
    assert r.exit_code == 0, r.output
    assert "baseline: alpha" in r.output and "95% CI" in r.output and "verdict: holds" in r.output
    r = CliRunner().invoke(main, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    page = (run_dir / "report" / "report.html").read_text()
    assert 'id="sweep"' in page and page.count("data:image/png;base64,") >= 3 and "holds" in page
    for command in ("best", "status"):  # research-run commands point to the sweep's own
        r = CliRunner().invoke(main, [command, str(run_dir)])
        assert r.exit_code == 1 and "is a scaling sweep" in r.output and "sweep --analyze" in r.output


def test_cli_sweep_runs_and_explains_a_missing_fit(ray_local, tmp_path):
    target = power_target(tmp_path / "target")
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(main, ["sweep", "--target", str(target), "--run-dir", str(run_dir), "--depths", "1,2",
                                  "--repeats", "1", "--trainers", "2", "--gpus-per-trainer", "0",
                                  "--cpus-per-trainer", "1", "--cpu-price", "36"])
    assert r.exit_code == 0, r.output
    assert "[2/2] baseline-d2-r0" in r.output or "[2/2] baseline-d1-r0" in r.output
    assert "no fit: only 2 scale(s)" in r.output
    df = sweep_rows(run_dir)
    assert len(df) == 2
    # each run priced as `ar-ray run` prices it: its wall time on its trainer x 1 core x $36 per core-hour
    seconds = (df.ended_at - df.started_at).dt.total_seconds()
    assert list(df.gpu_cost_usd) == pytest.approx(list(seconds * 36 / 3600), rel=1e-4) and (df.gpu_cost_usd > 0).all()
    total = spend.usd(float(df.gpu_cost_usd.sum()))
    assert f"spend {total} (CPU {total} + LLM $0.00)" in r.output, r.output
    # the same sweep again, resumed: nothing runs, and the spend is still the sweep's
    r = CliRunner().invoke(main, ["sweep", "--resume", str(run_dir)])
    assert r.exit_code == 0 and "0 runs now" in r.output and "2 already done" in r.output, r.output
    assert f"spend {total} (CPU {total}" in r.output, r.output
    r = CliRunner().invoke(main, ["sweep", "--target", str(target), "--run-dir", str(run_dir), "--depths", "1"])
    assert r.exit_code != 0 and "--resume" in r.output


def test_a_lost_trainer_reruns_the_run(ray_local, tmp_path):
    marker = tmp_path / "died"
    target = power_target(tmp_path / "target", f"env = {{ TOY_DIE_ONCE = '{marker}' }}\n")
    spec = S.SweepSpec([S.resolve_variant("baseline", load_target(target))], S.grid({"depth": ["1", "2"]}), 1)
    events = []
    out = S.run_sweep(config(target, tmp_path / "run", trainers=2, sandbox="none"), spec,
                      on_event=lambda kind, data: events.append((kind, data)))
    assert marker.exists() and out["retries"] == 1 and [k for k, _ in events].count("retry") == 1, events
    df = sweep_rows(tmp_path / "run")
    assert len(df) == 2 and set(df.status) == {"ok"} and df.experiment_id.is_unique


@pytest.mark.parametrize("args, message", [
    (["--variant", "nope/never", "--depths", "1,2"], "unknown variant"),
    (["--knob", "depth"], "NAME=v1,v2"),
    (["--knob", "lr=0.1,,0.2"], "comma-separated"),
    (["--depths", "1,x"], "must be a number"),
    (["--depths", "2", "--knob", "depth=3"], "already swept"),
    ([], "the grid is empty"),
    (["--knob", "seed=1,2"], "set by ar-ray"),
    (["--depths", "1", "--repeats", "0"], "at least 1"),
    (["--depths", "1", "--rerun-failed"], "goes with --resume"),
    (["--depths", "1,2", "--budget-tokens", "1000", "--paired"], "same number of values"),
    (["--depths", "1", "--gpu-price", "H100"], "write MODEL=USD per GPU-hour"),
    (["--depths", "1", "--cpu-price", "-1"], "not negative"),
])
def test_cli_errors(tmp_path, args, message):
    target = power_target(tmp_path / "target")
    r = CliRunner().invoke(main, ["sweep", "--target", str(target), "--run-dir", str(tmp_path / "run"), *args])
    assert r.exit_code != 0 and message in r.output, r.output
    assert not (tmp_path / "run" / "ledger").exists()


def test_cli_analyze_errors(tmp_path):
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(tmp_path)])
    assert r.exit_code != 0 and "no ledger" in r.output
    (tmp_path / "x").mkdir()
    r = CliRunner().invoke(main, ["sweep", "--analyze", str(tmp_path / "x"), "--depths", "1"])
    assert r.exit_code != 0 and "leave out" in r.output
    r = CliRunner().invoke(main, ["sweep", "--resume", str(tmp_path / "x")])
    assert r.exit_code != 0 and "run.json" in r.output


def test_ar_ray_run_refuses_to_resume_a_sweep(tmp_path):
    from ar_ray.engine.run import prepare_run_dir
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "x", "kind": "sweep"}))
    with pytest.raises(ConfigError, match="ar-ray sweep --resume"):
        prepare_run_dir(RunConfig(run_dir=str(tmp_path), resume=True))
