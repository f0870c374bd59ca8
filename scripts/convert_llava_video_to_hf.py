"""Convert an original LLaVA-NeXT checkpoint (LLaVA-Video-*-Qwen2, llava-onevision-qwen2-*-ov) to the
``LlavaOnevisionForConditionalGeneration`` format that ``from_pretrained`` loads.

    python scripts/convert_llava_video_to_hf.py /path/to/LLaVA-Video-7B-Qwen2 models/llava_video_7b_hf

The original folder holds ``config.json`` (a Qwen2 config plus LLaVA's ``mm_*`` keys) and safetensors shards with
``model.*`` language-model keys, ``model.vision_tower.vision_tower.vision_model.*`` (SigLIP, already cut to the
layers LLaVA uses and without its head), ``model.mm_projector.{0,2}.*`` (two linear layers around a GELU) and
``model.image_newline``. What maps, and what cannot:

* the SigLIP tower keeps the checkpoint's layers, and the LLM reads its last one (``vision_feature_layer = -1``);
* ``mm_spatial_pool_mode: bilinear`` with stride 2 is transformers' video pooling (bilinear to ceil(side / 2));
  ``average`` and ``max`` pooling (floor(side / 2)) have no equivalent and are refused;
* ``mm_newline_position`` is recorded (``config.json`` key ``llava_newline_position`` and ``conversion.json``):
  transformers appends one newline token per video, the original ``one_token``; ``grid`` (a newline per row) and
  ``no_token`` (none, as in the STTM paper's runs) run with that one trailing token instead.

A tokenizer in the source folder is saved with the processor (``<image>`` and ``<video>`` added as special tokens).
The output is written to a temporary folder beside ``OUTPUT`` and renamed into place; an existing non-empty
``OUTPUT`` is refused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
)

KEY_PREFIXES = (  # original prefix → transformers module prefix; the first match wins
    ("model.vision_tower.vision_tower.vision_model.", "model.vision_tower."),
    ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
    ("model.image_newline", "model.image_newline"),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
)
TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "hidden_act")  # fmt: skip
SIGLIP_SO400M_384 = dict(
    hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14
)
NEWLINE_POSITIONS = ("one_token", "grid", "no_token", "frame")
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"


def hf_key(original: str) -> str:
    for prefix, replacement in KEY_PREFIXES:
        if original.startswith(prefix):
            return replacement + original[len(prefix) :]
    raise ValueError(f"unexpected weight {original!r}: not part of a LLaVA-NeXT Qwen2 checkpoint")


def read_original_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise ValueError(f"no config.json in {source}: is it an original LLaVA-NeXT checkpoint folder?")
    original = json.loads(path.read_text())
    missing = [key for key in ("mm_projector_type", "mm_hidden_size", *TEXT_KEYS[:5]) if key not in original]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not an original LLaVA-NeXT Qwen2 config")
    if original["mm_projector_type"] != "mlp2x_gelu":
        raise ValueError(f"projector type {original['mm_projector_type']!r} has no LlavaOnevision equivalent "
                         "(only mlp2x_gelu)")  # fmt: skip
    pool_mode, stride = original.get("mm_spatial_pool_mode", "bilinear"), original.get("mm_spatial_pool_stride", 2)
    if (pool_mode, stride) != ("bilinear", 2):
        raise ValueError(f"video pooling {pool_mode!r} with stride {stride} has no LlavaOnevision equivalent "
                         "(transformers pools bilinearly to ceil(side / 2))")  # fmt: skip
    newline = original.get("mm_newline_position", "one_token")
    if newline not in NEWLINE_POSITIONS:
        raise ValueError(f"unknown mm_newline_position {newline!r}; known: {', '.join(NEWLINE_POSITIONS)}")
    return original


def hf_config(original: dict, vision_layers: int, vision: dict, token_ids: dict) -> LlavaOnevisionConfig:
    text = {key: original[key] for key in TEXT_KEYS if key in original}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": original.get("rope_theta", 1e6)}
    if vision["hidden_size"] != original["mm_hidden_size"]:
        raise ValueError(f"the vision config's width {vision['hidden_size']} differs from mm_hidden_size "
                         f"{original['mm_hidden_size']}: pass --vision-config")  # fmt: skip
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **text},
        vision_config={"model_type": "siglip_vision_model", **vision, "num_hidden_layers": vision_layers,
                       "vision_use_head": False},
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=original.get("image_grid_pinpoints"), vision_aspect_ratio=original.get(
            "image_aspect_ratio", "anyres_max_9"), tie_word_embeddings=original.get("tie_word_embeddings", False),
        **token_ids,
    )  # fmt: skip
    config.llava_newline_position = original.get("mm_newline_position", "one_token")
    return config


def processor(tokenizer, image_size: int, patch_size: int) -> LlavaOnevisionProcessor:
    size = {"height": image_size, "width": image_size}
    return LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer, num_image_tokens=(image_size // patch_size) ** 2, vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
    )  # fmt: skip


def read_weights(source: Path) -> dict[str, torch.Tensor]:
    shards = sorted(source.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"no .safetensors shards in {source}")
    weights = {}
    for shard in tqdm(shards, desc="shards", unit="shard"):
        weights.update({hf_key(name): tensor for name, tensor in load_file(shard).items()})
    return weights


def convert(source: Path, output: Path, dtype: str = "bfloat16", vision_config: Path | None = None) -> Path:
    """Convert the checkpoint in ``source`` into ``output``; return ``output``."""
    if output.exists() and any(output.iterdir()):
        raise ValueError(f"{output} exists and is not empty: choose a new folder")
    original = read_original_config(source)
    weights = read_weights(source)
    vision = json.loads(vision_config.read_text()) if vision_config else SIGLIP_SO400M_384
    layer_keys = {name.split(".")[4] for name in weights if name.startswith("model.vision_tower.encoder.layers.")}
    tokenizer = AutoTokenizer.from_pretrained(source) if (source / "tokenizer_config.json").is_file() else None
    token_ids = {"image_token_id": 151646, "video_token_id": 151647}  # llava-onevision-qwen2-*-ov-hf's
    if tokenizer is not None:
        tokenizer.add_tokens([IMAGE_TOKEN, VIDEO_TOKEN], special_tokens=True)
        token_ids = {"image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                     "video_token_id": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)}  # fmt: skip
    config = hf_config(original, len(layer_keys), vision, token_ids)
    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"weights do not match the converted architecture: missing {missing[:5]} "
                         f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")  # fmt: skip
    model.load_state_dict({name: tensor.to(getattr(torch, dtype)) for name, tensor in weights.items()}, assign=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(staging)
        if tokenizer is not None:
            processor(tokenizer, vision["image_size"], vision["patch_size"]).save_pretrained(staging)
        record = {"source": str(source), "mm_newline_position": config.llava_newline_position, "dtype": dtype,
                  "vision_layers": len(layer_keys), "command": " ".join(sys.argv)}  # fmt: skip
        (staging / "conversion.json").write_text(json.dumps(record, indent=1))
        if output.exists():
            output.rmdir()
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="original LLaVA-NeXT checkpoint folder")
    parser.add_argument("output", type=Path, help="new folder for the converted model")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--vision-config", type=Path, help="JSON of SigLIP sizes (default: siglip-so400m-patch14-384)")
    args = parser.parse_args(argv)
    print(convert(args.source, args.output, args.dtype, args.vision_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
