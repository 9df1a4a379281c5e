"""What each LLM endpoint's proposals earned in a run, as a table (the report's "per LLM endpoint" panel).

A run with several endpoints tags each proposal `actor/endpoint` in the ledger's proposer column (the label is
the endpoint's model, `model#k` when two endpoints share a model). A run with one endpoint leaves the tag out;
its proposals (proposer `llm-*`) are then credited to the one model run.json names.

Per endpoint: proposals (every answer it gave, used or not), usable (not an invalid edit or a proposer error),
trained (reached a trainer), screened (passed the screen: its group got confirmation runs, or was kept), kept
(its group ended in a keep, the keep usually landing on a follow-up run), the spend (cost_usd of its proposals),
kept per dollar (NaN when nothing was spent), kept per proposal, and its share of the run's LLM traffic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["proposals", "usable", "trained", "screened", "kept", "cost_usd", "kept_per_dollar", "kept_per_proposal",
           "traffic_share"]
UNUSABLE = ("invalid_edit", "proposer_error")
SCREENED = ("keep", "screened", "promoted", "confirming")


def endpoint_labels(df: pd.DataFrame, info: dict | None = None) -> pd.Series:
    """Per row, the endpoint that proposed it (NaN for rows no LLM endpoint proposed)."""
    tag = df["proposer"].astype(object).fillna("").astype(str)
    label = tag.str.split("/", n=1).str[1].where(tag.str.contains("/", regex=False))
    label = label.where(~tag.isin(["policy", "baseline"]))
    if label.notna().any():
        return label
    endpoints = (((info or {}).get("config") or {}).get("proposer_options") or {}).get("endpoints") or []
    if len(endpoints) == 1 and ((info or {}).get("config") or {}).get("proposer") == "llm":
        return pd.Series(np.where(tag.str.match(r"llm-\d+$"), endpoints[0].get("model") or "llm", None),
                         index=df.index, dtype=object).where(lambda s: s.notna())
    return label


def endpoint_stats(df: pd.DataFrame, info: dict | None = None) -> pd.DataFrame:
    """One row per endpoint (see the module docstring); empty when no row names an endpoint."""
    if df is None or not len(df) or "proposer" not in df:
        return pd.DataFrame(columns=COLUMNS).rename_axis("endpoint")
    label = endpoint_labels(df, info)
    own = label.notna() & ~df["role"].isin(["confirm", "rebase", "promote", "baseline"]).fillna(False)
    if not own.any():
        return pd.DataFrame(columns=COLUMNS).rename_axis("endpoint")
    group = df["group_id"].astype(object).fillna(df["experiment_id"].astype(object))
    decisions = df["decision"].astype(object).groupby(group).agg(set)
    sub = pd.DataFrame({"endpoint": label[own], "id": df.loc[own, "experiment_id"].astype(object),
                        "status": df.loc[own, "status"].astype(object),
                        "decision": df.loc[own, "decision"].astype(object),
                        "cost_usd": df.loc[own, "cost_usd"].fillna(0.0).astype(float)})
    outcome = sub["id"].map(decisions).apply(lambda d: d if isinstance(d, set) else set())
    sub["usable"] = ~sub["status"].isin(UNUSABLE)
    sub["trained"] = sub["decision"] != "skip"
    sub["screened"] = outcome.apply(lambda d: bool(d & set(SCREENED)))
    sub["kept"] = outcome.apply(lambda d: "keep" in d)
    g = sub.groupby("endpoint", sort=True)
    out = pd.DataFrame({"proposals": g.size(), "usable": g["usable"].sum(), "trained": g["trained"].sum(),
                        "screened": g["screened"].sum(), "kept": g["kept"].sum(), "cost_usd": g["cost_usd"].sum()})
    for c in ("proposals", "usable", "trained", "screened", "kept"):
        out[c] = out[c].astype("int64")
    out["kept_per_dollar"] = out["kept"] / out["cost_usd"].where(out["cost_usd"] > 0)
    out["kept_per_proposal"] = out["kept"] / out["proposals"]
    out["traffic_share"] = out["proposals"] / out["proposals"].sum()
    return out[COLUMNS]
