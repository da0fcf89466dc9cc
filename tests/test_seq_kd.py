"""--task seq_kd: the corpus equals plain fairseq-generate's hypotheses in id order; Seq-Inter picks the max
sentence-BLEU hypothesis (brute force with sacrebleu); a SIGKILLed run resumes to a byte-identical corpus;
two shards merge to the one-shard corpus; other settings are refused on resume."""

import os
import re

import pytest

import faults
import harness


def parse(out):
    """{id: [hypotheses in rank order]}, {id: source}, {id: reference} from fairseq-generate's output."""
    hyps, srcs, refs = {}, {}, {}
    for kind, sid, rest in re.findall(r"^([HST])-(\d+)\t(.*)$", out, re.M):
        sid = int(sid)
        if kind == "H":
            hyps.setdefault(sid, []).append(rest.split("\t")[1])
        elif kind == "S":
            srcs[sid] = rest
        else:
            refs[sid] = rest
    return hyps, srcs, refs


def seq_kd(data_bin, ckpt, out_dir, extra=(), beam=3, check=True, env=None):
    cmd = ["fairseq-generate", data_bin, "--user-dir", harness.USER_DIR, "--path", ckpt, "--cpu",
           "--gen-subset", "train", "--beam", str(beam), "--batch-size", "8", *harness.NO_DROP,
           "--task", "seq_kd", "--kd-output-dir", out_dir, *extra]
    if env is None:
        return harness.run(cmd, check=check)
    import subprocess
    full_env = harness.env_without_overrides()
    full_env.update(env)
    return subprocess.run(faults.command(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=full_env)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.mark.parametrize("beam", [1, 4])
def test_corpus_equals_plain_generate_in_id_order(word_order_bin, nll_checkpoint, tmp_path, beam):
    out_dir = str(tmp_path / "kd")
    seq_kd(word_order_bin, nll_checkpoint, out_dir, beam=beam, extra=["--kd-write-scores"])
    plain = harness.generate(word_order_bin, nll_checkpoint, beam=beam, subset="train").stdout
    hyps, srcs, _ = parse(plain)
    assert sorted(hyps) == list(range(200))
    assert read(f"{out_dir}/train.tgt") == [hyps[i][0] for i in range(200)]
    assert read(f"{out_dir}/train.src") == [srcs[i] for i in range(200)]
    scores = [float(s) for s in read(f"{out_dir}/train.score")]
    plain_scores = {int(i): float(s) for i, s in re.findall(r"^H-(\d+)\t(\S+)\t", plain, re.M)}
    assert scores == pytest.approx([plain_scores[i] for i in range(200)], abs=1e-4)
    # the corpus binarizes with the teacher's dictionaries
    harness.run(["fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt", "--trainpref",
                 f"{out_dir}/train", "--srcdict", f"{word_order_bin}/dict.src.txt", "--tgtdict",
                 f"{word_order_bin}/dict.tgt.txt", "--destdir", f"{out_dir}/bin", "--workers", "1"])
    assert os.path.exists(f"{out_dir}/bin/train.src-tgt.tgt.bin")


def test_seq_inter_picks_max_sentence_bleu(word_order_bin, nll_checkpoint, tmp_path):
    import sacrebleu
    out_dir = str(tmp_path / "kd")
    nbest = ["--nbest", "4"]
    seq_kd(word_order_bin, nll_checkpoint, out_dir, beam=4, extra=["--kd-selection", "seq_inter", *nbest])
    hyps, _, refs = parse(harness.generate(word_order_bin, nll_checkpoint, beam=4, subset="train",
                                           extra=nbest).stdout)
    expected, differs = [], 0
    for i in range(200):
        bleu = [sacrebleu.sentence_bleu(h, [refs[i]], smooth_method="exp", tokenize="none").score for h in hyps[i]]
        best = bleu.index(max(bleu))  # brute force: every hypothesis, first of the maxima
        expected.append(hyps[i][best])
        differs += best != 0
    assert read(f"{out_dir}/train.tgt") == expected
    assert differs > 0, "the test needs sentences where Seq-Inter differs from the beam's best"


def test_sigkill_then_resume_is_byte_identical(word_order_bin, nll_checkpoint, tmp_path):
    whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
    seq_kd(word_order_bin, nll_checkpoint, whole)
    proc = seq_kd(word_order_bin, nll_checkpoint, killed, env={"FAIRSEQ_BSO_KILL_AT_BATCH": "7"})
    assert proc.returncode == -9, proc.stdout[-2000:]
    assert not os.path.exists(f"{killed}/train.tgt")  # nothing half-written where the corpus goes
    log = f"{killed}/.seq_kd/train.shard0of1.jsonl"
    with open(log, "rb") as f:
        assert not f.read().endswith(b"\n")  # the kill tore the last line
    out = seq_kd(word_order_bin, nll_checkpoint, killed).stdout
    assert "6 already in the log, 19 to generate" in out
    for name in ("train.src", "train.tgt"):
        with open(f"{whole}/{name}", "rb") as a, open(f"{killed}/{name}", "rb") as b:
            assert a.read() == b.read()
    # a third run finds everything done and rewrites the same corpus
    out = seq_kd(word_order_bin, nll_checkpoint, killed).stdout
    assert "25 already in the log, 0 to generate" in out
    assert read(f"{killed}/train.tgt") == read(f"{whole}/train.tgt")


def test_two_shards_merge_to_the_one_shard_corpus(word_order_bin, nll_checkpoint, tmp_path):
    whole, sharded = str(tmp_path / "whole"), str(tmp_path / "sharded")
    seq_kd(word_order_bin, nll_checkpoint, whole)
    first = seq_kd(word_order_bin, nll_checkpoint, sharded,
                   extra=["--distributed-world-size", "2", "--distributed-rank", "1"]).stdout
    assert "waiting for shard(s) [0]" in first and not os.path.exists(f"{sharded}/train.tgt")
    seq_kd(word_order_bin, nll_checkpoint, sharded, extra=["--distributed-world-size", "2", "--distributed-rank", "0"])
    for name in ("train.src", "train.tgt"):
        assert read(f"{sharded}/{name}") == read(f"{whole}/{name}")


def test_other_settings_are_refused_on_resume(word_order_bin, nll_checkpoint, tmp_path):
    out_dir = str(tmp_path / "kd")
    seq_kd(word_order_bin, nll_checkpoint, out_dir, beam=2)
    proc = seq_kd(word_order_bin, nll_checkpoint, out_dir, beam=3, check=False)
    assert proc.returncode != 0
    assert "was generated from other data, teacher or settings (beam: 2 -> 3)" in proc.stdout, proc.stdout[-2000:]


def test_missing_output_dir_is_a_clear_error(word_order_bin, nll_checkpoint):
    proc = harness.generate(word_order_bin, nll_checkpoint, subset="train", extra=["--task", "seq_kd"], check=False)
    assert proc.returncode != 0 and "--task seq_kd needs --kd-output-dir DIR" in proc.stdout


def test_training_with_the_seq_kd_task_is_refused(word_order_bin, tmp_path):
    """seq_kd generates a corpus; fairseq-train with it would have read a finished corpus log as 'already
    generated' and trained on one batch per epoch: it is refused before any batch, and nothing is written."""
    out_dir = tmp_path / "kd"
    proc = harness.train(word_order_bin, str(tmp_path / "ckpt"), extra=["--task", "seq_kd", "--kd-output-dir",
                                                                        str(out_dir)], check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "ValueError: --task seq_kd writes a distillation corpus with fairseq-generate; it does not train or " \
           "validate a model" in proc.stdout, proc.stdout[-2000:]
    assert not out_dir.exists() and "begin training epoch" not in proc.stdout


def test_every_sentence_with_the_default_batch_size_multiple(uneven_bin, nll_checkpoint, tmp_path):
    """The issue's command, `--batch-size 64` and fairseq's default --required-batch-size-multiple 8, on 203
    sentences: stock translation generates fewer (its last partial batch is dropped), seq_kd all of them."""
    common = ["fairseq-generate", uneven_bin, "--user-dir", harness.USER_DIR, "--path", nll_checkpoint, "--cpu",
              "--gen-subset", "train", "--beam", "4", "--batch-size", "64"]
    stock, _, _ = parse(harness.run(common).stdout)
    assert 200 <= len(stock) < 203, f"stock translation generated {len(stock)} of 203 sentences"
    out_dir = str(tmp_path / "kd")
    out = harness.run([*common, "--task", "seq_kd", "--kd-output-dir", out_dir]).stdout
    hyps, srcs, _ = parse(out)
    missing = sorted(set(range(203)) - set(hyps))
    assert not missing, f"seq_kd generated {len(hyps)} of 203 sentences; missing ids {missing}"
    assert read(f"{out_dir}/train.tgt") == [hyps[i][0] for i in range(203)]
    assert read(f"{out_dir}/train.src") == read(os.path.join(os.path.dirname(uneven_bin), "train.src"))
    assert "not in the corpus" not in out and "wrote 203 lines" in out


def test_merge_counts_the_sentences_of_the_manifest(tmp_path, caplog):
    """The merge compares the ids with the subset's sentence count: missing *highest* ids are noticed too, each
    with its cause (too long for the model, never batched, or batched but not logged)."""
    from fairseq_bso.distill.corpus import CorpusStore

    store = CorpusStore(str(tmp_path), "train", "src", "tgt", 0, 1)
    store.check_settings({"num_sentences": 12, "too_long_ids": [10], "not_batched_ids": [11]})
    store.open_shard()
    store.append_batch([{"id": i, "src": f"s{i}", "hyp": f"h{i}", "score": 0.0, "rank": 0} for i in range(9)])
    with caplog.at_level("WARNING", logger="fairseq_bso.distill.corpus"):
        assert store.finish_shard(list(range(9)))
    assert read(tmp_path / "train.tgt") == [f"h{i}" for i in range(9)]
    text = caplog.text
    assert "3 of the 12 sentences of train are not in the corpus" in text, text
    assert "1 longer than the model accepts (--max-source-positions/--max-target-positions), left out by " \
           "--skip-invalid-size-inputs-valid-test: ids [10]" in text, text
    assert "1 in no batch fairseq made, although they fit the model: ids [11]" in text, text
    assert "1 in no shard log although they were batched" in text and "ids [9]" in text, text


def test_too_long_sentences_are_named_in_the_warning(word_order_bin, nll_checkpoint, tmp_path):
    """--skip-invalid-size-inputs-valid-test with a short --max-source-positions: the warning names that cause."""
    out_dir = str(tmp_path / "kd")
    out = seq_kd(word_order_bin, nll_checkpoint, out_dir, beam=1,
                 extra=["--max-source-positions", "4", "--skip-invalid-size-inputs-valid-test"]).stdout
    lengths = [len(line.split()) + 1 for line in read(os.path.join(os.path.dirname(word_order_bin), "train.src"))]
    too_long = [i for i, n in enumerate(lengths) if n > 4]  # + </s>
    assert too_long, "the test needs sentences longer than 4 tokens"
    assert len(read(f"{out_dir}/train.tgt")) == 200 - len(too_long)
    assert (f"{len(too_long)} of the 200 sentences of train are not in the corpus (so its lines no longer line up "
            f"with the subset's): {len(too_long)} longer than the model accepts") in out, out[-3000:]
    assert f"ids {too_long[:10]}" in out


@pytest.mark.parametrize("extra,option,value", [
    (["--remove-bpe"], "--post-process/--remove-bpe", "'subword_nmt'"),
    (["--post-process", "sentencepiece"], "--post-process/--remove-bpe", "'sentencepiece'"),
    (["--replace-unk", "--dataset-impl", "raw"], "--replace-unk", "'@@ '"),  # fairseq itself needs raw text for it
])
def test_options_the_corpus_would_ignore_are_refused(word_order_bin, nll_checkpoint, tmp_path, extra, option, value):
    out_dir = str(tmp_path / "kd")
    proc = seq_kd(word_order_bin, nll_checkpoint, out_dir, extra=extra, check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert f"ValueError: --task seq_kd does not apply {option} (got {value})" in proc.stdout, proc.stdout[-2000:]
    assert not os.path.exists(out_dir)  # refused before anything was generated
