"""python -m runners.toybench OUT_DIR: write the synthetic benchmarks (see ``runners.toybench``)."""

import argparse
from pathlib import Path

from runners.toybench import generate

parser = argparse.ArgumentParser(description="Write the six synthetic video QA benchmarks.")
parser.add_argument("out", type=Path)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--train-factor", type=int, default=4, help="train videos per test video")
args = parser.parse_args()
for path in generate(args.out, args.seed, args.train_factor):
    print(path, sum(1 for _ in path.open()), "questions")
