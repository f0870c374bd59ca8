"""Reduction points in the video-LLM families: cached decoding equals recomputing the reduced forward, keeping every
token is the unmodified model, the context leaves nothing behind, the tiny models round-trip; Qwen3-VL's DeepStack
levels are cut as the tokens are and its timestamps stay where they are."""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from toy_reducers import BlockMean  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from baselines.fastvid import FastVID  # noqa: E402
from baselines.flashvid import FlashVID  # noqa: E402
from baselines.holitom import HoliTom, HoliTomInner  # noqa: E402
from baselines.prunevid import PruneVid  # noqa: E402
from sttm.adapters.family import (  # noqa: E402
    deepstack_levels,
    pool_frame_features,
    text_model,
    vision_encoder_layers,
    vision_tower,
)
from sttm.adapters.kv_pruning import KVPruning  # noqa: E402
from sttm.adapters.plan import gather_along, gather_positions, placeholder_runs  # noqa: E402
from sttm.adapters.points import llm_layer, pre_llm, reduction_point  # noqa: E402
from sttm.adapters.tiny import (  # noqa: E402
    FAMILIES,
    FRAME_SIZE,
    MODEL_CLASSES,
    QWEN_FAMILIES,
    SPECIAL_TOKENS,
    VOCAB,
    save_tiny_model,
    tiny_model,
    tiny_processor,
)
from sttm.api import (  # noqa: E402
    Reducer,
    Reduction,
    Stage,
    VideoTokens,
    keep_everything,
    patch_boxes,
    reduce_like,
)
from sttm.reducer import STTM  # noqa: E402

FRAMES = 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and then do not spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


QUESTIONS = ["what color is it ?", "which ball moved to the side after the red square moved ?"]


class EveryOtherToken(Reducer):
    """Keeps grid tokens 0, 2, 4, … as boxes of one patch (a dropping reducer)."""

    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        flat = torch.arange(0, t * h * w, 2)
        return Reduction(video.grid.reshape(-1, c)[flat], patch_boxes(flat, h, w), torch.ones_like(flat), t * h * w)


class ContentDependentCount(Reducer):
    """Keeps the first n tokens, n fixed by the video's content, so that rows keep different numbers of tokens."""

    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        every = keep_everything(video)
        count = 1 + int(video.grid.float().abs().mean() * 1e6) % (video.num_tokens // 2)
        return Reduction(every.tokens[:count], every.boxes[:count], every.num_patches[:count], video.num_tokens)


class Everything(Reducer):
    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        return keep_everything(video)


def inputs(family: str, batch: int, processor=None) -> dict:
    """Processor outputs for ``batch`` videos of FRAMES random frames; rows of different lengths are left-padded."""
    processor = processor or tiny_processor(family)
    rng = np.random.default_rng(0)
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
            add_generation_prompt=True,
        )
        for question in QUESTIONS[:batch]
    ]
    videos = [rng.integers(0, 255, (FRAMES, FRAME_SIZE, FRAME_SIZE, 3), dtype=np.uint8) for _ in range(batch)]
    return dict(processor(text=texts, videos=videos, return_tensors="pt", padding=True))


def generate(model, model_inputs: dict, use_cache: bool = True, steps: int = 4):
    """Greedy generation of ordinary words (a random model may pick placeholders); returns the output and the
    per-step logits [steps, B, vocab]."""
    with torch.no_grad():
        out = model.generate(
            **model_inputs, max_new_tokens=steps, do_sample=False, use_cache=use_cache, output_logits=True,
            return_dict_in_generate=True, pad_token_id=model.config.text_config.pad_token_id,
            suppress_tokens=[VOCAB[token] for token in SPECIAL_TOKENS],
        )  # fmt: skip
    return out, torch.stack(out.logits)


REDUCTION_POINTS = {
    "pre_llm": lambda model, reducer, positions="original": pre_llm(model, reducer, positions),
    "layer_0": lambda model, reducer, positions="original": llm_layer(model, reducer, 0, positions),
    "layer_2": lambda model, reducer, positions="original": llm_layer(model, reducer, 2, positions),
}
REDUCERS = {
    "drop": EveryOtherToken(),
    "merge": BlockMean(),
    "varying": ContentDependentCount(),
    "sttm": STTM(budget=0.5, root_level=0),  # spatial and temporal merging, thresholds searched per video
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("point", REDUCTION_POINTS)
@pytest.mark.parametrize(("reducer", "batch"), [("drop", 1), ("merge", 2), ("varying", 2), ("sttm", 2)])
def test_cached_decoding_equals_recomputing_the_reduced_forward(family, attention, point, reducer, batch):
    model = tiny_model(family, attn_implementation=attention)
    model_inputs = inputs(family, batch)
    with REDUCTION_POINTS[point](model, REDUCERS[reducer]) as log:
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    kept_per_row = [reduction.num_kept for reduction in log.last.reductions]
    assert log.last.num_kept < log.last.num_input
    if reducer != "sttm":
        assert len(set(kept_per_row)) == (batch if reducer == "varying" else 1)
    else:
        assert all(1 < (reduction.num_patches > 1).sum() < reduction.num_kept for reduction in log.last.reductions)
    assert (cached - recomputed).abs().max() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("point", REDUCTION_POINTS)
def test_decoding_by_hand_without_position_ids_continues_after_the_full_prompt(family, point):
    model = tiny_model(family)
    model_inputs = inputs(family, 1)
    special = [VOCAB[token] for token in SPECIAL_TOKENS]
    with REDUCTION_POINTS[point](model, BlockMean()), torch.no_grad():
        _, generated = generate(model, model_inputs, steps=3)
        output = model(**model_inputs, use_cache=True)
        by_hand = [output.logits[:, -1]]
        for _ in range(2):
            next_token = by_hand[-1].index_fill(-1, torch.tensor(special), -torch.inf).argmax(-1, keepdim=True)
            output = model(input_ids=next_token, past_key_values=output.past_key_values, use_cache=True)
            by_hand.append(output.logits[:, -1])
    assert (torch.stack(by_hand) - generated).abs().max() <= 1e-4


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("point", REDUCTION_POINTS)
def test_compact_positions_decode_like_the_recomputed_forward(attention, point):
    model = tiny_model("llava_onevision", attn_implementation=attention)
    model_inputs = inputs("llava_onevision", 2)
    with REDUCTION_POINTS[point](model, BlockMean(), "compact"):
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    with REDUCTION_POINTS[point](model, BlockMean(), "original"):
        _, original = generate(model, model_inputs, use_cache=True)
    assert (cached - recomputed).abs().max() <= 1e-4
    assert not torch.allclose(cached, original)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("point", REDUCTION_POINTS)
@pytest.mark.parametrize("batch", [1, 2])
def test_keeping_every_token_is_the_unmodified_model(family, point, batch):
    model = tiny_model(family)
    model_inputs = inputs(family, batch)
    plain_output, plain = generate(model, model_inputs)
    with REDUCTION_POINTS[point](model, Everything()) as log:
        hooked_output, hooked = generate(model, model_inputs)
    assert log.last.kept_ratio == 1.0
    assert torch.equal(plain, hooked) and torch.equal(plain_output.sequences, hooked_output.sequences)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("point", "first_reduced_layer"), [("pre_llm", 0), ("layer_0", 0), ("layer_2", 2)])
def test_layers_below_k_keep_the_full_cache_and_layers_from_k_the_reduced_one(family, point, first_reduced_layer):
    model = tiny_model(family)
    model_inputs = inputs(family, 1)
    with REDUCTION_POINTS[point](model, BlockMean()) as log:
        out, _ = generate(model, model_inputs, steps=3)
    full = model_inputs["input_ids"].shape[1]
    reduced = full - log.last.num_input + log.last.num_kept
    lengths = [out.past_key_values.get_seq_length(index) for index in range(model.config.text_config.num_hidden_layers)]
    assert lengths == [full + 2] * first_reduced_layer + [reduced + 2] * (len(lengths) - first_reduced_layer)


def installed_hooks(model) -> dict:
    """The forward hooks on each module (transformers installs its own output-capturing ones at the first call)."""
    return {
        name: (*module._forward_pre_hooks, *module._forward_hooks)
        for name, module in model.named_modules()
        if module._forward_pre_hooks or module._forward_hooks
    }


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("point", REDUCTION_POINTS)
def test_the_context_leaves_no_hooks_and_the_model_as_it_was(family, point):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    _, before = generate(model, model_inputs)
    hooks_before = installed_hooks(model)
    with REDUCTION_POINTS[point](model, BlockMean()):
        assert installed_hooks(model) != hooks_before
        _, reduced = generate(model, model_inputs)
    _, after = generate(model, model_inputs)
    assert installed_hooks(model) == hooks_before
    assert torch.equal(before, after) and not torch.allclose(before, reduced)


@pytest.mark.parametrize("qwen_family", ["qwen2_vl", "qwen3_vl"])
def test_bad_arguments_are_refused(qwen_family):
    llava, qwen = tiny_model("llava_onevision"), tiny_model(qwen_family)
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        with llm_layer(llava, BlockMean(), 4):
            pass
    with pytest.raises(ValueError, match="unknown positions mode 'sorted'"):
        with pre_llm(llava, BlockMean(), "sorted"):
            pass
    with pytest.raises(ValueError, match="compact positions are defined for LLaVA"):
        with pre_llm(qwen, BlockMean(), "compact"):
            pass


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tiny_model_round_trips_through_a_hugging_face_folder(family, tmp_path):
    folder = save_tiny_model(family, tmp_path / family)
    loaded = AutoModelForImageTextToText.from_pretrained(folder).eval()
    assert type(loaded) is MODEL_CLASSES[family]
    model_inputs = inputs(family, 2)
    reloaded_inputs = inputs(family, 2, AutoProcessor.from_pretrained(folder))
    assert model_inputs.keys() == reloaded_inputs.keys()
    assert all(torch.equal(model_inputs[key], reloaded_inputs[key]) for key in model_inputs)
    _, original = generate(tiny_model(family), model_inputs)
    _, reloaded = generate(loaded, model_inputs)
    assert torch.equal(original, reloaded)


class RecordsEvidence(Reducer):
    """Keeps every token and remembers the evidence it was given (a probe, for tests only)."""

    name = "records_evidence"
    stage = Stage.LLM_LAYER
    needs = frozenset({"importance"})

    def __init__(self) -> None:
        self.seen: list[VideoTokens] = []

    def reduce(self, video: VideoTokens) -> Reduction:
        self.seen.append(video)
        return keep_everything(video)


@pytest.mark.parametrize("family", FAMILIES)
def test_importance_at_layer_k_is_the_last_tokens_attention_there(family):
    model = tiny_model(family, attn_implementation="eager")
    model_inputs = inputs(family, 2)
    probe = RecordsEvidence()
    with llm_layer(model, probe, 2) as log, torch.no_grad():
        output = model(**model_inputs, output_attentions=True)
    attention = output.attentions[2][:, :, -1].mean(dim=1)  # [B, L]
    placeholders = model_inputs["input_ids"] == model.config.video_token_id
    for row, video in enumerate(probe.seen):
        span = placeholders[row].nonzero().squeeze(1)[: video.num_tokens]
        expected = attention[row, span].reshape(video.importance.shape)
        assert torch.allclose(video.importance, expected, atol=1e-6)
    assert log.last.kept_ratio == 1.0


class RecordsVisionEvidence(RecordsEvidence):
    stage = Stage.VISION
    needs = frozenset({"importance", "keys"})


def test_vision_evidence_is_the_pooled_attention_received_in_the_vision_tower():
    model = tiny_model("llava_onevision", attn_implementation="eager")
    model_inputs = inputs("llava_onevision", 1)
    probe = RecordsVisionEvidence()
    with reduction_point(model, probe), torch.no_grad():
        model(**model_inputs)
        frames = model_inputs["pixel_values_videos"].flatten(0, 1)
        tower = vision_tower(model)(frames, output_attentions=True, output_hidden_states=True)
    received = tower.attentions[-1].mean(dim=(1, 2))  # the tiny model uses the last layer's features
    expected = pool_frame_features(model, received[..., None])[..., 0]
    video = probe.seen[-1]
    assert torch.allclose(video.importance.reshape(expected.shape), expected, atol=1e-6)
    assert video.keys.shape[:3] == video.grid.shape[:3]


class MergeGroupIds(torch.nn.Module):
    """In place of a Qwen ViT's merger: each token is the index of its 2x2 patches' group in the blocks' order."""

    def __init__(self, unit: int) -> None:
        super().__init__()
        self.unit = unit

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.arange(len(hidden) // self.unit, dtype=hidden.dtype)[:, None]


@pytest.mark.parametrize("family", QWEN_FAMILIES)
def test_qwen_vision_evidence_is_the_attention_received_in_the_last_full_attention_block(family, monkeypatch):
    model = tiny_model(family, attn_implementation="eager")
    model_inputs = inputs(family, 2)
    modeling = sys.modules[type(vision_tower(model)).__module__]
    read, recording, received = vision_encoder_layers(model)[-1], [], []  # the tiny towers' last block attends fully

    def eager(module, query, key, value, attention_mask, **kwargs):
        output, weights = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
        if recording:
            received.append(weights.float().mean(dim=(1, 2))[0])  # [patches] of one frame
        return output, weights

    eager_attention_forward = modeling.eager_attention_forward
    monkeypatch.setattr(modeling, "eager_attention_forward", eager)
    read.register_forward_pre_hook(lambda module, args: recording.append(True))
    read.register_forward_hook(lambda module, args, output: recording.clear())
    probe = RecordsVisionEvidence()
    with reduction_point(model, probe), torch.no_grad():
        model(**model_inputs)
    # which patches each token merges, in the blocks' order (Qwen2.5-VL's windows): the tower's own reordering
    unit = model.config.vision_config.spatial_merge_size**2
    vision_tower(model).merger = MergeGroupIds(unit)
    with torch.no_grad():
        tower = vision_tower(model)(model_inputs["pixel_values_videos"], grid_thw=model_inputs["video_grid_thw"])
    groups = tower.pooler_output[:, 0].long()
    expected = torch.cat(received).view(-1, unit)[groups].mean(dim=1).split(len(groups) // 2)
    for video, importance in zip(probe.seen, expected, strict=True):
        assert torch.allclose(video.importance.flatten(), importance, atol=1e-6)
        assert video.keys.shape[:3] == video.grid.shape[:3]
    assert probe.seen[0].keys.shape[-1] == read.attn.head_dim


def test_a_reducer_is_refused_where_its_needs_cannot_be_met():
    model = tiny_model("llava_onevision")
    with pytest.raises(ValueError, match="needs importance, which the pre_llm point cannot give"):
        with pre_llm(model, RecordsEvidence()):
            pass
    with pytest.raises(ValueError, match="needs keys, which the llm_layer point cannot give"):
        with llm_layer(model, RecordsVisionEvidence(), 2):
            pass
    reads_embeddings = tiny_model("llava_onevision")
    reads_embeddings.config.vision_feature_layer = -len(vision_encoder_layers(reads_embeddings)) - 1
    with pytest.raises(ValueError, match="is the patch embeddings"):
        with reduction_point(reads_embeddings, RecordsVisionEvidence()):
            pass


class EverythingWithKVPruning(Everything):
    def __init__(self, pruning: KVPruning) -> None:
        self.kv_pruning = pruning


def test_kv_pruning_keeps_the_most_attended_video_columns_of_the_layer_before():
    model = tiny_model("llava_onevision", attn_implementation="eager")
    model_inputs = inputs("llava_onevision", 1)
    pruning = KVPruning(layer=2, prune_ratio=0.75)
    with reduction_point(model, EverythingWithKVPruning(pruning)) as log, torch.no_grad():
        prompt = model(**model_inputs, use_cache=True)
        first = prompt.logits[:, -1:].argmax(-1)
        step = model(input_ids=first, past_key_values=prompt.past_key_values, use_cache=True, output_attentions=True)
    placeholders = (model_inputs["input_ids"] == model.config.video_token_id)[0].nonzero().squeeze(1)[:-1]
    scores = step.attentions[pruning.layer - 1][0, :, -1].mean(dim=0)[placeholders]
    expected = placeholders[scores.topk(int(len(placeholders) * 0.25)).indices.sort().values]
    assert log.pruning_steps[0].pruned and torch.equal(log.pruning_steps[0].kept_columns[0], expected)


def test_kv_pruning_leaves_the_first_token_and_changes_later_ones_and_nothing_pruned_is_the_plain_model():
    model = tiny_model("llava_onevision")
    model_inputs = inputs("llava_onevision", 2)
    _, plain = generate(model, model_inputs)
    with reduction_point(model, EverythingWithKVPruning(KVPruning(layer=2, prune_ratio=0.0))):
        _, unpruned = generate(model, model_inputs)
    with reduction_point(model, EverythingWithKVPruning(KVPruning(layer=2, prune_ratio=0.9))) as log:
        _, pruned = generate(model, model_inputs)
    assert torch.equal(plain, unpruned)
    assert torch.equal(plain[0], pruned[0]) and not torch.allclose(plain[1:], pruned[1:])
    assert log.pruning_steps[0].pruned


def model_state(model) -> dict[str, dict]:
    """Each module's attributes by module name; dicts (parameters, submodules, hooks of every kind) copied."""
    return {
        name: {key: dict(value) if isinstance(value, dict) else value for key, value in vars(module).items()}
        for name, module in model.named_modules()
    }


def same_value(before, after) -> bool:
    if isinstance(before, dict) and isinstance(after, dict):
        return before.keys() == after.keys() and all(same_value(before[key], after[key]) for key in before)
    if before is after:
        return True
    return not isinstance(before, torch.Tensor) and type(before) is type(after) and before == after


def changed_attributes(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    missing = object()
    return [
        f"{name or 'model'}.{key}"
        for name in before.keys() | after.keys()
        for key in before.get(name, {}).keys() | after.get(name, {}).keys()
        if not same_value(before.get(name, {}).get(key, missing), after.get(name, {}).get(key, missing))
    ]


POINT_CONTEXTS = {
    **{point: lambda model, point=point: REDUCTION_POINTS[point](model, BlockMean()) for point in REDUCTION_POINTS},
    "kv_pruning": lambda model: reduction_point(model, EverythingWithKVPruning(KVPruning(layer=2, prune_ratio=0.5))),
    "vision": lambda model: reduction_point(model, RecordsVisionEvidence()),
}


@pytest.mark.parametrize(
    ("family", "point"),
    [("llava_onevision", point) for point in POINT_CONTEXTS]
    + [(qwen, point) for qwen in ("qwen2_vl", "qwen3_vl") for point in POINT_CONTEXTS],
)
def test_after_a_generate_inside_the_context_the_model_has_the_attributes_and_hooks_it_had(family, point):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    generate(model, model_inputs, steps=2)  # transformers sets its own attributes and hooks at the first call
    before = model_state(model)
    with POINT_CONTEXTS[point](model) as log:
        generate(model, model_inputs, steps=2)
        inside = changed_attributes(before, model_state(model))
    assert log.calls and inside  # the hooks were there, and the snapshot sees them
    if family != "llava_onevision":
        assert "model.rope_deltas" in inside
    assert changed_attributes(before, model_state(model)) == []


QWEN3 = ("qwen3_vl", "qwen3_vl_moe")


def language_model_inputs(model, model_inputs: dict, steps: int = 1) -> list[dict]:
    """The keyword arguments the language model receives in each forward of a cached greedy generation of ``steps``
    tokens (after the hooks of any reduction point entered before)."""
    seen = []
    handle = text_model(model).register_forward_pre_hook(lambda module, args, kwargs: seen.append(dict(kwargs)),
                                                         with_kwargs=True)  # fmt: skip
    try:
        generate(model, model_inputs, steps=steps)
    finally:
        handle.remove()
    return seen


def video_rows(levels: list[torch.Tensor], grids: list[tuple[int, int, int]]) -> list[list[torch.Tensor]]:
    """DeepStack levels [Σ visual tokens, C] split into each row's [T, H, W, C] grid, per level."""
    sizes = [t * h * w for t, h, w in grids]
    return [[rows.reshape(*grid, -1) for rows, grid in zip(level.split(sizes), grids, strict=True)] for level in levels]


@pytest.mark.parametrize("family", QWEN3)
@pytest.mark.parametrize(("reducer", "batch"), [("drop", 1), ("merge", 2), ("sttm", 2)])
def test_deepstack_levels_reach_the_language_model_cut_as_the_tokens_are(family, reducer, batch):
    model = tiny_model(family)
    model_inputs = inputs(family, batch)
    full = language_model_inputs(model, model_inputs)[0]
    with pre_llm(model, REDUCERS[reducer]) as log:
        reduced = language_model_inputs(model, model_inputs)[0]
    reductions = log.last.reductions
    mask = reduced["visual_pos_masks"]
    assert mask.sum(1).tolist() == [reduction.num_kept for reduction in reductions]
    assert torch.equal(reduced["inputs_embeds"][mask], torch.cat([reduction.tokens for reduction in reductions]))
    grids = [(FRAMES // 2, 8, 8)] * batch
    levels = video_rows(full["deepstack_visual_embeds"], grids)
    assert len(levels) == deepstack_levels(model) == 2
    for level, cut in zip(levels, reduced["deepstack_visual_embeds"], strict=True):
        if reducer == "drop":  # every other patch, as the tokens
            expected = [grid.flatten(0, 2)[::2] for grid in level]
        elif reducer == "merge":  # the means of the same 2x2 blocks
            expected = [grid.unflatten(1, (4, 2)).unflatten(3, (4, 2)).mean(dim=(2, 4)).flatten(0, 2) for grid in level]
        else:  # STTM's weighted means of the same members (its own tokens are those means of the grid)
            expected = [reduce_like(reduction, grid) for reduction, grid in zip(reductions, level, strict=True)]
        assert torch.allclose(cut, torch.cat(expected), atol=1e-6)


@pytest.mark.parametrize("family", QWEN3)
@pytest.mark.parametrize("reducer", ["drop", "merge", "sttm"])
def test_reducing_before_the_language_model_and_at_layer_0_agree(family, reducer):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    with pre_llm(model, REDUCERS[reducer]):
        _, before = generate(model, model_inputs)
    with llm_layer(model, REDUCERS[reducer], 0):  # DeepStack's levels added by hooks after layers 0 and 1
        _, at_layer_0 = generate(model, model_inputs)
    assert (before - at_layer_0).abs().max() <= 1e-5


@pytest.mark.parametrize("family", QWEN3)
@pytest.mark.parametrize("layer", [1, 2])
def test_from_the_reducing_layer_on_deepstack_levels_are_cut_and_before_it_whole(family, layer):
    model = tiny_model(family, attn_implementation="eager")
    model_inputs = inputs(family, 2)
    full = language_model_inputs(model, model_inputs)[0]
    with llm_layer(model, BlockMean(), layer) as log:
        seen = language_model_inputs(model, model_inputs)[0]
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    assert torch.equal(seen["visual_pos_masks"], full["visual_pos_masks"])
    assert len(seen["deepstack_visual_embeds"]) == layer  # the levels the language model adds itself: whole
    for whole, given in zip(full["deepstack_visual_embeds"][:layer], seen["deepstack_visual_embeds"], strict=True):
        assert torch.equal(whole, given)
    assert log.last.num_kept < log.last.num_input
    assert (cached - recomputed).abs().max() <= 1e-4


#: methods that merge before DeepStack's layers: before the LLM with the evidence the tiny Qwen3-VL gives them (its
#: ViT's attention), their stage inside the LLM off (timestamps split the kept tokens: see the test below), HoliTom's
#: with every slot static (tau −1: the random frames' slots are not alike); HoliTom's merge inside the LLM alone at
#: layer 1, before DeepStack's second level
BEFORE_DEEPSTACK = {
    "fastvid": lambda: FastVID(budget=0.5),
    "holitom": lambda: HoliTom(budget=0.25, tau=-1.0, inner_merge=False),
    "holitom_inner": lambda: HoliTomInner(budget=0.5, layer=1),
    "prunevid": lambda: PruneVid(budget=0.5, question_guided=False),
    "flashvid": lambda: FlashVID(budget=0.5, variant="corrected", llm_prune=False),
}


@pytest.mark.parametrize("family", QWEN3)
@pytest.mark.parametrize("method", BEFORE_DEEPSTACK)
def test_methods_that_merge_before_deepstack_decode_like_the_recomputed_forward(family, method):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    with reduction_point(model, BEFORE_DEEPSTACK[method]()) as log:
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    assert all((reduction.num_patches > 1).any() for reduction in log.last.reductions)
    assert (cached - recomputed).abs().max() <= 1e-4


TWO_STAGES = {
    "holitom": lambda: HoliTom(budget=0.5, inner_layer=2),
    "flashvid": lambda: FlashVID(budget=0.5, variant="corrected", llm_layer=2),
    "prunevid": lambda: PruneVid(budget=0.5, selected_layer=1),
}


@pytest.mark.parametrize("method", TWO_STAGES)
def test_a_stage_inside_the_llm_after_one_before_it_is_refused_where_timestamps_split_the_video(method):
    reducer = TWO_STAGES[method]()
    model = tiny_model("qwen3_vl")
    with pytest.raises(ValueError, match="needs the kept video tokens in one run, not split by text"):
        with reduction_point(model, reducer):
            generate(model, inputs("qwen3_vl", 1))


class UnsaidMerge(BlockMean):
    """The block mean without its members."""

    def reduce(self, video: VideoTokens) -> Reduction:
        return dataclasses.replace(super().reduce(video), members=None)


@pytest.mark.parametrize("family", QWEN3)
def test_a_merge_without_members_is_refused_before_the_deepstack_layers_only(family):
    model = tiny_model(family)
    model_inputs = inputs(family, 1)
    with pytest.raises(ValueError, match="does not say their members"):
        with pre_llm(model, UnsaidMerge()):
            generate(model, model_inputs)
    with llm_layer(model, UnsaidMerge(), 2) as log:
        generate(model, model_inputs)
    assert log.last.num_kept == log.last.num_input // 4


@pytest.mark.parametrize("family", QWEN3)
def test_timestamps_stay_in_place_and_kept_tokens_keep_their_m_rope_ids_and_decoding_its_positions(family):
    model = tiny_model(family)
    model_inputs = inputs(family, 2)
    full = language_model_inputs(model, model_inputs, steps=3)
    with pre_llm(model, EveryOtherToken()):
        reduced = language_model_inputs(model, model_inputs, steps=3)
    ids = model_inputs["input_ids"]
    video = ids == model.config.video_token_id
    runs = [len(placeholder_runs(row.nonzero().squeeze(1))) for row in video]
    assert runs == [FRAMES // 2] * 2  # one run per temporal patch, a timestamp before each
    dropped = torch.zeros_like(video)
    for row in range(len(ids)):
        dropped[row, video[row].nonzero().squeeze(1)[1::2]] = True
    keep = (~dropped).nonzero()[:, 1].view(len(ids), -1)  # the text (timestamps among it) and every other patch
    prefill, *steps = reduced
    assert torch.equal(prefill["inputs_embeds"], gather_along(full[0]["inputs_embeds"], keep, 1))
    assert torch.equal(prefill["position_ids"], gather_positions(full[0]["position_ids"], keep))
    for plain, step in zip(full[1:], steps, strict=True):  # decoding goes on where the unreduced model's does
        assert torch.equal(plain["position_ids"], step["position_ids"])
