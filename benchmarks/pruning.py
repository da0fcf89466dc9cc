#!/usr/bin/env python3
"""Magnitude pruning of the Seq-KD student (the talk's pruning table at CPU scale) and the callback's cost.

The Seq-KD student of ``benchmarks/distillation.py`` is pruned class-blind to 0, 50, 80, 85 and 90% and
retrained ``--retrain-epochs`` epochs with the masks fixed (``--task constrained_beam_training
--prune-ratio r``, lower learning rate; the 0% row gets the same retraining, so every row has seen the same
updates).  Reports detokenized BLEU at beam 5, non-zero parameters and the size on disk of the stock export
and of its sparse copy (``fairseq-bso-prune export --sparse``).

Overhead: median time of a training step (forward, backward, Adam) of the student on real batches with and
without the pruning callback's gradient/weight masking, alternating in one process (``--rounds`` rounds).

    python3 benchmarks/pruning.py        # writes benchmarks/results/pruning.json
"""

import argparse
import os
import re
import statistics
import time

import deen
from common import valid_batches, write_results
from deen import demo

RATIOS = [0, 50, 80, 85, 90]


def step_overhead(bin_dir, ckpt, rounds, batches=4):
    import torch
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq_bso.pruning import Pruner, PruningConfig

    torch.set_num_threads(2)
    task, model, samples = valid_batches(ckpt, bin_dir, batches, max_tokens=4000)
    criterion = CrossEntropyCriterion(task, sentence_avg=False)
    pcfg = PruningConfig()
    pcfg.prune_ratio = 0.8
    pruner = Pruner(pcfg, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    model.train()
    times = {"plain": [], "pruned": []}
    for r in range(rounds + 1):
        for name in times:
            t0 = time.perf_counter()
            for sample in samples:
                optimizer.zero_grad()
                loss, sample_size, _ = criterion(model, sample)
                (loss / sample_size).backward()
                if name == "pruned":
                    pruner.before_step(1 if pruner.masks is not None else 0)
                optimizer.step()
                if name == "pruned":
                    pruner.after_step()
            if r > 0:  # round 0 warms up
                times[name].append((time.perf_counter() - t0) / len(samples))
    ratios = [p / q for q, p in zip(times["plain"], times["pruned"])]
    return {"ms_per_step": {k: round(statistics.median(v) * 1000, 1) for k, v in times.items()},
            "overhead_ratio": round(statistics.median(ratios), 4), "ratios": [round(x, 4) for x in ratios]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--retrain-lr", type=float, default=0.0005)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--schedule", choices=["one-shot", "gradual"], default="one-shot",
                        help="gradual: cubic ramp from update 0 to --end-update within the retraining")
    parser.add_argument("--end-update", type=int, default=100)
    parser.add_argument("--tag", default="", help="suffix of the model folders and the results file")
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    student_dir = os.path.join(deen.DIR, "student_seq_kd")
    if not os.path.exists(os.path.join(student_dir, "done")):
        raise SystemExit("run benchmarks/distillation.py first: pruning starts from its Seq-KD student "
                         f"({student_dir})")
    student = os.path.join(student_dir, "checkpoint_last.pt")
    kd_bin = os.path.join(deen.DIR, "kd_beam", "bin")
    results = {"bleu": {}, "nonzero_params": {}, "export_bytes": {}, "sparse_export_bytes": {}}
    for ratio in RATIOS:
        name = f"pruned{ratio}{args.tag}"
        ckpt = deen.train(name, kd_bin, args.retrain_epochs, deen.STUDENT,
                          ["--task", "constrained_beam_training", "--criterion", "cross_entropy",
                           "--lr", str(args.retrain_lr), "--finetune-from-model", student,
                           "--prune-ratio", str(ratio / 100), "--prune-scheme", "class-blind",
                           "--prune-schedule", args.schedule,
                           *(["--prune-end-update", str(args.end_update), "--prune-frequency", "10"]
                             if args.schedule == "gradual" else [])])
        bleu, _ = deen.bleu(bin_dir, ckpt, name, refs, [5])
        results["bleu"][str(ratio)] = bleu["5"]
        stats = demo.run(["fairseq-bso-prune", "stats", ckpt], os.path.join(deen.DIR, f"{name}.stats"))
        nonzero = int(re.search(r"all parameters \(biases included\): ([\d,]+) non-zero", stats).group(1)
                      .replace(",", ""))
        results["nonzero_params"][str(ratio)] = nonzero
        out = demo.run(["fairseq-bso-prune", "export", ckpt, os.path.join(deen.DIR, f"{name}.export.pt"),
                        "--sparse", os.path.join(deen.DIR, f"{name}.export.sparse")],
                       os.path.join(deen.DIR, f"{name}.export.log"))
        dense, sparse = (int(x.replace(",", "")) for x in re.findall(r": ([\d,]+) bytes", out))
        results["export_bytes"][str(ratio)] = dense
        results["sparse_export_bytes"][str(ratio)] = sparse
        demo.log(f"{ratio}%: BLEU {bleu['5']}, {nonzero:,} non-zero, export {dense:,} B, sparse {sparse:,} B")
    results["bleu_lost"] = {k: round(results["bleu"]["0"] - v, 2) for k, v in results["bleu"].items()}
    overhead = step_overhead(bin_dir, student, args.rounds)
    results["overhead_ratio"] = overhead["overhead_ratio"]
    results["overhead"] = overhead
    print(results)
    write_results(f"pruning{args.tag}", results, started, settings=args)


if __name__ == "__main__":
    main()
