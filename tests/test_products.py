"""Float32 products of half-precision tokens on tensor cores (``baselines.products``), as FlashVID, PruneVid,
DivPrune and FastVID use them: the same values as the reference's float32 products of the cast tokens, up to the
rounding of float32 sums, and as exact against float64.

The tensor-core tests need a GPU and are skipped without one (there: ``python -m pytest tests/test_products.py``).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from triton_interpreter import interpreted

from baselines import products
from baselines.divprune import DivPrune, cosine_distances
from baselines.fastvid import FastVID
from baselines.flashvid import FlashVID, frame_cosines
from baselines.products import pairwise_distances
from baselines.prunevid import PruneVid
from scripts.bench_products import errors
from sttm.synthetic import benchmark_video

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="tensor cores need a CUDA GPU")


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
def test_on_tensor_cores_the_gram_is_as_exact_as_the_float32_product():
    """Against the float64 product: the errors of the chunked tensor-core sums, relative to Σ|x·y|, are no larger
    than those of the CUDA cores' float32 product (mean and max); unchunked, tensor cores truncate their sums."""
    tokens = half_tokens(size=200, channels=3584, device="cuda")
    wide = tokens.double()
    exact, scale = wide @ wide.mT, wide.abs() @ wide.abs().mT
    cores = products.gram(tokens)
    assert cores.dtype == torch.float32
    mean, most = errors(cores, exact, scale, diagonal=False)
    reference_mean, reference_most = errors(tokens.float() @ tokens.float().mT, exact, scale, diagonal=False)
    assert mean <= reference_mean and most <= reference_most, (mean, most, reference_mean, reference_most)


@needs_cuda
def test_flashvids_cosines_on_tensor_cores_are_as_exact_as_the_references():
    video = benchmark_video(8, 14, 14, 3584, dtype=torch.bfloat16, device="cuda")
    frames = video.grid.reshape(8, 196, 3584)
    exact = frame_cosines(frames.double())
    mean, most = errors(frame_cosines(frames.float(), half=frames), exact, diagonal=False)
    reference_mean, reference_most = errors(frame_cosines(frames.float()), exact, diagonal=False)
    assert mean <= reference_mean and most <= reference_most, (mean, most, reference_mean, reference_most)


@needs_cuda
def test_prunevids_distances_on_tensor_cores_are_as_exact_as_cdists():
    """The distances of PruneVid's and FlashVID's DPC-kNN (``products.squared_distances``) against float64."""
    tokens = benchmark_video(8, 14, 14, 3584, dtype=torch.bfloat16, device="cuda").grid.reshape(8, 196, 3584)
    wide = tokens.double()
    squares = wide.square().sum(dim=-1)
    exact = (squares[:, :, None] - 2 * wide @ wide.mT + squares[:, None, :]).clamp(min=0).sqrt() / 3584**0.5
    mean, most = errors(pairwise_distances(tokens), exact, diagonal=False)
    reference_mean, reference_most = errors(pairwise_distances(tokens, tensor_cores=False), exact, diagonal=False)
    assert mean <= reference_mean and most <= reference_most, (mean, most, reference_mean, reference_most)


def test_off_cuda_the_cosine_distances_are_the_grams_over_the_norms():
    tokens = half_tokens()
    norms = torch.linalg.vector_norm(tokens.float(), dim=-1)
    expected = 1.0 - products.gram(tokens) / norms[:, :, None] / norms[:, None, :]
    assert torch.equal(products.cosine_distances(tokens, eps=1e-12), expected)


FUSED_KERNEL_UNDER_THE_TRITON_INTERPRETER = """
import sys
import torch
from baselines.products import fused_cosine_distances
cases = torch.load(sys.argv[1])
torch.save([fused_cosine_distances(tokens, norms, chunk) for tokens, norms, chunk in cases], sys.argv[2])
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_the_fused_kernel_gives_the_cosine_distances_under_the_triton_interpreter(tmp_path):
    """The kernel, run by Triton's interpreter on the CPU, on sizes that end inside a block and inside a step, in
    several sets and chunks: every entry, both halves of each mirrored block pair included, within float32 rounding
    of the float64 distances. Float16 tokens: the interpreter's ``tl.dot`` misreads bfloat16 (on a GPU both work)."""
    generator = torch.Generator().manual_seed(3)
    cases = []
    for batch, size, channels, chunk in ((2, 130, 200, 128), (1, 300, 600, 512), (3, 40, 64, 64)):
        tokens = torch.randn(batch, size, channels, generator=generator).add_(0.5).half()
        tokens[0, 7] = tokens[0, 3]  # a duplicate: distance 0
        cases.append((tokens, torch.linalg.vector_norm(tokens.float(), dim=-1), chunk))
    outputs = interpreted(FUSED_KERNEL_UNDER_THE_TRITON_INTERPRETER, cases, tmp_path)
    for (tokens, _, _), distances in zip(cases, outputs, strict=True):
        unit = torch.nn.functional.normalize(tokens.double(), dim=-1)
        assert distances.shape == (len(tokens), tokens.shape[1], tokens.shape[1])
        torch.testing.assert_close(distances.double(), 1.0 - unit @ unit.mT, rtol=0, atol=1e-6)
        assert abs(distances[0, 3, 7].item()) <= 1e-6


@pytest.mark.skipif(products.triton is None, reason="Triton is not installed")
def test_the_fused_kernel_takes_chunks_of_whole_steps():
    with pytest.raises(ValueError, match="whole steps of 64 channels, got chunk=100"):
        products.fused_cosine_distances(torch.zeros(1, 4, 8), torch.ones(1, 4), chunk=100)


@needs_cuda
def test_on_cuda_the_fused_kernel_gives_the_grams_over_the_norms():
    """On a video-like bf16 grid: the kernel's distances and those of :func:`products.gram` and the divisions agree
    to float32 rounding, and nearly every entry is the same float."""
    tokens = benchmark_video(16, 14, 14, 3584, dtype=torch.bfloat16, device="cuda").grid.reshape(1, -1, 3584)
    fused = products.cosine_distances(tokens, eps=1e-12)
    norms = torch.linalg.vector_norm(tokens, dim=-1, dtype=torch.float32)
    separate = 1.0 - products.gram(tokens) / norms[:, :, None] / norms[:, None, :]
    torch.testing.assert_close(fused, separate, rtol=0, atol=2e-6)
    assert (fused == separate).float().mean().item() >= 0.99


def test_off_tensor_cores_divprunes_cosines_are_the_unit_vectors():
    tokens = half_tokens()
    unit = torch.nn.functional.normalize(tokens.float(), dim=-1)
    assert torch.equal(cosine_distances(tokens), 1.0 - unit @ unit.mT)


@needs_cuda
def test_divprunes_cosine_distances_on_tensor_cores_are_as_exact_as_the_references():
    tokens = benchmark_video(16, 14, 14, 3584, dtype=torch.bfloat16, device="cuda").grid.reshape(1, -1, 3584)
    unit = torch.nn.functional.normalize(tokens.double(), dim=-1)
    exact = 1.0 - unit @ unit.mT
    mean, most = errors(cosine_distances(tokens), exact, diagonal=False)
    reference_mean, reference_most = errors(cosine_distances(tokens, tensor_cores=False), exact, diagonal=False)
    assert mean <= reference_mean and most <= reference_most, (mean, most, reference_mean, reference_most)


@needs_cuda
@pytest.mark.parametrize("reducer", [FlashVID, PruneVid, DivPrune, FastVID], ids=lambda reducer: reducer.__name__)
def test_the_reducers_on_tensor_cores_choose_as_without_them_but_for_near_ties(reducer):
    """On a video-like grid (scene changes, bf16): the same knobs and token count, and the same box in nearly every
    row; where rounding decides a near-tie (a few rows in a thousand on the 128-frame benchmark grid), a choice may
    differ."""
    video = benchmark_video(32, 14, 14, 3584, dtype=torch.bfloat16, device="cuda")
    for budget in (0.5, 0.3, 0.15):
        on_cores, reference = (reducer(budget=budget, tensor_cores=flag).reduce(video) for flag in (True, False))
        assert on_cores.info == reference.info, budget
        assert on_cores.boxes.shape == reference.boxes.shape, budget
        same_rows = (on_cores.boxes == reference.boxes).all(dim=-1).float().mean().item()
        print(f"{reducer.__name__} {budget}: {same_rows:.4f} of the rows the same")
        assert same_rows >= 0.98, budget
