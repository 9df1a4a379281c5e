"""The research policy: noise floor, confirmation, rebase, combination, integrity, and greedy for comparison."""

from __future__ import annotations

import math
import random

import pytest

from ar_ray.engine.config import default_target
from ar_ray.search.policy import Policy, PolicyConfig
from ar_ray.search.simulate import simulate, switched_on, switches
from ar_ray.search.tquantile import t_factor

BASE = {"train.py": "LR = 0.5\nWIDTH = 8\nDEPTH = 2\nSEED = 1\n"}


def edited(files, **changes):
    text = files["train.py"]
    for name, value in changes.items():
        lines = [f"{name} = {value}" if line.startswith(f"{name} = ") else line for line in text.splitlines()]
        text = "\n".join(lines) + "\n"
    return {"train.py": text}


def started(config=PolicyConfig(), metrics=(1.000, 1.002, 0.998), gpu=""):
    p = Policy(config, "min")
    specs = p.start(BASE, "e0")
    repeats = 1 if config.acceptance == "greedy" else config.baseline_repeats
    assert [s.role for s in specs] == ["baseline"] * repeats
    for i, m in enumerate(metrics[: len(specs)]):
        v = p.on_result(f"e{i}", "baseline", "e0", 0, BASE, None, "ok", m, gpu=gpu)
        assert v.decision == "baseline"
    return p


def test_noise_is_pooled_over_groups_of_identical_code():
    p = Policy(PolicyConfig())
    for code, metrics in {"a": [1.0, 2.0, 3.0], "b": [2.0, 4.0], "c": [7.0]}.items():
        for m in metrics:
            p.add_run(code, m)
    assert p.noise() == pytest.approx(math.sqrt((2.0 + 2.0) / 3))
    assert Policy(PolicyConfig()).noise() is None


def test_the_best_is_judged_only_after_its_repeats():
    p = Policy(PolicyConfig())
    p.start(BASE, "e0")
    assert not p.ready
    p.on_result("e0", "baseline", "e0", 0, BASE, None, "ok", 1.0)
    p.on_result("e1", "baseline", "e0", 0, BASE, None, "ok", 1.002)
    assert not p.ready
    p.on_result("e2", "baseline", "e0", 0, BASE, None, "ok", 0.998)
    assert p.ready and p.best_mean == pytest.approx(1.0) and p.noise() == pytest.approx(0.002)


def test_a_screened_candidate_is_confirmed_then_kept_and_the_new_best_gets_its_repeats():
    p = started()
    cand = edited(BASE, LR=0.3)
    v = p.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.990)
    assert v.decision == "screened" and v.numbers["gain"] == pytest.approx(0.010)
    assert [r.role for r in v.runs] == ["confirm", "confirm"] and all(r.group == "e3" for r in v.runs)
    assert p.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.991).decision == "confirming"
    v = p.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.989)
    assert v.decision == "keep" and v.new_best[0] == 1 and v.new_best[1] == cand
    assert v.numbers["group_mean"] == pytest.approx(0.990) and v.numbers["group_n"] == 2  # the lucky screen run is not counted
    # the runs that made it win were selected for passing: R=3 fresh repeats measure the new best, and the deciding
    # runs stand in only until they land
    assert [r.role for r in v.runs] == ["baseline"] * 3 and all(r.group == "e3-b" for r in v.runs)
    assert p.best_version == 1 and p.best_mean == pytest.approx(0.990) and p.ready
    for i, m in enumerate((0.994, 0.996, 0.995)):
        p.on_result(f"e{6 + i}", "baseline", "e3-b", 1, cand, "e3", "ok", m)
    assert p.best_mean == pytest.approx(0.995) and p.best_runs == {0: [(0.994, ""), (0.996, ""), (0.995, "")]}


def test_without_fresh_reference_the_deciding_runs_measure_the_new_best():
    p = started(PolicyConfig(fresh_reference=False))
    cand = edited(BASE, LR=0.3)
    p.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.990)
    p.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.991)
    v = p.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.989)
    assert v.decision == "keep" and [r.role for r in v.runs] == ["baseline"]  # R=3, two confirmation runs: one more
    assert p.best_runs == {0: [(0.991, ""), (0.989, "")]}


def test_bars_widen_by_student_t_while_the_noise_rests_on_few_runs():
    """Three baseline runs give the noise 2 degrees of freedom: a 2-sigma bar at its error rate is 4.53 sigmas."""
    p = started()
    cand = edited(BASE, LR=0.3)
    v = p.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.9955)  # 2.25 sigmas: above 1.32 (t for k=1)
    assert v.decision == "screened" and v.numbers["threshold"] == pytest.approx(1.3213 * 0.002, rel=1e-3)
    p.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.9955)
    v = p.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.9955)
    # the two identical confirmation runs add a degree of freedom: 3, where t is 3.31 for a 2-sigma bar
    assert p._dof[0] == 3 and t_factor(2.0, 3) == pytest.approx(3.3066, rel=1e-3)
    assert v.numbers["threshold"] == pytest.approx(t_factor(2.0, 3) * p.noise() * math.sqrt(1 / 2 + 1 / 3))
    assert v.decision == "confirming"  # too close to call: more runs, and more degrees of freedom
    known = started(PolicyConfig(t_quantiles=False))
    known.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.9955)
    known.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.9955)
    assert known.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.9955).decision == "keep"


def test_noise_is_rejected_at_the_screen_or_at_confirmation():
    p = started()
    assert p.on_result("e3", "screen", None, 0, edited(BASE, LR=0.4), "e0", "ok", 0.999).decision == "discard"
    cand = edited(BASE, LR=0.45)
    assert p.on_result("e4", "screen", None, 0, cand, "e0", "ok", 0.996).decision == "screened"
    p.on_result("e5", "confirm", "e4", 0, cand, "e0", "ok", 1.001)
    v = p.on_result("e6", "confirm", "e4", 0, cand, "e0", "ok", 0.999)
    assert v.decision == "reject" and v.new_best is None and p.best_version == 0
    # a failed confirmation run rejects too
    cand = edited(BASE, LR=0.35)
    p.on_result("e7", "screen", None, 0, cand, "e0", "ok", 0.99)
    p.on_result("e8", "confirm", "e7", 0, cand, "e0", "crash", None)
    assert p.on_result("e9", "confirm", "e7", 0, cand, "e0", "ok", 0.98).decision == "reject"


def test_a_close_call_gets_more_confirmation_runs_before_a_verdict():
    """Sequential confirmation: a mean gain above half the bar but below it earns --confirm-runs more runs,
    up to max_confirm_runs; the verdict then uses them all. A fixed design rejects the same real gain."""
    def close_call(config):
        p = started(config)
        cand = edited(BASE, LR=0.3)
        assert p.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.995).decision == "screened"
        p.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.9975)
        return p, cand, p.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.9975)

    p, cand, v = close_call(PolicyConfig())
    assert 0.5 * v.numbers["threshold"] < v.numbers["gain"] < v.numbers["threshold"]
    assert v.decision == "confirming" and [(r.role, r.group) for r in v.runs] == [("confirm", "e3")] * 2
    p.on_result("e6", "confirm", "e3", 0, cand, "e0", "ok", 0.996)
    v = p.on_result("e7", "confirm", "e3", 0, cand, "e0", "ok", 0.996)
    assert v.decision == "keep" and v.numbers["group_n"] == 4 and v.numbers["group_mean"] == pytest.approx(0.99675)
    # at the cap, a close call is rejected
    p, cand, v = close_call(PolicyConfig())
    p.on_result("e6", "confirm", "e3", 0, cand, "e0", "ok", 0.999)
    v = p.on_result("e7", "confirm", "e3", 0, cand, "e0", "ok", 0.999)
    assert v.decision == "reject" and v.numbers["group_n"] == 4 and not v.runs
    # max_confirm_runs = confirm_runs: the fixed design of two runs decides at once
    _, _, v = close_call(PolicyConfig(max_confirm_runs=2))
    assert v.decision == "reject" and not v.runs


def test_greedy_keeps_any_better_run():
    p = started(PolicyConfig(acceptance="greedy"), metrics=(1.0,))
    v = p.on_result("e1", "screen", None, 0, edited(BASE, LR=0.4), "e0", "ok", 0.9999)
    assert v.decision == "keep" and v.runs == () and p.best_version == 1


def test_a_suspiciously_large_gain_needs_twice_the_confirmation():
    p = started(PolicyConfig(sanity_gain=0.05))
    v = p.on_result("e3", "screen", None, 0, edited(BASE, LR=0.1), "e0", "ok", 0.5)
    assert v.decision == "screened" and len(v.runs) == 4


def test_edits_that_only_touch_seeds_or_evaluation_are_refused():
    p = Policy(PolicyConfig())
    assert "seeds or the evaluation" in p.check_proposal(BASE, edited(BASE, SEED=2))
    ev = {"train.py": BASE["train.py"] + "EVAL_TOKENS = 10\n"}
    assert p.check_proposal(ev, {"train.py": ev["train.py"].replace("EVAL_TOKENS = 10", "EVAL_TOKENS = 1")})
    assert p.check_proposal(BASE, edited(BASE, LR=0.1)) is None
    assert p.check_proposal(BASE, edited(BASE, LR=0.1, SEED=3)) is None  # a real change that also moves the seed


def test_two_concurrent_winners_are_combined_and_a_conflicting_one_is_recorded():
    """On the real GPT target: A and B both improve over v0; A lands first; B is rebased onto A (A+B);
    C changes the same line as A in another way: a conflict."""
    source = (default_target() / "train.py").read_text()
    assert "MATRIX_LR = 0.02 " in source and "WARMDOWN_FRAC = 0.4 " in source
    base = {"train.py": source}
    a = {"train.py": source.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.03 ")}
    b = {"train.py": source.replace("WARMDOWN_FRAC = 0.4 ", "WARMDOWN_FRAC = 0.5 ")}
    c = {"train.py": source.replace("MATRIX_LR = 0.02 ", "MATRIX_LR = 0.01 ")}
    p = Policy(PolicyConfig())
    p.start(base, "e0")
    for i, m in enumerate((1.500, 1.502, 1.498)):
        p.on_result(f"e{i}", "baseline", "e0", 0, base, None, "ok", m)
    # all three were proposed from v0 and screened well
    for eid, files, m in (("a", a, 1.480), ("b", b, 1.485), ("c", c, 1.484)):
        assert p.on_result(eid, "screen", None, 0, files, "e0", "ok", m).decision == "screened"
    p.on_result("a1", "confirm", "a", 0, a, "e0", "ok", 1.481)
    assert p.on_result("a2", "confirm", "a", 0, a, "e0", "ok", 1.479).decision == "keep"
    # B's confirmation concludes after the best moved to A: it is re-applied onto A and re-run
    p.on_result("b1", "confirm", "b", 0, b, "e0", "ok", 1.486)
    v = p.on_result("b2", "confirm", "b", 0, b, "e0", "ok", 1.484)
    assert v.decision == "screened" and {r.role for r in v.runs} == {"rebase"} and len(v.runs) == 2  # confirm_runs fresh runs of the merge (the sequential rule adds more if close)
    merged = v.runs[0].files["train.py"]
    assert "MATRIX_LR = 0.03 " in merged and "WARMDOWN_FRAC = 0.5 " in merged  # the combination
    assert v.runs[0].base_version == 1 and v.runs[0].parent_id == "a"
    compile(merged, "train.py", "exec")
    # C touches MATRIX_LR too: re-applying it onto A conflicts, and that is a decision of its own
    p.on_result("c1", "confirm", "c", 0, c, "e0", "ok", 1.484)
    v = p.on_result("c2", "confirm", "c", 0, c, "e0", "ok", 1.485)
    assert v.decision == "conflict" and "rebase conflict in train.py" in v.numbers["reason"] and not v.runs
    # the combination confirms against A's mean and becomes the best
    combined = {"train.py": merged}
    p.on_result("r1", "rebase", "b", 1, combined, "a", "ok", 1.470)
    v = p.on_result("r2", "rebase", "b", 1, combined, "a", "ok", 1.470)
    assert v.decision == "keep" and v.new_best[1] == combined and p.best_version == 2


def keep_lr_change(p) -> None:
    """Candidate "a" (LR 0.3, made from v0) is screened and confirmed: it becomes best version 1."""
    a = edited(BASE, LR=0.3)
    p.on_result("a", "screen", None, 0, a, "e0", "ok", 0.990)
    p.on_result("a1", "confirm", "a", 0, a, "e0", "ok", 0.990)
    assert p.on_result("a2", "confirm", "a", 0, a, "e0", "ok", 0.990).decision == "keep"


def test_a_stale_candidate_is_screened_against_the_code_it_edited():
    p = started()
    keep_lr_change(p)
    # B was made from v0 and improves it by 0.006, though it is worse than the new best A
    b = edited(BASE, WIDTH=12)
    v = p.on_result("b", "screen", None, 0, b, "e0", "ok", 0.994)
    assert v.numbers["parent_mean"] == pytest.approx(1.0) and v.numbers["gain"] == pytest.approx(0.006)
    assert v.decision == "screened" and v.runs[0].role == "rebase"
    assert "LR = 0.3" in v.runs[0].files["train.py"] and "WIDTH = 12" in v.runs[0].files["train.py"]


def problem(seed: int, n: int = 200, n_real: int = 5):
    rng = random.Random(seed)
    real = set(rng.sample(range(n), n_real))
    effects = [-0.006 if i in real else rng.choice([0.0, 0.0, 0.0005, 0.001, 0.002, 0.004]) for i in range(n)]
    return effects, real


@pytest.mark.parametrize("gpu", ["cpu", "NVIDIA H100 80GB HBM3"])
def test_a_stale_winner_is_still_judged_against_its_parent_when_its_confirmation_ends(gpu):
    """Runs carry their trainer's GPU model: the parent's runs are found on that model (or pooled over all)."""
    p = started(gpu=gpu)
    a, c = edited(BASE, LR=0.3), edited(BASE, WIDTH=12)
    assert p.on_result("a", "screen", None, 0, a, "e0", "ok", 0.990, gpu=gpu).decision == "screened"
    assert p.on_result("c", "screen", None, 0, c, "e0", "ok", 0.994, gpu=gpu).decision == "screened"
    p.on_result("a1", "confirm", "a", 0, a, "e0", "ok", 0.990, gpu=gpu)
    assert p.on_result("a2", "confirm", "a", 0, a, "e0", "ok", 0.990, gpu=gpu).decision == "keep"
    p.on_result("c1", "confirm", "c", 0, c, "e0", "ok", 0.994, gpu=gpu)
    # worse than the new best (0.990), but 0.006 better than the code it edited: rebased, not rejected
    v = p.on_result("c2", "confirm", "c", 0, c, "e0", "ok", 0.994, gpu=gpu)
    assert v.numbers["parent_mean"] == pytest.approx(1.0) and v.decision == "screened"
    assert {r.role for r in v.runs} == {"rebase"}
    # on a GPU model the parent never ran on, its runs on every model stand in
    assert p.on_result("d", "screen", None, 0, edited(BASE, DEPTH=3), "e0", "ok", 0.994,
                       gpu="L4").numbers["parent_mean"] == pytest.approx(1.0)


def test_with_16_parallel_noisy_trainers_the_policy_finds_real_gains_and_greedy_accepts_noise():
    """200 candidates, 5 real improvements of 3 x noise, noise sd 0.002, 16 trainers, 5 problem seeds."""
    totals = {"confirm": [0, 0], "greedy": [0, 0]}
    for seed in range(5):
        effects, real = problem(seed)
        for mode in totals:
            r = simulate(PolicyConfig(acceptance=mode), effects, trainers=16, noise=0.002, seed=seed)
            totals[mode][0] += len([c for c in r.accepted if c not in real])
            totals[mode][1] += len(real & r.final_on)
    print(f"\nfalse accepts / real gains kept (of 25): confirm {totals['confirm']}, greedy {totals['greedy']}")
    false_confirm, real_confirm = totals["confirm"]
    false_greedy, _ = totals["greedy"]
    assert false_confirm <= 2  # at most 2 false accepts over 1,000 candidates
    assert real_confirm >= 15  # most real gains found (each is only 3 noise-sigmas)
    assert false_greedy >= 20 * max(1, false_confirm)


def test_simulated_switches_roundtrip():
    assert switched_on(switches(5, {1, 3})) == {1, 3}


# -- the promotion ladder and mixed hardware ---------------------------------------------------

LADDER = PolicyConfig(rungs=2, promote_fraction=0.5, confirm_runs=2, t_quantiles=False, fresh_reference=False)  # bars as if the noise were known


def laddered(config=LADDER, small=(2.000, 2.010, 1.990), full=(1.000, 1.002, 0.998)):
    """A policy whose best has its repeats at both rungs (rung 0: metric ~2.0, rung 1: ~1.0)."""
    p = Policy(config, "min")
    specs = p.start(BASE, "e0")
    assert sorted((s.rung, s.group) for s in specs) == [(0, "e0-r0")] * 3 + [(1, "e0")] * 3
    for rung, group, metrics in ((1, "e0", full), (0, "e0-r0", small)):
        for m in metrics:
            assert not p.ready
            p.on_result("b", "baseline", group, 0, BASE, None, "ok", m, rung)
    assert p.ready and p.mean_at(0) == pytest.approx(2.0) and p.best_mean == pytest.approx(1.0)
    assert p.noise(0) == pytest.approx(0.01) and p.noise(1) == pytest.approx(0.002)
    return p


def test_the_ladder_screens_at_the_cheap_rung_and_promotes_only_the_top_fraction():
    p = laddered()
    # beats rung 0's best (2.0) by 0.05 > k x noise(0): the first result seen, so in the top half: promoted
    v = p.on_result("e1", "screen", None, 0, edited(BASE, LR=0.3), "e0", "ok", 1.95, 0)
    assert v.decision == "promoted" and [(s.role, s.rung, s.group) for s in v.runs] == [("promote", 1, "e1")] * 2
    # a loser is not promoted
    assert p.on_result("e2", "screen", None, 0, edited(BASE, LR=0.4), "e0", "ok", 2.02, 0).decision == "discard"
    # above the noise threshold but not in the top half of the 3 gains seen so far
    v = p.on_result("e3", "screen", None, 0, edited(BASE, LR=0.35), "e0", "ok", 1.985, 0)
    assert v.decision == "discard" and v.numbers["rank"] == 1 and v.numbers["seen"] == 3
    # the promoted candidate is judged at the full rung against the best's full-scale mean
    assert p.on_result("e4", "promote", "e1", 0, edited(BASE, LR=0.3), "e0", "ok", 0.990, 1).decision == "confirming"
    v = p.on_result("e5", "promote", "e1", 0, edited(BASE, LR=0.3), "e0", "ok", 0.991, 1)
    assert v.decision == "keep" and v.numbers["group_mean"] == pytest.approx(0.9905)
    # the new best is measured again at the cheap rung; until those runs land, the earlier best's stand in there
    assert sorted((s.rung, s.role) for s in v.runs) == [(0, "baseline")] * 3 + [(1, "baseline")]
    assert p.best_runs == {1: [(0.990, ""), (0.991, "")]} and p.ready and p.mean_at(0) == pytest.approx(2.0)


def test_a_promoted_candidate_that_does_not_hold_at_full_scale_is_rejected():
    p = laddered()
    assert p.on_result("e1", "screen", None, 0, edited(BASE, LR=0.3), "e0", "ok", 1.90, 0).decision == "promoted"
    p.on_result("e2", "promote", "e1", 0, edited(BASE, LR=0.3), "e0", "ok", 1.001, 1)
    v = p.on_result("e3", "promote", "e1", 0, edited(BASE, LR=0.3), "e0", "ok", 0.999, 1)
    assert v.decision == "reject" and p.best_version == 0


def test_three_rungs_promote_one_run_at_a_time_until_the_top():
    p = Policy(PolicyConfig(rungs=3, promote_fraction=1.0, baseline_repeats=2, confirm_runs=2), "min")
    for s in p.start(BASE, "e0"):
        p.on_result("b", "baseline", s.group, 0, BASE, None, "ok", {0: 3.0, 1: 2.0, 2: 1.0}[s.rung]
                    + (0.001 if s.group.endswith("x") else 0.0) + 0.002 * p.groups[s.group].waiting, s.rung)
    assert p.ready
    v = p.on_result("e1", "screen", None, 0, edited(BASE, LR=0.3), "e0", "ok", 2.9, 0)
    assert [(s.rung, s.role) for s in v.runs] == [(1, "promote")]
    v = p.on_result("e2", "promote", "e1", 0, edited(BASE, LR=0.3), "e0", "ok", 1.9, 1)
    assert v.decision == "promoted" and [(s.rung, s.role) for s in v.runs] == [(2, "promote")] * 2


def test_results_are_compared_with_the_best_on_the_same_gpu_model():
    p = Policy(PolicyConfig(baseline_repeats=4), "min")
    p.start(BASE, "e0")
    for m, gpu in ((1.000, "A100"), (1.002, "A100"), (0.800, "H100"), (0.802, "H100")):
        p.on_result("b", "baseline", "e0", 0, BASE, None, "ok", m, None, gpu)
    assert p.noise() == pytest.approx(math.sqrt(2 * 0.001**2 * 2 / 2))  # within each model, pooled
    on_h100 = p.on_result("e1", "screen", None, 0, edited(BASE, LR=0.3), "e0", "ok", 0.795, None, "H100")
    assert on_h100.numbers["best_mean"] == pytest.approx(0.801) and on_h100.decision == "screened"
    # 0.95 on an A100 is a big gain over the A100 runs, although worse than the H100 runs
    on_a100 = p.on_result("e2", "screen", None, 0, edited(BASE, LR=0.4), "e0", "ok", 0.95, None, "A100")
    assert on_a100.numbers["best_mean"] == pytest.approx(1.001) and on_a100.decision == "screened"
    # a model never seen with the best falls back to all of the best's runs
    other = p.on_result("e3", "screen", None, 0, edited(BASE, LR=0.2), "e0", "ok", 0.95, None, "L4")
    assert other.numbers["best_mean"] == pytest.approx(0.901)


def test_a_ladder_on_a_noisy_proxy_spends_fewer_gpu_hours_and_stays_clean():
    """1-minute screens with twice the noise, the top quarter promoted to full runs: the same 5 problem streams
    cost far fewer GPU-hours, real gains are still found and false accepts stay rare."""
    full, ladder = {"gpu": 0.0, "real": 0, "false": 0}, {"gpu": 0.0, "real": 0, "false": 0}
    for seed in range(5):
        effects, real = problem(seed)
        for out, config, extra in ((full, PolicyConfig(), {}),
                                   (ladder, PolicyConfig(rungs=2), {"rungs": [(0.2, 0.004), (1.0, 0.002)]})):
            r = simulate(config, effects, trainers=16, noise=0.002, seed=seed, **extra)
            out["gpu"] += r.gpu_hours
            out["real"] += len(real & r.final_on)
            out["false"] += len([c for c in r.accepted if c not in real])
    print(f"\nGPU-hours / real kept / false accepts: full {full}, ladder {ladder}")
    assert ladder["gpu"] < 0.6 * full["gpu"]
    assert ladder["real"] >= 5 and ladder["false"] <= 2


def test_a_promotion_in_flight_at_a_middle_rung_survives_a_new_best():
    """Three rungs: a candidate promoted to rung 1 concludes there after another one was accepted, before the new
    best's own rung-1 repeats landed. It is judged against the earlier best's rung-1 runs (this raised KeyError)."""
    p = Policy(PolicyConfig(rungs=3, promote_fraction=1.0, baseline_repeats=2, confirm_runs=2), "min")
    for s in p.start(BASE, "e0"):
        p.on_result("b", "baseline", s.group, 0, BASE, None, "ok", {0: 3.0, 1: 2.0, 2: 1.0}[s.rung]
                    + 0.002 * p.groups[s.group].waiting, s.rung)
    a, b = edited(BASE, LR=0.3), edited(BASE, WIDTH=12)
    assert p.on_result("e1", "screen", None, 0, a, "e0", "ok", 2.9, 0).decision == "promoted"  # a: to rung 1
    assert p.on_result("e2", "screen", None, 0, b, "e0", "ok", 2.8, 0).decision == "promoted"  # b: to rung 1
    assert p.on_result("e3", "promote", "e2", 0, b, "e0", "ok", 1.8, 1).decision == "promoted"  # b: to the top
    p.on_result("e4", "promote", "e2", 0, b, "e0", "ok", 0.8, 2)
    v = p.on_result("e5", "promote", "e2", 0, b, "e0", "ok", 0.8, 2)
    assert v.decision == "keep" and 1 not in p.best_runs  # b's rung-1 repeats are still to come
    v = p.on_result("e6", "promote", "e1", 0, a, "e0", "ok", 1.9, 1)  # a concludes at rung 1 now
    assert v.decision == "promoted" and v.numbers["best_mean"] == pytest.approx(2.003)  # the earlier best's rung 1
    assert [(s.rung, s.role) for s in v.runs] == [(2, "promote")] * 2
    # once the new best's own rung-1 repeats land, they are the reference
    gid = next(g for g, grp in p.groups.items() if grp.role == "baseline" and grp.rung == 1)
    p.on_result("e7", "baseline", gid, 1, b, "e2", "ok", 1.7, 1)
    p.on_result("e8", "baseline", gid, 1, b, "e2", "ok", 1.7, 1)
    assert p.mean_at(1) == pytest.approx(1.7)


def test_more_confirmation_runs_never_exceed_the_cap():
    p = started(PolicyConfig(confirm_runs=3, max_confirm_runs=4))
    cand = edited(BASE, LR=0.3)
    assert p.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.995).decision == "screened"
    for i, m in enumerate((0.9975, 0.9975)):
        p.on_result(f"e{4 + i}", "confirm", "e3", 0, cand, "e0", "ok", m)
    v = p.on_result("e6", "confirm", "e3", 0, cand, "e0", "ok", 0.9985)
    assert v.decision == "confirming" and len(v.runs) == 1  # 3 + 1 = 4, not 3 + 3


def test_with_rescreen_a_close_call_at_the_cheap_rung_gets_one_more_run_there():
    p = laddered(PolicyConfig(rungs=2, promote_fraction=0.5, confirm_runs=2, rescreen=True, t_quantiles=False, fresh_reference=False))
    a, b = edited(BASE, LR=0.3), edited(BASE, LR=0.35)
    v = p.on_result("e1", "screen", None, 0, a, "e0", "ok", 1.994, 0)  # gain 0.006: above half of k x noise (0.01)
    assert v.decision == "confirming" and [(s.role, s.rung, s.group) for s in v.runs] == [("promote", 0, "e1")]
    v = p.on_result("e2", "promote", "e1", 0, a, "e0", "ok", 1.986, 0)  # the mean of both runs, 1.99, decides
    assert v.decision == "promoted" and v.numbers["gain"] == pytest.approx(0.01)
    assert [(s.rung, s.role) for s in v.runs] == [(1, "promote")] * 2
    assert p.rung_gains[0] == [pytest.approx(0.006)]  # the second look is not a new result at the rung
    assert p.on_result("e3", "screen", None, 0, b, "e0", "ok", 1.9999, 0).decision == "discard"  # not close
    v = p.on_result("e4", "screen", None, 0, edited(BASE, WIDTH=12), "e0", "ok", 1.994, 0)
    assert v.decision == "confirming"
    v = p.on_result("e5", "promote", "e4", 0, edited(BASE, WIDTH=12), "e0", "ok", 2.01, 0)
    assert v.decision == "discard" and not v.runs  # one more run, once


# -- regressions ---------------------------------------------------------------------------------


def test_after_a_keep_on_a_ladder_screens_are_judged_even_if_the_new_bests_cheap_repeats_never_land():
    """`ready` looks at the runs a judgement uses (`runs_at`): the earlier best's cheap-rung runs stand in until
    the new best's land. It looked at the new best's own runs only, so when they all failed it stayed False and a
    driver holding screens until `ready` waited forever."""
    p = laddered()
    a = edited(BASE, LR=0.3)
    assert p.on_result("e1", "screen", None, 0, a, "e0", "ok", 1.95, 0).decision == "promoted"
    p.on_result("e2", "promote", "e1", 0, a, "e0", "ok", 0.990, 1)
    v = p.on_result("e3", "promote", "e1", 0, a, "e0", "ok", 0.991, 1)
    assert v.decision == "keep" and p.ready
    for i, s in enumerate(s for s in v.runs if s.rung == 0):  # the new best's cheap repeats all crash
        p.on_result(f"f{i}", "baseline", s.group, 1, a, "e1", "crash", None, 0)
    assert p.ready and p.mean_at(0) == pytest.approx(2.0)
    v = p.on_result("e9", "screen", None, 1, edited(a, WIDTH=12), "e1", "ok", 1.9, 0)
    assert v.decision == "promoted" and v.numbers["best_mean"] == pytest.approx(2.0)


def test_on_a_mixed_cluster_each_confirmation_run_is_judged_on_its_own_gpu_model():
    """The best ran on two H100s and one A100. A candidate worse on both models was kept: the mean of its H100 and
    A100 runs was compared with the best's A100 run alone (the model of the group's last run)."""
    p = Policy(PolicyConfig(t_quantiles=False, fresh_reference=False), "min")
    p.start(BASE, "e0")
    for m, gpu in ((0.900, "H100"), (0.910, "H100"), (1.000, "A100")):
        p.on_result("b", "baseline", "e0", 0, BASE, None, "ok", m, None, gpu)
    worse = edited(BASE, LR=0.3)
    assert p.on_result("e1", "screen", None, 0, worse, "e0", "ok", 0.880, None, "H100").decision == "screened"
    p.on_result("e2", "confirm", "e1", 0, worse, "e0", "ok", 0.915, None, "H100")  # 0.010 worse than the H100 mean
    v = p.on_result("e3", "confirm", "e1", 0, worse, "e0", "ok", 1.010, None, "A100")  # 0.010 worse than the A100 run
    assert v.decision == "reject" and v.numbers["gain"] == pytest.approx(-0.010)
    # the reference weighs each H100 run 1/4 and the A100 run 1/2: its variance is 2/16 + 1/4 of noise²
    assert v.numbers["threshold"] == pytest.approx(2.0 * p.noise() * math.sqrt(1 / 2 + 3 / 8))
    # better on both models: kept
    better = edited(BASE, WIDTH=12)
    assert p.on_result("e4", "screen", None, 0, better, "e0", "ok", 0.880, None, "H100").decision == "screened"
    p.on_result("e5", "confirm", "e4", 0, better, "e0", "ok", 0.880, None, "H100")
    v = p.on_result("e6", "confirm", "e4", 0, better, "e0", "ok", 0.980, None, "A100")
    assert v.decision == "keep" and v.numbers["gain"] == pytest.approx(0.0225)


def test_a_confirmation_of_one_run_faces_k_confirm_standard_errors_not_the_screens_bar():
    """With --confirm-runs 1, a lone confirmation run (or a lone top-rung promotion run) was judged by the screen's
    k x noise, since the bar was inferred from n == 1; it is a mean of one run: k_confirm standard errors."""
    p = started(PolicyConfig(confirm_runs=1, max_confirm_runs=1, t_quantiles=False, fresh_reference=False))
    noise, cand = p.noise(), edited(BASE, LR=0.3)
    gain = 1.5 * noise  # above the screen's k x noise, below 2 standard errors of one run against three
    v = p.on_result("e3", "screen", None, 0, cand, "e0", "ok", p.best_mean - gain)
    assert v.decision == "screened" and v.numbers["threshold"] == pytest.approx(noise)
    v = p.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", p.best_mean - gain)
    assert v.decision == "reject" and v.numbers["threshold"] == pytest.approx(2 * noise * math.sqrt(1 + 1 / 3))
    # the same at the top rung of a ladder
    p = laddered(PolicyConfig(rungs=2, promote_fraction=0.5, confirm_runs=1, max_confirm_runs=1, t_quantiles=False, fresh_reference=False))
    assert p.on_result("e1", "screen", None, 0, cand, "e0", "ok", 1.95, 0).decision == "promoted"
    v = p.on_result("e2", "promote", "e1", 0, cand, "e0", "ok", p.best_mean - 1.5 * p.noise(1), 1)
    assert v.decision == "reject" and v.numbers["threshold"] == pytest.approx(2 * p.noise(1) * math.sqrt(1 + 1 / 3))


def test_a_rebase_that_leaves_only_a_seed_change_is_refused_like_a_conflict():
    """Made from v0 and changing only SEED, a stale candidate passes a check against the newer best v1 (the diff
    also undoes v1's change); re-applied onto v1 it is a seed change alone. The merge was never checked."""
    p = started()
    keep_lr_change(p)
    seed_only = edited(BASE, SEED=7)
    assert p.check_proposal(p.files_at(1), seed_only) is None  # against the best: looks like a real change
    assert p.check_proposal(p.files_at(0), seed_only)  # against the version it was made from: refused
    assert p.files_at(2) is None
    v = p.on_result("s", "screen", None, 0, seed_only, "e0", "ok", 0.994)
    assert v.decision == "conflict" and not v.runs and "s" not in p.groups
    assert "merged onto the current best" in v.numbers["reason"] and "seeds or the evaluation" in v.numbers["reason"]


def test_near_misses_are_combined_and_the_combination_faces_the_confirmation_bar():
    """Three changes each rejected with a small positive mean gain: together on the best, on fresh runs, they win."""
    p = started(PolicyConfig(t_quantiles=False))
    near = []
    for i, change in enumerate(({"LR": 0.3}, {"WIDTH": 12}, {"DEPTH": 3})):
        cand, e = edited(BASE, **change), 10 * (i + 1)
        assert p.on_result(f"e{e}", "screen", None, 0, cand, "e0", "ok", 0.995).decision == "screened"
        p.on_result(f"e{e + 1}", "confirm", f"e{e}", 0, cand, "e0", "ok", 0.9995)
        v = p.on_result(f"e{e + 2}", "confirm", f"e{e}", 0, cand, "e0", "ok", 0.9995)  # gain 0.0005: far below the bar
        assert v.decision == "reject"
        near.append(f"e{e}")
    combo = edited(BASE, LR=0.3, WIDTH=12, DEPTH=3)
    assert [(s.role, s.files) for s in v.runs] == [("confirm", combo)] * 2  # all three changes, on the best
    gid = v.runs[0].group
    assert sorted(gid.split("+")) == near and "near-misses" in v.runs[0].note and not p.near
    p.on_result("e40", "confirm", gid, 0, combo, "e0", "ok", 0.990)
    v = p.on_result("e41", "confirm", gid, 0, combo, "e0", "ok", 0.990)
    assert v.decision == "keep" and p.best_files == combo
    # a rejected candidate with a negative mean gain is no near-miss; combine=0 turns the pooling off
    q = started(PolicyConfig(combine=0))
    cand = edited(BASE, LR=0.3)
    q.on_result("e3", "screen", None, 0, cand, "e0", "ok", 0.990)
    q.on_result("e4", "confirm", "e3", 0, cand, "e0", "ok", 0.9995)
    assert q.on_result("e5", "confirm", "e3", 0, cand, "e0", "ok", 0.9995).decision == "reject" and not q.near


def test_greedy_rebases_a_stale_winner_instead_of_undoing_the_changes_kept_since():
    """Greedy kept a candidate made from an older best whole: the change kept in between (here LR) was lost."""
    p = started(PolicyConfig(acceptance="greedy"))
    lr = edited(BASE, LR=0.3)
    assert p.on_result("e1", "screen", None, 0, lr, "e0", "ok", 0.99).decision == "keep" and p.best_version == 1
    depth = edited(BASE, DEPTH=3)  # made from v0, before the LR change was kept
    v = p.on_result("e2", "screen", None, 0, depth, "e0", "ok", 0.98)
    assert v.decision == "screened" and p.best_files == lr  # not kept wholesale
    both = edited(BASE, LR=0.3, DEPTH=3)
    assert [(s.role, s.files, s.base_version) for s in v.runs] == [("rebase", both, 1)]  # one run of the merge
    v = p.on_result("e3", "rebase", "e2", 1, both, "e1", "ok", 0.985)
    assert v.decision == "keep" and p.best_files == both  # LR stays
    # a merge that does not beat the best is rejected, and the best keeps its files
    wide = edited(BASE, WIDTH=12)
    v = p.on_result("e4", "screen", None, 0, wide, "e0", "ok", 0.97)
    v = p.on_result("e5", "rebase", "e4", 2, v.runs[0].files, "e3", "ok", 0.99)
    assert v.decision == "reject" and p.best_files == both


def test_a_deterministic_target_is_recognised_and_runs_each_candidate_once():
    p = started(metrics=(1.0, 1.0, 1.0))  # three seeds, one metric: the target ignores its seed
    assert p.deterministic and p.ready
    assert p.on_result("e3", "screen", None, 0, edited(BASE, LR=0.4), "e0", "ok", 1.0).decision == "discard"
    v = p.on_result("e4", "screen", None, 0, edited(BASE, LR=0.3), "e0", "ok", 0.9999)  # any strict gain
    assert v.decision == "keep" and not v.runs and p.best_mean == pytest.approx(0.9999)  # no repeats: none tell more
    # a noisy target is not taken for a deterministic one, and a restore finds it again from the ledger's runs
    assert not started().deterministic
    q = Policy(PolicyConfig())
    q.restore(0, {0: BASE}, "e0", {0: [(1.0, "")] * 3}, {(_hash(BASE), 0, ""): [1.0, 1.0, 1.0]})
    assert q.deterministic


def _hash(files):
    from ar_ray.code.codehash import code_hash
    return code_hash(files)
