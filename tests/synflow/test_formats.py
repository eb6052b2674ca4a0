"""The format registry is the one place that knows the formats: every entry resolves, and the
names the pipeline, the service and the worker use derive from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch

from jobs.stores import artifacts
from synflow.errors import InvalidModelError
from synflow.io import formats
from synflow.io.formats import FORMATS, _resolve, detect_format, format_spec, model_file
from synflow.io.limits import ArchiveLimits, InputLimits, OnnxLimits
from synflow.io.sniff import Sample
from tests.service.harness import REPO_ROOT
from tests.synflow import nets
from tests.synflow.test_onnx_bad_inputs import linear_model, save


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_entry_resolves(name):
    spec = FORMATS[name]
    assert spec.name == name
    for target in (spec.sniffer, spec.loader, spec.writer):
        assert callable(_resolve(target)), target
    assert spec.model_file.startswith("model.") and spec.suffix == "." + spec.model_file[6:]


def test_the_registry_and_the_sniffers_need_no_torch():
    """The API sniffs uploads with them: importing and running them must not load torch."""
    program = (
        "import sys; from synflow.io.formats import FORMATS, _resolve\n"
        "from synflow.io.sniff import Sample\n"
        "[_resolve(s.sniffer)(Sample(b'\\x08\\x01')) for s in FORMATS.values()]\n"
        "print(sorted(m for m in ('torch', 'onnx', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("name", list(FORMATS))
def test_artifact_names_derive_from_the_registry(name, tmp_path):
    expected = FORMATS[name].model_file
    assert model_file(name) == expected
    assert artifacts.artifact_file("model", name) == expected
    job = "0cb30b28-8b73-489c-961e-a262378c44a6"
    path = artifacts.ArtifactStore(tmp_path).artifact_path(job, "model", name)
    assert path.name == expected


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="unknown model format 'nope'"):
        format_spec("nope")


def test_loaded_model_suffix_comes_from_the_registry():
    model = nets.as_loaded(nets.seeded(nets.plain_cnn))
    assert model.suffix == FORMATS[formats.TORCHSCRIPT].suffix == ".pt"


def test_detect_and_round_trip_each_format(tmp_path):
    """Each format is recognised from content (never the name), loads, and writes its file."""
    script = tmp_path / "no-extension-1"
    torch.jit.save(torch.jit.script(nets.seeded(nets.plain_cnn)), str(script))
    onnx_path = save(linear_model(), tmp_path / "no-extension-2")
    for path, fmt in ((script, formats.TORCHSCRIPT), (onnx_path, formats.ONNX)):
        assert detect_format(path) == fmt
        spec = format_spec(fmt)
        model = spec.load(path, InputLimits())
        assert model.format == fmt
        out = tmp_path / f"out-{fmt}"
        out.mkdir()
        assert model.save(out) == [spec.model_file]
        assert sorted(p.name for p in out.iterdir()) == [spec.model_file]  # no temporary left
        assert detect_format(out / spec.model_file) == fmt


def test_states_inputs():
    assert FORMATS[formats.ONNX].states_inputs
    assert not FORMATS[formats.TORCHSCRIPT].states_inputs


def test_sniffing_reads_only_the_central_directory(tmp_path):
    """A member that does not inflate (corrupt deflate data) is no obstacle to the sniff; the
    TorchScript loader's full inspection is what refuses it."""
    path = tmp_path / "odd.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/code/__torch__/x.py", b"#" * 4096)
        z.writestr("m/constants.pkl", b"x")
    data = bytearray(path.read_bytes())
    start = data.index(b"m/code/__torch__/x.py") + len("m/code/__torch__/x.py")
    data[start : start + 8] = b"\xff" * 8  # damage the deflate stream, not the directory
    path.write_bytes(bytes(data))
    assert detect_format(path) == formats.TORCHSCRIPT
    with pytest.raises(InvalidModelError, match="damaged"):
        format_spec(formats.TORCHSCRIPT).load(path, InputLimits())


def test_member_count_is_capped_by_the_sniff(tmp_path):
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(5):
            z.writestr(f"f{i}", b"")
    with pytest.raises(InvalidModelError, match="5 members, more than the limit of 4"):
        detect_format(path, ArchiveLimits(max_members=4))


def test_refusals_say_what_the_file_is(tmp_path):
    pickle = tmp_path / "p"
    torch.save({"a": 1}, str(pickle), _use_new_zipfile_serialization=False)
    with pytest.raises(InvalidModelError, match="pickle"):
        detect_format(pickle)
    empty = tmp_path / "e"
    empty.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        detect_format(empty)
    assert Sample(b"\x08").zip_names is None


def test_input_limits_round_trip_and_settings_defaults():
    from jobs.settings import Settings

    limits = InputLimits(ArchiveLimits(max_members=7), OnnxLimits(max_rank=3))
    assert InputLimits.from_dict(limits.to_dict()) == limits
    assert InputLimits.from_dict(None) == InputLimits()
    defaults = Settings().input_limits()
    assert defaults.archive == ArchiveLimits()
    # max_file_bytes: min(upload cap, 1 GiB) = 1 GiB; external data only in bundles
    assert defaults.onnx == OnnxLimits(external_data_beside=False)
