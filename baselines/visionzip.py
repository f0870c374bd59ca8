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

Budget b keeps ``k = max(1, round(b · H·W))`` tokens per frame, split as VisionZip's published settings split them
(54 dominant to 10 contextual of 64): ``round(k · 54/64)`` dominant, the rest contextual. A contextual token's box is
its target's patch, and its ``num_patches`` counts the patches it absorbed.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from sttm.api import Reducer, Reduction, Stage, VideoTokens, check_budget, patch_boxes, register

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


def contextual_tokens(
    tokens: torch.Tensor, keys: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the per-frame tokens [T, R, C] (keys [T, R, K]) into ``count`` contextual tokens each.

    Returns the contextual tokens [T, count, C], their targets' indices among the R [count], the number of tokens
    each absorbed, its target included [T, count], and the contextual token each of the other R − count tokens went
    into [T, R − count].
    """
    frames, remaining, _ = tokens.shape
    step = max(1, remaining // count)
    targets = torch.arange(0, remaining, step, device=tokens.device)[:count]
    is_target = torch.zeros(remaining, dtype=torch.bool, device=tokens.device)
    is_target[targets] = True
    normalized = F.normalize(keys.float(), dim=-1)
    similarity = normalized[:, ~is_target] @ normalized[:, targets].transpose(1, 2)  # [T, M, count]
    assigned = similarity.argmax(dim=2)  # [T, M]
    assignment = F.one_hot(assigned, count).to(tokens.dtype)  # [T, M, count]
    members = assignment.sum(dim=1)  # [T, count]
    merged = assignment.transpose(1, 2) @ tokens[:, ~is_target] / members.clamp(min=1)[..., None]
    return tokens[:, targets] + merged, targets, members.long() + 1, assigned


@register("visionzip")
class VisionZip(Reducer):
    """Dominant tokens by attention received and contextual tokens by key similarity, per frame."""

    stage = Stage.VISION
    needs = frozenset({"importance", "keys"})

    def __init__(self, budget: float = 0.5) -> None:
        self.budget = check_budget(budget)

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        per_frame = h * w
        grid, keys = video.grid.reshape(t, per_frame, c), video.keys.reshape(t, per_frame, -1)
        dominant_count, contextual_count = split_budget(per_frame, self.budget)
        dominant = dominant_indices(video.importance.reshape(t, per_frame), dominant_count)  # [T, d]
        rest = torch.ones(t, per_frame, dtype=torch.bool, device=grid.device).scatter(1, dominant, False)
        rest_indices = rest.nonzero()[:, 1].reshape(t, per_frame - dominant_count)  # [T, R], ascending
        frames = torch.arange(t, device=grid.device)[:, None]
        kept_tokens, kept_slots = [grid[frames, dominant]], [dominant]
        counts = [torch.ones_like(dominant)]
        if contextual_count > 0:
            context, targets, members, assigned = contextual_tokens(
                grid[frames, rest_indices], keys[frames, rest_indices], contextual_count
            )
            kept_tokens.append(context)
            kept_slots.append(rest_indices[:, targets])
            counts.append(members)
        slots = torch.cat(kept_slots, dim=1)  # [T, k] per-frame positions, dominant first
        flat = (slots + frames * per_frame).flatten()
        order = flat.argsort()
        tokens = torch.cat(kept_tokens, dim=1).reshape(-1, c)[order]
        info = {"dominant_per_frame": dominant_count, "contextual_per_frame": contextual_count}
        reduction = Reduction(tokens, patch_boxes(flat[order], h, w), torch.cat(counts, dim=1).flatten()[order],
                              video.num_tokens, info=info)  # fmt: skip
        if contextual_count == 0:
            return reduction
        # each patch's token: a kept patch's own, an absorbed one's contextual token (weight 1 / its members)
        token_of = torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))
        token_of = token_of.view(t, -1)
        absorbed = rest_indices[:, ~torch.isin(torch.arange(rest_indices.shape[1], device=grid.device), targets)]
        member_of = torch.full((t, per_frame), -1, dtype=torch.long, device=grid.device)
        member_of.scatter_(1, slots, token_of)
        contextual_of = token_of[:, dominant_count:]
        member_of.scatter_(1, absorbed, contextual_of.gather(1, assigned))
        weights = torch.ones(t, per_frame, device=grid.device)
        weights.scatter_(1, absorbed, 1 / (members - 1).gather(1, assigned).float())
        return replace(reduction, members=member_of.flatten(), member_weights=weights.flatten())
