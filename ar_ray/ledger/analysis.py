"""Questions asked of a ledger, as pandas: what improved when, who proposed what, where runs ran.

Every helper takes the DataFrame of `ar_ray.ledger.store.load(run_dir)` (one row per attempt, in seq order):

    from ar_ray.ledger.store import load
    from ar_ray.ledger import analysis as A
    df = load("runs/x")
    A.frontier(df)          # the accepted improvements on the way to the best, with their metric and gain
    A.running_best(df)      # the best metric after each row, over time (a step function)
    A.proposer_stats(df)    # attempts, acceptance rate, failure rate, cost per kept improvement, per proposer
    A.model_stats(df)       # the same per LLM model (a `model` column when the ledger has one, else proposer kind)
    A.gpu_stats(df)         # runs, mean run seconds, metric spread and run-to-run noise per GPU model
    A.throughput(df, "1h")  # experiments, runs, kept, failures and cost per hour, resampled

How rows relate. A proposal that ran is a `screen` row. In confirm mode a winner is re-run (`confirm`, or
`rebase` rows when the best moved meanwhile) and the row that concludes the group says `keep`; all of them
carry the screening row's id in `group_id`, and the accepted change is known by that id: later proposals
name it in `parent_id`. `proposer` and `description` of follow-up runs are the policy's ("confirm of e00007:
..."); the helpers credit a keep to the proposer and description of its screening row. In greedy mode the
screening row is itself the keep row.

The same questions without pandas (one line each):

    polars:  pl.read_parquet("runs/x/ledger/*.parquet").filter(pl.col("role") == "screen")
                 .group_by("proposer").agg(pl.len().alias("ran"), (pl.col("status") != "ok").mean().alias("failure_rate"))
    polars:  pl.read_parquet("runs/x/ledger/*.parquet").filter(pl.col("decision") == "keep")
                 .select("ended_at", "group_id", "best_metric", "gain")          # the frontier
    duckdb:  duckdb.sql("select proposer, count(*) attempts, avg((status <> 'ok')::int) not_ok, coalesce(sum(cost_usd), 0) cost "
                        "from 'runs/x/ledger/*.parquet' where role = 'screen' or decision = 'skip' group by all")
    duckdb:  duckdb.sql("select time_bucket(interval 1 hour, ended_at) as hour_start, count(*) runs "
                        "from 'runs/x/ledger/*.parquet' where ended_at is not null group by all order by 1")
    duckdb:  duckdb.sql("select gpu_model, count(*) runs, avg(run_seconds), stddev(metric) "
                        "from 'runs/x/ledger/*.parquet' where status = 'ok' group by all")
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ar_ray.ledger.store import RUN_FILE

SKIPPED = "skip"


# ---------------------------------------------------------------------------
# the run and its rows
# ---------------------------------------------------------------------------


def run_info(run_dir: str | os.PathLike, df: pd.DataFrame | None = None) -> dict:
    """run.json of a run dir (run_id, target, metric, direction), with defaults when it is missing."""
    path = Path(run_dir) / RUN_FILE
    info = {}
    if path.exists():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
    if not info.get("run_id") and df is not None and len(df):
        info["run_id"] = str(df["run_id"].iloc[0])
    info.setdefault("run_id", None)
    info.setdefault("target", None)
    info["metric"] = info.get("metric") or "metric"
    info["direction"] = info.get("direction") if info.get("direction") in ("min", "max") else "min"
    return info


def sweep_note(run_dir: str | os.PathLike) -> str | None:
    """What to do instead, when `run_dir` is a scaling sweep rather than a research run."""
    if run_info(run_dir).get("kind") != "sweep":
        return None
    return (f"{run_dir} is a scaling sweep, not a research run: `ar-ray sweep --analyze {run_dir}` shows its fits "
            f"and verdicts, `ar-ray ledger {run_dir}` its runs, `ar-ray report {run_dir}` its report")


def _sign(direction: str) -> float:
    return 1.0 if direction == "min" else -1.0


def when(df: pd.DataFrame) -> pd.Series:
    """When each row happened: the end of its run, or the proposal's time for rows that never ran."""
    return df["ended_at"].fillna(df["started_at"]).fillna(df["proposed_at"])


def ran(df: pd.DataFrame) -> pd.Series:
    """Rows that ran on a trainer (not skipped proposals)."""
    return df["decision"] != SKIPPED


def attempts(df: pd.DataFrame) -> pd.Series:
    """Rows that are proposals: screened runs and proposals that never ran (not the policy's follow-up runs)."""
    return (df["role"] == "screen") | (df["decision"] == SKIPPED)


def group_of(df: pd.DataFrame) -> pd.Series:
    """The candidate each row belongs to: `group_id`, or the row's own id."""
    return df["group_id"].fillna(df["experiment_id"])


def _rows(df: pd.DataFrame, mask, cols: list[str]) -> pd.DataFrame:
    """Some columns of some rows. Selecting columns first matters: the ledger's long strings (diff, files)
    are Arrow-backed, and a boolean take over every column copies them all."""
    return df[cols][mask]


def origin(df: pd.DataFrame, mask=None) -> pd.DataFrame:
    """Per row (of `mask`, default all), the proposer and description of the proposal behind it: its
    group's screening row."""
    sub = df[["group_id", "experiment_id", "proposer", "description"]] if mask is None else \
        _rows(df, mask, ["group_id", "experiment_id", "proposer", "description"])
    gid = sub["group_id"].fillna(sub["experiment_id"])
    wanted = (df["role"] == "screen") & df["experiment_id"].isin(gid.unique())
    screens = _rows(df, wanted, ["experiment_id", "proposer", "description"]).drop_duplicates("experiment_id")
    screens = screens.set_index("experiment_id")
    # (astype(object) after map too: with no screening row at all, map gives float NaNs, which fillna with text warns about)
    proposer = gid.map(screens["proposer"].astype(object)).astype(object).fillna(sub["proposer"].astype(object))
    description = gid.map(screens["description"].astype(object)).astype(object).fillna(sub["description"].astype(object))
    return pd.DataFrame({"group": gid, "proposer": proposer, "description": description}, index=sub.index)


def model_key(df: pd.DataFrame) -> pd.Series:
    """The LLM model behind each row: a `model` column if the ledger has one, else the proposer's kind
    (its name without the actor index: "llm-3" -> "llm")."""
    if "model" in df.columns:
        return df["model"].astype(object).fillna(df["proposer"].astype(object))
    names = df["proposer"].astype("category")
    kinds = {c: re.sub(r"-\d+$", "", str(c)) for c in names.cat.categories}
    return names.map(kinds).astype(object)


# ---------------------------------------------------------------------------
# improvements
# ---------------------------------------------------------------------------


def running_best(df: pd.DataFrame) -> pd.Series:
    """The best metric after each row, indexed by time: the policy's estimate (`best_metric`), so in confirm
    mode it moves with accepted means and with repeats of the best, not with lucky single runs."""
    s = pd.Series(df["best_metric"].to_numpy(), index=when(df), name="best_metric")
    s = s[s.index.notna()].sort_index()
    return s.ffill().dropna()


def lineage(df: pd.DataFrame, direction: str = "min") -> pd.DataFrame:
    """Every accepted version: the unmodified target (version 0) and each kept change, in order.

    Columns: node (the id later rows name as parent_id), parent, experiment_id (the row that decided it),
    version, time, metric (the best metric while it was the best, as last recorded: `best_metric`), parent_metric, improvement
    (positive = better), proposer, description, files, on_best_path (part of the current best's history;
    False for a version a greedy stale accept left behind), ran_as (for a change re-applied onto a newer best, a
    rebase: the first run of the merged code that was kept, whose metric is the version's, not the candidate's own
    run on the older best; else None)."""
    cols = ["node", "parent", "experiment_id", "version", "time", "metric", "parent_metric", "improvement",
            "proposer", "description", "files", "on_best_path", "ran_as"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    t = when(df)
    parts = []
    alias: dict = {}  # ids a later row may name as parent_id -> the node they stand for
    base = _rows(df, (df["role"] == "baseline") & df["parent_id"].isna(), ["group_id", "experiment_id", "metric", "files"])
    if len(base):
        root, first, top = _root_of(base)
        settled = df["best_metric"].dropna()  # the policy's best: at the top rung of a ladder
        metric = settled.iloc[0] if len(settled) else top["metric"].iloc[0] if len(top) else math.nan
        parts.append(pd.DataFrame([{
            "node": root, "parent": None, "experiment_id": root, "version": 0, "time": t.loc[first.name],
            "metric": metric, "proposer": "baseline",
            "description": "the target as shipped", "files": first["files"] if isinstance(first["files"], dict) else None,
            "ran_as": None}]))
        # every run of the unmodified target stands for version 0: a ladder's lower-rung groups (X-r0, ...), and
        # whichever of its runs a resumed driver took as version 0's id
        alias.update(dict.fromkeys([*base["experiment_id"].astype(object), *base["group_id"].dropna().astype(object)], root))
    keep = df["decision"] == "keep"
    keeps = _rows(df, keep, ["parent_id", "experiment_id", "best_version", "best_metric", "metric", "files"])
    if len(keeps):
        org = origin(df, keep)
        # a resumed driver names a kept version by the row that kept it, which in confirm mode is not the group
        alias.update(zip(keeps["experiment_id"].astype(object), org["group"].astype(object)))
        alias.update(zip(org["group"].astype(object), org["group"].astype(object)))
        parts.append(pd.DataFrame({
            "node": org["group"], "parent": keeps["parent_id"], "experiment_id": keeps["experiment_id"],
            "version": keeps["best_version"], "time": t.loc[keeps.index],
            "metric": keeps["best_metric"].fillna(keeps["metric"]), "proposer": org["proposer"],
            "description": org["description"], "ran_as": _ran_as(df, keep),
            "files": keeps["files"].map(lambda f: f if isinstance(f, dict) else None)}))
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    out["version"] = out["version"].astype("Int64")
    # one best metric everywhere: a version's is the policy's as last recorded while it was the best (the mean of
    # the runs it uses as the reference: its fresh repeats once they landed), what status and summary say too
    settled = df.dropna(subset=["best_metric", "best_version"])
    settled = settled.sort_values("seq") if "seq" in settled else settled
    latest = settled.groupby(settled["best_version"].astype(int))["best_metric"].last()
    out["metric"] = out["version"].map(lambda v: latest.get(int(v)) if pd.notna(v) else None) \
        .astype(float).fillna(out["metric"].astype(float))
    out["parent"] = pd.Series([alias.get(p, p) if isinstance(p, str) else None for p in out["parent"]],
                              index=out.index, dtype=object)
    out["ran_as"] = pd.Series([r if isinstance(r, str) else None for r in out["ran_as"]], index=out.index, dtype=object)
    metric_of = dict(zip(out["node"], out["metric"]))
    out["parent_metric"] = out["parent"].map(metric_of)
    out["improvement"] = _sign(direction) * (out["parent_metric"] - out["metric"])
    parent_of = dict(zip(out["node"], out["parent"]))
    on_path, node = set(), out["node"].iloc[-1] if len(out) else None
    while node is not None and node not in on_path:
        on_path.add(node)
        node = parent_of.get(node)
        node = node if isinstance(node, str) else None
    out["on_best_path"] = out["node"].isin(on_path)
    return out[cols]


def node_label(node, ran_as) -> str:
    """A lineage node as `ar-ray best` and the report name it: `e00003`, or `e00003 (rebased as e00005)` when its
    metric is the merged code's (e00005 and the runs after it), not e00003's own run on an older best."""
    return f"{node} (rebased as {ran_as})" if isinstance(ran_as, str) else str(node)


def _ran_as(df: pd.DataFrame, keep) -> list:
    """Per kept row (of the mask `keep`): when it is a rebase run (the change re-applied onto a newer best), the id
    of its group's first rebase run of the code it kept: the version's metric is that merged code's, measured from
    that run on. None for a change that was not rebased."""
    key = [c for c in ("group_id", "edit_hash") if c in df.columns]
    if "role" not in df.columns or "group_id" not in key:
        return [None] * int(keep.sum())
    first: dict = {}
    rebased = _rows(df, df["role"] == "rebase", key + ["experiment_id"])
    for k, e in zip(rebased[key].astype(object).itertuples(index=False), rebased["experiment_id"]):
        first.setdefault(tuple(k), e)
    kept = _rows(df, keep, key + ["role"])
    return [first.get(tuple(k)) if role == "rebase" else None
            for role, k in zip(kept["role"], kept[key].astype(object).itertuples(index=False))]


_RUNG_SUFFIX = re.compile(r"-r\d+$")  # a ladder's lower-rung baseline groups: X-r0, X-r1, ... (ar_ray.search.policy.start)


def _root_of(base: pd.DataFrame) -> tuple[str, pd.Series, pd.DataFrame]:
    """(version 0's node id, the row that stands for it, the runs of its top-rung group) from the runs of the
    unmodified target. With a promotion ladder the top rung's group is named by its first run (group_id ==
    experiment_id) and the lower rungs' groups X-r0, X-r1, ...; proposals name X as their parent. The cheap
    rungs finish first, so the first row is no guide: X is the top group, or a lower group's name without -rN
    while no top-rung run has landed yet."""
    gid = base["group_id"].astype(object).where(base["group_id"].notna(), base["experiment_id"].astype(object))
    named = base[gid == base["experiment_id"].astype(object)]
    root = str(gid[named.index[0]]) if len(named) else _RUNG_SUFFIX.sub("", str(gid.iloc[0]))
    top = base[gid == root]
    return root, (top.iloc[0] if len(top) else base.iloc[0]), top


def _root_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """The runs of the unmodified target (version 0): baseline rows with no parent."""
    return _rows(df, (df["role"] == "baseline") & df["parent_id"].isna(), ["experiment_id", "status", "metric"])


def has_baseline(df: pd.DataFrame) -> bool:
    """Whether some run of the unmodified target finished with status ok (and a metric): the run has a best."""
    if df.empty:
        return False
    base = _root_baselines(df)
    return bool(((base["status"] == "ok") & base["metric"].notna()).any())


def baseline_problem(df: pd.DataFrame, run_dir: str | os.PathLike) -> str | None:
    """Why the run has no best yet (no finished run of the unmodified target), or None when it has one."""
    if has_baseline(df):
        return None
    ended = _root_baselines(df) if not df.empty else pd.DataFrame(columns=["experiment_id", "status"])
    ended = ended[ended["status"].notna()]
    if ended.empty:
        return (f"{run_dir} has no finished baseline yet: the unmodified target has not finished a run "
                f"(see `ar-ray status {run_dir}`)")
    how = ", ".join(f"{e}: {s}" for e, s in zip(ended["experiment_id"].head(3), ended["status"].astype(str).head(3)))
    how += ", ..." if len(ended) > 3 else ""
    return (f"{run_dir} has no finished baseline yet: no run of the unmodified target succeeded ({how}; "
            f"see `ar-ray ledger {run_dir}`)")


def best_path(df: pd.DataFrame, direction: str = "min") -> pd.DataFrame:
    """The current best's history: the unmodified target, then each kept change it is built on, oldest first.

    Empty while no run of the unmodified target has succeeded (`baseline_problem` says why): a failed
    baseline is no best."""
    lin = lineage(df, direction)
    if not has_baseline(df):
        return lin.iloc[:0].reset_index(drop=True)
    return lin[lin["on_best_path"]].reset_index(drop=True)


def best_files(df: pd.DataFrame) -> dict[str, str] | None:
    """The editable files of the current best (the newest kept change, else the unmodified target); None while no
    run of the unmodified target has succeeded."""
    lin = lineage(df)
    return lin["files"].iloc[-1] if len(lin) and has_baseline(df) else None


def frontier(df: pd.DataFrame, direction: str = "min") -> pd.DataFrame:
    """The kept-improvement frontier: the versions on the best's path with when they landed, their accepted
    metric and the gain over the version before (the running best's steps are `running_best`)."""
    return best_path(df, direction).drop(columns=["files", "on_best_path"])


# ---------------------------------------------------------------------------
# who proposed what, where it ran, how fast
# ---------------------------------------------------------------------------


def _proposal_stats(df: pd.DataFrame, key: pd.Series, name: str) -> pd.DataFrame:
    cols = ["attempts", "ran", "skipped", "failed", "kept", "acceptance_rate", "failure_rate", "skip_rate",
            "cost_usd", "cost_per_kept", "prompt_tokens", "completion_tokens", "mean_proposer_seconds"]
    a = attempts(df)
    if not a.any():
        return pd.DataFrame(columns=cols).rename_axis(name)
    sub = pd.DataFrame({
        name: key[a].astype(object).fillna("?"),
        "ran": (df.loc[a, "role"] == "screen"),
        "skipped": df.loc[a, "decision"] == SKIPPED,
        "failed": (df.loc[a, "role"] == "screen") & (df.loc[a, "status"] != "ok"),
        "cost_usd": df.loc[a, "cost_usd"].fillna(0.0),
        "prompt_tokens": df.loc[a, "prompt_tokens"].fillna(0),
        "completion_tokens": df.loc[a, "completion_tokens"].fillna(0),
        "proposer_seconds": df.loc[a, "proposer_seconds"],
    })
    g = sub.groupby(name, sort=True)
    out = pd.DataFrame({"attempts": g.size(), "ran": g["ran"].sum(), "skipped": g["skipped"].sum(),
                        "failed": g["failed"].sum(), "cost_usd": g["cost_usd"].sum(),
                        "prompt_tokens": g["prompt_tokens"].sum().astype("int64"),
                        "completion_tokens": g["completion_tokens"].sum().astype("int64"),
                        "mean_proposer_seconds": g["proposer_seconds"].mean()})
    keeps = df["decision"] == "keep"
    # a keep is credited to the key of its screening row
    screen_key = pd.Series(key[df["role"] == "screen"].to_numpy(), index=df.loc[df["role"] == "screen", "experiment_id"])
    screen_key = screen_key[~screen_key.index.duplicated()]
    kept_keys = group_of(df)[keeps].map(screen_key).fillna(key[keeps].astype(object))
    out["kept"] = kept_keys.value_counts().reindex(out.index, fill_value=0).astype("int64")
    out["acceptance_rate"] = out["kept"] / out["attempts"]
    out["failure_rate"] = out["failed"] / out["ran"].where(out["ran"] > 0)
    out["skip_rate"] = out["skipped"] / out["attempts"]
    out["cost_per_kept"] = out["cost_usd"] / out["kept"].where(out["kept"] > 0)
    for c in ("ran", "skipped", "failed"):
        out[c] = out[c].astype("int64")
    return out[cols]


def proposer_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per proposer: attempts (proposals), ran, skipped (never ran: invalid edit, duplicate, ...), failed
    (ran, status not ok), kept (accepted changes it proposed), acceptance_rate = kept / attempts,
    failure_rate = failed / ran, cost_usd, cost_per_kept (NaN when nothing was kept), tokens."""
    return _proposal_stats(df, df["proposer"].astype(object), "proposer")


def model_stats(df: pd.DataFrame) -> pd.DataFrame:
    """`proposer_stats` per model (see `model_key`)."""
    return _proposal_stats(df, model_key(df), "model")


def gpu_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per GPU model (`cpu` where none): runs, failure_rate, mean/median run seconds, the spread of the
    metric over its ok runs (std, min, max) and its run-to-run noise: the pooled standard deviation over
    repeated runs of identical code (NaN without repeats)."""
    cols = ["runs", "failure_rate", "mean_run_seconds", "median_run_seconds", "metric_mean", "metric_std",
            "metric_min", "metric_max", "noise", "noise_dof"]
    r = _rows(df, ran(df), ["gpu_model", "status", "run_seconds", "metric", "edit_hash", "experiment_id"])
    if r.empty:
        return pd.DataFrame(columns=cols).rename_axis("gpu_model")
    gpu = r["gpu_model"].astype(object).fillna("cpu").replace("", "cpu")
    ok = r["status"] == "ok"
    frame = pd.DataFrame({"gpu_model": gpu, "ok": ok, "run_seconds": r["run_seconds"],
                          "metric": r["metric"].where(ok), "code": r["edit_hash"].fillna(r["experiment_id"])})
    g = frame.groupby("gpu_model", sort=True)
    out = pd.DataFrame({"runs": g.size(), "failure_rate": 1.0 - g["ok"].mean(),
                        "mean_run_seconds": g["run_seconds"].mean(), "median_run_seconds": g["run_seconds"].median(),
                        "metric_mean": g["metric"].mean(), "metric_std": g["metric"].std(),
                        "metric_min": g["metric"].min(), "metric_max": g["metric"].max()})
    m = frame.dropna(subset=["metric"])
    rep = m.groupby(["gpu_model", "code"])["metric"].agg(["var", "count"])
    rep = rep[rep["count"] > 1]
    rep["ss"] = rep["var"] * (rep["count"] - 1)
    rep["dof"] = rep["count"] - 1
    pooled = rep.groupby(level=0)[["ss", "dof"]].sum()
    out["noise"] = np.sqrt(pooled["ss"] / pooled["dof"]).reindex(out.index)
    out["noise_dof"] = pooled["dof"].reindex(out.index).fillna(0).astype("int64")
    return out[cols]


def throughput(df: pd.DataFrame, freq: str = "1h") -> pd.DataFrame:
    """Per time bucket (by when a run ended): experiments (screened proposals), runs (all trainer runs),
    kept, failed, cost_usd, and experiments_per_hour / runs_per_hour (bucket count scaled to an hour)."""
    cols = ["experiments", "runs", "kept", "failed", "cost_usd", "experiments_per_hour", "runs_per_hour"]
    t = when(df)
    frame = pd.DataFrame({"experiments": (df["role"] == "screen").astype("int64"),
                          "runs": ran(df).astype("int64"),
                          "kept": (df["decision"] == "keep").astype("int64"),
                          "failed": (ran(df) & (df["status"] != "ok")).astype("int64"),
                          "cost_usd": df["cost_usd"].fillna(0.0)}).set_axis(pd.DatetimeIndex(t)).sort_index()
    frame = frame[frame.index.notna()]
    if frame.empty:
        return pd.DataFrame(columns=cols)
    out = frame.resample(freq).sum().rename_axis("time")
    hours = pd.Timedelta(freq).total_seconds() / 3600
    out["experiments_per_hour"] = out["experiments"] / hours
    out["runs_per_hour"] = out["runs"] / hours
    return out[cols]


def summary(df: pd.DataFrame, info: dict | None = None) -> dict:
    """The run in numbers: what `ar-ray report` puts at the top."""
    info = info or {}
    direction = info.get("direction", "min")
    lin = lineage(df, direction)
    path = lin[lin["on_best_path"]]
    t = when(df).dropna()
    r = _rows(df, ran(df), ["status", "run_seconds"])
    failed = r[r["status"] != "ok"]
    best = lin.iloc[-1] if len(lin) else None
    base = lin.iloc[0] if len(lin) else None
    cost = float(df["cost_usd"].fillna(0).sum())
    kept = int((df["decision"] == "keep").sum())
    elapsed = (t.max() - t.min()).total_seconds() if len(t) else 0.0
    experiments = int((df["role"] == "screen").sum())
    return {
        "run_id": info.get("run_id") or (str(df["run_id"].iloc[0]) if len(df) else None),
        "target": info.get("target"), "metric": info.get("metric", "metric"), "direction": direction,
        "rows": len(df), "experiments": experiments, "runs": len(r),
        "skipped": int((df["decision"] == SKIPPED).sum()), "kept": kept,
        "kept_on_best_path": max(len(path) - 1, 0),
        "failures": {str(k): int(v) for k, v in failed["status"].astype(object).value_counts().items()},
        "best_metric": None if best is None else _num(best["metric"]),
        "best_experiment": None if best is None else node_label(best["node"], best["ran_as"]),
        "best_version": None if best is None or pd.isna(best["version"]) else int(best["version"]),
        "best_description": None if best is None else best["description"],
        "baseline_metric": None if base is None else _num(base["metric"]),
        "improvement": None if best is None or base is None else _num(_sign(direction) * (base["metric"] - best["metric"])),
        "cost_usd": cost, "cost_per_kept": cost / kept if kept else None,
        "prompt_tokens": int(df["prompt_tokens"].fillna(0).sum()),
        "completion_tokens": int(df["completion_tokens"].fillna(0).sum()),
        "started": t.min() if len(t) else None, "ended": t.max() if len(t) else None, "elapsed_seconds": elapsed,
        "run_seconds": float(r["run_seconds"].fillna(0).sum()),
        "experiments_per_hour": experiments / (elapsed / 3600) if elapsed > 0 else None,
    }


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


__all__ = ["run_info", "when", "ran", "attempts", "group_of", "origin", "model_key", "running_best", "lineage",
           "node_label", "has_baseline", "baseline_problem", "best_path", "best_files", "frontier", "proposer_stats", "model_stats",
           "gpu_stats", "throughput", "summary"]

