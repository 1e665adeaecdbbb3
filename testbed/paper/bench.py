"""`testbed bench`: the engine against the direct formula, side by side, plus diagnostic costs.

Training cases run the same full step (fresh batch, forward, backward, clipping, Adam) for both
sides in one process with one torch thread, alternating rounds so that machine noise hits both
alike; the median round is reported. The direct formula is the literal transcription of the paper's
layer (explicit (n+1)x(n+1) score matrix and mask) in plain autograd.
"""

from __future__ import annotations

import resource
import statistics
import time
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Callable, Iterable, Iterator

import torch

from testbed.engine.specs import OptimizerSpec, TaskSpec, DiagnosticSpec
from testbed.engine.build import build_diagnostic, build_optimizer, build_task
from testbed.engine.probe import Probe
from testbed.engine.seeds import generator
from testbed.engine.loop import training_step
from testbed.model.transformer import LinearTransformer, direct_forward
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.options import validate_options
from testbed.plugins import load_plugins
from testbed.tasks import Batch, InDtype
from testbed.text import format_table

ADAM = OptimizerSpec("adam", "adam", 0.02, {"betas": [0.9, 0.9], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False})
GAUSSIAN = {"label_noise": 0.0}
GAMMA = {"shape": 0.1, "scale": None, "label_noise": 0.0}
NONLINEAR = {"hidden": 10, "teacher_seed": 0, "label_noise": 0.0}  # the teacher of suite/nonlinear.yaml


@dataclass(frozen=True)
class TrainingCase:
    """One training-speed case of the bench: a task, a model, a batch size and the dtype (as
    ``train.dtype``: the model and its prompts)."""
    name: str
    task: TaskSpec
    model: ModelConfig
    batch_size: int = 1000
    dtype: str = "float32"


TRAINING_CASES = [
    TrainingCase("setting 1 (L=3, d=5, n=20, B=1000)", TaskSpec("gaussian", 5, 20, GAUSSIAN), ModelConfig(layers=3)),
    TrainingCase("setting 3, gamma (L=3, d=5, n=20, B=1000)", TaskSpec("gamma", 5, 20, GAMMA), ModelConfig(layers=3)),
    TrainingCase("L=8 (d=5, n=20, B=1000)", TaskSpec("gaussian", 5, 20, GAUSSIAN), ModelConfig(layers=8)),
    TrainingCase("setting 1, float64 (L=3, d=5, n=20, B=1000)", TaskSpec("gaussian", 5, 20, GAUSSIAN),
                 ModelConfig(layers=3), dtype="float64"),
    TrainingCase("full P and Q (L=3, d=5, n=20, B=1000)", TaskSpec("gaussian", 5, 20, GAUSSIAN),
                 ModelConfig(layers=3, parameterization="full")),
    TrainingCase("larger model (L=8, d=20, n=60, B=1000)", TaskSpec("gaussian", 20, 60, GAUSSIAN), ModelConfig(layers=8)),
    TrainingCase("larger model, float64 (L=8, d=20, n=60, B=1000)", TaskSpec("gaussian", 20, 60, GAUSSIAN),
                 ModelConfig(layers=8), dtype="float64"),
    TrainingCase("softmax (L=3, d=5, n=20, B=1000)", TaskSpec("gaussian", 5, 20, GAUSSIAN),
                 ModelConfig(layers=3, attention="softmax")),
    TrainingCase("nonlinear (MLP features, full P/Q, L=3, d=5, n=20, B=2000)", TaskSpec("nonlinear", 5, 20, NONLINEAR),
                 ModelConfig(layers=3, parameterization="full", feature_map=FeatureMapConfig(hidden=(30,))), 2000),
]
# The direct formula's score matrices grow as n^2: the context-length sweep uses 100 prompts a step.
CONTEXT_LENGTHS = (20, 80, 320, 1280)
CONTEXT_BATCH = 100


def _seconds_per_step(step: Callable[[], Any], budget: float, max_steps: int) -> float:
    for _ in range(2):  # warm-up: allocator, lazy initialization, kernel build
        step()
    count, started = 0, time.perf_counter()
    while count < max_steps and (count < 3 or time.perf_counter() - started < budget):
        step()
        count += 1
    return (time.perf_counter() - started) / count


def time_training(case: TrainingCase, registry, budget: float, rounds: int, max_steps: int) -> dict[str, float]:
    """Training speed of one case, the engine's step against the direct formula's: median
    milliseconds and steps per second of each over ``rounds``, and their ratio."""
    dtype = getattr(torch, case.dtype)
    task = build_task(case.task, registry)
    task = task if dtype == torch.float32 else InDtype(task, dtype)  # as a run casts its prompts
    steps = {}
    for side in ("engine", "direct"):
        model = LinearTransformer(case.model, task.d, task.n, generator(0)).to(dtype)  # as run_model
        optimizer = build_optimizer(ADAM, registry, model.parameters())
        forward = None if side == "engine" else partial(direct_forward, model)
        data = generator(1)
        steps[side] = lambda m=model, o=optimizer, f=forward, g=data: training_step(
            m, o, task.sample(case.batch_size, g), 1.0, forward=f)
    timings: dict[str, list[float]] = {"engine": [], "direct": []}
    for _ in range(rounds):
        for side, step in steps.items():
            timings[side].append(_seconds_per_step(step, budget, max_steps))
    engine, direct = statistics.median(timings["engine"]), statistics.median(timings["direct"])
    return {"engine_ms_per_step": 1e3 * engine, "direct_ms_per_step": 1e3 * direct,
            "engine_steps_per_sec": 1 / engine, "direct_steps_per_sec": 1 / direct, "speedup": direct / engine}


def time_hessian(registry, repeats: int = 3) -> float:
    """Seconds for one full Hessian of the eval-batch loss, L=3, d=5, n=20, 1000 prompts."""
    task = build_task(TaskSpec("gaussian", 5, 20, GAUSSIAN), registry)
    model = LinearTransformer(ModelConfig(layers=3), task.d, task.n, generator(0))
    probe = Probe.of(model, task, task.sample(1000, generator(99)), 1000, 0)
    probe.hessian()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        probe.hessian()
    return (time.perf_counter() - started) / repeats


def noise_diagnostic(registry, samples: int, full_batch: int):
    """The gradient_noise diagnostic with these options (the others at their defaults)."""
    entry = registry.get("diagnostic", "gradient_noise", "bench")
    options = validate_options(entry.options, {"samples": samples, "full_batch": full_batch}, "bench")
    return build_diagnostic(DiagnosticSpec("gradient_noise", options), registry)


class PerBatchGradientProbe(Probe):
    """A probe whose ``gradients`` take one ``Probe.autograd_gradient`` per batch (functional_call and
    autograd): how gradient_noise computed its minibatch gradients before issue 15."""

    def gradients(self, batches: Iterable[Batch], theta: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """``autograd_gradient`` on each batch in turn, drawn lazily like ``Probe.gradients``."""
        for batch in batches:
            yield self.autograd_gradient(theta, batch)


def time_gradient_noise(registry, samples: int, full_batch: int = 100_000) -> dict[str, float]:
    """One gradient_noise evaluation on setting 3 (``full_batch`` prompts for g, then ``samples``
    minibatch gradients of 1000 prompts), side by side with the same evaluation taking one
    ``Probe.autograd_gradient`` per minibatch (before issue 15), and drawing the same prompts alone (the floor
    of any way that keeps the diagnostic's stream): seconds of each and the speedup."""
    task = build_task(TaskSpec("gamma", 5, 20, GAMMA), registry)
    model = LinearTransformer(ModelConfig(layers=3), task.d, task.n, generator(0))
    probe = Probe.of(model, task, task.sample(1000, generator(99)), 1000, 1)
    per_batch = PerBatchGradientProbe(**{f.name: getattr(probe, f.name) for f in fields(probe)})
    noise_diagnostic(registry, 2, 1000).measure(probe, 0)  # warm-up: the figure's first drawing
    diagnostic = noise_diagnostic(registry, samples, full_batch)
    seconds = {}
    for side, measured in (("seconds", probe), ("per_batch_seconds", per_batch)):
        started = time.perf_counter()
        diagnostic.measure(measured, 0)
        seconds[side] = time.perf_counter() - started
    draws = probe.generator("gradient_noise:0")
    sizes = [min(1000, full_batch - start) for start in range(0, full_batch, 1000)] + [1000] * samples
    started = time.perf_counter()
    for size in sizes:
        probe.sample(size, draws)
    seconds["sampling_seconds"] = time.perf_counter() - started
    return {**seconds, "speedup": seconds["per_batch_seconds"] / seconds["seconds"]}


def run_bench(budget: float = 2.0, rounds: int = 3, max_steps: int = 500, noise_samples: int = 10_000,
              context_lengths: tuple[int, ...] = CONTEXT_LENGTHS) -> dict[str, Any]:
    """The whole bench on one thread: training cases, context lengths, one Hessian, one
    gradient_noise evaluation, and the peak memory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    registry = load_plugins().registry
    try:
        training = {case.name: time_training(case, registry, budget, rounds, max_steps) for case in TRAINING_CASES}
        context = {}
        for n in context_lengths:
            case = TrainingCase(f"n={n}", TaskSpec("gaussian", 5, n, GAUSSIAN), ModelConfig(layers=3), CONTEXT_BATCH)
            context[str(n)] = time_training(case, registry, budget, 1, max_steps)
        hessian_seconds = time_hessian(registry)
        noise = time_gradient_noise(registry, noise_samples)
    finally:
        torch.set_num_threads(threads)
    return {
        "threads": 1,
        "torch": torch.__version__,
        "training": training,
        "context_length": {"batch_size": CONTEXT_BATCH, "cases": context},
        "hessian_seconds": hessian_seconds,
        "gradient_noise": {**noise, "samples": noise_samples, "full_batch": 100_000},
        "peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def format_bench(results: dict[str, Any]) -> str:
    """The bench's results as text tables, as `testbed bench` prints them."""
    rows = [("training step", "engine steps/s", "direct steps/s", "engine / direct")]
    for name, case in results["training"].items():
        rows.append((name, f"{case['engine_steps_per_sec']:.1f}", f"{case['direct_steps_per_sec']:.1f}",
                     f"{case['speedup']:.2f}x"))
    lines = [format_table(rows), ""]
    context = results["context_length"]
    rows = [(f"context length (B={context['batch_size']})", "engine ms/step", "direct ms/step", "engine / direct")]
    base = None
    for n, case in context["cases"].items():
        base = base or case
        rows.append((f"n={n}", f"{case['engine_ms_per_step']:.2f} ({case['engine_ms_per_step'] / base['engine_ms_per_step']:.1f}x)",
                     f"{case['direct_ms_per_step']:.2f} ({case['direct_ms_per_step'] / base['direct_ms_per_step']:.1f}x)",
                     f"{case['speedup']:.2f}x"))
    lines += [format_table(rows), ""]
    noise = results["gradient_noise"]
    lines += [
        f"full Hessian, L=3, d=5, n=20, 1000 prompts: {results['hessian_seconds']:.3f} s",
        f"gradient_noise, setting 3, {noise['full_batch']} + {noise['samples']} x 1000 prompts: {noise['seconds']:.1f} s; "
        f"one Probe.autograd_gradient per minibatch: {noise['per_batch_seconds']:.1f} s ({noise['speedup']:.2f}x); "
        f"drawing the prompts alone: {noise['sampling_seconds']:.1f} s",
        f"peak memory: {results['peak_memory_mib']:.0f} MiB",
        f"(one torch thread, torch {results['torch']}; context-length times in parentheses are relative to n={next(iter(context['cases']))})",
    ]
    return "\n".join(lines)
