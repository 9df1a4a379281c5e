"""Trackers against the real things: an MLflow tracking server started here on loopback (sqlite) read back with
MLflow's client, W&B offline runs read back with wandb's own reader (`wandb leet inspect --json`), TensorBoard event
files read with TensorBoard's EventAccumulator. A tracker that is down lags; the run does not wait for it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_targets import free_ports, wait_for
from toys import make_toy

from ar_ray.cli.main import main
from ar_ray.engine import rows
from ar_ray.lab import track
from ar_ray.ledger import store as ledger
from ar_ray.types import Candidate, Proposal, Result

# a toy whose runs print a training curve (25 % steps) and a metric set by two knobs the mutate proposer tunes
TRAIN = '''\
LR = 0.5
WIDTH = 8
for i in range(1, 5):
    print(f"loss {3.0 / i + abs(LR - 0.3):.4f} | {i * 25}% done", flush=True)
print("---")
print(f"val_bpb: {abs(LR - 0.3) + abs(WIDTH - 12) * 0.01:.6f}")
'''
TOML = "[target]\nprogress_pattern = 'loss (?P<loss>\\S+) \\| (?P<percent>[\\d.]+)% done'\n"
RUN_ID = "20261205-120000-abc123"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def ran(run_dir: Path):
    df = ledger.load(run_dir)
    return df[df.decision != "skip"]


def event_scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def start_mlflow(port: int, home: Path) -> subprocess.Popen:
    """`mlflow server` on loopback with a sqlite store; wait_mlflow() waits until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), "server", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                             "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            stdout=open(home / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            # no background job runner (GenAI evaluation jobs): a third less start-up, same tracking API
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return proc


def wait_mlflow(proc: subprocess.Popen, port: int, home: Path) -> None:
    import urllib.request

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(home / 'server.log').read_text()[-3000:]}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        except OSError:
            return False
    wait_for(up, timeout=180, what="the MLflow server")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow server starting (it takes 10-30 s) while Ray starts and the first run runs; wait_mlflow() waits."""
    port = free_ports(1)[0]
    server = start_mlflow(port, tmp_path / "mlflow")
    yield server, port, tmp_path / "mlflow"
    stop(server)


def test_tensorboard_and_a_down_mlflow_during_a_run_then_mlflow_catches_up_on_resume(mlflow_server, ray_local,
                                                                                      tmp_path):
    target = make_toy(tmp_path / "target", TOML, train=TRAIN)
    down = free_ports(1)[0]
    uri = f"http://127.0.0.1:{down}"  # nothing listens there: MLflow is down for the first run
    check_runs(target, tmp_path / "run", uri, *mlflow_server)


def check_runs(target: Path, run_dir: Path, uri: str, server, port: int, home: Path) -> None:
    r = invoke("run", "--target", target, "--run-dir", run_dir, "--max-experiments", "1", "--trainers", "1",
               "--acceptance", "greedy", "--track", "tensorboard", "--track", f"mlflow={uri}", "--track-flush", "2m")
    assert r.exit_code == 0, r.output
    first = ran(run_dir)
    n = len(first)
    assert n == 2  # the baseline and a candidate
    # TensorBoard did not wait for MLflow: every experiment is there, with its metric and its curve
    tb = run_dir / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == sorted(first.experiment_id)
    for row in first.itertuples():
        scalars = event_scalars(tb / row.experiment_id)
        assert scalars["result/val_bpb"] == [(0, pytest.approx(row.metric, abs=1e-6))]
        assert [s for s, _ in scalars["train/loss"]] == [250, 500, 750, 1000]
        assert scalars["train/loss"][-1][1] == pytest.approx(row.curve[-1]["loss"], abs=1e-4)
        assert "result/run_seconds" in scalars and "result/train_seconds" in scalars  # the time breakdown
    # MLflow lagged and says so: in the summary, in trackers.json and in `ar-ray status`
    assert f"tensorboard ({tb}): {n} logged, up to date" in r.output, r.output
    assert f"mlflow ({uri}): 0 logged, {n} behind, last error:" in r.output, r.output
    assert f"ar-ray export {run_dir} --to mlflow" in r.output, r.output
    state = json.loads((run_dir / "trackers.json").read_text())
    assert state["mlflow"]["behind"] == n and state["mlflow"]["last_error"]
    assert set(state["tensorboard"]["logged"]) == set(first.experiment_id)
    status = invoke("status", run_dir)
    assert f"mlflow ({uri}): 0 logged, {n} behind" in status.output
    events = {p: sorted(f.name for f in p.iterdir()) for p in tb.iterdir()}

    wait_mlflow(server, port, home)
    uri = f"http://127.0.0.1:{port}"
    # the resume points MLflow at the server that answers: it catches up on the first run's rows while
    # TensorBoard adds the new ones; the end's flush gets the time it needs
    r = invoke("run", "--resume", run_dir, "--max-experiments", "2", "--track", "tensorboard",
               "--track", f"mlflow={uri}", "--track-flush", "3m")
    assert r.exit_code == 0, r.output
    every = ran(run_dir)
    assert len(every) > n
    assert f"mlflow ({uri}): {len(every)} logged, up to date" in r.output, r.output
    assert sorted(p.name for p in tb.iterdir()) == sorted(every.experiment_id)
    for folder, files in events.items():  # no experiment written twice
        assert sorted(f.name for f in folder.iterdir()) == files
    for folder in tb.iterdir():
        assert len(event_scalars(folder)["result/val_bpb"]) == 1

    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    experiment = client.get_experiment_by_name(f"ar-ray/{run_id}")
    runs = client.search_runs([experiment.experiment_id])
    by_id = {x.data.tags["ar_ray.experiment_id"]: x for x in runs}
    assert len(runs) == len(by_id) == len(every)  # one MLflow run per experiment, none twice
    for row in every.itertuples():
        x = by_id[row.experiment_id]
        assert x.info.run_name == row.experiment_id and x.info.status == "FINISHED"
        assert x.data.metrics["val_bpb"] == pytest.approx(row.metric)
        assert x.data.params["description"] == row.description and x.data.tags["decision"] == row.decision
        curve = client.get_metric_history(x.info.run_id, "train/loss")
        assert sorted(m.step for m in curve) == [250, 500, 750, 1000]
        if isinstance(row.diff, str):  # a candidate's change, in the run's description
            assert row.diff.strip() in x.data.tags["mlflow.note.content"]

    # export finds nothing left to log; without trackers.json, MLflow's own tags still prevent duplicates
    r = invoke("export", run_dir, "--to", f"mlflow={uri}")
    assert r.exit_code == 0, r.output
    assert f"{len(every)} logged, up to date (0 now)" in r.output
    (run_dir / "trackers.json").unlink()
    r = invoke("export", run_dir, "--to", f"mlflow={uri}")
    assert r.exit_code == 0 and "(0 now)" in r.output, r.output
    assert len(client.search_runs([experiment.experiment_id])) == len(every)


def small_ledger(run_dir: Path) -> list[dict]:
    """A real ledger (the Ledger class, rows as the driver builds them): a baseline, a kept change with knobs,
    a crash, and a duplicate proposal that never ran."""
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"run_id": RUN_ID, "metric": "val_bpb", "direction": "min"}))
    out, now = [], time.time()
    specs = [("the target as shipped", "", "ok", 1.0, "baseline"), ("LR 0.5 -> 0.3", "-LR = 0.5\n+LR = 0.3\n", "ok", 0.8,
             "keep"), ("WIDTH 8 -> 64", "-WIDTH = 8\n+WIDTH = 64\n", "crash", None, "discard")]
    for i, (description, diff, status, metric, decision) in enumerate(specs):
        p = Proposal("mutate", 0, description, {"train.py": "x"}, diff=diff, usage={"cost_usd": 0.002})
        c = Candidate(f"e{i:05d}", 0, p.files, seed=i, knobs={"depth": "4"})
        r = Result(c.experiment_id, status, metric=metric, metrics={"num_steps": "10"} if metric else {},
                   error_tail="RuntimeError: boom" if status != "ok" else "", started_at=now - 5, ended_at=now,
                   child_seconds=5.0, curve=((0.5, 2.0 + i), (1.0, 1.5 + i)), phases={"startup": 1.0, "train": 3.5})
        row = rows.result_row(RUN_ID, None, p, c, r, decision, 0, 1.0, now - 6, 5.0)
        out.append(rows.with_policy(row, "screen" if i else "baseline", c.experiment_id, {"noise": 0.01}))
    dup = rows.proposal_row(RUN_ID, "e00003", None, Proposal("mutate", 0, "LR 0.5 -> 0.3", {}, status="duplicate"),
                            0, 1.0)
    ledger.Ledger(run_dir).append(out + [dup])
    return out


def wandb_records(run_path: Path) -> list[dict]:
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(wandb), "leet", "inspect", "--json", str(run_path)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wandb_services() -> list[int]:
    """wandb-core processes that are children of this one (the tracker's client starts one)."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if "wandb" in name and int(rest[1]) == os.getpid():
            out.append(int(entry))
    return out


def test_export_to_wandb_offline_read_back_with_wandbs_reader(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    written = small_ledger(run_dir)
    r = invoke("export", run_dir, "--to", "wandb=lab/research")
    assert r.exit_code == 0, r.output
    assert "wandb (lab/research (offline" in r.output and "3 logged, up to date (3 now)" in r.output
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 3  # the duplicate proposal never ran: no tracker run
    seen = {}
    for path in runs:
        records = wandb_records(path)
        head = next(x["run"] for x in records if x["type"] == "run")
        config = head["config"]["update"]
        eid = head["display_name"]
        seen[eid] = head
        row = next(w for w in written if w["experiment_id"] == eid)
        assert head["run_group"] == RUN_ID and head["project"] == "research" and head["run_id"] == f"{RUN_ID}-{eid}"
        assert config["description"] == row["description"] and config["diff"] == (row["diff"] or "")
        assert config["knob/depth"] == "4" and config["decision"] == row["decision"]
        history = [x["history"] for x in records if x["type"] == "history"]
        assert [h["step"]["num"] for h in history] == [500, 1000]
        assert [h["item"]["train/loss"] for h in history] == [pytest.approx(p[1]) for p in row["curve"]]
        summary = {}
        for x in records:
            if x["type"] == "summary":
                summary.update(x["summary"].get("update", {}))
        assert summary["status"] == row["status"] and summary["run_seconds"] == pytest.approx(5.0)
        if row["metric"] is not None:
            assert summary["val_bpb"] == pytest.approx(row["metric"])
        exit_code = next(x["exit"] for x in records if x["type"] == "exit").get("exit_code", 0)
        assert exit_code == (1 if row["status"] == "crash" else 0)
    assert sorted(seen) == ["e00000", "e00001", "e00002"]
    assert not wandb_services(), "wandb's service process outlived the export"
    r = invoke("export", run_dir, "--to", "wandb=lab/research")  # idempotent: nothing is logged twice
    assert r.exit_code == 0 and "(0 now)" in r.output, r.output
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 3


def test_a_down_tracker_never_holds_up_the_feed_and_the_flush_is_bounded(tmp_path):
    """Feeding is a queue put: 300 rows to an MLflow at a closed port take milliseconds, and the end's flush
    gives up on time, saying what is left."""
    run_dir = tmp_path / "run"
    written = small_ledger(run_dir)
    port = free_ports(1)[0]
    follower = track.Follower(run_dir, track.parse([f"mlflow=http://127.0.0.1:{port}"]), RUN_ID, "val_bpb")
    follower.start(catch_up=False)
    t = time.perf_counter()
    for i in range(300):
        follower.feed({**written[i % 3], "experiment_id": f"x{i:05d}"})
    fed = time.perf_counter() - t
    assert fed < 1.0, fed  # (measured: a few ms)
    wait_for(lambda: follower.status()[0]["last_error"], timeout=60, what="the first failed try")
    t = time.perf_counter()
    states = follower.close(0.5)
    assert time.perf_counter() - t < 10
    assert states[0]["behind"] == 300 and states[0]["logged"] == 0 and "Connection" in states[0]["last_error"]
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["behind"] == 300


def test_a_slow_tracker_never_holds_up_the_feed_and_the_flush_ends_on_time(tmp_path, monkeypatch):
    """An MLflow that accepts connections and never answers: the feed stays a queue put, and the end's flush
    returns at its deadline with everything still behind (the lane is stuck in a request, not the run)."""
    import socket
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")  # the stuck lane gives up soon after the test
    run_dir = tmp_path / "run"
    written = small_ledger(run_dir)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # the kernel completes the connections; nobody reads or answers
    try:
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        follower = track.Follower(run_dir, track.parse([f"mlflow={uri}"]), RUN_ID, "val_bpb").start()
        t = time.perf_counter()
        for i in range(300):
            follower.feed({**written[i % 3], "experiment_id": f"x{i:05d}"})
        assert time.perf_counter() - t < 1.0
        silent.settimeout(120)
        waiting, _ = silent.accept()  # the tracker has sent its first request, and waits for the answer
        t = time.perf_counter()
        states = follower.close(1.0)
        waiting.close()
        assert time.perf_counter() - t < 3.0  # the deadline, not the request's 5 s timeout
        assert states[0]["logged"] == 0 and states[0]["behind"] == 303  # the ledger's 3 and the 300 fed
    finally:
        silent.close()


@pytest.mark.parametrize("args, message", [
    (["--track", "comet"], "unknown tracker 'comet'"),
    (["--track", "tensorboard", "--track", "tensorboard=x"], "given twice"),
    (["--track", "mlflow="], "nothing after '='"),
    (["--track-flush", "-5"], "not a duration"),
    (["--track", "mlflow=http://me:s3cret@127.0.0.1:5000"], "the address holds a password"),
])
def test_bad_track_flags_are_refused_before_ray_starts(tmp_path, args, message):
    target = make_toy(tmp_path / "target", TOML, train=TRAIN)
    r = invoke("run", "--target", target, "--run-dir", tmp_path / "run", *args)
    assert r.exit_code == 2 and message in r.output, r.output
    assert not (tmp_path / "run" / "ledger").exists()


def test_a_missing_client_is_named_with_its_install_command(tmp_path, monkeypatch):
    target = make_toy(tmp_path / "target", TOML, train=TRAIN)
    real = track._has
    monkeypatch.setattr(track, "_has", lambda module: module != "wandb" and real(module))  # as if not installed
    r = invoke("run", "--target", target, "--run-dir", tmp_path / "run", "--track", "wandb")
    assert r.exit_code == 2 and "--track wandb needs `pip install wandb`" in r.output, r.output
    assert not (tmp_path / "run" / "ledger").exists()
    r = invoke("export", tmp_path, "--to", "wandb")
    assert r.exit_code == 2 and "--to wandb needs `pip install wandb`" in r.output, r.output
