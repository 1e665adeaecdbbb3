"""Smoke test of `testbed bench --quick`: every section is measured and reported, as numbers."""

import json
import math

from click.testing import CliRunner

from testbed.cli.commands import main


def test_bench_quick_reports_every_measurement(tmp_path):
    path = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", "--quick", "--json", str(path)])
    assert result.exit_code == 0, result.output
    data = json.loads(path.read_text())
    assert set(data["training"]) == {
        "setting 1 (L=3, d=5, n=20, B=1000)", "setting 3, gamma (L=3, d=5, n=20, B=1000)", "L=8 (d=5, n=20, B=1000)",
        "setting 1, float64 (L=3, d=5, n=20, B=1000)", "full P and Q (L=3, d=5, n=20, B=1000)",
        "larger model (L=8, d=20, n=60, B=1000)", "larger model, float64 (L=8, d=20, n=60, B=1000)",
        "softmax (L=3, d=5, n=20, B=1000)",
        "nonlinear (MLP features, full P/Q, L=3, d=5, n=20, B=2000)"}
    for case in [*data["training"].values(), *data["context_length"]["cases"].values()]:
        assert case["engine_steps_per_sec"] > 0 and case["direct_steps_per_sec"] > 0
        assert math.isclose(case["speedup"], case["engine_steps_per_sec"] / case["direct_steps_per_sec"])
    assert list(data["context_length"]["cases"]) == ["20", "80"]
    assert 0 < data["hessian_seconds"] < 60
    noise = data["gradient_noise"]
    assert noise["samples"] == 20 and noise["seconds"] > 0 and noise["sampling_seconds"] > 0
    assert math.isclose(noise["speedup"], noise["per_batch_seconds"] / noise["seconds"])
    assert "one Probe.autograd_gradient per minibatch" in result.output
    assert data["peak_memory_mib"] > 0
    for line in ("engine / direct", "full Hessian", "gradient_noise", "peak memory"):
        assert line in result.output
