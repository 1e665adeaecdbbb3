"""Issue 11, defect 4: a task's prompts are checked before they reach the model (and its C++ kernel).

A plugin task returning covariates of the wrong shape used to abort the process inside the compiled
kernel (exit 134/139), or to "complete" with meaningless losses. Now `testbed validate` and
`testbed run` sample two prompts up front, every run checks every batch (training, eval, a
diagnostic's), and the model and the kernel entry check what they are handed: bad prompts are one
"Error:" line naming the task and both shapes, exit 1, on both kernels and with any number of workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner, Result

from testbed.model import kernel as kernels
from testbed.cli.commands import main
from testbed.experiment.config import parse_config
from testbed.experiment.runner import run_experiment
from testbed.model.kernel.linear_attention import CompiledLinearAttentionStack
from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.transformer import LinearTransformer
from testbed.plugins import load_plugins

# A task that is wrong in one way (`kind`) at some of its batches (`when`): always, from the third
# training batch on, only for the eval batch, or only for a diagnostic's batches. Batch sizes tell
# them apart: training 64, eval 32, a diagnostic's 16 (and `testbed validate` samples 2).
WRONG_TASK = """
    import torch
    from testbed import Batch, Option, Task, hookimpl

    WRONG_AT = {"eval": 32, "diagnostic": 16}

    class WrongTask(Task):
        def __init__(self, d, n, kind, when):
            self.d, self.n, self.kind, self.when = d, n, kind, when
            self.training_batches = 0  # per run: every run builds its own task

        def is_wrong(self, batch_size):
            if batch_size == 64:
                self.training_batches += 1
            if self.when == "always":
                return True
            if self.when == "step3":
                return batch_size == 64 and self.training_batches >= 3
            return batch_size == WRONG_AT[self.when]

        def sample(self, batch_size, generator):
            wrong = self.is_wrong(batch_size)
            prompts, tokens, d, dtype = batch_size, self.n + 1, self.d, torch.float32
            if wrong:
                d = {"2d": 2 * d, "d-1": d - 1}.get(self.kind, d)
                tokens += 6 if self.kind == "n+6" else 0
                prompts += 1 if self.kind == "batch" else 0
                dtype = torch.float64 if self.kind == "float64" else dtype
            x = torch.randn(prompts, tokens, d, generator=generator).to(dtype)
            y = (x @ torch.randn(prompts, d, 1, generator=generator).to(dtype)).squeeze(-1)
            if wrong and self.kind == "y":
                y = y.unsqueeze(-1)
            if wrong and self.kind == "tuple":
                return x, y
            return Batch(x, y)

    @hookimpl
    def register_tasks(register):
        register("mytask", WrongTask, options={"kind": Option("2d", "what is wrong", type=str),
                                               "when": Option("always", "which batches", type=str)},
                 doc="prompts of the wrong shape or type")
"""

D, N = 3, 6
KINDS = ["2d", "d-1", "n+6", "batch", "y", "float64", "tuple"]


def expected_message(kind: str, prompts: int) -> str:
    """The part of the error that names what was returned and what was expected."""
    x_expected = f"expected ({prompts}, {N + 1}, {D}) = (batch, n+1, d)"
    return {
        "2d": f"x of shape ({prompts}, {N + 1}, {2 * D}), {x_expected}",
        "d-1": f"x of shape ({prompts}, {N + 1}, {D - 1}), {x_expected}",
        "n+6": f"x of shape ({prompts}, {N + 7}, {D}), {x_expected}",
        "batch": f"x of shape ({prompts + 1}, {N + 1}, {D}), {x_expected}",
        "y": f"y of shape ({prompts}, {N + 1}, 1), expected ({prompts}, {N + 1}) = (batch, n+1)",
        "float64": "x of dtype float64, expected float32 (train.dtype)",
        "tuple": "a tuple, not a Batch",
    }[kind]


def config(kind: str, when: str, **train) -> dict:
    return {
        "name": "wrong",
        "task": {"name": "mytask", "d": D, "n": N, "options": {"kind": kind, "when": when}},
        "model": {"layers": 2},
        "train": {"steps": 6, "batch_size": 64, "seeds": 1, **train},
        "eval": {"every": 3, "batch_size": 32},
        "workers": 1,
        "optimizers": [{"name": "sgd", "lr": 0.01}],
    }


@pytest.fixture
def wrong_task(plugin_module, tmp_path: Path) -> Path:
    """The directory of the wrong task's module, registered through $TESTBED_PLUGINS."""
    plugin_module("wrong_task_plugin", WRONG_TASK)
    return tmp_path / "plugin_src"


@pytest.fixture(params=["c", "torch"])
def kernel(request, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test once with the compiled kernel and once with TESTBED_KERNEL=torch (in this process
    and in any it starts)."""
    monkeypatch.setenv("TESTBED_KERNEL", request.param)
    kernels.load.cache_clear()
    if request.param == "c" and kernels.load() is None:
        pytest.skip("no C++ compiler here")
    yield request.param
    monkeypatch.undo()
    kernels.load.cache_clear()


def invoke(*args) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_error(output: str, exit_code: int, *fragments: str) -> str:
    """Exit 1 (never an abort), exactly one 'Error:' line with every fragment, no traceback."""
    assert exit_code == 1, output
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("Error:")]
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_results(logdir: Path) -> list[dict]:
    return json.loads((logdir / "wrong" / "results.json").read_text())["runs"]


# ---------------------------------------------------------------- up front: validate and run
@pytest.mark.parametrize("kind", KINDS)
def test_validate_samples_two_prompts_and_names_the_task_and_both_shapes(kind, wrong_task, write_yaml):
    result = invoke("validate", write_yaml(config(kind, "always")))
    assert_one_error(result.output, result.exit_code, "task 'mytask' returned", expected_message(kind, 2))


# Up front nothing reaches a kernel; in this process the torch one runs (the old code aborted the
# process in the compiled one: the subprocess test below covers it).
@pytest.mark.parametrize("kernel", ["torch"], indirect=True)
@pytest.mark.parametrize("kind", KINDS)
def test_run_fails_before_starting(kind, kernel, wrong_task, write_yaml, tmp_path):
    result = invoke("run", write_yaml(config(kind, "always")), "--logdir", tmp_path / "logs")
    assert_one_error(result.output, result.exit_code, "task 'mytask' returned", expected_message(kind, 2))
    assert not (tmp_path / "logs").exists()  # nothing started, nothing written


def test_float64_prompts_are_right_in_a_float64_run(wrong_task, write_yaml, tmp_path):
    # the dtype expected is train.dtype (float64 runs cast the task's prompts to it)
    raw = config("float64", "always", dtype="float64")
    result = invoke("run", write_yaml(raw), "--logdir", tmp_path / "logs")
    assert result.exit_code == 0, result.output
    assert [run["status"] for run in run_results(tmp_path / "logs")] == ["completed"]


def test_a_task_that_raises_while_sampling_is_one_error_line(plugin_module, write_yaml):
    plugin_module("raising_task_plugin", WRONG_TASK.replace("wrong = self.is_wrong(batch_size)",
                                                            "raise RuntimeError('no prompts today')"))
    result = invoke("validate", write_yaml(config("2d", "always")))
    assert_one_error(result.output, result.exit_code, "task 'mytask'", "RuntimeError: no prompts today")


# ---------------------------------------------------------------- during a run, in this process
# Kinds that crash the process inside the C++ kernel on the old code run in a subprocess below.
IN_PROCESS = [(kind, k) for kind in KINDS for k in ("c", "torch") if (kind, k) != ("2d", "c")]


@pytest.mark.parametrize("kind,kernel", IN_PROCESS, indirect=["kernel"])
def test_a_task_going_wrong_at_step_3_fails_the_run(kind, kernel, wrong_task, write_yaml, tmp_path):
    result = invoke("run", write_yaml(config(kind, "step3")), "--logdir", tmp_path / "logs")
    line = assert_one_error(result.output, result.exit_code, "task 'mytask' returned",
                            expected_message(kind, 64))
    assert line.startswith("Error: run sgd/seed-0 failed:"), line
    (run,) = run_results(tmp_path / "logs")
    assert (run["status"], run["steps_done"]) == ("failed", 2)
    assert expected_message(kind, 64) in run["error"]


@pytest.mark.parametrize("kind", ["n+6", "y"])
def test_a_wrong_eval_batch_fails_the_run(kind, kernel, wrong_task, write_yaml, tmp_path):
    result = invoke("run", write_yaml(config(kind, "eval")), "--logdir", tmp_path / "logs")
    assert_one_error(result.output, result.exit_code, "task 'mytask' returned", expected_message(kind, 32))
    (run,) = run_results(tmp_path / "logs")
    assert (run["status"], run["steps_done"]) == ("failed", 0)


def test_a_diagnostic_sampling_wrong_prompts_is_disabled_with_the_message(wrong_task, tmp_path):
    raw = config("d-1", "diagnostic")
    raw["diagnostics"] = [{"name": "gradient_noise", "options": {"full_batch": 32, "batch_size": 16,
                                                                  "samples": 2, "every": 3}}]
    plugins = load_plugins()
    outcome = run_experiment(parse_config(raw, plugins.registry), plugins, tmp_path / "logs", workers=1)
    (run,) = outcome.results
    assert run.status == "completed"  # the run's own batches are right; the diagnostic is turned off
    (error,) = run.diagnostic_errors
    assert "gradient_noise failed at step 0" in error and expected_message("d-1", 16) in error, error


# ---------------------------------------------------------------- the real CLI, in a subprocess
def cli_subprocess(*args, plugin_dir: Path, kernel: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESTBED_KERNEL": kernel,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_dir), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "testbed.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("when,workers", [("always", 2), ("step3", 1), ("step3", 2)])
def test_covariates_of_2d_features_are_an_error_not_an_abort(when, workers, wrong_task, write_yaml, tmp_path):
    """The probe's case: with the compiled kernel, 2d features aborted the process (munmap_chunk,
    exit 134; double free with two workers)."""
    if kernels.load() is None:
        pytest.skip("no C++ compiler here")
    path = write_yaml(config("2d", when, seeds=2))
    done = cli_subprocess("run", path, "--logdir", tmp_path / "logs", "--workers", workers,
                       plugin_dir=wrong_task, kernel="c", cwd=tmp_path)
    assert done.returncode not in (134, 139, -6, -11), done.stderr
    prompts = 2 if when == "always" else 64
    assert_one_error(done.stdout + done.stderr, done.returncode, "task 'mytask' returned",
                     expected_message("2d", prompts))
    if when == "step3":
        assert [run["status"] for run in run_results(tmp_path / "logs")] == ["failed", "failed"]


# ---------------------------------------------------------------- the model and the kernel entry
def make_model(feature_map: FeatureMapConfig | None = None) -> LinearTransformer:
    return LinearTransformer(ModelConfig(layers=2, feature_map=feature_map), D, N, torch.Generator().manual_seed(0))


def prompts(tokens: int = N + 1, d: int = D, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, tokens, d, generator=generator), torch.randn(batch, tokens, generator=generator)


@pytest.mark.parametrize("feature_map", [None, FeatureMapConfig(hidden=(4,), out_dim=5)], ids=["plain", "feature_map"])
@pytest.mark.parametrize("tokens,d,message", [
    (N + 7, D, f"x of shape (8, {N + 7}, {D}), expected (8, {N + 1}, {D}) = (batch, n+1, d)"),
    (N + 1, D - 1, f"x of shape (8, {N + 1}, {D - 1}), expected (8, {N + 1}, {D}) = (batch, n+1, d)"),
], ids=["n+6", "d-1"])
def test_the_model_rejects_prompts_of_the_wrong_shape_on_every_path(feature_map, tokens, d, message, kernel):
    model = make_model(feature_map)
    x, y = prompts(tokens, d)
    for call in (lambda: model(x, y), lambda: model.loss_backward(x, y, y[:, -1]),
                 lambda: model.autograd_forward(x, y)):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_the_model_rejects_labels_of_the_wrong_shape(kernel):
    model = make_model()
    x, y = prompts()
    with pytest.raises(ValueError, match=r"y of shape \(8, 7, 1\), expected \(8, 7\)"):
        model(x, y.unsqueeze(-1))


def test_non_contiguous_prompts_give_the_same_predictions_and_gradients(kernel):
    x, y = prompts()
    strided_x = x.transpose(0, 2).contiguous().transpose(0, 2)  # the same values, other strides
    strided_y = y.t().contiguous().t()
    assert not strided_x.is_contiguous() and not strided_y.is_contiguous()
    results = []
    for inputs in ((x, y), (strided_x, strided_y)):
        model = make_model()
        loss = model.loss_backward(*inputs, inputs[1][:, -1])
        results.append((model(*inputs).detach(), loss, model.A.grad, model.B.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def compiled_stack_arguments(tokens: int = N + 1):
    """Z0, P, Qc, r, n as the model hands them to the compiled stack, from prompts of ``tokens``."""
    model = make_model()
    x, y = prompts(tokens)
    Z0 = torch.cat([x, y.unsqueeze(-1)], dim=2).transpose(1, 2)  # the model's prompt, unchecked
    P, Qc, r = model.kernel_matrices()
    return Z0, P, Qc, r, model.n


@pytest.mark.parametrize("break_it,message", [
    (lambda Z0, P, Qc: (Z0[:, :, :-1], P, Qc), r"Z0 is a float32 tensor of shape \(8, 4, 6\)"),
    (lambda Z0, P, Qc: (Z0, F.pad(P, (0, 1, 0, 1)), Qc), r"P is a float32 tensor of shape \(2, 5, 5\)"),
    (lambda Z0, P, Qc: (Z0.double(), P, Qc), r"Z0 is a float64 tensor of shape \(8, 4, 7\)"),
], ids=["tokens", "P", "dtype"])
def test_the_kernel_entry_checks_what_it_hands_to_cpp(break_it, message):
    library = kernels.load()
    if library is None:
        pytest.skip("no C++ compiler here")
    Z0, P, Qc, r, n = compiled_stack_arguments()
    Z0, P, Qc = break_it(Z0, P, Qc)
    with pytest.raises(ValueError, match=message):
        CompiledLinearAttentionStack.apply(Z0, P, Qc, r, n, library)


def test_the_kernel_entry_takes_non_contiguous_prompts():
    library = kernels.load()
    if library is None:
        pytest.skip("no C++ compiler here")
    Z0, P, Qc, r, n = compiled_stack_arguments()
    assert not Z0.is_contiguous()  # the model's prompt is a transposed view
    with torch.no_grad():
        assert torch.equal(CompiledLinearAttentionStack.apply(Z0, P, Qc, r, n, library),
                           CompiledLinearAttentionStack.apply(Z0.contiguous(), P, Qc, r, n, library))
