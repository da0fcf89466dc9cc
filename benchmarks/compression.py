#!/usr/bin/env python3
"""The talk's compression tables (sequence-level distillation, pruning, decoding speed) on l10n-de-en, from
scratch, by one command that resumes where it stopped.

    python3 -m benchmarks.compression            # writes benchmarks/results/{distillation,pruning,decode_speed}.json
    python3 -m benchmarks.compression --smoke    # the same chain on 300 sentences, 1 epoch, into runs/.../compression_smoke

The chain (every stage a job; at most ``--jobs`` single-thread jobs at once; a stage that finished has a
``done`` marker under ``WORK/compression/stages`` and is skipped by a rerun; fairseq-train resumes from its
checkpoint_last.pt, the train-set decode from the ``seq_kd`` task's shard logs):

1. teacher (NLL, original data) and the baseline student (NLL, original data), in parallel;
2. one n-best decode of the training set by the teacher (``fairseq-generate --task seq_kd --beam B --nbest B``,
   ``--jobs`` shards): the task writes the top-1 corpus (Seq-KD), and the same pass's ``H-`` lines give the
   Seq-Inter corpus (of the B hypotheses the one with the highest sentence BLEU against the reference, sacrebleu's
   ``exp`` smoothing on the subword tokens, the better-ranked one on ties; ``--inter-beam`` sets B);
3. students: Word-KD (``--criterion word_kd``, original data), Seq-KD and Seq-Inter (their corpora), and the dense
   students of the pruning table (trained on the Seq-KD corpus at the width whose parameter count is closest to
   the non-zero count of the 80% / 90% rows);
4. pruning of the finished Seq-KD student (its last checkpoint): class-blind 0 (the same retraining without
   pruning: the dense reference), 50, 80, 90%, class-uniform and class-distribution 80%, one-shot at the start of
   retraining (``--task constrained_beam_training --prune-ratio --prune-scheme``), each retrained the same
   ``--retrain-epochs``;
5. test BLEU of every model (detokenized sacrebleu 13a, greedy and beam 5, ``fairseq-generate``), p(w*);
6. speed, last and alone: it waits for ``--quiet-file`` (polled every 30 s) until ``--quiet-deadline`` (UTC),
   then runs ``decode_speed.py`` (student greedy vs teacher beam 5, batch size 1 and batched, fairseq's generator
   and the lean greedy decoder, paired rounds, median of ratios) and times ``--task seq_kd`` against plain
   ``fairseq-generate`` (paired runs, median ratio); the files say whether the file existed (quiet) or not.

Training: every model a fixed epoch budget, Adam with the learning rate warmed up for ``--warmup`` updates then
decayed linearly to 0 at the end of the budget (``--lr-scheduler polynomial_decay --total-num-update`` = the
budget's updates, counted from fairseq's own batching), valid BLEU (greedy, fairseq's ``--eval-bleu``,
detokenized sacrebleu) after every epoch; the LAST checkpoint is tested (no selection on valid).  This differs
from the paper (Adam instead of SGD, a fixed budget instead of halving on plateau, LSTMs of a few hundred
thousand to a few million parameters instead of 4x1000 / 2x500).  fairseq's ``lstm`` needs as many encoder as
decoder layers, so the teacher's depth is both sides' (2 layers vs the student's 1).

p(w*) (``p_wstar_percent``): the mean over test sentences of the model's probability of its own greedy output
(from fairseq-generate's P- lines, ``</s>`` included), in percent: the talk's last column (the mass of the mode).

Results (``--smoke``: into the smoke folder instead): distillation.json, pruning.json, decode_speed.json,
distillation.png, pruning.png, with the command, commit, seed, settings, wall times, conditions, and the issue's
targets with measured value and pass/fail.  ``--report`` writes them from what exists, training nothing.
"""

import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from benchmarks import common, deen  # noqa: E402
from benchmarks.common import WORK, git_commit, log_curve  # noqa: E402
from benchmarks.deen import corpus_bleu, demo, parse_hypotheses, user_dir  # noqa: E402

SEED = 1


def arch(dim, layers, dropout):
    return ["--arch", "lstm", "--encoder-bidirectional", "--encoder-embed-dim", str(dim), "--encoder-hidden-size",
            str(dim), "--decoder-embed-dim", str(dim), "--decoder-hidden-size", str(dim), "--decoder-out-embed-dim",
            str(dim), "--encoder-layers", str(layers), "--decoder-layers", str(layers), "--dropout", str(dropout),
            "--share-decoder-input-output-embed"]


PRUNE_ROWS = ["class-blind:0", "class-blind:50", "class-blind:80", "class-blind:90", "class-uniform:80",
              "class-distribution:80"]
DENSE_ROWS = {"dense:80": 80, "dense:90": 90}
STUDENTS = ["student", "word_kd", "seq_kd", "seq_inter"]


# --------------------------------------------------------------------------------------------------- settings
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="300 training sentences, 1 epoch, into compression_smoke")
    p.add_argument("--dir", help="work folder (default WORK/compression or WORK/compression_smoke)")
    p.add_argument("--jobs", type=int, default=2, help="single-thread jobs at once (and decode shards)")
    p.add_argument("--teacher-dim", type=int, default=128)
    p.add_argument("--teacher-layers", type=int, default=2)
    p.add_argument("--student-dim", type=int, default=80)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--student-epochs", type=int, default=12)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.003, help="peak learning rate of teacher and students")
    p.add_argument("--retrain-lr", type=float, default=0.001, help="peak learning rate of the pruning retraining")
    p.add_argument("--warmup", type=int, default=100, help="warm-up updates (linear from 0)")
    p.add_argument("--teacher-max-tokens", type=int, default=2000)
    p.add_argument("--student-max-tokens", type=int, default=2000)
    p.add_argument("--kd-alpha", type=float, default=0.5, help="Word-KD's weight of the distillation term")
    p.add_argument("--inter-beam", type=int, default=5,
                   help="beam and n-best of the training-set decode: Seq-KD takes its top 1, Seq-Inter the closest "
                        "to the reference (the paper used 5 for Seq-KD and 35 for Seq-Inter)")
    p.add_argument("--quiet-file", default="/work/notes/QUIET")
    p.add_argument("--quiet-deadline", default="07:55", help="UTC HH:MM: run the speed stage then, quiet or not")
    p.add_argument("--no-speed", action="store_true", help="skip the speed stage")
    p.add_argument("--report", action="store_true", help="train nothing: write the results from what exists")
    args = p.parse_args(argv)
    if args.smoke:
        args.teacher_epochs = args.student_epochs = args.retrain_epochs = 1
        args.warmup = 5
        args.quiet_deadline = "now"
    args.dir = args.dir or os.path.join(WORK, "compression_smoke" if args.smoke else "compression")
    args.results = os.path.join(args.dir, "results") if args.smoke else common.RESULTS
    return args


# ------------------------------------------------------------------------------------------------------ data
def read_lines(path):
    """The lines of a text file, split on "\\n" only (test.en holds a U+0004 on line 205, which
    ``fairseq_bso.prep.read_lines`` refuses and ``str.splitlines`` would split on; it is scored as it is)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        text = f.read()
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def data(args):
    """(binarized folder, folder of its raw and subword text, raw test references) of the full corpus, or of
    its first 300/60/60 train/valid/test sentences (``--smoke``) with the full corpus's dictionaries."""
    full_bin = common.deen_bin(deen.VOCAB)
    text = os.path.dirname(full_bin)
    if not args.smoke:
        return full_bin, text, read_lines(os.path.join(text, "test.en"))
    out = os.path.join(args.dir, "data")
    if not os.path.exists(os.path.join(out, "bin", "test.de-en.en.idx")):
        os.makedirs(out, exist_ok=True)
        for split, n in (("train", 300), ("valid", 60), ("test", 60)):
            for lang in ("de", "en"):
                for kind in ("spm.", ""):
                    with open(os.path.join(text, f"{split}.{kind}{lang}"), encoding="utf-8") as f:
                        lines = [next(f) for _ in range(n)]
                    with open(os.path.join(out, f"{split}.{kind}{lang}"), "w", encoding="utf-8") as f:
                        f.writelines(lines)
        preprocess(os.path.join(out, "train.spm"), out, full_bin, os.path.join(out, "bin"), args.dir + "/data.log")
    return os.path.join(out, "bin"), out, read_lines(os.path.join(out, "test.en"))


def preprocess(trainpref, text, dict_bin, dest, log):
    demo.run(["fairseq-preprocess", "--source-lang", "de", "--target-lang", "en", "--trainpref", trainpref,
              "--validpref", f"{text}/valid.spm", "--testpref", f"{text}/test.spm", "--srcdict",
              f"{dict_bin}/dict.de.txt", "--tgtdict", f"{dict_bin}/dict.en.txt", "--destdir", dest, "--workers", "1"],
             log)


def updates_per_epoch(bin_dir, max_tokens):
    """fairseq-train's batches per epoch on ``bin_dir`` (its own batching: same size filter and token budget)."""
    from fairseq.tasks.translation import TranslationConfig, TranslationTask

    cfg = TranslationConfig(data=bin_dir, source_lang="de", target_lang="en", max_source_positions=64,
                            max_target_positions=64, dataset_impl="mmap")
    task = TranslationTask.setup_task(cfg)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=max_tokens, max_positions=(64, 64),
                                  ignore_invalid_inputs=True, required_batch_size_multiple=1, seed=SEED)
    return len(itr)


def model_params(model_args, bin_dir):
    """(parameters, prunable weights) of a freshly built model: every tensor once (tied ones once); prunable:
    matrices (dim >= 2), as ``fairseq_bso``'s pruning selects them."""
    from fairseq import options, tasks

    parser = options.get_training_parser()
    a = options.parse_args_and_arch(parser, [bin_dir, *model_args, "--source-lang", "de", "--target-lang", "en"])
    model = tasks.setup_task(a).build_model(a)
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.dim() >= 2)


def checkpoint_counts(ckpt):
    """(parameters, non-zero parameters) of a checkpoint's model, tied tensors once."""
    import torch

    state = torch.load(ckpt, map_location="cpu")["model"]
    unique = {(t.data_ptr(), tuple(t.shape)): t for t in state.values()}.values()
    return sum(t.numel() for t in unique), sum(int((t != 0).sum()) for t in unique)


# --------------------------------------------------------------------------------------------------- stages
class Ctx:
    def __init__(self, args):
        self.args = args
        self.dir = args.dir
        os.makedirs(os.path.join(self.dir, "stages"), exist_ok=True)
        os.makedirs(os.path.join(self.dir, "eval"), exist_ok=True)
        self.bin, self.text, self.refs = data(args)
        self.teacher_arch = arch(args.teacher_dim, args.teacher_layers, 0.2)
        self.student_arch = arch(args.student_dim, 1, 0.1)
        self.kd_dir = os.path.join(self.dir, "kd_top1")
        self.inter_dir = os.path.join(self.dir, "kd_inter")

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def ckpt(self, name):
        return self.path(name, "checkpoint_last.pt")


def train(ctx, name, bin_dir, model, crit, epochs, lr, max_tokens, extra=()):
    """fairseq-train into DIR/name: ``epochs`` epochs, lr warmed up then linearly to 0 over the budget, valid
    BLEU greedy per epoch; resumes from checkpoint_last.pt; returns it."""
    save = ctx.path(name)
    total = updates_per_epoch(bin_dir, max_tokens) * epochs
    cmd = ["fairseq-train", bin_dir, "--user-dir", user_dir(), *model, *deen.COMMON, *deen.LIMITS, *crit, *extra,
           "--optimizer", "adam", "--clip-norm", "5", "--lr", str(lr), "--lr-scheduler", "polynomial_decay",
           "--warmup-updates", str(min(ctx.args.warmup, max(total // 4, 1))), "--total-num-update", str(total),
           "--end-learning-rate", "0", "--max-tokens", str(max_tokens), "--max-epoch", str(epochs),
           "--save-dir", save, "--no-epoch-checkpoints",
           *deen.valid_bleu(1), "--log-format", "json", "--log-interval", "50", "--no-progress-bar"]
    demo.run(cmd, save + f".{int(time.time())}.log", demo.train_progress)
    common.write_file(os.path.join(save, "settings.json"), json.dumps(
        {"epochs": epochs, "lr": lr, "total_updates": total, "max_tokens": max_tokens, "command": cmd}, indent=1))
    return ctx.ckpt(name)


def run_info(ctx, name):
    """Valid BLEU curve [[epoch, bleu]], epochs, training wall seconds (fairseq's meters, summed over resumed
    invocations) of a run, from its json logs."""
    curve, epochs, wall, _ = log_curve(sorted(glob.glob(ctx.path(name + ".*.log"))))
    curve = sorted(curve.items())
    info = {"epochs": epochs, "train_wall_seconds": round(wall, 1), "valid_bleu_curve": [list(c) for c in curve]}
    if len(curve) >= 3:
        # flat over the last two epochs: the last two gains
        info["valid_gain_last_two_epochs"] = [round(curve[-2][1] - curve[-3][1], 2),
                                              round(curve[-1][1] - curve[-2][1], 2)]
    return info


def decode_shard(ctx, shard):
    """Shard ``shard`` of the teacher's n-best decode of the training set (``--task seq_kd``, top-1 corpus)."""
    a = ctx.args
    cmd = ["fairseq-generate", ctx.bin, "--user-dir", user_dir(), "--path", ctx.ckpt("teacher"), *deen.COMMON,
           *deen.NO_LIMITS, "--task", "seq_kd", "--kd-output-dir", ctx.kd_dir, "--kd-selection", "beam",
           "--kd-write-scores", "--gen-subset", "train", "--beam", str(a.inter_beam), "--nbest", str(a.inter_beam),
           "--max-tokens", "6000", "--max-len-a", "1.5", "--max-len-b", "10",
           "--distributed-world-size", str(a.jobs), "--distributed-rank", str(shard)]
    demo.run(cmd, ctx.path(f"decode.shard{shard}.{int(time.time())}.log"), lambda line: "seq_kd:" in line)


def nbest_from_logs(paths):
    """{id: (reference tokens, [hypothesis tokens in rank order])} from fairseq-generate logs (a later log's
    group of an id replaces an earlier one: a resumed decode repeats a batch)."""
    out = {}
    for path in paths:
        groups, refs = {}, {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = re.match(r"([HT])-(\d+)\t", line)
                if not m:
                    continue
                fields = line.rstrip("\n").split("\t")
                i = int(m.group(2))
                if m.group(1) == "T":
                    refs[i] = fields[1]
                    groups[i] = []  # a T- line starts an id's group: a repeated batch starts it afresh
                else:
                    groups.setdefault(i, []).append(fields[2] if len(fields) > 2 else "")
        for i, hyps in groups.items():
            out[i] = (refs.get(i, ""), hyps)
    return out


def corpora(ctx):
    """Both corpora of the one decode: Seq-KD (the task's top-1 files) and Seq-Inter (closest of the n-best)."""
    from sacrebleu.metrics import BLEU

    src = read_lines(os.path.join(ctx.kd_dir, "train.de"))
    top1 = read_lines(os.path.join(ctx.kd_dir, "train.en"))
    nbest = nbest_from_logs(sorted(glob.glob(ctx.path("decode.shard*.log"))))
    if sorted(nbest) != list(range(len(top1))):
        raise SystemExit(f"corpora: the decode logs hold {len(nbest)} sentences, the seq_kd corpus {len(top1)}: "
                         f"ids missing {sorted(set(range(len(top1))) - set(nbest))[:10]}")
    metric = BLEU(tokenize="none", smooth_method="exp", effective_order=True)
    inter, ranks, mismatch = [], [], 0
    for i in range(len(top1)):
        ref, hyps = nbest[i]
        mismatch += hyps[0] != top1[i]
        scores = [metric.sentence_score(h, [ref]).score for h in hyps]
        k = scores.index(max(scores))
        ranks.append(k)
        inter.append(hyps[k])
    if mismatch:
        raise SystemExit(f"corpora: {mismatch} top-1 hypotheses of the decode logs differ from the seq_kd corpus "
                         f"{ctx.kd_dir}/train.en")
    os.makedirs(ctx.inter_dir, exist_ok=True)
    for name, lines in (("train.de", src), ("train.en", inter)):
        common.write_file(os.path.join(ctx.inter_dir, name), "".join(line + "\n" for line in lines))
    for d in (ctx.kd_dir, ctx.inter_dir):
        shutil.rmtree(os.path.join(d, "bin"), ignore_errors=True)
        preprocess(os.path.join(d, "train"), ctx.text, ctx.bin, os.path.join(d, "bin"), d + ".preprocess.log")
    stats = {"sentences": len(top1), "beam_and_nbest": ctx.args.inter_beam,
             "seq_inter_differs_from_top1": sum(k > 0 for k in ranks),
             "seq_inter_mean_rank": round(sum(ranks) / len(ranks), 3),
             "seq_inter_rank_histogram": {str(k): ranks.count(k) for k in sorted(set(ranks))}}
    common.write_file(ctx.path("corpora.json"), json.dumps(stats, indent=1))


def dense_dim(ctx, percent):
    """The student width whose parameter count is closest to the non-zero count of the student pruned by
    ``percent`` % (all parameters minus floor(r x prunable weights))."""
    total, prunable = model_params(ctx.student_arch, ctx.bin)
    target = total - math.floor(percent / 100 * prunable)
    best = min(range(4, ctx.args.student_dim + 1),
               key=lambda d: abs(model_params(arch(d, 1, 0.1), ctx.bin)[0] - target))
    return best, target


def evaluate(ctx, name, ckpt):
    """Test BLEU greedy and beam 5 (detokenized sacrebleu), p(w*), parameter counts; DIR/eval/NAME.json."""
    row = {}
    for beam in (1, 5):
        out = deen.generate(ctx.bin, ckpt, beam, name, log=ctx.path("eval", f"{name}.beam{beam}.log"))
        hyps = parse_hypotheses(out, len(ctx.refs), detok=True)
        row["bleu_greedy" if beam == 1 else "bleu_beam5"] = round(corpus_bleu(hyps, ctx.refs, tokenized=False), 2)
        if beam == 1:
            row["p_wstar_percent"] = deen.greedy_mass(out)
    row["params"], row["nonzero_params"] = checkpoint_counts(ckpt)
    common.write_file(ctx.path("eval", name + ".json"), json.dumps(row, indent=1))
    demo.log(f"{name}: {row}")


def prune_name(row):
    scheme, _, percent = row.partition(":")
    return f"pruned_{scheme}_{percent}"


def dense_name(row):
    return "dense_" + row.split(":")[1]


def stages(ctx):
    """[(name, dependencies, function)] in priority order (the scheduler starts the first ready one)."""
    a = ctx.args
    nll = ["--criterion", "cross_entropy"]
    kd_bin = os.path.join(ctx.kd_dir, "bin")
    inter_bin = os.path.join(ctx.inter_dir, "bin")
    smt = a.student_max_tokens

    def student(name, bin_dir, crit):
        return lambda: train(ctx, name, bin_dir, ctx.student_arch, crit, a.student_epochs, a.lr, smt)

    out = [("teacher", [], lambda: train(ctx, "teacher", ctx.bin, ctx.teacher_arch, nll, a.teacher_epochs, a.lr,
                                         a.teacher_max_tokens)),
           ("student", [], student("student", ctx.bin, nll))]
    out += [(f"decode{r}", ["teacher"], (lambda r=r: decode_shard(ctx, r))) for r in range(a.jobs)]
    out += [("corpora", [f"decode{r}" for r in range(a.jobs)], lambda: corpora(ctx))]
    models = ["teacher", "student", "word_kd", "seq_kd", "seq_inter"] + [prune_name(r) for r in PRUNE_ROWS] + \
        [dense_name(r) for r in DENSE_ROWS]
    # evaluations first among ready stages (short, and they fill the results files early)
    out += [(f"eval_{m}", [m], (lambda m=m: evaluate(ctx, m, ctx.ckpt(m)))) for m in models]
    # longest first (word_kd, seq_kd, seq_inter, the dense rows), then the pruning rows: the shortest makespan
    # on two slots, and a chain cut short by the session's end loses the cheapest rows
    out += [("word_kd", ["teacher"], student("word_kd", ctx.bin, ["--criterion", "word_kd", "--kd-teacher-path",
                                                                   ctx.ckpt("teacher"), "--kd-alpha",
                                                                   str(a.kd_alpha)])),
            ("seq_kd", ["corpora"], student("seq_kd", kd_bin, nll)),
            ("seq_inter", ["corpora"], student("seq_inter", inter_bin, nll))]
    for row, percent in DENSE_ROWS.items():
        def dense(row=row, percent=percent):
            dim, target = dense_dim(ctx, percent)
            common.write_file(ctx.path(dense_name(row) + ".width.json"), json.dumps({"dim": dim, "target_nonzero": target}))
            return train(ctx, dense_name(row), kd_bin, arch(dim, 1, 0.1), nll, a.student_epochs, a.lr, smt)
        out.append((dense_name(row), ["corpora"], dense))
    for row in ["class-blind:0", "class-blind:80", "class-uniform:80", "class-blind:50", "class-distribution:80",
                "class-blind:90"]:
        scheme, _, percent = row.partition(":")
        out.append((prune_name(row), ["seq_kd"], (lambda scheme=scheme, percent=percent, row=row: train(
            ctx, prune_name(row), kd_bin, ctx.student_arch,
            ["--task", "constrained_beam_training", "--criterion", "cross_entropy", "--finetune-from-model",
             ctx.ckpt("seq_kd"), "--prune-ratio", str(int(percent) / 100), "--prune-scheme", scheme],
            a.retrain_epochs, a.retrain_lr, smt))))
    return out


# ------------------------------------------------------------------------------------------------ scheduler
def run_chain(ctx, on_progress):
    """Runs the stages, at most ``--jobs`` at once, each as soon as its dependencies are done; a finished stage
    writes DIR/stages/NAME.done and is skipped next time.  A failed stage blocks the stages that depend on it,
    the others go on; raises at the end, naming them."""
    todo = stages(ctx)
    marker = lambda n: ctx.path("stages", n + ".done")  # noqa: E731
    done = {n for n, _, _ in todo if os.path.exists(marker(n))}
    running, failed = {}, []
    lock = threading.Condition()

    def work(name, fn):
        started = time.time()
        try:
            fn()
            common.write_file(marker(name), json.dumps({"wall_seconds": round(time.time() - started, 1),
                                                        "finished": time.strftime("%H:%M:%S")}))
            ok = True
        except BaseException as e:  # noqa: B902  (SystemExit of demo.run included)
            demo.log(f"stage {name} FAILED: {e!r}\n{traceback.format_exc()}")
            ok = False
        with lock:
            running.pop(name)
            (done.add if ok else failed.append)(name)
            lock.notify_all()

    with lock:
        while True:
            if True:  # a failed stage blocks its dependents only (found failed in their dependencies below)
                for name, deps, fn in todo:
                    if len(running) >= ctx.args.jobs:
                        break
                    if name in done or name in running or name in failed or not all(d in done for d in deps):
                        continue
                    demo.log(f"stage {name}: start")
                    running[name] = threading.Thread(target=work, args=(name, fn), daemon=True)
                    running[name].start()
            if not running:
                break
            lock.wait(timeout=30)
            lock.release()
            try:
                on_progress()
                if speed_ready(ctx, done):
                    # the quiet window came while jobs still run: pause them (SIGSTOP), measure, resume
                    pids = child_pids()
                    demo.log(f"speed: pausing the running jobs {pids} ({sorted(running)})")
                    for pid in pids:
                        os.kill(pid, signal.SIGSTOP)
                    try:
                        speed(ctx, paused=sorted(running))
                    finally:
                        for pid in pids:
                            os.kill(pid, signal.SIGCONT)
                        demo.log("speed: jobs resumed")
            finally:
                lock.acquire()
    if failed:
        raise SystemExit(f"stages failed: {failed} (logs under {ctx.dir}); rerun the same command to resume")
    missing = [n for n, _, _ in todo if n not in done]
    if missing:
        raise SystemExit(f"stages not run (dependencies failed?): {missing}")


# ---------------------------------------------------------------------------------------------------- speed
def child_pids():
    """This process's child processes (the fairseq commands the stages run)."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid())], stdout=subprocess.PIPE, text=True).stdout
    return [int(x) for x in out.split()]


def past_deadline(args):
    if args.quiet_deadline == "now":
        return True
    hh, mm = (int(x) for x in args.quiet_deadline.split(":"))
    now = time.gmtime()
    return now.tm_hour * 60 + now.tm_min >= hh * 60 + mm


def speed_ready(ctx, done):
    """The speed stage can run now: its models are trained and the machine is quiet (or the deadline passed)."""
    a = ctx.args
    return (not a.no_speed and not a.smoke and not os.path.exists(ctx.path("stages", "speed.done"))
            and all(m in done for m in ("teacher", "student", "seq_kd"))
            and (os.path.exists(a.quiet_file) or past_deadline(a)))


def wait_quiet(args):
    """Wait for the quiet file until the deadline (UTC HH:MM today); returns (quiet, note)."""
    if args.quiet_deadline == "now":
        return os.path.exists(args.quiet_file), "no wait (--smoke)"
    hh, mm = (int(x) for x in args.quiet_deadline.split(":"))
    now = time.gmtime()
    deadline = time.time() + ((hh * 60 + mm) - (now.tm_hour * 60 + now.tm_min)) * 60 - now.tm_sec
    while not os.path.exists(args.quiet_file) and time.time() < deadline:
        time.sleep(30)
    if os.path.exists(args.quiet_file):
        return True, f"{args.quiet_file} existed when the speed stage started ({time.strftime('%H:%M:%S', time.gmtime())} UTC)"
    return False, (f"NOT QUIET: {args.quiet_file} did not exist by {args.quiet_deadline} UTC; measured while other "
                   "processes may have been running")


def throughput(ctx, repeats):
    """seq_kd vs plain fairseq-generate, teacher, beam 5, valid set, same batches: median of paired ratios."""
    return {**deen.seq_kd_throughput(ctx.bin, ctx.ckpt("teacher"), repeats, ctx.path("speed")),
            "what": "fairseq-generate --task seq_kd (writing the corpus) vs plain fairseq-generate, teacher beam 5, "
                    "valid set, same batches, alternating runs, median of per-pair ratios of sentences/s"}


def speed(ctx, paused=()):
    a = ctx.args
    marker = ctx.path("stages", "speed.done")
    if os.path.exists(marker):
        return
    os.makedirs(ctx.path("speed"), exist_ok=True)
    demo.log(f"speed: waiting for {a.quiet_file} (until {a.quiet_deadline} UTC)")
    quiet, note = wait_quiet(a)
    started = time.time()
    tp = throughput(ctx, 1 if a.smoke else 3)
    common.write_file(ctx.path("speed", "throughput.json"), json.dumps({**tp, "quiet": quiet, "conditions": note},
                                                                        indent=1))
    cmd = [sys.executable, "-m", "benchmarks.decode_speed", f"teacher={ctx.ckpt('teacher')}",
           f"student={ctx.ckpt('student')}", f"seq_kd={ctx.ckpt('seq_kd')}", "--lean-greedy",
           "--rounds", "1" if a.smoke else "3", "--sentences", "10" if a.smoke else "150",
           "--batched-sentences", "60" if a.smoke else "1255", "--out", ctx.path("speed", "decode_speed.json")]
    if quiet:
        cmd.append("--quiet-machine")
    demo.run(cmd, ctx.path("speed", "decode_speed.log"), lambda line: "round" in line)
    if paused:
        note += f"; this chain's running jobs {list(paused)} were paused (SIGSTOP) during the measurement"
    common.write_file(marker, json.dumps({"quiet": quiet, "conditions": note,
                                          "wall_seconds": round(time.time() - started, 1)}))


# --------------------------------------------------------------------------------------------------- report
def load(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def target(desc, measured, ok):
    return {"target": desc, "measured": measured, "pass": None if measured is None else bool(ok)}


def write(args, name, results):
    results = dict(results)
    results.update(command=" ".join(["python3", "benchmarks/compression.py",
                                     *[x for x in sys.argv[1:] if x != "--report"]]),
                   written_by=" ".join(["python3", "benchmarks/compression.py", *sys.argv[1:]]),
                   git_commit=git_commit(), seeds=[SEED],
                   settings={k: v for k, v in vars(args).items() if k not in ("results",)})
    return common.write_file(os.path.join(args.results, name + ".json"), results)


def suite_wall(ctx):
    """Wall seconds the chain has run: the sum over invocations (DIR/invocations.json)."""
    inv = load(ctx.path("invocations.json")) or []
    return round(sum(e - s for s, e in inv), 1)


def stage_walls(ctx):
    return {os.path.basename(p)[:-5]: load(p).get("wall_seconds")
            for p in sorted(glob.glob(ctx.path("stages", "*.done")))}


def report(ctx):
    a = ctx.args
    ev = {os.path.basename(p)[:-5]: load(p) for p in glob.glob(ctx.path("eval", "*.json"))}
    walls = stage_walls(ctx)
    speed_marker = load(ctx.path("stages", "speed.done"))
    conditions = ("trained while other processes (other sessions' tests) shared the 2 cores: the per-stage wall "
                  "times are upper bounds, not timings; two single-thread jobs at a time")

    def row(name):
        r = dict(ev.get(name) or {})
        r.update(run_info(ctx, name))
        r["finished"] = name in walls
        if ev.get(name) is None:
            r.update(bleu_greedy=None, bleu_beam5=None, p_wstar_percent=None)
        return r

    # ---- distillation
    dist = {name: row(name) for name in ["teacher"] + STUDENTS}
    tp = load(ctx.path("speed", "throughput.json"))
    g = lambda n, k: dist[n].get(k)  # noqa: E731
    diff = lambda x, y: None if x is None or y is None else round(x - y, 2)  # noqa: E731
    d1 = diff(g("seq_kd", "bleu_greedy"), g("student", "bleu_greedy"))
    d2 = diff(g("seq_kd", "bleu_greedy"), g("teacher", "bleu_beam5"))
    d3 = diff(g("word_kd", "bleu_greedy"), g("student", "bleu_greedy"))
    d4 = diff(g("seq_inter", "bleu_beam5"), g("seq_kd", "bleu_beam5"))
    d5 = diff(g("seq_kd", "p_wstar_percent"), g("student", "p_wstar_percent"))
    targets = [target("Seq-KD greedy >= student greedy + 2", d1, d1 is not None and d1 >= 2),
               target("Seq-KD greedy >= teacher beam 5 - 1", d2, d2 is not None and d2 >= -1),
               target("Word-KD greedy >= student greedy", d3, d3 is not None and d3 >= 0),
               target("Seq-Inter beam 5 >= Seq-KD beam 5", d4, d4 is not None and d4 >= 0),
               target("p(w*) rises in the Seq-KD student (Seq-KD minus student, points)", d5,
                      d5 is not None and d5 > 0),
               target("seq_kd generation throughput >= 0.95x plain fairseq-generate",
                      tp and tp["ratio_median"], tp is not None and tp["ratio_median"] >= 0.95)]
    pending = [n for n in ["teacher"] + STUDENTS if ev.get(n) is None] + ([] if tp else ["throughput"])
    dist_out = {**dist,
                "generation_throughput_ratio": tp and tp["ratio_median"],
                "generation_throughput": tp and {**tp, "quiet": tp.get("quiet")},
                "suite_wall_seconds": suite_wall(ctx),
                "suite_wall_note": "sum of the command's invocations' wall time, from the first stage to the "
                                   "results, including the speed stage's wait for the quiet file "
                                   "(stage_wall_seconds: each stage's own wall)",
                "stage_wall_seconds": walls,
                "corpora": load(ctx.path("corpora.json")),
                "models": {"teacher": " ".join(ctx.teacher_arch), "student": " ".join(ctx.student_arch)},
                "training": "Adam, lr warmed up then linearly to 0 over a fixed epoch budget (polynomial_decay), "
                            "valid BLEU greedy per epoch (fairseq --eval-bleu, detokenized sacrebleu), last "
                            "checkpoint tested; test BLEU: detokenized sacrebleu 13a on the test set",
                "p_wstar": "mean over test sentences of the model's probability of its own greedy output, percent",
                "targets": targets, "conditions": conditions,
                "state": "complete" if not pending else f"partial: not yet measured: {pending}"}
    write(a, "distillation", dist_out)
    # ---- pruning
    rows = {}
    for r in PRUNE_ROWS:
        rows[r] = row(prune_name(r))
        rows[r].update(scheme=r.split(":")[0], ratio_percent=int(r.split(":")[1]))
    for r in DENSE_ROWS:
        rows[r] = row(dense_name(r))
        rows[r]["width"] = load(ctx.path(dense_name(r) + ".width.json"))
    base = rows["class-blind:0"]
    for r in rows.values():
        for k in ("bleu_greedy", "bleu_beam5"):
            r[k.replace("bleu", "bleu_lost")] = diff(base.get(k), r.get(k))
    lost = lambda r, k="bleu_beam5": rows[r].get(k.replace("bleu", "bleu_lost"))  # noqa: E731
    b80d = diff(rows["class-blind:80"].get("bleu_beam5"), rows["dense:80"].get("bleu_beam5"))
    b80dg = diff(rows["class-blind:80"].get("bleu_greedy"), rows["dense:80"].get("bleu_greedy"))
    ptargets = [target("class-blind 50% loses <= 0.5 BLEU (beam 5, against class-blind 0%)", lost("class-blind:50"),
                       lost("class-blind:50") is not None and lost("class-blind:50") <= 0.5),
                target("class-blind 80% loses <= 1.0 BLEU (beam 5)", lost("class-blind:80"),
                       lost("class-blind:80") is not None and lost("class-blind:80") <= 1.0),
                target("class-blind 80% beats the dense student of the same non-zero count by >= 2 (beam 5)", b80d,
                       b80d is not None and b80d >= 2),
                target("same, greedy", b80dg, b80dg is not None and b80dg >= 2)]
    pending = [r for r, v in rows.items() if v.get("bleu_beam5") is None]
    prun_out = {"rows": rows, "losses_against": "class-blind:0 (the Seq-KD student retrained the same epochs, "
                                                "unpruned)",
                "seq_kd_student_before_retraining": ev.get("seq_kd"),
                "retraining": f"{a.retrain_epochs} epochs from the Seq-KD student's last checkpoint, masks fixed "
                              f"from the first update (one-shot), lr {a.retrain_lr} warmed up then linearly to 0",
                "class_blind_vs_uniform": class_analysis(ctx, rows),
                "dense_rows_note": dense_note(rows),
                "retraining_gains": {r: round(v["valid_bleu_curve"][-1][1] - v["valid_bleu_curve"][-2][1], 2)
                                     for r, v in rows.items() if r.startswith("class")
                                     and len(v.get("valid_bleu_curve") or []) >= 2},
                "retraining_gains_note": "valid BLEU gain of each pruning row's last retraining epoch: a row still "
                                         "gaining several points was cut by the retraining budget, and its loss "
                                         "against class-blind:0 is an upper bound of what pruning costs",
                "targets": ptargets, "stage_wall_seconds": {k: v for k, v in walls.items() if "prun" in k or
                                                             "dense" in k},
                "conditions": conditions,
                "state": "complete" if not pending else f"partial: not yet measured: {pending}"}
    write(a, "pruning", prun_out)
    # ---- speed
    sp = load(ctx.path("speed", "decode_speed.json"))
    if sp is not None:
        def su(setting, name):
            return sp.get(setting, {}).get(name, {}).get("speedup_vs_teacher")
        sp.pop("command", None)
        sp.pop("settings", None)
        sp["decode_speed_py"] = "benchmarks/decode_speed.py, run by benchmarks/compression.py's speed stage"
        sp["quiet"] = speed_marker and speed_marker.get("quiet")
        sp["conditions"] = (sp.get("conditions", "") + "; " + (speed_marker or {}).get("conditions", ""))
        sp["targets"] = [
            target("student greedy >= 10x teacher beam 5, batched, same generator (seq_kd)", su("batched", "seq_kd"),
                   (su("batched", "seq_kd") or 0) >= 10),
            target("student greedy >= 10x teacher beam 5, batch size 1, lean decoder (seq_kd+lean)",
                   su("batch1", "seq_kd+lean"), (su("batch1", "seq_kd+lean") or 0) >= 10)]
        sp["state"] = "complete"
        write(a, "decode_speed", sp)
    plots(ctx, dist, rows)


def dense_note(rows):
    """What the dense rows measure: a row whose valid BLEU stayed below 1 every epoch never left the
    unigram plateau of these LSTMs (which lasts longer the narrower the model) within the budget."""
    notes = []
    for r in DENSE_ROWS:
        curve = rows[r].get("valid_bleu_curve") or []
        width = (rows[r].get("width") or {}).get("dim")
        if curve and rows[r].get("finished") and max(b for _, b in curve) < 1:
            notes.append(f"{r} (width {width}, {rows[r].get('params')} parameters) never left the unigram plateau "
                         f"in its {len(curve)} epochs (valid BLEU < 1 every epoch)")
    if not notes:
        return None
    return ("; ".join(notes) + ": at this budget the pruned-vs-dense comparison says that a dense LSTM this narrow "
            "does not train in the epochs the student had (the plateau lasts longer the narrower the model), not "
            "what it reaches at convergence.")


def weight_kind(name):
    """The weight kinds of ``fairseq_bso``'s pruning (embeddings, attention, output, encoder, decoder)."""
    if name.endswith("embed_tokens.weight"):
        return "embeddings"
    if "attention" in name or "attn" in name:
        return "attention"
    if any(x in name for x in ("fc_out", "additional_fc", "output_projection")):
        return "output"
    return "encoder" if name.startswith("encoder.") else "decoder"


def class_analysis(ctx, rows):
    """Why class-blind and class-uniform differ: per weight matrix of the converged Seq-KD student (the weights
    the masks were chosen from) its size, mean |w| and std, and the share that class-blind 80% pruned (the zeros
    of the retrained class-blind:80 checkpoint; class-uniform prunes 80% of every class).  Also checks the
    class-blind selection itself: every pruned weight has |w| <= every kept weight (in the dense weights)
    and the pruned count is floor(0.8 N)."""
    import torch

    src = ctx.ckpt("seq_kd")
    pruned = ctx.ckpt(prune_name("class-blind:80"))
    if not (os.path.exists(src) and os.path.exists(pruned)):
        return None
    dense = torch.load(src, map_location="cpu")["model"]
    blind = torch.load(pruned, map_location="cpu")["model"]
    seen, per, kinds = set(), {}, {}
    max_pruned, min_kept, n_pruned, n_all = 0.0, float("inf"), 0, 0
    for k, t in dense.items():
        if t.dim() < 2 or (t.data_ptr(), tuple(t.shape)) in seen:
            continue
        seen.add((t.data_ptr(), tuple(t.shape)))
        t = t.double().abs()
        zero = blind[k] == 0
        if zero.any():
            max_pruned = max(max_pruned, float(t[zero].max()))
        if (~zero).any():
            min_kept = min(min_kept, float(t[~zero].min()))
        n_pruned += int(zero.sum())
        n_all += t.numel()
        per[k] = {"kind": weight_kind(k), "numel": t.numel(), "mean_abs": round(float(t.mean()), 5),
                  "std": round(float(dense[k].double().std()), 5),
                  "class_blind80_pruned_percent": round(100.0 * float(zero.double().mean()), 2)}
        kd = kinds.setdefault(weight_kind(k), {"numel": 0, "pruned": 0, "abs_sum": 0.0})
        kd["numel"] += t.numel()
        kd["pruned"] += int(zero.sum())
        kd["abs_sum"] += float(t.sum())
    by_kind = {k: {"numel": v["numel"], "share_of_weights_percent": round(100.0 * v["numel"] / n_all, 1),
                   "mean_abs": round(v["abs_sum"] / v["numel"], 5),
                   "class_blind80_pruned_percent": round(100.0 * v["pruned"] / v["numel"], 2)}
               for k, v in kinds.items()}
    order = sorted(per, key=lambda k: -per[k]["class_blind80_pruned_percent"])
    selection_ok = max_pruned <= min_kept and n_pruned == math.floor(0.8 * n_all)
    blind_b, uniform_b = rows["class-blind:80"].get("bleu_beam5"), rows["class-uniform:80"].get("bleu_beam5")
    threshold = (max_pruned + min_kept) / 2
    over = [k for k in order if per[k]["class_blind80_pruned_percent"] > 85]
    under = [k for k in order if per[k]["class_blind80_pruned_percent"] < 76]
    scales = [per[k]["mean_abs"] for k in per]
    item = lambda k: f"{k} {per[k]['class_blind80_pruned_percent']}% (mean |w| {per[k]['mean_abs']})"  # noqa: E731
    answer = (("No defect: the class-blind selection is exact (every pruned weight is no larger than every kept one "
               f"in the dense student; {n_pruned:,} = floor(0.8 x {n_all:,}) pruned). " if selection_ok else
               f"DEFECT? the class-blind selection is not a global magnitude threshold (max pruned |w| "
               f"{max_pruned:.6g}, min kept {min_kept:.6g}, {n_pruned:,} pruned of {n_all:,}). ") +
              f"It is the classes' scales at this size: the converged student's matrices differ in mean |w| by "
              f"{max(scales) / min(scales):.1f}x ({min(scales)} to {max(scales)}), so one global threshold "
              f"(|w| ~ {threshold:.3f}) prunes the small-scale matrices far beyond 80% (" +
              ", ".join(item(k) for k in over) + ") and the large-scale ones far less (" +
              ", ".join(item(k) for k in under) + "). The over-pruned ones are the recurrent (weight_hh) "
              "matrices, the projections that start the decoder from the encoder's final state and the "
              "attention's query projection: few weights, each used at every step; class-uniform keeps 20% of "
              "every matrix. By kind: " +
              "; ".join(f"{k} {v['share_of_weights_percent']}% of the weights, mean |w| {v['mean_abs']}, "
                        f"{v['class_blind80_pruned_percent']}% pruned" for k, v in by_kind.items()) +
              ("" if blind_b is None or uniform_b is None else
               f". Result: class-blind 80% {'trails' if blind_b < uniform_b else 'matches or beats'} class-uniform "
               f"80% by {abs(blind_b - uniform_b):.2f} BLEU (beam 5)") + ".")
    return {"per_matrix": per, "by_kind": by_kind, "answer": answer,
            "selection_check": {"max_abs_pruned": max_pruned, "min_abs_kept": min_kept, "pruned": n_pruned,
                                "matrix_weights": n_all, "exact": selection_ok},
            "class_blind80_minus_class_uniform80_beam5": None if blind_b is None or uniform_b is None
            else round(blind_b - uniform_b, 2)}


def plots(ctx, dist, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        demo.log("matplotlib missing: no plots")
        return
    for name, series, title in (("distillation", dist, "distillation: valid BLEU (greedy) per epoch"),
                                ("pruning", rows, "pruning retraining and dense students: valid BLEU (greedy)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, r in series.items():
            curve = r.get("valid_bleu_curve") or []
            if curve:
                ax.plot([e for e, _ in curve], [b for _, b in curve], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("valid BLEU")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(ctx.args.results, name + ".png")
        common.write_file(path, save=lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    ctx = Ctx(args)
    if args.report:
        report(ctx)
        return
    started = time.time()
    inv_path = ctx.path("invocations.json")
    invocations = (load(inv_path) or []) + [[started, started]]
    lock = threading.Lock()

    def progress():
        with lock:
            invocations[-1][1] = time.time()
            common.write_file(inv_path, json.dumps(invocations))
            try:
                report(ctx)
            except Exception as e:  # a partial report must not stop the chain
                demo.log(f"report failed (will retry): {e!r}")

    try:
        run_chain(ctx, progress)
        if not args.no_speed:
            speed(ctx)
    finally:
        progress()
    demo.log(f"done: results in {args.results}")


if __name__ == "__main__":
    main()
