"""What a sweep found: power-law fits per variant, tokens per parameter, and each variant against the first.

Reads a sweep's ledger rows (ar_ray.transfer.sweep runs them); ar_ray.transfer.scaling does the statistics. Writes sweep.json and
the plots beside the ledger.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ar_ray.ledger.store import RUN_FILE, LedgerError, load
from ar_ray.search.ranks import spearman
from ar_ray.transfer import gains, scaling
from ar_ray.transfer.sweep import (
    FIT_PNG,
    GAIN_PNG,
    ROLE,
    SWEEP_JSON,
    SweepError,
    _label_of,
)

# ---------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------


def _finite(x):
    """JSON without NaN/Infinity: non-finite floats become null."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def sweep_runs(df: pd.DataFrame) -> pd.DataFrame:
    """The sweep's rows, one per experiment id (the last, when a lost run was recorded and later run again), with
    columns variant and scale added."""
    rows = df[df["role"] == ROLE] if "role" in df.columns else df.iloc[:0]
    rows = rows.drop_duplicates("experiment_id", keep="last").copy()
    rows["variant"] = rows["group_id"].astype(str)
    rows["scale"] = [_label_of(e, v) for e, v in zip(rows["experiment_id"], rows["variant"])]
    return rows


def _compute(rows: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Training compute per row: flops(num_params_M, total_tokens_M) where the runs print them, else a knob
    named compute. NaN where neither is known."""
    p = pd.to_numeric(rows["num_params_M"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    t = pd.to_numeric(rows["total_tokens_M"], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        c = np.where((p > 0) & (t > 0), scaling.flops(p, t), np.nan)
    knob = np.array([_float(k.get("compute")) if isinstance(k, dict) else np.nan for k in rows["knobs"]], dtype=float)
    if np.isfinite(c).any():
        return np.where(np.isfinite(c), c, knob), "flops = 6 * num_params * total_tokens (from each run's summary)"
    if np.isfinite(knob).any():
        return knob, "the knob named compute"
    return c, ""


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


LACK_OF_FIT = 3.0  # residuals this many times the repeats' own spread: the curve does not describe the runs


def _fit_quality(g: pd.DataFrame, fit) -> dict:
    """How far the fitted curve misses the scale means, against the spread of repeats within a scale. A law in
    compute alone cannot describe runs whose loss depends on how compute is split (e.g. a grid where bigger
    models do not help at a fixed token budget): the ratio says so."""
    within = [(s["loss"] - s["loss"].mean()).to_numpy() for _, s in g.groupby("scale") if len(s) > 1]
    dof = sum(len(w) - 1 for w in within)
    noise = math.sqrt(sum(float((w ** 2).sum()) for w in within) / dof) if dof else float("nan")
    means = g.groupby("scale").agg(c=("compute", "mean"), l=("loss", "mean"), n=("loss", "size"))
    miss = means["l"].to_numpy() - fit.predict(means["c"].to_numpy())
    # a scale mean of n repeats scatters by noise / sqrt(n) around the truth
    z = miss * np.sqrt(means["n"].to_numpy())
    ratio = float(math.sqrt(float((z ** 2).mean())) / noise) if noise and noise > 0 else float("nan")
    warning = None
    if math.isfinite(ratio) and ratio > LACK_OF_FIT:
        warning = (f"the curve misses the scale means by {ratio:.1f}x what the repeats' noise ({noise:.3g}) allows: "
                   "the loss here is not a function of compute alone (look at the plot: e.g. at a fixed token budget, "
                   "bigger models may not help), so read alpha as a summary, not a law")
        tied = [list(grp.index) for _, grp in means.groupby(means["c"]) if len(grp) > 1]
        if tied:
            warning += (f". Scales {', '.join(' = '.join(t) for t in tied)} have the same compute: if they should not, "
                        "the summary prints num_params_M / total_tokens_M too coarsely (print more digits)")
    return {"repeat_noise": noise, "lack_of_fit": ratio, "fit_warning": warning}


def analyze(df: pd.DataFrame, run_dir: str | os.PathLike | None = None, *, variants: list[str] | None = None,
            direction: str | None = None, bootstrap: int = 1000, plots: bool = True) -> dict:
    """Fits, compute-optimal tokens per parameter and comparisons of a sweep's ledger.

    Per variant: the power law L = E + A * C^-alpha of the metric on compute (flops(num_params_M, total_tokens_M)
    when the target prints them, else a knob named `compute`), the rough tokens/param optimum, and for every
    variant after the first its comparison against the first (per-scale gains, trend, verdict). Runs with status
    other than ok are left out (and counted). Anything that cannot be computed says why in an `*_error` entry
    rather than raising. With `run_dir`: writes sweep.json, and sweep_fit.png / sweep_gain.png (one
    sweep_gain-<variant>.png per further comparison) when `plots`. `variants` (default: the order in the run's
    spec, else of appearance) puts the reference first."""
    info: dict = {}
    if run_dir is not None and (Path(run_dir) / RUN_FILE).exists():
        info = json.loads((Path(run_dir) / RUN_FILE).read_text())
    direction = direction or info.get("direction", "min")
    rows = sweep_runs(df)
    if variants is None:
        order = [v["name"] for v in info.get("sweep", {}).get("variants", [])]
        variants = [v for v in order if v in set(rows["variant"])] + \
                   [v for v in dict.fromkeys(rows["variant"]) if v not in order]
    ok = (rows["status"] == "ok") & np.isfinite(pd.to_numeric(rows["metric"], errors="coerce").fillna(np.nan))
    out: dict = {"metric": info.get("metric", "metric"), "direction": direction, "runs": int(len(rows)),
                 "ok": int(ok.sum()), "failed": int((~ok).sum()),
                 "failed_by_status": {str(k): int(v) for k, v in rows.loc[~ok, "status"].astype(str).value_counts().items()},
                 "variants": {}, "comparisons": [], "plots": [], "error": None}
    if rows.empty:
        out["error"] = "no sweep runs in this ledger"
        return _write(out, run_dir)
    good = rows[ok].copy()
    compute, source = _compute(good)
    good["compute"] = compute
    good["loss"] = pd.to_numeric(good["metric"], errors="coerce").astype(float)
    out["compute_source"] = source or None
    if direction != "min":
        out["error"] = ("the target's metric is maximized; a power law fits a loss that falls with compute "
                        "(direction min)")
    elif not source:
        out["error"] = ("the runs report no compute: the target's summary prints no num_params_M / total_tokens_M "
                        "lines and no knob is named compute. Print `num_params_M: ...` and `total_tokens_M: ...` "
                        "(millions) in the summary, or sweep a knob named compute (--knob compute=1e15,1e16,...)")
    missing = int((~np.isfinite(compute)).sum())
    out["no_compute"] = missing
    good = good[np.isfinite(good["compute"])]
    runs_of = {v: list(zip(good.loc[good["variant"] == v, "scale"], good.loc[good["variant"] == v, "compute"],
                           good.loc[good["variant"] == v, "loss"])) for v in variants}
    fits = {}
    for v in variants:
        mine = rows[rows["variant"] == v]
        g = good[good["variant"] == v]
        entry: dict = {"runs": int(len(mine)), "ok": int(len(g)),
                       "failed": int(len(mine) - int(ok[rows["variant"] == v].sum())), "scales": [],
                       "fit": None, "fit_error": None, "tokens_per_param": None, "tokens_per_param_error": None}
        for lab, s in g.groupby("scale", sort=False):
            entry["scales"].append({"scale": lab, "n": int(len(s)), "compute": float(s["compute"].mean()),
                                    "loss_mean": float(s["loss"].mean()),
                                    "loss_sd": float(s["loss"].std(ddof=1)) if len(s) > 1 else None})
        entry["scales"].sort(key=lambda r: r["compute"])
        if len(entry["scales"]) >= 2:
            entry["spearman"] = spearman([r["compute"] for r in entry["scales"]],
                                          [r["loss_mean"] for r in entry["scales"]])
        if out["error"] is None:
            n_scales = g["scale"].nunique()
            if n_scales < 3:
                entry["fit_error"] = (f"only {n_scales} scale(s) finished with status ok; a power law with an "
                                      "irreducible term needs at least 3: sweep more depths or budgets")
            else:
                try:
                    fit = scaling.fit_power_law(g["compute"], g["loss"], groups=g["scale"], bootstrap=bootstrap)
                    fits[v] = fit
                    entry["fit"] = {**fit.to_dict(), "describe": fit.describe()}
                    entry.update(_fit_quality(g, fit))
                except (ValueError, ArithmeticError) as e:  # ArithmeticError: a fit out of float range
                    fits.pop(v, None)
                    entry["fit"] = None
                    entry["fit_error"] = str(e) or type(e).__name__
            frame = g.rename(columns={"loss": "_loss"})
            ratio = scaling.optimal_tokens_per_param(frame, loss="_loss")
            if ratio is not None:
                entry["tokens_per_param"] = {**ratio.to_dict(), "describe": ratio.describe()}
            else:
                entry["tokens_per_param_error"] = ("needs num_params_M and total_tokens_M from the runs, at least 2 "
                                                   "model sizes and 2 token budgets, and a compute level where two "
                                                   "sizes compete")
        out["variants"][v] = entry
    ref = variants[0] if variants else None
    comparisons = []
    if out["error"] is None:
        for v in variants[1:]:
            c = {"a": ref, "b": v, "comparison": None, "error": None}
            try:
                cmp = gains.compare(runs_of[ref], runs_of[v])
                c["comparison"] = {**cmp.to_dict(), "describe": cmp.describe()}
                comparisons.append((v, cmp))
            except ValueError as e:
                c["error"] = str(e)
            out["comparisons"].append(c)
    if run_dir is not None:
        for old in Path(run_dir).glob("sweep_*.png"):  # plots of an earlier analysis
            old.unlink()
    if run_dir is not None and plots and out["error"] is None and len(good):
        d = Path(run_dir)
        scaling.plot(fits, {v: runs_of[v] for v in variants}, d / FIT_PNG)
        out["plots"].append(FIT_PNG)
        for k, (v, cmp) in enumerate(comparisons):
            name = GAIN_PNG if k == 0 else f"sweep_gain-{v}.png"
            gains.plot_gain(cmp, d / name)
            out["plots"].append(name)
    return _write(out, run_dir)


def _write(out: dict, run_dir) -> dict:
    out = _finite(out)
    if run_dir is not None:
        path = Path(run_dir) / SWEEP_JSON
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, path)
    return out


def analyze_run(run_dir: str | os.PathLike, bootstrap: int = 1000, plots: bool = True) -> dict:
    """`analyze` of a sweep dir's ledger, writing sweep.json and the plots beside it. A run dir that is not a sweep
    (made by `ar-ray run`) is refused with a SweepError, and nothing is written into it."""
    if not (Path(run_dir) / "ledger").is_dir():
        raise SweepError(f"{run_dir} holds no ledger (no ledger/ folder); pass the folder given to "
                         "`ar-ray sweep --run-dir`")
    try:
        df = load(run_dir)
    except LedgerError as e:
        raise SweepError(str(e)) from None
    meta = Path(run_dir) / RUN_FILE
    info = None
    if meta.exists():
        try:
            info = json.loads(meta.read_text())
        except (OSError, ValueError):
            info = None
    if isinstance(info, dict) and "sweep" not in info and info.get("kind") != "sweep":
        why = f"its {RUN_FILE} has no sweep spec: it was made by `ar-ray run`"
    elif not isinstance(info, dict) and sweep_runs(df).empty:
        why = f"no {RUN_FILE} says so, and its ledger holds no sweep runs"
    else:
        why = None
    if why:
        raise SweepError(f"{run_dir} is not a sweep ({why}); nothing was analyzed or written. `ar-ray report "
                         f"{run_dir}` reports on a run; `ar-ray sweep --variant {run_dir} ...` sweeps its best")
    return analyze(df, run_dir, bootstrap=bootstrap, plots=plots)


def _ci_text(ci) -> str:
    """[lo, hi], with "?" for an end that is not a number (null in sweep.json: infinite or unavailable)."""
    ends = list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else [None, None]
    return "[" + ", ".join(f"{x:.4g}" if isinstance(x, (int, float)) and math.isfinite(x) else "?" for x in ends) + "]"


def describe(result: dict) -> list[str]:
    """The analysis in lines of text: fits (alpha with its 95 % interval), tokens/param, comparisons."""
    lines = [f"{result['runs']} runs: {result['ok']} ok, {result['failed']} failed"
             + (f" ({', '.join(f'{k} {v}' for k, v in sorted(result['failed_by_status'].items()))}; left out of the fits)"
                if result["failed"] else "")]
    if result.get("error"):
        return lines + [f"no analysis: {result['error']}"]
    if result.get("compute_source"):
        lines.append(f"compute: {result['compute_source']}")
    if result.get("no_compute"):
        lines.append(f"{result['no_compute']} ok run(s) had no compute and were left out")
    for v, e in result["variants"].items():
        if e["fit"]:
            f = e["fit"]
            if f.get("ci_method") == "unavailable":
                failed = f.get("bootstrap_failed") or 0
                lines.append(f"{v}: alpha {f['alpha']:.4g}, E {f['E']:.4g}, A {f['A']:.4g} (95% CI unavailable: "
                             f"{failed} of {failed + (f.get('bootstrap') or 0)} bootstrap refits failed); "
                             f"{f['n_points']} scales, {f['n_runs']} runs, rmse {f['rmse']:.3g}")
            else:
                lines.append(f"{v}: alpha {f['alpha']:.4g} (95% CI {_ci_text(f['alpha_ci'])}), "
                             f"E {f['E']:.4g} {_ci_text(f['E_ci'])}, A {f['A']:.4g}; "
                             f"{f['n_points']} scales, {f['n_runs']} runs, rmse {f['rmse']:.3g}")
            if e.get("fit_warning"):
                lines.append(f"  warning: {e['fit_warning']}")
        else:
            lines.append(f"{v}: no fit: {e['fit_error']}")
        rho = e.get("spearman")
        if rho is not None:
            trend = "falls" if rho < -0.5 else "rises" if rho > 0.5 else "does not clearly move"
            lines.append(f"  loss {trend} with compute over the scales (rank correlation {rho:+.2f})")
        if e["tokens_per_param"]:
            lines.append(f"  {e['tokens_per_param']['describe']}")
    for c in result["comparisons"]:
        if c["error"]:
            lines.append(f"{c['b']} vs {c['a']}: no comparison: {c['error']}")
        else:
            text = c["comparison"]["describe"].replace("B vs A", f"{c['b']} (B) vs {c['a']} (A)", 1)
            lines.extend(text.splitlines())
    return lines
