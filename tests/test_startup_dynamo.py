"""`testbed run`'s driver checks the config by building every optimizer once; torch imports
torch._dynamo (1.5-2 s) at a process's first optimizer, but the check builds them without it
(testbed.engine.dynamo). Workers still import it, and optimizers built after the check are
torch's own, untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml


def _run_python(code: str, cwd: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_run_command_driver_never_imports_torch_dynamo(tmp_path, tiny_raw):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_raw))
    code = ("import sys\nfrom testbed.cli.console import main\n"
            "sys.argv = ['testbed', 'run', 'tiny.yaml', '--logdir', 'runs', '--workers', '1']\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('dynamo in driver:', 'torch._dynamo' in sys.modules)")
    lines = _run_python(code, tmp_path)
    assert lines[-1] == "dynamo in driver: False"
    results = json.loads((tmp_path / "runs" / "tiny" / "results.json").read_text())
    assert {run["status"] for run in results["runs"]} == {"completed"}


def test_an_optimizer_built_after_the_check_is_torchs_own(tmp_path, tiny_raw):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_raw))
    code = ("import sys, torch\nfrom testbed.experiment.config import load_yaml, parse_config\n"
            "from testbed.plugins import load_plugins\n"
            "parse_config(load_yaml('tiny.yaml'), load_plugins().registry)\n"
            "print('after check:', 'torch._dynamo' in sys.modules)\n"
            "torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=0.1)\n"
            "print('after an optimizer:', 'torch._dynamo' in sys.modules)\n"
            "method = torch.optim.Optimizer.add_param_group.__wrapped__\n"
            "print('dynamo-disabled:', getattr(method, '__dynamo_disable') is not method)")
    assert _run_python(code, tmp_path)[-3:] == ["after check: False", "after an optimizer: True",
                                                "dynamo-disabled: True"]
