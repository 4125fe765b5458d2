"""The oracle: a literal transcription of the official DRSformer forward (cschenxiang/DRSformer @ e77bbb4e).

Every operation is the one the official code runs, in its order (rearrange + mean/var LayerNorm, four
top-k + scatter masks, four softmaxes and four matmuls, MSFN concatenations, experts scaled one by one
and concatenated), with the official module names, so the same state dict loads into it and into
``drsformer.DRSformer``. It is used by the tests (exactness of the fast model) and by
``benchmarks/model_speed.py`` (the baseline of the speed ratio). Only uniform official configs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Body(nn.Module):
    def __init__(self, dim, with_bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class LiteralLayerNorm(nn.Module):
    def __init__(self, dim, norm_type):
        super().__init__()
        self.body = _Body(dim, norm_type != "BiasFree")

    def forward(self, x):
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # b (h w) c
        sigma = t.var(-1, keepdim=True, unbiased=False)
        if self.body.bias is None:
            t = t / torch.sqrt(sigma + 1e-5) * self.body.weight
        else:
            mu = t.mean(-1, keepdim=True)
            t = (t - mu) / torch.sqrt(sigma + 1e-5) * self.body.weight + self.body.bias
        return t.transpose(1, 2).reshape(b, c, h, w)


class LiteralAttention(nn.Module):
    def __init__(self, dim, heads, bias):
        super().__init__()
        self.num_heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        for i in range(1, 5):
            setattr(self, f"attn{i}", nn.Parameter(torch.tensor([0.2])))

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        ch = q.shape[2]
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = 0
        # the official float expressions int(C/2), int(C*2/3), int(C*3/4), int(C*4/5)
        for i, kk in enumerate((int(ch / 2), int(ch * 2 / 3), int(ch * 3 / 4), int(ch * 4 / 5)), start=1):
            mask = torch.zeros(b, self.num_heads, ch, ch, device=x.device)
            mask.scatter_(-1, torch.topk(attn, k=kk, dim=-1, largest=True)[1], 1.0)
            masked = torch.where(mask > 0, attn, torch.full_like(attn, float("-inf")))
            out = out + (masked.softmax(dim=-1) @ v) * getattr(self, f"attn{i}")
        return self.project_out(out.reshape(b, c, h, w))


class LiteralFeedForward(nn.Module):
    def __init__(self, dim, factor, bias):
        super().__init__()
        hid = int(dim * factor)
        self.project_in = nn.Conv2d(dim, hid * 2, 1, bias=bias)
        self.dwconv3x3 = nn.Conv2d(hid * 2, hid * 2, 3, padding=1, groups=hid * 2, bias=bias)
        self.dwconv5x5 = nn.Conv2d(hid * 2, hid * 2, 5, padding=2, groups=hid * 2, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hid * 2, hid, 3, padding=1, groups=hid, bias=bias)
        self.dwconv5x5_1 = nn.Conv2d(hid * 2, hid, 5, padding=2, groups=hid, bias=bias)
        self.project_out = nn.Conv2d(hid * 2, dim, 1, bias=bias)

    def forward(self, x):
        x = self.project_in(x)
        a3, b3 = torch.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        a5, b5 = torch.relu(self.dwconv5x5(x)).chunk(2, dim=1)
        x1 = torch.relu(self.dwconv3x3_1(torch.cat([a3, a5], 1)))
        x2 = torch.relu(self.dwconv5x5_1(torch.cat([b3, b5], 1)))
        return self.project_out(torch.cat([x1, x2], 1))


class LiteralBlock(nn.Module):
    def __init__(self, dim, heads, factor, bias, norm_type):
        super().__init__()
        self.norm1 = LiteralLayerNorm(dim, norm_type)
        self.attn = LiteralAttention(dim, heads, bias)
        self.norm2 = LiteralLayerNorm(dim, norm_type)
        self.ffn = LiteralFeedForward(dim, factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _dw(c, k, pad, dil=1):
    return nn.Conv2d(c, c, k, padding=pad, dilation=dil, groups=c, bias=False)


def _pw(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 1, bias=False)


class _Op(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x)


def _expert(c, j):
    if j < 4:  # sep_conv 1x1, 3x3, 5x5, 7x7
        k = 2 * j + 1
        return _Op(nn.Sequential(_dw(c, k, j), _pw(c, c), nn.ReLU(), _dw(c, k, j), _pw(c, c)))
    if j < 7:  # dil_conv 3x3, 5x5, 7x7, dilation 2
        k = 2 * (j - 4) + 3
        return _Op(nn.Sequential(_dw(c, k, k - 1, dil=2), _pw(c, c)))
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class _Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self._ops = nn.ModuleList([_expert(c, j) for j in range(8)])
        self._out = nn.Sequential(_pw(8 * c, c), nn.ReLU())

    def forward(self, x, weights):
        states = [op(x) * w.view(-1, 1, 1, 1) for w, op in zip(weights.transpose(1, 0), self._ops)]
        return self._out(torch.cat(states, dim=1))


class _Group(nn.Module):
    def __init__(self, c, steps=4):
        super().__init__()
        self.preprocess = _Op(nn.Sequential(_pw(c, c), nn.ReLU()))
        self._ops = nn.ModuleList([_Layer(c) for _ in range(steps)])

    def forward(self, s, weights):
        s = self.preprocess(s)
        for i, layer in enumerate(self._ops):
            s = torch.relu(layer(s, weights[:, i, :]) + s)
        return s


class _Router(nn.Module):
    def __init__(self, c, steps=4, ops=8):
        super().__init__()
        self.steps, self.ops = steps, ops
        self.ca_fc = nn.Sequential(nn.Linear(c, 2 * steps * ops), nn.ReLU(), nn.Linear(2 * steps * ops, steps * ops))

    def forward(self, x):
        y = F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1)
        return self.ca_fc(y).view(-1, self.steps, self.ops)


class LiteralMEFC(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList([_Router(c), _Group(c)])

    def forward(self, x):
        weights = F.softmax(self.layers[0](x), dim=-1)
        return self.layers[1](x, weights)


class _Embed(nn.Module):
    def __init__(self, c_in, c):
        super().__init__()
        self.proj = nn.Conv2d(c_in, c, 3, padding=1, bias=False)

    def forward(self, x):
        return self.proj(x)


class _Resize(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        if down:
            self.body = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        else:
            self.body = nn.Sequential(nn.Conv2d(c, c * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


class LiteralDRSformer(nn.Module):
    """Constructor arguments as the official ``DRSformer`` (+ ``mefc``); input H, W divisible by 8."""

    def __init__(
        self,
        inp_channels=3,
        out_channels=3,
        dim=48,
        num_blocks=(4, 6, 6, 8),
        heads=(1, 2, 4, 8),
        ffn_expansion_factor=2.66,
        bias=False,
        LayerNorm_type="WithBias",
        mefc=True,
    ):
        super().__init__()
        self.mefc = mefc

        def stage(width, n, nh):
            return nn.Sequential(
                *[LiteralBlock(width, nh, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(n)]
            )

        self.patch_embed = _Embed(inp_channels, dim)
        if mefc:
            self.encoder_level0 = LiteralMEFC(dim)
        self.encoder_level1 = stage(dim, num_blocks[0], heads[0])
        self.down1_2 = _Resize(dim, True)
        self.encoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = _Resize(dim * 2, True)
        self.encoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = _Resize(dim * 4, True)
        self.latent = stage(dim * 8, num_blocks[3], heads[3])
        self.up4_3 = _Resize(dim * 8, False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = stage(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = _Resize(dim * 4, False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = stage(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = _Resize(dim * 2, False)
        self.decoder_level1 = stage(dim * 2, num_blocks[0], heads[0])
        if mefc:
            self.refinement = LiteralMEFC(dim * 2)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, padding=1, bias=bias)

    def forward(self, inp):
        x = self.patch_embed(inp)
        if self.mefc:
            x = self.encoder_level0(x)
        e1 = self.encoder_level1(x)
        e2 = self.encoder_level2(self.down1_2(e1))
        e3 = self.encoder_level3(self.down2_3(e2))
        x = self.latent(self.down3_4(e3))
        x = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(x), e3], 1)))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(x), e2], 1)))
        x = self.decoder_level1(torch.cat([self.up2_1(x), e1], 1))
        if self.mefc:
            x = self.refinement(x)
        return self.output(x) + inp
