"""What a diagnostic plugin is: a measurement of the loss landscape along a run.

A diagnostic factory takes its validated options and returns a ``Diagnostic``: a ``Schedule`` saying
when it runs, and ``measure(probe, step)`` returning records (scalars, histograms, figures, text)
that the engine logs under ``diag/<name>/<tag>``. A diagnostic that ``needs_update`` is measured
after the optimizer step leaving the point of ``step``, so it sees the update actually taken.

A diagnostic sees the run only through a ``Probe``: a copy of the parameters and pure functions of
them. It never touches the model, the optimizer or the training stream, so turning diagnostics on
or off leaves the training trajectory bitwise unchanged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch.func import functional_call, grad, jacrev, jvp

from .errors import StorageError
from .model import LinearTransformer, mse_loss
from .second_order import kernel_hessian, kernel_hvp, kernel_supports
from .options import Option
from .tasks import Batch, Task


HESSIAN_CHUNK = 10

# ------------------------------------------------------------------ records
@dataclass(frozen=True)
class Scalar:
    tag: str
    value: float


@dataclass(frozen=True)
class Histogram:
    tag: str
    values: Any  # a tensor or array of samples
    bins: Any = "tensorflow"


@dataclass(frozen=True)
class Figure:
    tag: str
    figure: Any  # a matplotlib Figure; the engine closes it after logging


@dataclass(frozen=True)
class Text:
    tag: str
    text: str


Record = Scalar | Histogram | Figure | Text


# ------------------------------------------------------------------ schedules
@dataclass(frozen=True)
class Schedule:
    """Steps at which a diagnostic runs: every ``every`` steps from ``start`` (inclusive) to
    ``stop`` (exclusive; None = the end of the run), plus the explicit ``steps``. Step 0 is the
    initialization, step t the point after t optimizer steps."""

    every: int | None = None
    steps: tuple[int, ...] = ()
    start: int = 0
    stop: int | None = None

    def due(self, step: int) -> bool:
        if step in self.steps:
            return True
        if self.every is None or step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0

    def last(self, total_steps: int) -> int | None:
        """The last due step of a run of ``total_steps`` steps (None if never due)."""
        end = total_steps if self.stop is None else min(self.stop - 1, total_steps)
        candidates = [s for s in self.steps if s <= total_steps]
        if self.every is not None and end >= self.start:
            candidates.append(self.start + (end - self.start) // self.every * self.every)
        return max(candidates, default=None)


def schedule_options(every: int | None = None, steps: Sequence[int] = (), start: int = 0,
                     stop: int | None = None) -> dict[str, Option]:
    """The schedule options every diagnostic offers, with the plugin's own defaults."""
    return {
        "every": Option(every, "run every k steps (null: only at `steps`)", type=int, min=1, nullable=True),
        "steps": Option(list(steps), "explicit steps to run at (0 = initialization)", type=list, item=int, min=0),
        "start": Option(start, "first step of the `every` schedule", type=int, min=0),
        "stop": Option(stop, "no `every` runs from this step on (null: until the end)", type=int, min=1,
                       nullable=True),
    }


def schedule_from(options: dict[str, Any]) -> Schedule:
    return Schedule(options["every"], tuple(options["steps"]), options["start"], options["stop"])


class Diagnostic:
    """Base class of diagnostics. Subclasses set ``schedule`` and implement ``measure``."""

    schedule: Schedule = Schedule()
    needs_update: bool = False

    def measure(self, probe: "Probe", step: int) -> list[Record]:
        raise NotImplementedError

    def finish(self, probe: "Probe", step: int) -> list[Record]:
        """Called once when the run ends (at its last step): emit anything aggregated."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves so that a resumed run measures as if never stopped: by default
        every attribute but the schedule (the constructor rebuilds it from the options). Its values
        must be tensors or plain values (numbers, strings, None, lists, tuples, dicts of them): a
        checkpoint is read with torch.load(weights_only=True), which refuses anything else, so a
        run holding other state is not checkpointed (override this to convert it)."""
        return {name: value for name, value in vars(self).items() if name != "schedule"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


# ------------------------------------------------------------------ the probe
@dataclass
class ParameterBlock:
    name: str
    start: int
    stop: int
    shape: torch.Size


@dataclass
class Probe:
    """Exact, side-effect-free access to a run's loss landscape at one point.

    ``params`` is the flattened vector of every trainable parameter (a detached copy). Losses,
    gradients, Hessians and Hessian-vector products are pure functions of a parameter vector and
    a batch; second derivatives use the model's plain-autograd path under ``torch.func``.
    """

    model: LinearTransformer
    task: Task
    eval_batch: Batch
    train_batch_size: int
    seed: int
    params: torch.Tensor
    blocks: list[ParameterBlock]
    next_params: torch.Tensor | None = None  # after the update from ``params`` (update diagnostics)
    train_gradient: torch.Tensor | None = None  # the (clipped) minibatch gradient of that update
    _twice: LinearTransformer | None = field(default=None, repr=False)

    @classmethod
    def of(cls, model: LinearTransformer, task: Task, eval_batch: Batch, train_batch_size: int,
           seed: int) -> "Probe":
        blocks, start = [], 0
        for name, p in model.named_parameters():
            blocks.append(ParameterBlock(name, start, start + p.numel(), p.shape))
            start += p.numel()
        fast = copy.deepcopy(model)  # copies: a diagnostic never touches the trained model
        twice = copy.deepcopy(model)
        twice.use_kernel = False  # torch.func needs the plain-autograd path
        return cls(fast, task, eval_batch, train_batch_size, seed, flatten(model), blocks, _twice=twice)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return {b.name: theta[b.start:b.stop].view(b.shape) for b in self.blocks}

    def loss_function(self, batch: Batch | None = None, twice: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """theta -> loss on ``batch`` (default: the fixed eval batch)."""
        batch = batch or self.eval_batch
        model = self._twice if twice else self.model

        def loss(theta: torch.Tensor) -> torch.Tensor:
            prediction = functional_call(model, self.unflatten(theta), (batch.x, batch.y))
            return mse_loss(prediction, batch.target)

        return loss

    def loss(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> float:
        theta = self.params if theta is None else theta
        with torch.no_grad():
            return float(self.loss_function(batch, twice=False)(theta))

    def gradient(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """Gradient of the loss (first order: the fast path of the engine)."""
        theta = (self.params if theta is None else theta).detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss_function(batch, twice=False)(theta), theta)
        return g

    def hessian(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """The full Hessian (P x P) of the loss in the flattened parameters: the compiled kernel's
        dual numbers where it covers the model, else torch.func reverse-over-reverse, vectorized
        over chunks of rows (measured faster than unchunked or forward-over-reverse)."""
        theta = (self.params if theta is None else theta).detach()
        batch = batch or self.eval_batch
        if kernel_supports(self.model, batch):
            return kernel_hessian(self.model, batch, theta)
        return jacrev(grad(self.loss_function(batch)), chunk_size=HESSIAN_CHUNK)(theta)

    def hvp(self, vector: torch.Tensor, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """Hessian-vector product H(theta) v, exact (forward-over-reverse)."""
        theta = (self.params if theta is None else theta).detach()
        batch = batch or self.eval_batch
        if kernel_supports(self.model, batch):
            return kernel_hvp(self.model, batch, theta, vector.reshape(1, -1))[0].to(vector.dtype)
        return jvp(grad(self.loss_function(batch)), (theta,), (vector,))[1]

    @property
    def update(self) -> torch.Tensor:
        """theta_{t+1} - theta_t, the update actually taken from the probed point."""
        if self.next_params is None:
            raise RuntimeError("this probe has no update: the diagnostic must set needs_update")
        return self.next_params - self.params

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Fresh prompts of the run's task from the diagnostic's own generator."""
        return self.task.sample(batch_size, generator)

    def generator(self, name: str) -> torch.Generator:
        """A generator of its own for a diagnostic, fixed by the run seed and the name."""
        from .engine import stream_seed

        return torch.Generator().manual_seed(stream_seed(self.seed, f"diagnostic:{name}"))


def flatten(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                      for p in model.parameters()]).clone()


class DiagnosticRunner:
    """Runs one run's diagnostics at their steps and logs their records under diag/<name>/.
    A diagnostic that raises is reported (TensorBoard text and the run's results) and disabled for
    the rest of the run; the run itself goes on."""

    def __init__(self, diagnostics: list[tuple[str, Diagnostic]], probe: Probe, logger) -> None:
        self.diagnostics, self.probe, self.logger = diagnostics, probe, logger
        self.disabled: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        return {"disabled": sorted(self.disabled), "diagnostics": {n: d.state_dict() for n, d in self.diagnostics}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.disabled = set(state["disabled"])
        for name, diagnostic in self.diagnostics:
            diagnostic.load_state_dict(state["diagnostics"][name])

    def _due(self, step: int, update: bool) -> list[tuple[str, Diagnostic]]:
        return [(name, d) for name, d in self.diagnostics
                if d.needs_update == update and name not in self.disabled and d.schedule.due(step)]

    def at_point(self, model: torch.nn.Module, step: int, result) -> None:
        due = self._due(step, update=False)
        if due:
            self.probe.params = flatten(model)
            self._measure(due, step, result)

    def before_update(self, model: torch.nn.Module, point: int) -> torch.Tensor | None:
        """The parameters before the update from ``point``, if an update diagnostic is due there."""
        return flatten(model) if self._due(point, update=True) else None

    def after_update(self, model: torch.nn.Module, point: int, before: torch.Tensor | None, result) -> None:
        if before is None:
            return
        self.probe.params, self.probe.next_params = before, flatten(model)
        self.probe.train_gradient = flat_gradient(model)
        try:
            self._measure(self._due(point, update=True), point, result)
        finally:
            self.probe.next_params = self.probe.train_gradient = None

    def finish(self, model: torch.nn.Module, step: int, result) -> None:
        self.probe.params = flatten(model)
        for name, diagnostic in self.diagnostics:
            if name not in self.disabled:
                self._call(name, lambda: diagnostic.finish(self.probe, step), step, result)

    def _measure(self, due: list[tuple[str, Diagnostic]], step: int, result) -> None:
        for name, diagnostic in due:
            self._call(name, lambda: diagnostic.measure(self.probe, step), step, result)

    def _call(self, name: str, measure: Callable[[], list[Record]], step: int, result) -> None:
        try:
            for record in measure():
                self._log(name, record, step, result)
        except StorageError:  # the log directory failed, not the diagnostic: the run stops
            raise
        except Exception as exc:  # a diagnostic's bug must not stop the run
            message = f"{name} failed at step {step} and is disabled for this run: {type(exc).__name__}: {exc}"
            result.diagnostic_errors.append(message)
            self.logger.text(f"diag/{name}/error", message, step)
            self.disabled.add(name)

    def _log(self, name: str, record: Record, step: int, result) -> None:
        if not isinstance(record, (Scalar, Histogram, Figure, Text)):
            raise TypeError(f"a diagnostic returned {type(record).__name__}, not a record")
        tag = f"diag/{name}/{record.tag}"
        if isinstance(record, Scalar):
            value = float(record.value)
            self.logger.scalar(tag, value, step)
            result.diagnostics.setdefault(f"{name}/{record.tag}", []).append([step, value])
            if not math.isfinite(value):
                result.diagnostic_errors.append(f"{name}: {record.tag} is {value} at step {step}")
        elif isinstance(record, Histogram):
            values = torch.as_tensor(record.values, dtype=torch.float64)
            finite = values[torch.isfinite(values)]
            if finite.numel():
                self.logger.histogram(tag, finite, step, bins=record.bins)
        elif isinstance(record, Figure):
            self.logger.figure(tag, record.figure, step)
        else:
            self.logger.text(tag, record.text, step)
