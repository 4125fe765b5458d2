"""Distillation from a frozen teacher: output and feature losses, 1x1 adapters, optional LoRA (peft).

``FeatureTaps(model, ["encoder_level1", "latent"])`` records the outputs of modules by path. Structured
pruning keeps the topology, so the same paths exist in teacher and student. ``conv1x1``: a 1x1 adapter
(FitNets) maps the student's channels to the teacher's; it trains with the student and is dropped at
export. It starts as the identity, or, where width pruning cut the tap's stream, as the embedding of each
student channel into the teacher channel it was cut from (``PruneReport.kept_channels``), so the first
feature loss measures the pruning itself. ``kept_channels``: no adapter; the student's channels are
compared with the teacher channels they were cut from.

Attention distillation (``attention_weight``) compares every student TKSA's channel-attention cosine
logits with the teacher's at the heads and channels the student kept (``PruneReport.kept_attention``):
no adapter is needed, since a kept channel is the same q/k projection in both networks.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from compress.prune import kept_attention
from drsformer.model import Attention


class FeatureTaps:
    """Forward hooks on modules of ``model`` by path; ``taps.features`` maps path -> last output."""

    def __init__(self, model: nn.Module, paths: list[str]):
        modules = dict(model.named_modules())
        missing = [p for p in paths if p not in modules]
        if missing:
            top = sorted({name.split(".")[0] for name in modules if name})
            raise KeyError(f"distill.taps: no module {missing} in {type(model).__name__}; top-level modules: {top}")
        self.features: dict[str, torch.Tensor] = {}
        self.handles = [modules[p].register_forward_hook(self._hook(p)) for p in paths]

    def _hook(self, path: str):
        def hook(module, inputs, output):
            self.features[path] = output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class AttentionTaps:
    """The channel-attention cosine logits (b, heads, c, c) of every TKSA of ``model``, by module path:
    ``Attention.channel_logits`` is wrapped per instance (the logits are not a module output)."""

    def __init__(self, model: nn.Module):
        self.logits: dict[str, torch.Tensor] = {}
        self.modules = {name: m for name, m in model.named_modules() if isinstance(m, Attention)}
        for name, module in self.modules.items():
            module.channel_logits = functools.partial(self._record, name)

    def _record(self, name: str, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        self.logits[name] = Attention.channel_logits(q, k)
        return self.logits[name]

    def remove(self) -> None:
        for module in self.modules.values():
            vars(module).pop("channel_logits", None)


def attention_kd(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], kept: dict[str, tuple]
) -> dict[str, torch.Tensor]:
    """Per student TKSA: L1 between its cosine logits and the teacher's at the heads and channels it kept
    (``kept``: student path -> (teacher path, kept heads, per kept head the kept channels))."""
    losses = {}
    for path, logits in student.items():
        t_path, heads, channels = kept[path]
        idx = torch.as_tensor(channels, device=logits.device)  # (heads_s, c_s); no copy if already there
        h = torch.as_tensor(heads, device=logits.device)[:, None, None]
        target = teacher[t_path][:, h, idx[:, :, None], idx[:, None, :]]  # (b, heads_s, c_s, c_s)
        losses[path] = F.l1_loss(logits.float(), target.float())
    return losses


LORA_PATTERN = r".*\.({})$"


def add_lora(student: nn.Module, cfg) -> nn.Module:
    """Wrap ``student`` with LoRA adapters (peft) on its 1x1 convs named by ``cfg.targets``; base weights frozen.

    peft cannot target depthwise convs (``../shared/INSTALL.md``), hence 1x1 convs only.
    """
    from peft import LoraConfig, get_peft_model

    bypassed = [t for t in cfg.targets if "ffn.project_out".endswith(t) or "_out.0".endswith(t)]
    if bypassed:  # the forward reads these weights directly, so a LoRA layer there would never be used
        raise ValueError(f"lora.targets: {bypassed} cannot be adapted (MSFN/MEFC output convs are applied through "
                         "their weights); use attn.qkv, attn.project_out, ffn.project_in")  # fmt: skip
    targets = "|".join(t.replace(".", r"\.") for t in cfg.targets)
    config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=LORA_PATTERN.format(targets))
    return get_peft_model(student, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """A plain module with the LoRA updates merged into its weights (the wrapped model is left untouched)."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return copy.deepcopy(model).merge_and_unload()


class Distiller:
    """The teacher side of a student's training: ``distiller(rainy, derained, clean)`` -> weighted loss terms.

    ``clean`` covers the first ``len(clean)`` images of the batch (synthetic pairs); the rest (real rain)
    are learned from the teacher's output only.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, cfg, device="cpu", kept_channels=None, kept_attention=None
    ):
        self.cfg = cfg
        self.kept = {}  # tap -> teacher channels behind the student's (only where widths differ)
        self.teacher = teacher.eval().requires_grad_(False)
        feature_paths = list(cfg.taps) if cfg.feature_weight > 0 else []
        self.teacher_taps = FeatureTaps(self.teacher, feature_paths)
        self.student_taps = FeatureTaps(student, feature_paths)
        self.adapters = nn.ModuleDict()
        if feature_paths:
            widths = _tap_widths(self.teacher, student, feature_paths)
            for path, (t_width, s_width) in widths.items():
                kept = _kept_at(kept_channels or {}, path) if t_width != s_width else None
                if kept is not None and len(kept) == s_width:
                    self.kept[path] = kept
                elif t_width != s_width and cfg.adapters == "kept_channels":
                    raise ValueError(f"distill.adapters kept_channels: tap {path} has {s_width} student and "
                                     f"{t_width} teacher channels and no record of which teacher channels "
                                     "the student kept; use conv1x1")  # fmt: skip
                if cfg.adapters == "kept_channels":
                    continue
                adapter = nn.Conv2d(s_width, t_width, 1, bias=False)
                if s_width == t_width:
                    nn.init.dirac_(adapter.weight)  # start as the identity
                elif path in self.kept:
                    with torch.no_grad():
                        adapter.weight.zero_()[self.kept[path], range(s_width)] = 1.0  # embed each kept channel
                self.adapters[path.replace(".", "__")] = adapter
        self.adapters.to(device)
        self.attention = None  # (student taps, teacher taps, kept map) with attention_weight > 0
        if cfg.attention_weight > 0:
            kept = kept_attention or _unpruned_attention(teacher, student)
            _check_attention(teacher, student, kept)
            # index tensors made once on the device: none is copied from a Python list inside a step
            kept = {path: (t, torch.tensor(h, device=device), torch.tensor(c, device=device))
                    for path, (t, h, c) in kept.items()}  # fmt: skip
            self.attention = (AttentionTaps(student), AttentionTaps(self.teacher), kept)

    @property
    def uses_teacher(self) -> bool:
        """Whether any loss term needs the teacher's forward pass (output, features or attention)."""
        return self.cfg.output_weight > 0 or self.cfg.feature_weight > 0 or self.attention is not None

    @property
    def learns_unlabelled(self) -> bool:
        """Real rain without ground truth is learned from the teacher's signal (none for ground truth only)."""
        return self.uses_teacher

    def trainable_module(self) -> nn.Module:
        """The distiller's own trainable tensors (the 1x1 adapters), trained and all-reduced with the student."""
        return self.adapters

    def prepare(self, accelerator) -> None:
        self.teacher = accelerator.prepare_model(self.teacher, evaluation_mode=True)

    def __call__(self, rainy: torch.Tensor, derained: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        derained = derained.float()
        terms = {}
        if cfg.gt_weight > 0:
            terms["gt_l1"] = cfg.gt_weight * F.l1_loss(derained[: len(clean)], clean)
        if not self.uses_teacher:  # ground truth only (a fine-tuned student, a teacher trained on): no forward
            return terms
        with torch.no_grad():
            target = self.teacher(rainy).float()
        if cfg.output_weight > 0:
            terms["output_kd"] = cfg.output_weight * F.l1_loss(derained, target)
        if cfg.feature_weight > 0:
            losses = []
            for path in cfg.taps:
                student = self.student_taps.features[path].float()
                key = path.replace(".", "__")
                teacher = self.teacher_taps.features[path].float()
                if key in self.adapters:
                    student = self.adapters[key](student)
                elif path in self.kept:
                    teacher = teacher[:, self.kept[path]]
                losses.append(F.l1_loss(student, teacher))
            terms["feature_kd"] = cfg.feature_weight * torch.stack(losses).mean()
        if self.attention is not None:
            student_taps, teacher_taps, kept = self.attention
            losses = attention_kd(student_taps.logits, teacher_taps.logits, kept)
            terms["attention_kd"] = cfg.attention_weight * torch.stack(list(losses.values())).mean()
        return terms


def _unpruned_attention(teacher: nn.Module, student: nn.Module) -> dict[str, tuple]:
    """The kept map of a student with the teacher's config: every head and channel of every block."""
    if student.config != teacher.config:
        raise ValueError("distill.attention_weight: student TKSAs differ from the teacher's and no kept map "
                         "(PruneReport.kept_attention) was given; pass the pruning report's")  # fmt: skip
    return kept_attention(teacher.config)


def _check_attention(teacher: nn.Module, student: nn.Module, kept: dict[str, tuple]) -> None:
    """Every student TKSA maps onto a teacher TKSA with as many kept heads and channels as it has."""
    t_mods = dict(teacher.named_modules())
    for path, m in student.named_modules():
        if not isinstance(m, Attention):
            continue
        t_path, heads, channels = kept.get(path, (None, [], []))
        t = t_mods.get(t_path)
        if not isinstance(t, Attention) or len(heads) != m.num_heads or {len(c) for c in channels} != {m.head_dim}:
            raise ValueError(f"distill.attention_weight: student TKSA {path} ({m.num_heads} heads x {m.head_dim}) "
                             "has no matching teacher heads; attention distillation needs a student pruned "
                             "from this teacher (or an unpruned copy)")  # fmt: skip


def _kept_at(kept_channels: dict[str, list[int]], path: str) -> list[int] | None:
    """The kept teacher channels at a tap: the module's own entry, or its stage's for a block output."""
    if path in kept_channels:
        return kept_channels[path]
    stage, _, block = path.partition(".")
    return kept_channels.get(stage) if block.isdigit() else None


@torch.no_grad()
def _tap_widths(teacher: nn.Module, student: nn.Module, paths: list[str]) -> dict[str, tuple[int, int]]:
    """Channels at each tap, from one small forward of both networks."""
    x = torch.rand(1, 3, 16, 16, device=next(teacher.parameters()).device)
    taps = FeatureTaps(teacher, paths), FeatureTaps(student, paths)
    was_training = student.training
    teacher(x), student.eval()(x)
    student.train(was_training)
    widths = {p: (taps[0].features[p].shape[1], taps[1].features[p].shape[1]) for p in paths}
    for t in taps:
        t.remove()
    return widths
