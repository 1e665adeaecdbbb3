"""The model's configuration and its schema: the schema holds every default, the dataclasses take
theirs from it (one source)."""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed.model.attention import ATTENTION_VARIANTS
from testbed.options import Option

PARAMETERIZATIONS = ("block_sparse", "full")
ATTENTIONS = tuple(ATTENTION_VARIANTS)
MAX_LAYERS = 1_000

MODEL_SCHEMA = {
    "layers": Option(3, "number of attention layers L", min=1, max=MAX_LAYERS),
    "parameterization": Option("block_sparse", "block_sparse (paper) or full P and Q", choices=PARAMETERIZATIONS),
    "attention": Option("linear", "the attention variant (linear is the paper's)", choices=ATTENTIONS),
    "init_std": Option(0.05, "std of the i.i.d. normal init of every trainable entry", min=0.0),
    "feature_map": Option(None, "MLP on x before attention: {hidden: [30], out_dim: null}", type=dict, nullable=True),
}
FEATURE_MAP_SCHEMA = {
    "hidden": Option([30], "hidden layer widths (ReLU)", type=list, item=int, min=1),
    "out_dim": Option(None, "output width (default: the task's d)", type=int, min=1, nullable=True),
}


@dataclass(frozen=True)
class FeatureMapConfig:
    """An MLP applied to the x-part of every token before the attention layers."""

    hidden: tuple[int, ...] = tuple(FEATURE_MAP_SCHEMA["hidden"].default)
    out_dim: int | None = FEATURE_MAP_SCHEMA["out_dim"].default  # None: the task's d


@dataclass(frozen=True)
class ModelConfig:
    """The transformer's shape: L layers, the parameterization of P and Q, the attention variant, the
    init scale and an optional feature map (see MODEL_SCHEMA for what each means)."""

    layers: int = MODEL_SCHEMA["layers"].default
    parameterization: str = MODEL_SCHEMA["parameterization"].default
    attention: str = MODEL_SCHEMA["attention"].default
    init_std: float = MODEL_SCHEMA["init_std"].default
    feature_map: FeatureMapConfig | None = field(default=None)
