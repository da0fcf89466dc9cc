#!/usr/bin/env bash
# The whole benchmark suite (each part resumes; run one with python3 benchmarks/<part>.py).
# Needs ../shared/data and matplotlib (pip install -e .[bench]).
set -euo pipefail
cd "$(dirname "$0")"
python3 word_ordering.py
python3 bso_speed.py --profile       # alone: speed figures need a quiet machine
python3 bso_recipe.py
python3 distillation.py      # trains the teacher shared with translation.py and pruning.py
python3 translation.py
python3 pruning.py
python3 plots.py
