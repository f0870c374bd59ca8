"""lmms-eval's built-in video tasks, run offline (the ``lmms_eval`` benchmark kind).

Each task reads its questions through ``datasets`` from the cache under ``HF_HOME/datasets`` and its videos from a
folder under ``HF_HOME`` (read from the task's YAML and utils in ``lmms_eval/tasks``). When that folder is missing,
lmms-eval downloads the dataset from the hub; Video-MME, MLVU and EgoSchema ``sys.exit`` on a missing video (MVBench
logs it and gives the path, which then fails to decode).
``check_builtin_data`` fails before any model loads, naming the missing folder; ``use_hf_home`` points lmms-eval
at the data; ``is_correct`` reads whether a logged sample was answered right, and ``reply_is_correct`` scores a
reply as lmms-eval will.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def same(metric: str, predicted: str, truth: str) -> Callable[[dict], bool]:
    """Correct when the sample's ``metric`` entry holds equal ``predicted`` and ``truth`` values, compared as
    strings as the tasks' own aggregations do."""
    return lambda sample: str(sample[metric][predicted]) == str(sample[metric][truth])


@dataclass(frozen=True)
class BuiltinTask:
    dataset: str  # the task's dataset_path: a hub dataset, read from the `datasets` cache
    config: str | None  # its dataset_name
    videos: str  # the folder, relative to HF_HOME, its doc_to_visual reads
    is_correct: Callable[[dict], bool]  # from the sample lmms-eval logs (the task's process_results output)
    needs: tuple[str, ...] = ()  # modules its utils import that lmms-eval does not install by default


BUILTIN_TASKS = {
    "videomme": BuiltinTask(
        "lmms-eval/Video-MME", None, "videomme/data", same("videomme_perception_score", "pred_answer", "answer")
    ),
    "longvideobench_val_v": BuiltinTask(
        "longvideobench/LongVideoBench",
        None,
        "datasets/longvideobench/videos",
        same("lvb_acc", "parsed_pred", "answer"),
        needs=("decord",),
    ),
    "mlvu_dev": BuiltinTask("sy1998/MLVU_dev", None, "mlvu", same("mlvu_percetion_score", "pred_answer", "answer")),
    "nextqa_mc_test": BuiltinTask(
        "lmms-eval/NExTQA", "MC", "nextqa/NExTVideo", lambda sample: bool(sample["exact_match"])
    ),
    "egoschema_subset": BuiltinTask(
        "lmms-eval/egoschema", "Subset", "egoschema/videos", same("score", "pred", "ground_truth")
    ),
}
#: MVBench's tasks: lmms-eval's `mvbench` group, one config of OpenGVLab/MVBench each, all videos in one download
MVBENCH_TASKS = (
    "action_sequence", "moving_count", "action_prediction", "episodic_reasoning", "action_antonym", "action_count",
    "scene_transition", "object_shuffle", "object_existence", "fine_grained_pose", "unexpected_action",
    "moving_direction", "state_change", "object_interaction", "character_order", "action_localization",
    "counterfactual_inference", "fine_grained_action", "moving_attribute", "egocentric_navigation",
)  # fmt: skip
BUILTIN_TASKS |= {
    f"mvbench_{name}": BuiltinTask(
        "OpenGVLab/MVBench", name, "mvbench_video", lambda sample: bool(sample["mvbench_accuracy"]["score"])
    )
    for name in MVBENCH_TASKS
}


def is_correct(task: str, sample: dict) -> bool:
    """Whether lmms-eval's logged ``sample`` of ``task`` was answered right: by a built-in task's own scoring, by
    the ``accuracy`` our local tasks report otherwise."""
    return BUILTIN_TASKS[task].is_correct(sample) if task in BUILTIN_TASKS else bool(sample["accuracy"])


def reply_is_correct(task, name: str, doc: dict, reply: str) -> bool | None:
    """Whether ``reply`` answers ``doc`` right, scored as lmms-eval scores it: the ``process_results`` function of
    ``task`` (lmms-eval's task object, named ``name``) on the stripped reply, read by ``is_correct``; None for a task
    whose samples ``is_correct`` cannot read (neither one of ``BUILTIN_TASKS`` nor one reporting ``accuracy``) or
    that filters its replies before scoring (``filter_list``)."""
    score = task.config.process_results
    metrics = {metric["metric"] for metric in task.config.metric_list or []}
    if not callable(score) or task.config.filter_list or (name not in BUILTIN_TASKS and "accuracy" not in metrics):
        return None
    return is_correct(name, score(doc, [reply.strip()]))


def dataset_cache(task: BuiltinTask, hf_home: Path) -> Path:
    """Where ``datasets`` keeps the task's questions once loaded: ``<namespace>___<name>[/<config>]``."""
    from datasets.naming import camelcase_to_snakecase  # datasets reads the offline flags on import: after run()

    namespace, name = task.dataset.split("/")
    folder = hf_home / "datasets" / f"{namespace}___{camelcase_to_snakecase(name)}"
    return folder / task.config if task.config else folder


def check_builtin_data(tasks: list[str], hf_home: Path) -> None:
    """Fail, naming what is missing and how to get it, unless each task's code can be imported and its dataset
    cache and video folder lie under ``hf_home``: lmms-eval would otherwise try the hub."""
    for name in tasks:
        if name not in BUILTIN_TASKS:
            raise ValueError(
                f"lmms-eval task {name!r} has no offline data check; choose from: {', '.join(BUILTIN_TASKS)}"
            )
        task = BUILTIN_TASKS[name]
        for module in task.needs:
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"{name}: lmms-eval's code for it imports {module}: pip install {module}")
        for what, folder in (("dataset cache", dataset_cache(task, hf_home)), ("video folder", hf_home / task.videos)):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{name}: {what} not found: {folder}. On a machine with internet (after `huggingface-cli login` "
                    f'where {task.dataset} is gated) fill it with: HF_HOME={hf_home} python -c "from lmms_eval.tasks '
                    f"import TaskManager, get_task_dict; get_task_dict(['{name}'], TaskManager())\" (this downloads "
                    f"{task.dataset} and unpacks its videos), then copy {hf_home} here, or set hf_home to a copy of it."
                )


def use_hf_home(hf_home: Path) -> None:
    """Point lmms-eval's built-in tasks at ``hf_home``. Their utils read HF_HOME when first imported and lmms-eval
    resolves its datasets cache once, so this holds for the rest of the process."""
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["LMMS_EVAL_DATASETS_CACHE"] = str(hf_home / "datasets")
