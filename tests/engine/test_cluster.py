"""ar-ray on a simulated multi-node Ray cluster (ray.cluster_utils.Cluster, fake GPUs, real training children).

Every simulated node runs on this machine under one hostname, so placement is read from Ray's state API
(node ids), never from the ledger's `node` column. The driver-kill test runs the CLI as a subprocess with
its own embedded Ray, after the cluster is gone.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import ray
from helpers_targets import pids_with_env, process_env, wait_for
from ray.cluster_utils import Cluster
from toys import make_toy, marker_processes

from ar_ray.engine.config import RunConfig
from ar_ray.engine.run import execute
from ar_ray.ledger import store as ledger

SCRIPT = "toys:ScriptedProposer"


def toy(tmp_path, mark: str, sleep: float):
    return make_toy(tmp_path / "target", f"[target]\nenv = {{ TOY_SLEEP = '{sleep}', TOY_MARK = '{mark}' }}\n")


def config(tmp_path, target, **kw) -> RunConfig:
    kw = {"trainers": 2, "gpus_per_trainer": 1, "acceptance": "greedy", **kw}
    return RunConfig(target=str(target), run_dir=str(tmp_path / "run"), **kw)


def running_children(mark: str) -> dict[str, int]:
    """experiment id -> pid of a live process of that experiment (reaper or training child) carrying `mark`."""
    out = {}
    for pid in marker_processes(mark):
        env = process_env(pid) or {}
        if b"AR_EXPERIMENT_ID" in env:
            out[env[b"AR_EXPERIMENT_ID"].decode()] = pid
    return out


def trainer_nodes(driver) -> list[str | None]:
    """The node id of each of the driver's trainers, asked of the trainers themselves (they answer while a run is
    in flight; Ray's state API needs the dashboard, which a loaded machine can leave unavailable)."""
    return ray.get([t.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
                    for t in driver.trainers], timeout=30)


def no_orphans(mark: str, timeout: float = 30) -> None:
    wait_for(lambda: not marker_processes(mark), timeout, f"the run's training children to be gone: {marker_processes(mark)}")


def screens(df) -> int:
    return int(((df.role == "screen") & (df.decision != "skip")).sum())


def first_baselines(df) -> int:
    return int(((df.role == "baseline") & (df.base_version == 0)).sum())


@pytest.fixture(scope="class")
def cluster():
    """A head with no GPU and three worker nodes of 2 CPUs and 2 fake GPUs each."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": True,
                                                     "dashboard_port": 0})  # the dashboard serves the state API
    for i in range(3):
        c.add_node(num_cpus=2, num_gpus=2, resources={f"node_{i}": 1})
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.mark.timeout(240)
class TestCluster:
    def test_trainers_spread_over_nodes(self, cluster, tmp_path):
        """2 trainers of 1 GPU could share one 2-GPU node; SPREAD puts them on different nodes."""
        mark = f"toy-{uuid.uuid4().hex}"
        seen = []

        def on_event(kind, driver, row):
            if kind == "row" and not seen:
                seen.append(trainer_nodes(driver))

        summary = execute(config(tmp_path, toy(tmp_path, mark, 0.3), max_experiments=2, proposers=1), on_event)
        assert summary["experiments"] == 2
        nodes = seen[0]
        gpu_nodes = {n.node_id for n in cluster.worker_nodes}
        assert None not in nodes and len(set(nodes)) == 2 and set(nodes) <= gpu_nodes, nodes
        no_orphans(mark)

    @staticmethod
    def _kill_a_proposer_mid_run(tmp_path, max_experiments: int):
        """Kill proposer 0 (Ray restarts it) while proposals are queued in the driver and in flight on it."""
        mark = f"toy-{uuid.uuid4().hex}"
        snap = {"infra_events": []}

        def on_event(kind, driver, row):
            if (kind == "tick" and "queued" not in snap and driver.queue and driver.count.ran >= 1
                    and 0 in driver.proposing.values()):
                snap["queued"] = [p.edit_hash for p in driver.queue]
                snap["ran"] = driver.count.ran
                ray.kill(driver.proposers[0], no_restart=False)
            if kind in ("infra", "proposer_error"):
                snap["infra_events"].append(row)
            if kind == "finished":
                snap["left_in_queue"] = len(driver.queue)
                snap["proposed"] = driver.count.proposed

        # proposals take a while, so some are in flight on the proposer when it dies
        summary = execute(config(tmp_path, toy(tmp_path, mark, 0.5), max_experiments=max_experiments, proposers=2,
                                 proposer=SCRIPT, proposer_options={"delay": 0.3}), on_event)
        no_orphans(mark)
        return summary, snap, ledger.load(tmp_path / "run")

    def test_dead_proposer_loses_no_queued_proposal(self, cluster, tmp_path):
        summary, snap, df = self._kill_a_proposer_mid_run(tmp_path, 8)
        assert snap["queued"] and snap["ran"] + len(snap["queued"]) <= 8, snap
        assert summary["experiments"] == 8 == screens(df) and not summary["interrupted"]
        assert df.experiment_id.is_unique
        assert sorted(df.experiment_id) == [f"e{i:05d}" for i in range(len(df))]  # no id lost in between
        assert set(snap["queued"]) <= set(df[df.role == "screen"].edit_hash)  # queued at the death: all ran
        # every proposal that came back was run, recorded as skipped, or is still queued at the end
        assert snap["proposed"] == screens(df) + int((df.decision == "skip").sum()) + snap["left_in_queue"]
        assert set(df[df.decision != "skip"].status) == {"ok"}
        # the call that was in flight on the dead proposer failed, was counted, and was simply asked again
        assert summary["infra"] >= 1 and snap["infra_events"], (summary, snap)

    def test_a_candidate_that_kills_its_trainer_is_retried_at_most_3_times(self, cluster, tmp_path):
        mark = f"toy-{uuid.uuid4().hex}"
        killer = ("import os, signal, time\n"
                  "actor = os.getppid()\n"
                  "while b'reaper.py' in open(f'/proc/{actor}/cmdline', 'rb').read():  # (unconfined: two reapers)\n"
                  "    with open(f'/proc/{actor}/stat') as f:\n"
                  "        actor = int(f.read().rsplit(')', 1)[1].split()[1])\n"
                  "os.kill(actor, signal.SIGKILL)  # the trainer actor's process, like an OOM kill\n"
                  "time.sleep(60)\n")
        events = collections.Counter()

        def on_event(kind, driver, row):
            if kind == "infra":
                events[row["experiment_id"]] += 1
                if max(events.values()) >= 6:  # 1 run + 3 retries = 4 losses at most: stop a runaway loop here
                    driver.stop()
            if kind == "row" and row["description"] == "kills":
                driver.stop()  # given up on, as it should be: no need to run the rest

        # screens are slow and many, so a trainer that dies is handed queued work at once and the
        # killer waits for the next free trainer (the `followups` path). Unconfined: under bubblewrap a
        # candidate cannot even see its trainer (its own PID namespace); here it stands for an OOM kill.
        execute(config(tmp_path, toy(tmp_path, mark, 1.0), max_experiments=20, proposers=1, proposer=SCRIPT,
                       proposer_options={"script": [[{"__raw__": killer}, "kills"]]}, time_limit=90,
                       sandbox="none"), on_event)
        df = ledger.load(tmp_path / "run")
        row = df[df.description == "kills"]
        no_orphans(mark)
        assert len(row) == 1 and events[row.experiment_id.iloc[0]] == 4, events  # others may be hit in passing
        assert row.status.iloc[0] == "infra"

    def test_resume_after_a_partial_baseline_completes_the_baseline(self, cluster, tmp_path):
        mark = f"toy-{uuid.uuid4().hex}"
        target = toy(tmp_path, mark, 0.5)
        script = {"script": [[{"LR": 0.3}, "LR 0.3"]]}  # a large, real improvement

        def stop_at_first_row(kind, driver, row):
            if kind == "row":
                raise KeyboardInterrupt  # what Ctrl-C does: the run stops cleanly, the ledger is consistent

        first = execute(config(tmp_path, target, trainers=1, acceptance="confirm", max_experiments=3, proposers=1,
                               proposer=SCRIPT, proposer_options=script), stop_at_first_row)
        assert first["interrupted"] and first_baselines(ledger.load(tmp_path / "run")) == 1
        execute(config(tmp_path, target, trainers=1, acceptance="confirm", max_experiments=1, proposers=1,
                       proposer=SCRIPT, proposer_options=script, resume=True))
        df = ledger.load(tmp_path / "run")
        no_orphans(mark)
        assert first_baselines(df) == 3
        ran = df[(df.description == "LR 0.3") & (df.decision != "skip")]
        assert len(ran) == 1 and ran.noise.notna().all()
        # the proposal queued when Ctrl-C came is a row of its own (its cost was spent), and ran after the resume
        assert set(df[df.description == "LR 0.3"].status) <= {"ok", "unused"}

    def test_resume_rebuilds_the_policy_state_the_run_had(self, cluster, tmp_path):
        from ar_ray.engine.driver import Driver
        from ar_ray.engine.run import restore
        from ar_ray.ledger.store import Ledger
        from ar_ray.search.policy import Policy
        from ar_ray.target import load_target

        mark = f"toy-{uuid.uuid4().hex}"
        target = toy(tmp_path, mark, 0.2)
        live = {}

        def on_event(kind, driver, row):
            if kind == "finished":
                live.update(best=sorted(driver.policy.best_metrics), spread=driver.policy.spread,
                            version=driver.best.version, versions=dict(driver.versions), best_id=driver.best.experiment_id)

        cfg = config(tmp_path, target, acceptance="confirm", max_experiments=1, proposers=1, proposer=SCRIPT,
                     proposer_options={"script": [[{"LR": 0.3}, "LR 0.3"]]})
        summary = execute(cfg, on_event)
        no_orphans(mark)
        assert summary["kept"] == 1 and live["version"] == 1
        t = load_target(str(target))
        fresh = Driver(t, Ledger(tmp_path / "run"), summary["run_id"], [], [], Policy(cfg.policy(), t.direction),
                       queue_depth=1)
        restore(fresh, str(tmp_path / "run"))
        assert fresh.best.version == 1
        assert sorted(fresh.policy.best_metrics) == live["best"]
        assert fresh.policy.spread == live["spread"]
        # versions are named as the live run named them (the candidate's group, not its deciding confirmation
        # row), so proposals made after a resume name the same parent ids
        assert fresh.versions == live["versions"] and fresh.best.experiment_id == live["best_id"]

    def test_node_loss_reruns_the_experiment_elsewhere_once(self, cluster, tmp_path):
        """Runs last in the class: it removes a node. The trainer restarts on a spare node and the
        experiment it was running is re-dispatched under the same id."""
        mark = f"toy-{uuid.uuid4().hex}"
        sleep = 3.0
        hit = {}

        def on_event(kind, driver, row):
            if kind == "infra":
                hit.setdefault("infra", []).append(row["experiment_id"])
            if kind != "row" or hit:
                return
            # a flight whose child is running and has most of its time ahead of it
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                live = running_children(mark)
                fresh = [f for f in driver.running.values()
                         if f.candidate.experiment_id in live and time.time() - f.dispatched_at < sleep - 1.5]
                if fresh:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("no experiment in flight to kill")
            victim = fresh[0]
            node_id = trainer_nodes(driver)[victim.trainer]
            node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
            hit.update(experiment_id=victim.candidate.experiment_id, node_id=node_id,
                       pid=live[victim.candidate.experiment_id])
            cluster.remove_node(node)
            hit["removed_at"] = time.time()

        summary = execute(config(tmp_path, toy(tmp_path, mark, sleep), max_experiments=4, proposers=1), on_event)
        df = ledger.load(tmp_path / "run")
        victim = hit["experiment_id"]
        assert summary["experiments"] == 4 == screens(df) and not summary["interrupted"]
        assert summary["infra"] >= 1 and victim in hit["infra"], (summary, hit)
        assert df.experiment_id.is_unique
        again = df[df.experiment_id == victim]
        assert len(again) == 1 and again.status.iloc[0] == "ok", again[["experiment_id", "status", "error"]]
        assert again.started_at.iloc[0].timestamp() > hit["removed_at"] - 1  # the row is the run elsewhere
        assert set(df[df.decision != "skip"].status) == {"ok"}
        assert hit["node_id"] not in {n.node_id for n in cluster.worker_nodes}
        no_orphans(mark)  # the dead node's children went with it; the others finished


# ---- the driver itself killed (a subprocess with its own embedded Ray) ----

def ledger_ids(run_dir) -> list[str]:
    try:
        return ledger.read_table(run_dir).column("experiment_id").to_pylist()
    except (ledger.LedgerError, OSError):
        return []


def end_the_killed_rays(driver_mark: str) -> None:
    """What is left of the embedded Rays of SIGKILLed drivers (whose training children are checked gone first):
    their dashboard and runtime-env agents outlive them by about a minute and hold the agent port, 52365, which
    the next Ray started here would retry for ~3 s before it gives up on it."""
    for pid in pids_with_env(driver_mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not pids_with_env(driver_mark), 30, "the killed drivers' Ray processes to exit")


def read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def printed_ids(lines: list[str]) -> set[str]:
    """The experiments a driver reported (a row is reported once it is in the ledger and out of the journal)."""
    return {line.split()[0] for line in list(lines) if line.startswith("e0")}


def check_the_kill(run_dir, output: list[str], first: bool, late: bool) -> dict:
    """What a SIGKILLed driver left: every completed row intact and readable with no project code, whatever it
    reported already on disk; after a late kill, what was in flight is in the journal with no row. Returns it for
    the resume's checks."""
    import pandas as pd
    before = ledger.load(run_dir)
    assert before.experiment_id.is_unique
    assert len(pd.read_parquet(run_dir / "ledger")) == len(before)
    printed = printed_ids(output)
    assert printed <= set(before.experiment_id)  # whatever the driver reported was already on disk
    assert printed or not first  # (a resumed driver may be killed before it reports the row that triggered it)
    in_flight = {p.stem for p in (run_dir / "inflight").glob("e*.json")}  # new candidates (not confirmations)
    if late:  # (a kill between the ledger's append and the journal's removal leaves both: a resume drops those)
        assert not in_flight & set(before.experiment_id)
    return {"before": before, "in_flight": in_flight, "late": late}


def check_the_resume(kill: dict, after) -> None:
    """The ledger after the driver that resumed from `kill` finished or was killed in turn: nothing rewritten;
    after the late kill (6 rows in, a child in flight), the baseline was not re-run and the resume went on from the
    restored best and noise estimate, not from the target as shipped (the confirmations left open by the kill are
    finished first, and the candidates in flight re-run, on the code they were made from)."""
    before, in_flight = kill["before"], kill["in_flight"]
    assert after.iloc[: len(before)].experiment_id.tolist() == before.experiment_id.tolist()  # nothing rewritten
    if not kill["late"]:
        return
    assert first_baselines(after) == first_baselines(before) == 3  # the baseline was not re-run
    new = after.iloc[len(before):]
    reopened = (new.group_id.isin(set(before.group_id)) & new.role.isin(["confirm", "rebase"])) | \
        new.experiment_id.isin(in_flight)
    assert (new[(new.decision != "skip") & ~reopened].base_version >= before.best_version.max()).all()
    assert new[new.decision != "skip"].noise.notna().all() and new.best_version.min() >= before.best_version.max()


@pytest.mark.timeout(240)
def test_driver_killed_at_random_moments_and_resumed_loses_and_repeats_nothing(tmp_path):
    """SIGKILL of the driver, 2 or 3 times at random moments, each followed by --resume: no completed row lost,
    none repeated, no training child orphaned. The last kill is a late one: 6 rows in at least, the baseline's 3
    runs among them, every row on disk reported (so out of the journal), a training child in flight."""
    seed = int(os.environ.get("AR_TEST_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    mark = f"toy-{uuid.uuid4().hex}"
    target = toy(tmp_path, mark, 0.3)
    run_dir = tmp_path / "run"
    n = 10
    common = ["--max-experiments", str(n), "--trainers", "2", "--cpus-per-trainer", "1"]
    driver_mark = uuid.uuid4().hex  # carried by each driver and every process of its Ray
    env = {**os.environ, "RAY_ADDRESS": "", "AR_TEST_DRIVER": driver_mark}  # its own embedded Ray
    kills, log, killed = rng.choice([2, 3]), [], []
    print(f"AR_TEST_SEED={seed}: {kills} kills")  # shown on failure; set it to replay the same moments
    for attempt in range(kills + 1):
        where = ["--target", str(target), "--run-dir", str(run_dir)] if attempt == 0 else ["--resume", str(run_dir)]
        earlier = set(ledger_ids(run_dir))
        proc = subprocess.Popen([sys.executable, "-m", "ar_ray.cli.main", "run", *where, *common], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        at, moment, last = None, None, attempt == kills - 1
        try:
            if attempt < kills:
                # the first kill after the 3 baseline rows (see the partial-baseline test), then 1-4 rows later;
                # the last one after 6 rows at least
                at = len(earlier) + (rng.randint(3, 6) if attempt == 0 else rng.randint(1, 4))
                at = max(at, 6) if last else at

                def kill_now():
                    if proc.poll() is not None:
                        return "exited"
                    ids = ledger_ids(run_dir)
                    if len(ids) < at:
                        return None
                    if not last:
                        return "rows"
                    if not set(ids) <= earlier | printed_ids(lines):
                        return None  # a row just written, maybe still in the journal too
                    if first_baselines(ledger.load(run_dir, ["role", "base_version"])) < 3:
                        return None  # a baseline repeat in flight re-runs, rightly: not what this kill checks
                    return "late" if marker_processes(mark) else None

                moment = wait_for(kill_now, 120, f"{at} rows" + (", all reported, a child in flight" if last else ""))
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(30)
            out = "".join(lines)
            print(f"--- attempt {attempt}: kill at {at} rows, rc {proc.returncode}, {len(ledger_ids(run_dir))} rows\n"
                  f"{out[-2500:]}")
        log.append((at, len(ledger_ids(run_dir)), proc.returncode))
        why = f"seed {seed}, kills (rows wanted, rows, rc): {log}"
        if killed:  # this attempt resumed after a kill
            check_the_resume(killed[-1], ledger.load(run_dir))
        if attempt < kills:
            assert proc.returncode == -signal.SIGKILL, why
            killed.append(check_the_kill(run_dir, lines, first=attempt == 0, late=moment == "late"))
            no_orphans(mark, 60)  # the killed driver's training children die with its embedded Ray
            end_the_killed_rays(f"AR_TEST_DRIVER={driver_mark}\0")
        else:
            assert proc.returncode == 0, out
    df = ledger.load(run_dir)
    why = f"seed {seed}, kills (rows wanted, rows, rc): {log}"
    assert all(rc == -signal.SIGKILL for _, _, rc in log[:-1]), why
    assert killed[-1]["late"], why
    assert df.experiment_id.is_unique, why
    assert df.seq.tolist() == list(range(len(df))), why
    assert screens(df) == n, why
    assert first_baselines(df) == 3, why
    assert df[(df.role == "screen") & (df.decision != "skip")].edit_hash.is_unique, why  # no candidate ran twice
    for kill in killed:  # what was in flight at a kill re-ran under its own id, and the journal is empty
        assert kill["in_flight"] <= set(df.experiment_id), why
    assert not list((run_dir / "inflight").glob("e*.json")), why
    no_orphans(mark)
