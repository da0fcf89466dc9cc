"""Data pipelines: tokenization, word-ordering pairs, parallel checks, atomic writes."""

import gzip
import os

import pytest

import harness
from fairseq_bso import prep


def test_tokenize_lowercases_and_splits_punctuation():
    assert prep.tokenize("And God said, Let there be light:") == \
        ["and", "god", "said", ",", "let", "there", "be", "light", ":"]
    assert prep.tokenize("The LORD'S house.") == ["the", "lord's", "house", "."]
    assert prep.tokenize("   ") == []


def test_word_order_source_is_sorted_permutation_of_target(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("In the beginning God created the heaven.\n\nAnd it was so.\n")
    sources, targets, empty, too_long = prep.word_order_pairs(str(path))
    assert targets == ["in the beginning god created the heaven .", "and it was so ."]
    assert empty == 1 and too_long == 0
    for s, t in zip(sources, targets):
        assert s.split() == sorted(t.split())


def test_word_order_max_tokens_drops_long_sentences(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("a b c\na b c d e\n")
    sources, targets, empty, too_long = prep.word_order_pairs(str(path), max_tokens=3)
    assert targets == ["a b c"] and too_long == 1


def test_gzip_input(tmp_path):
    path = tmp_path / "s.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("Jesus wept.\n")
    assert prep.word_order_pairs(str(path))[1] == ["jesus wept ."]


def test_empty_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n")
    with pytest.raises(prep.DataError, match="empty.txt: file is empty"):
        prep.read_lines(str(path))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(prep.DataError, match="nope.txt: no such file"):
        prep.read_lines(str(tmp_path / "nope.txt"))


def test_non_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Grüß Gott\n".encode("latin-1"))
    with pytest.raises(prep.DataError, match=r"latin1.txt:1:3: not UTF-8 text \(byte 0xfc: invalid start byte\)"):
        prep.read_lines(str(path))


def test_mismatched_parallel_files_name_both_files(tmp_path):
    (tmp_path / "t.de").write_text("a\nb\nc\n")
    (tmp_path / "t.en").write_text("a\nb\n")
    with pytest.raises(prep.DataError, match=r"t\.de has 3 lines but .*t\.en has 2"):
        prep.read_parallel(str(tmp_path / "t.de"), str(tmp_path / "t.en"))


def test_parallel_empty_pairs_are_skipped_and_counted(tmp_path):
    (tmp_path / "t.de").write_text("eins\n\ndrei\nvier\n")
    (tmp_path / "t.en").write_text("one\ntwo\nthree\n \n")
    src, tgt, empty = prep.read_parallel(str(tmp_path / "t.de"), str(tmp_path / "t.en"))
    assert src == ["eins", "drei"] and tgt == ["one", "three"] and empty == 2


def test_write_atomic_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")

    def lines():
        yield "new"
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        prep.write_atomic(str(path), lines())
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_cli_reports_bad_input_with_file_name(tmp_path):
    (tmp_path / "train.txt").write_text("")
    proc = harness.run(["fairseq-bso-prep", "word-order", "--train", str(tmp_path / "train.txt"),
                        "--valid", str(tmp_path / "train.txt"), "--test", str(tmp_path / "train.txt"),
                        "--out", str(tmp_path / "out")], check=False)
    assert proc.returncode == 2
    assert "train.txt: file is empty" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_word_order_pipeline_binarizes_with_joined_dictionary(tmp_path):
    for split, n in (("train", 30), ("valid", 5), ("test", 5)):
        (tmp_path / f"{split}.txt").write_text("\n".join(s.capitalize() + "." for s in harness.make_sentences(n, n)))
    harness.run(["fairseq-bso-prep", "word-order", "--train", str(tmp_path / "train.txt"),
                 "--valid", str(tmp_path / "valid.txt"), "--test", str(tmp_path / "test.txt"),
                 "--out", str(tmp_path / "out")])
    out = tmp_path / "out"
    assert (out / "bin" / "dict.src.txt").read_text() == (out / "bin" / "dict.tgt.txt").read_text()
    for split in ("train", "valid", "test"):
        assert (out / "bin" / f"{split}.src-tgt.src.bin").exists()
        for s, t in zip((out / f"{split}.src").read_text().splitlines(), (out / f"{split}.tgt").read_text().splitlines()):
            assert s.split() == sorted(t.split())


def test_translation_pipeline_trains_sentencepiece_on_train_only(tmp_path):
    pytest.importorskip("sentencepiece")
    words_de = "das ist ein kleines haus und der große baum".split()
    words_en = "this is a small house and the big tree".split()
    import random
    rng = random.Random(0)
    for split, n in (("train", 300), ("valid", 10), ("test", 10)):
        de, en = [], []
        for _ in range(n):
            idx = [rng.randrange(len(words_de)) for _ in range(rng.randint(2, 7))]
            de.append(" ".join(words_de[i] for i in idx))
            en.append(" ".join(words_en[i] for i in idx))
        if split == "valid":  # letters no training sentence has (f, v, w, z, ö): in no piece of a train-only model
            de, en = [s + " zwölf" for s in de], [s + " twelve" for s in en]
        (tmp_path / f"{split}.de").write_text("\n".join(de) + "\n")
        (tmp_path / f"{split}.en").write_text("\n".join(en) + "\n")
    out = tmp_path / "out"
    harness.run(["fairseq-bso-prep", "translation", "--trainpref", str(tmp_path / "train"),
                 "--validpref", str(tmp_path / "valid"), "--testpref", str(tmp_path / "test"),
                 "--source-lang", "de", "--target-lang", "en", "--out", str(out), "--vocab-size", "30"])
    assert (out / "spm.model").exists()
    assert (out / "bin" / "train.de-en.de.bin").exists()
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    train_letters = set((tmp_path / "train.de").read_text() + (tmp_path / "train.en").read_text())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_unknown(i)]
    foreign = sorted({c for p in pieces for c in p.replace("\u2581", "")} - train_letters)
    assert not foreign, f"pieces with letters only the valid split has: {foreign} (the model saw more than train)"
    encoded = (out / "test.spm.en").read_text().splitlines()
    raw = (out / "test.en").read_text().splitlines()
    assert [sp.decode(line.split()) for line in encoded] == raw
    proc = harness.run(["fairseq-bso-prep", "translation", "--trainpref", str(tmp_path / "train"),
                        "--validpref", str(tmp_path / "valid"), "--testpref", str(tmp_path / "test"),
                        "--source-lang", "de", "--target-lang", "en", "--out", str(tmp_path / "o2"),
                        "--vocab-size", "5000"], check=False)
    assert proc.returncode == 2 and "Vocabulary size too high" in proc.stdout and "--vocab-size" in proc.stdout


def test_parse_hypotheses_restores_id_order_and_counts():
    from fairseq_bso.evaluation import parse_hypotheses
    out = "S-1\tb\nH-1\t-0.5\tsecond\nH-0\t-0.1\tfirst\nH-0\t-0.9\tfirst-nbest2\n"
    assert parse_hypotheses(out, nbest=True) == ["first", "second"]
    with pytest.raises(ValueError, match="output:4: a second H-0 line \\(the first is line 3\\)"):
        parse_hypotheses(out)
    with pytest.raises(ValueError, match="lacks 1 sentence ids"):
        parse_hypotheses(out, expected=3, nbest=True)
