"""The task: in-context linear regression whose covariates come from a mixture of Gaussians."""

from __future__ import annotations

import torch

from testbed import LinearRegressionTask


class GaussianMixtureTask(LinearRegressionTask):
    """x = mu_c + std * z per token: a component c uniform over ``components``, z ~ N(0, I_d).

    The component means are ``separation`` times unit vectors drawn once, at construction, from a
    generator of their own seeded with ``means_seed`` (the same means for training and evaluation,
    independent of the sampling streams). Labels follow the task contract of ``LinearRegressionTask``:
    w ~ N(0, I_d) per prompt, y = <w, x> (+ label noise). Per batch, everything is drawn from the
    generator handed to ``sample``, in this order: z, the components, w, the label noise.
    """

    def __init__(self, d: int, n: int, components: int = 2, separation: float = 2.0, std: float = 1.0,
                 means_seed: int = 0, label_noise: float = 0.0) -> None:
        super().__init__(d, n, label_noise)
        if components < 1 or separation < 0 or std <= 0 or means_seed < 0:
            raise ValueError(f"need components >= 1, separation >= 0, std > 0 and means_seed >= 0, got "
                             f"{components}, {separation}, {std}, {means_seed}")
        self.components, self.separation, self.std, self.means_seed = components, separation, std, means_seed
        directions = torch.randn(components, d, generator=torch.Generator().manual_seed(means_seed))
        self.means = separation * directions / torch.linalg.vector_norm(directions, dim=1, keepdim=True)

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """``(B, n+1, d)`` float32 covariates, each token from a random component."""
        z = self.randn(batch_size, self.n + 1, self.d, generator=generator)
        chosen = torch.randint(self.components, (batch_size, self.n + 1), generator=generator,
                               device=generator.device)
        if self.means.device != z.device:  # move once to the sampling device, then reuse
            self.means = self.means.to(z.device)
        return self.means[chosen] + self.std * z
