"""What a pruning keeps: ``Plan`` (old indices of every kept head, channel, MSFN pair, expert, step, block and
width unit), the full plan of a config and the config of the network a plan keeps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from drsformer import DRSformerConfig
from drsformer.config import STAGES, UPSAMPLERS, BlockConfig, LevelConfig, MEFCConfig
from drsformer.wiring import MEFC_FIELDS, STREAM_PARTS, UNSHUFFLED, WIDTH_STREAMS, mefc_config, stream_widths


class PruneError(ValueError):
    """A pruning request that cannot be met, naming the field."""


@dataclass
class BlockPlan:
    heads: list[int]  # kept heads (old indices)
    channels: list[list[int]]  # per kept head, kept channels (old indices, sorted, same count for all)
    pairs: list[int] | None  # kept MSFN pairs, or None: MSFN untouched
    ffn_hidden: int  # the MSFN's hidden width before pruning (pairs: 0 .. ffn_hidden // 2 - 1)
    alive: bool = True


@dataclass
class MEFCPlan:
    steps: list[int]  # kept steps (old indices)
    ops: dict[int, list[int]]  # step -> kept expert op indices


@dataclass
class Plan:
    blocks: dict[tuple[str, int], BlockPlan] = field(default_factory=dict)  # (stage, block) -> its plan
    mefc: dict[str, MEFCPlan] = field(default_factory=dict)  # MEFC site -> its plan
    widths: dict[str, list[int]] = field(default_factory=dict)  # width stream -> kept width units (old indices)


def mefcs(config: DRSformerConfig) -> dict[str, MEFCConfig]:
    """The MEFC sites ``config`` has, with their configs."""
    return {site: mefc_config(config, site) for site in MEFC_FIELDS if mefc_config(config, site) is not None}


def unit_channels(stream: str) -> int:
    """Channels per width unit of a stream: 4 after a PixelUnshuffle (one downsample conv row), else 1."""
    return 4 if stream in UNSHUFFLED else 1


def width_units(config: DRSformerConfig, stream: str) -> int:
    return stream_widths(config)[stream] // unit_channels(stream)


def full_plan(config: DRSformerConfig) -> Plan:
    """The plan that keeps everything."""
    plan = Plan()
    for stage, level in zip(STAGES, config.levels):
        for i, b in enumerate(level.blocks):
            plan.blocks[stage, i] = BlockPlan(
                list(range(b.heads)), [list(range(b.head_dim)) for _ in range(b.heads)], None, b.ffn_hidden
            )
    for site, m in mefcs(config).items():
        plan.mefc[site] = MEFCPlan(list(range(m.steps)), {i: list(ops) for i, ops in enumerate(m.ops)})
    plan.widths = {stream: list(range(width_units(config, stream))) for stream in WIDTH_STREAMS}
    return plan


def plan_config(config: DRSformerConfig, plan: Plan) -> DRSformerConfig:
    """The config of the network that ``plan`` keeps."""
    widths = {stream: len(kept) * unit_channels(stream) for stream, kept in plan.widths.items()}
    widths.update({name: sum(widths[p] for p in parts) for name, parts in STREAM_PARTS.items()})
    levels = []
    for stage, level in zip(STAGES, config.levels):
        blocks = []
        for i, b in enumerate(level.blocks):
            p = plan.blocks[stage, i]
            if p.alive:
                hidden = b.ffn_hidden if p.pairs is None else 2 * len(p.pairs)
                blocks.append(BlockConfig(len(p.heads), len(p.channels[0]), hidden))
        levels.append(LevelConfig(widths[stage], tuple(blocks)))
    mefc = {
        MEFC_FIELDS[site]: MEFCConfig(
            tuple(tuple(plan.mefc[site].ops[s]) for s in plan.mefc[site].steps), m.router_hidden
        )  # fmt: skip
        for site, m in mefcs(config).items()
    }
    return replace(config, levels=tuple(levels), up_widths=tuple(widths[u] for u in UPSAMPLERS), **mefc)


@dataclass
class Unit:
    """One prunable unit: its kind, its family's place, its index there and its importance."""

    kind: str
    where: tuple  # the family: (stage, block) for heads/head_channels/ffn, (stage,) for blocks,
    #               (site, step) for experts, (site,) for steps, (stream,) for width
    index: int  # head, channel slot, MSFN pair, block, expert op, step or width unit
    score: float
    per_channel: list[list[float]] | None = None  # head_channels: per kept head, the score of each channel
