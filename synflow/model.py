"""A loaded model as the engine sees it, whatever file format it came from.

`LoadedModel` holds a runnable `torch.nn.Module`, the key under which each parameter is published
(TorchScript: its `state_dict()` name; ONNX: its initializer name), the layer type of each module,
and how to write the pruned model back in its own format. Prunable tensors are found here: by the
ops the model runs (`synflow.discovery`: a parameter is prunable when it is used as a weight) when
an input is known, else by layer type; never by tensor rank (a `(C, 1, 1)` scale in a residual
shortcut is not a weight). A parameter shared by several layers (tied weights) is one prunable
tensor under the first name `named_parameters()` gives it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from synflow import discovery
from synflow.discovery import DenseParameter
from synflow.errors import ExcludeMatchesNothingError, NoPrunableParametersError
from synflow.inputs import InputSpec
from synflow.io.formats import format_spec

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
    role: str  # "weight" | "embedding" | "bias" | "norm_weight" | "norm_bias"
    op: str = ""  # the aten op that uses it in that role (op-based discovery only)
    #: graph formats whose parameters are named initializers (ONNX): the first node, in graph
    #: order, that uses it in that role (its name in the file) and that node's op type, so that
    #: a key like `onnx::Conv_214` can be traced to its layer
    node: str = ""
    op_type: str = ""


@dataclass(frozen=True)
class Discovery:
    """Every parameter of a model, sorted into prunable and dense (with the reason)."""

    prunable: list[PrunableTensor]
    dense: list[DenseParameter]
    #: "ops" (weight operands of the ops run), "layer type" (no input known), or the format's
    method: str


@dataclass
class LoadedModel:
    format: str  # a name in the format registry, `synflow.io.formats.FORMATS`
    module: torch.nn.Module
    source: Path
    #: the file's own inputs, one per `forward` argument, when it states them (ONNX, .pt2)
    inputs: tuple[InputSpec, ...] | None = None
    #: parameter name -> published key; identity for TorchScript
    keys: dict[str, str] = field(default_factory=dict)
    #: what the format's writer needs from the file as it was loaded (ONNX: the uploaded graph
    #: and its parameters); None where the module alone is enough (TorchScript)
    origin: Any = None
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
        return format_spec(self.format).suffix

    def key_of(self, param_name: str) -> str:
        return self.keys.get(param_name, param_name)

    def save(self, out_dir: Path) -> list[str]:
        """Write the pruned model into `out_dir` in its own format; the file names written."""
        return format_spec(self.format).write(self, Path(out_dir))

    def prunable(
        self,
        prune_bias: bool = False,
        prune_batchnorm: bool = False,
        exclude: tuple[str, ...] | list[str] = (),
        *,
        prune_embedding: bool = False,
        inputs: Sequence[torch.Tensor] | None = None,
    ) -> list[PrunableTensor]:
        """Prunable tensors in parameter order, minus those whose key matches an `exclude` glob."""
        return self.discover(
            prune_bias, prune_batchnorm, exclude, prune_embedding=prune_embedding, inputs=inputs
        ).prunable

    def discover(
        self,
        prune_bias: bool = False,
        prune_batchnorm: bool = False,
        exclude: tuple[str, ...] | list[str] = (),
        *,
        prune_embedding: bool = False,
        inputs: Sequence[torch.Tensor] | None = None,
    ) -> Discovery:
        """Sort every parameter into prunable or dense. With `inputs` (the all-ones input the
        scorer feeds) the rule is the ops the model runs on them; without, the layer type."""
        flags = (prune_bias, prune_batchnorm, prune_embedding)
        if self.finder is not None:
            found = self.finder(self, prune_bias, prune_batchnorm)
            candidates = {t.param_name: t for t in self.finder(self, True, True)}
            result = self._sorted(found, candidates, exclude, flags, method=self.format)
        elif inputs is None:
            found = find_by_layer_type(self, prune_bias, prune_batchnorm)
            candidates = {t.param_name: t for t in find_by_layer_type(self, True, True)}
            result = self._sorted(found, candidates, exclude, flags, method="layer type")
        else:
            result = self._by_ops(inputs, exclude, flags)
        _check_exclude_matches(result, exclude)
        if not result.prunable:
            excluded = any(d.reason == discovery.EXCLUDED for d in result.dense)
            raise NoPrunableParametersError(
                "the model has no prunable parameters"
                + (" after exclude patterns" if excluded else "")
                + ": SynFlow prunes the parameters the model uses as weights of convolutions, "
                "linear layers, matrix products and recurrent cells"
                + ("" if excluded else " (and biases, normalisation scales, embeddings when asked)")
                + "; check the model or loosen `exclude`"
            )
        return result

    def _sorted(self, found, candidates, exclude, flags, method: str) -> Discovery:
        """A finder's result (in its own order) minus `exclude`, and the dense parameters with
        their reasons; `candidates` = what the finder finds with every flag on."""
        excluded = {t.param_name for t in found if discovery.matches(exclude, t.key, t.param_name)}
        prunable = [t for t in found if t.param_name not in excluded]
        chosen = {t.param_name for t in found}
        dense = []
        for name, p in self.module.named_parameters():
            key = self.key_of(name)
            shape = tuple(p.shape)
            if name in excluded:
                dense.append(DenseParameter(key, name, shape, discovery.EXCLUDED))
            elif name in chosen:
                continue
            elif not p.is_floating_point():
                dense.append(DenseParameter(key, name, shape, discovery.INTEGER_DTYPE))
            elif name in candidates and candidates[name].role in discovery.OPTION_OFF:
                reason = discovery.OPTION_OFF[candidates[name].role]
                dense.append(DenseParameter(key, name, shape, reason))
            else:
                dense.append(DenseParameter(key, name, shape, discovery.NOT_WEIGHT_OPERAND))
        return Discovery(prunable, dense, method)

    def _by_ops(self, inputs, exclude, flags) -> Discovery:
        named = dict(self.module.named_parameters())  # one name per tensor: the first
        floating = {n: p for n, p in named.items() if p.is_floating_point()}
        try:
            tracer = discovery.trace_uses(self.module, inputs, floating)
        except discovery.OpTraceFailed as exc:
            found = find_by_layer_type(self, *flags[:2])
            candidates = {t.param_name: t for t in find_by_layer_type(self, True, True)}
            method = f"layer type (the op trace failed: {str(exc)[:200]})"
            return self._sorted(found, candidates, exclude, flags, method=method)
        modules = dict(self.module.named_modules())
        prunable, dense = [], []
        for name, p in named.items():
            key = self.key_of(name)
            shape = tuple(p.shape)
            if not p.is_floating_point():
                dense.append(DenseParameter(key, name, shape, discovery.INTEGER_DTYPE))
                continue
            use = discovery.role_of(tracer.uses[name])
            if use is None:
                touched = name in tracer.touched
                reason = discovery.NOT_WEIGHT_OPERAND if touched else discovery.UNUSED
                dense.append(DenseParameter(key, name, shape, reason))
            elif not discovery.wanted(use.role, *flags):
                dense.append(DenseParameter(key, name, shape, discovery.OPTION_OFF[use.role]))
            elif discovery.matches(exclude, key, name):
                dense.append(DenseParameter(key, name, shape, discovery.EXCLUDED))
            else:
                layer = name.rpartition(".")[0]
                kind = layer_type(modules[layer]) if layer in modules else ""
                prunable.append(PrunableTensor(key, name, layer, kind, use.role, use.op))
        return Discovery(prunable, dense, "ops")


def _check_exclude_matches(result: Discovery, exclude: tuple[str, ...] | list[str]) -> None:
    """An `exclude` glob that keeps nothing dense is a typo, not a request: say so."""
    excluded = [d for d in result.dense if d.reason == discovery.EXCLUDED]
    for pat in exclude:
        if not any(discovery.matches((pat,), d.key, d.param_name) for d in excluded):
            names = [t.key for t in result.prunable]
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ExcludeMatchesNothingError(
                f"exclude pattern {pat!r} matches no prunable parameter, so it would keep "
                f"nothing dense; fix or drop it (the prunable ones are: {shown or 'none'})"
            )


def find_by_layer_type(
    model: LoadedModel, prune_bias: bool, prune_batchnorm: bool
) -> list[PrunableTensor]:
    """The reference code's rule: conv/linear weights; biases and norm scales when asked.

    As in ganguli-lab/Synaptic-Flow `masked_parameters`: a normalisation layer's bias counts as a
    bias, so it is pruned only with both flags.
    """
    found: list[PrunableTensor] = []
    seen: set[int] = set()
    first_name = {id(p): n for n, p in model.module.named_parameters()}  # tied: the first name
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
            name = first_name[id(param)]
            found.append(PrunableTensor(model.key_of(name), name, layer_name, kind, role))
    return found
