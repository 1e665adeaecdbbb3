"""The counter-based prompt stream (testbed/native/sampling.py): Philox4x32-10's published answers,
determinism, the moments of its normals and Gamma variates, the compiled and torch paths agreeing,
and how tasks and runs use it (train.stream)."""

from __future__ import annotations

import math

import pytest
import torch

from testbed.native import sampling

KEY = 0x0123456789ABCDEF
needs_library = pytest.mark.skipif(sampling.load() is None, reason="no C++ compiler (or TESTBED_KERNEL=torch)")

# Random123's tests/kat_vectors for philox4x32 10: (counter, key, output).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("library", [True, False], ids=["compiled", "torch"])
@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox_gives_the_published_answers(counter, key, expected, library):
    if library and sampling.load() is None:
        pytest.skip("no compiled library here")
    assert sampling.philox_block(counter, key, library=library) == expected


def test_same_key_same_numbers_other_key_other_numbers():
    a, b, c = sampling.normal(KEY, 1001), sampling.normal(KEY, 1001), sampling.normal(KEY + 1, 1001)
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (1001,)
    assert not torch.isclose(a, c).any()
    g1, g2, g3 = (sampling.standard_gamma(k, 1001, 0.1) for k in (KEY, KEY, KEY + 1))
    assert torch.equal(g1, g2) and not torch.equal(g1, g3)


def test_a_shorter_fill_is_a_prefix_of_a_longer_one_for_gamma():
    # gamma's element i depends only on (key, i): no stream position shifts with the count
    assert torch.equal(sampling.standard_gamma(KEY, 500, 2.5), sampling.standard_gamma(KEY, 2000, 2.5)[:500])


def _within(sample: torch.Tensor, mean: float, var: float, fourth_central: float) -> None:
    """Sample mean and variance of ``sample`` within 5 standard errors of the law's."""
    x, m = sample.double(), sample.numel()
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / m)
    se_var = math.sqrt((fourth_central - var**2) / m)  # standard error of the sample variance
    assert abs(x.var().item() - var) < 5 * se_var


def test_normals_have_the_standard_normal_moments():
    z = sampling.normal(KEY, 400_000)
    _within(z, 0.0, 1.0, 3.0)
    assert abs((z.double() ** 3).mean().item()) < 5 * math.sqrt(15 / z.numel())  # E z^3 = 0, Var z^3 = 15
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("shape", [0.1, 2.5])
def test_gamma_variates_have_the_gamma_moments(shape):
    g = sampling.standard_gamma(KEY, 400_000, shape)
    # Gamma(k, 1): mean k, variance k, fourth central moment 3k^2 + 6k
    _within(g, shape, shape, 3 * shape**2 + 6 * shape)
    assert (g >= 0).all() and torch.isfinite(g).all()


@needs_library
@pytest.mark.parametrize("key", [0, 1, KEY, 2**64 - 1])
def test_compiled_and_torch_paths_give_the_same_numbers(key):
    # The same operations in the same float32 rounding (bit for bit on this machine's compiler)
    torch.testing.assert_close(sampling.normal(key, 10_003), sampling.normal(key, 10_003, library=False),
                               rtol=1e-6, atol=1e-6)
    for shape in (0.1, 0.5, 1.0, 2.5):
        compiled, fallback = sampling.standard_gamma(key, 10_003, shape), sampling.standard_gamma(key, 10_003, shape, library=False)
        torch.testing.assert_close(compiled, fallback, rtol=1e-6, atol=0.0)


def test_the_key_comes_from_the_generator():
    keys = [sampling.draw_key(torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert keys[0] == keys[1] != keys[2] and all(0 <= k < 2**64 for k in keys)


# How tasks and runs draw from it (train.stream)

def _task(name: str, stream: str, **options):
    from testbed.plugins import load_plugins
    from testbed.engine.build import build_task
    from testbed.engine.specs import TaskSpec
    from testbed.tasks import use_stream

    return use_stream(build_task(TaskSpec(name, 5, 20, options), load_plugins().registry), stream)


@pytest.mark.parametrize("name,options", [("gaussian", {}), ("gamma", {"shape": 0.1}), ("student_t", {}),
                                          ("spherical", {"label_noise": 0.1})])
def test_a_seed_fixes_the_prompts_and_the_streams_differ(name, options):
    philox, torch_stream = _task(name, "philox", **options), _task(name, "torch", **options)
    one, two = (philox.sample(50, torch.Generator().manual_seed(7)) for _ in range(2))
    assert torch.equal(one.x, two.x) and torch.equal(one.y, two.y)
    other = torch_stream.sample(50, torch.Generator().manual_seed(7))
    assert not torch.equal(one.x, other.x)
    assert one.x.dtype == torch.float32 and one.x.shape == (50, 21, 5) and torch.isfinite(one.y).all()


def test_the_torch_stream_is_the_stream_before_train_stream():
    # today's Setting 1 prompts: covariates, then w, each one torch.randn on the generator
    batch = _task("gaussian", "torch").sample(8, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(8, 21, 5, generator=g), torch.randn(8, 5, 1, generator=g)
    assert torch.equal(batch.x, x) and torch.equal(batch.y, torch.bmm(x, w).squeeze(-1))


def test_the_torch_streams_gamma_prompts_are_computed_as_before_train_stream():
    # today's Setting 3 arithmetic: the direction z / |z| times sqrt(G), labels by one batched matmul
    task = _task("gamma", "torch", shape=0.1)
    batch = task.sample(8, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    z = task.randn(8, 21, 5, generator=g)
    G = task.scale * task.standard_gamma(0.1, 8, 21, 1, generator=g)
    x = G.sqrt() * (z / torch.linalg.vector_norm(z, dim=-1, keepdim=True))
    w = task.randn(8, 5, 1, generator=g)
    assert torch.equal(batch.x, x) and torch.equal(batch.y, torch.bmm(x, w).squeeze(-1))


@pytest.mark.parametrize("d", [1, 3, 5, 7, 20])
def test_directions_and_labels_compiled_and_torch_paths_agree_with_the_formula(d):
    z = sampling.normal(KEY, 64 * 21 * d).view(64, 21, d)
    radius = 10 * sampling.standard_gamma(KEY + 1, 64 * 21, 0.1).view(64, 21, 1)
    w = sampling.normal(KEY + 2, 64 * d).view(64, d, 1)
    unit = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    for squared_radius, expected in ((None, unit), (radius, radius.sqrt() * unit)):
        out = sampling.scaled_directions(z, squared_radius, library=False)
        torch.testing.assert_close(out, expected, rtol=2e-6, atol=0)
        if sampling.load() is not None:
            assert torch.equal(sampling.scaled_directions(z, squared_radius), out)
    y = sampling.linear_labels(z, w, library=False)
    torch.testing.assert_close(y, torch.bmm(z.double(), w.double()).squeeze(-1).float(), rtol=1e-5, atol=1e-5)
    if sampling.load() is not None:
        assert torch.equal(sampling.linear_labels(z, w), y)


def test_philox_prompts_draw_one_key_per_array_from_the_generator():
    g = torch.Generator().manual_seed(3)
    batch = _task("gaussian", "philox").sample(8, g)
    keys = torch.Generator().manual_seed(3)
    x = sampling.normal(sampling.draw_key(keys), 8 * 21 * 5).view(8, 21, 5)
    w = sampling.normal(sampling.draw_key(keys), 8 * 5).view(8, 5, 1)
    assert torch.equal(batch.x, x) and torch.equal(batch.y, sampling.linear_labels(x, w))
    assert torch.equal(g.get_state(), keys.get_state())  # nothing else was drawn


def test_the_stream_is_the_same_in_every_dtype():
    from testbed.tasks import checked_task

    task = _task("gamma", "philox")
    f32, f64 = (checked_task(task, "t", dtype).sample(16, torch.Generator().manual_seed(1))
                for dtype in (torch.float32, torch.float64))
    assert f64.x.dtype == torch.float64 and torch.equal(f64.x, f32.x.double())


def _plans(tiny_raw, tmp_path, stream: str | None, plugins):
    from testbed.experiment.config import parse_config
    from testbed.experiment.runner import plan_runs

    if stream is not None:
        tiny_raw["train"]["stream"] = stream
    return plan_runs(parse_config(tiny_raw, plugins.registry), tmp_path)


def test_run_ids_differ_between_streams_and_the_torch_streams_are_todays(tiny_raw, tmp_path, monkeypatch):
    import copy

    import testbed.experiment.cache as cache
    import testbed_std.optimizers
    import testbed_std.tasks
    from testbed.plugins import load_plugins

    # released plugins (no source hash) and fixed core versions: the id depends on the config alone
    plugins = load_plugins(extra={"optimizers": testbed_std.optimizers, "tasks": testbed_std.tasks},
                           entry_points=False)
    monkeypatch.setattr(cache, "core_versions", lambda: {"testbed": "0.0.0", "torch": "0.0.0"})
    ids = {stream: cache.run_id(_plans(copy.deepcopy(tiny_raw), tmp_path, stream, plugins)[0], plugins)
           for stream in (None, "philox", "torch")}
    assert ids[None] == ids["philox"] != ids["torch"]
    # the tiny experiment's first run (sgd, seed 0) as computed before train.stream existed
    assert ids["torch"] == "8ee23b8df3af3ebf"


@pytest.mark.parametrize("stream", ["philox", "torch"])
def test_a_seeded_run_is_identical_twice(tiny_raw, tmp_path, stream):
    from testbed.experiment.config import parse_config
    from testbed.experiment.runner import run_experiment
    from testbed.plugins import load_plugins

    tiny_raw["train"].update(stream=stream, seeds=[0])
    plugins = load_plugins()
    config = parse_config(tiny_raw, plugins.registry)
    first, second = (run_experiment(config, plugins, tmp_path / name, workers=1) for name in "ab")
    assert [r.status for r in first.results] == ["completed"] * 2
    assert [r.eval_losses for r in first.results] == [r.eval_losses for r in second.results]
    assert [r.run_id for r in first.results] == [r.run_id for r in second.results]
