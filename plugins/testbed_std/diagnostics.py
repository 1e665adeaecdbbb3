"""The paper's diagnostics (docs/paper.md section 4) and cheap per-step companions.

Every quantity uses the flattened vector of all trainable parameters, through ``testbed.Probe``:
exact gradients, Hessians (``torch.func``) and Hessian-vector products, never finite differences.
"""

from __future__ import annotations

import math

import torch

from testbed import Diagnostic, Histogram, Option, Plot, Scalar, Schedule, hookimpl

from . import noise_stats
from .figures import noise_figure, smoothness_scatter
from .spectra import lanczos_extremes


def lower_median(values: torch.Tensor) -> torch.Tensor:
    """The lower median (torch.median's convention for an even count, as the paper uses)."""
    return values.flatten().median()


class GradientNoise(Diagnostic):
    """Stochastic gradient noise e_k = ||g_k - g|| at a point (paper: at initialization)."""

    def __init__(self, full_batch: int | None, batch_size: int | None, samples: int, bins: int,
                 tail_fraction: float):
        self.full_batch, self.batch_size, self.samples = full_batch, batch_size, samples
        self.bins, self.tail_fraction = bins, tail_fraction

    def measure(self, probe, step):
        batch_size = self.batch_size or probe.train_batch_size
        full_batch = self.full_batch or 100 * batch_size
        generator = probe.generator(f"gradient_noise:{step}")
        full = full_gradient(probe, full_batch, batch_size, generator)
        # Drawn lazily, so the stream's order is the full batch's chunks, then one minibatch at a time.
        minibatches = (probe.sample(batch_size, generator) for _ in range(self.samples))
        errors = torch.empty(self.samples, dtype=torch.float64)
        for k, g in enumerate(probe.gradients(minibatches)):
            errors[k] = torch.linalg.vector_norm((g - full).double())
        stats = noise_stats.summarize(errors, self.tail_fraction)
        records = [Scalar(name, value) for name, value in stats.items()]
        records.append(Scalar("full_gradient_norm", float(torch.linalg.vector_norm(full))))
        return records + noise_stats.records(errors, self.bins, noise_figure(errors, self.bins, stats, step))


def full_gradient(probe, full_batch: int, chunk: int, generator: torch.Generator) -> torch.Tensor:
    """Mean gradient over ``full_batch`` fresh prompts, accumulated in chunks (an exact mean)."""
    sizes = [min(chunk, full_batch - start) for start in range(0, full_batch, chunk)]
    chunks = (probe.sample(size, generator) for size in sizes)
    total = sum(g.double() * size for g, size in zip(probe.gradients(chunks), sizes))
    return (total / full_batch).to(probe.params.dtype)


class RobustConditionNumber(Diagnostic):
    """max|H_ii| / median|H_ii| of the eval-batch Hessian (the paper's proxy) and its spectrum."""

    def __init__(self, spectrum_histogram: bool):
        self.spectrum_histogram = spectrum_histogram

    def measure(self, probe, step):
        H = probe.hessian().double()
        diagonal = H.diagonal().abs()
        eigenvalues = torch.linalg.eigvalsh((H + H.T) / 2)
        abs_median = lower_median(eigenvalues.abs())
        records = [
            Scalar("proxy", float(diagonal.max() / lower_median(diagonal))),
            Scalar("lambda_max", float(eigenvalues[-1])),
            Scalar("lambda_min", float(eigenvalues[0])),
            Scalar("lambda_median", float(lower_median(eigenvalues))),
            Scalar("eigen_ratio", float(eigenvalues.abs().max() / abs_median)),
        ]
        if self.spectrum_histogram:
            records.append(Histogram("spectrum", eigenvalues))
        return records


def directional_smoothness(probe) -> float:
    """u^T H(theta_t) u with u the normalized update actually taken from theta_t."""
    update = probe.update
    norm = torch.linalg.vector_norm(update)
    if norm == 0:
        return math.nan
    u = update / norm
    return float(torch.dot(u.double(), probe.hvp(u).double()))


class DirectionalSmoothness(Diagnostic):
    """Directional smoothness along the update (Pan & Li 2023), on the eval batch."""

    needs_update = True

    def measure(self, probe, step):
        return [Scalar("value", directional_smoothness(probe))]


class GeneralizedSmoothness(Diagnostic):
    """(log ||grad f(theta_t)||, log DS_t) over a window; at its end the correlation and slope,
    and a scatter coloured by step ((L0, L1)-smoothness, Zhang et al. 2020)."""

    needs_update = True

    def __init__(self):
        self.points: list[tuple[int, float, float]] = []  # (step, log grad norm, log DS)
        self.skipped = 0  # points with DS <= 0, which have no logarithm
        self.reported = False

    def measure(self, probe, step):
        grad_norm = float(torch.linalg.vector_norm(probe.gradient()))
        smoothness = directional_smoothness(probe)
        records = [Scalar("grad_norm", grad_norm), Scalar("directional_smoothness", smoothness)]
        if grad_norm > 0 and smoothness > 0:
            self.points.append((step, math.log(grad_norm), math.log(smoothness)))
        else:
            self.skipped += 1
        if self.schedule.every and self.schedule.stop is not None and step + self.schedule.every >= self.schedule.stop:
            records += self._report(step)
        return records

    def finish(self, probe, step):
        return [] if self.reported else self._report(step)

    def _report(self, step):
        self.reported = True
        if len(self.points) < 3:
            return [Scalar("points", len(self.points))]
        steps, log_g, log_ds = (torch.tensor(c, dtype=torch.float64) for c in zip(*self.points))
        correlation, slope = correlation_and_slope(log_g, log_ds)
        return [Scalar("correlation", correlation), Scalar("slope", slope), Scalar("points", len(self.points)),
                Scalar("skipped_nonpositive", self.skipped),
                smoothness_scatter(steps, log_g, log_ds, correlation, slope)]


def correlation_and_slope(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Pearson correlation of x and y, and the least-squares slope of y on x."""
    x, y = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (x * x).sum(), (y * y).sum(), (x * y).sum()
    return float(sxy / torch.sqrt(sxx * syy)), float(sxy / sxx)


class BlockNorms(Diagnostic):
    """Per parameter block: norm of the (clipped) minibatch gradient the optimizer used, of the
    update, of the parameters, and the update/parameter ratio. Cheap: no extra forward pass."""

    needs_update = True

    def measure(self, probe, step):
        records = []
        update = probe.update
        for block in probe.blocks:
            part = slice(block.start, block.stop)
            param_norm = float(torch.linalg.vector_norm(probe.params[part]))
            update_norm = float(torch.linalg.vector_norm(update[part]))
            records += [
                Scalar(f"{block.name}/grad_norm", float(torch.linalg.vector_norm(probe.train_gradient[part]))),
                Scalar(f"{block.name}/update_norm", update_norm),
                Scalar(f"{block.name}/update_ratio", update_norm / param_norm if param_norm > 0 else math.nan),
            ]
        return records


class Sharpness(Diagnostic):
    """lambda_max (and lambda_min) of the eval-batch Hessian by Lanczos on Hessian-vector products:
    works for models too large for a full Hessian."""

    def __init__(self, iterations: int):
        self.iterations = iterations

    def measure(self, probe, step):
        generator = probe.generator(f"sharpness:{step}")
        start = torch.randn(probe.params.numel(), generator=generator, dtype=probe.params.dtype)
        lam_min, lam_max = lanczos_extremes(probe.hvp, start, self.iterations)
        return [Scalar("lambda_max", lam_max), Scalar("lambda_min", lam_min)]


# What `testbed report` draws of each diagnostic, and TensorBoard charts (the paper's figures).
NOISE_PLOTS = [Plot("errors", "gradient noise", kind="histogram", xlabel=r"$\|g_k - g\|_2$",
                    subtitle="skewness {skewness:.2f}, excess kurtosis {excess_kurtosis:.1f}",
                    caption="Density histogram of the gradient-noise norms ||g_k - g|| at initialization")]
CONDITION_PLOTS = [Plot("proxy", "robust condition number R_med", log=True,
                        caption="Robust condition number max|H_ii| / median|H_ii| along training, mean over seeds, "
                                "log scale")]
SMOOTHNESS_PLOTS = [Plot("value", "directional smoothness",
                         caption="Directional smoothness along the update actually taken, mean over seeds")]
GENERALIZED_PLOTS = [Plot("directional_smoothness", "generalized smoothness", kind="scatter", x="grad_norm", log=True,
                          xlabel=r"$\log \|\nabla f(\theta_t)\|$", ylabel=r"$\log$ directional smoothness",
                          caption="log directional smoothness against log gradient norm, coloured by step")]
SHARPNESS_PLOTS = [Plot("lambda_max", "sharpness lambda_max", log=True,
                        caption="Largest Hessian eigenvalue (Lanczos on the eval batch) along training, mean over "
                                "seeds, log scale")]


@hookimpl
def register_diagnostics(register) -> None:
    register("gradient_noise", lambda **o: GradientNoise(**o), options={
        "full_batch": Option(None, "prompts for the full gradient g (null: 100 x train batch)", type=int,
                             min=1, nullable=True),
        "batch_size": Option(None, "prompts per minibatch gradient g_k (null: the train batch)", type=int,
                             min=1, nullable=True),
        # The bounds keep a run's memory sane: every sample is kept (float64), so is every bin.
        "samples": Option(10_000, "number of minibatch gradients", min=2, max=10_000_000),
        "bins": Option(100, "histogram bins", min=1, max=10_000),
        "tail_fraction": Option(0.1, "fraction of the largest samples used by the Hill tail-index estimate",
                                min=0.0, min_exclusive=True, max=0.5),
    }, schedule=Schedule(steps=(0,)),
        doc="Gradient noise ||g_k - g|| at a point (default: initialization): histogram, QQ plot, "
            "skewness, kurtosis, quantile ratios, Hill tail index", plots=NOISE_PLOTS,
        # `testbed check` measures at every step of a tiny run: 10,000 samples and a figure each time take minutes
        check_options={"samples": 100, "full_batch": 320, "every": 2})
    register("robust_condition_number", lambda **o: RobustConditionNumber(**o), options={
        "spectrum_histogram": Option(False, "also log the Hessian eigenvalues as a histogram"),
    }, schedule=Schedule(every=250),
        doc="Full eval-batch Hessian: max|H_ii|/median|H_ii| (the paper's R_med) and its eigenvalues",
        plots=CONDITION_PLOTS)
    register("directional_smoothness", lambda **o: DirectionalSmoothness(**o), schedule=Schedule(every=10),
             doc="u^T H(theta_t) u along the update actually taken (Pan & Li 2023), eval batch",
             plots=SMOOTHNESS_PLOTS)
    register("generalized_smoothness", lambda **o: GeneralizedSmoothness(**o),
             schedule=Schedule(every=1, stop=2000),
             doc="log grad norm vs log directional smoothness over a window: correlation, slope, scatter",
             plots=GENERALIZED_PLOTS)
    register("block_norms", lambda **o: BlockNorms(**o), schedule=Schedule(every=10),
             doc="Per parameter block: gradient, update and parameter norms, update/parameter ratio")
    register("sharpness", lambda **o: Sharpness(**o), options={
        "iterations": Option(20, "Lanczos iterations (Hessian-vector products); each keeps a vector of "
                             "the parameters' size", min=2, max=1_000),
    }, schedule=Schedule(every=250),
        doc="lambda_max and lambda_min of the eval-batch Hessian by Lanczos on Hessian-vector products",
        plots=SHARPNESS_PLOTS)
