"""Tiled inference computes the whole image's output (drsformer.tiling)."""

from __future__ import annotations

import pytest
import torch

from compress.prune import PruneSpec, prune
from drsformer import DRSformer, DRSformerConfig
from drsformer import tiling as T
from drsformer.model import Attention, FeedForward, TransformerBlock


def random_model(preset: str = "tiny", seed: int = 0) -> DRSformer:
    torch.manual_seed(seed)
    model = DRSformer(DRSformerConfig.preset(preset)).eval()
    with torch.no_grad():  # a residual large enough that any tiling error would show
        model.output.weight.mul_(5)
    return model


@pytest.mark.parametrize("preset", ["tiny", "tiny_nomefc"])
def test_tiles_smaller_than_every_level_give_the_whole_image_output(preset):
    model = random_model(preset)
    x = torch.rand(2, 3, 75, 101, generator=torch.Generator().manual_seed(1))  # odd size: padded to 80 x 104
    with torch.no_grad():
        whole = model(x)
    for tile in (8, 24):  # the latent level is 10 x 13: tiled there too
        assert torch.allclose(T.tiled_forward(model, x, tile), whole, atol=1e-5)
    assert torch.allclose(T.tiled_forward(model, x, tile=4096), whole, atol=1e-6)  # one tile per level


def test_a_pruned_student_tiles_exactly():
    teacher = random_model()
    student, _ = prune(teacher, PruneSpec(["head_channels", "ffn", "experts"], target_macs=0.5))
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        whole = student(x)
    assert torch.allclose(T.tiled_forward(student.eval(), x, 16), whole, atol=1e-5)


def test_without_the_halo_or_the_whole_image_sums_tiles_differ(monkeypatch):
    """The two things that make tiles exact, each removed in turn, change the output: the test above
    would catch a wrong halo or per-tile attention statistics."""
    model = random_model()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model(x)
    monkeypatch.setattr(T, "radius", lambda module: 0)
    assert (T.tiled_forward(model, x, 16) - whole).abs().max() > 1e-3
    monkeypatch.undo()

    def per_tile_block(block, x, tile):  # the block run on each tile alone (with halo): per-tile statistics
        return T.local(block.__class__.forward.__get__(block), x, tile, halo=8)

    monkeypatch.setattr(T, "tiled_block", per_tile_block)
    assert (T.tiled_forward(model, x, 16) - whole).abs().max() > 1e-3


def test_radius_of_the_block_parts():
    assert T.radius(Attention(8, 2, 4, False)) == 1  # the 3x3 depthwise conv after qkv
    assert T.radius(FeedForward(8, 10, False)) == 6  # 3x3 + 5x5 branches, then 3x3 + 5x5: bound 1+2+1+2
    model = random_model()
    step = model.encoder_level0.layers[1]._ops[0]
    assert max(T.radius(op) for op in step._ops.values()) == 6  # sep 7x7 twice, or 7x7 dilated 2


def test_the_model_is_restored_after_tiling_even_on_error():
    model = random_model()
    blocks = [m for m in model.modules() if isinstance(m, TransformerBlock)]
    with pytest.raises(RuntimeError), T.tiled(model, 16):
        assert all("forward" in vars(b) for b in blocks)
        model(torch.rand(1, 5, 16, 16))  # wrong channel count
    assert not any("forward" in vars(m) for m in model.modules())
    with pytest.raises(ValueError, match="positive"):
        T.tiled_forward(model, torch.rand(1, 3, 16, 16), tile=0)


def test_windows_cover_the_image_once_with_their_halo():
    seen = torch.zeros(37, 50, dtype=torch.int64)
    for core, window, inner in T.windows(37, 50, tile=16, halo=3):
        seen[core] += 1
        assert window[0].start == max(core[0].start - 3, 0) and window[1].stop == min(core[1].stop + 3, 50)
        assert inner[0].stop - inner[0].start == core[0].stop - core[0].start
    assert seen.eq(1).all()


def test_bfloat16_tiles_run_and_agree_to_bfloat16_precision():
    model = random_model().to(torch.bfloat16)
    x = torch.rand(1, 3, 64, 80).to(torch.bfloat16)
    with torch.no_grad():
        whole = model(x)
    tiled = T.tiled_forward(model, x, 16)  # attention sums accumulate in fp32, the logits return to bf16
    assert tiled.dtype == torch.bfloat16
    assert (tiled.float() - whole.float()).abs().max() < 0.05
