"""The training step's fast optimizer update, clipping and zeroing (engine.fast_step) are torch's own
bit for bit: 300 steps of training_step through them and through torch's optimizer.step,
clip_grad_norm_ and zero_grad (``fast=False``) give equal losses, gradient norms, parameters and
optimizer state, in float32 and float64, with clipping on and off and an lr that changes every step;
a checkpoint taken on one path resumes on the other; whatever the fast path does not reproduce
(subclasses, hooks, foreach, an lr scheduler's wrapper, ...) runs torch's step. A real `testbed run`
gives the eval losses of the same run with torch's step forced by a global step hook."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from testbed.engine import fast_step
from testbed.engine.build import build_task
from testbed.engine.loop import training_step
from testbed.engine.seeds import generator
from testbed.engine.specs import TaskSpec
from testbed.model.config import ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.tasks import InDtype

STEPS = 300
Make = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Make] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.02, betas=(0.9, 0.9)),
    "adam eps weight decay": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05),
    "adam amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.5, 0.6), amsgrad=True, foreach=False),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, fused=False),
    "sgd nesterov weight decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd dampening": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, dampening=0.3),
}


class Training:
    """A tiny model, its optimizer and its prompt stream: ``steps(k, fast)`` takes k training steps."""

    def __init__(self, make: Make, dtype: torch.dtype, clip: float | None, schedule: bool = True):
        task = build_task(TaskSpec("gaussian", 3, 6, {"label_noise": 0.0}), _registry())
        self.task = task if dtype == torch.float32 else InDtype(task, dtype)
        self.model = LinearTransformer(ModelConfig(layers=2), 3, 6, generator(0)).to(dtype)
        self.optimizer = make(list(self.model.parameters()))
        self.data = generator(1)
        self.clip, self.schedule, self.done = clip, schedule, 0
        self.measured: list[dict[str, float]] = []

    def steps(self, count: int, fast: bool) -> None:
        for _ in range(count):
            if self.schedule:  # as an lr scheduler would: the lr read at every step changes
                for group in self.optimizer.param_groups:
                    group["lr"] = group.setdefault("base_lr", group["lr"]) * (0.5 + 0.5 * math.cos(self.done / 37))
            self.measured.append(training_step(self.model, self.optimizer, self.task.sample(64, self.data),
                                               self.clip, fast=fast))
            self.done += 1


_REGISTRY: list[Any] = []


def _registry():
    """The standard plugins' registry, loaded once (the task is a standard one)."""
    if not _REGISTRY:
        from testbed.plugins import load_plugins
        _REGISTRY.append(load_plugins().registry)
    return _REGISTRY[0]


def equal(a: Any, b: Any) -> bool:
    """Exactly equal, tensors bit for bit (and of one dtype), through dicts, lists and tuples."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b or (isinstance(a, float) and math.isnan(a) and isinstance(b, float) and math.isnan(b))


def assert_same(fast: Training, reference: Training) -> None:
    assert equal(fast.measured, reference.measured)
    assert equal(dict(fast.model.named_parameters()), dict(reference.model.named_parameters()))
    assert equal(fast.optimizer.state_dict(), reference.optimizer.state_dict())


def torch_step_ran(run: Callable[[], Any]) -> bool:
    """Whether ``run`` went through torch's Optimizer.step (its profiler scope is seen)."""
    with torch.autograd.profiler.profile() as profile:
        run()
    return any(event.name.startswith("Optimizer.step#") for event in profile.function_events)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch ops"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("clip", [1.0, None])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_300_fast_steps_are_torchs_bit_for_bit(name, clip, dtype, compiled, monkeypatch):
    monkeypatch.setattr(fast_step, "USE_COMPILED", compiled)  # the compiled clip and update, or torch's operations
    fast, reference = Training(OPTIMIZERS[name], dtype, clip), Training(OPTIMIZERS[name], dtype, clip)
    assert not torch_step_ran(lambda: fast.steps(1, fast=True))  # the fast path is the one taken
    fast.steps(STEPS - 1, fast=True)
    reference.steps(STEPS, fast=False)
    assert_same(fast, reference)
    if clip is not None:  # the clipping did act: some steps' norms were above it
        assert any(m["grad_norm"] > clip for m in reference.measured)


def test_a_closure_optimizer_zeroes_and_clips_at_every_call_as_torch_does():
    sides = []
    for fast in (True, False):
        training = Training(lambda ps: torch.optim.LBFGS(ps, lr=0.02, max_iter=4), torch.float32, 1.0, schedule=False)
        for _ in range(30):
            training.measured.append(training_step(training.model, training.optimizer,
                                                   training.task.sample(64, training.data), 1.0, True, fast=fast))
        sides.append(training)
    assert_same(*sides)
    assert sides[0].measured[-1]["gradient_evaluations"] == 4


@pytest.mark.parametrize("name", ["adam amsgrad", "sgd momentum"])
@pytest.mark.parametrize("first_fast", [True, False])
def test_a_checkpoint_resumes_on_the_other_path(tmp_path, name, first_fast):
    make = OPTIMIZERS[name]
    straight = Training(make, torch.float32, 1.0)
    straight.steps(STEPS, fast=not first_fast)
    first = Training(make, torch.float32, 1.0)
    first.steps(STEPS // 2, fast=first_fast)
    torch.save({"model": first.model.state_dict(), "optimizer": first.optimizer.state_dict(),
                "data": first.data.get_state()}, tmp_path / "checkpoint.pt")

    saved = torch.load(tmp_path / "checkpoint.pt")
    resumed = Training(make, torch.float32, 1.0)
    resumed.model.load_state_dict(saved["model"])
    resumed.optimizer.load_state_dict(saved["optimizer"])
    resumed.data.set_state(saved["data"])
    resumed.done, resumed.measured = first.done, list(first.measured)
    resumed.steps(STEPS - STEPS // 2, fast=not first_fast)
    assert_same(resumed, straight)


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64])  # the step counters' dtype
def test_adam_step_counters_count_as_torchs_at_any_size(default_dtype):
    # the counter is incremented by a fill of the sum taken in Python; past 2**24 float32 addition rounds
    counts = [2.0**24 - 1, 2.0**24, 2.0**24 + 2, 3.3e7 + 1, 2.0**53, 2.0**53 + 2, 1e30, 0.3]
    torch.set_default_dtype(default_dtype)
    try:
        fast, reference = (Training(OPTIMIZERS["adam"], torch.float64, 1.0, schedule=False) for _ in range(2))
        fast.steps(1, fast=True)
        reference.steps(1, fast=False)
        for count in counts:
            for training in (fast, reference):
                for p_state in training.optimizer.state.values():
                    p_state["step"].fill_(count)
            fast.steps(1, fast=True)
            reference.steps(1, fast=False)
            assert_same(fast, reference)
    finally:
        torch.set_default_dtype(torch.float32)
    assert fast.optimizer.state_dict()["state"][0]["step"].dtype == default_dtype


class CountingAdam(torch.optim.Adam):
    """A subclass: its step may do anything, so it must be the one called."""

    calls = 0

    def step(self, closure=None):
        CountingAdam.calls += 1
        return super().step(closure)


def test_a_subclass_runs_its_own_step():
    training = Training(lambda ps: CountingAdam(ps, lr=0.01), torch.float32, 1.0)
    CountingAdam.calls = 0
    training.steps(3, fast=True)
    assert CountingAdam.calls == 3


@pytest.mark.parametrize("where", ["instance pre", "instance post", "global pre", "global post"])
def test_step_hooks_are_called(where):
    calls = []
    training = Training(OPTIMIZERS["adam"], torch.float32, 1.0)
    hook = lambda optimizer, args, kwargs: calls.append(optimizer)  # noqa: E731
    register = {"instance pre": training.optimizer.register_step_pre_hook,
                "instance post": training.optimizer.register_step_post_hook,
                "global pre": register_optimizer_step_pre_hook,
                "global post": register_optimizer_step_post_hook}[where]
    handle = register(hook)
    try:
        training.steps(2, fast=True)
    finally:
        handle.remove()
    assert calls == [training.optimizer] * 2
    assert not torch_step_ran(lambda: training.steps(1, fast=True))  # hook removed: fast again


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.Adam(ps, lr=0.01, foreach=True),
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, foreach=True),
    lambda ps: torch.optim.Adam(ps, lr=0.01, maximize=True),
    lambda ps: torch.optim.Adam(ps, lr=torch.tensor(0.01)),
    lambda ps: torch.optim.SGD(ps, lr=0.01, maximize=True),
    lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=torch.tensor(0.9)),
    lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(torch.tensor(0.9), torch.tensor(0.99))),
    lambda ps: torch.optim.RMSprop(ps, lr=0.01),
], ids=["adam foreach", "sgd foreach", "adam maximize", "tensor lr", "sgd maximize", "tensor momentum",
        "tensor betas", "rmsprop"])
def test_what_the_fast_path_does_not_reproduce_runs_torchs_step(make):
    training = Training(make, torch.float32, 1.0, schedule=False)
    assert torch_step_ran(lambda: training.steps(1, fast=True))


def test_an_lr_scheduler_keeps_its_step_wrapper():
    training = Training(OPTIMIZERS["sgd momentum"], torch.float32, None, schedule=False)
    scheduler = torch.optim.lr_scheduler.StepLR(training.optimizer, step_size=2, gamma=0.5)
    for _ in range(4):
        assert torch_step_ran(lambda: training.steps(1, fast=True))
        scheduler.step()
    assert training.optimizer._opt_called  # what the scheduler's wrapper records
    assert training.optimizer.param_groups[0]["lr"] == 0.05 / 4


def test_missing_gradients_and_mixed_dtypes_go_to_torch():
    def parameters() -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]

    ours, theirs = parameters(), parameters()
    optimizer = torch.optim.SGD(ours, lr=0.1)
    ours[0].grad = torch.full((3,), 4.0)
    assert torch_step_ran(lambda: fast_step.step(optimizer))  # the second has no gradient
    for side in (ours, theirs):
        side[0].grad, side[1].grad = torch.full((3,), 4.0), torch.full((2,), 3.0, dtype=torch.float64)
    norm = fast_step.clip_grad_norm(ours, 1.0)  # two dtypes: torch's two groups, its promotion
    assert norm == float(torch.nn.utils.clip_grad_norm_(theirs, 1.0))
    assert all(equal(p.grad, q.grad) for p, q in zip(ours, theirs))
    assert torch_step_ran(lambda: fast_step.step(optimizer))  # one group, two dtypes


def test_zero_grad_detaches_and_zeroes_in_place_as_torch_does():
    fast_side, torch_side = [], []
    for side in (fast_side, torch_side):
        p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3, requires_grad=True) * 2  # a grad with a graph (create_graph=True leaves these)
        q.grad = torch.full((3,), -1.0)
        side += [torch.optim.Adam([p, q]), p, q, p.grad, q.grad]
    fast_step.zero_grad(fast_side[0], fast_side[1:3])
    torch_side[0].zero_grad(set_to_none=False)
    for side in (fast_side, torch_side):
        _, p, q, p_grad, q_grad = side
        assert p.grad is p_grad and q.grad is q_grad  # zeroed in place, not replaced
        assert p.grad.grad_fn is None and not p.grad.requires_grad and torch.equal(p.grad, torch.zeros(3))
        assert torch.equal(q.grad, torch.zeros(3)) and not torch.signbit(q.grad).any()


HOOK_PLUGIN = '''
"""Forces torch's own optimizer step in every run (a global step hook) and counts its calls."""
import os

from torch.optim.optimizer import register_optimizer_step_pre_hook

import testbed

CALLS = []


@testbed.hookimpl
def on_run_start(run):
    CALLS.clear()
    run.extra["torch_step_hook"] = register_optimizer_step_pre_hook(lambda *args: CALLS.append(1))


@testbed.hookimpl
def on_run_end(run, status):
    run.extra["torch_step_hook"].remove()
    with open(os.environ["HOOK_CALLS"], "a") as handle:
        handle.write(f"{len(CALLS)}\\n")
'''


def run_testbed(config: Path, logdir: Path, env: dict[str, str]) -> dict[str, list[float]]:
    """`testbed run` in a fresh process; each run's eval losses by its optimizer label and seed."""
    completed = subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(config), "--logdir", str(logdir)],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    losses = {}
    for summary in sorted(logdir.rglob("summary.json")):
        result = json.loads(summary.read_text())
        assert result["status"] == "completed"
        losses[f"{result['label']}/{result['seed']}"] = result["eval_losses"]
    return losses


def test_a_real_run_gives_the_eval_losses_of_torchs_step(tmp_path, tiny_raw):
    tiny_raw["train"]["steps"] = 60
    tiny_raw["optimizers"].append({"name": "adamw", "lr": 0.01})
    tiny_raw["train"]["clip_grad_norm"] = 0.5
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "TESTBED_PLUGINS"}
    fast = run_testbed(config, tmp_path / "fast", env)

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "torch_step_hook.py").write_text(textwrap.dedent(HOOK_PLUGIN))
    calls = tmp_path / "calls.txt"
    path = os.pathsep.join(filter(None, [str(tmp_path / "src"), env.get("PYTHONPATH")]))
    hooked = run_testbed(config, tmp_path / "hooked", {**env, "PYTHONPATH": path,
                                                        "TESTBED_PLUGINS": "torch_step_hook", "HOOK_CALLS": str(calls)})
    assert calls.read_text().split() == ["60"] * len(fast)  # every step of every run was torch's
    assert len(fast) == 6 and fast == hooked


def test_the_cached_operands_stay_few_when_a_hyperparameter_changes_every_step():
    # a momentum or beta2 changed at every step must not grow the cache of scalar operands for ever
    for step in range(3 * fast_step.MAX_OPERANDS):
        assert fast_step._operand(0.5 + step * 1e-6, torch.float32).item() == torch.tensor(0.5 + step * 1e-6).item()
    assert len(fast_step._OPERANDS) <= fast_step.MAX_OPERANDS
