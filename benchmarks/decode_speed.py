#!/usr/bin/env python3
"""Decoding speed of the distillation students against the teacher, paired in one process, one thread.

The talk's claim: a Seq-KD student decoded greedily runs about 10x faster than the teacher with beam 5.
This measures, on the l10n-de-en test set, fairseq's own ``SequenceGenerator`` (what ``fairseq-generate``
runs) with the teacher at beam 5 and each student at beam 1, in rounds: within a round every model decodes the
same sentences, the order of the models rotates from round to round, and each student's speed-up is the
median over rounds of (teacher seconds / student seconds).  Two settings:

* batch size 1 (one sentence at a time, what an interactive or on-device translator does), on the first
  ``--sentences`` test sentences;
* batched (``--max-tokens`` source tokens per batch, length-sorted as fairseq batches), the first
  ``--batched-sentences`` test sentences (all 1,255 by default).

Source words/s count the raw German words of the sentences decoded; ``ms_per_decoder_step`` divides the time
by the search's steps (per batch, its longest output), which shows whether model size or the generator's
per-step work sets the speed.  ``--lean-greedy`` adds a ``NAME+lean`` row per model, the teacher's greedy included: the same model decoded by
``fairseq_bso.distill.greedy.GreedyGenerator`` (``fairseq-generate --task constrained_beam_training --lean-greedy``), the
generator's beam-1 hypotheses without its beam bookkeeping and, for LSTM models, with ``LSTMStep`` in place of
fairseq's ``forward_decoder``.  ``teacher+lean`` against ``NAME+lean`` is the model's share of a speed-up (same
search, same decoder code); ``teacher`` against ``teacher+lean`` is the search's and the code's.  Run it on a quiet machine (nothing else
running); the results file says so only if ``--quiet-machine`` is given.

    python3 -m benchmarks.decode_speed teacher=DIR/teacher/checkpoint_best.pt student=... [--rounds 5]
"""

import argparse
import os
import statistics
import time

from benchmarks import deen
from benchmarks.common import RESULTS, write_results


def load(ckpt, bin_dir):
    from fairseq import checkpoint_utils, tasks
    import fairseq_bso  # noqa: F401

    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task(
        [ckpt], arg_overrides={"data": bin_dir, "max_source_positions": 1024, "max_target_positions": 1024})
    model = models[0].eval()
    return model, cfg


def batches(dataset, sentences, max_tokens=None):
    """Length-sorted batches of the first ``sentences`` test sentences, as fairseq batches them: one sentence
    each without ``max_tokens``."""
    import numpy as np

    indices = np.array([i for i in dataset.ordered_indices() if i < sentences], dtype=np.int64)
    if max_tokens is None:
        groups = [[i] for i in indices.tolist()]
    else:
        groups = dataset.batch_by_size(indices, max_tokens=max_tokens, required_batch_size_multiple=1)
    return [dataset.collater([dataset[i] for i in group]) for group in groups]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="NAME=CHECKPOINT; the first is the teacher (beam 5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=200, help="test sentences decoded at batch size 1")
    parser.add_argument("--batched-sentences", type=int, default=1255, help="test sentences decoded in batches")
    parser.add_argument("--max-tokens", type=int, default=6000)
    parser.add_argument("--teacher-beam", type=int, default=5)
    parser.add_argument("--quiet-machine", action="store_true",
                        help="state in the results file that nothing else ran during the measurement")
    parser.add_argument("--name", default="decode_speed", help="results file name")
    parser.add_argument("--out", help="write the results to this path instead of benchmarks/results/NAME.json")
    parser.add_argument("--lean-greedy", action="store_true",
                        help="also decode every model, the teacher too, with fairseq_bso.distill.greedy.GreedyGenerator "
                             "(NAME+lean rows: the same hypotheses as the generator at beam 1, without its beam "
                             "bookkeeping, with LSTMStep for LSTM models)")
    args = parser.parse_args()
    import torch
    from fairseq import tasks
    from fairseq.sequence_generator import SequenceGenerator

    torch.set_num_threads(1)
    started = time.time()
    bin_dir, _ = deen.data()
    models = {}
    for spec in args.models:
        name, ckpt = spec.split("=", 1)
        if not os.path.exists(ckpt):
            raise SystemExit(f"{name}: no checkpoint {ckpt}")
        models[name] = load(ckpt, bin_dir)
    teacher_name = next(iter(models))
    cfg = models[teacher_name][1]
    task = tasks.setup_task(cfg.task)
    task.load_dataset("test")
    dataset = task.dataset("test")
    with open(os.path.join(os.path.dirname(bin_dir), "test.de"), encoding="utf-8") as f:
        words = [len(line.split()) for line in f]
    settings = {"batch1": batches(dataset, args.sentences),
                "batched": batches(dataset, args.batched_sentences, args.max_tokens)}
    generators = {name: SequenceGenerator([m], task.target_dictionary,
                                          beam_size=args.teacher_beam if name == teacher_name else 1,
                                          max_len_a=1.5, max_len_b=10)
                  for name, (m, _) in models.items()}
    if args.lean_greedy:
        from fairseq_bso.distill.greedy import GreedyGenerator

        for name in list(models):  # the teacher too: its greedy, to tell the search's share from the model's
            models[f"{name}+lean"] = models[name]
            generators[f"{name}+lean"] = GreedyGenerator([models[name][0]], task.target_dictionary, beam_size=1,
                                                         max_len_a=1.5, max_len_b=10)
    results = {"models": {name: {"beam": g.beam_size,
                                 "params": sum(p.numel() for p in models[name][0].parameters())}
                          for name, g in generators.items()}}
    names = list(generators)
    for setting, samples in settings.items():
        n_words = sum(words[i] for s in samples for i in s["id"].tolist())
        seconds = {name: [] for name in names}
        steps = {}  # decoder steps of the search (the longest finished hypothesis per batch, </s> included)
        for r in range(args.rounds + 1):  # round 0 warms up
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                t0 = time.perf_counter()
                n_steps = 0
                with torch.no_grad():
                    for sample in samples:
                        hyps = generators[name].generate([models[name][0]], sample)
                        n_steps += max(len(x["tokens"]) for h in hyps for x in h)
                if r > 0:
                    seconds[name].append(time.perf_counter() - t0)
                steps[name] = n_steps
            deen.demo.log(f"{setting} round {r}: " + ", ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names
                                                               if seconds[n]))
        entry = {"sentences": sum(len(s["id"]) for s in samples), "source_words": n_words}
        for name in names:
            entry[name] = {"seconds_median": round(statistics.median(seconds[name]), 3),
                           "words_per_sec": round(n_words / statistics.median(seconds[name]), 1),
                           "decoder_steps": steps[name],
                           "ms_per_decoder_step": round(1000 * statistics.median(seconds[name]) / steps[name], 3)}
            if name != teacher_name:
                ratios = [t / s for t, s in zip(seconds[teacher_name], seconds[name])]
                entry[name]["speedup_vs_teacher"] = round(statistics.median(ratios), 2)
                entry[name]["speedup_ratios"] = [round(x, 2) for x in ratios]
        results[setting] = entry
        print(setting, entry)
    results["conditions"] = ("one thread (torch.set_num_threads(1)), paired rounds in one process, median of "
                             "per-round ratios; " + ("quiet machine: nothing else ran" if args.quiet_machine
                                                    else "machine load not asserted"))
    folder = RESULTS
    if args.out:  # e.g. compression.py's work folder
        folder = os.path.dirname(os.path.abspath(args.out))
        args.name = os.path.basename(args.out)[:-len(".json")] if args.out.endswith(".json") else args.name
    write_results(args.name, results, started, settings=args, folder=folder)


if __name__ == "__main__":
    main()
