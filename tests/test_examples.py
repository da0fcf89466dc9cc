"""The examples' recipes (examples/*/run.sh) run as a user runs them from a clone.

Translation, distillation and pruning read a folder laid out as fairseq's
``examples/translation/prepare-iwslt14.sh`` leaves it (``iwslt14.tokenized.de-en/`` with BPE'd
``{train,valid,test}.{de,en}`` and the text before BPE in ``tmp/``), here a few dozen generated
pairs; word ordering reads the corpus the package ships. Every command is the real CLI; the
environment variables of the scripts make the models tiny and the runs one epoch long.
"""

import os
import random
import re
import subprocess

import torch

import harness

EXAMPLES = os.path.join(harness.ROOT, "examples")
TINY = ("--arch lstm --encoder-embed-dim 16 --encoder-hidden-size 16 --decoder-embed-dim 16 "
        "--decoder-hidden-size 16 --decoder-out-embed-dim 16")
TINY_STUDENT = TINY.replace("16", "8")
SCORE = r"BLEU\|nrefs:1\|case:mixed\|eff:no\|tok:{tok}\|smooth:exp\|version:[\d.]+ = (\d+\.\d\d) "

LEXICON = {"the": "die", "cat": "katze", "sees": "sieht", "a": "eine", "mouse": "maus", "dog": "hund",
           "eats": "frisst", "fish": "fisch", "and": "und", "small": "kleine", "big": "große", "house": "haus",
           "is": "ist", "in": "in", "garden": "garten", "red": "rote"}
SIZES = {"train": 60, "valid": 8, "test": 8}


def make_iwslt14(folder):
    """``folder/iwslt14.tokenized.de-en`` as prepare-iwslt14.sh writes it: tokenized, lowercased pairs in
    ``tmp/{train,valid,test}.{de,en}``, the same with subword-nmt BPE ("@@ ") at the top level, and the
    BPE codes in ``code``. Returns the folder."""
    prep = os.path.join(folder, "iwslt14.tokenized.de-en")
    os.makedirs(os.path.join(prep, "tmp"))
    rng = random.Random(14)
    for split, n in SIZES.items():
        en = [" ".join(rng.choice(sorted(LEXICON)) for _ in range(rng.randint(3, 8))) + " ." for _ in range(n)]
        de = [" ".join(LEXICON.get(w, w) for w in line.split()) for line in en]
        for lang, lines in (("de", de), ("en", en)):
            with open(os.path.join(prep, "tmp", f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            with open(os.path.join(prep, f"{split}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(" ".join(w[:2] + "@@ " + w[2:] if len(w) > 4 else w for w in line.split()) + "\n"
                             for line in lines)
    with open(os.path.join(prep, "code"), "w") as f:
        f.write("#version: 0.2\n")
    return prep


def recipe(script, cwd, check=True, **env):
    """bash examples/SCRIPT in ``cwd`` with extra environment variables; stdout and stderr together."""
    full = harness.env_without_overrides()
    full.update({k: str(v) for k, v in env.items()})
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, script)], cwd=str(cwd), env=full, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc.stdout


def score_line(out, name, tok="13a"):
    """The BLEU a recipe printed as ``NAME: <sacrebleu signature> = score``; it must be its last line."""
    last = out.rstrip("\n").splitlines()[-1]
    m = re.fullmatch(re.escape(name) + ": " + SCORE.format(tok=tok) + ".*", last)
    assert m, f"expected the last line to be the score line '{name}: BLEU|...', got: {last!r}"
    return float(m.group(1))


def lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def test_translation_distillation_and_pruning_recipes_on_iwslt14_layout(tmp_path):
    iwslt = make_iwslt14(str(tmp_path / "fairseq" / "examples" / "translation"))
    common = dict(IWSLT=iwslt, VOCAB=40)  # RUNS: the default, runs/iwslt14.de-en under the working directory
    runs = tmp_path / "runs" / "iwslt14.de-en"

    out = recipe("translation/run.sh", tmp_path, **common, MODEL=TINY, EPOCHS=1)
    score_line(out, "nll, beam 5")
    for f in ("spm.model", "bin/dict.en.txt", "bin/test.de-en.en.idx", "nll/checkpoint_best.pt"):
        assert (runs / f).is_file(), f"translation/run.sh did not write {runs / f}"
    # the text before fairseq's BPE, not the BPE'd top-level files, is the input and the reference
    assert lines(runs / "test.en") == lines(os.path.join(iwslt, "tmp", "test.en"))
    hyps = lines(runs / "gen.nll.beam5.txt.detok")
    assert len(hyps) == SIZES["test"], f"{len(hyps)} hypotheses scored for {SIZES['test']} test sentences"
    gen = (runs / "gen.nll.beam5.txt").read_text()
    assert re.search(r"Generate test with beam=5: BLEU = [\d.]+", gen), gen[-1000:]  # fairseq's --scoring sacrebleu

    out = recipe("distillation/run.sh", tmp_path, **common, STUDENT=TINY_STUDENT, STUDENTS="seq_kd word_kd",
                 STUDENT_EPOCHS=1, BEAMS=1)
    assert f"data: {os.path.join('runs', 'iwslt14.de-en', 'bin')} exists" in out  # the translation recipe's data
    corpus = lines(runs / "kd_beam" / "train.en")
    assert len(corpus) == SIZES["train"], f"Seq-KD corpus has {len(corpus)} lines for {SIZES['train']} pairs"
    for name in ("seq_kd", "word_kd"):
        assert (runs / f"student_{name}" / "checkpoint_best.pt").is_file(), f"no student_{name} checkpoint"
        assert re.search(rf"^student_{name}, beam 1: " + SCORE.format(tok="13a"), out, re.M), out[-3000:]
    score_line(out, "student_word_kd, beam 1")

    out = recipe("pruning/run.sh", tmp_path, **common, STUDENT=TINY_STUDENT, PRUNE_EPOCHS=1)
    score_line(out, "pruned0.8, beam 5")
    assert re.search(r"wrote .*pruned0\.8\.sparse: [\d,]+ bytes", out), out[-3000:]
    exported = torch.load(runs / "pruned0.8.pt", map_location="cpu")
    assert exported["cfg"]["common"]["user_dir"] is None, "the export still needs the plugin"
    weights = [t for t in exported["model"].values() if t.dim() >= 2]
    zeros, total = sum(int((t == 0).sum()) for t in weights), sum(t.numel() for t in weights)
    assert zeros == int(0.8 * total), f"{zeros} of {total} weights are zero, expected {int(0.8 * total)}"


def test_word_ordering_recipe_on_the_shipped_corpus(tmp_path):
    data = os.path.join(EXAMPLES, "word_ordering", "data")
    # the shipped valid split (400 sentences) as training data keeps the run to seconds
    out = recipe("word_ordering/run.sh", tmp_path, TRAIN=os.path.join(data, "kjv.valid.txt.gz"),
                 MODEL=TINY, EPOCHS=1)
    score_line(out, "word ordering, beam 5", tok="none")
    runs = tmp_path / "runs" / "word_ordering"
    assert (runs / "nll" / "checkpoint_best.pt").is_file(), f"no checkpoint under {runs / 'nll'}"
    refs, hyps = lines(runs / "test.tgt"), lines(runs / "gen.beam5.txt.hyp")
    assert len(refs) == len(hyps) == 400, f"{len(hyps)} hypotheses for {len(refs)} references (shipped test: 400)"


def test_translation_recipe_without_data_says_where_to_get_it(tmp_path):
    out = recipe("translation/run.sh", tmp_path, check=False, EPOCHS=1)
    assert "no iwslt14.tokenized.de-en/tmp/train.de" in out and "prepare-iwslt14.sh" in out, out
    out = recipe("translation/run.sh", tmp_path, check=False, TEXT=tmp_path / "corpus", SRC="fr")
    assert f"no {tmp_path}/corpus/train.fr" in out, out
    assert not (tmp_path / "runs").exists()


def test_hypotheses_are_read_in_sentence_order(tmp_path):
    """recipes.sh's ``hypotheses``: fairseq-generate prints batches in length order and, with --nbest, several
    hypotheses per sentence; the scored file must hold the first one of each sentence, by sentence id."""
    gen = tmp_path / "gen.txt"
    gen.write_text("S-10\tq\nH-10\t-0.1\tten a\nD-10\t-0.1\tTen a\nD-10\t-0.5\tTen b\n"
                   "D-9\t-0.2\tNine\nD-0\t-0.3\tZero\tcolumn\nGenerate test with beam=5: BLEU = 1.00\n")
    out = subprocess.run(["bash", "-c", f'source "{EXAMPLES}/recipes.sh"; hypotheses "$1" D', "_", str(gen)],
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.splitlines() == ["Zero\tcolumn", "Nine", "Ten a"]
