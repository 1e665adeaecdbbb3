"""The standard optimizer plugins build the torch optimizers they promise, with the given options."""

import pytest
import torch

from helpers import make_optimizer


@pytest.mark.parametrize(("name", "options", "cls", "expected"), [
    ("sgd", {"momentum": 0.9, "nesterov": True}, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", {"betas": [0.9, 0.9]}, torch.optim.Adam, {"betas": (0.9, 0.9), "eps": 1e-8, "weight_decay": 0.0}),
    ("adamw", {}, torch.optim.AdamW, {"weight_decay": 0.01, "betas": (0.9, 0.999)}),
    ("torch", {"class": "RMSprop", "kwargs": {"alpha": 0.8}}, torch.optim.RMSprop, {"alpha": 0.8}),
    ("torch", {"class": "Adam", "kwargs": {"betas": [0.5, 0.6]}}, torch.optim.Adam, {"betas": (0.5, 0.6)}),
])
def test_standard_optimizers(registry, name, options, cls, expected):
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = make_optimizer(registry, name, 0.05, options, params)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in expected.items():
        assert group[key] == value


def test_adam_matches_torch_adam_step_by_step(registry):
    """The plugin adds nothing to torch's Adam: same updates on the same gradients."""
    ours = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    reference = torch.nn.Parameter(ours.detach().clone())
    optimizer = make_optimizer(registry, "adam", 0.1, {"betas": [0.9, 0.9]}, [ours])
    torch_adam = torch.optim.Adam([reference], lr=0.1, betas=(0.9, 0.9))
    for k in range(5):
        for p, opt in ((ours, optimizer), (reference, torch_adam)):
            opt.zero_grad()
            (p.square().sum() * (k + 1)).backward()
            opt.step()
    assert torch.equal(ours, reference)
