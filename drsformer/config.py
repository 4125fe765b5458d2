"""DRSformer configuration: one frozen dataclass that describes the paper model and any pruned student.

The official constructor only knows ``dim``, ``num_blocks``, ``heads`` and ``ffn_expansion_factor``.
A structurally pruned student needs more: every stage has its own residual width, every block its own
number of heads, channels per head and MSFN hidden width, and every MEFC its own set of expert
operations per step. ``DRSformerConfig`` holds exactly that, so a student is ``DRSformer(config)`` plus
a state dict, and the paper model is just the uniform special case (``from_official_kwargs``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Stage names are the official state-dict prefixes, in forward order.
STAGES = (
    "encoder_level1",
    "encoder_level2",
    "encoder_level3",
    "latent",
    "decoder_level3",
    "decoder_level2",
    "decoder_level1",
)
UPSAMPLERS = ("up4_3", "up3_2", "up2_1")

# MEFC expert operations, in the official order (index j in `_ops.<step>._ops.<j>`):
# (kind, kernel, dilation). "sep" = dw k -> 1x1 -> ReLU -> dw k -> 1x1, "dil" = dilated dw k -> 1x1.
EXPERT_OPS = (
    ("sep", 1, 1),
    ("sep", 3, 1),
    ("sep", 5, 1),
    ("sep", 7, 1),
    ("dil", 3, 2),
    ("dil", 5, 2),
    ("dil", 7, 2),
    ("avg", 3, 1),
)
NUM_EXPERT_OPS = len(EXPERT_OPS)
NORM_TYPES = ("WithBias", "BiasFree")


class ConfigError(ValueError):
    """A DRSformer configuration that cannot describe a working network."""


@dataclass(frozen=True)
class BlockConfig:
    """One sparse transformer block (STB): TKSA with ``heads`` x ``head_dim`` channels, MSFN hidden width."""

    heads: int
    head_dim: int
    ffn_hidden: int

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class LevelConfig:
    """A stage of the U-Net: its residual width and its blocks."""

    width: int
    blocks: tuple[BlockConfig, ...]


@dataclass(frozen=True)
class MEFCConfig:
    """Mixture-of-experts feature compensator.

    ``ops[i]`` lists the expert operations (indices into ``EXPERT_OPS``) kept in step ``i``; the number
    of steps is ``len(ops)``. The router always scores all eight operations of a step and the softmax
    runs over all eight, so removing an expert leaves the routing weights of the kept ones unchanged
    (pruning an expert whose output is zero is exact).
    """

    ops: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4, 5, 6, 7),) * 4
    router_hidden: int = 64

    @property
    def steps(self) -> int:
        return len(self.ops)


@dataclass(frozen=True)
class DRSformerConfig:
    """Every size in the network.

    ``levels`` follow ``STAGES``. ``up_widths`` are the channels that ``up4_3``, ``up3_2`` and ``up2_1``
    produce (after PixelShuffle). ``decoder_level1`` works on ``cat[up2_1, encoder_level1]``, so its width
    is ``up_widths[2] + levels[0].width``. ``encoder_mefc``/``refinement_mefc`` are ``None`` in the
    no-MEFC variant.
    """

    levels: tuple[LevelConfig, ...]
    up_widths: tuple[int, int, int]
    encoder_mefc: MEFCConfig | None = field(default_factory=MEFCConfig)
    refinement_mefc: MEFCConfig | None = field(default_factory=MEFCConfig)
    bias: bool = False
    norm_type: str = "WithBias"
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        _validate(self)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_official_kwargs(
        cls,
        dim: int = 48,
        num_blocks=(4, 6, 6, 8),
        heads=(1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",  # the official keyword
        mefc: bool = True,
        inp_channels: int = 3,
        out_channels: int = 3,
    ) -> DRSformerConfig:
        """The config of the official ``DRSformer(...)`` constructor (``mefc=False``: the Rain200L/SPA file)."""
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ConfigError(f"num_blocks and heads need 4 entries each, got {list(num_blocks)} and {list(heads)}")
        widths = (dim, 2 * dim, 4 * dim, 8 * dim, 4 * dim, 2 * dim, 2 * dim)
        level_of = (0, 1, 2, 3, 2, 1, 0)  # which entry of num_blocks/heads each stage uses
        levels = []
        for width, lvl in zip(widths, level_of):
            n_heads = heads[lvl]
            if width % n_heads:
                raise ConfigError(f"width {width} is not divisible by heads={n_heads}")
            block = BlockConfig(n_heads, width // n_heads, int(width * ffn_expansion_factor))
            levels.append(LevelConfig(width, (block,) * num_blocks[lvl]))
        return cls(
            levels=tuple(levels),
            up_widths=(4 * dim, 2 * dim, dim),
            encoder_mefc=MEFCConfig() if mefc else None,
            refinement_mefc=MEFCConfig() if mefc else None,
            bias=bias,
            norm_type=LayerNorm_type,
            in_channels=inp_channels,
            out_channels=out_channels,
        )

    @classmethod
    def preset(cls, name: str) -> DRSformerConfig:
        """A named configuration: ``full``, ``nomefc`` (paper sizes) or a small CPU preset (see ``PRESETS``)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_official_kwargs(**PRESETS[name])

    # ------------------------------------------------------------------ views
    def level(self, name: str) -> LevelConfig:
        return self.levels[STAGES.index(name)]

    @property
    def mefc(self) -> bool:
        return self.encoder_mefc is not None or self.refinement_mefc is not None

    def with_level(self, name: str, level: LevelConfig) -> DRSformerConfig:
        levels = list(self.levels)
        levels[STAGES.index(name)] = level
        return replace(self, levels=tuple(levels))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DRSformerConfig:
        try:
            levels = tuple(
                LevelConfig(int(lv["width"]), tuple(BlockConfig(**b) for b in lv["blocks"])) for lv in data["levels"]
            )
            mefcs = {
                key: None if data.get(key) is None else MEFCConfig(
                    ops=tuple(tuple(int(j) for j in step) for step in data[key]["ops"]),
                    router_hidden=int(data[key]["router_hidden"]),
                )
                for key in ("encoder_mefc", "refinement_mefc")
            }
            rest = {k: data[k] for k in ("bias", "norm_type", "in_channels", "out_channels") if k in data}
            return cls(levels=levels, up_widths=tuple(int(u) for u in data["up_widths"]), **mefcs, **rest)
        except (KeyError, TypeError) as err:
            raise ConfigError(f"not a DRSformer config dict ({type(err).__name__}: {err})") from err

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> DRSformerConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: cannot read a DRSformer config ({err})") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


def _validate(cfg: DRSformerConfig) -> None:
    if len(cfg.levels) != len(STAGES):
        raise ConfigError(f"levels needs {len(STAGES)} entries ({', '.join(STAGES)}), got {len(cfg.levels)}")
    if len(cfg.up_widths) != 3:
        raise ConfigError(f"up_widths needs 3 entries ({', '.join(UPSAMPLERS)}), got {len(cfg.up_widths)}")
    if cfg.norm_type not in NORM_TYPES:
        raise ConfigError(f"norm_type must be one of {NORM_TYPES}, got {cfg.norm_type!r}")
    for name, level in zip(STAGES, cfg.levels):
        if level.width < 1:
            raise ConfigError(f"{name}: width must be >= 1, got {level.width}")
        for i, block in enumerate(level.blocks):
            where = f"{name}[{i}]"
            if block.heads < 1 or block.ffn_hidden < 1:
                raise ConfigError(f"{where}: heads and ffn_hidden must be >= 1, got {block}")
            if block.head_dim < 2:
                # int(1 * 1/2) = 0: the sparsest top-k branch would keep no entry and softmax gives NaN.
                raise ConfigError(f"{where}: head_dim must be >= 2 for top-k attention, got {block.head_dim}")
    if min(cfg.up_widths) < 1:
        raise ConfigError(f"up_widths must be >= 1, got {cfg.up_widths}")
    from .wiring import check_widths  # the wiring reads this module's names: imported when first needed

    problems = check_widths(cfg)  # multiples of 4 after PixelUnshuffle, widths of concatenations
    if problems:
        raise ConfigError(problems[0])
    for site, mefc in (("encoder_mefc", cfg.encoder_mefc), ("refinement_mefc", cfg.refinement_mefc)):
        if mefc is None:
            continue
        if mefc.router_hidden < 1:
            raise ConfigError(f"{site}: router_hidden must be >= 1")
        for i, step in enumerate(mefc.ops):
            if not step or len(set(step)) != len(step) or list(step) != sorted(step):
                raise ConfigError(f"{site}.ops[{i}]: need distinct increasing expert indices, got {list(step)}")
            if step[0] < 0 or step[-1] >= NUM_EXPERT_OPS:
                raise ConfigError(f"{site}.ops[{i}]: expert indices must lie in 0..{NUM_EXPERT_OPS - 1}")


_SMALL_HEADS = (1, 2, 4, 8)
# Plain dict of presets (keyword arguments of the official constructor), not a registry.
PRESETS: dict[str, dict] = {
    "full": dict(dim=48, num_blocks=(4, 6, 6, 8), heads=_SMALL_HEADS, mefc=True),
    "nomefc": dict(dim=48, num_blocks=(4, 6, 6, 8), heads=_SMALL_HEADS, mefc=False),
    # Same structure (MEFC, four levels, top-k attention), sized for CPU work and tests.
    "tiny": dict(dim=8, num_blocks=(1, 1, 1, 1), heads=_SMALL_HEADS, mefc=True),
    "tiny_nomefc": dict(dim=8, num_blocks=(1, 1, 1, 1), heads=_SMALL_HEADS, mefc=False),
    "small": dict(dim=16, num_blocks=(1, 2, 2, 2), heads=_SMALL_HEADS, mefc=True),
    "base_cpu": dict(dim=24, num_blocks=(2, 2, 2, 4), heads=_SMALL_HEADS, mefc=True),
    # The paper model's depth and head layout at width 8: MEFC has the paper's share of the MACs (27%, tiny: 61%),
    # so pruning studies on a CPU see the paper's mix of blocks and experts.
    "study": dict(dim=8, num_blocks=(4, 6, 6, 8), heads=_SMALL_HEADS, mefc=True),
}
