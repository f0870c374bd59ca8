"""Token reduction in a model sharded across GPUs (``device_map``), as the 72B models run.

    python scripts/check_sharded.py --output results/sharded/h200x2.json

1. Equality: a LLaVA-OneVision-7B-size model (fits one GPU) with random bf16 weights seeded by parameter name, once
   on one GPU and once split by decoder layers over every visible GPU; STTM at layer 0 (the paper's 72B setting)
   must give the same tokens and logits in both placements.
2. Scale: a LLaVA-Video-72B-size model (SigLIP-so400m + Qwen2-72B, about 145 GB in bf16, more than one GPU holds)
   split over the GPUs with ``accelerate``'s balanced device map; STTM at layer 0 runs on a 64-frame video, and the
   prefill time and each GPU's peak memory are reported for full tokens and for STTM.

Weights are made where they live (no download, no full copy on the host): the model is built without parameters,
then each parameter is drawn on its GPU from a generator seeded by its name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import zlib
from pathlib import Path

import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import get_balanced_memory, set_module_tensor_to_device

from sttm.adapters.family import decoder_layers, rotary_embedding, text_model, vision_tower
from sttm.adapters.loading import MODEL_CLASSES
from sttm.adapters.points import llm_layer, reduction_point
from sttm.adapters.real_size import real_size_config, request
from sttm.adapters.timing import timed_generate
from sttm.reducer import STTM

QWEN2_72B = dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8)  # fmt: skip
NO_SPLIT = ["Qwen2DecoderLayer", "SiglipEncoderLayer"]


def empty_model(text_size: dict):
    """LLaVA-OneVision with the given Qwen2 text sizes, parameters on the meta device, buffers on the host."""
    config = real_size_config("llava_onevision_7b", text_size)
    with init_empty_weights(include_buffers=False):
        model = MODEL_CLASSES["llava_onevision"]._from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    return model.eval()


def module_device(name: str, device_map: dict[str, int | str]) -> int | str:
    """The device of the longest device-map prefix of ``name``."""
    matches = [prefix for prefix in device_map if prefix == "" or name == prefix or name.startswith(prefix + ".")]
    return device_map[max(matches, key=len)]


def materialize(model, device_map: dict[str, int | str]) -> None:
    """Draw every parameter on its device from a generator seeded by its name (norm weights 1, biases 0), then let
    ``accelerate`` place the buffers and move activations between devices."""
    for name, parameter in list(model.named_parameters()):
        device = torch.device("cuda", module_device(name, device_map))
        if "norm" in name and name.endswith("weight"):
            value = torch.ones(parameter.shape, dtype=torch.bfloat16, device=device)
        elif name.endswith("bias"):
            value = torch.zeros(parameter.shape, dtype=torch.bfloat16, device=device)
        else:
            generator = torch.Generator(device=device).manual_seed(zlib.crc32(name.encode()))
            value = torch.empty(parameter.shape, dtype=torch.bfloat16, device=device)
            value.normal_(0.0, 0.02, generator=generator)
        set_module_tensor_to_device(model, name, device, value=value)
    dispatch_model(model, device_map)


def split_by_layers(model, devices: list[int]) -> dict[str, int]:
    """Vision tower, projector and embeddings on the first GPU; decoder layers in equal runs over ``devices``; the
    final norm and the head on the last."""
    names = {module: name for name, module in model.named_modules()}
    text, layers = names[text_model(model)], decoder_layers(model)
    device_map = {names[vision_tower(model)]: devices[0], "model.multi_modal_projector": devices[0],
                  "model.image_newline": devices[0], f"{text}.embed_tokens": devices[0],
                  names[rotary_embedding(model)]: devices[0], f"{text}.norm": devices[-1],
                  "lm_head": devices[-1]}  # fmt: skip
    for index, layer in enumerate(layers):
        device_map[names[layer]] = devices[index * len(devices) // len(layers)]
    return device_map


def generate(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Greedy tokens, logits [steps, vocab] and kept ratio with STTM at layer 0 and budget 0.5."""
    with torch.inference_mode(), llm_layer(model, STTM(budget=0.5, layer=0), 0) as log:
        output = model.generate(**inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)  # fmt: skip
    return output.sequences, torch.stack(output.logits)[:, 0].float().cpu(), log.last.kept_ratio


def equality(devices: list[int], frames: int) -> dict:
    results = {}
    for placement, device_map in (("one GPU", None), (f"{len(devices)} GPUs", "split")):
        model = empty_model({})
        materialize(model, {"": devices[0]} if device_map is None else split_by_layers(model, devices))
        inputs = request("llava_onevision_7b", frames, f"cuda:{devices[0]}")
        results[placement] = generate(model, inputs)
        del model
        torch.cuda.empty_cache()
    (one, one_logits, kept), (split, split_logits, _) = results.values()
    return {"frames": frames, "kept_ratio": kept, "same_tokens": torch.equal(one.cpu(), split.cpu()),
            "max_logit_diff": (one_logits - split_logits).abs().max().item()}  # fmt: skip


def scale(devices: list[int], frames: int, repeats: int) -> dict:
    model = empty_model(QWEN2_72B)
    parameters = sum(p.numel() for p in model.parameters())
    memory = get_balanced_memory(model, dtype=torch.bfloat16, no_split_module_classes=NO_SPLIT)
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=NO_SPLIT,
                                       dtype=torch.bfloat16)  # fmt: skip
    materialize(model, device_map)
    inputs = request("llava_onevision_7b", frames, f"cuda:{devices[0]}")
    rows = {}
    for method, reducer in (("full tokens", None), ("sttm, layer 0, budget 0.5", STTM(budget=0.5, layer=0))):
        timings, kept = [], 1.0
        for device in devices:
            torch.cuda.reset_peak_memory_stats(device)
        for index in range(repeats + 1):
            with torch.inference_mode(), reduction_point(model, reducer) as log:
                _, timing = timed_generate(model, inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            if index:
                timings.append(timing)
                kept = log.last.kept_ratio if log.calls else 1.0
        rows[method] = {
            "kept_ratio": kept,
            "prefill_ms": statistics.median(t.prefill_ms for t in timings),
            "ttft_ms": statistics.median(t.ttft_ms for t in timings),
            "peak_memory_gb": [torch.cuda.max_memory_allocated(d) / 2**30 for d in devices],
        }
        print(method, rows[method], flush=True)
    full, sttm = rows.values()
    return {"parameters_billion": parameters / 1e9, "frames": frames, "gpus": len(devices),
            "layers_per_gpu": {str(d): sum(1 for k, v in device_map.items() if ".layers." in k and v == d)
                               for d in devices},
            "rows": rows, "prefill_speedup": full["prefill_ms"] / sttm["prefill_ms"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    devices = list(range(torch.cuda.device_count()))
    if len(devices) < 2:
        parser.error("the sharding check needs at least 2 GPUs")
    report = {
        "gpus": [torch.cuda.get_device_name(d) for d in devices],
        "commit": os.environ.get("STTM_COMMIT"),
        "command": "python scripts/check_sharded.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report["equality"] = equality(devices, args.frames)
    print(report["equality"], flush=True)
    report["scale"] = scale(devices, args.frames, args.repeats)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
