"""Slicing: the kept slices of a network's weights copied into ``DRSformer(plan_config(...))``, loaded strictly."""

from __future__ import annotations

from dataclasses import replace

from drsformer import DRSformer
from drsformer.config import STAGES
from drsformer.model import load_strict

from . import attention, mefc, msfn, width
from .plan import Plan, full_plan, mefcs, plan_config


def slice_model(model: DRSformer, plan: Plan) -> DRSformer:
    """``DRSformer(plan_config(...))`` holding the kept slices of ``model``'s weights (loaded strictly): first
    heads, channels, MSFN pairs, blocks and experts, then the residual widths of that network."""
    old = {k: v.detach() for k, v in model.state_dict().items()}
    sites = mefcs(model.config)
    new = {}
    for key, value in old.items():
        stage, rest = key.split(".", 1)
        if not (stage in STAGES and rest.split(".")[0].isdigit()) and stage not in sites:
            new[key] = value  # neither a block nor a MEFC: untouched before the widths
    for stage, level in zip(STAGES, model.config.levels):
        alive = [i for i in range(len(level.blocks)) if plan.blocks[stage, i].alive]
        for j, i in enumerate(alive):  # block j of the student is the j-th kept block
            b, p, src = level.blocks[i], plan.blocks[stage, i], f"{stage}.{i}."
            for key, value in old.items():
                if key.startswith(src):
                    name = key[len(src) :]
                    kept = attention.slice_entry(name, value, b, p)
                    kept = msfn.slice_entry(name, value, b, p) if kept is None else kept
                    new[f"{stage}.{j}.{name}"] = (value if kept is None else kept).clone()  # None: the norms
    for site, p in plan.mefc.items():
        new.update(mefc.slice_mefc(old, site, p, sites[site]))
    all_widths = full_plan(model.config).widths
    if plan.widths != all_widths:
        new = width.slice_widths(new, plan_config(model.config, replace(plan, widths=all_widths)), plan.widths)
    student = DRSformer(plan_config(model.config, plan))
    load_strict(student, new, origin="pruned state")
    return student
