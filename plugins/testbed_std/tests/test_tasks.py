"""The standard tasks against their true laws (fixed seeds; sizes chosen so each check is many SEs wide)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from testbed import ConfigError, LinearRegressionTask
from testbed.options import validate_options
from testbed.plugins.registry import Registry
from testbed_std import tasks

D, N = 5, 20
NAMES = ["gaussian", "spherical", "gamma", "student_t", "anisotropic", "nonlinear"]
LINEAR = [name for name in NAMES if name != "nonlinear"]  # labels linear in x itself


@pytest.fixture(scope="module")
def registry() -> Registry:
    reg = Registry()
    tasks.register_tasks(reg.binder("task", "std"))
    return reg


def make(registry: Registry, name: str, d: int = D, n: int = N, **options) -> LinearRegressionTask:
    """Build a task the way the host does: validated options, then factory(d=, n=, **options)."""
    entry = registry.entries["task"][name]
    return entry.factory(d=d, n=n, **validate_options(entry.options, options, f"task.{name}"))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sq_norms(task, tokens: int, seed: int = 0) -> np.ndarray:
    """||x||^2 of about ``tokens`` tokens (context and query alike), as float64."""
    batch = task.sample(math.ceil(tokens / (task.n + 1)), gen(seed))
    return batch.x.double().pow(2).sum(-1).flatten().numpy()


# --- registration, shapes, determinism -------------------------------------------------------------


def test_registers_all_tasks_with_docs(registry):
    assert sorted(registry.entries["task"]) == sorted(NAMES)
    for entry in registry.entries["task"].values():
        assert entry.doc and "\n" not in entry.doc
        assert "label_noise" in entry.options
        assert all(option.doc for option in entry.options.values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d,n", [(5, 20), (1, 1), (3, 7)])
def test_shapes_and_dtypes(registry, name, d, n):
    task = make(registry, name, d=d, n=n, label_noise=0.1)
    assert isinstance(task, LinearRegressionTask) and (task.d, task.n) == (d, n)
    batch = task.sample(4, gen())
    assert batch.x.shape == (4, n + 1, d) and batch.y.shape == (4, n + 1)
    assert batch.x.dtype == batch.y.dtype == torch.float32
    assert torch.isfinite(batch.x).all() and torch.isfinite(batch.y).all()
    assert torch.equal(batch.target, batch.y[:, -1])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_leaves_global_rng_alone(registry, name):
    task = make(registry, name, label_noise=0.5)
    a, b = task.sample(8, gen(7)), task.sample(8, gen(7))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = task.sample(8, gen(8))
    assert not torch.equal(a.x, c.x)

    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    task.sample(8, gen(7))
    assert torch.equal(torch.rand(1), expected)


# --- labels ---------------------------------------------------------------------------------------


def fit(batch):
    """Per-prompt least squares of y on x over all n+1 tokens: (w_hat (B, d), residuals (B, n+1))."""
    x, y = batch.x.double(), batch.y.double().unsqueeze(-1)
    w = torch.linalg.lstsq(x, y).solution
    return w.squeeze(-1), (y - x @ w).squeeze(-1)


def test_each_prompt_draws_its_own_w_and_x(registry):
    batch = make(registry, "gaussian").sample(2, gen())
    assert not torch.equal(batch.x[0], batch.x[1])
    w, _ = fit(batch)
    assert not torch.allclose(w[0], w[1])


@pytest.mark.parametrize("name", LINEAR)
def test_noiseless_labels_are_exactly_linear(registry, name):
    batch = make(registry, name).sample(200, gen())
    w, res = fit(batch)
    # float32 labels: the residual is float32 round-off of <w, x>, relative to |x| |w|.
    scale = batch.x.double().norm(dim=(1, 2)) * w.norm(dim=-1)
    assert (res.norm(dim=-1) <= 1e-5 * scale + 1e-30).all()


def test_w_is_standard_normal(registry):
    w, _ = fit(make(registry, "gaussian").sample(4000, gen()))
    assert w.mean(0).abs().max() < 5 / math.sqrt(4000)
    assert torch.allclose(torch.cov(w.T), torch.eye(D, dtype=w.dtype), atol=0.1)


@pytest.mark.parametrize("name", ["gaussian", "anisotropic"])
def test_label_noise_std(registry, name):
    s = 0.3
    _, res = fit(make(registry, name, label_noise=s).sample(4000, gen()))
    # Least-squares residuals of Gaussian noise have n+1-d degrees of freedom per prompt.
    s_hat = math.sqrt(res.pow(2).sum().item() / (res.shape[0] * (N + 1 - D)))
    assert s_hat == pytest.approx(s, rel=0.02)


# --- covariate laws ---------------------------------------------------------------------------------


def test_gaussian_norm_is_chi2(registry):
    norms = sq_norms(make(registry, "gaussian"), 20_000)
    assert scipy.stats.kstest(norms, scipy.stats.chi2(D).cdf).pvalue > 0.01


def test_spherical_norm_is_one(registry):
    x = make(registry, "spherical").sample(500, gen()).x
    assert torch.allclose(x.norm(dim=-1), torch.ones(()), atol=1e-5)


def test_spherical_is_isotropic(registry):
    x = make(registry, "spherical").sample(10_000, gen()).x.reshape(-1, D).double()
    assert torch.allclose(torch.cov(x.T), torch.eye(D, dtype=x.dtype) / D, atol=0.005)


def test_gamma_shape_2_5_scale_2_is_chi2_5(registry):
    norms = sq_norms(make(registry, "gamma", shape=2.5, scale=2.0), 20_000)
    assert scipy.stats.kstest(norms, scipy.stats.chi2(5).cdf).pvalue > 0.01


def test_gamma_default_moments(registry):
    task = make(registry, "gamma")
    assert (task.shape, task.scale) == (0.1, 10.0)
    g = sq_norms(task, 1_000_000)
    # ||x||^2 = G ~ Gamma(0.1, 10): mean 1, variance 10, excess kurtosis 6/k = 60.
    mean_se = math.sqrt(10 / g.size)
    var_se = math.sqrt((63 - 1) * 10**2 / g.size)  # Var(s^2) ~ (mu4 - sigma^4) / N
    assert abs(g.mean() - 1.0) < 5 * mean_se
    assert abs(g.var() - 10.0) < 5 * var_se
    assert scipy.stats.kstest(g[:20_000], scipy.stats.gamma(0.1, scale=10).cdf).pvalue > 0.01


def test_gamma_direction_is_uniform(registry):
    # in float64: a token whose G is subnormal in float32 (shape 0.1: a few in 10^5) has coordinates
    # whose squares underflow float32
    x = make(registry, "gamma").sample(1000, gen()).x.double()
    u = x / x.norm(dim=-1, keepdim=True)
    assert torch.allclose(u.norm(dim=-1), torch.ones((), dtype=u.dtype), atol=1e-5)
    cov = torch.cov(u.reshape(-1, D).T.double())
    assert torch.allclose(cov, torch.eye(D, dtype=cov.dtype) / D, atol=0.01)


def test_student_t_coordinates(registry):
    x = make(registry, "student_t", df=3.0).sample(1000, gen()).x
    assert scipy.stats.kstest(x[..., 0].flatten().double().numpy(), scipy.stats.t(3.0).cdf).pvalue > 0.01
    assert scipy.stats.kstest(x[..., 3].flatten().double().numpy(), scipy.stats.t(3.0).cdf).pvalue > 0.01


def test_student_t_standardized_has_unit_variance(registry):
    x = make(registry, "student_t", df=5.0, standardize=True).sample(10_000, gen()).x.double()
    assert x.var().item() == pytest.approx(1.0, abs=0.03)  # ~10 SE at 1e6 coordinates
    plain = make(registry, "student_t", df=5.0).sample(10_000, gen()).x.double()
    assert plain.var().item() == pytest.approx(5 / 3, rel=0.03)


def test_student_t_standardize_needs_finite_variance(registry):
    with pytest.raises(ValueError, match="df > 2"):
        make(registry, "student_t", df=2.0, standardize=True)


def empirical_cov(task, batches: int = 10_000) -> torch.Tensor:
    x = task.sample(batches, gen()).x.reshape(-1, task.d).double()
    return x.T @ x / x.shape[0]  # mean zero is known


def test_anisotropic_covariance_from_spectrum(registry):
    spectrum = [4.0, 2.0, 1.0, 0.5, 0.25]
    task = make(registry, "anisotropic", spectrum=spectrum, rotation_seed=3)
    u = task.U.double()
    assert torch.allclose(u.T @ u, torch.eye(D, dtype=u.dtype), atol=1e-6)
    expected = u @ torch.diag(torch.tensor(spectrum, dtype=u.dtype)) @ u.T
    assert torch.allclose(task.covariance.double(), expected, atol=1e-5)
    assert (expected - torch.diag(torch.diagonal(expected))).abs().max() > 0.1  # really rotated
    assert torch.allclose(empirical_cov(task), expected, atol=0.05)  # SE <= 4/sqrt(2e5) ~ 0.01


def test_anisotropic_default_condition_number(registry):
    task = make(registry, "anisotropic")
    assert task.spectrum.sum().item() == pytest.approx(D, rel=1e-6)
    assert (task.spectrum.max() / task.spectrum.min()).item() == pytest.approx(10.0, rel=1e-5)
    ev = torch.linalg.eigvalsh(empirical_cov(task))
    assert (ev[-1] / ev[0]).item() == pytest.approx(10.0, rel=0.05)
    ev = torch.linalg.eigvalsh(empirical_cov(make(registry, "anisotropic", condition_number=100.0)))
    assert (ev[-1] / ev[0]).item() == pytest.approx(100.0, rel=0.05)


def test_anisotropic_rotation_is_fixed_by_seed(registry):
    a, b = make(registry, "anisotropic", rotation_seed=1), make(registry, "anisotropic", rotation_seed=1)
    assert torch.equal(a.U, b.U)
    assert not torch.allclose(a.U, make(registry, "anisotropic", rotation_seed=2).U)
    # Sampling does not move U: a task is the same for train and eval.
    a.sample(10, gen())
    assert torch.equal(a.U, b.U)


def test_anisotropic_without_rotation_is_diagonal(registry):
    spectrum = [3.0, 1.0, 0.5, 0.3, 0.2]
    task = make(registry, "anisotropic", spectrum=spectrum, rotation=False)
    assert torch.equal(task.U, torch.eye(D))
    expected = torch.diag(torch.tensor(spectrum, dtype=torch.float64))
    assert torch.allclose(empirical_cov(task), expected, atol=0.04)


# --- nonlinear teacher -----------------------------------------------------------------------------


def test_nonlinear_teacher_is_fixed_by_seed(registry):
    a, b = make(registry, "nonlinear", teacher_seed=3), make(registry, "nonlinear", teacher_seed=3)
    ya, yb = a.sample(16, gen(5)).y, b.sample(16, gen(5)).y
    assert torch.equal(ya, yb)  # same seed, same generator state: identical labels
    c = make(registry, "nonlinear", teacher_seed=4)
    assert not torch.equal(a.W1, c.W1)
    assert not torch.allclose(c.sample(16, gen(5)).y, ya)  # same x and w, another teacher
    # The teacher draws nothing from the sampling stream.
    assert torch.equal(c.sample(16, gen(5)).x, a.sample(16, gen(5)).x)
    # Sampling does not move the teacher: the same phi for train and eval.
    w1 = a.W1.clone()
    a.sample(10, gen())
    assert torch.equal(a.W1, w1)


def test_nonlinear_teacher_uses_nn_linear_init_law(registry):
    task = make(registry, "nonlinear", hidden=400, teacher_seed=1)
    assert task.W1.shape == (400, D) and task.b1.shape == (400,)
    assert task.W2.shape == (D, 400) and task.b2.shape == (D,)
    for t, fan_in in ((task.W1, D), (task.b1, D), (task.W2, 400), (task.b2, 400)):
        bound = 1 / math.sqrt(fan_in)
        assert t.dtype == torch.float32 and t.abs().max().item() <= bound
    # 2000 weights of W1 (and of W2) against U(-bound, bound).
    for t, fan_in in ((task.W1, D), (task.W2, 400)):
        bound = 1 / math.sqrt(fan_in)
        law = scipy.stats.uniform(-bound, 2 * bound)
        assert scipy.stats.kstest(t.flatten().double().numpy(), law.cdf).pvalue > 0.01


def test_nonlinear_phi_is_a_relu_mlp(registry):
    task = make(registry, "nonlinear", hidden=7, teacher_seed=2)
    layer1, layer2 = torch.nn.Linear(D, 7), torch.nn.Linear(7, D)
    with torch.no_grad():
        layer1.weight.copy_(task.W1), layer1.bias.copy_(task.b1)
        layer2.weight.copy_(task.W2), layer2.bias.copy_(task.b2)
    x = torch.randn(3, 4, D, generator=gen())
    with torch.no_grad():
        assert torch.allclose(task.phi(x), layer2(torch.relu(layer1(x))), atol=1e-6)


def fit_on(features: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt least squares of y on the given features: (coefficients (B, d), residuals (B, n+1))."""
    f, y = features.double(), y.double().unsqueeze(-1)
    w = torch.linalg.lstsq(f, y).solution
    return w.squeeze(-1), (y - f @ w).squeeze(-1)


def test_nonlinear_labels_are_linear_in_phi_not_in_x(registry):
    task = make(registry, "nonlinear")
    assert (task.hidden, task.teacher_seed) == (10, 0)
    batch = task.sample(500, gen())
    feats = task.phi(batch.x)
    w, res = fit_on(feats, batch.y)
    scale = feats.double().norm(dim=(1, 2)) * w.norm(dim=-1)
    assert (res.norm(dim=-1) <= 1e-5 * scale).all()  # exactly <w, phi(x)> up to float32 round-off
    # The recovered w is the prompt's own N(0, I) draw: recompute it from the same stream.
    g = gen()
    x = task.covariates(500, g)
    w_true = task.randn(500, D, 1, generator=g).squeeze(-1)
    assert torch.equal(x, batch.x)
    assert torch.allclose(w.float(), w_true, atol=1e-3)
    # Not linear in x: the least-squares fit on x leaves a clearly non-zero residual in every prompt.
    _, res_x = fit_on(batch.x, batch.y)
    rel = res_x.norm(dim=-1) / batch.y.double().norm(dim=-1)
    assert rel.median().item() > 0.3 and (rel > 0.05).all()  # measured: median 0.68, min 0.20


def test_nonlinear_label_noise(registry):
    s = 0.3
    task = make(registry, "nonlinear", label_noise=s)
    batch = task.sample(4000, gen())
    _, res = fit_on(task.phi(batch.x), batch.y)
    s_hat = math.sqrt(res.pow(2).sum().item() / (res.shape[0] * (N + 1 - D)))
    assert s_hat == pytest.approx(s, rel=0.02)


def test_nonlinear_option_validation(registry):
    options = registry.entries["task"]["nonlinear"].options
    assert validate_options(options, None, "task") == {"hidden": 10, "teacher_seed": 0, "label_noise": 0.0}
    assert validate_options(options, {"hidden": 30.0}, "task")["hidden"] == 30
    for bad in ({"hidden": 0}, {"hidden": 2.5}, {"hidden": True}, {"teacher_seed": -1}, {"teacher_seed": "a"},
                {"label_noise": -0.1}, {"hiden": 5}):
        with pytest.raises(ConfigError):
            validate_options(options, bad, "task")
    for bad in ({"hidden": 0}, {"hidden": 2.0}, {"teacher_seed": -1}):
        with pytest.raises(ValueError, match="must be an integer"):
            tasks.NonlinearTask(D, N, **bad)


# --- validation ----------------------------------------------------------------------------------


def test_option_validation(registry):
    gamma = registry.entries["task"]["gamma"].options
    assert validate_options(gamma, None, "task") == {"shape": 0.1, "scale": None, "label_noise": 0.0}
    assert validate_options(gamma, {"shape": 2, "scale": "2"}, "task")["shape"] == 2.0
    for bad in ({"shape": -1}, {"shape": 0}, {"scale": 0.0}, {"label_noise": -0.1}, {"shpe": 1.0}):
        with pytest.raises(ConfigError):
            validate_options(gamma, bad, "task")
    aniso = registry.entries["task"]["anisotropic"].options
    assert validate_options(aniso, {"spectrum": [1, 2]}, "task")["spectrum"] == [1.0, 2.0]
    for bad in (
        {"spectrum": [1.0, -2.0]}, {"condition_number": 0.5}, {"rotation": "yes"}, {"rotation_seed": -1}
    ):
        with pytest.raises(ConfigError):
            validate_options(aniso, bad, "task")
    with pytest.raises(ConfigError):
        validate_options(registry.entries["task"]["student_t"].options, {"df": 0}, "task")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d,n", [(0, 20), (5, 0), (5.0, 20), (True, 20)])
def test_bad_dimensions_raise(registry, name, d, n):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        make(registry, name, d=d, n=n)


def test_spectrum_length_must_match_d(registry):
    with pytest.raises(ValueError, match="spectrum has 3 values, d is 5"):
        make(registry, "anisotropic", spectrum=[1.0, 2.0, 3.0])
