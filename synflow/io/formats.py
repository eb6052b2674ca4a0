"""Format registry: the one place that knows which model files exist and how each is handled.

Adding a format is one new module under `synflow/io/` and one entry here; detection, loading,
writing, the pipeline's and the service's artifact names and the API's "does the request need
an input shape" check all derive from the entry. Entries name their functions by import path,
so this module (and the API, which sniffs uploads) stays free of torch and onnx.

Formats are told apart by content, never by file name: each entry's sniffer looks at a
`synflow.io.sniff.Sample` (the first bytes, a zip's central-directory names), first match wins.
A file no entry claims is refused with `synflow.io.sniff.refusal`'s message (pickles, torch.save
zips, unknown zips), without ever being unpickled.

The callables an entry names:

- sniffer `(Sample) -> bool`, torch-free and cheap: it runs in the API on every upload;
- loader `(path, InputLimits, workdir) -> LoadedModel`: checks the file against the limits
  (archives are inspected here, before anything opens a member) and loads it; it may unpack
  into a temporary folder under `workdir` (None: the system's) and removes it before returning;
- writer `(LoadedModel, out_dir) -> list[str]`: writes the pruned model into `out_dir`, each file
  under a temporary name renamed into place, and returns the names it wrote (the first is
  `model_file`; others only where the layout needs them, e.g. ONNX external data).
- channel writer `(LoadedModel, out_dir, example inputs) -> list[str]`, optional: writes the
  physically smaller model that channel pruning made of `model.module` (`granularity=channel`);
  a format without one refuses channel pruning with `channel_refusal`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synflow.errors import InvalidModelError
from synflow.io.limits import ArchiveLimits
from synflow.io.sniff import Sample, refusal

if TYPE_CHECKING:
    from synflow.io.limits import InputLimits
    from synflow.model import LoadedModel

TORCHSCRIPT = "torchscript"
ONNX = "onnx"
PT2 = "pt2"
ONNX_BUNDLE = "onnx_bundle"


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass(frozen=True)
class FormatSpec:
    name: str  # stored in job records (`input_format`)
    title: str  # how messages name it
    sniffer: str  # "module:function", (Sample) -> bool
    loader: str  # "module:function", (path, InputLimits, workdir) -> LoadedModel
    writer: str  # "module:function", (LoadedModel, out_dir) -> list[str]
    #: the pruned model's artifact (what `GET /jobs/{id}/model` serves)
    model_file: str
    #: files the writer may add beside `model_file` (CLI layouts only; the service's formats
    #: never write them, their models travel as one file)
    extra_files: tuple[str, ...] = ()
    #: the file declares its inputs' shapes (ONNX graph inputs); otherwise the request must
    states_inputs: bool = False
    description: str = ""
    #: "module:function" writing the channel-pruned (smaller) model; None: channel pruning of
    #: this format is refused with `channel_refusal`
    channel_writer: str | None = None
    channel_refusal: str = ""

    @property
    def suffix(self) -> str:
        return Path(self.model_file).suffix

    def sniff(self, sample: Sample) -> bool:
        return bool(_resolve(self.sniffer)(sample))

    def load(self, path: Path, limits: InputLimits, workdir: Path | None = None) -> LoadedModel:
        return _resolve(self.loader)(path, limits, workdir)

    def write(self, model: LoadedModel, out_dir: Path) -> list[str]:
        return list(_resolve(self.writer)(model, out_dir))

    def write_channels(self, model: LoadedModel, out_dir: Path, inputs: tuple) -> list[str]:
        if self.channel_writer is None:
            raise InvalidModelError(self.channel_refusal)
        return list(_resolve(self.channel_writer)(model, out_dir, inputs))


#: Why channel pruning is refused for a format, and what to upload instead.
_CHANNEL_REFUSAL = (
    "granularity=channel returns a physically smaller model in the uploaded format, which is "
    "supported for ONNX files written by the legacy exporter; {what}. Export the model with "
    "torch.onnx.export(model, args, 'model.onnx', dynamo=False) and upload that, or use "
    "granularity unstructured or N:M (e.g. 2:4) for this file"
)

FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name=TORCHSCRIPT,
            title="TorchScript",
            sniffer="synflow.io.sniff:is_torchscript",
            loader="synflow.io.torchscript:load_torchscript",
            writer="synflow.io.torchscript:write_torchscript",
            model_file="model.pt",
            description="TorchScript archive (torch.jit.save); loading runs its code",
            channel_refusal=_CHANNEL_REFUSAL.format(what="a TorchScript module hides its layers"),
        ),
        FormatSpec(
            name=PT2,
            title="torch.export",
            sniffer="synflow.io.sniff:is_pt2",
            loader="synflow.io.pt2:load_pt2",
            writer="synflow.io.pt2:write_pt2",
            model_file="model.pt2",
            states_inputs=True,
            description="torch.export program (torch.export.save); read without unpickling",
            channel_refusal=_CHANNEL_REFUSAL.format(
                what="a torch.export program holds aten calls, not layers"
            ),
        ),
        FormatSpec(
            name=ONNX,
            title="ONNX",
            sniffer="synflow.io.sniff:is_onnx",
            loader="synflow.io.onnx:load_onnx_file",
            writer="synflow.io.onnx:write_onnx",
            model_file="model.onnx",
            extra_files=("model.onnx.data",),
            states_inputs=True,
            description="ONNX model; on the command line its external data files beside it",
            channel_writer="synflow.structured.export:write_onnx_channels",
        ),
        FormatSpec(
            name=ONNX_BUNDLE,
            title="ONNX bundle",
            sniffer="synflow.io.sniff:is_onnx_bundle",
            loader="synflow.io.onnx_bundle:load_onnx_bundle",
            writer="synflow.io.onnx_bundle:write_onnx_bundle",
            model_file="model.zip",
            states_inputs=True,
            description="zip of one .onnx and its external data files",
            channel_refusal=_CHANNEL_REFUSAL.format(
                what="ONNX bundles (external data) are not restructured yet"
            ),
        ),
    )
}


def format_spec(name: str) -> FormatSpec:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown model format {name!r}; known: {', '.join(FORMATS)}") from None


def model_file(fmt: str) -> str:
    """The pruned model's artifact name for an input of format `fmt`."""
    return format_spec(fmt).model_file


def detect_format(path: str | Path, archive_limits: ArchiveLimits | None = None) -> str:
    """The registered format whose sniffer recognises the file, or InvalidModelError saying what
    the file is. Reads the first bytes and a zip's central directory only (cheap enough for the
    API): every member's real size is checked by the loader, before anything opens it."""
    sample = Sample.read(path, archive_limits)
    for spec in FORMATS.values():
        if spec.sniff(sample):
            return spec.name
    raise InvalidModelError(refusal(sample))
