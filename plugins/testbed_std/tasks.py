"""The standard in-context linear regression tasks (Ahn et al., ICLR 2024, section 2 of docs/paper.md).

Every task shares the label law: each prompt draws its own ``w ~ N(0, I_d)`` and labels
``y_i = <w, x_i> (+ N(0, label_noise^2))`` for its ``n`` context tokens and its query; a task only
says how its ``n+1`` covariates are drawn (and, for ``nonlinear``, which fixed features ``phi(x)``
the labels are linear in: ``y_i = <w, phi(x_i)>``). All randomness comes from the generator handed to
``sample`` (the engine owns every stream), and the tensors live on that generator's device.
"""

from __future__ import annotations

import math

import torch

from testbed import LinearRegressionTask, Option, hookimpl

# Shared by every task, declared once.
LABEL_NOISE = {
    "label_noise": Option(0.0, "Std of Gaussian noise added to every label (context and query).", min=0.0),
}


class GaussianTask(LinearRegressionTask):
    """x ~ N(0, I_d): the paper's settings 1 and 2."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.randn(batch_size, self.n + 1, self.d, generator=generator)


class SphericalTask(LinearRegressionTask):
    """x uniform on the unit sphere."""

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return self.directions(self.randn(batch_size, self.n + 1, self.d, generator=generator))


class GammaTask(LinearRegressionTask):
    """x = sqrt(G) u, u uniform on the sphere, G ~ Gamma(shape, scale) per token: the paper's setting 3."""

    def __init__(
        self, d: int, n: int, shape: float = 0.1, scale: float | None = None, label_noise: float = 0.0
    ) -> None:
        super().__init__(d, n, label_noise)
        if shape <= 0 or (scale is not None and scale <= 0):
            raise ValueError(f"shape and scale must be > 0, got shape={shape!r}, scale={scale!r}")
        self.shape = float(shape)
        # sqrt(10/k) keeps Var(G) = 10 = Var(chi^2_5) as k varies (the paper's choice).
        self.scale = math.sqrt(10.0 / shape) if scale is None else float(scale)

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        z = self.randn(batch_size, self.n + 1, self.d, generator=generator)
        g = self.scale * self.standard_gamma(self.shape, batch_size, self.n + 1, 1, generator=generator)
        return self.directions(z, g)  # sqrt(G) times z's direction


class StudentTTask(LinearRegressionTask):
    """x_j i.i.d. Student-t(df): heavy-tailed coordinates."""

    def __init__(
        self, d: int, n: int, df: float = 3.0, standardize: bool = False, label_noise: float = 0.0
    ) -> None:
        super().__init__(d, n, label_noise)
        if df <= 0:
            raise ValueError(f"df must be > 0, got {df!r}")
        if standardize and df <= 2:
            # Silently skipping would hand the user unstandardized data they asked to standardize.
            raise ValueError(f"standardize needs df > 2 (the variance is infinite otherwise), got df={df!r}")
        self.df, self.standardize = float(df), standardize

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        size = (batch_size, self.n + 1, self.d)
        z = self.randn(*size, generator=generator)
        chi2 = 2.0 * self.standard_gamma(self.df / 2.0, *size, generator=generator)  # chi^2(df) = 2 Gamma(df/2, 1)
        x = z * torch.rsqrt(chi2 / self.df)
        if self.standardize:
            x = x * math.sqrt((self.df - 2.0) / self.df)  # Var t(df) = df / (df - 2)
        return x


class AnisotropicTask(LinearRegressionTask):
    """x ~ N(0, U diag(spectrum) U^T), U a fixed random rotation: an ill-conditioned Gaussian."""

    def __init__(
        self,
        d: int,
        n: int,
        spectrum: list[float] | None = None,
        condition_number: float = 10.0,
        rotation: bool = True,
        rotation_seed: int = 0,
        label_noise: float = 0.0,
    ) -> None:
        super().__init__(d, n, label_noise)
        if spectrum is None:
            if condition_number < 1:
                raise ValueError(f"condition_number must be >= 1, got {condition_number!r}")
            # Geometric from 1 down to 1/condition_number, then scaled so E||x||^2 = d as for N(0, I).
            ev = torch.logspace(0.0, -math.log10(condition_number), d, dtype=torch.float64)
            ev = ev * (d / ev.sum())
        else:
            if len(spectrum) != d:
                raise ValueError(f"spectrum has {len(spectrum)} values, d is {d}")
            ev = torch.tensor(spectrum, dtype=torch.float64)
            if not bool((ev > 0).all()):
                raise ValueError(f"spectrum values must be > 0, got {list(spectrum)}")
        self.spectrum = ev.to(torch.float32)
        # Drawn once from its own seeded generator: the same U for train and eval, independent of the
        # sampling streams.
        u = _random_orthogonal(d, rotation_seed) if rotation else torch.eye(d, dtype=torch.float64)
        self.U = u.to(torch.float32)
        self.covariance = ((u * ev) @ u.T).to(torch.float32)  # U diag(ev) U^T
        # Row-vector covariates: x = z D U^T has covariance U D^2 U^T.
        self._transform = (ev.sqrt()[:, None] * u.T).to(torch.float32)

    def covariates(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        z = self.randn(batch_size, self.n + 1, self.d, generator=generator)
        if self._transform.device != z.device:  # move once to the sampling device, then reuse
            self._transform = self._transform.to(z.device)
        return z @ self._transform


class NonlinearTask(GaussianTask):
    """x ~ N(0, I_d), labels ``y = <w, phi(x)>`` with a fixed random ReLU teacher MLP phi: d -> hidden -> d.

    The model still sees ``x``, not ``phi(x)``. The teacher is drawn once, at construction, from its
    own generator seeded with ``teacher_seed`` (the same phi for train and eval, independent of the
    sampling streams), with ``nn.Linear``'s default law: weights and biases U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), drawn in the order W1, b1, W2, b2.
    """

    def __init__(
        self, d: int, n: int, hidden: int = 10, teacher_seed: int = 0, label_noise: float = 0.0
    ) -> None:
        super().__init__(d, n, label_noise)
        for name, value, low in (("hidden", hidden, 1), ("teacher_seed", teacher_seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.hidden, self.teacher_seed = hidden, teacher_seed
        g = torch.Generator().manual_seed(teacher_seed)

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = 1.0 / math.sqrt(fan_in)
            return (2.0 * torch.rand(shape, generator=g, dtype=torch.float32) - 1.0) * bound

        # Row-vector convention: phi(x) = relu(x W1^T + b1) W2^T + b2, with nn.Linear's weight shapes.
        self.W1, self.b1 = uniform(hidden, d, fan_in=d), uniform(hidden, fan_in=d)
        self.W2, self.b2 = uniform(d, hidden, fan_in=hidden), uniform(d, fan_in=hidden)

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher on the last axis of ``x`` (any leading shape), on ``x``'s device and dtype."""
        if self.W1.device != x.device:  # move once to the sampling device, then reuse
            teacher = (self.W1, self.b1, self.W2, self.b2)
            self.W1, self.b1, self.W2, self.b2 = (t.to(x.device) for t in teacher)
        w1, b1, w2, b2 = (t.to(x.dtype) for t in (self.W1, self.b1, self.W2, self.b2))  # no-op for float32
        # Feature-major products (features x tokens): BLAS takes the tokens as the long dimension
        # about 8x faster than as the rows of a skinny (tokens x 5) matrix (0.26 against 2.2 ms for
        # the nonlinear experiment's 42,000 tokens a step, one thread).
        tokens = x.reshape(-1, x.shape[-1]).T
        hidden = torch.addmm(b1[:, None], w1, tokens).relu_()
        return torch.addmm(b2[:, None], w2, hidden).T.reshape(*x.shape[:-1], w2.shape[0])

    features = phi

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(d={self.d}, n={self.n}, hidden={self.hidden}, "
            f"teacher_seed={self.teacher_seed}, label_noise={self.label_noise})"
        )


def _random_orthogonal(d: int, seed: int) -> torch.Tensor:
    """A Haar-distributed orthogonal matrix (float64) from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # the sign fix makes QR's Q Haar-distributed


@hookimpl
def register_tasks(register) -> None:
    register("gaussian", GaussianTask, options=LABEL_NOISE, doc="x ~ N(0, I_d) (paper settings 1, 2).")
    register("spherical", SphericalTask, options=LABEL_NOISE, doc="x uniform on the unit sphere.")
    register(
        "gamma",
        GammaTask,
        doc="Heavy-tailed x = sqrt(G) u, u uniform on the sphere, G ~ Gamma per token (paper setting 3).",
        options={
            "shape": Option(0.1, "Gamma shape k; smaller is heavier-tailed.", min=0.0, min_exclusive=True),
            "scale": Option(
                None, "Gamma scale; null means sqrt(10/shape) (Var G = 10).", type=float, nullable=True,
                min=0.0, min_exclusive=True,
            ),
            **LABEL_NOISE,
        },
    )
    register(
        "student_t",
        StudentTTask,
        doc="Coordinates of x i.i.d. Student-t(df).",
        options={
            "df": Option(3.0, "Degrees of freedom; smaller is heavier-tailed.", min=0.0, min_exclusive=True),
            "standardize": Option(False, "Rescale to unit variance (needs df > 2)."),
            **LABEL_NOISE,
        },
    )
    register(
        "anisotropic",
        AnisotropicTask,
        doc="x ~ N(0, U diag(spectrum) U^T) with a fixed random rotation U.",
        options={
            "spectrum": Option(
                None, "Covariance eigenvalues (d values > 0); null means geometric from condition_number.",
                type=list, item=float, nullable=True, min=0.0, min_exclusive=True,
            ),
            "condition_number": Option(
                10.0, "Largest/smallest eigenvalue when spectrum is null; eigenvalues sum to d.", min=1.0
            ),
            "rotation": Option(True, "Rotate the eigenbasis by a fixed random orthogonal U (else U = I)."),
            "rotation_seed": Option(0, "Seed of the generator that draws U once per task.", min=0),
            **LABEL_NOISE,
        },
    )
    register(
        "nonlinear",
        NonlinearTask,
        doc="x ~ N(0, I_d), labels <w, phi(x)> with a fixed random ReLU teacher MLP phi: d -> hidden -> d.",
        options={
            "hidden": Option(10, "Hidden width of the teacher MLP (the paper's 5-10-5 for d = 5).", min=1),
            "teacher_seed": Option(0, "Seed of the generator that draws the teacher once per task.", min=0),
            **LABEL_NOISE,
        },
    )
