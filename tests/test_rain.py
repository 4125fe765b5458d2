"""compress.rain: synthetic rain matches the Rain100L/H statistics and behaves like rain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compress.data import read_image
from compress.metrics import psnr_y
from compress.rain import add_rain, circular_blur, streak_kernels

BACKGROUNDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clean_backgrounds" / "cbsd68"


def test_circular_blur_equals_circularly_padded_conv():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 40, 36)
    k = torch.rand(3, 1, 9, 9)
    padded = F.pad(x.view(1, 3, 40, 36), (4, 4, 4, 4), mode="circular")
    direct = F.conv2d(padded, k.flip(-1, -2), groups=3).view(3, 1, 40, 36)  # conv2d correlates: flip for convolution
    assert torch.allclose(circular_blur(x, k), direct, atol=1e-5)


def test_streak_kernel_is_a_normalised_line_along_its_angle():
    k = streak_kernels(torch.tensor([21.0]), torch.tensor([1.0]), torch.tensor([0.0]), 31)[0, 0]
    assert torch.isclose(k.sum(), torch.tensor(1.0))
    column = k[:, 15]
    assert (column[5:26] > 0.1 * column.max()).all() and column[:4].max() < 1e-6  # vertical, length 21
    assert k[15, 12] < 1e-3 * k[15, 15]  # narrow across


@pytest.mark.parametrize("heaviness,low_db,high_db", [(0.0, 25.0, 28.5), (1.0, 11.5, 14.5)])
def test_presets_reach_rain100_input_psnr(heaviness, low_db, high_db):
    """Rain100L inputs score 26.90 dB against their targets, Rain100H 13.56 dB."""
    paths = sorted(BACKGROUNDS.glob("*.png"))[:16]
    if not paths:
        pytest.skip(f"{BACKGROUNDS} not found")
    gen = torch.Generator().manual_seed(0)
    scores = [psnr_y(add_rain(img[None], heaviness, gen), img[None]).item() for img in map(read_image, paths)]
    assert low_db < np.mean(scores) < high_db


def test_rain_is_grey_additive_and_reproducible():
    clean = torch.rand(4, 3, 64, 48) * 0.5
    heaviness = torch.tensor([0.0, 0.3, 0.7, 1.0])
    rainy = add_rain(clean, heaviness, torch.Generator().manual_seed(1))
    again = add_rain(clean, heaviness, torch.Generator().manual_seed(1))
    assert torch.equal(rainy, again)
    residual = rainy - clean
    assert (residual >= 0).all()
    unclipped = (rainy < 1).all(1)  # where no channel saturated, the streak adds the same to R, G and B
    for c in (1, 2):
        assert torch.allclose(residual[:, 0][unclipped], residual[:, c][unclipped], atol=1e-6)
    coverage = (residual[:, 0] > 0.05).float().mean((1, 2))
    assert coverage[0] < coverage[3]  # heavier rain covers more pixels
    with pytest.raises(ValueError, match=r"heaviness must lie in \[0, 1\]"):
        add_rain(clean, 1.5)
    with pytest.raises(ValueError, match="expected \\(B, 3, H, W\\)"):
        add_rain(clean[:, :1])
