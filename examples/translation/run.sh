#!/usr/bin/env bash
# German→English translation with an LSTM attention model (NLL), scored with sacrebleu.
#
#   bash examples/translation/run.sh      # reads ./iwslt14.tokenized.de-en (fairseq's prepare-iwslt14.sh)
#   IWSLT=path/to/iwslt14.tokenized.de-en bash examples/translation/run.sh
#   TEXT=my/corpus SRC=de TGT=en bash examples/translation/run.sh   # my/corpus/{train,valid,test}.{de,en}
#
# Settings (environment): RUNS (runs/iwslt14.de-en), VOCAB (8000), MODEL, EPOCHS (10), MAX_TOKENS (4000),
# BEAM (5). Rerunning resumes: the data is kept, fairseq-train continues from checkpoint_last.pt.
# Outputs: RUNS/bin, RUNS/nll/checkpoint_best.pt, RUNS/gen.nll.beam5.txt; the last line printed is the BLEU.
source "$(dirname "$0")/../recipes.sh"
MODEL=${MODEL:-"--arch lstm_wiseman_iwslt_de_en"}
EPOCHS=${EPOCHS:-10}
MAX_TOKENS=${MAX_TOKENS:-4000}
BEAM=${BEAM:-5}

prepare_translation
run fairseq-train "$BIN" --user-dir "$USER_DIR" $MODEL \
  --criterion cross_entropy --optimizer adam --lr 0.001 --max-tokens "$MAX_TOKENS" --max-epoch "$EPOCHS" \
  --no-epoch-checkpoints --save-dir "$RUNS/nll"
translate nll "$BEAM" --user-dir "$USER_DIR" --path "$RUNS/nll/checkpoint_best.pt"
