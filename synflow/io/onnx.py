"""ONNX in and out: an uploaded graph becomes a torch module, the pruned graph goes back as ONNX.

Untrusted files are checked before anything else touches them: a size limit, a protobuf parse
without external data, external-data references checked by name and read only from regular
files in the folder the caller names (`synflow.io.onnx_external`; with none, refused and no path
the model names is ever looked at), domain and operator allow-lists, and `onnx.checker`.

Conversion uses onnx2torch on a *copy* of the graph prepared for it:

- every node is renamed `node_<index>`: onnx2torch turns node names into module names, which
  torch.fx pastes into generated Python source, so a crafted name would run code;
- `Identity` nodes that only forward an initializer are bypassed (the legacy exporter stores equal
  tensors once and feeds the copies through `Identity`, which onnx2torch cannot use as a Conv
  weight);
- `Reshape` drops `allowzero=1` where its constant shape has no zero (a no-op the converter
  rejects; the dynamo exporter writes it).

Operator versions newer than onnx2torch knows are mapped in `synflow.io.onnx_ops`; anything
else is refused up front with the operator named.

Every initializer that holds a weight, bias or normalisation parameter becomes exactly one
`nn.Parameter`, with the initializer's values, shape and orientation (a Gemm with `transB=0` keeps
its `(in, out)` matrix), shared by every node that uses it. So masks and weights are keyed by
initializer name and shaped like the initializer without any translation, and an initializer
feeding several layers (the exporter's de-duplication, or real weight tying) is one tensor with
one mask: its score sums the flow through all its uses, as for a tied parameter in torch, and
the written graph stays the uploaded one.

The writer copies the uploaded graph and zeroes only the pruned entries of those initializers:
nodes, names, opsets, inputs, outputs and metadata are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from torch import fx, nn

from synflow.errors import InvalidModelError
from synflow.io.atomic import write_atomically
from synflow.io.formats import ONNX, model_file
from synflow.io.limits import InputLimits, OnnxLimits
from synflow.io.onnx_external import (
    ExternalRef,
    external_refs,
    move_to_external,
    read_external_data,
)
from synflow.io.onnx_inputs import stated_inputs
from synflow.model import LoadedModel, PrunableTensor

#: The standard operator set (onnx.checker accepts it only as ""). onnx2torch runs nothing else.
ALLOWED_DOMAINS = frozenset({""})
#: Layers whose constant weight input is prunable, and where their weight and bias sit.
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
NORM_OPS = frozenset(
    {"BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization"}
)
#: Name length kept when quoting names from the file in messages.
NAME_IN_MESSAGE = 60


def _quote(name: str) -> str:
    return repr(name[:NAME_IN_MESSAGE] + ("..." if len(name) > NAME_IN_MESSAGE else ""))


# --- reading and checking ---------------------------------------------------------------------


def _parse(path: Path, limits: OnnxLimits) -> onnx.ModelProto:
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise InvalidModelError(
            f"the ONNX file is {size} bytes, over the limit of {limits.max_file_bytes} bytes"
        )
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError
        raise InvalidModelError(
            f"the file is not a readable ONNX model ({type(exc).__name__}); is it truncated or "
            "not an .onnx file? Export it again with torch.onnx.export or your framework's "
            "ONNX exporter"
        ) from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InvalidModelError("the ONNX file holds no graph (no nodes); is it an ONNX model?")
    return model


def _tensors(model: onnx.ModelProto):
    """Every tensor stored in the main graph: initializers and Constant node values."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)


def _check_structure(model: onnx.ModelProto, limits: OnnxLimits) -> None:
    """Refuse what must never reach the checker or the converter; opens no file."""
    graph = model.graph
    if len(graph.node) > limits.max_nodes:
        raise InvalidModelError(
            f"the graph has {len(graph.node)} nodes, over the limit of {limits.max_nodes}"
        )
    if len(graph.initializer) > limits.max_initializers:
        raise InvalidModelError(
            f"the graph has {len(graph.initializer)} initializers, over the limit of "
            f"{limits.max_initializers}"
        )
    if graph.sparse_initializer:
        raise InvalidModelError("sparse initializers are not supported; store dense tensors")
    if model.functions:
        raise InvalidModelError(
            "the model defines local functions, which the converter cannot run; export it "
            "with functions inlined"
        )
    custom = sorted({n.domain for n in graph.node if n.domain not in ALLOWED_DOMAINS})
    if custom:
        raise InvalidModelError(
            "the graph uses operators from custom domains "
            + ", ".join(_quote(d) for d in custom[:5])
            + "; only the standard ONNX operator set can be run"
        )
    for node in graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise InvalidModelError(
                f"the graph uses control flow ({node.op_type} with a subgraph), which is not "
                "supported; export the model without data-dependent branches or loops"
            )
    elements = 0
    for tensor in _tensors(model):
        if len(tensor.dims) > limits.max_rank or any(d < 0 for d in tensor.dims):
            raise InvalidModelError(
                f"tensor {_quote(tensor.name)} declares an invalid shape {list(tensor.dims)[:10]}"
            )
        elements += math.prod(tensor.dims)
        if elements > limits.max_elements:
            raise InvalidModelError(
                f"the model's tensors declare more than {limits.max_elements} elements in all, "
                "over the limit"
            )


def _external(model: onnx.ModelProto, data_dir: Path | None) -> list[ExternalRef]:
    """The model's external-data entries, checked by name; refused outright where no folder
    may be read (a single uploaded file, or a caller that gave none)."""
    refs = external_refs(list(_tensors(model)))
    if refs and data_dir is None:
        raise InvalidModelError(
            f"tensor {_quote(refs[0].tensor.name)} refers to external data, and a single "
            "uploaded .onnx must hold its weights (no file the model names is opened). Upload "
            "the .onnx and its data files as one zip (zip -j -0 bundle.zip model.onnx "
            "model.onnx.data), or save the weights inside the file: torch.onnx.export(..., "
            "external_data=False) or onnx.save(model, path, save_as_external_data=False)"
        )
    return refs


def _without_external_data(model: onnx.ModelProto, refs: list[ExternalRef]) -> onnx.ModelProto:
    """A copy for the checker, whose external tensors are empty: on a model naming data files,
    onnx.checker looks those names up relative to the process's working directory."""
    if not refs:
        return model
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    external = {ref.index for ref in refs}
    for index, tensor in enumerate(_tensors(skeleton)):
        if index in external:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.dims[:] = [0] * len(tensor.dims)
    return skeleton


def _check_onnx(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidModelError(f"the ONNX model is invalid (onnx.checker): {first}") from exc


# --- the copy the converter sees --------------------------------------------------------------


def _node_name(index: int) -> str:
    return f"node_{index}"


def prepare_for_conversion(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with generated node names, no node metadata, and initializers read through
    `Identity` nodes wired in directly. The uploaded model is not changed."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    graph = prepared.graph
    stored = {t.name: t for t in graph.initializer}
    outputs = {v.name for v in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for index, node in enumerate(graph.node):
        node.name = _node_name(index)
        node.doc_string = ""
        del node.metadata_props[:]
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        if node.op_type == "Reshape":
            _drop_needless_allowzero(node, stored)
        forwards_initializer = (
            node.op_type == "Identity"
            and len(node.input) == 1
            and node.input[0] in stored
            and node.output[0] not in outputs
        )
        if forwards_initializer:
            alias[node.output[0]] = node.input[0]
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return prepared


def _drop_needless_allowzero(node: onnx.NodeProto, stored: dict[str, onnx.TensorProto]) -> None:
    """`allowzero=1` only changes what a 0 in the target shape means; with a constant shape
    free of zeros it is a no-op, and onnx2torch (which rejects it) can convert the node."""
    attrs = [a for a in node.attribute if a.name == "allowzero" and a.i == 1]
    shape = stored.get(node.input[1]) if len(node.input) > 1 else None
    if attrs and shape is not None and (numpy_helper.to_array(shape) != 0).all():
        node.attribute.remove(attrs[0])


def _unsupported_ops(model: onnx.ModelProto) -> list[str]:
    from onnx2torch.node_converters import get_converter

    version = {o.domain: o.version for o in model.opset_import}.get("", 1)
    missing = []
    for node in model.graph.node:
        try:
            get_converter(domain=node.domain, operation_type=node.op_type, version=version)
        except NotImplementedError:
            missing.append(f"{node.op_type} (opset {version})")
    return sorted(set(missing))


def _convert(prepared: onnx.ModelProto) -> fx.GraphModule:
    from onnx2torch import convert

    from synflow.io.onnx_ops import ensure_registered

    ensure_registered()
    if any(t.data_type == onnx.TensorProto.BFLOAT16 for t in prepared.graph.initializer):
        raise InvalidModelError(
            "bfloat16 ONNX graphs are not supported: the ONNX-to-torch converter cannot read "
            "bfloat16 tensors. Export the model in float32 or float16 (SynFlow scores in float32 "
            "either way), or upload it as TorchScript or torch.export .pt2, which keep bfloat16"
        )
    missing = _unsupported_ops(prepared)
    if missing:
        raise InvalidModelError(
            "the graph uses operators the ONNX-to-torch converter cannot run: "
            + ", ".join(missing[:10])
            + "; export the model with opset 17 or rewrite those operations"
        )
    try:
        module = convert(prepared, attach_onnx_mapping=True)
    except NotImplementedError as exc:
        raise InvalidModelError(f"the ONNX model cannot be converted: {exc}") from exc
    except KeyError as exc:
        raise InvalidModelError(
            f"the ONNX model cannot be converted: tensor {exc} must be a constant initializer "
            "(a Conv or BatchNormalization parameter computed at run time is not supported)"
        ) from exc
    except (ValueError, RuntimeError, TypeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidModelError(f"the ONNX model cannot be converted: {first}") from exc
    _torch_hardsigmoid(module)
    return module.eval()


def _torch_hardsigmoid(module: torch.nn.Module) -> None:
    """onnx2torch runs `HardSigmoid` as clip(alpha * x + beta, 0, 1), arithmetic that the scoring
    passes cannot tell from any other clamp; with torch's own constants (alpha 1/6, beta 1/2,
    what exporters write for `nn.Hardsigmoid`) it is `nn.Hardsigmoid`, whose gate the SynFlow
    passes linearise (synflow/linearise.py) as they do for the model before export."""
    from onnx2torch.node_converters.activations import OnnxHardSigmoid

    for name, child in list(module.named_modules()):
        if (
            isinstance(child, OnnxHardSigmoid)
            and math.isclose(child.alpha, 1 / 6, rel_tol=1e-6)
            and child.beta == 0.5
        ):
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, nn.Hardsigmoid())
    if isinstance(module, fx.GraphModule):
        _torch_hardswish(module)


def _torch_hardswish(module: fx.GraphModule) -> None:
    """Before opset 14 exporters write `nn.Hardswish` as Mul(x, HardSigmoid(x)); fold it back
    into `nn.Hardswish` (the same function) so the scoring passes treat it as before export."""
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation

    changed = False
    for gate in list(module.graph.nodes):
        if gate.op != "call_module" or not isinstance(
            module.get_submodule(gate.target), nn.Hardsigmoid
        ):
            continue
        (x,) = gate.args
        for use in list(gate.users):
            mul = module.get_submodule(use.target) if use.op == "call_module" else None
            if (
                isinstance(mul, OnnxBinaryMathOperation)
                and mul.math_op_function is torch.mul
                and mul.broadcast is None
                and set(use.args) == {x, gate}
                and len(use.args) == 2
            ):
                parent, _, attr = use.target.rpartition(".")
                owner = module.get_submodule(parent) if parent else module
                setattr(owner, attr, nn.Hardswish())
                use.args = (x,)
                changed = True
        if not gate.users:
            module.graph.erase_node(gate)
    if changed:
        module.graph.lint()
        module.recompile()


# --- initializers as parameters ---------------------------------------------------------------


@dataclass(frozen=True)
class InitializerUse:
    """An initializer that one node uses as a weight, bias or normalisation parameter."""

    initializer: str
    node: int  # index in the uploaded graph
    node_name: str  # the node's name in the uploaded graph, `node_<index>` if it has none
    op_type: str
    role: str  # "weight" | "bias" | "norm_weight" | "norm_bias"


def parameter_uses(model: onnx.ModelProto, prepared: onnx.ModelProto) -> list[InitializerUse]:
    """Which initializers are layer parameters, in node order (uses read from `prepared`)."""
    graph = prepared.graph
    stored = {t.name: t for t in graph.initializer}
    original_names = {_node_name(i): n.name for i, n in enumerate(model.graph.node)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    uses: list[InitializerUse] = []

    def add(node: onnx.NodeProto, name: str, role: str, op_type: str = "") -> None:
        if name in stored and stored[name].data_type in _FLOAT_TYPES:
            index = int(node.name.removeprefix("node_"))
            label = original_names[node.name] or node.name
            uses.append(InitializerUse(name, index, label, op_type or node.op_type, role))

    for node in graph.node:
        inputs = list(node.input)
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            if len(inputs) > 1:
                add(node, inputs[1], "weight")
            if len(inputs) > 2 and inputs[2]:
                add(node, inputs[2], "bias")
        elif node.op_type == "MatMul":
            constant = [
                i for i in (0, 1) if inputs[i] in stored and len(stored[inputs[i]].dims) > 1
            ]
            if len(constant) == 1:
                add(node, inputs[constant[0]], "weight")
                # MatMul + Add of a constant is how exporters spell a linear layer's bias
                for user in consumers.get(node.output[0], []):
                    other = [n for n in user.input if n != node.output[0]]
                    if user.op_type == "Add" and len(other) == 1:
                        add(user, other[0], "bias", op_type="MatMul")
        elif node.op_type in NORM_OPS:
            if len(inputs) > 1:
                add(node, inputs[1], "norm_weight")
            if len(inputs) > 2 and inputs[2]:
                add(node, inputs[2], "norm_bias")
    return uses


_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


class ConstantGemm(nn.Module):
    """ONNX Gemm `alpha * A @ op(B) + beta * C` with B (and C) as parameters in ONNX layout.

    Used where onnx2torch would hold B as a transposed or alpha-scaled copy in an `nn.Linear`.
    """

    def __init__(self, weight: nn.Parameter, bias, alpha: float, beta: float, trans_b: bool):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.alpha = alpha
        self.beta = beta
        self.trans_b = trans_b

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        b = self.weight.t() if self.trans_b else self.weight
        out = a @ b
        if self.alpha != 1.0:
            out = out * self.alpha
        if self.bias is not None:
            out = out + (self.bias * self.beta if self.beta != 1.0 else self.bias)
        return out


def _buffer_values(module: fx.GraphModule) -> dict[str, str]:
    """Container buffer name -> the initializer it was copied from, read from the fx graph."""
    found: dict[str, str] = {}
    for fx_node in module.graph.nodes:
        if fx_node.op != "call_module":
            continue
        mapping = getattr(module.get_submodule(fx_node.target), "onnx_mapping", None)
        if mapping is None:
            continue
        names = list(mapping.inputs)
        pairs = list(zip(fx_node.args, names, strict=False))
        rest = [n for n in names[len(fx_node.args) :] if n]
        pairs += list(zip(fx_node.kwargs.values(), rest, strict=False))
        for arg, value in pairs:
            if isinstance(arg, fx.Node) and arg.op == "get_attr":
                found[arg.target] = value
    return found


def _set_param(owner: nn.Module, attr: str, param: nn.Parameter, expected) -> None:
    current = getattr(owner, attr)
    if current is None or not torch.equal(current.detach(), expected):
        raise RuntimeError(f"onnx2torch placed {attr} differently than expected")
    if attr in owner._buffers:
        delattr(owner, attr)
    setattr(owner, attr, param)


def bind_parameters(
    module: fx.GraphModule, prepared: onnx.ModelProto, uses: list[InitializerUse]
) -> dict[str, nn.Parameter]:
    """One Parameter per used initializer, in its layout, put wherever onnx2torch copied it."""
    stored = {t.name: t for t in prepared.graph.initializer}
    params = {
        u.initializer: nn.Parameter(
            torch.from_numpy(numpy_helper.to_array(stored[u.initializer]).copy())
        )
        for u in uses
    }
    # 1. copies held as buffers of the initializer container (MatMul, Add, OnnxGemm inputs)
    for target, value in _buffer_values(module).items():
        if value in params:
            owner, _, attr = target.rpartition(".")
            _set_param(module.get_submodule(owner), attr, params[value], params[value].detach())
    # 2. copies inside converted layers (Conv, ConvTranspose, Gemm as Linear, normalisation)
    for node in prepared.graph.node:
        layer = module.get_submodule(node.name) if hasattr(module, node.name) else None
        if isinstance(layer, nn.Sequential):  # Conv with asymmetric padding: (pad, conv)
            layer = layer[-1]
        if layer is None or not isinstance(getattr(layer, "weight", None), nn.Parameter):
            continue
        weight = params.get(node.input[1]) if len(node.input) > 1 else None
        bias = params.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if node.op_type == "Gemm" and isinstance(layer, nn.Linear):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
            trans_b = bool(attrs.get("transB", 0))
            if trans_b and alpha == 1.0 and beta == 1.0:
                _set_param(layer, "weight", weight, weight.detach())
                if bias is not None:
                    _set_param(layer, "bias", bias, bias.detach())
                continue
            # onnx2torch holds alpha * op(B) as (out, in); keep B itself, in its own layout
            held = weight.detach().t() if not trans_b else weight.detach()
            if not torch.allclose(layer.weight.detach(), alpha * held):
                raise RuntimeError("onnx2torch placed a Gemm weight differently than expected")
            setattr(module, node.name, ConstantGemm(weight, bias, alpha, beta, trans_b))
            continue
        if weight is not None:
            _set_param(layer, "weight", weight, weight.detach())
        if bias is not None and isinstance(getattr(layer, "bias", None), nn.Parameter):
            _set_param(layer, "bias", bias, bias.detach())
    return params


# --- writing back -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxOrigin:
    """What the writer needs from the loaded file: the graph as uploaded (its external data read
    in), the parameter that each prunable initializer became (holding the pruned values after
    pruning), and which tensors kept their bytes in external data (`_tensors` positions)."""

    graph: onnx.ModelProto
    params: dict[str, nn.Parameter]
    external: frozenset[int] = frozenset()


def pruned_graph(original: onnx.ModelProto, params: dict[str, nn.Parameter]) -> onnx.ModelProto:
    """The uploaded graph with each parameter initializer's zeroed entries zeroed, nothing else."""
    out = onnx.ModelProto()
    out.CopyFrom(original)
    by_name = {t.name: t for t in out.graph.initializer}
    for name, param in params.items():
        current = param.detach().cpu().numpy()
        zeroed = current == 0
        tensor = by_name[name]
        values = numpy_helper.to_array(tensor)
        if not zeroed.any() or not (values[zeroed] != 0).any():
            continue  # nothing pruned here: keep the stored bytes as they are
        pruned = values.copy()
        pruned[zeroed] = 0
        tensor.CopyFrom(numpy_helper.from_array(pruned, name))
    return out


def write_pruned(original: onnx.ModelProto, params: dict[str, nn.Parameter], path: Path) -> None:
    """The pruned graph as one self-contained file."""
    Path(path).write_bytes(pruned_graph(original, params).SerializeToString())


def write_layout(origin: OnnxOrigin, out_dir: Path, name: str) -> list[str]:
    """The pruned graph as `name` in `out_dir`, in the layout it came in: one file, or `name`
    plus `name.data` holding the tensors that came from external data. The data file is
    complete before the model that names it appears."""
    out_dir = Path(out_dir)
    if not origin.external:
        write_atomically(out_dir / name, lambda tmp: write_pruned(origin.graph, origin.params, tmp))
        return [name]
    graph = pruned_graph(origin.graph, origin.params)
    data_name = f"{name}.data"
    tensors = list(_tensors(graph))
    write_atomically(
        out_dir / data_name,
        lambda tmp: move_to_external(tensors, origin.external, tmp, data_name),
    )
    write_atomically(out_dir / name, lambda tmp: tmp.write_bytes(graph.SerializeToString()))
    return [name, data_name]


def _find(
    uses: list[InitializerUse],
    param_names: dict[str, str],
    model: LoadedModel,
    prune_bias: bool,
    prune_batchnorm: bool,
) -> list[PrunableTensor]:
    wanted = {
        "weight": True,
        "bias": prune_bias,
        "norm_weight": prune_batchnorm,
        "norm_bias": prune_bias and prune_batchnorm,
    }
    found: list[PrunableTensor] = []
    seen: set[str] = set()
    for use in uses:
        if use.initializer in seen:
            continue
        seen.add(use.initializer)  # the first use decides the role
        if wanted[use.role]:
            name = param_names[use.initializer]
            found.append(
                PrunableTensor(
                    use.initializer,
                    name,
                    use.node_name,
                    use.op_type,
                    use.role,
                    node=use.node_name,
                    op_type=use.op_type,
                )
            )
    return found


#: operators of quantized graphs (QDQ, QOperator and dynamic quantization)
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "ConvInteger",
    }
)


def refuse_quantized(model: onnx.ModelProto) -> None:
    """A quantized graph keeps its weights as integers: say so rather than name its operators."""
    found = sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS})
    if found:
        raise InvalidModelError(
            f"this is a quantized model ({', '.join(found)}): quantized weights cannot be "
            "pruned. Prune the float model first, then quantize the pruned model"
        )


def load_onnx(
    path: str | Path, limits: OnnxLimits | None = None, data_dir: Path | None = None
) -> LoadedModel:
    """Check, convert and wrap an ONNX file; raises InvalidModelError for anything unusable.

    External data is read only from `data_dir` (see `synflow.io.onnx_external`); with None, a
    model that names data files is refused before any file is looked at.
    """
    path = Path(path)
    limits = limits or OnnxLimits()
    original = _parse(path, limits)
    _check_structure(original, limits)
    refs = _external(original, data_dir)
    _check_onnx(_without_external_data(original, refs))
    refuse_quantized(original)
    if refs:
        read_external_data(refs, data_dir, limits)
    inputs, free_axes = stated_inputs(original)
    prepared = prepare_for_conversion(original)
    module = _convert(prepared)
    uses = parameter_uses(original, prepared)
    params = bind_parameters(module, prepared, uses)
    initializer_of = {id(p): initializer for initializer, p in params.items()}
    keys = {
        name: initializer_of[id(p)]
        for name, p in module.named_parameters(remove_duplicate=False)
        if id(p) in initializer_of
    }
    names_of = {id(p): n for n, p in module.named_parameters()}
    param_names = {initializer: names_of[id(p)] for initializer, p in params.items()}
    return LoadedModel(
        format=ONNX,
        module=module,
        source=path,
        inputs=inputs,
        free_axes=free_axes,
        keys=keys,
        origin=OnnxOrigin(original, params, frozenset(ref.index for ref in refs)),
        finder=partial(_find, uses, param_names),
    )


def load_onnx_file(
    path: str | Path, limits: InputLimits | None = None, workdir: Path | None = None
) -> LoadedModel:
    """The registry's loader for an `.onnx` file, with its external data read from the files
    beside it where `limits.onnx.external_data_beside` allows (the service does not: there
    external data comes in a bundle)."""
    path = Path(path)
    onnx_limits = (limits or InputLimits()).onnx
    data_dir = path.parent if onnx_limits.external_data_beside else None
    return load_onnx(path, onnx_limits, data_dir)


def write_onnx(model: LoadedModel, out_dir: Path) -> list[str]:
    """The registry's writer: `model.onnx`, plus `model.onnx.data` if the input had external
    data."""
    return write_layout(model.origin, out_dir, model_file(ONNX))
