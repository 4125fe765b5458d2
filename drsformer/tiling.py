"""Tiled inference that computes the whole image's output with bounded working memory.

Cutting the image into tiles and running the network on each does not compute DRSformer: TKSA
normalises q and k over the whole image and sums q_i * k_j over it, and the MEFC router averages its
input over the whole image, so every tile would attend and route as if it were the image (CPU teacher,
128 px tiles overlapping by 32: +0.13 dB on Rain100H, 0.78 dB on one image, ``benchmarks/tiling.py``).

Here the network runs layer by layer on the whole image, and only the inside of each transformer block
and each MEFC step, where the memory goes (3x-width qkv, 5x-width MSFN, expert features), runs tile by
tile. Each tile reads its neighbours' pixels as far as the layer's receptive radius (the overlap,
derived from the layer's convolutions), so tiles are exact. The attention's reduction over the image
becomes sums over tiles: one pass over the tiles accumulates sum q_i k_j, sum q_i^2 and sum k_j^2 per head
(the cosine logits are these sums divided by the norms), a second pass applies the attention. The
router pools its input, which is whole at that point. The maths is the whole-image forward's; only the
float rounding of the attention sums differs (the price is computing q and k twice per block). That
rounding can matter: the whole-image fp32 forward sums q_i k_j over ~150k pixels in long fp32 dot
products, whose rounding can flip a top-k choice on a near-tie, and a flip propagates. Against an fp64
forward of the full model (random weights) on a Rain100H image, the tiled fp32 output is within 2e-7 and
the whole-image fp32 output 4e-3 (``benchmarks/tiling.py --fp64-preset``).

Working memory is the residual stream and skip tensors of the whole image (the U-Net's width per
pixel, 48-96 floats per full-resolution pixel for the official model) plus one tile's block
internals; the convs between blocks (patch embedding, resampling, channel reduction, output) run on
the whole image, their outputs being no wider than the stream (the memory saved is measured in
``results/bench/tiling_rain100H.json``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .model import MEFC, TransformerBlock

EPS = 1e-12  # F.normalize's eps


def radius(module: nn.Module) -> int:
    """How far (pixels) the module's output reads its input: the sum over its same-size convolutions and
    poolings of dilation * (kernel - 1) / 2. Exact for a chain, an upper bound for parallel branches."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            total += m.dilation[0] * (m.kernel_size[0] - 1) // 2
        elif isinstance(m, nn.AvgPool2d):
            total += (m.kernel_size - 1) // 2
    return total


def windows(height: int, width: int, tile: int, halo: int) -> Iterator[tuple[tuple[slice, slice], ...]]:
    """(core, window, core inside window) slices for non-overlapping ``tile`` x ``tile`` cores, each read
    with ``halo`` pixels of its neighbours (less at the image border, where the image's padding applies)."""
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(bottom + halo, height), min(right + halo, width)
            core = (slice(top, bottom), slice(left, right))
            inner = (slice(top - y0, bottom - y0), slice(left - x0, right - x0))
            yield core, (slice(y0, y1), slice(x0, x1)), inner


def local(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, halo: int) -> torch.Tensor:
    """``fn(x)`` computed tile by tile, for an ``fn`` that keeps the image size and reads ``halo`` pixels."""
    out = None
    for core, window, inner in windows(*x.shape[-2:], tile, halo):
        y = fn(x[..., window[0], window[1]])[..., inner[0], inner[1]]
        if out is None:
            out = y.new_empty(*y.shape[:2], *x.shape[-2:])
        out[..., core[0], core[1]] = y
    return out


def _crop(t: torch.Tensor, size: tuple[int, int], inner: tuple[slice, slice]) -> torch.Tensor:
    """Flattened (..., h*w) of a window -> flattened core pixels."""
    return t.unflatten(-1, size)[..., inner[0], inner[1]].flatten(-2)


def tiled_block(block: TransformerBlock, x: torch.Tensor, tile: int) -> torch.Tensor:
    """``block(x)`` with TKSA's whole-image sums accumulated over tiles."""
    attn = block.attn
    halo = radius(attn)
    qk = qq = kk = 0
    for _, window, inner in windows(*x.shape[-2:], tile, halo):
        xw = x[..., window[0], window[1]]
        q, k, _ = attn.heads(block.norm1(xw))
        q, k = (_crop(t, xw.shape[-2:], inner).float() for t in (q, k))  # sums over many tiles: fp32
        with torch.autocast(x.device.type, enabled=False):  # fp32 logits, as Attention.channel_logits
            qk = qk + q @ k.transpose(-2, -1)
        qq, kk = qq + q.square().sum(-1), kk + k.square().sum(-1)
    logits = qk / (qq.sqrt().clamp_min(EPS)[..., :, None] * kk.sqrt().clamp_min(EPS)[..., None, :])

    def attend(xw: torch.Tensor) -> torch.Tensor:
        return attn.attend(logits, attn.heads(block.norm1(xw))[2], *xw.shape[-2:])

    x = local(attend, x, tile, halo).add_(x)
    return local(lambda xw: block.ffn(block.norm2(xw)), x, tile, radius(block.ffn)).add_(x)


def tiled_mefc(mefc: MEFC, x: torch.Tensor, tile: int) -> torch.Tensor:
    """``mefc(x)``: the router pools the whole input, then every expert step runs tile by tile."""
    router, steps = mefc.layers
    weights = router(x).softmax(-1)
    s = steps.preprocess(x)
    for i, step in enumerate(steps._ops):
        halo = max(radius(op) for op in step._ops.values())
        s = local(lambda sw, i=i, step=step: F.relu(step(sw, weights[:, i]) + sw), s, tile, halo)
    return s


@contextlib.contextmanager
def tiled(model: nn.Module, tile: int | None):
    """Inside, ``model(x)`` runs every transformer block and MEFC of ``model`` tile by tile (``tile`` pixels
    of the level it runs at); ``tile=None`` leaves the model alone."""
    if tile is not None and tile <= 0:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    patched = []
    if tile is not None:
        for module in model.modules():
            if isinstance(module, TransformerBlock):
                module.forward = lambda x, m=module: tiled_block(m, x, tile)
            elif isinstance(module, MEFC):
                module.forward = lambda x, m=module: tiled_mefc(m, x, tile)
            else:
                continue
            patched.append(module)
    try:
        yield model
    finally:
        for module in patched:  # drop the instance attribute: the class's forward is back
            del module.forward


@torch.no_grad()
def tiled_forward(model: nn.Module, image: torch.Tensor, tile: int = 256) -> torch.Tensor:
    """``model(image)`` with block internals computed on ``tile`` x ``tile`` tiles (module docstring)."""
    with tiled(model, tile):
        return model(image)
