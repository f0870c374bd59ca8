"""DyCoke's KV-cache pruning while decoding (its second stage), as hooks beside a reduction point.

At each decoding step the hooks score the video's cached tokens at one decoder layer and mask the least attended of
them in the layers after it, for that step only; the plan of the session they run beside says which columns of the
cache hold the video.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sttm.adapters.attention import decoder_queries_and_keys
from sttm.adapters.cache import cache_of, is_prefill
from sttm.adapters.family import decoder_layers
from sttm.adapters.plan import causal_mask, masked_value
from sttm.adapters.session import ReductionSession


@dataclass(frozen=True)
class KVPruning:
    """DyCoke's second stage (Tao et al., CVPR 2025; KD-TAO/DyCoke ``PrunableDynamicCache.dycoke_pruning``): at each
    decoding step, the attention the new token pays the video's tokens at layer ``layer`` − 1 (mean over heads) is
    compared with the previous step's; when their cosine similarity is below ``similarity``, layers from ``layer`` on
    attend, in this step, only to the int(n·(1 − ``prune_ratio``)) most attended of the n video tokens. As in the
    authors' code a step whose attention barely moved prunes nothing. Pruned entries are masked, not removed, so the
    next step may choose others; the authors' defaults are layer 3 and prune ratio 0.7."""

    layer: int = 3
    prune_ratio: float = 0.7
    similarity: float = 0.9


@dataclass
class PruningStep:
    """One decoding step of :class:`KVPruning`: whether it pruned, and the kept video columns of each row."""

    pruned: bool
    kept_columns: list[torch.Tensor]


@dataclass
class PruningState:
    """What the KV-pruning hooks carry from one decoding step to the next, and from the scoring layer to the masked.

    previous:  the last step's attention over each row's video tokens, [n_b] per row (None: no step to compare with).
    blocked:   [B, kv] the video columns the masked layers block in this step (None: this step prunes nothing).
    """

    previous: list[torch.Tensor] | None = None
    blocked: torch.Tensor | None = None


class KVPruner:
    """The hooks of :class:`KVPruning` beside ``session``: :meth:`score` on decoder layer ``pruning.layer`` − 1,
    :meth:`mask` on the layers from ``pruning.layer`` on; the steps are logged in ``session.log.pruning_steps``."""

    def __init__(self, session: ReductionSession, pruning: KVPruning) -> None:
        self.session, self.pruning = session, pruning
        self.state = PruningState()

    def score(self, module, args, kwargs) -> None:
        pruning, state, session = self.pruning, self.state, self.session
        cache = cache_of(kwargs)
        state.blocked = None
        if session.plan is None or is_prefill(cache, pruning.layer - 1) or args[0].shape[1] != 1:
            state.previous = None
            return
        plan, hidden = session.plan, args[0]
        queries, new_keys = decoder_queries_and_keys(module, hidden, kwargs["position_embeddings"], slice(-1, None))
        cached = cache.layers[pruning.layer - 1].keys
        cached = cached.repeat_interleave(queries.shape[1] // cached.shape[1], dim=1)
        scores = (torch.cat([cached, new_keys], dim=2).float() @ queries.float().transpose(-1, -2))[..., 0]
        attended = torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
        attended[:, : plan.length] = plan.attention_mask.bool()
        scores = scores.masked_fill(~attended[:, None], -torch.inf)
        weights = (scores * module.self_attn.scaling).softmax(dim=-1).mean(dim=1)[:, : plan.length]
        attention = [row[visual] for row, visual in zip(weights, plan.visual, strict=True)]
        previous, state.previous = state.previous, attention
        similar = previous is not None and all(
            torch.nn.functional.cosine_similarity(now, before, dim=0) >= pruning.similarity
            for now, before in zip(attention, previous, strict=True)
        )
        if similar:
            session.log.pruning_steps.append(PruningStep(False, []))
            return
        blocked = torch.zeros(hidden.shape[0], cache.get_seq_length(pruning.layer - 1) + 1, dtype=torch.bool,
                              device=hidden.device)  # fmt: skip
        kept_columns = []
        for row, (scores_row, visual) in enumerate(zip(attention, plan.visual, strict=True)):
            columns = visual.nonzero().squeeze(1)
            kept = scores_row.topk(int(len(columns) * (1 - pruning.prune_ratio))).indices.sort().values
            blocked[row, columns] = True
            blocked[row, columns[kept]] = False
            kept_columns.append(columns[kept])
        state.blocked = blocked
        session.log.pruning_steps.append(PruningStep(True, kept_columns))

    def mask(self, module, args, kwargs):
        blocked = self.state.blocked
        if blocked is not None:
            current = kwargs.get("attention_mask")
            if current is None:
                kwargs["attention_mask"] = causal_mask(~blocked, args[0].shape[1])
            else:
                kwargs["attention_mask"] = current.masked_fill(blocked[:, None, None, :], masked_value(current))
        return args, kwargs


def kv_pruning_hooks(model, session: ReductionSession, pruning: KVPruning) -> list:
    """The hook handles of a :class:`KVPruner` on ``model``'s decoder layers. Needs the session's plan, so it runs
    beside a reduction point."""
    layers = decoder_layers(model)
    if not 1 <= pruning.layer < len(layers):
        raise ValueError(f"KV pruning layer {pruning.layer} is out of range 1..{len(layers) - 1}")
    pruner = KVPruner(session, pruning)
    return [
        layers[pruning.layer - 1].register_forward_pre_hook(pruner.score, with_kwargs=True),
        *(layer.register_forward_pre_hook(pruner.mask, with_kwargs=True) for layer in layers[pruning.layer :]),
    ]
