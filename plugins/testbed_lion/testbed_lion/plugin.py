"""The testbed plugin: registers the optimizer "lion". Uses only testbed's public API."""

from __future__ import annotations

from typing import Iterable

import torch

from testbed import Option, hookimpl

from .optim import Lion


def _check_betas(betas: list[float]) -> None:
    # Option's max is inclusive; beta = 1 would freeze the momentum, so reject it here.
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}] must satisfy 0 <= beta < 1, got {beta}")


def make_lion(
    params: Iterable[torch.Tensor] | Iterable[dict],
    lr: float,
    betas: list[float],
    weight_decay: float,
) -> Lion:
    """Factory the host calls as ``factory(params, lr=..., **validated_options)``."""
    return Lion(params, lr=lr, betas=(betas[0], betas[1]), weight_decay=weight_decay)


@hookimpl
def register_optimizers(register) -> None:
    register(
        "lion",
        make_lion,
        options={
            "betas": Option(
                [0.9, 0.99],
                "(b1, b2): b1 interpolates the update direction, b2 the momentum it keeps",
                type=list,
                item=float,
                length=2,
                min=0.0,
                max=1.0,
                check=_check_betas,
            ),
            "weight_decay": Option(0.0, "decoupled weight decay (scaled by lr, as in AdamW)", min=0.0),
        },
        doc="Lion: sign of an interpolated momentum (Chen et al. 2023)",
    )
