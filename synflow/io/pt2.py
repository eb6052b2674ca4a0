"""torch.export `.pt2` programs in and out, without unpickling anything.

The archive is checked by `synflow.io.pt2_archive` (pickled members, names, operators, symbolic
values, guard code, call specs). Weights are rebuilt here from their raw bytes and tensor
metadata, and the program is rebuilt from the checked JSON by torch's own deserializer, given
that state dict and no sample inputs (those are a pickle, and never read). The engine runs
`ep.module()`, an fx GraphModule whose parameters carry the program's `state_dict` names, so masks
are keyed like the eager model's `state_dict()`.

The pruned program is the same ExportedProgram with the pruned values in its state dict, written
by `torch.export.save` (plain tensors are stored as raw bytes, `use_pickle: false`).

Prunable tensors are found by the aten operators that use them: the weight operand of each
convolution and linear operator (and, when asked, their biases and normalisation parameters).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import torch

from synflow.errors import InvalidModelError
from synflow.inputs import InputSpec, parse_dtype
from synflow.io.archive import inspect_zip
from synflow.io.atomic import write_atomically
from synflow.io.formats import PT2, model_file
from synflow.io.limits import ArchiveLimits, InputLimits
from synflow.io.pt2_archive import Pt2Contents, read_contents, user_input_names
from synflow.model import LoadedModel, PrunableTensor

aten = torch.ops.aten
#: operator -> (layer type, index of the weight operand, index of the bias operand)
WEIGHT_OPS: dict[Any, tuple[str, int, int]] = {
    aten.linear.default: ("Linear", 1, 2),
    aten.conv1d.default: ("Conv1d", 1, 2),
    aten.conv2d.default: ("Conv2d", 1, 2),
    aten.conv3d.default: ("Conv3d", 1, 2),
    aten.conv1d.padding: ("Conv1d", 1, 2),
    aten.conv2d.padding: ("Conv2d", 1, 2),
    aten.conv3d.padding: ("Conv3d", 1, 2),
    aten.conv_transpose1d.default: ("ConvTranspose1d", 1, 2),
    aten.conv_transpose2d.input: ("ConvTranspose2d", 1, 2),
    aten.conv_transpose3d.input: ("ConvTranspose3d", 1, 2),
    aten.convolution.default: ("Convolution", 1, 2),
}
#: operator -> (layer type, index of the scale operand, index of the shift operand)
NORM_OPS: dict[Any, tuple[str, int, int]] = {
    aten.batch_norm.default: ("BatchNorm", 1, 2),
    aten._native_batch_norm_legit_no_training.default: ("BatchNorm", 1, 2),
    aten.layer_norm.default: ("LayerNorm", 2, 3),
    aten.group_norm.default: ("GroupNorm", 2, 3),
    aten.instance_norm.default: ("InstanceNorm", 1, 2),
}
#: batch norm operators that use batch statistics: the program was exported in training mode
TRAINING_NORM_OPS = {
    aten._native_batch_norm_legit.default,
    aten._native_batch_norm_legit_functional.default,
}
_MAX_ELEMENTS = 1 << 40


def _ints(values: Any, what: str) -> list[int]:
    out = []
    for v in values if isinstance(values, list) else [values]:
        if not isinstance(v, dict) or not isinstance(v.get("as_int"), int):
            raise InvalidModelError(f"{what} is not a static integer; export with static shapes")
        out.append(v["as_int"])
    return out


def _dtype(code: Any, what: str) -> torch.dtype:
    from torch._export.serde.serialize import deserialize_scalar_type

    try:
        return deserialize_scalar_type(code)
    except Exception:
        raise InvalidModelError(f"{what} has an unknown dtype code {code!r}") from None


def _tensor(storage: torch.Tensor, meta: dict[str, Any], what: str) -> torch.Tensor:
    """A view of one stored buffer as the metadata describes it, bounds checked."""
    sizes = _ints(meta.get("sizes"), f"the shape of {what}")
    strides = _ints(meta.get("strides"), f"the strides of {what}")
    (offset,) = _ints(meta.get("storage_offset"), f"the storage offset of {what}")
    if len(sizes) != len(strides) or min([offset, *sizes, *strides], default=0) < 0:
        raise InvalidModelError(f"{what} has an inconsistent shape, strides or offset")
    if math.prod(sizes) > _MAX_ELEMENTS:
        raise InvalidModelError(f"{what} declares more than 2^40 elements")
    device = meta.get("device") or {}
    if device.get("type") != "cpu":
        raise InvalidModelError(
            f"{what} was exported on {device.get('type')!r}; export the program on the CPU "
            "(model.cpu() before torch.export.export)"
        )
    if meta.get("layout") != 7:  # schema.Layout.Strided
        raise InvalidModelError(f"{what} is not a dense (strided) tensor")
    if math.prod(sizes) == 0:
        return torch.zeros(sizes, dtype=storage.dtype)
    needed = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True)) + 1
    if needed > storage.numel():
        raise InvalidModelError(
            f"{what} needs {needed} elements but its stored data holds {storage.numel()}; the "
            "file is truncated or was edited"
        )
    return torch.as_strided(storage, sizes, strides, offset)


def _state(
    archive: zipfile.ZipFile,
    config: dict[str, dict[str, Any]],
    member_of,
    kind: str,
    params: bool,
) -> dict[str, torch.Tensor]:
    """Tensors from raw bytes; entries that share a stored buffer stay views of one storage."""
    storages: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for key, meta in config.items():
        what = f"the {kind} {key!r}"
        tensor_meta = meta["tensor_meta"]
        dtype = _dtype(tensor_meta.get("dtype"), what)
        member = member_of(meta)
        if member not in storages:
            data = bytearray(archive.read(member))
            size = torch.empty((), dtype=dtype).element_size()
            if len(data) % size:
                raise InvalidModelError(
                    f"{what}: its stored data is {len(data)} bytes, not a whole number of "
                    f"{dtype} elements"
                )
            storages[member] = (
                torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            )
        storage = storages[member]
        if storage.dtype != dtype:
            raise InvalidModelError(f"{what} shares stored data with a tensor of another dtype")
        tensor = _tensor(storage, tensor_meta, what)
        if params and meta.get("is_param"):
            tensor = torch.nn.Parameter(tensor, requires_grad=bool(tensor_meta["requires_grad"]))
        state[key] = tensor
    return state


def _deserialize(contents: Pt2Contents, state, constants) -> torch.export.ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, contents.program)
        return ExportedProgramDeserializer().deserialize(serialized, state, constants, None)
    except InvalidModelError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise InvalidModelError(
            f"the .pt2 program could not be rebuilt ({type(exc).__name__}: {first}); save it "
            "with torch.export.save from torch 2.6 or newer"
        ) from exc


def _input_specs(program: dict[str, Any]) -> tuple[InputSpec, ...]:
    """The program's user inputs, in `forward` order, as its signature states them."""
    values = program["graph_module"]["graph"].get("tensor_values", {})
    specs = []
    for name in user_input_names(program):
        meta = values.get(name)
        what = f"the program's input {name!r}"
        if not isinstance(meta, dict):
            raise InvalidModelError(f"{what} has no tensor metadata")
        shape = tuple(_ints(meta.get("sizes"), f"the shape of {what}"))
        dtype = str(_dtype(meta.get("dtype"), what)).removeprefix("torch.")
        try:
            specs.append(InputSpec(shape, parse_dtype(dtype)))
        except ValueError as exc:
            raise InvalidModelError(f"{what} is a {dtype} tensor: {exc}") from None
    if not specs:
        raise InvalidModelError("the program takes no tensor input; SynFlow needs at least one")
    return tuple(specs)


def _runnable(ep: torch.export.ExportedProgram) -> torch.nn.Module:
    """`ep.module()` with `train()` / `eval()` working again: torch makes both raise on it, but the
    engine's `eval()` asks for nothing the program has not already fixed (eval-mode exports only,
    see `find_prunable`)."""
    module = ep.module(check_guards=False)
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module


def _uses_batch_statistics(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target in TRAINING_NORM_OPS:
        return True
    return node.target is aten.batch_norm.default and len(node.args) > 5 and node.args[5] is True


def _refuse_training_mode(ep: torch.export.ExportedProgram) -> None:
    """SynFlow scores the eval-mode network; a training-mode export has batch statistics baked
    into its graph, which `eval()` cannot undo."""
    if any(_uses_batch_statistics(node) for node in ep.graph.nodes):
        raise InvalidModelError(
            "the program was exported in training mode (its batch norms use batch statistics); "
            "call model.eval() before torch.export.export"
        )


def load_pt2(
    path: str | Path, limits: InputLimits | None = None, workdir: Path | None = None
) -> LoadedModel:
    """The registry's loader (`workdir` unused: nothing is unpacked)."""
    return read_pt2(path, (limits or InputLimits()).archive)


def read_pt2(path: str | Path, limits: ArchiveLimits | None = None) -> LoadedModel:
    """Check and load a `.pt2` archive; raises InvalidModelError for anything refused."""
    path = Path(path)
    names = inspect_zip(path, limits)
    contents = read_contents(path, names)
    with zipfile.ZipFile(path) as archive:
        state = _state(archive, contents.weights, contents.weight_member, "weight", True)
        constants = _state(archive, contents.constants, contents.constant_member, "constant", False)
    ep = _deserialize(contents, state, constants)
    _refuse_training_mode(ep)
    model = LoadedModel(
        format=PT2,
        module=_runnable(ep),
        source=path,
        inputs=_input_specs(contents.program),
        origin=ep,
        finder=lambda m, bias, norm: find_prunable(ep, m, bias, norm),
    )
    return model


def find_prunable(
    ep: torch.export.ExportedProgram,
    model: LoadedModel,
    prune_bias: bool,
    prune_batchnorm: bool,
) -> list[PrunableTensor]:
    """Parameters used as the weight (bias, norm scale) operand of the operators above, in the
    order of `named_parameters()` (the eager model's order); a tensor used twice counts once,
    with the role of its first use."""
    parameters = ep.graph_signature.inputs_to_parameters
    found: dict[str, PrunableTensor] = {}

    def add(node: Any, index: int, layer_type: str, role: str) -> None:
        if index >= len(node.args) or not isinstance(node.args[index], torch.fx.Node):
            return
        fqn = parameters.get(node.args[index].name)
        if fqn is None or fqn in found:
            return
        layer = fqn.rpartition(".")[0]
        found[fqn] = PrunableTensor(model.key_of(fqn), fqn, layer, layer_type, role)

    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in WEIGHT_OPS:
            layer_type, weight, bias = WEIGHT_OPS[node.target]
            add(node, weight, layer_type, "weight")
            if prune_bias:
                add(node, bias, layer_type, "bias")
        elif node.target in NORM_OPS and prune_batchnorm:
            layer_type, scale, shift = NORM_OPS[node.target]
            add(node, scale, layer_type, "norm_weight")
            if prune_bias:
                add(node, shift, layer_type, "norm_bias")
    named = {name: p for name, p in model.module.named_parameters()}
    order = {name: i for i, name in enumerate(named)}
    usable = [
        t
        for t in found.values()
        if t.param_name in named and named[t.param_name].is_floating_point()
    ]
    return sorted(usable, key=lambda t: order[t.param_name])


def write_pt2(model: LoadedModel, out_dir: Path) -> list[str]:
    """The registry's writer: the pruned program as `model.pt2`."""
    name = model_file(PT2)
    write_atomically(Path(out_dir) / name, lambda tmp: save_pt2(model.origin, model.module, tmp))
    return [name]


@torch.no_grad()
def save_pt2(ep: torch.export.ExportedProgram, module: torch.nn.Module, path: Path) -> None:
    """Write the program with the module's (pruned) values in its state dict."""
    current = module.state_dict()
    for key, tensor in ep.state_dict.items():
        if key in current and current[key].data_ptr() != tensor.data_ptr():
            tensor.copy_(current[key])
    with open(path, "wb") as fh:
        torch.export.save(ep, fh)
