"""`testbed bench`: the engine's training step against the direct formula, side by side.

Both sides run the same full step (fresh batch, forward, backward, clipping, Adam) in one process
with one torch thread, alternating rounds so that machine noise hits both alike; the median round
is reported.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

import torch

from .config import OptimizerSpec, TaskSpec, build_optimizer, build_task
from .engine import generator, training_step
from .model import LinearTransformer, ModelConfig, direct_forward
from .plugins import load_plugins

SETTING_1 = TaskSpec("gaussian", d=5, n=20, options={"label_noise": 0.0})
ADAM = OptimizerSpec("adam", "adam", 0.02, {"betas": [0.9, 0.9], "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False})


def _seconds_per_step(step, steps: int) -> float:
    for _ in range(10):  # warm-up: allocator, lazy init
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def time_training(task_spec: TaskSpec, model_config: ModelConfig, steps: int, rounds: int,
                  batch_size: int = 1000) -> dict[str, Any]:
    registry = load_plugins().registry
    task = build_task(task_spec, registry)
    timings: dict[str, list[float]] = {"engine": [], "direct": []}
    sides = {}
    for side in timings:
        model = LinearTransformer(model_config, task.d, task.n, generator(0))
        optimizer = build_optimizer(ADAM, registry, model.parameters())
        forward = None if side == "engine" else partial(direct_forward, model)
        data = generator(1)
        sides[side] = lambda m=model, o=optimizer, f=forward, g=data: training_step(
            m, o, task.sample(batch_size, g), 1.0, forward=f)
    for _ in range(rounds):
        for side, step in sides.items():
            timings[side].append(_seconds_per_step(step, steps))
    engine, direct = statistics.median(timings["engine"]), statistics.median(timings["direct"])
    return {"engine_steps_per_sec": 1 / engine, "direct_steps_per_sec": 1 / direct, "speedup": direct / engine}


def run_bench(steps: int = 200, rounds: int = 3) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        setting1 = time_training(SETTING_1, ModelConfig(layers=3), steps, rounds)
    finally:
        torch.set_num_threads(threads)
    return {"threads": 1, "torch": torch.__version__, "cases": {"setting1 (B=1000, L=3, d=5, n=20)": setting1}}


def format_bench(results: dict[str, Any]) -> str:
    rows = [("case", "engine steps/s", "direct steps/s", "engine / direct")]
    for name, case in results["cases"].items():
        rows.append((name, f"{case['engine_steps_per_sec']:.1f}", f"{case['direct_steps_per_sec']:.1f}",
                     f"{case['speedup']:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n(one torch thread, torch {results['torch']})"
