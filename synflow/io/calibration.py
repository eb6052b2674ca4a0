"""The header check of a calibration file: safetensors with `inputs` and optional `labels`.

Torch-free and bounded (the first 8 bytes, then at most `max_header_bytes` of JSON), so the API
can refuse a malformed or oversized file on the request path without parsing any tensor; the
engine runs the same check before `safetensors` reads the data. Safetensors, never a pickle.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from synflow.errors import CalibrationError
from synflow.inputs import InputSpec, format_input_spec
from synflow.io.limits import CalibrationLimits
from synflow.scorers.registry import ScorerSpec

INPUTS = "inputs"
LABELS = "labels"
#: safetensors dtype -> (torch's name, bytes per element)
FLOATING = {"F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2),
            "BF16": ("bfloat16", 2)}  # fmt: skip
INTEGER = {"I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1),
           "U8": ("uint8", 1)}  # fmt: skip
MAX_RANK = 8
HOW = (
    "write it with safetensors.torch.save_file({'inputs': x, 'labels': y}, 'calibration."
    "safetensors'): x a float (or integer token) batch, batch first; y int64 class indices"
)


@dataclass(frozen=True)
class CalibrationInfo:
    samples: int
    input_shape: tuple[int, ...]  # batch first
    input_dtype: str  # as torch spells it
    has_labels: bool

    @property
    def spec(self) -> InputSpec:
        """The input spec of one sample (batch 1), as the engine's specs are written."""
        return InputSpec((1, *self.input_shape[1:]), self.input_dtype)


def check_method_data(method: ScorerSpec, calibration: CalibrationInfo | None) -> None:
    """A data-driven method needs calibration data with labels; a data-free one refuses it (so
    that nobody believes data shaped masks it never saw)."""
    if method.needs_data and calibration is None:
        raise CalibrationError(
            f"method {method.name} scores weights on data: give a calibration file (safetensors "
            "with `inputs` and `labels`; CLI --calibration FILE, HTTP part `calibration`)"
        )
    if method.data_free and calibration is not None:
        raise CalibrationError(
            f"method {method.name} is data-free and would ignore the calibration file: leave it "
            "out, or choose a data-driven method (snip, grasp)"
        )
    if calibration is not None and not calibration.has_labels:
        raise CalibrationError(
            f"{method.name} needs `labels` in the calibration file (one int64 class index per "
            "sample): its score is the cross-entropy gradient, as in the method's paper"
        )


def match_inputs(own: InputSpec, specs: tuple[InputSpec, ...] | None) -> tuple[InputSpec, ...]:
    """The run's input specs given a calibration batch whose samples are `own`: `own` when the
    request and the file say nothing, else theirs, which the batch must match but for the
    batch size (floating with floating, integer with integer)."""
    if specs is None:
        return (own,)
    if len(specs) != 1:
        raise CalibrationError(
            f"the model takes {len(specs)} inputs; calibration data feeds models of one input"
        )
    (spec,) = specs
    if spec.is_floating != own.is_floating or spec.shape[1:] != own.shape[1:]:
        raise CalibrationError(
            f"the calibration inputs are {format_input_spec(own)} per sample, but the model "
            f"takes {format_input_spec(spec)}: give inputs of shape [N, "
            f"{', '.join(map(str, spec.shape[1:]))}] and "
            f"{'a floating' if spec.is_floating else 'an integer'} dtype"
        )
    return specs


def _bad(detail: str) -> CalibrationError:
    return CalibrationError(f"the calibration file {detail}; {HOW}")


def inspect_calibration(
    path: str | Path, limits: CalibrationLimits | None = None
) -> CalibrationInfo:
    """Check the file's size and header: tensor names, dtypes, shapes and byte ranges."""
    limits = limits or CalibrationLimits()
    size = os.path.getsize(path)
    if size > limits.max_file_bytes:
        raise CalibrationError(
            f"the calibration file is {size} bytes, over the limit of {limits.max_file_bytes}; "
            "send fewer samples (a few hundred are plenty for SNIP and GraSP)"
        )
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise _bad("is not safetensors (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > limits.max_header_bytes or 8 + length > size:
            raise _bad(f"is not safetensors (its header length {length} is implausible)")
        text = fh.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad("is not safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _bad("is not safetensors (its header is not a JSON object)")
    header.pop("__metadata__", None)
    unknown = sorted(set(header) - {INPUTS, LABELS})
    if unknown:
        raise _bad(f"holds tensors other than `inputs` and `labels`: {', '.join(unknown[:5])}")
    if INPUTS not in header:
        raise _bad("has no `inputs` tensor")
    entries = {name: _entry(name, header[name]) for name in header}
    dtype, shape, _ = entries[INPUTS]
    if dtype not in FLOATING and dtype not in INTEGER:
        raise _bad(f"has `inputs` of dtype {dtype}: give floating-point or integer inputs")
    if not 2 <= len(shape) <= MAX_RANK:
        raise _bad(
            f"has `inputs` of shape {list(shape)}: give a batch, batch first, e.g. [N, 64] or "
            "[N, 1, 8, 8] (at least 2 dimensions)"
        )
    if not 1 <= shape[0] <= limits.max_samples:
        raise _bad(f"has {shape[0]} samples: give between 1 and {limits.max_samples}")
    if LABELS in entries:
        ldtype, lshape, _ = entries[LABELS]
        if ldtype not in INTEGER:
            raise _bad(f"has `labels` of dtype {ldtype}: give integer class indices (int64)")
        if lshape != (shape[0],):
            raise _bad(
                f"has `labels` of shape {list(lshape)}: give one class index per sample, "
                f"shape [{shape[0]}]"
            )
    spans = sorted(span for _, _, span in entries.values())
    end = 0
    for begin, stop in spans:
        if begin != end:
            raise _bad("is not safetensors (its tensors' byte ranges overlap or leave gaps)")
        end = stop
    if 8 + length + end != size:
        raise _bad(f"is not safetensors (its tensors take {end} bytes, the file holds "
                   f"{size - 8 - length})")  # fmt: skip
    name, _ = (FLOATING | INTEGER)[dtype]
    return CalibrationInfo(shape[0], shape, name, LABELS in entries)


def _entry(name: str, info: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype, shape, (begin, end)) of one header entry, each checked for its type."""
    if not isinstance(info, dict):
        raise _bad(f"is not safetensors (entry `{name}` is not an object)")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise _bad(f"is not safetensors (entry `{name}` has no dtype)")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise _bad(f"is not safetensors (entry `{name}` has no valid shape)")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int and o >= 0 for o in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise _bad(f"is not safetensors (entry `{name}` has no valid data_offsets)")
    width = (FLOATING | INTEGER).get(dtype, (None, None))[1]
    if width is not None and offsets[1] - offsets[0] != math.prod(shape) * width:
        raise _bad(f"is not safetensors (entry `{name}`'s byte range does not fit its shape)")
    return dtype, tuple(shape), (offsets[0], offsets[1])
