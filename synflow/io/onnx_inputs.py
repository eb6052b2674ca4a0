"""The inputs an ONNX graph states: one `InputSpec` per graph input that is not an initializer.

A dynamic batch dimension (named or missing) becomes 1 and is marked free, so a request may set
it; any other dynamic dimension means the file does not state its inputs, and the request must.
"""

from __future__ import annotations

import onnx

from synflow.errors import InvalidModelError
from synflow.inputs import MAX_INPUTS, InputSpec

#: ONNX element types the engine can feed, by torch's dtype name
ELEM_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT16: "int16",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}
#: Name length kept when quoting names from the file in messages.
NAME_IN_MESSAGE = 60


def _quote(name: str) -> str:
    text = name if len(name) <= NAME_IN_MESSAGE else name[:NAME_IN_MESSAGE] + "..."
    return repr(text)


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    stored = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in stored]


def stated_inputs(
    model: onnx.ModelProto,
) -> tuple[tuple[InputSpec, ...] | None, tuple[frozenset[int], ...] | None]:
    """(specs, free axes per input), or (None, None) when a shape is not static; refuses inputs
    the engine cannot feed (not a tensor, or an element type it has no dtype for)."""
    inputs = graph_inputs(model.graph)
    if not inputs:
        raise InvalidModelError("the ONNX graph has no inputs, so there is nothing to feed it")
    if len(inputs) > MAX_INPUTS:
        raise InvalidModelError(
            f"the model has {len(inputs)} inputs; the engine feeds at most {MAX_INPUTS}"
        )
    specs: list[InputSpec] = []
    free: list[frozenset[int]] = []
    static = True
    for value in inputs:
        if not value.type.HasField("tensor_type"):
            raise InvalidModelError(
                f"the model's input {_quote(value.name)} is not a tensor; export the model with "
                "tensor inputs only"
            )
        tensor_type = value.type.tensor_type
        dtype = ELEM_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise InvalidModelError(
                f"the model's input {_quote(value.name)} is {kind}, which the engine cannot "
                f"feed; export it with one of: {', '.join(sorted(set(ELEM_DTYPES.values())))}"
            )
        if not tensor_type.HasField("shape") or not tensor_type.shape.dim:
            static = False
            continue
        shape, open_axes = [], set()
        for axis, dim in enumerate(tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(1)  # a dynamic batch: one sample is enough
                open_axes.add(0)
            else:
                static = False
                break
        specs.append(InputSpec(tuple(shape), dtype))
        free.append(frozenset(open_axes))
    if not static:
        return None, None
    return tuple(specs), tuple(free)
