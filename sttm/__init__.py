"""sttm-bench: STTM and the reducer protocol shared by every token-reduction method."""

from sttm.api import (
    Reducer,
    Reduction,
    Stage,
    VideoTokens,
    available_reducers,
    build_reducer,
    check_budget,
    reducer_class,
    register,
)

__all__ = [
    "Reducer",
    "Reduction",
    "Stage",
    "VideoTokens",
    "available_reducers",
    "build_reducer",
    "check_budget",
    "register",
    "reducer_class",
]
