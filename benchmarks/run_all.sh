#!/usr/bin/env bash
# The whole benchmark suite (each part resumes; run one with python3 -m benchmarks.<part> from the repository root).
# Needs ../shared/data and matplotlib (pip install -e .[bench]).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m benchmarks.word_ordering
python3 -m benchmarks.bso_speed --profile       # alone: speed figures need a quiet machine
python3 -m benchmarks.bso_speed --model demo    # alone: the demo model's BSO cost and the word_order constraint's
python3 -m benchmarks.bso_recipe
python3 -m benchmarks.demo_recipes              # README command 1's demo over seeds and BSO recipes
# the compression chain (teacher, students, Seq-KD/Seq-Inter corpora, pruning, decoding speed last):
# distillation.json, pruning.json, decode_speed.json
python3 -m benchmarks.compression
python3 -m benchmarks.translation      # trains the NLL teacher of deen.py first if missing
python3 -m benchmarks.bso_authors --seeds 1 2 3 --bso-epochs 39
python3 -m benchmarks.gpu_readiness
python3 -m benchmarks.fp16_pruning
python3 -m benchmarks.plots
python3 -m benchmarks.report --write    # docs/results.md from the results files
