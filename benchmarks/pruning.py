#!/usr/bin/env python3
"""Magnitude pruning of the Seq-KD student (the talk's pruning table at CPU scale) and the callback's cost.

The converged Seq-KD student of ``benchmarks/distillation.py`` (its best checkpoint) is pruned one-shot at
the start of retraining and retrained with the masks fixed until validation BLEU (greedy, the student's
decoding) has not improved for ``--patience`` epochs (``--task constrained_beam_training --prune-ratio r``,
``--eval-bleu``, ``--patience``; lower learning rate; best checkpoint).  Rows (``--rows``): class-blind 0%
(the same retraining without pruning: the dense reference), 80% and 90%, class-uniform and
class-distribution at 80% (See et al.'s schemes; classes as in ``fairseq_bso.prune.masks``: each module's
weight matrices, attention one class).  Reports detokenized BLEU greedy and beam 5, what each row loses
against the 0% row, non-zero parameters and the size on disk of the stock export and of its sparse copy
(``fairseq-bso-prune export --sparse``), epochs and wall time.

``--overhead``: median time of a training step (forward, backward, Adam) of the student on real batches with
and without the pruning callback's gradient/weight masking, alternating in one process (``--rounds`` rounds;
a quiet machine).

    python3 -m benchmarks.pruning        # writes benchmarks/results/pruning.json
"""

import argparse
import os
import re
import statistics
import time

from benchmarks import deen
from benchmarks.common import valid_batches, write_results
from benchmarks.deen import demo

ROWS = ["class-blind:0", "class-blind:80", "class-blind:90", "class-uniform:80", "class-distribution:80"]


def step_overhead(bin_dir, ckpt, rounds, batches=4):
    import torch
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion
    from fairseq_bso.prune.masks import Pruner, PruningConfig

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


def run_name(row, tag):
    """The model folder of a SCHEME:PERCENT row."""
    scheme, _, percent = row.partition(":")
    return f"pruned_{scheme}_{percent}{tag}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=ROWS, metavar="SCHEME:PERCENT",
                        help=f"pruning scheme and ratio per row (default: {' '.join(ROWS)})")
    parser.add_argument("--retrain-epochs", type=int, default=20, help="cap; retraining stops at --patience")
    parser.add_argument("--patience", type=int, default=2, help="epochs without a valid BLEU (greedy) gain")
    parser.add_argument("--retrain-lr", type=float, default=0.0005)
    parser.add_argument("--only", metavar="SCHEME:PERCENT", help="retrain just this row and stop (parallel runs)")
    parser.add_argument("--report", action="store_true", help="train nothing: report the finished rows")
    parser.add_argument("--overhead", action="store_true", help="also time the callback (quiet machine)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--schedule", choices=["one-shot", "gradual"], default="one-shot",
                        help="gradual: cubic ramp from update 0 to --end-update within the retraining")
    parser.add_argument("--end-update", type=int, default=100)
    parser.add_argument("--tag", default="", help="suffix of the model folders and the results file")
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    student_dir = os.path.join(deen.DIR, "student_seq_kd")
    if not deen.finished("student_seq_kd"):
        raise SystemExit("run python3 -m benchmarks.distillation first: pruning starts from its Seq-KD student "
                         f"({student_dir})")
    student = os.path.join(student_dir, "checkpoint_best.pt")
    kd_bin = os.path.join(deen.DIR, "kd_beam", "bin")
    rows = [args.only] if args.only else args.rows
    for row in rows:
        scheme, _, percent = row.partition(":")
        if scheme not in ("class-blind", "class-uniform", "class-distribution") or not percent.isdigit():
            parser.error(f"--rows/--only: {row!r} is not SCHEME:PERCENT (e.g. class-blind:80)")
    results, missing = {}, []
    for row in rows:
        scheme, _, percent = row.partition(":")
        name = run_name(row, args.tag)
        if args.report:
            ckpt = os.path.join(deen.DIR, name, "checkpoint_best.pt")
            if not deen.finished(name):
                missing.append(row)
                continue
        else:
            ckpt = deen.train(name, kd_bin, args.retrain_epochs, deen.STUDENT,
                              ["--task", "constrained_beam_training", "--criterion", "cross_entropy",
                               "--lr", str(args.retrain_lr), "--finetune-from-model", student,
                               "--prune-ratio", str(int(percent) / 100), "--prune-scheme", scheme,
                               "--prune-schedule", args.schedule,
                               *(["--prune-end-update", str(args.end_update), "--prune-frequency", "10"]
                                 if args.schedule == "gradual" else [])],
                              max_tokens=2000, valid_beam=1, patience=args.patience)
        if args.only:
            return
        bleu, _ = deen.bleu(bin_dir, ckpt, name, refs, [1, 5])
        stats = demo.run(["fairseq-bso-prune", "stats", ckpt], os.path.join(deen.DIR, f"{name}.stats"))
        nonzero = int(re.search(r"all parameters \(biases included\): ([\d,]+) non-zero", stats).group(1)
                      .replace(",", ""))
        out = demo.run(["fairseq-bso-prune", "export", ckpt, os.path.join(deen.DIR, f"{name}.export.pt"),
                        "--sparse", os.path.join(deen.DIR, f"{name}.export.sparse")],
                       os.path.join(deen.DIR, f"{name}.export.log"))
        dense, sparse = (int(x.replace(",", "")) for x in re.findall(r": ([\d,]+) bytes", out))
        results[row] = {"scheme": scheme, "ratio_percent": int(percent), "bleu_greedy": bleu["1"],
                        "bleu_beam5": bleu["5"], "nonzero_params": nonzero, "export_bytes": dense,
                        "sparse_export_bytes": sparse, **deen.run_info(name)}
        demo.log(f"{row}: BLEU {bleu}, {nonzero:,} non-zero, export {dense:,} B, sparse {sparse:,} B")
    dense_row = results.get("class-blind:0")
    dense_name = run_name("class-blind:0", args.tag if dense_row else "")
    if not dense_row and deen.finished(dense_name):
        # a lever run (--tag) without its own 0% row: losses against the main 0% row (cached decodes)
        dense_bleu, _ = deen.bleu(bin_dir, os.path.join(deen.DIR, dense_name, "checkpoint_best.pt"), dense_name,
                                  refs, [1, 5])
        dense_row = {"bleu_greedy": dense_bleu["1"], "bleu_beam5": dense_bleu["5"]}
    if dense_row:
        for r in results.values():
            r["bleu_lost_greedy"] = round(dense_row["bleu_greedy"] - r["bleu_greedy"], 2)
            r["bleu_lost_beam5"] = round(dense_row["bleu_beam5"] - r["bleu_beam5"], 2)
    unpruned, _ = deen.bleu(bin_dir, student, "student_seq_kd", refs, [1, 5])
    # rows still training: their valid curves so far (a rerun resumes them)
    unfinished = {row: deen.run_info(run_name(row, args.tag)) for row in missing}
    results = {"rows": results, "missing": missing, "unfinished": {r: i for r, i in unfinished.items() if i["epochs"]},
               "losses_against": dense_name if dense_row else None,
               "seq_kd_student_before_retraining": {"bleu_greedy": unpruned["1"], "bleu_beam5": unpruned["5"]}}
    if args.overhead:
        overhead = step_overhead(bin_dir, student, args.rounds)
        results["overhead_ratio"] = overhead["overhead_ratio"]
        results["overhead"] = overhead
    print(results)
    write_results(f"pruning_stagewise{args.tag}", results, started, settings=args)


if __name__ == "__main__":
    main()
