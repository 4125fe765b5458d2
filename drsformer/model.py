"""DRSformer (Chen et al., CVPR 2023, "Learning A Sparse Transformer Network for Effective Image Deraining").

A re-implementation that keeps the official state-dict layout (cschenxiang/DRSformer @ e77bbb4e,
``basicsr/models/archs/DRSformer_arch.py``): every attribute name and Sequential index below is the
checkpoint format, so official weights load with ``strict=True``. What differs is how the forward is
computed (same maths, fewer kernels) and that every size comes from a ``DRSformerConfig``, so a
structurally pruned student is again a plain ``DRSformer``.

Forward differences from the official code, each exact up to float rounding:
- LayerNorm over channels uses ``F.layer_norm`` on a channels-last view instead of mean/var/sub/div.
- TKSA takes one sorted top-k (the largest k of the four ratios). The top-k of every smaller ratio is a
  prefix of it, so the four masked softmaxes become prefix sums of the same exponentials, and the
  learned mix ``attn1..attn4`` of the four branch outputs becomes one matrix applied to ``v`` once.
- MSFN runs its grouped second-stage convs (two inputs per output) as depthwise convs on the two
  branch halves plus a sum of neighbouring channels, and never concatenates anything: ``project_out``
  is applied as 1x1 convs on the pieces.
- MEFC folds the per-sample routing weights, and the last 1x1 conv of every expert operation (linear,
  no activation after it), into the weight of the step's output 1x1 conv instead of running seven 1x1
  convs over the image and scaling eight expert outputs.
- On the CPU every depthwise conv has a hand-written backward (``_DepthwiseConv``): oneDNN's CPU depthwise
  backward is several times slower than the forward. Other devices use PyTorch's native backward, which
  the CPU rewrite would only slow down (its weight gradient is a grouped conv with an image-sized kernel);
  ``DEPTHWISE_BACKWARD`` overrides the choice.
- An exported (traced) graph runs, per rewrite, the fast form or the official one as ``EXPORT_FAST`` says:
  what is fastest in eager PyTorch need not be in ONNX Runtime or OpenVINO
  (``benchmarks/deploy_latency.py --forms`` measures each; ``compress.export`` picks per runtime).
- Nothing in the forward waits for the device: index tensors come from ``arange`` comparisons or
  non-persistent buffers, never from Python lists copied to the device. Under autocast the attention's
  cosine logits and their top-k stay in fp32, so low precision never changes which channels are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import EXPERT_OPS, NUM_EXPERT_OPS, BlockConfig, DRSformerConfig, LevelConfig, MEFCConfig
from .io import atomic_write
from .wiring import Step, mefc_config, steps, stream_widths

class CheckpointError(ValueError, TypeError):
    """A checkpoint file that cannot be loaded (unreadable, truncated, or not this architecture); names the file."""


TOPK_RATIOS = ((1, 2), (2, 3), (3, 4), (4, 5))  # the four TKSA branches, as num/den
PAD_MULTIPLE = 8  # three 2x downsamplings
# Per rewrite, whether a traced graph (torch.onnx export) uses the fast form (True) or the official one; eager
# PyTorch always runs the fast forms. ``compress.export`` chooses per runtime (``export_forms``). MSFN's fast
# form is not exportable (ONNX's Conv needs a kernel of known shape, not a slice of a weight).
EXPORT_FAST = {"topk": True, "mefc": True}


def _fast(rewrite: str) -> bool:
    return EXPORT_FAST[rewrite] or not torch.jit.is_tracing()


@contextlib.contextmanager
def export_forms(**fast: bool):
    """Inside: traced graphs use the given forms (``topk=False``: the official four masked softmaxes)."""
    unknown = set(fast) - set(EXPORT_FAST)
    if unknown:
        raise KeyError(f"no rewrite {sorted(unknown)}; the rewrites are {sorted(EXPORT_FAST)}")
    saved = dict(EXPORT_FAST)
    EXPORT_FAST.update(fast)
    try:
        yield
    finally:
        EXPORT_FAST.update(saved)


def topk_counts(c: int) -> tuple[int, ...]:
    """Entries kept per row by the four TKSA branches, with the official ``int(C * r)`` truncation."""
    # The official code evaluates int(C/2), int(C*2/3), int(C*3/4), int(C*4/5) in floating point.
    return tuple(int(c * num / den) for num, den in TOPK_RATIOS)


# ---------------------------------------------------------------------------------------------- depthwise
class _DepthwiseConv(torch.autograd.Function):
    """Depthwise conv (stride 1) with a hand-written backward.

    Why not autograd's: on CPU the oneDNN depthwise backward takes several times the forward's time
    (``benchmarks/model_speed.py`` measures the training step), and depthwise convs are most of
    DRSformer's backward. The input gradient is the transposed depthwise conv; the weight gradient is a
    depthwise correlation of the padded input with the output gradient (batch folded into channels),
    both about as fast as the forward. Same maths, float rounding aside.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, 1, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        (pad_h, pad_w), (dil_h, dil_w), has_bias = ctx.conf
        c = weight.shape[0]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad, weight.to(grad.dtype), None, 1, (pad_h, pad_w), 0, c, (dil_h, dil_w))
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            b, _, h, w = grad.shape
            x_pad = F.pad(x.to(grad.dtype), (pad_w, pad_w, pad_h, pad_h))
            # out[n*c + i, a, b] = sum_uv x_pad[n, i, u + dil*a, v + dil*b] * grad[n, i, u, v]
            grad_w = F.conv2d(x_pad.reshape(1, b * c, *x_pad.shape[-2:]), grad.reshape(b * c, 1, h, w),
                              stride=(dil_h, dil_w), groups=b * c)
            grad_w = grad_w.reshape(b, c, 1, *weight.shape[-2:]).sum(0).to(weight.dtype)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3)).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


DEPTHWISE_BACKWARD = "auto"  # "auto": hand-written on the CPU, native elsewhere; "custom" or "native" to force


def _custom_backward(x: torch.Tensor) -> bool:
    return DEPTHWISE_BACKWARD == "custom" or (DEPTHWISE_BACKWARD == "auto" and x.device.type == "cpu")


def _records_grad(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether autograd will record an op on ``x`` and ``weight`` (training), as opposed to inference."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def depthwise(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``conv(x)`` for a stride-1 depthwise ``conv``; with ``weight``, that weight and no bias in its place."""
    weight, bias = (conv.weight, conv.bias) if weight is None else (weight, None)
    if not (_records_grad(x, weight) and _custom_backward(x)):
        return F.conv2d(x, weight, bias, 1, conv.padding, conv.dilation, weight.shape[0])
    return _DepthwiseConv.apply(x, weight, bias, conv.padding, conv.dilation)


# ---------------------------------------------------------------------------------------------- norm
class _NormParams(nn.Module):
    """Holds ``weight`` (and ``bias`` for WithBias): the official ``LayerNorm.body``."""

    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class LayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel; eps 1e-5; BiasFree scales without centring."""

    def __init__(self, dim: int, norm_type: str):
        super().__init__()
        self.body = _NormParams(dim, with_bias=norm_type == "WithBias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (b, h, w, c)
        if self.body.bias is not None:
            # the width from the weight, not from x: a constant in a traced (ONNX) graph
            y = F.layer_norm(x, self.body.weight.shape, self.body.weight, self.body.bias, eps=1e-5)
        else:
            # BiasFree: x / sqrt(var(x) + eps) * w, with the variance about the mean but no centring.
            var = x.var(-1, keepdim=True, unbiased=False)
            y = x * torch.rsqrt(var + 1e-5) * self.body.weight
        # A channels-last (b, c, h, w) view, no copy: measured faster overall than making it contiguous.
        return y.permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------- TKSA
def topk_mixed_softmax(attn: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Sum over the four branches of ``mix[r] * softmax(attn masked to its top-k_r per row)``.

    attn: (..., c, c); mix: (4,). One sorted top-k of the largest k serves every branch: branch r keeps
    the first k_r sorted entries, so its softmax denominator is a prefix sum of the same exponentials.
    """
    c = attn.shape[-1]
    ks = topk_counts(c)
    values, index = attn.topk(ks[-1], dim=-1, largest=True, sorted=True)  # (..., c, kmax)
    exp = torch.exp(values - values[..., :1])  # the row max is the first sorted value
    denom = exp.cumsum(-1)[..., [k - 1 for k in ks]]  # (..., c, 4): softmax denominators
    # prefix[r, j] = 1 where sorted entry j is inside branch r's top-k_r
    position = torch.arange(ks[-1], device=attn.device)
    prefix = torch.stack([position < k for k in ks]).to(exp.dtype)  # no list-to-device copy (no sync)
    coef = (mix.to(exp.dtype) / denom) @ prefix  # (..., c, kmax)
    return torch.zeros_like(attn).scatter(-1, index, exp * coef)


def topk_masked_softmaxes(attn: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """The official form of ``topk_mixed_softmax``: four top-k masks, four softmaxes, their mixed sum."""
    out = torch.zeros_like(attn)
    for r, k in enumerate(topk_counts(attn.shape[-1])):
        index = attn.topk(k, dim=-1, largest=True).indices
        keep = torch.zeros_like(attn).scatter(-1, index, 1.0) > 0
        out = out + mix[r] * attn.masked_fill(~keep, float("-inf")).softmax(-1)
    return out


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class Attention(nn.Module):
    """Top-k sparse attention (TKSA) across channels, ``heads`` x ``head_dim`` channels inside."""

    def __init__(self, dim: int, heads: int, head_dim: int, bias: bool):
        super().__init__()
        inner = heads * head_dim
        self.num_heads = heads
        self.head_dim = head_dim
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, inner * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(inner * 3, inner * 3, kernel_size=3, padding=1, groups=inner * 3, bias=bias)
        self.project_out = nn.Conv2d(inner, dim, kernel_size=1, bias=bias)
        self.attn1 = nn.Parameter(torch.tensor([0.2]))
        self.attn2 = nn.Parameter(torch.tensor([0.2]))
        self.attn3 = nn.Parameter(torch.tensor([0.2]))
        self.attn4 = nn.Parameter(torch.tensor([0.2]))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of input x, each (b, heads, head_dim, h*w)."""
        b, _, h, w = x.shape
        qkv = depthwise(self.qkv(x), self.qkv_dwconv)
        return qkv.reshape(b, 3, self.num_heads, self.head_dim, h * w).unbind(1)

    @staticmethod
    def channel_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every q channel with every k channel over all pixels, (b, heads, c, c): the
        attention's only reduction over the image (``drsformer.tiling`` computes it from tile sums). Always
        fp32, autocast or not: the top-k that follows must not choose among rounded cosines."""
        q, k = _at_least_fp32(q), _at_least_fp32(k)
        with torch.autocast(q.device.type, enabled=False):
            return F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)

    def attend(self, logits: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The output for channel logits (b, heads, c, c) and v (b, heads, c, h*w): per pixel, given logits."""
        mix = torch.cat([self.attn1, self.attn2, self.attn3, self.attn4])
        with torch.autocast(v.device.type, enabled=False):  # the (c, c) attention in fp32; the product below not
            softmax = topk_mixed_softmax if _fast("topk") else topk_masked_softmaxes
            attn = softmax(_at_least_fp32(logits) * self.temperature, mix)
        out = attn.to(v.dtype) @ v  # (b, heads, c, hw)
        return self.project_out(out.reshape(v.shape[0], -1, h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(x)
        return self.attend(self.channel_logits(q, k), v, *x.shape[-2:])


# ---------------------------------------------------------------------------------------------- MSFN
class FeedForward(nn.Module):
    """Mixed-scale feed-forward network (MSFN) with hidden width ``hidden``.

    project_in (C -> 2h) feeds a depthwise 3x3 and a depthwise 5x5 branch; each is split in halves,
    the first halves of both go through a grouped 3x3 (2h -> h, groups h: output j mixes inputs 2j and
    2j+1 of cat[a3, a5]), the second halves through a grouped 5x5, and project_out maps 2h -> C.
    """

    def __init__(self, dim: int, hidden: int, bias: bool):
        super().__init__()
        self.hidden = hidden
        h2 = hidden * 2
        self.project_in = nn.Conv2d(dim, h2, kernel_size=1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(h2, h2, kernel_size=3, padding=1, groups=h2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(h2, h2, kernel_size=5, padding=2, groups=h2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(h2, hidden, kernel_size=3, padding=1, groups=hidden, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(h2, hidden, kernel_size=5, padding=2, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(h2, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # export: ONNX's Conv needs a kernel of known shape, not a weight slice
            return self.literal(x)
        h = self.hidden
        x = self.project_in(x)
        y3 = F.relu(depthwise(x, self.dwconv3x3), inplace=True)
        y5 = F.relu(depthwise(x, self.dwconv5x5), inplace=True)
        # project_out(cat[x1, x2]) as 1x1 convs on the pieces: no concatenation anywhere.
        w, bias = self.project_out.weight, self.project_out.bias
        out = _pair_branch(y3[:, :h], y5[:, :h], self.dwconv3x3_1, w[:, :h])
        out = out + _pair_branch(y3[:, h:], y5[:, h:], self.dwconv5x5_1, w[:, h:])
        return out if bias is None else out + bias[:, None, None]


    def literal(self, x: torch.Tensor) -> torch.Tensor:
        """The official formulation (grouped convs on concatenations)."""
        x = self.project_in(x)
        x1_3, x2_3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        x1_5, x2_5 = F.relu(self.dwconv5x5(x)).chunk(2, dim=1)
        x1 = F.relu(self.dwconv3x3_1(torch.cat([x1_3, x1_5], dim=1)))
        x2 = F.relu(self.dwconv5x5_1(torch.cat([x2_3, x2_5], dim=1)))
        return self.project_out(torch.cat([x1, x2], dim=1))


def _pair_branch(a: torch.Tensor, b: torch.Tensor, conv: nn.Conv2d, w_out: torch.Tensor) -> torch.Tensor:
    """``conv2d(relu(conv(cat[a, b])), w_out)`` for MSFN's grouped conv with two inputs per group, without
    the concatenation and without the grouped kernel.

    Output j of ``conv`` is conv(cat[2j], w[j, 0]) + conv(cat[2j + 1], w[j, 1]): a depthwise conv of ``a``
    and of ``b`` with the flattened kernels, then the sum of neighbouring channels. With an odd width h
    (the official 127, 255, 1021) the middle output pairs the last channel of ``a`` with the first of
    ``b``. Each piece goes through its own columns of ``w_out``. On this CPU the depthwise form is faster
    than the grouped kernel (the whole forward: ``benchmarks/model_speed.py``). In training on the CPU the
    depthwise convs use the hand-written backward above.
    """
    h = a.shape[1]
    kh, kw = conv.weight.shape[-2:]
    flat = conv.weight.reshape(2 * h, 1, kh, kw)
    za, zb = depthwise(a, conv, flat[:h]), depthwise(b, conv, flat[h:])
    pairs_a, odd = h // 2, h % 2
    pieces = []  # (pre-activation of outputs lo..hi-1, lo, hi)
    if pairs_a:
        pieces.append((za[:, 0 : 2 * pairs_a : 2] + za[:, 1 : 2 * pairs_a : 2], 0, pairs_a))
    if odd:
        pieces.append((za[:, h - 1 :] + zb[:, :1], pairs_a, pairs_a + 1))
    pairs_b = (h - odd) // 2
    if pairs_b:
        pieces.append((zb[:, odd : odd + 2 * pairs_b : 2] + zb[:, odd + 1 : odd + 2 * pairs_b : 2], h - pairs_b, h))
    out = None
    for pre, lo, hi in pieces:
        if conv.bias is not None:
            pre = pre + conv.bias[lo:hi, None, None]
        y = F.conv2d(F.relu(pre, inplace=True), w_out[:, lo:hi])
        out = y if out is None else out + y
    return out


class TransformerBlock(nn.Module):
    """Sparse transformer block (STB): x + TKSA(LN(x)), then + MSFN(LN(x))."""

    def __init__(self, dim: int, block: BlockConfig, bias: bool, norm_type: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, norm_type)
        self.attn = Attention(dim, block.heads, block.head_dim, bias)
        self.norm2 = LayerNorm(dim, norm_type)
        self.ffn = FeedForward(dim, block.ffn_hidden, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


# ---------------------------------------------------------------------------------------------- MEFC
def _depthwise(c: int, kernel: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c, c, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=c, bias=False)


def _pointwise(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=False)


class ExpertOp(nn.Module):
    """One MEFC expert operation: ``op`` is the official Sequential (indices are checkpoint keys)."""

    def __init__(self, c: int, kind: str, kernel: int, dilation: int):
        super().__init__()
        if kind == "sep":
            self.op = nn.Sequential(
                _depthwise(c, kernel), _pointwise(c, c), nn.ReLU(inplace=True), _depthwise(c, kernel), _pointwise(c, c)
            )
        elif kind == "dil":
            self.op = nn.Sequential(_depthwise(c, kernel, dilation), _pointwise(c, c))
        else:
            self.op = nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the op's output before its last 1x1 conv, that conv's (c, c) matrix), or (output, None) for
        the pooling op: the last 1x1 conv is linear, so the step folds it into its output conv."""
        if isinstance(self.op, nn.AvgPool2d):
            return self.op(x), None
        *layers, last = self.op
        for layer in layers:
            is_depthwise = isinstance(layer, nn.Conv2d) and layer.groups > 1
            x = depthwise(x, layer) if is_depthwise else layer(x)
        return x, last.weight[:, :, 0, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, matrix = self.features(x)
        return y if matrix is None else F.conv2d(y, matrix[:, :, None, None])


class ExpertStep(nn.Module):
    """One MEFC step: the kept expert operations (keyed by their official index) and the 1x1 output conv."""

    def __init__(self, c: int, ops: tuple[int, ...]):
        super().__init__()
        self.op_index = ops
        # the kept operations' columns of the routing weights, as a device tensor (not in the state dict)
        self.register_buffer("op_columns", torch.tensor(ops, dtype=torch.long), persistent=False)
        self._ops = nn.ModuleDict({str(j): ExpertOp(c, *EXPERT_OPS[j]) for j in ops})
        self._out = nn.Sequential(_pointwise(c * len(ops), c), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (b, c, h, w); weights (b, 8): softmax routing weights over all eight operations."""
        if not _fast("mefc"):
            return self.literal(x, weights)
        b, c, h, w = x.shape
        n = len(self.op_index)
        features, matrices = zip(*(op.features(x) for op in self._ops.values()))
        # out = W @ cat[w_j * P_j e_j], P_j the op's last 1x1 conv: fold P_j into W's column block j (one
        # c x c product instead of a 1x1 conv over the image), and the per-sample routing weights w_j too.
        blocks = self._out[0].weight.reshape(c, n, c)
        blocks = torch.stack([blocks[:, k] if m is None else blocks[:, k] @ m for k, m in enumerate(matrices)], 1)
        kept = weights.index_select(1, self.op_columns)  # (b, n)
        weight = blocks.reshape(1, c, n, c) * kept.reshape(b, 1, n, 1)
        experts = torch.cat(features, 1)  # (b, n*c, h, w)
        # a per-sample 1x1 conv as one batched matmul (a GEMM like the conv; exports to ONNX, whose Conv needs a
        # kernel of known shape)
        out = torch.bmm(weight.reshape(b, c, n * c), experts.reshape(b, n * c, h * w))
        return F.relu(out.reshape(b, c, h, w), inplace=True)

    def literal(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The official form: every operation in full, scaled by its routing weight, concatenated, 1x1 conv."""
        kept = weights.index_select(1, self.op_columns)
        outs = [op(x) * kept[:, k, None, None, None] for k, op in enumerate(self._ops.values())]
        return self._out(torch.cat(outs, 1))


class _PreprocessConv(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.op = nn.Sequential(_pointwise(c, c), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ExpertSteps(nn.Module):
    """``layers.1`` of the official MEFC: preprocess conv, then steps with s = relu(step(s) + s)."""

    def __init__(self, c: int, cfg: MEFCConfig):
        super().__init__()
        self.preprocess = _PreprocessConv(c)
        self._ops = nn.ModuleList([ExpertStep(c, ops) for ops in cfg.ops])

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        s = self.preprocess(x)
        for i, step in enumerate(self._ops):
            s = F.relu(step(s, weights[:, i]) + s, inplace=True)
        return s


class Router(nn.Module):
    """``layers.0`` of the official MEFC: pooled features -> MLP -> (b, steps, 8) logits."""

    def __init__(self, c: int, cfg: MEFCConfig):
        super().__init__()
        self.steps = cfg.steps
        logits = cfg.steps * NUM_EXPERT_OPS
        self.ca_fc = nn.Sequential(
            nn.Linear(c, cfg.router_hidden), nn.ReLU(inplace=True), nn.Linear(cfg.router_hidden, logits)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca_fc(x.mean((2, 3))).reshape(-1, self.steps, NUM_EXPERT_OPS)


class MEFC(nn.Module):
    """Mixture-of-experts feature compensator (the official ``subnet``); its output replaces its input."""

    def __init__(self, c: int, cfg: MEFCConfig):
        super().__init__()
        self.layers = nn.ModuleList([Router(c, cfg), ExpertSteps(c, cfg)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.layers[0](x).softmax(-1)
        return self.layers[1](x, weights)


# ---------------------------------------------------------------------------------------------- U-Net
class PatchEmbed(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Resample(nn.Module):
    """Downsample (conv c_in -> c_out/4, PixelUnshuffle(2)) or Upsample (conv c_in -> 4 c_out, PixelShuffle(2))."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        if down:
            self.body = nn.Sequential(nn.Conv2d(c_in, c_out // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        else:
            self.body = nn.Sequential(nn.Conv2d(c_in, c_out * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """x padded at the bottom and right to H, W divisible by ``multiple``: reflected where the image is large
    enough (as the official test script pads), else replicated."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if torch.jit.is_tracing():  # an exported graph pads every input size (reflect: images of 8 pixels or more)
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _stage(level: LevelConfig, cfg: DRSformerConfig) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(level.width, b, cfg.bias, cfg.norm_type) for b in level.blocks])


def _module(step: Step, c_in: int, c_out: int, cfg: DRSformerConfig) -> nn.Module:
    """The module of one wiring step, reading ``c_in`` channels and writing ``c_out``."""
    if step.kind == "stage":
        return _stage(cfg.level(step.module), cfg)
    if step.kind == "mefc":
        return MEFC(c_in, mefc_config(cfg, step.module))
    if step.kind in ("down", "up"):
        return Resample(c_in, c_out, down=step.kind == "down")
    if step.kind == "embed":
        return PatchEmbed(c_in, c_out)
    if step.kind == "reduce":
        return nn.Conv2d(c_in, c_out, 1, bias=cfg.bias)
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=cfg.bias)  # output


class DRSformer(nn.Module):
    """The DRSformer U-Net; every size comes from ``config``. Any input size (padded to 8, cropped back)."""

    def __init__(self, config: DRSformerConfig):
        super().__init__()
        self.config = config
        self.wiring = steps(config)  # the steps of the wiring (``drsformer.wiring``), in forward order
        widths = stream_widths(config)
        for step in self.wiring:  # registered in forward order: the official state-dict order
            c_in, c_out = sum(widths[r] for r in step.reads), widths[step.writes]
            setattr(self, step.module, _module(step, c_in, c_out, config))
        last_read = {r: i for i, step in enumerate(self.wiring) for r in step.reads}
        # streams no later step reads, dropped after each step (inference holds only the live skips)
        self._done = [[r for r in step.reads if last_read[r] == i and r != step.writes] for i, step in
                      enumerate(self.wiring)]  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = self.forward_features(pad_to_multiple(x))
        return out[..., :h, :w]

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """The official forward, for H and W divisible by 8: every step of the wiring reads its streams
        (concatenated where there are two) and writes one; the output conv's residual is added to the image."""
        streams = {"image": image}
        for step, done in zip(self.wiring, self._done):
            reads = [streams[r] for r in step.reads]
            streams[step.writes] = getattr(self, step.module)(reads[0] if len(reads) == 1 else torch.cat(reads, 1))
            for r in done:
                del streams[r]
        return streams["residual"] + image

    # ------------------------------------------------------------------------------------------ I/O
    @classmethod
    def from_official(
        cls, path_or_state_dict: str | os.PathLike | dict, config: DRSformerConfig | None = None
    ) -> DRSformer:
        """Load an official checkpoint (``{'params': ...}``, ``{'params_ema': ...}`` or a bare state dict).

        Files are read with ``weights_only=True`` (no pickled code runs). Loading is strict; on mismatch
        the error lists the missing, unexpected and wrongly shaped keys by name. ``config`` defaults
        to the paper model with MEFC.
        """
        is_path = isinstance(path_or_state_dict, (str, os.PathLike))
        origin = str(path_or_state_dict) if is_path else "the given state dict"
        source = path_or_state_dict
        if is_path:
            try:
                source = torch.load(source, map_location="cpu", weights_only=True)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{origin}: no such checkpoint file") from err
            except Exception as err:  # the unpickler raises several types: name the file and the cause
                raise CheckpointError(
                    f"{origin}: cannot be read as a weights-only checkpoint ({type(err).__name__}: {err}). "
                    "Only tensors and plain containers are accepted; re-save the state dict with torch.save."
                ) from err
        model = cls(config or DRSformerConfig.preset("full"))
        load_strict(model, unwrap_state_dict(source, origin), origin=origin)
        return model

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``out_dir``, each atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(out_dir / "model.safetensors", lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        config_text = json.dumps(self.config.to_dict(), indent=1) + "\n"
        atomic_write(out_dir / "config.json", lambda p: Path(p).write_text(config_text))
        return out_dir

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> DRSformer:
        """Rebuild ``DRSformer(config)`` from ``config.json`` and load ``model.safetensors`` strictly."""
        from safetensors.torch import load_file

        model_dir = Path(model_dir)
        for name in ("config.json", "model.safetensors"):
            if not (model_dir / name).is_file():
                raise FileNotFoundError(f"{model_dir}: missing {name}; expected a directory written by save_pretrained")
        model = cls(DRSformerConfig.from_json(model_dir / "config.json"))
        weights = model_dir / "model.safetensors"
        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors raises its own error type for truncated or corrupt files
            raise CheckpointError(f"{weights}: not a readable safetensors file ({err}); the file is damaged or "
                                  "was cut short: save the model again (save_pretrained)") from err  # fmt: skip
        load_strict(model, state, origin=str(weights))
        return model


def unwrap_state_dict(obj, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside an official checkpoint: ``params``/``params_ema``/``state_dict`` or bare."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: expected a dict of tensors, got {type(obj).__name__}")
    for key in ("params", "params_ema", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"{name}: no state dict found (keys: {sorted(obj)[:8]}); expected 'params' or tensors")


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names every missing, unexpected or misshaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{origin} does not match DRSformer({_short(model)})"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        lines.append("  Is the config right? e.g. mefc=False for the Rain200L/SPA checkpoints, or dim/blocks/heads.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def _short(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "?"
    return f"widths={[lv.width for lv in cfg.levels]}, blocks={[len(lv.blocks) for lv in cfg.levels]}, mefc={cfg.mefc}"
