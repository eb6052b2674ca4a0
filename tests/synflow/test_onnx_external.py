"""ONNX with external data through the CLI and the library: the exporters' default files as loose
files and as a bundle, pruned exactly and written back in the layout they came in; and every
hostile variant refused clearly, with no file outside the model's folder opened."""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file

from synflow.cli import main
from synflow.config import PruneConfig
from synflow.errors import InvalidModelError
from synflow.io.formats import ONNX, ONNX_BUNDLE, detect_format
from synflow.io.limits import ArchiveLimits, InputLimits, OnnxLimits
from synflow.io.loader import load_model
from synflow.pipeline import prune_file
from tests.synflow.onnx_external_cases import (
    WEIGHT,
    bundle,
    check_pruned,
    expected_kept,
    export_dynamo,
    export_legacy,
    external_tensors,
    hostile_bundle,
    masked_copy,
    model_naming,
    symlink_member,
    weight_bytes,
)
from tests.synflow.test_onnx_bad_inputs import FifoWatch

SPARSITY, ITERATIONS = 0.9, 4
CONFIG = PruneConfig(sparsity=SPARSITY, iterations=ITERATIONS)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The dynamo exporter's default pair, the same model as one file (reference), and the
    legacy exporter's default."""
    root = tmp_path_factory.mktemp("exports")
    return {
        "dynamo": export_dynamo(root / "dynamo"),
        "single": export_dynamo(root / "single", external_data=False),
        "legacy": export_legacy(root / "legacy"),
    }


@pytest.fixture(scope="module")
def reference(exported, tmp_path_factory) -> dict:
    """The single-file export pruned: the masks that the external-data runs must equal."""
    out = tmp_path_factory.mktemp("reference")
    report = prune_file(exported["single"], CONFIG, out)
    return {"report": report, "masks": load_file(str(out / "masks.safetensors"))}


def test_the_dynamo_default_writes_external_data(exported):
    """What the issue reports: `m.onnx` plus `m.onnx.data`, at opset 18 or newer."""
    path = exported["dynamo"]
    assert (path.parent / "m.onnx.data").is_file()
    external = external_tensors(path)
    assert external and {e["location"] for e in external.values()} == {"m.onnx.data"}
    opset = {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""]
    assert opset >= 18
    assert detect_format(path) == ONNX


def test_cli_loose_files(exported, reference, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prune", str(exported["dynamo"]), "--sparsity", str(SPARSITY)]
    assert main([*argv, "--iterations", str(ITERATIONS), "--out", str(out)]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [
        "masks.safetensors", "model.onnx", "model.onnx.data", "report.json", "report.png",
        "weights.safetensors",
    ]  # fmt: skip
    masks = load_file(str(out / "masks.safetensors"))
    assert sorted(masks) == sorted(reference["masks"])
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, reference["masks"][name], name)
    total = sum(m.size for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == expected_kept(total, SPARSITY, ITERATIONS)

    # the layout it came in: the same tensors external, now in model.onnx.data
    written = external_tensors(out / "model.onnx")
    assert set(written) == set(external_tensors(exported["dynamo"]))
    assert {e["location"] for e in written.values()} == {"model.onnx.data"}
    data_size = (out / "model.onnx.data").stat().st_size
    assert all(int(e["offset"]) + int(e["length"]) <= data_size for e in written.values())
    check_pruned(
        out / "model.onnx",
        exported["dynamo"],
        masks,
        masked_copy(exported["dynamo"], masks, tmp_path / "by-hand.onnx"),
    )


def test_legacy_default_stays_one_file(exported, tmp_path):
    assert not external_tensors(exported["legacy"])
    report = prune_file(exported["legacy"], CONFIG, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "masks.safetensors", "model.onnx", "report.json", "weights.safetensors"
    ]  # fmt: skip
    masks = load_file(str(tmp_path / "out" / "masks.safetensors"))
    totals = report["totals"]
    assert totals["kept"] == expected_kept(totals["prunable"], SPARSITY, ITERATIONS)
    check_pruned(
        tmp_path / "out" / "model.onnx",
        exported["legacy"],
        masks,
        masked_copy(exported["legacy"], masks, tmp_path / "by-hand.onnx"),
    )


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_bundle(exported, reference, tmp_path, compression):
    """A zip of the pair (as `zip -j` makes it) in, `model.zip` with the same layout out."""
    folder = exported["dynamo"].parent
    path = bundle(
        tmp_path / "bundle.zip",
        {"m.onnx": folder / "m.onnx", "m.onnx.data": folder / "m.onnx.data"},
        compression,
    )
    assert detect_format(path) == ONNX_BUNDLE
    out = tmp_path / "out"
    report = prune_file(path, CONFIG, out)
    assert report["format"] == ONNX_BUNDLE and report["artifacts"]["model"] == "model.zip"
    assert sorted(p.name for p in out.iterdir()) == [
        "masks.safetensors", "model.zip", "report.json", "weights.safetensors"
    ]  # nothing unpacked is left behind  # fmt: skip
    masks = load_file(str(out / "masks.safetensors"))
    for name, mask in masks.items():
        np.testing.assert_array_equal(mask, reference["masks"][name], name)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(out / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["model.onnx", "model.onnx.data"]
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        archive.extractall(unpacked)
    assert set(external_tensors(unpacked / "model.onnx")) == set(
        external_tensors(exported["dynamo"])
    )
    check_pruned(
        unpacked / "model.onnx",
        exported["dynamo"],
        masks,
        masked_copy(exported["dynamo"], masks, tmp_path / "by-hand.onnx"),
    )
    # the output is a bundle this service accepts again
    assert detect_format(out / "model.zip") == ONNX_BUNDLE
    assert load_model(out / "model.zip").format == ONNX_BUNDLE


def test_a_bundle_of_a_self_contained_model(exported, tmp_path):
    path = bundle(tmp_path / "one.zip", {"single.onnx": exported["single"]})
    prune_file(path, CONFIG, tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "out" / "model.zip") as archive:
        assert archive.namelist() == ["model.onnx"]


# --- hostile loose files -------------------------------------------------------------------------


def refused(path: Path, *words: str, limits: InputLimits | None = None, out: Path | None = None):
    with pytest.raises(InvalidModelError) as info:
        prune_file(path, CONFIG, out or path.parent / "out", limits=limits)
    message = info.value.message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def test_a_valid_hand_built_model_loads(tmp_path):
    """The base of the hostile cases below is fine; each case breaks one thing."""
    path = model_naming(tmp_path / "m", "w.bin", offset=100)
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes(offset=100) + b"tail")
    report = prune_file(path, PruneConfig(sparsity=0.5, iterations=1), tmp_path / "out")
    assert report["totals"]["prunable"] == WEIGHT.size
    assert report["totals"]["kept"] == 6


@pytest.mark.parametrize(
    "kind, words",
    [
        ("symlink", ("symbolic link",)),
        ("fifo", ("not a regular file",)),
        ("parent", ("..",)),
        ("absolute", ("absolute",)),
        ("subfolder", ("subfolder",)),
    ],
)
def test_loose_data_file_refused_without_opening(tmp_path, kind, words):
    """The watched FIFO stands for any file outside the model's folder: nothing opens it."""
    models = tmp_path / "models"
    models.mkdir()
    fifo = FifoWatch(tmp_path / "outside.bin")
    location = {
        "symlink": "w.bin",
        "fifo": "pipe.bin",
        "parent": "../outside.bin",
        "absolute": str(fifo.path),
        "subfolder": "sub/w.bin",
    }[kind]
    if kind == "symlink":
        (models / "w.bin").symlink_to(fifo.path)
    if kind == "fifo":
        os.link(fifo.path, models / "pipe.bin")  # the FIFO itself, under a plain name
    if kind == "subfolder":
        (models / "sub").mkdir()
        (models / "sub" / "w.bin").symlink_to(fifo.path)
    path = model_naming(models, location)
    try:
        message = refused(path, "external data", *words)
    finally:
        opened = fifo.stop()
    assert not opened, f"the loader opened a file outside the model's folder: {message}"
    assert stat.S_ISFIFO(os.stat(fifo.path).st_mode)


def test_hard_link_refused(tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(weight_bytes())
    path = model_naming(tmp_path / "m", "w.bin")
    os.link(outside, tmp_path / "m" / "w.bin")
    refused(path, "hard links")


def test_missing_data_file(tmp_path):
    refused(model_naming(tmp_path / "m", "w.bin"), "missing", "beside", "zip")


def test_offset_beyond_the_file(tmp_path):
    path = model_naming(tmp_path / "m", "w.bin", offset=1000)
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes())
    refused(path, "beyond the end", "48 bytes")


def test_length_that_is_not_the_tensor(tmp_path):
    path = model_naming(tmp_path / "m", "w.bin", length=12)
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes())
    refused(path, "12 bytes", "needs 48")


def test_unknown_entries_such_as_basepath(tmp_path):
    path = model_naming(tmp_path / "m", "w.bin", extra=(("basepath", str(tmp_path)),))
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes())
    refused(path, "basepath", "not understood")


def test_data_file_larger_than_the_limit(tmp_path):
    path = model_naming(tmp_path / "m", "w.bin")
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes() + b"\0" * 100)  # 148 bytes
    limits = InputLimits(onnx=OnnxLimits(max_data_bytes=100))
    refused(path, "148 bytes", "over the limit", limits=limits)
    limits = InputLimits(onnx=OnnxLimits(max_data_bytes=40))  # the tensor alone is 48
    refused(path, "48 bytes", "over the limit", limits=limits)
    assert prune_file(
        path, CONFIG, tmp_path / "ok", limits=InputLimits(onnx=OnnxLimits(max_data_bytes=148))
    )


def test_the_service_limits_refuse_loose_files(tmp_path):
    """An upload is one file: with `external_data_beside` off (the service), a model that names
    data files is refused even when they exist."""
    path = model_naming(tmp_path / "m", "w.bin")
    (tmp_path / "m" / "w.bin").write_bytes(weight_bytes())
    limits = InputLimits(onnx=OnnxLimits(external_data_beside=False))
    refused(path, "external data", "zip", limits=limits)


# --- hostile bundles -----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_bundle_hostile_variants(tmp_path):
    """Each a clear refusal, and the watched FIFO outside the bundle is never opened."""
    fifo = FifoWatch(tmp_path / "outside.bin")
    model = lambda location, **kw: model_naming(tmp_path / "src", location, **kw).read_bytes()  # noqa: E731
    out = tmp_path / "out"
    out.mkdir()
    os.link(fifo.path, out / "outside.bin")  # where `..` from the unpack folder would point
    cases = {
        "symlink data member": (
            [("model.onnx", model("w.bin")), symlink_member("w.bin", str(fifo.path))],
            ("symbolic link",),
        ),
        "symlink model member": (
            [symlink_member("model.onnx", str(fifo.path)), ("w.bin", weight_bytes())],
            ("symbolic link",),
        ),
        "parent location": (
            [("model.onnx", model("../outside.bin"))],
            ("external data", ".."),
        ),
        "absolute location": (
            [("model.onnx", model(str(fifo.path)))],
            ("external data", "absolute"),
        ),
        "parent member name": (
            [("model.onnx", model("w.bin")), ("../w.bin", weight_bytes())],
            ("escapes",),
        ),
        "absolute member name": (
            [("model.onnx", model("w.bin")), (str(fifo.path), weight_bytes())],
            ("absolute",),
        ),
        "folder member": (
            [("model.onnx", model("sub/w.bin")), ("sub/w.bin", weight_bytes())],
            ("folder", "top level"),
        ),
        "offset beyond the file": (
            [("model.onnx", model("w.bin", offset=4096)), ("w.bin", weight_bytes())],
            ("beyond the end",),
        ),
        "missing data member": ([("model.onnx", model("w.bin"))], ("missing",)),
        "twice the same member": (
            [("model.onnx", model("w.bin")), ("w.bin", weight_bytes()), ("w.bin", b"x")],
            ("twice",),
        ),
    }
    try:
        for kind, (members, words) in cases.items():
            path = hostile_bundle(tmp_path / f"{kind.replace(' ', '-')}.zip", members)
            if kind == "absolute member name":  # the API's cheap directory check refuses it
                with pytest.raises(InvalidModelError, match="absolute"):
                    detect_format(path)
            message = refused(path, *words, out=out)
            assert sorted(p.name for p in out.iterdir()) == ["outside.bin"], kind  # none left
            print(f"{kind}: {message}")
    finally:
        opened = fifo.stop()
    assert not opened


def test_bundle_data_larger_than_the_limits(tmp_path):
    folder = tmp_path / "src"
    path = model_naming(folder, "w.bin")
    data = weight_bytes() + b"\0" * (3 << 20)  # 3 MiB of padding after the tensor
    path_zip = hostile_bundle(tmp_path / "big.zip", [("model.onnx", path.read_bytes()),
                                                     ("w.bin", data)])  # fmt: skip
    archive = InputLimits(archive=ArchiveLimits(max_member_bytes=1 << 20))
    refused(path_zip, "larger than the limit", limits=archive, out=tmp_path / "o1")
    onnx_limit = InputLimits(onnx=OnnxLimits(max_data_bytes=1 << 20))
    refused(path_zip, "over the limit", limits=onnx_limit, out=tmp_path / "o2")


def test_two_models_in_one_zip_are_refused_by_the_sniff(tmp_path):
    path = hostile_bundle(tmp_path / "two.zip", [("a.onnx", b"\x08\x01"), ("b.onnx", b"\x08\x01")])
    with pytest.raises(InvalidModelError, match=r"2 \.onnx files"):
        detect_format(path)


def test_extraction_stays_private(tmp_path, monkeypatch):
    """Bundles unpack under the output folder (the job's scratch in the service), never
    elsewhere, and the unpacked copy is gone once the model is loaded."""
    import tempfile

    folder = tmp_path / "src"
    path = model_naming(folder, "w.bin")
    zipped = hostile_bundle(tmp_path / "ok.zip", [("model.onnx", path.read_bytes()),
                                                  ("w.bin", weight_bytes())])  # fmt: skip
    seen = []
    real = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: seen.append(kw["dir"]) or real(**kw))
    shutil.rmtree(folder)
    prune_file(zipped, CONFIG, tmp_path / "out")
    assert seen and all(Path(d) == tmp_path / "out" for d in seen)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_cli_refusal_is_one_line_exit_2(tmp_path, capsys):
    models = tmp_path / "m"
    path = model_naming(models, "w.bin")
    (models / "w.bin").symlink_to(tmp_path / "elsewhere.bin")
    out = tmp_path / "out"
    code = main(["prune", str(path), "--sparsity", "0.5", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("synflow: error: ") and len(err.splitlines()) == 1, err
    assert "symbolic link" in err and "'w.bin'" in err
