"""Block units: ``blocks``, a whole transformer block (STB) of a stage; the stage's later blocks move up."""

from __future__ import annotations

from drsformer.config import BlockConfig

from .plan import Plan, Unit


def units(s: dict, stage: str, i: int, b: BlockConfig) -> list[Unit]:
    """A block is scored by its two residual writers (the TKSA and MSFN project_out convs)."""
    prefix = f"{stage}.{i}."
    score = s[prefix + "attn.project_out.weight"].sum() + s[prefix + "ffn.project_out.weight"].sum()
    return [Unit("blocks", (stage,), i, float(score))]


def remove_block(plan: Plan, unit: Unit) -> bool:
    p = plan.blocks[unit.where[0], unit.index]
    if not p.alive:
        return False
    p.alive = False
    return True
