#!/usr/bin/env python3
"""Word ordering on the King James sentences (../shared/data/kjv): seq2seq vs BSO vs ConBSO.

Trains the three rows of the talk's table with the demo's recipe at a larger
scale (every training sentence of 3 to ``--max-tokens`` tokens, more epochs),
reports test BLEU at beams 1, 5, 10, and measures the cost of the word-ordering
constraint: generation time (``fairseq-generate``'s own search time, median of
``--repeats`` runs, BSO decoding with vs without the constraint) and training
update time (paired rounds in one process, BSO update with vs without the
constraint, same batches).  Each stage resumes: rerun the same command after an
interruption.

    python3 benchmarks/word_ordering.py        # writes benchmarks/results/word_ordering.json
"""

import argparse
import os
import statistics
import sys
import time

from common import ROOT, SHARED, WORK, valid_batches, write_results

sys.path.insert(0, os.path.join(ROOT, "examples", "word_ordering"))

import demo  # noqa: E402
from fairseq_bso.evaluation import generation_speed  # noqa: E402
from fairseq_bso.prep import prepare_word_order, read_lines  # noqa: E402


def generation_times(args, bin_dir, ckpt, extra):
    seconds = []
    for r in range(args.repeats):
        out = demo.run(["fairseq-generate", bin_dir, "--user-dir", demo.user_dir(), "--path", ckpt, *demo.COMMON,
                        "--gen-subset", "test", "--beam", "5", "--batch-size", "100", "--max-len-a", "1",
                        "--max-len-b", "5", *extra],
                       os.path.join(args.workdir, f"speed.{r}.log"))
        seconds.append(generation_speed(out)["seconds"])
    return statistics.median(seconds)


def training_times(args, bin_dir, ckpt):
    """Median ms per BSO update (K=6) without / with the constraint, paired on the same batches."""
    import torch
    from fairseq_bso.constraints import build_constraint
    from fairseq_bso.criterions.bso import BSOCriterion

    torch.set_num_threads(2)
    task, model, samples = valid_batches(ckpt, bin_dir, 4, max_sentences=64)
    constraint = build_constraint("word_order", task.source_dictionary, task.target_dictionary)
    criterion = BSOCriterion(task, bso_beam_size=6, bso_curriculum_start=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    times = {"bso": [], "conbso": []}
    for r in range(args.repeats + 1):
        for name in times:
            task.training_constraint = constraint if name == "conbso" else None
            model.load_state_dict(state)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
            model.train()
            t0 = time.perf_counter()
            for sample in samples:
                optimizer.zero_grad()
                loss, sample_size, _ = criterion(model, sample)
                (loss / sample_size).backward()
                optimizer.step()
            if r > 0:
                times[name].append((time.perf_counter() - t0) / len(samples))
    ratios = [c / b for b, c in zip(times["bso"], times["conbso"])]
    return ({k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
            round(statistics.median(ratios), 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(WORK, "word_ordering"))
    parser.add_argument("--max-tokens", type=int, default=15)
    parser.add_argument("--nll-epochs", type=int, default=10)
    parser.add_argument("--bso-epochs", type=int, default=3)
    parser.add_argument("--bso-lr", type=float, default=0.0005)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    started = time.time()
    os.makedirs(args.workdir, exist_ok=True)
    kjv = os.path.join(SHARED, "kjv")
    corpus = os.path.join(args.workdir, "corpus")
    bin_dir = os.path.join(corpus, "bin")
    if not os.path.exists(os.path.join(bin_dir, "test.src-tgt.tgt.idx")):
        prepare_word_order(f"{kjv}/train.txt", f"{kjv}/valid.txt", f"{kjv}/test.txt", corpus, args.max_tokens)
    references = read_lines(os.path.join(corpus, "test.tgt"))

    results = {}
    nll = demo.train("seq2seq", bin_dir, os.path.join(args.workdir, "nll"), args.nll_epochs,
                     ["--criterion", "cross_entropy", "--lr", "0.002"])
    results["seq2seq"] = demo.evaluate(args, bin_dir, nll, "seq2seq", references)
    ckpts = {}
    for name, constraint in (("bso", "none"), ("conbso", "word_order")):
        task = ["--task", "constrained_beam_training", "--constraint", constraint]
        ckpts[name] = demo.train(name, bin_dir, os.path.join(args.workdir, name), args.bso_epochs,
                                 [*task, "--criterion", "bso", "--bso-beam-size", "6",
                                  "--bso-curriculum-start", str(max(2, 7 - args.bso_epochs)),
                                  "--bso-curriculum-epochs", "1", "--lr", str(args.bso_lr),
                                  "--finetune-from-model", nll])
        results[name] = demo.evaluate(args, bin_dir, ckpts[name], name, references,
                                      extra=[*task, "--bso-decoding"])

    base = ["--task", "constrained_beam_training", "--bso-decoding"]
    plain_beam = generation_times(args, bin_dir, nll, [])
    unconstrained = generation_times(args, bin_dir, ckpts["conbso"], base)
    constrained = generation_times(args, bin_dir, ckpts["conbso"], [*base, "--constraint", "word_order"])
    train_ms, train_ratio = training_times(args, bin_dir, ckpts["conbso"])
    results["speed"] = {
        "generate_seconds_fairseq_beam5": plain_beam,
        "generate_seconds_bso_decoding_beam5": unconstrained,
        "generate_seconds_bso_decoding_word_order_beam5": constrained,
        "bso_decoding_vs_fairseq_beam_ratio": round(unconstrained / plain_beam, 3),
        "constraint_generation_overhead_ratio": round(constrained / unconstrained, 3),
        "train_ms_per_update_k6": train_ms,
        "constraint_training_overhead_ratio": train_ratio,
    }
    results["settings"] = {"max_tokens": args.max_tokens, "nll_epochs": args.nll_epochs,
                           "bso_epochs": args.bso_epochs, "bso_lr": args.bso_lr, "seed": 1,
                           "test_sentences": len(references),
                           "train_sentences": len(read_lines(os.path.join(corpus, "train.tgt")))}
    for name in ("seq2seq", "bso", "conbso"):
        print(f"{name:8s} " + "  ".join(f"beam {b}: {results[name][str(b)]:.2f}" for b in args.beams))
    print(results["speed"])
    write_results("word_ordering", results, started)


if __name__ == "__main__":
    main()
