"""From input specs to the tensors a forward pass is fed, and what to say when it fails.

The specs are resolved once per run (the user's, checked against the file's when the file states
them); every pass builds all-ones tensors from them: floating inputs in the dtype the model
computes in at that moment (the scoring dtype while SynFlow has it linearised, the model's own
dtype otherwise), integer inputs as ones of their own dtype.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from synflow.config import PruneConfig
from synflow.errors import InvalidInputShapeError, InvalidModelError
from synflow.inputs import InputSpec, format_input_spec, format_input_specs
from synflow.model import LoadedModel

#: words of torch's messages for an input whose shape the model cannot take
_SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1|expected input", re.IGNORECASE)


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype the module computes in: that of its first floating tensor."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def describe(specs: tuple[InputSpec, ...]) -> str:
    """`an input of shape [1, 3]` for the classic case, else `inputs int64:1,128 ...`."""
    if len(specs) == 1 and specs[0].dtype == "float32":
        return f"an input of shape {list(specs[0].shape)}"
    return f"inputs {format_input_specs(specs)}"


def _contradiction(given: InputSpec, stated: InputSpec, free: frozenset[int]) -> str | None:
    if given.dtype != stated.dtype:
        return f"dtype {given.dtype} where the model takes {stated.dtype}"
    if len(given.shape) != len(stated.shape):
        return f"{len(given.shape)} dimensions where the model takes {len(stated.shape)}"
    for axis, (a, b) in enumerate(zip(given.shape, stated.shape, strict=True)):
        if a != b and axis not in free:
            return f"size {a} at axis {axis} where the model takes {b}"
    return None


def resolve_inputs(model: LoadedModel, config: PruneConfig) -> tuple[InputSpec, ...] | None:
    """The specs of this run: the request's when it gives them (refused when they contradict
    what the file states), else the file's own; None when neither says."""
    given = config.input_specs
    stated = model.inputs
    if given is None or stated is None:
        return given if given is not None else stated
    if len(given) != len(stated):
        raise InvalidInputShapeError(
            f"the model takes {len(stated)} input(s) ({format_input_specs(stated)}) but the "
            f"request gives {len(given)} ({format_input_specs(given)}); give one spec per input, "
            "or none to use the model's own"
        )
    free_axes = model.free_axes or tuple(frozenset() for _ in stated)
    for index, (g, s, free) in enumerate(zip(given, stated, free_axes, strict=True)):
        why = _contradiction(g, s, free)
        if why is not None:
            raise InvalidInputShapeError(
                f"input {index + 1} ({format_input_spec(g)}) contradicts the model, which states "
                f"{format_input_spec(s)}: {why}. Give {format_input_spec(s)} or leave the "
                "inputs out to use the model's own"
            )
    return given


def ones_inputs(
    specs: tuple[InputSpec, ...],
    floating: torch.dtype,
    device: torch.device | str = "cpu",
    fill: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """One tensor per spec: floating ones `fill` in `floating`, integer ones as 1 of their dtype."""
    return tuple(
        torch.full(s.shape, fill, dtype=floating, device=device)
        if s.is_floating
        else torch.ones(s.shape, dtype=torch_dtype(s.dtype), device=device)
        for s in specs
    )


def integer_inputs(specs: tuple[InputSpec, ...] | None) -> list[InputSpec]:
    return [s for s in specs or () if not s.is_floating]


def with_batch(specs: tuple[InputSpec, ...]) -> tuple[InputSpec, ...]:
    return tuple(InputSpec((1, *s.shape), s.dtype) for s in specs)


def runs_on(module: torch.nn.Module, specs: tuple[InputSpec, ...], floating: torch.dtype) -> bool:
    """Whether the module's forward pass completes on all-ones inputs of these specs."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            module(*ones_inputs(specs, floating, device))
    except Exception:  # any failure means no
        return False
    return True


def forward_failure(
    exc: Exception,
    specs: tuple[InputSpec, ...],
    retry: Callable[[tuple[InputSpec, ...]], bool] | None = None,
) -> Exception:
    """Say whether the forward pass failed on the inputs' shape (and, when `retry` says the model
    runs with a leading batch dimension added, that the batch dimension is missing) or on
    something else."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
    # TorchScript puts its own headline first and the model's error on the last line
    first = (lines[-1] if lines[0].startswith("The following operation failed") else lines[0])[:300]
    if _SHAPE_WORDS.search(first):
        batched = with_batch(specs)
        if retry is not None and retry(batched):
            return InvalidInputShapeError(
                f"the model rejected {describe(specs)}: {first}. The batch dimension is missing: "
                f"the model runs on {describe(batched)}; add the batch dimension first, e.g. "
                f"{format_input_specs(batched)}"
            )
        return InvalidInputShapeError(
            f"the model rejected {describe(specs)}: {first}. "
            "Pass the input_shape (or inputs) the model expects (batch first)"
        )
    what = describe(specs)
    what = "an all-ones " + what[3:] if what.startswith("an ") else "all-ones " + what
    return InvalidModelError(
        f"the model failed when run on {what}: {first}. "
        "Check that the model runs on its own (and does not read files or the network)"
    )
