"""The checks of an optimizer: it builds with its declared options, is deterministic, resumes exactly
from its ``state_dict``, trains in float64, keeps the closure contract, descends a convex problem and
leaves the global RNG alone. Every step goes through the engine's own ``training_step``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from testbed.conformance.harness import (BATCH, CLIP, D, N, STEPS, Fault, data_stream, first_difference,
                                         declared_variants, global_rng_watch, optimizer_spec, parameters_of,
                                         reference_task, round_trip, same_tensors, tiny_model)
from testbed.conformance.subject import Check, Subject
from testbed.engine.build import build_optimizer, needs_closure
from testbed.engine.loop import training_step
from testbed.tasks import Batch, Task, checked_task


@dataclass
class Training:
    """A tiny run in progress: the model, the optimizer under check and the training stream."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    stream: torch.Generator
    closure_needed: bool
    task: Task

    def steps(self, count: int) -> list[float]:
        """``count`` training steps; their minibatch losses (NaN for a step that computed none)."""
        losses = []
        for _ in range(count):
            batch = self.task.sample(BATCH, self.stream)
            measured = training_step(self.model, self.optimizer, batch, CLIP, self.closure_needed)
            losses.append(measured.get("loss", math.nan))
        return losses


def start(subject: Subject, dtype: torch.dtype = torch.float32, model: torch.nn.Module | None = None) -> Training:
    """A fresh run: the tiny model (same initial weights every time), the optimizer built by the
    engine from the checked options, the seed's training stream."""
    model = tiny_model(dtype) if model is None else model
    spec = optimizer_spec(subject.entry, subject.options)
    optimizer = build_optimizer(spec, subject.registry, model.parameters())
    task = checked_task(reference_task(), "reference", dtype)
    return Training(model, optimizer, data_stream(), needs_closure(spec, subject.registry), task)


def closure_needed(subject: Subject) -> bool:
    """Whether the engine hands this optimizer a closure (its registered needs_closure)."""
    return needs_closure(optimizer_spec(subject.entry, subject.options), subject.registry)


# ------------------------------------------------------------------ the checks
def builds_with_declared_options(subject: Subject) -> str:
    """The factory accepts its defaults and every bound and choice its options declare."""
    variants = declared_variants(subject)
    for label, options in variants:
        spec = optimizer_spec(subject.entry, options)
        try:
            build_optimizer(spec, subject.registry, tiny_model().parameters())
        except Exception as exc:
            raise Fault(f"the factory fails with {label}, a value its options declare valid: "
                        f"{type(exc).__name__}: {exc}") from None
    return f"{len(variants)} option settings"


def deterministic(subject: Subject) -> str:
    """Two runs from the same seed give bitwise the same losses and weights."""
    first, second = start(subject), start(subject)
    losses = first.steps(STEPS), second.steps(STEPS)
    step = first_difference(*losses)
    if step is not None or not same_tensors(parameters_of(first.model), parameters_of(second.model)):
        where = f"at step {step + 1} (loss {losses[0][step]!r} vs {losses[1][step]!r})" if step is not None else \
            "in the final weights"
        raise Fault(f"two runs from the same seed differ {where}: the optimizer draws randomness it does not "
                    "own or depends on state outside itself")
    return f"{STEPS} steps twice"


def resumes_exactly(subject: Subject) -> str:
    """Run k steps, save model and optimizer state as a checkpoint does, build both afresh, load, go
    on: the losses and weights are bitwise those of the unbroken run."""
    unbroken = start(subject)
    expected = unbroken.steps(STEPS)
    half = STEPS // 2
    first = start(subject)
    losses = first.steps(half)
    state = round_trip({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict()},
                       "its state_dict()")
    resumed = start(subject)
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.stream.set_state(first.stream.get_state())
    losses += resumed.steps(STEPS - half)
    step = first_difference(expected, losses)
    if step is not None or not same_tensors(parameters_of(unbroken.model), parameters_of(resumed.model)):
        where = f"at step {step + 1} (loss {losses[step]!r}, unbroken {expected[step]!r})" if step is not None \
            else "in the final weights"
        raise Fault(f"a run resumed after step {half} from state_dict() differs from the unbroken run {where}: "
                    "state_dict() drops part of the optimizer's state (or load_state_dict() does not restore it)")
    return f"resumed after step {half} of {STEPS}"


def trains_in_float64(subject: Subject) -> str:
    """Steps on a float64 model give finite losses and leave the weights float64."""
    training = start(subject, torch.float64)
    losses = training.steps(STEPS)
    if not all(math.isfinite(loss) for loss in losses):
        raise Fault(f"float64 training gives non-finite losses {losses}")
    wrong = sorted({str(p.dtype) for p in training.model.parameters() if p.dtype != torch.float64})
    if wrong:
        raise Fault(f"a float64 model's weights became {', '.join(wrong)} after its steps")
    return f"{STEPS} float64 steps"


def keeps_the_closure_contract(subject: Subject) -> str:
    """needs_closure: ``step()`` without a closure raises. Otherwise: ``step(closure)`` calls the
    closure once and moves the weights exactly as the engine's ``closure(); step()`` does."""
    if closure_needed(subject):
        return _refuses_a_missing_closure(subject)
    return _takes_a_closure_as_it_takes_none(subject)


def _refuses_a_missing_closure(subject: Subject) -> str:
    training = start(subject)
    batch = training.task.sample(BATCH, training.stream)
    training_step(training.model, training.optimizer, batch, CLIP, closure_needed=True)  # a first, normal step
    try:
        training.optimizer.step()
    except Exception:
        return "step() without a closure raises"
    raise Fault("step() without a closure returned normally, but the optimizer is registered with "
                "needs_closure: it must raise, not quietly step on whatever p.grad holds")


def _takes_a_closure_as_it_takes_none(subject: Subject) -> str:
    engine, handed = start(subject), start(subject)
    batch = engine.task.sample(BATCH, engine.stream)
    training_step(engine.model, engine.optimizer, batch, CLIP, closure_needed=False)
    calls = int(training_step(handed.model, handed.optimizer, batch, CLIP, closure_needed=True)["gradient_evaluations"])
    if calls == 0:
        raise Fault("step(closure) never calls the closure it is handed: it silently ignores it (torch's "
                    "convention, which the engine relies on, is to evaluate it)")
    if calls > 1:
        raise Fault(f"step(closure) calls the closure {calls} times, so the optimizer needs one, but it is "
                    "registered without needs_closure: the engine hands it none, and it then silently steps "
                    "on p.grad alone (register it with needs_closure=True, and raise in step() without one)")
    if not same_tensors(parameters_of(engine.model), parameters_of(handed.model)):
        raise Fault("step(closure) moves the weights differently from step() after the same gradient: "
                    "without a closure (how the engine calls it, needs_closure being false) it misbehaves")
    return "step(closure) and closure(); step() agree"


class ConvexModel(torch.nn.Module):
    """A linear predictor of the query label from the query's covariates: a least-squares problem,
    convex in its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(D))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The prediction ``<w, x_query>``."""
        return x[:, -1] @ self.w


CONVEX_LRS = (1.0, 0.1, 0.01, 0.001)
CONVEX_STEPS = 20


def descends_a_convex_problem(subject: Subject) -> str:
    """On least squares with a fixed teacher, the loss falls by at least 10% in 20 steps at one
    learning rate of 1, 0.1, 0.01, 0.001 at least."""
    x = torch.randn(BATCH, N + 1, D, generator=torch.Generator().manual_seed(1))
    batch = Batch(x, x @ torch.tensor([1.0, -2.0, 0.5]))
    needed = closure_needed(subject)
    results = []
    for lr in CONVEX_LRS:
        model = ConvexModel()
        spec = optimizer_spec(subject.entry, subject.options, lr)
        optimizer = build_optimizer(spec, subject.registry, model.parameters())
        losses = [training_step(model, optimizer, batch, None, needed).get("loss", math.nan)
                  for _ in range(CONVEX_STEPS + 1)]  # the last step's loss is the point after CONVEX_STEPS
        results.append((lr, losses[0], losses[-1]))
        if math.isfinite(losses[-1]) and losses[-1] <= 0.9 * losses[0]:
            return f"loss {losses[0]:.3g} -> {losses[-1]:.3g} at lr {lr}"
    tried = ", ".join(f"lr {lr}: {a:.3g} -> {b:.3g}" for lr, a, b in results)
    raise Fault(f"the loss of a convex least-squares problem does not fall by 10% in {CONVEX_STEPS} steps at "
                f"any learning rate ({tried}): the update does not descend")


def leaves_the_global_rng_alone(subject: Subject) -> str:
    """Building the optimizer and stepping it draw nothing from torch's, numpy's or Python's global RNG."""
    with global_rng_watch() as watch:
        start(subject).steps(STEPS)
    if watch["changed"]:
        raise Fault(f"building it and {STEPS} steps drew from the global RNG: {'; '.join(watch['changed'])}; draw "
                    "from a torch.Generator of its own (seeded by an option, its state in state_dict())")
    return f"construction and {STEPS} steps"


CHECKS = (
    Check("options", "builds with its declared options (defaults, bounds, choices)", builds_with_declared_options),
    Check("deterministic", "the same seed gives identical losses twice", deterministic),
    Check("resume", "a run resumed from state_dict() is bitwise the unbroken run", resumes_exactly),
    Check("float64", "trains a float64 model", trains_in_float64),
    Check("closure", "keeps the closure contract", keeps_the_closure_contract),
    Check("convex", "a tiny convex problem's loss decreases", descends_a_convex_problem),
    Check("global-rng", "leaves the global RNG untouched", leaves_the_global_rng_alone),
)
