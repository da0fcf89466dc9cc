#!/usr/bin/env bash
# Magnitude pruning (See, Luong and Manning, 2016) of the distillation recipe's Seq-KD student:
# prune class-blind, retrain with the masks fixed, report sparsity, export for stock fairseq, score.
#
#   bash examples/pruning/run.sh     # runs examples/distillation/run.sh (STUDENTS=seq_kd) first if the student is missing
#
# Same data settings as examples/translation/run.sh (IWSLT or TEXT, SRC, TGT, RUNS, VOCAB). Others
# (environment): PRUNE_RATIO (0.8), PRUNE_SCHEME (class-blind), PRUNE_EPOCHS (2), MAX_TOKENS (4000),
# BEAM (5), PRUNE_MODEL (the checkpoint to prune; its options: STUDENT), PRUNE_DATA (its training data).
# Outputs: RUNS/pruned<RATIO>/checkpoint_last.pt, RUNS/pruned<RATIO>.pt (stock fairseq), .sparse; BLEU last.
source "$(dirname "$0")/../recipes.sh"
PRUNE_RATIO=${PRUNE_RATIO:-0.8}
PRUNE_SCHEME=${PRUNE_SCHEME:-class-blind}
PRUNE_EPOCHS=${PRUNE_EPOCHS:-2}
MAX_TOKENS=${MAX_TOKENS:-4000}
BEAM=${BEAM:-5}
PRUNE_MODEL=${PRUNE_MODEL:-$RUNS/student_seq_kd/checkpoint_best.pt}
PRUNE_DATA=${PRUNE_DATA:-$RUNS/kd_beam/bin}
OUT=$RUNS/pruned$PRUNE_RATIO

if [ ! -f "$PRUNE_MODEL" ]; then
  echo "no model to prune at $PRUNE_MODEL: running examples/distillation/run.sh"
  STUDENTS=${STUDENTS:-seq_kd} bash "$EXAMPLES/distillation/run.sh"
  [ -f "$PRUNE_MODEL" ] || fail "still no $PRUNE_MODEL (STUDENTS=$STUDENTS has no seq_kd?)"
fi
# translation_pruned: fairseq's translation task with the --prune-* options (fairseq_bso/prune/tasks.py).
run fairseq-train "$PRUNE_DATA" --user-dir "$USER_DIR" --task translation_pruned $STUDENT \
  --finetune-from-model "$PRUNE_MODEL" --prune-ratio "$PRUNE_RATIO" --prune-scheme "$PRUNE_SCHEME" \
  --criterion cross_entropy --optimizer adam --lr 0.0005 --clip-norm 5 --max-tokens "$MAX_TOKENS" \
  --max-epoch "$PRUNE_EPOCHS" --required-batch-size-multiple 1 --no-epoch-checkpoints --save-dir "$OUT"
run fairseq-bso-prune stats "$OUT/checkpoint_last.pt"
run fairseq-bso-prune export "$OUT/checkpoint_last.pt" "$OUT.pt" --sparse "$OUT.sparse"
# stock fairseq-generate: the exported checkpoint needs no --user-dir
translate "pruned$PRUNE_RATIO" "$BEAM" --path "$OUT.pt"
