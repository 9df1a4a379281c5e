"""One spend ledger: GPU prices, the gpu_cost_usd column, the budgets, and `ar-ray run` on a real local Ray whose
node says it has A100s (fake GPUs, a fake accelerator type given as a Ray resource)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from helpers_targets import local_ray

from ar_ray.lab import spend
from ar_ray.lab.spend import Budget, Meter, Prices
from ar_ray.ledger import store


def test_gpu_models_are_priced_by_the_longest_name_they_contain():
    p = Prices()
    assert p.gpu_price("NVIDIA H100 80GB HBM3").usd_per_hour == spend.ESTIMATED_GPU_PRICES["H100"]
    assert p.gpu_price("NVIDIA A100-SXM4-80GB").usd_per_hour == spend.ESTIMATED_GPU_PRICES["A100"]
    assert p.gpu_price("NVIDIA A10G").usd_per_hour == spend.ESTIMATED_GPU_PRICES["A10G"]  # not A10
    assert p.gpu_price("NVIDIA L40S").usd_per_hour == spend.ESTIMATED_GPU_PRICES["L40S"]  # not L4
    assert p.gpu_price("H100").source == "estimate"
    unknown = p.gpu_price("gpu")
    assert unknown.usd_per_hour == spend.ESTIMATED_UNKNOWN_GPU and "unknown" in unknown.source
    mine = Prices({"H100": 2.49, "A100-80GB": 1.79, "*": 1.0}, cpu_core_hour=0.02)
    assert mine.gpu_price("NVIDIA H100 80GB HBM3") == spend.Price(2.49, "GPU", "set")
    assert mine.gpu_price("NVIDIA A100 80GB PCIe").usd_per_hour == 1.79  # spaces and dashes do not matter
    assert mine.gpu_price("Tesla T4").usd_per_hour == 1.0  # '*' prices what the flags do not name
    assert mine.for_trainer("cpu", 0).usd_per_hour == 0.02


def test_prices_from_flags_and_a_config_file(tmp_path):
    assert spend.parse_gpu_price("H100=2.49") == ("H100", 2.49)
    assert spend.parse_gpu_price("A100-80GB = $1.79/h") == ("A100-80GB", 1.79)
    for bad in ("H100", "H100=cheap", "=2", "H100=-1"):
        with pytest.raises(spend.SpendError, match="MODEL=USD per GPU-hour"):
            spend.parse_gpu_price(bad)
    cfg = tmp_path / "run.toml"
    cfg.write_text('[prices]\ncpu_core_hour = 0.05\n[prices.gpu]\nH100 = 2.5\n"A100-80GB" = 1.8\n')
    assert spend.read_prices(str(cfg)) == ({"H100": 2.5, "A100-80GB": 1.8}, 0.05)
    cfg.write_text('[prices]\nH100 = 2.5\n')
    with pytest.raises(spend.SpendError, match=r"\[prices.gpu\]"):
        spend.read_prices(str(cfg))
    assert spend.parse_counts("llm,gpu") == ("gpu", "llm")
    with pytest.raises(spend.SpendError, match="gpu, llm or gpu,llm"):
        spend.parse_counts("tokens")


def test_what_each_budget_stops():
    # LLM spend alone stops the asking only (what was paid for still runs); counted with GPU it stops new runs too
    llm_only = Meter(budget=Budget(max_cost=10, counts=("llm",)), gpus=1)
    assert llm_only.stop("start", llm_usd=12) is None and "--max-cost $10 reached" in llm_only.stop("ask", llm_usd=12)
    both = Meter(Prices({"H100": 3.6}), Budget(max_cost=10, counts=("gpu", "llm")), gpus=2)
    assert both.charge("H100", 0.0, 0.0, run_seconds=3600) == pytest.approx(7.2)  # 2 GPUs for an hour at $3.60
    assert both.stop("start", llm_usd=2.0) is None
    assert both.fractions(llm_usd=2.0) == {"cost": pytest.approx(0.92)}
    # a run in flight counts for the time it has run so far
    assert "reached ($10.20 of GPU + LLM)" in both.stop("start", llm_usd=2.0, running=[("H100", 500.0)])
    hours = Meter(Prices(), Budget(max_gpu_hours=1.0), gpus=2)
    hours.charge("A100", 1000.0, 1000.0 + 1800, 0.0)  # wall time on the trainer, x its 2 GPUs
    assert hours.gpu_seconds == 3600 and "--max-gpu-hours 1 reached" in hours.stop("start", llm_usd=0)
    cpu = Meter(Prices(cpu_core_hour=0.1), gpus=0, cpus=4)
    assert cpu.charge("cpu", 0.0, 0.0, run_seconds=1800) == pytest.approx(0.2) and cpu.gpu_seconds == 0


def test_the_start_estimate_says_what_an_hour_costs_and_when_the_budget_is_reached():
    text = spend.estimate(Prices(), Budget(max_cost=50, counts=("gpu", "llm")), trainers=8, gpus=1, cpus=1,
                          gpu_model="H100", run_seconds=300)
    assert "8 trainers x 1 GPU (H100, $3.00/h per GPU, an estimate" in text
    assert "~$24.00 per hour" in text and "~$0.25 a run" in text and "reached after ~200 runs" in text
    llm = spend.estimate(Prices({"*": 1}), Budget(max_cost=50), 2, 1, 1, None, None)
    assert "counts LLM spend only" in llm and "estimate" not in llm and "a run" not in llm


def test_spend_per_kept_improvement_and_per_unit_of_metric_gained():
    m = Meter(Prices({"H100": 4.0}), gpus=1)
    m.observe({"best_version": 0, "best_metric": 1.00})
    m.charge("H100", 0, 0, run_seconds=1800)  # $2
    f = m.figures(llm_usd=1.0, kept=2, best_metric=0.97)
    assert f["total_cost_usd"] == pytest.approx(3.0) and f["cost_per_kept_total"] == pytest.approx(1.5)
    assert f["cost_per_unit_gain"] == pytest.approx(100.0)  # $3 for 0.03
    assert spend.describe(f, "val_bpb").endswith("$100.00 per 1 val_bpb gained ($1.00 per 0.01)")


def test_a_ledger_written_before_gpu_cost_usd_still_loads(tmp_path):
    rows = [{"run_id": "r", "experiment_id": f"e{i:05d}", "status": "ok", "decision": "baseline" if i == 0 else "discard",
             "metric": 1.0 - i / 100, "best_version": 0, "best_metric": 1.0, "cost_usd": 0.01} for i in range(3)]
    table = store.rows_to_table([{**r, "seq": i} for i, r in enumerate(rows)])
    v3 = pa.schema([f for f in store.SCHEMA if f.name != "gpu_cost_usd"], metadata={"ar_ray_schema_version": "3"})
    (tmp_path / "ledger").mkdir()
    old = tmp_path / "ledger" / "part-000000000000-000000000002-L0.parquet"
    pq.write_table(table.drop(["gpu_cost_usd"]).cast(v3), old)
    df = store.load(tmp_path)
    assert df.gpu_cost_usd.isna().all() and list(df.columns) == store.SCHEMA.names
    assert spend.from_ledger(df)["unpriced_runs"] == 3 and spend.from_ledger(df)["llm_cost_usd"] == pytest.approx(0.03)
    store.Ledger(tmp_path).append({"run_id": "r", "experiment_id": "e00003", "gpu_cost_usd": 0.5})  # a writer upgrades
    assert pq.read_schema(old).metadata[b"ar_ray_schema_version"] == str(store.SCHEMA_VERSION).encode()
    assert store.load(tmp_path).gpu_cost_usd.tolist()[-1] == 0.5


# ---- ar-ray run on a real local Ray: two fake GPUs on a node whose accelerator type is A100 ----

@pytest.fixture(scope="module")
def a100_ray():
    yield from local_ray(num_cpus=4, num_gpus=2, resources={"accelerator_type:A100": 1})


def test_run_prices_each_row_stops_at_its_gpu_hours_and_resumes_with_its_spend(a100_ray, tmp_path):
    from toys import make_toy

    from ar_ray.cli.main import main

    target = make_toy(tmp_path / "target", "[target]\nenv = { TOY_SLEEP = '0.1' }\n")
    run = tmp_path / "run"
    args = ["run", "--target", str(target), "--run-dir", str(run), "--acceptance", "greedy", "--trainers", "2",
            "--proposers", "1", "--proposer", "toys:ScriptedProposer", "--max-experiments", "200",
            "--gpu-price", "A100=3600", "--max-gpu-hours", "0.001"]  # 3.6 GPU-seconds: a few toy runs
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    out = " ".join(first.output.split())
    assert "spend: 2 trainers x 1 GPU (A100, $3600.00/h per GPU): ~$7,200.00 per hour" in out  # the start estimate
    assert "stopped: --max-gpu-hours 0.001 reached" in out
    df = store.load(run)
    ran = df[df.decision != "skip"]
    assert set(ran.gpu_model) == {"A100"} and ran.gpu_cost_usd.notna().all()
    seconds = (ran.ended_at - ran.started_at).dt.total_seconds()
    assert ran.gpu_cost_usd.tolist() == pytest.approx(seconds.tolist(), abs=2e-6)  # $3600/h x 1 GPU: $1 a second (times in µs)
    assert seconds.sum() >= 3.6 and 2 < len(ran) < 200  # it ran until the budget was spent, then stopped
    # no new candidate started once the runs already over had spent the budget (runs in flight count as they go;
    # the follow-ups of started candidates, here greedy's merges of stale winners, still run to decide them)
    dispatched = ran.proposed_at + pd.to_timedelta(ran.queue_seconds, unit="s")
    for when in dispatched[ran.role == "screen"]:
        assert seconds[ran.ended_at <= when].sum() < 3.6
    total = float(re.search(r"spend \$([\d,.]+) \(GPU", out)[1].replace(",", ""))
    assert total == pytest.approx(ran.gpu_cost_usd.sum(), abs=0.01)

    status = CliRunner().invoke(main, ["status", str(run)])
    shown = " ".join(status.output.split())
    assert f"spend ${total:,.2f} (GPU ${total:,.2f} + LLM $0.00)" in shown and "of gpu hours budget" in shown
    report = CliRunner().invoke(main, ["report", str(run)])
    assert report.exit_code == 0, report.output
    page = (run / "report" / "report.html").read_text()
    assert re.search(r'id="spend">spend \$[\d,.]+ \(GPU \$[\d,.]+ \+ LLM \$0.00\)', page)

    # a resume continues the same budget: it stops at once, having spent nothing new
    again = CliRunner().invoke(main, ["run", "--resume", str(run)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "stopped: --max-gpu-hours 0.001 reached" in " ".join(again.output.split())
    assert len(store.load(run).query("decision != 'skip'")) == len(ran)
    assert json.loads((run / "run.json").read_text())["config"]["gpu_prices"] == {"A100": 3600.0}


def test_the_readme_shows_the_estimate_this_code_prints():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = next(line for line in readme.splitlines() if line.startswith("spend: 8 trainers"))
    assert shown == spend.estimate(Prices({"H100": 2.49}), Budget(50, ("gpu", "llm"), 16), 8, 1, 1, "H100", 300)
