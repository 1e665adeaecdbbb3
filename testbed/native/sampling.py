"""The counter-based prompt stream: standard normals and Gamma variates filled from Philox4x32-10
keyed by one 64-bit key (see sampling.cpp for the algorithms and the counter layout).

Every number depends only on the key and its index, so a key fixes an array whatever its length
is split into, and whole arrays fill in one vectorized pass. The compiled library does it in C++;
without it (no compiler, TESTBED_KERNEL=torch, a tensor on another device) the same operations run
as torch ops, in the same order and float32 rounding, so both give the same numbers.
"""

from __future__ import annotations

import ctypes
import math
from functools import lru_cache
from pathlib import Path

import torch

from testbed.native import compiled_library

SOURCE = Path(__file__).with_name("sampling.cpp")
# -ffp-contract=off: no fused multiply-add, so each operation rounds as the torch fallback's does.
_FLAGS = ("-ffp-contract=off",)
_POINTER = ctypes.c_void_p
SIGNATURES = {
    "philox_block": [_POINTER] * 3,
    "philox_normal": [ctypes.c_uint64, ctypes.c_int64, _POINTER],
    "philox_gamma": [ctypes.c_uint64, ctypes.c_int64, ctypes.c_float, ctypes.c_float, ctypes.c_float,
                     ctypes.c_int, _POINTER],
    "scaled_directions": [ctypes.c_int64, ctypes.c_int64] + [_POINTER] * 3,
    "linear_labels": [ctypes.c_int64] * 3 + [_POINTER] * 3,
}
_MASK = 0xFFFFFFFF
_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_NORMAL, _GAMMA, _BOOST = 0, 1, 2  # the stream word c3 of a counter


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The sampling library (``sampling.cpp``), or None when it is disabled or cannot be built here."""
    return compiled_library(SOURCE, SIGNATURES, extra_flags=_FLAGS, typed=False)


def draw_key(generator: torch.Generator) -> int:
    """One 64-bit key (as an unsigned int) drawn from ``generator``: all a fill takes from it."""
    signed = torch.randint(-(2**63), 2**63 - 1, (), generator=generator, device=generator.device,
                           dtype=torch.int64)
    return int(signed) & 0xFFFFFFFFFFFFFFFF


def normal(key: int, count: int, device: torch.device | str = "cpu", library: bool = True) -> torch.Tensor:
    """``count`` standard normal float32 numbers of ``key``, on ``device``. ``library=False`` takes
    the torch path even where the compiled one is at hand (what tests compare)."""
    blocks = -(-count // 4)
    compiled = load() if library and torch.device(device).type == "cpu" else None
    if compiled is None:
        return _torch_normal(key, blocks, torch.device(device))[:count]
    out = torch.empty(4 * blocks, dtype=torch.float32)
    _check(compiled.philox_normal(key, blocks, out.data_ptr()))
    return out[:count]


def standard_gamma(key: int, count: int, shape: float, device: torch.device | str = "cpu",
                   library: bool = True) -> torch.Tensor:
    """``count`` Gamma(``shape``, scale 1) float32 variates of ``key``, on ``device``: Marsaglia &
    Tsang (2000), and for a shape below 1 the boost G(k) = G(k+1) U^(1/k)."""
    if not shape > 0:
        raise ValueError(f"Gamma shape must be > 0, got {shape!r}")
    boost = shape < 1.0
    d, c, inv_k = _gamma_constants(shape)
    compiled = load() if library and torch.device(device).type == "cpu" else None
    if compiled is None:
        return _torch_gamma(key, count, d, c, inv_k, boost, torch.device(device))
    out = torch.empty(count, dtype=torch.float32)
    _check(compiled.philox_gamma(key, count, d, c, inv_k, int(boost), out.data_ptr()))
    return out


def scaled_directions(z: torch.Tensor, squared_radius: torch.Tensor | None = None,
                      library: bool = True) -> torch.Tensor:
    """Each row of the last dimension of ``z`` (float32) scaled to length sqrt(``squared_radius``),
    one value per row (shape ``z.shape[:-1]``; None: length 1, a point on the unit sphere). One pass
    in C++; the torch path rounds alike (the squared norm summed in order, the root in double)."""
    z = z.contiguous()
    compiled = load() if library and z.device.type == "cpu" else None
    if compiled is None:
        radius = None if squared_radius is None else squared_radius.to(torch.float32).reshape(z.shape[:-1])
        squares = z[..., 0] * z[..., 0]
        for j in range(1, z.shape[-1]):
            squares = squares + z[..., j] * z[..., j]
        ratio = (1.0 if radius is None else radius) / squares
        return z * ratio.double().sqrt().float().unsqueeze(-1)
    rows, d = z.numel() // max(z.shape[-1], 1), z.shape[-1]
    # the C++ reads one radius a row: a flat contiguous float32 view, its size checked (no reshape:
    # 5 us, a hundredth of a Setting-3 batch)
    radius = None if squared_radius is None else squared_radius.to(torch.float32).contiguous()
    if radius is not None and radius.numel() != rows:
        raise ValueError(f"squared_radius has {radius.numel()} values for {rows} rows of z")
    out = torch.empty_like(z)
    _check(compiled.scaled_directions(rows, d, z.data_ptr(), None if radius is None else radius.data_ptr(),
                                      out.data_ptr()))
    return out


def linear_labels(x: torch.Tensor, w: torch.Tensor, library: bool = True) -> torch.Tensor:
    """y[b, i] = <x[b, i], w[b]> for features ``x`` (B, tokens, d) and weights ``w`` (B, d), float32,
    summed in order of the features: one pass in C++, the same rounding on the torch path."""
    batch, tokens, d = x.shape
    x, w = x.contiguous(), w.contiguous().reshape(batch, d)
    compiled = load() if library and x.device.type == "cpu" else None
    if compiled is None:
        y = x[..., 0] * w[:, None, 0]
        for j in range(1, d):
            y = y + x[..., j] * w[:, None, j]
        return y
    y = torch.empty(batch, tokens, dtype=torch.float32)  # sizes as ints: half the cost of a torch.Size
    _check(compiled.linear_labels(batch, tokens, d, x.data_ptr(), w.data_ptr(), y.data_ptr()))
    return y


def philox_block(counter: tuple[int, int, int, int], key: tuple[int, int], library: bool = True) -> tuple[int, ...]:
    """Philox4x32-10 of one counter (four 32-bit words) and key (two words): its four output words."""
    compiled = load() if library else None
    if compiled is None:
        words = [torch.tensor([w], dtype=torch.int64) for w in counter]
        return tuple(int(w) for w in _philox(*words, key[0], key[1]))
    c_in, k_in = (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key)
    out = (ctypes.c_uint32 * 4)()
    _check(compiled.philox_block(c_in, k_in, out))
    return tuple(out)


def _check(status: int) -> None:
    if status != 0:
        raise MemoryError("prompt stream: out of memory")


@lru_cache(maxsize=64)
def _gamma_constants(shape: float) -> tuple[float, float, float]:
    """Marsaglia-Tsang's d and c for ``shape`` (for shape + 1 under the boost) and the boost's 1/shape,
    rounded to float32 as both paths use them; cached, as a task draws with one or two shapes."""
    alpha = shape + 1.0 if shape < 1.0 else shape
    return tuple(_float32(v) for v in (alpha - 1.0 / 3.0, 1.0 / math.sqrt(9.0 * (alpha - 1.0 / 3.0)), 1.0 / shape))


def _float32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


# The torch path: 32-bit words held in int64 tensors.

def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    # The 64-bit product a * m in 16-bit halves of m, so no int64 product overflows.
    p_low, p_high = a * (m & 0xFFFF), a * (m >> 16)
    return (p_high + (p_low >> 16)) >> 16, (p_low + ((p_high & 0xFFFF) << 16)) & _MASK


def _philox(c0, c1, c2, c3, k0: int, k1: int):
    for round in range(10):
        if round > 0:
            k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _words(key: int, index: torch.Tensor, attempt: int, stream: int):
    """The four output words of the blocks (index, attempt, stream) under ``key``."""
    c2 = torch.full_like(index, attempt)
    c3 = torch.full_like(index, stream)
    return _philox(index & _MASK, index >> 32, c2, c3, key & _MASK, key >> 32)


def _uniform(w: torch.Tensor) -> torch.Tensor:
    return ((w >> 9).to(torch.float32) + 0.5) * 1.1920928955078125e-7


def _log(x: torch.Tensor) -> torch.Tensor:
    bits = x.view(torch.int32)
    e = ((bits >> 23) & 0xFF) - 126
    m = ((bits & 0x7FFFFF) | 0x3F000000).view(torch.float32)
    low = m < _float32(0.707106781186547524)
    e = e - low.to(torch.int32)
    f = torch.where(low, m + m, m) - 1.0
    z = f * f
    y = torch.full_like(f, 7.0376836292e-2)
    for coefficient in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
                        -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        y = y * f + coefficient
    y = y * f * z
    fe = e.to(torch.float32)
    y = y + fe * -2.12194440e-4
    y = y - 0.5 * z
    return (f + y) + fe * 0.693359375


def _exp(x: torch.Tensor) -> torch.Tensor:
    fx = torch.floor(x * _float32(1.44269504088896341) + 0.5)
    x = x - fx * 0.693359375
    x = x - fx * -2.12194440e-4
    z = x * x
    y = torch.full_like(x, 1.9875691500e-4)
    for coefficient in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * x + coefficient
    y = (y * z + x) + 1.0
    n = fx.to(torch.int32).clamp_(min=-190)
    tiny = n < -126
    scaled = y * ((torch.where(tiny, n + 64, n) + 127) << 23).view(torch.float32)
    return torch.where(tiny, scaled * 5.421010862427522e-20, scaled)


def _cos_sin(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    b = ((w >> 8) + (1 << 21)) & 0xFFFFFF
    q = b >> 22
    phi = (((b & 0x3FFFFF) - (1 << 21)).to(torch.float32) + 0.5) * 3.7450702829239286e-7
    z = phi * phi
    s = ((torch.full_like(z, -1.9515295891e-4) * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * phi + phi
    c = ((torch.full_like(z, 2.443315711809948e-5) * z - 1.388731625493765e-3) * z + 4.166664568298827e-2)
    c = (c * z * z - 0.5 * z) + 1.0
    odd = (q & 1).bool()
    cos_q, sin_q = torch.where(odd, s, c), torch.where(odd, c, s)
    return (torch.where((q == 1) | (q == 2), -cos_q, cos_q), torch.where(q >= 2, -sin_q, sin_q))


def _radius(w: torch.Tensor) -> torch.Tensor:
    # torch's float32 sqrt is not correctly rounded (C++'s is); float64's, rounded to float32, is
    return torch.sqrt((-2.0 * _log(_uniform(w))).double()).float()


def _torch_normal(key: int, blocks: int, device: torch.device) -> torch.Tensor:
    c0, c1, c2, c3 = _words(key, torch.arange(blocks, dtype=torch.int64, device=device), 0, _NORMAL)
    cos_a, sin_a = _cos_sin(c1)
    cos_b, sin_b = _cos_sin(c3)
    r_a, r_b = _radius(c0), _radius(c2)
    return torch.cat([r_a * cos_a, r_a * sin_a, r_b * cos_b, r_b * sin_b])


def _gamma_attempt(key: int, index: torch.Tensor, attempt: int, d: float, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    c0, c1, c2, _ = _words(key, index, attempt, _GAMMA)
    x = _radius(c0) * _cos_sin(c1)[0]
    t = 1.0 + c * x
    v = t * t * t
    ok = (v > 0) & (_log(_uniform(c2)) < ((0.5 * x * x + d) - d * v) + d * _log(v))
    return d * v, ok


def _torch_gamma(key: int, count: int, d: float, c: float, inv_k: float, boost: bool,
                 device: torch.device) -> torch.Tensor:
    index = torch.arange(count, dtype=torch.int64, device=device)
    out, ok = _gamma_attempt(key, index, 0, d, c)
    retry, attempt = index, 0
    while not bool(ok.all()):  # each rejected element retries on its own next counter
        attempt += 1
        retry = retry[~ok]
        g, ok = _gamma_attempt(key, retry, attempt, d, c)
        out[retry[ok]] = g[ok]
    if boost:  # G(k) = G(k + 1) U^(1/k), U from the element's own block
        out = out * _exp(_log(_uniform(_words(key, index, 0, _BOOST)[0])) * inv_k)
    return out
