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
python3 -m benchmarks.distillation      # trains the teacher shared with translation.py and pruning.py
# decoding speed of the students against the teacher's beam 5 (alone: a quiet machine), batch 1 and batched
M="$(python3 -c 'from benchmarks import deen; print(deen.DIR)')"
MODELS="teacher=$M/teacher/checkpoint_best.pt student=$M/student/checkpoint_best.pt seq_kd=$M/student_seq_kd/checkpoint_best.pt seq_kd_small=$M/student_seq_kd_small/checkpoint_best.pt"
python3 -m benchmarks.decode_speed $MODELS --rounds 3 --batched-sentences 400 --lean-greedy --quiet-machine
python3 -m benchmarks.decode_speed $MODELS --rounds 3 --sentences 30 --batched-sentences 1255 --lean-greedy --quiet-machine --name decode_speed_full
python3 -m benchmarks.translation
python3 -m benchmarks.pruning
python3 -m benchmarks.plots
