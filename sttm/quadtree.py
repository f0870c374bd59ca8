"""STTM's quadtree of a video (§1 of ``../shared/reference/STTM_SPEC.md``): every level's features, norms and the
smallest parent-child cosine of each node, and from those the thresholds at which each node is a token, as pure
functions on tensors; none of it depends on the thresholds.

Index tensors that depend only on the grid shape are built once per shape (``grid_layout``). Similarities are matrix
products that read the levels in place: each parent row against its two child rows. Numerics: similarities in
float32 (half-precision products accumulate in float32), pyramid levels accumulated in float32 and stored in the input
dtype (as ``avg_pool2d`` does). See ``sttm.merge`` for the variants and for what is built on the tree.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


@dataclass(frozen=True)
class Step:
    """From a parent level [h, w] to its child level [hc, wc].

    rows, cols:   the pairing of each axis.
    present:      [h, w, 4] bool, which 2x2 slots of the ``pad_to_even`` child level hold a real child.
    children:     [h, w] number of real children (1, 2 or 4).
    all_paired:   whether every parent has 4 children (both child sides even).
    parent_of:    [hc·wc] flat parent index of each child.
    """

    rows: Axis
    cols: Axis
    present: torch.Tensor
    children: torch.Tensor
    all_paired: bool
    parent_of: torch.Tensor


def make_step(child_height: int, child_width: int, device: torch.device) -> Step:
    rows, cols = pair_axis(child_height, device), pair_axis(child_width, device)
    # slots in ``pad_to_even`` layout: an unpaired parent's only child is in the second row (column)
    always_row, always_col = torch.ones_like(rows.paired), torch.ones_like(cols.paired)
    row_present = torch.stack([rows.paired, rows.paired, always_row, always_row], dim=-1)
    col_present = torch.stack([cols.paired, always_col] * 2, dim=-1)
    present = row_present[:, None, :] & col_present[None, :, :]
    all_paired = child_height % 2 == 0 and child_width % 2 == 0
    parent_of = (rows.parent[:, None] * len(cols.first) + cols.parent[None, :]).flatten()
    return Step(rows, cols, present, present.sum(dim=-1), all_paired, parent_of)


@dataclass(frozen=True)
class Nesting:
    """The pairs of cells where one holds the other (a cell holds itself and its descendants), as the frame-to-frame
    pairs of ``sttm.merge.count_steps`` take them: cell ``earlier[q]`` of one frame, ``later[q]`` of the next. Cells
    index all levels' cells concatenated (Σ of them), as ``Layout.ancestor_cell`` does.

    ancestors:   [Σ, A] each cell's strict ancestors, padded with Σ (A ≥ 1).
    earlier:     [Q] the pairs' earlier cells: first the ``up`` pairs where it holds the later cell, then those where
                 it is a strict descendant of it, per level of the later cell but the finest, [n_l, D_l] flattened:
                 each of the level's cells beside its D_l descendants (padded).
    later:       [Q] the pairs' later cells.
    real:        [Q] bool, False for the padding.
    up:          the number of pairs where the earlier cell holds the later one.
    held:        per level but the finest, (n_l, D_l).
    """

    ancestors: torch.Tensor
    earlier: torch.Tensor
    later: torch.Tensor
    real: torch.Tensor
    up: int
    held: list[tuple[int, int]]


def nesting(ancestor_cell: torch.Tensor, corners: list[torch.Tensor]) -> Nesting:
    """The ``Nesting`` of a layout's cells from each patch's ancestor at every level, ``ancestor_cell`` [L, H·W], and
    each cell's top-left patch per level, ``corners``."""
    levels, device = len(corners), ancestor_cell.device
    cells = sum(len(corner) for corner in corners)
    # a cell's ancestors are those of its top-left patch at the coarser levels
    chains = [ancestor_cell[: lvl + 1, corner].T for lvl, corner in enumerate(corners)]  # per level [n_l, l + 1]
    width = max(levels - 1, 1)
    ancestors = torch.cat([F.pad(chain[:, :-1], (0, width + 1 - chain.shape[1]), value=cells) for chain in chains])
    earlier, later = [], []
    for chain in chains:  # each row: the cell's ancestors from the root level down, then the cell
        for k in range(chain.shape[1]):
            earlier += chain[:, k].tolist()
            later += chain[:, -1].tolist()
    up = len(earlier)
    real, held = [True] * len(earlier), []
    for lvl in range(levels - 1):
        holder, descendant = torch.broadcast_tensors(ancestor_cell[lvl], ancestor_cell[lvl + 1 :])
        pairs = torch.unique(torch.stack([holder.flatten(), descendant.flatten()]), dim=1).tolist()
        first = int(ancestor_cell[lvl].min())  # a level's cells are consecutive
        lists = [[] for _ in corners[lvl]]
        for cell, inside in zip(*pairs, strict=True):
            lists[cell - first].append(inside)
        most = max(len(found) for found in lists)
        for cell, found in enumerate(lists, start=first):
            earlier += found + [0] * (most - len(found))
            later += [cell] * most
            real += [True] * len(found) + [False] * (most - len(found))
        held.append((len(lists), most))
    as_tensor = functools.partial(torch.tensor, device=device)
    return Nesting(ancestors, as_tensor(earlier), as_tensor(later), as_tensor(real), up, held)


@dataclass(frozen=True)
class Layout:
    """Index tensors that depend only on the grid shape and root level; levels root first, finest last.

    steps:            ``steps[l]`` pairs level l + 1 into level l.
    ancestor_cell:    [L, H·W] each patch's level-l ancestor, as an index into all levels' cells concatenated.
    ancestor_corner:  [L, H·W] the flat finest-grid index of that ancestor's top-left patch.
    corner_ends:      [L, H·W, 2] (y1, x1) of the level-l node whose top-left patch is p.
    corners:          per level [h·w] the flat finest-grid index of each cell's top-left patch.
    nesting:          which cells hold which (``Nesting``).
    pyramid_weights:  [L, H·W] each patch's weight in its level-l ancestor's unweighted pyramid mean.
    """

    steps: list[Step]
    ancestor_cell: torch.Tensor
    ancestor_corner: torch.Tensor
    corner_ends: torch.Tensor
    corners: list[torch.Tensor]
    nesting: Nesting
    pyramid_weights: torch.Tensor


def pyramid_weights(steps: list[Step], ancestor_cell: torch.Tensor) -> torch.Tensor:
    """[L, H·W] the weight of each patch in its level-l ancestor's unweighted pyramid mean (root level first): the
    product of 1 / (its ancestors' real children) below level l."""
    children = [step.children.flatten() for step in steps]
    children.append(torch.ones_like(ancestor_cell[-1]))  # the finest level's cells are the patches
    share = 1 / torch.cat(children)[ancestor_cell].float()
    return share.flip(0).cumprod(0).flip(0)


@functools.lru_cache(maxsize=32)
def grid_layout(height: int, width: int, root_level: int, device: torch.device) -> Layout:
    """The quadtree layout of a ``height``×``width`` grid from ``root_level`` of ``pyramid_sizes`` (§1.2–1.3)."""
    all_sizes = pyramid_sizes(height, width)
    if not -len(all_sizes) <= root_level < len(all_sizes):
        raise ValueError(
            f"root_level {root_level} is out of range for a {height}x{width} grid: "
            f"its levels are {all_sizes} (indices 0..{len(all_sizes) - 1})"
        )
    sizes = all_sizes[root_level % len(all_sizes) :]
    patches = torch.arange(height * width, device=device)
    y0, y1 = [torch.arange(height, device=device)], [torch.arange(1, height + 1, device=device)]
    x0, x1 = [torch.arange(width, device=device)], [torch.arange(1, width + 1, device=device)]
    ancestor = [patches]  # per level, each patch's ancestor cell within that level
    steps = []
    for child_height, child_width in reversed(sizes[1:]):
        step = make_step(child_height, child_width, device)
        steps.insert(0, step)
        ancestor.insert(0, step.parent_of[ancestor[0]])
        y0.insert(0, y0[0][step.rows.first])
        y1.insert(0, y1[0][step.rows.second])
        x0.insert(0, x0[0][step.cols.first])
        x1.insert(0, x1[0][step.cols.second])
    cells = torch.tensor([h * w for h, w in sizes], device=device)
    cells_before = torch.cumsum(cells, 0) - cells
    corners = [(top[:, None] * width + left[None, :]).flatten() for top, left in zip(y0, x0, strict=True)]
    corner_ends = torch.zeros(len(sizes), height * width, 2, dtype=torch.long, device=device)
    for lvl in range(len(sizes)):
        ends = torch.broadcast_tensors(y1[lvl][:, None], x1[lvl][None, :])
        corner_ends[lvl, corners[lvl]] = torch.stack(ends, dim=-1).flatten(0, 1)
    ancestor_cell = torch.stack(ancestor) + cells_before[:, None]
    return Layout(
        steps=steps,
        ancestor_cell=ancestor_cell,
        ancestor_corner=torch.stack([corner[cell] for corner, cell in zip(corners, ancestor, strict=True)]),
        corner_ends=corner_ends,
        corners=corners,
        nesting=nesting(ancestor_cell, corners),
        pyramid_weights=pyramid_weights(steps, ancestor_cell),
    )


def pad_to_even(x: torch.Tensor) -> torch.Tensor:
    """[T, hc, wc, C] with a zero row (column) in front of an odd side, so that the first one pairs with nothing."""
    _, hc, wc, _ = x.shape
    return F.pad(x, (0, 0, wc % 2, 0, hc % 2, 0)) if hc % 2 or wc % 2 else x


def blocks(x: torch.Tensor) -> torch.Tensor:
    """[T, 2h, 2w, C] -> [T, h, 2, w, 2, C] view of the 2x2 blocks."""
    t, hh, ww, c = x.shape
    return x.view(t, hh // 2, 2, ww // 2, 2, c)


def pool_level(x: torch.Tensor, step: Step, sums: bool) -> torch.Tensor:
    """[T, hc, wc, C] -> [T, h, w, C]: each parent's children summed (``sums``) or averaged unweighted.

    Accumulates in float32 and rounds once to x's dtype, as the authors' ``avg_pool2d`` / ``lp_pool2d(p=1)``.
    """
    padded = blocks(pad_to_even(x))
    if not sums and step.all_paired:
        return padded.mean(dim=(2, 4))
    total = padded.sum(dim=(2, 4))
    return total if sums else total / step.children[None, :, :, None].to(total.dtype)


def similarity_dtype(dtype: torch.dtype) -> torch.dtype:
    """What similarities are computed in: float32, or float64 for float64 features."""
    return torch.promote_types(dtype, torch.float32)


def batched_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, m, d] @ [B, d, n] -> [B, m·n] in ``similarity_dtype`` (half-precision products accumulate in float32 on
    GPU)."""
    if a.is_cuda and a.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(a, b, out_dtype=torch.float32).flatten(1)
    wide = similarity_dtype(a.dtype)
    return torch.bmm(a.to(wide), b.to(wide)).flatten(1)


def chunk_norms(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """[..., C] -> [..., chunks] norms of ``chunks`` equal channel chunks, in ``similarity_dtype``."""
    return torch.linalg.vector_norm(x.unflatten(-1, (chunks, -1)), dim=-1, dtype=similarity_dtype(x.dtype))


def split_similarity(
    parent: torch.Tensor,
    child: torch.Tensor,
    parent_norms: torch.Tensor,
    child_norms: torch.Tensor,
    step: Step,
    compare_missing_children: bool,
) -> torch.Tensor:
    """[T, h, w] the smallest cosine between each parent [T, h, w, C] and its child slots in child [T, hc, wc, C].

    ``parent_norms`` [T, h, w, K] and ``child_norms`` [T, hc, wc, K] are ``chunk_norms`` of the two levels. The
    cosine is ``F.cosine_similarity``'s, in float32, averaged over the K channel chunks. A missing slot is compared
    with the frame's child (0, 0) when ``compare_missing_children`` (the authors' behaviour, §1.4) and skipped
    otherwise.
    """
    t, h, w, c = parent.shape
    chunks = parent_norms.shape[-1]
    chunk = c // chunks
    # each parent row against its two child rows, read in place: a parent's own children lie on the diagonals
    parent_rows = parent.reshape(t * h, w, chunks, chunk).transpose(1, 2).reshape(-1, w, chunk)
    child_rows = pad_to_even(child).reshape(t * h, 4 * w, chunks, chunk).permute(0, 2, 3, 1).reshape(-1, chunk, 4 * w)
    row_dots = batched_dot(parent_rows, child_rows).view(t, h, chunks, w, 2, w, 2)
    dots = row_dots.diagonal(dim1=3, dim2=5).permute(0, 1, 5, 2, 3, 4).reshape(t, h, w, chunks, 4)
    kid_norms = blocks(pad_to_even(child_norms)).permute(0, 1, 3, 5, 2, 4).reshape(t, h, w, chunks, 4)
    parent_norms = parent_norms.clamp_min(1e-8)
    cos = dots / (parent_norms[..., None] * kid_norms.clamp_min(1e-8))
    min_sim = cos.mean(dim=3).masked_fill(~step.present, math.inf).amin(dim=-1)  # [T, h, w]
    if compare_missing_children and not step.all_paired:
        parents_by_chunk = parent.reshape(t, h * w, chunks, chunk).transpose(1, 2).reshape(-1, h * w, chunk)
        corner_dots = batched_dot(parents_by_chunk, child[:, 0, 0].reshape(-1, chunk, 1)).view(t, chunks, h, w)
        corner_norms = child_norms[:, 0, 0].clamp_min(1e-8)[:, None, None]
        corner_cos = (corner_dots.permute(0, 2, 3, 1) / (parent_norms * corner_norms)).mean(dim=-1)
        missing = step.children < 4
        min_sim = torch.where(missing, torch.minimum(min_sim, corner_cos), min_sim)
    return min_sim


def emission_intervals(
    min_sim: list[torch.Tensor], layout: Layout, frames: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """[T, Σ] lo and hi: each cell of each frame is a token at the spatial thresholds τ with lo < τ ≤ hi (§1.4), from
    the smallest child similarity of each level's nodes but the finest's, ``min_sim`` ([T, h, w] each, in ``dtype``).

    A cell stops the search where τ ≤ its smallest child similarity (a finest cell always does; a NaN never
    reaches τ) and is reached where τ is above that of each of its ancestors. Cells index all levels' cells
    concatenated, as ``Layout.ancestor_cell`` does.
    """
    cells = layout.ancestor_cell.shape[1]
    finest = torch.full((frames, cells), math.inf, dtype=dtype, device=layout.ancestor_cell.device)
    hi = torch.cat([*(m.flatten(1) for m in min_sim), finest], dim=1).nan_to_num(nan=-math.inf, posinf=math.inf)
    lo = F.pad(hi, (0, 1), value=-math.inf)[:, layout.nesting.ancestors].amax(dim=-1)
    return lo, hi


@dataclass(frozen=True)
class QuadTree:
    """Everything about a video's quadtree that does not depend on the thresholds.

    layout:    the grid's ``Layout``.
    features:  per level [T, h, w, C], root level first, finest (the input) last; patch means, or patch sums
               when ``sums`` is set.
    norms:     per level [T, h, w, K] ``chunk_norms`` of the features (K chunks: ``head_dim`` wide, or one).
    cells:     [T, Σ, C] every level's features side by side per frame, root level first (Σ cells; a node's
               ``cell`` indexes them, as ``Layout.ancestor_cell`` does).
    cell_norms: [T, Σ, K] their norms.
    lo, hi:    [T, Σ] the ``emission_intervals`` of the cells (from the smallest parent-child cosine of each node).
    reach:     [T, L − 1, H·W] per patch and level below the root, ``lo`` of the patch's ancestor there: the node
               covering the patch at τ is at that level or finer where τ > reach.
    """

    layout: Layout
    features: list[torch.Tensor]
    norms: list[torch.Tensor]
    sums: bool
    cells: torch.Tensor
    cell_norms: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    reach: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.features[-1].shape)  # type: ignore[return-value]


def build_quadtree(
    grid: torch.Tensor, root_level: int, variant: str, weighted_avg: bool, head_dim: int | None
) -> QuadTree:
    """Pool ``grid`` [T, H, W, C] up to ``root_level`` of ``pyramid_sizes(H, W)`` and score every split (§1)."""
    frames, height, width, channels = grid.shape
    layout = grid_layout(height, width, root_level, grid.device)
    sums = weighted_avg or variant == "corrected"
    features = [grid]
    for step in reversed(layout.steps):
        features.insert(0, pool_level(features[0], step, sums))
    norms = [chunk_norms(level, channels // (head_dim or channels)) for level in features]
    compare_missing = variant == "official"
    min_sim = [
        split_similarity(features[lvl], features[lvl + 1], norms[lvl], norms[lvl + 1], step, compare_missing)
        for lvl, step in enumerate(layout.steps)
    ]
    cells = torch.cat([level.flatten(1, 2) for level in features], dim=1)
    cell_norms = torch.cat([level.flatten(1, 2) for level in norms], dim=1)
    lo, hi = emission_intervals(min_sim, layout, frames, similarity_dtype(grid.dtype))
    return QuadTree(layout, features, norms, sums, cells, cell_norms, lo, hi, lo[:, layout.ancestor_cell[1:]])
