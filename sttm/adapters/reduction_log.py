"""What a reduction point records: the reductions of each reducing forward, and the KV-pruning steps."""

from __future__ import annotations

from dataclasses import dataclass, field

from sttm.api import Reduction


@dataclass(frozen=True)
class ReducedCall:
    """One reducing forward: a reduction per batch row."""

    reductions: tuple[Reduction, ...]

    @property
    def num_input(self) -> int:
        """Visual tokens before reduction, over the batch."""
        return sum(reduction.num_input for reduction in self.reductions)

    @property
    def num_kept(self) -> int:
        return sum(reduction.num_kept for reduction in self.reductions)

    @property
    def kept_ratio(self) -> float:
        return self.num_kept / self.num_input

    @property
    def reducer_ms(self) -> float:
        return sum(reduction.reducer_ms for reduction in self.reductions)


@dataclass
class ReductionLog:
    """What the reducer did at each reducing forward inside the context, and each decoding step of KV pruning
    (:class:`sttm.adapters.kv_pruning.PruningStep`)."""

    calls: list[ReducedCall] = field(default_factory=list)
    pruning_steps: list = field(default_factory=list)
    #: the log of the stage inside the LLM that follows, for a reducer with one (``Reducer.inner_stage``)
    inner: ReductionLog | None = None

    @property
    def last(self) -> ReducedCall:
        return self.calls[-1]
