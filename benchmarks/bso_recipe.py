#!/usr/bin/env python3
"""Which BSO recipe wins?  An equal-budget ablation on the demo's word-ordering corpus.

Question: fine-tuned from the same converged NLL model for the same number of extra
epochs, which BSO levers give a model that, decoded as it was trained, beats
continued NLL training at test beam 5 (and gains from the beam)?

Protocol (fixed before the runs):

* data: the demo's embedded King James corpus (12,000 / 400 / 400 sentences,
  ``examples/word_ordering/data``), the demo's model (1-layer bi-LSTM encoder, 256
  LSTM decoder, dropout 0.2), seed 1, one thread per run;
* NLL baseline: token NLL, Adam 2e-3, until validation BLEU (fairseq's standard beam 5,
  ``--eval-bleu``) has not improved for 4 epochs (``--patience 4``); best checkpoint;
* every row starts from that checkpoint (``--finetune-from-model``) and trains
  ``--epochs`` more epochs with Adam ``--lr``; valid BLEU at beam 5 *under the row's own
  decoding* after every epoch (the learning curve); the checkpoint with the best valid
  BLEU is kept; test BLEU at beams 1 / 5 / 10 under the row's decoding (``test``), the same with
  the ``word_order`` constraint at decoding (``test_constrained``; a ConBSO row's own, and its
  ``test_unconstrained`` without it) and, for BSO rows, under the other decoding too;
* one lever changes per row against ``bso`` (the paper's recipe: raw-logit score,
  0/1 Δ, beam curriculum 2 → 6 one epoch per K, K_tr = 6).

    python3 -m benchmarks.bso_recipe                       # all rows, 2 at a time
    python3 -m benchmarks.bso_recipe --rows seq2seq bso    # some rows
    python3 -m benchmarks.bso_recipe --epochs 36 --rows seq2seq bso   # the same runs, extended to 36 epochs

A longer budget resumes the same runs (``checkpoint_last.pt``), so the first 12 epochs of a
36-epoch row are its 12-epoch row; each budget keeps its own best checkpoint
(``checkpoint_best_e{N}.pt``), selected by valid BLEU within that budget.
Each stage resumes (a finished run is skipped); results in benchmarks/results/bso_recipe.json.
"""

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import (ROOT, SHARED, WORK, demo, epoch_values, word_order_test_bleu, word_order_train,
                               write_file, write_results)
from fairseq_bso.evaluation import parse_hypotheses
from fairseq_bso.prep import prepare_word_order, read_lines

BSO = ["--criterion", "bso", "--bso-beam-size", "6", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1",
       "--bso-score", "logit", "--bso-gold-kth", "self"]  # the paper; a row's later options override
RAW = ["--bso-decoding"]
CONSTRAINT = ["--constraint", "word_order"]
# name: (training options, decoding options, what changes against the row above it / against bso)
ROWS = {
    "seq2seq": (["--criterion", "cross_entropy"], [], "continued token NLL (the baseline)"),
    "bso": (BSO, RAW, "the paper: raw-logit score, 0/1 Δ, curriculum 2→6, Adam"),
    "bso_kth_previous": ([*BSO, "--bso-gold-kth", "previous"], RAW, "gold exactly K-th: rival is the (K-1)-th"),
    "bso_nll": ([*BSO, "--bso-nll-weight", "1"], RAW, "+ 1·token NLL"),
    "bso_log_softmax": ([*BSO, "--bso-score", "log_softmax"], [], "score = prefix log-probability"),
    "bso_log_softmax_nll": ([*BSO, "--bso-score", "log_softmax", "--bso-nll-weight", "1"], [],
                            "score = prefix log-probability, + 1·token NLL"),
    "bso_adagrad": ([*BSO, "--optimizer", "adagrad"], RAW, "Adagrad (the authors' optimizer) instead of Adam"),
    "bso_log_softmax_kth_previous": ([*BSO, "--bso-score", "log_softmax", "--bso-gold-kth", "previous"], [],
                                     "score = prefix log-probability, gold K-th: rival (K-1)-th (the defaults)"),
    "conbso_log_softmax_nll": ([*BSO, "--bso-score", "log_softmax", "--bso-nll-weight", "1"],
                               ["--constraint", "word_order"],
                               "bso_log_softmax_nll with the word_order constraint in training and decoding (ConBSO)"),
    "conbso_log_softmax": ([*BSO, "--bso-score", "log_softmax"], ["--constraint", "word_order"],
                           "score = prefix log-probability, word_order constraint in training and decoding"),
    "bso_stop": ([*BSO, "--bso-learn-to-stop"], RAW, "+ learning to stop (finished hypotheses leave the beam and "
                                                     "rival the gold's final score)"),
    "bso_log_softmax_kth_previous_stop": (
        [*BSO, "--bso-score", "log_softmax", "--bso-gold-kth", "previous", "--bso-learn-to-stop"], [],
        "the defaults (log-probability score, gold K-th: rival (K-1)-th) + learning to stop"),
    "bso_dropout": ([*BSO, "--bso-dropout", "shared"], RAW,
                    "decoder dropout (0.2) on in both passes, masks shared by sentence and step"),
    "bso_adagrad_reset": ([*BSO, "--optimizer", "adagrad", "--lr", "0.01", "--bso-curriculum-reset-optimizer"], RAW,
                          "Adagrad at the authors' lr 0.01, accumulators reset when K grows (the authors' code)"),
    "bso_lr3x": ([*BSO, "--lr", "0.0015"], RAW, "the paper's recipe at 3x the learning rate (Adam 1.5e-3): does the "
                                                 "raw-score climb go faster?"),
    "conbso_lr3x": ([*BSO, "--lr", "0.0015"], [*RAW, "--constraint", "word_order"],
                    "bso_lr3x with the word_order constraint in training and decoding (ConBSO)"),
}


def fairseq_train(args, bin_dir, save_dir, extra, decode, epochs=None):
    """One training run with per-epoch valid BLEU under the given decoding; skipped when done.

    With ``epochs``, the run stops after that many epochs and its best checkpoint so far is
    kept as ``checkpoint_best_e{epochs}.pt``; a later call with more epochs resumes the same
    run from ``checkpoint_last.pt`` (so a 36-epoch row extends its 12-epoch row)."""
    done = os.path.join(save_dir, "done" if epochs is None else f"done_e{epochs}")
    if os.path.exists(done) or (epochs == 12 and os.path.exists(os.path.join(save_dir, "done"))):
        return
    optimizer = [] if "--optimizer" in extra else ["--optimizer", "adam"]
    word_order_train(bin_dir, save_dir, [*optimizer, *extra, *decode], seed=1, threads=args.threads, marker=None)
    if epochs is not None:
        import shutil
        best = os.path.join(save_dir, "checkpoint_best.pt")
        write_file(best[:-3] + f"_e{epochs}.pt", save=lambda tmp: shutil.copyfile(best, tmp))
    open(done, "w").close()


def test_bleu(args, bin_dir, ckpt, decode, name, references):
    """{beam: test BLEU} of ``ckpt`` under ``decode``; the outputs in ``test.NAME.eEPOCHS.beamB.log``."""
    return word_order_test_bleu(bin_dir, ckpt, decode, args.beams,
                                lambda beam: os.path.join(args.workdir, f"test.{name}.e{args.epochs}.beam{beam}.log"),
                                references)[0]


def run_row(args, bin_dir, nll_ckpt, name, references):
    train_args, decode, _ = ROWS[name]
    save = os.path.join(args.workdir, name)
    fairseq_train(args, bin_dir, save, ["--lr", str(args.lr), *train_args, "--max-epoch", str(args.epochs),
                                        "--finetune-from-model", nll_ckpt], decode, epochs=args.epochs)
    best = os.path.join(save, f"checkpoint_best_e{args.epochs}.pt")
    if not os.path.exists(best):  # a row finished before the per-epoch-budget copies
        best = os.path.join(save, "checkpoint_best.pt")
    row = {"lever": ROWS[name][2], "train_options": train_args, "decoding": decode or ["standard beam"],
           "extra_epochs": args.epochs,
           "valid_curve": [e for e in epoch_values(save + ".log", "valid", "valid_bleu") if e[0] <= args.epochs]}
    row["best_epoch"], row["best_valid_bleu"] = max(row["valid_curve"], key=lambda e: e[1])
    row["test"] = test_bleu(args, bin_dir, best, decode, name, references)
    # with and without the word_order constraint at decoding (issue 29: ConBSO's training effect is ConBSO against
    # the other rows decoded with the constraint too)
    if "--constraint" in decode:
        row["test_constrained"] = row["test"]
        row["test_unconstrained"] = test_bleu(args, bin_dir, best, [o for o in decode if o not in CONSTRAINT],
                                              name + ".unconstrained", references)
    else:
        row["test_constrained"] = test_bleu(args, bin_dir, best, [*decode, *CONSTRAINT], name + ".constrained",
                                            references)
    if name != "seq2seq":  # the other decoding, for comparison
        constraint = [o for o in decode if o != "--bso-decoding"]
        other = constraint if "--bso-decoding" in decode else [*constraint, *RAW]
        row["test_other_decoding"] = {"decoding": other or ["standard beam"],
                                      **test_bleu(args, bin_dir, best, other, name + ".other", references)}
    demo.log(f"{name}: best epoch {row['best_epoch']} valid {row['best_valid_bleu']} test {row['test']}")
    return name, row


def parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(WORK, "bso_recipe"))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--epochs", type=int, default=12, help="extra epochs of every row")
    parser.add_argument("--lr", type=float, default=0.0005)
    parser.add_argument("--jobs", type=int, default=2, help="rows trained at once (one thread each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    parser.add_argument("--corpus", choices=["demo", "kjv"], default="demo",
                        help="demo: the embedded corpus (examples/word_ordering/data); kjv: ../shared/data/kjv, "
                             "sentences of at most --max-tokens tokens (the word_ordering benchmark's corpus)")
    parser.add_argument("--max-tokens", type=int, default=15, help="with --corpus kjv")
    return parser


def run(args):
    """Train (or resume) the NLL baseline and ``args.rows``; (results, settings, test references, test
    hypotheses at beam 5 under each row's own decoding)."""
    os.makedirs(args.workdir, exist_ok=True)
    corpus = os.path.join(args.workdir, "corpus")
    bin_dir = os.path.join(corpus, "bin")
    if not os.path.exists(os.path.join(bin_dir, "test.src-tgt.tgt.idx")):
        if args.corpus == "kjv":
            kjv = os.path.join(SHARED, "kjv")
            prepare_word_order(f"{kjv}/train.txt", f"{kjv}/valid.txt", f"{kjv}/test.txt", corpus, args.max_tokens)
        else:
            data = os.path.join(ROOT, "examples", "word_ordering", "data")
            prepare_word_order(*(os.path.join(data, f"kjv.{s}.txt.gz") for s in ("train", "valid", "test")), corpus)
    references = read_lines(os.path.join(corpus, "test.tgt"))

    nll_dir = os.path.join(args.workdir, "nll")
    fairseq_train(args, bin_dir, nll_dir, ["--criterion", "cross_entropy", "--lr", "0.002", "--max-epoch", "40",
                                           "--patience", "4"], [])
    nll_ckpt = os.path.join(nll_dir, "checkpoint_best.pt")
    nll_curve = epoch_values(nll_dir + ".log", "valid", "valid_bleu")
    results = {"nll_baseline": {"valid_curve": nll_curve, "epochs": len(nll_curve),
                                "best_epoch": max(nll_curve, key=lambda e: e[1])[0],
                                "best_valid_bleu": max(nll_curve, key=lambda e: e[1])[1],
                                "test": test_bleu(args, bin_dir, nll_ckpt, [], "nll", references)}}
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, row in pool.map(lambda n: run_row(args, bin_dir, nll_ckpt, n, references), args.rows):
            results[name] = row
    print(f"{'row':22s} {'best ep':>7s} {'valid':>6s}   test beams " + " / ".join(map(str, args.beams)))
    for name in args.rows:
        r = results[name]
        print(f"{name:22s} {r['best_epoch']:7d} {r['best_valid_bleu']:6.2f}   "
              + " / ".join(f"{r['test'][str(b)]:.2f}" for b in args.beams))
    settings = {"corpus": args.corpus, "max_tokens": args.max_tokens if args.corpus == "kjv" else None,
                "epochs": args.epochs, "lr": args.lr, "threads_per_run": args.threads, "jobs": args.jobs,
                "model": demo.MODEL, "batch_size": 64, "train_sentences": len(read_lines(os.path.join(corpus, "train.tgt"))),
                "test_sentences": len(references), "valid_decoding_beam": 5}
    hypotheses = {name: test_hypotheses(args, name, len(references)) for name in args.rows} if 5 in args.beams else {}
    return results, settings, references, hypotheses


def test_hypotheses(args, name, n, constrained=False):
    """A row's test output at beam 5 under its own decoding (the log test_bleu wrote), in input order; with
    ``constrained``, its output decoded with the word_order constraint."""
    if constrained and "--constraint" not in ROWS[name][1]:
        name += ".constrained"
    with open(os.path.join(args.workdir, f"test.{name}.e{args.epochs}.beam5.log")) as f:
        return parse_hypotheses(f.read(), n)


def main():
    started = time.time()
    args = parser().parse_args()
    results, settings, _, _ = run(args)
    write_results("bso_recipe" + args.tag, results, started, settings=settings)


if __name__ == "__main__":
    main()
