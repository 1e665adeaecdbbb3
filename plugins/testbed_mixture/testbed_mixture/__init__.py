"""testbed-mixture: an example testbed plugin with a task (Gaussian-mixture covariates) and a
diagnostic (the cosine between consecutive updates)."""

from .diagnostics import UpdateCosine
from .tasks import GaussianMixtureTask

__all__ = ["GaussianMixtureTask", "UpdateCosine"]
