#!/usr/bin/env python3
"""Translation on l10n-de-en (de→en): continued NLL vs BSO with SB-Δ, from the same converged NLL model.

Question: fine-tuned from the same converged NLL model for the same number of extra epochs, does a BSO
model, decoded as it was trained, beat continued NLL at test beam 5 (by 1 BLEU) and gain from the beam?

Protocol (fixed before the runs):

* data: l10n-de-en, joint sentencepiece 4k (``deen.data``); model: the teacher of ``benchmarks/deen.py``
  (1-layer bi-LSTM 256, LSTM decoder 256, dropout 0.2), seed 1, one thread per run;
* NLL baseline: the teacher, trained until validation BLEU (beam 5) has not improved for 3 epochs; its best
  checkpoint (the teacher of ``results/translation.json`` stopped at a 20-epoch cap instead, best epoch 19:
  its ``nll_baseline`` entry says so, and continued NLL still gains on it);
* every row starts from it (``--finetune-from-model``) and trains ``--extra-epochs`` more epochs (no early
  stop: equal budget) with Adam and the same batching (``--max-tokens``, 2000 for every row; until issue 29
  seq2seq trained with 4000, twice the updates per epoch of a BSO row: those runs are not reused, see
  ``run_name``); valid BLEU at beam 5 under the row's own decoding after every epoch (the
  learning curve); the checkpoint with the best valid BLEU; detokenized sacrebleu test BLEU at beams 1/5/10;
* rows (``--rows``): ``seq2seq`` (token NLL, lr 5e-4), ``bso`` (the paper: raw-logit score, SB-Δ, curriculum
  2 → 6 one epoch per K, Adam 1.5e-3 — the learning rate at which the raw-score climb reached continued NLL
  on word ordering, ``bso_recipe_long.json``; ``--bso-decoding``), ``bso_stop`` (+ ``--bso-learn-to-stop`` as
  the step was until commit 5ac75c7), ``bso_stop_at_finish`` (+ ``--bso-learn-to-stop``, the current step),
  ``bso_log_softmax`` (the defaults: prefix log-probability score, gold K-th → (K−1)-th; fairseq's standard
  beam); ``bso_log_softmax_nll`` (the defaults + 1·token NLL, ``--bso-nll-weight 1``: continued NLL's own gain
  kept under the margin loss, after Edunov et al. 2018's mixtures); ``bso_log_softmax_nll0.5`` and
  ``bso_log_softmax_nll2`` (the same with λ = 0.5 and λ = 2: the weight's ablation).

    python3 -m benchmarks.translation                          # all rows, one after another
    python3 -m benchmarks.translation --only bso               # train one row (parallel processes)
    python3 -m benchmarks.translation --report                 # results from the finished rows
    python3 -m benchmarks.translation --extra-epochs 16        # a longer budget: extends the 8-epoch runs
    python3 -m benchmarks.translation --seed 2 --only seq2seq  # another seed (runs and results file ``_s2``)

Each run resumes (``checkpoint_last.pt``).  A run of N extra epochs starts from a copy of the same row's
finished run of fewer epochs when there is one (the learning rate is constant and the curriculum counts
epochs, so its first epochs are that run's epochs: nothing is trained twice).  Results in
benchmarks/results/translation.json (8 extra epochs, seed 1), translation_e{N}.json or translation_s{seed}.json
otherwise (``results_name``).
"""

import argparse
import glob
import os
import shutil
import time

from benchmarks import deen
from benchmarks.common import paired_bootstrap, write_results
from fairseq_bso.evaluation import parse_hypotheses

BSO = ["--task", "constrained_beam_training", "--criterion", "bso", "--bso-cost", "sentence_bleu",
       "--bso-beam-size", "6", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1"]
RAW = ["--bso-score", "logit", "--bso-gold-kth", "self"]
# name: (training options, decoding options)
STOP = ([*BSO, *RAW, "--lr", "0.0015", "--bso-learn-to-stop"], ["--task", "constrained_beam_training", "--bso-decoding"])


def log_softmax_row(*levers):
    """The defaults (prefix log-probability score, gold K-th → (K−1)-th, lr 5e-4) plus ``levers``;
    fairseq's standard beam."""
    return ([*BSO, "--bso-score", "log_softmax", "--bso-gold-kth", "previous", *levers, "--lr", "0.0005"],
            ["--task", "constrained_beam_training"])


ROWS = {
    "seq2seq": (["--criterion", "cross_entropy", "--lr", "0.0005"], []),
    "bso": ([*BSO, *RAW, "--lr", "0.0015"], ["--task", "constrained_beam_training", "--bso-decoding"]),
    # the learning-to-stop step as it was until commit 5ac75c7 (a finished hypothesis compared at the gold's last
    # step only, discarded by a reset); its run and results date from then: the code no longer trains it
    "bso_stop": STOP,
    # the same options with the current step: a finished hypothesis is compared with the gold's final score
    # at the step where it finishes
    "bso_stop_at_finish": STOP,
    "bso_log_softmax": log_softmax_row(),
    "bso_log_softmax_nll": log_softmax_row("--bso-nll-weight", "1"),
    # the NLL weight λ either side of 1 (issue 12's λ·NLL lever), one change per row
    "bso_log_softmax_nll0.5": log_softmax_row("--bso-nll-weight", "0.5"),
    "bso_log_softmax_nll2": log_softmax_row("--bso-nll-weight", "2"),
}

# rows whose run is older than the code that now trains their options
ROW_NOTES = {
    "bso_stop": "trained at commit d42a5a2, with the learning-to-stop step as it was until 5ac75c7 (a finished "
                "hypothesis compared only at the gold's last step, and only if no reset had discarded it; the gold "
                "ranked among the unfinished items only); the current code trains row bso_stop_at_finish instead",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--extra-epochs", type=int, default=8)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--only", choices=list(ROWS), help="train just this row and stop")
    parser.add_argument("--report", action="store_true", help="train nothing: report the finished rows")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--seed", type=int, default=1, help="training seed of every row (the NLL start is seed 1's)")
    parser.add_argument("--max-tokens", type=int, default=2000,
                        help="batch size in tokens of every row (the same for all: equal updates per epoch)")
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    pretrained = os.path.join(deen.DIR, "teacher", "checkpoint_best.pt")
    if not deen.finished("teacher"):
        if args.report:
            raise SystemExit(f"--report: no finished NLL baseline (teacher) in {deen.DIR}/teacher")
        pretrained = deen.teacher(bin_dir)
    results, missing, beam5 = {"nll_baseline": deen.run_info("teacher")}, [], {}
    if not args.only:  # the starting point at the same test beams (generator's standard beam)
        results["nll_baseline"]["test"], _ = deen.bleu(bin_dir, pretrained, "teacher", refs, args.beams)
    for name in [args.only] if args.only else args.rows:
        train, decode = ROWS[name]
        run = run_name(name, args.extra_epochs, args.seed, args.max_tokens)
        if args.report:
            if not deen.finished(run):
                missing.append(name)
                continue
            ckpt = os.path.join(deen.DIR, run, "checkpoint_best.pt")
        else:
            extend_shorter_run(name, args.extra_epochs, args.seed, args.max_tokens)
            ckpt = deen.train(run, bin_dir, args.extra_epochs, deen.TEACHER,
                              ["--finetune-from-model", pretrained, *train, *decode, "--seed", str(args.seed)],
                              max_tokens=args.max_tokens, valid_beam=5, patience=None)
        if args.only:
            return
        test, outputs = deen.bleu(bin_dir, ckpt, run, refs, args.beams, extra=decode)
        results[name] = {"train": train, "decoding": decode, "max_tokens": args.max_tokens, "test": test,
                         **deen.run_info(run)}
        if name in ROW_NOTES:
            results[name]["note"] = ROW_NOTES[name]
        if "5" in outputs:
            beam5[name] = parse_hypotheses(outputs["5"], len(refs), detok=True)
    if "seq2seq" in results:  # the target: BSO ≥ seq2seq + 1 at beam 5 (and its beam 5 ≥ its beam 1)
        results["minus_seq2seq_beam5"] = {
            name: round(row["test"]["5"] - results["seq2seq"]["test"]["5"], 2)
            for name, row in results.items() if name.startswith("bso") and "test" in row and "5" in row["test"]}
        if "seq2seq" in beam5 and len(beam5) > 1:
            results["paired_bootstrap_beam5"] = paired_bootstrap(beam5, refs)
    results["missing"] = missing
    print(results)
    write_results(results_name(args.extra_epochs, args.seed), results, started, settings=args, seeds=[args.seed])


def results_name(extra_epochs, seed):
    """translation.json for the measured protocol (8 extra epochs, seed 1); other budgets and seeds get their
    own file, e.g. translation_e16.json, translation_s2.json."""
    return "translation" + ("" if extra_epochs == 8 else f"_e{extra_epochs}") + ("" if seed == 1 else f"_s{seed}")


# the batching each row's runs were trained with before every row shared --max-tokens (issue 29): a run of another
# batching gets its own name, so that it never resumes (or extends) a run trained at different batch sizes
LEGACY_MAX_TOKENS = {"seq2seq": 4000}


def run_name(name, extra_epochs, seed, max_tokens=2000):
    legacy = LEGACY_MAX_TOKENS.get(name, 2000)
    return (f"translation_{name}_e{extra_epochs}" + ("" if seed == 1 else f"_s{seed}")
            + ("" if max_tokens == legacy else f"_mt{max_tokens}"))


def extend_shorter_run(name, extra_epochs, seed, max_tokens):
    """Start run ``name`` of ``extra_epochs`` from a copy of the longest finished run of the same row and seed
    with fewer epochs (its checkpoints and logs, not its ``done`` marker): fairseq resumes the copy's
    ``checkpoint_last.pt`` and trains the remaining epochs, with the copy's best valid BLEU kept."""
    target = os.path.join(deen.DIR, run_name(name, extra_epochs, seed, max_tokens))
    if os.path.exists(target):
        return
    epochs = next((m for m in range(extra_epochs - 1, 0, -1) if deen.finished(run_name(name, m, seed, max_tokens))),
                  None)
    if epochs is None:
        return
    source = os.path.join(deen.DIR, run_name(name, epochs, seed, max_tokens))
    os.makedirs(target + ".tmp", exist_ok=True)
    for ckpt in ("checkpoint_last.pt", "checkpoint_best.pt"):
        shutil.copy2(os.path.join(source, ckpt), os.path.join(target + ".tmp", ckpt))
    os.replace(target + ".tmp", target)
    for log in glob.glob(source + ".*.log"):  # its learning curve and wall time (run_info reads these)
        shutil.copy2(log, target + log[len(source):])
    deen.demo.log(f"{os.path.basename(target)}: extends {os.path.basename(source)} ({epochs} epochs)")


if __name__ == "__main__":
    main()
