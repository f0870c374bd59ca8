"""Latency at real scale on a GPU: vision encode, reducer, LLM prefill, TTFT, decode, memory and prefill FLOPs (a
share of full tokens', ``sttm.adapters.flops``) for every reducer.

    python -m runners.latency --model llava_onevision_7b --frames 64 128 --output outputs/latency/h100
    python -m runners.latency --model qwen2_vl_7b --frames 128 --output outputs/latency/h100
    python -m runners.latency --model qwen3_vl_8b --frames 64 128 --output outputs/latency/h200

Models at their published sizes with random bf16 weights (no download) and the scene-video request, from
``sttm.adapters.real_size``: LLaVA-OneVision-7B (which LLaVA-Video-7B shares), Qwen2-VL-7B and Qwen3-VL-8B.

Every reducer of ``configs/reducers`` runs at each budget inside its reduction point (LLM-layer methods at the
model's ``llm_layer`` in ``configs/model``: 2, or 3 for Qwen3-VL, after its DeepStack layers), with full tokens first
(a reducer the model refuses, e.g. a merge before Qwen3-VL's DeepStack layers that does not say its members, is a
row that says why); STTM also runs at the fixed thresholds its budget search chose, as the paper uses fixed
thresholds. Each setting: one warm-up, then the median of ``--repeats`` calls of ``generate`` (8 new tokens), timed
as ``sttm.adapters.timing`` defines. Adds this run to ``OUTPUT.json`` (rows, GPU, commit, command), rewritten after
every row with ``"complete": false`` until the last, so a run cut short keeps what it measured; then appends its
rows to ``OUTPUT.md`` and draws ``OUTPUT_<model>.png`` (prefill speed-up against kept ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from omegaconf import OmegaConf

from runners.files import write_atomically
from runners.settings import CONFIGS, compose_evaluate, setting_params
from sttm.adapters import family
from sttm.adapters.flops import logged_tokens_per_layer, prefill_flops
from sttm.adapters.points import reduction_point
from sttm.adapters.real_size import ARCHITECTURES, QUESTION, random_model, request
from sttm.adapters.reduction_log import ReductionLog
from sttm.adapters.reuse import greedy_from_prefix, prefill_prefix
from sttm.adapters.timing import timed_generate
from sttm.api import Reducer, Reduction, Stage, VideoTokens, build_reducer, keep_subset
from sttm.clock import timed
from sttm.reducer import STTM

LLM_LAYER = 2
TIMINGS = ("vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "peak_memory_mb")


def measure(model, inputs: dict, reducer: Reducer | None, repeats: int) -> dict:
    """Median timings over ``repeats`` calls after one warm-up, with ``reducer`` at its reduction point."""
    runs, logs = [], []
    for index in range(repeats + 1):
        with torch.inference_mode(), reduction_point(model, reducer) as log:
            _, timing = timed_generate(model, inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        if index:
            runs.append(timing)
            logs.append(log)
    result = {name: statistics.median(getattr(run, name) for run in runs) for name in TIMINGS}
    result["kept_ratio"] = statistics.median(log.last.kept_ratio if log.calls else 1.0 for log in logs)
    result["reducer_ms"] = statistics.median(log.last.reducer_ms if log.calls else 0.0 for log in logs)
    text_config = model.config.text_config
    prompt = inputs["input_ids"].shape[1]
    counts = logged_tokens_per_layer(text_config.num_hidden_layers, prompt, reducer, logs[-1])
    result["prefill_flops"] = prefill_flops(text_config, counts)
    return result


def llm_layer_of(name: str) -> int:
    """Where LLM-layer methods act on the model ``name``: its ``configs/model`` file's ``llm_layer`` (2 without)."""
    path = CONFIGS / "model" / f"{name}.yaml"
    return int(OmegaConf.load(path).get("llm_layer", LLM_LAYER)) if path.is_file() else LLM_LAYER


def kv_reuse_rows(name: str, model, frames: int, questions: int, repeats: int) -> list[dict]:
    """Prefill time per question for ``questions`` questions about one video, each prefilled whole, against one
    prefill of the video prefix plus one of each question (STTM at fixed thresholds, budget 0.5)."""
    texts = [f"question {index} : {QUESTION}" for index in range(questions)]
    batches = [request(name, frames, model.device, question=text) for text in texts]
    reducer = fixed_thresholds(STTM(budget=0.5, layer=llm_layer_of(name)), model, batches[0])
    separate, shared = [], []
    for index in range(repeats + 1):
        with torch.inference_mode(), reduction_point(model, reducer):
            times = [timed(lambda b=batch: model(**b, use_cache=True), model.device)[1] for batch in batches]
            prefix = prefill_prefix(model, batches[0])
            question_ms = [greedy_from_prefix(model, prefix, batch["input_ids"], 1).prefill_ms for batch in batches]
        if index:
            separate.append(sum(times) / questions)
            shared.append((prefix.prefill_ms + sum(question_ms)) / questions)
    per_question, reused = statistics.median(separate), statistics.median(shared)
    return [{"model": name, "frames": frames, "method": f"kv reuse, {questions} questions per video (sttm 0.5)",
             "prefill_ms_per_question": per_question, "reused_prefill_ms_per_question": reused,
             "speedup": per_question / reused}]  # fmt: skip


def text_positions(text_model, length: int, device) -> torch.Tensor:
    """Positions 0..L−1 as the language model's rotary embedding takes them: [1, L], or [3, 1, L] for M-RoPE."""
    positions = torch.arange(length, device=device)[None]
    if (text_model.config.rope_parameters or {}).get("mrope_section"):
        return positions.expand(3, 1, length)
    return positions


def cut_forward(text_model, embeds: torch.Tensor, keep: torch.Tensor | None, layer: int) -> torch.Tensor:
    """The language model's decoder layers and final norm over ``embeds`` [1, N, C], called one by one without
    hooks, cache or mask (causal attention), the sequence cut to the ``keep`` indexes [N'] (None: all) at the input
    of decoder ``layer``, each token keeping its position. Returns the last hidden states [1, N', C]."""
    positions = text_positions(text_model, embeds.shape[1], embeds.device)
    hidden, rotary = embeds, text_model.rotary_emb(embeds, positions)
    for index, decoder in enumerate(text_model.layers):
        if index == layer and keep is not None:
            hidden, rotary = hidden[:, keep], tuple(values[..., keep, :] for values in rotary)
        hidden = decoder(hidden, position_embeddings=rotary)
    return text_model.norm(hidden)


def layers_ms(text_model, embeds: torch.Tensor, keep: torch.Tensor | None, layer: int, repeats: int) -> float:
    """Median milliseconds of :func:`cut_forward` over ``repeats`` calls after a warm-up."""
    with torch.inference_mode():
        times = [
            timed(lambda: cut_forward(text_model, embeds, keep, layer), embeds.device)[1] for _ in range(repeats + 1)
        ]
    return statistics.median(times[1:])


def evenly_spaced(count: int, budget: float, device) -> torch.Tensor:
    """[round(budget·count)] indexes spread evenly over 0..count−1."""
    return torch.linspace(0, count - 1, round(budget * count), device=device).round().long()


class EvenlySpaced(Reducer):
    """A reducer that costs nothing: an evenly spaced share of the video's tokens, kept at decoder ``layer``. Timed
    through the same hooks as the others, it shows what reduction at that layer gives inside the harness."""

    name = "evenly spaced"
    stage = Stage.LLM_LAYER

    def __init__(self, budget: float, layer: int = LLM_LAYER) -> None:
        self.budget, self.layer = budget, layer

    def reduce(self, video: VideoTokens) -> Reduction:
        return keep_subset(video, evenly_spaced(video.num_tokens, self.budget, video.grid.device))


class EvenlySpacedBeforeLLM(EvenlySpaced):
    """The same share kept before the LLM: the ceiling of the methods acting there, through the same hooks (with
    Qwen3-VL's DeepStack features cut as the tokens are)."""

    stage = Stage.PRE_LLM


def ceiling_rows(
    name: str, model, inputs: dict, frames: int, budgets: list[float], repeats: int, layer: int = LLM_LAYER
) -> list[dict]:
    """What cutting the video to each budget at the language model's input and at ``layer`` can give at best:
    the decoder layers alone on random embeddings of the prompt's length, an evenly spaced share of the video's
    tokens kept, against the same layers on the whole prompt."""
    text_model = family.text_model(model)
    placeholders = inputs["input_ids"][0] == family.video_token_id(model)
    embeds = torch.randn(1, len(placeholders), text_model.config.hidden_size, device=model.device, dtype=model.dtype)
    full_ms = layers_ms(text_model, embeds, None, 0, repeats)
    visual, text = placeholders.nonzero()[:, 0], (~placeholders).nonzero()[:, 0]
    rows = []
    for budget in budgets:
        kept_visual = visual[evenly_spaced(len(visual), budget, visual.device)]
        keep = torch.cat([text, kept_visual]).sort().values
        for cut_at, method in (
            (0, "ceiling: cut at the LLM's input"),
            (layer, f"ceiling: cut at layer {layer}"),
        ):
            reduced_ms = layers_ms(text_model, embeds, keep, cut_at, repeats)
            rows.append({"model": name, "frames": frames, "method": method, "budget": budget,
                         "kept_ratio": len(kept_visual) / len(visual), "layers_ms": reduced_ms,
                         "full_layers_ms": full_ms, "prefill_speedup": full_ms / reduced_ms})  # fmt: skip
    return rows


def fixed_thresholds(reducer: STTM, model, inputs: dict) -> STTM:
    """STTM at the thresholds its budget search picks for this video."""
    log: ReductionLog
    with torch.inference_mode(), reduction_point(model, reducer) as log:
        model.generate(**inputs, max_new_tokens=1, do_sample=False)
    info = log.last.reductions[0].info
    return STTM(threshold=info["threshold"], temporal_threshold=info["temporal_threshold"], layer=reducer.layer)


def reducers_at(budget: float, model_name: str, names: list[str] | None = None) -> list[tuple[str, Reducer | str]]:
    """(name, reducer) for every reducer config (or those ``names``) composed with ``configs/model/<model_name>``, so
    that LLM-layer methods act at its ``llm_layer`` and inner stages at its ``inner_stages`` (the tiny model's
    without a file of that name), or (name, why it cannot run)."""
    configs = sorted(path.stem for path in (CONFIGS / "reducers").glob("*.yaml") if path.stem != "sttm_paper")
    chosen_configs = [config for config in configs if names is None or config in names]
    model_override = [f"model={model_name}"] if (CONFIGS / "model" / f"{model_name}.yaml").is_file() else []
    cfg = compose_evaluate(f"reducers=[{','.join(chosen_configs)}]", *model_override)
    chosen = []
    for key, setting in (cfg.get("reducers") or {}).items():
        try:
            chosen.append((key, build_reducer(setting.name, **setting_params(setting, cfg.model, budget))))
        except ValueError as error:
            chosen.append((key, str(error)))
    return chosen


def measured_rows(
    name: str,
    frames_list: list[int],
    budgets: list[float],
    repeats: int,
    attention: str,
    kv_reuse: int,
    device: str = "cuda",
    names: list[str] | None = None,
) -> Iterator[dict]:
    """The benchmark's rows, each as soon as it is measured: per frame count, the KV-reuse row (``kv_reuse`` > 0),
    full tokens, the cut ceilings, then per budget the no-cost ceilings through the hooks and every reducer (a row
    with a ``note`` where one refuses)."""
    layer = llm_layer_of(name)
    model = random_model(name, attention, device)
    for frames in frames_list:
        if kv_reuse:
            yield from kv_reuse_rows(name, model, frames, kv_reuse, repeats)
        inputs = request(name, frames, device)
        full = measure(model, inputs, None, repeats)
        yield {"model": name, "frames": frames, "method": "full tokens", "budget": 1.0, **full}
        yield from ceiling_rows(name, model, inputs, frames, budgets, repeats, layer)
        for budget in budgets:
            settings = [(f"ceiling: {EvenlySpaced.name} at layer {layer}, no cost, through the hooks",
                         EvenlySpaced(budget, layer)),
                        (f"ceiling: {EvenlySpaced.name} before the LLM, no cost, through the hooks",
                         EvenlySpacedBeforeLLM(budget))]  # fmt: skip
            settings += reducers_at(budget, name, names)
            sttm = next((reducer for method, reducer in settings if method == "sttm"), None)
            if isinstance(sttm, STTM):
                settings.append(("sttm (fixed thresholds)", fixed_thresholds(sttm, model, inputs)))
            for method, reducer in settings:
                row = {"model": name, "frames": frames, "method": method, "budget": budget}
                if isinstance(reducer, str):
                    yield {**row, "note": reducer}
                    continue
                try:
                    result = measure(model, inputs, reducer, repeats)
                except ValueError as refusal:  # the model's reduction point refuses it (said in the row)
                    yield {**row, "note": str(refusal)}
                    continue
                result["prefill_speedup"] = full["prefill_ms"] / result["prefill_ms"]
                result["ttft_speedup"] = full["ttft_ms"] / result["ttft_ms"]
                result["reducer_share_of_prefill"] = result["reducer_ms"] / full["prefill_ms"]
                result["flops_ratio"] = result["prefill_flops"] / full["prefill_flops"]
                yield {**row, **result}


def markdown(rows: list[dict], header: str) -> str:
    columns = ("model", "frames", "method", "budget", "kept", "vision ms", "reducer ms", "prefill ms", "TTFT ms",
               "decode ms/token", "peak GB", "prefill x", "TTFT x", "reducer / full prefill",
               "prefill FLOPs")  # fmt: skip
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        if "speedup" in row:
            alone, shared = row["prefill_ms_per_question"], row["reused_prefill_ms_per_question"]
            summary = (
                f"vision + prefill per question {alone:.1f} ms alone, {shared:.1f} ms shared ({row['speedup']:.2f}x)"
            )
            lines.append(f"| {row['model']} | {row['frames']} | {row['method']}: {summary} |" + " |" * 11)
            continue
        if "layers_ms" in row:
            summary = (
                f"decoder layers alone {row['layers_ms']:.1f} ms against {row['full_layers_ms']:.1f} ms "
                f"({row['prefill_speedup']:.2f}x)"
            )
            lines.append(f"| {row['model']} | {row['frames']} | {row['method']} | {row['budget']} | "
                         f"{row['kept_ratio']:.3f} | {summary} |" + " |" * 9)  # fmt: skip
            continue
        if "note" in row:
            lines.append(f"| {row['model']} | {row['frames']} | {row['method']} | {row['budget']} | "
                         f"not run: {row['note']} |" + " |" * 10)  # fmt: skip
            continue
        lines.append(
            f"| {row['model']} | {row['frames']} | {row['method']} | {row['budget']} | {row['kept_ratio']:.3f} | "
            f"{row['vision_ms']:.1f} | {row['reducer_ms']:.2f} | {row['prefill_ms']:.1f} | {row['ttft_ms']:.1f} | "
            f"{row['decode_ms_per_token']:.1f} | {row['peak_memory_mb'] / 1024:.1f} | "
            f"{row.get('prefill_speedup', 1.0):.2f} | {row.get('ttft_speedup', 1.0):.2f} | "
            f"{row.get('reducer_share_of_prefill', 0.0):.2%} | {row.get('flops_ratio', 1.0):.1%} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path):
    """Prefill speed-up against kept ratio, one panel per frame count, written to ``path``; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if "prefill_speedup" in row and "kept_ratio" in row]
    figure, axes = plt.subplots(1, len({row["frames"] for row in measured}) or 1, figsize=(12, 4.5), squeeze=False)
    for axis, frames in zip(axes[0], sorted({row["frames"] for row in measured}), strict=False):
        for index, method in enumerate(sorted({row["method"] for row in measured})):
            points = sorted((r["kept_ratio"], r["prefill_speedup"]) for r in measured
                            if r["method"] == method and r["frames"] == frames)  # fmt: skip
            if not points:  # measured at other frame counts only
                continue
            style = "--" if method.startswith("ceiling") else "-"
            colour = plt.get_cmap("tab20").colors[index % 20]
            axis.plot(*zip(*points, strict=True), style, marker="o", color=colour, label=method)
        axis.set(title=f"{rows[0]['model']}, {frames} frames", xlabel="kept ratio", ylabel="prefill speed-up (x)")
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="llava_onevision_7b")
    parser.add_argument("--frames", nargs="+", type=int, default=[128])
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.15])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attention", default="sdpa", choices=["sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--reducers", nargs="+", help="reducer configs to run (default: all of configs/reducers)")
    parser.add_argument(
        "--kv-reuse",
        type=int,
        default=0,
        metavar="QUESTIONS",
        help="also time one prefill per video shared by this many questions",
    )
    parser.add_argument("--output", type=Path, required=True, help="path prefix of the .json, .md and .png")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the latency benchmark needs a CUDA GPU")
    gpu, commit = torch.cuda.get_device_name(), os.environ.get("STTM_COMMIT", "unknown")
    command = "python -m runners.latency " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"## {args.model} on {gpu} (torch {torch.__version__}, {args.attention}), commit {commit}\n\n"
              f"`{command}`; medians of {args.repeats} runs after a warm-up, 8 new tokens")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.output.with_suffix(".json")
    earlier = json.loads(json_path.read_text()) if json_path.is_file() else []
    rows: list[dict] = []
    this_run = {"gpu": gpu, "commit": commit, "command": command, "complete": False, "rows": rows}
    measuring = measured_rows(args.model, args.frames, args.budgets, args.repeats, args.attention, args.kv_reuse,
                              names=args.reducers)  # fmt: skip
    for row in measuring:  # the JSON holds every row measured so far, should the run be cut short
        rows.append(row)
        print(row, flush=True)
        write_atomically(json_path, json.dumps([*earlier, this_run], indent=1))
    this_run["complete"] = True
    write_atomically(json_path, json.dumps([*earlier, this_run], indent=1))
    with args.output.with_suffix(".md").open("a") as file:
        file.write(markdown(rows, header) + "\n")
    plot(rows, args.output.parent / f"{args.output.name}_{args.model}.png")
    print(markdown(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
