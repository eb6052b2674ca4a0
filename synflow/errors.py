"""Errors the engine raises for inputs it cannot use.

Each carries a message written for the person who sent the model: what is wrong and what to do.
The CLI prints it on one line; the service turns it into a failed job or a 4xx problem document.
"""

from __future__ import annotations


class SynflowError(Exception):
    """Base class: an expected, user-actionable failure (never a bug)."""

    code = "synflow_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidModelError(SynflowError):
    """The file is not a model this engine can load, or the model cannot run as asked."""

    code = "invalid_model"


class InvalidInputShapeError(SynflowError):
    code = "invalid_input_shape"


class NoPrunableParametersError(SynflowError):
    code = "no_prunable_parameters"


class DegenerateFlowError(SynflowError):
    """Synaptic flow is zero or not finite: every score ties, so any mask would be arbitrary."""

    code = "degenerate_flow"


class DeviceUnavailableError(SynflowError):
    """The run asks for a device this machine does not have (e.g. cuda without a GPU)."""

    code = "device_unavailable"


class ExcludeMatchesNothingError(SynflowError):
    """An `exclude` pattern names no prunable tensor: most likely a typo, so it is refused."""

    code = "exclude_matches_nothing"


class PruningCanceled(SynflowError):
    code = "canceled"


class CalibrationError(SynflowError):
    """The calibration data is missing, malformed, or does not fit the method or the model."""

    code = "invalid_calibration"
