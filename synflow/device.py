"""The torch device a run asks for, checked before any work: a name torch knows, on hardware
this machine has, so a typo or a missing GPU is one clear error rather than a traceback."""

from __future__ import annotations

import torch

from synflow.errors import DeviceUnavailableError


def check_device(name: str | torch.device) -> torch.device:
    """`torch.device(name)`, refused with a message that says what to use instead."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise DeviceUnavailableError(
            f"unknown device {str(name)!r}; use cpu, or cuda / cuda:N for a GPU"
        ) from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {str(name)!r} asks for a CUDA GPU, but this machine has none that torch "
                "can use (torch.cuda.is_available() is False); use --device cpu, or run where a "
                "GPU and a CUDA build of torch are installed"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"device {str(name)!r} does not exist: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    elif device.type not in ("cpu", "meta"):
        backend = getattr(torch.backends, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise DeviceUnavailableError(
                f"device {str(name)!r} is not available on this machine; use --device cpu"
            )
    if device.type == "meta":
        raise DeviceUnavailableError("the meta device holds no values; use cpu or cuda")
    return device
