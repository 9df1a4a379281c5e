"""Scaling-law fits and the holds/shrinks/flips verdict, on synthetic runs whose answers are known."""

import math

import numpy as np
import pandas as pd
import pytest

from ar_ray.transfer import gains as G
from ar_ray.transfer import scaling as S

E_TRUE, A_TRUE, ALPHA_TRUE = 0.8, 1.2e4, 0.3
COMPUTE = np.geomspace(1e15, 1e18, 7)


def law(c):
    return E_TRUE + A_TRUE * np.asarray(c) ** -ALPHA_TRUE


def noisy_runs(seed=0, repeats=4, sd=0.005):
    c = np.repeat(COMPUTE, repeats)
    return c, law(c) + np.random.default_rng(seed).normal(0, sd, c.size)


def test_flops_from_summary():
    assert S.flops(10.0, 200.0) == pytest.approx(6 * 10e6 * 200e6)


def test_noiseless_fit_recovers_parameters():
    fit = S.fit_power_law(COMPUTE, law(COMPUTE), bootstrap=0)
    assert fit.E == pytest.approx(E_TRUE, rel=1e-3)
    assert fit.A == pytest.approx(A_TRUE, rel=1e-3)
    assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=1e-3)
    assert fit.rmse < 1e-9
    assert fit.ci_method == "none" and fit.alpha_ci == (fit.alpha, fit.alpha)
    assert fit.predict(1e19) == pytest.approx(float(law(1e19)), rel=1e-6)


def test_noisy_fit_intervals_contain_truth():
    c, l = noisy_runs(seed=0)
    fit = S.fit_power_law(c, l, bootstrap=200, seed=0)
    assert fit.n_points == 7 and fit.n_runs == 28 and fit.ci_method == "within-scale"
    assert fit.bootstrap >= 190
    assert fit.alpha_ci[0] <= ALPHA_TRUE <= fit.alpha_ci[1]
    assert fit.E_ci[0] <= E_TRUE <= fit.E_ci[1]
    assert fit.A_ci[0] <= A_TRUE <= fit.A_ci[1]
    assert fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]
    # informative, not vacuous: noise sd 0.005 on losses ~0.8-1.2 over three decades of compute
    assert 0 < fit.alpha_ci[1] - fit.alpha_ci[0] < 0.1
    assert 0 < fit.E_ci[1] - fit.E_ci[0] < 0.05
    assert fit.rmse == pytest.approx(0.005, rel=0.4)
    assert "alpha" in fit.describe() and fit.to_dict()["n_runs"] == 28
    again = S.fit_power_law(c, l, bootstrap=200, seed=0)
    assert again == fit  # deterministic for a seed


def test_groups_label_scale_points():
    c, l = noisy_runs(seed=1)
    jitter = c * (1 + 1e-4 * np.tile([0, 1, 2, 3], 7))  # real runs' token counts differ slightly
    labels = np.repeat([f"d{k}" for k in range(7)], 4)
    fit = S.fit_power_law(jitter, l, groups=labels, bootstrap=50)
    assert fit.n_points == 7 and fit.ci_method == "within-scale"
    ungrouped = S.fit_power_law(jitter, l, bootstrap=50)
    assert ungrouped.n_points == 28 and ungrouped.ci_method == "residual"
    with pytest.raises(ValueError, match="label every run"):
        S.fit_power_law(c, l, groups=labels[:-1])


def test_no_repeats_falls_back_to_residual_bootstrap():
    c = COMPUTE
    l = law(c) + np.random.default_rng(2).normal(0, 0.003, c.size)
    fit = S.fit_power_law(c, l, bootstrap=100)
    assert fit.ci_method == "residual"
    assert fit.alpha_ci[1] > fit.alpha_ci[0]


@pytest.mark.parametrize("compute, loss, match", [
    ([1e15, 1e16], [1.0, 0.9], "at least 3 distinct compute"),
    ([1e15, 1e15, 1e16, 1e16], [1.0, 1.01, 0.9, 0.91], "at least 3 distinct compute"),
    ([1e15, 0.0, 1e17], [1.0, 0.9, 0.85], "positive"),
    ([1e15, 1e16, 1e17], [1.0, -0.9, 0.85], "positive"),
    ([1e15, 1e16, 1e17], [1.0, np.nan, 0.85], "finite"),
    ([1e15, 1e16, 1e17], [1.0, 0.9], "one value per run"),
    ([1e15, 1e16, 1e17], [0.8, 0.9, 1.0], "does not fall"),
])
def test_fit_rejects_bad_input(compute, loss, match):
    with pytest.raises(ValueError, match=match):
        S.fit_power_law(compute, loss, bootstrap=0)


# Found by fuzzing: a bootstrap replicate of these four runs fits a steep alpha, whose A = exp(log A) is beyond
# float range (this used to raise OverflowError out of the fit, and out of `ar-ray sweep --analyze`).
STEEP_C = [272008215432445.7, 553464943188196.8, 572515329852248.6, 662494474453519.8]
STEEP_L = [4.7045, 4.2915, 4.3259, 4.1809]


def test_a_replicate_with_a_steep_alpha_does_not_crash_the_fit():
    fit = S.fit_power_law(STEEP_C, STEEP_L, bootstrap=100)
    assert fit.ci_method == "residual" and fit.bootstrap + fit.bootstrap_failed == 100
    assert math.isfinite(fit.A) and math.isfinite(fit.alpha) and math.isfinite(fit.E)
    assert fit.alpha_ci[0] <= fit.alpha <= fit.alpha_ci[1]
    assert fit.alpha_ci[1] > 10  # the steep replicates count: four runs over 0.4 decades do not pin alpha down
    assert fit.A_ci[1] == math.inf  # ... and their A is beyond float range
    assert "95% CI" in fit.describe()


def test_a_diverging_main_fit_is_a_value_error():
    with pytest.raises(ValueError, match="diverged"):
        S.fit_power_law([437155125498.1, 851543319609.1244, 886553952828.8069], [4.0479, 2.9802, 2.9898],
                        bootstrap=0)


def test_too_many_failed_refits_make_the_interval_unavailable(monkeypatch):
    real, calls = S._fit, []

    def flaky(c, l, x0):
        calls.append(1)
        if len(calls) > 1 and len(calls) % 3 == 0:
            raise OverflowError("math range error")
        return real(c, l, x0)

    monkeypatch.setattr(S, "_fit", flaky)
    c, l = noisy_runs(seed=0)
    fit = S.fit_power_law(c, l, bootstrap=60)
    assert fit.ci_method == "unavailable" and fit.bootstrap_failed == 20 and fit.bootstrap == 40
    assert all(math.isnan(v) for v in (*fit.alpha_ci, *fit.E_ci, *fit.A_ci))
    assert "CI unavailable: 20 of 60 bootstrap refits failed" in fit.describe()
    assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=0.1)  # the point estimate stands


def test_fit_fuzz_raises_nothing_but_value_error():
    """Random small sweeps (fixed seeds): a fit either succeeds with finite point estimates or is a ValueError.
    Seed 0 gives five sweeps whose bootstrap used to raise OverflowError."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        cs = 10 ** rng.uniform(11, 16) * 10 ** np.sort(rng.uniform(0, rng.uniform(0.3, 3), rng.integers(3, 7)))
        L = rng.uniform(0.5, 2) + rng.uniform(0.2, 3) * (cs / cs[0]) ** -rng.uniform(0.05, 0.8)
        reps = int(rng.integers(1, 4))
        c = np.repeat(cs, reps)
        l = np.repeat(L, reps) + rng.normal(0, rng.uniform(0.001, 0.05), c.size)
        try:
            fit = S.fit_power_law(c, l, bootstrap=20, seed=int(rng.integers(1000)))
        except ValueError:
            continue
        assert math.isfinite(fit.E) and math.isfinite(fit.A) and math.isfinite(fit.alpha)
        assert fit.bootstrap + fit.bootstrap_failed == 20
        fit.describe()


def test_sweep_analysis_survives_a_steep_replicate(tmp_path):
    from ar_ray.ledger import store as ledger
    from ar_ray.transfer import sweep_analysis as SA

    rows = [{"experiment_id": f"base-c{k}-r0", "group_id": "base", "role": "sweep", "status": "ok", "metric": l,
             "knobs": {"compute": repr(c)}, "run_id": "x"} for k, (c, l) in enumerate(zip(STEEP_C, STEEP_L))]
    ledger.Ledger(tmp_path).append(rows)
    out = SA.analyze(ledger.load(tmp_path), tmp_path, bootstrap=100, plots=False)
    assert out["error"] is None
    v = out["variants"]["base"]
    assert v["fit_error"] is None and v["fit"]["A_ci"][1] is None  # inf is null in sweep.json
    assert "base: alpha" in "\n".join(SA.describe(out))
    assert (tmp_path / "sweep.json").stat().st_size > 0


def test_sweep_analysis_reports_an_arithmetic_error_as_a_fit_error(tmp_path, monkeypatch):
    from ar_ray.ledger import store as ledger
    from ar_ray.transfer import sweep_analysis as SA

    def overflow(*a, **k):
        raise OverflowError("math range error")

    monkeypatch.setattr(SA.scaling, "fit_power_law", overflow)
    rows = [{"experiment_id": f"base-c{k}-r0", "group_id": "base", "role": "sweep", "status": "ok", "metric": l,
             "knobs": {"compute": repr(c)}, "run_id": "x"} for k, (c, l) in enumerate(zip(STEEP_C, STEEP_L))]
    ledger.Ledger(tmp_path).append(rows)
    out = SA.analyze(ledger.load(tmp_path), bootstrap=10, plots=False)
    v = out["variants"]["base"]
    assert v["fit"] is None and v["fit_error"] == "math range error"
    assert "base: no fit: math range error" in SA.describe(out)


def test_t_quantiles():
    assert G.t975(1) == pytest.approx(12.706, abs=1e-3)
    assert G.t975(3) == pytest.approx(3.182, abs=1e-3)
    assert G.t975(10) == pytest.approx(2.228, abs=1e-3)
    assert G.t975(float("inf")) == pytest.approx(1.960, abs=1e-3)
    assert G.t975(3) > G.t975(3.5) > G.t975(4)


# ---------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------

SCALES = [("s1", 1e15), ("s2", 1e16), ("s3", 1e17), ("s4", 1e18)]
WOBBLE_A = np.array([0.002, -0.002, 0.001, -0.001])  # deterministic repeat-to-repeat spread, sd ~0.0018
WOBBLE_B = np.array([-0.001, 0.002, -0.002, 0.001])


def variants(gains, wobble=1.0):
    """Runs of A and B at the four scales, B's mean loss `gain` below A's at each."""
    a, b = [], []
    for (label, c), g in zip(SCALES, gains):
        base = float(law(c))
        a += [(label, c, base + wobble * w) for w in WOBBLE_A]
        b += [(label, c, base - g + wobble * w) for w in WOBBLE_B]
    return a, b


def test_verdict_holds():
    cmp = G.compare(*variants([0.02, 0.02, 0.02, 0.02]))
    assert cmp.verdict == "holds"
    assert [r.label for r in cmp.rows] == ["s1", "s2", "s3", "s4"]
    assert all(r.lo > 0 and r.n_a == 4 and r.n_b == 4 for r in cmp.rows)
    assert abs(cmp.slope) < 2 * cmp.slope_se


def test_verdict_holds_when_the_fall_keeps_half():
    cmp = G.compare(*variants([0.040, 0.037, 0.034, 0.031]))
    assert cmp.slope + 1.96 * cmp.slope_se < 0  # falls significantly ...
    assert cmp.verdict == "holds"  # ... but keeps more than half its relative size


def test_verdict_shrinks():
    cmp = G.compare(*variants([0.04, 0.03, 0.02, 0.01]))
    assert cmp.verdict == "shrinks"
    assert cmp.slope == pytest.approx(-0.01, rel=0.05)
    assert cmp.rows[-1].lo > 0  # still clearly ahead, but a quarter of what it was


def test_verdict_flips():
    cmp = G.compare(*variants([0.02, 0.01, 0.0, -0.02]))
    assert cmp.verdict == "flips"
    assert cmp.rows[0].lo > 0 and cmp.rows[-1].hi < 0


def test_verdict_unclear_with_huge_noise():
    cmp = G.compare(*variants([0.02, 0.02, 0.02, 0.02], wobble=100.0))
    assert cmp.verdict == "unclear"
    assert all(r.lo < 0 < r.hi for r in cmp.rows)


def test_compare_edge_cases():
    a, b = variants([0.02, 0.02, 0.02, 0.02])
    one = G.compare([r for r in a if r[0] == "s1"], b)
    assert one.verdict == "unclear" and len(one.rows) == 1 and math.isnan(one.slope)
    single = G.compare([r for r in a if r[2] == max(x[2] for x in a if x[0] == r[0])], b)  # one A run per scale
    assert all(math.isinf(r.se) for r in single.rows) and single.verdict == "unclear"
    frame = G.compare(pd.DataFrame(a, columns=["scale", "compute", "loss"]),
                      [{"scale": s, "compute": c, "loss": l} for s, c, l in b])
    assert frame.verdict == "holds"
    with pytest.raises(ValueError, match="share no scale"):
        G.compare([("x", 1e15, 1.0)], [("y", 1e15, 1.0)])
    text = G.compare(a, b).describe()
    assert "verdict: holds" in text and "s4" in text


# ---------------------------------------------------------------------------
# compute-optimal tokens per parameter
# ---------------------------------------------------------------------------


def chinchilla_grid(depth=False):
    """L = E + a / N^0.3 + b / D^0.3 with b chosen so the compute-optimal D/N is exactly 20; model sizes and
    token budgets both double, so configurations on an anti-diagonal share their compute exactly."""
    a, e = 1.0, 0.8
    b = a * 20 ** 0.3
    rows = []
    for k, n in enumerate(2.0 ** np.arange(6)):  # 1..32 M params
        for d in 5 * 2.0 ** np.arange(9):  # 5..1280 M tokens: ratios 5/32 .. 1280
            loss = e + a / n ** 0.3 + b / d ** 0.3
            rows.append({"num_params_M": n, "total_tokens_M": d, "val_bpb": loss, "status": "ok",
                         **({"depth": 2 + 2 * k} if depth else {})})
    return pd.DataFrame(rows)


def test_optimal_tokens_per_param_on_a_known_grid():
    r = S.optimal_tokens_per_param(chinchilla_grid())
    assert r is not None and r.n_frontier >= 5
    assert 10 <= r.tokens_per_param <= 40  # the truth is 20; a factor-2 grid can say no better than ~2x
    assert r.exponent == pytest.approx(1.0, abs=0.3)  # constant ratio at every scale
    assert "tokens per parameter" in r.describe()
    with_depth = S.optimal_tokens_per_param(chinchilla_grid(depth=True))
    assert with_depth.tokens_per_param == r.tokens_per_param


def test_optimal_tokens_per_param_cannot_tell():
    g = chinchilla_grid()
    assert S.optimal_tokens_per_param(g[g["num_params_M"] == 4.0]) is None  # one model size
    assert S.optimal_tokens_per_param(g[g["total_tokens_M"] == 80.0]) is None  # one token budget
    assert S.optimal_tokens_per_param(g.drop(columns=["val_bpb"])) is None
    failed = g.assign(status="crash")
    assert S.optimal_tokens_per_param(failed) is None


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def test_plots_write_png(tmp_path):
    a, b = variants([0.04, 0.03, 0.02, 0.01])
    fits = {name: S.fit_power_law([r[1] for r in runs], [r[2] for r in runs], groups=[r[0] for r in runs],
                                  bootstrap=0) for name, runs in (("A", a), ("B", b))}
    p1 = S.plot(fits, {"A": a, "B": b}, tmp_path / "loss.png")
    p2 = G.plot_gain(G.compare(a, b), tmp_path / "sub" / "gain.png")
    for p in (p1, p2):
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
