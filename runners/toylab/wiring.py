"""Finding the letter of a known answer among the options, written into the language model's initial weights
(``wire_option_lookup``) and kept through training (``keep_wired``). The model answers with the right option's
text, then its letter ("red , green , blue C"); the task takes the first option letter of the reply.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

from runners.toybench import LETTERS
from runners.toybench.benchmarks import DIRECTIONS, EFFECTS
from runners.toybench.render import BACKGROUNDS, COLORS, SHAPES
from sttm.adapters.family import text_model
from sttm.adapters.tiny import tiny_processor


def answer_words(tokenizer) -> list[str]:
    """The words the option lookup matches: the last word of every option the generators can write. They come
    from the generators' word pools, not from a split, so that a model keeps its wiring when questions change."""
    options = [*COLORS, *BACKGROUNDS, *SHAPES, *EFFECTS, *DIRECTIONS, *(str(n) for n in range(1, 6))]
    return sorted({tokenizer.tokenize(text)[-1] for text in options})


def window_coefficients(frequencies: np.ndarray, near: int = 6, far: int = 9, horizon: int = 4200) -> np.ndarray:
    """Cosine and sine weights per rotary frequency whose sum over a distance d is >= 1 for d in [1, near],
    <= -1 for d in [far, horizon), and falls by >= 0.5 over 3 tokens within [1, near] (a linear programme)."""

    def basis(distances) -> np.ndarray:
        angles = np.outer(distances, frequencies)
        return np.concatenate([np.cos(angles), np.sin(angles)], axis=1)

    within, beyond, later = basis(range(1, near + 1)), basis(range(far, horizon)), basis(range(4, near + 4))
    size = 2 * len(frequencies)
    constraints = np.block([
        [-within, np.ones((near, 1))],
        [beyond, np.ones((len(beyond), 1))],
        [later - within, np.full((near, 1), 0.5)],
    ])  # fmt: skip
    margin = scipy.optimize.linprog(
        np.r_[np.zeros(size), -1.0], A_ub=constraints, b_ub=np.zeros(len(constraints)),
        bounds=[(-1, 1)] * size + [(0, None)], method="highs",
    ).x  # fmt: skip
    return margin[:size] / margin[-1]


def wire_option_lookup(model, words: list[str], seed: int) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Set weights of the language model so that the token after an answer word is the letter of the option that
    holds that word; return the (parameter, mask) of every wired entry, which training keeps as they are.

    A model this small learns this lookup alone only after far more steps than a CPU allows (its letters stayed at
    chance through thousands of steps), and training wears a wired lookup away unless it is kept fixed. It is
    written in: reserved residual dimensions hold a one-hot code per
    answer word, one per letter and a letter flag in the embeddings. In decoder layer 0, head 0 attends from every
    token to the nearest letter within 6 tokens back (a constant query; rotary weights chosen by
    ``window_coefficients`` so that farther letters score below everything else) and copies that letter into the
    "line letter" dimensions. In layer 1, the first heads attend from an answer word to the earlier tokens with the
    same word (codes on rotary pairs that barely turn over a prompt) and copy their line letter into the "answer"
    dimensions, which ``lm_head`` reads as the letters' logits. Nothing else writes reserved dimensions; every
    module may read them.
    """
    text, vocabulary = text_model(model), model.config.text_config
    head = vocabulary.hidden_size // vocabulary.num_attention_heads
    assert vocabulary.num_key_value_heads == vocabulary.num_attention_heads
    ids = tiny_processor("llava_onevision").tokenizer.convert_tokens_to_ids
    count = len(LETTERS)
    word_dims = list(range(len(words)))
    letter_dims = list(range(len(words), len(words) + count))
    flag_dim = len(words) + count
    line_dims = list(range(flag_dim + 1, flag_dim + 1 + count))
    answer_dims = list(range(flag_dim + 1 + count, flag_dim + 1 + 2 * count))
    reserved = list(range(answer_dims[-1] + 1))
    pairs = head // 2
    frequencies = vocabulary.rope_parameters["rope_theta"] ** (-np.arange(pairs) * 2 / head)
    wired: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def keep(parameter: torch.nn.Parameter, index) -> None:
        mask = torch.zeros_like(parameter, dtype=torch.bool)
        mask[index] = True
        wired.append((parameter, mask))

    with torch.no_grad():
        embeddings = text.embed_tokens.weight
        generator = torch.Generator().manual_seed(seed)
        embeddings.copy_(torch.randn(embeddings.shape, generator=generator))
        embeddings[:, reserved] = 0
        code = 3.0
        embeddings[ids(words), word_dims] = code
        embeddings[ids(list(LETTERS)), letter_dims] = code
        embeddings[ids(list(LETTERS)), flag_dim] = code
        keep(embeddings, (slice(None), reserved))
        unit = code / float(embeddings[ids("A")].pow(2).mean().sqrt())  # a reserved code after RMSNorm
        for layer in text.layers:
            for writer in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                writer[reserved] = 0
                keep(writer, reserved)
        projector = model.model.multi_modal_projector.linear_2
        for writer in (projector.weight, projector.bias, model.model.image_newline):
            writer[reserved] = 0
            keep(writer, reserved)
        for norm in (text.layers[0].input_layernorm, text.layers[1].input_layernorm, text.norm):
            keep(norm.weight, reserved)

        def clear(attention, heads: range) -> None:
            rows = slice(heads.start * head, heads.stop * head)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
                projection.weight[rows] = 0
                projection.bias[rows] = 0
                keep(projection.weight, rows)
                keep(projection.bias, rows)
            attention.o_proj.weight[:, rows] = 0
            keep(attention.o_proj.weight, (slice(None), rows))

        gather = text.layers[0].self_attn
        clear(gather, range(1))
        sharpness = 20.0 * head**0.5  # logits >= 20 for a letter within 6 tokens, before the 1/sqrt(head) scale
        weights = window_coefficients(frequencies) * sharpness
        gather.q_proj.bias[:pairs] = torch.tensor(weights[:pairs])
        gather.q_proj.bias[pairs:head] = -torch.tensor(weights[pairs:])
        gather.k_proj.weight[:pairs, flag_dim] = 1 / unit
        gather.v_proj.weight[range(count), letter_dims] = 1 / unit
        gather.o_proj.weight[line_dims, range(count)] = 1.0  # small beside a token's norm: keeps its word code
        match = text.layers[1].self_attn
        # rotary pairs that turn less than 0.2 rad over 100 tokens, so that a word matches itself anywhere in the prompt
        slow = [pair + half for half in (0, pairs) for pair in range(pairs) if frequencies[pair] * 100 < 0.2]
        heads = range(-(-len(words) // len(slow)))
        assert len(heads) <= vocabulary.num_attention_heads, f"{len(words)} answer words need more heads"
        clear(match, heads)
        for index, word_dim in enumerate(word_dims):
            dim = heads[index // len(slow)] * head + slow[index % len(slow)]
            match.q_proj.weight[dim, word_dim] = match.k_proj.weight[dim, word_dim] = (15.0 * head**0.5) ** 0.5 / unit
        for first in (h * head for h in heads):
            match.v_proj.weight[range(first, first + count), line_dims] = 1.0
            match.o_proj.weight[answer_dims, range(first, first + count)] = 8.0
        model.lm_head.weight[:, reserved] = 0
        model.lm_head.weight[ids(list(LETTERS)), answer_dims] = 1.0
        keep(model.lm_head.weight, (slice(None), reserved))
    return wired


def keep_wired(wired: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]]) -> None:
    """Put every wired entry back to its value (after an optimizer step, weight decay included)."""
    with torch.no_grad():
        for parameter, mask, value in wired:
            parameter.copy_(torch.where(mask, value, parameter))
