"""STTM as a reducer: hand-set thresholds (the paper's way) or a budget that picks them per video."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, keep_everything, register
from sttm.bisect import UNKNOWN, bisect
from sttm.graphs import Captured, Captures
from sttm.merge import (
    VARIANTS,
    Grouping,
    Merged,
    NodeMap,
    Propagation,
    QueuedGrouping,
    as_thresholds,
    count_steps,
    grouping_tally,
    merge_grouped,
    merge_video,
    padded_merge,
    propagation_continued,
    queue_grouping,
    settle_grouping,
    temporal_table,
    trimmed,
)
from sttm.quadtree import QuadTree, build_quadtree

#: in budget mode the temporal threshold's gap below the spatial one closes over the top of this range, so that
#: the least merging searched is τ_s = τ_t = 1.
_GAP_CLOSES_OVER = 0.15

#: thresholds of the bisection counted in one batched pass at most (``sttm.bisect``): on a GPU a pass costs mostly its
#: launches and its waits, so a wide lookahead saves passes; on a CPU its width.
LOOKAHEAD_WIDTH_CUDA, LOOKAHEAD_WIDTH_CPU = 127, 7
#: the most thresholds a pass counts: the first counts the two ends of the range besides a lookahead.
PASS_WIDTH_CUDA = LOOKAHEAD_WIDTH_CUDA + 2


def pass_width(rows: int) -> int:
    """The width a replayed pass of ``rows`` thresholds is padded to: 1, or the least 2^k + 1 that holds them (at
    most ``PASS_WIDTH_CUDA``), so that a pass does at most about twice the work of its rows, from one of a few graphs
    per layout."""
    return 1 if rows <= 1 else min(2 ** (rows - 2).bit_length() + 1, PASS_WIDTH_CUDA)


#: float32 values on either side of the first guess at ``linking_limit`` that it checks.
_LIMIT_CANDIDATES = 3


def temporal_thresholds(spatial: torch.Tensor, gap: float) -> torch.Tensor:
    """[...] float64: the temporal threshold that follows each spatial one [...] (float64) in budget mode, ``gap``
    below it, a gap that closes over the top ``_GAP_CLOSES_OVER`` of the range, and at least 1e-3."""
    closing = (1.0 - spatial) / torch.full_like(spatial, _GAP_CLOSES_OVER)  # a tensor divisor divides exactly on GPU
    return torch.clamp_min(spatial - gap * closing.clamp_max(1.0), 1e-3)


def float32_neighbours(x: torch.Tensor, steps: int) -> torch.Tensor:
    """[2·steps + 1, ...] the float32 values ``-steps..steps`` places from each of ``x`` [...] (float32, finite)."""
    bits = x.view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # integers in the order of the floats (an involution)
    moved = ordered + torch.arange(-steps, steps + 1, dtype=torch.int32, device=x.device).view(-1, *[1] * x.dim())
    return (moved ^ ((moved >> 31) & 0x7FFFFFFF)).view(torch.float32)


def linking_limit(sims: torch.Tensor, gap: float) -> torch.Tensor:
    """[...] the highest float32 spatial threshold in [-1, 1] whose temporal threshold (``temporal_thresholds``
    rounded to float32, as ``as_thresholds`` rounds it) each similarity [...] reaches, −inf where none does; in the
    similarities' dtype. The temporal threshold rises with the spatial one, so every lower spatial threshold links.

    Inverting the threshold's two linear pieces guesses within a float32 step or two; the float32 values around
    the guess are then checked one by one, in the float64 arithmetic the search itself uses.
    """
    wide = sims.double()
    steady, closing = wide + gap, (wide + gap / _GAP_CLOSES_OVER) / (1 + gap / _GAP_CLOSES_OVER)
    guess = torch.where(steady <= 1 - _GAP_CLOSES_OVER, steady, closing).nan_to_num(-1.0).clamp(-1.0, 1.0).float()
    candidates = float32_neighbours(guess, _LIMIT_CANDIDATES).clamp(-1.0, 1.0)
    reached = temporal_thresholds(candidates.double(), gap).float() <= sims
    return torch.where(reached, candidates, -math.inf).amax(dim=0).to(sims.dtype)


@dataclass(frozen=True)
class Steps:
    """What the bounds of ``count_steps`` tell a budget search, on the host: breakpoints ``values`` [n] and, per
    region [n + 1], how the kept count compares with the target (``signs``: -1, 0, 1, or ``UNKNOWN`` where the bounds
    straddle it) and where the target lies between the bounds (``below``: 0 at the lower one, 1 at the upper; the
    chance that the count falls below the target, were it anywhere between them alike). Of ``count_steps``'
    breakpoints only those next to an ``UNKNOWN`` region or between two signs are kept: neighbours of one known sign
    are one region, while each region the search may count is one of ``count_steps``'."""

    values: np.ndarray
    signs: np.ndarray
    below: np.ndarray

    def regions(self, thresholds: np.ndarray) -> np.ndarray:
        """Where each threshold (float32 values) lies among the breakpoints: thresholds of one region count alike."""
        return self.values.searchsorted(thresholds.astype(self.values.dtype))


def packed_steps(
    values: torch.Tensor, counts: torch.Tensor, target: int | torch.Tensor, exact: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, n + 1] float: ``count_steps``' breakpoints ``values`` (padded with +inf), and per region the sign and the
    chance of ``Steps``, for ``target`` (an int or a 0-d integer tensor); ``exact``: the upper bound is the count.
    And [n] bool, the breakpoints ``Steps`` keeps."""
    upper, lower = (counts[0], counts[0]) if exact else counts
    decided = (upper == lower) | (upper < target) | (lower > target)  # then the upper bound compares as the count
    signs = torch.where(decided, (upper - target).sign(), UNKNOWN)
    below = (target - lower) / (upper - lower).clamp_min(1)
    kept = (signs[:-1] != signs[1:]) | (signs[:-1] == UNKNOWN)
    return torch.stack([F.pad(values, (0, 1), value=math.inf), signs.to(values.dtype), below.to(values.dtype)]), kept


#: breakpoints of ``Steps`` sent to the host in the transfer that tells it how many there are, where there are no
#: more (a long video's search keeps a few hundred, at the most merging a few thousand).
STEPS_SENT_AT_ONCE = 4096


def kept_steps(packed: torch.Tensor, kept: torch.Tensor, size: int) -> torch.Tensor:
    """[3, size + 1]: the first ``size`` of the breakpoints ``kept`` [n] of ``packed_steps``' ``packed`` [3, n + 1]
    (padded with 0), then per region of ``Steps`` its sign and chance (those of its first region of count_steps)."""
    breakpoints = torch.nonzero_static(kept, size=size, fill_value=-1).squeeze(1)
    region = F.pad(breakpoints + 1, (1, 0))  # the first of count_steps' regions in each of Steps'
    return torch.cat([F.pad(packed[:1, breakpoints], (0, 1)), packed[1:, region]])


def sent_steps(packed: torch.Tensor, kept: torch.Tensor, size: int = STEPS_SENT_AT_ONCE) -> torch.Tensor:
    """[1 + 3·(size + 1)] float64: how many breakpoints ``Steps`` keeps of ``packed_steps``' ``packed`` and ``kept``,
    then their first ``size`` as ``kept_steps`` gives them, all of which the host reads in one transfer
    (``unpack_steps``); queued without waiting on the device."""
    return torch.cat([kept.sum().view(1).double(), kept_steps(packed, kept, size).double().flatten()])


def unpack_steps(packed: torch.Tensor, kept: torch.Tensor, sent: torch.Tensor) -> Steps:
    """The ``Steps`` of ``packed_steps``' ``packed`` and ``kept``, read from ``sent_steps``' ``sent`` in one transfer
    where it holds them all, else sent once their number is known."""
    host = sent.cpu().numpy()
    count, size = int(host[0]), (len(host) - 1) // 3 - 1
    if count <= size:
        values, signs, below = host[1:].reshape(3, size + 1)[:, : count + 1]
    else:
        values, signs, below = kept_steps(packed, kept, count).cpu().numpy()
    dtype = torch.empty(0, dtype=packed.dtype).numpy().dtype
    return Steps(values[:-1].astype(dtype), signs.astype(np.int8), below.astype(dtype))


def continued_grouping(rounds: int, *tensors: torch.Tensor) -> tuple[Propagation, torch.Tensor, torch.Tensor]:
    """``propagation_continued`` of a grouping's propagation from its tensors alone, what a graph captures:
    ``tensors`` are the ``Propagation``'s, then the grouping's ``is_node`` [K, S] that its tally counts."""
    *state, is_node = tensors
    return propagation_continued(Propagation(*state), rounds, functools.partial(grouping_tally, is_node))


def settled(queued: QueuedGrouping, captured: Captured | None) -> Grouping:
    """``settle_grouping``, the official variant's further rounds of propagation, where it has not settled at the
    first look, replayed in ``captured``'s graphs (one per number of rounds) where given."""
    if captured is None or queued.propagation is None:
        return settle_grouping(queued)
    is_node = queued.nodes.is_node

    def more(state: Propagation, rounds: int) -> tuple[Propagation, torch.Tensor, torch.Tensor]:
        key = ("rounds", rounds, tuple(is_node.shape))
        return captured.replay_later(key, functools.partial(continued_grouping, rounds), *state, is_node)

    return settle_grouping(queued, more)


def copied(grouping: Grouping) -> Grouping:
    """``grouping`` with its tensors copied out of a graph's memory, before the graph's next replay overwrites them."""
    labels = None if grouping.labels is None else grouping.labels.clone()
    nodes = NodeMap(**{part.name: getattr(grouping.nodes, part.name).clone() for part in fields(NodeMap)})
    return grouping._replace(nodes=nodes, labels=labels)


#: CUDA graphs of STTM's work before each of the host's waits, for the last few input layouts (``sttm.graphs``).
CAPTURES = Captures(size=2)


def _check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not -1.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [-1, 1] (a cosine similarity), got {value}")
    return value


@register("sttm")
class STTM(Reducer):
    """Multi-granular spatio-temporal token merging (Hyun et al., ICCV 2025) at decoder layer ``layer``.

    Give either thresholds or a budget:

    * ``threshold`` (τ_s) and ``temporal_threshold`` (τ_t, ≤ 0 or None: no temporal merging), as in the
      authors' scripts; ``configs/paper/sttm_thresholds.yaml`` holds their per-dataset values.
    * ``budget``: per video, the thresholds whose kept fraction is as close to the budget as the quadtree allows
      without exceeding it. τ_t follows τ_s at ``budget_gap`` below it (0.2, the gap of most of the paper's
      LLaVA-Video settings; None: spatial merging only), a gap that closes for τ_s above 0.85 so that the least
      merging searched is τ_s = τ_t = 1; τ_s is found by bisection in [-1, 1] down to adjacent float32 values
      (similarities of flat regions tie near 1, so coarser steps can skip most of the reachable counts). The
      similarities are computed once per video, and with them the kept count's bounds as step functions of τ_s
      (``sttm.merge.count_steps``): they are the count for the corrected variant and for spatial merging alone,
      so the bisection runs on the host; for the official variant they settle every midpoint but those near the
      budget, which are counted on the device, in one pass those the bisection is likeliest to reach next (guessed
      from where the budget lies between the bounds), as many levels down as the guess allows. Either way the
      search visits the thresholds a one-at-a-time bisection visits and returns its choice. Budget 1.0 keeps every
      token. The chosen thresholds go to ``Reduction.info``. Below the quadtree's floor (root nodes, all merged
      over time) the floor is kept and ``info["budget_met"]`` is False.

    ``variant`` is ``official`` (the authors' code, quirks included) or ``corrected`` (see ``sttm.merge``).
    ``root_level`` indexes the quadtree levels (``sttm.quadtree.pyramid_sizes``); ``head_dim`` averages the
    similarity over channel chunks of that width; ``weighted_avg`` makes the official variant average by
    patch count (the corrected one always does).
    """

    stage = Stage.LLM_LAYER
    query_aware = False

    def __init__(
        self,
        threshold: float | None = None,
        temporal_threshold: float | None = None,
        budget: float | None = None,
        root_level: int = 1,
        weighted_avg: bool = False,
        head_dim: int | None = None,
        variant: str = "official",
        budget_gap: float | None = 0.2,
        layer: int = 2,
        cuda_graphs: bool = True,
    ) -> None:
        given_thresholds = threshold is not None or temporal_threshold is not None
        if budget is not None and given_thresholds:
            raise ValueError("give STTM either thresholds or a budget, not both")
        if budget is None and threshold is None:
            raise ValueError("give STTM a spatial threshold (and optionally a temporal one) or a budget")
        if variant not in VARIANTS:
            raise ValueError(f"unknown STTM variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
        if head_dim is not None and head_dim <= 0:
            raise ValueError(f"head_dim must be a positive channel count, got {head_dim}")
        if budget_gap is not None and not (math.isfinite(budget_gap) and budget_gap >= 0):
            raise ValueError(f"budget_gap must be a number ≥ 0 (τ_t sits that far below τ_s), got {budget_gap}")
        self.threshold = None if threshold is None else _check_threshold("threshold", threshold)
        self.temporal_threshold = (
            -1.0 if temporal_threshold is None else _check_threshold("temporal_threshold", temporal_threshold)
        )
        self.budget = None if budget is None else check_budget(budget)
        self.budget_gap = budget_gap
        self.root_level = int(root_level)
        self.weighted_avg = bool(weighted_avg)
        self.head_dim = head_dim
        self.variant = variant
        self.layer = layer
        self.cuda_graphs = bool(cuda_graphs)

    def reduce(self, video: VideoTokens) -> Reduction:
        if self.budget == 1.0:
            return keep_everything(video)
        grid = video.grid
        if self.head_dim is not None and grid.shape[-1] % self.head_dim:
            raise ValueError(f"head_dim {self.head_dim} does not divide the {grid.shape[-1]} channels")
        captures = CAPTURES if self.cuda_graphs and grid.is_cuda and grid.is_contiguous() else None
        if self.budget is None:
            thresholds, budget_met = (self.threshold, self.temporal_threshold), True
            merged = self._merge_at_thresholds(grid, captures)
        else:
            thresholds, budget_met, merged = self._search(grid, video.num_tokens, captures)
        info = {"threshold": thresholds[0], "temporal_threshold": thresholds[1], "variant": self.variant}
        if self.budget is not None:
            info["budget_met"] = budget_met
        return Reduction(
            merged.tokens, merged.boxes, merged.num_patches, video.num_tokens, info=info, members=merged.members,
            member_weights=merged.member_weights,
        )  # fmt: skip

    def _layout(self, grid: torch.Tensor) -> tuple:
        """What the device work before the host's first wait depends on besides the values: the key of its graph."""
        deterministic = torch.are_deterministic_algorithms_enabled()
        settings = (self.variant, self.root_level, self.weighted_avg, self.head_dim, deterministic)
        return (tuple(grid.shape), grid.dtype, grid.device, *settings)

    @staticmethod
    def _run(captures: Captures | None, key: tuple, call, *args: torch.Tensor) -> tuple[Captured | None, Any]:
        """``call(*args)``: through ``captures`` (``Captures.run``) where given, else eagerly."""
        return (None, call(*args)) if captures is None else captures.run(key, call, *args)

    def _tree(self, grid: torch.Tensor) -> QuadTree:
        return build_quadtree(grid, self.root_level, self.variant, self.weighted_avg, self.head_dim)

    def _merge_at_thresholds(self, grid: torch.Tensor, captures: Captures | None) -> Merged:
        """STTM's tokens at the hand-set thresholds (τ_t ≤ 0: no temporal merging)."""
        both = as_thresholds([self.threshold, self.temporal_threshold], grid.device)  # one copy
        key = ("thresholds", *self._layout(grid), self.temporal_threshold > 0)
        captured, (tree, queued) = self._run(captures, key, self._queue_at_thresholds, grid, both)
        return self._merge(tree, settled(queued, captured), 0, captured)

    def _queue_at_thresholds(self, grid: torch.Tensor, both: torch.Tensor) -> tuple[QuadTree, QueuedGrouping]:
        tree = self._tree(grid)
        spatial, temporal = both.split(1)
        return tree, queue_grouping(tree, spatial, temporal if self.temporal_threshold > 0 else None, self.variant)

    def _thresholds_at(self, spatial: float) -> tuple[float, float]:
        return spatial, self._temporal_at([spatial])[0]

    def _temporal_at(self, spatials: list[float]) -> list[float]:
        """The temporal threshold that follows each spatial one in budget mode (-1.0: none)."""
        if self.budget_gap is None:
            return [-1.0] * len(spatials)
        return temporal_thresholds(torch.tensor(spatials, dtype=torch.float64), self.budget_gap).tolist()

    def _search(
        self, grid: torch.Tensor, num_tokens: int, captures: Captures | None
    ) -> tuple[tuple[float, float], bool, Merged]:
        """The least merging whose kept count stays within ``budget·num_tokens`` as a bisection on τ_s down to
        adjacent float32 values finds it (``bisect``), whether it is, and STTM's tokens there.

        The bisection reads the count's sign off ``count_steps`` where it can: always for the corrected variant and
        spatial merging alone, where the bounds are the count; for the official one where the bounds fall on one
        side of the target. The rest is counted on the device, every threshold of a pass in one batch, the pass
        chosen by where the target lies between the bounds, and the merge reuses the grouping of the threshold
        chosen where it was counted, or groups at that threshold alone where the bounds settled it.
        """
        target = math.floor(self.budget * num_tokens + 1e-9)
        key = ("budget", *self._layout(grid), self.budget_gap)
        target_on_device = torch.full((), target, device=grid.device)
        captured, (tree, table, *packed) = self._run(captures, key, self._analyse, grid, target_on_device)
        steps = unpack_steps(*packed)
        groupings: list[Grouping] = []
        counted: dict[int, tuple[int, int]] = {}  # region -> the pass that counted it, and its row there

        def count(spatials: list[float]) -> list[int]:
            if captured is not None and groupings:  # the next replay overwrites the last pass's grouping
                groupings[-1] = copied(groupings[-1])
            groupings.append(self._group(tree, table, spatials, captured))
            for row, region in enumerate(steps.regions(np.array(spatials)).tolist()):
                counted[region] = len(groupings) - 1, row
            return groupings[-1].num_tokens

        width = LOOKAHEAD_WIDTH_CUDA if tree.cells.is_cuda else LOOKAHEAD_WIDTH_CPU
        signs, below = (lambda regions: steps.signs[regions]), (lambda regions: steps.below[regions])
        spatial, met = bisect(count, target, width, steps.regions, signs, below)
        thresholds = self._thresholds_at(spatial)
        chosen = int(steps.regions(np.array([spatial]))[0])
        if chosen in counted:
            done, row = counted[chosen]
            return thresholds, met, self._merge(tree, groupings[done], row, captured)
        if captured is None:
            return thresholds, met, merge_video(tree, *thresholds, self.variant, table)
        return thresholds, met, self._merge(tree, self._group(tree, table, [spatial], captured), 0, captured)

    @staticmethod
    def _merge(tree: QuadTree, grouping: Grouping, row: int, captured: Captured | None) -> Merged:
        """``merge_grouped`` at ``row``; replayed in ``captured``'s graphs where given, padded to the layout's shapes
        (``padded_merge``) and cut to the token count (``trimmed``)."""
        if captured is None:
            return merge_grouped(tree, grouping, row)
        nodes, labels = grouping.nodes, grouping.labels
        rows = [nodes.is_node[row], nodes.cell[row], nodes.level[row], nodes.cover[row]]
        rows += [] if labels is None else [labels[row]]
        padded = captured.replay_later(("merge", len(rows)), functools.partial(padded_merge, tree), *rows)
        return trimmed(padded, grouping.num_tokens[row])

    def _analyse(
        self, grid: torch.Tensor, target: torch.Tensor
    ) -> tuple[QuadTree, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The quadtree, its temporal table (None: no temporal merging), the ``packed_steps`` of the count's bounds
        for ``target`` (0-d) with the breakpoints ``Steps`` keeps, and their ``sent_steps``: what the search needs
        before it looks at anything."""
        tree = self._tree(grid)
        table = None if self.budget_gap is None else temporal_table(tree)
        bounds = count_steps(tree, table, lambda sims: linking_limit(sims, self.budget_gap))
        packed, kept = packed_steps(*bounds, target, exact=self.variant == "corrected")
        return tree, table, packed, kept, sent_steps(packed, kept)

    def _group(
        self, tree: QuadTree, table: torch.Tensor | None, spatials: list[float], captured: Captured | None = None
    ) -> Grouping:
        """``group_nodes`` at each spatial threshold, its temporal one following it, in one batched pass; replayed
        in ``captured``'s graphs where given, padded (repeating the last threshold) to ``pass_width``, so that the
        passes of a search replay one of a few graphs, the narrowest for a single threshold (the merge's where the
        search settled it without counting it)."""
        rows = len(spatials)
        width = pass_width(rows)
        replayed = captured is not None and rows <= width
        if replayed:
            spatials = spatials + spatials[-1:] * (width - rows)
        both = as_thresholds(spatials + self._temporal_at(spatials), tree.cells.device)  # one copy
        if replayed:
            queued = captured.replay_later(("pass", width), functools.partial(self._queue_at, tree, table), both)
        else:
            queued = self._queue_at(tree, table, both)
        grouping = settled(queued, captured if replayed else None)
        return grouping._replace(num_tokens=grouping.num_tokens[:rows], num_nodes=grouping.num_nodes[:rows])

    def _queue_at(self, tree: QuadTree, table: torch.Tensor | None, both: torch.Tensor) -> QueuedGrouping:
        """The grouping at the spatial thresholds of the first half of ``both`` and the temporal ones of the second."""
        spatial, temporal = both.split(len(both) // 2)
        return queue_grouping(tree, spatial, None if table is None else temporal, self.variant, table)
