"""Model size and compute: parameters and multiply-accumulates (MACs), the one counter the project uses.

MACs are counted analytically from a ``DRSformerConfig`` with fvcore's conventions, the ones behind
the paper's "242.9G FLOPs" (which are MACs): every convolution (k*k*C_in/groups MACs per output value),
the router's linear layers, and the five attention matmuls of each TKSA (q @ k^T and the four
branch products attn_r @ v, each heads * c * c * H * W). Element-wise work, softmax, top-k, norms and
pooling are not counted (fvcore adds about C*H*W for the router's global pooling: < 0.01 G at 256x256).

Why analytic and not ``torch.utils.flop_counter.FlopCounterMode`` on a forward: the fast forward does
the four branch products as one matmul, so tracing it would under-count against the official numbers;
and the pruner needs the MACs of thousands of candidate configs, which a formula gives in microseconds.
The formula is checked against ``FlopCounterMode`` on the literal official forward in the tests.
"""

from __future__ import annotations

import torch
from torch import nn

from drsformer import EXPERT_OPS, STAGES, BlockConfig, DRSformerConfig, MEFCConfig
from drsformer.model import PAD_MULTIPLE


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def block_macs(width: int, block: BlockConfig, pixels: int) -> int:
    """One STB at ``pixels`` = H*W: TKSA convs + five attention matmuls + MSFN."""
    a, hid = block.attn_dim, block.ffn_hidden
    attn = width * 3 * a + 3 * a * 9 + a * width + 5 * block.heads * block.head_dim**2
    ffn = width * 2 * hid + 2 * hid * (9 + 25) + hid * 2 * (9 + 25) + 2 * hid * width
    return (attn + ffn) * pixels


def mefc_macs(c: int, cfg: MEFCConfig, pixels: int) -> int:
    router = c * cfg.router_hidden + cfg.router_hidden * cfg.steps * len(EXPERT_OPS)
    per_pixel = c * c  # preprocess 1x1
    for ops in cfg.ops:
        for j in ops:
            kind, k, _ = EXPERT_OPS[j]
            if kind == "sep":
                per_pixel += 2 * (c * k * k + c * c)
            elif kind == "dil":
                per_pixel += c * k * k + c * c
        per_pixel += len(ops) * c * c  # _out 1x1 on the concatenated experts
    return router + per_pixel * pixels


def macs_by_part(config: DRSformerConfig, height: int = 256, width: int = 256) -> dict[str, int]:
    """MACs of every top-level part (official module names) for one image of ``height`` x ``width``."""
    h = -(-height // PAD_MULTIPLE) * PAD_MULTIPLE
    w = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
    px = [h * w // 4**i for i in range(4)]  # pixels at levels 1..4
    enc1, enc2, enc3, lat, dec3, dec2, dec1 = config.levels
    u3, u2, u1 = config.up_widths
    level_px = dict(zip(STAGES, (px[0], px[1], px[2], px[3], px[2], px[1], px[0])))
    parts = {"patch_embed": config.in_channels * enc1.width * 9 * px[0]}
    if config.encoder_mefc is not None:
        parts["encoder_level0"] = mefc_macs(enc1.width, config.encoder_mefc, px[0])
    for name, level in zip(STAGES, config.levels):
        parts[name] = sum(block_macs(level.width, b, level_px[name]) for b in level.blocks)
    parts["down1_2"] = enc1.width * (enc2.width // 4) * 9 * px[0]
    parts["down2_3"] = enc2.width * (enc3.width // 4) * 9 * px[1]
    parts["down3_4"] = enc3.width * (lat.width // 4) * 9 * px[2]
    parts["up4_3"] = lat.width * 4 * u3 * 9 * px[3]
    parts["reduce_chan_level3"] = (u3 + enc3.width) * dec3.width * px[2]
    parts["up3_2"] = dec3.width * 4 * u2 * 9 * px[2]
    parts["reduce_chan_level2"] = (u2 + enc2.width) * dec2.width * px[1]
    parts["up2_1"] = dec2.width * 4 * u1 * 9 * px[1]
    if config.refinement_mefc is not None:
        parts["refinement"] = mefc_macs(dec1.width, config.refinement_mefc, px[0])
    parts["output"] = dec1.width * config.out_channels * 9 * px[0]
    return parts


def block_params(width: int, block: BlockConfig, bias: bool, with_bias_norm: bool) -> int:
    """Parameters of one STB (two norms, TKSA, MSFN)."""
    a, hid, b = block.attn_dim, block.ffn_hidden, int(bias)
    norms = 2 * width * (2 if with_bias_norm else 1)
    attn = block.heads + 4 + (width + b) * 3 * a + (9 + b) * 3 * a + a * width + b * width
    ffn = (width + b) * 2 * hid + (9 + 25 + 2 * b) * 2 * hid + (2 * 9 + 2 * 25 + 2 * b) * hid + 2 * hid * width
    return norms + attn + ffn + b * width


def mefc_params(c: int, cfg: MEFCConfig) -> int:
    logits = cfg.steps * len(EXPERT_OPS)
    total = c * cfg.router_hidden + cfg.router_hidden + cfg.router_hidden * logits + logits + c * c
    for ops in cfg.ops:
        for j in ops:
            kind, k, _ = EXPERT_OPS[j]
            total += {"sep": 2 * (c * k * k + c * c), "dil": c * k * k + c * c}.get(kind, 0)
        total += len(ops) * c * c
    return total


def count_params_config(config: DRSformerConfig) -> int:
    """Parameters of ``DRSformer(config)``, from the config alone (no model is built)."""
    enc1, enc2, enc3, lat, dec3, dec2, dec1 = config.levels
    u3, u2, u1 = config.up_widths
    b, wb = int(config.bias), config.norm_type == "WithBias"
    total = config.in_channels * enc1.width * 9 + dec1.width * config.out_channels * 9 + b * config.out_channels
    total += sum(block_params(level.width, blk, config.bias, wb) for level in config.levels for blk in level.blocks)
    total += 9 * (enc1.width * (enc2.width // 4) + enc2.width * (enc3.width // 4) + enc3.width * (lat.width // 4))
    total += 9 * (lat.width * 4 * u3 + dec3.width * 4 * u2 + dec2.width * 4 * u1)
    total += (u3 + enc3.width) * dec3.width + b * dec3.width + (u2 + enc2.width) * dec2.width + b * dec2.width
    for c, m in ((enc1.width, config.encoder_mefc), (dec1.width, config.refinement_mefc)):
        if m is not None:
            total += mefc_params(c, m)
    return total


def count_macs(config: DRSformerConfig, height: int = 256, width: int = 256) -> int:
    """Total MACs for one ``height`` x ``width`` image (padded to a multiple of 8, as the forward does)."""
    return sum(macs_by_part(config, height, width).values())


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s tensors live; the CPU for a model without any (an exported artefact's runner)."""
    tensor = next(iter(model.parameters()), None)
    tensor = next(iter(model.buffers()), None) if tensor is None else tensor
    return tensor.device if tensor is not None else torch.device("cpu")


@torch.no_grad()
def latency_ms(model: nn.Module, size: int = 256, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time (ms) of one forward of a 1x3x``size``x``size`` image on the model's device (CUDA
    synchronised around each), in the current thread setting."""
    import time

    model = model.eval()
    device = model_device(model)
    x = torch.rand(1, 3, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # kernels run asynchronously
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]
