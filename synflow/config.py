"""The one description of a pruning request.

`PruneConfig` is shared by the library, the CLI (whose flags are generated from its fields), the
HTTP form fields and the worker, so the four cannot drift apart. It imports no torch: the API
process validates requests with it without loading the numerical stack.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from synflow import boundedjson
from synflow.granularity import CHANNEL_ITERATIONS, UNSTRUCTURED, Granularity, parse_granularity
from synflow.inputs import (
    MAX_INPUT_ELEMENTS,
    InputSpec,
    format_input_spec,
    parse_input_specs,
    parse_shape,
)
from synflow.scorers.registry import SCORERS, scorer_spec

__all__ = ["MAX_INPUT_ELEMENTS", "MAX_ITERATIONS", "PruneConfig", "parse_shape"]

Schedule = Literal["exponential", "linear"]
Scope = Literal["global", "local"]

MAX_ITERATIONS = 10_000


class PruneConfig(BaseModel):
    """What to prune and how. Exactly one of `sparsity` and `compression` sets the target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sparsity: float | None = Field(
        None, ge=0.0, lt=1.0, description="fraction of prunable weights removed, in [0, 1)"
    )
    compression: float | None = Field(
        None, ge=1.0, description="compression ratio >= 1; the kept fraction is 1 / compression"
    )
    input_shape: tuple[int, ...] | None = Field(
        None,
        description="shape of the one float all-ones input, batch first, e.g. 1,3,224,224: the "
        "shorthand for one input spec (TorchScript needs it or inputs; ONNX states its own)",
    )
    inputs: tuple[InputSpec, ...] | None = Field(
        None,
        description="one [dtype:]d0,d1,... per forward argument, in order, e.g. int64:1,128 "
        "(input_shape is the shorthand for one float32 input; give one of the two)",
    )
    method: str = Field("synflow", description=f"scoring method: {', '.join(SCORERS)}")
    iterations: int | None = Field(
        None,
        ge=1,
        le=MAX_ITERATIONS,
        description="pruning rounds (default 100 for synflow and synflow-l2, 1 otherwise)",
    )
    schedule: Schedule = Field("exponential", description="density schedule over the rounds")
    scope: Scope = Field("global", description="rank all weights together or each tensor alone")
    prune_bias: bool = Field(False, description="also prune biases")
    prune_batchnorm: bool = Field(False, description="also prune normalisation scales")
    prune_embedding: bool = Field(
        False,
        description="also prune embedding tables (a table tied to a linear layer's weight is "
        "pruned as that weight either way)",
    )
    exclude: tuple[str, ...] = Field(
        (), description="parameter-name glob patterns kept dense, e.g. 'fc.*'"
    )
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seed for the random scorer")
    granularity: str = Field(
        UNSTRUCTURED,
        description="unstructured (single weights), channel (whole channels: a physically "
        "smaller model), or N:M such as 2:4 (N kept in every M consecutive input weights; the "
        "target is then N/M)",
    )

    @field_validator("input_shape", mode="before")
    @classmethod
    def _shape(cls, value: Any) -> tuple[int, ...] | None:
        return parse_shape(value)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> tuple[InputSpec, ...] | None:
        return parse_input_specs(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        scorer_spec(value)  # raises a ValueError naming the known methods
        return value

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        return parse_granularity(value).name  # raises a ValueError saying what is accepted

    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return boundedjson.loads(text, "exclude")
            return [p.strip() for p in text.split(",") if p.strip()]
        return value

    @model_validator(mode="after")
    def _one_target(self) -> PruneConfig:
        if self.grain.n_m is not None:
            self.grain.check_target(self.sparsity, self.compression)
        elif (self.sparsity is None) == (self.compression is None):
            raise ValueError(
                "give exactly one of sparsity (in [0, 1)) and compression (>= 1), not "
                + ("both" if self.sparsity is not None else "neither")
            )
        if self.compression is not None and not math.isfinite(self.compression):
            raise ValueError("compression must be a finite number >= 1")
        if self.input_shape is not None and self.inputs is not None:
            raise ValueError(
                "give either input_shape (one float32 input) or inputs (one spec per forward "
                "argument), not both"
            )
        if self.grain.name == "channel" and not scorer_spec(self.method).ranks_channels:
            able = ", ".join(n for n, spec in SCORERS.items() if spec.ranks_channels)
            raise ValueError(
                f"channel granularity cannot rank channels with {self.method}; choose {able}"
            )
        return self

    @property
    def input_specs(self) -> tuple[InputSpec, ...] | None:
        """The inputs asked for, whichever way they were given (None: use the file's own)."""
        if self.inputs is not None:
            return self.inputs
        if self.input_shape is not None:
            return (InputSpec(self.input_shape),)
        return None

    @property
    def grain(self) -> Granularity:
        """The parsed `granularity`."""
        return parse_granularity(self.granularity)

    @property
    def density(self) -> float:
        """Fraction of prunable weights kept at the end (channel granularity: of each layer's
        channels; N:M: N/M)."""
        nm = self.grain.n_m
        if nm is not None:
            return nm[0] / nm[1]
        if self.sparsity is not None:
            return 1.0 - self.sparsity
        assert self.compression is not None
        return 1.0 / self.compression

    @property
    def resolved_scope(self) -> str:
        """`scope` as run: channel granularity ranks each group alone unless `scope` was given
        (global channel ranking empties late layers first and saves fewer MACs)."""
        if self.grain.name == "channel" and "scope" not in self.model_fields_set:
            return "local"
        return self.scope

    @property
    def resolved_iterations(self) -> int:
        if self.iterations is not None:
            return self.iterations
        default = scorer_spec(self.method).default_iterations
        if self.grain.name == "channel":
            return min(default, CHANNEL_ITERATIONS)
        return default

    def normalized(self) -> dict[str, Any]:
        """The request with every default filled in, as stored in job records and reports."""
        data = self.model_dump(mode="json")
        data["iterations"] = self.resolved_iterations
        data["scope"] = self.resolved_scope
        data["density"] = self.density
        data["input_shape"] = list(self.input_shape) if self.input_shape else None
        data["inputs"] = [format_input_spec(s) for s in self.inputs] if self.inputs else None
        data["exclude"] = list(self.exclude)
        return data
