"""The standard diagnostics (docs/paper.md section 4) on inputs with known answers, and along a real run:
they leave the training trajectory bitwise unchanged, and what they measure lands in TensorBoard and
results.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from testbed import Figure, Scalar, Schedule, hookimpl
from testbed.plugins import load_plugins
from testbed_std import noise_stats
from testbed_std.diagnostics import (
    BlockNorms,
    GeneralizedSmoothness,
    RobustConditionNumber,
    Sharpness,
    correlation_and_slope,
    directional_smoothness,
    lower_median,
)
from testbed_std.spectra import lanczos_extremes
from helpers import StepLosses, autograd_loop_hessian, load_events, raw_config, read_results, run, tiny_probe

PARAMETERIZATIONS = ("block_sparse", "full")


# ------------------------------------------------------------------ helpers
def scalars(records) -> dict[str, float]:
    """The scalar records by tag."""
    return {r.tag: r.value for r in records if isinstance(r, Scalar)}


def by_key(outcome):
    """The run results by key (optimizer label/seed-k)."""
    return {r.key: r for r in outcome.results}


# ------------------------------------------------------------------ directional smoothness
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_directional_smoothness_is_the_second_derivative_along_the_update(registry, parameterization):
    probe = tiny_probe(registry, parameterization)
    step = 0.01 * torch.randn(probe.params.numel(), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    probe.next_params = probe.params + step
    u = step / torch.linalg.vector_norm(step)
    h = 1e-4
    f = probe.loss
    second = (f(probe.params + h * u) - 2 * f(probe.params) + f(probe.params - h * u)) / h**2
    value = directional_smoothness(probe)
    assert abs(second) > 1e-3
    assert value == pytest.approx(second, rel=1e-5)
    assert value == pytest.approx(float(u @ probe.hessian() @ u), rel=1e-10)
    # It depends on the direction only, not on the length of the update.
    probe.next_params = probe.params + 7.0 * step
    assert directional_smoothness(probe) == pytest.approx(value, rel=1e-10)


def test_directional_smoothness_of_no_update_is_nan_and_needs_an_update(registry):
    probe = tiny_probe(registry)
    with pytest.raises(RuntimeError, match="needs_update"):
        directional_smoothness(probe)
    probe.next_params = probe.params.clone()
    assert math.isnan(directional_smoothness(probe))


def test_directional_smoothness_can_be_negative():
    class Quadratic:  # f = 1/2 theta^T H theta with an indefinite H
        params = torch.zeros(2, dtype=torch.float64)
        next_params = torch.tensor([0.0, 2.0], dtype=torch.float64)
        update = next_params - params

        def hvp(self, v):
            return torch.tensor([[3.0, 0.0], [0.0, -2.0]], dtype=torch.float64) @ v

    assert directional_smoothness(Quadratic()) == -2.0


# ------------------------------------------------------------------ robust condition number
def test_lower_median():
    assert float(lower_median(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == 2.0
    assert float(lower_median(torch.tensor([5.0, 1.0, 3.0]))) == 3.0
    assert float(lower_median(torch.tensor([[0.0, 0.0], [1.0, 9.0]]))) == 0.0


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_robust_condition_number_against_an_independent_hessian(registry, parameterization):
    probe = tiny_probe(registry, parameterization)
    H = autograd_loop_hessian(probe).numpy()
    diagonal = np.sort(np.abs(np.diag(H)))
    expected_proxy = diagonal[-1] / diagonal[(len(diagonal) - 1) // 2]  # lower median, zeros included
    eigenvalues = np.linalg.eigvalsh((H + H.T) / 2)
    diagnostic = RobustConditionNumber(spectrum_histogram=True)
    records = diagnostic.measure(probe, 0)
    values = scalars(records)
    assert values["proxy"] == pytest.approx(expected_proxy, rel=1e-9)
    assert values["lambda_max"] == pytest.approx(eigenvalues[-1], rel=1e-9)
    assert values["lambda_min"] == pytest.approx(eigenvalues[0], rel=1e-9, abs=1e-9)
    assert values["lambda_median"] == pytest.approx(np.sort(eigenvalues)[(len(eigenvalues) - 1) // 2], abs=1e-9)
    abs_eigen = np.sort(np.abs(eigenvalues))
    assert values["eigen_ratio"] == pytest.approx(abs_eigen[-1] / abs_eigen[(len(abs_eigen) - 1) // 2], rel=1e-6)
    (spectrum,) = [r for r in records if r.tag == "spectrum"]
    assert np.allclose(np.sort(np.asarray(spectrum.values)), eigenvalues, atol=1e-9)


# ------------------------------------------------------------------ Lanczos and sharpness
def random_symmetric(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (a + a.T) / 2


def test_lanczos_with_full_iterations_is_exact():
    A = random_symmetric(30, 0)
    exact = torch.linalg.eigvalsh(A)
    start = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lam_min, lam_max = lanczos_extremes(lambda v: A @ v, start, 30)
    assert lam_min == pytest.approx(float(exact[0]), abs=1e-8)
    assert lam_max == pytest.approx(float(exact[-1]), abs=1e-8)
    # More iterations than the dimension: the same.
    assert lanczos_extremes(lambda v: A @ v, start, 100) == pytest.approx((lam_min, lam_max), abs=1e-8)


def test_lanczos_with_few_iterations_finds_a_separated_top_eigenvalue():
    q, _ = torch.linalg.qr(torch.randn(200, 200, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    spectrum = torch.cat([torch.linspace(-1.0, 1.0, 199, dtype=torch.float64), torch.tensor([10.0], dtype=torch.float64)])
    A = q @ torch.diag(spectrum) @ q.T
    start = torch.randn(200, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lam_min, lam_max = lanczos_extremes(lambda v: A @ v, start, 15)
    assert lam_max == pytest.approx(10.0, rel=1e-8)
    # Ritz values interlace: never outside the true spectrum.
    assert -1.0 - 1e-10 <= lam_min <= -0.5


def test_lanczos_stops_early_on_an_invariant_subspace():
    A = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0], dtype=torch.float64))
    start = torch.ones(5, dtype=torch.float64)  # the Krylov space has dimension 2
    assert lanczos_extremes(lambda v: A @ v, start, 5) == pytest.approx((1.0, 2.0), abs=1e-12)
    eigenvector = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    assert lanczos_extremes(lambda v: A @ v, eigenvector, 5) == pytest.approx((2.0, 2.0), abs=1e-12)


def test_lanczos_float32_start_runs_the_operator_in_float32():
    A = random_symmetric(10, 4)
    seen = []

    def hvp(v):
        seen.append(v.dtype)
        return (A @ v.double()).float()

    start = torch.randn(10, generator=torch.Generator().manual_seed(5))
    lam_min, lam_max = lanczos_extremes(hvp, start, 10)
    exact = torch.linalg.eigvalsh(A)
    assert set(seen) == {torch.float32}
    assert lam_max == pytest.approx(float(exact[-1]), abs=1e-4)
    assert lam_min == pytest.approx(float(exact[0]), abs=1e-4)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_sharpness_matches_the_hessian_spectrum(registry, parameterization):
    probe = tiny_probe(registry, parameterization)
    eigenvalues = torch.linalg.eigvalsh(autograd_loop_hessian(probe))
    P = probe.params.numel()
    full = scalars(Sharpness(iterations=P).measure(probe, 0))
    assert full["lambda_max"] == pytest.approx(float(eigenvalues[-1]), rel=1e-8)
    assert full["lambda_min"] == pytest.approx(float(eigenvalues[0]), rel=1e-8, abs=1e-8)
    few = scalars(Sharpness(iterations=10).measure(probe, 0))
    assert float(eigenvalues[0]) - 1e-8 <= few["lambda_min"] <= few["lambda_max"] <= float(eigenvalues[-1]) + 1e-8
    assert few["lambda_max"] == pytest.approx(float(eigenvalues[-1]), rel=1e-2)


# ------------------------------------------------------------------ noise statistics
def test_noise_stats_of_a_normal_sample():
    x = np.random.default_rng(0).normal(10.0, 1.0, 200_000)
    stats = noise_stats.summarize(torch.from_numpy(x), 0.1)
    assert set(stats) == {"mean", "median", "std", "skewness", "excess_kurtosis", "q99_over_median",
                          "max_over_median", "qq_correlation", "hill_tail_index"}
    assert stats["mean"] == pytest.approx(10.0, abs=0.01)
    assert stats["median"] == pytest.approx(10.0, abs=0.01)
    assert stats["std"] == pytest.approx(1.0, abs=0.01)
    assert stats["skewness"] == pytest.approx(0.0, abs=0.03)
    assert stats["excess_kurtosis"] == pytest.approx(0.0, abs=0.05)
    assert stats["qq_correlation"] > 0.999
    assert stats["q99_over_median"] == pytest.approx((10.0 + 2.3263) / 10.0, rel=2e-3)


def test_noise_stats_of_an_exponential_sample():
    x = np.random.default_rng(1).exponential(1.0, 200_000)
    stats = noise_stats.summarize(torch.from_numpy(x), 0.1)
    assert stats["skewness"] == pytest.approx(2.0, abs=0.15)
    assert stats["excess_kurtosis"] == pytest.approx(6.0, abs=1.0)
    assert stats["median"] == pytest.approx(math.log(2), rel=0.02)
    assert stats["q99_over_median"] == pytest.approx(math.log(100) / math.log(2), rel=0.03)
    assert 0.85 < stats["qq_correlation"] < 0.95  # visibly not normal


@pytest.mark.parametrize("alpha", [1.5, 3.0])
def test_hill_tail_index_recovers_a_pareto_tail(alpha):
    rng = np.random.default_rng(2)
    pareto = rng.pareto(alpha, 200_000) + 1.0  # Pareto I, x_m = 1: P(X > x) = x^-alpha
    assert noise_stats.hill_tail_index(pareto, 0.1) == pytest.approx(alpha, rel=0.05)
    assert noise_stats.summarize(torch.from_numpy(pareto), 0.1)["hill_tail_index"] == pytest.approx(alpha, rel=0.05)
    if alpha < 2:  # Pareto II (Lomax) has the same tail only asymptotically: Hill is biased for it
        lomax = rng.pareto(alpha, 200_000)
        assert noise_stats.hill_tail_index(lomax, 0.005) == pytest.approx(alpha, rel=0.15)


def test_hill_tail_index_by_hand():
    # Ordered 16, 8, 4, 2, 1; k = int(0.4 * 5) = 2; X_(k+1) = 4: 1 / mean(log 4, log 2) = 1 / (1.5 log 2).
    samples = np.array([2.0, 16.0, 1.0, 8.0, 4.0])
    assert noise_stats.hill_tail_index(samples, 0.4) == pytest.approx(1.0 / (1.5 * math.log(2)), rel=1e-12)
    # k is at least 2: a tiny fraction uses the two largest.
    assert noise_stats.hill_tail_index(samples, 0.01) == pytest.approx(1.0 / (1.5 * math.log(2)), rel=1e-12)
    # k = 3: X_(4) = 2: 1 / mean(log 8, log 4, log 2) = 1 / (2 log 2).
    assert noise_stats.hill_tail_index(samples, 0.6) == pytest.approx(1.0 / (2 * math.log(2)), rel=1e-12)
    assert math.isnan(noise_stats.hill_tail_index(np.array([1.0, 2.0]), 0.5))  # k >= n
    assert math.isnan(noise_stats.hill_tail_index(np.array([5.0, 3.0, 0.0, 0.0]), 0.5))  # X_(k+1) = 0


def test_quantile_ratios_and_moments_on_a_deterministic_input():
    x = torch.arange(1, 102, dtype=torch.float64)  # 1..101
    stats = noise_stats.summarize(x, 0.1)
    assert stats["median"] == 51.0 and stats["mean"] == 51.0
    assert stats["q99_over_median"] == pytest.approx(100.0 / 51.0, rel=1e-12)  # q99 at position 99 of 0..100
    assert stats["max_over_median"] == pytest.approx(101.0 / 51.0, rel=1e-12)
    assert stats["std"] == pytest.approx(math.sqrt(101 * 102 / 12), rel=1e-12)  # ddof = 1
    assert stats["skewness"] == pytest.approx(0.0, abs=1e-12)
    assert stats["excess_kurtosis"] == pytest.approx(-1.2, abs=0.01)  # uniform
    # float32 input is summarized in float64.
    assert noise_stats.summarize(x.float(), 0.1)["median"] == 51.0


def test_noise_records_and_figure():
    from testbed import Histogram
    from testbed_std.figures import noise_figure

    errors = torch.from_numpy(np.random.default_rng(3).gamma(2.0, 1.0, 500))
    stats = noise_stats.summarize(errors, 0.1)
    figure = noise_figure(errors, 20, stats, step=0)
    histogram, same = noise_stats.records(errors, 20, figure)
    assert isinstance(histogram, Histogram) and histogram.tag == "errors" and histogram.bins == 20
    assert torch.equal(torch.as_tensor(histogram.values), errors)
    assert same is figure and isinstance(figure, Figure) and figure.tag == "histogram"
    (axes,) = figure.figure.axes
    assert len(axes.child_axes) == 1  # the QQ inset
    assert len(axes.patches) == 20  # the histogram's bars


# ------------------------------------------------------------------ generalized smoothness
def test_correlation_and_slope_exact_cases():
    x = torch.linspace(-3, 5, 50, dtype=torch.float64)
    assert correlation_and_slope(x, 2 * x + 1) == pytest.approx((1.0, 2.0), rel=1e-12)
    assert correlation_and_slope(x, -3 * x + 7) == pytest.approx((-1.0, -3.0), rel=1e-12)
    # x and e centered, orthogonal, of equal norm: corr(x, a x + b e) = a / sqrt(a^2 + b^2), slope a.
    x = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) + 10.0
    e = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    assert correlation_and_slope(x, x + e) == pytest.approx((1 / math.sqrt(2), 1.0), rel=1e-12)
    assert correlation_and_slope(x, 2 * x + 3 * e) == pytest.approx((2 / math.sqrt(13), 2.0), rel=1e-12)
    assert correlation_and_slope(x, e) == pytest.approx((0.0, 0.0), abs=1e-12)


def test_correlation_and_slope_with_random_noise():
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=rng, dtype=torch.float64)
    y = 0.5 * x + torch.randn(100_000, generator=rng, dtype=torch.float64)
    correlation, slope = correlation_and_slope(x, y)
    assert correlation == pytest.approx(0.5 / math.sqrt(1.25), abs=0.01)
    assert slope == pytest.approx(0.5, abs=0.01)


class FakeProbe:
    """A probe with a chosen gradient norm and a Hessian that is c * I (so DS = c)."""

    def __init__(self, grad_norm: float, curvature: float):
        self.params = torch.zeros(3, dtype=torch.float64)
        self.next_params = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
        self.grad_norm, self.curvature = grad_norm, curvature

    @property
    def update(self):
        return self.next_params - self.params

    def gradient(self):
        return torch.tensor([self.grad_norm, 0.0, 0.0], dtype=torch.float64)

    def hvp(self, v):
        return self.curvature * v


def scheduled(diagnostic, schedule: Schedule):
    """``diagnostic`` with ``schedule``, set as the host sets it after the factory returns."""
    diagnostic.schedule = schedule
    return diagnostic


def test_generalized_smoothness_reports_at_the_end_of_its_window():
    diagnostic = scheduled(GeneralizedSmoothness(), Schedule(every=1, stop=6))
    assert diagnostic.needs_update
    points = [(0.5, 3.0), (1.0, 3.0), (2.0, -1.0), (4.0, 3.0), (8.0, 3.0), (16.0, 3.0)]
    reports = []
    for step, (grad_norm, c) in enumerate(points):
        # log DS = log c + 2 log g: slope 2, correlation 1 (the DS <= 0 point is skipped)
        curvature = c * grad_norm**2 if c > 0 else c
        records = diagnostic.measure(FakeProbe(grad_norm, curvature), step)
        values = scalars(records)
        assert values["grad_norm"] == pytest.approx(grad_norm)
        assert values["directional_smoothness"] == pytest.approx(curvature)
        reports.append(records)
    assert all("correlation" not in scalars(r) for r in reports[:-1])
    final = scalars(reports[-1])
    assert final["correlation"] == pytest.approx(1.0, rel=1e-12)
    assert final["slope"] == pytest.approx(2.0, rel=1e-12)
    assert final["points"] == 5 and final["skipped_nonpositive"] == 1
    (scatter,) = [r for r in reports[-1] if isinstance(r, Figure)]
    assert scatter.tag == "scatter"
    assert diagnostic.finish(FakeProbe(1.0, 1.0), 6) == []  # reported once


def test_generalized_smoothness_without_a_stop_reports_at_finish():
    diagnostic = scheduled(GeneralizedSmoothness(), Schedule(every=2))
    for step, g in enumerate([1.0, 2.0, 3.0, 5.0]):
        assert "correlation" not in scalars(diagnostic.measure(FakeProbe(g, 4.0 / g), 2 * step))
    final = scalars(diagnostic.finish(FakeProbe(1.0, 1.0), 8))
    assert final["correlation"] == pytest.approx(-1.0, rel=1e-12) and final["slope"] == pytest.approx(-1.0, rel=1e-12)
    # Fewer than three points: only their count.
    short = scheduled(GeneralizedSmoothness(), Schedule(every=1))
    short.measure(FakeProbe(1.0, 1.0), 0)
    assert [(r.tag, r.value) for r in short.finish(FakeProbe(1.0, 1.0), 1)] == [("points", 1)]


def test_generalized_smoothness_at_explicit_steps_only():
    # every: null with a stop (only the explicit steps): no window end to detect, reported at finish.
    diagnostic = scheduled(GeneralizedSmoothness(), Schedule(steps=(0, 3, 7), stop=10))
    for step, g in zip([0, 3, 7], [1.0, 2.0, 4.0]):
        assert "correlation" not in scalars(diagnostic.measure(FakeProbe(g, g), step))
    final = scalars(diagnostic.finish(FakeProbe(1.0, 1.0), 20))
    assert final["slope"] == pytest.approx(1.0, rel=1e-12) and final["points"] == 3


def test_block_norms_on_a_hand_made_probe(registry):
    probe = tiny_probe(registry)
    delta = torch.linspace(-1, 1, probe.params.numel(), dtype=torch.float64)
    probe.next_params = probe.params + delta
    probe.train_gradient = 2 * delta
    values = scalars(BlockNorms().measure(probe, 0))
    assert {b.name for b in probe.blocks} == {"A", "B"}
    for block in probe.blocks:
        part = slice(block.start, block.stop)
        update = float(torch.linalg.vector_norm(delta[part]))
        assert values[f"{block.name}/update_norm"] == pytest.approx(update, rel=1e-12)
        assert values[f"{block.name}/grad_norm"] == pytest.approx(2 * update, rel=1e-12)
        assert values[f"{block.name}/update_ratio"] == pytest.approx(
            update / float(torch.linalg.vector_norm(probe.params[part])), rel=1e-12)


# ------------------------------------------------------------------ one experiment, diagnostics on and off
ALL_DIAGNOSTICS = [
    {"name": "gradient_noise", "options": {"samples": 50, "full_batch": 640, "bins": 20}},
    {"name": "robust_condition_number", "options": {"every": 10, "spectrum_histogram": True}},
    {"name": "directional_smoothness", "options": {"every": 5}},
    {"name": "generalized_smoothness", "options": {"every": 1, "stop": 10}},
    {"name": "block_norms", "options": {"every": 5}},
    {"name": "sharpness", "options": {"every": 10, "iterations": 36}},  # = the parameter count
]


@pytest.fixture(scope="module")
def on_and_off(tmp_path_factory):
    """The same tiny experiment (sgd and adam, seed 0) with every standard diagnostic and without."""
    root = tmp_path_factory.mktemp("diag")
    outcomes, losses = {}, {}
    for mode, diagnostics in (("on", ALL_DIAGNOSTICS), ("off", None)):
        recorder = StepLosses()
        plugins = load_plugins(extra={"recorder": recorder})
        outcomes[mode] = run(raw_config(diagnostics=diagnostics), root / mode, plugins)
        losses[mode] = recorder.losses
    return outcomes, losses


def test_diagnostics_leave_the_trajectory_bitwise_unchanged(on_and_off):
    outcomes, losses = on_and_off
    on, off = by_key(outcomes["on"]), by_key(outcomes["off"])
    assert set(on) == set(off) == {"sgd/seed-0", "adam/seed-0"}
    for key in on:
        assert on[key].status == off[key].status == "completed"
        assert on[key].diagnostic_errors == []
        assert on[key].eval_steps == off[key].eval_steps == [0, 10, 20, 30]
        assert on[key].eval_losses == off[key].eval_losses, key
        assert len(losses["on"][key]) == 30
        assert losses["on"][key] == losses["off"][key], key
        assert off[key].diagnostics == {}
    # The diagnostics really ran (else the comparison would prove nothing).
    measured = on["adam/seed-0"].diagnostics
    assert [s for s, _ in measured["robust_condition_number/proxy"]] == [0, 10, 20, 30]
    assert [s for s, _ in measured["directional_smoothness/value"]] == [0, 5, 10, 15, 20, 25]
    assert [s for s, _ in measured["generalized_smoothness/grad_norm"]] == list(range(10))
    assert [s for s, _ in measured["generalized_smoothness/correlation"]] == [9]
    assert [s for s, _ in measured["gradient_noise/skewness"]] == [0]
    assert [s for s, _ in measured["sharpness/lambda_max"]] == [0, 10, 20, 30]
    assert [s for s, _ in measured["block_norms/A/update_norm"]] == [0, 5, 10, 15, 20, 25]


def test_condition_number_at_step_zero_is_the_same_for_both_optimizers(on_and_off):
    outcomes, _ = on_and_off
    data = read_results(outcomes["on"])
    runs = {r["key"]: r["diagnostics"] for r in data["runs"]}
    sgd, adam = runs["sgd/seed-0"], runs["adam/seed-0"]
    for tag in ("robust_condition_number/proxy", "robust_condition_number/lambda_max", "sharpness/lambda_max",
                "gradient_noise/mean"):
        assert sgd[tag][0][0] == adam[tag][0][0] == 0
        assert sgd[tag][0][1] == adam[tag][0][1], tag
    assert sgd["robust_condition_number/proxy"][0][1] > 1.0
    for later in (1, 2, 3):
        assert sgd["robust_condition_number/proxy"][later][1] != adam["robust_condition_number/proxy"][later][1]
    # results.json holds what the run returned.
    on = by_key(outcomes["on"])
    assert on["sgd/seed-0"].diagnostics["robust_condition_number/proxy"] == sgd["robust_condition_number/proxy"]


def test_sharpness_agrees_with_the_full_hessian_along_a_run(on_and_off):
    outcomes, _ = on_and_off
    for result in outcomes["on"].results:
        exact = dict(map(tuple, result.diagnostics["robust_condition_number/lambda_max"]))
        lanczos = dict(map(tuple, result.diagnostics["sharpness/lambda_max"]))
        assert set(exact) == set(lanczos)
        for step in exact:  # 10 Lanczos steps on 36 parameters, float32: a lower bound, close
            assert lanczos[step] <= exact[step] * (1 + 1e-4)
            assert lanczos[step] == pytest.approx(exact[step], rel=0.05), (result.key, step)


def test_diagnostics_in_tensorboard(on_and_off):
    outcomes, _ = on_and_off
    for result in outcomes["on"].results:
        events = load_events(result.run_dir)
        tags = events.Tags()
        noise_scalars = {"mean", "median", "std", "skewness", "excess_kurtosis", "q99_over_median",
                         "max_over_median", "qq_correlation", "hill_tail_index", "full_gradient_norm"}
        expected = {f"diag/gradient_noise/{t}" for t in noise_scalars}
        expected |= {f"diag/robust_condition_number/{t}"
                     for t in ("proxy", "lambda_max", "lambda_min", "lambda_median", "eigen_ratio")}
        expected |= {"diag/directional_smoothness/value", "diag/sharpness/lambda_max", "diag/sharpness/lambda_min"}
        expected |= {f"diag/generalized_smoothness/{t}" for t in
                     ("grad_norm", "directional_smoothness", "correlation", "slope", "points", "skipped_nonpositive")}
        expected |= {f"diag/block_norms/{b}/{t}" for b in "AB" for t in ("grad_norm", "update_norm", "update_ratio")}
        assert expected <= set(tags["scalars"]), sorted(expected - set(tags["scalars"]))
        diag_scalars = {t for t in tags["scalars"] if t.startswith("diag/")}
        assert diag_scalars == {f"diag/{k}" for k in result.diagnostics}
        for key, points in result.diagnostics.items():
            logged = events.Scalars(f"diag/{key}")
            assert [e.step for e in logged] == [s for s, _ in points], key
            assert [e.value for e in logged] == pytest.approx([v for _, v in points], rel=1e-6), key
        assert "diag/gradient_noise/errors" in tags["histograms"]
        (noise_histogram,) = events.Histograms("diag/gradient_noise/errors")
        assert noise_histogram.step == 0 and noise_histogram.histogram_value.num == 50
        assert [e.step for e in events.Histograms("diag/robust_condition_number/spectrum")] == [0, 10, 20, 30]
        assert events.Histograms("diag/robust_condition_number/spectrum")[0].histogram_value.num == 36
        assert {"diag/gradient_noise/histogram", "diag/generalized_smoothness/scatter"} <= set(tags["images"])
        (image,) = events.Images("diag/gradient_noise/histogram")
        assert image.step == 0 and image.width > 100 and image.height > 100
        assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        (scatter,) = events.Images("diag/generalized_smoothness/scatter")
        assert scatter.step == 9 and scatter.encoded_image_string[:4] == b"\x89PNG"
        noise = {k: v for k, v in result.diagnostics.items() if k.startswith("gradient_noise/")}
        assert noise["gradient_noise/qq_correlation"][0][1] <= 1.0
        assert noise["gradient_noise/max_over_median"][0][1] >= noise["gradient_noise/q99_over_median"][0][1] >= 1.0


# ------------------------------------------------------------------ block norms along a real run
class ParameterNorms:
    """Per-block parameter norms of the live model at every point (on_run_start = point 0), and the
    engine's measured gradient norm of every step."""

    def __init__(self) -> None:
        self.norms: dict[int, dict[str, float]] = {}
        self.grad_norms: dict[int, float] = {}

    def _record(self, run, step):
        self.norms[step] = {name: float(torch.linalg.vector_norm(p.detach())) for name, p in run.model.named_parameters()}

    @hookimpl
    def on_run_start(self, run):
        self._record(run, 0)

    @hookimpl
    def on_step_end(self, run, step, metrics):
        self._record(run, step)
        self.grad_norms[step] = metrics["grad_norm"]


def test_block_norms_of_plain_sgd_are_lr_times_the_gradient(tmp_path):
    lr = 0.01
    recorder = ParameterNorms()
    plugins = load_plugins(extra={"norms": recorder})
    sgd = {"name": "sgd", "lr": lr, "options": {"momentum": 0.0, "weight_decay": 0.0}}
    outcome = run(raw_config([sgd], [{"name": "block_norms", "options": {"every": 3}}], steps=10, clip=None),
                  tmp_path, plugins)
    (result,) = outcome.results
    assert result.status == "completed" and result.diagnostic_errors == []
    d = result.diagnostics
    points = [0, 3, 6, 9]
    for block in ("A", "B"):
        grad, update, ratio = (d[f"block_norms/{block}/{t}"] for t in ("grad_norm", "update_norm", "update_ratio"))
        assert [s for s, _ in grad] == [s for s, _ in update] == [s for s, _ in ratio] == points
        for (step, g), (_, u), (_, r) in zip(grad, update, ratio):
            assert g > 0
            assert u == pytest.approx(lr * g, rel=1e-5), (block, step)
            assert r == pytest.approx(u / recorder.norms[step][block], rel=1e-6), (block, step)
    # The blocks' gradients make up the unclipped gradient of the step that left the point.
    for i, step in enumerate(points):
        total = math.sqrt(sum(d[f"block_norms/{b}/grad_norm"][i][1] ** 2 for b in ("A", "B")))
        assert total == pytest.approx(recorder.grad_norms[step + 1], rel=1e-5)
