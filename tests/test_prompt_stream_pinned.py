"""The philox prompt stream's numbers are pinned: a run id names its prompts (see
testbed/experiment/cache.py), so a faster build of the stream (vectorized Gamma retries, Philox in
64-bit lanes, chunked directions) must give the very same bits, on the compiled and the torch path.
The digests were taken from the build before those changes."""

from __future__ import annotations

import hashlib

import pytest
import torch

from testbed.native import sampling

KEY = 0x0123456789ABCDEF
PATHS = [pytest.param(True, id="compiled"), pytest.param(False, id="torch")]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


def _path(library: bool) -> None:
    if library and sampling.load() is None:
        pytest.skip("no compiled library here")


@pytest.mark.parametrize("library", PATHS)
@pytest.mark.parametrize("shape,expected", [(0.1, "900ba3784477c522"), (2.5, "04f5921b417a012c")])
def test_gamma_variates_are_the_pinned_ones(shape, expected, library):
    _path(library)
    assert _digest(sampling.standard_gamma(KEY, 100_000, shape, library=library)) == expected


@pytest.mark.parametrize("library", PATHS)
def test_normals_are_the_pinned_ones(library):
    _path(library)
    assert _digest(sampling.normal(KEY, 100_000, library=library)) == "41a014ea52fa0f52"


@pytest.mark.parametrize("library", PATHS)
def test_scaled_directions_are_the_pinned_ones(library):
    _path(library)
    z = sampling.normal(KEY, 100_000, library=library).view(20_000, 5)
    radius = sampling.standard_gamma(KEY + 1, 20_000, 0.1, library=library)
    assert _digest(sampling.scaled_directions(z, radius, library=library)) == "94565d1206542ab0"


@pytest.mark.parametrize("library", PATHS)
@pytest.mark.parametrize("name,options,x_digest,y_digest", [
    ("gamma", {"shape": 0.1}, "2d253a86237ed152", "a024871eb10536b8"),
    ("gaussian", {}, "b078a70ea51e1814", "6aebbfd48e5fe3a7"),
    ("student_t", {}, "c45bd2f74a36ef00", "2cc3bd3ea4c4c62f"),
])
def test_task_prompts_are_the_pinned_ones(name, options, x_digest, y_digest, library, monkeypatch):
    from testbed.engine.build import build_task
    from testbed.engine.specs import TaskSpec
    from testbed.plugins import load_plugins
    from testbed.tasks import use_stream

    _path(library)
    if not library:
        monkeypatch.setattr(sampling, "load", lambda: None)  # every fill on the torch path
    task = use_stream(build_task(TaskSpec(name, 5, 20, options), load_plugins().registry), "philox")
    batch = task.sample(300, torch.Generator().manual_seed(11))
    assert (_digest(batch.x), _digest(batch.y)) == (x_digest, y_digest)


@pytest.mark.parametrize("shape", [0.1, 1.0, 2.5])
def test_compiled_gamma_equals_the_torch_path_bit_for_bit_through_many_retries(shape):
    # 200,003 variates: thousands rejected once, hundreds twice or more (the retry passes)
    if sampling.load() is None:
        pytest.skip("no compiled library here")
    compiled = sampling.standard_gamma(KEY, 200_003, shape)
    fallback = sampling.standard_gamma(KEY, 200_003, shape, library=False)
    assert torch.equal(compiled.view(torch.int32), fallback.view(torch.int32))


def test_a_radius_per_row_is_required():
    z = sampling.normal(KEY, 60).view(4, 3, 5)
    with pytest.raises(ValueError, match="11 values for 12 rows"):
        sampling.scaled_directions(z, torch.ones(11))
