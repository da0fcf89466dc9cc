#!/usr/bin/env python3
"""Time per update and peak memory of ``--criterion bso`` at K = 2..6 against token NLL.

Same model (fairseq's ``lstm_wiseman_iwslt_de_en``, 1×256 LSTM), same batches of real
data (``../shared/data/l10n-de-en``, sentencepiece 4k, batches of 128 sentences),
2 threads.  ``--model demo`` times the demo's model on the demo's embedded corpus
(batches of 64 sentences) instead: a few minutes, from a clone alone.  ``--profile``
adds a torch-profiler breakdown of one K = 6 update (search decoder forwards, top-k and
bookkeeping, beam reorders, Δ, re-scoring forward, backward, optimizer, and the CPU
time per decoding step not spent in tensor operations: Python and dispatch).  Timing is paired: every round runs every method on the same batches
in one process, and the figures are medians over rounds (and the median of the
per-round ratios).  Peak memory is measured in a fresh subprocess per method: the
rise of the peak resident set size over the resident size before the first update.

    python3 -m benchmarks.bso_speed                 # writes benchmarks/results/bso_speed.json
    python3 -m benchmarks.bso_speed --rounds 7 --batches 4
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import ROOT, deen_bin, write_results

# bsoK: the paper's score (raw logits, --bso-score logit); bso6_log_softmax: the log-softmax score at K=6
METHODS = ["nll"] + [f"bso{k}" for k in range(2, 7)] + ["bso6_log_softmax"]


DEMO_CORPUS = os.path.join(ROOT, "runs", "benchmarks", "demo_corpus")


def model_setup(name):
    """(binarized data, model options, batch size) of ``--model``."""
    if name == "demo":
        from benchmarks.common import demo
        from fairseq_bso.prep import prepare_word_order
        bin_dir = os.path.join(DEMO_CORPUS, "bin")
        if not os.path.exists(os.path.join(bin_dir, "test.src-tgt.tgt.idx")):
            data = os.path.join(ROOT, "examples", "word_ordering", "data")
            prepare_word_order(*(os.path.join(data, f"kjv.{s}.txt.gz") for s in ("train", "valid", "test")),
                               DEMO_CORPUS)
        return bin_dir, ["--task", "constrained_beam_training", *demo.MODEL], 64
    return deen_bin(4000), ["--arch", "lstm_wiseman_iwslt_de_en"], 128


def build(data, method, pretrain_state=None, model_args=("--arch", "lstm_wiseman_iwslt_de_en")):
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    import fairseq_bso  # noqa: F401

    k = method[3:4]
    score = "log_softmax" if method.endswith("log_softmax") else "logit"
    criterion = ["--criterion", "cross_entropy"] if method == "nll" else \
        ["--criterion", "bso", "--bso-beam-size", k, "--bso-curriculum-start", k, "--bso-score", score]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data, "--user-dir", os.path.join(ROOT, "fairseq_bso"),
                                                *model_args, "--cpu", *criterion])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    if pretrain_state is not None:
        model.load_state_dict(pretrain_state)
    return task, model, task.build_criterion(cfg.criterion)


def batches(task, n, batch_size, seed=1):
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=batch_size,
                                  required_batch_size_multiple=1, seed=seed).next_epoch_itr(shuffle=True)
    out = []
    for sample in itr:
        if sample["target"].size(0) == batch_size:
            out.append(sample)
        if len(out) == n:
            return out
    return out


def update(model, criterion, optimizer, sample):
    model.train()
    optimizer.zero_grad()
    loss, sample_size, _ = criterion(model, sample)
    (loss / sample_size).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()


def pretrain(data, updates, batch_size, model_args):
    """A model trained briefly with NLL, so that BSO sees realistic violation counts."""
    task, model, criterion = build(data, "nll", model_args=model_args)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    for i, sample in enumerate(batches(task, updates, batch_size, seed=2)):
        update(model, criterion, optimizer, sample)
    return model.state_dict()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(args):
    state = torch.load(args.state, weights_only=True)
    task, model, criterion = build(args.data, args.memory_probe, state, model_setup(args.model)[1])
    samples = batches(task, args.batches, args.batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    update(model, criterion, optimizer, samples[0])  # optimizer state allocated, allocator warm
    reset_peak_rss()  # the peak so far (imports, data loading) is not the updates'
    before = rss_bytes()
    for sample in samples:
        update(model, criterion, optimizer, sample)
    peak = peak_rss_bytes()
    print(json.dumps({"peak_rise_bytes": max(peak - before, 0), "peak_bytes": peak}))


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--pretrain-updates", type=int, default=150)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conditions", default="not stated",
                        help="what else ran on the machine during the timing (recorded in the results file)")
    parser.add_argument("--model", choices=["wiseman", "demo"], default="wiseman",
                        help="wiseman: lstm_wiseman_iwslt_de_en on l10n-de-en (the default); demo: the demo's model "
                             "on the demo's embedded corpus (results in bso_speed_demo.json)")
    parser.add_argument("--state-from", help="start from this checkpoint's weights (same model and data: e.g. the "
                                             "demo's NLL model) instead of --pretrain-updates NLL updates")
    parser.add_argument("--profile", action="store_true", help="add a torch-profiler breakdown of a K=6 update")
    parser.add_argument("--skip-memory", action="store_true", help="timing only")
    parser.add_argument("--memory-only", action="store_true",
                        help="rerun only the memory probes and update bso_speed.json's memory figures")
    parser.add_argument("--memory-probe", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    if args.memory_probe:
        return memory_probe(args)

    started = time.time()
    data, model_args, batch_size = model_setup(args.model)
    if args.model == "demo" and args.batch_size == 128:
        args.batch_size = batch_size
    name = "bso_speed" if args.model == "wiseman" else "bso_speed_demo"
    if args.memory_only:
        return memory_only(args, data, started)
    if args.state_from:  # a trained model's weights (same architecture and data) instead of a brief pretraining
        from fairseq import checkpoint_utils
        import fairseq_bso  # noqa: F401
        state = checkpoint_utils.load_checkpoint_to_cpu(args.state_from)["model"]
        print(f"weights from {args.state_from}", flush=True)
    else:
        print(f"pretraining {args.pretrain_updates} NLL updates", flush=True)
        state = pretrain(data, args.pretrain_updates, args.batch_size, model_args)
    built = {m: build(data, m, state, model_args) for m in METHODS}
    samples = batches(built["nll"][0], args.batches, args.batch_size)
    tokens = sum(s["ntokens"] for s in samples) / len(samples)
    print(f"{len(samples)} batches of {args.batch_size} sentences, {tokens:.0f} target tokens each", flush=True)
    times = {m: [] for m in METHODS}
    for r in range(args.rounds + 1):  # round 0 warms up
        for m in METHODS:
            task, model, criterion = built[m]
            model.load_state_dict(state)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            t0 = time.perf_counter()
            for sample in samples:
                update(model, criterion, optimizer, sample)
            if r > 0:
                times[m].append((time.perf_counter() - t0) / len(samples))
        if r > 0:
            print(f"round {r}: " + ", ".join(f"{m} {times[m][-1] * 1000:.0f} ms" for m in METHODS), flush=True)

    profile = profile_update(built["bso6"], built["nll"], state, samples) if args.profile else None
    overhead = constraint_overhead(args, built["bso6"], state, samples) if args.model == "demo" else None
    state_path = os.path.join(os.path.dirname(data), "bso_speed_state.pt")
    torch.save(state, state_path)
    memory = None if args.skip_memory else probe_all(args, data, state_path)
    nll = statistics.median(times["nll"])
    rows = {}
    for m in METHODS:
        ratios = [t / n for t, n in zip(times[m], times["nll"])]
        rows[m] = {"ms_per_update": round(statistics.median(times[m]) * 1000, 1),
                   "time_ratio": round(statistics.median(ratios), 3),
                   "time_ratio_per_round": [round(r, 3) for r in ratios]}
        if memory is not None:
            rows[m].update(memory_row(memory, m))
    results = {"model": " ".join(model_args),
               "data": "l10n-de-en spm4k train" if args.model == "wiseman" else "demo corpus (kjv, 12k) train",
               "batch_sentences": args.batch_size, "mean_target_tokens": round(tokens, 1),
               "rounds": args.rounds, "threads": args.threads, "nll_ms_per_update": round(nll * 1000, 1),
               "time_ratio_k6": rows["bso6"]["time_ratio"], "mem_ratio_k6": rows["bso6"].get("mem_ratio"),
               "rows": rows, "conditions": args.conditions}
    if profile is not None:
        results["profile_k6"] = profile
    if overhead is not None:
        results["word_order_constraint"] = overhead
    print(json.dumps(rows, indent=1))
    write_results(name, results, started)


@contextlib.contextmanager
def decoder_rows_counted(model):
    """Within the block the decoder counts the beam rows it runs (one per hypothesis per step)
    into the yielded list's single item."""
    decoder = model.decoder
    forward = decoder.forward
    count = [0]

    def counted(prev_output_tokens, *a, **kw):
        count[0] += prev_output_tokens.size(0)
        return forward(prev_output_tokens, *a, **kw)

    decoder.forward = counted
    try:
        yield count
    finally:
        decoder.forward = forward


def constraint_overhead(args, bso, state, samples):
    """The word_order constraint's cost, paired rounds in this process: a BSO K=6 update with vs
    without the constraint (same batches), and BSO decoding (--bso-decoding, beam 5, the generator
    fairseq-generate builds) of the same valid batches with vs without it."""
    from argparse import Namespace

    from fairseq_bso.constraints import build_constraint

    task, model, criterion = bso
    constraint = build_constraint("word_order", task.source_dictionary, task.target_dictionary)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=100, required_batch_size_multiple=1)
    valid = list(itr.next_epoch_itr(shuffle=False))
    train_times = {"none": [], "word_order": []}
    gen_times = {"none": [], "word_order": []}
    gen_tokens = {}
    gen_args = Namespace(beam=5, max_len_a=1, max_len_b=5)
    for r in range(args.rounds + 1):
        for name in ("none", "word_order"):
            task.training_constraint = constraint if name == "word_order" else None
            task.cfg.bso_decoding = True
            model.load_state_dict(state)
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            t0 = time.perf_counter()
            for sample in samples:
                update(model, criterion, optimizer, sample)
            t1 = time.perf_counter()
            model.eval()
            generator = task.build_generator([model], gen_args)
            with decoder_rows_counted(model) as rows, torch.no_grad():
                t2 = time.perf_counter()
                for sample in valid:
                    task.inference_step(generator, [model], sample)
                t3 = time.perf_counter()
            if r > 0:
                train_times[name].append(t1 - t0)
                gen_times[name].append(t3 - t2)
                gen_tokens[name] = rows[0]
    task.training_constraint = None
    train_ratio = statistics.median(c / n for n, c in zip(train_times["none"], train_times["word_order"]))
    gen_ratio = statistics.median(c / n for n, c in zip(gen_times["none"], gen_times["word_order"]))
    # the constraint changes the search (no </s> before every word is placed, so no hypothesis finishes
    # early and fewer sentences leave the batch early), so the cost per beam row the decoder runs is the
    # like-for-like figure; the wall-time ratio is reported beside it
    per_row = gen_ratio * gen_tokens["none"] / gen_tokens["word_order"]
    out = {"training_overhead_ratio": round(train_ratio, 3),
           "generation_overhead_ratio_per_beam_row": round(per_row, 3),
           "generation_wall_ratio": round(gen_ratio, 3), "decoder_beam_rows": gen_tokens,
           "train_ms_per_update": {k: round(statistics.median(v) / len(samples) * 1000, 1) for k, v in train_times.items()},
           "generate_seconds_valid_beam5": {k: round(statistics.median(v), 3) for k, v in gen_times.items()},
           "valid_sentences": sum(s["target"].size(0) for s in valid)}
    print(json.dumps(out), flush=True)
    return out


def profile_update(bso, nll, state, samples):
    """ms per update in each region of a K=6 BSO update, under torch's profiler (which adds
    its own cost per operation: the regions' shares are the point, not their sum)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def run(built, prefix):
        task, model, criterion = built
        model.load_state_dict(state)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        update(model, criterion, optimizer, samples[0])  # warm
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for sample in samples:
                model.train()
                optimizer.zero_grad()
                with record_function(f"{prefix}.forward"):
                    loss, sample_size, _ = criterion(model, sample)
                with record_function(f"{prefix}.backward"):
                    (loss / sample_size).backward()
                with record_function(f"{prefix}.optimizer"):
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                    optimizer.step()
        return prof

    out = {}
    prof = run(nll, "nll")
    for e in prof.key_averages():
        if e.key.startswith("nll."):
            out[e.key] = round(e.cpu_time_total / 1000 / len(samples), 1)
    prof = run(bso, "bso")
    steps = sum(s["target"].size(1) for s in samples) / len(samples)
    regions = {}
    for e in prof.key_averages():
        if e.key.startswith("bso."):
            regions[e.key] = round(e.cpu_time_total / 1000 / len(samples), 1)
    # CPU time inside the search not spent in any operation it calls directly: Python and dispatch
    own = [ev for ev in prof.events() if ev.name == "bso.search"]
    unaccounted = sum(ev.cpu_time_total - sum(c.cpu_time_total for c in ev.cpu_children) for ev in own)
    regions["bso.search.python_per_step_ms"] = round(unaccounted / 1000 / len(samples) / steps, 2)
    regions["bso.search.bookkeeping_topk"] = round(
        regions.get("bso.search", 0) - sum(regions.get(k, 0) for k in (
            "bso.search.decoder", "bso.search.reorder", "bso.search.paths_and_delta", "bso.search.constraint_mask")), 1)
    regions["bso.encoder_and_loss"] = round(
        regions.get("bso.forward", 0) - regions.get("bso.search", 0) - regions.get("bso.rescore", 0), 1)
    out.update(regions)
    out["decoding_steps_per_update"] = steps
    print(json.dumps(out, indent=1), flush=True)
    return out


def memory_row(memory, m):
    return {"peak_memory_rise_mib": round(memory[m]["peak_rise_bytes"] / 2**20, 1),
            "mem_ratio": round(memory[m]["peak_rise_bytes"] / max(memory["nll"]["peak_rise_bytes"], 1), 3),
            "peak_rss_mib": round(memory[m]["peak_bytes"] / 2**20, 1)}


def memory_only(args, data, started):
    """Redo the memory figures of an existing results file (the timing stays as it was measured)."""
    from benchmarks.common import RESULTS

    path = os.path.join(RESULTS, "bso_speed.json")
    with open(path) as f:
        results = json.load(f)
    memory = probe_all(args, data, os.path.join(os.path.dirname(data), "bso_speed_state.pt"))
    for m in METHODS:
        results["rows"][m].update(memory_row(memory, m))
    results["mem_ratio_k6"] = results["rows"]["bso6"]["mem_ratio"]
    for key in ("command", "git_commit", "wall_seconds"):  # the timing run's; write_results adds this run's
        results.setdefault(f"timing_{key}", results.pop(key, None))
    write_results("bso_speed", results, started)


def probe_all(args, data, state_path):
    memory = {}
    for m in METHODS:
        out = subprocess.run([sys.executable, "-m", "benchmarks.bso_speed", "--memory-probe", m, "--state", state_path, "--data", data,
                              "--batches", str(args.batches), "--batch-size", str(args.batch_size),
                              "--threads", str(args.threads), "--model", args.model],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True, cwd=ROOT).stdout
        memory[m] = json.loads(out.strip().splitlines()[-1])
        print(f"memory {m}: peak rise {memory[m]['peak_rise_bytes'] / 2**20:.1f} MiB", flush=True)
    return memory


if __name__ == "__main__":
    main()
