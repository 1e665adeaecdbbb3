"""Attention variants (testbed/model/attention.py): each variant's fast update against the literal
layer formula Z + (1/n) P Z M W, a new variant added to the table working through the transformer
unchanged, and an unknown name as one clear error."""

from __future__ import annotations

import pytest
import torch

from testbed.errors import ConfigError
from testbed.model import kernel
from testbed.model.kernel import softmax_attention
from testbed.model.attention import ATTENTION_VARIANTS, Attention, attention_variant
from testbed.model.config import MODEL_SCHEMA, ModelConfig
from testbed.model.kernel.second_order import kernel_supports
from testbed.model.transformer import LinearTransformer, direct_forward, mse_loss
from testbed.options import validate_options
from testbed.tasks import Batch

D, N, BATCH = 3, 6, 4


class ReluAttention(Attention):
    """A toy variant for these tests: W = relu(Z^T Q Z). Only update and reference_weights are
    written; the query-label update is the base class's."""

    name = "relu"

    def update(self, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor, n: int) -> torch.Tensor:
        """P Z M W / n, M applied by dropping the query's key row of W."""
        return P @ Z[:, :, :n] @ (self.reference_weights(Z, Q)[:, :n, :] / n)

    def reference_weights(self, Z: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """relu of the scores."""
        return torch.relu(Z.transpose(1, 2) @ Q @ Z)


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Regression prompts in float64: x (B, n+1, d), y (B, n+1) with y = <w, x>."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, N + 1, D, generator=g, dtype=torch.float64)
    w = torch.randn(BATCH, D, generator=g, dtype=torch.float64)
    return x, torch.einsum("bnd,bd->bn", x, w)


def model(attention: str, parameterization: str = "full", layers: int = 3) -> LinearTransformer:
    """A float64 model with entries large enough that every layer changes the prediction."""
    config = ModelConfig(layers=layers, parameterization=parameterization, attention=attention, init_std=0.3)
    return LinearTransformer(config, D, N, torch.Generator().manual_seed(0)).double()


def literal_layer(variant: Attention, Z: torch.Tensor, P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The update (1/n) P Z M W written out with the mask matrix M."""
    M = torch.diag(torch.cat([torch.ones(N), torch.zeros(1)])).to(Z)
    return P @ Z @ M @ variant.reference_weights(Z, Q) / N


@pytest.mark.parametrize("name", sorted(ATTENTION_VARIANTS))
def test_each_variants_update_is_its_reference_formula(name):
    variant = attention_variant(name)
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(BATCH, D + 1, N + 1, generator=g, dtype=torch.float64)
    P, Q = (torch.randn(D + 1, D + 1, generator=g, dtype=torch.float64) for _ in range(2))
    expected = literal_layer(variant, Z, P, Q)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(variant.update(Z, P, Q, N), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(variant.query_label_update(Z, P, Q, N), expected[:, -1, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["block_sparse", "full"])
@pytest.mark.parametrize("name", sorted(ATTENTION_VARIANTS))
def test_each_variants_model_matches_the_direct_formula(name, parameterization):
    m = model(name, parameterization)
    assert type(m.attention) is ATTENTION_VARIANTS[name]
    x, y = data()
    with torch.no_grad():
        direct = direct_forward(m, x, y)
        assert direct.abs().max() > 0.01
        torch.testing.assert_close(m(x, y), direct, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(m.autograd_forward(x, y), direct, rtol=1e-12, atol=1e-12)


def test_linear_and_softmax_attention_have_the_kernels_hessians():
    # only linear attention has the hand-written torch stack; softmax attention trains on its own
    # compiled kernel (tests/test_softmax_kernel.py), which takes its Hessians too (tests/test_softmax_hvp.py)
    assert {name for name, variant in ATTENTION_VARIANTS.items() if variant.kernel_supported} == {"linear"}
    x, y = data()
    batch = Batch(x.float(), y.float())
    assert kernel_supports(model("softmax").float(), batch) == (softmax_attention.load() is not None)
    # A float32 linear model is covered wherever the compiled kernel builds.
    assert kernel_supports(model("linear").float(), batch) == (kernel.load() is not None)


def test_a_new_variant_in_the_table_works_through_the_transformer(monkeypatch):
    monkeypatch.setitem(ATTENTION_VARIANTS, "relu", ReluAttention)
    m = model("relu")
    assert isinstance(m.attention, ReluAttention)
    x, y = data()
    direct = direct_forward(m, x, y)
    torch.testing.assert_close(m(x, y), direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(m.autograd_forward(x, y), direct, rtol=1e-12, atol=1e-12)
    # It is the new variant that ran: linear and softmax attention predict otherwise.
    for other in ("linear", "softmax"):
        assert (model(other)(x, y) - direct).abs().max() > 1e-3
    # Gradients: the engine's loss_backward against autograd through the direct formula.
    loss = m.loss_backward(x, y, y[:, -1])
    engine = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    reference = mse_loss(direct_forward(m, x, y), y[:, -1])
    reference.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(engine, (p.grad for p in m.parameters())):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert not kernel_supports(m.float(), Batch(x.float(), y.float()))


def test_an_unknown_attention_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^unknown attention 'quadratic': expected one of linear, softmax$"):
        model("quadratic")


def test_the_config_offers_exactly_the_variants_in_the_table():
    with pytest.raises(ConfigError) as error:
        validate_options(MODEL_SCHEMA, {"attention": "quadratic"}, "model")
    assert str(error.value).startswith("model.attention:")
    assert f"one of {', '.join(ATTENTION_VARIANTS)}" in str(error.value)
