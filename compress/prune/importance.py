"""Importance: per-weight scores by criterion (after torch-pruning's ``MagnitudeImportance`` p=1/p=2, first-order
``TaylorImportance`` |w * dL/dw| and ``RandomImportance``), summed over each unit's weight slices and
normalised by the mean of its family (same kind, same place), so that families of different sizes compare."""

from __future__ import annotations

import torch

from drsformer import DRSformer
from drsformer.config import STAGES

from . import attention, blocks, mefc, msfn, width
from .plan import PruneError, Unit, mefcs

CRITERIA = ("l1", "l2", "taylor", "random")


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


def rank_units(model: DRSformer, scores: dict) -> list[Unit]:
    """Every prunable unit of ``model`` with its importance normalised by the mean of its family."""
    units = []
    for stage, level in zip(STAGES, model.config.levels):
        for i, b in enumerate(level.blocks):
            units += attention.units(scores, stage, i, b) + msfn.units(scores, stage, i, b)
            units += blocks.units(scores, stage, i, b)
    for site, m in mefcs(model.config).items():
        units += mefc.units(scores, site, m)
    units += width.units(scores, model.config)
    families: dict[tuple, list[Unit]] = {}
    for u in units:
        families.setdefault((u.kind, u.where), []).append(u)
    for family in families.values():
        mean = sum(u.score for u in family) / len(family)
        for u in family:
            u.score = u.score / mean if mean > 0 else 0.0
    return units
