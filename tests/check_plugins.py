"""Planted faults for `testbed check` (issue 14): plugins that each break one contract, and one name
registered as two kinds. A plugin module: load it with ``load_plugins(extra={"check_plugins":
check_plugins})`` or name it in $TESTBED_PLUGINS (tests/ is on the test path).

Optimizers: ``global_rng_sgd`` (noise from torch's global RNG), ``forgetful_momentum`` (its
state_dict drops the momentum), ``quiet_sam`` (needs a closure, calls it twice, registered without
needs_closure: handed none it silently steps on p.grad), ``silent_closure`` (registered with
needs_closure, steps without one), ``ascent`` (climbs), ``narrow`` (rejects its declared bound),
``broken_factory`` (its factory raises), ``needs_value`` (a required option without check_options),
``bad_check_options`` (check_options of an unknown option). Tasks: ``global_rng_task``, ``noisy_labels`` (undeclared
noise), ``biased_weights`` (w ~ N(1, I)), ``wide_batch`` (x of d+1 features). Diagnostics:
``param_mutator`` (scales probe.params in place), ``eval_mutator`` (scales the eval batch in place),
``forgetful_counter`` (its state_dict drops its count), ``missing_plot`` (declares a plot it never
returns). ``twin``: a task and a diagnostic of that name.
"""

from __future__ import annotations

from typing import Callable

import torch

from testbed import Diagnostic, LinearRegressionTask, Option, Plot, Scalar, Task, Batch, hookimpl


# ------------------------------------------------------------------ optimizers
class GlobalRngSGD(torch.optim.SGD):
    """SGD plus a little noise drawn from torch's global RNG."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """SGD's step, then noise from the global RNG."""
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3 * torch.randn(p.shape))
        return loss


class ForgetfulMomentum(torch.optim.SGD):
    """SGD with momentum whose state_dict drops the momentum buffers."""

    def state_dict(self):
        """The param groups only: the momentum is lost."""
        state = super().state_dict()
        return {"state": {}, "param_groups": state["param_groups"]}


class QuietSAM(torch.optim.SGD):
    """Sharpness-aware SGD: with a closure, the gradient at a perturbed point (two closure calls);
    without one, silently plain SGD on p.grad."""

    def __init__(self, params, lr: float, rho: float = 0.05):
        super().__init__(params, lr=lr)
        self.rho = rho

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """Plain SGD without a closure (the fault); SAM with one."""
        if closure is None:
            return super().step()
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.enable_grad():
            loss = closure()
        with torch.no_grad():
            norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params)) + 1e-12
            shifts = [self.rho * p.grad / norm for p in params]
            for p, shift in zip(params, shifts):
                p.add_(shift)
        with torch.enable_grad():
            closure()
        with torch.no_grad():
            for p, shift in zip(params, shifts):
                p.sub_(shift)
        super().step()
        return loss


class SilentClosure(torch.optim.SGD):
    """Registered with needs_closure, yet steps on p.grad when handed no closure."""

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """The closure if given, then SGD's step either way."""
        if closure is not None:
            with torch.enable_grad():
                closure()
        return super().step()


class Ascent(torch.optim.SGD):
    """Gradient ascent: SGD with the sign of the step flipped."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One step up the gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=group["lr"])


def make_narrow(params, lr: float, momentum: float):
    if momentum >= 1.0:
        raise ValueError("momentum must be < 1")
    return torch.optim.SGD(params, lr=lr, momentum=momentum)


def make_broken(params, lr: float):
    raise RuntimeError("boom: this factory always fails")


@hookimpl
def register_optimizers(register) -> None:
    register("global_rng_sgd", lambda params, lr: GlobalRngSGD(params, lr=lr), doc="SGD + global-RNG noise")
    register("forgetful_momentum", lambda params, lr: ForgetfulMomentum(params, lr=lr, momentum=0.9),
             doc="momentum lost by state_dict")
    register("quiet_sam", lambda params, lr: QuietSAM(params, lr=lr), doc="SAM without needs_closure")
    register("silent_closure", lambda params, lr: SilentClosure(params, lr=lr), needs_closure=True,
             doc="needs_closure, but steps without one")
    register("ascent", lambda params, lr: Ascent(params, lr=lr), doc="climbs the loss")
    register("narrow", make_narrow, options={"momentum": Option(0.0, "momentum", min=0.0, max=1.0)},
             doc="declares momentum up to 1, rejects 1")
    register("broken_factory", make_broken, doc="its factory raises")
    register("needs_value", make_narrow, options={"momentum": Option(type=float, doc="required", min=0.0)},
             doc="a required option, no check_options")
    register("bad_check_options", make_narrow, options={"momentum": Option(0.0, "momentum")},
             check_options={"speed": 1.0}, doc="check_options naming an option it does not have")


# ------------------------------------------------------------------ tasks
class GaussianCovariates(LinearRegressionTask):
    """x ~ N(0, I) from the generator: the base of the planted tasks."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal covariates."""
        return self.randn(batch_size, self.n + 1, self.d, generator=generator)


class GlobalRngTask(GaussianCovariates):
    """Covariates from torch's global RNG instead of the generator."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal covariates from the global RNG (the fault)."""
        return torch.randn(batch_size, self.n + 1, self.d)


class NoisyLabels(GaussianCovariates):
    """Labels with noise that no option declares."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The law's prompts, then noise on every label."""
        batch = super().sample(batch_size, generator)
        return Batch(batch.x, batch.y + 0.1 * self.randn(batch_size, self.n + 1, generator=generator))


class BiasedWeights(Task):
    """Labels <w, x> with w ~ N(1, I) instead of N(0, I)."""

    def __init__(self, d: int, n: int) -> None:
        self.d, self.n = d, n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Gaussian covariates, a shifted weight vector per prompt."""
        x = torch.randn(batch_size, self.n + 1, self.d, generator=generator)
        w = 1.0 + torch.randn(batch_size, self.d, 1, generator=generator)
        return Batch(x, torch.bmm(x, w).squeeze(-1))


class WideBatch(GaussianCovariates):
    """x with d+1 features."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """One feature too many."""
        return self.randn(batch_size, self.n + 1, self.d + 1, generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The first d features (so the labels can be computed at all)."""
        return x[..., :self.d]


@hookimpl
def register_tasks(register) -> None:
    register("global_rng_task", GlobalRngTask, doc="covariates from the global RNG")
    register("noisy_labels", NoisyLabels, doc="undeclared label noise")
    register("biased_weights", BiasedWeights, doc="w ~ N(1, I)")
    register("wide_batch", WideBatch, doc="x of d+1 features")
    register("twin", GaussianCovariates, doc="a task named like a diagnostic")


# ------------------------------------------------------------------ diagnostics
class ParamMutator(Diagnostic):
    """Measures the parameter norm after scaling probe.params in place (the fault)."""

    def measure(self, probe, step):
        """The norm of half the parameters, halved in place."""
        return [Scalar("norm", float(probe.params.mul_(0.5).norm()))]


class EvalMutator(Diagnostic):
    """Normalizes the eval batch's covariates in place (the fault)."""

    def measure(self, probe, step):
        """The eval loss after scaling the shared eval batch."""
        probe.eval_batch.x.mul_(1.01)
        return [Scalar("loss", probe.loss())]


class ForgetfulCounter(Diagnostic):
    """Counts its measurements; its state_dict forgets the count."""

    def __init__(self) -> None:
        self.count = 0

    def measure(self, probe, step):
        """The number of measurements so far."""
        self.count += 1
        return [Scalar("count", self.count)]

    def state_dict(self):
        """Nothing: the count is lost (the fault)."""
        return {}


class MissingPlot(Diagnostic):
    """Declares the plot 'value' but returns 'other'."""

    def measure(self, probe, step):
        """A scalar under another tag than its declared plot's."""
        return [Scalar("other", probe.loss())]


class Twin(Diagnostic):
    """A diagnostic named like a task."""

    def measure(self, probe, step):
        """The eval loss."""
        return [Scalar("loss", probe.loss())]


@hookimpl
def register_diagnostics(register) -> None:
    register("param_mutator", ParamMutator, doc="scales probe.params in place")
    register("eval_mutator", EvalMutator, doc="scales the eval batch in place")
    register("forgetful_counter", ForgetfulCounter, doc="state_dict forgets its count")
    register("missing_plot", MissingPlot, plots=[Plot("value", "value")], doc="declares a plot it never returns")
    register("twin", Twin, doc="a diagnostic named like a task")
