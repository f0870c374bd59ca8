"""An lmms-eval model: a LLaVA-OneVision checkpoint with a token reducer at its stage, timed per request.

Registered for lmms-eval as ``sttm_bench`` (entry point ``lmms_eval.models``), so that
``--model sttm_bench --model_args pretrained=PATH,reducer=sttm,budget=0.5`` works; or pass an instance to
``lmms_eval.evaluator.simple_evaluate``.

Each request: the video is decoded and sampled as the STTM authors do (``sttm.adapters.video``), the question
goes through the processor's chat template, and greedy generation runs inside the reducer's reduction point.
With ``record_dir`` every question's record (prediction, tokens before and after, timings, or the error of an
unreadable video) is appended there, and a question already recorded is answered from its record instead of
being run again, so that an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm
from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

from runners.records import QuestionRecord, append_record, records_by_question
from sttm.adapters.llava_onevision import reduce_at_layer, reduce_before_llm
from sttm.adapters.timing import timed_generate
from sttm.adapters.video import VideoError, read_frames
from sttm.api import Reducer, Stage, build_reducer

MANIFEST = ModelManifest(model_id="sttm_bench", simple_class_path="runners.lmms_model.ReducedVideoLLM")


def reduction_point(model, reducer: Reducer | None, positions: str):
    """The context that applies ``reducer`` at its declared stage (none for full tokens)."""
    if reducer is None:
        return contextlib.nullcontext()
    if reducer.stage is Stage.PRE_LLM:
        return reduce_before_llm(model, reducer, positions)
    if reducer.stage is Stage.LLM_LAYER:
        return reduce_at_layer(model, reducer, reducer.layer, positions)
    raise ValueError(f"reducer {reducer.name!r} acts at stage {reducer.stage.value!r}, which is not wired yet")


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
        batch_size: int | str | None = 1,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size not in (None, 1, "1"):
            raise ValueError(
                f"sttm_bench runs one request at a time (as every reducer assumes), got batch_size={batch_size}"
            )
        if isinstance(reducer, str):
            reducer = None if reducer == "none" else build_reducer(reducer, budget=float(budget))
        self.reducer = reducer
        self.positions = positions
        self.target_fps, self.max_frames = float(target_fps), int(max_frames)
        self.max_new_tokens = int(max_new_tokens)
        self.record_dir = None if record_dir is None else Path(record_dir)
        self.device = torch.device(device)
        self.processor = AutoProcessor.from_pretrained(pretrained)
        self.model = LlavaOnevisionForConditionalGeneration.from_pretrained(
            pretrained, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        ).to(self.device)
        self.model.eval()

    def clean(self) -> None:
        """Keep the model: lmms-eval's default deletes every module attribute after an evaluation."""

    def generate_until(self, requests) -> list[str]:
        done = {} if self.record_dir is None else records_by_question(self.record_dir)
        replies = []
        for request in tqdm(requests, desc="questions", unit="q"):
            question, _, doc_to_visual, doc_id, task, split = request.args
            previous = done.get((task, doc_id))
            if previous is not None:
                replies.append(previous["prediction"])
                continue
            record = self.answer(question, self.task_dict[task][split][doc_id], doc_to_visual, task, doc_id)
            if self.record_dir is not None:
                append_record(self.record_dir, record)
            replies.append(record.prediction)
        return replies

    def answer(self, question: str, doc: dict, doc_to_visual, task: str, doc_id: int) -> QuestionRecord:
        """Run one question; an unreadable video becomes the record's error and an empty answer."""
        base = QuestionRecord(
            task=task, doc_id=doc_id, correct=None, prediction="", answer=str(doc.get("answer", "")),
            visual_tokens_before=0, visual_tokens_after=0,
        )  # fmt: skip
        try:
            frames = read_frames(doc_to_visual(doc)[0], self.target_fps, self.max_frames)
        except VideoError as error:
            return dataclasses.replace(base, error=str(error))
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=text, videos=[frames], return_tensors="pt").to(self.device)
        with torch.inference_mode(), reduction_point(self.model, self.reducer, self.positions) as log:
            output, timing = timed_generate(self.model, inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prediction = self.processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        before = int((inputs["input_ids"] == self.model.config.video_token_id).sum()) - 1  # the newline stays
        reduction = log.last if log is not None else None
        return dataclasses.replace(
            base,
            prediction=prediction.strip(),
            visual_tokens_before=before,
            visual_tokens_after=before if reduction is None else reduction.num_kept,
            vision_ms=timing.vision_ms,
            reducer_ms=float("nan") if reduction is None else reduction.reducer_ms,
            prefill_ms=timing.prefill_ms,
            ttft_ms=timing.ttft_ms,
            decode_ms_per_token=timing.decode_ms_per_token,
            peak_memory_mb=timing.peak_memory_mb,
        )

    def loglikelihood(self, requests):
        raise NotImplementedError("sttm_bench evaluates generation tasks only")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("sttm_bench evaluates single-turn tasks only")
