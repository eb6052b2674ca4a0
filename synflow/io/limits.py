"""Bounds on what an uploaded model file may contain, checked before anything loads it.

The engine's defaults are generous; the service fills tighter ones from its settings. Both sets
live here, torch- and onnx-free, so the service can build them without importing either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 20_000
    max_member_bytes: int = 8 * GiB
    max_total_bytes: int = 16 * GiB
    max_code_bytes: int = 16 * MiB  # all `code/` and `.debug_pkl` members together
    #: a compressed member larger than `ratio_floor_bytes` may inflate at most this much
    max_ratio: float = 50.0
    ratio_floor_bytes: int = 1 * MiB


@dataclass(frozen=True)
class OnnxLimits:
    """What an uploaded ONNX file may contain; the service fills these from its settings."""

    max_file_bytes: int = 1 << 30  # protobuf itself cannot exceed 2 GiB
    max_nodes: int = 50_000
    max_initializers: int = 50_000
    max_elements: int = 1_000_000_000  # declared elements over all initializers
    max_rank: int = 8
    #: external data: each data file's size, and the bytes read from all of them together
    max_data_bytes: int = 16 * GiB
    #: read external data from files beside the .onnx (the CLI); the service says no: a single
    #: upload must be self-contained, external data comes in a zip bundle
    external_data_beside: bool = True


@dataclass(frozen=True)
class CalibrationLimits:
    """What a calibration file (safetensors `inputs` and `labels`) may be."""

    max_file_bytes: int = 256 * MiB
    max_header_bytes: int = 64 * 1024  # two tensors need a few hundred bytes of JSON
    max_samples: int = 65_536


@dataclass(frozen=True)
class InputLimits:
    """Every bound on an input file. The defaults here are the only ones: the service's
    settings take theirs from these classes, and the job spec carries `to_dict()` to the child."""

    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    onnx: OnnxLimits = field(default_factory=OnnxLimits)
    calibration: CalibrationLimits = field(default_factory=CalibrationLimits)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> InputLimits:
        """From `to_dict()`'s shape; missing groups or keys keep their defaults."""
        data = data or {}
        return cls(
            archive=ArchiveLimits(**data.get("archive", {})),
            onnx=OnnxLimits(**data.get("onnx", {})),
            calibration=CalibrationLimits(**data.get("calibration", {})),
        )
