#!/usr/bin/env bash
# Word ordering "by hand" (the commands of README.md): corpus, NLL training, beam search, BLEU on the
# tokenized text. The demo (demo.py) adds BSO and ConBSO fine-tuning and a BLEU table.
#
#   bash examples/word_ordering/run.sh                 # the King James sentences shipped in data/
#   TRAIN=my/train.txt VALID=my/valid.txt TEST=my/test.txt bash examples/word_ordering/run.sh
#
# Settings (environment): TRAIN, VALID, TEST (one English sentence per line, optionally .gz), RUNS
# (runs/word_ordering), MODEL, EPOCHS (8), BATCH_SIZE (64), BEAM (5).
# Outputs: RUNS/bin, RUNS/nll/checkpoint_best.pt, RUNS/gen.beam5.txt; the last line printed is the BLEU.
HERE=$(cd "$(dirname "$0")" && pwd)
RUNS=${RUNS:-runs/word_ordering}
source "$HERE/../recipes.sh"
TRAIN=${TRAIN:-$HERE/data/kjv.train.txt.gz}
VALID=${VALID:-$HERE/data/kjv.valid.txt.gz}
TEST=${TEST:-$HERE/data/kjv.test.txt.gz}
MODEL=${MODEL:-"--arch lstm --encoder-bidirectional --encoder-embed-dim 128 --encoder-hidden-size 128
  --decoder-embed-dim 128 --decoder-hidden-size 256 --decoder-out-embed-dim 128
  --share-decoder-input-output-embed --dropout 0.2"}
EPOCHS=${EPOCHS:-8}
BATCH_SIZE=${BATCH_SIZE:-64}
BEAM=${BEAM:-5}

if [ -f "$BIN/test.src-tgt.tgt.idx" ]; then
  echo "data: $BIN exists"
else
  run fairseq-bso-prep word-order --train "$TRAIN" --valid "$VALID" --test "$TEST" --out "$RUNS"
fi
run fairseq-train "$BIN" --user-dir "$USER_DIR" $MODEL --criterion cross_entropy --optimizer adam --lr 0.002 \
  --clip-norm 5 --batch-size "$BATCH_SIZE" --max-epoch "$EPOCHS" --required-batch-size-multiple 1 \
  --no-epoch-checkpoints --save-dir "$RUNS/nll"
gen=$RUNS/gen.beam$BEAM.txt
run fairseq-generate "$BIN" --user-dir "$USER_DIR" --path "$RUNS/nll/checkpoint_best.pt" --gen-subset test \
  --beam "$BEAM" --batch-size 100 --required-batch-size-multiple 1 --max-len-a 1 --max-len-b 5 \
  --scoring sacrebleu --sacrebleu-tokenizer none > "$gen"
hypotheses "$gen" H > "$gen.hyp"
[ -s "$gen.hyp" ] || fail "no hypotheses (H- lines) in $gen"
# BLEU on the tokenized, lowercased text as it is (no sacrebleu tokenization), against RUNS/test.tgt
echo "word ordering, beam $BEAM: $(sacrebleu "$RUNS/test.tgt" -i "$gen.hyp" -m bleu -tok none --force -w 2 -f text)"
