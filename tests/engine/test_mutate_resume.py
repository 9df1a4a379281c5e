"""A resumed run's mutate proposers do not replay the proposals they made before the resume."""

from __future__ import annotations

from toys import make_toy

from ar_ray.engine.config import RunConfig
from ar_ray.engine.run import execute
from ar_ray.ledger import store as ledger
from proposers.base import proposer_seed

# many knobs and a metric that never improves: the best stays the shipped code, so what a proposer proposes
# depends on its seed alone (no timing), and a replay would show as `duplicate` rows
TRAIN = "".join(f"K{i} = {0.1 + i / 100:.2f}\n" for i in range(12)) + "print('---')\nprint('val_bpb: 1.0')\n"


def test_a_resumed_run_does_not_replay_its_proposals(ray_local, tmp_path):
    target = make_toy(tmp_path / "target", train=TRAIN)

    def run(max_experiments: int, resume: bool) -> None:
        execute(RunConfig(target=str(target), run_dir=str(tmp_path / "run"), trainers=1, gpus_per_trainer=1,
                          proposers=1, acceptance="greedy", max_experiments=max_experiments, resume=resume))

    run(3, resume=False)
    first = ledger.load(tmp_path / "run")
    run(6, resume=True)
    df = ledger.load(tmp_path / "run")
    later = df[~df.experiment_id.isin(first.experiment_id)]
    assert (later.role == "screen").sum() >= 3, df[["experiment_id", "status", "description"]]
    # before, a resumed proposer started its fixed-seed sequence again: its first proposals came back as duplicates
    assert "duplicate" not in set(df.status), df[["experiment_id", "status", "description"]]
    screens = df[df.role == "screen"]
    assert screens.description.is_unique and (screens.status == "ok").all()


def test_proposer_seeds_are_fixed_in_a_fresh_run_and_new_at_each_resume():
    assert proposer_seed(0, 1) == 1 and proposer_seed(2, 0) == 2000  # a fresh run: as before
    seeds = {proposer_seed(0, i, rows) for i in range(4) for rows in (0, 5, 9, 40)}
    assert len(seeds) == 16
