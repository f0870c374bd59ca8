"""An lmms-eval model: a LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint with a token reducer at its stage,
timed per request.

Registered for lmms-eval as ``sttm_bench`` (entry point ``lmms_eval.models``). Its ``--model_args`` describe a cell of
the runner (``runners.evaluate``), composed from the same configs and built the same way:

    lmms-eval --model sttm_bench --model_args model=tiny_llava_onevision,reducer=sttm,budget=0.5,variant=corrected ...

``model`` names a model config (``configs/model``; the runner's default where absent) or a YAML file, and its keys
(``MODEL_CONFIG_ARGS``: the checkpoint, dtype, device, frame sampling, ``max_new_tokens``, ``llm_layer``) can be
set one by one; ``reducer`` names a reducer config (``configs/reducers``, e.g. ``sttm_paper``) or a registered
reducer, and every other key is one of its parameters; ``budget`` (required unless the setting reaches its kept
fraction another way), ``benchmark`` (for the paper's per-benchmark settings), ``frame_cap``, ``positions``,
``kv_reuse`` and ``record_dir`` complete the cell (``OWN_ARGS``). An unknown key fails naming the known ones. Or
build the model from a model config (``from_model_config``) and pass it to ``lmms_eval.evaluator.simple_evaluate``.

Each request: the video is decoded and sampled as the STTM authors do (``sttm.adapters.video``; an odd frame count
padded to even for Qwen), or, without a ``target_fps``, as ``max_frames`` frames spread uniformly, the question goes
through the processor's chat template (after ``system_prompt`` where given; Qwen: each frame's pixels within
``min_pixels``..``max_pixels`` where given), and greedy generation runs
inside the reducer's reduction point (``sttm.adapters.points.reduction_point``) as the request's generation
arguments ask (the task's, updated by ``--gen_kwargs``: ``generation``). With ``kv_reuse`` the questions about one
video share one prefill of its prefix (``sttm.adapters.reuse``).

With ``record_dir`` every question's record (prediction, its correctness by the task's own scoring, tokens before
and after, timings, or the error of an unreadable video) is appended to the process's answers file there
(``runners.records.answers_file``), and a question already recorded is answered from its record instead of being
run again, so that an interrupted evaluation resumes where it stopped; the runner then writes the cell's
``records.jsonl`` from them. Under ``torchrun`` (lmms-eval's data parallelism) each process holds one model copy and
answers its share of the questions.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from runners.generation import Generation, generation
from runners.records import FULL_TOKENS, QuestionRecord, append_answer, records_by_question
from runners.settings import CONFIGS, compose_evaluate, reducer_parameters, setting_reducer
from runners.tasks.builtin import reply_is_correct
from runners.video_cache import charged, group_inputs, video_features
from sttm.adapters.family import family_of, newlines_per_video, video_token_id
from sttm.adapters.flops import logged_tokens_per_layer, prefill_flops
from sttm.adapters.loading import load_model, video_inputs, video_question_prompt
from sttm.adapters.points import reduction_point
from sttm.adapters.reuse import check_kv_reuse, greedy_from_prefix, prefill_prefix
from sttm.adapters.timing import timed_generate
from sttm.adapters.video import VideoError
from sttm.api import Reducer, check_budget, reducer_class

#: the model_args that describe the cell itself; ``MODEL_CONFIG_ARGS`` set the model config's keys, and the others
#: are the reducer's parameters
OWN_ARGS = ("model", "reducer", "budget", "benchmark", "frame_cap", "positions", "kv_reuse", "record_dir",
            "batch_size", "max_batch_size")  # fmt: skip
MODEL_CONFIG_ARGS = ("pretrained", "dtype", "attn_implementation", "device", "device_map", "llm_layer", "target_fps",
                     "max_frames", "max_new_tokens")  # fmt: skip


def MANIFEST():  # the name the entry point gives
    """This model's registration with lmms-eval, which the entry point ``lmms_eval.models`` names and lmms-eval's
    registry calls when it loads: built then, as importing the registry here would load that entry point before
    this module is whole (lmms-eval's "circular import" warning)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="sttm_bench", simple_class_path="runners.lmms_model.ReducedVideoLLM")


def max_frames(model: Mapping, frame_cap: str = "default") -> int:
    """The most frames a model config samples from a video: its ``max_frames``, one number or one per frame cap
    (``default``; ``needle`` for the needle benchmarks)."""
    caps = model["max_frames"]
    if isinstance(caps, int):
        return caps
    if frame_cap not in caps:
        raise ValueError(f"frame_cap={frame_cap}: the model config's max_frames has {', '.join(caps)}")
    return int(caps[frame_cap])


def model_config(name_or_path: str | None) -> DictConfig:
    """A model config by name (``configs/model/NAME.yaml``) or a YAML file's path, composed with its defaults list;
    None: the runner's default model config."""
    if name_or_path is None:
        return compose_evaluate("reducers=[]").model
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIGS / "model" / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(config.stem for config in (CONFIGS / "model").glob("*.yaml"))
        raise ValueError(f"model={name_or_path}: neither a YAML file nor a model config ({', '.join(names)})")
    with initialize_config_dir(config_dir=str(path.parent.resolve()), version_base="1.3"):
        return compose(config_name=path.stem)


def reducer_setting(name: str) -> dict:
    """A reducer setting as the runner composes it: a reducer config by name (``configs/reducers/NAME.yaml``) or,
    where there is none, the reducer registered as ``name`` with its own defaults."""
    if (CONFIGS / "reducers" / f"{name}.yaml").is_file():
        return OmegaConf.to_container(compose_evaluate(f"reducers=[{name}]").reducers[name], resolve=True)
    try:
        reducer_class(name)
    except ValueError as error:
        configs = sorted(config.stem for config in (CONFIGS / "reducers").glob("*.yaml"))
        raise ValueError(f"reducer={name}: not a reducer config ({', '.join(configs)}) and {error}") from error
    return {"name": name}


@dataclass(frozen=True)
class ModelArgs:
    """What ``--model_args`` describe: a model config, a reducer setting (the registered reducer, the parameters it is
    built with and the reducer; None for full tokens) and how the model runs (``ReducedVideoLLM.from_model_config``)."""

    model: DictConfig
    method: str | None
    params: dict
    reducer: Reducer | None
    frame_cap: str
    options: dict


def read_model_args(args: Mapping) -> ModelArgs:
    """``--model_args`` (parsed) as a cell of the runner: the model config with the keys given, and the reducer built
    by ``runners.settings.setting_reducer`` from its setting with the parameters given; raises ValueError naming an
    unknown key (and the known ones), a reducer without a budget and any bad value."""
    args = dict(args)
    model = model_config(args.pop("model", None))
    key = args.pop("reducer", FULL_TOKENS)
    budget = args.pop("budget", None)
    benchmark = args.pop("benchmark", None)
    frame_cap = args.pop("frame_cap", "default")
    options = {name: args.pop(name) for name in ("positions", "kv_reuse", "record_dir", "batch_size", "max_batch_size")
               if name in args}  # fmt: skip
    if not isinstance(options.get("kv_reuse", False), bool):
        raise ValueError(f"kv_reuse must be true or false, got {options['kv_reuse']!r}")
    for name in MODEL_CONFIG_ARGS:
        if name in args:
            model[name] = args.pop(name)
    max_frames(model, frame_cap)  # fails unless the model config has that frame cap
    setting = None if key == FULL_TOKENS else reducer_setting(key)
    known = [] if setting is None else [name for name in reducer_parameters(setting["name"]) if name != "budget"]
    unknown = sorted(set(args) - set(known))
    if unknown:
        parameters = f"and the parameters of reducer {setting['name']!r}: {', '.join(known)}" if setting else (
            "and, with a reducer=, its parameters")  # fmt: skip
        raise ValueError(
            f"unknown model_args {', '.join(unknown)}; sttm_bench takes {', '.join(OWN_ARGS)}, the model config's "
            f"{', '.join(MODEL_CONFIG_ARGS)} {parameters}"
        )
    if setting is None:
        if budget is not None or benchmark is not None:
            raise ValueError(
                "budget and benchmark set a reducer's cell: give a reducer= (full tokens keep every token)"
            )
        return ModelArgs(model, None, {}, None, frame_cap, options)
    if benchmark is not None and "paper" not in setting:
        raise ValueError(f"benchmark= picks a paper setting's thresholds; reducer={key} has none (sttm_paper has)")
    setting["params"] = setting.get("params", {}) | args
    budget = None if budget is None else check_budget(budget)
    params, reducer = setting_reducer(OmegaConf.create(setting), model, budget, benchmark)
    return ModelArgs(model, setting["name"], params, reducer, frame_cap, options)


def task_of(doc_to_visual):
    """The lmms-eval task a request comes from: its ``doc_to_visual`` is a method of the task (None otherwise)."""
    return getattr(doc_to_visual, "__self__", None)


@dataclass(frozen=True)
class Question:
    """One pending request: its place among the requests, text, ids and video (a path, or why there is none)."""

    index: int
    text: str
    task: str
    doc_id: int
    answer: str
    video: str | VideoError
    generation: Generation
    doc: dict
    scorer: object | None  # the lmms-eval task whose scoring tells a right answer

    def correct(self, prediction: str) -> bool | None:
        if self.scorer is None:
            return None
        try:
            return reply_is_correct(self.scorer, self.task, self.doc, prediction)
        except Exception:  # the answer is still recorded; lmms-eval's own scoring of it fails next, and says why
            return None

    def empty_record(self) -> QuestionRecord:
        return QuestionRecord(
            task=self.task, doc_id=self.doc_id, correct=None, prediction="", answer=self.answer,
            visual_tokens_before=0, visual_tokens_after=0, video=self.video if isinstance(self.video, str) else None,
        )  # fmt: skip


def video_path(doc: dict, doc_to_visual) -> str | VideoError:
    """The document's video, or the error that stands for it: lmms-eval's built-in tasks exit (or raise) on a missing
    video."""
    try:
        return str(doc_to_visual(doc)[0])
    except SystemExit as error:
        return VideoError(f"the task's doc_to_visual exited ({error.code}): video missing")
    except FileNotFoundError as error:  # NExT-QA's raises instead
        return VideoError(f"video not found: {error}")


def group_by_video(questions: list[Question]) -> list[list[Question]]:
    """Questions about the same video together, in order of first appearance (errors stay alone)."""
    groups: dict[object, list[Question]] = {}
    for question in questions:
        key = question.video if isinstance(question.video, str) else id(question)
        groups.setdefault(key, []).append(question)
    return list(groups.values())


class ReducedVideoLLM(lmms):
    is_simple = True
    video_cache = None  # a sweep's runners.video_cache.VideoCache, which the runner sets; None: nothing is kept

    def __init__(
        self,
        pretrained: str,
        *,
        dtype: str,
        attn_implementation: str,
        device: str,
        target_fps: float | None,
        max_frames: int,
        max_new_tokens: int,
        device_map: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system_prompt: str | None = None,
        reducer: Reducer | None = None,
        positions: str = "original",
        kv_reuse: bool = False,
        record_dir: str | Path | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        channels_last_pooling: bool = True,
    ) -> None:
        """The checkpoint at ``pretrained`` as a model config describes it (``from_model_config``); ``max_new_tokens``
        where a request sets none."""
        super().__init__()
        if batch_size not in (None, 1, "1"):
            raise ValueError(
                f"sttm_bench runs one request at a time (as every reducer assumes), got batch_size={batch_size}"
            )
        self.reducer = reducer
        self.positions = positions
        self.kv_reuse = kv_reuse
        check_kv_reuse(self.kv_reuse, reducer)
        self.target_fps = None if target_fps is None else float(target_fps)
        self.max_frames = int(max_frames)
        if (min_pixels is None) != (max_pixels is None):
            raise ValueError(f"give both pixel bounds or neither, got min_pixels={min_pixels}, max_pixels={max_pixels}")
        self.pixels = None if min_pixels is None else (int(min_pixels), int(max_pixels))
        self.system_prompt = system_prompt
        self.max_new_tokens = int(max_new_tokens)
        self.record_dir = None if record_dir is None else Path(record_dir)
        if device == "cuda" and int(os.environ.get("WORLD_SIZE", 1)) > 1:  # one model copy per data-parallel process
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        self.model, self.processor = load_model(
            pretrained, dtype, attn_implementation, device_map or device, channels_last_pooling=channels_last_pooling
        )
        self.device = self.model.device

    @classmethod
    def from_model_config(cls, model: Mapping, frame_cap: str = "default", **options) -> ReducedVideoLLM:
        """The model a model config (``configs/model``) describes, sampling at most its ``max_frames`` of
        ``frame_cap``; ``options``: ``reducer``, ``positions``, ``kv_reuse``, ``record_dir`` and the batch sizes."""
        return cls(
            model["pretrained"], dtype=model["dtype"], attn_implementation=model["attn_implementation"],
            device=model["device"], device_map=model["device_map"], target_fps=model.get("target_fps"),
            max_frames=max_frames(model, frame_cap), max_new_tokens=model["max_new_tokens"],
            min_pixels=model.get("min_pixels"), max_pixels=model.get("max_pixels"),
            system_prompt=model.get("system_prompt"),
            channels_last_pooling=model.get("channels_last_pooling", True), **options,
        )  # fmt: skip

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ReducedVideoLLM:
        """lmms-eval's way in: ``--model_args`` (``read_model_args``), with ``--device`` and ``--batch_size``. A bad
        argument ends the process with status 1 and the message: lmms-eval's command line logs an exception raised
        here and exits 0."""
        args = simple_parse_args_string(arg_string)
        args |= {name: value for name, value in (additional_config or {}).items() if value is not None}
        try:
            cell = read_model_args(args)
        except (TypeError, ValueError) as error:
            raise SystemExit(f"sttm_bench --model_args: {error}") from error
        return cls.from_model_config(cell.model, cell.frame_cap, reducer=cell.reducer, **cell.options)

    def clean(self) -> None:
        """Keep the model: lmms-eval's default deletes every module attribute after an evaluation."""

    def generate_until(self, requests) -> list[str]:
        done = {} if self.record_dir is None else records_by_question(self.record_dir)
        replies: dict[int, str] = {}
        pending = []
        for index, request in enumerate(requests):
            question, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            settings = generation(gen_kwargs, self.max_new_tokens)  # every request checked before any work
            previous = done.get((task, doc_id))
            if previous is not None:
                replies[index] = previous["prediction"]
                continue
            doc = self.task_dict[task][split][doc_id]
            pending.append(
                Question(
                    index,
                    question,
                    task,
                    doc_id,
                    str(doc.get("answer", "")),
                    video_path(doc, doc_to_visual),
                    settings,
                    doc,
                    task_of(doc_to_visual),
                )  # fmt: skip
            )
        with tqdm(total=len(pending), desc="questions", unit="q") as progress:
            for group in group_by_video(pending) if self.kv_reuse else [[question] for question in pending]:
                for question, record in zip(group, self.answer_group(group), strict=True):
                    if not record.error:
                        record = dataclasses.replace(record, correct=question.correct(record.prediction))
                    if self.world_size > 1:
                        record = dataclasses.replace(record, extra=record.extra | {"rank": self.rank})
                    if self.record_dir is not None:
                        append_answer(self.record_dir, record, self.rank)
                    replies[question.index] = record.prediction
                    progress.update()
        return [replies[index] for index in range(len(requests))]

    def answer_group(self, group: list[Question]) -> list[QuestionRecord]:
        """Answer questions about one video (one question unless ``kv_reuse``); an unreadable video becomes each
        record's error and an empty answer."""
        bases = [question.empty_record() for question in group]
        path = group[0].video
        if isinstance(path, VideoError):
            return [dataclasses.replace(base, error=str(path)) for base in bases]
        try:
            inputs = [each.to(self.device) for each in group_inputs(self, [question.text for question in group], path)]
        except VideoError as error:
            return [dataclasses.replace(base, error=str(error)) for base in bases]
        placeholders = int((inputs[0]["input_ids"] == video_token_id(self.model)).sum())
        before = placeholders - newlines_per_video(self.model)
        with (
            torch.inference_mode(),
            video_features(self, path) as cached,
            reduction_point(self.model, self.reducer, self.positions) as log,
        ):
            if self.kv_reuse:
                return charged(self.answer_from_one_prefill(group, bases, inputs, log, before), cached)
            settings = group[0].generation
            output, timing = timed_generate(
                self.model, inputs[0], max_new_tokens=settings.max_new_tokens, do_sample=False
            )
        prompt_length = inputs[0]["input_ids"].shape[1]
        reduction = log.last if log.calls else None
        inner = log.inner.last if log.inner is not None and log.inner.calls else None
        reducer_ms = float("nan") if reduction is None else reduction.reducer_ms + (inner.reducer_ms if inner else 0.0)
        # a method that also acts inside the LLM: the ratio of visual tokens from its inner layer on, beside the
        # ratio before the LLM that achieved_ratio reports
        stages = {} if inner is None else {"inner_layer": self.reducer.inner_stage().layer,
                                           "inner_visual_tokens_after": inner.num_kept}  # fmt: skip
        text_config = self.model.config.text_config
        counts = logged_tokens_per_layer(text_config.num_hidden_layers, prompt_length, self.reducer, log)
        records = [
            dataclasses.replace(
                bases[0],
                prediction=settings.cut(self.processor.decode(output[0, prompt_length:], skip_special_tokens=True)),
                visual_tokens_before=before,
                visual_tokens_after=before if reduction is None else reduction.num_kept,
                vision_ms=timing.vision_ms,
                reducer_ms=reducer_ms,
                prefill_ms=timing.prefill_ms,
                ttft_ms=timing.ttft_ms,
                decode_ms_per_token=timing.decode_ms_per_token,
                peak_memory_mb=timing.peak_memory_mb,
                prefill_tokens=counts[-1],  # as the last layers prefill it
                prefill_flops=prefill_flops(text_config, counts),
                extra=stages,
            )
        ]
        return charged(records, cached)

    def answer_from_one_prefill(
        self, group: list[Question], bases: list[QuestionRecord], inputs: list[dict], log, before: int
    ) -> list[QuestionRecord]:
        """Prefill the video prefix once (vision, reducer and LLM); then each question prefills only its own
        tokens from a copy of the cache. The first question carries the prefix's time and tokens."""
        prefix = prefill_prefix(self.model, inputs[0])
        reduction = log.last if log.calls else None
        removed = 0 if reduction is None else before - reduction.num_kept
        records = []
        for position, (question, base, question_inputs) in enumerate(zip(group, bases, inputs, strict=True)):
            settings = question.generation
            answer = greedy_from_prefix(self.model, prefix, question_inputs["input_ids"], settings.max_new_tokens)
            shared = position == 0
            prefill_ms = answer.prefill_ms + (prefix.prefill_ms if shared else 0.0)
            question_tokens = question_inputs["input_ids"].shape[1] - prefix.length
            records.append(
                dataclasses.replace(
                    base,
                    prediction=settings.cut(self.processor.decode(answer.tokens[0], skip_special_tokens=True)),
                    visual_tokens_before=before,
                    visual_tokens_after=before if reduction is None else reduction.num_kept,
                    reducer_ms=float("nan") if reduction is None else (reduction.reducer_ms if shared else 0.0),
                    prefill_ms=prefill_ms,
                    ttft_ms=prefill_ms,
                    decode_ms_per_token=answer.decode_ms_per_token,
                    prefill_tokens=question_tokens + (prefix.length - removed if shared else 0),
                    extra={"kv_reuse": True, "questions_per_prefill": len(bases)},
                )
            )
        return records

    def model_inputs(self, question: str, video) -> dict:
        """The processor's inputs for one question about ``video`` (a ``SampledVideo``)."""
        text = video_question_prompt(self.processor, question, self.system_prompt)
        return video_inputs(self.processor, family_of(self.model), text, video, self.pixels)

    def loglikelihood(self, requests):
        raise NotImplementedError("sttm_bench evaluates generation tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("sttm_bench evaluates single-turn tasks only")
