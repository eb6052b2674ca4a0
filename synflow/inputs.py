"""What a model's `forward` is fed: one `InputSpec` (shape and dtype) per argument, in order.

Text form `[dtype:]d0,d1,...`, e.g. `1,3,224,224` (float32) or `int64:1,128`; dtypes are spelled
as torch spells them. Torch-free, so the API validates requests without the numerical stack.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

#: an all-ones input of 1 GiB in float32 is already absurd
MAX_INPUT_ELEMENTS = 1 << 28
#: at most this many `forward` arguments
MAX_INPUTS = 16

FLOATING_DTYPES = ("float32", "float16", "bfloat16", "float64")
INTEGER_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool")
DTYPES = FLOATING_DTYPES + INTEGER_DTYPES
#: other spellings people write, mapped to torch's
DTYPE_ALIASES = {
    "float": "float32",
    "half": "float16",
    "double": "float64",
    "long": "int64",
    "int": "int32",
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
}

#: integers (negative ones get their own message) separated by commas, "x" or spaces
_SHAPE_TEXT = re.compile(r"-?\d+(?:\s*[,x]\s*-?\d+|\s+-?\d+)*")


def parse_shape(value: Any, what: str = "input_shape") -> tuple[int, ...] | None:
    """Accept `1,3,224,224`, `1x3x224x224`, `[1, 3, 224, 224]` (JSON) or a sequence of ints."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{what} {text!r} is not a JSON list of integers") from exc
        else:
            if not _SHAPE_TEXT.fullmatch(text):
                raise ValueError(
                    f"{what} {text!r} must be integers separated by commas, e.g. 1,3,224,224"
                )
            value = [int(p) for p in re.split(r"[\s,x]+", text)]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{what} must be a non-empty list of integers, e.g. 1,3,224,224")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"{what} {list(value)!r} must contain only integers")
    if any(v < 1 for v in value):
        raise ValueError(f"{what} {list(value)} has a dimension below 1; every size must be >= 1")
    if math.prod(value) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{what} {list(value)} has more than {MAX_INPUT_ELEMENTS} elements")
    return tuple(value)


def parse_dtype(name: str) -> str:
    """torch's name for a dtype (`float32`, `int64`, ...), accepting `torch.` and common aliases."""
    key = name.strip().lower().removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown input dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return key


@dataclass(frozen=True)
class InputSpec:
    """One `forward` argument: an all-ones tensor of this shape (batch first) and dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def is_floating(self) -> bool:
        return self.dtype in FLOATING_DTYPES

    def __str__(self) -> str:
        return format_input_spec(self)


def parse_input_spec(value: Any) -> InputSpec:
    """`[dtype:]d0,d1,...` text, a JSON object `{"shape": [...], "dtype": "..."}`, a shape list,
    or an `InputSpec`; ValueError saying what is wrong otherwise."""
    if isinstance(value, InputSpec):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"shape", "dtype"})
        if unknown or "shape" not in value:
            raise ValueError(
                'an input given as an object needs "shape" and may have "dtype", e.g. '
                f'{{"shape": [1, 128], "dtype": "int64"}} (got keys: {", ".join(map(str, value))})'
            )
        dtype = value.get("dtype", "float32")
        if not isinstance(dtype, str):
            raise ValueError(f"input dtype {dtype!r} must be a string such as int64")
        shape = parse_shape(value["shape"], "input shape")
        if shape is None:
            raise ValueError("an input needs a shape, e.g. 1,3,224,224")
        return InputSpec(shape, parse_dtype(dtype))
    if isinstance(value, list | tuple):
        shape = parse_shape(list(value), "input shape")
        assert shape is not None
        return InputSpec(shape)
    if not isinstance(value, str):
        raise ValueError(f"input {value!r} must be text such as int64:1,128 or 1,3,224,224")
    text = value.strip()
    dtype = "float32"
    if ":" in text:
        name, _, text = text.partition(":")
        dtype = parse_dtype(name)
    if not text.strip():
        raise ValueError(f"input {value!r} has no shape; write [dtype:]d0,d1,..., e.g. int64:1,128")
    shape = parse_shape(text, "input shape")
    assert shape is not None
    return InputSpec(shape, dtype)


def parse_input_specs(value: Any) -> tuple[InputSpec, ...] | None:
    """A list of specs (text, objects), a JSON list of them, or one spec text."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [text]
        if not isinstance(value, list):
            raise ValueError("inputs must be a list of specs such as ['int64:1,128']")
    elif isinstance(value, InputSpec | dict):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError("inputs must be a list of specs such as ['int64:1,128']")
    if len(value) > MAX_INPUTS:
        raise ValueError(f"at most {MAX_INPUTS} inputs, got {len(value)}")
    specs = tuple(parse_input_spec(v) for v in value)
    total = sum(math.prod(s.shape) for s in specs)
    if total > MAX_INPUT_ELEMENTS:
        raise ValueError(f"the inputs have more than {MAX_INPUT_ELEMENTS} elements together")
    return specs


def format_input_spec(spec: InputSpec) -> str:
    """The text form; `parse_input_spec(format_input_spec(s)) == s`."""
    shape = ",".join(map(str, spec.shape))
    return shape if spec.dtype == "float32" else f"{spec.dtype}:{shape}"


def format_input_specs(specs: tuple[InputSpec, ...] | None) -> str:
    """For messages: `int64:1,128 int64:1,128`, or `none`."""
    return " ".join(format_input_spec(s) for s in specs) if specs else "none"
