"""The benchmarks' harness: the module that runs fairseq (through the demo's runner), scores, bootstraps, parses
learning curves and writes results; the protocol scripts declare their rows and stages and call these.  The
de→en models, data and their train/generate/BLEU wrappers are ``benchmarks/deen.py``, built on these.

The benchmarks are a package run from the repository root as ``python3 -m benchmarks.<name>``: nothing here or in
the scripts edits ``sys.path``.  The word-ordering demo (``examples/word_ordering/demo.py``, a script that must run
from a clone alone) is loaded once, here, from its file (:data:`demo`); its ``run``/``log``/``train_progress`` are
the benchmarks' runner and log, its ``MODEL``/``COMMON``/``RECIPES`` the word-ordering rows' settings.

Every file the benchmarks write goes through :func:`write_file` (``fairseq_bso.safe_io``'s atomic writer: a
temporary file in the same folder renamed into place; a failed write leaves the old file whole).
"""

import importlib.util
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
DEMO_PATH = os.path.join(ROOT, "examples", "word_ordering", "demo.py")


def load_module(name: str, path: str):
    """The Python file ``path`` imported as module ``name`` without touching ``sys.path`` (the one place the
    benchmarks import a file outside the package: the demo)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _demo():
    return load_module("fairseq_bso_word_ordering_demo", DEMO_PATH)


def __getattr__(name: str):
    """``demo`` and its ``run``, ``log`` and ``train_progress``, loaded on first use (the demo imports fairseq:
    seconds that ``report.py`` and the tests importing ``gpu_readiness`` do not pay)."""
    if name == "demo":
        return _demo()
    if name in ("run", "log", "train_progress"):
        return getattr(_demo(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_file(path: str, content=None, save=None) -> str:
    """The benchmarks' one atomic writer: ``content`` (text, or any other object as indented json ending in a
    newline), or whatever ``save(tmp_path)`` writes (a plot, a log a command streams), written to a temporary file
    beside ``path`` and renamed into place (``fairseq_bso.safe_io``); the folder is created.  A failure leaves
    ``path`` as it was and removes the temporary file.  Returns ``path``."""
    from fairseq_bso import safe_io

    if (content is None) == (save is None):
        raise ValueError("write_file: give exactly one of content and save")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if save is not None:
        safe_io.write_with(path, save)
    elif isinstance(content, str):
        safe_io.write_text(path, content)
    else:
        safe_io.write_json(path, content, indent=2)
    return path


def command_line(argv=None) -> str:
    """The command that ran this process: ``python3 -m benchmarks.NAME ARGS`` for a module run with ``-m``,
    ``python3 SCRIPT ARGS`` otherwise."""
    argv = sys.argv if argv is None else argv
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python3", "-m", spec.name] if spec is not None and spec.name else ["python3", argv[0]]
    return " ".join(head + list(argv[1:]))


def deen_bin(vocab_size: int = 8000) -> str:
    """l10n-de-en, sentencepiece (joint, 8k), binarized; built once under runs/benchmarks."""
    from fairseq_bso.prep import prepare_translation

    out = os.path.join(WORK, f"deen_spm{vocab_size}")
    if not os.path.exists(os.path.join(out, "bin", "test.de-en.en.idx")):
        src = os.path.join(SHARED, "l10n-de-en")
        prepare_translation(f"{src}/train", f"{src}/valid", f"{src}/test", "de", "en", out, vocab_size)
    return os.path.join(out, "bin")


# -- word ordering: the demo's model and settings, fairseq-train and fairseq-generate ---------------------------
WORD_ORDER_TASK = ["--task", "constrained_beam_training"]


def run_appending(cmd, log_path: str, threads=None) -> None:
    """Run a fairseq command with its output appended to ``log_path`` (a resumed run's log continues the earlier
    one), ``OMP_NUM_THREADS=threads`` when given; SystemExit naming the log when it fails."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log_path, "a") as out:
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): see {log_path}")


def word_order_train(bin_dir: str, save_dir: str, options, seed: int = 1, threads=None, marker="done") -> None:
    """fairseq-train of the demo's model (``demo.MODEL``, ``demo.COMMON``, ``--task constrained_beam_training``,
    batch 64 sentences, gradient norm clipped at 5) with the demo's validation (``demo.VALID_BLEU``: tokenized
    BLEU at beam 5 under the decoding options among ``options``, best checkpoint by it), a json log appended to
    ``save_dir.log``; ``options`` last (criterion, optimizer, learning rate, epochs, decoding).  Skipped when the
    file ``marker`` of ``save_dir`` exists; a rerun resumes ``checkpoint_last.pt``; the marker is written when
    fairseq exits 0 (``marker=None``: the caller writes its own, e.g. after keeping a copy of the best checkpoint)."""
    done = None if marker is None else os.path.join(save_dir, marker)
    if done is not None and os.path.exists(done):
        return
    demo = _demo()
    cmd = ["fairseq-train", bin_dir, "--user-dir", demo.user_dir(), *demo.MODEL, *demo.COMMON, *WORD_ORDER_TASK,
           "--seed", str(seed), "--clip-norm", "5", "--batch-size", "64", "--save-dir", save_dir,
           "--no-epoch-checkpoints", *demo.VALID_BLEU, "--log-format", "json", "--log-interval", "100",
           "--no-progress-bar", *options]
    demo.log(f"train {save_dir}: {' '.join(options)}")
    run_appending(cmd, save_dir + ".log", threads)
    if done is not None:
        open(done, "w").close()


def word_order_test_bleu(bin_dir: str, ckpt: str, decoding, beams, log_path, references, threads=None,
                         reuse: bool = False):
    """Test BLEU of a word-ordering checkpoint at each of ``beams``: fairseq-generate with the demo's settings
    (``--task constrained_beam_training``, ``decoding``, batch 100 sentences, output length at most source + 5),
    its output in ``log_path(beam)``, scored by tokenized sacrebleu against ``references``.  With ``reuse``, a
    log already there is read back instead of decoding again (such logs are written atomically, so one that
    exists is whole; a failed decode prints its last lines and keeps no partial log).  Returns ({"beam": BLEU rounded to 2 places}, {"beam": hypotheses in input order})."""
    from fairseq_bso.evaluation import corpus_bleu, parse_hypotheses

    demo = _demo()
    scores, hypotheses = {}, {}
    for beam in beams:
        path = log_path(beam)
        cmd = ["fairseq-generate", bin_dir, "--user-dir", demo.user_dir(), "--path", ckpt, *demo.COMMON,
               *WORD_ORDER_TASK, *decoding, "--gen-subset", "test", "--beam", str(beam), "--batch-size", "100",
               "--max-len-a", "1", "--max-len-b", "5"]
        if not reuse:
            out = demo.run(cmd, path, threads=threads)
        else:
            if not os.path.exists(path):
                write_file(path, save=lambda tmp: demo.run(cmd, tmp, threads=threads))
            with open(path) as f:
                out = f.read()
        hypotheses[str(beam)] = parse_hypotheses(out, len(references))
        scores[str(beam)] = round(corpus_bleu(hypotheses[str(beam)], references, tokenized=True), 2)
    return scores, hypotheses


# -- tiny word-ordering data and model (the tests' ``tests/harness.py`` setting, for figures that need no corpus) ----
TINY_WORDS = "the a lord god said unto and of in him his was".split()
TINY_LSTM = ["--arch", "lstm", "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
             "--decoder-embed-dim", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
             "--encoder-layers", "1", "--decoder-layers", "1", "--dropout", "0.0"]


def tiny_word_order_bin(folder: str, sizes=(("train", 200, 1), ("valid", 20, 2), ("test", 20, 3))) -> str:
    """Random sentences of 2-6 words from ``TINY_WORDS`` (``random.Random(seed)`` per split) as word-ordering
    pairs (source: the sorted words) in ``folder/{split}.{src,tgt}``, binarized with a joined dictionary into
    ``folder/bin`` (returned): the data of ``tests/harness.py``'s ``make_word_order_data`` + ``preprocess``."""
    import random

    from fairseq_bso.prep import scramble, write_atomic

    for split, n, seed in sizes:
        rng = random.Random(seed)
        targets = [" ".join(rng.choice(TINY_WORDS) for _ in range(rng.randint(2, 6))) for _ in range(n)]
        write_atomic(os.path.join(folder, f"{split}.tgt"), targets)
        write_atomic(os.path.join(folder, f"{split}.src"), [" ".join(scramble(t.split())) for t in targets])
    dest = os.path.join(folder, "bin")
    _demo().run(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
                 "--trainpref", os.path.join(folder, "train"), "--validpref", os.path.join(folder, "valid"),
                 "--testpref", os.path.join(folder, "test"),
                 "--destdir", dest, "--workers", "1", "--joined-dictionary"], os.path.join(folder, "preprocess.log"))
    return dest


def tiny_train(data_bin: str, save_dir: str, extra=(), max_epoch: int = 1) -> str:
    """fairseq-train of ``TINY_LSTM`` (token NLL, Adam 5e-3, 16 sentences a batch, seed 1, one thread), the
    command of ``tests/harness.py``'s ``train``; its output (also in ``save_dir.log``)."""
    demo = _demo()
    return demo.run(["fairseq-train", data_bin, "--user-dir", demo.user_dir(), *TINY_LSTM, "--cpu", "--seed", "1",
                     "--num-workers", "0", "--no-progress-bar", "--log-format", "simple",
                     "--required-batch-size-multiple", "1", "--criterion", "cross_entropy", "--optimizer", "adam",
                     "--lr", "0.005", "--batch-size", "16", "--max-epoch", str(max_epoch), "--save-dir", save_dir,
                     "--no-epoch-checkpoints", *extra], save_dir + ".log", threads=1)


# -- fairseq logs -------------------------------------------------------------------------------------------------
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


def epoch_values(path: str, kind: str, key: str):
    """[(epoch, value)] of ``key`` in the ``| kind | {...}`` json lines of a fairseq log, sorted by epoch; a resumed
    epoch's later value wins; [] for a missing file."""
    if not os.path.exists(path):
        return []
    values = {int(stats["epoch"]): float(stats[key]) for k, stats in log_stats(path) if k == kind and key in stats}
    return sorted(values.items())


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


def write_results(name: str, results: dict, started: float, settings=None, seeds=(1,), folder=None) -> str:
    """Write benchmarks/results/NAME.json (``folder``/NAME.json) with the settings, seeds, command, commit and
    wall time."""
    results = dict(results)
    if settings is not None:
        results["settings"] = vars(settings) if hasattr(settings, "__dict__") else settings
        results["seeds"] = list(seeds)
    results["command"] = command_line()
    results["git_commit"] = git_commit()
    results["wall_seconds"] = round(time.time() - started, 1)
    path = write_file(os.path.join(folder or RESULTS, f"{name}.json"), results)
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
