"""Reduction hooks in LLaVA-OneVision: cached decoding is exact, identity is the unmodified model, no residue."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

from sttm.adapters.llava_onevision import reduce_at_layer, reduce_before_llm
from sttm.adapters.tiny import (
    VIDEO_TOKEN_ID,
    save_tiny_llava_onevision,
    tiny_llava_onevision,
    tiny_llava_onevision_processor,
)
from sttm.api import Reducer, Reduction, Stage, VideoTokens, keep_everything, patch_boxes
from sttm.reducer import STTM

FRAMES, SIDE = 3, 8


class EveryOtherToken(Reducer):
    """Keeps tokens 0, 2, 4, … of the grid (a dropping reducer)."""

    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        flat = torch.arange(0, t * h * w, 2)
        return Reduction(
            video.grid.reshape(-1, c)[flat], patch_boxes(flat, h, w), torch.ones_like(flat), video.num_tokens
        )


class BlockMean(Reducer):
    """Averages 2x2 blocks (a merging reducer whose tokens are new vectors)."""

    stage = Stage.LLM_LAYER

    def reduce(self, video: VideoTokens) -> Reduction:
        t, h, w, c = video.grid.shape
        tokens = video.grid.reshape(t, h // 2, 2, w // 2, 2, c).mean(dim=(2, 4)).reshape(-1, c)
        tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(0, h, 2), torch.arange(0, w, 2), indexing="ij")
        boxes = torch.stack([tt, yy, xx, yy + 2, xx + 2], dim=-1).reshape(-1, 5)
        return Reduction(tokens, boxes, torch.full((len(boxes),), 4), video.num_tokens)


class Everything(Reducer):
    stage = Stage.PRE_LLM

    def reduce(self, video: VideoTokens) -> Reduction:
        return keep_everything(video)


def prompt():
    ids = torch.tensor([[10, 11, 12, *[VIDEO_TOKEN_ID] * (FRAMES * SIDE * SIDE + 1), 13, 14, 15, 16]])
    pixels = torch.randn(1, FRAMES, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return ids, pixels


def generate(model, use_cache=True, steps=5):
    ids, pixels = prompt()
    out = model.generate(
        input_ids=ids, pixel_values_videos=pixels, max_new_tokens=steps, do_sample=False, use_cache=use_cache,
        output_logits=True, return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    return out, torch.stack(out.logits)


REDUCTION_POINTS = {
    "pre_llm": lambda model, reducer, positions: reduce_before_llm(model, reducer, positions),
    "layer_0": lambda model, reducer, positions: reduce_at_layer(model, reducer, 0, positions),
    "layer_2": lambda model, reducer, positions: reduce_at_layer(model, reducer, 2, positions),
}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("point", REDUCTION_POINTS)
@pytest.mark.parametrize(
    "reducer",
    [EveryOtherToken(), BlockMean(), STTM(threshold=-0.2, temporal_threshold=0.1, root_level=0)],
    ids=["drop", "merge", "sttm"],
)
@pytest.mark.parametrize("positions", ["original", "compact"])
def test_cached_decoding_equals_recomputing_the_reduced_forward(attention, point, reducer, positions):
    model = tiny_llava_onevision(attn_implementation=attention)
    with REDUCTION_POINTS[point](model, reducer, positions) as log:
        cached, cached_logits = generate(model, use_cache=True)
        _, recomputed_logits = generate(model, use_cache=False)
    assert log.last.num_kept < FRAMES * SIDE * SIDE
    assert (cached_logits - recomputed_logits).abs().max() <= 1e-4


@pytest.mark.parametrize("point", REDUCTION_POINTS)
def test_keeping_every_token_is_the_unmodified_model(point):
    model = tiny_llava_onevision()
    _, plain = generate(model)
    with REDUCTION_POINTS[point](model, Everything(), "original"):
        _, hooked = generate(model)
    assert torch.equal(plain, hooked)


def test_layers_below_k_keep_the_full_cache_and_layers_from_k_the_reduced_one():
    model = tiny_llava_onevision()
    ids, _ = prompt()
    with reduce_at_layer(model, BlockMean(), 2) as log:
        out, _ = generate(model, steps=3)
    full, reduced = ids.shape[1], ids.shape[1] - FRAMES * SIDE * SIDE + log.last.num_kept
    lengths = [out.past_key_values.get_seq_length(i) for i in range(4)]
    assert lengths == [full + 2, full + 2, reduced + 2, reduced + 2]


def test_the_context_leaves_no_hooks_and_the_model_as_it_was():
    model = tiny_llava_onevision()
    _, before = generate(model)
    with reduce_at_layer(model, BlockMean(), 1):
        _, reduced = generate(model)
    _, after = generate(model)
    modules = [model.model, model.model.language_model, *model.model.language_model.layers]
    assert all(not m._forward_pre_hooks for m in modules)
    assert torch.equal(before, after) and not torch.equal(before, reduced)


def test_bad_arguments_are_refused():
    model = tiny_llava_onevision()
    with pytest.raises(ValueError, match="layer 4 is out of range"):
        with reduce_at_layer(model, BlockMean(), 4):
            pass
    with pytest.raises(ValueError, match="unknown positions mode 'sorted'"):
        with reduce_before_llm(model, BlockMean(), "sorted"):
            pass


def test_the_tiny_model_round_trips_through_a_hugging_face_folder(tmp_path):
    save_tiny_llava_onevision(tmp_path / "tiny")
    loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path / "tiny").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    _, original = generate(tiny_llava_onevision())
    _, reloaded = generate(loaded)
    assert torch.equal(original, reloaded)
    assert processor.video_token_id == VIDEO_TOKEN_ID == loaded.config.video_token_id


def test_a_processed_video_is_reduced_at_layer_2_with_sttm():
    processor = tiny_llava_onevision_processor()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What color was it ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    video = np.random.default_rng(0).integers(0, 255, (4, 224, 224, 3), dtype=np.uint8)
    inputs = processor(text=text, videos=[video], return_tensors="pt")
    model = tiny_llava_onevision()
    with reduce_at_layer(model, STTM(budget=0.5, root_level=0), 2) as log:
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3
    assert log.last.num_input == 4 * SIDE * SIDE and log.last.kept_ratio <= 0.5
