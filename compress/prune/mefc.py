"""MEFC units: ``experts`` (one expert operation of one step with its column block of the step's 1x1 output
conv) and ``steps`` (a whole step with its router rows).

The router always scores all eight operations of a kept step and its softmax runs over all eight, so an
expert whose output is zero prunes exactly.
"""

from __future__ import annotations

from drsformer.config import NUM_EXPERT_OPS, MEFCConfig

from .plan import MEFCPlan, Plan, Unit


def units(s: dict, site: str, m: MEFCConfig) -> list[Unit]:
    """Experts and steps scored by their blocks of the steps' output convs."""
    out = []
    for step, ops in enumerate(m.ops):
        conv = s[f"{site}.layers.1._ops.{step}._out.0.weight"]
        c = conv.shape[0]
        out += [Unit("experts", (site, step), j, float(conv[:, n * c : (n + 1) * c].sum())) for n, j in enumerate(ops)]
        out.append(Unit("steps", (site,), step, float(conv.sum())))
    return out


def remove_expert(plan: Plan, unit: Unit) -> bool:
    site, step = unit.where
    ops = plan.mefc[site].ops[step]
    if step not in plan.mefc[site].steps or unit.index not in ops or len(ops) == 1:
        return False
    ops.remove(unit.index)
    return True


def remove_step(plan: Plan, unit: Unit) -> bool:
    steps = plan.mefc[unit.where[0]].steps
    if unit.index not in steps or len(steps) == 1:
        return False
    steps.remove(unit.index)
    return True


def slice_mefc(old: dict, site: str, p: MEFCPlan, m: MEFCConfig) -> dict:
    """The kept state entries of the MEFC at ``site``: router rows of kept steps, kept experts renumbered."""
    router_rows = [s * NUM_EXPERT_OPS + j for s in p.steps for j in range(NUM_EXPERT_OPS)]
    new = {}
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
                new[dst + rest] = value[:, [before.index(j) * c + i for j in kept for i in range(c)]].clone()
        else:
            new[key] = value.clone()
    return new
