"""Attention units of a block's TKSA: ``heads`` (a whole head with its temperature) and ``head_channels``
(one channel of every head: its q, k and v rows, their depthwise taps and its project_out column).

Not exact for a channel whose weights are zero: it takes part in the channel softmax of its head (its logit
column), so removing it changes the other rows slightly.
"""

from __future__ import annotations

import torch

from drsformer.config import BlockConfig

from .plan import BlockPlan, Plan, Unit

MIN_HEAD_DIM = 2  # the config's minimum: the top-k counts need at least 2 channels


def units(s: dict, stage: str, i: int, b: BlockConfig) -> list[Unit]:
    """One ``heads`` unit per head and one ``head_channels`` unit per channel slot (the k-th weakest channel
    of every head), scored from the per-weight scores ``s``."""
    prefix, inner, d = f"{stage}.{i}.attn.", b.heads * b.head_dim, b.head_dim

    def channel(ch: int) -> float:
        rows = [ch, inner + ch, 2 * inner + ch]
        total = s[prefix + "qkv.weight"][rows].sum() + s[prefix + "qkv_dwconv.weight"][rows].sum()
        return float(total + s[prefix + "project_out.weight"][:, ch].sum())

    per_head = [[channel(h * d + c) for c in range(d)] for h in range(b.heads)]
    ranked = [sorted(cs) for cs in per_head]
    return [Unit("heads", (stage, i), h, sum(cs)) for h, cs in enumerate(per_head)] + [
        Unit("head_channels", (stage, i), k, sum(r[k] for r in ranked), per_head) for k in range(d)
    ]


def remove_head(plan: Plan, unit: Unit) -> bool:
    p = plan.blocks[unit.where]
    if not p.alive or unit.index not in p.heads or len(p.heads) == 1:
        return False
    k = p.heads.index(unit.index)
    del p.heads[k], p.channels[k]
    return True


def remove_head_channel(plan: Plan, unit: Unit) -> bool:
    """Every kept head of the block drops its weakest kept channel (heads keep equal widths)."""
    p = plan.blocks[unit.where]
    if not p.alive or len(p.channels[0]) <= MIN_HEAD_DIM:
        return False
    for k, h in enumerate(p.heads):
        weakest = min(p.channels[k], key=lambda c, h=h: unit.per_channel[h][c])
        p.channels[k] = [c for c in p.channels[k] if c != weakest]
    return True


def slice_entry(name: str, value: torch.Tensor, b: BlockConfig, p: BlockPlan) -> torch.Tensor | None:
    """The kept slice of a block's state entry ``name`` (``attn.*``); None for entries outside the TKSA."""
    if not name.startswith("attn."):
        return None
    inner = b.heads * b.head_dim
    idx = [h * b.head_dim + c for h, chans in zip(p.heads, p.channels) for c in chans]
    if name == "attn.temperature":
        return value[p.heads]
    if name.startswith("attn.qkv"):
        return value[idx + [inner + i for i in idx] + [2 * inner + i for i in idx]]
    if name == "attn.project_out.weight":
        return value[:, idx]
    return value  # project_out bias: the residual width
