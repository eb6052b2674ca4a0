"""ONNX models with external data for the tests: what the exporters write by default, bundles of
them, hand-built hostile variants, and the check that a pruned output is right."""

from __future__ import annotations

import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, numpy_helper

from synflow.schedule import density_at, prune_count
from tests.synflow.onnx_nets import build
from tests.synflow.test_onnx_bad_inputs import linear_model, save

NETWORK = "convnet"  # Conv + BatchNorm, ConvTranspose, Linear: small, every weight kind
SHAPE = (1, 3, 16, 16)


def network() -> torch.nn.Module:
    return build(NETWORK)


def export_dynamo(folder: Path, external_data: bool = True) -> Path:
    """`torch.onnx.export(model, args, path, dynamo=True)`: its default writes `m.onnx` plus
    `m.onnx.data` (external data), at an opset of 18 or newer."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if external_data:
            torch.onnx.export(network(), (torch.ones(SHAPE),), str(path), dynamo=True)
        else:
            torch.onnx.export(
                network(), (torch.ones(SHAPE),), str(path), dynamo=True, external_data=False
            )
    return path


def export_legacy(folder: Path) -> Path:
    """`torch.onnx.export(model, args, path, dynamo=False)` with its defaults: one file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "legacy.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network(), (torch.ones(SHAPE),), str(path), dynamo=False)
    return path


def external_tensors(path: Path) -> dict[str, dict[str, str]]:
    """Initializer name -> its external-data entries, read without loading any data."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        t.name: {e.key: e.value for e in t.external_data}
        for t in model.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }


def bundle(path: Path, members: dict[str, Path], compression=zipfile.ZIP_STORED) -> Path:
    """A zip as `zip -j` writes it: each file at the top level under its own name."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, source in members.items():
            archive.write(source, name)
    return path


def expected_kept(total: int, sparsity: float, iterations: int) -> int:
    """The engine's count rule after the last round: floor((1 - d_n) * N) pruned."""
    return total - prune_count(
        total, density_at(1.0 - sparsity, iterations, iterations, "exponential")
    )


def initializers(path: Path) -> dict[str, np.ndarray]:
    """Every initializer's values, external data loaded from beside the file."""
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def check_pruned(pruned: Path, original: Path, masks: dict[str, np.ndarray], reference: Path):
    """`pruned` loads with onnx and onnxruntime, and holds the original values where the masks
    keep and zeros exactly where they prune; everything else is the original. It computes what
    `reference` (a single-file copy of the original with the masks applied) computes."""
    onnx.checker.check_model(str(pruned))
    before, after = initializers(original), initializers(pruned)
    assert sorted(before) == sorted(after)
    for name, value in before.items():
        if name in masks:
            np.testing.assert_array_equal(after[name], np.where(masks[name], value, 0), name)
            assert (after[name][masks[name]] == value[masks[name]]).all()
        else:
            np.testing.assert_array_equal(after[name], value, name)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_allclose(run(pruned, x), run(reference, x), rtol=1e-6, atol=1e-6)


def masked_copy(original: Path, masks: dict[str, np.ndarray], path: Path) -> Path:
    """The original model as one file, with the masks applied by hand."""
    model = onnx.load(str(original))
    for tensor in model.graph.initializer:
        if tensor.name in masks:
            value = numpy_helper.to_array(tensor)
            tensor.CopyFrom(
                numpy_helper.from_array(np.where(masks[tensor.name], value, 0), tensor.name)
            )
    onnx.save(model, str(path), save_as_external_data=False)
    return path


# --- hand-built models naming their data files --------------------------------------------------

WEIGHT = np.arange(1, 13, dtype=np.float32).reshape(4, 3)  # 48 bytes


def model_naming(
    folder: Path, location: str, *, offset: int = 0, length: int | None = None, extra=()
) -> Path:
    """`folder/model.onnx`, x -> MatMul(W) -> Relu, whose W is external data at `location`."""
    folder.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(WEIGHT, "W")
    raw = weight.raw_data
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", str(offset))]
    entries.append(("length", str(len(raw) if length is None else length)))
    for key, value in (*entries, *extra):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return save(linear_model(weight=weight), folder / "model.onnx")


def weight_bytes(offset: int = 0) -> bytes:
    return b"\x7f" * offset + WEIGHT.tobytes()


def hostile_bundle(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    """A zip of exactly these members (names and modes as given, nothing checked)."""
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    """A zip member that `unzip` would create as a symbolic link to `target`."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3  # unix
    return info, target.encode()
