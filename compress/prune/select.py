"""Selection: which units a plan removes, by per-family ratios or by a global MACs/parameter budget."""

from __future__ import annotations

import math
from collections import Counter

from compress.measure import count_macs, count_params_config
from drsformer import DRSformerConfig

from . import attention, blocks, mefc, msfn, width
from .plan import Plan, PruneError, Unit, full_plan, plan_config

# One removal per unit kind: applied to a plan if the result is still a valid network, True if applied.
REMOVE = {
    "head_channels": attention.remove_head_channel,
    "heads": attention.remove_head,
    "ffn": msfn.remove_pair,
    "experts": mefc.remove_expert,
    "steps": mefc.remove_step,
    "blocks": blocks.remove_block,
    "width": width.remove_width,
}
UNITS = tuple(REMOVE)


def _cost_fn(kind: str, size: int):
    """The budgeted quantity of a config: MACs at ``size`` x ``size`` or parameters."""
    if kind == "macs":
        return lambda config: count_macs(config, size, size)
    return count_params_config


def select(
    config: DRSformerConfig,
    units: list[Unit],
    kinds: list[str],
    *,
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
                REMOVE[u.kind](plan, u)
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
        cost[id(u)] = full - measure(plan_config(config, trial)) if REMOVE[u.kind](trial, u) else 0
    mean_cost = sum(cost.values()) / max(1, len(cost))
    order = sorted(candidates, key=lambda u: u.score / max(cost[id(u)] / mean_cost, 1e-9))
    current = full
    for u in order:
        if current <= budget:
            break
        family = (u.kind, u.where)
        if removed[family] + 1 > max_ratio * family_size[family]:
            continue
        if REMOVE[u.kind](plan, u):
            removed[family] += 1
            current = measure(plan_config(config, plan))
    if current > budget:
        raise PruneError(
            f"prune.target_{kind}: {target} cannot be met by removing {kinds} "
            f"(reached {current / full:.3f}); add unit kinds, raise the target or raise prune.max_ratio"
        )
    return plan
