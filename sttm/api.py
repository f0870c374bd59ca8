"""The protocol every token reducer speaks, and the registry that finds reducers by name.

A reducer receives the visual tokens of one video as a ``[T, H, W, C]`` grid and returns the tokens it keeps,
``[N, C]``, each with the box of grid patches it stands for. It declares the stage of the model where it acts
and whether it needs the question. ``reduce()`` is pure: same input, same output, no state kept between calls.

Budgets mean one thing everywhere: the kept fraction of the visual tokens at the point where the reducer acts.
Each method maps a budget to its own knob; every :class:`Reduction` carries the ratio it achieved.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import numbers
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

from sttm.clock import timed


class Stage(str, enum.Enum):
    """Where in a video LLM a reducer acts."""

    VISION = "vision"  # inside the vision tower (needs its attention)
    PRE_LLM = "pre_llm"  # after projector and pooling, before the first decoder layer
    LLM_LAYER = "llm_layer"  # on the hidden states at the input of decoder layer k, during prefill
    DECODE = "decode"  # on the KV cache, during generation


def check_budget(budget: float) -> float:
    """Return ``budget`` as a float, or raise ValueError unless it is a number in (0, 1] (not a bool or a string)."""
    if isinstance(budget, (bool, str)) or not isinstance(budget, numbers.Real):
        raise ValueError(f"budget must be a number in (0, 1] (the kept fraction of visual tokens), got {budget!r}")
    budget = float(budget)
    if not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must lie in (0, 1] (the kept fraction of visual tokens), got {budget}")
    return budget


NON_FINITE_GRID = "grid holds non-finite values (NaN or inf)"


def all_finite(values: torch.Tensor) -> torch.Tensor:
    """0-d bool: whether ``values`` (non-empty) hold no NaN or inf, in one reduction (min and max carry both)."""
    return torch.isfinite(torch.stack(values.aminmax())).all()


@dataclass(frozen=True)
class VideoTokens:
    """The visual tokens of one video, and what a method may need besides them.

    grid:        [T, H, W, C] visual tokens (frames, grid rows, grid columns, channels), any float dtype/device.
    importance:  optional [T, H, W] per-token score (e.g. attention received), for methods that rank tokens.
    keys:        optional [T, H, W, K] attention keys of the tokens, for methods that compare tokens by them.
    question:    the question text, for query-aware methods.
    outer:       for a stage inside the LLM that follows another (``Reducer.inner_stage``): the other stage's
                 reduction of this video, whose kept tokens, in its order, are the grid (1×1×N).

    Malformed input raises ValueError here; a grid holding NaN or inf does so here on the CPU, and elsewhere when a
    reducer is called with it (``Reducer.__call__``).
    """

    grid: torch.Tensor
    importance: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    question: str | None = None
    outer: Reduction | None = None

    def __post_init__(self) -> None:
        grid = self.grid
        if not isinstance(grid, torch.Tensor):
            raise ValueError(f"grid must be a torch.Tensor, got {type(grid).__name__}")
        if grid.dim() != 4:
            raise ValueError(
                f"grid must have rank 4 laid out as [T, H, W, C] (frames, rows, columns, channels), "
                f"got shape {tuple(grid.shape)}"
            )
        if not grid.is_floating_point():
            raise ValueError(f"grid must be a floating-point tensor, got dtype {grid.dtype}")
        if grid.numel() == 0:
            raise ValueError(f"grid is empty: shape {tuple(grid.shape)} (a video needs at least one frame)")
        # elsewhere than on the CPU, Reducer.__call__ reads this check after the reduction, so that the host does
        # not wait here for the work queued before the grid
        if grid.device.type == "cpu" and not all_finite(grid):
            raise ValueError(NON_FINITE_GRID)
        for name in ("importance", "keys"):
            evidence = getattr(self, name)
            if evidence is not None and evidence.device.type == "cpu" and evidence.numel() and not all_finite(evidence):
                raise ValueError(f"{name} holds non-finite values (NaN or inf)")
        if self.importance is not None and tuple(self.importance.shape) != tuple(grid.shape[:3]):
            raise ValueError(
                f"importance must have shape [T, H, W] = {tuple(grid.shape[:3])}, got {tuple(self.importance.shape)}"
            )
        if self.keys is not None and (self.keys.dim() != 4 or tuple(self.keys.shape[:3]) != tuple(grid.shape[:3])):
            raise ValueError(
                f"keys must have shape [T, H, W, K] with [T, H, W] = {tuple(grid.shape[:3])}, "
                f"got {tuple(self.keys.shape)}"
            )
        if self.outer is not None and self.outer.num_kept != self.num_tokens:
            raise ValueError(
                f"the outer stage kept {self.outer.num_kept} tokens but the grid holds {self.num_tokens}: an inner "
                f"stage's grid is the tokens the outer one kept"
            )

    @property
    def num_tokens(self) -> int:
        """Visual tokens before reduction: T·H·W."""
        t, h, w, _ = self.grid.shape
        return t * h * w


@dataclass(frozen=True)
class Reduction:
    """What a reducer keeps.

    tokens:       [N, C] kept tokens, in the order they enter the model.
    boxes:        [N, 5] int64 ``(t, y0, x0, y1, x1)`` in grid coordinates, ends exclusive: the patches a token
                  stands for (after temporal merging, the box of its earliest member).
    num_patches:  [N] int64 grid patches merged into each token; they sum to T·H·W for merging methods and to
                  N for dropping methods (a dropped patch is in no token).
    num_input:    T·H·W, the visual tokens the reducer received.
    reducer_ms:   the method's own wall time (CUDA events on GPU), filled in by ``Reducer.__call__``.
    info:         method-specific facts worth recording (e.g. the thresholds a budget search chose).
    members:      optional [T·H·W] int64, for a merging method: the kept token each grid patch went into, in
                  flat grid order (−1: into none). None: each token is the patch at its box, unchanged (a
                  dropping method; ``num_patches`` all 1).
    member_weights: optional [T·H·W] float, each patch's weight in its token (a token is the weighted sum of its
                  members); None: a token is the plain mean of its members.

    ``members`` lets the same merge act on other values of the same patches (``reduce_like``: Qwen3-VL's
    DeepStack features of the visual tokens).
    """

    tokens: torch.Tensor
    boxes: torch.Tensor
    num_patches: torch.Tensor
    num_input: int
    reducer_ms: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)
    members: torch.Tensor | None = None
    member_weights: torch.Tensor | None = None

    @property
    def num_kept(self) -> int:
        return self.tokens.shape[0]

    @property
    def kept_ratio(self) -> float:
        """The achieved budget: kept tokens over the tokens received."""
        return self.num_kept / self.num_input


def reduce_like(reduction: Reduction, values: torch.Tensor) -> torch.Tensor:
    """Other values of the reduced grid's patches, [T, H, W, D], reduced as ``reduction`` reduced the grid: [N, D],
    row i for kept token i. A merged token's values are the same weighted mean of its members' (accumulated in
    float32, or float64 for float64 values); a kept patch's are its own, unchanged.

    Raises ValueError for a merge that does not say its members.
    """
    _, height, width, _ = values.shape
    flat = values.reshape(-1, values.shape[-1])
    if len(flat) != reduction.num_input:
        raise ValueError(f"values of {len(flat)} patches for a reduction of {reduction.num_input} tokens")
    if reduction.members is None:
        if bool((reduction.num_patches != 1).any()):
            shared = reduction.info.get("shared_patches")
            why = f": {shared} patches feed several tokens, which one member per patch cannot say" if shared else ""
            raise ValueError(f"the reduction merges tokens but does not say their members (Reduction.members){why}")
        return flat[flat_positions(reduction.boxes.to(values.device), height, width)]
    members = reduction.members.to(values.device)
    inside = members >= 0
    token = members[inside]
    wide = torch.promote_types(values.dtype, torch.float32)
    if reduction.member_weights is None:
        counts = torch.zeros(reduction.num_kept, dtype=wide, device=values.device).index_add_(
            0, token, torch.ones_like(token, dtype=wide)
        )
        weights = 1 / counts[token]
    else:
        weights = reduction.member_weights.to(values.device, wide)[inside]
    sums = torch.zeros(reduction.num_kept, flat.shape[1], dtype=wide, device=values.device)
    return sums.index_add_(0, token, flat[inside].to(wide) * weights[:, None]).to(values.dtype)


def flat_positions(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N] flat grid index ``t·H·W + y0·W + x0`` of each box's top-left patch (boxes: [N, 5])."""
    return boxes[:, 0] * (height * width) + boxes[:, 1] * width + boxes[:, 2]


def patch_boxes(flat: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N] flat grid indices ``t·H·W + y·W + x`` -> [N, 5] one-patch boxes ``(t, y, x, y+1, x+1)``."""
    frame, rest = flat // (height * width), flat % (height * width)
    y, x = rest // width, rest % width
    return torch.stack([frame, y, x, y + 1, x + 1], dim=1)


def keep_subset(video: VideoTokens, kept: torch.Tensor, info: dict[str, Any] | None = None) -> Reduction:
    """The tokens at the flat grid indices ``kept`` [N], unchanged and in that order, each standing for its own
    patch: what a dropping method keeps."""
    _, h, w, c = video.grid.shape
    tokens = video.grid.reshape(-1, c)[kept]
    return Reduction(tokens, patch_boxes(kept, h, w), torch.ones_like(kept), video.num_tokens, info=info or {})


def keep_everything(video: VideoTokens) -> Reduction:
    """Every token kept unchanged, each standing for its own patch: any reducer's result at budget 1.0."""
    return keep_subset(video, torch.arange(video.num_tokens, device=video.grid.device))


class Reducer(ABC):
    """Base of every token reducer: a pure ``reduce()`` plus the stage it acts at.

    Subclasses set ``name``, ``stage`` and ``query_aware``, take their own knobs and a ``budget`` in their
    constructor, and implement ``reduce``. Call the instance to get the reduction with its timing.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    query_aware: ClassVar[bool] = False

    #: decoder layer k for ``Stage.LLM_LAYER`` / ``Stage.DECODE`` methods; None for the others.
    layer: int | None = None

    #: what the reduction point must compute besides the grid: "importance" (at ``llm_layer``: the attention paid
    #: to each visual token at layer k, ``importance_queries`` says by whom; at ``vision``: the attention each patch
    #: receives in the vision tower) and "keys" (at ``vision``: the vision tower's attention keys), pooled to the grid.
    needs: ClassVar[frozenset[str]] = frozenset()

    #: at ``llm_layer``, how many layers before k the "importance" attention is read (0: at layer k itself).
    importance_lag: ClassVar[int] = 0

    #: at ``llm_layer``, whose attention "importance" is: "last_token", the last prompt token's (rotary embedding
    #: applied, mean over heads: FastV's); "after_video", the most any prompt token after the video pays (over heads
    #: and those tokens, without rotary embedding or causal mask: PruneVid's stage 2).
    importance_queries: ClassVar[str] = "last_token"

    @abstractmethod
    def reduce(self, video: VideoTokens) -> Reduction:
        """Return the kept tokens of ``video``."""

    def inner_stage(self) -> Reducer | None:
        """The method's stage inside the LLM (``Stage.LLM_LAYER``, at its own ``layer``) that acts on the tokens this
        one keeps, or None: most methods have one stage."""
        return None

    def __call__(self, video: VideoTokens) -> Reduction:
        if self.query_aware and video.question is None and video.importance is None:
            raise ValueError(f"reducer {self.name!r} is query-aware: give it the question or the importance")
        missing = sorted(need for need in self.needs if getattr(video, need) is None)
        if missing:
            raise ValueError(f"reducer {self.name!r} needs {' and '.join(missing)} besides the grid")
        finite = None if video.grid.device.type == "cpu" else all_finite(video.grid)
        result, elapsed = timed(lambda: self.reduce(video), video.grid.device)
        if finite is not None and not finite:
            raise ValueError(NON_FINITE_GRID)
        return replace(result, reducer_ms=elapsed)


class RankedInLLM(Reducer):
    """Base of the reducers that act at decoder layer ``layer`` on the visual tokens ranked by the attention the
    prompt pays them at layer ``layer − 1`` (``importance``; the last prompt token's unless ``importance_queries``
    says otherwise): FastV, FrameFusion and the stages inside the LLM of two-stage methods. Query-aware: the ranking
    depends on the question."""

    stage = Stage.LLM_LAYER
    query_aware = True
    needs = frozenset({"importance"})
    importance_lag = 1

    def __init__(self, budget: float, layer: int) -> None:
        self.budget = check_budget(budget)
        if layer < 1:
            raise ValueError(
                f"{type(self).__name__} ranks by the attention of the layer before its own: layer must be >= 1, "
                f"got {layer}"
            )
        self.layer = layer


_REGISTRY: dict[str, type[Reducer]] = {}
#: the entry-point group through which packages make their reducers findable (this project's ``sttm.reducer`` and
#: ``baselines``: pyproject.toml); each entry names a module, or a package whose modules are all imported
ENTRY_POINT_GROUP = "sttm_bench.reducers"
_discovered = False


def register(name: str):
    """Class decorator: make a reducer findable as ``name`` (``name: NAME`` in a reducer config)."""

    def decorate(cls: type[Reducer]) -> type[Reducer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"reducer name {name!r} is taken by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    """Import, once, what the entry points of ``ENTRY_POINT_GROUP`` name (a package: each of its modules), so that
    their ``@register`` lines run."""
    global _discovered
    if _discovered:
        return
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if hasattr(loaded, "__path__"):
            for module in pkgutil.iter_modules(loaded.__path__, prefix=f"{loaded.__name__}."):
                importlib.import_module(module.name)
    _discovered = True


def available_reducers() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def reducer_class(name: str) -> type[Reducer]:
    _discover()
    if name not in _REGISTRY:
        if not importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            raise ValueError(
                f"unknown reducer {name!r}: no package registers reducers in the entry-point group "
                f"{ENTRY_POINT_GROUP!r}; install the project (pip install -e .) to register its own"
            )
        raise ValueError(f"unknown reducer {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_reducer(name: str, **params: Any) -> Reducer:
    """Instantiate the reducer registered as ``name`` with its parameters (a budget among them)."""
    return reducer_class(name)(**params)
