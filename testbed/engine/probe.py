"""The ``Probe``: a diagnostic's exact, side-effect-free view of a run's loss landscape at one point."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch.func import functional_call, grad, jacrev, jvp

from testbed.engine.seeds import stream_seed
from testbed.model.kernel.second_order import kernel_hessian, kernel_hvp, kernel_supports
from testbed.model.transformer import LinearTransformer, mse_loss
from testbed.tasks import Batch, Task


HESSIAN_CHUNK = 10


# ------------------------------------------------------------------ the probe
@dataclass
class ParameterBlock:
    """Where one named model parameter lies in the flattened parameter vector: ``[start:stop]``, reshaped to ``shape``."""

    name: str
    start: int
    stop: int
    shape: torch.Size


@dataclass
class Probe:
    """Exact, side-effect-free access to a run's loss landscape at one point.

    ``params`` is the flattened vector of every trainable parameter (a detached copy). Losses,
    gradients, Hessians and Hessian-vector products are pure functions of a parameter vector and
    a batch; second derivatives use the model's plain-autograd path under ``torch.func``.
    """

    model: LinearTransformer
    task: Task
    eval_batch: Batch
    train_batch_size: int
    seed: int
    params: torch.Tensor
    blocks: list[ParameterBlock]
    next_params: torch.Tensor | None = None  # after the update from ``params`` (update diagnostics)
    train_gradient: torch.Tensor | None = None  # the (clipped) minibatch gradient of that update
    _twice: LinearTransformer | None = field(default=None, repr=False)
    _at_theta: LinearTransformer | None = field(default=None, repr=False)  # gradient()'s copy, made on first use

    @classmethod
    def of(cls, model: LinearTransformer, task: Task, eval_batch: Batch, train_batch_size: int,
           seed: int) -> "Probe":
        """A probe at ``model``'s current parameters; it works on copies, so the trained model is never touched."""
        blocks, start = [], 0
        for name, p in model.named_parameters():
            blocks.append(ParameterBlock(name, start, start + p.numel(), p.shape))
            start += p.numel()
        fast = copy.deepcopy(model)  # copies: a diagnostic never touches the trained model
        twice = copy.deepcopy(model)
        twice.use_kernel = False  # torch.func needs the plain-autograd path
        return cls(fast, task, eval_batch, train_batch_size, seed, flatten(model), blocks, _twice=twice)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter name -> its view into the flat vector ``theta`` (the inverse of ``flatten``)."""
        return {b.name: theta[b.start:b.stop].view(b.shape) for b in self.blocks}

    def loss_function(self, batch: Batch | None = None, twice: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
        """theta -> loss on ``batch`` (default: the fixed eval batch)."""
        batch = batch or self.eval_batch
        model = self._twice if twice else self.model

        def loss(theta: torch.Tensor) -> torch.Tensor:
            prediction = functional_call(model, self.unflatten(theta), (batch.x, batch.y))
            return mse_loss(prediction, batch.target)

        return loss

    def loss(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> float:
        """The MSE loss at ``theta`` (default: the probed point) on ``batch`` (default: the eval batch)."""
        theta = self.params if theta is None else theta
        with torch.no_grad():
            return float(self.loss_function(batch, twice=False)(theta))

    def gradient(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """Gradient of the loss at ``theta`` (default: the probed point) on ``batch`` (default: the
        eval batch) through the model's training path: one pass of the compiled kernel where it covers
        the model (0.5 against 1.5 ms through functional_call, setting 1), equal to
        ``autograd_gradient`` up to float rounding."""
        theta = self.params if theta is None else theta
        batch = batch or self.eval_batch
        if self._at_theta is None:
            self._at_theta = copy.deepcopy(self.model)  # its own copy: the probe's model is never touched
        torch.nn.utils.vector_to_parameters(theta.detach().clone(), self._at_theta.parameters())
        return training_gradient(self._at_theta, batch)

    def autograd_gradient(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """Gradient of the loss by autograd through ``functional_call`` on the engine's forward pass:
        the reference that ``gradient`` and ``gradients`` agree with."""
        theta = (self.params if theta is None else theta).detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss_function(batch, twice=False)(theta), theta)
        return g

    def gradients(self, batches: Iterable[Batch], theta: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """The gradient on each of ``batches`` in turn, taken lazily (a batch is drawn only when its
        gradient is asked for), through the model's training path: one pass of the compiled kernel
        per batch where it covers the model, as ``gradient`` takes it for one batch (one copy of the
        model for all the batches). Equal to ``autograd_gradient`` up to float rounding."""
        model = copy.deepcopy(self.model)  # its own copy: the probe's model is never touched
        point = (self.params if theta is None else theta).detach().clone()  # parameters own their storage
        torch.nn.utils.vector_to_parameters(point, model.parameters())
        for batch in batches:
            yield training_gradient(model, batch)

    def hessian(self, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """The full Hessian (P x P) of the loss in the flattened parameters: the compiled kernel's
        Hessian-vector products where it covers the model, else torch.func reverse-over-reverse, vectorized
        over chunks of rows (measured faster than unchunked or forward-over-reverse)."""
        theta = (self.params if theta is None else theta).detach()
        batch = batch or self.eval_batch
        if kernel_supports(self.model, batch):
            return kernel_hessian(self.model, batch, theta)
        return jacrev(grad(self.loss_function(batch)), chunk_size=HESSIAN_CHUNK)(theta)

    def hvp(self, vector: torch.Tensor, theta: torch.Tensor | None = None, batch: Batch | None = None) -> torch.Tensor:
        """Hessian-vector product H(theta) v, exact (forward-over-reverse)."""
        theta = (self.params if theta is None else theta).detach()
        batch = batch or self.eval_batch
        if kernel_supports(self.model, batch):
            return kernel_hvp(self.model, batch, theta, vector.reshape(1, -1))[0].to(vector.dtype)
        return jvp(grad(self.loss_function(batch)), (theta,), (vector,))[1]

    @property
    def update(self) -> torch.Tensor:
        """theta_{t+1} - theta_t, the update actually taken from the probed point."""
        if self.next_params is None:
            raise RuntimeError("this probe has no update: the diagnostic must set needs_update")
        return self.next_params - self.params

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Fresh prompts of the run's task from the diagnostic's own generator."""
        return self.task.sample(batch_size, generator)

    def generator(self, name: str) -> torch.Generator:
        """A generator of its own for a diagnostic, fixed by the run seed and the name."""

        return torch.Generator().manual_seed(stream_seed(self.seed, f"diagnostic:{name}"))


def flatten(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter of ``model`` in one detached vector (a copy), in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def training_gradient(model: LinearTransformer, batch: Batch) -> torch.Tensor:
    """The gradient of ``model``'s loss on ``batch`` through its training step's ``loss_backward``, as
    one vector aligned with ``flatten`` (the model's ``.grad`` are overwritten)."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model.loss_backward(batch.x, batch.y, batch.target)
    return flat_gradient(model)


def flat_gradient(model: torch.nn.Module) -> torch.Tensor:
    """The parameters' current ``.grad`` as one detached vector aligned with ``flatten`` (zeros where a parameter has none)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                      for p in model.parameters()]).clone()
