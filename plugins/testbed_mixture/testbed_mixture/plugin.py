"""The testbed plugin: registers the task "gaussian_mixture" and the diagnostic "update_cosine".
Uses only testbed's public API."""

from __future__ import annotations

from testbed import Option, Plot, Schedule, hookimpl

from .diagnostics import UpdateCosine
from .tasks import GaussianMixtureTask


@hookimpl
def register_tasks(register) -> None:
    register(
        "gaussian_mixture",
        GaussianMixtureTask,
        options={
            "components": Option(2, "number of mixture components (equally likely)", min=1),
            "separation": Option(2.0, "distance of every component mean from the origin", min=0.0),
            "std": Option(1.0, "standard deviation of each component", min=0.0, min_exclusive=True),
            "means_seed": Option(0, "seed of the generator that draws the means once", min=0),
            "label_noise": Option(0.0, "std of Gaussian noise added to every label", min=0.0),
        },
        doc="x from a mixture of Gaussians (separated means), linear labels w ~ N(0, I_d).",
    )


@hookimpl
def register_diagnostics(register) -> None:
    register(
        "update_cosine",
        UpdateCosine,
        doc="Cosine between consecutive parameter updates (momentum keeps it near 1).",
        schedule=Schedule(every=1, stop=201),
        plots=[Plot("cosine", "cosine of consecutive updates",
                    caption="cos(u_{t-1}, u_t) of the updates the optimizer took from steps t-1 and t.")],
    )
