"""Reduction points in the three video-LLM families: cached decoding equals recomputing the reduced forward,
keeping every token is the unmodified model, the context leaves nothing behind, the tiny models round-trip."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from toy_reducers import BlockMean  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from sttm.adapters.family import pool_frame_features, vision_encoder_layers, vision_tower  # noqa: E402
from sttm.adapters.kv_pruning import KVPruning  # noqa: E402
from sttm.adapters.points import llm_layer, pre_llm, reduction_point  # noqa: E402
from sttm.adapters.tiny import (  # noqa: E402
    FAMILIES,
    FRAME_SIZE,
    MODEL_CLASSES,
    SPECIAL_TOKENS,
    VOCAB,
    save_tiny_model,
    tiny_model,
    tiny_processor,
)
from sttm.api import Reducer, Reduction, Stage, VideoTokens, keep_everything, patch_boxes  # noqa: E402

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
REDUCERS = {"drop": EveryOtherToken(), "merge": BlockMean(), "varying": ContentDependentCount()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("point", REDUCTION_POINTS)
@pytest.mark.parametrize(("reducer", "batch"), [("drop", 1), ("merge", 2), ("varying", 2)])
def test_cached_decoding_equals_recomputing_the_reduced_forward(family, attention, point, reducer, batch):
    model = tiny_model(family, attn_implementation=attention)
    model_inputs = inputs(family, batch)
    with REDUCTION_POINTS[point](model, REDUCERS[reducer]) as log:
        _, cached = generate(model, model_inputs, use_cache=True)
        _, recomputed = generate(model, model_inputs, use_cache=False)
    kept_per_row = [reduction.num_kept for reduction in log.last.reductions]
    assert log.last.num_kept < log.last.num_input
    assert len(set(kept_per_row)) == (batch if reducer == "varying" else 1)
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


def test_bad_arguments_are_refused():
    llava, qwen = tiny_model("llava_onevision"), tiny_model("qwen2_vl")
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


def test_a_reducer_is_refused_where_its_needs_cannot_be_met():
    model = tiny_model("llava_onevision")
    with pytest.raises(ValueError, match="needs importance, which the pre_llm point cannot give"):
        with pre_llm(model, RecordsEvidence()):
            pass
    with pytest.raises(ValueError, match="needs keys, which the llm_layer point cannot give"):
        with llm_layer(model, RecordsVisionEvidence(), 2):
            pass
    with pytest.raises(ValueError, match="LLaVA-OneVision models only"):
        with reduction_point(tiny_model("qwen2_vl"), RecordsVisionEvidence()):
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
    + [("qwen2_vl", point) for point in POINT_CONTEXTS if point != "vision"],  # the vision point reads SigLIP's
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
    if family == "qwen2_vl":
        assert "model.rope_deltas" in inside
    assert changed_attributes(before, model_state(model)) == []
