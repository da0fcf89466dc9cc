"""Test helpers: tiny data in a temp folder, and the real fairseq entry points.

In the style of fairseq's own ``tests/test_binaries.py`` (written anew: those
helpers are not installed with fairseq).  Every command runs as a subprocess
through the installed console scripts with ``--user-dir``, exactly as a user
runs it.
"""

import os
import random
import subprocess
import sys
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "fairseq_bso")
sys.path.insert(0, ROOT)

from fairseq_bso.prep import scramble, write_atomic  # noqa: E402

# A tiny model that trains in a second or two.
TINY_LSTM = [
    "--arch", "lstm", "--encoder-embed-dim", "16", "--encoder-hidden-size", "16",
    "--decoder-embed-dim", "16", "--decoder-hidden-size", "16", "--decoder-out-embed-dim", "16",
    "--encoder-layers", "1", "--decoder-layers", "1", "--dropout", "0.0",
]
# fairseq >= 0.12.3 drops the last partial batch when the batch-size multiple is > 1.
NO_DROP = ["--required-batch-size-multiple", "1"]
COMMON = ["--cpu", "--seed", "1", "--num-workers", "0", "--no-progress-bar", "--log-format", "simple", *NO_DROP]

WORDS = "the a lord god said unto and of in him his was".split()


def env_without_overrides():
    """The environment with every weights_only escape hatch removed."""
    env = dict(os.environ)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    env.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster than two fighting over a core
    return env


# a hung command fails its test after this many seconds; FAIRSEQ_BSO_TEST_TIMEOUT raises it on a loaded machine
TIMEOUT = int(os.environ.get("FAIRSEQ_BSO_TEST_TIMEOUT", "300"))


def run(cmd: Sequence[str], check: bool = True, timeout: Optional[int] = None) -> subprocess.CompletedProcess:
    timeout = TIMEOUT if timeout is None else timeout
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env_without_overrides(), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def make_sentences(n: int, seed: int, min_len: int = 2, max_len: int = 6) -> List[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))) for _ in range(n)]


def make_word_order_data(folder: str, n_train: int = 200, n_valid: int = 20, n_test: int = 20) -> str:
    """Raw word-ordering text files ``{train,valid,test}.{src,tgt}``; returns the folder."""
    for split, n, seed in (("train", n_train, 1), ("valid", n_valid, 2), ("test", n_test, 3)):
        targets = make_sentences(n, seed)
        write_atomic(os.path.join(folder, f"{split}.tgt"), targets)
        write_atomic(os.path.join(folder, f"{split}.src"), [" ".join(scramble(t.split())) for t in targets])
    return folder


def preprocess(folder: str, joined: bool = True, src: str = "src", tgt: str = "tgt",
               extra: Sequence[str] = ()) -> str:
    dest = os.path.join(folder, "bin")
    cmd = ["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt,
           "--trainpref", os.path.join(folder, "train"), "--validpref", os.path.join(folder, "valid"),
           "--testpref", os.path.join(folder, "test"), "--destdir", dest, "--workers", "1", *extra]
    if joined:
        cmd.append("--joined-dictionary")
    run(cmd)
    return dest


def train(data_bin: str, save_dir: str, extra: Sequence[str] = (), arch: Sequence[str] = TINY_LSTM,
          criterion: Sequence[str] = ("--criterion", "cross_entropy"), max_epoch: int = 1,
          check: bool = True, user_dir: bool = True) -> subprocess.CompletedProcess:
    cmd = ["fairseq-train", data_bin, *(["--user-dir", USER_DIR] if user_dir else []), *arch, *COMMON,
           *criterion, "--optimizer", "adam", "--lr", "0.005", "--batch-size", "16",
           "--max-epoch", str(max_epoch), "--save-dir", save_dir, "--no-epoch-checkpoints", *extra]
    return run(cmd, check=check)


def generate(data_bin: str, checkpoint: str, extra: Sequence[str] = (), beam: int = 2,
             subset: str = "test", check: bool = True, user_dir: Optional[bool] = True) -> subprocess.CompletedProcess:
    cmd = ["fairseq-generate", data_bin, *(["--user-dir", USER_DIR] if user_dir else []), "--path", checkpoint,
           "--cpu", "--gen-subset", subset, "--beam", str(beam), "--batch-size", "8", *NO_DROP, *extra]
    return run(cmd, check=check)


def task_and_valid_batch(checkpoint: str, data_bin: str):
    """(task, model, cfg, the first valid batch of 8, unshuffled) of a checkpoint, in process."""
    from fairseq import checkpoint_utils, tasks
    import fairseq_bso  # noqa: F401  (registers the plugin)

    models, cfg, _ = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    cfg.task.data = data_bin
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    sample = next(iter(task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=8,
                                               required_batch_size_multiple=1).next_epoch_itr(shuffle=False)))
    return task, models[0], cfg, sample
