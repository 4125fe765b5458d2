"""Structured pruning of DRSformer into a smaller ``DRSformer(config)``.

Units (each alone or together): ``head_channels`` (one channel of every head of a block: q, k and v
rows, their depthwise taps and the project_out column), ``heads`` (whole heads with their temperature),
``ffn`` (MSFN channel pairs, see ``_ffn_groups``), ``experts`` (one expert operation of one MEFC step with
its block of the step's 1x1 output conv), ``steps`` (a whole MEFC step with its router rows) and
``blocks`` (a whole transformer block) and ``width`` (the residual width of a stage, see ``WIDTH_SEGMENTS``).

Why not torch-pruning's DepGraph: on DRSformer its tracer fails (IndexError in MSFN/TKSA, no
PixelShuffle pruner) and needs ~18 GB on the whole model (``../shared/INSTALL.md``). The coupling of each
unit is known exactly here, so units are ranked on their own weight slices and the kept slices are copied
into ``DRSformer(smaller_config)``, loaded strictly. The criteria follow torch-pruning's definitions
(``MagnitudeImportance`` p=1/p=2 and first-order ``TaylorImportance`` |w * dL/dw|, ``RandomImportance``),
applied to these slices.

Exactness: pruning nothing returns the same network; heads, MSFN pairs (even hidden width), experts,
steps and blocks whose weights are zero prune without changing the output (tested). Two approximations,
by the nature of the network: a head channel takes part in the channel softmax of its head (its logit
column), so removing it changes the other rows slightly even when its weights are zero; and the official
odd MSFN widths (127, 255, 1021 = int(2.66 C)) pair channel ``h - 1`` of the 3x3 branch with channel 0 of the
5x5 branch, which chains all channels of a half together, so an odd MSFN is re-paired (``_ffn_groups``) the
first time its width is pruned; and a residual channel takes part in the LayerNorm statistics of its stage
(like a head channel in its softmax), so removing it rescales the kept channels' normalisation slightly
even when the channel is zero everywhere. Width pruning is exact for a network whose LayerNorms see only
the kept channels (tested).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from compress.measure import count_macs, count_params_config
from drsformer import DRSformer, DRSformerConfig
from drsformer.config import NUM_EXPERT_OPS, STAGES, UPSAMPLERS, BlockConfig, LevelConfig, MEFCConfig
from drsformer.model import load_strict

UNITS = ("head_channels", "heads", "ffn", "experts", "steps", "blocks", "width")
CRITERIA = ("l1", "l2", "taylor", "random")
MIN_HEAD_DIM = 2  # the config's minimum; the top-k counts need at least 2 channels
# Residual streams whose width can be pruned. A stream is every tensor that carries the same channels: the
# stage's blocks (norms, qkv and project_in columns, project_out rows), what writes it (patch embedding,
# downsample/upsample conv rows, reduce conv rows, MEFC) and what reads it (the next resample, the skip
# concatenation into a reduce conv or into decoder_level1, the output conv). decoder_level1 and the
# refinement MEFC carry cat[up2_1, encoder_level1], so they shrink with those two streams.
WIDTH_SEGMENTS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent", "up4_3", "decoder_level3",
                  "up3_2", "decoder_level2", "up2_1")  # fmt: skip
# Streams written by PixelUnshuffle(2): a width unit is one row of the downsample conv = 4 channels.
UNSHUFFLED = ("encoder_level2", "encoder_level3", "latent")
MIN_WIDTH = 2  # channels (or unshuffled groups of 4) a stream keeps at least


class PruneError(ValueError):
    """A pruning request that cannot be met, naming the field."""


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class BlockPlan:
    heads: list[int]  # kept heads (old indices)
    channels: list[list[int]]  # per kept head, kept channels (old indices, sorted, same count for all)
    pairs: list[int] | None  # kept MSFN pairs, or None: MSFN untouched
    alive: bool = True


@dataclass
class MEFCPlan:
    steps: list[int]  # kept steps (old indices)
    ops: dict[int, list[int]]  # step -> kept expert op indices


@dataclass
class Plan:
    blocks: dict[tuple[str, int], BlockPlan] = field(default_factory=dict)
    mefc: dict[str, MEFCPlan] = field(default_factory=dict)
    widths: dict[str, list[int]] = field(default_factory=dict)  # stream -> kept width units (old indices)


def _segment_width(config: DRSformerConfig, segment: str) -> int:
    if segment in UPSAMPLERS:
        return config.up_widths[UPSAMPLERS.index(segment)]
    return config.level(segment).width


def _unit_channels(segment: str) -> int:
    """Channels per width unit of a stream: 4 after a PixelUnshuffle (one downsample conv row), else 1."""
    return 4 if segment in UNSHUFFLED else 1


def _segment_units(config: DRSformerConfig, segment: str) -> int:
    return _segment_width(config, segment) // _unit_channels(segment)


def full_plan(config: DRSformerConfig) -> Plan:
    plan = Plan()
    for stage, level in zip(STAGES, config.levels):
        for i, b in enumerate(level.blocks):
            plan.blocks[stage, i] = BlockPlan(
                list(range(b.heads)), [list(range(b.head_dim)) for _ in range(b.heads)], None
            )
    for site, m in _mefcs(config).items():
        plan.mefc[site] = MEFCPlan(list(range(m.steps)), {i: list(ops) for i, ops in enumerate(m.ops)})
    plan.widths = {seg: list(range(_segment_units(config, seg))) for seg in WIDTH_SEGMENTS}
    return plan


def _mefcs(config: DRSformerConfig) -> dict[str, MEFCConfig]:
    sites = {"encoder_level0": config.encoder_mefc, "refinement": config.refinement_mefc}
    return {site: m for site, m in sites.items() if m is not None}


def plan_config(config: DRSformerConfig, plan: Plan) -> DRSformerConfig:
    """The config of the network that ``plan`` keeps."""
    widths = {seg: len(kept) * _unit_channels(seg) for seg, kept in plan.widths.items()}
    widths["decoder_level1"] = widths["up2_1"] + widths["encoder_level1"]
    levels = []
    for stage, level in zip(STAGES, config.levels):
        blocks = []
        for i, b in enumerate(level.blocks):
            p = plan.blocks[stage, i]
            if p.alive:
                hidden = b.ffn_hidden if p.pairs is None else 2 * len(p.pairs)
                blocks.append(BlockConfig(len(p.heads), len(p.channels[0]), hidden))
        levels.append(LevelConfig(widths[stage], tuple(blocks)))
    mefc = {}
    for site, m in _mefcs(config).items():
        p = plan.mefc[site]
        mefc[site] = MEFCConfig(tuple(tuple(p.ops[s]) for s in p.steps), m.router_hidden)
    return replace(
        config,
        levels=tuple(levels),
        up_widths=tuple(widths[seg] for seg in UPSAMPLERS),
        encoder_mefc=mefc.get("encoder_level0"),
        refinement_mefc=mefc.get("refinement"),
    )


# ------------------------------------------------------------------------------------------------ MSFN
def _ffn_groups(h: int, p: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where pair ``p`` (3x3/5x5 branch channels 2p, 2p+1 of a half) lives in the old grouped conv.

    The grouped conv of a half sees cat[y3 half, y5 half] (2h channels) and output ``j`` mixes cat channels
    2j and 2j+1. Returns, for the y3 side and the y5 side, (group of channel 2p, its tap, group of channel
    2p+1, its tap). With even ``h`` both channels sit in one group (taps 0, 1): exact. With odd ``h`` the
    y5 side straddles two groups; the new group takes both taps and the first group's output column.
    """
    y3 = (p, 0, p, 1)
    a, b = h + 2 * p, h + 2 * p + 1
    return y3, (a // 2, a % 2, b // 2, b % 2)


def _ffn_slices(h: int, pairs: list[int]):
    """Old indices for the new MSFN: (project_in rows, grouped-conv (group, tap) pairs, output groups)."""
    rows_half = [c for p in pairs for c in (2 * p, 2 * p + 1)]
    rows = rows_half + [h + c for c in rows_half]
    sides = [_ffn_groups(h, p) for p in pairs]
    taps = [s[0] for s in sides] + [s[1] for s in sides]  # new group order: y3 pairs, then y5 pairs
    return rows, taps


# ------------------------------------------------------------------------------------------------ slicing
def slice_model(model: DRSformer, plan: Plan) -> DRSformer:
    """``DRSformer(plan_config(...))`` holding the kept slices of ``model``'s weights (loaded strictly)."""
    old = {k: v.detach() for k, v in model.state_dict().items()}
    config = plan_config(model.config, plan)
    new = {}
    for key, value in old.items():
        stage, rest = key.split(".", 1)
        if stage in STAGES and rest.split(".")[0].isdigit():
            continue  # blocks below
        if stage in plan.mefc:
            continue
        new[key] = value
    for stage, level in zip(STAGES, model.config.levels):
        j = 0
        for i, b in enumerate(level.blocks):
            p = plan.blocks[stage, i]
            if p.alive:
                _slice_block(old, new, f"{stage}.{i}.", f"{stage}.{j}.", b, p)
                j += 1
    for site, p in plan.mefc.items():
        _slice_mefc(old, new, site, p, _mefcs(model.config)[site])
    all_widths = full_plan(model.config).widths
    if plan.widths != all_widths:  # second pass on the other dimensions: residual widths
        new = _slice_widths(new, plan_config(model.config, replace(plan, widths=all_widths)), plan.widths)
    student = DRSformer(config)
    load_strict(student, new, origin="pruned state")
    return student


def _slice_block(old: dict, new: dict, src: str, dst: str, b: BlockConfig, p: BlockPlan) -> None:
    inner = b.heads * b.head_dim
    idx = [h * b.head_dim + c for h, chans in zip(p.heads, p.channels) for c in chans]
    qkv = idx + [inner + i for i in idx] + [2 * inner + i for i in idx]
    h = b.ffn_hidden
    if p.pairs is not None:
        rows, taps = _ffn_slices(h, p.pairs)
        out_cols = [g for g, _, _, _ in taps]
        out_cols = out_cols + [h + g for g in out_cols]
    for key, value in old.items():
        if not key.startswith(src):
            continue
        name = key[len(src) :]
        if name == "attn.temperature":
            value = value[p.heads]
        elif name.startswith("attn.qkv"):
            value = value[qkv]
        elif name == "attn.project_out.weight":
            value = value[:, idx]
        elif p.pairs is not None and name.startswith(("ffn.project_in", "ffn.dwconv3x3.", "ffn.dwconv5x5.")):
            value = value[rows]
        elif p.pairs is not None and name.startswith(("ffn.dwconv3x3_1", "ffn.dwconv5x5_1")):
            if name.endswith("bias"):
                value = value[[g for g, _, _, _ in taps]]
            else:
                value = torch.stack([torch.stack([value[g0, t0], value[g1, t1]]) for g0, t0, g1, t1 in taps])
        elif p.pairs is not None and name == "ffn.project_out.weight":
            value = value[:, out_cols]
        new[dst + name] = value.clone()


def _slice_mefc(old: dict, new: dict, site: str, p: MEFCPlan, m: MEFCConfig) -> None:
    router_rows = [s * NUM_EXPERT_OPS + j for s in p.steps for j in range(NUM_EXPERT_OPS)]
    for key, value in old.items():
        if not key.startswith(site + "."):
            continue
        name = key[len(site) + 1 :]
        if name.startswith("layers.0.ca_fc.2."):
            new[key] = value[router_rows].clone()
        elif name.startswith("layers.1._ops."):
            step, rest = name[len("layers.1._ops.") :].split(".", 1)
            step = int(step)
            if step not in p.steps:
                continue
            kept, before = p.ops[step], list(m.ops[step])
            dst = f"{site}.layers.1._ops.{p.steps.index(step)}."
            if rest.startswith("_ops."):
                if int(rest.split(".")[1]) in kept:
                    new[dst + rest] = value.clone()
            else:  # _out.0.weight: (c, n*c, 1, 1), column block per kept op
                c = value.shape[0]
                cols = [before.index(j) * c + i for j in kept for i in range(c)]
                new[dst + rest] = value[:, cols].clone()
        else:
            new[key] = value.clone()


# ------------------------------------------------------------------------------------------------ widths
Owner = tuple[str, int]  # (stream, width unit)


def _streams(config: DRSformerConfig) -> dict[str, list[Owner]]:
    """The owner (stream, unit) of every channel of every stage's residual stream and of every upsampler."""

    def channels(seg: str) -> list[Owner]:
        return [(seg, i // _unit_channels(seg)) for i in range(_segment_width(config, seg))]

    streams = {seg: channels(seg) for seg in WIDTH_SEGMENTS}
    streams["decoder_level1"] = streams["up2_1"] + streams["encoder_level1"]
    return streams


def _width_owners(key: str, shape: torch.Size, streams: dict) -> dict[int, list[Owner]]:
    """For one state entry, ``{dim: owner of each index}`` along every dimension that carries a residual
    stream (empty when none does). The coupling of every stream lives here and only here."""
    stage, name = key.split(".", 1)
    if stage in STAGES:  # a block: name = "<i>.<rest>"
        s, rest = streams[stage], name.split(".", 1)[1]
        if rest.startswith(("norm1.", "norm2.", "attn.project_out.", "ffn.project_out.")):
            return {0: s}
        return {1: s} if rest in ("attn.qkv.weight", "ffn.project_in.weight") else {}
    if stage in ("encoder_level0", "refinement"):
        s = streams["encoder_level1" if stage == "encoder_level0" else "decoder_level1"]
        if name == "layers.0.ca_fc.0.weight":
            return {1: s}
        if not name.startswith("layers.1.") or not name.endswith("weight"):
            return {}
        if name.endswith("_out.0.weight"):
            return {0: s, 1: s * (shape[1] // len(s))}  # one column block per kept expert op
        return {0: s} if shape[1] == 1 else {0: s, 1: s}  # depthwise / 1x1 (c -> c)
    if stage == "patch_embed":
        return {0: streams["encoder_level1"]}
    if stage == "output":
        return {1: streams["decoder_level1"]} if name == "weight" else {}
    resample = {"down1_2": ("encoder_level1", "encoder_level2"), "down2_3": ("encoder_level2", "encoder_level3"),
                "down3_4": ("encoder_level3", "latent"), "up4_3": ("latent", "up4_3"),
                "up3_2": ("decoder_level3", "up3_2"), "up2_1": ("decoder_level2", "up2_1")}  # fmt: skip
    if stage in resample:
        src, dst = resample[stage]
        per_row = 1 if stage.startswith("down") else 4  # PixelUnshuffle: row = unit; PixelShuffle: 4 rows/channel
        return {0: [(dst, r // per_row) for r in range(shape[0])], 1: streams[src]}
    reduce = {"reduce_chan_level3": ("decoder_level3", "up4_3", "encoder_level3"),
              "reduce_chan_level2": ("decoder_level2", "up3_2", "encoder_level2")}  # fmt: skip
    if stage in reduce:
        out, up, skip = reduce[stage]
        return {0: streams[out], 1: streams[up] + streams[skip]} if name == "weight" else {0: streams[out]}
    raise PruneError(f"no width coupling known for state entry {key!r}")


def _kept_index(owners: list[Owner], kept: dict[str, set[int]]) -> list[int]:
    """The indices (of a stream-carrying dimension) whose owning width unit is kept."""
    return [i for i, (seg, unit) in enumerate(owners) if unit in kept[seg]]


def _slice_widths(state: dict, config: DRSformerConfig, kept: dict[str, list[int]]) -> dict:
    """``state`` (of a ``config`` network) with every residual stream cut to its ``kept`` units."""
    streams, keep = _streams(config), {seg: set(units) for seg, units in kept.items()}
    out = {}
    for key, value in state.items():
        for dim, owners in _width_owners(key, value.shape, streams).items():
            index = _kept_index(owners, keep)
            value = value.index_select(dim, torch.tensor(index, dtype=torch.long))
        out[key] = value
    return out


def _width_units(scores: dict, config: DRSformerConfig) -> list[Unit]:
    """One unit per width unit of every stream; its score sums every weight slice the unit owns."""
    streams = _streams(config)
    totals = {(seg, i): 0.0 for seg in WIDTH_SEGMENTS for i in range(_segment_units(config, seg))}
    for key, score in scores.items():
        for dim, owners in _width_owners(key, score.shape, streams).items():
            per_index = score.sum([d for d in range(score.dim()) if d != dim]) if score.dim() > 1 else score
            for (seg, unit), value in zip(owners, per_index.tolist()):
                totals[seg, unit] += value
    return [Unit("width", (seg,), unit, total) for (seg, unit), total in totals.items()]


# ------------------------------------------------------------------------------------------------ importance
def weight_scores(model: DRSformer, criterion: str, calibration: list[tuple[torch.Tensor, torch.Tensor]] = ()):
    """Per-weight importance ``{state key: tensor}``: |w| (l1), w^2 (l2), |w * dL/dw| (taylor, L1 loss on
    the calibration pairs), or uniform noise (random, the baseline)."""
    if criterion not in CRITERIA:
        raise PruneError(f"prune.criterion: {criterion!r} is not one of {CRITERIA}")
    params = dict(model.named_parameters())
    if criterion == "taylor":
        if not calibration:
            raise PruneError("prune.criterion taylor needs calibration batches")
        model.zero_grad(set_to_none=True)
        for rainy, clean in calibration:
            (model(rainy) - clean).abs().mean().backward()
        scores = {
            k: (p.detach() * p.grad).abs() if p.grad is not None else torch.zeros_like(p) for k, p in params.items()
        }
        model.zero_grad(set_to_none=True)
        return scores
    if criterion == "random":
        gen = torch.Generator().manual_seed(0)
        return {k: torch.rand(p.shape, generator=gen) for k, p in params.items()}
    power = 1 if criterion == "l1" else 2
    return {k: p.detach().abs() ** power for k, p in params.items()}


@dataclass
class Unit:
    kind: str
    where: tuple  # (stage, block) or (site, step)
    index: int  # head, channel slot, pair, op, step or block
    score: float


def _block_units(s: dict, prefix: str, b: BlockConfig, channel_scores: dict) -> list[Unit]:
    inner, d = b.heads * b.head_dim, b.head_dim

    def channel(ch: int) -> float:
        rows = [ch, inner + ch, 2 * inner + ch]
        total = s[prefix + "attn.qkv.weight"][rows].sum() + s[prefix + "attn.qkv_dwconv.weight"][rows].sum()
        return float(total + s[prefix + "attn.project_out.weight"][:, ch].sum())

    where = tuple(prefix.rstrip(".").rsplit(".", 1))
    where = (where[0], int(where[1]))
    units = []
    per_head = [[channel(h * d + c) for c in range(d)] for h in range(b.heads)]
    channel_scores[where] = per_head
    units += [Unit("heads", where, h, sum(cs)) for h, cs in enumerate(per_head)]
    ranked = [sorted(cs) for cs in per_head]
    units += [Unit("head_channels", where, k, sum(r[k] for r in ranked)) for k in range(d)]
    h = b.ffn_hidden
    for p in range(h // 2):
        rows, taps = _ffn_slices(h, [p])
        total = sum(s[prefix + f"ffn.{n}.weight"][rows].sum() for n in ("project_in", "dwconv3x3", "dwconv5x5"))
        cols = [g for g, _, _, _ in taps]
        total += s[prefix + "ffn.project_out.weight"][:, cols + [h + g for g in cols]].sum()
        units.append(Unit("ffn", where, p, float(total)))
    block = s[prefix + "attn.project_out.weight"].sum() + s[prefix + "ffn.project_out.weight"].sum()
    units.append(Unit("blocks", (where[0],), where[1], float(block)))
    return units


def _mefc_units(s: dict, site: str, m: MEFCConfig) -> list[Unit]:
    units = []
    for step, ops in enumerate(m.ops):
        out = s[f"{site}.layers.1._ops.{step}._out.0.weight"]
        c = out.shape[0]
        for n, j in enumerate(ops):
            units.append(Unit("experts", (site, step), j, float(out[:, n * c : (n + 1) * c].sum())))
        units.append(Unit("steps", (site,), step, float(out.sum())))
    return units


def rank_units(model: DRSformer, scores: dict) -> tuple[list[Unit], dict]:
    """Every prunable unit with its importance, normalised by the mean of its family (same kind, same place),
    and the raw per-channel scores of every head (``{(stage, block): [[score per channel] per head]}``)."""
    units, channel_scores = [], {}
    for stage, level in zip(STAGES, model.config.levels):
        for i, b in enumerate(level.blocks):
            units += _block_units(scores, f"{stage}.{i}.", b, channel_scores)
    for site, m in _mefcs(model.config).items():
        units += _mefc_units(scores, site, m)
    units += _width_units(scores, model.config)
    families: dict[tuple, list[Unit]] = {}
    for u in units:
        families.setdefault((u.kind, u.where), []).append(u)
    for family in families.values():
        mean = sum(u.score for u in family) / len(family)
        for u in family:
            u.score = u.score / mean if mean > 0 else 0.0
    return units, channel_scores


# ------------------------------------------------------------------------------------------------ selection
def _remove(plan: Plan, config: DRSformerConfig, unit: Unit, channel_scores: dict) -> bool:
    """Apply one unit's removal to ``plan`` if the result is still a valid network; True if applied."""
    if unit.kind in ("heads", "head_channels", "ffn"):
        p = plan.blocks[unit.where]
        if not p.alive:
            return False
        if unit.kind == "heads":
            if unit.index not in p.heads or len(p.heads) == 1:
                return False
            k = p.heads.index(unit.index)
            del p.heads[k], p.channels[k]
        elif unit.kind == "head_channels":
            if len(p.channels[0]) <= MIN_HEAD_DIM:
                return False
            head_scores = channel_scores[unit.where]
            for k, h in enumerate(p.heads):  # each head drops its weakest kept channel
                weakest = min(p.channels[k], key=lambda c, h=h: head_scores[h][c])
                p.channels[k] = [c for c in p.channels[k] if c != weakest]
        else:
            b = config.levels[STAGES.index(unit.where[0])].blocks[unit.where[1]]
            if p.pairs is None:
                p.pairs = list(range(b.ffn_hidden // 2))
            if unit.index not in p.pairs or len(p.pairs) == 1:
                return False
            p.pairs.remove(unit.index)
        return True
    if unit.kind == "blocks":
        p = plan.blocks[unit.where[0], unit.index]
        if not p.alive:
            return False
        p.alive = False
        return True
    if unit.kind == "width":
        kept = plan.widths[unit.where[0]]
        if unit.index not in kept or len(kept) <= MIN_WIDTH:
            return False
        kept.remove(unit.index)
        return True
    if unit.kind == "experts":
        site, step = unit.where
        ops = plan.mefc[site].ops[step]
        if step not in plan.mefc[site].steps or unit.index not in ops or len(ops) == 1:
            return False
        ops.remove(unit.index)
        return True
    site = unit.where[0]
    steps = plan.mefc[site].steps
    if unit.index not in steps or len(steps) == 1:
        return False
    steps.remove(unit.index)
    return True


def _cost_fn(kind: str, size: int):
    """The budgeted quantity of a config: MACs at ``size`` x ``size`` or parameters."""
    if kind == "macs":
        return lambda config: count_macs(config, size, size)
    return count_params_config


def select(
    config: DRSformerConfig,
    units: list[Unit],
    channel_scores: dict,
    kinds: list[str],
    ratios: dict[str, float] | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    size: int = 256,
    max_ratio: float = 1.0,
) -> Plan:
    """The plan: per family, the weakest ``ratios[kind]`` share of units removed; or, with ``target_macs``
    (``target_params``), a share of ``config``'s MACs (parameters) to keep, units removed in order of global
    rank (importance normalised within its family, per MAC or parameter saved) until the budget is met, at
    most ``max_ratio`` of any one family (torch-pruning's ``max_pruning_ratio``): without a cap the per-MAC
    ranking empties the full-resolution streams and MEFC steps first, since their units cost the most MACs."""
    unknown = [k for k in list(kinds) + list(ratios or {}) if k not in UNITS]
    if unknown:
        raise PruneError(f"prune.units: unknown unit(s) {unknown}; choose from {UNITS}")
    plan = full_plan(config)
    candidates = [u for u in units if u.kind in kinds]
    if ratios:
        families: dict[tuple, list[Unit]] = {}
        for u in candidates:
            if u.kind in ratios:
                families.setdefault((u.kind, u.where), []).append(u)
        for (kind, _), family in families.items():
            ratio = ratios[kind]
            if not 0 <= ratio < 1:
                raise PruneError(f"prune.ratios.{kind}: {ratio} is outside [0, 1)")
            for u in sorted(family, key=lambda u: u.score)[: math.floor(ratio * len(family))]:
                _remove(plan, config, u, channel_scores)
        return plan
    if (target_macs is None) == (target_params is None):
        raise PruneError("prune: give ratios, or exactly one of target_macs and target_params")
    if not 0 < max_ratio <= 1:
        raise PruneError(f"prune.max_ratio: {max_ratio} is outside (0, 1]")
    family_size = Counter((u.kind, u.where) for u in candidates)
    removed: Counter = Counter()
    kind, target = ("macs", target_macs) if target_macs is not None else ("params", target_params)
    measure = _cost_fn(kind, size)
    full = measure(config)
    budget = target * full
    cost = {}
    for u in candidates:  # saved by removing this unit alone from the full network (0: not removable)
        trial = full_plan(config)
        cost[id(u)] = full - measure(plan_config(config, trial)) if _remove(trial, config, u, channel_scores) else 0
    mean_cost = sum(cost.values()) / max(1, len(cost))
    order = sorted(candidates, key=lambda u: u.score / max(cost[id(u)] / mean_cost, 1e-9))
    current = full
    for u in order:
        if current <= budget:
            break
        family = (u.kind, u.where)
        if removed[family] + 1 > max_ratio * family_size[family]:
            continue
        if _remove(plan, config, u, channel_scores):
            removed[family] += 1
            current = measure(plan_config(config, plan))
    if current > budget:
        raise PruneError(
            f"prune.target_{kind}: {target} cannot be met by removing {kinds} "
            f"(reached {current / full:.3f}); add unit kinds, raise the target or raise prune.max_ratio"
        )
    return plan


# ------------------------------------------------------------------------------------------------ entry point
# Module outputs that carry a residual stream, by the stream (see ``_streams``): where the feature taps of
# distillation can compare a width-pruned student with its teacher channel by channel.
STREAM_OUTPUTS = {
    "patch_embed": "encoder_level1", "encoder_level0": "encoder_level1", "encoder_level1": "encoder_level1",
    "down1_2": "encoder_level2", "encoder_level2": "encoder_level2", "down2_3": "encoder_level3",
    "encoder_level3": "encoder_level3", "down3_4": "latent", "latent": "latent", "up4_3": "up4_3",
    "reduce_chan_level3": "decoder_level3", "decoder_level3": "decoder_level3", "up3_2": "up3_2",
    "reduce_chan_level2": "decoder_level2", "decoder_level2": "decoder_level2", "up2_1": "up2_1",
    "decoder_level1": "decoder_level1", "refinement": "decoder_level1",
}  # fmt: skip


def kept_channels(config: DRSformerConfig, plan: Plan) -> dict[str, list[int]]:
    """For every module output in ``STREAM_OUTPUTS`` whose width the plan cuts: the teacher channel behind
    each student channel."""
    streams, keep = _streams(config), {seg: set(units) for seg, units in plan.widths.items()}
    kept = {}
    for path, stream in STREAM_OUTPUTS.items():
        index = _kept_index(streams[stream], keep)
        if len(index) < len(streams[stream]):
            kept[path] = index
    return kept


def kept_attention(config: DRSformerConfig, plan: Plan) -> dict[str, tuple[str, list[int], list[list[int]]]]:
    """For every student TKSA path: (the teacher's TKSA path it was cut from, the teacher heads it kept, per
    kept head the teacher channels it kept). Student block j of a stage is the j-th kept teacher block."""
    kept = {}
    for stage, level in zip(STAGES, config.levels):
        alive = [i for i in range(len(level.blocks)) if plan.blocks[(stage, i)].alive]
        for j, i in enumerate(alive):
            b = plan.blocks[(stage, i)]
            kept[f"{stage}.{j}.attn"] = (f"{stage}.{i}.attn", list(b.heads), [list(c) for c in b.channels])
    return kept


@dataclass
class PruneReport:
    criterion: str
    units: list[str]
    teacher_config: DRSformerConfig
    student_config: DRSformerConfig
    size: int = 256
    kept_channels: dict[str, list[int]] = field(default_factory=dict)  # see ``kept_channels()``
    kept_attention: dict[str, tuple[str, list[int], list[list[int]]]] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """Per stage: residual width, blocks, heads, head width, MSFN width and MACs, teacher -> student."""
        from compress.measure import macs_by_part

        before, after = (macs_by_part(c, self.size, self.size) for c in (self.teacher_config, self.student_config))
        rows = []
        for stage, t, s in zip(STAGES, self.teacher_config.levels, self.student_config.levels):

            def fmt(level, attr):
                return ",".join(str(getattr(b, attr)) for b in level.blocks) or "-"

            rows.append(
                {
                    "part": stage,
                    "width": f"{t.width} -> {s.width}",
                    "blocks": f"{len(t.blocks)} -> {len(s.blocks)}",
                    "heads": f"{fmt(t, 'heads')} -> {fmt(s, 'heads')}",
                    "head_dim": f"{fmt(t, 'head_dim')} -> {fmt(s, 'head_dim')}",
                    "ffn_hidden": f"{fmt(t, 'ffn_hidden')} -> {fmt(s, 'ffn_hidden')}",
                    "gmacs": f"{before[stage] / 1e9:.3f} -> {after[stage] / 1e9:.3f}",
                }
            )
        for site, t, s in (
            ("encoder_level0", self.teacher_config.encoder_mefc, self.student_config.encoder_mefc),
            ("refinement", self.teacher_config.refinement_mefc, self.student_config.refinement_mefc),
        ):
            if t is not None:
                ops = "/".join(str(len(o)) for o in s.ops)
                rows.append(
                    {
                        "part": f"{site} (MEFC)",
                        "width": "",
                        "blocks": f"{t.steps} -> {s.steps} steps",
                        "heads": f"experts per step {'/'.join(str(len(o)) for o in t.ops)} -> {ops}",
                        "head_dim": "",
                        "ffn_hidden": "",
                        "gmacs": f"{before[site] / 1e9:.3f} -> {after[site] / 1e9:.3f}",
                    }
                )
        return rows

    def table(self):
        from rich.table import Table

        t_macs = count_macs(self.teacher_config, self.size, self.size)
        s_macs = count_macs(self.student_config, self.size, self.size)
        table = Table(title=f"pruning ({self.criterion}; {', '.join(self.units)}): "
                      f"{t_macs / 1e9:.3f} -> {s_macs / 1e9:.3f} GMACs @ {self.size}x{self.size} "
                      f"({s_macs / t_macs:.1%} kept)")  # fmt: skip
        rows = self.rows()
        for column in rows[0]:
            table.add_column(column)
        for row in rows:
            table.add_row(*row.values())
        return table


def prune(
    model: DRSformer,
    units: list[str],
    criterion: str = "l1",
    ratios: dict[str, float] | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    calibration: list[tuple[torch.Tensor, torch.Tensor]] = (),
    max_ratio: float = 1.0,
) -> tuple[DRSformer, PruneReport]:
    """A smaller ``DRSformer(config)`` derived from ``model`` and the report of what went where.

    ``ratios`` (per unit kind, the share removed in every block/MEFC), ``target_macs`` (keep at most this
    share of the MACs at 256x256, global ranking) or ``target_params`` (the same on parameters); with a
    global target, ``max_ratio`` caps the share removed from any one family of units.
    """
    if not units:
        raise PruneError("prune.units: empty; choose from " + ", ".join(UNITS))
    scores = weight_scores(model, criterion, calibration)
    ranked, channel_scores = rank_units(model, scores)
    plan = select(model.config, ranked, channel_scores, list(units), ratios, target_macs, target_params,
                  max_ratio=max_ratio)  # fmt: skip
    student = slice_model(model, plan)
    report = PruneReport(criterion, list(units), model.config, student.config)
    report.kept_channels = kept_channels(model.config, plan)
    report.kept_attention = kept_attention(model.config, plan)
    return student, report
