#!/usr/bin/env python3
"""Sequence-level knowledge distillation on l10n-de-en at CPU scale (the talk's distillation table).

Teacher (256-unit LSTM) → Seq-KD corpus (``--task seq_kd``, beam 5) and Seq-Inter corpus (n-best 5, max
sentence BLEU) → students at half the width trained on the original data (baseline), with Word-KD
(``--criterion word_kd``), on the Seq-KD corpus and on the Seq-Inter corpus.  Reports detokenized BLEU
greedy and beam 5, decoding speed (student greedy vs teacher beam 5, median of ``--repeats`` runs), and the
throughput of ``seq_kd`` vs plain ``fairseq-generate`` on the same teacher, beam and batches (paired runs,
median ratio).  Each stage resumes; rerun the same command after an interruption.

    python3 benchmarks/distillation.py        # writes benchmarks/results/distillation.json
"""

import argparse
import os
import shutil
import statistics
import time

import deen
from common import write_results
from deen import demo, generation_speed, user_dir


def corpus(bin_dir, teacher, name, extra):
    """A distillation corpus by fairseq-generate --task seq_kd, binarized with the teacher's dictionaries."""
    out = os.path.join(deen.DIR, name)
    if not os.path.exists(os.path.join(out, "bin", "train.de-en.en.idx")):
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


def seq_kd_throughput(bin_dir, teacher, repeats):
    """seq_kd vs plain fairseq-generate on the valid set, beam 5, same batches: median of paired ratios."""
    base = ["fairseq-generate", bin_dir, "--user-dir", user_dir(), "--path", teacher, *deen.COMMON, *deen.NO_LIMITS,
            "--gen-subset", "valid", "--beam", "5", "--max-tokens", "6000", "--max-len-a", "1.5", "--max-len-b", "10"]
    plain, kd = [], []
    for r in range(repeats):
        out = demo.run(base, os.path.join(deen.DIR, f"throughput.plain{r}.log"))
        plain.append(generation_speed(out)["sentences"] / generation_speed(out)["seconds"])
        kd_dir = os.path.join(deen.DIR, f"throughput.kd{r}")
        shutil.rmtree(kd_dir, ignore_errors=True)
        out = demo.run([*base, "--task", "seq_kd", "--kd-output-dir", kd_dir], kd_dir + ".log")
        kd.append(generation_speed(out)["sentences"] / generation_speed(out)["seconds"])
    ratios = [k / p for k, p in zip(kd, plain)]
    return {"plain_sentences_per_s": round(statistics.median(plain), 1),
            "seq_kd_sentences_per_s": round(statistics.median(kd), 1),
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios]}


STUDENTS = ("student", "word_kd", "seq_kd", "seq_inter")


def student(name, bin_dir, teacher, args):
    """One student (smaller batches than the teacher's: more updates in few epochs); builds its corpus first."""
    nll = ["--criterion", "cross_entropy", "--lr", "0.002"]
    if name == "seq_kd":
        data, crit = corpus(bin_dir, teacher, "kd_beam", ["--beam", "5"]), nll
    elif name == "seq_inter":
        data, crit = corpus(bin_dir, teacher, "kd_inter", ["--beam", str(args.inter_beam), "--nbest",
                                                           str(args.inter_beam), "--kd-selection", "seq_inter"]), nll
    elif name == "word_kd":
        data, crit = bin_dir, ["--criterion", "word_kd", "--kd-teacher-path", teacher, "--kd-alpha",
                               str(args.kd_alpha), "--lr", "0.002"]
    else:
        data, crit = bin_dir, nll
    return deen.train("student" if name == "student" else f"student_{name}", data, args.student_epochs,
                      deen.STUDENT, crit, max_tokens=2000)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=4)
    parser.add_argument("--kd-alpha", type=float, default=0.5)
    parser.add_argument("--inter-beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only-student", choices=STUDENTS,
                        help="train just this student and stop (to train students in parallel processes)")
    args = parser.parse_args()
    started = time.time()
    bin_dir, refs = deen.data()
    teacher = deen.teacher(bin_dir, args.teacher_epochs)
    if args.only_student:
        student(args.only_student, bin_dir, teacher, args)
        return
    students = {name: student(name, bin_dir, teacher, args) for name in STUDENTS}
    import torch
    ckpts = {"teacher": teacher, **students}
    rows = {}
    for name, ckpt in ckpts.items():
        bleu, outputs = deen.bleu(bin_dir, ckpt, name, refs, [1, 5])
        tensors = torch.load(ckpt, map_location="cpu")["model"].values()
        params = sum(t.numel() for t in {(t.data_ptr(), t.shape): t for t in tensors}.values())  # tied: once
        rows[name] = {"bleu_greedy": bleu["1"], "bleu_beam5": bleu["5"], "params": params,
                      "greedy_mass_percent": deen.greedy_mass(outputs["1"])}
    # decoding speed, one thread: the teacher with beam 5, the students greedily; batched and one sentence a time
    for name, ckpt in ckpts.items():
        beam = 5 if name == "teacher" else 1
        rows[name]["words_per_sec"] = deen.words_per_sec(bin_dir, ckpt, beam, name, args.repeats)
        rows[name]["words_per_sec_batch1"] = deen.words_per_sec(bin_dir, ckpt, beam, f"{name}.bs1", 1,
                                                                batch=("--batch-size", "1"))
        demo.log(f"{name}: {rows[name]}")
    for name in students:
        for key in ("words_per_sec", "words_per_sec_batch1"):
            suffix = "" if key == "words_per_sec" else "_batch1"
            rows[name][f"speedup_vs_teacher_beam5{suffix}"] = round(rows[name][key] / rows["teacher"][key], 2)
    results = dict(rows)
    throughput = seq_kd_throughput(bin_dir, teacher, args.repeats)
    results["generation_throughput_ratio"] = throughput["ratio_median"]
    results["generation_throughput"] = throughput
    print(results)
    write_results("distillation", results, started, settings=args)


if __name__ == "__main__":
    main()
