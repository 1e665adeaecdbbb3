"""`testbed list`: each option's declared bounds (min/max, exclusive or not, choices, list length,
null) and whether an optimizer needs a closure (issue 14, point 7)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from testbed.cli.commands import main
from testbed.options import Option

BOUNDED = """
    import torch
    from testbed import Option, hookimpl

    def make_sam(params, lr, rho, mode, betas, cap):
        return torch.optim.SGD(params, lr=lr)

    @hookimpl
    def register_optimizers(register):
        register("toy_sam", make_sam, doc="a closure optimizer", needs_closure=True, options={
            "rho": Option(0.05, "neighbourhood radius", min=0.0, min_exclusive=True, max=1.0),
            "mode": Option("fast", "which variant", choices=["fast", "slow"]),
            "betas": Option([0.9, 0.99], "moment decays", type=list, item=float, length=2, min=0.0, max=1.0),
            "cap": Option(3, "an optional cap", type=int, min=1, nullable=True),
        })
        register("toy_maybe", make_sam, doc="a closure only in one mode", needs_closure=lambda o: o["mode"] == "slow",
                 options={"rho": Option(0.05, "radius"), "mode": Option("fast", "variant"),
                          "betas": Option([0.9], "decays"), "cap": Option(1, "cap")})
"""


def block(output: str, name: str) -> str:
    """The lines `testbed list` prints for the entry ``name`` (its header and its indented lines)."""
    return re.split(r"\n(?=\S)", output.split(f"\n{name}  [plugin", 1)[1])[0]


@pytest.mark.parametrize(("option", "shown"), [
    (Option(0.0, "x", min=0.0), "float, default 0.0, >= 0.0. x"),
    (Option(1e-8, "x", min=0.0, min_exclusive=True), "float, default 1e-08, > 0.0. x"),
    (Option(5, "x", max=10), "int, default 5, <= 10. x"),
    (Option(0.5, "x", min=0.0, max=1.0), "float, default 0.5, in [0.0, 1.0]. x"),
    (Option(0.5, "x", min=0.0, min_exclusive=True, max=1.0), "float, default 0.5, in (0.0, 1.0]. x"),
    (Option([1, 2], "x", type=list, item=int, length=2, min=1), "list[int] of 2, default [1, 2], each >= 1. x"),
    (Option(2, "x", type=int, min=1, nullable=True), "int, default 2, >= 1, or null. x"),
    (Option(None, "x", type=int, min=1, nullable=True), "int, default None, >= 1. x"),
    (Option("a", "x", choices=["a", "b"]), "str, default 'a', one of a, b. x"),
    (Option(True, "x"), "bool, default True. x"),
])
def test_describe_states_every_declared_bound(option, shown):
    assert option.describe() == shown


def test_list_optimizers_shows_bounds_and_closure(plugin_module):
    plugin_module("bounded_test_plugin", BOUNDED)
    result = CliRunner().invoke(main, ["list", "optimizers"])
    assert result.exit_code == 0, result.output
    sam = block(result.stdout, "toy_sam")
    assert "    needs a closure: yes" in sam
    assert "    rho: float, default 0.05, in (0.0, 1.0]. neighbourhood radius" in sam
    assert "    mode: str, default 'fast', one of fast, slow. which variant" in sam
    assert "    betas: list[float] of 2, default [0.9, 0.99], each in [0.0, 1.0]. moment decays" in sam
    assert "    cap: int, default 3, >= 1, or null. an optional cap" in sam
    assert "    needs a closure: depends on its options" in block(result.stdout, "toy_maybe")
    sgd = block(result.stdout, "sgd")
    assert "    needs a closure: no" in sgd and "    momentum: float, default 0.0, >= 0.0." in sgd


def test_list_tasks_shows_bounds_and_no_closure_line():
    result = CliRunner().invoke(main, ["list", "tasks"])
    assert result.exit_code == 0, result.output
    gamma = block(result.stdout, "gamma")
    assert "    shape: float, default 0.1, > 0.0." in gamma
    assert "closure" not in result.stdout
