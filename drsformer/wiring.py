"""The U-Net's wiring, written once: which streams each top-level module reads and which one it writes.

A *stream* is a named tensor that flows between top-level modules. ``WIRING`` lists the modules in forward
order (their names are the official state-dict prefixes); a step reads its streams (more than one: they are
concatenated along channels in that order, the upsampled stream first and the skip second, as the official
forward does) and writes one stream (a stage or a MEFC rewrites the stream it reads).

Read by ``DRSformer`` (which builds every module from it and runs the forward over it), by the MAC and
parameter counters (``compress.measure``), by the width coupling of pruning (``compress.prune.width``) and
by the feature taps of distillation. A change to the U-Net is one edit here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import STAGES, UPSAMPLERS, DRSformerConfig, MEFCConfig


@dataclass(frozen=True)
class Step:
    module: str  # top-level module (official state-dict prefix)
    kind: str  # embed (3x3 conv), mefc, stage, down, up, reduce (1x1 conv on a concatenation), output (3x3 conv)
    reads: tuple[str, ...]  # streams, concatenated along channels in this order
    writes: str
    level: int  # resolution of the input: 1 = full, 2 = 1/2, 3 = 1/4, 4 = 1/8


WIRING = (
    Step("patch_embed", "embed", ("image",), "encoder_level1", 1),
    Step("encoder_level0", "mefc", ("encoder_level1",), "encoder_level1", 1),
    Step("encoder_level1", "stage", ("encoder_level1",), "encoder_level1", 1),
    Step("down1_2", "down", ("encoder_level1",), "encoder_level2", 1),
    Step("encoder_level2", "stage", ("encoder_level2",), "encoder_level2", 2),
    Step("down2_3", "down", ("encoder_level2",), "encoder_level3", 2),
    Step("encoder_level3", "stage", ("encoder_level3",), "encoder_level3", 3),
    Step("down3_4", "down", ("encoder_level3",), "latent", 3),
    Step("latent", "stage", ("latent",), "latent", 4),
    Step("up4_3", "up", ("latent",), "up4_3", 4),
    Step("reduce_chan_level3", "reduce", ("up4_3", "encoder_level3"), "decoder_level3", 3),
    Step("decoder_level3", "stage", ("decoder_level3",), "decoder_level3", 3),
    Step("up3_2", "up", ("decoder_level3",), "up3_2", 3),
    Step("reduce_chan_level2", "reduce", ("up3_2", "encoder_level2"), "decoder_level2", 2),
    Step("decoder_level2", "stage", ("decoder_level2",), "decoder_level2", 2),
    Step("up2_1", "up", ("decoder_level2",), "up2_1", 2),
    Step("decoder_level1", "stage", ("up2_1", "encoder_level1"), "decoder_level1", 1),
    Step("refinement", "mefc", ("decoder_level1",), "decoder_level1", 1),
    Step("output", "output", ("decoder_level1",), "residual", 1),
)
STEP = {step.module: step for step in WIRING}
MEFC_FIELDS = {"encoder_level0": "encoder_mefc", "refinement": "refinement_mefc"}  # site -> config field
# Streams with channels of their own (written by a conv): the residual widths that pruning can cut. A stream
# written by a stage or a MEFC from a concatenation (decoder_level1) carries its parts' channels.
WIDTH_STREAMS = tuple(s.writes for s in WIRING if s.kind in ("embed", "down", "up", "reduce"))
UNSHUFFLED = tuple(s.writes for s in WIRING if s.kind == "down")  # written through PixelUnshuffle(2)
# Module outputs that carry a residual stream: where feature taps compare a student with its teacher.
STREAM_OUTPUTS = {s.module: s.writes for s in WIRING if s.kind != "output"}


def _parts() -> dict[str, tuple[str, ...]]:
    parts = {name: (name,) for name in WIDTH_STREAMS}
    for s in WIRING:
        if s.kind in ("stage", "mefc") and s.writes not in WIDTH_STREAMS:
            parts[s.writes] = tuple(p for r in s.reads for p in parts[r])
    return parts


STREAM_PARTS = _parts()  # stream -> the width streams whose channels it carries, in channel order


def mefc_config(config: DRSformerConfig, site: str) -> MEFCConfig | None:
    return getattr(config, MEFC_FIELDS[site])


def steps(config: DRSformerConfig) -> tuple[Step, ...]:
    """The steps ``config``'s network has (a MEFC site is absent where its config is ``None``)."""
    return tuple(s for s in WIRING if s.kind != "mefc" or mefc_config(config, s.module) is not None)


def stream_widths(config: DRSformerConfig) -> dict[str, int]:
    """Channels of every stream: a stage's width, an upsampler's ``up_widths`` entry, image in/out channels."""
    widths = {"image": config.in_channels, "residual": config.out_channels}
    widths.update({name: level.width for name, level in zip(STAGES, config.levels)})
    widths.update(zip(UPSAMPLERS, config.up_widths))
    return widths


def check_widths(config: DRSformerConfig) -> list[str]:
    """What the wiring requires of ``config``'s widths, as messages (empty when it holds)."""
    widths, problems = stream_widths(config), []
    for name in UNSHUFFLED:
        if widths[name] % 4:
            problems.append(f"{name}: width {widths[name]} must be a multiple of 4 (PixelUnshuffle(2))")
    for name, parts in STREAM_PARTS.items():
        if len(parts) > 1 and widths[name] != sum(widths[p] for p in parts):
            expected = " + ".join(f"{p} width" for p in parts)
            problems.append(f"{name}: width must be {expected} = {sum(widths[p] for p in parts)} (it works on "
                            f"their concatenation), got {widths[name]}")  # fmt: skip
    return problems
