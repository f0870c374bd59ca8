"""The two losses a training step adds: the answer's cross-entropy over a batch's shared-prefix forward
(``forward``; ``answered`` says which answers its logits get right), and the locality loss ``far_change`` on the
vision features the language model reads."""

from __future__ import annotations

import torch

from runners.toylab.data import Batch
from runners.toylab.masks import CUT_SHARE
from sttm.adapters.points import reduction_point
from sttm.api import Reducer

IGNORE = -100


def forward(model, batch: Batch, reducer: Reducer | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over the target tokens, and the logits that predict each suffix token. With a ``reducer``, each
    video's tokens are reduced at the language model's input (original positions) and the suffix continues after
    the full prefix's positions."""
    with reduction_point(model, reducer):
        prefix = model(input_ids=batch.prefix_ids, pixel_values_videos=batch.pixel_values_videos, use_cache=True)
    cache = prefix.past_key_values
    cache.reorder_cache(batch.row_prefix)
    rows, width = batch.suffix_ids.shape
    after_prefix = batch.prefix_ids.shape[1] + torch.arange(width, device=batch.suffix_ids.device)
    logits = model(
        input_ids=batch.suffix_ids,
        attention_mask=torch.cat([batch.suffix_mask.new_ones(rows, cache.get_seq_length()), batch.suffix_mask], 1),
        position_ids=after_prefix.expand(rows, width), past_key_values=cache, use_cache=False,
    ).logits  # fmt: skip
    # the logits at a position predict the next token, so the first suffix token is predicted by the prefix
    predicted = torch.cat([prefix.logits[batch.row_prefix, -1:], logits[:, :-1]], dim=1)
    targets = batch.suffix_ids.masked_fill(~batch.targets, IGNORE)
    loss = torch.nn.functional.cross_entropy(predicted.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return loss, predicted


def answered(predicted: torch.Tensor, batch: Batch) -> tuple[list[bool], list[bool]]:
    """Per row, with the right answer fed in: whether the option's text, and whether its letter, is the most
    likely continuation."""
    hits = (predicted.argmax(-1) == batch.suffix_ids) | ~batch.answers
    letters = hits.gather(1, batch.letter_positions[:, None])[:, 0]
    return hits.scatter(1, batch.letter_positions[:, None], True).all(1).tolist(), letters.tolist()


def far_change(features: torch.Tensor, changed: torch.Tensor, margin: int) -> torch.Tensor:
    """How much features change where the pixels do not: in each pair of consecutive frames with a local change
    (some patches changed, less than ``CUT_SHARE`` of them), the mean norm of the change at patches more than
    ``margin`` rows or columns away from every changed one, over the earlier frame's mean feature norm; averaged
    over those pairs (0 without any). 0 means that every feature holds only its own neighbourhood's pixels. A norm,
    not its square, so that as a loss it pushes a small leak towards 0 as hard as a large one.

    features: [V, T, H, W, C]; changed: [V, T, H, W] bool, as ``changed_patches`` marks them.
    """
    after = changed[:, 1:].flatten(0, 1).float()
    near = torch.nn.functional.max_pool2d(after[:, None], 2 * margin + 1, 1, margin)[:, 0] > 0
    share = after.flatten(1).mean(1)
    local = (share > 0) & (share < CUT_SHARE)
    if not local.any():
        return features.new_zeros(())
    far = (~near[local]).float()
    earlier, later = features[:, :-1].flatten(0, 1)[local], features[:, 1:].flatten(0, 1)[local]
    change = (torch.linalg.vector_norm(later - earlier, dim=-1) * far).sum((1, 2)) / far.sum((1, 2)).clamp(min=1)
    return (change / torch.linalg.vector_norm(earlier, dim=-1).mean((1, 2))).mean()
