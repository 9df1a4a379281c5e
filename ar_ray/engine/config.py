"""One run's configuration: the CLI's flags become this object, checked once."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ar_ray.errors import ConfigError

# On --resume, a field none of whose flags is given now comes back from the run's run.json, so a resumed run
# goes on as it was started. Fields and the click parameters that set them, where the names differ:
FLAGS = {
    "budget_seconds": ("budget",),
    "proposer": ("proposer", "model", "base_url", "api_key_env", "config_file"),
    "proposer_options": ("proposer", "model", "base_url", "api_key_env", "config_file"),
    "max_skipped_in_a_row": ("max_unusable_in_a_row",),
    "gpu_prices": ("gpu_price", "config_file"),
}
NOT_RESUMED = ("target", "run_dir", "resume", "address",  # where the run is, and the cluster it runs on now
               "notify")  # webhook URLs hold their secret: run.json keeps them redacted, a resume gives them again


def default_target() -> Path:
    import trainers
    return Path(trainers.__file__).resolve().parent / "gpt"


@dataclass(frozen=True)
class RunConfig:
    target: str = field(default_factory=lambda: str(default_target()))
    run_dir: str = ""
    resume: bool = False
    address: str | None = None  # None: start an embedded local Ray
    proposer: str = "mutate"
    proposer_options: dict = field(default_factory=dict)
    proposers: int = 2
    trainers: int | None = None  # None: one per GPU, or one per `cpus_per_trainer` CPUs on a CPU-only cluster
    gpus_per_trainer: float = 1.0
    cpus_per_trainer: float | None = None  # None: 1 with GPUs, 2 on CPU
    queue_depth: int | None = None  # None: trainers + proposers
    max_experiments: int | None = None
    time_limit: float | None = None  # seconds for the whole run
    budget_seconds: float | None = None  # overrides the target's
    seed: int = 0
    keep_files: bool = False
    acceptance: str = "confirm"  # or "greedy" (upstream's rule)
    baseline_repeats: int = 3
    confirm_runs: int = 2
    max_confirm_runs: int = 4  # sequential confirmation: a close call gets more runs, up to this many
    k: float = 1.0
    k_confirm: float = 2.0
    sanity_gain: float | None = None
    max_cost: float | None = None  # USD of what cost_counts names; LLM only: stop asking; with GPU: start nothing new
    cost_counts: tuple[str, ...] = ("llm",)  # what --max-cost counts: gpu, llm or both (ar_ray/lab/spend.py)
    max_gpu_hours: float | None = None  # GPU-hours of the runs (a trainer's GPUs x its runs' wall time)
    gpu_prices: dict = field(default_factory=dict)  # GPU model -> USD per GPU-hour (--gpu-price, [prices.gpu])
    cpu_price: float | None = None  # USD per CPU core-hour for CPU trainers (None: the estimate)
    notify: tuple[str, ...] = ()  # webhook URLs (or env:NAME) for alerts (ar_ray/lab/notify.py)
    notify_interval: float = 60.0  # seconds between two alerts of one kind to one webhook
    notify_failures: int = 10  # failed runs in a row that raise an alert
    max_skipped_in_a_row: int = 20  # --max-unusable-in-a-row: unusable proposals in a row (not duplicates) stop the run
    target_overrides: dict = field(default_factory=dict)
    ladder: str | None = None  # promotion ladder rungs, cheapest first (ar_ray/search/ladder.py), e.g. "60,300"
    promote_fraction: float = 0.25
    rescreen: bool = False  # a close call at a cheap rung gets one more run there
    prune: bool = False  # stop new candidates clearly worse than the best at the same progress (ar_ray/search/pruning.py)
    prune_at: tuple[float, ...] = (0.5, 0.75)  # checkpoints, fractions of the budget
    prune_margin: float = 0.05  # how much worse (relative training loss) before a run is stopped
    sandbox: str = "auto"  # auto | bwrap | none (trainers/sandbox.py)
    sandbox_limits: dict = field(default_factory=dict)  # Sandbox fields: max_processes, disk_quota_gb, ...
    track: tuple[str, ...] = ()  # --track: mlflow, wandb, tensorboard, or NAME=WHERE (ar_ray/lab/track.py)
    track_flush: float = 30.0  # seconds the trackers get at the end of a run to catch up (then export finishes)

    def check(self) -> "RunConfig":
        if self.proposers < 1:
            raise ConfigError(f"--proposers must be at least 1, got {self.proposers}")
        if self.trainers is not None and self.trainers < 1:
            raise ConfigError(f"--trainers must be at least 1, got {self.trainers}")
        if self.cpus_per_trainer is not None and self.cpus_per_trainer <= 0:
            raise ConfigError(f"--cpus-per-trainer must be positive, got {self.cpus_per_trainer:g}")
        self.check_proposer()
        if self.gpus_per_trainer < 0:
            raise ConfigError(f"--gpus-per-trainer must be >= 0, got {self.gpus_per_trainer}")
        if self.gpus_per_trainer > 1 and self.gpus_per_trainer != int(self.gpus_per_trainer):
            raise ConfigError(f"--gpus-per-trainer above 1 must be a whole number, got {self.gpus_per_trainer}")
        if self.queue_depth is not None and self.queue_depth < 1:
            raise ConfigError(f"--queue-depth must be at least 1, got {self.queue_depth}")
        if self.max_experiments is not None and self.max_experiments < 1:
            raise ConfigError(f"--max-experiments must be at least 1, got {self.max_experiments}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ConfigError(f"--time-limit must be positive, got {self.time_limit}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError(f"--budget must be positive, got {self.budget_seconds}")
        if self.max_skipped_in_a_row < 1:
            raise ConfigError(f"--max-unusable-in-a-row must be at least 1, got {self.max_skipped_in_a_row}")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError(f"--max-cost must be positive, got {self.max_cost}")
        self.spend_meter()  # checks the prices and the budget
        self.notify_urls()  # checks the webhook URLs
        if self.notify_interval < 0 or self.notify_failures < 1:
            raise ConfigError("--notify-interval must not be negative and --notify-failures must be at least 1")
        if self.acceptance not in ("confirm", "greedy"):
            raise ConfigError(f"--acceptance must be 'confirm' or 'greedy', got {self.acceptance!r}")
        if self.acceptance == "confirm" and self.baseline_repeats < 2:
            raise ConfigError("--acceptance confirm needs --baseline-repeats of at least 2 to measure the noise; "
                              "use --acceptance greedy for single runs")
        if self.confirm_runs < 1 or self.k < 0 or self.k_confirm < 0:
            raise ConfigError("--confirm-runs must be at least 1, and --k and --k-confirm must not be negative")
        self.box()  # checks the sandbox mode and limits
        if self.ladder and self.acceptance != "confirm":
            raise ConfigError("--ladder promotes on noise-aware gains: it needs --acceptance confirm")
        if self.rescreen and not self.ladder:
            raise ConfigError("--rescreen gives close calls at a cheap rung one more run: it needs --ladder")
        if not 0 < self.promote_fraction <= 1:
            raise ConfigError(f"--promote-fraction must be in (0, 1], got {self.promote_fraction}")
        self.scales()
        self.prune_rule()
        self.trackers()
        if not self.run_dir:
            raise ConfigError("no run dir: pass --run-dir")
        return self

    def trackers(self) -> tuple:
        """The --track specs, checked: known names, clients installed (before Ray starts)."""
        from ar_ray.lab import track
        if self.track_flush < 0:
            raise ConfigError(f"--track-flush must not be negative, got {self.track_flush:g}")
        try:
            return track.parse(self.track)
        except track.TrackError as e:
            raise ConfigError(str(e)) from None

    def check_proposer(self) -> None:
        """The proposer kind exists (before any Ray actor is started with it)."""
        if self.proposer in ("mutate", "llm"):
            return
        module, colon, cls = self.proposer.partition(":")
        if not colon or not module or not cls:
            raise ConfigError(f"--proposer must be 'mutate', 'llm' or 'package.module:Class', got {self.proposer!r}")
        import importlib
        try:
            found = getattr(importlib.import_module(module), cls, None)
        except ImportError as e:
            raise ConfigError(f"--proposer {self.proposer}: cannot import {module!r} ({e}); it must be importable "
                              "here and on every node (installed, or on PYTHONPATH)") from None
        if found is None:
            raise ConfigError(f"--proposer {self.proposer}: module {module!r} has no {cls!r}")

    def policy(self):
        from ar_ray.search.policy import PolicyConfig
        return PolicyConfig(acceptance=self.acceptance, baseline_repeats=self.baseline_repeats,
                            confirm_runs=self.confirm_runs, max_confirm_runs=self.max_confirm_runs, k=self.k, k_confirm=self.k_confirm, sanity_gain=self.sanity_gain,
                            rungs=max(1, len(self.scales())), promote_fraction=self.promote_fraction,
                            rescreen=self.rescreen)

    def prune_rule(self):
        """The early-stopping rule (None without --prune)."""
        from ar_ray.search.pruning import PruneRule
        try:
            rule = PruneRule(tuple(self.prune_at), self.prune_margin)
        except ValueError as e:
            raise ConfigError(f"--prune-at / --prune-margin: {e}") from None
        return rule if self.prune else None

    def scales(self):
        from ar_ray.search.ladder import parse_ladder
        return parse_ladder(self.ladder)

    def box(self):
        from trainers.sandbox import Sandbox, SandboxError
        try:
            return Sandbox(mode=self.sandbox, **self.sandbox_limits)
        except SandboxError as e:
            raise ConfigError(str(e)) from None

    def spend_meter(self, gpus: float = 0.0, cpus: float = 1.0, direction: str = "min"):
        """The spend meter of this run (ar_ray/lab/spend.py): prices, and the budget that stops it."""
        from ar_ray.lab import spend
        try:
            counts = spend.parse_counts(self.cost_counts)
        except spend.SpendError as e:
            raise ConfigError(str(e)) from None
        if self.max_gpu_hours is not None and self.max_gpu_hours <= 0:
            raise ConfigError(f"--max-gpu-hours must be positive, got {self.max_gpu_hours}")
        bad = [f"{k}={v}" for k, v in self.gpu_prices.items() if not isinstance(v, (int, float)) or v < 0]
        if bad or (self.cpu_price is not None and self.cpu_price < 0):
            raise ConfigError(f"prices must be USD per hour, not negative: {', '.join(bad) or self.cpu_price}")
        return spend.Meter(spend.Prices(dict(self.gpu_prices), self.cpu_price),
                           spend.Budget(self.max_cost, counts, self.max_gpu_hours), gpus, cpus, direction)

    def notify_urls(self) -> list[str]:
        from ar_ray.lab import notify
        try:
            return [notify.resolve(u) for u in self.notify]
        except notify.NotifyError as e:
            raise ConfigError(str(e)) from None

    def to_json(self) -> str:
        from ar_ray.lab.notify import redact
        out = dataclasses.asdict(self)
        out["notify"] = [redact(u) for u in self.notify]  # a webhook URL is a secret
        return json.dumps(out, indent=2, sort_keys=True)

    def resumed(self, stored: dict, given: set[str]) -> "RunConfig":
        """This config for a resumed run: the flags `given` now win, the rest is as `stored` (run.json's config)."""
        changes = {}
        for f in dataclasses.fields(self):
            if f.name in NOT_RESUMED or f.name not in stored:
                continue
            if f.name in ("target_overrides", "sandbox_limits"):  # per key: the ones given now win
                changes[f.name] = {**stored[f.name], **{k: v for k, v in getattr(self, f.name).items() if v is not None}}
            elif not given.intersection(FLAGS.get(f.name, (f.name,))):
                changes[f.name] = stored[f.name]
        return dataclasses.replace(self, **changes)
