"""An lmms-eval model: a LLaVA-OneVision, Qwen2-VL or Qwen2.5-VL checkpoint with a token reducer at its stage,
timed per request.

Registered for lmms-eval as ``sttm_bench`` (entry point ``lmms_eval.models``), so that
``--model sttm_bench --model_args pretrained=PATH,reducer=sttm,budget=0.5`` works; or pass an instance to
``lmms_eval.evaluator.simple_evaluate``.

Each request: the video is decoded and sampled as the STTM authors do (``sttm.adapters.video``; an odd frame count
padded to even for Qwen), the question goes through the processor's chat template, and greedy generation runs
inside the reducer's reduction point (``sttm.adapters.points.reduction_point``). With ``kv_reuse`` the questions
about one video share one prefill of its prefix (``sttm.adapters.reuse``).

With ``record_dir`` every question's record (prediction, tokens before and after, timings, or the error of an
unreadable video) is appended to the process's answers file there (``runners.records.answers_file``), and a question
already recorded is answered from its record instead of being run again, so that an interrupted evaluation resumes
where it stopped; the runner then writes the cell's ``records.jsonl`` from them. Under ``torchrun`` (lmms-eval's
data parallelism) each process holds one model copy and answers its share of the questions.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm
from transformers.video_utils import VideoMetadata

from runners.records import FULL_TOKENS, QuestionRecord, append_answer, records_by_question
from sttm.adapters.family import frames_in_pairs, newlines_per_video, takes_video_fps, video_token_id
from sttm.adapters.loading import load_model, video_question_prompt
from sttm.adapters.points import reduction_point
from sttm.adapters.reuse import check_kv_reuse, greedy_from_prefix, prefill_prefix
from sttm.adapters.timing import timed_generate
from sttm.adapters.video import VideoError, read_frames
from sttm.api import Reducer, build_reducer

MANIFEST = ModelManifest(model_id="sttm_bench", simple_class_path="runners.lmms_model.ReducedVideoLLM")


@dataclass(frozen=True)
class Question:
    """One pending request: its place among the requests, text, ids and video (a path, or why there is none)."""

    index: int
    text: str
    task: str
    doc_id: int
    answer: str
    video: str | VideoError

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

    def __init__(
        self,
        pretrained: str,
        reducer: str | Reducer | None = None,
        budget: float = 1.0,
        positions: str = "original",
        target_fps: float = 1.0,
        max_frames: int = 128,
        max_new_tokens: int = 16,
        record_dir: str | Path | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        device_map: str | None = None,
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
        kv_reuse: bool = False,
    ) -> None:
        super().__init__()
        if batch_size not in (None, 1, "1"):
            raise ValueError(
                f"sttm_bench runs one request at a time (as every reducer assumes), got batch_size={batch_size}"
            )
        if isinstance(reducer, str):
            reducer = None if reducer == FULL_TOKENS else build_reducer(reducer, budget=float(budget))
        self.reducer = reducer
        self.positions = positions
        self.kv_reuse = kv_reuse in (True, "true", "True", "1")
        check_kv_reuse(self.kv_reuse, reducer)
        self.target_fps, self.max_frames = float(target_fps), int(max_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.record_dir = None if record_dir is None else Path(record_dir)
        if device == "cuda" and int(os.environ.get("WORLD_SIZE", 1)) > 1:  # one model copy per data-parallel process
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
        self.model, self.processor = load_model(pretrained, dtype, attn_implementation, device_map or device)
        self.device = self.model.device

    def clean(self) -> None:
        """Keep the model: lmms-eval's default deletes every module attribute after an evaluation."""

    def generate_until(self, requests) -> list[str]:
        done = {} if self.record_dir is None else records_by_question(self.record_dir)
        replies: dict[int, str] = {}
        pending = []
        for index, request in enumerate(requests):
            question, _, doc_to_visual, doc_id, task, split = request.args
            previous = done.get((task, doc_id))
            if previous is not None:
                replies[index] = previous["prediction"]
                continue
            doc = self.task_dict[task][split][doc_id]
            pending.append(
                Question(index, question, task, doc_id, str(doc.get("answer", "")), video_path(doc, doc_to_visual))
            )
        with tqdm(total=len(pending), desc="questions", unit="q") as progress:
            for group in group_by_video(pending) if self.kv_reuse else [[question] for question in pending]:
                for question, record in zip(group, self.answer_group(group), strict=True):
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
            video = read_frames(path, self.target_fps, self.max_frames, frames_in_pairs(self.model))
        except VideoError as error:
            return [dataclasses.replace(base, error=str(error)) for base in bases]
        inputs = [self.model_inputs(question.text, video).to(self.device) for question in group]
        placeholders = int((inputs[0]["input_ids"] == video_token_id(self.model)).sum())
        before = placeholders - newlines_per_video(self.model)
        with torch.inference_mode(), reduction_point(self.model, self.reducer, self.positions) as log:
            if self.kv_reuse:
                return self.answer_from_one_prefill(bases, inputs, log, before)
            output, timing = timed_generate(self.model, inputs[0], max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_length = inputs[0]["input_ids"].shape[1]
        reduction = log.last if log.calls else None
        return [
            dataclasses.replace(
                bases[0],
                prediction=self.processor.decode(output[0, prompt_length:], skip_special_tokens=True).strip(),
                visual_tokens_before=before,
                visual_tokens_after=before if reduction is None else reduction.num_kept,
                vision_ms=timing.vision_ms,
                reducer_ms=float("nan") if reduction is None else reduction.reducer_ms,
                prefill_ms=timing.prefill_ms,
                ttft_ms=timing.ttft_ms,
                decode_ms_per_token=timing.decode_ms_per_token,
                peak_memory_mb=timing.peak_memory_mb,
                prefill_tokens=prompt_length,
            )
        ]

    def answer_from_one_prefill(
        self, bases: list[QuestionRecord], inputs: list[dict], log, before: int
    ) -> list[QuestionRecord]:
        """Prefill the video prefix once (vision, reducer and LLM); then each question prefills only its own
        tokens from a copy of the cache. The first question carries the prefix's time and tokens."""
        prefix = prefill_prefix(self.model, inputs[0])
        reduction = log.last if log.calls else None
        records = []
        for position, (base, question_inputs) in enumerate(zip(bases, inputs, strict=True)):
            answer = greedy_from_prefix(self.model, prefix, question_inputs["input_ids"], self.max_new_tokens)
            shared = position == 0
            prefill_ms = answer.prefill_ms + (prefix.prefill_ms if shared else 0.0)
            question_tokens = question_inputs["input_ids"].shape[1] - prefix.length
            records.append(
                dataclasses.replace(
                    base,
                    prediction=self.processor.decode(answer.tokens[0], skip_special_tokens=True).strip(),
                    visual_tokens_before=before,
                    visual_tokens_after=before if reduction is None else reduction.num_kept,
                    reducer_ms=float("nan") if reduction is None else (reduction.reducer_ms if shared else 0.0),
                    prefill_ms=prefill_ms,
                    ttft_ms=prefill_ms,
                    decode_ms_per_token=answer.decode_ms_per_token,
                    prefill_tokens=question_tokens + (prefix.length if shared else 0),
                    extra={"kv_reuse": True, "questions_per_prefill": len(bases)},
                )
            )
        return records

    def model_inputs(self, question: str, video) -> dict:
        """The processor's inputs for one question about ``video`` (a ``SampledVideo``)."""
        text = video_question_prompt(self.processor, question)
        if not takes_video_fps(self.model):
            return self.processor(text=text, videos=[video.frames], return_tensors="pt")
        metadata = VideoMetadata(total_num_frames=len(video.frames), fps=video.fps)
        return self.processor(
            text=text, videos=[video.frames], video_metadata=[metadata], do_sample_frames=False, return_tensors="pt"
        )

    def loglikelihood(self, requests):
        raise NotImplementedError("sttm_bench evaluates generation tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("sttm_bench evaluates single-turn tasks only")
