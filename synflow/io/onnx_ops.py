"""Teach onnx2torch the newer opset versions whose meaning it already knows.

onnx2torch picks a converter by the version an operator last changed in, so a graph exported at
opset 19+ fails on `Identity`, `Reshape`, `Shape`... although those versions only widened the
list of accepted types (float8, int4, bfloat16). Registering the old converter under the new
version, through onnx2torch's own `add_converter` extension point, is exact for them.

Versions that changed behaviour get a guarded alias: the old converter runs only when the node
does not use what is new (e.g. `Pad` 18's `axes` input); otherwise conversion stops with a
message naming the operator. `Reduce*` 18 (axes moved from an attribute to an input) gets a
converter of its own. `ensure_registered()` is idempotent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.registry import add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OperationConverterResult,
    get_const_value,
)

#: Guard: the reason the old converter would be wrong for this node, or None when it is exact.
Guard = Callable[[OnnxNode], str | None]


def _always(node: OnnxNode) -> str | None:
    return None


def _no_dilations(node: OnnxNode) -> str | None:
    dilations = node.attributes.get("dilations")
    if dilations is not None and any(d != 1 for d in dilations):
        return "dilated AveragePool is not supported"
    return None


def _pad_without_axes(node: OnnxNode) -> str | None:
    if len(node.input_values) > 3 and node.input_values[3]:
        return "Pad with an `axes` input is not supported"
    if node.attributes.get("mode", "constant") == "wrap":
        return "Pad with mode='wrap' is not supported"
    return None


def _split_without_num_outputs(node: OnnxNode) -> str | None:
    if "num_outputs" in node.attributes:
        return "Split with `num_outputs` is not supported"
    return None


def _resize_classic(node: OnnxNode) -> str | None:
    attrs = node.attributes
    if attrs.get("antialias", 0) or "axes" in attrs:
        return "Resize with antialias or axes is not supported"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "Resize with keep_aspect_ratio_policy is not supported"
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        return "Resize with half_pixel_symmetric is not supported"
    return None


#: op type -> (newer versions, version onnx2torch converts, guard)
ALIASES: dict[str, tuple[tuple[int, ...], int, Guard]] = {
    # type-only changes (float8 / int4 / uint4 / bfloat16 / string support)
    "Identity": ((19, 21, 23, 24, 25), 16, _always),
    "Reshape": ((19, 21, 23, 24, 25), 14, _always),
    "Shape": ((19, 21, 23, 24, 25), 15, _always),
    "Cast": ((19, 21, 23, 24, 25), 13, _always),
    "Constant": ((19, 21, 23, 24, 25), 13, _always),
    "ConstantOfShape": ((20, 21, 23, 24, 25), 9, _always),
    "Flatten": ((21, 23, 24, 25), 13, _always),
    "Transpose": ((21, 23, 24, 25), 13, _always),
    "Squeeze": ((21, 23, 24, 25), 13, _always),
    "Unsqueeze": ((21, 23, 24, 25), 13, _always),
    "Equal": ((19,), 13, _always),
    "LessOrEqual": ((16,), 12, _always),
    "GreaterOrEqual": ((16,), 12, _always),
    "Conv": ((22,), 11, _always),
    "ConvTranspose": ((22,), 11, _always),
    "MaxPool": ((22,), 12, _always),
    "GlobalAveragePool": ((22,), 1, _always),
    "HardSigmoid": ((22,), 6, _always),
    "HardSwish": ((22,), 14, _always),
    "Dropout": ((22,), 13, _always),
    "Elu": ((22,), 6, _always),
    "Selu": ((22,), 6, _always),
    "Softplus": ((22,), 1, _always),
    "Softsign": ((22,), 1, _always),
    "InstanceNormalization": ((22,), 6, _always),
    # changes that matter only when the node uses them
    "AveragePool": ((19, 22), 11, _no_dilations),
    "Pad": ((18, 19, 21, 23, 24, 25), 13, _pad_without_axes),
    "Split": ((18,), 13, _split_without_num_outputs),
    "Resize": ((18, 19), 13, _resize_classic),
}

#: Reduce ops whose `axes` became an input in opset 18 (ReduceMax/Min changed again in 20, for
#: bool support only). ReduceSum made the same move in 13, which onnx2torch handles itself.
REDUCE_AXES_INPUT: dict[str, tuple[int, ...]] = {
    "ReduceMean": (18,),
    "ReduceMax": (18, 20),
    "ReduceMin": (18, 20),
    "ReduceProd": (18,),
    "ReduceL1": (18,),
    "ReduceL2": (18,),
    "ReduceLogSum": (18,),
    "ReduceLogSumExp": (18,),
    "ReduceSumSquare": (18,),
}


class _Passthrough(torch.nn.Module):
    """`Reduce*` with empty axes and `noop_with_empty_axes=1` returns its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _guarded(op_type: str, old_version: int, guard: Guard):
    convert_old = get_converter(operation_type=op_type, version=old_version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        reason = guard(node)
        if reason is not None:
            raise NotImplementedError(reason)
        return convert_old(node, graph)

    return convert


def _reduce_with_axes_input(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    keepdims = node.attributes.get("keepdims", 1)
    axes: list[int] | None = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError as exc:
            raise NotImplementedError(
                f"{node.operation_type} with axes computed at run time is not supported"
            ) from exc
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        module: torch.nn.Module = _Passthrough()
    else:
        module = OnnxReduceStaticAxes(node.operation_type, axes=axes, keepdims=keepdims)
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values),
    )


def _register(op_type: str, version: int, converter) -> None:
    # ValueError: already registered (by an earlier call, or by a newer onnx2torch)
    with contextlib.suppress(ValueError):
        add_converter(operation_type=op_type, version=version)(converter)


_registered = False


def ensure_registered() -> None:
    """Add the converters above to onnx2torch's registry (once per process)."""
    global _registered
    if _registered:
        return
    for op_type, (versions, old_version, guard) in ALIASES.items():
        for version in versions:
            _register(op_type, version, _guarded(op_type, old_version, guard))
    for op_type, versions in REDUCE_AXES_INPUT.items():
        for version in versions:
            _register(op_type, version, _reduce_with_axes_input)
    _registered = True
