"""The tiny problem every check runs on, and the tools checks share: the options a plugin is built
with, the global random state, a checkpoint's round trip, the first difference of two curves."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from typing import Any, Iterator, Mapping, Sequence

import torch

from testbed.conformance.subject import Subject
from testbed.engine.checkpoint import global_random_state, set_global_random_state
from testbed.engine.seeds import generator, stream_seed
from testbed.engine.specs import OptimizerSpec
from testbed.errors import ConfigError
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.options import REQUIRED, Option, validate_options
from testbed.plugins.registry import Entry
from testbed.tasks import Batch
from testbed.testing.probes import StandardNormalPrompts

D, N = 3, 6  # covariate dimension and context length: the smallest sizes with every code path
BATCH = 32  # prompts per step
STEPS = 4  # training steps of a check run
LR = 0.01  # a learning rate every sane optimizer survives for a few steps
CLIP = 1.0  # train.clip_grad_norm's default: the checks step as a default run does
MODEL = ModelConfig(layers=2)
SEED = 0
# A diagnostic is checked at every step (its check_options may set another schedule): a few steps
# then exercise it before and after a resume, whatever its declared schedule.
CHECK_SCHEDULE = {"every": 1, "steps": [], "start": 0, "stop": None}


class Fault(Exception):
    """What a check found wrong; its message names the fault."""


def reference_task() -> StandardNormalPrompts:
    """The checks' training task at the tiny sizes: x ~ N(0, I_d), the testing kit's own (it names no
    plugin, so a check never depends on which plugins are installed)."""
    return StandardNormalPrompts(D, N)


def tiny_model(dtype: torch.dtype = torch.float32) -> LinearTransformer:
    """The tiny model, initialized from the run seed's "init" stream as a run is (same weights each call)."""
    return LinearTransformer(MODEL, D, N, generator(stream_seed(SEED, "init"))).to(dtype)


def data_stream() -> torch.Generator:
    """The training prompts' stream of the run seed, as a run draws it."""
    return generator(stream_seed(SEED, "data"))


def eval_batch(dtype: torch.dtype = torch.float32) -> Batch:
    """A fixed evaluation batch (its own seed, as eval.seed gives a run)."""
    batch = reference_task().sample(64, generator(99))
    return Batch(batch.x.to(dtype), batch.y.to(dtype))


def optimizer_spec(entry: Entry, options: Mapping[str, Any], lr: float = LR) -> OptimizerSpec:
    """The config entry an optimizer is checked as."""
    return OptimizerSpec(entry.name, entry.name, lr, dict(options))


# ------------------------------------------------------------------ options
def checked_options(entry: Entry, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated options the behavioural checks build ``entry`` with: its defaults, overridden
    by its registered ``check_options``, then by ``given`` (the command line's). A ConfigError says
    what is wrong, e.g. a required option no one gave a value."""
    declared = entry.metadata.get("check_options", {})
    if not isinstance(declared, Mapping):
        raise ConfigError(f"{entry.kind} {entry.name!r}: check_options must be a mapping of option values, "
                          f"not {type(declared).__name__}")
    base = CHECK_SCHEDULE if entry.kind == "diagnostic" else {}
    return validate_options(entry.config_options, {**base, **declared, **(given or {})},
                            f"{entry.kind} {entry.name!r} options")


def missing_required(entry: Entry, given: Mapping[str, Any]) -> list[str]:
    """The required options (no default) of ``entry`` that neither check_options nor ``given`` set."""
    declared = entry.metadata.get("check_options", {})
    have = {*given, *(declared if isinstance(declared, Mapping) else {})}
    return [name for name, option in entry.options.items() if option.default is REQUIRED and name not in have]


def declared_variants(subject: Subject) -> list[tuple[str, dict[str, Any]]]:
    """(label, options) to build a plugin with in its options check: its defaults, its check options
    when they differ, and every declared bound and choice over the defaults."""
    variants = [("its default options", dict(subject.defaults))]
    if dict(subject.options) != dict(subject.defaults):
        variants.append(("its check options", dict(subject.options)))
    return variants + list(option_variants(subject.entry, subject.defaults))


def option_variants(entry: Entry, base: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, options) for every declared value worth building with: each option at each of its
    inclusive bounds and each of its choices, over ``base``. A value the host's own validation refuses
    (an option's ``check``) is no value a config can give, so it is left out."""
    for name, option in entry.options.items():
        for label, value in _declared_values(option):
            try:
                options = validate_options(entry.config_options, {**base, name: value}, "options")
            except ConfigError:
                continue
            yield f"{name}={label}", options


def _declared_values(option: Option) -> list[tuple[str, Any]]:
    """(label, value) of an option's inclusive bounds and its choices."""
    values = [(repr(c), c) for c in option.choices or ()]
    bounds = [] if option.min is None or option.min_exclusive else [option.min]
    bounds += [] if option.max is None else [option.max]
    kind = option.type or (None if option.default in (REQUIRED, None) else type(option.default))
    for bound in bounds:
        if kind in (list, tuple):
            values.append((f"[{bound}, ...]", [bound] * (option.length or 1)))
        elif kind in (int, float):
            values.append((repr(bound), kind(bound)))
    return values


# ------------------------------------------------------------------ global random state
def global_rng_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The global generators whose state differs between two ``global_random_state()`` snapshots."""
    changed = []
    if not torch.equal(before["torch"], after["torch"]):
        changed.append("torch's (torch.rand/randn/... without generator=)")
    if before["numpy"] != after["numpy"]:
        changed.append("numpy's (np.random.*)")
    if before["python"] != after["python"]:
        changed.append("Python's (the random module)")
    return changed


@contextlib.contextmanager
def global_rng_watch() -> Iterator[dict[str, list[str]]]:
    """Yields a dict whose "changed" lists, on exit, the global generators the block drew from; the
    global states are put back afterwards, so one plugin's draws never leak into another check."""
    before = global_random_state()
    found: dict[str, list[str]] = {"changed": []}
    try:
        yield found
    finally:
        found["changed"] = global_rng_changes(before, global_random_state())
        set_global_random_state(before)


# ------------------------------------------------------------------ checkpoints and curves
def round_trip(state: Any, what: str) -> Any:
    """``state`` written and read back as a checkpoint holds it (``torch.load(weights_only=True)``),
    or a Fault naming ``what`` holds something a checkpoint cannot."""
    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)
    except (pickle.PicklingError, pickle.UnpicklingError, TypeError, AttributeError) as exc:
        raise Fault(f"{what} cannot go into a checkpoint: torch.load(weights_only=True) refuses it "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0]}); keep only tensors and plain values") from None


def first_difference(a: Sequence[float], b: Sequence[float]) -> int | None:
    """The first index where two curves differ bitwise (NaN equals NaN), or None if equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y and not (math.isnan(x) and math.isnan(y)):
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def same_tensors(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    """Whether two tensor lists are bitwise equal (dtype, shape and every entry, NaN included)."""
    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(torch.nan_to_num(x), torch.nan_to_num(y))
        and torch.equal(torch.isnan(x), torch.isnan(y)) for x, y in zip(a, b))


def parameters_of(model: torch.nn.Module) -> list[torch.Tensor]:
    """Copies of the model's parameters."""
    return [p.detach().clone() for p in model.parameters()]
