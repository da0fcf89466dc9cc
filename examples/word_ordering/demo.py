#!/usr/bin/env python3
"""Word-ordering demo: recover an English sentence from its sorted words.

Runs the real fairseq tools with the plugin on the embedded King James corpus
(``data/kjv.*.txt.gz``, public domain): ``fairseq-preprocess`` →
``fairseq-train --user-dir fairseq_bso`` → ``fairseq-generate --user-dir
fairseq_bso`` at test beams 1, 5 and 10, then prints a BLEU table (sacrebleu on
the tokenized, lowercased text, ``tokenize='none'``) with three rows, as in the
talk:

* seq2seq: token NLL (``--criterion cross_entropy``), fairseq's standard beam;
* BSO: the NLL model fine-tuned with ``--criterion bso`` (beam curriculum 2 → 6),
  decoded with ``--bso-decoding`` (raw scores, a finished hypothesis scores f(</s>));
* ConBSO: the same with ``--constraint word_order`` in training and decoding.

    python examples/word_ordering/demo.py                 # the README's main job
    python examples/word_ordering/demo.py --workdir runs/wo --train ../shared/data/kjv/train.txt ...

Every stage is skipped when its output already exists, so a rerun resumes.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from fairseq_bso.evaluation import corpus_bleu, parse_hypotheses  # noqa: E402
from fairseq_bso.path import user_dir  # noqa: E402
from fairseq_bso.prep import prepare_word_order, read_lines  # noqa: E402

# A small bidirectional LSTM attention model that trains in minutes on 2 cores.
MODEL = [
    "--arch", "lstm", "--encoder-bidirectional",
    "--encoder-embed-dim", "128", "--encoder-hidden-size", "128",
    "--decoder-embed-dim", "128", "--decoder-hidden-size", "256", "--decoder-out-embed-dim", "128",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--dropout", "0.2", "--share-decoder-input-output-embed",
]
# fairseq >= 0.12.3 drops the last partial batch when the batch-size multiple is > 1.
COMMON = ["--cpu", "--seed", "1", "--num-workers", "0", "--required-batch-size-multiple", "1"]

STARTED = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - STARTED:6.0f}s] {msg}", flush=True)


def run(cmd, logfile, echo=lambda line: False):
    """Run a fairseq command, keep its full log, echo the progress lines."""
    log("+ " + " ".join(cmd))
    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            out.write(line)
            lines.append(line)
            if echo(line):
                print("    " + line.rstrip().split(" | INFO | ")[-1][:200], flush=True)
        if proc.wait() != 0:
            sys.stdout.write("".join(lines[-40:]))
            raise SystemExit(f"command failed ({proc.returncode}); full log: {logfile}")
    return "".join(lines)


def train_progress(line: str) -> bool:
    return "| train |" in line or "| valid |" in line or "| train_inner |" in line or "training beam size" in line


def train(name, bin_dir, save_dir, epochs, args):
    """fairseq-train, skipped when a finished run exists (a rerun resumes from checkpoint_last.pt)."""
    ckpt = os.path.join(save_dir, "checkpoint_last.pt")
    if os.path.exists(os.path.join(save_dir, "done")):
        log(f"{name} model exists: {ckpt}")
        return ckpt
    run(["fairseq-train", bin_dir, "--user-dir", user_dir(), *MODEL, *COMMON, *args,
         "--optimizer", "adam", "--clip-norm", "5", "--batch-size", "64", "--max-epoch", str(epochs),
         "--save-dir", save_dir, "--no-epoch-checkpoints", "--log-format", "simple",
         "--log-interval", "50", "--no-progress-bar"],
        save_dir + ".log", train_progress)
    open(os.path.join(save_dir, "done"), "w").close()
    return ckpt


def evaluate(args, bin_dir, ckpt, name, references, extra=()):
    scores = {}
    for beam in args.beams:
        out = run(["fairseq-generate", bin_dir, "--user-dir", user_dir(), "--path", ckpt, *COMMON,
                   "--gen-subset", "test", "--beam", str(beam), "--nbest", "1",
                   "--batch-size", "100", "--max-len-a", "1", "--max-len-b", "5", *extra],
                  os.path.join(args.workdir, f"generate.{name}.beam{beam}.log"))
        scores[str(beam)] = round(corpus_bleu(parse_hypotheses(out, len(references)), references, tokenized=True), 2)
        log(f"{name}: beam {beam}: BLEU {scores[str(beam)]}")
    return scores


def main():
    data = os.path.join(HERE, "data")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "word_ordering_demo"))
    parser.add_argument("--train", default=os.path.join(data, "kjv.train.txt.gz"))
    parser.add_argument("--valid", default=os.path.join(data, "kjv.valid.txt.gz"))
    parser.add_argument("--test", default=os.path.join(data, "kjv.test.txt.gz"))
    parser.add_argument("--nll-epochs", type=int, default=8)
    parser.add_argument("--bso-epochs", type=int, default=3,
                        help="BSO fine-tuning epochs, one per beam size, ending at K = 6 (3 epochs: K = 4, 5, 6)")
    parser.add_argument("--bso-lr", type=float, default=0.0005)
    parser.add_argument("--methods", nargs="+", default=["seq2seq", "bso", "conbso"],
                        choices=["seq2seq", "bso", "conbso"])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    if args.nll_epochs < 1 or args.bso_epochs < 1:
        parser.error("--nll-epochs and --bso-epochs must be >= 1")
    os.makedirs(args.workdir, exist_ok=True)

    corpus = os.path.join(args.workdir, "corpus")
    bin_dir = os.path.join(corpus, "bin")
    if not os.path.exists(os.path.join(bin_dir, "test.src-tgt.tgt.idx")):
        log("preparing the word-ordering corpus")
        prepare_word_order(args.train, args.valid, args.test, corpus)
    references = read_lines(os.path.join(corpus, "test.tgt"))

    results = {}
    log(f"training seq2seq with token NLL ({args.nll_epochs} epochs)")
    nll = train("seq2seq", bin_dir, os.path.join(args.workdir, "nll"), args.nll_epochs,
                ["--criterion", "cross_entropy", "--lr", "0.002"])
    if "seq2seq" in args.methods:
        results["seq2seq"] = evaluate(args, bin_dir, nll, "seq2seq", references)
    for name, constraint in (("bso", "none"), ("conbso", "word_order")):
        if name not in args.methods:
            continue
        task = ["--task", "constrained_beam_training", "--constraint", constraint]
        log(f"fine-tuning {name} from the NLL model ({args.bso_epochs} epochs, constraint {constraint})")
        ckpt = train(name, bin_dir, os.path.join(args.workdir, name), args.bso_epochs,
                     [*task, "--criterion", "bso", "--bso-beam-size", "6",
                      "--bso-curriculum-start", str(max(2, 7 - args.bso_epochs)),
                      "--bso-curriculum-epochs", "1", "--lr", str(args.bso_lr), "--finetune-from-model", nll])
        results[name] = evaluate(args, bin_dir, ckpt, name, references, extra=[*task, "--bso-decoding"])

    with open(os.path.join(args.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print()
    print(f"Word ordering, test BLEU ({len(references)} sentences, sacrebleu on tokenized text)")
    header = "| method  | " + " | ".join(f"beam {b:>2}" for b in args.beams) + " |"
    names = {"seq2seq": "seq2seq", "bso": "BSO", "conbso": "ConBSO"}
    print(header)
    print("|" + "---|" * (len(args.beams) + 1))
    for name, scores in results.items():
        print(f"| {names[name]:<7} | " + " | ".join(f"{scores[str(b)]:7.2f}" for b in args.beams) + " |")
    log(f"done; results in {os.path.join(args.workdir, 'results.json')}")


if __name__ == "__main__":
    main()
