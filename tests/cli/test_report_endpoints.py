"""The report's per-LLM-endpoint panel (ar_ray/ledger/endpoints.py) on hand-made ledgers whose answers are known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ar_ray.cli.main import main
from ar_ray.ledger.endpoints import endpoint_stats
from ar_ray.ledger.store import Ledger, load

T0 = 1_767_225_600.0
HOSTILE = "<script>x</script>"
FILES = {"train.py": "LR = 0.5\n"}


def row(i: int, **kw) -> dict:
    base = {"run_id": "ep-run", "experiment_id": f"e{i:05d}", "proposed_at": T0 + i * 60, "base_version": 0,
            "best_version": 0}
    if kw.get("decision") != "skip":
        base.update(started_at=T0 + i * 60 + 1, ended_at=T0 + i * 60 + 30, run_seconds=29.0, metric=1.0)
    base.update(kw)
    return base


def rows() -> list[dict]:
    b = dict(role="baseline", group_id="e00000", proposer="baseline", status="ok", decision="baseline", files=FILES)
    screen = dict(role="screen", status="ok")
    return [
        row(0, **b), row(1, **b), row(2, **b),
        # big-model: a screen that is kept on its confirmation run, and a duplicate
        row(3, **screen, proposer="llm-0/big-model", decision="screened", group_id="e00003", cost_usd=0.5,
            description="lower LR"),
        row(4, role="confirm", group_id="e00003", proposer="policy", status="ok", decision="keep", files=FILES),
        row(9, proposer="llm-1/big-model", status="duplicate", decision="skip", cost_usd=0.4),
        # small-model: an invalid edit, a plain discard, a screen rejected by its confirmation
        row(5, proposer="llm-0/small-model", status="invalid_edit", decision="skip", cost_usd=0.01),
        row(6, **screen, proposer="llm-0/small-model", decision="discard", group_id="e00006", cost_usd=0.02),
        row(7, **screen, proposer="llm-1/small-model", decision="screened", group_id="e00007", cost_usd=0.02),
        row(8, role="confirm", group_id="e00007", proposer="policy", status="ok", decision="reject"),
        # an endpoint whose name is hostile markup (a model name comes from the user's config), never kept
        row(10, **screen, proposer=f"llm-0/{HOSTILE}", decision="discard", group_id="e00010"),
        # not an LLM endpoint
        row(11, **screen, proposer="mutate-0", decision="discard", group_id="e00011"),
    ]


def write(run_dir: Path, rs: list[dict], config: dict | None = None) -> Path:
    run_dir.mkdir(parents=True)
    info = {"run_id": "ep-run", "target": str(run_dir), "metric": "val_bpb", "direction": "min"}
    if config is not None:
        info["config"] = config
    (run_dir / "run.json").write_text(json.dumps(info))
    Ledger(run_dir).append(rs)
    return run_dir


def test_per_endpoint_figures_count_outcomes_on_follow_up_runs(tmp_path):
    ep = endpoint_stats(load(write(tmp_path / "run", rows())))
    assert list(ep.index) == [HOSTILE, "big-model", "small-model"]
    cols = ["proposals", "usable", "trained", "screened", "kept"]
    assert ep.loc["big-model", cols].tolist() == [2, 2, 1, 1, 1]  # the keep landed on the confirmation run
    assert ep.loc["small-model", cols].tolist() == [3, 2, 2, 1, 0]
    assert ep.loc["big-model", "cost_usd"] == pytest.approx(0.9)
    assert ep.loc["big-model", "kept_per_dollar"] == pytest.approx(1 / 0.9)
    assert ep.loc["small-model", "kept_per_dollar"] == 0 and np.isnan(ep.loc[HOSTILE, "kept_per_dollar"])
    assert ep.loc["big-model", "kept_per_proposal"] == 0.5
    assert ep["traffic_share"].tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])


def test_a_single_endpoint_run_is_credited_to_the_model_in_run_json(tmp_path):
    rs = [r for r in rows() if "/" not in str(r.get("proposer"))]
    rs += [row(20, role="screen", status="ok", proposer="llm-0", decision="discard", group_id="e00020", cost_usd=0.1),
           row(21, proposer="llm-1", status="proposer_error", decision="skip")]
    config = {"proposer": "llm", "proposer_options": {"endpoints": [{"model": "solo-model"}]}}
    info = {"config": config}
    ep = endpoint_stats(load(write(tmp_path / "one", rs, config)), info)
    assert list(ep.index) == ["solo-model"] and ep.loc["solo-model", ["proposals", "usable", "trained"]].tolist() == [2, 1, 1]
    assert endpoint_stats(load(tmp_path / "one")).empty  # without run.json's word, no endpoint is named


def test_the_report_shows_the_endpoint_panel_escaped_and_leaves_it_out_without_llm_proposals(tmp_path):
    run = write(tmp_path / "run", rows())
    r = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = (tmp_path / "out" / "report.html").read_text()
    panel = page[page.index('<h3 id="endpoints">'):page.index('<h2 id="gpus">')]
    cells = lambda name: re.findall(r"<td[^>]*>([^<]*)</td>", panel[panel.index(f"<td>{name}</td>"):].split("</tr>")[0])  # noqa: E731
    assert cells("big-model") == ["big-model", "2", "2", "1", "1", "1", "$0.9000", "1.11", "0.500", "33.3%"]
    assert cells("small-model") == ["small-model", "3", "2", "2", "1", "0", "$0.0500", "0.00", "0.000", "50.0%"]
    assert "&lt;script&gt;x&lt;/script&gt;" in panel and HOSTILE not in page
    mutate_only = write(tmp_path / "mutate", [r for r in rows() if "/" not in str(r.get("proposer"))])
    r = CliRunner().invoke(main, ["report", str(mutate_only), "--out", str(tmp_path / "out2")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert 'id="endpoints"' not in (tmp_path / "out2" / "report.html").read_text()
