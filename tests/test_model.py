"""drsformer/: checkpoint compatibility, exactness against the literal official forward, configs, I/O."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from drsformer import BlockConfig, ConfigError, DRSformer, DRSformerConfig, LevelConfig, MEFCConfig
from drsformer import wiring
from drsformer.model import EXPORT_FAST, topk_counts, topk_mixed_softmax
from drsformer.wiring import stream_widths
from tests.literal_drsformer import LiteralDRSformer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
OFFICIAL_KEYS = ("dim", "num_blocks", "heads", "ffn_expansion_factor", "bias", "LayerNorm_type", "mefc")


def load_fixture(variant: str) -> dict:
    path = FIXTURES / f"drsformer_small_{variant}.pt"
    if not path.exists():
        pytest.skip(f"{path} not found (tests expect ../shared beside the repository)")
    return torch.load(path, weights_only=True)


def fixture_config(fx: dict) -> DRSformerConfig:
    return DRSformerConfig.from_official_kwargs(**{k: fx["config"][k] for k in OFFICIAL_KEYS})


@pytest.mark.parametrize("variant", ["mefc", "nomefc"])
def test_official_fixture_output_reproduces(variant):
    fx = load_fixture(variant)
    model = DRSformer.from_official({"params": fx["state_dict"]}, fixture_config(fx)).eval()
    assert sum(p.numel() for p in model.parameters()) == fx["param_count"]
    with torch.no_grad():
        out = model(fx["input"])
    assert out.shape == fx["output"].shape
    assert (out - fx["output"]).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", ["mefc", "nomefc"])
def test_official_fixture_intermediates(variant):
    """Every top-level module's output matches the official one (localises a departure)."""
    fx = load_fixture(variant)
    model = DRSformer.from_official(fx["state_dict"], fixture_config(fx)).eval()
    seen = {}
    hooks = [
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
        for name in fx["intermediates"]
    ]
    with torch.no_grad():
        model(fx["input"])
    for h in hooks:
        h.remove()
    assert set(seen) == set(fx["intermediates"])
    for name, expected in fx["intermediates"].items():
        assert (seen[name] - expected).abs().max().item() < 1e-5, name


@pytest.mark.parametrize("variant,preset", [("mefc", "full"), ("nomefc", "nomefc")])
def test_full_model_state_dict_matches_official_shapes(variant, preset):
    path = FIXTURES / f"drsformer_full_{variant}_shapes.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    official = json.loads(path.read_text())
    with torch.device("meta"):
        model = DRSformer(DRSformerConfig.preset(preset))
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == official["param_count"]
    assert DRSformerConfig.from_official_kwargs(**official["config"]) == DRSformerConfig.preset(preset)


def test_official_checkpoint_file_and_errors(tmp_path):
    fx = load_fixture("mefc")
    cfg = fixture_config(fx)
    path = tmp_path / "net_g_latest.pth"
    torch.save({"params": fx["state_dict"]}, path)
    model = DRSformer.from_official(path, cfg)
    assert torch.equal(model.patch_embed.proj.weight, fx["state_dict"]["patch_embed.proj.weight"])

    # the no-MEFC config against the MEFC checkpoint: every unexpected key is named
    nomefc = DRSformerConfig.from_official_kwargs(**{**{k: fx["config"][k] for k in OFFICIAL_KEYS}, "mefc": False})
    with pytest.raises(ValueError, match=r"unexpected \(\d+\): encoder_level0\.layers") as err:
        DRSformer.from_official(path, nomefc)
    assert str(path) in str(err.value)
    # a wrong width: shape mismatches by name
    wider = DRSformerConfig.from_official_kwargs(**{**{k: fx["config"][k] for k in OFFICIAL_KEYS}, "dim": 16})
    with pytest.raises(
        ValueError,
        match=r"shape mismatch \(\d+\): decoder_level1.0.attn.project_out.weight: "
        r"checkpoint \(16, 16, 1, 1\) vs model \(32, 32, 1, 1\)",
    ):
        DRSformer.from_official(path, wider)

    # pickled code is refused
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "pickled.pth"
    torch.save({"params": Evil()}, bad)
    with pytest.raises(ValueError, match="weights-only"):
        DRSformer.from_official(bad, cfg)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        DRSformer.from_official(tmp_path / "missing.pth", cfg)


# ------------------------------------------------------------------------------- fast == literal
def _literal_and_fast(dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    literal = LiteralDRSformer(**kwargs).to(dtype)
    with torch.no_grad():  # move every parameter off its init so a swapped one shows
        for p in literal.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fast = DRSformer(DRSformerConfig.from_official_kwargs(**kwargs)).to(dtype)
    fast.load_state_dict(literal.state_dict(), strict=True)
    return literal, fast


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dim=8, num_blocks=(1, 1, 1, 2), mefc=True),
        dict(dim=8, num_blocks=(1, 1, 1, 1), mefc=False, bias=True, LayerNorm_type="BiasFree"),
        dict(dim=12, num_blocks=(1, 1, 1, 1), heads=(2, 2, 4, 4), ffn_expansion_factor=2.0, mefc=True),
    ],
)
def test_fast_forward_and_gradients_match_literal(kwargs):
    literal, fast = _literal_and_fast(**kwargs)
    x = torch.rand(2, 3, 32, 24, dtype=torch.float64)
    target = torch.rand_like(x)
    outs = []
    for model in (literal, fast):
        out = model(x)
        F.l1_loss(out, target).backward()
        outs.append(out.detach())
    assert (outs[0] - outs[1]).abs().max().item() < 1e-10
    grads_literal = dict(literal.named_parameters())
    for name, p in fast.named_parameters():
        g_ref = grads_literal[name].grad
        assert torch.allclose(p.grad, g_ref, rtol=1e-7, atol=1e-10), name


def test_topk_mixed_softmax_equals_four_masked_softmaxes():
    torch.manual_seed(1)
    for c in (2, 3, 5, 8, 13, 48):
        attn = torch.randn(2, 3, c, c, dtype=torch.float64, requires_grad=True)
        mix = torch.rand(4, dtype=torch.float64, requires_grad=True)
        expected = 0
        for r, k in enumerate(topk_counts(c)):
            idx = attn.topk(k, dim=-1).indices
            mask = torch.zeros_like(attn, dtype=torch.bool).scatter(-1, idx, True)
            expected = expected + mix[r] * attn.masked_fill(~mask, float("-inf")).softmax(-1)
        got = topk_mixed_softmax(attn, mix)
        assert torch.allclose(got, expected, atol=1e-12)
        g1 = torch.autograd.grad(expected.pow(2).sum(), (attn, mix))
        g2 = torch.autograd.grad(got.pow(2).sum(), (attn, mix))
        for a, b in zip(g1, g2):
            assert torch.allclose(a, b, atol=1e-12)
    assert topk_counts(48) == (24, 32, 36, 38)  # the official int() truncation


# ------------------------------------------------------------------------------- configs
def nonuniform_config() -> DRSformerConfig:
    """A student as a pruner would make it: every width, head count, head width and MSFN width differs."""
    return DRSformerConfig(
        levels=(
            LevelConfig(6, (BlockConfig(1, 4, 10), BlockConfig(2, 3, 7))),
            LevelConfig(12, (BlockConfig(2, 5, 20),)),
            LevelConfig(20, ()),  # all blocks of a level pruned: identity
            LevelConfig(32, (BlockConfig(3, 6, 50), BlockConfig(8, 2, 9), BlockConfig(4, 4, 1))),
            LevelConfig(18, (BlockConfig(4, 3, 33),)),
            LevelConfig(10, (BlockConfig(1, 7, 13),)),
            LevelConfig(11, (BlockConfig(1, 9, 17),)),  # = up_widths[2] + 6
        ),
        up_widths=(14, 9, 5),
        encoder_mefc=MEFCConfig(ops=((0, 3, 7), (1, 2, 4, 5, 6)), router_hidden=16),
        refinement_mefc=MEFCConfig(ops=((7,),), router_hidden=8),
    )


def test_nonuniform_config_forward_and_round_trip(tmp_path):
    cfg = nonuniform_config()
    torch.manual_seed(0)
    model = DRSformer(cfg).eval()
    assert model.latent[1].attn.temperature.shape == (8, 1, 1)
    assert model.latent[0].attn.qkv.weight.shape == (3 * 18, 32, 1, 1)
    assert model.encoder_level0.layers[1]._ops[1]._out[0].weight.shape == (6, 5 * 6, 1, 1)
    assert "encoder_level0.layers.1._ops.0._ops.3.op.4.weight" in model.state_dict()  # official op index kept
    x = torch.rand(2, 3, 40, 32)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()

    model.save_pretrained(tmp_path / "student")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == ["config.json", "model.safetensors"]
    again = DRSformer.from_pretrained(tmp_path / "student").eval()
    assert again.config == cfg
    with torch.no_grad():
        assert torch.equal(again(x), out)
    # training works on the non-uniform model
    loss = F.l1_loss(model.train()(x), torch.rand_like(x))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_wiring_is_what_the_forward_runs():
    """Every top-level module reads the channels and resolution the wiring table says and writes its stream."""
    cfg = nonuniform_config()
    model, widths, seen = DRSformer(cfg).eval(), stream_widths(cfg), {}
    for step in model.wiring:
        getattr(model, step.module).register_forward_hook(
            lambda m, args, out, name=step.module: seen.__setitem__(name, (args[0].shape, out.shape))
        )
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 48))
    assert list(seen) == [s.module for s in wiring.WIRING]  # every step, in forward order (both MEFCs present)
    for step in wiring.WIRING:
        (_, c_in, h, w), (_, c_out, _, _) = seen[step.module]
        assert c_in == sum(widths[r] for r in step.reads), step.module
        assert c_out == widths[step.writes], step.module
        assert (h, w) == (32 // 2 ** (step.level - 1), 48 // 2 ** (step.level - 1)), step.module
    assert wiring.STREAM_PARTS["decoder_level1"] == ("up2_1", "encoder_level1")
    assert [s.module for s in DRSformer(DRSformerConfig.preset("tiny_nomefc")).wiring if s.kind == "mefc"] == []


def test_config_json_round_trip_and_presets():
    for name in ("full", "nomefc", "tiny", "small", "base_cpu"):
        cfg = DRSformerConfig.preset(name)
        assert DRSformerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg = nonuniform_config()
    assert DRSformerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert not DRSformerConfig.preset("nomefc").mefc


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(up_widths=(14, 9, 6)), "decoder_level1: width must be"),
        (dict(norm_type="Batch"), "norm_type must be one of"),
        (dict(encoder_mefc=MEFCConfig(ops=((3, 1),))), "distinct increasing"),
        (dict(encoder_mefc=MEFCConfig(ops=((0, 8),))), r"lie in 0\.\.7"),
    ],
)
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        replace(nonuniform_config(), **change)


def test_config_errors_for_sizes():
    cfg = nonuniform_config()
    with pytest.raises(ConfigError, match="encoder_level2: width 13 must be a multiple of 4"):
        cfg.with_level("encoder_level2", LevelConfig(13, ()))
    with pytest.raises(ConfigError, match=r"latent\[0\]: head_dim must be >= 2"):
        cfg.with_level("latent", LevelConfig(32, (BlockConfig(4, 1, 8),)))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        DRSformerConfig.preset("huge")
    with pytest.raises(ConfigError, match="not divisible by heads"):
        DRSformerConfig.from_official_kwargs(dim=6, heads=(4, 2, 4, 8))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        DRSformer.from_pretrained(tmp_path)
    DRSformer(DRSformerConfig.preset("tiny")).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: cannot read"):
        DRSformer.from_pretrained(tmp_path)
    # a config that does not match the weights: named keys
    DRSformerConfig.preset("small").to_json(tmp_path / "config.json")
    with pytest.raises(ValueError, match="shape mismatch"):
        DRSformer.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------- input sizes
@pytest.mark.parametrize("size", [(37, 45), (8, 8), (3, 5), (64, 40)])
def test_any_input_size(size):
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset("tiny")).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if size[0] % 8 == 0 and size[1] % 8 == 0:
        with torch.no_grad():
            assert torch.equal(out, model.forward_features(x))


def test_import_drsformer_alone_stays_light():
    code = (
        "import sys, drsformer; "
        "heavy = ('compress', 'accelerate', 'torch_pruning', 'peft', 'pyiqa', 'datasets'); "
        "bad = [m for m in heavy if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_bf16_autocast_training_step_keeps_fp32_gradients():
    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset("tiny"))
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    loss = F.l1_loss(out.float(), x)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # the bf16 forward is close to the fp32 one
    with torch.no_grad():
        assert (model(x) - out.float()).abs().max().item() < 0.1


def test_mefc_config_semantics_make_expert_and_step_removal_exact():
    """An expert (or step) contributing zero can be dropped via the config with identical outputs."""
    torch.manual_seed(0)
    cfg = DRSformerConfig.preset("tiny")
    teacher = DRSformer(cfg).double().eval()
    mefc = teacher.encoder_level0.layers
    c = cfg.levels[0].width
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        mefc[1]._ops[0]._out[0].weight[:, 5 * c : 6 * c] = 0  # expert 5 (dil_conv_5x5) of step 0 contributes 0
        mefc[1]._ops[2]._out[0].weight.zero_()  # step 2 contributes 0: s = relu(0 + s) = s, as s >= 0
    ops = ((0, 1, 2, 3, 4, 6, 7), (0, 1, 2, 3, 4, 5, 6, 7), (0, 1, 2, 3, 4, 5, 6, 7))
    student_cfg = replace(cfg, encoder_mefc=MEFCConfig(ops=ops))  # teacher steps 0, 1 and 3 survive
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith("encoder_level0.layers.1._ops."):
            step = int(key.split(".")[4])
            if step == 2 or key.startswith("encoder_level0.layers.1._ops.0._ops.5."):
                continue
            new_step = step - (step > 2)
            key = key.replace(f"_ops.{step}.", f"_ops.{new_step}.", 1)
            if key == "encoder_level0.layers.1._ops.0._out.0.weight":
                value = torch.cat([value[:, : 5 * c], value[:, 6 * c :]], 1)
        elif key == "encoder_level0.layers.0.ca_fc.2.weight" or key == "encoder_level0.layers.0.ca_fc.2.bias":
            value = torch.cat([value[:16], value[24:]])  # drop step 2's eight router logits
        state[key] = value
    student = DRSformer(student_cfg).double().eval()
    student.load_state_dict(state, strict=True)
    x = torch.rand(1, 3, 24, 32, dtype=torch.float64)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max().item() < 1e-12


def test_native_and_cpu_depthwise_backward_agree(monkeypatch):
    """The CPU's hand-written depthwise backward and PyTorch's native one (other devices): same outputs and
    gradients, so the per-device kernel choice cannot change training."""
    import drsformer.model as model_module

    torch.manual_seed(0)
    model = DRSformer(DRSformerConfig.preset("tiny"))
    x = torch.rand(2, 3, 24, 16)
    results = {}
    for mode in ("custom", "native"):
        monkeypatch.setattr(model_module, "DEPTHWISE_BACKWARD", mode)
        model.zero_grad()
        out = model(x)
        (out.square().mean() + out.mean()).backward()
        results[mode] = (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["custom"][0], results["native"][0], rtol=0, atol=0)  # forward: one kernel
    for name, grad in results["native"][1].items():
        torch.testing.assert_close(results["custom"][1][name], grad, rtol=1e-4, atol=1e-7, msg=name)
    monkeypatch.setattr(model_module, "DEPTHWISE_BACKWARD", "auto")  # the hand-written one on the CPU only
    assert model_module._custom_backward(x) and not model_module._custom_backward(x.to("meta"))


def test_attention_logits_and_topk_stay_fp32_under_autocast():
    torch.manual_seed(0)
    attn = DRSformer(DRSformerConfig.preset("tiny")).encoder_level1[0].attn
    seen = {}
    original = topk_mixed_softmax

    def spy(logits, mix):
        seen["dtype"] = logits.dtype
        return original(logits, mix)

    import drsformer.model as model_module

    model_module.topk_mixed_softmax, restore = spy, model_module.topk_mixed_softmax
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = attn.heads(torch.rand(1, 8, 16, 16))
            assert q.dtype == torch.bfloat16  # the convs do run in bf16 ...
            assert attn.channel_logits(q, k).dtype == torch.float32  # ... the cosines do not
            out = attn(torch.rand(1, 8, 16, 16))
    finally:
        model_module.topk_mixed_softmax = restore
    assert seen["dtype"] == torch.float32 and out.dtype == torch.bfloat16


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace: what torch.onnx's exporter runs
@pytest.mark.parametrize("rewrite,fast_op", [("topk", "aten::cumsum"), ("mefc", "aten::bmm")])
def test_export_forms_trace_the_same_network(monkeypatch, rewrite, fast_op):
    """A traced graph (what torch.onnx exports) runs the official or the fast form of each rewrite as
    ``EXPORT_FAST`` says; both compute the eager network."""
    torch.manual_seed(0)
    model = DRSformer(nonuniform_config()).double().eval()
    x = torch.rand(1, 3, 24, 32, dtype=torch.float64)
    graphs = {}
    for fast in (True, False):
        monkeypatch.setitem(EXPORT_FAST, rewrite, fast)
        with torch.no_grad():
            traced = torch.jit.trace(model, x, check_trace=False)
            assert (traced(x) - model(x)).abs().max() < 1e-10, (rewrite, fast)
        graphs[fast] = str(traced.inlined_graph)
    assert fast_op in graphs[True] and fast_op not in graphs[False]
