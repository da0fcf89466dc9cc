# Shared by the examples' run.sh scripts (sourced, not run): paths, the de-en data, scoring.
#
# Every setting is an environment variable with a default; the scripts print each command
# before running it. Outputs go under RUNS (relative to the current directory).

set -euo pipefail

EXAMPLES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USER_DIR=${USER_DIR:-$(dirname "$EXAMPLES")/fairseq_bso}   # the plugin folder, for --user-dir

# Translation data. IWSLT = the folder fairseq's examples/translation/prepare-iwslt14.sh writes
# (iwslt14.tokenized.de-en). Its top-level {train,valid,test}.{de,en} carry fairseq's BPE (subword-nmt
# "@@ " joins); the recipes segment with sentencepiece themselves, so they read the same text before
# BPE (Moses-tokenized, lowercased), which the script leaves in IWSLT/tmp. TEXT = any folder with
# {train,valid,test}.{SRC,TGT} (one segment per line, parallel) instead.
IWSLT=${IWSLT:-iwslt14.tokenized.de-en}
TEXT=${TEXT:-$IWSLT/tmp}
SRC=${SRC:-de}
TGT=${TGT:-en}
RUNS=${RUNS:-runs/iwslt14.$SRC-$TGT}
VOCAB=${VOCAB:-8000}          # joint sentencepiece vocabulary
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-6000}
BIN=$RUNS/bin

# The distillation student (also the model the pruning recipe prunes): half the teacher's width.
STUDENT=${STUDENT:-"--arch lstm --encoder-bidirectional --encoder-embed-dim 128 --encoder-hidden-size 128
  --decoder-embed-dim 128 --decoder-hidden-size 128 --decoder-out-embed-dim 128
  --share-decoder-input-output-embed --dropout 0.1"}

fail() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

run() { echo "+ $*" >&2; "$@"; }   # print each command (to stderr: outputs may be redirected)

# Text -> joint sentencepiece model (training side only) -> encoded and binarized into RUNS/bin.
# Skipped when RUNS/bin is complete (delete RUNS to start over with other data or VOCAB).
prepare_translation() {
  if [ -f "$BIN/test.$SRC-$TGT.$TGT.idx" ]; then
    echo "data: $BIN exists"
    return
  fi
  local split lang
  for split in train valid test; do
    for lang in "$SRC" "$TGT"; do
      [ -f "$TEXT/$split.$lang" ] || fail "no $TEXT/$split.$lang. Run fairseq's examples/translation/prepare-iwslt14.sh \
and set IWSLT to the iwslt14.tokenized.de-en folder it writes (now: $IWSLT), or set TEXT to a folder with \
{train,valid,test}.{$SRC,$TGT}"
    done
  done
  run fairseq-bso-prep translation --trainpref "$TEXT/train" --validpref "$TEXT/valid" --testpref "$TEXT/test" \
    --source-lang "$SRC" --target-lang "$TGT" --out "$RUNS" --vocab-size "$VOCAB"
}

# The best hypothesis per sentence in sentence order, from fairseq-generate output:
# hypotheses FILE H|D (H: as the model writes them; D: after --post-process).
hypotheses() {
  { grep "^$2-" "$1" || true; } | cut -c3- | sort -t "$(printf '\t')" -k1,1n -s | awk -F '\t' '!seen[$1]++' |
    cut -f3-
}

# translate NAME BEAM [fairseq-generate options...]: decode the test set of RUNS/bin and print the
# detokenized BLEU of the output against the raw reference RUNS/test.TGT (the sacrebleu command line,
# 13a tokenization). fairseq's own score line (--scoring sacrebleu, against the binarized reference) is
# the last line of RUNS/gen.NAME.beamBEAM.txt.
translate() {
  local name=$1 beam=$2
  shift 2
  local gen=$RUNS/gen.$name.beam$beam.txt
  run fairseq-generate "$BIN" --gen-subset test --beam "$beam" --max-tokens "$GEN_MAX_TOKENS" \
    --required-batch-size-multiple 1 --max-len-a 1.5 --max-len-b 10 \
    --post-process sentencepiece --scoring sacrebleu "$@" > "$gen"
  hypotheses "$gen" D > "$gen.detok"
  [ -s "$gen.detok" ] || fail "no hypotheses (D- lines) in $gen"
  echo "$name, beam $beam: $(sacrebleu "$RUNS/test.$TGT" -i "$gen.detok" -m bleu -w 2 -f text)"
}
