#!/usr/bin/env bash
# Sequence-level knowledge distillation (Kim and Rush, 2016): the translation recipe's model is the
# teacher; its beam output on the training set (Seq-KD) or its n-best hypothesis closest to the reference
# (Seq-Inter) trains a student of half its width; Word-KD trains one against the teacher's distribution.
#
#   bash examples/distillation/run.sh     # runs examples/translation/run.sh first if the teacher is missing
#
# Same data settings as examples/translation/run.sh (IWSLT or TEXT, SRC, TGT, RUNS, VOCAB). Others
# (environment): STUDENTS ("seq_kd word_kd seq_inter baseline"), STUDENT (model options), STUDENT_EPOCHS (5),
# MAX_TOKENS (4000), KD_BEAM (5), INTER_BEAM (5), BEAMS ("1 5": test beams), TEACHER (checkpoint).
# Outputs: RUNS/kd_beam, RUNS/kd_inter (corpora and bin), RUNS/student_NAME; one BLEU line per student and beam.
source "$(dirname "$0")/../recipes.sh"
STUDENTS=${STUDENTS:-"seq_kd word_kd seq_inter baseline"}
STUDENT_EPOCHS=${STUDENT_EPOCHS:-5}
MAX_TOKENS=${MAX_TOKENS:-4000}
KD_BEAM=${KD_BEAM:-5}
INTER_BEAM=${INTER_BEAM:-5}
BEAMS=${BEAMS:-"1 5"}
TEACHER=${TEACHER:-$RUNS/nll/checkpoint_best.pt}

if [ ! -f "$TEACHER" ]; then
  echo "no teacher at $TEACHER: running examples/translation/run.sh"
  bash "$EXAMPLES/translation/run.sh"
fi
prepare_translation

# A distillation corpus: the teacher's output on the training set (--task seq_kd), binarized with the
# teacher's dictionaries (the student's vocabulary is the teacher's). corpus NAME [generate options...]
corpus() {
  local out=$RUNS/$1
  shift
  if [ -f "$out/bin/train.$SRC-$TGT.$TGT.idx" ]; then
    echo "corpus: $out/bin exists"
    return
  fi
  run fairseq-generate "$BIN" --user-dir "$USER_DIR" --task seq_kd --path "$TEACHER" --gen-subset train \
    --max-tokens "$GEN_MAX_TOKENS" --required-batch-size-multiple 1 --max-len-a 1.5 --max-len-b 10 \
    --kd-output-dir "$out" --kd-write-scores "$@" > "$out.log"
  grep "seq_kd:" "$out.log" || true
  run fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" --trainpref "$out/train" \
    --validpref "$RUNS/valid.spm" --testpref "$RUNS/test.spm" \
    --srcdict "$BIN/dict.$SRC.txt" --tgtdict "$BIN/dict.$TGT.txt" --destdir "$out/bin"
}

# student NAME DATA [training options...]
student() {
  local name=$1 data=$2
  shift 2
  run fairseq-train "$data" --user-dir "$USER_DIR" $STUDENT "$@" \
    --optimizer adam --lr 0.002 --clip-norm 5 --max-tokens "$MAX_TOKENS" --max-epoch "$STUDENT_EPOCHS" \
    --required-batch-size-multiple 1 --no-epoch-checkpoints --save-dir "$RUNS/student_$name"
}

for name in $STUDENTS; do
  case $name in
    seq_kd)  # the teacher's beam output replaces the reference
      corpus kd_beam --beam "$KD_BEAM"
      student seq_kd "$RUNS/kd_beam/bin" --criterion cross_entropy ;;
    seq_inter)  # of the teacher's n-best, the hypothesis with the highest sentence BLEU against the reference
      corpus kd_inter --beam "$INTER_BEAM" --nbest "$INTER_BEAM" --kd-selection seq_inter
      student seq_inter "$RUNS/kd_inter/bin" --criterion cross_entropy ;;
    word_kd)  # the original data, against the teacher's distribution at every gold prefix
      student word_kd "$BIN" --criterion word_kd --kd-teacher-path "$TEACHER" --kd-alpha 0.5 ;;
    baseline)  # the student's architecture on the original data
      student baseline "$BIN" --criterion cross_entropy ;;
    *) fail "unknown student '$name' in STUDENTS (seq_kd, seq_inter, word_kd, baseline)" ;;
  esac
done
for name in $STUDENTS; do
  for beam in $BEAMS; do
    translate "student_$name" "$beam" --user-dir "$USER_DIR" --path "$RUNS/student_$name/checkpoint_best.pt"
  done
done
