"""What a task plugin is: a sampler of in-context regression prompts.

A task states its dimension ``d`` and number of context examples ``n`` and samples batches only from
the ``torch.Generator`` it is handed (never the global RNG), so the engine controls every stream.
``LinearRegressionTask`` is the helper the standard tasks are built on: a subclass says only how the
covariates are drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from testbed.errors import BatchError
from testbed.native import sampling

# Where a LinearRegressionTask's random numbers come from (train.stream): "philox", the counter-based
# stream (one 64-bit key drawn from the generator per call, then testbed.native.sampling fills the
# array), or "torch", torch's own samplers on the generator (the stream before issue 15).
STREAMS = ("philox", "torch")


@dataclass(frozen=True)
class Batch:
    """A batch of prompts.

    ``x``: covariates, shape ``(B, n+1, d)``; the last token is the query.
    ``y``: labels, shape ``(B, n+1)``; ``y[:, -1]`` is the query's true label, which the model never
    sees (the model hides it when it builds the prompt matrix).
    """

    x: torch.Tensor
    y: torch.Tensor

    @property
    def target(self) -> torch.Tensor:
        """The query labels ``y[:, -1]``: what the model predicts and the loss compares with."""
        return self.y[:, -1]

    def __len__(self) -> int:
        return self.x.shape[0]


class Task:
    """Base class for task plugins. Subclasses set ``d`` and ``n`` and implement ``sample``, which
    returns a ``Batch`` of exactly ``batch_size`` prompts in float32 on the CPU (a run checks every
    batch and fails on a wrong one: see ``CheckedTask``)."""

    d: int
    n: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` prompts drawn from ``generator`` alone (never the global RNG)."""
        raise NotImplementedError


class LinearRegressionTask(Task):
    """In-context linear regression, the paper's task family; a subclass draws only the covariates.

    The task contract, which every prompt of ``sample`` keeps:

    - each prompt draws its own weight vector ``w ~ N(0, I_d)``, after its covariates;
    - labels ``y_i = <w, features(x_i)>`` for the ``n`` context tokens and the query (``features`` is
      ``x`` itself unless a subclass overrides it), plus ``N(0, label_noise^2)`` noise on every label
      when ``label_noise > 0`` (no draw at all when it is 0);
    - ``x`` has shape ``(B, n+1, d)`` and ``y`` shape ``(B, n+1)``, both float32;
    - every random number comes from the ``generator`` handed to ``sample``, on its device (``randn``
      and ``standard_gamma`` draw so): never the global RNG, so the engine owns every stream and a
      seed fixes the prompts.

    ``stream`` (one of STREAMS; a run sets it from train.stream) says how ``randn`` and
    ``standard_gamma`` turn the generator into numbers.
    """

    stream: str = "philox"

    def __init__(self, d: int, n: int, label_noise: float = 0.0) -> None:
        for name, value in (("d", d), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if label_noise < 0:
            raise ValueError(f"label_noise must be >= 0, got {label_noise!r}")
        self.d, self.n, self.label_noise = d, n, float(label_noise)

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Covariates of ``batch_size`` prompts, shape ``(B, n+1, d)``, float32, drawn from ``generator``."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the labels are linear in, shape ``(B, n+1, d)``: ``x`` itself unless overridden."""
        return x

    def randn(self, *shape: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal float32 numbers of ``shape`` from ``generator``, on its device."""
        if self.stream == "torch":
            return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        key = sampling.draw_key(generator)
        return sampling.normal(key, math.prod(shape), generator.device).view(shape)

    def standard_gamma(self, shape: float, *size: int, generator: torch.Generator) -> torch.Tensor:
        """Gamma(``shape``, scale 1) float32 variates of ``size`` from ``generator``, on its device
        (Marsaglia & Tsang, with the boost G(k) = G(k+1) U^(1/k) for shapes below 1)."""
        if self.stream == "torch":
            return _torch_stream_gamma(shape, size, generator)
        key = sampling.draw_key(generator)
        return sampling.standard_gamma(key, math.prod(size), shape, generator.device).view(size)

    def directions(self, z: torch.Tensor, squared_radius: torch.Tensor | None = None) -> torch.Tensor:
        """Each token of ``z`` (B, n+1, d) scaled to length sqrt(``squared_radius``) (B, n+1, 1), or
        to length 1 when it is None (a standard normal ``z`` then gives points uniform on the sphere).
        The philox stream does it in one compiled pass; the torch stream as it always did."""
        if self.stream == "torch":
            u = z / torch.linalg.vector_norm(z, dim=-1, keepdim=True)
            return u if squared_radius is None else squared_radius.sqrt() * u
        return sampling.scaled_directions(z, squared_radius)

    def labels(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Noiseless labels <w, features> of every token, (B, n+1), for ``w`` (B, d, 1): one compiled
        pass on the philox stream, one batched matmul on the torch stream (as it always was)."""
        if self.stream == "torch" or features.dtype != torch.float32 or w.dtype != torch.float32:
            return torch.bmm(features, w).squeeze(-1)
        return sampling.linear_labels(features, w)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """``batch_size`` prompts: covariates, then ``w`` per prompt, then the label noise (if any)."""
        x = self.covariates(batch_size, generator)
        w = self.randn(batch_size, self.d, 1, generator=generator)
        y = self.labels(self.features(x), w)
        if self.label_noise > 0:  # no draw at all when noiseless: keeps the default stream minimal
            y = y + self.label_noise * self.randn(batch_size, self.n + 1, generator=generator)
        return Batch(x, y)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, n={self.n}, label_noise={self.label_noise})"


def use_stream(task: Task, stream: str) -> Task:
    """``task`` drawing from ``stream`` (one of STREAMS) when it is a LinearRegressionTask; any other
    task draws as it always does. Returns the task."""
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {', '.join(STREAMS)}, got {stream!r}")
    if isinstance(task, LinearRegressionTask):
        task.stream = stream
    return task


def _torch_stream_gamma(shape: float, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gamma(shape, scale 1) samples by Marsaglia & Tsang (2000) on torch's own samplers, vectorized
    over the batch: the torch stream's (torch's _standard_gamma draws one value at a time).
    Shapes below 1 use the boost G(a) = G(a+1) * U^(1/a)."""
    count = math.prod(size)
    alpha = shape + 1.0 if shape < 1.0 else shape
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    draw = {"generator": generator, "device": generator.device, "dtype": torch.float32}
    accepted, have = [], 0
    while have < count:
        m = count - have
        m += m // 16 + 16  # acceptance is above 95%: one round almost always suffices
        x = torch.randn(m, **draw)
        v = (1.0 + c * x) ** 3
        u = torch.rand(m, **draw)
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v))
        accepted.append((d * v)[ok][: count - have])
        have += accepted[-1].numel()
    g = torch.cat(accepted)
    if shape < 1.0:
        g = g * torch.rand(count, **draw) ** (1.0 / shape)
    return g.view(size)


class InDtype(Task):
    """A task's prompts cast to another floating-point type (``train.dtype``). They are drawn as the
    task draws them, so a seed gives the same prompts in every dtype."""

    def __init__(self, task: Task, dtype: torch.dtype) -> None:
        self.task, self.dtype, self.d, self.n = task, dtype, task.d, task.n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The wrapped task's prompts, cast to this dtype."""
        batch = self.task.sample(batch_size, generator)
        if not isinstance(batch, Batch) or not all(isinstance(t, torch.Tensor) for t in (batch.x, batch.y)):
            return batch  # not prompts at all: CheckedTask names what it is
        return Batch(batch.x.to(self.dtype), batch.y.to(self.dtype))

    def __getattr__(self, name: str):  # the wrapped task's own attributes (a teacher, a covariance)
        return getattr(self.__dict__["task"], name)


class CheckedTask(Task):
    """A task whose every batch is checked before it reaches the model. The compiled kernel trusts
    the sizes it is given: prompts of the wrong shape would make it read or write out of bounds (an
    abort) or compute a plausible but meaningless loss. The check compares shapes, dtypes and devices
    only, never entries: it runs on every step (and NaN labels are a divergence, not a wrong batch)."""

    def __init__(self, task: Task, name: str, dtype: torch.dtype) -> None:
        self.task, self.name, self.dtype, self.d, self.n = task, name, dtype, task.d, task.n

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """The wrapped task's prompts, or a BatchError naming what is wrong with them."""
        batch = self.task.sample(batch_size, generator)
        problem = batch_problem(batch, batch_size, self.n, self.d, self.dtype)
        if problem is not None:
            raise BatchError(f"task {self.name!r} returned {problem}")
        return batch

    def __getattr__(self, name: str):  # the wrapped task's own attributes (a teacher, a covariance)
        return getattr(self.__dict__["task"], name)


def checked_task(task: Task, name: str, dtype: torch.dtype) -> Task:
    """``task`` (registered as ``name``) as a run samples it: its prompts in ``dtype`` (train.dtype;
    tasks draw float32, so only another dtype casts them) and every batch checked."""
    return CheckedTask(task if dtype == torch.float32 else InDtype(task, dtype), name, dtype)


def batch_problem(batch: object, batch_size: int, n: int, d: int, dtype: torch.dtype) -> str | None:
    """What makes ``batch`` unfit for a model of ``n`` context tokens and ``d`` features in ``dtype``
    (on the CPU), e.g. "x of shape (64, 7, 6), expected (64, 7, 3) = (batch, n+1, d)"; None if fit."""
    if not isinstance(batch, Batch):
        return f"a {type(batch).__name__}, not a Batch"
    tensors = (("x", batch.x), ("y", batch.y))
    for name, value in tensors:
        if not isinstance(value, torch.Tensor):
            return f"{name} of type {type(value).__name__}, not a torch.Tensor"
    problem = shape_problem(batch.x, batch.y, batch_size, n, d)
    if problem is not None:
        return problem
    for name, value in tensors:
        if value.dtype != dtype:
            return f"{name} of dtype {_dtype_name(value.dtype)}, expected {_dtype_name(dtype)} (train.dtype)"
        if not value.is_cpu:
            return f"{name} on device {value.device}, expected cpu"
    return None


def shape_problem(x: torch.Tensor, y: torch.Tensor, batch_size: int, n: int, d: int) -> str | None:
    """What is wrong with the shapes of covariates ``x`` and labels ``y`` for ``batch_size`` prompts
    of ``n`` context tokens and ``d`` features (see ``Batch``), or None."""
    expected = (batch_size, n + 1, d)
    if x.shape != expected:
        return f"x of shape {tuple(x.shape)}, expected {expected} = (batch, n+1, d)"
    if y.shape != expected[:2]:
        return f"y of shape {tuple(y.shape)}, expected {expected[:2]} = (batch, n+1)"
    return None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
