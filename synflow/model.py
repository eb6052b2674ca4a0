"""A loaded model as the engine sees it, whatever file format it came from.

`LoadedModel` holds a runnable `torch.nn.Module`, the key under which each parameter is published
(TorchScript: its `state_dict()` name; ONNX: its initializer name), the layer type of each module,
and how to write the pruned model back in its own format. Prunable tensors are found here, by
layer type rather than by tensor rank: a `(C, 1, 1)` scale in a residual shortcut is not a weight.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synflow.errors import NoPrunableParametersError
from synflow.inputs import InputSpec

#: Layer types whose `weight` is prunable by default, by class name. TorchScript keeps the
#: eager class name in `original_name`, so the same names serve scripted and traced modules.
WEIGHT_LAYERS = frozenset(
    {
        "Linear",
        "Bilinear",
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
    }
)
NORM_LAYERS = frozenset(
    {
        "BatchNorm1d",
        "BatchNorm2d",
        "BatchNorm3d",
        "SyncBatchNorm",
        "LayerNorm",
        "GroupNorm",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
    }
)


def layer_type(module: torch.nn.Module) -> str:
    """Class name of an eager module, or the eager class a TorchScript module was made from."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


@dataclass(frozen=True)
class PrunableTensor:
    key: str  # published name (mask/weights key)
    param_name: str  # name in `module.named_parameters()`
    layer: str  # owning module's path
    layer_type: str  # e.g. "Conv2d"
    role: str  # "weight" | "bias" | "norm_weight" | "norm_bias"


@dataclass
class LoadedModel:
    format: str  # "torchscript" | "onnx"
    module: torch.nn.Module
    source: Path
    #: the file's own inputs, one per `forward` argument, when it states them (ONNX, .pt2)
    inputs: tuple[InputSpec, ...] | None = None
    #: parameter name -> published key; identity for TorchScript
    keys: dict[str, str] = field(default_factory=dict)
    #: writes `self.module` (already holding the pruned weights) to a path, in the source format
    writer: Callable[[LoadedModel, Path], None] | None = None
    #: format-specific prunable-tensor discovery; None = by layer type
    finder: Callable[[LoadedModel, bool, bool], list[PrunableTensor]] | None = None
    #: per input, the axes whose size the file leaves open (a dynamic batch stated as 1): a
    #: user's spec may set them to anything
    free_axes: tuple[frozenset[int], ...] | None = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of the file's one float32 input, when that is what it states."""
        if self.inputs is not None and len(self.inputs) == 1 and self.inputs[0].dtype == "float32":
            return self.inputs[0].shape
        return None

    @property
    def suffix(self) -> str:
        return {"torchscript": ".pt", "onnx": ".onnx"}.get(self.format, ".bin")

    def key_of(self, param_name: str) -> str:
        return self.keys.get(param_name, param_name)

    def save(self, path: Path) -> None:
        if self.writer is None:
            raise NotImplementedError(f"no writer for format {self.format}")
        self.writer(self, path)

    def prunable(
        self,
        prune_bias: bool = False,
        prune_batchnorm: bool = False,
        exclude: tuple[str, ...] | list[str] = (),
    ) -> list[PrunableTensor]:
        """Prunable tensors in module order, minus those whose key matches an `exclude` glob."""
        if self.finder is not None:
            found = self.finder(self, prune_bias, prune_batchnorm)
        else:
            found = find_by_layer_type(self, prune_bias, prune_batchnorm)
        kept = [
            t
            for t in found
            if not any(
                fnmatch.fnmatchcase(t.key, pat) or fnmatch.fnmatchcase(t.param_name, pat)
                for pat in exclude
            )
        ]
        if not kept:
            why = " after exclude patterns" if found else ""
            raise NoPrunableParametersError(
                "the model has no prunable parameters"
                + why
                + ": SynFlow prunes the weights of convolution and linear layers"
                + (" (and biases / normalisation scales when asked)" if not found else "")
                + "; check the model or loosen `exclude`"
            )
        return kept


def find_by_layer_type(
    model: LoadedModel, prune_bias: bool, prune_batchnorm: bool
) -> list[PrunableTensor]:
    """The reference code's rule: conv/linear weights; biases and norm scales when asked.

    As in ganguli-lab/Synaptic-Flow `masked_parameters`: a normalisation layer's bias counts as a
    bias, so it is pruned only with both flags.
    """
    found: list[PrunableTensor] = []
    seen: set[int] = set()
    for layer_name, module in model.module.named_modules():
        kind = layer_type(module)
        is_weight_layer = kind in WEIGHT_LAYERS
        is_norm = kind in NORM_LAYERS and prune_batchnorm
        if not (is_weight_layer or is_norm):
            continue
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.is_floating_point():
                continue
            if local == "weight":
                role = "norm_weight" if kind in NORM_LAYERS else "weight"
            elif local == "bias":
                if not prune_bias:
                    continue
                role = "norm_bias" if kind in NORM_LAYERS else "bias"
            else:
                continue
            seen.add(id(param))
            name = f"{layer_name}.{local}" if layer_name else local
            found.append(PrunableTensor(model.key_of(name), name, layer_name, kind, role))
    return found
