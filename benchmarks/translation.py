#!/usr/bin/env python3
"""Translation on l10n-de-en (de→en): seq2seq vs BSO with SB-Δ, from the same pretrained model.

Both rows start from the teacher of ``benchmarks/deen.py`` (NLL-pretrained) and get the same number of
extra epochs: the seq2seq row continues NLL training (same learning rate as BSO's fine-tuning), the BSO row
trains with ``--criterion bso --bso-cost sentence_bleu`` (beam curriculum up to ``--bso-beam-size``) and is
decoded with BSO scores (``--bso-decoding``).  Detokenized sacrebleu BLEU at test beams 1, 5, 10.

    python3 benchmarks/translation.py        # writes benchmarks/results/translation.json
"""

import argparse
import time

import deen
from common import write_results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--extra-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.0005)
    parser.add_argument("--bso-beam-size", type=int, default=5)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    pretrained = deen.teacher(bin_dir, args.teacher_epochs)
    common = ["--finetune-from-model", pretrained, "--lr", str(args.lr)]
    nll = deen.train("seq2seq_continued", bin_dir, args.extra_epochs, deen.TEACHER,
                     ["--criterion", "cross_entropy", *common])
    bso = deen.train("bso_sbleu", bin_dir, args.extra_epochs, deen.TEACHER,
                     ["--task", "constrained_beam_training", "--criterion", "bso", "--bso-cost", "sentence_bleu",
                      "--bso-beam-size", str(args.bso_beam_size),
                      "--bso-curriculum-start", str(max(2, args.bso_beam_size - args.extra_epochs + 1)),
                      "--bso-curriculum-epochs", "1", *common], max_tokens=2000)
    results = {}
    results["pretrained"], _ = deen.bleu(bin_dir, pretrained, "pretrained", refs, args.beams)
    results["seq2seq"], _ = deen.bleu(bin_dir, nll, "seq2seq_continued", refs, args.beams)
    results["bso"], _ = deen.bleu(bin_dir, bso, "bso_sbleu", refs, args.beams,
                                  extra=["--task", "constrained_beam_training", "--bso-decoding"])
    results["bso_minus_seq2seq_beam5"] = round(results["bso"]["5"] - results["seq2seq"]["5"], 2)
    print(results)
    write_results("translation", results, started, settings=args)


if __name__ == "__main__":
    main()
