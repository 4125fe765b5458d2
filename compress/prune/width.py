"""Width units: ``width``, one channel of a residual stream (four after a PixelUnshuffle: one downsample conv
row), and the coupling that says which dimension of which weight carries which stream.

A stream (``drsformer.wiring``) is every tensor that carries the same channels: its stages' blocks (norms,
qkv and project_in columns, project_out rows), the conv or MEFC that writes it and every module that reads
it (the next resample, the skip concatenation into a reduce conv or into decoder_level1, the output conv).
decoder_level1 and the refinement MEFC carry cat[up2_1, encoder_level1], so they shrink with those two.

Not exact for a channel that is zero everywhere: it takes part in the LayerNorm statistics of its stage, so
removing it rescales the kept channels' normalisation slightly. Exact for a network whose LayerNorms see
only the kept channels (tested).
"""

from __future__ import annotations

import torch

from drsformer import DRSformerConfig
from drsformer.wiring import STEP, STREAM_OUTPUTS, STREAM_PARTS, WIDTH_STREAMS, stream_widths

from .plan import Plan, PruneError, Unit, unit_channels, width_units

MIN_WIDTH = 2  # channels (or unshuffled groups of 4) a stream keeps at least
Owner = tuple[str, int]  # (width stream, width unit)


def owners(config: DRSformerConfig) -> dict[str, list[Owner]]:
    """The owner (width stream, unit) of every channel of every stream."""
    widths = stream_widths(config)
    own = {s: [(s, i // unit_channels(s)) for i in range(widths[s])] for s in WIDTH_STREAMS}
    return {name: [o for part in parts for o in own[part]] for name, parts in STREAM_PARTS.items()}


def coupling(key: str, shape: torch.Size, streams: dict[str, list[Owner]]) -> dict[int, list[Owner]]:
    """For one state entry, ``{dim: owner of each index}`` along every dimension that carries a stream (empty
    when none does). What each kind of module couples is written here and only here."""
    module, name = key.split(".", 1)
    if module not in STEP:
        raise PruneError(f"no width coupling known for state entry {key!r}")
    step = STEP[module]
    reads = [o for r in step.reads for o in streams.get(r, [])]  # the image has no owners
    out = streams.get(step.writes, [])
    if step.kind == "stage":  # name = "<block>.<rest>"
        rest = name.split(".", 1)[1]
        if rest.startswith(("norm1.", "norm2.", "attn.project_out.", "ffn.project_out.")):
            return {0: out}
        return {1: out} if rest in ("attn.qkv.weight", "ffn.project_in.weight") else {}
    if step.kind == "mefc":
        if name == "layers.0.ca_fc.0.weight":
            return {1: out}
        if not name.startswith("layers.1.") or not name.endswith("weight"):
            return {}
        if name.endswith("_out.0.weight"):
            return {0: out, 1: out * (shape[1] // len(out))}  # one column block per kept expert op
        return {0: out} if shape[1] == 1 else {0: out, 1: out}  # depthwise / 1x1 (c -> c)
    if step.kind in ("down", "up"):  # PixelUnshuffle: a conv row is a unit; PixelShuffle: 4 rows per channel
        per_row = 1 if step.kind == "down" else 4
        return {0: [(step.writes, r // per_row) for r in range(shape[0])], 1: reads}
    if step.kind == "output":
        return {1: reads} if name == "weight" else {}
    if step.kind == "embed":
        return {0: out}
    return {0: out, 1: reads} if name == "weight" else {0: out}  # reduce


def _kept_index(own: list[Owner], kept: dict[str, set[int]]) -> list[int]:
    """The indices (of a stream-carrying dimension) whose owning width unit is kept."""
    return [i for i, (stream, unit) in enumerate(own) if unit in kept[stream]]


def slice_widths(state: dict, config: DRSformerConfig, kept: dict[str, list[int]]) -> dict:
    """``state`` (of a ``config`` network) with every stream cut to its ``kept`` units."""
    streams, keep = owners(config), {s: set(units) for s, units in kept.items()}
    out = {}
    for key, value in state.items():
        for dim, own in coupling(key, value.shape, streams).items():
            value = value.index_select(dim, torch.tensor(_kept_index(own, keep), dtype=torch.long))
        out[key] = value
    return out


def units(scores: dict, config: DRSformerConfig) -> list[Unit]:
    """One unit per width unit of every stream; its score sums every weight slice the unit owns."""
    streams = owners(config)
    totals = {(s, i): 0.0 for s in WIDTH_STREAMS for i in range(width_units(config, s))}
    for key, score in scores.items():
        for dim, own in coupling(key, score.shape, streams).items():
            per_index = score.sum([d for d in range(score.dim()) if d != dim]) if score.dim() > 1 else score
            for (s, unit), value in zip(own, per_index.tolist()):
                totals[s, unit] += value
    return [Unit("width", (s,), unit, total) for (s, unit), total in totals.items()]


def remove_width(plan: Plan, unit: Unit) -> bool:
    kept = plan.widths[unit.where[0]]
    if unit.index not in kept or len(kept) <= MIN_WIDTH:
        return False
    kept.remove(unit.index)
    return True


def kept_channels(config: DRSformerConfig, plan: Plan) -> dict[str, list[int]]:
    """For every module output that carries a stream (``STREAM_OUTPUTS``) whose width the plan cuts: the
    teacher channel behind each student channel."""
    streams, keep = owners(config), {s: set(units) for s, units in plan.widths.items()}
    kept = {}
    for path, stream in STREAM_OUTPUTS.items():
        index = _kept_index(streams[stream], keep)
        if len(index) < len(streams[stream]):
            kept[path] = index
    return kept
