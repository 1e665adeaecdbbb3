"""The MLP feature map's side of a Hessian-vector product, forward-over-reverse by hand in torch.

A direction in the feature map's weights moves the covariates the attention reads (the features):
``features_tangent`` gives that motion, the attention kernel (la_hvp_features) takes it and returns
dLoss/dfeatures with its tangent, and ``gradient_tangent`` turns those into the tangent of the
weights' gradient. ReLU's second derivative is zero, so the only second-order terms of the MLP are
products of one layer's tangent with another's values (a weight's gradient is a product of the
activations below it and the gradient above it, and a direction moves both).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FeatureMapTangents:
    """A ReLU MLP shaped as ``linears`` (ReLU between them) at the point ``point`` (its weights and
    biases flattened in parameter order: each layer's weight, then its bias) on the covariates ``x``
    (B, n+1, d): its features (B, n+1, out) and what a direction's tangents need (each layer's input
    and ReLU mask), kept from one forward pass."""

    def __init__(self, linears: Sequence[nn.Linear], point: torch.Tensor, x: torch.Tensor):
        self.shapes = [(linear.out_features, linear.in_features) for linear in linears]
        layers = [(W[0], b[0]) for W, b in self.split(point.detach().unsqueeze(0))]
        self.weights = [W for W, _ in layers]
        self.batch = x.shape[:-1]
        a = x.detach().reshape(-1, x.shape[-1])
        self.inputs, self.masks = [a], []  # layer l's input (M, in); ReLU masks of the hidden layers
        for l, (W, b) in enumerate(layers):
            z = torch.addmm(b, a, W.t())
            if l == len(layers) - 1:
                break
            self.masks.append(z > 0)  # where ReLU passes its input and its gradient (0 at 0, as torch)
            a = torch.relu(z)
            self.inputs.append(a)
        self.features = z.view(*self.batch, -1)

    def split(self, directions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Directions (K, the MLP's parameter count) as each layer's (weight (K, out, in), bias (K, out))."""
        sizes = [s for o, i in self.shapes for s in (o * i, o)]
        parts = directions.split(sizes, dim=1)
        K = directions.shape[0]
        return [(w.reshape(K, o, i), b) for (o, i), w, b in zip(self.shapes, parts[0::2], parts[1::2])]

    def features_tangent(self, tangents: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """The features' tangent (K, B, n+1, out) along each direction; keeps the hidden layers'
        tangents for ``gradient_tangent``."""
        self.input_tangents = [None]  # the covariates are data: no tangent
        ta = None
        for l, ((tW, tb), W, a) in enumerate(zip(tangents, self.weights, self.inputs)):
            tz = torch.matmul(a, tW.transpose(1, 2)) + tb.unsqueeze(1)  # a tW^T + tb    (K, M, out)
            if ta is not None:
                tz += torch.matmul(ta, W.t())  # + ta W^T
            if l == len(self.weights) - 1:
                break
            ta = tz * self.masks[l]
            self.input_tangents.append(ta)
        return tz.view(tz.shape[0], *self.batch, -1)

    def gradient_tangent(self, tangents: list[tuple[torch.Tensor, torch.Tensor]], d_features: torch.Tensor,
                         t_d_features: torch.Tensor) -> torch.Tensor:
        """The tangent (K, parameter count) of the loss's gradient in the MLP's weights, from dLoss/dfeatures
        (B, n+1, out) and its tangents (K, B, n+1, out) (after ``features_tangent`` with the same
        ``tangents``): J^T t(dF) + (the tangent of J)^T dF, layer by layer from the top."""
        K = t_d_features.shape[0]
        dz = d_features.reshape(-1, d_features.shape[-1])
        tdz = t_d_features.reshape(K, -1, d_features.shape[-1])
        parts = []
        for l in range(len(self.weights) - 1, -1, -1):
            (tW, _), W, a, ta = tangents[l], self.weights[l], self.inputs[l], self.input_tangents[l]
            tdW = torch.matmul(tdz.transpose(1, 2), a)  # t(dz)^T a
            if ta is not None:
                tdW += torch.matmul(dz.t(), ta)  # + dz^T t(a)
            parts[:0] = [tdW.reshape(K, -1), tdz.sum(1)]
            if l == 0:
                break
            mask = self.masks[l - 1]
            tdz = (torch.matmul(tdz, W) + torch.matmul(dz, tW)) * mask  # t(dz W) through the ReLU
            dz = (dz @ W) * mask
        return torch.cat(parts, dim=1)
