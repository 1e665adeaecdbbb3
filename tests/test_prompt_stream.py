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
