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

The algorithm works on dense per-level maps, so the only host synchronisations are the two compactions of
data-dependent size (the node list, the survivors) and one check that the label propagation converged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

VARIANTS = ("official", "corrected")

#: label-propagation rounds run before the first convergence check (more rounds follow if needed).
_ROUNDS_BEFORE_CHECK = 8


def pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Grid sizes of the quadtree levels, coarsest first, halving (rounding up) until a side is 2 (§1.2)."""
    if height < 2 or width < 2:
        raise ValueError(f"the token grid must be at least 2x2, got {height}x{width}")
    sizes = [(height, width)]
    while height != 2 and width != 2:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        sizes.insert(0, (height, width))
    return sizes


@dataclass(frozen=True)
class Axis:
    """How one axis (rows or columns) of a child level pairs into the parent level, first index unpaired.

    first:   [n_parent] child index of each parent's first child along the axis.
    second:  [n_parent] child index of its second child (equal to ``first`` where there is none).
    paired:  [n_parent] bool, whether the parent has a second child along the axis.
    parent:  [n_child] parent index of each child.
    """

    first: torch.Tensor
    second: torch.Tensor
    paired: torch.Tensor
    parent: torch.Tensor


def pair_axis(n_child: int, device: torch.device) -> Axis:
    """Pairing of an axis of length ``n_child``: (0,1),(2,3)… if even; (0),(1,2),(3,4)… if odd."""
    n_parent = math.ceil(n_child / 2)
    parents = torch.arange(n_parent, device=device)
    odd = n_child % 2
    second = 2 * parents + 1 - odd
    first = (second - 1).clamp_min(0)
    paired = second != first
    parent = (torch.arange(n_child, device=device) + odd) // 2
    return Axis(first=first, second=second, paired=paired, parent=parent)


def sum_pool(x: torch.Tensor) -> torch.Tensor:
    """[T, h, w, C] -> [T, ceil(h/2), ceil(w/2), C]: sums over each parent's children (first row/col unpaired)."""
    t, h, w, c = x.shape
    if h % 2 or w % 2:
        x = F.pad(x, (0, 0, w % 2, 0, h % 2, 0))
    return x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]


def children_per_parent(rows: Axis, cols: Axis) -> torch.Tensor:
    """[h, w] number of children of each parent: 1, 2 or 4."""
    return (1 + rows.paired.long())[:, None] * (1 + cols.paired.long())[None, :]


def mean_pool(x: torch.Tensor, rows: Axis, cols: Axis) -> torch.Tensor:
    """Unweighted mean of each parent's children, in x's dtype (the authors' ``avgpool_to_even_side_feature``)."""
    counts = children_per_parent(rows, cols).to(x.dtype)
    return sum_pool(x) / counts[None, :, :, None]


def unit_chunks(x: torch.Tensor, head_dim: int | None, eps_in_denominator: bool) -> torch.Tensor:
    """[..., C] -> [..., C] float32, scaled to unit norm per chunk of ``head_dim`` channels (or as a whole).

    The spatial step uses ``F.cosine_similarity``'s x / max(|x|, 1e-8); the temporal step the authors'
    x / (|x| + 1e-8) (``eps_in_denominator``). A dot product of two such vectors divided by the chunk count is
    the (chunk-averaged) cosine.
    """
    x = x.float()
    if head_dim is not None:
        x = x.unflatten(-1, (-1, head_dim))
    norm = x.norm(dim=-1, keepdim=True)
    x = x / (norm + 1e-8 if eps_in_denominator else norm.clamp_min(1e-8))
    return x.flatten(-2) if head_dim is not None else x


def chunk_count(channels: int, head_dim: int | None) -> int:
    return 1 if head_dim is None else channels // head_dim


def split_similarity(
    parent: torch.Tensor,
    child: torch.Tensor,
    rows: Axis,
    cols: Axis,
    compare_missing_children: bool,
    head_dim: int | None,
) -> torch.Tensor:
    """[T, h, w] the smallest cosine between each parent [T, h, w, C] and its children in child [T, hc, wc, C].

    A parent with fewer than 4 children has missing slots; the authors compare those with the frame's child at
    (0, 0) (``compare_missing_children=True``); the corrected variant skips them.
    """
    t, h, w, c = parent.shape
    unit_parent = unit_chunks(parent, head_dim, eps_in_denominator=False)
    unit_child = unit_chunks(child, head_dim, eps_in_denominator=False)
    chunks = chunk_count(c, head_dim)
    parent_above = unit_parent[:, rows.parent][:, :, cols.parent]  # [T, hc, wc, C]
    sim = (parent_above * unit_child).sum(dim=-1) / chunks  # [T, hc, wc]
    padded = F.pad(sim, (w * 2 - sim.shape[2], 0, h * 2 - sim.shape[1], 0), value=math.inf)
    min_sim = padded.unflatten(1, (h, 2)).unflatten(3, (w, 2)).amin(dim=(2, 4))
    if compare_missing_children:
        missing = ~(rows.paired[:, None] & cols.paired[None, :])
        sim_corner = (unit_parent * unit_child[:, :1, :1]).sum(dim=-1) / chunks
        min_sim = torch.where(missing, torch.minimum(min_sim, sim_corner), min_sim)
    return min_sim


@dataclass(frozen=True)
class QuadTree:
    """Everything about a video's quadtree that does not depend on the thresholds.

    features:    per level [T, h, w, C], root level first, finest (the input) last; patch means, or patch sums
                 when ``sums`` is set.
    min_sim:     per level but the finest, [T, h, w] smallest parent-child cosine (a node stops when ≥ τ_s).
    rows, cols:  per level but the finest, how the next finer level pairs into it.
    y0, y1, x0, x1: per level, 1-D box edges of its nodes in finest-grid patches (ends exclusive).
    """

    features: list[torch.Tensor]
    min_sim: list[torch.Tensor]
    rows: list[Axis]
    cols: list[Axis]
    y0: list[torch.Tensor]
    y1: list[torch.Tensor]
    x0: list[torch.Tensor]
    x1: list[torch.Tensor]
    sums: bool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.features[-1].shape)  # type: ignore[return-value]


def build_quadtree(
    grid: torch.Tensor, root_level: int, variant: str, weighted_avg: bool, head_dim: int | None
) -> QuadTree:
    """Pool ``grid`` [T, H, W, C] up to ``root_level`` of ``pyramid_sizes(H, W)`` and score every split (§1)."""
    t, height, width, c = grid.shape
    sizes = pyramid_sizes(height, width)
    if not -len(sizes) <= root_level < len(sizes):
        raise ValueError(
            f"root_level {root_level} is out of range for a {height}x{width} grid: "
            f"its levels are {sizes} (indices 0..{len(sizes) - 1})"
        )
    n_levels = len(sizes) - (root_level % len(sizes))
    sums = weighted_avg or variant == "corrected"
    device = grid.device
    features, rows, cols = [grid], [], []
    y0, y1 = [torch.arange(height, device=device)], [torch.arange(1, height + 1, device=device)]
    x0, x1 = [torch.arange(width, device=device)], [torch.arange(1, width + 1, device=device)]
    for _ in range(n_levels - 1):
        finer = features[0]
        row_axis, col_axis = pair_axis(finer.shape[1], device), pair_axis(finer.shape[2], device)
        features.insert(0, sum_pool(finer) if sums else mean_pool(finer, row_axis, col_axis))
        rows.insert(0, row_axis)
        cols.insert(0, col_axis)
        y0.insert(0, y0[0][row_axis.first])
        y1.insert(0, y1[0][row_axis.second])
        x0.insert(0, x0[0][col_axis.first])
        x1.insert(0, x1[0][col_axis.second])
    compare_missing = variant == "official"
    min_sim = [
        split_similarity(features[lvl], features[lvl + 1], rows[lvl], cols[lvl], compare_missing, head_dim)
        for lvl in range(n_levels - 1)
    ]
    return QuadTree(features, min_sim, rows, cols, y0, y1, x0, x1, sums)


def emitted_nodes(tree: QuadTree, threshold: float) -> list[torch.Tensor]:
    """Per level [T, h, w] bool: the nodes that become tokens (§1.4).

    Searching from the root, a node whose children all reach ``threshold`` stops and becomes a token; the others
    split. Every node of the finest level that no ancestor covers becomes a token.
    """
    root = tree.features[0]
    searched = torch.ones(root.shape[:3], dtype=torch.bool, device=root.device)
    emitted = []
    for lvl, min_sim in enumerate(tree.min_sim):
        stop = min_sim >= threshold
        emitted.append(searched & stop)
        split = searched & ~stop
        searched = split[:, tree.rows[lvl].parent][:, :, tree.cols[lvl].parent]
    emitted.append(searched)
    return emitted


@dataclass(frozen=True)
class Nodes:
    """The spatially merged tokens of a video in the authors' order: frame-major, raster order of top-left.

    features:     [N, C] (patch sums when the tree holds sums).
    boxes:        [N, 5] int64 (t, y0, x0, y1, x1).
    num_patches:  [N] int64.
    cover:        [T, H, W] int64 index of the node covering each grid patch.
    """

    features: torch.Tensor
    boxes: torch.Tensor
    num_patches: torch.Tensor
    cover: torch.Tensor


def collect_nodes(tree: QuadTree, emitted: list[torch.Tensor]) -> Nodes:
    """Gather the emitted nodes of every level into one list sorted by (t, y0, x0) (§1.5)."""
    t, height, width, _ = tree.shape
    device = tree.features[-1].device
    level_at = torch.full((t, height, width), -1, dtype=torch.long, device=device)
    for lvl, mask in enumerate(emitted):
        corner = level_at[:, tree.y0[lvl][:, None], tree.x0[lvl][None, :]]
        level_at[:, tree.y0[lvl][:, None], tree.x0[lvl][None, :]] = torch.where(mask, lvl, corner)
    keys = (level_at.flatten() >= 0).nonzero().squeeze(1)  # sorted: the authors' raster order
    frame, rest = keys // (height * width), keys % (height * width)
    y, x = rest // width, rest % width
    level = level_at.flatten()[keys]

    n_levels = len(tree.features)
    row_in_level = torch.zeros(n_levels, height, dtype=torch.long, device=device)
    col_in_level = torch.zeros(n_levels, width, dtype=torch.long, device=device)
    y1_table = torch.zeros(n_levels, height, dtype=torch.long, device=device)
    x1_table = torch.zeros(n_levels, width, dtype=torch.long, device=device)
    for lvl, feats in enumerate(tree.features):
        _, h, w, _ = feats.shape
        row_in_level[lvl, tree.y0[lvl]] = torch.arange(h, device=device)
        col_in_level[lvl, tree.x0[lvl]] = torch.arange(w, device=device)
        y1_table[lvl, :h], x1_table[lvl, :w] = tree.y1[lvl], tree.x1[lvl]
    level_h = torch.tensor([f.shape[1] for f in tree.features], device=device)
    level_w = torch.tensor([f.shape[2] for f in tree.features], device=device)
    level_offset = torch.cumsum(torch.cat([level_h.new_zeros(1), t * level_h * level_w]), 0)[:-1]
    row, col = row_in_level[level, y], col_in_level[level, x]
    bank_index = level_offset[level] + (frame * level_h[level] + row) * level_w[level] + col
    bank = torch.cat([f.flatten(0, 2) for f in tree.features])
    y1, x1 = y1_table[level, row], x1_table[level, col]
    boxes = torch.stack([frame, y, x, y1, x1], dim=1)

    node_at = torch.full((t * height * width,), -1, dtype=torch.long, device=device)
    node_at[keys] = torch.arange(len(keys), device=device)
    node_at = node_at.view(t, height, width)
    cover = None
    for lvl, mask in enumerate(emitted):
        own = torch.where(mask, node_at[:, tree.y0[lvl][:, None], tree.x0[lvl][None, :]], -1)
        if cover is None:
            cover = own
        else:
            inherited = cover[:, tree.rows[lvl - 1].parent][:, :, tree.cols[lvl - 1].parent]
            cover = torch.where(inherited >= 0, inherited, own)
    return Nodes(bank[bank_index], boxes, (y1 - y) * (x1 - x), cover)


def temporal_candidates(nodes: Nodes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of nested nodes in consecutive frames (§2.1): earlier [P], later [P], valid [P], with P = 2N.

    Two quadtree nodes of consecutive frames are nested iff they overlap, and then the smaller one's top-left
    patch lies in both. So every pair is found from a node's top-left patch, looked up in the next frame's and
    in the previous frame's cover map. A pair may appear twice; the grouping is indifferent to repeats.
    """
    t = nodes.cover.shape[0]
    frame, y, x = nodes.boxes[:, 0], nodes.boxes[:, 1], nodes.boxes[:, 2]
    own = torch.arange(len(frame), device=frame.device)
    later = nodes.cover[(frame + 1).clamp_max(t - 1), y, x]
    earlier = nodes.cover[(frame - 1).clamp_min(0), y, x]
    return (
        torch.cat([own, earlier]),
        torch.cat([later, own]),
        torch.cat([frame < t - 1, frame > 0]),
    )


def min_label_step(
    labels: torch.Tensor, earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor
) -> torch.Tensor:
    """One round of the authors' propagation (§2.3): both ends take the pair's smaller label, then pointer jump."""
    smaller = torch.minimum(labels[earlier], labels[later])
    smaller = torch.where(linked, smaller, len(labels))
    labels = labels.scatter_reduce(0, earlier, smaller, reduce="amin")
    labels = labels.scatter_reduce(0, later, smaller, reduce="amin")
    return labels[labels]


def propagate_labels(
    num_nodes: int, earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor, until_consistent: bool
) -> torch.Tensor:
    """[N] group label (smallest member index) of each node.

    ``until_consistent=False`` is the authors' loop: it stops at the first round whose labels are idempotent,
    which can be before every linked pair agrees. ``True`` runs on until every linked pair shares a label
    (connected components). Rounds run in batches between host checks; a finished result is frozen, so the
    batching does not change it.
    """
    labels = torch.arange(num_nodes, device=earlier.device)
    done = torch.zeros((), dtype=torch.bool, device=earlier.device)
    while True:
        for _ in range(_ROUNDS_BEFORE_CHECK):
            stepped = min_label_step(labels, earlier, later, linked)
            labels = torch.where(done, labels, stepped)
            idempotent = (labels[labels] == labels).all()
            if until_consistent:
                idempotent = idempotent & ((labels[earlier] == labels[later]) | ~linked).all()
            done = done | idempotent
        if bool(done):
            return labels


def most_similar_links(
    earlier: torch.Tensor, later: torch.Tensor, linked: torch.Tensor, sim: torch.Tensor
) -> torch.Tensor:
    """[P] bool: keep, for each later node, only its link to the most similar earlier node (ties: lowest index)."""
    n = int(max(earlier.max(), later.max())) + 1 if len(earlier) else 0
    score = torch.where(linked, sim, -math.inf)
    best = torch.full((n,), -math.inf, device=sim.device).scatter_reduce(0, later, score, reduce="amax")
    is_best = linked & (score == best[later])
    candidate = torch.where(is_best, earlier, n)
    chosen = torch.full((n,), n, device=sim.device, dtype=torch.long).scatter_reduce(0, later, candidate, reduce="amin")
    return is_best & (earlier == chosen[later])


def merge_groups(nodes: Nodes, labels: torch.Tensor, sums: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace each group by one token at its representative (its smallest index) (§2.4).

    Returns features [N', C], boxes [N', 5] (the representative's box), num_patches [N'] (the group's total).
    With ``sums`` the features are patch sums and the result is their patch-weighted mean; otherwise the
    members' unweighted mean. Accumulation is in the features' dtype, as the authors do.
    """
    n = len(labels)
    total = torch.zeros_like(nodes.features).index_add_(0, labels, nodes.features)
    members = torch.zeros(n, dtype=torch.long, device=labels.device).index_add_(0, labels, torch.ones_like(labels))
    patches = torch.zeros_like(nodes.num_patches).index_add_(0, labels, nodes.num_patches)
    keep = (members > 0).nonzero().squeeze(1)
    divisor = patches[keep] if sums else members[keep]
    return total[keep] / divisor[:, None].to(total.dtype), nodes.boxes[keep], patches[keep]


def group_nodes(
    tree: QuadTree,
    threshold: float,
    temporal_threshold: float,
    variant: str,
    head_dim: int | None,
) -> tuple[Nodes, torch.Tensor | None]:
    """The spatially merged nodes and, if temporal merging is on, each node's group label (§1–§2.3).

    ``threshold`` is τ_s (a node stops when every child is at least this similar); ``temporal_threshold`` is
    τ_t (≤ 0 turns temporal merging off, and the labels are None).
    """
    nodes = collect_nodes(tree, emitted_nodes(tree, threshold))
    if temporal_threshold <= 0:
        return nodes, None
    earlier, later, valid = temporal_candidates(nodes)
    unit = unit_chunks(nodes.features, head_dim, eps_in_denominator=True)
    sim = (unit[earlier] * unit[later]).sum(dim=-1) / chunk_count(unit.shape[-1], head_dim)
    linked = valid & (sim >= temporal_threshold)
    if variant == "corrected":
        linked = most_similar_links(earlier, later, linked, sim)
    labels = propagate_labels(len(nodes.boxes), earlier, later, linked, until_consistent=variant == "corrected")
    return nodes, labels


def count_tokens(nodes: Nodes, labels: torch.Tensor | None) -> int:
    """Tokens left after grouping: one per group."""
    if labels is None:
        return len(nodes.boxes)
    return int((labels == torch.arange(len(labels), device=labels.device)).sum())


def merge_video(
    tree: QuadTree,
    threshold: float,
    temporal_threshold: float,
    variant: str,
    head_dim: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """STTM on a built quadtree: (features [N, C], boxes [N, 5], num_patches [N]); see ``group_nodes``."""
    nodes, labels = group_nodes(tree, threshold, temporal_threshold, variant, head_dim)
    if labels is not None:
        return merge_groups(nodes, labels, tree.sums)
    if tree.sums:
        return nodes.features / nodes.num_patches[:, None].to(nodes.features.dtype), nodes.boxes, nodes.num_patches
    return nodes.features, nodes.boxes, nodes.num_patches
