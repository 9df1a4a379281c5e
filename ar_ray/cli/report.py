"""`ar-ray report`: a progress plot (PNG) and one self-contained HTML page for a run.

The plot follows upstream autoresearch's progress.png: every run's metric over time, kept changes
highlighted and labelled with their description, the running best as a step line, failed runs marked on
the worse edge. The page holds a summary, the plot (embedded as base64), the lineage of kept changes with
their diffs, cost, throughput and GPU panels, and a table of experiments. It has no JavaScript and loads
nothing from elsewhere (a Content-Security-Policy forbids it); every text from the ledger is escaped,
since descriptions, diffs and errors are written by a model or by the code it wrote.

For big ledgers the plot draws every point (rasterized) and the table shows the last `max_rows` rows
plus every kept and baseline row; everything else is aggregated.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ar_ray.code import edits
from ar_ray.ledger import analysis as A
from ar_ray.ledger.endpoints import endpoint_stats

MAX_ROWS = 500  # experiment table: the last N rows (kept and baseline rows are always shown)
MAX_LABELS = 40  # kept changes labelled on the plot (the biggest improvements when there are more)
MAX_DIFF_LINES = 400  # per kept change, on the page
MAX_KEPT_DIFFS = 200  # kept changes whose diff is on the page (the newest)
LABEL_CHARS = 48


@dataclass(frozen=True)
class Report:
    html: Path
    png: Path
    summary: dict


# ---------------------------------------------------------------------------
# the plot
# ---------------------------------------------------------------------------


def _hours(t: pd.Series, t0) -> np.ndarray:
    return ((t - t0).dt.total_seconds() / 3600.0).to_numpy(dtype=float)


def _label(text: str | None, n: int = LABEL_CHARS) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def progress_png(df: pd.DataFrame, info: dict, path: str | os.PathLike | None = None, width: float = 14,
                 height: float = 7, dpi: int = 100, max_labels: int = MAX_LABELS) -> bytes:
    """Render the progress plot; returns the PNG bytes (and writes them to `path` if given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    direction = info.get("direction", "min")
    metric_name = info.get("metric", "metric")
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t = A.when(df)
    t0 = t.min()
    ran = A.ran(df) & t.notna()
    ok = ran & (df["status"] == "ok") & df["metric"].notna() & np.isfinite(df["metric"].fillna(np.nan))
    fail = ran & ~ok
    keep = df["decision"] == "keep"
    lin = A.lineage(df, direction)
    n_exp = int((df["role"] == "screen").sum())
    n_kept = int(keep.sum())
    title = (f"ar-ray {info.get('run_id') or ''}: {n_exp} experiment{'s' * (n_exp != 1)}, "
             f"{n_kept} kept improvement{'s' * (n_kept != 1)}")
    ax.set_title(_label(title, 120), loc="left", fontsize=12)
    ax.set_xlabel("hours since start")
    ax.set_ylabel(f"{metric_name} ({'lower' if direction == 'min' else 'higher'} is better)")
    ax.grid(True, alpha=0.25)
    if pd.isna(t0) or not ok.any():
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center", fontsize=14,
                parse_math=False)
        return _save(fig, path)

    metrics = df.loc[ok, "metric"].to_numpy(dtype=float)
    anchors = lin["metric"].dropna().to_numpy(dtype=float)  # kept values and the baseline always fit
    # a robust range: the bulk of the runs and every accepted value; outliers are drawn on the edge
    if direction == "min":
        lo = min(np.nanmin(metrics), anchors.min() if len(anchors) else np.inf)
        hi = max(np.nanquantile(metrics, 0.95), anchors.max() if len(anchors) else -np.inf)
    else:
        lo = min(np.nanquantile(metrics, 0.05), anchors.min() if len(anchors) else np.inf)
        hi = max(np.nanmax(metrics), anchors.max() if len(anchors) else -np.inf)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.01 or 1.0
    lo, hi = lo - pad, hi + pad
    ax.set_ylim(lo, hi)

    x_all = _hours(t, t0)
    n_points = int(ok.sum())
    size = 26 if n_points < 300 else 12 if n_points < 5000 else 6  # dots shrink as they crowd
    screen = ok & (df["role"] == "screen") & ~keep
    follow = ok & (df["role"] != "screen") & ~keep
    for mask, style in ((screen, dict(s=size, c="#9a9a9a", alpha=0.6, label="experiment")),
                        (follow, dict(s=size, c="#7fb2e5", alpha=0.7, label="baseline / confirmation run"))):
        if mask.any():
            x, y = x_all[mask.to_numpy()], df.loc[mask, "metric"].to_numpy(dtype=float)
            inside = (y >= lo) & (y <= hi)
            ax.scatter(x[inside], y[inside], linewidths=0, rasterized=True, zorder=2, **style)
            if (~inside).any():  # off the chart: a triangle on the edge it went past
                ax.scatter(x[~inside], np.clip(y[~inside], lo, hi), marker="^" if direction == "min" else "v",
                           s=size + 6, c=style["c"], alpha=0.8, linewidths=0, rasterized=True, zorder=2)
    if fail.any():
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        y_edge = 0.985 if direction == "min" else 0.015
        ax.scatter(x_all[fail.to_numpy()], np.full(int(fail.sum()), y_edge), transform=trans, marker="x", s=size + 10,
                   c="#d62728", alpha=0.85, linewidths=1.2, rasterized=True, zorder=3,
                   label=f"failed run ({int(fail.sum())}, drawn at the {'top' if direction == 'min' else 'bottom'})")
    best = A.running_best(df)
    if len(best):
        bx = _hours(best.index.to_series(), t0)
        ax.step(bx, best.to_numpy(dtype=float), where="post", color="#2ca02c", lw=1.6, zorder=4, label="running best")
    kept = lin[lin["version"].fillna(0) > 0].dropna(subset=["metric", "time"])
    if len(kept):
        kx = _hours(kept["time"], t0)
        ax.scatter(kx, kept["metric"].to_numpy(dtype=float), s=46, c="#2ca02c", edgecolors="black", linewidths=0.6,
                   zorder=5, label="kept")
        chosen = kept.assign(_x=kx)
        if len(chosen) > max_labels:
            chosen = chosen.nlargest(max_labels, "improvement").sort_values("_x")
        x_hi = max(float(np.nanmax(x_all)), 1e-9)
        up = 1 if direction == "min" else -1  # labels point away from the worse edge: up when lower is better
        for i, (_, r) in enumerate(chosen.iterrows()):
            right = r["_x"] > 0.72 * x_hi  # labels near the right edge run leftwards, so they stay inside
            ax.annotate(_label(r["description"]), (r["_x"], r["metric"]),
                        xytext=(-4 if right else 4, up * (6 + 8 * (i % 3))), textcoords="offset points", fontsize=7,
                        rotation=(-25 if right else 25) * up, color="#1b5e20", alpha=0.9,
                        ha="right" if right else "left", va="bottom" if up > 0 else "top", rotation_mode="anchor",
                        parse_math=False, zorder=6, annotation_clip=True)
    base = lin[lin["version"].fillna(-1) == 0]
    if len(base) and pd.notna(base["metric"].iloc[0]):
        ax.axhline(base["metric"].iloc[0], color="#555555", lw=0.8, ls="--", zorder=1, label="baseline")
    span = max(float(np.nanmax(x_all)), 1e-6)
    ax.set_xlim(min(0.0, float(np.nanmin(x_all))) - 0.015 * span, span * 1.015)
    # below the axes: inside, it covered the kept points and their labels
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs a font lacks (emoji in a description) are not an error
        level = logging.getLogger("matplotlib").level
        logging.getLogger("matplotlib").setLevel(logging.ERROR)
        try:
            fig.savefig(buf, format="png")
        finally:
            logging.getLogger("matplotlib").setLevel(level)
    data = buf.getvalue()
    if path is not None:
        _write_atomic(Path(path), data)
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:16px 24px;color:#1d1d1f}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px}
table{border-collapse:collapse;font-size:12.5px}th,td{border:1px solid #e2e2e2;padding:3px 7px;vertical-align:top;text-align:left}
th{background:#f5f5f7;position:sticky;top:0}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.summary td:first-child{color:#555;white-space:nowrap}
tr.keep td{background:#e6f4e6}tr.fail td{background:#fdeceb}tr.skip td{color:#888}tr.baseline td{background:#eef3fb}
pre{background:#f7f7f9;border:1px solid #e5e5e5;padding:8px;overflow-x:auto;font-size:12px;line-height:1.35;white-space:pre}
pre .a{color:#116329;background:#e6ffec}pre .d{color:#82071e;background:#ffebe9}pre .h{color:#6e7781}
.desc{white-space:pre-wrap;word-break:break-word}.muted{color:#777}.small{font-size:12px}
ul.tree{list-style:none;padding-left:18px;margin:4px 0}ul.tree li{margin:2px 0}ul.tree li.off{color:#999}
ul.tree li.best>span.node{font-weight:600}
.bar{display:inline-block;height:10px;background:#4e79a7;vertical-align:middle}.bar.cost{background:#f28e2b}
img.plot{max-width:100%;border:1px solid #e2e2e2}
.grid{display:flex;flex-wrap:wrap;gap:28px}.grid>div{min-width:320px}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def e(value) -> str:
    """Escape anything for HTML text and attribute values."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    return html.escape(str(value), quote=True)


def _f(v, digits: int = 6) -> str:
    if v is None or v is pd.NA:
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return e(v)
    if math.isnan(v):
        return "-"
    return f"{v:.{digits}f}"


def _signed(v, digits: int = 6) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{float(v):+.{digits}f}"


def _time(v) -> str:
    if v is None or v is pd.NaT or (isinstance(v, float) and math.isnan(v)) or pd.isna(v):
        return "-"
    return pd.Timestamp(v).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S") if pd.Timestamp(v).tzinfo else str(v)


def _duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    return (f"{d}d " if d else "") + f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _short(text, n: int) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _diff_html(diff: str, max_lines: int = MAX_DIFF_LINES) -> str:
    lines = diff.splitlines()
    out = []
    for line in lines[:max_lines]:
        cls = ("h" if line.startswith(("diff --git", "+++", "---", "@@", "new file", "deleted file", "\\"))
               else "a" if line.startswith("+") else "d" if line.startswith("-") else None)
        out.append(f'<span class="{cls}">{e(line)}</span>' if cls else e(line))
    more = f"\n… {len(lines) - max_lines} more lines" if len(lines) > max_lines else ""
    return "<pre>" + "\n".join(out) + e(more) + "</pre>"


def _table(frame: pd.DataFrame, formats: dict | None = None, index_name: str | None = None) -> str:
    formats = dict(formats or {})
    cols = list(frame.columns)
    for c in cols:  # per column, by dtype (a row of mixed types would read as floats)
        if c not in formats:
            kind = getattr(frame[c].dtype, "kind", "O")
            formats[c] = (lambda v: "-" if pd.isna(v) else f"{int(v):,}") if kind in "iu" else \
                (lambda v: _f(v, 4)) if kind == "f" else None
    head = "".join(f"<th>{e(c)}</th>" for c in ([index_name or frame.index.name or ""] + cols))
    body = []
    for i, idx in enumerate(frame.index):
        cells = [f"<td>{e(idx)}</td>"]
        for c in cols:
            v = frame[c].iloc[i]
            fmt = formats.get(c)
            cells.append(f'<td class="n">{e(fmt(v))}</td>' if fmt is not None else f"<td>{e(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pct(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{100 * float(v):.1f}%"


def _usd(v) -> str:
    return "-" if v is None or pd.isna(v) else f"${float(v):,.4f}"


def _spend_text(s: dict) -> str:
    """Total spend (GPU + LLM) and what it bought (ar_ray/lab/spend.py)."""
    from ar_ray.lab.spend import describe
    if s.get("total_cost_usd") is None:
        return "-"
    note = " GPU time priced by --gpu-price or the built-in estimates."
    if s.get("unpriced_runs"):
        note += f" {s['unpriced_runs']} runs carry no GPU price (a ledger written before it was recorded)."
    return describe(s, s.get("metric", "metric")) + "." + note


def _summary_html(s: dict) -> str:
    fails = ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())) or "none"
    rows = [
        ("run", s["run_id"]), ("target", s["target"]),
        ("metric", f"{s['metric']} ({'lower' if s['direction'] == 'min' else 'higher'} is better)"),
        ("best", f"{_f(s['best_metric'])} ({s['best_experiment'] or '-'}, version {s['best_version']})"),
        ("best change", _short(s["best_description"], 300)),
        ("baseline", _f(s["baseline_metric"])), ("improvement", _signed(s["improvement"])),
        ("experiments", f"{s['experiments']} proposals run, {s['runs']} runs in all (confirmations and repeats of the best included), "
                        f"{s['skipped']} proposals that never ran"),
        ("kept", f"{s['kept']} ({s['kept_on_best_path']} on the best's path)"),
        ("failures by status", fails),
        ("proposer cost", f"{_usd(s['cost_usd'])}; per kept improvement {_usd(s['cost_per_kept'])}; "
                          f"tokens {s['prompt_tokens']:,} prompt + {s['completion_tokens']:,} completion"),
        ("spend", _spend_text(s)),
        ("elapsed", f"{_duration(s['elapsed_seconds'])} ({_time(s['started'])} to {_time(s['ended'])} UTC); "
                    f"{_duration(s['run_seconds'])} of training (all trainers); "
                    + (f"{s['experiments_per_hour']:.1f} experiments/hour" if s["experiments_per_hour"] else "")),
    ]
    body = "".join(f'<tr><td>{e(k)}</td><td id="{e(k.replace(" ", "-"))}">{e(v)}</td></tr>' for k, v in rows)
    return f'<table class="summary"><tbody>{body}</tbody></table>'


def _lineage_html(lin: pd.DataFrame, metric: str) -> str:
    """The versions as a tree: each line continues on the same level (the best's path, else the newest child);
    versions branched off (a greedy accept of a stale proposal) are indented under the one they were made from."""
    if lin.empty:
        return '<p class="muted">No baseline has finished yet.</p>'
    children: dict = {}
    for i, parent in zip(lin.index, lin["parent"]):
        children.setdefault(parent if isinstance(parent, str) else None, []).append(i)
    known = set(lin["node"])
    roots = [i for i, p in zip(lin.index, lin["parent"]) if not isinstance(p, str) or p not in known]
    seen: set = set()

    def label(r) -> str:
        cls = "best" if r["on_best_path"] else "off"
        note = "" if r["on_best_path"] else ' <span class="small">(not part of the current best)</span>'
        gain = "" if pd.isna(r["improvement"]) else f" ({_signed(r['improvement'])})"
        return (f'<li class="{cls}"><span class="node">{e(A.node_label(r["node"], r["ran_as"]))}</span> v{e(r["version"])} {e(metric)} '
                f'{e(_f(r["metric"]))}{e(gain)} — <span class="desc">{e(_short(r["description"], 160))}</span>{note}')

    def line(i) -> str:
        items = []
        while i is not None and i not in seen:
            seen.add(i)
            r = lin.loc[i]
            kids = [k for k in children.get(r["node"], []) if k not in seen]
            main = next((k for k in kids if lin.at[k, "on_best_path"]), kids[-1] if kids else None)
            branches = "".join(line(k) for k in kids if k != main)
            items.append(label(r) + (f'<ul class="tree">{branches}</ul>' if branches else "") + "</li>")
            i = main
        return "".join(items)

    return '<ul class="tree">' + "".join(line(i) for i in roots) + "</ul>"


def _kept_html(df: pd.DataFrame, lin: pd.DataFrame, metric: str) -> str:
    kept = lin[lin["version"].fillna(0) > 0]
    if kept.empty:
        return '<p class="muted">No change has been kept yet.</p>'
    files_of = dict(zip(lin["node"], lin["files"]))
    wanted = (df["role"] == "screen") & df["experiment_id"].isin(set(kept["node"]))
    screen_diff = df[["experiment_id", "diff"]][wanted].drop_duplicates("experiment_id").set_index("experiment_id")["diff"]
    parts = []
    if len(kept) > MAX_KEPT_DIFFS:
        parts.append(f'<p class="muted">The newest {MAX_KEPT_DIFFS} of {len(kept)} kept changes; '
                     '`ar-ray show RUN_DIR ID` prints any other.</p>')
    for _, r in kept.iloc[::-1].head(MAX_KEPT_DIFFS).iterrows():  # newest first
        old, new = files_of.get(r["parent"]), r["files"]
        if isinstance(old, dict) and isinstance(new, dict):
            diff, what = edits.unified_diff(old, new), f"against {r['parent']}"
        else:
            diff, what = screen_diff.get(r["node"]) or "", "as proposed"
        head = (f'{e(r["node"])} · version {e(r["version"])} · {e(metric)} {e(_f(r["metric"]))} '
                f'({e(_signed(r["improvement"]))}) · {e(r["proposer"])} · {e(_time(r["time"]))}'
                + ("" if r["on_best_path"] else " · not part of the current best"))
        parts.append(f'<h3>{head}</h3><div class="desc">{e(r["description"])}</div>'
                     f'<div class="small muted">diff {e(what)}</div>'
                     + (_diff_html(diff) if diff else '<p class="muted">no diff recorded</p>'))
    return "".join(parts)


def _bars(frame: pd.DataFrame) -> str:
    if frame.empty:
        return '<p class="muted">No runs have finished yet.</p>'
    top_e = max(frame["experiments_per_hour"].max(), 1e-9)
    top_c = max(frame["cost_usd"].max(), 1e-9)
    rows = []
    for t, r in frame.iterrows():
        w = 220 * r["experiments_per_hour"] / top_e
        wc = 120 * r["cost_usd"] / top_c
        rows.append(f'<tr><td>{e(_time(t))}</td><td class="n">{r["experiments_per_hour"]:.1f}</td>'
                    f'<td><span class="bar" style="width:{w:.0f}px"></span></td><td class="n">{int(r["runs"])}</td>'
                    f'<td class="n">{int(r["kept"])}</td><td class="n">{int(r["failed"])}</td>'
                    f'<td class="n">{e(_usd(r["cost_usd"]))}</td><td><span class="bar cost" style="width:{wc:.0f}px"></span></td></tr>')
    return ("<table><thead><tr><th>from (UTC)</th><th>experiments/hour</th><th></th><th>runs</th><th>kept</th>"
            "<th>failed</th><th>cost</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _bucket(seconds: float, max_buckets: int = 36) -> str:
    for f in ("5min", "10min", "15min", "30min", "1h", "2h", "3h", "6h", "12h", "1D", "7D"):
        if seconds / pd.Timedelta(f).total_seconds() <= max_buckets:
            return f
    return "30D"


def _experiments_html(df: pd.DataFrame, max_rows: int) -> tuple[str, int]:
    dec = df["decision"]
    show = pd.Series(max_rows <= 0, index=df.index)  # 0: every row
    if max_rows > 0:
        show.iloc[-max_rows:] = True
    show |= dec.isin(["keep"]) | ((df["role"] == "baseline") & df["parent_id"].isna())
    sub = df[["seq", "experiment_id", "proposer", "role", "group_id", "status", "decision", "metric", "gain",
              "run_seconds", "gpu_model", "description", "error", "ended_at", "started_at", "proposed_at"]][show]
    t = A.when(sub)
    rows = []
    for (idx, r), when in zip(sub.iterrows(), t):
        d, st = r["decision"], r["status"]
        cls = ("keep" if d == "keep" else "skip" if d == "skip" else "fail" if st != "ok" and pd.notna(st)
               else "baseline" if r["role"] == "baseline" else "")
        desc = r["description"] if isinstance(r["description"], str) else ""
        err = r["error"] if isinstance(r["error"], str) else ""
        rows.append(
            f'<tr class="{cls}"><td class="n">{e(r["seq"])}</td><td>{e(r["experiment_id"])}</td><td>{e(_time(when))}</td>'
            f'<td>{e(r["proposer"])}</td><td>{e(r["role"])}</td><td>{e(r["group_id"])}</td><td>{e(st)}</td>'
            f'<td>{e(d)}</td><td class="n">{_f(r["metric"])}</td><td class="n">{_signed(r["gain"])}</td>'
            f'<td class="n">{_f(r["run_seconds"], 1)}</td><td>{e(r["gpu_model"])}</td>'
            f'<td class="desc" title="{e(_short(desc, 2000))}">{e(_short(desc, 240))}</td>'
            f'<td class="desc small" title="{e(_short(err, 2000))}">{e(_short(err, 200))}</td></tr>')
    head = "".join(f"<th>{c}</th>" for c in ("seq", "id", "ended (UTC)", "proposer", "role", "group", "status",
                                             "decision", "metric", "gain", "run s", "gpu", "description", "error"))
    return f'<table class="experiments"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>', len(sub)


def _transfer_html(df: pd.DataFrame) -> str:
    """The promotion ladder's transfer report: do the cheap rung's gains rank candidates as the full rung's do?"""
    from ar_ray.search.ranks import transfer_from_ledger
    t = transfer_from_ledger(df)
    if t is None:
        return ""
    return (f'<h2 id="transfer">Transfer across the ladder</h2><p>{e(t.describe())}.</p>'
            '<p class="small">Pairs: each promoted candidate\'s gain at the cheapest rung and at the highest rung it '
            "reached (gains over the best at that rung). If the cheap rung does not carry the signal, screen at a "
            "larger budget.</p>")


def _sweep_html(run_dir: Path) -> str:
    """A scaling sweep's results (`ar-ray sweep`): its fits, verdicts and plots, when the run dir has them."""
    import json

    from ar_ray.transfer.sweep import SWEEP_JSON
    path = run_dir / SWEEP_JSON
    pngs = sorted(run_dir.glob("sweep_*.png"), key=lambda p: (p.name != "sweep_fit.png", p.name))
    if not path.exists() and not pngs:
        return ""
    try:
        res = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        res = {}
    if isinstance(res.get("plots"), list):  # the plots of the latest analysis, not older leftovers
        pngs = [run_dir / Path(n).name for n in res["plots"] if isinstance(n, str) and (run_dir / Path(n).name).is_file()]
    parts = ['<h2 id="sweep">Scaling sweep</h2>']
    if res:
        fails = ", ".join(f"{k} {v}" for k, v in sorted(res.get("failed_by_status", {}).items()))
        parts.append(f'<p>{e(res.get("runs"))} runs: {e(res.get("ok"))} ok, {e(res.get("failed"))} failed'
                     + (f" ({e(fails)}; left out of the fits)" if fails else "") + "."
                     + (f' Compute: {e(res["compute_source"])}.' if res.get("compute_source") else "") + "</p>")
        if res.get("error"):
            parts.append(f'<p class="muted">No analysis: {e(res["error"])}</p>')
        rows = []
        for name, v in (res.get("variants") or {}).items():
            f = v.get("fit") or {}
            fit = (f"{_f(f.get('alpha'), 4)} [{_f((f.get('alpha_ci') or [None])[0], 4)}, "
                   f"{_f((f.get('alpha_ci') or [None, None])[1], 4)}]") if f else (v.get("fit_error") or "-")
            tpp = v.get("tokens_per_param") or {}
            ratio = f"{tpp['tokens_per_param']:.3g}" if isinstance(tpp.get("tokens_per_param"), (int, float)) else "-"
            rows.append(f"<tr><td>{e(name)}</td><td class=\"n\">{e(v.get('ok'))}</td><td class=\"n\">{e(v.get('failed'))}</td>"
                        f"<td>{e(fit)}</td><td class=\"n\">{e(_f(f.get('E'), 4)) if f else '-'}</td>"
                        f"<td class=\"n\">{e(ratio)}</td></tr>")
        warnings = [f"{name}: {v['fit_warning']}" for name, v in (res.get("variants") or {}).items() if v.get("fit_warning")]
        if rows:
            parts.append("<table><thead><tr><th>variant</th><th>ok runs</th><th>failed</th><th>alpha [95% CI]</th>"
                         "<th>E</th><th>tokens/param (rough)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
        parts += [f'<p class="small">warning, {e(w)}</p>' for w in warnings]
        for c in res.get("comparisons") or []:
            cmp = c.get("comparison")
            if cmp:
                parts.append(f'<h3>{e(c.get("b"))} against {e(c.get("a"))}: {e(cmp.get("verdict"))}</h3>'
                             f'<div class="desc">{e(cmp.get("reason"))}</div><pre>{e(cmp.get("describe"))}</pre>')
            else:
                parts.append(f'<h3>{e(c.get("b"))} against {e(c.get("a"))}</h3><p class="muted">{e(c.get("error"))}</p>')
    for p in pngs:
        parts.append(f'<img class="plot" alt="{e(p.name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(p.read_bytes()).decode()}">')
    return "\n".join(parts)


def _endpoints_html(df: pd.DataFrame, info: dict) -> str:
    """Per LLM endpoint: proposals, usable, trained, screened, kept, spend, kept per dollar and per proposal, share of
    the traffic (ar_ray/ledger/endpoints.py); nothing for a run without LLM proposals."""
    ep = endpoint_stats(df, info)
    if ep.empty:
        return ""
    fmt = {"cost_usd": _usd, "kept_per_dollar": lambda v: _f(v, 2), "kept_per_proposal": lambda v: _f(v, 3),
           "traffic_share": _pct}
    return ('<h3 id="endpoints">per LLM endpoint</h3><p class="small muted">Screened: passed the screen (confirmed or '
            'kept after); kept: accepted, on its confirmation runs included. Routing between several endpoints '
            f'follows what each one\'s proposals earned.</p>{_table(ep, fmt, "endpoint")}')


def render_html(df: pd.DataFrame, info: dict, png: bytes, max_rows: int = MAX_ROWS, extra: str = "") -> tuple[str, dict]:
    """The report page as a string, and the summary it shows (`extra`: sections of their own, e.g. a sweep's)."""
    direction = info.get("direction", "min")
    metric = info.get("metric", "metric")
    s = A.summary(df, info)
    from ar_ray.lab.spend import from_ledger
    s.update(from_ledger(df, direction, s["improvement"]))
    lin = A.lineage(df, direction)
    elapsed = s["elapsed_seconds"] or 0.0
    freq = _bucket(elapsed)
    thr = A.throughput(df, freq)
    prop = A.proposer_stats(df)
    models = A.model_stats(df)
    gpus = A.gpu_stats(df)
    table, shown = _experiments_html(df, max_rows)
    rate = {"acceptance_rate": _pct, "failure_rate": _pct, "skip_rate": _pct, "cost_usd": _usd, "cost_per_kept": _usd,
            "mean_proposer_seconds": lambda v: _f(v, 2)}
    gfmt = {"failure_rate": _pct, "mean_run_seconds": lambda v: _f(v, 1), "median_run_seconds": lambda v: _f(v, 1),
            **{c: _f for c in ("metric_mean", "metric_std", "metric_min", "metric_max", "noise")}}
    run_id = s["run_id"] or "run"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ar-ray report: {e(run_id)}</title>
<style>{CSS}</style></head>
<body>
<h1>ar-ray report: <span id="run-id">{e(run_id)}</span></h1>
<p class="small muted">Generated {e(generated)} from {e(s['rows'])} ledger rows.</p>
<h2 id="summary">Summary</h2>
{_summary_html(s)}
<h2 id="progress">Progress</h2>
<img class="plot" alt="progress plot: {e(metric)} of every run over time" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<p class="small muted">Grey: experiments; blue: baseline and confirmation runs; green: kept changes (labelled) and the
running best; red crosses: failed runs. Points beyond the vertical range are drawn as triangles on its edge.</p>
{extra}
<h2 id="lineage">Lineage of kept changes</h2>
{_lineage_html(lin, metric)}
<h2 id="kept">Kept changes</h2>
{_kept_html(df, lin, metric)}
<h2 id="cost">Cost and proposers</h2>
<div class="grid"><div><h3>per proposer</h3>{_table(prop, rate)}</div>
<div><h3>per model</h3>{_table(models, rate)}</div></div>
{_endpoints_html(df, info)}
<h2 id="gpus">GPUs</h2>
{_table(gpus, gfmt) if len(gpus) else '<p class="muted">No runs yet.</p>'}
<h2 id="throughput">Throughput (per {e(freq)})</h2>
{_bars(thr)}
<h2 id="experiments">Experiments</h2>
<p class="small muted">{e(shown)} of {e(len(df))} rows{e(f": the last {max_rows}, and every kept change and the first baseline" if shown < len(df) else "")}.</p>
{table}
</body></html>
"""
    return page, s


def build(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, df: pd.DataFrame | None = None,
          max_rows: int = MAX_ROWS) -> Report:
    """Write `progress.png` and `report.html` into out_dir (default RUN_DIR/report)."""
    from ar_ray.ledger.store import load

    run_dir = Path(run_dir)
    df = load(run_dir) if df is None else df
    info = A.run_info(run_dir, df)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    png = progress_png(df, info, out / "progress.png")
    page, s = render_html(df, info, png, max_rows=max_rows, extra=_transfer_html(df) + _sweep_html(run_dir))
    _write_atomic(out / "report.html", page.encode("utf-8"))
    return Report(out / "report.html", out / "progress.png", s)
