"""A video's vision features computed once per model and read back for its later requests, installed on one model
instance.

:func:`cached_video_features` sets an attribute of the one multimodal model over its class's ``get_video_features``
(as :mod:`sttm.adapters.pooling` sets ``apply_pooling``) and removes it on exit; the class and every other instance
are untouched. Inside it, the model's call for the video that ``key`` names returns the features a store holds under
``key``, moved to the call's device, instead of running the vision tower; or runs the tower, and on exit stores what
the forward reads of its output (``pooler_output``, and Qwen3-VL's ``deepstack_features``) on the CPU with the
milliseconds the call took. The features the model places among its text embeddings are the same either way.

The key is the caller's: it must name the video, how it became pixels, and the model (:func:`model_identity`); the
pixels' shape is checked against the stored one. A reducer acting in the vision tower reads the tower's attention,
so it needs the tower to run: :func:`features_reusable` tells which reducers may run with cached features.
"""

from __future__ import annotations

import functools
import importlib
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers.utils import ModelOutput

from sttm.adapters.family import multimodal_model
from sttm.api import Reducer, Stage
from sttm.bounded_store import BoundedStore, mapped
from sttm.clock import Clock

#: the fields of ``get_video_features``'s output that the models' forwards read
READ_FIELDS = ("pooler_output", "deepstack_features")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def features_reusable(reducer: Reducer | None) -> bool:
    """Whether ``reducer`` (None: full tokens) leaves the vision tower's work as it is: stored features serve it."""
    return reducer is None or reducer.stage is not Stage.VISION


def model_identity(model) -> dict:
    """What a model's video features depend on besides its pixels: its checkpoint (a local folder's weight files by
    name, size and modification time; a hub id by name; a model built in memory by a name drawn for this call, so
    that no other model ever reads its features), dtype, attention implementation, device type, pooling
    (``sttm.adapters.pooling``) and the torch and transformers versions."""
    name = model.config.name_or_path
    folder = Path(name) if name else None
    if folder is not None and folder.is_dir():
        weights = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())
                   if p.name.endswith(WEIGHT_SUFFIXES)]  # fmt: skip
        checkpoint = {"folder": str(folder.resolve()), "weights": weights}
    else:
        checkpoint = {"name": name} if name else {"in_memory": uuid.uuid4().hex}
    return {
        "checkpoint": checkpoint,
        "dtype": str(model.dtype),
        "attention": model.config._attn_implementation,
        "device": model.device.type,
        "own_pooling": "apply_pooling" in vars(multimodal_model(model)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def class_at(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def kept_part(output) -> dict:
    """What a store keeps of a ``get_video_features`` output: a model output's fields that forwards read, with its
    class, or the whole value of a version that returns tensors."""
    if isinstance(output, ModelOutput):
        fields = {name: output[name] for name in READ_FIELDS if output.get(name) is not None}
        return {"output_class": class_path(type(output)), "fields": fields}
    return {"output_class": None, "value": output}


def rebuilt(part: dict, device: torch.device):
    """The output a kept part stands for, its tensors copied to ``device``."""
    to_device = lambda tensor: tensor.to(device, copy=True)  # noqa: E731
    if part["output_class"] is None:
        return mapped(part["value"], to_device)
    return class_at(part["output_class"])(**mapped(part["fields"], to_device))


def pixels_of(args: tuple, kwargs: dict) -> torch.Tensor:
    """The pixels a ``get_video_features`` call takes: its first argument (``pixel_values_videos``; ``pixel_values``
    for LLaVA-OneVision in transformers 5.17)."""
    if args:
        return args[0]
    return kwargs["pixel_values_videos"] if "pixel_values_videos" in kwargs else kwargs["pixel_values"]


@dataclass
class FeatureUse:
    """How one context's request had its features: read from the store (``hit``) or computed.

    computed_ms: the milliseconds of the ``get_video_features`` call that computed them (on a hit, the stored one).
    lookup_ms:   on a hit, the milliseconds of copying them to the device (NaN otherwise).
    """

    hit: bool = False
    computed_ms: float = math.nan
    clock: Clock | None = field(default=None, repr=False)

    @property
    def lookup_ms(self) -> float:
        return self.clock.between("lookup", "found") if self.hit else math.nan


@contextmanager
def cached_video_features(model, store: BoundedStore, key: str) -> Iterator[FeatureUse]:
    """Inside, ``model``'s video features for one request about the video ``key`` names come from ``store`` where
    it holds them; otherwise the tower runs and its features are stored on exit (not after an exception). Yields the
    request's :class:`FeatureUse`. ValueError where the request's pixels are not the shape the stored features were
    computed from, or where another feature cache is installed on the model."""
    inner = multimodal_model(model)
    if "get_video_features" in vars(inner):
        raise ValueError("a feature cache is already installed on this model instance")
    compute = type(inner).get_video_features.__get__(inner)
    use = FeatureUse(clock=Clock(model.device))
    computed: dict[str, object] = {}

    @functools.wraps(compute)  # its signature: transformers' generate reads which inputs to pass it
    def get_video_features(*args, **kwargs):
        shape = list(pixels_of(args, kwargs).shape)
        entry = store.get(key)
        if entry is None:
            use.clock.mark("compute")
            output = compute(*args, **kwargs)
            use.clock.mark("computed")
            computed["output"], computed["shape"] = output, shape
            return output
        if entry["pixels_shape"] != shape:
            raise ValueError(
                f"the features stored under {key[:12]}… come from pixels of shape {entry['pixels_shape']}, this "
                f"request's are {shape}: the key does not name this request's video"
            )
        use.clock.mark("lookup")
        output = rebuilt(entry["features"], pixels_of(args, kwargs).device)
        use.clock.mark("found")
        use.hit, use.computed_ms = True, entry["computed_ms"]
        as_tuple = kwargs.get("return_dict") is False and isinstance(output, ModelOutput)
        return output.to_tuple() if as_tuple else output

    inner.get_video_features = get_video_features
    try:
        yield use
    finally:
        vars(inner).pop("get_video_features", None)
    if "output" in computed:
        use.computed_ms = use.clock.between("compute", "computed")
        to_cpu = lambda tensor: tensor.detach().to("cpu", copy=True)  # noqa: E731
        features = mapped(kept_part(computed["output"]), to_cpu)
        store.put(key, {"features": features, "pixels_shape": computed["shape"], "computed_ms": use.computed_ms})
