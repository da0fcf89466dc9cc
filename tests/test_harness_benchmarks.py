"""The benchmarks' harness (``benchmarks/common.py``): paired bootstrap against a brute-force reference, learning
curves from a literal fairseq json log, the one atomic writer, imports without ``sys.path``, and the word-ordering
runners through the real fairseq-train / fairseq-generate on tiny data."""

import glob
import json
import os
import re
import subprocess
import sys
import types
from importlib.machinery import ModuleSpec

import numpy as np
import pytest

import harness
from benchmarks import common

# -- paired bootstrap -------------------------------------------------------------------------------------------
REFS = ["the cat sat on the mat", "a dog ran in the park today", "she reads a long book", "we walk to school",
        "it rained all day long", "he plays the old piano", "they ate fresh bread", "the sun is very bright"]
SYSTEMS = {
    "seq2seq": ["the cat sat on mat", "a dog ran in park today", "she reads book", "we walk to the school",
                "it rained all the day", "he plays piano", "they ate bread", "the sun is bright"],
    "bso": ["the cat sat on the mat", "a dog ran in the park", "she reads a book", "we walk to school",
            "it rained all day", "he plays the piano", "they ate fresh bread", "the sun is very bright"],
    "close": ["the cat sat on mat", "a dog ran in park today", "she reads book", "we walk to the school",
              "it rained all the day", "he plays piano", "they ate bread", "the sun is very bright"],
    "worse": ["cat the mat", "dog a park", "book reads", "school walk we", "rained day", "piano he",
              "bread they", "bright sun"],
}


def brute_force_p_values(systems, refs, samples, tokenize):
    """sacrebleu's paired bootstrap computed the slow way: the same resampled sentence indices (numpy's
    ``default_rng(SACREBLEU_SEED)``, one draw shared by every system), corpus BLEU of each resample scored from
    the strings, p = (#{|d_i| - mean|d| > |D|} + 1) / (samples + 1) with D the full-corpus difference."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize, force=tokenize == "none")

    def bleu(hyps, idx):
        return metric.corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score

    idxs = np.random.default_rng(int(os.environ.get("SACREBLEU_SEED", "12345"))).choice(
        len(refs), size=(samples, len(refs)), replace=True)
    everything = range(len(refs))
    base = systems["seq2seq"]
    out = {}
    for name, hyps in systems.items():
        if name == "seq2seq":
            continue
        diff = abs(bleu(base, everything) - bleu(hyps, everything))
        d = np.array([abs(bleu(hyps, idx) - bleu(base, idx)) for idx in idxs])
        out[name] = round((int(np.sum(d - d.mean() > diff)) + 1) / (samples + 1), 4)
    return out


@pytest.mark.parametrize("tokenize", ["13a", "none"])
def test_paired_bootstrap_is_the_brute_force_resampling(monkeypatch, tokenize):
    monkeypatch.delenv("SACREBLEU_SEED", raising=False)
    samples = 200
    got = common.paired_bootstrap(SYSTEMS, REFS, samples=samples, tokenize=tokenize)
    want = brute_force_p_values(SYSTEMS, REFS, samples, tokenize)
    assert sorted(got) == ["bso", "close", "worse"], got
    for name in want:
        assert got[name] == {"p_value": want[name], "resamples": samples}, (name, got[name], want[name])
    # the literal is not degenerate: clearly different systems are significant, one word of difference is not
    assert got["worse"]["p_value"] < 0.05 and got["bso"]["p_value"] < 0.05, got
    assert got["close"]["p_value"] > 0.1, got


# -- learning curves from fairseq json logs -------------------------------------------------------------------------
def _line(kind, stats, time="2026-12-06 06:03:13"):
    return f"{time} | INFO | {kind} | {json.dumps({k: str(v) for k, v in stats.items()})}\n"


# a run killed after epoch 3 was logged but before its checkpoint was saved, then resumed from epoch 2's checkpoint:
# the second log repeats epoch 3 (the later value wins), then stops early; train_inner lines are not epochs
LOG_1 = (["2026-12-06 06:00:00 | INFO | fairseq_cli.train | task: TranslationTask\n",
          _line("train_inner", {"epoch": 1, "update": 0.5, "loss": 9.1, "train_wall": 17, "wall": 20})]
         + [_line("valid", {"epoch": e, "valid_loss": 8.0 - e, "valid_bleu": b, "valid_num_updates": 300 * e})
            + _line("train", {"epoch": e, "train_loss": 9.0 - e, "train_train_wall": 40 * e, "train_wall": w})
            for e, b, w in ((1, 10.0, 46.5), (2, 12.25, 93), (3, 9.0, 140))]
         + [_line("train_inner", {"epoch": 4, "update": 3.2, "loss": 5.0, "train_wall": 170, "wall": 999})])
LOG_2 = ([_line("valid", {"epoch": e, "valid_loss": 4.0, "valid_bleu": b, "valid_best_bleu": 12.25})
          + _line("train", {"epoch": e, "train_loss": 4.0, "train_wall": w})
          for e, b, w in ((3, 11.0, 41), (4, 11.5, 80.5))]
         + ["2026-12-06 07:00:00 | INFO | fairseq_cli.train | early stop since valid performance hasn't improved "
            "for last 2 runs\n"])


def _write_logs(tmp_path):
    paths = []
    for i, lines in enumerate((LOG_1, LOG_2)):
        path = tmp_path / f"run.{1000 + i}.log"
        path.write_text("".join(lines))
        paths.append(str(path))
    return paths


def test_log_curve_reads_a_resumed_run(tmp_path):
    paths = _write_logs(tmp_path)
    curve, epochs, wall, early = common.log_curve(paths)
    assert curve == {1: 10.0, 2: 12.25, 3: 11.0, 4: 11.5}, curve
    assert epochs == 4, epochs
    assert wall == 140 + 80.5, wall  # each invocation's last train_wall (not train_inner's 999), summed
    assert early is True
    curve, epochs, wall, early = common.log_curve(paths[:1])
    assert (curve, epochs, wall, early) == ({1: 10.0, 2: 12.25, 3: 9.0}, 3, 140.0, False)


def test_epoch_values_of_one_log(tmp_path):
    first, second = _write_logs(tmp_path)
    assert common.epoch_values(first, "valid", "valid_bleu") == [(1, 10.0), (2, 12.25), (3, 9.0)]
    assert common.epoch_values(first, "train", "train_wall") == [(1, 46.5), (2, 93.0), (3, 140.0)]
    assert common.epoch_values(second, "valid", "valid_best_bleu") == [(3, 12.25), (4, 12.25)]
    assert common.epoch_values(str(tmp_path / "missing.log"), "valid", "valid_bleu") == []
    # a resumed epoch inside one log: the later value wins
    both = tmp_path / "both.log"
    both.write_text("".join(LOG_1 + LOG_2))
    assert common.epoch_values(str(both), "valid", "valid_bleu") == [(1, 10.0), (2, 12.25), (3, 11.0), (4, 11.5)]


# -- the one atomic writer -------------------------------------------------------------------------------------------
def test_write_file_writes_json_text_and_saved_files(tmp_path):
    path = tmp_path / "sub" / "r.json"
    assert common.write_file(str(path), {"b": [1, 2], "a": None}) == str(path)
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ],\n  "a": null\n}\n'
    common.write_file(str(path), "text\n")
    assert path.read_text() == "text\n"
    common.write_file(str(path), save=lambda tmp: open(tmp, "wb").write(b"\x89PNG"))
    assert path.read_bytes() == b"\x89PNG"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask, oct(os.stat(path).st_mode)
    with pytest.raises(ValueError, match="exactly one"):
        common.write_file(str(path), "x", save=lambda tmp: None)
    with pytest.raises(ValueError, match="exactly one"):
        common.write_file(str(path))


def test_write_file_leaves_no_partial_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old\n")

    class Killed(Exception):
        pass

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"half": ')
        raise Killed("interrupted halfway")

    with pytest.raises(Killed, match="interrupted halfway"):
        common.write_file(str(path), save=half_then_fail)
    with pytest.raises(TypeError):  # not JSON-serializable: nothing is written
        common.write_file(str(path), {"x": object()})
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["r.json"], os.listdir(tmp_path)


def test_write_file_that_hits_a_file_size_limit_keeps_the_old_file(tmp_path):
    """A real failed write (``ulimit -f``: EFBIG): one line naming the file, the old file whole, no temp file."""
    path = tmp_path / "results.json"
    path.write_text("old\n")
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
            "from benchmarks.common import write_file\n"
            "from fairseq_bso.safe_io import WriteError\n"
            "try:\n"
            f"    write_file({str(path)!r}, {{'rows': ['x' * 100] * 1000}})\n"
            "except WriteError as e:\n"
            "    print(e)\n"
            "    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=harness.TIMEOUT)
    assert proc.returncode == 3, proc.stdout
    assert str(path) in proc.stdout and "old file" in proc.stdout, proc.stdout
    assert path.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["results.json"], os.listdir(tmp_path)


def test_results_record_the_module_command(monkeypatch):
    main = types.ModuleType("__main__")
    main.__spec__ = ModuleSpec("benchmarks.translation", None)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert common.command_line(["/x/benchmarks/translation.py", "--report"]) == \
        "python3 -m benchmarks.translation --report"
    main.__spec__ = None
    assert common.command_line(["tool.py", "--a", "1"]) == "python3 tool.py --a 1"


# -- no imports through sys.path ----------------------------------------------------------------------------------------
def test_no_benchmark_edits_sys_path_or_imports_a_sibling_as_top_level():
    """``sys.path`` edits, and ``import deen`` / ``from common import ...`` (which only work with the script's
    folder on ``sys.path``), anywhere in a benchmark, function bodies included."""
    sibling = re.compile(r"^\s*(from|import)\s+(common|deen|demo|harness|bso_recipe|report|plots)\b")
    offenders = []
    for path in sorted(glob.glob(os.path.join(harness.ROOT, "benchmarks", "*.py"))):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                code = line.split("#")[0]
                if ("sys.path" in code and "``sys.path``" not in code) or sibling.match(code):
                    offenders.append(f"{os.path.relpath(path, harness.ROOT)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_the_demo_loads_once_without_touching_sys_path():
    code = ("import sys\n"
            "before = list(sys.path)\n"
            "from benchmarks import common\n"
            "from benchmarks.common import demo, run\n"
            "from benchmarks import bso_recipe\n"
            "assert sys.path == before, (before, sys.path)\n"
            "assert bso_recipe.demo is demo and run is demo.run and 'demo' not in sys.modules\n"
            "assert demo.__file__ == common.DEMO_PATH, demo.__file__\n"
            "print('ok', demo.RECIPES['paper'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=harness.ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=harness.TIMEOUT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout[-3000:]


# -- the word-ordering runners through fairseq -------------------------------------------------------------------------
def test_word_order_train_and_test_bleu_run_fairseq_once(tmp_path):
    """Tiny data, the demo's model for 1 epoch: the run, its marker and valid curve; test BLEU at beams 1 and 2 equal
    to sacrebleu on the generated lines; a second call reuses the run and the decoding logs."""
    from fairseq_bso.evaluation import corpus_bleu, parse_hypotheses

    bin_dir = common.tiny_word_order_bin(str(tmp_path / "data"), sizes=(("train", 64, 1), ("valid", 8, 2),
                                                                         ("test", 8, 3)))
    save = str(tmp_path / "nll")
    options = ["--criterion", "cross_entropy", "--optimizer", "adam", "--lr", "0.005", "--max-epoch", "1"]
    common.word_order_train(bin_dir, save, options, threads=1)
    assert os.path.exists(os.path.join(save, "done")) and os.path.exists(os.path.join(save, "checkpoint_best.pt"))
    curve = common.epoch_values(save + ".log", "valid", "valid_bleu")
    assert [e for e, _ in curve] == [1], curve
    size = os.path.getsize(save + ".log")
    common.word_order_train(bin_dir, save, options, threads=1)  # done: not trained again
    assert os.path.getsize(save + ".log") == size

    refs = open(tmp_path / "data" / "test.tgt").read().splitlines()
    logs = lambda beam: str(tmp_path / "test" / f"nll.beam{beam}.log")  # noqa: E731
    scores, hyps = common.word_order_test_bleu(bin_dir, os.path.join(save, "checkpoint_best.pt"), [], [1, 2], logs,
                                               refs, threads=1, reuse=True)
    assert sorted(scores) == ["1", "2"] and all(len(h) == len(refs) for h in hyps.values()), (scores, hyps)
    for beam in ("1", "2"):
        with open(logs(beam)) as f:
            text = f.read()
        assert parse_hypotheses(text, len(refs)) == hyps[beam]
        assert scores[beam] == round(corpus_bleu(hyps[beam], refs, tokenized=True), 2)
    stamps = [os.stat(logs(b)).st_mtime_ns for b in (1, 2)]
    again = common.word_order_test_bleu(bin_dir, "no-such-checkpoint.pt", [], [1, 2], logs, refs, reuse=True)
    assert again == (scores, hyps)  # read back from the logs: the bogus checkpoint is never loaded
    assert [os.stat(logs(b)).st_mtime_ns for b in (1, 2)] == stamps
    assert not [f for f in os.listdir(tmp_path / "test") if f.startswith(".tmp")]


def test_permutation_check_counts_out_of_vocabulary_source_words_as_unk():
    """bso_authors' check that constrained outputs permute their source: a source word outside the target
    vocabulary is what the model reads and writes as <unk>, so it matches <unk> and nothing else."""
    from benchmarks.bso_authors import permutation_violations
    sources = ["the lamb of god", "in the beginning", "a b c"]
    hyps = ["of the <unk> god", "beginning the in", "a b b"]
    vocabulary = {"the", "of", "god", "in", "beginning", "a", "b", "c"}
    assert permutation_violations(hyps, sources, vocabulary) == 1  # only "a b b"
    assert permutation_violations(hyps, sources) == 2  # word by word, <unk> != lamb
