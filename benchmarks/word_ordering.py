#!/usr/bin/env python3
"""Word ordering on the King James sentences (../shared/data/kjv): seq2seq vs BSO vs ConBSO, issue 12's protocol.

The talk's first table at a larger scale than the demo (every kjv training sentence of 3 to
``--max-tokens`` tokens: 26,401 sentences; 822 test sentences), with the demo's model:

* an NLL model trained until validation BLEU (beam 5) stops improving (``--patience 4``), its best
  checkpoint the start of every row;
* every row trains ``--epochs`` more epochs from it (Adam 5e-4, seed 1), with validation BLEU at
  beam 5 under the row's own decoding after each epoch (the learning curve) and the checkpoint with
  the best; test BLEU at beams 1 / 5 / 10 under that decoding (``test``) and with the ``word_order``
  constraint at decoding (``test_constrained``; ConBSO's own, with ``test_unconstrained`` beside it),
  and sacrebleu's paired bootstrap of each row's beam 5 against seq2seq's, unconstrained and
  constrained (ConBSO's training effect is ConBSO − seq2seq + constrained decoding);
* rows: ``seq2seq`` (token NLL continued), ``bso`` (the demo's recipe: the prefix log-probability
  score + 1·token NLL, fairseq's standard beam), ``conbso`` (the same with the ``word_order``
  constraint in training and decoding), and ``bso_paper`` (the paper's exact recipe: raw logits,
  ``--bso-decoding``).  The NLL term's lever (the recipe without it) is measured on the demo corpus
  (``demo_recipes.json``, ``bso_recipe.json``) and on translation (``translation.json``).

The stages are ``benchmarks/bso_recipe.py --corpus kjv``'s (its rows seq2seq, bso_log_softmax_nll,
conbso_log_softmax_nll and bso), so the two commands share their runs; every stage
resumes.  The cost of the constraint is measured by ``benchmarks/bso_speed.py --model demo`` on a
quiet machine (``bso_speed_demo.json``), not here.

    python3 -m benchmarks.word_ordering        # writes benchmarks/results/word_ordering.json
"""

import argparse
import os
import time

from benchmarks.common import WORK, paired_bootstrap, write_results

from benchmarks import bso_recipe

# this file's row name: (bso_recipe.py's row, what it is)
ROWS = {
    "seq2seq": ("seq2seq", "token NLL continued"),
    "bso": ("bso_log_softmax_nll", "prefix log-probability score + 1·token NLL (the demo's recipe), standard beam"),
    "conbso": ("conbso_log_softmax_nll", "bso + the word_order constraint in training and decoding"),
    "bso_paper": ("bso", "the paper: raw logits, gold K-th = self, --bso-decoding"),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(WORK, "kjv"))
    parser.add_argument("--max-tokens", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=8, help="extra epochs of every row after the NLL model")
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once (one thread each)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    if "seq2seq" not in args.rows:
        parser.error("--rows must include seq2seq (every row is compared with it)")
    rows = {name: ROWS[name] for name in args.rows}
    started = time.time()
    recipe_args = bso_recipe.parser().parse_args(
        ["--corpus", "kjv", "--max-tokens", str(args.max_tokens), "--workdir", args.workdir,
         "--epochs", str(args.epochs), "--jobs", str(args.jobs), "--rows", *(row for row, _ in rows.values())])
    results, settings, references, hypotheses = bso_recipe.run(recipe_args)
    out = {"nll_baseline": results["nll_baseline"]}
    for name, (row, what) in rows.items():
        out[name] = {**results[row], "lever": what, "bso_recipe_row": row}
    beam5 = {name: hypotheses[row] for name, (row, _) in rows.items()}
    out["minus_seq2seq_beam5"] = {name: round(out[name]["test"]["5"] - out["seq2seq"]["test"]["5"], 2)
                                  for name in rows if name != "seq2seq"}
    out["paired_bootstrap_beam5"] = paired_bootstrap(beam5, references, tokenize="none")
    # every row decoded with the word_order constraint against seq2seq + constrained decoding (ConBSO's training effect)
    out["minus_seq2seq_constrained_beam5"] = {
        name: round(out[name]["test_constrained"]["5"] - out["seq2seq"]["test_constrained"]["5"], 2)
        for name in rows if name != "seq2seq"}
    beam5_constrained = {name: bso_recipe.test_hypotheses(recipe_args, row, len(references), constrained=True)
                         for name, (row, _) in rows.items()}
    out["paired_bootstrap_beam5_constrained"] = paired_bootstrap(beam5_constrained, references, tokenize="none")
    out["conditions"] = "rows trained two at a time, one thread each, while other benchmarks shared the 2 cores"
    for name in rows:
        r = out[name]
        print(f"{name:10s} best epoch {r['best_epoch']:2d} valid {r['best_valid_bleu']:6.2f} test "
              + " / ".join(f"{r['test'][b]:.2f}" for b in ("1", "5", "10")) + " constrained decoding "
              + " / ".join(f"{r['test_constrained'][b]:.2f}" for b in ("1", "5", "10")))
    print(out["minus_seq2seq_beam5"], out["paired_bootstrap_beam5"])
    write_results("word_ordering", out, started, settings=settings)


if __name__ == "__main__":
    main()
