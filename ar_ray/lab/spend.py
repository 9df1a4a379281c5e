"""One spend ledger: what the GPUs (or CPUs) of a run cost beside what its LLM tokens cost.

A run's GPU time is priced per GPU model (USD per GPU-hour): prices given on the command line
(`--gpu-price H100=2.49`) or in a run config's `[prices]` table win; otherwise a built-in table of
ESTIMATES is used (rough on-demand cloud prices, not anyone's bill). A CPU-only trainer is priced per
core-hour. Each run on a trainer is charged for its wall time on that trainer (materializing, training,
evaluating, cleaning up) times the trainer's GPUs (or CPUs); a trainer's idle time between runs is not
charged, so the total is what the experiments used, a lower bound on what the reserved machines cost.

`Meter` keeps the run's totals and its budget: `--max-cost` counts LLM spend, GPU spend or both
(`--cost-counts`), `--max-gpu-hours` counts GPU-hours. Pure Python, no Ray, except `node_accelerator_type`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ar_ray.errors import read_config_toml

# USD per GPU-hour: ESTIMATES of on-demand cloud prices (late 2025, one GPU of a multi-GPU instance, rounded),
# for a first idea of a run's cost. Your provider's price is what counts: set it with --gpu-price MODEL=USD/h or
# a [prices.gpu] table. A model matches the longest key found in its name, ignoring case, spaces and dashes
# ("NVIDIA H100 80GB HBM3" is H100, "NVIDIA A10G" is A10G, "NVIDIA L40S" is L40S).
ESTIMATED_GPU_PRICES: dict[str, float] = {
    "B200": 6.00, "H200": 3.80, "GH200": 1.50, "H100": 3.00, "H800": 3.00, "A100": 1.60, "A800": 1.60,
    "L40S": 1.00, "L40": 1.00, "L4": 0.70, "A10G": 1.00, "A10": 0.75, "A6000": 0.80, "RTX6000": 0.80,
    "V100": 2.50, "T4": 0.35, "P100": 1.40, "RTX4090": 0.40, "RTX3090": 0.25, "MI300X": 2.50, "MI250": 1.50,
}
ESTIMATED_UNKNOWN_GPU = 2.00  # a GPU whose model is unknown or missing from the table
ESTIMATED_CPU_CORE_HOUR = 0.04  # USD per CPU core-hour, for trainers without a GPU
COUNTS = ("gpu", "llm")  # what --max-cost may count
THRESHOLDS = (0.5, 0.8, 1.0)  # fractions of a budget that are announced (alerts) once crossed


class SpendError(ValueError):
    """A price or a budget is given wrongly; the message says what to write instead."""


def _key(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text).upper()


@dataclass(frozen=True)
class Price:
    usd_per_hour: float  # per GPU (GPU trainers) or per core (CPU trainers)
    unit: str  # "GPU" or "CPU core"
    source: str  # "set" (flag or config), "estimate" (the built-in table), "unknown model: estimate"


@dataclass(frozen=True)
class Prices:
    gpu: dict[str, float] = field(default_factory=dict)  # model (or a part of its name) -> USD per GPU-hour
    cpu_core_hour: float | None = None  # None: the estimate

    def gpu_price(self, model: str | None) -> Price:
        name = _key(model or "")
        for table, source in ((self.gpu, "set"), (ESTIMATED_GPU_PRICES, "estimate")):
            hits = [k for k in table if k != "*" and _key(k) and _key(k) in name]
            if hits:
                return Price(table[max(hits, key=lambda k: len(_key(k)))], "GPU", source)
            if "*" in table:  # the user's price for every model they did not name, before any estimate
                return Price(table["*"], "GPU", source)
        return Price(ESTIMATED_UNKNOWN_GPU, "GPU", "unknown model: estimate")

    def cpu_price(self) -> Price:
        if self.cpu_core_hour is not None:
            return Price(self.cpu_core_hour, "CPU core", "set")
        return Price(ESTIMATED_CPU_CORE_HOUR, "CPU core", "estimate")

    def for_trainer(self, gpu_model: str | None, gpus: float) -> Price:
        """The price of one unit of a trainer: a GPU of its model, or a CPU core when it has no GPU."""
        return self.gpu_price(gpu_model) if gpus > 0 and (gpu_model or "") != "cpu" else self.cpu_price()


def prices_from(config_file: str | None, gpu_price: tuple[str, ...] | list[str], cpu_price: float | None
                ) -> tuple[dict[str, float], float | None]:
    """(GPU prices, CPU core-hour price) of `ar-ray run` / `ar-ray sweep`: a run config's [prices], then the
    --gpu-price MODEL=USD/h and --cpu-price flags, which win over it."""
    gpu_prices, cpu_default = read_prices(config_file) if config_file else ({}, None)
    gpu_prices.update(parse_gpu_price(t) for t in gpu_price)
    return gpu_prices, cpu_price if cpu_price is not None else cpu_default


def parse_gpu_price(text: str) -> tuple[str, float]:
    """'H100=2.49' (USD per GPU-hour; '/h' allowed) -> ('H100', 2.49). '*=2' prices every model not named."""
    model, eq, value = text.partition("=")
    value = value.strip().removesuffix("/h").removesuffix("/hr").strip().lstrip("$")
    try:
        usd = float(value)
    except ValueError:
        usd = float("nan")
    if not eq or not model.strip() or not (usd >= 0 and math.isfinite(usd)):
        raise SpendError(f"--gpu-price {text!r}: write MODEL=USD per GPU-hour, e.g. --gpu-price H100=2.49 "
                         "(the model as nvidia-smi or Ray names it, or a part of that name; '*=2.0' for any other)")
    return model.strip(), usd


def read_prices(path: str) -> tuple[dict[str, float], float | None]:
    """The [prices] table of a run config: `cpu_core_hour = 0.04` and a [prices.gpu] table of MODEL = USD/h."""
    table = read_config_toml(path, SpendError).get("prices", {})
    example = "[prices]\ncpu_core_hour = 0.04\n[prices.gpu]\nH100 = 2.49\n\"A100-80GB\" = 1.79"
    if not isinstance(table, dict) or set(table) - {"gpu", "cpu_core_hour"}:
        raise SpendError(f"{path}: [prices] takes cpu_core_hour and a [prices.gpu] table, e.g.\n{example}")
    gpu = table.get("gpu", {})
    cpu = table.get("cpu_core_hour")
    bad = not isinstance(gpu, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
                                           for v in gpu.values())
    if bad or (cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu < 0)):
        raise SpendError(f"{path}: prices are numbers of USD per hour (not negative), e.g.\n{example}")
    return {str(k): float(v) for k, v in gpu.items()}, None if cpu is None else float(cpu)


def parse_counts(text: str | tuple | list) -> tuple[str, ...]:
    """'gpu,llm' -> ('gpu', 'llm'); what --max-cost counts."""
    parts = [p.strip().lower() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if not parts or set(parts) - set(COUNTS):
        raise SpendError(f"--cost-counts {text!r}: give gpu, llm or gpu,llm (what --max-cost counts)")
    return tuple(c for c in COUNTS if c in parts)


@dataclass(frozen=True)
class Budget:
    max_cost: float | None = None  # USD of what `counts` names
    counts: tuple[str, ...] = ("llm",)
    max_gpu_hours: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_cost is not None:
            parts.append(f"--max-cost ${self.max_cost:g} ({' + '.join(c.upper() for c in self.counts)})")
        if self.max_gpu_hours is not None:
            parts.append(f"--max-gpu-hours {self.max_gpu_hours:g}")
        return ", ".join(parts)


class Meter:
    """The run's GPU spend and GPU-hours, and its budget. The driver charges each run as it lands (`charge`)
    and asks `stop()` before starting or asking for more work; LLM spend stays the driver's (count.cost_usd)."""

    def __init__(self, prices: Prices | None = None, budget: Budget | None = None, gpus: float = 0.0,
                 cpus: float = 1.0, direction: str = "min"):
        self.prices, self.budget = prices or Prices(), budget or Budget()
        self.gpus, self.cpus = gpus, cpus  # per trainer
        self.sign = 1.0 if direction == "min" else -1.0
        self.gpu_usd = 0.0  # GPU (or CPU-core) spend of the runs landed
        self.gpu_seconds = 0.0  # GPU-seconds of the runs landed (a trainer's GPUs x its run's wall time)
        self.baseline: float | None = None  # the unmodified target's metric (best of version 0)
        self.default_model: str | None = None  # for a trainer whose GPU model is not known yet (no result so far)

    # ---- charging ----

    def units(self, gpu_model: str | None) -> float:
        return self.gpus if self.gpus > 0 and (gpu_model or "") != "cpu" else self.cpus

    def cost(self, gpu_model: str | None, seconds: float) -> float:
        """What `seconds` on one trainer of this run cost."""
        gpu_model = gpu_model or self.default_model
        return max(0.0, seconds) / 3600 * self.units(gpu_model) * self.prices.for_trainer(gpu_model, self.gpus).usd_per_hour

    def gpu_seconds_of(self, gpu_model: str | None, seconds: float) -> float:
        return max(0.0, seconds) * self.gpus if self.gpus > 0 and (gpu_model or "") != "cpu" else 0.0

    def charge(self, gpu_model: str | None, started_at: float, ended_at: float, run_seconds: float = 0.0) -> float:
        """A run landed: add its cost (returned, for its ledger row) to the totals."""
        seconds = ended_at - started_at if started_at and ended_at and ended_at >= started_at else run_seconds or 0.0
        usd = self.cost(gpu_model, seconds)
        self.gpu_usd += usd
        self.gpu_seconds += self.gpu_seconds_of(gpu_model, seconds)
        return usd

    def observe(self, row: dict) -> None:
        """A ledger row was written: the baseline's metric is what gains are measured from."""
        if row.get("best_version") == 0 and row.get("best_metric") is not None:
            self.baseline = row["best_metric"]

    def restore(self, rows: list[dict]) -> None:
        """A resumed run: the totals of its ledger rows (columns gpu_cost_usd, gpu_model, started_at, ended_at,
        run_seconds, decision, best_version, best_metric). Rows of a ledger older than the column count $0."""
        for r in rows:
            self.observe(r)
            if r.get("decision") == "skip":
                continue
            self.gpu_usd += r.get("gpu_cost_usd") or 0.0
            start, end = _epoch(r.get("started_at")), _epoch(r.get("ended_at"))
            seconds = end - start if start and end and end >= start else r.get("run_seconds") or 0.0
            self.gpu_seconds += self.gpu_seconds_of(r.get("gpu_model"), seconds)

    # ---- the budget ----

    def counted(self, llm_usd: float, running: list[tuple[str | None, float]] = ()) -> tuple[float, float]:
        """(USD counted by --max-cost, GPU-hours), runs in flight included ((GPU model, seconds so far) each)."""
        gpu_usd = self.gpu_usd + sum(self.cost(m, s) for m, s in running)
        hours = (self.gpu_seconds + sum(self.gpu_seconds_of(m, s) for m, s in running)) / 3600
        usd = (gpu_usd if "gpu" in self.budget.counts else 0.0) + (llm_usd if "llm" in self.budget.counts else 0.0)
        return usd, hours

    def fractions(self, llm_usd: float, running=()) -> dict[str, float]:
        """How much of each budget is used: {'cost': 0.43, 'gpu_hours': 0.2} (only the budgets that are set)."""
        usd, hours = self.counted(llm_usd, running)
        out = {}
        if self.budget.max_cost:
            out["cost"] = usd / self.budget.max_cost
        if self.budget.max_gpu_hours:
            out["gpu_hours"] = hours / self.budget.max_gpu_hours
        return out

    def stop(self, what: str, llm_usd: float, running=()) -> str | None:
        """Why no more work may start (`what` = "start": a new candidate) or be asked for ("ask": a proposal);
        None while the budget allows it. A cost of LLM spend alone stops the asking only: what was paid for runs."""
        usd, hours = self.counted(llm_usd, running)
        b = self.budget
        if b.max_gpu_hours is not None and hours >= b.max_gpu_hours:
            return f"--max-gpu-hours {b.max_gpu_hours:g} reached ({hours:.3g} GPU-hours)"
        if b.max_cost is not None and usd >= b.max_cost and (what == "ask" or "gpu" in b.counts):
            return f"--max-cost ${b.max_cost:g} reached (${usd:.2f} of {' + '.join(c.upper() for c in b.counts)})"
        return None

    # ---- what it bought ----

    def figures(self, llm_usd: float, kept: int, best_metric: float | None) -> dict:
        return {**figures(self.gpu_usd, llm_usd, kept, self.gain(best_metric), self.gpu_seconds / 3600),
                "compute": "GPU" if self.gpus > 0 else "CPU"}

    def gain(self, best_metric: float | None) -> float | None:
        if self.baseline is None or best_metric is None:
            return None
        return self.sign * (self.baseline - best_metric)


def figures(gpu_usd: float, llm_usd: float, kept: int, gain: float | None, gpu_hours: float | None = None) -> dict:
    """Total spend, spend per kept improvement and per unit of metric gained (None where undefined)."""
    total = gpu_usd + llm_usd
    return {"gpu_cost_usd": gpu_usd, "llm_cost_usd": llm_usd, "total_cost_usd": total, "gpu_hours": gpu_hours,
            "cost_per_kept_total": total / kept if kept else None, "gain": gain,
            "cost_per_unit_gain": total / gain if gain and gain > 0 else None}


def describe(f: dict, metric: str = "metric") -> str:
    """One line: 'spend $12.40 (GPU $11.20 estimated + LLM $1.20); $6.20 per kept improvement; $1,240 per 1.0
    val_bpb gained ($12.40 per 0.01)'."""
    text = (f"spend {usd(f['total_cost_usd'])} ({f.get('compute', 'GPU')} {usd(f['gpu_cost_usd'])} + "
            f"LLM {usd(f['llm_cost_usd'])})")
    if f.get("gpu_hours"):
        text += f", {f['gpu_hours']:.3g} GPU-hours"
    if f.get("cost_per_kept_total") is not None:
        text += f"; {usd(f['cost_per_kept_total'])} per kept improvement"
    if f.get("cost_per_unit_gain") is not None:
        per = f["cost_per_unit_gain"]
        scale = 10 ** math.floor(math.log10(f["gain"])) if f["gain"] > 0 else 1.0
        text += f"; {usd(per)} per 1 {metric} gained ({usd(per * scale)} per {scale:g})"
    return text


def usd(v: float) -> str:
    """$1,234.50, $0.25, and amounts under a cent with 2 significant digits ($0.00041) rather than $0.00."""
    if v == 0 or abs(v) >= 0.01:
        return f"${v:,.2f}"
    return f"${v:.{1 - math.floor(math.log10(abs(v)))}f}"


def from_ledger(df, direction: str = "min", gain: float | None = None) -> dict:
    """The spend figures of a run from its ledger (pandas DataFrame of `ar_ray.ledger.store.load`); `gain`: the
    metric gained, when the caller measured it (else: the baseline's best_metric against the last one)."""
    import pandas as pd
    gpu = float(pd.to_numeric(df["gpu_cost_usd"], errors="coerce").fillna(0).sum()) if "gpu_cost_usd" in df else 0.0
    llm = float(pd.to_numeric(df["cost_usd"], errors="coerce").fillna(0).sum()) if "cost_usd" in df else 0.0
    kept = int((df["decision"] == "keep").sum()) if len(df) else 0
    gain = None
    if len(df) and gain is None:
        base = df[(df["best_version"] == 0) & df["best_metric"].notna()]["best_metric"]
        last = df[df["best_metric"].notna()]["best_metric"]
        if len(base) and len(last):
            gain = (1.0 if direction == "min" else -1.0) * (float(base.iloc[-1]) - float(last.iloc[-1]))
    unpriced = int(df["gpu_cost_usd"].isna()[df["decision"] != "skip"].sum()) if "gpu_cost_usd" in df and len(df) else 0
    models = set(df["gpu_model"].dropna().astype(str)) if "gpu_model" in df else set()
    compute = "CPU" if models and models <= {"cpu"} else "GPU"
    return {**figures(gpu, llm, kept, gain), "unpriced_runs": unpriced, "compute": compute}


def _epoch(v) -> float:
    if v is None:
        return 0.0
    if hasattr(v, "timestamp"):
        return v.timestamp()
    return float(v)


# ---- before the run: what it will cost ----

def estimate(prices: Prices, budget: Budget, trainers: int, gpus: float, cpus: float, gpu_model: str | None,
             run_seconds: float | None) -> str:
    """The start message: '8 trainers x 1 GPU (H100, $3.00/h, estimate): ~$24.00 per hour; 300 s per run: ~$0.25
    a run; --max-cost $50 (GPU + LLM) reached after ~200 runs'."""
    price = prices.for_trainer(gpu_model, gpus)
    units = gpus if gpus > 0 else cpus
    hourly = trainers * units * price.usd_per_hour
    what = (f"{units:g} GPU{'s' if units != 1 else ''} ({gpu_model or 'model unknown'}, " if gpus > 0 else
            f"{units:g} CPU core{'s' if units != 1 else ''} (")
    label = "" if price.source == "set" else (", an estimate: set yours with --gpu-price MODEL=USD/h" if gpus > 0
                                              else ", an estimate: set yours with --cpu-price")
    text = (f"spend: {trainers} trainer{'s' if trainers != 1 else ''} x {what}${price.usd_per_hour:.2f}/h per "
            f"{price.unit}{label}): ~${hourly:,.2f} per hour of training")
    per_run = None
    if run_seconds:
        per_run = run_seconds / 3600 * units * price.usd_per_hour
        text += f"; {run_seconds:g} s budget per run: ~{f'${per_run:.3g}' if per_run >= 0.01 else usd(per_run)} a run"
    b = budget
    if b.max_cost is not None:
        if "gpu" in b.counts and per_run:
            text += (f"; --max-cost ${b.max_cost:g} reached after ~{math.floor(b.max_cost / per_run):,} runs "
                     f"(~{b.max_cost / hourly:.1f} h at full use" + ("; LLM spend makes it sooner)" if "llm" in b.counts else ")"))
        elif "gpu" not in b.counts:
            text += f"; --max-cost ${b.max_cost:g} counts LLM spend only (--cost-counts gpu,llm counts both)"
    if b.max_gpu_hours is not None and gpus > 0:
        runs = f" ~{math.floor(b.max_gpu_hours * 3600 / (run_seconds * gpus)):,} runs," if run_seconds else ""
        text += f"; --max-gpu-hours {b.max_gpu_hours:g}:{runs} ~{b.max_gpu_hours / (trainers * gpus):.1f} h at full use"
    return text


def accelerator_type(resources: dict) -> str | None:
    """The GPU model Ray knows for a node: its `accelerator_type:<MODEL>` resource (Ray sets it from the GPUs it
    detects; `ray start --resources '{"accelerator_type:H100": 1}'` or a cluster config can set it)."""
    for k in resources:
        if str(k).startswith("accelerator_type:"):
            return str(k).split(":", 1)[1]
    return None


def node_accelerator_type() -> str | None:
    """From inside a Ray worker: the accelerator type of the node it runs on (resource or label), or None.
    Touches no GPU (a trainer process must never initialize CUDA)."""
    import ray
    node_id = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == node_id:
            return accelerator_type(n.get("Resources") or {}) or (n.get("Labels") or {}).get("ray.io/accelerator-type")
    return None
