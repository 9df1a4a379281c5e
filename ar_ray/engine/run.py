"""Start, resume and finish a run: the glue between the CLI, Ray and the driver loop."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
import uuid
from pathlib import Path

import ray

from ar_ray.code import merge
from ar_ray.code.codehash import code_hash
from ar_ray.engine import cluster
from ar_ray.engine.config import RunConfig
from ar_ray.engine.driver import ATTEMPT_COLUMNS, PRIME_ROWS, Counters, Driver, attempt
from ar_ray.engine.journal import Journal
from ar_ray.errors import ConfigError
from ar_ray.ledger import store as ledger_mod
from ar_ray.ledger.store import RUN_FILE, Ledger, read_table
from ar_ray.search.ladder import rung_of
from ar_ray.search.policy import Policy
from ar_ray.target import load_target
from ar_ray.types import Baseline, Proposal


def prepare_run_dir(config: RunConfig) -> tuple[str, dict | None]:
    """Create or reopen the run dir. Returns (run id, previous run.json when resuming)."""
    resumed = check_run_dir(config)
    if resumed is not None:
        return resumed
    run_dir = Path(config.run_dir)
    # a run that failed before its first row left run.json (and maybe an in-flight journal): start afresh
    shutil.rmtree(run_dir / "inflight", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    return run_id, None


def check_run_dir(config: RunConfig) -> tuple[str, dict] | None:
    """What prepare_run_dir refuses (ConfigError), found without writing anything: a --resume of a folder that holds
    no run, a new run in a folder that holds a ledger. Returns (run id, run.json) when resuming."""
    run_dir = Path(config.run_dir)
    meta_path = run_dir / RUN_FILE
    has_ledger = (run_dir / "ledger").is_dir() and any((run_dir / "ledger").glob("part-*.parquet"))
    if config.resume:
        if not meta_path.exists():
            raise ConfigError(f"--resume: {run_dir} holds no run ({RUN_FILE} missing); "
                              "give the run dir of an earlier `ar-ray run`, or leave out --resume to start a new run")
        try:
            meta = json.loads(meta_path.read_text())
            run_id = meta["run_id"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"--resume: {meta_path} is not a run's {RUN_FILE} (not JSON, or no run_id); restore it, "
                              "or start a new run") from None
        if meta.get("kind") == "sweep":
            raise ConfigError(f"{run_dir} is a scaling sweep; continue it with `ar-ray sweep --resume {run_dir}`")
        return run_id, meta
    if has_ledger:
        raise ConfigError(f"{run_dir} already holds a run's ledger; pass --resume to continue it, "
                          "or choose a new --run-dir")
    return None


def _unmade(run_dir: Path):
    """What a new run is about to create, and a function that removes it again when the run has written no ledger
    row: the run dir (and the folders above it it creates), or, in a folder that existed, the entries it adds."""
    run_dir = Path(os.path.abspath(run_dir))
    top = run_dir
    while not top.parent.exists():
        top = top.parent
    before = set(os.listdir(run_dir)) if run_dir.is_dir() else None

    def undo() -> None:
        ledger_dir = run_dir / "ledger"
        if ledger_dir.is_dir() and any(ledger_dir.iterdir()):
            return  # rows (or a part on its way): the run dir is the record of them
        if before is None:
            shutil.rmtree(run_dir, ignore_errors=True)
            for folder in [run_dir, *run_dir.parents][1:len(run_dir.relative_to(top).parts) + 1]:
                try:
                    folder.rmdir()  # only while empty: another run may have made its run dir beside this one
                except OSError:
                    break
            return
        for name in set(os.listdir(run_dir)) - before:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return undo


def execute(config: RunConfig, on_event=None) -> dict:
    """Run (or resume) one research run to its end; returns the summary. A new run that ends in an error before its
    first ledger row leaves nothing behind: no run dir it created, nothing added to a folder that existed."""
    undo = None if config.resume else _unmade(Path(config.run_dir))
    try:
        return _execute(config, on_event)
    except BaseException:
        if undo is not None:
            try:
                undo()
            except OSError:
                pass  # the error that ended the run is what to say
        raise


def restore(driver: Driver, run_dir: str) -> None:
    """Put a fresh driver and its policy back where the ledger says the run was.

    Completed experiments are not re-run; the best, its runs and the noise pool come back; new candidates
    that were in flight are re-queued from the journal. Confirmations that were open (runs in flight or queued)
    go back into the policy with the runs they have, and their missing runs are queued (`restore_open_groups`).
    The proposers remember what was tried (`restore_history`).
    """
    restore_history(driver, run_dir)
    table = read_table(run_dir, ["experiment_id", "decision", "status", "role", "edit_hash", "best_version", "metric",
                                 "files", "cost_usd", "budget_seconds", "knobs", "gpu_model", "gain", "group_mean",
                                 "group_n", "run_seconds", "seed", "curve", "group_id", "parent_id", "base_version",
                                 "proposer", "description", "diff", "lines_added", "lines_removed"])  # only what is used
    if table.num_rows == 0:
        return
    rows = table.to_pylist()
    journal = [e["experiment_id"] for e in Journal(run_dir).entries()]
    ids = [int(x[1:]) for x in [r["experiment_id"] for r in rows] + journal if x[1:].isdigit()]
    driver.next_id = max(ids) + 1 if ids else 0
    driver.seen.update(r["edit_hash"] for r in rows if r["edit_hash"] and r["status"] != "unused")
    ran = [r for r in rows if r["decision"] != "skip"]
    for r in ran:  # the seeds each code has used: a repeat never replays one
        if r["edit_hash"] and r["seed"] is not None:
            driver.seeds[r["edit_hash"]] = max(driver.seeds[r["edit_hash"]], r["seed"] - driver.seed + 1)
    driver.count.ran = sum(r["role"] == "screen" for r in ran)
    driver.count.runs = len(ran)
    driver.count.kept = sum(r["decision"] == "keep" for r in ran)
    driver.count.cost_usd = sum(r["cost_usd"] or 0.0 for r in rows)
    spread: dict[tuple, list[float]] = {}  # (code hash, rung, GPU model) -> metrics, as the live policy keeps them
    rung_gains: dict[int, list[float]] = {}  # what each rung below the top has seen (the promotion rule ranks in it)
    default_budget = driver.budget or driver.target.budget_seconds
    top = len(driver.scales) - 1
    for r in ran:
        rung = rung_of(driver.scales, r["budget_seconds"], dict(r["knobs"] or []), default_budget)
        if r["status"] == "ok" and r["metric"] is not None and r["role"] != "screen":
            spread.setdefault((r["edit_hash"], rung, r["gpu_model"] or ""), []).append(r["metric"])
        if r["status"] == "ok" and (r["role"] == "baseline" or r["decision"] == "keep"):
            driver.timeouts.observe((rung, r["gpu_model"] or ""), r["run_seconds"] or 0.0)
        # a result at a rung: a screen, or a promotion's one run there (a rescreen's second look is not a new one)
        concluded = r["role"] == "screen" or (r["role"] == "promote" and r["group_mean"] is not None
                                              and r["group_n"] == 1)
        if rung < top and concluded and r["gain"] is not None:
            rung_gains.setdefault(rung, []).append(r["gain"])
    versions, best = {}, None
    for r in ran:
        if r["decision"] in ("keep", "baseline") and r["files"]:
            # a version is named as the live driver named it: by the group that made it (a confirmation's
            # deciding row is not the candidate; a ladder's cheap-rung baseline group X-r0 stands for X)
            made_by = re.sub(r"-r\d+$", "", r["group_id"]) if r["group_id"] else r["experiment_id"]
            versions.setdefault(r["best_version"], (dict(r["files"]), made_by))
            if r["decision"] == "keep" or best is None:
                best = r
    if best is None:
        return  # the baseline never finished: it runs again
    files = dict(best["files"])
    code = code_hash(files)
    best_runs: dict[int, list] = {}
    for (h, rung, gpu), metrics in spread.items():
        if h == code:
            best_runs.setdefault(rung, []).extend((m, gpu) for m in metrics)
    best_id = versions[best["best_version"]][1]
    driver.policy.restore(best["best_version"], {v: f for v, (f, _) in versions.items()}, best_id,
                          best_runs, spread, rung_gains)
    cfg = driver.policy.config
    if _one_run(driver.policy) and best["decision"] == "keep":  # greedy or a deterministic target: its one run
        driver.policy.best_runs = {top: [(best["metric"], best["gpu_model"] or "")]}
    elif cfg.fresh_reference and best["decision"] == "keep":
        # as live: the best is measured by its fresh repeats (role baseline), not by the runs that decided its
        # accept (picked for passing); those only stand in at a rung where no fresh repeat has landed yet
        fresh: dict[int, list] = {}
        for r in ran:
            if r["role"] == "baseline" and r["edit_hash"] == code and r["status"] == "ok" and r["metric"] is not None:
                rung = rung_of(driver.scales, r["budget_seconds"], dict(r["knobs"] or []), default_budget)
                fresh.setdefault(rung, []).append((r["metric"], r["gpu_model"] or ""))
        driver.policy.previous_runs.update({rung: runs for rung, runs in best_runs.items() if rung not in fresh})
        driver.policy.best_runs = fresh
    driver.versions.update({v: e for v, (_, e) in versions.items()})
    # the target as shipped has no experiment behind it (a live driver's version 0 names none; the prompt says so)
    driver.best = Baseline(best["best_version"], files, best_id if best["best_version"] else None, driver.policy.best_mean)
    for r in ran:  # the best's curves: what --prune compares new candidates with
        if r["status"] == "ok" and r["edit_hash"] == code and r["curve"]:
            rung = rung_of(driver.scales, r["budget_seconds"], dict(r["knobs"] or []), default_budget)
            driver.references.observe(best["best_version"], (rung, r["gpu_model"] or ""),
                                      tuple((c["progress"], c["loss"]) for c in r["curve"]))
    driver.followups.extend(driver._job(spec) for spec in driver.policy.missing_repeats())
    restore_open_groups(driver, ran, versions)
    requeue_unused(driver, rows)


def restore_history(driver: Driver, run_dir: str) -> int:
    """The run's earlier attempts back in the driver's history (its last HISTORY) and in every proposer's memory
    (its newest PRIME_ROWS rows, oldest first), so the first prompt after a resume shows what was tried. Proposals
    the stop left unused are no attempts: they are queued again (`requeue_unused`). Only the columns an Attempt is
    made of are read; the rows before the newest PRIME_ROWS are never turned into Python objects."""
    rows = read_table(run_dir, columns=list(ATTEMPT_COLUMNS), last=PRIME_ROWS).to_pylist()  # only the parts holding them
    attempts = [attempt(r) for r in rows if r["status"] != "unused"]
    driver.remember(attempts)
    return len(attempts)


CONCLUDED = ("keep", "reject", "conflict", "discard")  # a confirmation group's last word


def _one_run(policy: Policy) -> bool:
    """One run judges a candidate (greedy, or a target that ignores its seed): no confirmation, no fresh repeats."""
    return policy.config.acceptance == "greedy" or getattr(policy, "deterministic", False)


def restore_open_groups(driver: Driver, ran: list[dict], versions: dict[int, tuple[dict, str]]) -> None:
    """Confirmation groups still open when the run stopped (their runs running or queued) go back into the policy
    with the runs they have, and their missing runs are queued: no screened candidate is left undecided.

    A group is the rows of one group_id (role screen, confirm, rebase, promote; a combination of near-misses is
    named "e00012+e00040"); it is open while none of its follow-up rows concluded it. Its current phase starts at
    its last row with decision `screened` (the screen: confirm the candidate; or a stale winner: confirm its
    rebase, whose merge is redone from the stored files), or at its first row for a combination. The runs asked
    for in that phase are its first batch, plus each batch a close call added (a `confirming` row with a group
    mean); the runs landed in it are its rows after the start."""
    cfg = driver.policy.config
    n = 1 if _one_run(driver.policy) else max(1, cfg.confirm_runs)
    groups: dict[str, list[dict]] = {}
    for r in ran:
        if r["group_id"] and r["role"] in ("screen", "confirm", "rebase", "promote"):
            groups.setdefault(r["group_id"], []).append(r)
    for gid, rs in groups.items():
        if any(r["role"] != "screen" and r["decision"] in CONCLUDED for r in rs):
            continue
        starts = [i for i, r in enumerate(rs) if r["decision"] == "screened"]
        first = rs[0]
        insane = cfg.sanity_gain is not None and first["gain"] is not None and first["gain"] > cfg.sanity_gain
        confirmed = first["role"] == "screen" and first["base_version"] == first["best_version"]
        # the cap a close call may grow to was set when the candidate was first confirmed (a rebase keeps it)
        cap = max(cfg.max_confirm_runs, n * (2 if insane else 1)) * (2 if insane else 1) if confirmed else 0
        note = ""
        if starts:
            start, phase = rs[starts[-1]], rs[starts[-1] + 1:]
            if not start["files"]:
                continue  # a ledger written before screened rows carried their files: nothing to re-run
            rebases = len(starts) - (1 if confirmed else 0)
            if start is first and confirmed:
                role, files, base, parent = "confirm", dict(start["files"]), start["base_version"], start["parent_id"]
                asked = n * (2 if insane else 1)
            else:  # the winner was re-applied onto the best of that moment; the merge is deterministic
                old, onto = versions.get(start["base_version"]), versions.get(start["best_version"])
                if old is None or onto is None:
                    continue
                files, conflicts = merge.rebase(old[0], dict(start["files"]), onto[0])
                if conflicts:
                    continue
                role, base, parent, asked = "rebase", start["best_version"], onto[1], n
        elif "+" in gid and any(r["files"] for r in rs):  # near-misses combined, tested on the best of then
            phase, rebases, role, asked = rs, 0, "confirm", n
            files = dict(next(r["files"] for r in rs if r["files"]))
            base, parent = first["base_version"], first["parent_id"]
            note = f"near-misses {', '.join(gid.split('+'))} combined"
        else:
            continue
        limit = cap or max(cfg.max_confirm_runs, cfg.confirm_runs)
        for r in phase:  # a close call asked for more runs (sequential confirmation)
            if r["decision"] == "confirming" and r["group_mean"] is not None and r["group_n"] is not None:
                asked = r["group_n"] + min(n, limit - r["group_n"])
        missing = asked - len(phase)
        if missing <= 0:
            continue
        runs = [(r["metric"] if r["status"] == "ok" and r["metric"] is not None and math.isfinite(r["metric"])
                 else None, r["gpu_model"] or "") for r in phase]
        specs = driver.policy.restore_group(gid, files, base, parent, role, runs, missing, cap=cap, rebases=rebases,
                                            note=note)
        source = Proposal(proposer="policy", base_version=base, description=first["description"] or "", files=files)
        driver.followups.extend(driver._job(spec, source=source) for spec in specs)


def requeue_unused(driver: Driver, rows: list[dict]) -> None:
    """Proposals paid for but never run (status unused) go back in the queue, as they were when the run stopped
    (one made from an older best is judged as any stale proposal is): nothing is asked for twice."""
    if driver.max_experiments is not None and driver.count.ran >= driver.max_experiments:
        return
    for r in rows:  # (`seen` holds every code tried, and each one queued here)
        if r["status"] == "unused" and r["files"] and r["edit_hash"] not in driver.seen:
            driver.queue.append(Proposal(proposer=r["proposer"], base_version=r["base_version"],
                                         description=r["description"] or "", files=dict(r["files"]),
                                         diff=r["diff"] or "", edit_hash=r["edit_hash"],
                                         lines_added=r["lines_added"] or 0, lines_removed=r["lines_removed"] or 0))
            driver.seen.add(r["edit_hash"])


def _execute(config: RunConfig, on_event=None) -> dict:
    config.check()
    target = load_target(config.target, **config.target_overrides)
    if config.prune and not target.progress_pattern:
        raise ConfigError(f"--prune reads each run's training curve from its log, and target {target.name!r} declares no "
                          "progress_pattern; add one to its ar-ray.toml (a regex with groups loss and progress or percent, "
                          "e.g. progress_pattern = 'loss (?P<loss>\\S+) .* (?P<percent>[\\d.]+)% done'), or leave out --prune")
    run_id, previous = prepare_run_dir(config)
    run_dir = Path(config.run_dir).resolve()
    if previous is None:
        (run_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "created_at": time.time(),
                                                    "target": str(target.root), "metric": target.metric,
                                                    "direction": target.direction,
                                                    "budget_tokens": target.budget_tokens,
                                                    "config": json.loads(config.to_json())}, indent=2))
    ledger = Ledger(run_dir, background=True)  # merges never stall the loop
    alerts = _alerts(config)
    if alerts is not None:
        on_event = _both(alerts, on_event)  # alerts first: the final status shows what the last message did
    trackers = _trackers(config, run_dir, run_id, target.metric, on_event)  # a resume: they catch up at once
    if trackers is not None:
        on_event = _both(trackers, on_event)  # a queue put per row: a tracker never holds up the loop
    started = cluster.connect(config.address)
    trainers, proposers = [], []
    try:
        nodes = cluster.cluster_resources()
        p = cluster.plan(config, nodes)
        meter = config.spend_meter(p.gpus, p.cpus, target.direction)
        meter.default_model = _node_gpu_model(nodes, p.gpus)  # prices runs in flight before a trainer reports its own
        if on_event:
            on_event("note", None, {"text": spend_estimate(config, target, p, meter)})
        work_root = str(run_dir / "experiments")
        os.makedirs(work_root, exist_ok=True)
        trainers = cluster.start_trainers(p, target, work_root, run_id, config.keep_files, config.box())
        proposers = cluster.start_proposers(config, target, run_id, gpus=p.gpus > 0,  # a resume: new proposer seeds
                                            resumed_rows=read_table(str(run_dir), ["seq"]).num_rows if previous else 0)
        cluster.wait_started(trainers, proposers, p=p)  # placed and constructed, or a StartupError naming who is not
        confinement = check_sandbox(trainers, on_event)
        driver = Driver(target, ledger, run_id, trainers, proposers, Policy(config.policy(), target.direction),
                        queue_depth=config.queue_depth or (p.trainers + config.proposers),
                        max_experiments=config.max_experiments, time_limit=config.time_limit, seed=config.seed,
                        budget_seconds=config.budget_seconds, max_skipped_in_a_row=config.max_skipped_in_a_row, max_cost=config.max_cost,
                        scales=config.scales(), prune=config.prune_rule(), on_event=on_event,
                        proposer_kind=config.proposer, meter=meter)
        driver.alerts = alerts
        if previous:
            restore(driver, str(run_dir))
            driver.requeue_journal()
            driver.resumed = True
            meter.restore(read_table(str(run_dir), columns=list(RESTORED_SPEND)).to_pylist())
        state, why = "aborted", None
        try:
            interrupted = _run_until_done(driver, trainers)
            state = "interrupted" if interrupted else "finished"
        except BaseException as e:
            why = str(e).strip().splitlines()[0][:500] if str(e).strip() else type(e).__name__
            raise
        finally:
            driver.on_event("finished", driver, {"state": state, "why": why or driver.why_stopped()})
        out = {**summary(driver.count, driver, interrupted), "sandbox": confinement}
        ledger.wait(timeout=120)  # let the last merges land (a crash here loses nothing either)
        if trackers is not None:  # a bounded time to catch up; what is left is said (`ar-ray export` finishes it)
            out["trackers"] = trackers.close(config.track_flush)
        if config.ladder:
            out["transfer"] = write_transfer(run_dir)
        return out
    finally:
        if alerts is not None:
            alerts.close()  # (said at "finished"; here when the run failed before its driver existed)
        stop_trainers(trainers)  # an abort leaves runs in flight: let each reaper end its tree and clean up
        for a in trainers + proposers:
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()
        if trackers is not None:
            trackers.close(config.track_flush)  # (closed above, unless the run failed)


RESTORED_SPEND = ("gpu_cost_usd", "gpu_model", "started_at", "ended_at", "run_seconds", "decision", "best_version",
                  "best_metric")


def _alerts(config: RunConfig):
    """The --notify webhooks' event handler (ar_ray/lab/notify.py), or None without --notify."""
    if not config.notify:
        return None
    from ar_ray.lab.notify import Alerts, Notifier
    return Alerts(Notifier(config.notify_urls(), interval=config.notify_interval),
                  failure_streak=config.notify_failures)


def _both(first, second):
    def on_event(kind, driver, row):
        first(kind, driver, row)
        if second:
            second(kind, driver, row)
    return on_event


def spend_estimate(config: RunConfig, target, p, meter) -> str:
    """The start message: what an hour of the trainers costs, and when the budget is reached."""
    from ar_ray.lab.spend import estimate
    seconds = None if target.budget_tokens else (config.budget_seconds or target.budget_for(int(p.gpus > 0)))
    return estimate(meter.prices, meter.budget, p.trainers, p.gpus, p.cpus, meter.default_model, seconds)


def _node_gpu_model(nodes: list[dict], gpus: float) -> str | None:
    """The GPU model Ray names for the cluster's GPU nodes (the first that names one); "cpu" without GPUs."""
    from ar_ray.lab.spend import accelerator_type
    if not gpus:
        return "cpu"
    return next((m for n in nodes if float(n.get("GPU", 0) or 0) > 0 and (m := accelerator_type(n))), None)


def _trackers(config: RunConfig, run_dir: Path, run_id: str, metric: str, on_event):
    """The --track trackers (ar_ray/lab/track.py), fed the driver's rows; None without --track."""
    specs = config.trackers()
    if not specs:
        return None
    from ar_ray.lab.track import Follower
    say = (lambda text: on_event("note", None, {"text": text})) if on_event else None
    return Follower(run_dir, specs, run_id, metric, say=say).start()


def stop_trainers(trainers: list) -> None:
    """Each trainer kills its child's whole tree (a trainer already gone took its children with it: the reaper
    dies with its parent)."""
    try:
        ray.get([t.stop.remote() for t in trainers], timeout=30)
    except (ray.exceptions.RayError, TimeoutError):
        pass


TRANSFER_FILE = "transfer.json"


def write_transfer(run_dir: Path) -> dict | None:
    """The ladder's transfer report (ar_ray.search.ranks), saved beside the ledger; None until 2 candidates were promoted."""
    from ar_ray.search.ranks import transfer_from_ledger
    t = transfer_from_ledger(ledger_mod.load(run_dir))
    if t is None:
        return None
    report = {**t.to_dict(), "text": t.describe()}
    (run_dir / TRANSFER_FILE).write_text(json.dumps(report, indent=2))
    return report


def check_sandbox(trainers: list, on_event=None) -> list[str]:
    """Ask every trainer how it confines candidates on its node; say it once per distinct answer.
    `--sandbox bwrap` on a node that cannot do it stops the run before anything is spent."""
    answers = ray.get([t.sandbox_note.remote() for t in trainers])
    problems = sorted({a["problem"] for a in answers if a["problem"]})
    if problems:
        raise ConfigError(problems[0])
    notes = sorted({a["note"] for a in answers})
    if on_event:
        for note in notes:
            on_event("note", None, {"text": note})
    return sorted({a["mode"] for a in answers})


def _run_until_done(driver: Driver, trainers: list) -> bool:
    """Drive the loop; Ctrl-C or SIGTERM stops it cleanly: children killed, ledger consistent."""
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        driver.run()
        return False
    except KeyboardInterrupt:
        driver.stop()
        stop_trainers(trainers)
        try:
            driver.record_unused()
        except KeyboardInterrupt:  # pressed again: what is appended stays; only the console misses some rows
            pass
        return True
    finally:
        signal.signal(signal.SIGTERM, previous)


def summary(count: Counters, driver: Driver, interrupted: bool) -> dict:
    elapsed = time.time() - driver.started_at
    return {
        "run_id": driver.run_id, "interrupted": interrupted, "elapsed_seconds": elapsed,
        "experiments": count.ran, "kept": count.kept, "failed": count.failed, "pruned": count.pruned, "skipped": count.skipped,
        "infra": count.infra, "by_status": dict(count.by_status), "cost_usd": count.cost_usd,
        "cost_per_kept": count.cost_usd / count.kept if count.kept else None,
        **({} if driver.meter is None else driver.meter.figures(count.cost_usd, count.kept, driver.best.metric)),
        "stopped_because": driver.why_stopped(),
        "alerts": driver.alerts.state() if driver.alerts is not None else None,
        "best_metric": driver.best.metric, "best_experiment": driver.best.experiment_id or driver.versions.get(driver.best.version),  # v0: e00000
        "best_version": driver.best.version, "metric": driver.target.metric,
        "in_flight_at_stop": len(driver.running),
    }
