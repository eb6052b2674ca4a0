"""Synaptic flow scores (Tanaka et al., NeurIPS 2020), as the reference code computes them.

While open, the scorer keeps the module *linearised*: eval mode, every floating-point parameter and
buffer replaced by its absolute value, pruned weights zero. Each `score()` feeds an all-ones input,
sums the output into R and returns |theta * dR/dtheta| for the prunable weights. On close every
tensor gets its original storage back (no sign arithmetic, so restoring is exact).

Precision: "float32" reproduces the reference's arithmetic; "float64" is slower but covers a far
larger dynamic range; "auto" starts in float32 and, the first time R or a score is not finite
(torchvision ResNet-50 at 224x224 overflows float32 in this algorithm), checks whether the
linearised network is positively homogeneous (`synflow.scaling`). If it is, the run goes on in
float32 with the input and the backward seed scaled by powers of two, which leaves every score an
exact power-of-two multiple of the unbounded-exponent float32 score (same ranking, same ties);
otherwise, or when the values span more binary orders than float32 holds, the rest of the run is
float64. If float64 overflows too, the run fails with a clear error rather than ranking
infinities.

Memory: the live parameters hold the linearised weights, and the backward pass turns each prunable
weight into its score as soon as its gradient is ready (then frees the gradient), so the scores
cost no memory of their own; the next round rebuilds the weights from the saved originals. Once
few weights are alive (`COMPACT_BELOW`), `next_masks` switches to a compact index of them
(`synflow.alive`): scores go to a buffer sized to the alive weights, the weights stay, and only
newly pruned entries are zeroed. One-row linear layers never form their weight gradient: their
scores come from its two factors (`synflow.outer`), bit for bit the same.

BatchNorms that alone read a convolution's or linear layer's output are folded into it for the
scoring passes (`synflow.bnfold`); the passes that trace degrees for the power-of-two scale run
the network as it is.
"""

from __future__ import annotations

import contextlib
import math
from typing import Self

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from synflow import bnfold, kernels, outer
from synflow.alive import AliveIndex
from synflow.errors import DegenerateFlowError, InvalidInputShapeError, InvalidModelError
from synflow.feed import forward_failure, ones_inputs, runs_on
from synflow.linearise import Linearised
from synflow.masks import Masks, flat_buffer
from synflow.scaling import (
    DEFAULT_MARGIN,
    FLOAT32_MIN_EXP,
    Range,
    choose_exponents,
    log2_range,
    trace_forward,
)
from synflow.scorers.base import Scorer
from synflow.selection import select_alive, select_inplace

#: Re-centre the power-of-two scale when log2(R) has moved this far since it was chosen, or, when
#: the chosen scale left every measured value more binary orders than this above the margin
#: (`synflow.scaling.DEFAULT_MARGIN`), that many: the values would have to move as far as R to
#: reach the margin. On ResNet-50 at 224x224 the values' spread shrinks as weights go (slack 5,
#: then 13, 20, 29, 38, 46 and 56 orders at the re-centres, never less than at the one before
#: by more than 4): fixed 8-order steps re-traced 8 times, this rule 4, same masks.
RECENTRE_DRIFT = 8.0
#: Largest power-of-two exponent fed as a Python float (2.0 ** 1024 overflows).
MAX_EXPONENT = 1000
#: A float32 round with R below 2^this (or R = 0) may have lost small scores to underflow: `auto`
#: rescales it (scores are about R / N; N up to 2^40 still leaves them normal).
UNDERFLOW_LOG2 = -64.0
#: `next_masks` switches to the compact alive index once at most this fraction of the weights is
#: alive (round 42 of 100 at sparsity 0.99): gathering costs about twice a dense pass per entry,
#: and the index and its score buffer cost 8 bytes an alive weight on top of the dense rounds'
#: memory, 0.3x the float32 parameter bytes here. A negative value keeps every round dense.
COMPACT_BELOW = 0.15
#: Fold eval-mode BatchNorms into the layer before them for the passes that need no degree trace
#: (`synflow.bnfold`: same scores up to rounding, cheaper passes).
FOLD_BATCH_NORM = True
#: Score one-row linear layers from their gradient's factors in the passes that need no degree
#: trace (`synflow.outer`: the same scores bit for bit, no weight-sized gradient).
ROUTE_LINEAR = True


def output_sum(output: object) -> torch.Tensor:
    """R: the sum of every floating-point tensor the model returns (tuples, lists, dicts)."""
    if isinstance(output, torch.Tensor):
        return output.sum() if output.is_floating_point() else None  # type: ignore[return-value]
    if isinstance(output, dict):
        parts = [output_sum(v) for v in output.values()]
    elif isinstance(output, list | tuple):
        parts = [output_sum(v) for v in output]
    else:
        return None  # type: ignore[return-value]
    parts = [p for p in parts if p is not None]
    if not parts:
        return None  # type: ignore[return-value]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _plain_failure(module: torch.nn.Module, xs: tuple) -> Exception | None:
    """The error `module(*xs)` raises without autograd or dispatch modes, if any."""
    try:
        with torch.no_grad():
            module(*xs)
    except (RuntimeError, torch.jit.Error) as exc:
        return exc
    return None


class SynFlowScorer(Scorer):
    #: scores are >= 0 and exactly 0 where pruned (lets the selection skip a pass)
    pruned_scores_zero = True

    @staticmethod
    def positive(tensor: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The linearised value of a tensor: |tensor| (SynFlow-L2 squares it instead)."""
        return torch.abs(tensor, out=out)

    def __enter__(self) -> Self:
        if self.ctx.input_specs is None:
            raise InvalidInputShapeError(
                "SynFlow needs input_shape (e.g. 1,3,224,224) or inputs: the shape of one batch "
                "of each forward argument"
            )
        module = self.ctx.model.module
        self._was_training = module.training
        module.eval()
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}
        for tensor in self._state_tensors():
            # detach() aliases the original storage; `tensor.data = ...` below swaps only the
            # live tensor's storage, so the alias keeps the exact original values.
            self._saved[id(tensor)] = (tensor, tensor.detach(), tensor.requires_grad)
        self._prunable = {id(p) for p in self.ctx.params.values()}
        for tensor, _, _ in self._saved.values():
            if isinstance(tensor, torch.nn.Parameter):
                tensor.requires_grad_(id(tensor) in self._prunable)
        #: power-of-two scale (a, b): input and additive constants by 2^(a * degree), seed 2^b
        self.scale: tuple[int, int] | None = None
        self._degrees: dict[int, int] = {}
        self._flow_log2: float | None = None
        #: binary orders every measured value had to spare at the chosen scale (None: unknown)
        self._scale_slack: int | None = None
        self._recentre = False
        self._score_in_backward = True
        #: why the run left float32, for the report
        self.note: str | None = None
        #: R of the last round, undoing the power-of-two scale (a Python float: may exceed
        #: float32's range)
        self.flow: float | None = None
        self._output_degree = 1
        self._checked_log2: float | None = None  # log2 R when the scores were last checked
        #: rounds scored so far
        self.rounds = 0
        #: key -> (first round, cause) of each prunable tensor whose remaining weights all
        #: scored 0 in some round (see `zero_cause`)
        self.zero_layers: dict[str, tuple[int, str]] = {}
        #: aten ops the scoring passes replaced by their linear part, and how often per pass
        self.linearised: dict[str, int] = {}
        #: alive weights as a compact index (late rounds), or None (dense rounds)
        self._alive: AliveIndex | None = None
        self._returned: Masks | None = None  # what `next_masks` returned last
        #: row i: (min, max) of tensor i's scores in the last dense pass, written by its hook
        #: into this one table (small tensors kept across a pass would fragment the heap
        #: between its activations: +35 MiB of peak on ResNet-50); `_extremes`: the rows
        #: written, or None where a path does not find them
        self._extreme_rows: torch.Tensor | None = None
        self._extremes: set[int] | None = None
        self._index = {id(p): i for i, p in enumerate(self.ctx.params.values())}
        #: BatchNorms folded into their layers for the passes (`synflow.bnfold`), found in the
        #: first round
        self._fold_plan: bnfold.Folding | None = None
        self._fold_looked = not FOLD_BATCH_NORM
        self._folding = False  # whether the live network is the folded one now
        #: ids of the weights that a pass found read twice: scored through autograd
        self._unrouted: set[int] = set()
        self._routed: set[int] = set()  # ids of the weights the last pass routed
        #: whether a plain pass showed that `Linearised` has nothing to replace in this network
        self._plain_ops = False
        start = "float64" if self.ctx.precision == "float64" else "float32"
        self._linearize(getattr(torch, start))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fold_plan is not None:
            self._fold_plan.restore()
        with torch.no_grad():
            for tensor, original, requires_grad in self._saved.values():
                tensor.data = original
                if isinstance(tensor, torch.nn.Parameter):
                    tensor.requires_grad_(requires_grad)
                    tensor.grad = None
        self.ctx.model.module.train(self._was_training)
        self._work = None
        self._alive = None

    def _state_tensors(self) -> list[torch.Tensor]:
        module = self.ctx.model.module
        seen: set[int] = set()
        tensors = []
        for tensor in [p for _, p in module.named_parameters()] + [
            b for _, b in module.named_buffers()
        ]:
            if tensor.is_floating_point() and id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)
        return tensors

    def _factor(self, tensor: torch.Tensor) -> float:
        """The power of two an additive constant is scaled by (1 for weights)."""
        if self.scale is None:
            return 1.0
        return 2.0 ** (self.scale[0] * self._degrees.get(id(tensor), 0))

    def _linearize(self, dtype: torch.dtype) -> None:
        """|tensor| in `dtype` for every non-prunable tensor; prunable ones are (re)built by
        `_load_weights` each round."""
        self.dtype = dtype
        params = list(self.ctx.params.values())
        if getattr(self, "_work", None) is None or self._work.dtype != dtype:
            # the prunable weights live back to back in one buffer, so that the scores (which
            # replace them in place) form one tensor that the selection scans in single ops
            self._work = None
            shapes = {str(i): p.shape for i, p in enumerate(params)}
            self._work, views = flat_buffer(shapes, dtype, self.ctx.device)
            for i, p in enumerate(params):
                p.data = views[str(i)]
        with torch.no_grad():
            for tensor, original, _ in self._saved.values():
                if id(tensor) in self._prunable:
                    continue
                value = self.positive(original.to(self.ctx.device, dtype))
                factor = self._factor(tensor)
                if factor != 1.0:
                    value.mul_(factor)
                tensor.data = value
            if self._folding and self._fold_plan is not None:
                self._fold_plan.apply(self._prunable)
        self._stale = True  # the prunable weights must be (re)built from the masks

    def _load_weights(self, masks: Masks) -> None:
        """prunable weight = |original| * mask (times its power of two when it is additive)."""
        # dense rounds turn the weights into their scores; compact ones leave them as they are
        self._stale = self._alive is None
        plain = type(self).positive is SynFlowScorer.positive  # |.|, not SynFlow-L2's square
        with torch.no_grad():
            for key, p in self.ctx.params.items():
                original = self._saved[id(p)][1]
                mask = masks[key].to(p.device)
                factor = self._factor(p)
                fold = self._fold_plan.by_weight.get(id(p)) if self._folding else None
                same = original.dtype == p.dtype and original.device == p.device
                if plain and same and factor == 1.0 and fold is None:
                    kernels.abs_where(original, mask, out=p)  # one pass
                    continue
                self.positive(original if same else p.copy_(original), out=p)
                if factor != 1.0:
                    p.mul_(factor)
                if fold is not None:
                    p.mul_(fold.channel_view(fold.scale))
                # where(mask, w, 0) in place: w.mul_(bool mask) would cast the mask to a float
                kernels.where_kept(p, mask)

    @property
    def precision(self) -> str:
        return "float64" if self.dtype == torch.float64 else "float32"

    def score(self, masks: Masks) -> dict[str, torch.Tensor]:
        return {key: s.clone() for key, s in self.score_borrowed(masks).items()}

    def score_borrowed(self, masks: Masks) -> dict[str, torch.Tensor]:
        """The scores in the scorer's own buffers (the live parameters), valid until the next
        call; the caller may overwrite them."""
        self._leave_compact()
        self._score_round(masks)
        return {key: p.detach() for key, p in self.ctx.params.items()}

    def next_masks(self, masks: Masks, density: float, scope: str) -> Masks:
        """One round: score, then select (the engine's loop calls this when a scorer has it).

        Same masks as `select_inplace(self.score_borrowed(masks), ...)`. Once at most
        `COMPACT_BELOW` of the weights is alive, rounds run on a compact index of the alive
        weights (`synflow.alive`): scores are gathered into a buffer sized to them, the
        selection reads only that buffer, and pruning zeroes only the newly pruned weights and
        mask entries in place, so the linearised weights are never rebuilt. `masks` must be what
        the previous call returned (it is updated in place then); other masks start over."""
        if self._alive is not None and masks is not self._returned:
            self._leave_compact()
        kept = masks.kept
        if self._alive is None and kept <= COMPACT_BELOW * masks.total:
            self._alive = AliveIndex(list(masks.values()))
            self._stale = True
        if self._alive is not None:
            out = self._compact_round(masks, density, scope)
            if out is not None:
                self._returned = out
                return out
            self._leave_compact()  # a schedule that unprunes: the dense rule below
        scores = self.score_borrowed(masks)
        out = select_inplace(scores, masks, density, scope, pruned_scores_zero=True)
        self._returned = out
        return out

    def _compact_round(self, masks: Masks, density: float, scope: str) -> Masks | None:
        alive = self._alive
        assert alive is not None
        self._score_round(masks)
        keep = select_alive(self._score_flat(), alive.counts, alive.totals, density, scope)
        if keep is None:
            return None
        with torch.no_grad():
            weights = [p.detach().reshape(-1) for p in self.ctx.params.values()]
            alive.prune(keep, weights, [m.reshape(-1) for m in masks.values()])
        return masks.with_kept(alive.alive)

    def _leave_compact(self) -> None:
        if self._alive is not None:
            self._alive = None
            self._stale = True

    def _score_view(self, p: torch.Tensor) -> torch.Tensor:
        """Where the pass leaves p's scores: p itself (dense), or its alive slice (compact)."""
        if self._alive is None:
            return p.detach()
        return self._alive.views[self._index[id(p)]]

    def _score_flat(self) -> torch.Tensor:
        """Every score of the pass in one tensor: the weight buffer, or the compact one."""
        return self._work if self._alive is None else self._scores

    def _score_round(self, masks: Masks) -> None:
        flow, ok = self._round(masks, record=self._recentre)
        if self.ctx.precision == "auto" and (not ok or self._underflowed(flow)):
            flow, ok = self._recover(masks)
        if not ok:
            raise DegenerateFlowError(
                f"synaptic flow overflows {self.precision} on this model (R = {float(flow):.3g}); "
                "its layers multiply the all-ones input beyond the floating-point range. "
                "Rescale the initialisation or prune a shallower model"
            )
        self.rounds += 1
        if float(flow) == 0.0:
            raise DegenerateFlowError(self._zero_flow_message(masks))
        if not self._any_positive:
            raise DegenerateFlowError(self._zero_flow_message(masks))
        self._note_zero_layers(masks)
        a = self.scale[0] if self.scale else 0
        self.flow = float(flow) * 2.0 ** (-a * self._output_degree)

    def _underflowed(self, flow: torch.Tensor) -> bool:
        """Whether a float32 round may have lost scores to underflow: R is zero or no score is
        positive, or, unscaled, R is so small that scores near R / N go subnormal (a chosen scale
        already placed every measured value in range, R included). Rescaling a round that did
        not need it costs one float64 pass, nothing else."""
        if self.dtype != torch.float32:
            return False
        value = float(flow)
        if value <= 0.0 or not self._any_positive:
            return True
        if self.scale is not None:
            return False
        log2_flow = math.log2(value)
        if log2_flow < UNDERFLOW_LOG2:
            return True
        # R can be healthy (e.g. carried by the last biases) while the scores of early layers
        # flush to zero: look at the smallest positive score in the first round and whenever R
        # has fallen by RECENTRE_DRIFT orders since the last look (one pass over the scores)
        if self._checked_log2 is not None and log2_flow > self._checked_log2 - RECENTRE_DRIFT:
            return False
        self._checked_log2 = log2_flow
        scores = self._score_flat()
        with torch.no_grad():
            positive = torch.where(scores > 0, scores, math.inf).amin()
        return float(positive) < 2.0 ** (FLOAT32_MIN_EXP + DEFAULT_MARGIN)

    def _recover(self, masks: Masks) -> tuple[torch.Tensor, bool]:
        """After a float32 round that overflowed or underflowed: rescale by powers of two if the
        network allows it, else continue in float64."""
        if self.dtype == torch.float32:
            self.scale, self._scale_slack = None, None
            self._flow_log2 = None
            self._linearize(torch.float64)
            flow, ok = self._round(masks, record=True)  # float64, and measures the magnitudes
            if ok and (float(flow) == 0.0 or not self._any_positive):
                return flow, ok  # no flow at all, in any precision: the caller says why
            if ok and self._trace_error is None:
                chosen = choose_exponents(self._ranges)
                if chosen is not None and max(abs(chosen[0]), abs(chosen[1])) > MAX_EXPONENT:
                    chosen = None  # 2^a or 2^b would not even be a float64
                if chosen is not None:
                    self.scale, self._scale_slack = chosen[:2], chosen[2]
                    self._linearize(torch.float32)
                    flow, ok = self._round(masks, record=False)
                    if ok and not self._underflowed(flow):
                        return flow, ok
                    self.note = (
                        "float32 overflowed even with power-of-two rescaling"
                        if not ok
                        else "float32 underflowed even with power-of-two rescaling"
                    )
                else:
                    self.note = "the flow spans more binary orders than float32 holds"
            elif self._trace_error is not None:
                self.note = f"not positively homogeneous: {self._trace_error}"
            self.scale = None
            if self.dtype != torch.float64:
                self._linearize(torch.float64)
            return self._round(masks, record=False)
        return torch.tensor(torch.inf), False

    def _round(self, masks: Masks, record: bool) -> tuple[torch.Tensor, bool]:
        """One forward/backward pass; leaves the scores in the prunable parameters (dense) or
        in the alive index's buffer (compact)."""
        if not self._fold_looked:
            if self._stale:
                self._load_weights(masks)  # the proving run needs the weights
            self._find_folds()
        fold = self._fold_plan is not None and not record
        if fold != self._folding:
            self._set_folding(fold)  # re-linearises: the weights are rebuilt below
        if self._stale:
            self._load_weights(masks)
        if self._alive is not None:
            self._scores = self._alive.prepare(self.dtype)
        try:
            flow = self._flow_routed(masks, record)
        except RuntimeError as exc:
            if not (self._score_in_backward and "inplace operation" in str(exc)):
                raise
            # a weight is still needed after its gradient is ready (shared weights): score
            # after the whole backward pass instead
            self._score_in_backward = False
            self._load_weights(masks)
            flow = self._flow(record)
        ok = bool(torch.isfinite(flow)) and self._finite
        if ok and self.scale is not None and float(flow) > 0:
            log2_flow = math.log2(float(flow))
            if record:
                self._recentre_from_trace()
                self._flow_log2 = log2_flow
            elif self._flow_log2 is None:
                self._flow_log2 = log2_flow
            # magnitudes drift as weights go: measure them again next round
            self._recentre = abs(log2_flow - self._flow_log2) > self._recentre_drift
        return flow, ok

    def _flow_routed(self, masks: Masks, record: bool) -> torch.Tensor:
        """`_flow`, again without routing each weight that a pass found read twice."""
        while True:
            try:
                return self._flow(record)
            except outer.SharedWeight as exc:
                self._unrouted.add(id(exc.weight))
                self._load_weights(masks)  # the pass may have turned weights into scores

    @property
    def routed_linears(self) -> int:
        """How many linear layers the last pass scored from their gradient's factors."""
        return len(self._routed)

    @property
    def folded_norms(self) -> int:
        """How many BatchNorms the scoring passes fold into the layer before them."""
        return len(self._fold_plan.folds) if self._fold_plan is not None else 0

    def _find_folds(self) -> None:
        self._fold_looked = True
        self._fold_plan = bnfold.find_folding(
            self.ctx.model.module, self._ones(), self._prunable, run_output=output_sum
        )

    def _ones(self) -> tuple[torch.Tensor, ...]:
        """The pass's inputs: floating ones in the scoring dtype (x 2^a), integer inputs ones of
        their dtype."""
        specs = self.ctx.input_specs
        assert specs is not None
        a = self.scale[0] if self.scale else 0
        return ones_inputs(specs, self.dtype, self.ctx.device, fill=2.0**a)

    def _set_folding(self, on: bool) -> None:
        """Switch the live network between folded (cheaper) and as it is (traced passes)."""
        self._folding = on
        if not on and self._fold_plan is not None:
            self._fold_plan.restore()
        self._linearize(self.dtype)

    def set_scale(self, masks: Masks, a: int, b: int) -> None:
        """Run on with input 2^a and seed 2^b (tracing the degrees first); for tests and tools."""
        self._round(masks, record=True)
        if self._trace_error is not None:
            raise ValueError(f"cannot rescale: not positively homogeneous: {self._trace_error}")
        self.scale, self._scale_slack = (a, b), None
        self._flow_log2 = None
        self._linearize(self.dtype)

    @property
    def _recentre_drift(self) -> float:
        """How far log2(R) may move before the scale is measured again (`RECENTRE_DRIFT`)."""
        if self._scale_slack is None:
            return RECENTRE_DRIFT
        return max(RECENTRE_DRIFT, float(self._scale_slack - DEFAULT_MARGIN))

    def _recentre_from_trace(self) -> None:
        """Re-centre the scale from the magnitudes measured at the current one."""
        if self._trace_error is not None or self.scale is None:
            return
        a, b = self.scale
        unscaled = [
            Range(r.lo - r.a_degree * a - r.b_degree * b, r.hi - r.a_degree * a - r.b_degree * b,
                  r.a_degree, r.b_degree)
            for r in self._ranges
        ]  # fmt: skip
        chosen = choose_exponents(unscaled)
        self._scale_slack = chosen[2] if chosen is not None else None
        if chosen is not None and chosen[:2] != self.scale:
            self.scale = chosen[:2]
            self._linearize(self.dtype)

    def _flow(self, record: bool) -> torch.Tensor:
        module = self.ctx.model.module
        b = self.scale[1] if self.scale else 0
        specs = self.ctx.input_specs
        assert specs is not None
        xs = self._ones()
        self._trace_error = None
        self._ranges: list[Range] = []
        self._recording = False
        # this pass's forward and backward (see synflow.linearise); a pass in which it replaced
        # nothing shows that the network meets none of its ops, and the later plain passes skip
        # its per-op dispatch (7% of a ResNet-50 pass)
        linear = Linearised()
        watched = record or not self._plain_ops
        if watched:
            self.linearised = linear.replaced
        else:
            linear = contextlib.nullcontext()  # type: ignore[assignment]
        params = list(self.ctx.params.values())
        scored: set[int] = set()
        # (min, max) of each tensor's scores, found by the hooks while they are in the cache
        # (dense rounds)
        self._extremes = set() if self._alive is None else None
        rows = self._extreme_rows
        if rows is None or rows.dtype != self.dtype or rows.device != self._work.device:
            rows = self._extreme_rows = torch.zeros(
                (len(params), 2), dtype=self.dtype, device=self._work.device
            )
        routing = contextlib.nullcontext()
        self._routed = set()
        if ROUTE_LINEAR and self._score_in_backward and not record:
            offered = {id(p) for p in params if p.dim() == 2} - self._unrouted
            routing = outer.OuterScoring(offered, self._outer_scorer(scored))
            self._routed = routing.routed
        try:
            # the math attention kernel shows its softmax to `linear`; TorchScript's optimised
            # execution would differentiate some ops itself, behind `linear`'s back
            with (
                torch.enable_grad(),
                sdpa_kernel([SDPBackend.MATH]),
                torch.jit.optimized_execution(False),
            ):
                if record:
                    state = {id(t): t for t, _, _ in self._saved.values()}
                    trace = trace_forward(module, xs, state, inner=linear)
                    output, self._trace_error = trace.output, trace.error
                    if self._trace_error is None:
                        self._degrees = trace.degrees
                        self._ranges = trace.ranges
                        self._recording = True
                        self._trace_output_degree = trace.output_degree
                        self._output_degree = trace.output_degree
                else:
                    runner = module
                    if self._folding and self._fold_plan is not None:
                        runner = self._fold_plan.runner(module)
                    with linear, routing:
                        output = runner(*xs)
                flow = output_sum(output)
        except (RuntimeError, torch.jit.Error) as exc:
            # an error raised under a Python dispatch mode reaches TorchScript without its
            # message: run once more without the modes for the model's own words
            own = _plain_failure(module, xs) or exc
            raise forward_failure(
                own, specs, lambda batched: runs_on(module, batched, self.dtype)
            ) from exc
        if flow is None:
            raise InvalidModelError(
                "the model returns no floating-point tensor, so there is no output to sum"
            )
        if not record and not bool(torch.isfinite(flow)):
            # R itself overflowed: the round is redone (auto) or refused, so no backward pass;
            # the live weights are left as they are, still weights
            self._finite, self._any_positive = False, False
            return flow.detach()
        self._finite, self._any_positive = True, False
        if flow.requires_grad:
            hooks = []
            if record and self._trace_error is None:
                hooks += self._range_hooks(trace)
            seed = torch.full_like(flow, 2.0**b)
            if self._score_in_backward:
                for p in params:
                    hooks.append(p.register_post_accumulate_grad_hook(self._scorer(scored)))
                try:
                    with linear:
                        flow.backward(seed)
                finally:
                    for h in hooks:
                        h.remove()
            else:
                with linear:
                    grads = torch.autograd.grad(flow, params, seed, allow_unused=True)
                for h in hooks:
                    h.remove()
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        p.grad = g
                        self._scorer(scored)(p)
                del grads
        scores = self._score_flat()
        with torch.no_grad():
            for p in params:
                if id(p) not in scored:
                    self._score_view(p).zero_()  # the output does not depend on it
                    if self._extremes is not None and p.numel():
                        rows[self._index[id(p)]].zero_()
                        self._extremes.add(self._index[id(p)])
            top = 0.0
            if scores.numel():
                low, high = self._score_extremes(scores)
                if low < 0 or math.isnan(low):
                    scores.abs_()
                    high = float(scores.amax())
                    self._extremes = None  # the per-tensor ones no longer hold
                top = high
        self._finite = math.isfinite(top)
        self._any_positive = top > 0
        if record and self._trace_error is None:
            for p in params:
                r = log2_range(self._score_view(p))
                if r is not None:
                    self._ranges.append(Range(r[0], r[1], trace.output_degree, 1))
        if watched and not record:
            self._plain_ops = not self.linearised
        return flow.detach()

    def _scorer(self, scored: set[int]):
        def hook(p: torch.Tensor) -> None:
            grad = p.grad
            p.grad = None
            if grad is None:
                return
            if id(p) in self._routed:
                raise outer.SharedWeight(p)  # read by another op too: its score needs the sum
            if self._recording:
                r = log2_range(grad)
                if r is not None:
                    degree = self._trace_output_degree - self._degrees.get(id(p), 0)
                    self._ranges.append(Range(r[0], r[1], degree, 1))
            with torch.no_grad():
                if self._alive is None:
                    p.mul_(grad)
                    # the finiteness check and |.| run once, over all tensors, from these
                    if self._extremes is not None and p.numel():
                        i = self._index[id(p)]
                        row = self._extreme_rows[i]
                        torch.aminmax(p.detach(), out=(row[0], row[1]))
                        self._extremes.add(i)
                else:
                    self._alive.score(self._index[id(p)], p, grad)
            del grad
            scored.add(id(p))

        return hook

    def _outer_scorer(self, scored: set[int]) -> outer.ScoreOuter:
        """What a routed linear layer's backward calls: score = weight * (g_i * x_j), in place
        (dense) or at the alive entries (compact), with the extremes as the hooks find them."""

        def score(p: torch.Tensor, g: torch.Tensor, x: torch.Tensor) -> None:
            if id(p) in scored:
                raise outer.SharedWeight(p)
            i = self._index[id(p)]
            with torch.no_grad():
                if self._alive is None:
                    kernels.mul_outer(p.detach(), g, x, self._extreme_rows[i])
                    if self._extremes is not None:
                        self._extremes.add(i)
                else:
                    self._alive.score_outer(i, p, g, x)
            scored.add(id(p))

        return score

    def _score_extremes(self, scores: torch.Tensor) -> tuple[float, float]:
        """(min, max) of this pass's scores (NaN if any is NaN): from the hooks' per-tensor
        extremes when every tensor has them, else one reduction over the buffer."""
        found = self._extremes
        if found and len(found) == sum(1 for p in self.ctx.params.values() if p.numel()):
            rows = self._extreme_rows[sorted(found)]  # reductions propagate NaN
            low, high = rows[:, 0].min(), rows[:, 1].max()
        else:
            self._extremes = None
            low, high = torch.aminmax(scores)  # one read
        return float(low), float(high)

    def _range_hooks(self, trace) -> list:
        """Backward hooks on the traced intermediates: record the gradients' magnitudes."""
        hooks = []
        for tensor, degree in trace.activations:
            if tensor.requires_grad and tensor.grad_fn is not None:
                grad_degree = trace.output_degree - degree

                def record(grad: torch.Tensor, d: int = grad_degree) -> None:
                    r = log2_range(grad)
                    if r is not None:
                        self._ranges.append(Range(r[0], r[1], d, 1))

                hooks.append(tensor.register_hook(record))
        return hooks

    def _note_zero_layers(self, masks: Masks) -> None:
        """Remember the tensors whose remaining weights all score 0 this round, with the cause."""
        found = sorted(self._extremes or ())
        highs = {}
        if found:
            highs = dict(zip(found, self._extreme_rows[found, 1].tolist(), strict=True))
        with torch.no_grad():
            for key, p in self.ctx.params.items():
                scores = self._score_view(p)
                if key in self.zero_layers or scores.numel() == 0:
                    continue
                i = self._index[id(p)]
                high = highs[i] if i in highs else float(scores.amax())
                if high > 0:
                    continue
                mask = masks[key].to(p.device)
                if not bool(mask.any()):
                    continue  # pruned away: the report lists it as collapsed
                self.zero_layers[key] = (self.rounds, self._zero_cause(key, mask))

    def _zero_cause(self, key: str, mask: torch.Tensor) -> str:
        original = self._saved[id(self.ctx.params[key])][1]
        if not bool((original.ne(0) & mask).any()):
            return "zero weights: all its remaining weights are 0"
        return (
            "dead branch: no flow reaches it (its output does not reach the model's output, or "
            "an all-zero layer or an op with zero derivative lies on every path)"
        )

    def _zero_flow_message(self, masks: Masks) -> str:
        zero_layers = [  # the live parameters hold scores now: look at the kept originals
            key
            for key, p in self.ctx.params.items()
            if not bool((self._saved[id(p)][1].ne(0) & masks[key].to(p.device)).any())
        ]
        emptied = [key for key, m in masks.items() if not bool(m.any())]
        if emptied:
            return (
                f"synaptic flow is zero after round {self.rounds}: pruning emptied "
                + ", ".join(emptied[:5])
                + " (every remaining weight of it scored below the threshold), so nothing "
                "reaches the output; lower the sparsity, or keep such layers dense with exclude"
            )
        if zero_layers:
            return (
                "synaptic flow is zero: these layers have all-zero weights and block it: "
                + ", ".join(zero_layers[:5])
                + ". The reference algorithm would then empty every layer; initialise them "
                "with non-zero values (e.g. a zero-initialised classifier head) before pruning"
            )
        return (
            "synaptic flow is zero: no path from the all-ones input through the prunable "
            "weights reaches the output, so every score ties; check the model and its inputs"
        )
