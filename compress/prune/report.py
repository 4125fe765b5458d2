"""What a pruning did: the table of every stage and MEFC (teacher -> student) and the maps distillation needs
(``kept_channels`` per stream-carrying module output, ``kept_attention`` per TKSA)."""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.measure import count_macs, macs_by_part
from drsformer import DRSformerConfig
from drsformer.config import STAGES
from drsformer.wiring import MEFC_FIELDS, mefc_config

from .plan import Plan, full_plan


def kept_attention(
    config: DRSformerConfig, plan: Plan | None = None
) -> dict[str, tuple[str, list[int], list[list[int]]]]:
    """For every student TKSA path: (the teacher's TKSA path it was cut from, the teacher heads it kept, per
    kept head the teacher channels it kept). Student block j of a stage is the j-th kept teacher block.
    Without a plan: the map of the unpruned network onto itself."""
    plan = full_plan(config) if plan is None else plan
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
    kept_channels: dict[str, list[int]] = field(default_factory=dict)  # see ``width.kept_channels()``
    kept_attention: dict[str, tuple[str, list[int], list[list[int]]]] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """Per stage: residual width, blocks, heads, head width, MSFN width and MACs, teacher -> student; per
        MEFC: steps and experts per step."""
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
        for site in MEFC_FIELDS:
            t, s = mefc_config(self.teacher_config, site), mefc_config(self.student_config, site)
            if t is not None:
                rows.append(
                    {
                        "part": f"{site} (MEFC)",
                        "width": "",
                        "blocks": f"{t.steps} -> {s.steps} steps",
                        "heads": "experts per step "
                        + f"{'/'.join(str(len(o)) for o in t.ops)} -> {'/'.join(str(len(o)) for o in s.ops)}",
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
