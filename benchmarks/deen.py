"""German→English (../shared/data/l10n-de-en) pieces shared by the translation, distillation and pruning
benchmarks: the data, the teacher (= the pretrained seq2seq model), training and detokenized BLEU.

Every model is trained once into runs/benchmarks/deen/<name> and reused; a finished model has a
``done`` marker, an unfinished one resumes from its checkpoint_last.pt when the benchmark is rerun.
"""

import json
import os
import re
import shutil
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: speeds are per thread, and two
os.environ.setdefault("MKL_NUM_THREADS", "1")  # benchmark streams can share the 2 cores without thrashing

from benchmarks.common import WORK, deen_bin, demo, log_curve, write_file  # noqa: E402  (demo: run/log with progress output)
from fairseq_bso.evaluation import corpus_bleu, generation_speed, parse_hypotheses  # noqa: E402
from fairseq_bso.path import user_dir  # noqa: E402

VOCAB = 4000
DIR = os.path.join(WORK, "deen")
os.makedirs(DIR, exist_ok=True)
COMMON = ["--cpu", "--seed", "1", "--num-workers", "0", "--required-batch-size-multiple", "1"]
# training skips the 1.2% of pairs longer than 64 subwords; generation lifts the LSTM's stored limit (it has no
# position embeddings) so every test and training sentence is translated
LIMITS = ["--max-source-positions", "64", "--max-target-positions", "64", "--skip-invalid-size-inputs-valid-test"]
NO_LIMITS = ["--model-overrides", "{'max_source_positions': 1024, 'max_target_positions': 1024}"]

# The teacher, also the seq2seq baseline of the translation table (Wiseman & Rush's de-en model in small).
TEACHER = ["--arch", "lstm", "--encoder-bidirectional", "--encoder-embed-dim", "256", "--encoder-hidden-size",
           "256", "--decoder-embed-dim", "256", "--decoder-hidden-size", "256", "--decoder-out-embed-dim", "256",
           "--encoder-layers", "1", "--decoder-layers", "1", "--dropout", "0.2",
           "--share-decoder-input-output-embed"]
# The student: half the width (about a quarter of the teacher's LSTM parameters).
STUDENT = ["--arch", "lstm", "--encoder-bidirectional", "--encoder-embed-dim", "128", "--encoder-hidden-size",
           "128", "--decoder-embed-dim", "128", "--decoder-hidden-size", "128", "--decoder-out-embed-dim", "128",
           "--encoder-layers", "1", "--decoder-layers", "1", "--dropout", "0.1",
           "--share-decoder-input-output-embed"]
# The small student of the size/speed table: a quarter of the teacher's width.
STUDENT_SMALL = [("64" if x in ("128",) else x) for x in STUDENT]


def data():
    """(binarized folder, raw test references).  The references are split on "\\n" only and kept as they are:
    test.en line 205 holds a U+0004, which ``fairseq_bso.prep.read_lines`` refuses as input text."""
    bin_dir = deen_bin(VOCAB)
    with open(os.path.join(os.path.dirname(bin_dir), "test.en"), encoding="utf-8", newline="\n") as f:
        text = f.read()
    return bin_dir, (text[:-1] if text.endswith("\n") else text).split("\n")


def train(name, bin_dir, epochs, model, args, max_tokens=4000, valid_beam=None, patience=3):
    """fairseq-train into DIR/name; skipped when its ``done`` marker exists, resumed otherwise.

    Without ``valid_beam``: ``epochs`` epochs, returns checkpoint_last.pt.  With ``valid_beam`` (training to
    convergence): validation BLEU after every epoch (fairseq's ``--eval-bleu``, detokenized sacrebleu, the
    model decoded with that beam, as it will be tested), training stops when it has not improved for
    ``patience`` epochs (``--patience``; ``None``: never early) or after ``epochs`` epochs (a cap), returns
    checkpoint_best.pt (the best valid BLEU).  ``run_info(name)`` reads the learning curve, epochs, wall
    time and how the run ended from the logs.  Validation differs from the test decoding in one way: it keeps
    training's ``LIMITS`` (pairs longer than 64 subwords are skipped, outputs stop at 64 tokens), so valid
    BLEU is measured on 1,214 of the 1,230 valid pairs."""
    save_dir = os.path.join(DIR, name)
    ckpt = os.path.join(save_dir, "checkpoint_last.pt" if valid_beam is None else "checkpoint_best.pt")
    done = os.path.join(save_dir, "done")
    if os.path.exists(done):
        demo.log(f"{name}: exists ({ckpt})")
        return ckpt
    settings = {"epochs_cap": epochs, "patience": patience, "valid_beam": valid_beam}
    info = run_info(name)
    # fairseq's --patience counts epochs without a strict gain: from the first epoch of the best score
    first_best = max(info["valid_bleu_curve"], key=lambda e: (e[1], -e[0]))[0] if info.get("valid_bleu_curve") else None
    if valid_beam is not None and patience is not None and first_best is not None \
            and info["epochs"] - first_best >= patience:
        # an interrupted run that had already gone ``patience`` epochs without a gain: fairseq's own
        # early-stopping counter restarts in a new process, so resuming would train it longer than a run
        # that was never interrupted
        demo.log(f"{name}: no valid BLEU gain in the {patience} epochs after epoch {first_best}: done")
        write_file(done, json.dumps({**settings, "stopped": "patience (found on resume)"}) + "\n")
        return ckpt
    converge = [] if valid_beam is None else [
        *valid_bleu(valid_beam), *([] if patience is None else ["--patience", str(patience)])]
    log_args = ["--log-format", "json", "--log-interval", "100", "--no-progress-bar"]
    started = time.time()
    demo.run(["fairseq-train", bin_dir, "--user-dir", user_dir(), *model, *COMMON, *LIMITS, *args,
              "--optimizer", "adam", "--clip-norm", "5", "--max-tokens", str(max_tokens),
              "--max-epoch", str(epochs), "--save-dir", save_dir, "--no-epoch-checkpoints", *converge, *log_args],
             save_dir + f".{int(started)}.log", demo.train_progress)
    write_file(done, json.dumps({**settings, "wall_seconds_last_invocation": round(time.time() - started, 1)}) + "\n")
    return ckpt


def finished(name):
    """Whether run ``name`` (a folder of DIR) has finished: ``train`` writes its ``done`` marker at the end (the
    epoch cap or patience), so ``--report`` reports it and a rerun skips it."""
    return os.path.exists(os.path.join(DIR, name, "done"))


def run_info(name):
    """Learning curve [(epoch, valid BLEU)], epochs trained, best epoch and training wall seconds of a run,
    from its json logs (a resumed run has several; the later value of an epoch wins)."""
    import glob
    curve, epochs, wall, early = log_curve(sorted(glob.glob(os.path.join(DIR, name + ".*.log"))))
    curve = sorted(curve.items())
    done = os.path.join(DIR, name, "done")
    marker = {}
    if os.path.exists(done):
        with open(done) as f:
            text = f.read().strip()
        marker = json.loads(text) if text.startswith("{") else {}
    # how the run ended: "patience" (no valid BLEU gain for --patience epochs), "epoch cap" (stopped by
    # --max-epoch, possibly still improving), or "unfinished"
    stopped = ("patience" if early or str(marker.get("stopped", "")).startswith("patience")
               else "epoch cap" if os.path.exists(done) else "unfinished")
    info = {"epochs": epochs, "train_wall_seconds": round(wall, 1), "stopped": stopped}
    if "epochs_cap" in marker:
        info["epochs_cap"] = marker["epochs_cap"]
    if curve:
        # the epoch of checkpoint_best.pt: fairseq keeps the later of equal scores (``is_better`` is >=)
        info.update(valid_bleu_curve=curve, best_epoch=max(curve, key=lambda e: (e[1], e[0]))[0],
                    best_valid_bleu=max(v for _, v in curve))
    return info


def teacher(bin_dir, epochs=40, patience=3):
    """The teacher (and the translation benchmark's NLL baseline), trained to convergence: valid BLEU at
    beam 5 (its decoding) after every epoch, stopped after ``patience`` epochs without a gain, best checkpoint."""
    return train("teacher", bin_dir, epochs, TEACHER, ["--criterion", "cross_entropy", "--lr", "0.002"],
                 valid_beam=5, patience=patience)


def valid_bleu(beam):
    """fairseq-train's options for validation BLEU after every epoch (detokenized sacrebleu, the model decoded with
    ``beam`` and the test length limits) and the best checkpoint by it."""
    return ["--eval-bleu", "--eval-bleu-remove-bpe", "sentencepiece",
            "--eval-bleu-args", json.dumps({"beam": beam, "max_len_a": 1.5, "max_len_b": 10}),
            "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"]


def generate(bin_dir, ckpt, beam, log_name, extra=(), subset="test", batch=("--max-tokens", "6000"), cache=False,
             log=None):
    """fairseq-generate's output (its log ``log``, by default DIR/gen.LOG_NAME.beamBEAM.log, and the command beside
    it as ``.cmd``); with ``cache``, an earlier complete log of the same command written after the checkpoint is
    reused."""
    log = log or os.path.join(DIR, f"gen.{log_name}.beam{beam}.log")
    cmd = ["fairseq-generate", bin_dir, "--user-dir", user_dir(), "--path", ckpt, *COMMON, *NO_LIMITS,
           "--gen-subset", subset, "--beam", str(beam), "--nbest", "1", *batch,
           "--max-len-a", "1.5", "--max-len-b", "10", "--post-process", "sentencepiece", *extra]
    if cache and os.path.exists(log + ".cmd") and os.path.getmtime(log) > os.path.getmtime(ckpt):
        with open(log + ".cmd", encoding="utf-8") as f:
            same = json.load(f) == cmd
        with open(log, encoding="utf-8") as f:
            text = f.read()
        if same and generation_speed(text):
            demo.log(f"{log_name}: beam {beam}: reusing {log}")
            return text
    text = demo.run(cmd, log)
    write_file(log + ".cmd", json.dumps(cmd))
    return text


def bleu(bin_dir, ckpt, name, references, beams, extra=()):
    """Detokenized sacrebleu BLEU (13a) per test beam, from fairseq-generate's D- lines; and the outputs."""
    scores, outputs = {}, {}
    for beam in beams:
        out = generate(bin_dir, ckpt, beam, name, extra, cache=True)
        scores[str(beam)] = round(corpus_bleu(parse_hypotheses(out, len(references), detok=True), references,
                                              tokenized=False), 2)
        outputs[str(beam)] = out
        demo.log(f"{name}: beam {beam}: BLEU {scores[str(beam)]}")
    return scores, outputs


def seq_kd_throughput(bin_dir, teacher, repeats, folder):
    """Sentences/s of ``fairseq-generate --task seq_kd`` (writing the corpus) against plain fairseq-generate, the
    teacher at beam 5 on the valid set with the same batches, ``repeats`` alternating pairs (logs in ``folder``):
    the medians and the median of the per-pair ratios."""
    base = ["fairseq-generate", bin_dir, "--user-dir", user_dir(), "--path", teacher, *COMMON, *NO_LIMITS,
            "--gen-subset", "valid", "--beam", "5", "--max-tokens", "6000", "--max-len-a", "1.5", "--max-len-b", "10"]
    plain, kd = [], []
    for r in range(repeats):
        s = generation_speed(demo.run(base, os.path.join(folder, f"throughput.plain{r}.log")))
        plain.append(s["sentences"] / s["seconds"])
        kd_dir = os.path.join(folder, f"throughput.kd{r}")
        shutil.rmtree(kd_dir, ignore_errors=True)
        s = generation_speed(demo.run([*base, "--task", "seq_kd", "--kd-output-dir", kd_dir], kd_dir + ".log"))
        kd.append(s["sentences"] / s["seconds"])
    ratios = [k / p for k, p in zip(kd, plain)]
    return {"plain_sentences_per_s": round(statistics.median(plain), 1),
            "seq_kd_sentences_per_s": round(statistics.median(kd), 1),
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(x, 3) for x in ratios]}


def greedy_mass(output: str) -> float:
    """Mean over sentences of p(greedy output | source), from the P- lines (base-2 log-probs per token)."""
    masses = [2.0 ** sum(float(x) for x in line.split("\t")[1].split())
              for line in output.splitlines() if re.match(r"P-\d+\t", line)]
    return round(100.0 * sum(masses) / max(len(masses), 1), 2)
