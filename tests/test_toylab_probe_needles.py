"""The needle probe's measure of how far a vision tower spreads a needle over its frame."""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionForConditionalGeneration

from runners.toylab.model import VISION_TOWER, toy_config
from runners.toylab.probe_needles import FAR_PATCHES, change_by_tower_layer, feature_spread
from sttm.adapters.tiny import FRAME_SIZE, PATCH_SIZE


def test_patch_embeddings_change_only_at_the_needle_and_attention_carries_it_further():
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration._from_config(toy_config()).eval()
    patches = FRAME_SIZE // PATCH_SIZE
    before = torch.rand(3, FRAME_SIZE, FRAME_SIZE)
    with_needle = before.clone()
    with_needle[:, 5 * PATCH_SIZE : 7 * PATCH_SIZE, 5 * PATCH_SIZE : 7 * PATCH_SIZE] = 1.0
    needle = torch.zeros(patches, patches, dtype=torch.bool)
    needle[5:7, 5:7] = True
    assert patches - 7 >= FAR_PATCHES  # some patches lie far from the needle

    change = change_by_tower_layer(model, torch.stack([before, with_needle]), needle)

    assert change.shape == (VISION_TOWER["num_hidden_layers"] + 1, 2)
    assert change[0, 0] > 0 and change[0, 1] == 0
    assert (change[1:, 1] > 0).all()


def test_a_constant_added_to_every_feature_raises_their_norm_and_leaves_their_spread():
    torch.manual_seed(0)
    features = torch.randn(500, 8) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1, 0.1, 0.1, 0.1])
    shifted = features + 100.0

    spread, spread_shifted = feature_spread(features, directions=4), feature_spread(shifted, directions=4)

    assert spread_shifted["mean norm"] > 20 * spread["mean norm"]
    torch.testing.assert_close(spread_shifted["norm of the mean"], (features.mean(0) + 100.0).norm())
    deviations = spread["principal standard deviations"]
    torch.testing.assert_close(spread_shifted["principal standard deviations"], deviations)
    torch.testing.assert_close(deviations, torch.tensor([5.0, 3.0, 1.0, 0.5]), rtol=0.1, atol=0)
