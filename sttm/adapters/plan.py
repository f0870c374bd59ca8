"""The bookkeeping of a reduced sequence: where each row's video lies, which tokens a reduction keeps, and the masks
and positions of the layers that see the reduced sequence. Pure functions on tensors; no hooks, no model.

The visual tokens of a row are the model's video placeholder ids in ``input_ids``: a ``[T, H, W]`` grid in one run,
possibly followed by tokens that share the placeholder id but stay out of the grid (LLaVA-OneVision's newline,
which is kept), or, where the processor writes text between temporal patches (Qwen3-VL's timestamps), in one run per
temporal patch with that text between them, which stays where it is. One video per row. Rows that keep different
numbers of tokens are left-padded with masked filler slots to a common length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VideoSpan:
    """One row's video grid, laid out [T, H, W] in the sequence as runs of equal length, each of whole frames, from
    ``starts`` (one run, or one per temporal patch with text between them)."""

    starts: tuple[int, ...]
    frames: int
    height: int
    width: int

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    @property
    def run_length(self) -> int:
        return self.num_tokens // len(self.starts)

    @property
    def end(self) -> int:
        """Where the last run ends."""
        return self.starts[-1] + self.run_length

    def positions(self, device: torch.device) -> torch.Tensor:
        """[T·H·W] the sequence index of each grid token, in flat grid order."""
        starts = torch.tensor(self.starts, device=device)
        return (starts[:, None] + torch.arange(self.run_length, device=device)).flatten()

    def run_of(self, positions: torch.Tensor) -> torch.Tensor:
        """The run (0, 1, …) at or before each sequence index of ``positions``: a run's tokens and the text after
        it share its number; text before the first run is −1."""
        starts = torch.tensor(self.starts, device=positions.device)
        return torch.searchsorted(starts, positions, right=True) - 1


@dataclass(frozen=True)
class Request:
    """A forward's video placeholders [B, L], and the length of its prompt (later tokens were generated after it)."""

    placeholders: torch.Tensor
    prompt_length: int


@dataclass(frozen=True)
class Plan:
    """How a sequence of length ``full`` was reduced, row by row, to length N'.

    keep:            [B, N'] index in the full sequence of each token of the reduced one.
    valid:           [B, N'] bool, False for the filler slots that left-pad rows shorter than the longest.
    visual:          [B, N'] bool, True for the video's tokens.
    attention_mask:  [B, N'] the 2-D mask of the reduced sequence.
    padded:          whether any row has filler slots (known on the host, so that no layer waits for the device).
    """

    keep: torch.Tensor
    valid: torch.Tensor
    visual: torch.Tensor
    full: int
    attention_mask: torch.Tensor
    padded: bool

    @property
    def length(self) -> int:
        return self.keep.shape[1]

    @property
    def blocked_columns(self) -> torch.Tensor | None:
        """[B, N'] True for the filler slots, or None when there are none."""
        return ~self.valid if self.padded else None


GridShape = Callable[[int, torch.Tensor | None], tuple[int, int, int]]


def placeholder_runs(indexes: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive sequence indexes in ``indexes`` [n] (ascending)."""
    breaks = ((indexes[1:] - indexes[:-1]) != 1).nonzero().squeeze(1) + 1
    bounds = [0, *breaks.tolist(), len(indexes)]
    return [(int(indexes[a]), b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def locate_videos(
    placeholders: torch.Tensor,
    position_ids: torch.Tensor | None,
    grid_shape: GridShape,
    newlines: int,
    runs_apart: bool = False,
) -> list[VideoSpan]:
    """The video grid of each row, from the placeholder mask [B, L] and the position ids (M-RoPE ids [3|4, B, L],
    or [B, L] or None): ``grid_shape(n, rope_ids)`` lays out a row's n placeholders, given the (t, h, w) ids [3, m] of
    its first run (None without M-RoPE), of which the last ``newlines`` stay out of the grid. With ``runs_apart`` the
    placeholders may lie in several runs of equal length (text between them), each of whole frames.

    Raises ValueError unless each row holds one video.
    """
    spans = []
    for row, indexes in enumerate(row.nonzero().squeeze(1) for row in placeholders):
        if len(indexes) == 0:
            raise ValueError("token reduction needs one video per batch row, and a row holds no video placeholder")
        runs = placeholder_runs(indexes)
        if len(runs) > 1 and not runs_apart:
            raise ValueError("token reduction needs one video per batch row (one run of video placeholders)")
        if len({length for _, length in runs}) > 1:
            raise ValueError(f"the video placeholders' runs differ in length ({[n for _, n in runs]}): one video only")
        first = indexes[: runs[0][1]]
        rope_ids = None if position_ids is None or position_ids.dim() < 3 else position_ids[-3:, row, first]
        frames, height, width = grid_shape(len(indexes), rope_ids)
        if frames == 0 or frames * height * width + newlines != len(indexes) or frames % len(runs):
            raise ValueError(
                f"{len(indexes)} video placeholders in {len(runs)} runs do not form a {frames}x{height}x{width} grid"
            )
        spans.append(VideoSpan(tuple(start for start, _ in runs), frames, height, width))
    return spans


def kept_video_spans(plan: Plan) -> list[VideoSpan]:
    """Each row's kept video tokens in the sequence a reduction left (one run per row, ``plan.visual``), as a 1×1×n
    span: what a second stage acting on the first one's tokens receives, in their order."""
    spans = []
    for row in plan.visual:
        indexes = row.nonzero().squeeze(1)
        if len(indexes) and int(indexes[-1] - indexes[0]) + 1 != len(indexes):
            raise ValueError(
                "a stage inside the LLM after another needs the kept video tokens in one run, not split by text "
                "(Qwen3-VL's timestamps)"
            )
        spans.append(VideoSpan((int(indexes[0]) if len(indexes) else 0,), 1, 1, len(indexes)))
    return spans


def frames_to_sequence(values: torch.Tensor, videos: list[VideoSpan], length: int) -> torch.Tensor:
    """Per-frame values [B·T, S, ...] (S = H·W grid tokens per frame) laid along each row's video: [B, L, ...]."""
    per_row = values.reshape(len(videos), -1, *values.shape[2:])
    aligned = values.new_zeros(len(videos), length, *values.shape[2:])
    for row, span in enumerate(videos):
        aligned[row, span.positions(values.device)] = per_row[row]
    return aligned


def gather_along(values: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Per batch row b, ``values[b]`` at ``index[b]`` along ``dim``: values [B|1, ...], index [B, N] → N at ``dim``,
    on the device of ``values`` (a model split over GPUs keeps masks and rotary tables where it made them)."""
    index = index.to(values.device)
    dim = dim % values.dim()
    values = values.expand(index.shape[0], *values.shape[1:])
    shape = [1] * values.dim()
    shape[0], shape[dim] = index.shape
    target = list(values.shape)
    target[dim] = index.shape[1]
    return values.gather(dim, index.reshape(shape).expand(target))


def gather_positions(position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Position ids [B|1, L] or [R, B|1, L] at ``index`` [B, N] along the sequence → [B, N] or [R, B, N]."""
    if position_ids.dim() == 2:
        return gather_along(position_ids, index, 1)
    return gather_along(position_ids.movedim(1, 0), index, -1).movedim(0, 1)


def masked_value(mask: torch.Tensor):
    """What a 4-D mask holds where attention is blocked: False (boolean masks) or the dtype's minimum."""
    return False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min


def causal_mask(allowed_columns: torch.Tensor, queries: int) -> torch.Tensor:
    """Boolean [B, 1, q, kv] mask: the last ``queries`` of kv tokens attend causally to the allowed columns [B, kv]."""
    kv = allowed_columns.shape[1]
    causal = torch.ones(queries, kv, dtype=torch.bool, device=allowed_columns.device).tril(kv - queries)
    return causal[None, None] & allowed_columns[:, None, None, :].bool()


def left_pad(rows: list[torch.Tensor], fill) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [n_b, ...] rows into [B, max n_b, ...], filling on the left; also return the [B, N] valid mask."""
    length = max(len(row) for row in rows)
    if all(len(row) == length for row in rows):
        padded = rows[0][None] if len(rows) == 1 else torch.stack(rows)
        return padded, torch.ones(padded.shape[:2], dtype=torch.bool, device=padded.device)
    padded = torch.stack([torch.cat([row.new_full((length - len(row), *row.shape[1:]), fill), row]) for row in rows])
    valid = torch.stack([torch.arange(length, device=padded.device) >= length - len(row) for row in rows])
    return padded, valid


def default_positions(states: torch.Tensor) -> torch.Tensor:
    """[B, L] positions 0..L−1: what the language model uses when given none (it ignores padding too)."""
    batch, length = states.shape[:2]
    return torch.arange(length, device=states.device).expand(batch, length)


def decode_columns(plan: Plan, generated: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The full sequence's kv columns [B, N' + g] a reduced layer keeps while decoding (the kept prompt, then the
    ``generated`` tokens since, the new ones included), and which of them are blocked (filler; None: none)."""
    batch = plan.keep.shape[0]
    tail = torch.arange(plan.full, plan.full + generated, device=plan.keep.device).expand(batch, generated)
    blocked = plan.blocked_columns
    if blocked is not None:
        blocked = torch.nn.functional.pad(blocked, (0, generated), value=False)
    return torch.cat([plan.keep, tail], dim=1), blocked


def continued_plan(plan: Plan, attention_mask: torch.Tensor) -> Plan:
    """``plan`` followed by q more prompt tokens, all kept, whose 2-D mask is ``attention_mask`` [B, q]."""
    queries = attention_mask.shape[1]
    keep, _ = decode_columns(plan, queries)
    valid = torch.nn.functional.pad(plan.valid, (0, queries), value=True)
    visual = torch.nn.functional.pad(plan.visual, (0, queries), value=False)
    mask = torch.cat([plan.attention_mask, attention_mask.to(plan.attention_mask)], dim=1)
    return Plan(keep, valid, visual, plan.full + queries, mask, plan.padded)


def reduced_layer_mask(
    mask, rows: torch.Tensor | None, columns: torch.Tensor, blocked: torch.Tensor | None, queries: int
):
    """A layer's 4-D mask [B, 1, q, kv] (or None) restricted to the kept ``rows`` [B, q] (None: all) and ``columns``
    [B, kv'], with the ``blocked`` columns [B, kv'] (None: none) masked."""
    if mask is None:
        return None if blocked is None else causal_mask(~blocked, queries)
    if rows is not None:
        mask = gather_along(mask, rows, 2)
    mask = gather_along(mask, columns, 3)
    if blocked is None:
        return mask
    return mask.masked_fill(blocked[:, None, None, :].to(mask.device), masked_value(mask))
