"""Channel-pruned models back in their upload format.

ONNX: the pruned module (the onnx2torch graph, layers shrunk in place) is exported again with
torch's TorchScript-based ("legacy") exporter, which writes plain standard operators; the graph's
input and output names, its default-domain opset and its open (dynamic) axes are those of the
upload, so a caller's feeds and fetches keep working. Initializer and node names are the
exporter's: the weights of a smaller model are new tensors, so the upload's names would no longer
describe them (`masks.safetensors` maps the kept channels onto the upload's initializers).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from synflow.io.atomic import write_atomically
from synflow.io.formats import ONNX, model_file
from synflow.io.onnx_inputs import graph_inputs
from synflow.model import LoadedModel

#: Newest default-domain opset the legacy exporter writes; an upload's newer opset is lowered.
MAX_EXPORT_OPSET = 20


def _opset(graph: onnx.ModelProto) -> int:
    versions = [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")]
    return min(max(versions or [17]), MAX_EXPORT_OPSET)


def write_onnx_channels(
    model: LoadedModel, out_dir: Path, inputs: tuple[torch.Tensor, ...]
) -> list[str]:
    """`model.onnx`: the smaller model as one self-contained ONNX file."""
    original = model.origin.graph
    input_names = [v.name for v in graph_inputs(original.graph)]
    output_names = [v.name for v in original.graph.output]
    dynamic: dict[str, dict[int, str]] = {}
    for name, axes in zip(input_names, model.free_axes or (), strict=False):
        if axes:
            dynamic[name] = {axis: f"{name}_dim{axis}" for axis in sorted(axes)}
    if dynamic and any(0 in axes for axes in dynamic.values()):
        dynamic.update({name: {0: "batch"} for name in output_names})
    name = model_file(ONNX)

    def export(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.module,
                inputs,
                str(tmp),
                dynamo=False,
                input_names=input_names,
                output_names=output_names,
                opset_version=_opset(original),
                dynamic_axes=dynamic or None,
            )
        onnx.checker.check_model(onnx.load(str(tmp)))

    write_atomically(Path(out_dir) / name, export)
    return [name]
