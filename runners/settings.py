"""The evaluate config and its reducer settings: the config composed outside a Hydra app, and how a setting (a node
of ``reducers``: a registered reducer's ``name``, its ``params``, optionally the ``paper``'s table) becomes the
parameters and the reducer of a cell, as the runner and the lmms-eval model both build them."""

from __future__ import annotations

import inspect
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from runners.records import FULL_TOKENS
from sttm.api import Reducer, Stage, build_reducer, reducer_class
from sttm.paper import paper_params

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SETTING_KEYS = {"name", "params", "paper"}


def compose_evaluate(*overrides: str) -> DictConfig:
    """The evaluate config with these overrides, composed outside a Hydra app (by tools and tests)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="evaluate", overrides=list(overrides))


def reducer_settings(cfg: DictConfig) -> dict[str, DictConfig]:
    """The run's reducer settings by key (``cfg.reducers``, absent after ``reducers=[]``), each a config node with
    ``name`` (a registered reducer), optional ``params`` and optional ``paper`` (a table of tuned settings); raises
    ValueError naming the setting that is not."""
    settings = cfg.get("reducers") or OmegaConf.create({})
    if not isinstance(settings, DictConfig):
        raise ValueError(f"reducers must map setting names to reducer configs, got {settings!r}")
    if isinstance(settings.get("name"), str):
        raise ValueError(
            f"reducers: the config of reducer {settings.name!r} was composed at `reducers` itself; its first line "
            "must be `# @package reducers.<its file name>`"
        )
    for key, node in settings.items():
        if key == FULL_TOKENS:
            raise ValueError(f"reducers.{key}: {FULL_TOKENS!r} names the full-token cells, which always run")
        if not isinstance(node, DictConfig) or "name" not in node:
            raise ValueError(f"reducers.{key} must be a reducer config with a `name` (and `params`), got {node!r}")
        unknown = set(node) - SETTING_KEYS
        if unknown:
            raise ValueError(
                f"reducers.{key}: unknown keys {sorted(unknown)}; a reducer config has {sorted(SETTING_KEYS)}"
            )
        try:
            reducer_class(node.name)
        except ValueError as error:
            raise ValueError(f"reducers.{key}.name: {error}") from error
    return dict(settings.items())


def setting_params(setting: DictConfig, model: DictConfig, budget: float | None, benchmark: str | None = None) -> dict:
    """What a reducer setting (a node of ``reducers``) builds its reducer with in a cell of ``benchmark`` at
    ``budget``: its ``params``, then the tuned settings of the cell's model, benchmark and budget where it holds the
    paper's table (``paper``: ``sttm.paper.paper_params``) or else the budget (where there is one); a reducer acting
    in the LLM without a layer of its own takes the model's ``llm_layer`` (the STTM paper: 2 for 7B models, 0 for
    72B)."""
    params = OmegaConf.to_container(setting.params, resolve=True) if setting.get("params") else {}
    if "budget" in params:
        raise ValueError("params.budget: the budget is the run's `budget`, not a reducer parameter")
    if "paper" in setting:
        if budget is None or benchmark is None:
            raise ValueError(
                "the paper's settings are looked up per model, benchmark and budget: give a benchmark and a budget"
            )
        params |= paper_params(setting.paper, model.name, benchmark, budget)
    elif budget is not None:
        params["budget"] = budget
    if reducer_class(setting.name).stage is Stage.LLM_LAYER and "layer" not in params:
        params["layer"] = model.llm_layer
    return params


def reducer_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters of the reducer registered as ``name``, by name."""
    parameters = inspect.signature(reducer_class(name).__init__).parameters
    return {key: parameter for key, parameter in parameters.items() if key != "self"}


def setting_reducer(
    setting: DictConfig,
    model: DictConfig,
    budget: float | None,
    benchmark: str | None = None,
    overrides: dict | None = None,
) -> tuple[dict, Reducer]:
    """The parameters a reducer setting builds its reducer with in a cell (``setting_params``, then ``overrides``:
    a run's seed), and that reducer: how the runner and the lmms-eval model both build one. Without a budget a
    setting reaches its kept fraction another way (STTM's thresholds: a reducer whose budget defaults to None checks
    that itself) or fails; a parameter the reducer does not take fails naming the ones it does."""
    params = setting_params(setting, model, budget, benchmark) | (overrides or {})
    known = reducer_parameters(setting.name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"reducer {setting.name!r} takes no parameter {', '.join(map(repr, unknown))}; its parameters: "
            f"{', '.join(known)}"
        )
    if "budget" in known and "budget" not in params and known["budget"].default is not None:
        raise ValueError(
            f"reducer {setting.name!r} needs a budget (the kept fraction of visual tokens, in (0, 1]): without one it "
            "would run at a default of its own"
        )
    return params, build_reducer(setting.name, **params)
