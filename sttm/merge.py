"""STTM's multi-granular spatio-temporal token merging, as pure functions on tensors.

Paper: Hyun et al., "Multi-Granular Spatio-Temporal Token Merging for Training-Free Acceleration of Video
LLMs", ICCV 2025 (arXiv 2507.07990). Reference code: github.com/HYUNJS/STTM, ``token_merging_utils/``
(``quadtree_builder.py::quadtree_build_video``, ``quadtree_spatial_merger.py``,
``quadtree_temporal_merger.py::cross_frame_node_merging_fast``). ``../shared/reference/STTM_SPEC.md`` describes
that code; the section numbers below refer to it.

Two variants:

* ``official`` reproduces the authors' fast path, quirks included (§8): a boundary parent's missing child slots
  are compared with the frame's top-left child; temporal groups come from a min-label propagation that stops
  as soon as the labels are idempotent, which can leave a group split; members are averaged unweighted, and a
  pyramid level is the unweighted mean of its children.
* ``corrected`` keeps the idea and drops the quirks: only real children are compared; each later-frame node
  links to its single most similar earlier node and groups are the connected components of those links;
  every mean is patch-weighted (a token is the true mean of its patches).

Both pair the first row/column at odd sizes (a choice of partition, not a defect).

The quadtree (``sttm.quadtree``) does not depend on the thresholds; this module groups its nodes at K thresholds at
once (a budget search counts many of them in one pass; a merge is K = 1). It works on dense maps of fixed size: one
slot per grid patch for the nodes (a node sits at the slot of its top-left patch), so that no intermediate size
depends on the data. The temporal similarity of every cell of every level of a frame with every cell of the next
frame is one batched matrix product per video (``temporal_table``; a few hundred cells per frame cost less than
gathering each node's partners), read by the node pairs at each threshold. A grouping waits on the device once,
for one transfer that tells the host how many tokens and nodes each threshold leaves and, for the official
variant, that its label propagation has settled (looked at after ``ROUNDS_PER_CHECK`` rounds, then after as many
rounds again as have run, only where it has not; the corrected variant's forest needs a fixed number of pointer
jumps); a merge then needs no other: on a GPU the rest is queued behind the work before it, which hides its launch cost.

A budget search need not group at every threshold it tries: every comparison the grouping makes flips at one of
the similarities, so the tokens kept are a step function of the threshold, whose bounds (the count itself for the
corrected variant) come from sorting the thresholds at which each node, and each pair of nested nodes of
consecutive frames, is a token and linked (``count_steps``).

Numerics: similarities in float32 (half-precision products accumulate in float32); temporal group sums accumulate
in float32 in slot order from the representative (``sttm.group_means``; the authors accumulate in the input dtype,
in an order that is not deterministic on GPU). On float32 inputs this matches the authors' arithmetic. On a GPU the
matrix products sum in another order than on the CPU, which can tip a similarity lying within rounding of a
threshold.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from sttm.group_means import group_means
from sttm.quadtree import QuadTree, batched_dot
from sttm.transfer import to_device

VARIANTS = ("official", "corrected")


@dataclass(frozen=True)
class NodeMap:
    """Where the nodes of a video sit at each of K spatial thresholds, one slot per grid patch (S = T·H·W): a node
    sits at the slot of its top-left patch, so the slots' frame-major raster order is the authors' order.

    is_node:  [K, S] bool, which slots hold a node.
    cell:     [K, S] int64 the node covering each slot's patch, as an index into the tree's ``cells``.
    level:    [K, S] int64 that node's level.
    cover:    [K, S] int64 that node's slot.
    """

    is_node: torch.Tensor
    cell: torch.Tensor
    level: torch.Tensor
    cover: torch.Tensor


def node_map(tree: QuadTree, thresholds: torch.Tensor) -> NodeMap:
    """The nodes that become tokens at each of K spatial ``thresholds`` [K] (§1.4), placed at the slots of their
    top-left patches (§1.5).

    Searching from the root, a node whose children all reach the threshold stops and becomes a token; the others
    split, and every node of the finest level that no ancestor covers becomes a token. So the node covering a patch
    is its deepest ancestor that the search reaches (``QuadTree.reach``).
    """
    t, height, width, _ = tree.shape
    layout, cells = tree.layout, height * width
    patches = torch.arange(cells, device=thresholds.device)
    level = (tree.reach < thresholds.view(-1, 1, 1, 1)).sum(dim=2)  # [K, T, H·W]
    corner = layout.ancestor_corner[level, patches]
    frames = torch.arange(t, device=patches.device)[:, None] * cells
    return NodeMap(
        is_node=(corner == patches).flatten(1),
        cell=layout.ancestor_cell[level, patches].flatten(1),
        level=level.flatten(1),
        cover=(frames + corner).flatten(1),
    )


def temporal_table(tree: QuadTree) -> torch.Tensor:
    """[T', Σ, Σ] the authors' temporal similarity <a/(|a|+1e-8), b/(|b|+1e-8)> (§2.2) of every cell of every level
    of each frame (Σ cells in all, ``tree.cells``) with every cell of the next frame, in float32, averaged over the
    channel chunks; T' = T − 1 (a single frame is paired with itself). It does not depend on the thresholds, so a
    budget search computes it once.
    """
    norms = tree.cell_norms + 1e-8  # [T, Σ, K]
    dots = frame_pair_dots(tree.cells, norms.shape[-1])  # [T', K, Σ, Σ]
    pairs = len(dots)
    earlier, later = norms[:pairs].transpose(1, 2), norms[len(norms) - pairs :].transpose(1, 2)
    return (dots / (earlier[..., :, None] * later[..., None, :])).mean(dim=1)


def temporal_links(
    tree: QuadTree, nodes: NodeMap, table: torch.Tensor, temporal_thresholds: torch.Tensor, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The node pairs of consecutive frames that may merge (§2.1), [K, P] slots ``earlier`` and ``later``, and
    [K, P] bool which of them link (≥ the row's τ_t; for the corrected variant, each later node's most similar
    link alone), P = (T − 1)·H·W: for each patch, the nodes covering it in a frame and in the next.

    Two quadtree nodes of consecutive frames are nested iff they overlap, so these are the nested pairs, each once
    for every patch they share: the grouping is indifferent to repeats.
    """
    rows, slots = nodes.cover.shape
    frames = tree.shape[0]
    cover, cell = nodes.cover.view(rows, frames, -1), nodes.cell.view(rows, frames, -1)
    frame = torch.arange(frames - 1, device=cover.device)[:, None]
    sim = table[frame, cell[:, :-1], cell[:, 1:]].flatten(1)
    earlier, later = cover[:, :-1].flatten(1), cover[:, 1:].flatten(1)
    linked = sim >= temporal_thresholds[:, None]
    if variant == "corrected":
        linked = most_similar_links(slots, earlier, later, linked, sim)
    return earlier, later, linked


#: rounds of the label propagation queued before the host's first look at whether it has settled.
ROUNDS_PER_CHECK = 2


class Propagation(NamedTuple):
    """The min-label propagation of K rows of S slots, between two looks (``propagate_labels``): ``ends`` [2·K·P] the
    pairs' slots offset by their rows' (earlier ends, then later), ``labels`` [K·S] int32, ``settled`` [K, 1] bool, and
    ``offsets`` [K, 1] each row's first slot."""

    ends: torch.Tensor
    labels: torch.Tensor
    settled: torch.Tensor
    offsets: torch.Tensor


def start_propagation(num_slots: int, earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor) -> Propagation:
    """Every slot its own label, before the first round (see ``propagate_labels``)."""
    rows, pairs = linked.shape
    offsets = torch.arange(rows, device=linked.device)[:, None] * num_slots
    # an unlinked pair becomes a loop on one slot, which changes no label (and spreads the writes over slots)
    loop = torch.arange(pairs, device=linked.device) % num_slots
    ends = (torch.where(linked, torch.stack([earlier, later]), loop) + offsets).flatten()
    labels = torch.arange(rows * num_slots, dtype=torch.int32, device=linked.device)
    return Propagation(ends, labels, torch.zeros(rows, 1, dtype=torch.bool, device=linked.device), offsets)


def propagation_rounds(state: Propagation, rounds: int = ROUNDS_PER_CHECK) -> Propagation:
    """``rounds`` more rounds; a row's labels stay as they are from the round that settles it."""
    ends, labels, settled, offsets = state
    rows = len(offsets)
    for _ in range(rounds):
        smaller = torch.minimum(*labels[ends].view(2, -1))
        updated = labels.scatter_reduce(0, ends, smaller.repeat(2), reduce="amin")
        labels = torch.where(settled, labels.view(rows, -1), updated[updated].view(rows, -1)).flatten()
        settled = settled | (labels == labels[labels]).view(rows, -1).all(dim=1, keepdim=True)
    return Propagation(ends, labels, settled, offsets)


def propagation_look(
    state: Propagation, tally: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels so far, [K, S] (smallest member slot), and what the host reads of them: [1 + …] the rows not yet
    settled, then ``tally(labels)``."""
    found = state.labels.view(len(state.offsets), -1) - state.offsets
    return found, torch.cat([(~state.settled).sum().view(1), tally(found)])


def propagate_labels(
    num_slots: int,
    earlier: torch.Tensor,
    later: torch.Tensor,
    linked: torch.Tensor,
    tally: Callable[[torch.Tensor], torch.Tensor] = lambda labels: labels.new_zeros(0),
) -> tuple[torch.Tensor, list[int]]:
    """[K, S] group label (smallest member slot) of each slot, by the authors' min-label propagation (§2.3), for K
    independent rows of slot pairs ``earlier``, ``later`` [K, P] (slots in 0..S−1) whose ``linked`` [K, P] pairs join;
    and ``tally(labels)`` (1-D, integer), read by the host in the transfer that tells it the labels have settled.

    Each round, both ends of every linked pair take the pair's smaller label (``amin`` scatters), then every
    label jumps to its label's label. A row stops at the first round whose labels are idempotent, which can be
    before every linked pair agrees (the authors' loop). Rounds after the one that settles a row leave its labels
    as they are, so the host looks at all rows at once, after ``ROUNDS_PER_CHECK`` rounds and then after twice as
    many as before each time (a chain across T frames settles in about log2(T) rounds: a few looks at most).
    """
    return finish_propagation(*queue_propagation(num_slots, earlier, later, linked, tally), tally)


def queue_propagation(
    num_slots: int,
    earlier: torch.Tensor,
    later: torch.Tensor,
    linked: torch.Tensor,
    tally: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Propagation, torch.Tensor, torch.Tensor]:
    """``propagate_labels`` up to the host's first look, without waiting on the device: the propagation, the labels
    so far and the look (``propagation_look``)."""
    state = propagation_rounds(start_propagation(num_slots, earlier, later, linked))
    return state, *propagation_look(state, tally)


def propagation_continued(
    state: Propagation, rounds: int, tally: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[Propagation, torch.Tensor, torch.Tensor]:
    """``rounds`` more rounds of a propagation and the look after them (``propagation_look``), without waiting."""
    state = propagation_rounds(state, rounds)
    return state, *propagation_look(state, tally)


#: ``(propagation, rounds) -> (propagation, labels, look)``: ``propagation_continued`` with a tally, or its replay.
Continuation = Callable[[Propagation, int], tuple[Propagation, torch.Tensor, torch.Tensor]]


def finish_propagation(
    state: Propagation | None,
    found: torch.Tensor | None,
    look: torch.Tensor,
    tally: Callable[[torch.Tensor], torch.Tensor],
    more: Continuation | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """From a look already queued (``propagation_look``) after ``ROUNDS_PER_CHECK`` rounds, the settled labels and
    their tally on the host: where a row has not settled, as many rounds again as have run and another look, until
    every row has (``state`` None: labels final, whose look says none is unsettled). ``more`` runs the rounds and
    the look (``propagation_continued`` with ``tally`` if None)."""
    more = more or (lambda state, rounds: propagation_continued(state, rounds, tally))
    rounds = ROUNDS_PER_CHECK
    while True:
        unsettled, *tallied = look.tolist()
        if not unsettled:
            return found, tallied
        state, found, look = more(state, rounds)
        rounds *= 2


def root_labels(
    num_slots: int, earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor, frames: int
) -> torch.Tensor:
    """[K, S] group label of each slot where each later slot has at most one earlier partner among the ``linked``
    [K, P] pairs ``earlier``, ``later`` (``most_similar_links``): the links make a forest, each link one frame back
    (slots in 0..S−1 frame by frame, ``frames`` of them), and a slot's label is its tree's root, its earliest member
    (the connected components).

    Pointer jumping doubles the links followed per jump, so ⌈log2(T − 1)⌉ jumps reach every root: no wait for the
    device.
    """
    own = torch.arange(num_slots, device=linked.device).repeat(len(linked), 1)
    parent = own.scatter_reduce(1, later, torch.where(linked, earlier, later), reduce="amin")
    for _ in range(max(frames - 2, 0).bit_length()):
        parent = parent.gather(1, parent)
    return parent


def most_similar_links(
    num_slots: int, earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor, sim: torch.Tensor
) -> torch.Tensor:
    """[K, P] bool: keep, for each later node, only its link to the most similar earlier node (ties: lowest slot);
    all [K, P], slots in 0..S−1."""
    score = torch.where(linked, sim, -math.inf)
    best = score.new_full((len(score), num_slots), -math.inf).scatter_reduce(1, later, score, reduce="amax")
    is_best = linked & (score == best.gather(1, later))
    candidate = torch.where(is_best, earlier, num_slots)
    chosen = later.new_full((len(later), num_slots), num_slots).scatter_reduce(1, later, candidate, reduce="amin")
    return is_best & (earlier == chosen.gather(1, later))


def representatives(is_node: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """[..., S] bool: the slots that become tokens, each node's group's member of smallest slot (every node when
    ``labels`` is None)."""
    if labels is None:
        return is_node
    return is_node & (labels == torch.arange(labels.shape[-1], device=labels.device))


class Grouping(NamedTuple):
    """The nodes of a video at K thresholds (``NodeMap``), their group labels [K, S] (None: no temporal merging),
    and on the host, per threshold, the tokens left (one per group) and the nodes."""

    nodes: NodeMap
    labels: torch.Tensor | None
    num_tokens: list[int]
    num_nodes: list[int]


class QueuedGrouping(NamedTuple):
    """A grouping queued on the device before the host has looked at it (``queue_grouping``): the nodes, the labels
    so far (None: no temporal merging), the official variant's propagation (None for the others: their labels are
    final), and the look, [1 + 2K]: the rows whose propagation has not settled, then the tokens and the nodes left
    at each threshold."""

    nodes: NodeMap
    labels: torch.Tensor | None
    propagation: Propagation | None
    look: torch.Tensor


def grouping_tally(is_node: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """[2K] the tokens left at each of K thresholds (one per group), then the nodes, of ``is_node`` [K, S] and the
    group ``labels`` [K, S] (None: no temporal merging)."""
    return torch.cat([representatives(is_node, labels).sum(dim=-1), is_node.sum(dim=-1)])


def queue_grouping(
    tree: QuadTree,
    thresholds: torch.Tensor,
    temporal_thresholds: torch.Tensor | None,
    variant: str,
    table: torch.Tensor | None = None,
) -> QueuedGrouping:
    """``group_nodes`` up to the host's first look, without waiting on the device: what a CUDA graph can hold."""
    nodes = node_map(tree, thresholds)
    if temporal_thresholds is None:
        return QueuedGrouping(nodes, None, None, F.pad(grouping_tally(nodes.is_node, None), (1, 0)))
    table = temporal_table(tree) if table is None else table
    earlier, later, linked = temporal_links(tree, nodes, table, temporal_thresholds, variant)
    num_slots = nodes.cover.shape[1]
    if variant == "corrected":
        labels = root_labels(num_slots, earlier, later, linked, tree.shape[0])
        return QueuedGrouping(nodes, labels, None, F.pad(grouping_tally(nodes.is_node, labels), (1, 0)))
    state, labels, look = queue_propagation(
        num_slots, earlier, later, linked, functools.partial(grouping_tally, nodes.is_node)
    )
    return QueuedGrouping(nodes, labels, state, look)


def settle_grouping(queued: QueuedGrouping, more: Continuation | None = None) -> Grouping:
    """The ``Grouping`` of a queued one: the host reads its look, and where the official variant's propagation has
    not settled, queues more rounds and looks until it has (``finish_propagation``, ``more`` as there)."""
    nodes, labels, state, look = queued
    labels, tallied = finish_propagation(state, labels, look, functools.partial(grouping_tally, nodes.is_node), more)
    half = len(tallied) // 2
    return Grouping(nodes, labels, tallied[:half], tallied[half:])


def group_nodes(
    tree: QuadTree,
    thresholds: torch.Tensor,
    temporal_thresholds: torch.Tensor | None,
    variant: str,
    table: torch.Tensor | None = None,
) -> Grouping:
    """The spatially merged nodes at each of K thresholds τ_s [K] (a node stops when every child is at least this
    similar) and, if temporal merging is on (``temporal_thresholds`` τ_t [K], all > 0; None: off), each node's group
    label (§1–§2.3); the host learns the counts in one transfer (the official variant's look at whether its labels
    have settled). ``table`` is the tree's ``temporal_table`` where the caller already has it.
    """
    return settle_grouping(queue_grouping(tree, thresholds, temporal_thresholds, variant, table))


#: on a GPU, the positions of ``frame_pair_dots``' products are padded to a multiple of this: cuBLAS's tensor-core
#: kernels need rows of 16 bytes, and the video's Σ cells (261 at 14x14) would otherwise select its unaligned ones.
ALIGNED_POSITIONS = 8


def frame_pair_dots(features: torch.Tensor, chunks: int) -> torch.Tensor:
    """[T', K, P, P] float32 dot products of every position of each frame with every position of the next one, per
    channel chunk (K chunks), from ``features`` [T, P, C]; T' = T − 1 (a single frame is paired with itself).

    On a GPU the positions are padded with zeros to a multiple of ``ALIGNED_POSITIONS`` and the padding's products
    cut off: the same products, summed by a faster, aligned kernel in another order, so the float32 sums differ from
    the unaligned kernel's by rounding, as those of any two orders do.
    """
    t, positions, _ = features.shape
    pairs = max(t - 1, 1)
    if features.is_cuda:
        features = F.pad(features, (0, 0, 0, -positions % ALIGNED_POSITIONS))
    width = features.shape[1]

    def chunk_rows(frames: torch.Tensor) -> torch.Tensor:  # [pairs, width, C] -> [pairs · K, width, C / K]
        return frames.unflatten(-1, (chunks, -1)).transpose(1, 2).reshape(pairs * chunks, width, -1)

    dots = batched_dot(chunk_rows(features[:pairs]), chunk_rows(features[t - pairs :]).transpose(1, 2))
    return dots.view(pairs, chunks, width, width)[..., :positions, :positions]


def link_intervals(
    lo: torch.Tensor,
    hi: torch.Tensor,
    table: torch.Tensor,
    earlier: torch.Tensor,
    later: torch.Tensor,
    link_limit: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """[T − 1, ...] the spatial thresholds τ at which cell ``earlier`` of frame t and cell ``later`` of frame t + 1
    (cell indexes, broadcast together) are both tokens and linked: pair_lo < τ ≤ pair_hi. ``lo``, ``hi`` [T, Σ] are
    the tree's ``emission_intervals`` (``sttm.quadtree``), ``table`` the ``temporal_table``; ``link_limit(sims)``
    gives the highest τ whose temporal threshold a similarity reaches."""
    pair_lo = torch.maximum(lo[:-1, earlier], lo[1:, later])
    pair_hi = torch.minimum(hi[:-1, earlier], hi[1:, later])
    return pair_lo, torch.minimum(pair_hi, link_limit(table[: len(lo) - 1, earlier, later]))


def union_pieces(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The intervals (lo, hi] of each row of [..., D] cut into disjoint pieces (piece_lo, hi] of their union: sorted by
    lo, each keeps what lies above the earlier ones' highest end (a piece with hi ≤ piece_lo is empty)."""
    lo, order = lo.sort(dim=-1)
    hi = hi.gather(-1, order)
    reach = F.pad(hi.cummax(dim=-1).values[..., :-1], (1, 0), value=-math.inf)
    return torch.maximum(lo, reach), hi


def live_ends(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The intervals (lo, hi] flattened, the ends of an empty one moved to +inf, past every threshold."""
    empty = (hi <= lo).flatten()
    return lo.flatten().masked_fill(empty, math.inf), hi.flatten().masked_fill(empty, math.inf)


def step_function(
    added: list[tuple[torch.Tensor, torch.Tensor]], removed: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many intervals of ``added`` hold τ less how many of ``removed`` do (``live_ends``), as a step function:
    ``values`` [n] sorted and ``counts`` [n + 1], read at τ as ``counts[i]`` where i = #values < τ
    (``torch.searchsorted(values, τ)``)."""
    rises = torch.cat([lo for lo, _ in added] + [hi for _, hi in removed])
    falls = torch.cat([hi for _, hi in added] + [lo for lo, _ in removed])
    values, order = torch.cat([rises, falls]).sort()
    return values, F.pad(torch.where(order < len(rises), 1, -1).cumsum(0), (1, 0))


def count_steps(
    tree: QuadTree, table: torch.Tensor | None, link_limit: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds on the tokens kept as step functions of the spatial threshold τ that the temporal one follows:
    ``values`` [n] sorted and ``counts`` [2, n + 1], the (upper, lower) bound at τ being ``counts[:, i]`` where
    i = #values < τ (``torch.searchsorted(values, τ)``). Every comparison the grouping makes at τ turns at one of
    ``values`` (§1.4, §2.2), so the thresholds of one i group alike.

    The upper bound is the nodes less those linked to a node of the previous frame: the count of the corrected
    variant (a forest, one link per linked node) and at least that of the official one (whose groups each hold
    one such tree or more). The lower bound is the nodes less the linked pairs: at most either (a link joins two
    groups or none). ``table`` is the tree's ``temporal_table`` (None: no temporal merging, and both bounds are
    the count); ``link_limit(sims)`` maps similarities to the highest τ whose temporal threshold they reach (−inf
    for none), rising with the similarity.

    A node of frame t + 1 links to the node of frame t that holds it (at most one, at any τ) or to those it holds
    (never both at one τ): where its links to those it holds overlap in τ, their union counts once, in pieces that
    start and end where the links do, so the upper bound turns only where the lower one can.
    """
    lo, hi = tree.lo, tree.hi
    nodes = [live_ends(lo, hi)]
    if table is None or len(lo) == 1:
        values, counts = step_function(nodes, [])
        return values, counts.expand(2, -1)
    nesting = tree.layout.nesting
    pair_lo, pair_hi = link_intervals(lo, hi, table, nesting.earlier, nesting.later, link_limit)  # [T − 1, Q]
    pair_lo, pair_hi = pair_lo.masked_fill(~nesting.real, math.inf), pair_hi.masked_fill(~nesting.real, -math.inf)
    sizes = [nesting.up] + [cells * descendants for cells, descendants in nesting.held]
    (up_lo, *down_lo), (up_hi, *down_hi) = pair_lo.split(sizes, 1), pair_hi.split(sizes, 1)
    held = [
        (lows.unflatten(1, shape), highs.unflatten(1, shape))
        for shape, lows, highs in zip(nesting.held, down_lo, down_hi, strict=True)
    ]
    holding = [live_ends(up_lo, up_hi)]  # the links to the node that holds a node
    values, lower = step_function(nodes, holding + [live_ends(*pairs) for pairs in held])
    upper_values, upper = step_function(nodes, holding + [live_ends(*union_pieces(*pairs)) for pairs in held])
    # upper's values are among ``values``: read it at the top of each of their steps
    below = F.pad(torch.searchsorted(upper_values, values, right=True), (1, 0))
    return values, torch.stack([upper[below], lower])


def as_thresholds(values: list[float], device: torch.device) -> torch.Tensor:
    """[K] float32 thresholds, each rounded as a comparison of a float32 tensor with a Python float rounds it; to a
    GPU from pinned memory, so that the host does not wait for the work queued before."""
    return to_device(values, device, torch.float32)


class Merged(NamedTuple):
    """STTM's tokens of a video: features [N, C], boxes [N, 5], num_patches [N], and each patch's token [T·H·W]
    with its weight in it ([T·H·W], or None where every token is the plain mean of its patches)."""

    tokens: torch.Tensor
    boxes: torch.Tensor
    num_patches: torch.Tensor
    members: torch.Tensor
    member_weights: torch.Tensor | None


def merge_video(
    tree: QuadTree, threshold: float, temporal_threshold: float, variant: str, table: torch.Tensor | None = None
) -> Merged:
    """STTM on a built quadtree (see ``Merged``); τ_t ≤ 0 turns temporal merging off; see ``group_nodes``."""
    spatial, temporal = as_thresholds([threshold, temporal_threshold], tree.cells.device).split(1)  # one copy
    temporal = temporal if temporal_threshold > 0 else None
    return merge_grouped(tree, group_nodes(tree, spatial, temporal, variant, table))


def token_boxes(tree: QuadTree, slots: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """[N, 5] int64 boxes (t, y0, x0, y1, x1) of the nodes at ``slots`` [N] of ``level`` [N]."""
    _, height, width, _ = tree.shape
    frame, corner = slots // (height * width), slots % (height * width)
    y1, x1 = tree.layout.corner_ends[level, corner].unbind(dim=1)
    return torch.stack([frame, corner // width, corner % width, y1, x1], dim=1)


def merge_grouped(tree: QuadTree, grouping: Grouping, row: int = 0) -> Merged:
    """STTM's tokens at threshold ``row`` of ``grouping`` (§2.4): one per group (per node without temporal merging)
    at its representative's slot, in slot order, with the representative's box and the group's patches.

    A token is its members' unweighted mean, or for a tree of patch sums their patch-weighted mean; each group is
    summed in slot order from its representative, in float32 (``group_means``). Members and weights are those of
    ``Merged``: as the unweighted means of the official variant weigh a patch, its pyramid weight in its node over
    the nodes of its group.
    """
    nodes, labels = grouping.nodes, None if grouping.labels is None else grouping.labels[row]
    return merge_nodes(
        tree, nodes.is_node[row], nodes.cell[row], nodes.level[row], nodes.cover[row], labels,
        grouping.num_tokens[row], grouping.num_nodes[row],
    )  # fmt: skip


def merge_nodes(
    tree: QuadTree,
    is_node: torch.Tensor,
    cell: torch.Tensor,
    level: torch.Tensor,
    cover: torch.Tensor,
    labels: torch.Tensor | None,
    num_tokens: int,
    num_nodes: int | None,
) -> Merged:
    """``merge_grouped`` on one threshold's nodes (the [S] rows of ``NodeMap``, labels [S] or None), with the host's
    counts of its tokens and nodes. ``padded_merge`` gives ``num_tokens`` = S and ``num_nodes`` None."""
    _, height, width, _ = tree.shape
    representative = representatives(is_node, labels)
    keep = torch.nonzero_static(representative, size=num_tokens, fill_value=0).squeeze(1)
    token = representative.cumsum(0) - 1  # at a representative's slot: its token
    members = token[cover if labels is None else labels[cover]]  # each patch's token
    patches = members.new_zeros(num_tokens).index_add_(0, members, torch.ones_like(members))
    flat_cells = tree.cells.flatten(0, 1)  # a slot's node is row (frame · Σ + cell)
    cells_per_frame = tree.cells.shape[1]
    boxes = token_boxes(tree, keep, level[keep])
    weights = None
    if not tree.sums:  # each patch's weight in its node's unweighted pyramid mean
        weights = tree.layout.pyramid_weights[level, torch.arange(len(cover), device=cover.device) % (height * width)]
    if labels is None:
        features = flat_cells[boxes[:, 0] * cells_per_frame + cell[keep]]
        if tree.sums:
            features = features / patches[:, None].to(features.dtype)
        return Merged(features, boxes, patches, members, weights)
    group = torch.where(is_node, token[labels], num_tokens)  # each node's token, the other slots after every group
    order = group.int().sort(stable=True).indices[:num_nodes]  # the nodes, token by token
    nodes_per_token = group.new_zeros(num_tokens + 1).index_add_(0, group, torch.ones_like(group))[:num_tokens]
    bounds = F.pad(nodes_per_token.cumsum(0), (1, 0))
    rows = order // (height * width) * cells_per_frame + cell[order]
    features = group_means(flat_cells, rows, bounds, patches if tree.sums else nodes_per_token)
    if weights is not None:
        weights = weights / nodes_per_token[members]  # over its group's nodes
    return Merged(features, boxes, patches, members, weights)


def padded_merge(
    tree: QuadTree,
    is_node: torch.Tensor,
    cell: torch.Tensor,
    level: torch.Tensor,
    cover: torch.Tensor,
    labels: torch.Tensor | None = None,
) -> Merged:
    """``merge_nodes`` with shapes that do not depend on the grouping, so that a CUDA graph replays it for any video
    of one layout (``sttm.graphs``): tokens, boxes and patches of S rows, the first ones those of the true count
    (``trimmed``), the rest of no meaning."""
    return merge_nodes(tree, is_node, cell, level, cover, labels, len(is_node), None)


def trimmed(merged: Merged, num_tokens: int) -> Merged:
    """A ``padded_merge`` cut to its ``num_tokens`` tokens, copied out of the graph's memory (the next replay
    overwrites it)."""
    weights = None if merged.member_weights is None else merged.member_weights.clone()
    tokens, boxes, patches = (part[:num_tokens].clone() for part in merged[:3])
    return Merged(tokens, boxes, patches, merged.members.clone(), weights)
