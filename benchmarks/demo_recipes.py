#!/usr/bin/env python3
"""Which BSO recipe should README command 1 (the word-ordering demo) run?  Seeds and recipes.

Question: in the demo's own setting (the embedded corpus, an NLL model of ``--nll-epochs`` 8, then
every row ``--extra-epochs`` 3 more epochs at Adam 5e-4, the checkpoint with the best validation
BLEU under the row's own decoding), does a BSO recipe decoded as trained beat continued NLL at test
beam 5, and does ConBSO beat it, across training seeds rather than for one seed?

Protocol (fixed before the runs): for each seed, ``examples/word_ordering/demo.py --seed S`` with
the first recipe trains the NLL model, seq2seq, BSO and ConBSO; every further recipe reuses that
seed's corpus, NLL model and seq2seq row (symlinks) and trains its own BSO and ConBSO rows. Rows
train two at a time, one thread each. Test BLEU at beams 1 / 5 / 10 (400 sentences, tokenized
sacrebleu, as the demo prints it), every row also decoded with the word_order constraint (ConBSO:
also without it), the valid BLEU curve of every row from its fairseq-train log, the per-recipe
mean over seeds of BSO − seq2seq at beam 5 and of ConBSO − (seq2seq + constrained decoding), and
sacrebleu's paired bootstrap of each row's beam 5 against seq2seq's per seed, unconstrained and
constrained. Figures were measured with the two
cores shared by the runs (not a timing).

    python3 -m benchmarks.demo_recipes --seeds 1 2 3 --recipes log_softmax log_softmax_nll
    python3 -m benchmarks.demo_recipes --report          # rewrite the results file from the runs
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from benchmarks.common import DEMO_PATH as DEMO, WORK, demo, paired_bootstrap, write_results
from fairseq_bso.evaluation import parse_hypotheses
from fairseq_bso.prep import read_lines

RECIPES = demo.RECIPES
VALID_BLEU = re.compile(r"epoch (\d+) \| valid on 'valid' subset .*?\| bleu ([0-9.]+)")
SHARED_STAGES = ("corpus", "nll", "nll.log", "seq2seq", "seq2seq.log")


def valid_curve(log_path):
    """[(epoch, valid BLEU)] from a demo row's fairseq-train log (simple format); a resumed epoch's last value wins."""
    curve = {}
    if os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                m = VALID_BLEU.search(line)
                if m:
                    curve[int(m.group(1))] = float(m.group(2))
    return sorted(curve.items())


def run_seed(args, seed):
    for i, recipe in enumerate(args.recipes):
        workdir = os.path.join(args.workdir, f"s{seed}_{recipe}")
        os.makedirs(workdir, exist_ok=True)
        if i > 0:  # share the first recipe's NLL model and seq2seq row
            first = os.path.join(args.workdir, f"s{seed}_{args.recipes[0]}")
            for stage in SHARED_STAGES:
                link = os.path.join(workdir, stage)
                if not os.path.lexists(link):
                    os.symlink(os.path.join(first, stage), link)
        if os.path.exists(os.path.join(workdir, "results.json")):
            continue
        cmd = [sys.executable, DEMO, "--workdir", workdir, "--seed", str(seed), "--bso-recipe", recipe,
               "--nll-epochs", str(args.nll_epochs), "--extra-epochs", str(args.extra_epochs)]
        print("+ " + " ".join(cmd), flush=True)
        with open(os.path.join(workdir, "demo.out"), "w") as out:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True)


def bootstrap(workdir, names, constrained=False):
    """sacrebleu's paired bootstrap of every row's test beam-5 output against seq2seq's (tokenized text); with
    ``constrained``, every row's output decoded with the word_order constraint (ConBSO's own) against seq2seq's."""
    references = read_lines(os.path.join(workdir, "corpus", "test.tgt"))
    hypotheses = {}
    for name in names:
        log = f"{name}.test_constrained" if constrained and name != "conbso" else name
        with open(os.path.join(workdir, f"generate.{log}.beam5.log")) as f:
            hypotheses[name] = parse_hypotheses(f.read(), len(references))
    return paired_bootstrap(hypotheses, references, tokenize="none")


def demo_rows(results):
    """{row: {"test": ..., "test_constrained": ...}} from a demo results.json (before issue 29 a row held only its
    own decoding's scores)."""
    return {name: (r if "test" in r else {"test": r}) for name, r in results.items()}


def report(args, started):
    runs, gaps, con_gaps = {}, {r: [] for r in args.recipes}, {r: [] for r in args.recipes}
    for seed in args.seeds:
        for recipe in args.recipes:
            workdir = os.path.join(args.workdir, f"s{seed}_{recipe}")
            path = os.path.join(workdir, "results.json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                test = demo_rows(json.load(f))
            rows = {name: {**r, "valid_curve": valid_curve(os.path.join(workdir, name + ".log"))}
                    for name, r in test.items()}
            runs[f"s{seed}_{recipe}"] = {"seed": seed, "recipe": recipe, "rows": rows,
                                         "paired_bootstrap_beam5": bootstrap(workdir, list(test))}
            if all("test_constrained" in r for r in test.values()):
                runs[f"s{seed}_{recipe}"]["paired_bootstrap_beam5_constrained"] = bootstrap(workdir, list(test), True)
            gaps[recipe].append(round(test["bso"]["test"]["5"] - test["seq2seq"]["test"]["5"], 2))
            if "conbso" in test and "test_constrained" in test["seq2seq"]:  # ConBSO's training effect
                con_gaps[recipe].append(
                    round(test["conbso"]["test"]["5"] - test["seq2seq"]["test_constrained"]["5"], 2))
    summary = {}
    for recipe, g in gaps.items():
        if g:
            summary[recipe] = {"bso_minus_seq2seq_beam5": g, "mean": round(statistics.mean(g), 2),
                               "sd": round(statistics.stdev(g), 2) if len(g) > 1 else None}
            c = con_gaps[recipe]
            if c:
                summary[recipe]["conbso_minus_seq2seq_constrained_decoding_beam5"] = {
                    "per_seed": c, "mean": round(statistics.mean(c), 2),
                    "sd": round(statistics.stdev(c), 2) if len(c) > 1 else None}
    for key, run in runs.items():
        t = {n: r["test"] for n, r in run["rows"].items()}
        t.update({n + "+con": r["test_constrained"] for n, r in run["rows"].items() if "test_constrained" in r})
        print(key, " | ".join(f"{n} {s['1']:.2f}/{s['5']:.2f}/{s['10']:.2f}" for n, s in t.items()))
    print(json.dumps(summary, indent=1))
    write_results(args.name, {"runs": runs, "summary": summary,
                              "conditions": "rows trained two at a time on the 2 cores; not a timing"},
                  started, settings={k: v for k, v in vars(args).items() if k != "report"}, seeds=args.seeds)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--recipes", nargs="+", default=["log_softmax", "log_softmax_nll"], choices=sorted(RECIPES))
    p.add_argument("--nll-epochs", type=int, default=8)
    p.add_argument("--extra-epochs", type=int, default=3)
    p.add_argument("--workdir", default=os.path.join(WORK, "demo_recipes"))
    p.add_argument("--name", default="demo_recipes")
    p.add_argument("--report", action="store_true", help="only rewrite the results file from finished runs")
    args = p.parse_args()
    started = time.time()
    if args.report:
        report(args, started)
        return
    for seed in args.seeds:
        run_seed(args, seed)
        report(args, started)  # after every seed, so an interrupted run keeps the finished seeds' figures


if __name__ == "__main__":
    main()
