"""The checks of a task: it builds with its declared options, draws only from the generator it is
handed (the same state gives the same batch; the global RNG untouched; on the generator's device),
returns batches of the right shapes and dtype, and keeps the label law: each prompt's labels are
``<w, x_i>`` (or ``<w, features(x_i)>``) with its own ``w ~ N(0, I_d)``.

Tasks that declare label noise do so as the option ``label_noise`` (``testbed.LinearRegressionTask``'s
convention): the label-law check sets it to 0. Labels linear in fixed features of ``x`` are declared
by a ``features(x)`` method (``LinearRegressionTask``'s): the law is then checked on ``features(x)``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from testbed.conformance.harness import BATCH, D, N, Fault, declared_variants, global_rng_watch
from testbed.conformance.subject import Check, Subject
from testbed.engine.build import build_task
from testbed.engine.seeds import generator
from testbed.engine.specs import TaskSpec
from testbed.tasks import Batch, Task, batch_problem, checked_task

LAW_PROMPTS = 4000  # prompts the label law is tested on: w's moments to ~0.02 (they must be within 0.15-0.2)
RESIDUAL_TOLERANCE = 1e-4  # float32 labels fit exactly to ~1e-6 of |w|
CONDITION_LIMIT = 1e3  # prompts whose covariates pin w down to ~1e-4 (the others tell nothing about w)


def build(subject: Subject, options: Mapping[str, Any] | None = None) -> Task:
    """The task at the tiny sizes, built by the engine from ``options`` (default: the checked ones)."""
    spec = TaskSpec(subject.entry.name, D, N, dict(subject.options if options is None else options))
    return build_task(spec, subject.registry)


def sample(task: Task, batch_size: int = BATCH, seed: int = 5, device: str = "cpu") -> Batch:
    """A batch from a fresh generator seeded with ``seed`` on ``device``."""
    return task.sample(batch_size, torch.Generator(device=device).manual_seed(seed))


def fault_of(batch: Any, batch_size: int = BATCH, dtype: torch.dtype = torch.float32) -> Fault | None:
    """A Fault naming what makes ``batch`` unfit for the tiny model, or None."""
    problem = batch_problem(batch, batch_size, N, D, dtype)
    return None if problem is None else Fault(f"sample({batch_size}, generator) returned {problem}")


# ------------------------------------------------------------------ the checks
def builds_with_declared_options(subject: Subject) -> str:
    """The factory accepts its defaults and every bound and choice its options declare."""
    variants = declared_variants(subject)
    for label, options in variants:
        try:
            build(subject, options)
        except Exception as exc:
            raise Fault(f"the factory fails with {label}, a value its options declare valid: "
                        f"{type(exc).__name__}: {exc}") from None
    return f"{len(variants)} option settings"


def deterministic(subject: Subject) -> str:
    """Two batches drawn from generators in the same state are bitwise equal."""
    task = build(subject)
    first, second = sample(task), sample(task)
    for batch in (first, second):
        fault = fault_of(batch)
        if fault is not None:
            raise fault
    if not (torch.equal(first.x, second.x) and torch.equal(first.y, second.y)):
        raise Fault("two batches drawn from generators in the same state differ: the task draws from something "
                    "besides the generator it is handed (a generator of its own, the global RNG, state it keeps)")
    return f"two batches of {BATCH} from generators seeded alike"


def leaves_the_global_rng_alone(subject: Subject) -> str:
    """Building the task and sampling draw nothing from torch's, numpy's or Python's global RNG."""
    with global_rng_watch() as watch:
        sample(build(subject))
    if watch["changed"]:
        raise Fault(f"building it and sampling a batch drew from the global RNG: {'; '.join(watch['changed'])}; "
                    "draw only from the generator handed to sample()")
    return "construction and a batch"


def returns_fit_batches(subject: Subject) -> str:
    """d and n as given; x (B, n+1, d) and y (B, n+1), float32 on the cpu; the engine's float64 cast
    gives the same prompts."""
    task = build(subject)
    if (task.d, task.n) != (D, N):
        raise Fault(f"built with d={D}, n={N}, the task states d={task.d}, n={task.n}")
    batch = sample(task)
    fault = fault_of(batch)
    if fault is not None:
        raise fault
    wide = checked_task(build(subject), subject.entry.name, torch.float64).sample(BATCH, generator(5))
    if not (torch.equal(wide.x, batch.x.double()) and torch.equal(wide.y, batch.y.double())):
        raise Fault("a float64 run's prompts are not the float32 prompts cast: sampling depends on the dtype")
    return f"x {tuple(batch.x.shape)}, y {tuple(batch.y.shape)}, float32; float64 cast"


def draws_on_the_generator_device(subject: Subject) -> str:
    """With a generator on a CUDA device (where there is one), the batch is on that device."""
    if not torch.cuda.is_available():
        return "cpu only: no CUDA device here to draw on"
    batch = sample(build(subject), device="cuda")
    wrong = sorted({str(t.device) for t in (batch.x, batch.y) if t.device.type != "cuda"})
    if wrong:
        raise Fault(f"with a generator on cuda the batch is on {', '.join(wrong)}: draw on generator.device")
    return "cpu and cuda"


def follows_the_label_law(subject: Subject) -> str:
    """On noiseless prompts (label_noise 0 where declared) least squares on each prompt's n+1 tokens
    fits its labels exactly, and the fitted weights have mean 0 and covariance I over the prompts."""
    options = dict(subject.options)
    noiseless = "label_noise" in subject.entry.options
    if noiseless:
        options["label_noise"] = 0.0
    task = build(subject, options)
    batch = sample(task, LAW_PROMPTS, seed=7)
    fault = fault_of(batch, LAW_PROMPTS)
    if fault is not None:
        raise fault
    features = getattr(task, "features", None)
    regressors = (features(batch.x) if callable(features) else batch.x).double()
    what = "features(x)" if callable(features) else "x"
    weights = _fitted_weights(regressors, batch.y.double(), what, noiseless)
    _check_weight_law(weights)
    return f"exact fits of {LAW_PROMPTS} prompts on {what}, w ~ N(0, I)" + (" (label_noise 0)" if noiseless else "")


def _fitted_weights(regressors: torch.Tensor, labels: torch.Tensor, what: str, noiseless: bool) -> torch.Tensor:
    """Each prompt's least-squares weights, from its well-conditioned prompts; a Fault if some
    prompt's labels are not exactly linear in its regressors. Every token's equation is scaled to a
    unit regressor, so heavy-tailed covariates fit as exactly as light ones."""
    scale = torch.linalg.vector_norm(regressors, dim=-1, keepdim=True).clamp_min(1e-30)
    a, b = regressors / scale, labels / scale.squeeze(-1)
    w = torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1)
    residual = ((a @ w.unsqueeze(-1)).squeeze(-1) - b).abs().amax(-1) / (1 + torch.linalg.vector_norm(w, dim=-1))
    worst = int(residual.argmax())
    if residual[worst] > RESIDUAL_TOLERANCE:
        hint = "" if noiseless else " (a task with label noise declares it as the option label_noise, which this check sets to 0)"
        raise Fault(f"the labels are not linear in {what}: in prompt {worst} the best linear fit of its {N + 1} tokens "
                    f"leaves a residual of {float(residual[worst]):.3g}{hint}; labels linear in fixed features "
                    "of x declare them with a features(x) method")
    singular = torch.linalg.svdvals(a)
    well_posed = singular[:, 0] < CONDITION_LIMIT * singular[:, -1]
    if int(well_posed.sum()) < LAW_PROMPTS // 4:
        raise Fault(f"only {int(well_posed.sum())} of {LAW_PROMPTS} prompts have {regressors.shape[-1]} independent "
                    f"tokens in {what}: too few to tell w's law")
    return w[well_posed]


def _check_weight_law(weights: torch.Tensor) -> None:
    """A Fault unless the fitted weights look like draws of N(0, I): each mean within 0.15 of 0, the
    covariance within 0.2 of I (about 7 standard errors at 4,000 prompts: a correct task never fails)."""
    mean = weights.mean(0)
    covariance = torch.cov(weights.T).reshape(weights.shape[1], weights.shape[1])
    off = (covariance - torch.eye(weights.shape[1], dtype=covariance.dtype)).abs().max()
    if mean.abs().max() > 0.15 or off > 0.2:
        raise Fault(f"the weights that fit the prompts' labels have mean {_rounded(mean)} and covariance "
                    f"{_rounded(covariance)} over {len(weights)} prompts; the law is w ~ N(0, I_d), drawn for each prompt")


def _rounded(tensor: torch.Tensor) -> list:
    return torch.round(tensor, decimals=2).tolist()


CHECKS = (
    Check("options", "builds with its declared options (defaults, bounds, choices)", builds_with_declared_options),
    Check("deterministic", "the same generator state gives the same batch", deterministic),
    Check("global-rng", "leaves the global RNG untouched", leaves_the_global_rng_alone),
    Check("batch", "batches of shape (B, n+1, d) and (B, n+1), float32", returns_fit_batches),
    Check("device", "draws on the generator's device", draws_on_the_generator_device),
    Check("label-law", "labels y = <w, x> with w ~ N(0, I_d) per prompt", follows_the_label_law),
)
