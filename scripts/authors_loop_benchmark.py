"""`testbed run` against the authors' own training loop, side by side in one sitting (issue 15).

The authors' code (github.com/chengxiang/LinearTransformer) is not part of testbed: pass a checkout of
it, or its bare git directory. Their model, data and loss functions are imported from that checkout's
``linear_transformer.py`` and driven the way their ``train.ipynb`` trains Setting 1 (fresh batch of
1,000 prompts, loss, backward, global-norm clipping at 1, AdamW with weight decay 0 and betas
(0.9, 0.9), a copy of the parameters kept every step), on one CPU thread. testbed's side is the whole
`testbed run` command in a subprocess, from its start to its last line, on the same 3,000 steps: one
seed, one worker, evaluation every 50 steps, TensorBoard logging on. It also reports the run's own
time (its summary.json's ``seconds``: model, steps, evaluation and logging, without the command's
start-up), the like-for-like match for their loop, which is timed without their imports either.

    python scripts/authors_loop_benchmark.py /path/to/LinearTransformer [--steps 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTING_1 = """\
name: authors_loop_benchmark
task: {{name: gaussian, d: 5, n: 20}}
model: {{layers: 3, parameterization: block_sparse, attention: linear, init_std: 0.05}}
train: {{steps: {steps}, batch_size: 1000, clip_grad_norm: 1.0, seeds: [0]}}
eval: {{every: 50, batch_size: 1000, seed: 99}}
optimizers:
  - {{name: adam, lr: 0.02, options: {{betas: [0.9, 0.9]}}}}
"""


def authors_module(checkout: Path, scratch: Path):
    """Their ``linear_transformer`` module, from a work tree or (via ``git show``) a bare git directory."""
    source = checkout / "linear_transformer.py"
    if not source.is_file():
        text = subprocess.run(["git", "--git-dir", str(checkout), "show", "HEAD:linear_transformer.py"],
                              check=True, capture_output=True, text=True).stdout
        source = scratch / "linear_transformer.py"
        source.write_text(text)
    spec = importlib.util.spec_from_file_location("linear_transformer", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_authors_loop(module, steps: int) -> float:
    """Seconds for ``steps`` steps of their Setting-1 training loop (model built outside the clock)."""
    import torch

    torch.manual_seed(0)
    model = module.Transformer_F(3, 1, 5, 0.05)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02, betas=(0.9, 0.9), weight_decay=0)
    history = []
    started = time.perf_counter()
    for _ in range(steps):
        history.append(model.allparam.clone().detach())
        Z, y = module.generate_data("normal", 20, 5, 1000, 0.1)
        loss = module.in_context_loss(model, Z, y)
        loss.item()
        loss.backward()
        norm = model.allparam.grad.norm()
        if norm > 1.0:
            model.allparam.grad.mul_(1.0 / norm)
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - started


def time_testbed_run(steps: int, scratch: Path) -> tuple[float, float]:
    """Seconds of the whole `testbed run` command (a fresh log directory each time), and of its run
    alone (the run's summary.json)."""
    config = scratch / "setting1.yaml"
    config.write_text(SETTING_1.format(steps=steps))
    logdir = tempfile.mkdtemp(dir=scratch)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "testbed.cli", "run", str(config), "--logdir", logdir, "--workers", "1"],
                   check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    command = time.perf_counter() - started
    (summary,) = Path(logdir).rglob("summary.json")
    return command, json.loads(summary.read_text())["seconds"]


def main() -> None:
    """Alternate the two sides for a few rounds and print their medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("authors", type=Path, help="a checkout of chengxiang/LinearTransformer (or its git directory)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        module = authors_module(args.authors.resolve(), Path(scratch))
        module.device = torch.device("cpu")
        authors, commands, runs = [], [], []
        for _ in range(args.rounds):
            command, run = time_testbed_run(args.steps, Path(scratch))
            commands.append(command)
            runs.append(run)
            authors.append(time_authors_loop(module, args.steps))
    a, c, r = statistics.median(authors), statistics.median(commands), statistics.median(runs)
    print(f"{args.steps} Setting-1 steps, one thread, median of {args.rounds} alternating rounds")
    print(f"authors' loop:       {a:7.1f} s  ({1e3 * a / args.steps:.2f} ms a step)")
    print(f"testbed's run:       {r:7.1f} s  ({1e3 * r / args.steps:.2f} ms a step: model, eval every 50, "
          f"TensorBoard; {a / r:.1f}x faster)")
    print(f"testbed run command: {c:7.1f} s  (the whole command: start-up, the run, results; {a / c:.1f}x faster)")


if __name__ == "__main__":
    main()
