"""VisionZip: per frame, the most attended tokens plus a few contextual tokens that absorb the rest.

Paper: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025 (reference
code: github.com/dvlab-research/VisionZip, ``visionzip/clip_encoder.py``). Per image, the official code keeps the
``dominant`` tokens that the CLS token attends to most (summed over heads), then splits the others: ``contextual``
targets evenly strided among them (every ``len // contextual``-th), and each remaining token goes to its most similar
target by cosine similarity of the attention keys (averaged over heads). A contextual token is its target's hidden
state **plus** the mean of the hidden states assigned to it (the official sum, kept as is). The official code
returns dominant tokens first, then contextual ones; here each frame's tokens come in grid order, since the model
adapters place every token at its patch's position.

SigLIP, LLaVA-OneVision's vision tower, has no CLS token: as the SigLIP ports do (HoliTom's and VidCom2's
``visionzip``), a patch's score is the attention it receives, averaged over heads and query patches, at the layer whose
output the LLM uses. The ``vision`` reduction point computes those scores and keys and pools them to the LLM's grid
like the features, and the selection acts per frame on that grid.

On a GPU the whole selection and merge (no step of it waits for the device) replays from a CUDA graph once a
grid's shape has been seen twice (``sttm.graphs``: the same kernels, so the same tokens); ``cuda_graphs=False``
launches it op by op.

Budget b keeps ``k = max(1, round(b · H·W))`` tokens per frame, split as VisionZip's published settings split them
(54 dominant to 10 contextual of 64): ``round(k · 54/64)`` dominant, the rest contextual. A contextual token's box is
its target's patch, and its ``num_patches`` counts the patches it absorbed.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, patch_boxes, register
from sttm.graphs import Captures, replayed

#: VisionZip's published split (54 + 10 = 64 tokens per image for LLaVA-1.5; 108 + 20 and 162 + 30 likewise)
DOMINANT_SHARE = 54 / 64


def split_budget(tokens_per_frame: int, budget: float) -> tuple[int, int]:
    """(dominant, contextual) tokens per frame for ``budget``."""
    kept = max(1, round(budget * tokens_per_frame))
    dominant = max(1, round(kept * DOMINANT_SHARE))
    return dominant, kept - dominant


def dominant_indices(importance: torch.Tensor, count: int) -> torch.Tensor:
    """[T, count] per frame, the indices of the ``count`` highest scores of ``importance`` [T, S], ascending."""
    return importance.float().topk(count, dim=1).indices.sort(dim=1).values


def contextual_split(remaining: int, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The official contextual targets among ``remaining`` tokens, every ``remaining // count``-th (``count`` of
    them), and the others: ([count], [remaining − count]) indices, ascending, computed without the host waiting."""
    step = max(1, remaining // count)
    targets = torch.arange(count, device=device) * step
    others = torch.arange(remaining - count, device=device)
    before_last, per_step = count * (step - 1), max(step - 1, 1)  # the others between targets, then those after
    others = torch.where(others < before_last, others // per_step * step + others % per_step + 1,
                         count * step + others - before_last)  # fmt: skip
    return targets, others


def contextual_tokens(
    tokens: torch.Tensor, keys: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the per-frame tokens [T, R, C] (keys [T, R, K]) into ``count`` contextual tokens each.

    Returns the contextual tokens [T, count, C], their targets' indices among the R [count], the others' [R − count],
    the number of tokens each contextual token absorbed, its target included [T, count], and the contextual token
    each of the other R − count tokens went into [T, R − count].
    """
    targets, others = contextual_split(tokens.shape[1], count, tokens.device)
    normalized = F.normalize(keys.float(), dim=-1)
    similarity = normalized[:, others] @ normalized[:, targets].transpose(1, 2)  # [T, M, count]
    assigned = similarity.argmax(dim=2)  # [T, M]
    assignment = F.one_hot(assigned, count).to(tokens.dtype)  # [T, M, count]
    members = assignment.sum(dim=1)  # [T, count]
    merged = assignment.transpose(1, 2) @ tokens[:, others] / members.clamp(min=1)[..., None]
    return tokens[:, targets] + merged, targets, others, members.long() + 1, assigned


def merged_tokens(
    dominant_count: int, contextual_count: int, grid: torch.Tensor, keys: torch.Tensor, importance: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """VisionZip on T frames of S tokens: grid [T, S, C], keys [T, S, K], importance [T, S] -> tokens [N, C], the
    flat slot of each [N] and the patches each stands for [N], in grid order; with contextual tokens also, per
    patch [T·S], the token it went into and its weight there. No step waits for the device."""
    t, per_frame, c = grid.shape
    dominant = dominant_indices(importance, dominant_count)  # [T, d]
    rest = torch.ones(t, per_frame, dtype=torch.uint8, device=grid.device).scatter(1, dominant, 0)
    rest_indices = rest.sort(dim=1, descending=True, stable=True).indices[:, : per_frame - dominant_count]  # [T, R]
    frames = torch.arange(t, device=grid.device)[:, None]
    kept_tokens, kept_slots = [grid[frames, dominant]], [dominant]
    counts = [torch.ones_like(dominant)]
    if contextual_count > 0:
        context, targets, others, members, assigned = contextual_tokens(
            grid[frames, rest_indices], keys[frames, rest_indices], contextual_count
        )
        kept_tokens.append(context)
        kept_slots.append(rest_indices[:, targets])
        counts.append(members)
    slots = torch.cat(kept_slots, dim=1)  # [T, k] per-frame positions, dominant first
    flat = (slots + frames * per_frame).flatten()
    order = flat.argsort()
    tokens = torch.cat(kept_tokens, dim=1).reshape(-1, c)[order]
    patches = torch.cat(counts, dim=1).flatten()[order]
    if contextual_count == 0:
        return tokens, flat[order], patches
    # each patch's token: a kept patch's own, an absorbed one's contextual token (weight 1 / its members)
    token_of = torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))
    token_of = token_of.view(t, -1)
    absorbed = rest_indices[:, others]
    member_of = torch.full((t, per_frame), -1, dtype=torch.long, device=grid.device)
    member_of.scatter_(1, slots, token_of)
    contextual_of = token_of[:, dominant_count:]
    member_of.scatter_(1, absorbed, contextual_of.gather(1, assigned))
    weights = torch.ones(t, per_frame, device=grid.device)
    weights.scatter_(1, absorbed, 1 / (members - 1).gather(1, assigned).float())
    return tokens, flat[order], patches, member_of.flatten(), weights.flatten()


#: CUDA graphs of :func:`merged_tokens` (about ninety short ops on grids of one shape per model; ``sttm.graphs``)
MERGING = Captures(size=2)


@register("visionzip")
class VisionZip(Reducer):
    """Dominant tokens by attention received and contextual tokens by key similarity, per frame."""

    stage = Stage.VISION
    needs = frozenset({"importance", "keys"})

    def __init__(self, budget: float = 0.5, cuda_graphs: bool = True) -> None:
        self.budget = check_budget(budget)
        self.cuda_graphs = bool(cuda_graphs)

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        per_frame = h * w
        counts = split_budget(per_frame, self.budget)
        inputs = (video.grid.reshape(t, per_frame, c), video.keys.reshape(t, per_frame, -1),
                  video.importance.reshape(t, per_frame))  # fmt: skip
        outputs = replayed(
            MERGING, counts, functools.partial(merged_tokens, *counts), *inputs, enabled=self.cuda_graphs
        )
        tokens, slots, patches, *members = (output.clone() for output in outputs)  # a replay's outputs are reused
        info = {"dominant_per_frame": counts[0], "contextual_per_frame": counts[1]}
        reduction = Reduction(tokens, patch_boxes(slots, h, w), patches, video.num_tokens, info=info)
        if not members:
            return reduction
        return replace(reduction, members=members[0], member_weights=members[1])
