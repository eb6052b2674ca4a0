"""Calibration data for the data-driven scorers (SNIP, GraSP): a batch of `inputs` and `labels`.

Read from safetensors only (never a pickle), after the bounded header check of
`synflow.io.calibration`; matched against the model's input spec here, so a wrong shape or dtype
fails with a message that names both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from synflow.errors import CalibrationError
from synflow.inputs import InputSpec
from synflow.io.calibration import INPUTS, LABELS, CalibrationInfo, inspect_calibration
from synflow.io.limits import CalibrationLimits


@dataclass(frozen=True)
class Calibration:
    inputs: torch.Tensor  # batch first
    labels: torch.Tensor | None = None  # one class index per sample

    @property
    def info(self) -> CalibrationInfo:
        dtype = str(self.inputs.dtype).removeprefix("torch.")
        shape = tuple(self.inputs.shape)
        return CalibrationInfo(shape[0], shape, dtype, self.labels is not None)

    @property
    def spec(self) -> InputSpec:
        return self.info.spec


def load_calibration(path: str | Path, limits: CalibrationLimits | None = None) -> Calibration:
    inspect_calibration(path, limits)
    tensors = load_file(str(path))
    return Calibration(tensors[INPUTS], tensors.get(LABELS))


def check_labels(calibration: Calibration, output: torch.Tensor, method: str) -> torch.Tensor:
    """The labels as int64, checked against the logits the model returned for the batch."""
    if calibration.labels is None:
        raise CalibrationError(
            f"{method} needs `labels` in the calibration file (one int64 class index per sample): "
            "its score is the cross-entropy gradient, as in the method's paper"
        )
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = list(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise CalibrationError(
            f"{method} needs a classifier: the model must return logits of shape [N, classes] "
            f"for the calibration batch, it returned {shape}"
        )
    labels = calibration.labels.to(torch.int64)
    classes = output.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise CalibrationError(
            f"the calibration labels must be class indices in [0, {classes}) for this model's "
            f"{classes} outputs; they range over [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.to(output.device)
