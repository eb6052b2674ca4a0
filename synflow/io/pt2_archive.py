"""What a torch.export `.pt2` archive holds, checked before any of it reaches torch.

`torch.export.save` (torch 2.14) writes a zip with one root folder:

    <root>/archive_format                          "pt2"
    <root>/archive_version, .data/version, byteorder ("little"), .data/serialization_id
    <root>/models/<name>.json                      the program: graph, signature, call specs
    <root>/data/weights/<name>_weights_config.json fqn -> {path_name, use_pickle, tensor_meta}
    <root>/data/weights/weight_<i>                 raw storage bytes (`use_pickle: false`)
    <root>/data/constants/<name>_constants_config.json, tensor_<i> ...
    <root>/data/sample_inputs/<name>.pt            a torch.save pickle (never read here)

`torch.export.load` is not safe on untrusted files: it unpickles weights and constants with
`use_pickle: true` (`torch.load(weights_only=False)`), parses symbolic shapes with
`sympy.sympify` (which evaluates Python), imports modules named in pytree specs, and its
`ep.module()` executes `guards_code` strings and pastes names from the graph into generated
Python source. So this module reads the configs and the program JSON itself and lets through only
what a static, eager-exported CNN/MLP program needs: every pickled member is refused, every name is
a plain identifier, every operator is an `aten` operator, no symbolic value, no guard code, no
subgraph, no custom object, and call specs made of tuples, lists and dicts only.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from synflow.errors import InvalidModelError

ARCHIVE_FORMAT = "pt2"
BYTE_ORDER = "little"
#: plain names: graph values, module paths, file names inside the archive, device types
_PLAIN = re.compile(r"[A-Za-z0-9_.]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN_ATOM = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z0-9_]+)")
#: graph-call targets that are not aten operators but that every program uses
PYTHON_TARGETS = frozenset({"_operator.getitem"})
#: aten operators that reach outside the process: files, printing
OUTSIDE_OPS = frozenset({"from_file", "save", "_print"})
#: JSON keys whose strings are free text that torch never pastes into code (as_string values
#: go through repr(); in_spec / out_spec are checked as pytree specs below)
_TEXT_KEYS = frozenset({"as_string", "as_strings", "torch_version", "in_spec", "out_spec"})
#: argument kinds that only symbolic (dynamic-shape) programs, subgraphs (control flow) and
#: custom objects use; a static CNN or MLP program has none of them
_REFUSED_KINDS = {
    "as_expr": "a symbolic (dynamic) shape",
    "as_sym_int": "a symbolic integer",
    "as_sym_ints": "symbolic integers",
    "as_sym_float": "a symbolic float",
    "as_sym_floats": "symbolic floats",
    "as_sym_bool": "a symbolic boolean",
    "as_sym_bools": "symbolic booleans",
    "as_graph": "a subgraph (control flow such as torch.cond)",
    "as_custom_obj": "a custom (TorchBind) object",
    "as_operator": "an operator passed as a value",
}
_PYTREE_TYPES = frozenset({"builtins.tuple", "builtins.list", "builtins.dict"})
_EXPORT_HOWTO = (
    "export with static shapes: ep = torch.export.export(model.eval(), (torch.ones(1, 3, 224, "
    "224),)); torch.export.save(ep, 'model.pt2')"
)


@dataclass(frozen=True)
class Pt2Contents:
    """The checked parts of an archive: nothing in here has been unpickled or evaluated."""

    root: str  # member-name prefix, e.g. "model/"
    name: str  # the program's name, "model" for torch.export.save
    program: dict[str, Any]  # models/<name>.json with node metadata removed
    weights: dict[str, dict[str, Any]]  # state_dict key -> payload meta
    constants: dict[str, dict[str, Any]]  # lifted constant name -> payload meta

    def weight_member(self, meta: dict[str, Any]) -> str:
        return f"{self.root}data/weights/{meta['path_name']}"

    def constant_member(self, meta: dict[str, Any]) -> str:
        return f"{self.root}data/constants/{meta['path_name']}"


def pt2_root(names: list[str]) -> str | None:
    """The root prefix if the member names are a torch.export archive's, else None."""
    for name in names:
        if name.endswith("/archive_format") and name.count("/") == 1:
            root = name[: -len("archive_format")]
            if any(n.startswith(f"{root}models/") and n.endswith(".json") for n in names):
                return root
    return None


def _quote(text: str, limit: int = 60) -> str:
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _text(archive: zipfile.ZipFile, member: str) -> str:
    try:
        return archive.read(member).decode("utf-8")
    except KeyError:
        raise InvalidModelError(f"the .pt2 archive has no {member!r}") from None
    except UnicodeDecodeError:
        raise InvalidModelError(f"the .pt2 member {member!r} is not UTF-8 text") from None


def _json(archive: zipfile.ZipFile, member: str) -> Any:
    try:
        return json.loads(_text(archive, member))
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"the .pt2 member {member!r} is not valid JSON ({exc})") from None
    except RecursionError:
        raise InvalidModelError(f"the .pt2 member {member!r} is nested too deeply") from None


def _payloads(
    data: Any, member: str, kind: str, members: set[str], folder: str
) -> dict[str, dict[str, Any]]:
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        raise InvalidModelError(f"the .pt2 member {member!r} has no `config` object")
    for key, meta in config.items():
        if not isinstance(meta, dict) or not isinstance(meta.get("path_name"), str):
            raise InvalidModelError(f"the {kind} {_quote(key)} in {member!r} has no path_name")
        if meta.get("use_pickle") is not False:
            raise InvalidModelError(
                f"the {kind} {_quote(key)} is stored as a pickle (`use_pickle: true`, which "
                "torch.export.save does for tensor subclasses and custom objects); pickles can "
                "run arbitrary code and are never loaded. Export plain tensors: convert "
                "quantized or subclassed parameters to ordinary torch.Tensor before exporting"
            )
        path = meta["path_name"]
        if not _IDENTIFIER.fullmatch(path):
            raise InvalidModelError(
                f"the {kind} {_quote(key)} names the file {_quote(path)}, which is not a plain "
                "name inside the archive; refusing it"
            )
        if f"{folder}{path}" not in members:
            raise InvalidModelError(
                f"the {kind} {_quote(key)} is stored in {path!r}, which the archive does not hold"
            )
        if not isinstance(meta.get("tensor_meta"), dict):
            raise InvalidModelError(f"the {kind} {_quote(key)} has no tensor_meta")
        _check_fqn(key, kind)
    return config


def _check_fqn(name: str, what: str) -> None:
    if not isinstance(name, str) or not all(_FQN_ATOM.fullmatch(a) for a in name.split(".")):
        raise InvalidModelError(
            f"the {what} name {_quote(str(name))} is not a plain dotted module path; refusing it"
        )


def _check_strings(value: Any, key: str = "") -> None:
    """Every key and string outside free-text fields is a plain name; no refused kind occurs."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _REFUSED_KINDS:
                raise InvalidModelError(
                    f"the program uses {_REFUSED_KINDS[k]}, which is not supported; "
                    + _EXPORT_HOWTO
                )
            if not _PLAIN.fullmatch(k):
                raise InvalidModelError(f"the program has a key {_quote(k)}; refusing it")
            if k not in _TEXT_KEYS:
                _check_strings(v, k)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v, key)
    elif isinstance(value, str) and not _PLAIN.fullmatch(value):
        raise InvalidModelError(
            f"the program's field {key!r} holds {_quote(value)}, which is not a plain name; "
            "refusing it"
        )


def _check_pytree(spec: Any, where: str) -> None:
    """A call spec made only of tuples, lists, dicts (string keys) and leaves."""
    if not isinstance(spec, str):
        raise InvalidModelError(f"the program's {where} is not a pytree spec")
    try:
        protocol, tree = json.loads(spec)
    except (ValueError, TypeError):
        raise InvalidModelError(f"the program's {where} is not a pytree spec") from None
    if protocol != 1:
        raise InvalidModelError(f"the program's {where} uses pytree protocol {protocol!r}")

    def walk(node: Any) -> None:
        if not isinstance(node, dict) or set(node) != {"type", "context", "children_spec"}:
            raise InvalidModelError(f"the program's {where} is malformed")
        kind, context, children = node["type"], node["context"], node["children_spec"]
        if kind is None:
            if context is not None or children:
                raise InvalidModelError(f"the program's {where} is malformed")
            return
        if kind not in _PYTREE_TYPES:
            raise InvalidModelError(
                f"the program's inputs or outputs use the container type {_quote(str(kind))}; "
                "only tuples, lists and dicts of tensors are accepted"
            )
        try:
            keys = json.loads(context) if isinstance(context, str) else None
        except ValueError:
            keys = None
        if kind == "builtins.dict":
            if not isinstance(keys, list) or not all(
                isinstance(k, str) and _IDENTIFIER.fullmatch(k) for k in keys
            ):
                raise InvalidModelError(f"the program's {where} has dict keys that are not names")
        elif keys is not None:
            raise InvalidModelError(f"the program's {where} is malformed")
        if not isinstance(children, list):
            raise InvalidModelError(f"the program's {where} is malformed")
        for child in children:
            walk(child)

    walk(tree)


def _strip_metadata(program: dict[str, Any]) -> None:
    """Drop node metadata (stack traces, module stacks): free text the engine does not need and
    that torch would paste into generated code as comments."""
    graph_module = program.get("graph_module")
    if not isinstance(graph_module, dict):
        raise InvalidModelError("the program has no graph_module")
    graph_module["metadata"] = {}
    graph = graph_module.get("graph")
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise InvalidModelError("the program has no graph")
    for node in graph["nodes"]:
        if not isinstance(node, dict):
            raise InvalidModelError("the program's graph has a malformed node")
        node["metadata"] = {}


def check_program(program: Any) -> dict[str, Any]:
    """The program JSON, metadata removed, after every check above; raises InvalidModelError."""
    if not isinstance(program, dict):
        raise InvalidModelError("the program JSON is not an object")
    _strip_metadata(program)
    for node in program["graph_module"]["graph"]["nodes"]:
        _check_target(node.get("target"))
    if program.get("guards_code"):
        raise InvalidModelError(
            "the program carries guard code (Python source that torch would run); " + _EXPORT_HOWTO
        )
    if program.get("range_constraints"):
        raise InvalidModelError(
            "the program has dynamic shapes (range constraints), which are not supported; "
            + _EXPORT_HOWTO
        )
    graph_module = program["graph_module"]
    graph = graph_module["graph"]
    for field in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(field):
            raise InvalidModelError(
                f"the program has {field.replace('_', ' ')}, which are not supported; "
                + _EXPORT_HOWTO
            )
    if graph_module.get("treespec_namedtuple_fields"):
        raise InvalidModelError(
            "the program's inputs or outputs use named tuples; return tensors, tuples or dicts"
        )
    for node in graph["nodes"]:
        name = node.get("name")
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise InvalidModelError(
                f"the program has a node named {_quote(str(name))}, which is not a plain name"
            )
    for name in graph.get("tensor_values", {}):
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
            raise InvalidModelError(
                f"the program has a value named {_quote(name)}, which is not a plain name"
            )
    for entry in graph_module.get("module_call_graph", []):
        if entry.get("fqn"):
            _check_fqn(entry["fqn"], "module")
        signature = entry.get("signature")
        if signature is not None:
            _check_pytree(signature.get("in_spec"), "input spec")
            _check_pytree(signature.get("out_spec"), "output spec")
            for arg in signature.get("forward_arg_names") or []:
                if not isinstance(arg, str) or not _IDENTIFIER.fullmatch(arg):
                    raise InvalidModelError(
                        f"the program has an argument named {_quote(str(arg))}, "
                        "which is not a plain name"
                    )
    for spec in _input_specs(program):
        for field in ("parameter_name", "buffer_name", "tensor_constant_name", "target"):
            if field in spec:
                _check_fqn(spec[field], "state")
    _check_strings(program)
    return program


def _check_target(target: Any) -> None:
    if target in PYTHON_TARGETS:
        return
    match = _ATEN_TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise InvalidModelError(
            f"the program calls {_quote(str(target))}, which is not an aten operator; only "
            "programs made of aten operators are accepted (no custom or higher-order ops)"
        )
    if match.group(1) in OUTSIDE_OPS:
        raise InvalidModelError(
            f"the program calls aten.{match.group(1)}, which reads or writes outside the model; "
            "refusing it"
        )


def _input_specs(program: dict[str, Any]) -> list[dict[str, Any]]:
    """Each input spec's body ({"arg": ..., "parameter_name": ...}) with its kind added."""
    specs = []
    signature = program["graph_module"].get("signature") or {}
    for spec in signature.get("input_specs", []):
        if not isinstance(spec, dict) or len(spec) != 1:
            raise InvalidModelError("the program's signature has a malformed input")
        ((kind, body),) = spec.items()
        if not isinstance(body, dict):
            raise InvalidModelError("the program's signature has a malformed input")
        specs.append({"kind": kind, **body})
    return specs


def _check_state(program: dict[str, Any], contents: Pt2Contents) -> None:
    """Every parameter, buffer and constant the graph uses is in the archive."""
    for spec in _input_specs(program):
        kind = spec["kind"]
        if kind == "parameter":
            held, name, what = contents.weights, spec.get("parameter_name"), "weight"
        elif kind == "buffer":
            persistent = spec.get("persistent", True)
            held = contents.weights if persistent else contents.constants
            name, what = spec.get("buffer_name"), "buffer"
        elif kind in ("tensor_constant", "constant_input"):
            held, name, what = contents.constants, spec.get("tensor_constant_name"), "constant"
            if kind == "constant_input":
                continue  # a scalar baked into the signature, nothing stored
        elif kind == "user_input":
            continue
        else:
            raise InvalidModelError(
                f"the program's signature has an input of kind {kind!r} (e.g. a custom object or "
                "a token), which is not supported; " + _EXPORT_HOWTO
            )
        if name not in held:
            raise InvalidModelError(
                f"the program's graph uses the {what} {_quote(str(name))}, which the archive "
                "does not hold; the file is incomplete or was edited. Save it again with "
                "torch.export.save"
            )


def read_contents(path: str | Path, names: list[str]) -> Pt2Contents:
    """Read and check an archive whose members `names` already passed `inspect_zip`."""
    try:
        return _read_contents(path, names)
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as exc:  # malformed
        raise InvalidModelError(
            f"the .pt2 archive is malformed ({type(exc).__name__}: {str(exc)[:200]}); save it "
            "again with torch.export.save"
        ) from exc


def _read_contents(path: str | Path, names: list[str]) -> Pt2Contents:
    root = pt2_root(names)
    if root is None:
        raise InvalidModelError("the archive is not a torch.export (.pt2) program")
    members = set(names)
    if any(not n.startswith(root) for n in names):
        raise InvalidModelError("the .pt2 archive has members outside its root folder")
    models = sorted(n for n in names if n.startswith(f"{root}models/") and n.endswith(".json"))
    if len(models) != 1:
        raise InvalidModelError(
            f"the .pt2 archive holds {len(models)} programs; save exactly one with "
            "torch.export.save(ep, path)"
        )
    if any(n.startswith(f"{root}data/aotinductor/") for n in names):
        raise InvalidModelError(
            "the .pt2 archive holds AOTInductor compiled code, which is never run; save the "
            "ExportedProgram itself with torch.export.save"
        )
    name = PurePosixPath(models[0]).stem
    if not _IDENTIFIER.fullmatch(name):
        raise InvalidModelError(f"the .pt2 program is named {_quote(name)}; refusing it")
    with zipfile.ZipFile(path) as archive:
        fmt = _text(archive, f"{root}archive_format").strip()
        if fmt != ARCHIVE_FORMAT:
            raise InvalidModelError(f"the archive's format is {_quote(fmt)}, not {ARCHIVE_FORMAT}")
        order = f"{root}byteorder"
        if order in members and _text(archive, order).strip() != BYTE_ORDER:
            raise InvalidModelError(
                "the .pt2 archive stores its weights big-endian; save it on a little-endian machine"
            )
        for legacy in (f"{root}data/weights/{name}.pt", f"{root}data/constants/{name}.pt"):
            if legacy in members:
                raise InvalidModelError(
                    "the .pt2 archive uses the legacy layout whose weights are one pickle, which "
                    "is never loaded; save it again with torch.export.save from torch 2.6 or newer"
                )
        weights_file = f"{root}data/weights/{name}_weights_config.json"
        constants_file = f"{root}data/constants/{name}_constants_config.json"
        weights = _payloads(
            _json(archive, weights_file), weights_file, "weight", members, f"{root}data/weights/"
        )
        constants = _payloads(
            _json(archive, constants_file),
            constants_file,
            "constant",
            members,
            f"{root}data/constants/",
        )
        program = check_program(_json(archive, models[0]))
    contents = Pt2Contents(root, name, program, weights, constants)
    _check_state(program, contents)
    return contents


def user_input_names(program: dict[str, Any]) -> list[str]:
    """Names of the graph values that are the program's user inputs, in order."""
    names = []
    for spec in _input_specs(program):
        if spec["kind"] == "user_input":
            arg = spec.get("arg") or {}
            if "as_tensor" not in arg:
                raise InvalidModelError(
                    "the program takes a non-tensor input; SynFlow feeds tensors only. Export "
                    "with every forward argument a tensor"
                )
            names.append(arg["as_tensor"]["name"])
    return names
