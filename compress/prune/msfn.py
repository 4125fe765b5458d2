"""MSFN units: ``ffn``, one channel pair of the mixed-scale feed-forward network (the pair's project_in rows,
3x3 and 5x5 depthwise taps, grouped-conv groups and project_out columns in both halves).

Exact for even hidden widths. The official odd widths (127, 255, 1021 = int(2.66 C)) pair channel ``h - 1``
of the 3x3 branch with channel 0 of the 5x5 branch, which chains all channels of a half together, so an
odd MSFN is re-paired (``ffn_groups``) the first time its width is pruned.
"""

from __future__ import annotations

import torch

from drsformer.config import BlockConfig

from .plan import BlockPlan, Plan, Unit


def ffn_groups(h: int, p: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where pair ``p`` (3x3/5x5 branch channels 2p, 2p+1 of a half) lives in the old grouped conv.

    The grouped conv of a half sees cat[y3 half, y5 half] (2h channels) and output ``j`` mixes cat channels
    2j and 2j+1. Returns, for the y3 side and the y5 side, (group of channel 2p, its tap, group of channel
    2p+1, its tap). With even ``h`` both channels sit in one group (taps 0, 1): exact. With odd ``h`` the
    y5 side straddles two groups; the new group takes both taps and the first group's output column.
    """
    y3 = (p, 0, p, 1)
    a, b = h + 2 * p, h + 2 * p + 1
    return y3, (a // 2, a % 2, b // 2, b % 2)


def ffn_slices(h: int, pairs: list[int]):
    """Old indices for the new MSFN: (project_in rows, grouped-conv (group, tap) pairs in new group order)."""
    rows_half = [c for p in pairs for c in (2 * p, 2 * p + 1)]
    rows = rows_half + [h + c for c in rows_half]
    sides = [ffn_groups(h, p) for p in pairs]
    return rows, [s[0] for s in sides] + [s[1] for s in sides]  # new group order: y3 pairs, then y5 pairs


def units(s: dict, stage: str, i: int, b: BlockConfig) -> list[Unit]:
    prefix, h, out = f"{stage}.{i}.ffn.", b.ffn_hidden, []
    for p in range(h // 2):
        rows, taps = ffn_slices(h, [p])
        total = sum(s[prefix + f"{n}.weight"][rows].sum() for n in ("project_in", "dwconv3x3", "dwconv5x5"))
        cols = [g for g, _, _, _ in taps]
        total += s[prefix + "project_out.weight"][:, cols + [h + g for g in cols]].sum()
        out.append(Unit("ffn", (stage, i), p, float(total)))
    return out


def remove_pair(plan: Plan, unit: Unit) -> bool:
    p = plan.blocks[unit.where]
    if not p.alive:
        return False
    if p.pairs is None:
        p.pairs = list(range(p.ffn_hidden // 2))
    if unit.index not in p.pairs or len(p.pairs) == 1:
        return False
    p.pairs.remove(unit.index)
    return True


def slice_entry(name: str, value: torch.Tensor, b: BlockConfig, p: BlockPlan) -> torch.Tensor | None:
    """The kept slice of a block's state entry ``name`` (``ffn.*``); None for entries outside the MSFN."""
    if not name.startswith("ffn."):
        return None
    if p.pairs is None:
        return value
    h = b.ffn_hidden
    rows, taps = ffn_slices(h, p.pairs)
    groups = [g for g, _, _, _ in taps]
    if name.startswith(("ffn.project_in", "ffn.dwconv3x3.", "ffn.dwconv5x5.")):
        return value[rows]
    if name.startswith(("ffn.dwconv3x3_1", "ffn.dwconv5x5_1")):  # grouped convs: one (group, tap) pair per group
        if name.endswith("bias"):
            return value[groups]
        return torch.stack([torch.stack([value[g0, t0], value[g1, t1]]) for g0, t0, g1, t1 in taps])
    if name == "ffn.project_out.weight":
        return value[:, groups + [h + g for g in groups]]
    return value  # project_out bias: the residual width
