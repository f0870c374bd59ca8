"""DivPrune: greedy max-min diversity."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from triton_interpreter import interpreted

from baselines.divprune import DivPrune, cosine_distances, most_diverse
from sttm.api import VideoTokens


def reference_most_diverse(distances: torch.Tensor, count: int) -> torch.Tensor:
    """The greedy loop as it was before the Triton kernel (commit 6dde65e), kept as the reference for both paths."""
    batch = torch.arange(len(distances), device=distances.device)
    nearest_other = distances.topk(2, dim=1, largest=False).values[:, 1]
    chosen = [nearest_other.argmax(dim=1)]
    to_kept = distances[batch, chosen[0]]
    for _ in range(count - 1):
        chosen.append(to_kept.argmax(dim=1))
        to_kept = torch.minimum(to_kept, distances[batch, chosen[-1]])
    return torch.stack(chosen, dim=1)


def selection_cases() -> list[tuple[str, torch.Tensor, int]]:
    """(name, [B, N, N] distances, count): sizes around the kernels' blocks, counts 1 to N, duplicates and ties."""
    generator = torch.Generator().manual_seed(0)
    cases = []

    def add(name: str, distances: torch.Tensor) -> None:
        size = distances.shape[1]
        for count in sorted({1, 2, max(1, size // 3), size}):
            cases.append((f"{name} n={size} count={count}", distances, count))

    for size in (2, 7, 33, 100, 128, 129, 300):
        add("random", cosine_distances(torch.randn(1, size, 16, generator=generator)))
    copies = torch.randint(0, 40, (120,), generator=generator)
    add("duplicate tokens", cosine_distances(torch.randn(1, 40, 8, generator=generator)[:, copies]))
    quantized = torch.randint(-1, 2, (1, 200, 4), generator=generator).float()  # equal cosines, zero vectors
    add("quantized tokens", cosine_distances(quantized))
    add("integer distances", torch.randint(0, 4, (3, 50, 50), generator=generator).float())
    add("integer distances", torch.randint(0, 3, (2, 130, 130), generator=generator).float())
    frames = torch.randn(5, 36, 8, generator=generator)
    frames[3] = frames[1]
    add("frames", cosine_distances(frames))
    add("constant", torch.ones(2, 20, 20))
    return cases


CASES = selection_cases()


@pytest.mark.parametrize(("name", "distances", "count"), CASES, ids=[name for name, _, _ in CASES])
def test_the_cpu_path_chooses_as_the_reference_loop(name, distances, count):
    assert torch.equal(most_diverse(distances, count), reference_most_diverse(distances, count))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_path_chooses_as_the_reference_loop():
    generator = torch.Generator().manual_seed(1)
    video = cosine_distances(torch.randn(1, 5000, 64, generator=generator)[:, torch.randint(0, 3000, (5000,))])
    for name, distances, count in [*CASES, ("video", video, 2500), ("video", video, 5000)]:
        distances = distances.cuda()
        assert torch.equal(most_diverse(distances, count), reference_most_diverse(distances, count)), name


KERNELS_UNDER_THE_TRITON_INTERPRETER = """
import sys
import torch
from baselines.maxmin import most_diverse, nearest_other
cases = torch.load(sys.argv[1])
torch.save([(nearest_other(d), most_diverse(d, count)) for d, count in cases], sys.argv[2])
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_the_triton_kernels_choose_as_the_reference_loop(tmp_path):
    """The GPU kernels, run by Triton's interpreter on the CPU, on every case: the nearest other distances equal
    ``topk``'s and the chosen indices the reference loop's."""
    cases = [(distances, count) for _, distances, count in CASES]
    outputs = interpreted(KERNELS_UNDER_THE_TRITON_INTERPRETER, cases, tmp_path)
    for (name, distances, count), (nearest, chosen) in zip(CASES, outputs, strict=True):
        assert torch.equal(nearest, distances.topk(2, dim=1, largest=False).values[:, 1]), name
        assert torch.equal(chosen, reference_most_diverse(distances, count)), name


def test_picks_the_isolated_token_first_then_the_farthest_from_the_kept():
    tokens = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [-1.0, 0.05]])[None]
    order = most_diverse(cosine_distances(tokens), 3)[0].tolist()
    assert order[0] == 3  # farthest from its nearest neighbour
    assert order[1] == 0 and order[2] == 2  # then the farthest from the kept set


def test_duplicates_are_not_kept_twice_while_distinct_tokens_remain():
    grid = torch.eye(4).repeat_interleave(3, dim=0).view(1, 3, 4, 4)  # 4 distinct vectors, 3 copies each
    result = DivPrune(budget=4 / 12).reduce(VideoTokens(grid))
    assert torch.equal(result.tokens.sort(dim=0).values, torch.eye(4).sort(dim=0).values)


@pytest.mark.parametrize("scope", ["video", "frame"])
def test_keeps_exactly_the_budget_in_original_order(scope):
    clip = VideoTokens(torch.randn(3, 5, 4, 8, generator=torch.Generator().manual_seed(1)))
    result = DivPrune(budget=0.25, scope=scope).reduce(clip)
    assert result.num_kept == 15
    t, y, x = result.boxes[:, :3].T
    keys = t * 20 + y * 4 + x
    assert torch.all(keys[1:] > keys[:-1]) and torch.equal(result.tokens, clip.grid[t, y, x])
    if scope == "frame":
        assert torch.bincount(t).tolist() == [5, 5, 5]


def test_unknown_scope_is_refused():
    with pytest.raises(ValueError, match="unknown DivPrune scope 'clip'"):
        DivPrune(scope="clip")


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="at least one token per set, got count=0"):
        most_diverse(torch.zeros(1, 3, 3), 0)
