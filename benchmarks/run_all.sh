#!/usr/bin/env bash
# The whole benchmark suite (each part resumes; run one with python3 benchmarks/<part>.py).
# Needs ../shared/data and matplotlib (pip install -e .[bench]).
set -euo pipefail
cd "$(dirname "$0")"
python3 word_ordering.py
python3 bso_speed.py --profile       # alone: speed figures need a quiet machine
python3 bso_speed.py --model demo    # alone: the demo model's BSO cost and the word_order constraint's
python3 bso_recipe.py
python3 demo_recipes.py              # README command 1's demo over seeds and BSO recipes
python3 distillation.py      # trains the teacher shared with translation.py and pruning.py
# decoding speed of the students against the teacher's beam 5 (alone: a quiet machine), batch 1 and batched
M="$(python3 -c 'import deen; print(deen.DIR)')"
MODELS="teacher=$M/teacher/checkpoint_best.pt student=$M/student/checkpoint_best.pt seq_kd=$M/student_seq_kd/checkpoint_best.pt seq_kd_small=$M/student_seq_kd_small/checkpoint_best.pt"
python3 decode_speed.py $MODELS --rounds 3 --batched-sentences 400 --lean-greedy --quiet-machine
python3 decode_speed.py $MODELS --rounds 3 --sentences 30 --batched-sentences 1255 --lean-greedy --quiet-machine --name decode_speed_full
python3 translation.py
python3 pruning.py
python3 plots.py
