"""Structured pruning of DRSformer into a smaller ``DRSformer(config)``.

Units, alone or together (one module each, with its ranking, its removal and its slicing):
``head_channels`` and ``heads`` (``attention``), ``ffn`` (``msfn``), ``experts`` and ``steps`` (``mefc``),
``blocks`` (``blocks``) and ``width`` (``width``, with the coupling of every residual stream). ``plan``
holds what is kept, ``importance`` scores units, ``select`` picks them (ratios or a global budget),
``slicing`` copies the kept weights, ``report`` says what went where.

Why not torch-pruning's DepGraph: on DRSformer its tracer fails (IndexError in MSFN/TKSA, no PixelShuffle
pruner) and needs ~18 GB on the whole model (``../shared/INSTALL.md``). The coupling of each unit is known
exactly here (``drsformer.wiring``), so units are ranked on their own weight slices with torch-pruning's
importance definitions and the kept slices are loaded strictly into ``DRSformer(smaller_config)``.

Exactness: pruning nothing returns the same network; heads, MSFN pairs (even hidden width), experts, steps
and blocks whose weights are zero prune without changing the output (tested). The approximations, by the
nature of the network, are stated in ``attention``, ``msfn`` and ``width``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drsformer import DRSformer

from .importance import CRITERIA, rank_units, weight_scores
from .plan import Plan, PruneError, full_plan, plan_config
from .report import PruneReport, kept_attention
from .select import UNITS, select
from .slicing import slice_model
from .width import kept_channels

__all__ = ["CRITERIA", "UNITS", "Plan", "PruneError", "PruneReport", "PruneSpec", "full_plan", "kept_attention",
           "kept_channels", "plan_config", "prune", "rank_units", "select", "slice_model", "weight_scores"]  # fmt: skip


@dataclass
class PruneSpec:
    """What to prune: the unit kinds, the criterion and one of ``ratios`` (per kind, the share removed in
    every family), ``target_macs`` (keep at most this share of the MACs at 256x256, global ranking) or
    ``target_params``; with a global target ``max_ratio`` caps the share removed from any one family. The
    recipe's ``prune:`` section has the same fields."""

    units: list[str]
    criterion: str = "l1"
    ratios: dict[str, float] | None = None
    target_macs: float | None = None
    target_params: float | None = None
    max_ratio: float = 1.0


def prune(model: DRSformer, spec: PruneSpec, calibration: list[tuple[torch.Tensor, torch.Tensor]] = ()
          ) -> tuple[DRSformer, PruneReport]:  # fmt: skip
    """A smaller ``DRSformer(config)`` derived from ``model`` by ``spec`` (a ``PruneSpec`` or the recipe's
    ``prune`` section) and the report of what went where; ``calibration`` pairs feed the taylor criterion."""
    if not spec.units:
        raise PruneError("prune.units: empty; choose from " + ", ".join(UNITS))
    ranked = rank_units(model, weight_scores(model, spec.criterion, calibration))
    plan = select(model.config, ranked, list(spec.units), ratios=spec.ratios or None, target_macs=spec.target_macs,
                  target_params=spec.target_params, max_ratio=spec.max_ratio)  # fmt: skip
    student = slice_model(model, plan)
    report = PruneReport(spec.criterion, list(spec.units), model.config, student.config,
                         kept_channels=kept_channels(model.config, plan),
                         kept_attention=kept_attention(model.config, plan))  # fmt: skip
    return student, report
