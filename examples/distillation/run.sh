#!/usr/bin/env bash
# Teacher -> Seq-KD / Seq-Inter corpora -> students (baseline, Word-KD, Seq-KD, Seq-Inter) on l10n-de-en,
# with BLEU greedy / beam 5 and decoding speed. Resumable: rerun after an interruption.
# Results: benchmarks/results/distillation.json
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 benchmarks/distillation.py "$@"
