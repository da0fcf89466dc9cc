#!/usr/bin/env python3
"""BSO at the authors' own setting and budget on the demo corpus, against continued NLL (issue 29.3).

Question: trained as the authors trained it (harvardnlp/BSO ``bso_train.lua`` and README: raw-logit
score, 0/1 Δ, dropout kept with masks shared by search and re-scoring, Adagrad with per-layer rates
0.02 / 0.02 / 0.2 reset whenever K grows, beam curriculum 2 → 6 with 2 epochs per K, up to 39 BSO
epochs), does BSO beat NLL training continued for the same epochs, at test beam 5, over training seeds?

Protocol (fixed before the runs):

* data: the demo's embedded King James corpus (12,000 / 400 / 400 sentences); the demo's model
  (1-layer bi-LSTM encoder 128, LSTM decoder 256, dropout 0.2, shared decoder input/output embedding);
* NLL start: token NLL, Adam 2e-3, batch 64, seed 1, until validation BLEU (fairseq's standard beam 5)
  has not improved for 4 epochs (``--patience 4``), at most ``--nll-max-epochs``; its best checkpoint
  is the start of every row of every seed (one NLL model: the seeds are the continuation's);
* rows, each trained with ``--seed S`` for S in ``--seeds``, one after another (one thread), from that
  checkpoint (``--finetune-from-model``), for up to ``--bso-epochs`` epochs, stopping when validation
  BLEU under the row's own decoding has not improved for ``--patience`` epochs; the checkpoint with the
  best validation BLEU is tested:

  - ``seq2seq``: token NLL continued (Adam 5e-4, as every continued-NLL row of this repository),
    fairseq's standard beam;
  - ``bso_authors``: ``examples/word_ordering/demo.py``'s ``authors`` recipe (= ``config/bso_authors.yaml``),
    decoded as trained with raw scores (``--bso-decoding``), also reported under the standard beam;

* test BLEU (400 sentences, sacrebleu on the tokenized text) at beams 1 / 5 / 10 under the row's own
  decoding (``test``), the same with ``--constraint word_order`` at decoding (``test_constrained``) and,
  for BSO, under the standard beam (``test_standard_beam``); the valid curve of every row;
  sacrebleu's paired bootstrap per seed of each row's beam-5 output against seq2seq's, unconstrained
  and constrained; ``gap_beam5_*``: bso_authors − seq2seq at beam 5 (own decodings), mean and sd over
  the finished seeds.

Runs under whatever else shares the machine (``nice -n 19``, one thread): no figure here is a timing.
Every stage is skipped when done, so a rerun resumes; the results file is rewritten after every
finished seed, its ``state`` saying what is unfinished.

    nice -n 19 python3 -m benchmarks.bso_authors --bso-epochs 39 --seeds 1 2 3
    python3 -m benchmarks.bso_authors --report      # rewrite the results file from the finished stages
"""

import argparse
import os
import statistics
import time

from benchmarks.common import (ROOT, WORK, demo, epoch_values, log, paired_bootstrap, word_order_test_bleu,
                               word_order_train, write_file, write_results)
from fairseq_bso.prep import prepare_word_order, read_lines

CONSTRAINT = ["--constraint", "word_order"]
AUTHORS_TRAIN, AUTHORS_DECODE = demo.RECIPES["authors"]
# name: (training options, own decoding, other decodings reported: {key: decoding})
ROWS = {
    "seq2seq": (["--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.0005"], [],
                {"test_constrained": CONSTRAINT}),
    "bso_authors": ([*AUTHORS_TRAIN, "--lr", "0.02"], AUTHORS_DECODE,
                    {"test_constrained": [*AUTHORS_DECODE, *CONSTRAINT], "test_standard_beam": []}),
}
def train(args, save_dir, options, seed):
    """One fairseq-train run of the demo's model (``common.word_order_train``: json log ``save_dir.log``),
    skipped when its ``done`` marker exists; resumes ``checkpoint_last.pt`` otherwise."""
    word_order_train(args.bin, save_dir, options, seed=seed, threads=args.threads)


def curve(log_path):
    """[(epoch, valid BLEU)] and [(epoch, train seconds)] from a fairseq json log (a resumed epoch's last value)."""
    return epoch_values(log_path, "valid", "valid_bleu"), epoch_values(log_path, "train", "train_wall")


def decode(args, ckpt, decoding, tag):
    """Test BLEU at every beam (a finished decode is read back from its log); {beam: BLEU}, beam-5 hypotheses."""
    scores, hypotheses = word_order_test_bleu(
        args.bin, ckpt, decoding, args.beams, lambda beam: os.path.join(args.workdir, "test", f"{tag}.beam{beam}.log"),
        args.references, threads=args.threads, reuse=True)
    return scores, hypotheses.get("5")


def permutation_violations(hypotheses, sources, vocabulary=None):
    """How many constrained outputs are not a permutation of their source (must be 0).  With
    ``vocabulary`` (the target dictionary's words), a source word outside it counts as ``<unk>``,
    which is what the model reads and writes in its place."""
    def words(line):
        return sorted(w if vocabulary is None or w in vocabulary else "<unk>" for w in line.split())
    return sum(words(h) != words(s) for h, s in zip(hypotheses, sources))


def target_vocabulary(bin_dir):
    """The words of the binarized corpus's target dictionary (fairseq's dict.tgt.txt: "word count" lines)."""
    with open(os.path.join(bin_dir, "dict.tgt.txt"), encoding="utf-8") as f:
        return {line.rsplit(" ", 1)[0] for line in f if line.strip()}


def run_seed(args, seed, nll_ckpt, report_only=False):
    """Train (unless report_only) and test both rows of one seed; the seed's results, or None if unfinished."""
    rows, beam5, beam5_con = {}, {}, {}
    for name, (options, own, others) in ROWS.items():
        save = os.path.join(args.workdir, f"s{seed}", name)
        if not report_only:
            os.makedirs(os.path.dirname(save), exist_ok=True)
            train(args, save, [*options, *own, "--max-epoch", str(args.bso_epochs), "--patience", str(args.patience),
                               "--finetune-from-model", nll_ckpt], seed)
        if not os.path.exists(os.path.join(save, "done")):
            return None
        valid, seconds = curve(save + ".log")
        best_epoch, best_bleu = max(valid, key=lambda e: (e[1], -e[0]))
        ckpt = os.path.join(save, "checkpoint_best.pt")
        row = {"train_options": options, "decoding": own or ["standard beam"], "valid_curve": valid,
               "epochs": len(valid), "best_epoch": best_epoch, "best_valid_bleu": best_bleu,
               "train_seconds_per_epoch": seconds}
        row["test"], beam5[name] = decode(args, ckpt, own, f"s{seed}.{name}")
        for key, decoding in others.items():
            row[key], hyps = decode(args, ckpt, decoding, f"s{seed}.{name}.{key}")
            if key == "test_constrained":
                beam5_con[name] = hyps
                row["constrained_not_permutations"] = permutation_violations(hyps, args.sources,
                                                                             target_vocabulary(args.bin))
        rows[name] = row
        log(f"seed {seed} {name}: best epoch {best_epoch}/{len(valid)} valid {best_bleu} test {row['test']} "
            f"constrained {row['test_constrained']}")
    return {"rows": rows,
            "bso_minus_seq2seq_beam5": round(rows["bso_authors"]["test"]["5"] - rows["seq2seq"]["test"]["5"], 2),
            "bso_minus_seq2seq_beam5_constrained": round(rows["bso_authors"]["test_constrained"]["5"]
                                                         - rows["seq2seq"]["test_constrained"]["5"], 2),
            "paired_bootstrap_beam5": paired_bootstrap(beam5, args.references, tokenize="none"),
            "paired_bootstrap_beam5_constrained": paired_bootstrap(beam5_con, args.references, tokenize="none")}


def report(args, started, nll, per_seed, unfinished):
    """The results file: rows with per-seed figures, the gap's mean and sd, the state."""
    done = [s for s in args.seeds if per_seed.get(s)]
    rows = {}
    for name in ROWS:
        rows[name] = {"train_options": ROWS[name][0], "decoding": ROWS[name][1] or ["standard beam"], "seeds": {}}
        for s in done:
            rows[name]["seeds"][str(s)] = per_seed[s]["rows"][name]
        # per test key: {beam: [per seed]} in seed order
        for key in ("test", *ROWS[name][2]):
            rows[name][key] = {b: [per_seed[s]["rows"][name][key][b] for s in done] for b in map(str, args.beams)}
        rows[name]["valid_curve"] = {str(s): per_seed[s]["rows"][name]["valid_curve"] for s in done}
    gaps = [per_seed[s]["bso_minus_seq2seq_beam5"] for s in done]
    gaps_con = [per_seed[s]["bso_minus_seq2seq_beam5_constrained"] for s in done]
    results = {
        "question": "BSO at the authors' setting and budget vs NLL continued for the same epochs, test beam 5",
        "state": "finished" if not unfinished else "unfinished: " + "; ".join(unfinished),
        "budget": {"bso_epochs_max": args.bso_epochs, "patience": args.patience, "authors_bso_epochs": 39,
                   "cut": args.cut or None},
        "nll_start": nll,
        "rows": rows,
        "per_seed": {str(s): {k: v for k, v in per_seed[s].items() if k != "rows"} for s in done},
        "gap_beam5": gaps,
        "gap_beam5_mean": round(statistics.mean(gaps), 2) if gaps else None,
        "gap_beam5_sd": round(statistics.stdev(gaps), 2) if len(gaps) > 1 else None,
        "gap_beam5_every_seed_ahead": all(g > 0 for g in gaps) if gaps else None,
        "gap_beam5_constrained": gaps_con,
        "gap_beam5_constrained_mean": round(statistics.mean(gaps_con), 2) if gaps_con else None,
        "gap_beam5_constrained_sd": round(statistics.stdev(gaps_con), 2) if len(gaps_con) > 1 else None,
        "conditions": "one job under nice -n 19, one thread, while other benchmarks and tests used the 2 cores: "
                      "train_seconds_per_epoch are not timings",
    }
    path = write_results(args.name, results, started, settings={
        "corpus": "examples/word_ordering/data (demo)", "model": demo.MODEL, "batch_size": 64, "clip_norm": 5,
        "valid_decoding_beam": 5, "beams": args.beams, "threads": args.threads, "code": args.code or None,
        "nll": "Adam 2e-3, seed 1, patience 4 on valid BLEU (standard beam 5)",
        "train_sentences": (len(read_lines(os.path.join(args.corpus, "train.tgt")))
                            if os.path.exists(os.path.join(args.corpus, "train.tgt")) else None),
        "test_sentences": len(args.references)}, seeds=done)
    if done:
        plot(path[:-len(".json")] + ".png", nll, rows)


def plot(path, nll, rows):
    """Valid BLEU per epoch (own decoding) of both rows for every finished seed, after the NLL start's curve."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    epochs, bleu = zip(*nll["valid_curve"])
    ax.plot(epochs, bleu, color="black", lw=1.2, label="NLL start (to convergence)")
    offset = nll["best_epoch"]
    ax.axvline(offset, color="grey", lw=0.6, ls=":")
    for name, color in (("seq2seq", "tab:blue"), ("bso_authors", "tab:red")):
        for i, (seed, curve) in enumerate(rows[name]["valid_curve"].items()):
            if curve:
                e, b = zip(*curve)
                ax.plot([offset + x for x in e], b, color=color, marker=".", lw=1, alpha=0.5 + 0.5 / (i + 1),
                        label=f"{name} (seed {seed})")
    ax.set_xlabel("epoch (rows continue from the NLL start's best epoch)")
    ax.set_ylabel("valid BLEU, beam 5, own decoding")
    ax.set_title("BSO at the authors' setting vs continued NLL (demo corpus)")
    ax.set_ylim(bottom=max(0, min(40, min(bleu[len(bleu) // 2:])) - 10))
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_file(path, save=lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=os.path.join(WORK, "bso_authors"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--bso-epochs", type=int, default=39, help="most epochs of every row after the NLL start "
                                                                "(the authors: 39 BSO epochs for word ordering)")
    p.add_argument("--patience", type=int, default=4, help="stop a row when valid BLEU has not improved for this "
                                                           "many epochs")
    p.add_argument("--nll-max-epochs", type=int, default=40)
    p.add_argument("--cut", default="", help="what was cut from the protocol and why (recorded in the results)")
    p.add_argument("--code", default="", help="which code ran, when it is not this checkout's HEAD (e.g. an exported "
                                             "snapshot): recorded in the results")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="bso_authors", help="results file name (benchmarks/results/NAME.json)")
    p.add_argument("--data", nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                   help="other text files instead of the demo corpus (a smoke run)")
    p.add_argument("--report", action="store_true", help="train nothing: results from the finished stages")
    args = p.parse_args()
    if 5 not in args.beams:
        p.error("--beams must include 5 (the gap is measured at beam 5)")
    started = time.time()
    os.makedirs(args.workdir, exist_ok=True)
    args.corpus = os.path.join(args.workdir, "corpus")
    args.bin = os.path.join(args.corpus, "bin")
    prepared = os.path.exists(os.path.join(args.bin, "test.src-tgt.tgt.idx"))
    if not prepared and args.report:
        args.references = args.sources = []
        report(args, started, {"unfinished": True}, {s: None for s in args.seeds},
               ["the corpus, the NLL start"] + [f"seed {s}" for s in args.seeds])
        return
    if not prepared:
        data = os.path.join(ROOT, "examples", "word_ordering", "data")
        files = args.data or [os.path.join(data, f"kjv.{s}.txt.gz") for s in ("train", "valid", "test")]
        prepare_word_order(*files, args.corpus)
    args.references = read_lines(os.path.join(args.corpus, "test.tgt"))
    args.sources = read_lines(os.path.join(args.corpus, "test.src"))

    nll_dir = os.path.join(args.workdir, "nll")
    if not args.report:
        train(args, nll_dir, ["--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.002",
                              "--max-epoch", str(args.nll_max_epochs), "--patience", "4"], seed=1)
    if not os.path.exists(os.path.join(nll_dir, "done")):  # --report before the NLL start finished
        valid, seconds = curve(nll_dir + ".log")
        report(args, started, {"unfinished": True, "valid_curve": valid, "train_seconds_per_epoch": seconds},
               {s: None for s in args.seeds},
               [f"the NLL start ({len(valid)} epochs done, until valid BLEU is flat for 4)"]
               + [f"seed {s}" for s in args.seeds])
        return
    nll_ckpt = os.path.join(nll_dir, "checkpoint_best.pt")
    valid, seconds = curve(nll_dir + ".log")
    nll = {"valid_curve": valid, "epochs": len(valid), "best_epoch": max(valid, key=lambda e: (e[1], -e[0]))[0],
           "best_valid_bleu": max(e[1] for e in valid), "train_seconds_per_epoch": seconds}
    nll["test"], _ = decode(args, nll_ckpt, [], "nll")
    nll["test_constrained"], _ = decode(args, nll_ckpt, CONSTRAINT, "nll.test_constrained")

    per_seed = {}
    for i, seed in enumerate(args.seeds):
        per_seed[seed] = run_seed(args, seed, nll_ckpt, report_only=args.report)
        unfinished = [f"seed {s}" for s in args.seeds if not per_seed.get(s)]
        if per_seed[seed] or i == len(args.seeds) - 1:
            report(args, started, nll, per_seed, unfinished)


if __name__ == "__main__":
    main()
