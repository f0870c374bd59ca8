"""Save what reducers return on the benchmark's video-sized grid, or compare two such files bit for bit.

    python scripts/reducer_outputs.py save before.pt                 # at one commit (GPU if there is one)
    python scripts/reducer_outputs.py save after.pt                  # at another, on the same machine
    python scripts/reducer_outputs.py compare before.pt after.pt     # exit status 1 where any output differs

A change meant to make a reducer faster without changing what it returns is checked this way: the input is
``scripts/bench_reducers.py``'s (``sttm.synthetic.benchmark_video``, [128, 14, 14, 3584] bf16 by default), each
setting is run three times and the last call's tokens, boxes, patch counts, members, member weights and chosen
thresholds are saved. ``compare`` prints, per setting, whether each is identical (``torch.equal``), the largest
difference of the tokens where they are not, and where the boxes differ, the share of rows with the same box and
the boxes found in both. Reducers that are not repeatable on a GPU (float scatter accumulation: ToMe, HoliTom's
two stages) differ from run to run by themselves; the ``repeatable`` column of ``bench_reducers.py`` says which.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sttm.api import build_reducer
from sttm.paper import BENCHMARK_THRESHOLDS
from sttm.synthetic import benchmark_video

INFO_KEYS = ("threshold", "temporal_threshold")


def settings(names: list[str], budgets: list[float]) -> list[tuple[str, dict]]:
    """(reducer, parameters) for each name at each budget; STTM also in both variants and at the paper's
    thresholds."""
    runs = []
    for name in names:
        if name == "sttm":
            for variant in ("official", "corrected"):
                runs += [(name, {"budget": budget, "variant": variant}) for budget in budgets]
                runs += [(name, {"threshold": spatial, "temporal_threshold": temporal, "variant": variant})
                         for spatial, temporal in BENCHMARK_THRESHOLDS.values()]  # fmt: skip
        else:
            runs += [(name, {"budget": budget}) for budget in budgets]
    return runs


def save(path: Path, names: list[str], budgets: list[float], shape: list[int], device: str) -> None:
    video = benchmark_video(*shape, dtype=torch.bfloat16, device=device)
    saved = {}
    for name, params in settings(names, budgets):
        reducer = build_reducer(name, **params)
        for _ in range(3):  # the last call replays what the first ones captured (STTM's CUDA graphs)
            out = reducer.reduce(video)
        parts = {"tokens": out.tokens, "boxes": out.boxes, "num_patches": out.num_patches, "members": out.members,
                 "member_weights": out.member_weights}  # fmt: skip
        saved[f"{name} {params}"] = {
            **{key: None if value is None else value.cpu() for key, value in parts.items()},
            "info": {key: out.info[key] for key in INFO_KEYS if key in out.info},
        }
    torch.save(saved, path)
    print(f"{len(saved)} settings saved to {path}")


def box_agreement(old: torch.Tensor, new: torch.Tensor) -> str:
    """How far two [K, ...] box lists agree: the rows with the same box (where K is the same) and the boxes in both."""
    common = len(set(map(tuple, old.flatten(1).tolist())) & set(map(tuple, new.flatten(1).tolist())))
    rows = f"{(old == new).flatten(1).all(dim=1).float().mean().item():.2%} of rows the same box; " if (
        old.shape == new.shape) else ""  # fmt: skip
    return f"{rows}{common} of {len(old)} / {len(new)} boxes in both"


def compare(before: Path, after: Path) -> int:
    first, second = torch.load(before), torch.load(after)
    differing = 0
    for setting in sorted(set(first) | set(second)):
        if setting not in first or setting not in second:
            print(f"{setting}: only in {before if setting in first else after}")
            differing += 1
            continue
        old, new = first[setting], second[setting]
        same = {key: (old[key] is None and new[key] is None) or (
            old[key] is not None and new[key] is not None and old[key].shape == new[key].shape
            and torch.equal(old[key], new[key])) for key in old if key != "info"}  # fmt: skip
        same["info"] = old["info"] == new["info"]
        line = ", ".join(f"{key} {'same' if equal else 'DIFFERENT'}" for key, equal in same.items())
        if not same["tokens"] and old["tokens"].shape == new["tokens"].shape:
            line += f" (tokens differ by at most {(old['tokens'].float() - new['tokens'].float()).abs().max():.3g})"
        if not same["boxes"]:
            line += f" ({box_agreement(old['boxes'], new['boxes'])})"
        print(f"{setting}: {line}")
        differing += not all(same.values())
    print(f"{len(set(first) | set(second)) - differing} settings identical, {differing} differing")
    return int(differing > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save", help="run the reducers and save their outputs")
    saving.add_argument("path", type=Path)
    saving.add_argument("--reducers", nargs="+", default=["sttm"])
    saving.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.3, 0.15])
    saving.add_argument("--shape", nargs=4, type=int, default=[128, 14, 14, 3584], metavar=("T", "H", "W", "C"))
    saving.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    comparing = commands.add_parser("compare", help="compare two saved files")
    comparing.add_argument("before", type=Path)
    comparing.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.path, args.reducers, args.budgets, args.shape, args.device)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
