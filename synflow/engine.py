"""The pruning loop: score, pick the density of this round, select, repeat.

The loop is the same for every scorer (the registry supplies the scorer) and for every model
format (the `LoadedModel` supplies the parameters). It reports progress after every round and
checks for cancellation before each one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from synflow.calibration import Calibration
from synflow.config import PruneConfig
from synflow.device import check_device
from synflow.discovery import DenseParameter
from synflow.errors import InvalidInputShapeError, NoPrunableParametersError, PruningCanceled
from synflow.feed import forward_failure, model_dtype, ones_inputs, resolve_inputs, runs_on
from synflow.inputs import InputSpec
from synflow.io.calibration import check_method_data, match_inputs
from synflow.masks import Masks
from synflow.model import Discovery, LoadedModel, PrunableTensor
from synflow.schedule import density_at
from synflow.scorers.base import Scorer, ScoringContext
from synflow.scorers.registry import scorer_spec
from synflow.selection import select_inplace
from synflow.structured.nm import pruned_per_group, select_nm, skip_reason


@dataclass(frozen=True)
class Progress:
    iteration: int
    iterations: int
    density: float  # achieved after this round


ProgressCallback = Callable[[Progress], None]
CancelCheck = Callable[[], bool]


@dataclass
class PruneResult:
    masks: Masks  # keyed by published key, on the CPU
    tensors: list[PrunableTensor]
    config: PruneConfig
    inputs: tuple[InputSpec, ...] | None  # what forward was fed, one spec per argument
    device: str
    precision: str
    seconds: float
    history: list[float] = field(default_factory=list)  # achieved density per round
    #: (a, b) when float32 ran with the input scaled by 2^a and the backward seed by 2^b
    scale: tuple[int, int] | None = None
    precision_note: str | None = None  # why the run left float32, when it did
    #: key -> (first round, cause) of each tensor whose remaining weights all scored 0
    zero_score_layers: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: aten ops the scoring passes replaced by their linear part (synflow.linearise), per pass
    linearised_ops: dict[str, int] = field(default_factory=dict)
    #: every parameter left dense, with the reason
    dense: list[DenseParameter] = field(default_factory=list)
    discovery: str = ""  # how the prunable parameters were found ("ops", "layer type", ...)
    #: N:M granularity: key -> why that prunable tensor stayed dense (no groups of M)
    nm_skipped: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of the one input, when there was exactly one."""
        return self.inputs[0].shape if self.inputs is not None and len(self.inputs) == 1 else None


def discover(
    model: LoadedModel,
    config: PruneConfig,
    inputs: tuple[InputSpec, ...] | None,
    device: torch.device,
) -> Discovery:
    """The prunable parameters, from the ops the model runs on the all-ones inputs (when known)."""
    fed = None
    if inputs is not None:
        floating = model_dtype(model.module)
        fed = ones_inputs(inputs, floating, device)
    try:
        return model.discover(
            config.prune_bias,
            config.prune_batchnorm,
            config.exclude,
            prune_embedding=config.prune_embedding,
            inputs=fed,
        )
    except (RuntimeError, torch.jit.Error, IndexError) as exc:
        assert inputs is not None  # without inputs nothing runs the model
        raise forward_failure(
            exc, inputs, retry=lambda specs: runs_on(model.module, specs, floating)
        ) from exc


def prune(
    model: LoadedModel,
    config: PruneConfig,
    *,
    device: str | torch.device = "cpu",
    precision: str = "auto",
    progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    calibration: Calibration | None = None,
) -> PruneResult:
    """Compute masks for `model` as `config` asks. The module is left as it was given.

    `calibration` feeds the data-driven methods (`ScorerSpec.needs_data`) and only them."""
    started = time.perf_counter()
    device = check_device(device)
    inputs = resolve_inputs(model, config)
    spec = scorer_spec(config.method)
    check_method_data(spec, None if calibration is None else calibration.info)
    if calibration is not None:
        inputs = match_inputs(calibration.spec, inputs)
    if inputs is None and spec.needs_inputs:
        raise InvalidInputShapeError(
            "input_shape is required for this model (e.g. 1,3,224,224), or one input spec per "
            "forward argument (e.g. --input int64:1,128): the file does not state its inputs"
        )
    if device.type != "cpu":
        model.module.to(device)
    history: list[float] = []
    used_precision = "float32"
    scale = note = None
    zero_layers: dict[str, tuple[int, str]] = {}
    linearised: dict[str, int] = {}
    try:
        found = discover(model, config, inputs, device)
        tensors = found.prunable
        named = dict(model.module.named_parameters())
        params = {t.key: named[t.param_name] for t in tensors}
        ctx = ScoringContext(
            model=model,
            tensors=tensors,
            params=params,
            inputs=inputs,
            device=device,
            generator=torch.Generator().manual_seed(config.seed),
            precision=precision,
            density=config.density,
            calibration=calibration,
        )
        iterations = config.resolved_iterations
        masks = Masks.dense_flat(params)
        nm = config.grain.n_m
        nm_keys, nm_skipped = nm_split(tensors, params, nm) if nm else ([], {})
        with spec.load()(ctx) as scorer:
            for t in range(1, iterations + 1):
                if should_cancel is not None and should_cancel():
                    raise PruningCanceled(f"canceled before round {t} of {iterations}")
                if nm is None:
                    density = density_at(config.density, t, iterations, config.schedule)
                    masks = _next_masks(scorer, masks, density, config.scope)
                else:
                    prune = pruned_per_group(*nm, t, iterations, config.schedule)
                    masks = select_nm(scorer.score(masks), masks, nm_keys, nm[1], prune)
                history.append(masks.density)
                if progress is not None:
                    progress(Progress(t, iterations, history[-1]))
            used_precision = getattr(scorer, "precision", str(next(iter(params.values())).dtype))
            scale = getattr(scorer, "scale", None)
            note = getattr(scorer, "note", None)
            zero_layers = dict(getattr(scorer, "zero_layers", {}))
            linearised = dict(getattr(scorer, "linearised", {}))
    finally:
        if device.type != "cpu":
            model.module.to("cpu")
    return PruneResult(
        masks=masks.cpu(),
        tensors=tensors,
        config=config,
        inputs=inputs,
        device=str(device),
        precision=used_precision.replace("torch.", ""),
        seconds=time.perf_counter() - started,
        history=history,
        scale=scale,
        precision_note=note,
        zero_score_layers=zero_layers,
        linearised_ops=linearised,
        dense=found.dense,
        discovery=found.method,
        nm_skipped=nm_skipped,
    )


def nm_split(
    tensors: list[PrunableTensor], params: dict[str, torch.Tensor], nm: tuple[int, int]
) -> tuple[list[str], dict[str, str]]:
    """The keys that take N:M masks, and why the others stay dense; none at all is an error."""
    skipped = {}
    for t in tensors:
        reason = skip_reason(t, params[t.key].shape, nm[1])
        if reason is not None:
            skipped[t.key] = reason
    keys = [t.key for t in tensors if t.key not in skipped]
    if not keys:
        raise NoPrunableParametersError(
            f"granularity {nm[0]}:{nm[1]} needs weights whose input dimension is a multiple of "
            f"{nm[1]}; none of this model's is ({next(iter(skipped.values()), 'no weights')})"
        )
    return keys, skipped


def _next_masks(scorer: Scorer, masks: Masks, density: float, scope: str) -> Masks:
    """Score, then select. Scorers that run whole rounds themselves (`next_masks`: SynFlow's
    compact alive index) do; scorers that lend their own buffers (`score_borrowed`) avoid a copy
    of every score; the masks of the previous round are reused as scratch space."""
    step = getattr(scorer, "next_masks", None)
    if step is not None:
        return step(masks, density, scope)
    borrowed = getattr(scorer, "score_borrowed", None)
    if borrowed is None:
        scores = scorer.score(masks)
        return select_inplace(scores, masks, density, scope)
    scores = borrowed(masks)
    zero = bool(getattr(scorer, "pruned_scores_zero", False))
    return select_inplace(scores, masks, density, scope, pruned_scores_zero=zero)


@torch.no_grad()
def apply_masks(model: LoadedModel, result: PruneResult) -> None:
    """Zero the pruned entries of the module's parameters in place (signs and values kept)."""
    named = dict(model.module.named_parameters())
    for t in result.tensors:
        p = named[t.param_name]
        mask = result.masks[t.key].to(p.device)
        torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device), out=p)
