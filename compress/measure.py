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

from drsformer import EXPERT_OPS, BlockConfig, DRSformerConfig, MEFCConfig
from drsformer.model import PAD_MULTIPLE
from drsformer.wiring import mefc_config, steps, stream_widths


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
    widths, parts = stream_widths(config), {}
    for step in steps(config):
        c_in, c_out, px = sum(widths[r] for r in step.reads), widths[step.writes], h * w // 4 ** (step.level - 1)
        if step.kind == "stage":
            parts[step.module] = sum(block_macs(c_in, b, px) for b in config.level(step.module).blocks)
        elif step.kind == "mefc":
            parts[step.module] = mefc_macs(c_in, mefc_config(config, step.module), px)
        else:  # a convolution at the input's resolution: 3x3, except the 1x1 reduce
            rows = {"down": c_out // 4, "up": 4 * c_out}.get(step.kind, c_out)
            parts[step.module] = c_in * rows * (1 if step.kind == "reduce" else 9) * px
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
    widths, b, total = stream_widths(config), int(config.bias), 0
    for step in steps(config):
        c_in, c_out = sum(widths[r] for r in step.reads), widths[step.writes]
        if step.kind == "stage":
            wb = config.norm_type == "WithBias"
            total += sum(block_params(c_in, blk, config.bias, wb) for blk in config.level(step.module).blocks)
        elif step.kind == "mefc":
            total += mefc_params(c_in, mefc_config(config, step.module))
        elif step.kind in ("embed", "down", "up"):  # convolutions without bias
            total += c_in * {"down": c_out // 4, "up": 4 * c_out}.get(step.kind, c_out) * 9
        else:  # reduce (1x1) and output (3x3), with the config's bias
            total += c_in * c_out * (1 if step.kind == "reduce" else 9) + b * c_out
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
