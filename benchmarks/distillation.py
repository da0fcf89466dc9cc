#!/usr/bin/env python3
"""Sequence-level knowledge distillation on l10n-de-en at CPU scale (the talk's distillation table).

Teacher (256-unit LSTM) → Seq-KD corpus (``--task seq_kd``, beam 5) and Seq-Inter corpus (n-best 5, max
sentence BLEU) → students at half the width trained on the original data (baseline), with Word-KD
(``--criterion word_kd``), on the Seq-KD corpus and on the Seq-Inter corpus.  Reports detokenized BLEU
greedy and beam 5, decoding speed (student greedy vs teacher beam 5, median of ``--repeats`` runs), and the
throughput of ``seq_kd`` vs plain ``fairseq-generate`` on the same teacher, beam and batches (paired runs,
median ratio).  Each stage resumes; rerun the same command after an interruption.

    python3 -m benchmarks.distillation        # writes benchmarks/results/distillation.json
"""

import argparse
import os
import time

from benchmarks import deen
from benchmarks.common import write_results
from benchmarks.deen import demo, user_dir


def corpus(bin_dir, teacher, name, extra):
    """A distillation corpus by fairseq-generate --task seq_kd, binarized with the teacher's dictionaries."""
    out = os.path.join(deen.DIR, name)
    if not os.path.exists(os.path.join(out, "bin", "test.de-en.en.idx")):  # preprocess writes test last
        demo.run(["fairseq-generate", bin_dir, "--user-dir", user_dir(), "--path", teacher, *deen.COMMON,
                  *deen.NO_LIMITS, "--task", "seq_kd", "--kd-output-dir", out, "--gen-subset", "train",
                  "--max-tokens", "6000", "--max-len-a", "1.5", "--max-len-b", "10", "--kd-write-scores", *extra],
                 out + ".log", lambda line: "seq_kd:" in line)
        spm = os.path.dirname(bin_dir)
        demo.run(["fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref",
                  f"{out}/train", "--validpref", f"{spm}/valid.spm", "--testpref", f"{spm}/test.spm",
                  "--srcdict", f"{bin_dir}/dict.de.txt", "--tgtdict", f"{bin_dir}/dict.en.txt",
                  "--destdir", f"{out}/bin", "--workers", "2"], out + ".preprocess.log")
    return os.path.join(out, "bin")


STUDENTS = ("student", "word_kd", "seq_kd", "seq_inter", "seq_kd_small")


def student_dir(name, args):
    """The model folder of a student; a Seq-Inter corpus from a beam other than 5 gets its own."""
    if name == "student":
        return "student"
    if name == "seq_inter" and args.inter_beam != 5:
        return f"student_seq_inter_b{args.inter_beam}"
    return f"student_{name}"


def student(name, bin_dir, teacher, args):
    """One student trained to convergence (valid BLEU greedy, its decoding; smaller batches than the
    teacher's); builds its distillation corpus first."""
    nll = ["--criterion", "cross_entropy", "--lr", "0.002"]
    model = deen.STUDENT
    if name in ("seq_kd", "seq_kd_small"):
        data, crit = corpus(bin_dir, teacher, "kd_beam", ["--beam", "5"]), nll
        model = deen.STUDENT_SMALL if name == "seq_kd_small" else deen.STUDENT
    elif name == "seq_inter":
        inter = "kd_inter" if args.inter_beam == 5 else f"kd_inter_b{args.inter_beam}"
        data, crit = corpus(bin_dir, teacher, inter, ["--beam", str(args.inter_beam), "--nbest",
                                                      str(args.inter_beam), "--kd-selection", "seq_inter"]), nll
    elif name == "word_kd":
        data, crit = bin_dir, ["--criterion", "word_kd", "--kd-teacher-path", teacher, "--kd-alpha",
                               str(args.kd_alpha), "--lr", "0.002"]
    else:
        data, crit = bin_dir, nll
    return deen.train(student_dir(name, args), data, args.student_epochs, model, crit, max_tokens=2000,
                      valid_beam=1, patience=args.patience)


def params_of(ckpt):
    import torch

    tensors = torch.load(ckpt, map_location="cpu")["model"].values()
    return sum(t.numel() for t in {(t.data_ptr(), t.shape): t for t in tensors}.values())  # tied: once


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-epochs", type=int, default=40, help="cap; training stops at --teacher-patience")
    parser.add_argument("--teacher-patience", type=int, default=3,
                        help="epochs without a valid BLEU gain (beam 5) before the teacher stops")
    parser.add_argument("--student-epochs", type=int, default=40, help="cap; training stops at --patience")
    parser.add_argument("--patience", type=int, default=2,
                        help="epochs without a valid BLEU gain (greedy) before a student stops")
    parser.add_argument("--kd-alpha", type=float, default=0.5)
    parser.add_argument("--inter-beam", type=int, default=5,
                        help="beam and n-best of the Seq-Inter corpus (the paper used 35)")
    parser.add_argument("--only-student", choices=STUDENTS,
                        help="train just this student and stop (to train students in parallel processes)")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the results file from the finished models (others are listed "
                             "as missing)")
    parser.add_argument("--throughput", action="store_true",
                        help="also time seq_kd against plain fairseq-generate (paired runs; a quiet machine)")
    parser.add_argument("--repeats", type=int, default=3, help="paired runs of --throughput")
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    if args.only_student == "student":  # the baseline student does not need the teacher
        student("student", bin_dir, None, args)
        return
    if args.report:
        ckpts = {"teacher": os.path.join(deen.DIR, "teacher", "checkpoint_best.pt")}
        ckpts.update({n: os.path.join(deen.DIR, student_dir(n, args), "checkpoint_best.pt") for n in STUDENTS})
        missing = [n for n in ckpts if not deen.finished(os.path.basename(os.path.dirname(ckpts[n])))]
        ckpts = {n: c for n, c in ckpts.items() if n not in missing}
        if "teacher" in missing:
            raise SystemExit(f"no finished teacher in {deen.DIR}/teacher")
    else:
        teacher = deen.teacher(bin_dir, args.teacher_epochs, args.teacher_patience)
        if args.only_student:
            student(args.only_student, bin_dir, teacher, args)
            return
        ckpts = {"teacher": teacher, **{name: student(name, bin_dir, teacher, args) for name in STUDENTS}}
        missing = []
    rows = {}
    for name, ckpt in ckpts.items():
        run = "teacher" if name == "teacher" else student_dir(name, args)
        bleu, outputs = deen.bleu(bin_dir, ckpt, run, refs, [1, 5])
        info = deen.run_info(run)
        rows[name] = {"bleu_greedy": bleu["1"], "bleu_beam5": bleu["5"], "params": params_of(ckpt),
                      "greedy_mass_percent": deen.greedy_mass(outputs["1"]), **info}
        demo.log(f"{name}: {dict((k, v) for k, v in rows[name].items() if k != 'valid_bleu_curve')}")
    results = dict(rows)
    if "seq_kd" in rows:
        results["targets"] = {
            "seq_kd_greedy_minus_student_greedy": round(rows["seq_kd"]["bleu_greedy"] - rows["student"]["bleu_greedy"],
                                                        2) if "student" in rows else None,
            "seq_kd_greedy_minus_teacher_beam5": round(rows["seq_kd"]["bleu_greedy"] - rows["teacher"]["bleu_beam5"],
                                                       2)}
    results["missing"] = missing
    results["speed"] = "benchmarks/results/decode_speed.json (benchmarks/decode_speed.py, paired, quiet machine)"
    if args.throughput:
        throughput = deen.seq_kd_throughput(bin_dir, ckpts["teacher"], args.repeats, deen.DIR)
        results["generation_throughput_ratio"] = throughput["ratio_median"]
        results["generation_throughput"] = throughput
    print(results)
    write_results("distillation_stagewise", results, started, settings=args)


if __name__ == "__main__":
    main()
