"""The linear Transformer (docs/paper.md section 1) against literal transcriptions of the paper's formulas.

Three computations of the same prediction must agree: the engine path ``model(x, y)`` (associative
form with the hand-written backward of ``linear_attention`` for linear attention), the plain-autograd
path ``model.autograd_forward`` and ``direct_forward`` (explicit (n+1)x(n+1) score matrix and mask M).
Everything runs in float64 so that agreement can be demanded to ~1e-12.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch

from testbed.model.config import FeatureMapConfig, ModelConfig
from testbed.model.transformer import LinearTransformer, direct_forward, mse_loss

D, N, BATCH = 3, 6, 4
FM = FeatureMapConfig(hidden=(7,))

VARIANTS = list(
    itertools.product(("block_sparse", "full"), ("linear", "softmax"), (None, FM), (1, 2, 3))
)


def variant_id(v) -> str:
    par, att, fm, layers = v
    return f"{par}-{att}-{'fm' if fm else 'nofm'}-L{layers}"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(
    parameterization="block_sparse",
    attention="linear",
    feature_map=None,
    layers=3,
    init_std=0.3,
    d=D,
    n=N,
    seed=0,
) -> LinearTransformer:
    config = ModelConfig(
        layers=layers,
        parameterization=parameterization,
        attention=attention,
        init_std=init_std,
        feature_map=feature_map,
    )
    return LinearTransformer(config, d=d, n=n, generator=gen(seed)).double()


def make_data(batch=BATCH, d=D, n=N, seed=1):
    """Gaussian regression prompts in float64: x (B, n+1, d), y (B, n+1) with y = <w, x>."""
    g = gen(seed)
    x = torch.randn(batch, n + 1, d, generator=g, dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", x, w)
    return x, y


def params(model):
    return [p for p in model.parameters() if p.requires_grad]


def layer_states(model: LinearTransformer, x, y) -> list[torch.Tensor]:
    """Z_0, ..., Z_L by the paper's layer formula applied literally:
    Z <- Z + (1/n) P Z M Z^T Q Z (linear attention only)."""
    Z = model.prompt(x, y)
    P, Q = model.attention_matrices()
    n = model.n
    M = torch.diag(torch.cat([torch.ones(n), torch.zeros(1)])).to(Z.dtype)
    states = [Z]
    for layer in range(model.config.layers):
        Z = Z + (P[layer] @ Z @ M @ Z.transpose(1, 2) @ Q[layer] @ Z) / n
        states.append(Z)
    return states


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|; 0 when both are exactly zero, inf when only b is."""
    a, b = a.detach(), b.detach()
    scale = b.abs().max()
    if scale == 0:
        return 0.0 if torch.equal(a, torch.zeros_like(a)) else float("inf")
    return float((a - b).abs().max() / scale)


# --------------------------------------------------------------------------------------------------
# 1. Forward: engine == autograd_forward == direct_forward, every variant.


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_forward_paths_agree(variant):
    par, att, fm, layers = variant
    model = make_model(par, att, fm, layers)
    x, y = make_data()
    with torch.no_grad():
        engine = model(x, y)
        auto = model.autograd_forward(x, y)
        direct = direct_forward(model, x, y)
    assert engine.shape == (BATCH,) and engine.dtype == torch.float64
    # The model is far from trivial: predictions are O(0.01-1), not ~0 (rounding level).
    assert direct.abs().max() > 0.01
    torch.testing.assert_close(engine, direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(auto, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("attention", ["linear", "softmax"])
def test_every_layer_matters(parameterization, attention):
    """With init_std 0.3 dropping the last layer changes the prediction substantially, so the
    multi-layer comparisons above exercise the whole stack."""
    x, y = make_data()
    deep = make_model(parameterization, attention, None, 3)
    shallow = make_model(parameterization, attention, None, 2)
    with torch.no_grad():
        shallow_params = dict(shallow.named_parameters())
        for name, p in deep.named_parameters():
            shallow_params[name].copy_(p[:2])
        a, b = deep(x, y), shallow(x, y)
    assert (a - b).abs().max() > 1e-2 * a.abs().max()


# --------------------------------------------------------------------------------------------------
# 2. Gradients: hand-written backward (engine path) == autograd through direct_forward.


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_gradients_agree(variant):
    par, att, fm, layers = variant
    model = make_model(par, att, fm, layers)
    x0, y0 = make_data()
    names = [name for name, p in model.named_parameters() if p.requires_grad]

    def grads(forward):
        x = x0.clone().requires_grad_(True)
        y = y0.clone().requires_grad_(True)
        loss = mse_loss(forward(x, y), y0[:, -1])
        return torch.autograd.grad(loss, [*params(model), x, y])

    engine = grads(model)
    reference = grads(lambda x, y: direct_forward(model, x, y))
    auto = grads(model.autograd_forward)
    assert len(engine) == len(names) + 2
    for name, ge, gr, ga in zip([*names, "x", "y"], engine, reference, auto):
        assert ge.shape == gr.shape
        if name == "B":
            # Last layer's B: structurally zero on every path (see also test_last_B_gradient_is_zero).
            for g_ in (ge, gr, ga):
                assert torch.equal(g_[-1], torch.zeros_like(g_[-1]))
            if layers == 1:
                continue
            ge, gr, ga = ge[:-1], gr[:-1], ga[:-1]
        if name == "y":
            # The query label is hidden: its gradient is exactly zero on every path.
            assert torch.equal(ge[:, -1], torch.zeros_like(ge[:, -1]))
            assert torch.equal(gr[:, -1], torch.zeros_like(gr[:, -1]))
            ge, gr, ga = ge[:, :-1], gr[:, :-1], ga[:, :-1]
        assert gr.abs().max() > 0, name
        assert max_rel_err(ge, gr) < 1e-10, name
        assert max_rel_err(ga, gr) < 1e-10, name


def test_gradients_agree_check_is_sensitive():
    """The tolerance above would catch a small error: perturbing one parameter entry by 1e-6 moves
    the gradient far more than 1e-10 relative."""
    model = make_model("block_sparse", "linear", None, 3)
    x, y = make_data()
    g1 = torch.autograd.grad(mse_loss(model(x, y), y[:, -1]), model.A)[0]
    with torch.no_grad():
        model.A[1, 0, 0] += 1e-6
    g2 = torch.autograd.grad(mse_loss(model(x, y), y[:, -1]), model.A)[0]
    assert max_rel_err(g2, g1) > 1e-9


@pytest.mark.parametrize("variant", list(itertools.product(("block_sparse", "full"), ("linear",), (None, FM), (1, 3))), ids=variant_id)
def test_float32_engine_path(variant):
    """The float32 engine path (whatever kernel it dispatches to) against the float64 reference."""
    par, att, fm, layers = variant
    model32 = make_model(par, att, fm, layers).float()
    model64 = copy.deepcopy(model32).double()
    x, y = make_data(batch=64)
    x32 = x.float().requires_grad_(True)
    x64 = x32.detach().double().requires_grad_(True)
    pred32 = model32(x32, y.float())
    pred64 = direct_forward(model64, x64, y)
    assert pred32.dtype == torch.float32
    assert max_rel_err(pred32.double(), pred64.detach()) < 1e-5
    g32 = torch.autograd.grad(mse_loss(pred32, y.float()[:, -1]), [*params(model32), x32])
    g64 = torch.autograd.grad(mse_loss(pred64, y[:, -1]), [*params(model64), x64])
    for (name, _), a, b in zip([*model64.named_parameters(), ("x", None)], g32, g64):
        assert a.shape == b.shape, name
        assert max_rel_err(a.double(), b) < 1e-4, name
    if par == "block_sparse":
        assert torch.equal(g32[1][-1], torch.zeros_like(g32[1][-1]))


# --------------------------------------------------------------------------------------------------
# 3. Parameter count.


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
@pytest.mark.parametrize("d", [2, 5])
def test_parameter_count(layers, d):
    block = make_model("block_sparse", layers=layers, d=d)
    full = make_model("full", layers=layers, d=d)
    assert sum(p.numel() for p in params(block)) == 2 * layers * d * d
    assert sum(p.numel() for p in params(full)) == 2 * layers * (d + 1) ** 2
    assert {name for name, _ in block.named_parameters()} == {"A", "B"}
    assert {name for name, _ in full.named_parameters()} == {"P", "Q"}


def test_paper_parameter_count_is_150():
    model = make_model("block_sparse", layers=3, d=5)
    assert sum(p.numel() for p in params(model)) == 150
    assert sum(p.numel() for p in params(make_model("full", layers=3, d=5))) == 216


# --------------------------------------------------------------------------------------------------
# 4. B of the last layer has an exactly-zero (not missing) gradient.


@pytest.mark.parametrize("attention", ["linear", "softmax"])
@pytest.mark.parametrize("path", ["engine", "autograd", "direct"])
def test_last_B_gradient_is_zero(attention, path):
    model = make_model("block_sparse", attention, None, 3)
    x, y = make_data()
    forward = {
        "engine": model,
        "autograd": model.autograd_forward,
        "direct": lambda x, y: direct_forward(model, x, y),
    }[path]
    mse_loss(forward(x, y), y[:, -1]).backward()
    grad = model.B.grad
    assert grad is not None
    assert torch.equal(grad[-1], torch.zeros_like(grad[-1]))
    # The other layers' B do matter.
    assert (grad[:-1].abs().amax(dim=(1, 2)) > 1e-6).all()
    assert model.A.grad is not None and model.A.grad.abs().max() > 1e-6


# --------------------------------------------------------------------------------------------------
# 5. The query never acts as key or value; its label is hidden.


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("feature_map", [None, FM], ids=["nofm", "fm"])
def test_query_is_never_key_or_value(parameterization, feature_map):
    model = make_model(parameterization, "linear", feature_map, 3)
    x, y = make_data()
    x2 = x.clone()
    x2[:, -1] += torch.randn(x.shape[0], x.shape[2], generator=gen(7), dtype=x.dtype)
    with torch.no_grad():
        states, states2 = layer_states(model, x, y), layer_states(model, x2, y)
        # The helper is the paper's formula: it reproduces the model's prediction.
        torch.testing.assert_close(-states[-1][:, -1, -1], model(x, y), rtol=1e-12, atol=1e-12)
        for Z, Z2 in zip(states, states2):
            assert torch.equal(Z[:, :, : model.n], Z2[:, :, : model.n])
            assert (Z[:, :, -1] - Z2[:, :, -1]).abs().max() > 1e-3
        assert (model(x, y) - model(x2, y)).abs().min() > 1e-6


def test_softmax_query_key_enters_the_normalization():
    """Contrast with the linear case: under softmax the query key is in the softmax denominator
    (mask after softmax), so context columns of later layers do depend on x_q."""
    model = make_model("full", "softmax", None, 2)
    x, y = make_data()
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        P, Q = model.attention_matrices()
        n = model.n
        M = torch.diag(torch.cat([torch.ones(n), torch.zeros(1)])).double()
        outs = []
        for xx in (x, x2):
            Z = model.prompt(xx, y)
            scores = torch.softmax(Z.transpose(1, 2) @ Q[0] @ Z, dim=1)
            outs.append((Z + P[0] @ Z @ M @ scores / n)[:, :, :n])
    assert (outs[0] - outs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", [(*v, 3) for v in itertools.product(("block_sparse", "full"), ("linear", "softmax"), (None, FM))], ids=variant_id)
def test_hidden_query_label_is_ignored(variant):
    par, att, fm, _ = variant
    model = make_model(par, att, fm, 3)
    x, y = make_data()
    y2 = y.clone()
    y2[:, -1] = torch.randn(y.shape[0], generator=gen(3), dtype=y.dtype) * 10
    x2 = x.clone()
    x2[:, -1] *= -2.0
    with torch.no_grad():
        a = model(x, y)
        assert torch.equal(a, model(x, y2))
        assert torch.equal(direct_forward(model, x, y), direct_forward(model, x, y2))
        assert torch.equal(model.prompt(x, y), model.prompt(x, y2))
        assert (model.prompt(x, y)[:, -1, -1] == 0).all()
        assert (a - model(x2, y)).abs().min() > 1e-6


# --------------------------------------------------------------------------------------------------
# 6. B = 0, A_l = -eta_l I: layer l is one step of gradient descent on the in-context least squares.


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_gradient_descent_identity(layers):
    d, n, batch = 4, 10, 6
    etas = [0.1, 0.3, 0.2, 0.05][:layers]
    model = make_model("block_sparse", "linear", None, layers, d=d, n=n)
    with torch.no_grad():
        model.A.copy_(-torch.tensor(etas, dtype=torch.float64).view(-1, 1, 1) * torch.eye(d, dtype=torch.float64))
        model.B.zero_()
    g = gen(11)
    x = torch.randn(batch, n + 1, d, generator=g, dtype=torch.float64)
    w_star = torch.randn(batch, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", x, w_star)

    xc, yc, xq = x[:, :n], y[:, :n], x[:, -1]
    w = torch.zeros(batch, d, dtype=torch.float64)
    ws = [w]
    for eta in etas:
        residual = torch.einsum("bnd,bd->bn", xc, w) - yc
        grad_R = torch.einsum("bn,bnd->bd", residual, xc) / n  # grad of (1/2n) sum (<w,x_i> - y_i)^2
        w = w - eta * grad_R
        ws.append(w)
    gd_prediction = (xq * w).sum(-1)

    with torch.no_grad():
        assert gd_prediction.abs().max() > 0.1
        torch.testing.assert_close(model(x, y), gd_prediction, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.autograd_forward(x, y), gd_prediction, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(direct_forward(model, x, y), gd_prediction, rtol=1e-12, atol=1e-12)
        # Every intermediate layer: -[Z_l]_{d+1,n+1} = <x_q, w_l>; context labels hold the residuals.
        for Z, w_l in zip(layer_states(model, x, y), ws):
            torch.testing.assert_close(-Z[:, -1, -1], (xq * w_l).sum(-1), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(
                Z[:, -1, :n], yc - torch.einsum("bnd,bd->bn", xc, w_l), rtol=1e-12, atol=1e-12
            )
            torch.testing.assert_close(Z[:, :d], x.transpose(1, 2), rtol=0, atol=0)
    # The steps are distinct (different eta per layer), so a sign or ordering slip would show.
    if layers > 1:
        assert (ws[-1] - ws[-2]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# 7. Initialization.


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_init_std(parameterization):
    model = LinearTransformer(
        ModelConfig(layers=8, parameterization=parameterization, init_std=0.05), d=20, n=60, generator=gen(0)
    )
    for p in (p.detach() for p in params(model)):
        assert p.dtype == torch.float32
        assert abs(float(p.std()) / 0.05 - 1) < 0.05
        assert abs(float(p.mean())) < 0.05 * 4 / p.numel() ** 0.5
    values = torch.cat([p.detach().flatten() for p in params(model)])
    assert abs(float(values.std()) / 0.05 - 1) < 0.05


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("feature_map", [None, FM], ids=["nofm", "fm"])
def test_init_is_seeded(parameterization, feature_map):
    def build(seed):
        config = ModelConfig(layers=3, parameterization=parameterization, feature_map=feature_map)
        return LinearTransformer(config, d=5, n=20, generator=gen(seed))

    a, b, c = build(0), build(0), build(1)
    pa, pb, pc = dict(a.named_parameters()), dict(b.named_parameters()), dict(c.named_parameters())
    assert pa.keys() == pb.keys() == pc.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
        assert not torch.equal(pa[name], pc[name]), name


def test_initial_loss_is_about_E_norm_x_squared():
    d, n, batch = 5, 20, 20000
    model = make_model("block_sparse", "linear", None, 3, init_std=0.05, d=d, n=n, seed=0)
    g = gen(2024)
    x = torch.randn(batch, n + 1, d, generator=g, dtype=torch.float64)
    w = torch.randn(batch, d, generator=g, dtype=torch.float64)
    y = torch.einsum("bnd,bd->bn", x, w)
    with torch.no_grad():
        prediction = model(x, y)
        loss = float(mse_loss(prediction, y[:, -1]))
    # ~0 at init relative to E[y_q^2] = 5 (each layer adds about (0.05 ||w|| ||x_q||)^2 ~ 0.06).
    assert float(prediction.square().mean()) < 0.5
    assert abs(loss / 5.0 - 1) < 0.10


# --------------------------------------------------------------------------------------------------
# 8. Longer prompts (the linear-in-n path).


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_long_prompt_n80(parameterization):
    n = 80
    model = make_model(parameterization, "linear", None, 3, init_std=0.2, d=5, n=n)
    x, y = make_data(batch=3, d=5, n=n)
    engine = model(x, y)
    direct = direct_forward(model, x, y)
    assert direct.abs().max() > 0.05
    torch.testing.assert_close(engine, direct, rtol=1e-12, atol=1e-12)
    ge = torch.autograd.grad(mse_loss(engine, y[:, -1]), params(model))
    gr = torch.autograd.grad(mse_loss(direct, y[:, -1]), params(model))
    for a, b in zip(ge, gr):
        assert max_rel_err(a, b) < 1e-10


# --------------------------------------------------------------------------------------------------
# 9. Softmax attention by hand: softmax over all n+1 keys (query key included), then the query key
#    dropped.


def hand_softmax_layers(Z: np.ndarray, Ps, Qs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Explicit loops. Returns (Z after all layers, Z after the first layer)."""
    history = []
    for P, Q in zip(Ps, Qs):
        cols = Z.shape[1]
        new = Z.copy()
        for j in range(cols):  # query
            scores = np.array([Z[:, i] @ Q @ Z[:, j] for i in range(cols)])  # all keys incl. query
            weights = np.exp(scores) / np.exp(scores).sum()
            update = np.zeros(Z.shape[0])
            for i in range(n):  # values: context only (query key dropped after the softmax)
                update += weights[i] * (P @ Z[:, i])
            new[:, j] = Z[:, j] + update / n
        Z = new
        history.append(Z)
    return Z, history[0]


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
def test_softmax_by_hand(parameterization):
    d, n = 2, 3
    model = make_model(parameterization, "softmax", None, 2, init_std=0.5, d=d, n=n, seed=5)
    x, y = make_data(batch=1, d=d, n=n, seed=6)
    with torch.no_grad():
        P, Q = (t.numpy() for t in model.attention_matrices())
        Z0 = model.prompt(x, y)[0].numpy()
        Z_final, Z_first = hand_softmax_layers(Z0, P, Q, n)
        expected = -Z_final[-1, -1]
        for path in (model(x, y), model.autograd_forward(x, y), direct_forward(model, x, y)):
            assert abs(float(path[0]) - expected) < 1e-12

        # One layer by hand against the model's single-layer prediction.
        one = make_model(parameterization, "softmax", None, 1, init_std=0.5, d=d, n=n, seed=5)
        for name, p in one.named_parameters():
            p.copy_(dict(model.named_parameters())[name][:1])
        assert abs(float(one(x, y)[0]) + Z_first[-1, -1]) < 1e-12

        # The alternative (softmax over the n context keys only) gives a clearly different answer,
        # so the check above distinguishes "mask after softmax" from "mask before softmax".
        Zt = torch.from_numpy(Z0)
        scores = Zt.T @ torch.from_numpy(Q[0]) @ Zt
        mask_first = torch.softmax(scores[:n], dim=0)
        alt = Zt + torch.from_numpy(P[0]) @ Zt[:, :n] @ mask_first / n
        assert abs(float(alt[-1, -1]) - Z_first[-1, -1]) > 1e-4
