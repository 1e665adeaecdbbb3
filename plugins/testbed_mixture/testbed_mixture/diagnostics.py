"""The diagnostic: how much consecutive updates agree in direction."""

from __future__ import annotations

import torch

from testbed import Diagnostic, Scalar


class UpdateCosine(Diagnostic):
    """cos(u_{t-1}, u_t) of the updates u_t = theta_{t+1} - theta_t taken from steps t-1 and t.

    An update diagnostic (``needs_update``): the host measures it after the step leaving each due
    step t, with ``probe.update`` = u_t. It keeps the last update it saw and logs ``cosine`` at step
    t only when that update was u_{t-1}, so with a schedule sparser than every step nothing is
    logged. Near 1: the optimizer keeps its direction (momentum); near -1: it oscillates. A zero
    update has no direction: 0 is logged.
    """

    needs_update = True

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # the last update seen...
        self.previous_step = -1  # ...and the step it left from

    def measure(self, probe, step: int) -> list[Scalar]:
        """``cosine`` between the update from ``step - 1`` and the one from ``step``, if both were seen."""
        update = probe.update.detach().clone()
        consecutive = self.previous is not None and self.previous_step == step - 1
        records = [Scalar("cosine", cosine(self.previous, update))] if consecutive else []
        self.previous, self.previous_step = update, step
        return records


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine of the angle between ``a`` and ``b`` (0 when either is zero)."""
    norms = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(torch.dot(a.reshape(-1), b.reshape(-1))) / norms if norms > 0 else 0.0
