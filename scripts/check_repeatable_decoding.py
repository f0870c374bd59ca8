"""Generate the same answer several times with one reducer and say whether every call gives the same tokens.

    python scripts/check_repeatable_decoding.py --model llava_onevision_7b --reducer sttm --budget 0.5
    python scripts/check_repeatable_decoding.py --model llava_onevision_7b --reducer sttm --budget 0.5 --reproduce
    python scripts/check_repeatable_decoding.py --model llava_onevision_7b --reducer sttm --sdpa flash_attention

The model at its published size with random bf16 weights (``sttm.adapters.real_size``) on ``runners.latency``'s
request of ``--frames`` frames, a fresh reducer per call inside its reduction point (``--reducer none``: full
tokens), greedy decoding of ``--new-tokens`` tokens. Printed per call: the tokens, and digests of the first token's
logits (the prefill), of the grid the reducer was handed and of the tokens it kept, so that a call that differs
shows where: in the prefill, in the reduction, or only while decoding. ``--reproduce`` turns on what
``runners.evaluate``'s ``reproduce=true`` turns on; ``--sdpa`` restricts PyTorch's attention to one backend.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import sys

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from runners.evaluate import make_reproducible
from runners.latency import llm_layer_of
from sttm.adapters.points import reduction_point
from sttm.adapters.real_size import ARCHITECTURES, random_model, request
from sttm.api import Reducer, build_reducer, reducer_class

SDPA_BACKENDS = ["math", "flash_attention", "efficient_attention", "cudnn_attention"]


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha1(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()[:10]


def watched(reducer: Reducer, seen: dict[str, str]) -> Reducer:
    """``reducer`` whose calls write the digests of the grid they are handed and of the tokens they keep in ``seen``."""
    reduce = reducer.reduce

    def reduce_and_watch(video):
        reduction = reduce(video)
        seen.update(grid=digest(video.grid), kept=digest(reduction.tokens))
        return reduction

    reducer.reduce = reduce_and_watch
    return reducer


def answer(model, inputs: dict, reducer: Reducer | None, new_tokens: int) -> tuple[list[int], str]:
    """The greedy answer's tokens and the digest of its first token's logits."""
    reducing = contextlib.nullcontext() if reducer is None else reduction_point(model, reducer)
    with torch.inference_mode(), reducing:
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    return out.sequences[0, -new_tokens:].tolist(), digest(out.logits[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(ARCHITECTURES), default="llava_onevision_7b")
    parser.add_argument("--reducer", default="sttm", help="a registered reducer, or none: full tokens")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--reproduce", action="store_true", help="deterministic kernels (runners.evaluate)")
    parser.add_argument("--sdpa", choices=SDPA_BACKENDS, help="the one attention backend sdpa may use")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    make_reproducible(0, args.reproduce)
    model = random_model(args.model, "sdpa", args.device)
    inputs = request(args.model, args.frames, args.device)
    params = {"budget": args.budget}
    if args.reducer != "none" and "layer" in inspect.signature(reducer_class(args.reducer)).parameters:
        params["layer"] = llm_layer_of(args.model)
    answers = []
    for call in range(args.calls):
        seen: dict[str, str] = {}
        reducer = None if args.reducer == "none" else watched(build_reducer(args.reducer, **params), seen)
        with sdpa_kernel([getattr(SDPBackend, args.sdpa.upper())]) if args.sdpa else contextlib.nullcontext():
            tokens, first_logits = answer(model, inputs, reducer, args.new_tokens)
        answers.append(tokens)
        print(f"call {call}: {tokens} first logits {first_logits}", *(f"{k} {v}" for k, v in seen.items()), flush=True)
    differing = sum(tokens != answers[0] for tokens in answers)
    print(f"{args.reducer} at {args.budget}: {args.calls - differing} of {args.calls} calls as the first" + (
        "" if not differing else f", {differing} differing"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
