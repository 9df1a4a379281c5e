"""Analysis, report, `ar-ray show` and the git export, on hand-made ledgers whose answers are known."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from ar_ray.cli.main import main
from ar_ray.ledger import analysis as A
from ar_ray.ledger.lineage import GitExportError, export_git
from ar_ray.ledger.store import Ledger, load

T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC, on the hour
HOSTILE = '<script>document.title="PWNED"</script>'
HOSTILE_IMG = '<img src=x onerror="document.title=\'PWNED\'">'


def train(lr: float, width: int, extra: str = "") -> dict:
    return {"train.py": f"LR = {lr}\nWIDTH = {width}\n{extra}print('---')\n"}


V0 = train(0.5, 8)
V1 = train(0.3, 8)
V2 = train(0.3, 12, f"# {HOSTILE} </pre> $x^2$ \n")
A_GPU, B_GPU = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


def row(i: int, **kw) -> dict:
    ran = kw.get("decision") != "skip"
    base = {"run_id": "known-run", "experiment_id": f"e{i:05d}", "proposed_at": T0 + i * 600 - 30}
    if ran:
        gpu = A_GPU if i in (0, 2, 6, 7) else B_GPU
        base.update(started_at=T0 + i * 600 - 100 if i else T0 - 100, ended_at=T0 + i * 600, gpu_model=gpu,
                    run_seconds=100.0 if gpu == A_GPU else 200.0, trainer=f"trainer-{i % 2}", node="node-0")
    base.update(kw)
    return base


def known_rows(log_dir: Path) -> list[dict]:
    """A confirm-mode run: baseline x3, two accepted changes (each screened, confirmed, repeated), a crash,
    a proposal that never ran and a plain discard. Every row ends 10 minutes after the one before."""
    b = dict(role="baseline", group_id="e00000", proposer="baseline", status="ok", decision="baseline",
             description="baseline of e00000: the target as shipped", files=V0, edit_hash="h0", base_version=0,
             best_version=0)
    c1 = dict(role="confirm", group_id="e00003", proposer="policy", status="ok", parent_id="e00000", base_version=0,
              description="confirm of e00003: lower LR to 0.3", edit_hash="h3")
    c2 = dict(role="confirm", group_id="e00009", proposer="policy", status="ok", parent_id="e00003", base_version=1,
              description="confirm of e00009: wider model", edit_hash="h9")
    return [
        row(0, **b, metric=1.00, log_path=str(log_dir / "e00000.txt")),
        row(1, **b, metric=1.02),
        row(2, **b, metric=0.98, best_metric=1.0),
        row(3, role="screen", proposer="llm-0", status="ok", decision="screened", description="lower LR to 0.3",
            diff="-LR = 0.5\n+LR = 0.3\n", parent_id="e00000", base_version=0, best_version=0, metric=0.95,
            best_metric=1.0, gain=0.05, threshold=0.01, edit_hash="h3", cost_usd=0.5, prompt_tokens=1000,
            completion_tokens=100),
        row(4, role="screen", proposer="mutate-0", status="crash", decision="discard", parent_id="e00000",
            description=f"try a hostile idea {HOSTILE_IMG} & more", error=f"RuntimeError: {HOSTILE}",
            base_version=0, best_version=0, best_metric=1.0, returncode=1, edit_hash="h4",
            log_path=str(log_dir / "missing.txt")),
        row(5, proposer="llm-1", status="invalid_edit", decision="skip", description="an edit that did not apply",
            error="the search text was not found", base_version=0, best_version=0, best_metric=1.0, cost_usd=0.25),
        row(6, **c1, decision="confirming", metric=0.96, best_metric=1.0, best_version=0),
        row(7, **c1, decision="keep", metric=0.94, best_metric=0.95, best_version=1, group_mean=0.95, group_n=2,
            gain=0.05, files=V1, log_path=str(log_dir / "e00007.txt")),
        row(8, role="baseline", group_id="e00003-b", proposer="policy", status="ok", decision="baseline",
            parent_id="e00003", base_version=1, best_version=1, metric=0.95, best_metric=0.95, files=V1, edit_hash="h3",
            description="baseline of e00003-b: lower LR to 0.3"),
        row(9, role="screen", proposer="llm-1", status="ok", decision="screened", description=f"wider model {HOSTILE}",
            diff="-WIDTH = 8\n+WIDTH = 12\n", parent_id="e00003", base_version=1, best_version=1, metric=0.90,
            best_metric=0.95, edit_hash="h9", cost_usd=0.3),
        row(10, **c2, decision="keep", metric=0.91, best_metric=0.905, best_version=2, group_mean=0.905, group_n=2,
            files=V2),
        row(11, role="screen", proposer="mutate-0", status="ok", decision="discard", description="narrower model",
            parent_id="e00009", base_version=2, best_version=2, metric=0.99, best_metric=0.905, edit_hash="h11"),
    ]


def write_run(run_dir: Path, rows: list[dict], target: Path | None = None, direction: str = "min") -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": rows[0]["run_id"], "target": str(target or run_dir / "t"),
                                                  "metric": "val_bpb", "direction": direction}))
    Ledger(run_dir).append(rows)
    return run_dir


@pytest.fixture
def known(tmp_path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "e00007.txt").write_text("".join(f"log line {i}\n" for i in range(100)))
    return write_run(tmp_path / "run", known_rows(logs))


# ---------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------


def test_frontier_and_running_best(known):
    df = load(known)
    f = A.frontier(df)
    assert list(f["node"]) == ["e00000", "e00003", "e00009"]
    assert list(f["experiment_id"]) == ["e00000", "e00007", "e00010"]
    assert list(f["version"]) == [0, 1, 2]
    assert np.allclose(f["metric"], [1.0, 0.95, 0.905])
    assert np.isnan(f["improvement"].iloc[0]) and np.allclose(f["improvement"].iloc[1:], [0.05, 0.045])
    assert list(f["description"]) == ["the target as shipped", "lower LR to 0.3", f"wider model {HOSTILE}"]
    assert list(f["proposer"]) == ["baseline", "llm-0", "llm-1"]
    rb = A.running_best(df)
    assert rb.iloc[0] == 1.0 and rb.iloc[-1] == 0.905 and rb.is_monotonic_decreasing
    assert A.best_files(df) == V2


def test_per_proposer_and_per_model(known):
    p = A.proposer_stats(load(known))
    assert list(p.index) == ["llm-0", "llm-1", "mutate-0"]
    assert p.loc["llm-0", ["attempts", "ran", "skipped", "failed", "kept"]].tolist() == [1, 1, 0, 0, 1]
    assert p.loc["llm-1", ["attempts", "ran", "skipped", "failed", "kept"]].tolist() == [2, 1, 1, 0, 1]
    assert p.loc["mutate-0", ["attempts", "ran", "skipped", "failed", "kept"]].tolist() == [2, 2, 0, 1, 0]
    assert p.loc["llm-1", "acceptance_rate"] == 0.5 and p.loc["mutate-0", "failure_rate"] == 0.5
    assert p.loc["llm-1", "cost_usd"] == pytest.approx(0.55) and p.loc["llm-1", "cost_per_kept"] == pytest.approx(0.55)
    assert p.loc["llm-0", "cost_per_kept"] == pytest.approx(0.5) and np.isnan(p.loc["mutate-0", "cost_per_kept"])
    m = A.model_stats(load(known))
    assert m.loc["llm", ["attempts", "kept"]].tolist() == [3, 2] and m.loc["mutate", "attempts"] == 2


def test_per_gpu_and_throughput(known):
    df = load(known)
    g = A.gpu_stats(df)
    assert g.loc[A_GPU, "runs"] == 4 and g.loc[B_GPU, "runs"] == 7
    assert g.loc[A_GPU, "mean_run_seconds"] == 100.0 and g.loc[B_GPU, "mean_run_seconds"] == 200.0
    assert g.loc[A_GPU, "failure_rate"] == 0.0 and g.loc[B_GPU, "failure_rate"] == pytest.approx(1 / 7)
    # pooled spread of identical code: A has h0 [1.00, 0.98] and h3 [0.96, 0.94]; B has h3 [0.95, 0.95] and h9 [0.90, 0.91]
    assert g.loc[A_GPU, "noise"] == pytest.approx(np.sqrt(0.0002)) and g.loc[A_GPU, "noise_dof"] == 2
    assert g.loc[B_GPU, "noise"] == pytest.approx(np.sqrt(0.00005 / 2)) and g.loc[B_GPU, "noise_dof"] == 2
    assert g.loc[A_GPU, "metric_min"] == 0.94 and g.loc[B_GPU, "metric_max"] == 1.02
    t = A.throughput(df, "1h")
    assert len(t) == 2 and t.index[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert t["experiments"].tolist() == [2, 2] and t["runs"].tolist() == [5, 6] and t["kept"].tolist() == [0, 2]
    assert t["failed"].tolist() == [1, 0] and t["experiments_per_hour"].tolist() == [2.0, 2.0]
    assert A.throughput(df, "30min")["experiments_per_hour"].tolist() == [0.0, 4.0, 0.0, 4.0]


def test_summary(known):
    df = load(known)
    s = A.summary(df, A.run_info(known, df))
    assert (s["best_metric"], s["best_experiment"], s["best_version"]) == (0.905, "e00009", 2)
    assert s["baseline_metric"] == 1.0 and s["improvement"] == pytest.approx(0.095)
    assert (s["experiments"], s["runs"], s["skipped"], s["kept"]) == (4, 11, 1, 2)
    assert s["failures"] == {"crash": 1} and s["cost_usd"] == pytest.approx(1.05)
    assert s["elapsed_seconds"] == 11 * 600  # the first run's end to the last one's
    assert s["run_id"] == "known-run" and s["metric"] == "val_bpb"


def test_a_greedy_stale_accept_leaves_a_branch(tmp_path):
    b = dict(role="screen", status="ok", proposer="mutate-0")
    rows = [row(0, role="baseline", group_id="e00000", proposer="baseline", status="ok", decision="baseline",
                metric=1.0, best_metric=1.0, files=V0, best_version=0),
            row(1, **b, decision="keep", parent_id="e00000", base_version=0, best_version=1, metric=0.9, best_metric=0.9,
                files=V1, description="first"),
            row(2, **b, decision="keep", parent_id="e00000", base_version=0, best_version=2, metric=0.8, best_metric=0.8,
                files=V2, description="second, made from the baseline")]
    df = load(write_run(tmp_path / "run", rows))
    lin = A.lineage(df)
    assert lin.set_index("node")["on_best_path"].to_dict() == {"e00000": True, "e00001": False, "e00002": True}
    assert list(A.best_path(df)["node"]) == ["e00000", "e00002"] and A.best_files(df) == V2
    assert np.allclose(lin["improvement"].iloc[1:], [0.1, 0.2])
    from ar_ray.cli.report import _lineage_html
    assert "not part of the current best" in _lineage_html(lin, "val_bpb")


def test_direction_max_flips_improvements(tmp_path):
    rows = [row(0, role="baseline", group_id="e00000", proposer="baseline", status="ok", decision="baseline",
                metric=0.5, best_metric=0.5, files=V0, best_version=0),
            row(1, role="screen", status="ok", proposer="p", decision="keep", parent_id="e00000", best_version=1,
                metric=0.7, best_metric=0.7, files=V1, description="up")]
    run = write_run(tmp_path / "run", rows, direction="max")
    df = load(run)
    assert A.frontier(df, "max")["improvement"].iloc[1] == pytest.approx(0.2)
    assert A.summary(df, A.run_info(run))["improvement"] == pytest.approx(0.2)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _png_checks(path: Path, min_w: int, min_h: int) -> np.ndarray:
    import matplotlib.image as mpimg
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, img.shape
    assert img[..., :3].std() > 0.03, "blank image"
    return img


def test_report_writes_a_plot_and_a_page(known, tmp_path):
    r = CliRunner().invoke(main, ["report", str(known), "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "best val_bpb 0.905000 (e00009)" in r.output
    img = _png_checks(tmp_path / "out" / "progress.png", 1000, 500)
    rgb = (img[..., :3] * 255).round().astype(int)
    green = np.all(np.abs(rgb - [0x2C, 0xA0, 0x2C]) <= 8, axis=-1).sum()  # kept points and the running best
    red = ((rgb[..., 0] > 170) & (rgb[..., 1] < 120) & (rgb[..., 2] < 120)).sum()  # the crash marker
    assert green > 200 and red > 5, (green, red)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in page and "onerror=" not in page.replace("onerror=&quot;", "")
    assert "&lt;script&gt;document.title=&quot;PWNED&quot;&lt;/script&gt;" in page
    assert 'src="data:image/png;base64,' in page and "http://" not in page and "https://" not in page
    assert "0.905000" in page and "lower LR to 0.3" in page and "+WIDTH = 12" in page
    assert re.search(r"crash 1", page)


def test_report_of_an_empty_and_of_a_baseline_only_run(tmp_path):
    from ar_ray.cli.report import build
    empty = tmp_path / "empty"
    (empty / "ledger").mkdir(parents=True)
    r = build(empty)
    assert r.html.exists() and r.png.exists() and r.summary["best_metric"] is None
    one = write_run(tmp_path / "one", [row(0, role="baseline", group_id="e00000", proposer="baseline", status="ok",
                                           decision="baseline", metric=1.0, best_metric=1.0, files=V0, best_version=0)])
    r = build(one)
    assert r.summary["best_metric"] == 1.0 and "No change has been kept yet" in r.html.read_text()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None and not os.environ.get("CI"),
                    reason="chromium is not installed (apt-get install -y chromium); required when CI is set")
def test_the_page_renders_in_a_headless_browser(known, tmp_path):
    from ar_ray.cli.report import build
    browser = _chromium()
    assert browser, "CI is set but chromium is not installed: apt-get install -y chromium"
    page = build(known, tmp_path / "out").html
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    p = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = p.stdout
    assert "<body" in dom, p.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", dom, re.S)[1]
    assert title == "ar-ray report: known-run" and "PWNED" not in title  # no script ran, no handler fired
    assert re.search(r'<td id="best">0\.905000 \(e00009, version 2\)</td>', dom)
    assert "wider model &lt;script&gt;document.title=\"PWNED\"&lt;/script&gt;" in dom  # shown as text
    assert "try a hostile idea &lt;img src=x onerror=" in dom
    assert "<script" not in dom and "<img src=\"x\"" not in dom
    assert dom.count("<img") == 1  # the plot, nothing the ledger injected
    shot = tmp_path / "shot.png"
    p = subprocess.run(flags + ["--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists(), p.stderr[-2000:]
    _png_checks(shot, 1280, 1600)


# ---------------------------------------------------------------------------
# show
# ---------------------------------------------------------------------------


def test_show_a_kept_confirmation_run(known):
    r = CliRunner().invoke(main, ["show", str(known), "e00007", "--lines", "5"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = r.output
    assert "decision keep · role confirm (group e00003) · proposer policy" in out
    assert "val_bpb 0.940000 · best after this row 0.950000" in out and "group mean 0.950000 over 2 runs" in out
    assert "diff (of e00003, the proposal this run re-runs):\n-LR = 0.5\n+LR = 0.3" in out
    assert "log line 99" in out and "log line 95" in out and "log line 94" not in out
    assert "(stale" not in out


def test_show_a_crash_with_its_log_gone_and_by_seq(known):
    out = CliRunner().invoke(main, ["show", str(known), "4"], catch_exceptions=False).output
    assert out.startswith("e00004 (seq 4)") and "status crash · decision discard" in out
    assert f"error:\nRuntimeError: {HOSTILE}" in out and "log: log not found: " in out and "missing.txt" in out
    out = CliRunner().invoke(main, ["show", str(known), "e00005"], catch_exceptions=False).output
    assert "decision skip" in out and "no log recorded (the proposal never ran)" in out
    r = CliRunner().invoke(main, ["show", str(known), "e09999"])
    assert r.exit_code == 1 and "no experiment 'e09999'" in r.output


# ---------------------------------------------------------------------------
# git export
# ---------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A user's repository: the target in sub/target at HEAD (as the run started), a dirty working tree."""
    root = tmp_path / "repo"
    target = root / "sub" / "target"
    target.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (target / "train.py").write_text(V0["train.py"])
    (target / "prepare.py").write_text("X = 1\n")
    (root / "README").write_text("hello\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "init")
    (target / "train.py").write_text("uncommitted work\n")  # must survive
    (root / "untracked.txt").write_text("mine\n")
    return root


def test_export_git_writes_one_commit_per_kept_change(tmp_path, repo):
    logs = tmp_path / "logs"
    run = write_run(tmp_path / "run", known_rows(logs), target=repo / "sub" / "target")
    head, status = git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain")
    r = CliRunner().invoke(main, ["export-git", str(run), "ar-ray/best"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "2 commit(s)" in r.output
    log = git(repo, "log", "--format=%s%x00%b%x01", "main..ar-ray/best").split("\x01")
    subjects = [entry.strip().split("\x00")[0] for entry in log if entry.strip()]
    assert subjects == [f"wider model {HOSTILE}", "lower LR to 0.3"]  # newest first
    assert "val_bpb 0.905000 (was 0.950000, improvement +0.045000, minimized)" in log[0]
    assert "ar-ray-experiment: e00009 (decided by e00010)" in log[0]
    assert git(repo, "show", "ar-ray/best:sub/target/train.py") == V2["train.py"]
    assert git(repo, "show", "ar-ray/best~1:sub/target/train.py") == V1["train.py"]
    assert git(repo, "show", "ar-ray/best:README") == "hello\n"  # everything else as at HEAD
    assert git(repo, "rev-parse", "ar-ray/best~2") == head
    # the user's repository is as it was: HEAD, current branch, index and working tree
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert git(repo, "status", "--porcelain") == status
    assert (repo / "sub" / "target" / "train.py").read_text() == "uncommitted work\n"
    # an existing branch is refused, replaced with --force, and never when it is checked out
    r = CliRunner().invoke(main, ["export-git", str(run), "ar-ray/best"])
    assert r.exit_code == 1 and "already exists" in r.output
    with pytest.raises(GitExportError, match="already exists"):
        export_git(run, "main")
    assert len(export_git(run, "ar-ray/best", force=True)) == 2
    with pytest.raises(GitExportError, match="checked out"):
        export_git(run, "main", force=True)
    for bad in ("bad..name", "@{-1}", "-x"):
        with pytest.raises(GitExportError, match="not a valid branch name"):
            export_git(run, bad)
    assert git(repo, "rev-parse", "main") == head


def test_export_git_into_another_repository(tmp_path, known):
    """--repo: files at the repository's root; an empty repository gets a root commit with the baseline."""
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    commits = export_git(known, "best", repo=other)
    assert [c.version for c in commits] == [0, 1, 2]
    assert git(other, "rev-list", "--count", "best").strip() == "3"
    assert git(other, "show", "best:train.py") == V2["train.py"]
    assert git(other, "show", "best~2:train.py") == V0["train.py"]
    assert git(other, "ls-tree", "-r", "--name-only", "best").split() == ["train.py"]
    with pytest.raises(GitExportError, match="not in a git repository"):
        export_git(known, "best2")  # the run's target is not in a repository and no --repo


# ---------------------------------------------------------------------------
# a promotion ladder's root, and ids a resumed driver gives versions
# ---------------------------------------------------------------------------


V0_LADDER = train(0.7, 8)  # the run started from uncommitted work: not what the repository's HEAD holds


def ladder_rows() -> list[dict]:
    """A 2-rung ladder in confirm mode, as the driver writes it: policy.start names the top rung's baseline group
    e00000 (its first run) and the cheap rung's e00000-r0; the cheap runs land first. A screen made from version 0
    (parent e00000) is promoted and kept at the top rung; the new best then gets its runs at the cheap rung."""
    b = dict(role="baseline", proposer="baseline", status="ok", decision="baseline", files=V0_LADDER,
             edit_hash="h0", base_version=0, best_version=0)
    order = [  # (id, fields), in the order the rows land
        (2, dict(b, group_id="e00000-r0", metric=1.10)),
        (3, dict(b, group_id="e00000-r0", metric=1.11)),
        (0, dict(b, group_id="e00000", metric=1.00)),
        (1, dict(b, group_id="e00000", metric=1.01, best_metric=1.005)),
        (4, dict(role="screen", proposer="llm-0", status="ok", decision="promoted", parent_id="e00000",
                 base_version=0, best_version=0, best_metric=1.005, metric=1.05, description="raise lr",
                 edit_hash="h1")),
        (5, dict(role="promote", group_id="e00004", proposer="policy", status="ok", decision="keep",
                 parent_id="e00000", base_version=0, best_version=1, best_metric=0.95, metric=0.95, files=V1,
                 description="promote of e00004: raise lr", edit_hash="h1")),
        (6, dict(role="baseline", group_id="e00004-b0", proposer="baseline", status="ok", decision="baseline",
                 parent_id="e00004", base_version=1, best_version=1, best_metric=0.95, metric=1.02, files=V1,
                 edit_hash="h1")),
    ]
    return [row(i, **{**kw, "ended_at": T0 + k * 600, "started_at": T0 + k * 600 - 100})
            for k, (i, kw) in enumerate(order)]


def test_a_ladder_lineage_starts_at_the_top_rung_baseline(tmp_path):
    df = load(write_run(tmp_path / "run", ladder_rows()))
    lin = A.lineage(df)
    assert list(lin["node"]) == ["e00000", "e00004"] and list(lin["parent"]) == [None, "e00000"]
    assert lin["on_best_path"].all() and list(A.best_path(df)["node"]) == ["e00000", "e00004"]
    assert lin["metric"].iloc[0] == 1.005  # the top rung's baseline, not the cheap rung's 1.10
    assert lin["improvement"].iloc[1] == pytest.approx(0.055)
    s = A.summary(df, A.run_info(tmp_path / "run", df))
    assert s["kept_on_best_path"] == 1 and s["baseline_metric"] == 1.005 and s["improvement"] == pytest.approx(0.055)
    # before any top-rung run has landed, the root is still e00000 (the name proposals use), with no metric yet
    early = load(write_run(tmp_path / "early", ladder_rows()[:2]))
    lin = A.lineage(early)
    assert list(lin["node"]) == ["e00000"] and pd.isna(lin["metric"].iloc[0])


def test_a_ladder_exports_its_baseline_commit(tmp_path, repo):
    run = write_run(tmp_path / "run", ladder_rows(), target=repo / "sub" / "target")
    head = git(repo, "rev-parse", "HEAD")
    commits = export_git(run, "ar-ray/best")
    assert [(c.node, c.version) for c in commits] == [("e00000", 0), ("e00004", 1)]
    assert git(repo, "rev-parse", "ar-ray/best~2") == head
    assert git(repo, "show", "ar-ray/best~1:sub/target/train.py") == V0_LADDER["train.py"]
    assert git(repo, "show", "ar-ray/best:sub/target/train.py") == V1["train.py"]
    # the kept commit holds only the kept change, not the difference between HEAD and the target as run
    diff = git(repo, "diff", "ar-ray/best~1", "ar-ray/best", "--", "sub/target/train.py")
    assert "-LR = 0.7" in diff and "+LR = 0.3" in diff


def test_lineage_follows_the_ids_a_resumed_driver_gives_versions(tmp_path):
    """A resumed driver names version 0 by the first of its runs in the ledger (here e00002, a cheap-rung run) and
    a kept version by the row that kept it (e00005, not its group e00004): later proposals name those as parents."""
    rows = [dict(r, parent_id="e00002") if r["experiment_id"] in ("e00004", "e00005") else r for r in ladder_rows()]
    rows.append(row(8, role="promote", group_id="e00008", proposer="policy", status="ok", decision="keep",
                    parent_id="e00005", base_version=1, best_version=2, best_metric=0.90, metric=0.90, files=V2,
                    description="promote of e00008: wider", edit_hash="h8"))
    df = load(write_run(tmp_path / "run", rows))
    lin = A.lineage(df)
    assert list(lin["node"]) == ["e00000", "e00004", "e00008"]
    assert list(lin["parent"]) == [None, "e00000", "e00004"] and lin["on_best_path"].all()
    assert lin["improvement"].tolist()[1:] == pytest.approx([0.055, 0.05])
    assert A.summary(df)["kept_on_best_path"] == 2


def test_export_git_refuses_a_history_that_misses_the_baseline(tmp_path, repo):
    """A kept change whose parent the ledger does not hold: no commit may fold HEAD-vs-target into it."""
    rows = [dict(r, parent_id="e99999") if r["experiment_id"] in ("e00004", "e00005") else r for r in ladder_rows()]
    run = write_run(tmp_path / "run", rows, target=repo / "sub" / "target")
    assert list(A.best_path(load(run))["node"]) == ["e00004"]
    with pytest.raises(GitExportError, match="does not reach the unmodified target"):
        export_git(run, "ar-ray/best")
    assert "ar-ray/best" not in git(repo, "branch", "--list")
