"""Float32 products of half-precision tokens on tensor cores (``baselines.products``), as FlashVID and PruneVid use
them: the same values as the reference's float32 products of the cast tokens, up to the rounding of float32 sums.

The tensor-core tests need a GPU and are skipped without one (there: ``python -m pytest tests/test_products.py``).
"""

from __future__ import annotations

import pytest
import torch

from baselines import products
from baselines.flashvid import FlashVID, adts_distances, dpc_knn, frame_cosines
from baselines.prunevid import PruneVid, pairwise_distances
from sttm.synthetic import benchmark_video

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="tensor cores need a CUDA GPU")
PARTS = ("tokens", "boxes", "num_patches", "members", "member_weights")


def half_tokens(batch: int = 3, size: int = 40, channels: int = 96, device: str = "cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, size, channels, generator=generator).add_(1.0).to(device, torch.bfloat16)


def test_only_half_precision_tokens_on_cuda_go_to_tensor_cores():
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert not products.on_tensor_cores(torch.zeros(2, dtype=dtype))
    if torch.cuda.is_available():
        assert products.on_tensor_cores(torch.zeros(2, dtype=torch.bfloat16, device="cuda"))
        assert not products.on_tensor_cores(torch.zeros(2, dtype=torch.bfloat16, device="cuda"), enabled=False)
        assert not products.on_tensor_cores(torch.zeros(2, device="cuda"))


def test_off_tensor_cores_the_gram_is_the_float32_product_of_the_cast_tokens():
    tokens = half_tokens()
    wide = tokens.float()
    assert products.gram(tokens).dtype == torch.float32
    assert torch.equal(products.gram(tokens), wide @ wide.mT)


def test_the_squared_distances_are_cdists_squared():
    tokens = half_tokens()
    wide = tokens.float()
    squared = products.squared_distances(tokens, wide.square().sum(dim=-1))
    torch.testing.assert_close(squared.clamp(min=0).sqrt(), torch.cdist(wide, wide), rtol=1e-5, atol=2e-3)


def test_cosines_from_the_gram_over_the_norms_are_the_unit_vectors_cosines():
    tokens = half_tokens()
    wide = tokens.float()
    torch.testing.assert_close(frame_cosines(wide, half=tokens), frame_cosines(wide), rtol=0, atol=1e-6)


@needs_cuda
def test_on_tensor_cores_the_gram_sums_the_exact_products_in_float32():
    """Against the float64 product (exact products, float64 sums): within float32 rounding of the sums, as close
    as the CUDA-core float32 product is."""
    tokens = half_tokens(size=200, channels=3584, device="cuda")
    exact = tokens.double() @ tokens.double().mT
    bound = (tokens.double().abs() @ tokens.double().abs().mT) * 2e-6  # a few float32 epsilons of the sum
    cores = products.gram(tokens)
    assert cores.dtype == torch.float32
    assert ((cores.double() - exact).abs() <= bound).all()
    assert ((tokens.float() @ tokens.float().mT).double() - exact).abs().le(bound).all()


@needs_cuda
def test_flashvids_distances_on_tensor_cores_are_the_references_up_to_rounding():
    video = benchmark_video(8, 14, 14, 3584, dtype=torch.bfloat16, device="cuda")
    frames, attention = video.grid.reshape(8, 196, 3584), video.importance.reshape(8, 196)
    segment = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2], device="cuda")
    reference = adts_distances(frames, attention, segment, tensor_cores=False)
    torch.testing.assert_close(adts_distances(frames, attention, segment), reference, rtol=1e-5, atol=1e-3)
    valid = torch.ones(8, 196, dtype=torch.bool, device="cuda")
    clusters = torch.full((8,), 20, device="cuda")
    on_cores, by_reference = dpc_knn(frames, valid, clusters), dpc_knn(frames, valid, clusters, tensor_cores=False)
    assert (on_cores[1] == by_reference[1]).float().mean() > 0.99  # the slots by score, ties of rounding aside


@needs_cuda
def test_prunevids_distances_on_tensor_cores_are_cdists_up_to_rounding():
    tokens = half_tokens(size=150, channels=3584, device="cuda")
    torch.testing.assert_close(pairwise_distances(tokens), pairwise_distances(tokens, tensor_cores=False),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


@needs_cuda
@pytest.mark.parametrize("reducer", [FlashVID, PruneVid], ids=lambda reducer: reducer.__name__)
def test_the_reducers_on_tensor_cores_return_what_they_return_without_them(reducer):
    """On a video-like grid (scene changes, bf16) with near-ties rare, rounding changes no choice."""
    video = benchmark_video(32, 14, 14, 3584, dtype=torch.bfloat16, device="cuda")
    for budget in (0.5, 0.3, 0.15):
        on_cores, reference = (reducer(budget=budget, tensor_cores=flag).reduce(video) for flag in (True, False))
        assert torch.equal(on_cores.boxes, reference.boxes), budget
        for part in PARTS:
            mine, theirs = getattr(on_cores, part), getattr(reference, part)
            assert (mine is None) == (theirs is None), part
            if mine is not None:
                torch.testing.assert_close(mine, theirs, rtol=2e-2, atol=2e-2, msg=part)
