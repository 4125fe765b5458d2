"""Structured pruning: exact for every unit type on zeroed units, budgets, reports, errors, round trip."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from compress.measure import count_macs, count_params, count_params_config
from compress.prune import UNITS, PruneError, PruneSpec, full_plan, prune, slice_model, width
from drsformer import DRSformer, DRSformerConfig
from drsformer.config import BlockConfig, LevelConfig, MEFCConfig
from drsformer.wiring import WIRING


def even_config(bias: bool = False) -> DRSformerConfig:
    """Two blocks in the first level, two heads, even MSFN widths (exact pair pruning), small MEFCs."""
    blocks = (BlockConfig(2, 4, 8), BlockConfig(2, 4, 6))
    return DRSformerConfig(
        levels=(
            LevelConfig(8, blocks),
            LevelConfig(8, (BlockConfig(2, 4, 8),)),
            LevelConfig(8, (BlockConfig(2, 2, 4),)),
            LevelConfig(8, (BlockConfig(2, 2, 4),)),
            LevelConfig(8, (BlockConfig(2, 2, 4),)),
            LevelConfig(8, (BlockConfig(2, 2, 4),)),
            LevelConfig(12, (BlockConfig(2, 3, 6),)),
        ),
        up_widths=(4, 4, 4),
        encoder_mefc=MEFCConfig(ops=((0, 4, 7), (1, 5), (2, 6)), router_hidden=8),
        refinement_mefc=MEFCConfig(ops=((3, 7),), router_hidden=8),
        bias=bias,
    )


def model_of(config: DRSformerConfig) -> DRSformer:
    torch.manual_seed(0)
    return DRSformer(config).double().eval()


def same_output(teacher: DRSformer, student: DRSformer) -> float:
    x = torch.rand(1, 3, 24, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (teacher(x) - student.double()(x)).abs().max().item()


def zero_(t: torch.Tensor, index=slice(None)) -> None:
    """``t[index] = 0`` in place (advanced indexing would zero a copy)."""
    with torch.no_grad():
        t[index] = 0


def test_pruning_nothing_is_the_identity():
    teacher = model_of(even_config())
    student, _ = prune(teacher, PruneSpec(list(UNITS), ratios={kind: 0.0 for kind in UNITS}))
    assert student.config == teacher.config
    assert same_output(teacher, student) == 0.0
    student, _ = prune(teacher, PruneSpec(list(UNITS), target_macs=1.0))
    assert student.config == teacher.config


@pytest.mark.parametrize("bias", [False, True])
def test_zeroed_units_prune_exactly(bias):
    teacher = model_of(even_config(bias))
    blocks = [b for stage in ("encoder_level1", "encoder_level2", "encoder_level3", "latent", "decoder_level3",
                              "decoder_level2", "decoder_level1") for b in getattr(teacher, stage)]  # fmt: skip
    for block in blocks:  # head 1 of every block contributes nothing
        d = block.attn.head_dim
        zero_(block.attn.project_out.weight, (slice(None), slice(d, None)))
        h = block.ffn.hidden
        if h == 8:  # ffn ratio 0.25 removes one of 4 pairs; pair 1 = channels 2, 3 of each half, outputs 1, 5
            zero_(block.ffn.project_out.weight, (slice(None), [1, 5, h + 1, h + 5]))
            for conv in (block.ffn.project_in, block.ffn.dwconv3x3, block.ffn.dwconv5x5):
                zero_(conv.weight, [2, 3, h + 2, h + 3])
    second = teacher.encoder_level1[1]  # block 1 of the level: both residual branches zero
    zero_(second.attn.project_out.weight), zero_(second.ffn.project_out.weight)
    steps = teacher.encoder_level0.layers[1]._ops
    zero_(steps[0]._out[0].weight, (slice(None), slice(8, 16)))  # expert op 4 of step 0
    zero_(steps[2]._out[0].weight)  # step 2 contributes nothing
    if bias:
        zero_(second.attn.project_out.bias), zero_(second.ffn.project_out.bias)
    for kind, ratio in (("heads", 0.5), ("ffn", 0.25), ("blocks", 0.5), ("experts", 0.34), ("steps", 0.34)):
        student, report = prune(teacher, PruneSpec([kind], criterion="l1", ratios={kind: ratio}))
        assert student.config != teacher.config, kind
        assert count_params(student) < count_params(teacher), kind
        assert same_output(teacher, student) < 1e-12, kind
    student, _ = prune(teacher, PruneSpec(["heads"], ratios={"heads": 0.5}))
    assert student.config.levels[0].blocks[0].heads == 1
    student, _ = prune(teacher, PruneSpec(["experts"], ratios={"experts": 0.34}))
    assert student.config.encoder_mefc.ops[0] == (0, 7)


def test_head_channels_and_odd_msfn_prune_to_a_working_network():
    teacher = model_of(DRSformerConfig.preset("tiny"))  # odd MSFN widths (21, 42, 85, 170)
    student, _ = prune(teacher, PruneSpec(["head_channels", "ffn"], ratios={"head_channels": 0.5, "ffn": 0.5}))
    first = student.config.levels[0].blocks[0]
    assert (first.head_dim, first.ffn_hidden) == (4, 10)  # 8 -> 4 channels per head; 10 of 21 pairs kept -> 2x5
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    assert torch.isfinite(student.double()(x)).all()


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "random"])
def test_global_budget_is_met_and_reported(criterion, tmp_path):
    teacher = DRSformer(DRSformerConfig.preset("tiny"))
    calibration = [(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))]
    student, report = prune(teacher, PruneSpec(["head_channels", "ffn", "experts"], criterion, target_macs=0.5),
                            calibration)
    kept = count_macs(student.config) / count_macs(teacher.config)
    assert 0.4 < kept <= 0.5
    assert report.student_config == student.config
    assert [row["part"] for row in report.rows()][:2] == ["encoder_level1", "encoder_level2"]
    student.save_pretrained(tmp_path)
    again = DRSformer.from_pretrained(tmp_path)
    assert count_params(again) == count_params(student)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(again(x), student(x))


def test_params_budget_and_the_analytic_parameter_count():
    teacher = DRSformer(DRSformerConfig.preset("tiny"))
    student, _ = prune(teacher, PruneSpec(["ffn", "heads"], "l2", target_params=0.6))
    assert count_params(student) <= 0.6 * count_params(teacher)
    for config in (DRSformerConfig.preset("full"), even_config(bias=True), student.config):
        with torch.device("meta"):
            assert count_params_config(config) == count_params(DRSformer(config))


def test_bad_requests_are_clear_errors():
    teacher = DRSformer(DRSformerConfig.preset("tiny"))
    with pytest.raises(PruneError, match="unknown unit"):
        prune(teacher, PruneSpec(["channels"], ratios={"channels": 0.5}))
    with pytest.raises(PruneError, match=r"ratios.ffn: 1.0 is outside \[0, 1\)"):
        prune(teacher, PruneSpec(["ffn"], ratios={"ffn": 1.0}))
    with pytest.raises(PruneError, match="cannot be met"):
        prune(teacher, PruneSpec(["heads"], target_macs=0.1))
    with pytest.raises(PruneError, match="taylor needs calibration"):
        prune(teacher, PruneSpec(["ffn"], "taylor", target_macs=0.5))
    with pytest.raises(PruneError, match="exactly one of target_macs and target_params"):
        prune(teacher, PruneSpec(["ffn"], target_macs=0.5, target_params=0.5))
    with pytest.raises(PruneError, match="criterion"):
        prune(teacher, PruneSpec(["ffn"], "l3", target_macs=0.5))
    with pytest.raises(PruneError, match=r"max_ratio: 0.0 is outside \(0, 1\]"):
        prune(teacher, PruneSpec(["ffn"], target_macs=0.5, max_ratio=0.0))
    with pytest.raises(PruneError, match="raise prune.max_ratio"):
        prune(teacher, PruneSpec(["width"], target_macs=0.5, max_ratio=0.25))


def test_max_ratio_caps_every_family_of_a_global_budget():
    teacher = model_of(DRSformerConfig.preset("tiny"))
    free, _ = prune(teacher, PruneSpec(["width", "experts"], target_macs=0.5))
    capped, _ = prune(teacher, PruneSpec(["width", "experts"], target_macs=0.5, max_ratio=0.5))
    assert free.config.levels[0].width == 2  # uncapped, the per-MAC ranking empties the full-resolution stream
    assert capped.config.levels[0].width >= 4 and min(len(o) for o in capped.config.refinement_mefc.ops) >= 4
    assert count_macs(capped.config) <= 0.5 * count_macs(teacher.config)


def _norm_over(kept: list[int]):
    """A LayerNorm forward that normalises over the ``kept`` channels only and outputs 0 elsewhere."""

    def forward(self, x):
        y = torch.zeros_like(x)
        part = x[:, kept].permute(0, 2, 3, 1)
        normed = torch.nn.functional.layer_norm(part, part.shape[-1:], self.body.weight[kept], self.body.bias[kept])
        y[:, kept] = normed.permute(0, 3, 1, 2)
        return y

    return forward


@pytest.mark.parametrize("bias", [False, True])
def test_zeroed_residual_channels_prune_exactly(bias):
    """Width pruning, checked against the teacher with the removed channels zeroed by hand (every writer of
    each stream listed below, independently of prune.py) and LayerNorms that see only the kept channels."""
    teacher = model_of(even_config(bias))
    removed = {"encoder_level1": [1, 6], "encoder_level2": [1], "latent": [0], "up4_3": [2], "decoder_level3": [5],
               "decoder_level2": [0, 3], "up2_1": [1]}  # fmt: skip
    # stream channels: unshuffled streams lose a group of 4; decoder_level1 = cat[up2_1 (4), encoder_level1 (8)]
    channels = {seg: [c for u in units for c in range(4 * u, 4 * u + 4)] if seg in ("encoder_level2", "latent")
                else units for seg, units in removed.items()}  # fmt: skip
    channels["decoder_level1"] = channels["up2_1"] + [4 + c for c in channels["encoder_level1"]]

    def zero_rows(module, rows):
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                zero_(getattr(module, name), rows)

    def zero_mefc(mefc, rows):
        steps = mefc.layers[1]
        zero_rows(steps.preprocess.op[0], rows)
        for step in steps._ops:
            zero_rows(step._out[0], rows)
            for layer in step._ops.modules():
                if isinstance(layer, torch.nn.Conv2d) and layer.groups == 1:  # the experts' 1x1 convs
                    zero_rows(layer, rows)

    with torch.no_grad():
        zero_rows(teacher.patch_embed.proj, channels["encoder_level1"])
        zero_mefc(teacher.encoder_level0, channels["encoder_level1"])
        zero_mefc(teacher.refinement, channels["decoder_level1"])
        zero_rows(teacher.down1_2.body[0], removed["encoder_level2"])  # conv row g -> channels 4g..4g+3
        zero_rows(teacher.down3_4.body[0], removed["latent"])
        zero_rows(teacher.up4_3.body[0], [4 * c + t for c in removed["up4_3"] for t in range(4)])  # PixelShuffle
        zero_rows(teacher.up2_1.body[0], [4 * c + t for c in removed["up2_1"] for t in range(4)])
        zero_rows(teacher.reduce_chan_level3, channels["decoder_level3"])
        zero_rows(teacher.reduce_chan_level2, channels["decoder_level2"])
        for stage, rows in channels.items():
            if stage.startswith("up"):
                continue
            for block in getattr(teacher, stage):
                zero_rows(block.attn.project_out, rows)
                zero_rows(block.ffn.project_out, rows)
                for norm in (block.norm1, block.norm2):
                    width = norm.body.weight.shape[0]
                    kept = [c for c in range(width) if c not in rows]
                    norm.forward = _norm_over(kept).__get__(norm)

    plan = full_plan(teacher.config)
    for seg, units in removed.items():
        plan.widths[seg] = [u for u in plan.widths[seg] if u not in units]
    student = slice_model(teacher, plan)
    widths = [level.width for level in student.config.levels]
    assert widths == [6, 4, 8, 4, 7, 6, 9] and student.config.up_widths == (3, 4, 3)
    assert count_params(student) == count_params_config(student.config)
    assert same_output(teacher, student) < 1e-12
    # the real LayerNorm changes the output (the documented approximation), but only a little here
    assert same_output(model_of(even_config(bias)), student) > 1e-6


@pytest.mark.parametrize("preset", ["tiny_nomefc", "small", "study"])
def test_width_coupling_covers_every_state_entry(preset):
    """The coupling (from the wiring) names an owner for every index of every stream-carrying dimension, and
    each width unit of a stream is written by exactly one conv row block: its writer's."""
    config = DRSformerConfig.preset(preset)
    owners = width.owners(config)
    written = Counter()
    for key, value in DRSformer(config).state_dict().items():
        for dim, own in width.coupling(key, value.shape, owners).items():
            assert len(own) == value.shape[dim], key
            if dim == 0 and key.split(".")[0] in {s.module for s in WIRING if s.kind in ("embed", "down", "up")}:
                written.update(own)
    for stream in ("encoder_level1", "encoder_level2", "up4_3"):
        per_unit = {n for (s, _), n in written.items() if s == stream}
        assert per_unit and len(per_unit) == 1, stream  # every unit the same number of rows (4 for up4_3)
    with pytest.raises(PruneError, match="no width coupling known"):
        width.coupling("mystery.weight", torch.Size([1]), owners)


def test_width_budget_prunes_every_stream_and_round_trips(tmp_path):
    teacher = model_of(DRSformerConfig.preset("tiny"))
    student, report = prune(teacher, PruneSpec(["width"], ratios={"width": 0.5}))
    assert [level.width for level in student.config.levels] == [4, 8, 16, 32, 16, 8, 8]
    assert student.config.up_widths == (16, 8, 4)
    assert [row["width"] for row in report.rows()][:2] == ["8 -> 4", "16 -> 8"]
    student, _ = prune(teacher, PruneSpec(["width", "ffn", "experts"], "taylor", target_macs=0.5),
                       [(torch.rand(1, 3, 32, 32, dtype=torch.float64),) * 2])
    assert count_macs(student.config) <= 0.5 * count_macs(teacher.config)
    student.save_pretrained(tmp_path)
    again = DRSformer.from_pretrained(tmp_path).double()
    x = torch.rand(1, 3, 20, 28, dtype=torch.float64)
    assert torch.equal(again(x), student.double()(x)) and torch.isfinite(again(x)).all()
