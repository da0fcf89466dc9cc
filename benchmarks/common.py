"""Shared helpers of the benchmarks: data, results files."""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared", "data"))
# models and logs; FAIRSEQ_BSO_BENCH_DIR puts them elsewhere (e.g. outside the work tree for long runs)
WORK = os.environ.get("FAIRSEQ_BSO_BENCH_DIR", os.path.join(ROOT, "runs", "benchmarks"))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)


def deen_bin(vocab_size: int = 8000) -> str:
    """l10n-de-en, sentencepiece (joint, 8k), binarized; built once under runs/benchmarks."""
    from fairseq_bso.prep import prepare_translation

    out = os.path.join(WORK, f"deen_spm{vocab_size}")
    if not os.path.exists(os.path.join(out, "bin", "test.de-en.en.idx")):
        src = os.path.join(SHARED, "l10n-de-en")
        prepare_translation(f"{src}/train", f"{src}/valid", f"{src}/test", "de", "en", out, vocab_size)
    return os.path.join(out, "bin")


def log_stats(path: str):
    """(kind, stats) for every ``| valid | {...}`` and ``| train | {...}`` json line of a fairseq log
    (``--log-format json``), in file order; other lines as (None, line), so callers can look for messages."""
    with open(path) as f:
        for line in f:
            for kind in ("valid", "train"):
                marker = f"| {kind} | {{"
                if marker in line:
                    yield kind, json.loads(line[line.index(marker) + len(marker) - 1:])
                    break
            else:
                yield None, line


def log_curve(paths):
    """(valid BLEU by epoch, epochs trained, training wall seconds, early-stopped) from the json logs of one run
    (``--log-format json``; a resumed run has several, read in order: the later value of an epoch wins; the wall
    time is fairseq's meter per invocation, summed over them)."""
    curve, epochs, wall, early = {}, 0, 0.0, False
    for path in paths:
        file_wall = 0.0  # fairseq's wall meter: seconds since this invocation started
        for kind, stats in log_stats(path):
            if kind is None:
                early = early or "early stop since valid performance hasn't improved" in stats
                continue
            epochs = max(epochs, int(stats["epoch"]))
            file_wall = max(file_wall, float(stats.get(f"{kind}_wall", 0)))
            if kind == "valid" and "valid_bleu" in stats:
                curve[int(stats["epoch"])] = float(stats["valid_bleu"])
        wall += file_wall
    return curve, epochs, wall, early


def tagged_results(name: str, tag_prefix: str):
    """[(tag, results)] of the files ``results/{name}{tag}.json`` written by a ``--tag {tag_prefix}...`` run
    (e.g. ``tagged_results("pruning", "_lr")`` reads pruning_lr1e-3.json as tag "_lr1e-3"), sorted by name."""
    import glob

    found = []
    for path in sorted(glob.glob(os.path.join(RESULTS, f"{name}{tag_prefix}*.json"))):
        with open(path) as f:
            found.append((os.path.basename(path)[len(name):-len(".json")], json.load(f)))
    return found


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def valid_batches(ckpt: str, bin_dir: str, n: int, **iterator_args):
    """(task, model, the first n shuffled valid batches) of a trained checkpoint on ``bin_dir``."""
    from fairseq import checkpoint_utils, tasks
    import fairseq_bso  # noqa: F401  (registers the plugin's tasks)

    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    cfg.task.data = bin_dir
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), required_batch_size_multiple=1, seed=1,
                                  **iterator_args).next_epoch_itr(shuffle=True)
    return task, models[0], [s for _, s in zip(range(n), itr)]


def write_results(name: str, results: dict, started: float, settings=None, seeds=(1,)) -> str:
    """Write benchmarks/results/NAME.json with the settings, seeds, command, commit and wall time."""
    results = dict(results)
    if settings is not None:
        results["settings"] = vars(settings) if hasattr(settings, "__dict__") else settings
        results["seeds"] = list(seeds)
    results["command"] = " ".join(["python3"] + sys.argv)
    results["git_commit"] = git_commit()
    results["wall_seconds"] = round(time.time() - started, 1)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    from fairseq_bso import safe_io

    safe_io.write_text(path, json.dumps(results, indent=2) + "\n")  # atomic, follows the umask
    print(f"wrote {path}")
    return path


def paired_bootstrap(hypotheses, references, samples=1000, tokenize="13a"):
    """sacrebleu's paired bootstrap resampling (Koehn 2004) of every row's test beam-5 output against seq2seq's:
    sacrebleu's p-value (the BLEU difference itself is ``minus_seq2seq_beam5``) (two-sided: the share of resamples
    whose absolute difference, centred on its mean, exceeds the observed absolute difference), ``samples``
    resamples of the test sentences, sacrebleu's fixed seed (``SACREBLEU_SEED``, 12345 by default).
    ``tokenize``: sacrebleu's tokenizer ("none" for text scored as it is, as word ordering is)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    metric = BLEU(tokenize=tokenize, force=tokenize == "none")
    systems = [("seq2seq", hypotheses["seq2seq"])] + [(n, h) for n, h in hypotheses.items() if n != "seq2seq"]
    _, scores = PairedTest(systems, {"BLEU": metric}, [list(references)], test_type="bs", n_samples=samples)()
    return {name: {"p_value": round(result.p_value, 4), "resamples": samples}
            for (name, _), result in zip(systems[1:], scores["BLEU"][1:])}
