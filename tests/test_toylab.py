"""The toy lab (``runners.toylab``): the shared-prefix forward, a few steps, the written folder, resuming, the wiring,
clips, augmentations and the locality loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaOnevisionForConditionalGeneration

from baselines.random_drop import RandomDrop
from runners.toybench.benchmarks import toy_longvideobench, toy_vnbench
from runners.toybench.render import COLORS, SHAPES, read_video, write_video
from runners.toylab.augmentations import DropTokens, TemporalDuplicates, hidden_needles, with_decoy
from runners.toylab.data import (
    Prompts,
    TrainingSteps,
    clip,
    question_rows,
    scheduled,
    stacked,
    step_schedule,
    train_split,
)
from runners.toylab.losses import answered, far_change, forward
from runners.toylab.masks import SHAPE_LEVEL, any_in_block, changed_patches, shape_tokens
from runners.toylab.model import (
    TOKEN_GRID,
    VISION_TOWER,
    is_vision_encoder_weight,
    load_initial_weights,
    projector_inputs,
    silence_vision_attention,
    toy_config,
)
from runners.toylab.probe_needles import change_by_tower_layer
from runners.toylab.replay import recorded_arguments
from runners.toylab.train import main, parse_args
from runners.toylab.wiring import answer_words, keep_wired, wire_option_lookup
from sttm.adapters.family import decoder_layers, vision_tower
from sttm.adapters.loading import load_model
from sttm.adapters.tiny import FRAME_SIZE, PATCH_SIZE, tiny_processor
from sttm.api import VideoTokens


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return train_split(tmp_path_factory.mktemp("toybench"), videos_per_benchmark=2)


def first_batch(splits, benchmark: str, positions: int = 2, video: int = 0):
    prompts = Prompts(tiny_processor("llava_onevision"), target_fps=1.0, max_frames=32)
    rng = np.random.default_rng(0)
    chosen = splits[benchmark][video]
    return prompts.batch(question_rows(chosen.questions, positions, rng), clip(benchmark, prompts.frames(chosen), rng))


def toy_model():
    torch.manual_seed(0)
    return LlavaOnevisionForConditionalGeneration._from_config(toy_config(), attn_implementation="sdpa")


def test_rows_continuing_one_prefix_get_the_logits_of_their_whole_sequences(splits):
    batch, model = first_batch(splits, "toy_videomme"), toy_model().eval()
    with torch.no_grad():
        _, predicted = forward(model, batch)
        for row in range(batch.suffix_ids.shape[0]):
            suffix = batch.suffix_ids[row, batch.suffix_mask[row].bool()]
            whole = torch.cat([batch.prefix_ids[0], suffix])[None]
            logits = model(input_ids=whole, pixel_values_videos=batch.pixel_values_videos).logits[0]
            start = batch.prefix_ids.shape[1] - 1
            torch.testing.assert_close(predicted[row, : len(suffix)], logits[start : start + len(suffix)])


def test_stacked_videos_get_the_logits_each_gets_alone(splits):
    model = toy_model().eval()
    alone = [first_batch(splits, "toy_mlvu"), first_batch(splits, "toy_mlvu", positions=1, video=1)]
    (merged,) = stacked(alone)
    with torch.no_grad():
        _, predicted = forward(model, merged)
        rows = 0
        for batch in alone:
            width = batch.suffix_ids.shape[1]
            torch.testing.assert_close(predicted[rows : rows + len(batch.suffix_ids), :width], forward(model, batch)[1])
            rows += len(batch.suffix_ids)


def test_dropping_keeps_a_share_of_the_video_at_its_positions(splits):
    batch, model = first_batch(splits, "toy_videomme"), toy_model().eval()
    visual = int((batch.prefix_ids == model.config.video_token_id).sum())
    kept = {}

    def record_length(module, args, kwargs):
        kept.setdefault("length", args[0].shape[1])

    handle = decoder_layers(model)[0].register_forward_pre_hook(record_length, with_kwargs=True)
    with torch.no_grad():
        loss_sum, predicted = forward(model, batch, RandomDrop(0.3, seed=1))
        other_seed = forward(model, batch, RandomDrop(0.3, seed=2))[1]
    handle.remove()
    newline = 1  # LLaVA-OneVision ends a video with one newline token, which reducers keep
    assert kept["length"] == batch.prefix_ids.shape[1] - visual + newline + round(0.3 * (visual - newline))
    assert torch.isfinite(loss_sum) and predicted.shape == forward(model, batch)[1].shape
    assert not torch.allclose(predicted, other_seed)


def test_temporal_duplicates_keep_the_first_frame_and_what_changes_after_it():
    grid = torch.randn(1, 2, 3, 8).expand(4, 2, 3, 8).clone()
    grid[2, 1, 0] = torch.randn(8)
    reduction = TemporalDuplicates(budget=8 / 24)(VideoTokens(grid))
    kept = [tuple(box[:3]) for box in reduction.boxes.tolist()]
    # the change, and the return to the first frame's token after it
    assert kept == [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2), (2, 1, 0), (3, 1, 0)]
    torch.testing.assert_close(reduction.tokens[-2], grid[2, 1, 0])


def test_a_few_steps_lower_the_loss_on_their_batch(splits):
    batch, model = first_batch(splits, "toy_nextqa"), toy_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss_sum, _ = forward(model, batch)
        loss = loss_sum / batch.targets.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_the_wired_lookup_names_the_letter_of_the_option_that_holds_the_answer_and_stays_through_a_step(splits):
    model = toy_model()
    wiring = wire_option_lookup(model, answer_words(tiny_processor("llava_onevision").tokenizer), seed=0)
    wired = [(parameter, mask, parameter.detach().clone()) for parameter, mask in wiring]
    batch = first_batch(splits, "toy_egoschema", positions=5)  # the right direction at each of the five letters
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss_sum, predicted = forward(model.train(), batch)
    assert all(answered(predicted, batch)[1])
    (loss_sum / batch.targets.sum()).backward()
    optimizer.step()
    keep_wired(wired)
    assert all(torch.equal(parameter[mask], value[mask]) for parameter, mask, value in wired)
    with torch.no_grad():
        assert all(answered(forward(model.eval(), batch)[1], batch)[1])


def test_a_run_writes_a_folder_that_loads_and_a_second_run_resumes(splits, tmp_path, capsys):
    data = tmp_path / "toybench"
    arguments = [
        "--data", str(data), "--videos-per-benchmark", "2", "--held-out", "1", "--videos-per-step", "2",
        "--clip-steps", "1", "--steps", "1", "--output", str(tmp_path / "model"),
        "--checkpoint", str(tmp_path / "checkpoint.pt"),
    ]  # fmt: skip
    training = main(arguments)
    assert set(training["held_out_accuracy"]) == set(splits)
    assert recorded_arguments(training["command"]) == arguments  # the replay reads the recorded command back
    model, processor = load_model(str(tmp_path / "model"), dtype="float32", attn_implementation="sdpa")
    assert model.config.text_config.hidden_size == toy_config().text_config.hidden_size
    assert processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("red B")["input_ids"]) == ["red", "B"]
    assert AutoModelForImageTextToText.from_pretrained(tmp_path / "model").config.model_type == "llava_onevision"
    main(arguments)
    assert f"resumed from {tmp_path / 'checkpoint.pt'} at step 2" in capsys.readouterr().out
    continued = tmp_path / "continued"
    main([*arguments[:-4], "--output", str(continued), "--checkpoint", str(tmp_path / "continued.pt"),
          "--init-from", str(tmp_path / "model"), "--lr", "0"])  # fmt: skip
    trained, restarted = (
        LlavaOnevisionForConditionalGeneration.from_pretrained(p) for p in (tmp_path / "model", continued)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(trained.state_dict().values(), restarted.state_dict().values(), strict=True)
    )


def test_weighted_steps_visit_each_benchmark_as_often_as_its_weight_and_its_videos_in_order():
    weights = {"toy_vnbench": 2, "toy_mlvu": 0, "toy_longvideobench": 3, "toy_nextqa": 1}
    schedule = step_schedule(weights)
    turns: dict[str, list[int]] = {}
    for step in range(6 * len(schedule)):
        name, turn = scheduled(schedule, step)
        turns.setdefault(name, []).append(turn)
    assert {name: len(seen) for name, seen in turns.items()} == {"toy_vnbench": 12, "toy_longvideobench": 18,
                                                                 "toy_nextqa": 6}  # fmt: skip
    assert all(seen == list(range(len(seen))) for seen in turns.values())
    assert schedule[:3] == ["toy_vnbench", "toy_longvideobench", "toy_nextqa"]  # spread, not in blocks


def test_a_longvideobench_clip_keeps_one_frame_with_the_white_ball_and_the_square_of_every_stretch():
    rng = np.random.default_rng(0)
    for _ in range(20):
        frames, [question] = toy_longvideobench(rng)
        kept = clip("toy_longvideobench", np.stack(frames), rng)
        shown = [{name for name, rgb in COLORS.items() if (frame == rgb).all(-1).sum() > 100} for frame in kept]
        with_ball = [colors - {"white"} for colors in shown if "white" in colors]
        assert with_ball == [{question.correct}]
        assert set().union(*shown) - {"white"} == {question.correct, *question.wrong}


def test_a_fresh_vision_encoder_keeps_its_own_weights_and_takes_the_rest_from_the_folder(tmp_path):
    torch.manual_seed(1)
    LlavaOnevisionForConditionalGeneration._from_config(toy_config()).save_pretrained(tmp_path)
    saved = LlavaOnevisionForConditionalGeneration.from_pretrained(tmp_path).state_dict()
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration._from_config(toy_config())
    own = {name: value.clone() for name, value in model.state_dict().items()}

    load_initial_weights(model, str(tmp_path), fresh_vision_encoder=True)

    encoder = [name for name in own if is_vision_encoder_weight(name)]
    assert len(encoder) > 0 and "model.vision_tower.embeddings.patch_embedding.weight" not in encoder
    for name, value in model.state_dict().items():
        expected = own[name] if name in encoder else saved[name]
        assert torch.equal(value, expected), name
    load_initial_weights(model, str(tmp_path))
    assert all(torch.equal(value, saved[name]) for name, value in model.state_dict().items())


def test_a_fresh_vision_encoder_needs_a_folder_for_the_rest():
    with pytest.raises(SystemExit):
        parse_args(["--fresh-vision-encoder"])


@pytest.mark.parametrize("layer", ["0", "1", str(-VISION_TOWER["num_hidden_layers"] - 2)])
def test_the_vision_feature_layer_counts_from_the_end_within_the_tower(layer):
    embeddings = -VISION_TOWER["num_hidden_layers"] - 1
    assert parse_args(["--vision-feature-layer", str(embeddings)]).vision_feature_layer == embeddings
    with pytest.raises(SystemExit):
        parse_args(["--vision-feature-layer", layer])


def test_changed_patches_mark_where_a_frame_differs_from_the_one_before():
    frames = np.zeros((3, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    frames[1, 3 * PATCH_SIZE + 2 : 3 * PATCH_SIZE + 9, 5 * PATCH_SIZE : 6 * PATCH_SIZE] = 255
    frames[2] = 10  # below H.264 noise
    patches = FRAME_SIZE // PATCH_SIZE

    changed = changed_patches(frames, (patches, patches))

    assert changed.shape == (3, patches, patches)
    assert torch.nonzero(changed).tolist() == [[1, 3, 5], [2, 3, 5]]  # appears, then is gone


def test_far_change_counts_only_what_moves_away_from_the_changed_pixels():
    torch.manual_seed(0)
    frames, side, channels = 4, 6, 5
    changed = torch.zeros(1, frames, side, side, dtype=torch.bool)
    changed[0, 1:3, 2, 2] = True  # a needle shows in frame 1 only
    changed[0, 3] = True  # a cut: every patch changes
    local = torch.randn(1, 1, side, side, channels).repeat(1, frames, 1, 1, 1)
    local[0, 1, 2, 2] += 3.0
    local[0, 3] = torch.randn(side, side, channels)
    assert far_change(local, changed, margin=0) == 0

    neighbour = local.clone()
    neighbour[0, 1, 3, 3] += 1.0
    assert far_change(neighbour, changed, margin=1) == 0
    assert far_change(neighbour, changed, margin=0) > 0

    offset = torch.randn(channels)
    spread = local.clone()
    spread[0, 1] += offset  # frame 1 everywhere, so the change into frame 1 and out of it into frame 2
    # both pairs around frame 1 change locally; each is scaled by its earlier frame; frame 0 has no pair before it
    expected = offset.norm() * (1 / spread[0, 0].norm(dim=-1).mean() + 1 / spread[0, 1].norm(dim=-1).mean()) / 2
    torch.testing.assert_close(far_change(spread, changed, margin=1), expected)
    assert far_change(spread[:, 3:], changed[:, 3:], margin=1) == 0  # no local change to measure


def test_far_change_of_the_projector_inputs_trains_the_vision_tower(splits):
    batch, model = first_batch(splits, "toy_vnbench"), toy_model().train()
    optimizer = torch.optim.AdamW(vision_tower(model).parameters(), lr=1e-2)
    grid = batch.changed_patches.shape
    assert grid[2:] == (FRAME_SIZE // PATCH_SIZE,) * 2 and batch.changed_patches.any()
    changes = []
    for _ in range(3):
        with projector_inputs(model) as captured:
            forward(model, batch)
        (features,) = captured
        assert features.shape[:2] == (grid[0] * grid[1], grid[2] * grid[3])
        change = far_change(features.unflatten(0, grid[:2]).unflatten(2, grid[2:]), batch.changed_patches, 1)
        change.backward()
        optimizer.step()
        optimizer.zero_grad()
        changes.append(change.item())
    assert changes[0] > 0 and changes[-1] < changes[0]


def test_a_silenced_vision_attention_keeps_each_patch_to_its_own_pixels_through_training(splits):
    model = toy_model().train()
    silence_vision_attention(model)
    batch = first_batch(splits, "toy_vnbench")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (forward(model, batch)[0] / batch.targets.sum()).backward()
    optimizer.step()

    patches = FRAME_SIZE // PATCH_SIZE
    before = torch.rand(3, FRAME_SIZE, FRAME_SIZE)
    after = before.clone()
    after[:, :PATCH_SIZE, :PATCH_SIZE] = 1.0
    needle = torch.zeros(patches, patches, dtype=torch.bool)
    needle[0, 0] = True
    change = change_by_tower_layer(model.eval(), torch.stack([before, after]), needle)
    assert (change[:, 0] > 0).all() and (change[:, 1] == 0).all()


def vnbench_video(task_type: str, needles: int = 0) -> tuple[np.ndarray, object]:
    rng = np.random.default_rng(0)
    while True:
        frames, (question,) = toy_vnbench(rng)
        if question.task_type == task_type and (not needles or question.correct == str(needles)):
            return np.stack(frames), question


@pytest.mark.parametrize("needles", [2, 4])
def test_hidden_needles_lose_all_their_tokens_and_every_count_left_is_as_likely(needles):
    frames, question = vnbench_video("cnt", needles)
    shapes = shape_tokens(frames)
    needle_frames = set(torch.nonzero(shapes.flatten(1).any(1)).flatten().tolist())
    assert len(needle_frames) == needles

    answers = []
    for seed in range(400):
        hidden = hidden_needles(question, frames, np.random.default_rng(seed))
        if hidden is None:
            answers.append(needles)
            continue
        left_question, removed = hidden
        hidden_frames = set(torch.nonzero(removed.flatten(1).any(1)).flatten().tolist())
        assert hidden_frames < needle_frames and hidden_frames
        assert torch.equal(removed[sorted(hidden_frames)], shapes[sorted(hidden_frames)])
        assert not removed[sorted(set(range(len(frames))) - hidden_frames)].any()
        assert left_question.correct == str(needles - len(hidden_frames))
        assert sorted([left_question.correct, *left_question.wrong]) == sorted([question.correct, *question.wrong])
        answers.append(int(left_question.correct))
    shares = np.bincount(answers, minlength=needles + 1)[1:] / len(answers)
    np.testing.assert_allclose(shares, 1 / needles, atol=0.08)


def test_only_a_counting_question_with_two_needles_or_more_hides_needles():
    rng = np.random.default_rng(0)
    for task_type, needles in [("cnt", 1), ("ret", 0), ("ord", 0)]:
        frames, question = vnbench_video(task_type, needles)
        assert all(hidden_needles(question, frames, rng) is None for _ in range(8))
    assert shape_tokens(vnbench_video("ord")[0]).flatten(1).any(1).sum() == 3


def nearest_color(pixels: np.ndarray) -> str:
    return min(COLORS, key=lambda name: np.abs(pixels.mean(0) - COLORS[name]).sum())


@pytest.mark.parametrize("task_type", ["ret", "ord", "cnt"])
def test_a_decoy_is_one_more_shape_of_the_question_in_an_empty_frame_whose_tokens_are_all_removed(task_type, tmp_path):
    generated, question = vnbench_video(task_type)
    write_video(list(generated), tmp_path / "video.mp4")
    frames = read_video(tmp_path / "video.mp4")
    assert sum(shape in question.text for shape in SHAPES) == 1
    needle_frames = shape_tokens(frames).flatten(1).any(1)
    for seed in range(3):
        decoyed, removed = with_decoy(question, frames, np.random.default_rng(seed))

        assert decoyed.shape == frames.shape and decoyed.dtype == np.uint8
        (at,) = torch.nonzero(removed.flatten(1).any(1)).flatten().tolist()
        assert not needle_frames[at]
        assert torch.equal(removed[at], shape_tokens(decoyed)[at])
        assert torch.equal(shape_tokens(decoyed)[needle_frames], shape_tokens(frames)[needle_frames])
        others = [index for index in range(len(frames)) if index != at]
        assert np.array_equal(decoyed[others], frames[others])
        changed = np.abs(decoyed[at].astype(int) - frames[at]).max(-1) > 0
        assert changed.sum() < 0.05 * changed.size and any_in_block(changed[None], TOKEN_GRID)[0][removed[at]].all()
        color = nearest_color(decoyed[at][decoyed[at].max(-1) > SHAPE_LEVEL])
        if task_type == "ret":
            assert color in question.wrong
        elif task_type == "ord":
            assert color not in question.correct.split(", ")
        else:
            assert f" {color} " in question.text


def test_only_vnbench_videos_get_decoys(splits):
    prompts = Prompts(tiny_processor("llava_onevision"), target_fps=1.0, max_frames=32)
    names = list(splits)
    steps = TrainingSteps(splits, held_out=0, seed=0, prompts=prompts, clip_steps=0, positions=1, videos_per_step=2,
                          schedule=names, decoy_prob=1.0)  # fmt: skip
    for step, name in enumerate(names):
        _, stepped, batches = steps[step]
        assert stepped == name
        removed_per_video = torch.cat([batch.removed_tokens for batch in batches]).flatten(1).sum(1)
        assert (removed_per_video > 0).all() if name == "toy_vnbench" else (removed_per_video == 0).all()


def test_drop_tokens_removes_from_each_video_its_own_tokens():
    grids = [torch.randn(2, *TOKEN_GRID, 4) for _ in range(2)]
    dropped = torch.zeros(2, 2, *TOKEN_GRID, dtype=torch.bool)
    dropped[0, 1, 0, :3] = True
    dropped[1, 0, 2, 2] = True
    reducer = DropTokens(dropped)

    for grid, marks in zip(grids, dropped, strict=True):
        kept = reducer.reduce(VideoTokens(grid)).tokens
        torch.testing.assert_close(kept, grid[~marks])
    with pytest.raises(ValueError, match="mask of shape"):
        DropTokens(dropped[:, :1]).reduce(VideoTokens(grids[0]))
