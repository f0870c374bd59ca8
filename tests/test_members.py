"""Every registered reducer says where each grid patch went: the grid reduced like its tokens (``reduce_like``) gives
the tokens back, a merge's through ``Reduction.members``, a selection's through its boxes. That is how Qwen3-VL's
DeepStack features are reduced before the layers that add them."""

from __future__ import annotations

import inspect

import pytest
import torch

from sttm.api import VideoTokens, available_reducers, build_reducer, reduce_like, reducer_class
from sttm.synthetic import redundant_video

BUDGET = 0.3
#: scenes of 6 frames: static stretches to merge over time, smooth fields to merge in space
GRID = redundant_video(frames=16, height=8, width=8, channels=32)
EVIDENCE = {
    "importance": torch.rand(16, 8, 8, generator=torch.Generator().manual_seed(1)),
    "keys": torch.randn(16, 8, 8, 16, generator=torch.Generator().manual_seed(2)),
    "question": "which ball moved ?",
}


def settings() -> list[tuple[str, dict]]:
    """Every registered reducer at its defaults, and in its corrected variant where it has one."""
    cases = []
    for name in available_reducers():
        cases.append((name, {}))
        if "variant" in inspect.signature(reducer_class(name)).parameters:
            cases.append((name, {"variant": "corrected"}))
    return cases


@pytest.mark.parametrize(("name", "params"), settings(), ids=lambda value: value if isinstance(value, str) else "")
def test_the_grid_reduced_like_the_tokens_gives_the_tokens_back(name, params):
    reduction = build_reducer(name, budget=BUDGET, **params)(VideoTokens(GRID, **EVIDENCE))
    merges = bool((reduction.num_patches > 1).any())
    if merges and reduction.members is None:  # only a merge that puts a patch into several tokens may say none
        assert reduction.info.get("shared_patches", 0) > 0, f"{name} merges tokens but does not say their members"
        assert params.get("variant") != "corrected"
        with pytest.raises(ValueError, match="does not say their members.*patches feed several tokens"):
            reduce_like(reduction, GRID)
        return
    like = reduce_like(reduction, GRID)
    if merges:
        assert torch.allclose(like, reduction.tokens, rtol=1e-5, atol=1e-5)
    else:  # a selection: the patches at the boxes, unchanged, with members or without
        assert torch.equal(like, reduction.tokens)
