"""DRSformer: a checkpoint-compatible, config-driven re-implementation (see ``drsformer.model``)."""

from .config import (
    EXPERT_OPS,
    PRESETS,
    STAGES,
    BlockConfig,
    ConfigError,
    DRSformerConfig,
    LevelConfig,
    MEFCConfig,
)
from .model import DRSformer, load_strict, topk_counts, unwrap_state_dict
from .tiling import tiled, tiled_forward

__all__ = [
    "EXPERT_OPS",
    "PRESETS",
    "STAGES",
    "BlockConfig",
    "ConfigError",
    "DRSformer",
    "DRSformerConfig",
    "LevelConfig",
    "MEFCConfig",
    "load_strict",
    "tiled",
    "tiled_forward",
    "topk_counts",
    "unwrap_state_dict",
]
