"""`ar-ray init [DIR]`: write a commented ar-ray.toml for an existing training repo, from what can be detected.

It finds the entry script (train.py, main.py, run.py, or a script with `if __name__ == "__main__"`), the
config files mutate could tune (YAML / JSON / TOML, and Python files under config/ or configs/), leftovers
that must not be read-only (checkpoints, output folders) and large files, and, given `--log FILE` (the output
of one run), the metric line. Everything it could not know is a comment for the user to edit; `ar-ray check`
then says what is still wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import click

from ar_ray.cli.names_read import names_in_code  # (what `ar-ray check` counts as reading a variable)
from ar_ray.metric_names import HIGHER_METRICS, LOWER_METRICS, direction_of
from ar_ray.target import CONFIG_NAME, _list_files

ENTRY_NAMES = ("train.py", "main.py", "run.py", "train_gpt.py")
CONFIG_SUFFIXES = (".yaml", ".yml", ".json", ".toml")
NOT_CONFIGS = {"pyproject.toml", "package.json", "setup.cfg", CONFIG_NAME, "environment.yml", ".pre-commit-config.yaml",
               "tsconfig.json", "Cargo.toml", "poetry.lock", "mkdocs.yml"}
CONFIG_DIRS = ("config", "configs", "conf", "cfg")
LARGE_BYTES = 2**20
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# printed without a validation prefix, these still name an evaluation (a final `rmse: 0.63`, `R2 score = 0.87`);
# a bare loss, perplexity or error is far more often the training loop's
BARE_METRICS = ("rmse", "rmsle", "mse", "mae", "mape", "smape", "wer", "cer", "accuracy", "acc", "roc_auc", "auroc",
                "auc", "r2", "f1", "bleu", "rouge", "precision", "recall")
SPLIT = r"(?:validation|valid|val|evaluation|eval|test|dev|holdout)"
_SEP = r"\s*[\"']?\s*[:=]?\s*"  # `name: v`, `name=v`, `name v`, `name = v`, `'name': v` (a printed dict)


def _metric_re(split: str | None, names: tuple[str, ...]) -> re.Pattern:
    metric = "(?P<metric>" + "|".join(sorted(names, key=len, reverse=True)) + r")(?:[_ ]score)?"
    name = (split + r"[_ /.-]?" + metric) if split else metric
    return re.compile(r"(?<![\w/.-])(?P<name>" + name + r")(?![\w/.-])" + _SEP + "(?P<value>" + NUMBER + r")(?![\w.])",
                      re.IGNORECASE)


# a metric in a log line: a split (val, valid, validation, test, eval, dev) and a metric name, then : or = or a space,
# then a number; else, on a line that does not say train, an evaluation metric without a split
METRIC_LINE = _metric_re(SPLIT, LOWER_METRICS + HIGHER_METRICS)
BARE_METRIC_LINE = _metric_re(None, BARE_METRICS)
TRAINING = re.compile(r"train", re.IGNORECASE)
SEED_FLAG = re.compile(r"""(?:add_argument|option)\(\s*(?:["']-\w+["']\s*,\s*)*["'](?P<flag>--(?:random[-_]?)?seed)["']""")


@dataclass
class Detected:
    entry: str | None = None
    configs: list[str] = field(default_factory=list)  # config files with something mutate would tune
    config_arg: str = ""  # how the entry takes a config: "" (it does not), "positional" or "--config"
    leftovers: list[str] = field(default_factory=list)  # checkpoints, outputs: never read-only
    large: list[str] = field(default_factory=list)
    metric: str | None = None
    metric_pattern: str | None = None
    metric_line: str | None = None
    direction: str = "min"
    other_metrics: list[str] = field(default_factory=list)  # other metric names the log's lines show
    reads_seed: bool = False
    seed_flag: str = ""  # the entry script's own seed option (argparse/click `--seed`), when it does not read AR_SEED
    reads_budget: bool = False
    files: list[str] = field(default_factory=list)


def find_entry(root: Path, files: list[str]) -> str | None:
    """The script a run starts: a conventional name at the top, else a top-level script with a __main__ guard."""
    for name in ENTRY_NAMES:
        if name in files:
            return name
    scripts = [f for f in files if f.endswith(".py") and "/" not in f
               and 'if __name__ == "__main__"' in (root / f).read_text(errors="replace").replace("'", '"')]
    scripts.sort(key=lambda f: ("train" not in f, f))
    return scripts[0] if scripts else None


def find_configs(root: Path, files: list[str]) -> list[str]:
    """Config files mutate would find knobs in (proposers.mutate.find_knobs)."""
    from proposers.mutate import find_knobs
    out = []
    for rel in files:
        name, parts = Path(rel).name, Path(rel).parts
        is_config = rel.endswith(CONFIG_SUFFIXES) and name not in NOT_CONFIGS
        is_config |= rel.endswith(".py") and len(parts) > 1 and parts[0] in CONFIG_DIRS
        if is_config and find_knobs(rel, (root / rel).read_text(errors="replace")):
            out.append(rel)
    return out


def config_arg(entry_source: str) -> str:
    """How the entry script takes a config file: "--config", "positional" (sys.argv, nanoGPT's configurator) or ""."""
    if re.search(r"""add_argument\(\s*["']--config""", entry_source):
        return "--config"
    if "configurator.py" in entry_source or "sys.argv[1]" in entry_source:
        return "positional"
    return ""


def metric_candidates(text: str) -> list[tuple[int, str, re.Match]]:
    """(line number, line, match) for every metric printed in the log, in order: those with a split (val_loss,
    Validation RMSE, val/rmse, test acc) when there is one, else the bare evaluation metrics on lines that do not
    say train."""
    lines = list(enumerate(text.splitlines()))
    found = [(i, line, m) for i, line in lines for m in METRIC_LINE.finditer(line)]
    if not found:
        found = [(i, line, m) for i, line in lines if not TRAINING.search(line)
                 for m in BARE_METRIC_LINE.finditer(line)]
    return found


def metric_name(raw: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", raw.lower()).strip("_")


def pattern_for(line: str, m: re.Match) -> str:
    """A metric_pattern reading this match's number on lines printed like this one."""
    raw = m.group("name")
    sep = line[m.end("name"):m.start("value")].strip()
    body = re.escape(raw).replace("\\ ", " ") + (r"\s*" + re.escape(sep) if sep else "") + r"\s*(" + NUMBER + ")"
    if m.start("name") == 0:
        return "^" + body
    if not line[:m.start("name")].strip():
        return r"^\s*" + body
    return r"(?<![\w/.-])" + body  # (not the end of a longer name: rmse in train_rmse, loss in val/loss)


def metric_from_log(text: str) -> tuple[str, str, str, str] | None:
    """(metric name, metric_pattern, direction, the line) for the metric of the last line that prints one
    (metric_candidates), the first on that line (`val_loss 1.2 val_acc 0.6`: val_loss); None if none."""
    found = metric_candidates(text)
    last = [c for c in found if c[0] == found[-1][0]] if found else []
    for _, line, m in last + found[::-1]:
        pattern = pattern_for(line, m)
        check = re.search(pattern, line)
        if not check or float(check.group(1)) != float(m.group("value")):  # (never: the pattern reads its own line)
            continue
        return metric_name(m.group("name")), pattern, direction_of(m.group("metric")) or "min", line.strip()
    return None


def seed_flag(entry_source: str) -> str:
    """The entry script's own seed option (`parser.add_argument('--seed', ...)`, click's `option`), or ""."""
    m = SEED_FLAG.search(entry_source)
    return m.group("flag") if m else ""


def leftover(rel: str) -> bool:
    from ar_ray.cli.check_cmd import _leftover
    return _leftover(rel) is not None


def detect(root: Path, log: str | None = None) -> Detected:
    files = [f for f in _list_files(root) if f != CONFIG_NAME]
    d = Detected(files=files)
    d.entry = find_entry(root, files)
    d.configs = find_configs(root, files)
    source = (root / d.entry).read_text(errors="replace") if d.entry else ""
    d.config_arg = config_arg(source) if d.configs else ""
    d.leftovers = [f for f in files if leftover(f)]
    d.large = [f for f in files if f not in d.leftovers and (root / f).stat().st_size > LARGE_BYTES]
    code = {f: (root / f).read_bytes() for f in files if f.endswith((".py", ".sh"))}
    d.reads_seed = any(names_in_code(f, data, "AR_SEED") for f, data in code.items())
    d.seed_flag = "" if d.reads_seed else seed_flag(source)
    d.reads_budget = any(names_in_code(f, data, name) for f, data in code.items()
                         for name in ("AR_BUDGET_SECONDS", "AR_BUDGET_TOKENS"))
    if log:
        if found := metric_from_log(log):
            d.metric, d.metric_pattern, d.direction, d.metric_line = found
            names = dict.fromkeys(metric_name(m.group("name")) for _, _, m in metric_candidates(log))
            d.other_metrics = [n for n in names if n != d.metric]
    return d


def _toml_str(s: str) -> str:
    return "'" + s + "'" if "'" not in s and "\n" not in s else json.dumps(s)


def _list(items) -> str:
    return "[" + ", ".join(json.dumps(x) for x in items) + "]"


def render_toml(root: Path, d: Detected) -> str:
    """The commented ar-ray.toml text for what was detected."""
    editable = d.configs[:1] or ([d.entry] if d.entry else ["train.py"])
    entry = d.entry or "train.py"
    command = f"{{python}} {entry}"
    if d.configs and d.config_arg == "positional":
        command += f" {editable[0]}"
    elif d.configs and d.config_arg:
        command += f" {d.config_arg} {editable[0]}"
    if d.seed_flag:
        command += f" {d.seed_flag} {{seed}}"
    readonly = [f for f in d.files if f not in editable and f not in d.leftovers and f not in d.large]
    out = [f"# ar-ray target contract for {root.name}, written by `ar-ray init`: edit it, then run `ar-ray check`.",
           "# Every key is documented in the README (Bring your own target).", "", "[target]",
           f"name = {json.dumps(root.name)}"]
    why = ("the config file mutate tunes" if d.configs else
           "the script itself (no config file with tunable values was found)")
    out.append(f"editable = {_list(editable)}   # what proposers change: {why}")
    if len(d.configs) > 1:
        out.append(f"# other config files found: {', '.join(d.configs[1:])}")
    if d.leftovers or d.large:
        out.append(f"readonly = {_list(readonly)}")
        if d.leftovers:
            out.append(f"# left out of readonly (outputs of earlier runs; better removed): {', '.join(d.leftovers)}")
        if d.large:
            out.append(f"# left out of readonly (over 1 MB, copied into every run otherwise): {', '.join(d.large)};"
                       " move them outside the folder and list their path under data")
            out.append("# data = [\"~/data/my-dataset\"]   # read in place by every run, checked unchanged after each")
    else:
        out.append("# readonly: every other file in the folder (copied into each run and checked unchanged)")
    entry_note = "found" if d.entry else "NOT FOUND: set the script that trains and prints the metric"
    out.append(f"command = {json.dumps(command)}   # entry script {entry_note}; {{python}} is the trainer's "
               "interpreter; {seed}, {budget_seconds}, {budget_tokens} are filled in too")
    if d.metric:
        out.append(f"metric = {json.dumps(d.metric)}")
        out.append(f"metric_pattern = {_toml_str(d.metric_pattern)}   # from the log line: {d.metric_line[:80]}")
        out.append(f"direction = {json.dumps(d.direction)}   # "
                   + ("higher is better" if d.direction == "max" else "lower is better"))
        if d.other_metrics:
            out.append(f"# other metrics in the log: {', '.join(d.other_metrics[:8])} (set metric and "
                       "metric_pattern to one of them instead if it is the one to improve)")
    else:
        out.append('metric = "val_loss"   # print a line "val_loss: 1.234" at the end of a run (or give --log to '
                   "`ar-ray init` and it proposes a pattern)")
        out.append("metric_pattern = '^val_loss:\\s*(\\S+)'   # one group around the number; the last matching line wins")
        out.append('direction = "min"')
    out.append("budget_seconds = 300   # per run on a GPU; passed as AR_BUDGET_SECONDS: the training loop must stop "
               "there" + ("" if d.reads_budget else " (this repo does not read it yet)"))
    out.append("cpu_budget_seconds = 30   # per run on a trainer without a GPU")
    out.append("# budget_tokens = 1_000_000   # or a budget in tokens (AR_BUDGET_TOKENS), the same whatever the hardware")
    out.append("# timeout_seconds = 660   # hard limit per run (default: 2 x budget + 60 s)")
    if d.seed_flag:
        out.append(f"# the seed: the command passes each run's seed to the script's own {d.seed_flag} option")
    elif not d.reads_seed:
        out.append("# this repo does not read AR_SEED: its runs may all give the same metric (ar-ray check tells)")
    out += ["", "# [knobs]   # optional: the search space mutate tunes (else it detects literal values in the editable files)",
            "# learning_rate = [1e-4, 1e-2]   # a range", "# n_layer = [2, 4, 6]   # the values to try",
            '# off = ["eval_*", "out_dir"]   # names mutate must leave alone', ""]
    return "\n".join(out)


@click.command("init")
@click.argument("directory", required=False, default=".", type=click.Path(exists=True, file_okay=False))
@click.option("--log", "log_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The output of one run of the repo: its metric line becomes metric_pattern.")
@click.option("--force", is_flag=True, help="Overwrite an existing ar-ray.toml.")
def init(directory, log_file, force):
    """Write a commented ar-ray.toml for an existing training repo (then: ar-ray check)."""
    root = Path(directory).resolve()
    path = root / CONFIG_NAME
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists; edit it, or pass --force to write a new one over it")
    log = Path(log_file).read_text(errors="replace") if log_file else None
    d = detect(root, log)
    path.write_text(render_toml(root, d))
    click.echo(f"wrote {path}")
    click.echo(f"  entry script: {d.entry or 'not found (set command)'}")
    click.echo(f"  editable: {', '.join(d.configs[:1]) or d.entry or 'train.py'}"
               + (f" (config files found: {', '.join(d.configs)})" if d.configs else ""))
    if log_file:
        click.echo(f"  metric: {d.metric} ({d.direction}), pattern {d.metric_pattern}" if d.metric else
                   f"  no metric line (val_loss: 1.23, val rmse 0.63, Validation accuracy = 0.9, ...) found in "
                   f"{log_file}: set metric and metric_pattern")
    if d.seed_flag:
        click.echo(f"  seed: passed as {d.seed_flag} {{seed}} (the script's own option; it does not read AR_SEED)")
    elif not d.reads_seed:
        click.echo("  seed: the script neither reads AR_SEED nor has a --seed option; its runs may all give the same "
                   "metric")
    for f in d.leftovers:
        click.echo(f"  left out of readonly: {f} (an output of an earlier run; remove it)")
    click.echo(f"next: edit {path.name}, then `ar-ray check {directory}`")
