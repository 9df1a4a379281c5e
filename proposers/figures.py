"""What each LLM endpoint's proposals earned in a run, from its ledger (`ar-ray status`): proposals, screened,
kept, spend. Rows of a run with several endpoints are tagged actor/endpoint in the proposer column."""

from __future__ import annotations


def endpoint_figures(df) -> list[str]:
    """One line per endpoint, or [] when the run's proposals are not tagged by endpoint."""
    if df is None or not len(df) or "proposer" not in df:
        return []
    tag = df["proposer"].fillna("").astype(str)
    own = df[tag.str.contains("/") & ~tag.isin(("policy", "baseline"))]
    if own.empty:
        return []
    endpoint = own["proposer"].str.split("/", n=1).str[1]
    groups = df["group_id"].fillna("") if "group_id" in df else None
    lines = []
    for label in sorted(endpoint.unique()):
        mine = own[endpoint == label]
        ids = set(mine["experiment_id"])
        related = df[df["experiment_id"].isin(ids) | (groups.isin(ids) if groups is not None else False)]
        decided = related.groupby(related["group_id"].fillna(related["experiment_id"]) if groups is not None
                                  else related["experiment_id"])["decision"].agg(set)
        kept = sum("keep" in d for d in decided)
        screened = sum(bool(d & {"keep", "screened", "promoted", "confirming"}) for d in decided)
        cost = float(mine["cost_usd"].fillna(0).sum()) if "cost_usd" in mine else 0.0
        usable = int((~mine["status"].isin(["invalid_edit", "proposer_error"])).sum())
        per = f", ${cost / screened:.4f} per screened" if screened and cost else ""
        lines.append(f"endpoint {label}: {len(mine)} proposals ({usable} usable), {screened} screened, {kept} kept, "
                     f"${cost:.4f}{per}")
    return lines
