"""Issue 31: never lose or mix a user's data.

Every silent-data-loss case and unclear message the issue lists, through the real CLIs (fairseq-generate
--task seq_kd, fairseq-bso-prep, fairseq-bso-prune, fairseq-bso-parsing), then a sweep of hostile inputs:
text that is not what it looks like, outputs that are inputs by another path, logs holding more than one
run, checkpoints whose weights are not finite.  docs/bad_inputs.md lists each row with its test.

The hostile-text sweep calls the CLIs' ``main`` in process (the function the console script runs) to keep
the suite fast; every other case runs the installed command in a subprocess.
"""

import gzip
import os
import pickle
import resource
import shutil
import subprocess

import pytest
import torch

import harness
from fairseq_bso import prep, safe_io
from fairseq_bso.constraints import parsing
from fairseq_bso.prune import cli as prune_cli

SEQ_KD = "fairseq-generate --task seq_kd"


def run(cmd, umask=None, fsize=None, timeout=600):
    """A CLI in a subprocess (the harness's environment), optionally under a umask and a file size limit."""
    def limits():
        if umask is not None:
            os.umask(umask)
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=harness.env_without_overrides(), timeout=timeout, preexec_fn=limits)


def last_line(proc):
    return proc.stdout.strip().splitlines()[-1]


def snapshot(folder):
    """{relative path: bytes} of every file below ``folder`` (the ledger and hidden work files included)."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def mode(path):
    return os.stat(path).st_mode & 0o777


# -- fairseq-bso-prep -------------------------------------------------------------------------------------------
@pytest.fixture
def texts(tmp_path):
    """Cased raw text: corpus/train.tgt, v.txt, t.txt."""
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.tgt").write_text("In the Beginning God created.\nAnd it was so.\n")
    (tmp_path / "v.txt").write_text("Let there be light.\n")
    (tmp_path / "t.txt").write_text("And there was light.\n")
    return tmp_path


def word_order(tmp_path, out, train=None, valid=None, extra=()):
    return ["fairseq-bso-prep", "word-order", "--train", str(train or tmp_path / "corpus" / "train.tgt"),
            "--valid", str(valid or tmp_path / "v.txt"), "--test", str(tmp_path / "t.txt"), "--out", str(out),
            "--no-binarize", *extra]


def test_prep_into_the_folder_of_its_input_is_refused(texts):
    """Issue: `--train corpus/train.tgt --out corpus` replaced the cased input by lowercased tokens, exit 0."""
    before = snapshot(texts / "corpus")
    proc = run(word_order(texts, texts / "corpus"))
    assert proc.returncode == 2, proc.stdout
    c = texts / "corpus"
    assert last_line(proc) == (f"fairseq-bso-prep: error: --out {c}: the output {c}/train.tgt is the input "
                               f"{c}/train.tgt: writing it would destroy the input; choose another output path")
    assert snapshot(c) == before


def test_prep_error_leaves_the_old_output_whole_and_files_follow_the_umask(texts):
    """Issue: a refused run had already written the new train.* beside the old valid/test (two corpora mixed);
    the atomic writer gave every file mode 0600."""
    out = texts / "out"
    assert run(word_order(texts, out), umask=0o022).returncode == 0
    assert {mode(out / n) for n in ("train.src", "train.tgt", "valid.src", "test.tgt")} == {0o644}
    before = snapshot(out)
    (texts / "other.txt").write_text("Other sentences here.\nAnd more.\n")
    (texts / "empty.txt").write_text("\n")
    proc = run(word_order(texts, out, train=texts / "other.txt", valid=texts / "empty.txt"))
    assert proc.returncode == 2 and last_line(proc) == f"fairseq-bso-prep: error: {texts}/empty.txt: file is empty"
    assert snapshot(out) == before  # no new train.*, no temporary folder left
    # a rerun of the same command replaces its own output; under umask 027 files are 0640
    assert run(word_order(texts, out, train=texts / "other.txt"), umask=0o027).returncode == 0
    assert (out / "train.tgt").read_text() == "other sentences here .\nand more .\n"
    assert mode(out / "train.tgt") == 0o640


def test_prep_full_disk_names_the_file_and_keeps_the_old_output(texts):
    """Issue: a full disk was reported as `OSError: File too large` without the path (here: ulimit -f)."""
    out = texts / "out"
    assert run(word_order(texts, out)).returncode == 0
    before = snapshot(out)
    big = texts / "big.txt"
    big.write_text("a rather long line of words to fill the file size limit quickly\n" * 200)
    proc = run(word_order(texts, out, train=big), fsize=4096)
    assert proc.returncode == 2, proc.stdout
    assert last_line(proc).startswith(f"fairseq-bso-prep: error: {out}/") and "cannot write (File too large)" in \
        last_line(proc), last_line(proc)
    assert snapshot(out) == before


def prep_main(argv, capsys):
    code = prep.main(argv)
    return code, capsys.readouterr().err.strip()


def test_prep_refuses_files_it_did_not_write_links_to_inputs_and_a_file_as_out(texts, capsys):
    out = texts / "out"
    out.mkdir()
    (out / "train.src").write_text("my own notes\n")
    argv = word_order(texts, out)[1:]
    code, err = prep_main(argv, capsys)
    assert code == 2 and (f"the output {out}/train.src exists and is a file fairseq-bso-prep did not write" in err
                          and "--force" in err), err
    assert (out / "train.src").read_text() == "my own notes\n"
    code, err = prep_main(argv + ["--force"], capsys)
    assert code == 0 and (out / "train.src").read_text() == ". beginning created god in the\n. and it so was\n"
    # an output that is a symlink to, or a hard link of, an input: refused naming both, the input intact
    inp = texts / "corpus" / "train.tgt"
    for make, how in ((os.symlink, "a symlink to it"), (os.link, "a hard link of it")):
        (out / "train.tgt").unlink()
        make(str(inp), str(out / "train.tgt"))
        code, err = prep_main(argv + ["--force"], capsys)
        assert code == 2 and err == (f"fairseq-bso-prep: error: --out {out}: the output {out}/train.tgt is the input "
                                     f"{inp} ({how}): writing it would destroy the input; choose another output "
                                     f"path"), err
        assert inp.read_text().startswith("In the Beginning")
    # the same file by another path
    code, err = prep_main(word_order(texts, texts / "corpus" / ".." / "corpus")[1:], capsys)
    assert code == 2 and "is the input" in err, err
    # --out naming a file
    code, err = prep_main(word_order(texts, texts / "v.txt")[1:], capsys)
    assert code == 2 and err.endswith(f"--out {texts}/v.txt: {texts}/v.txt is a file, not a folder: name a folder "
                                      f"(it is created if missing)"), err


def test_translation_prep_into_its_raw_folder_is_refused(tmp_path, capsys):
    """The raw train.de would have been replaced by its stripped copy."""
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.de").write_text(" Hallo Welt\n")
        (tmp_path / f"{split}.en").write_text("Hello world\n")
    code, err = prep_main(["translation", "--trainpref", str(tmp_path / "train"), "--validpref",
                           str(tmp_path / "valid"), "--testpref", str(tmp_path / "test"), "--source-lang", "de",
                           "--target-lang", "en", "--out", str(tmp_path), "--no-binarize", "--force"], capsys)
    assert code == 2 and f"the output {tmp_path}/train.de is the input {tmp_path}/train.de" in err, err
    assert (tmp_path / "train.de").read_text() == " Hallo Welt\n"


# Text that is not what it looks like: (file bytes, expected location and words of the refusal).
HOSTILE_TEXT = {
    "bom": (b"\xef\xbb\xbfIn the beginning\n", "1:1: U+FEFF at the start of the file (a byte-order mark)"),
    "bom_inside": ("a\nb\ufeffc\n".encode(), "2:2: U+FEFF inside the text"),
    "cr_inside_line": (b"one\rtwo\nthree\n", "1:4: a carriage return (U+000D) inside the line"),
    "line_separator": ("one\u2028two\n".encode(), "1:4: U+2028 LINE SEPARATOR, which Python's splitlines()"),
    "paragraph_separator": ("one\u2029two\n".encode(), "1:4: U+2029 PARAGRAPH SEPARATOR"),
    "next_line": ("one\x85two\n".encode(), "1:4: U+0085 NEXT LINE"),
    "vertical_tab": (b"one\x0btwo\n", "1:4: U+000B LINE TABULATION"),
    "form_feed": (b"one\x0ctwo\n", "1:4: U+000C FORM FEED"),
    "nul": (b"one\x00two\n", "1:4: a NUL byte: this is not a text file"),
    "invalid_utf8_line_3": (b"ok\nok\nbad \xff\n", "3:5: not UTF-8 text (byte 0xff: invalid start byte)"),
    "truncated_utf8": ("ok\nGr\u00fc".encode()[:-1] + b"\n", "2:3: not UTF-8 text (byte 0xc3: invalid continuation"),
    "zero_width_space": ("the\u200bcat\n".encode(), "1:4: the invisible character U+200B ZERO WIDTH SPACE"),
    "word_joiner": ("the \u2060 cat\n".encode(), "1:5: the invisible character U+2060 WORD JOINER"),
    "soft_hyphen": ("the ca\u00adt\n".encode(), "1:7: the invisible character U+00AD SOFT HYPHEN"),
    "bidi_override": ("the \u202ecat\n".encode(), "1:5: the invisible character U+202E RIGHT-TO-LEFT OVERRIDE"),
    "escape": (b"the \x1b[31mcat\n", "1:5: the control character U+001B"),
    "delete": (b"the\x7fcat\n", "1:4: the control character U+007F"),
    "tab_separated": (b"source words\ttarget words\n", "1:13: a tab in a text of whitespace-separated tokens"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TEXT))
def test_prep_refuses_text_that_is_not_what_it_looks_like(texts, capsys, name):
    data, expected = HOSTILE_TEXT[name]
    path = texts / f"{name}.txt"
    path.write_bytes(data)
    code, err = prep_main(word_order(texts, texts / "out", train=path)[1:], capsys)
    assert code == 2 and err.startswith(f"fairseq-bso-prep: error: {path}:{expected}"), err
    assert not (texts / "out").exists()


def test_prep_accepts_crlf_nbsp_and_joiners_and_checks_gzip_too(texts, capsys):
    crlf = texts / "crlf.txt"
    crlf.write_bytes("Grüße\u00a0aus Köln\r\nzwei\u200cwörter\r\n".encode())
    code, err = prep_main(word_order(texts, texts / "out", train=crlf)[1:], capsys)
    assert code == 0, err
    assert (texts / "out" / "train.tgt").read_text(encoding="utf-8") == "gr ü ß e aus k ö ln\nzwei \u200c w ö rter\n"
    gz = texts / "bad.txt.gz"
    with gzip.open(gz, "wb") as f:
        f.write("ok\nthe\u200bcat\n".encode())
    code, err = prep_main(word_order(texts, texts / "out2", train=gz)[1:], capsys)
    assert code == 2 and f"{gz}:2:4: the invisible character U+200B" in err, err


def test_parallel_text_with_a_line_separator_is_refused_before_the_sides_misalign(tmp_path, capsys):
    (tmp_path / "train.de").write_text("eins\u2028zwei\ndrei\n")
    (tmp_path / "train.en").write_text("one two\nthree\n")
    code, err = prep_main(["translation", "--trainpref", str(tmp_path / "train"), "--validpref",
                           str(tmp_path / "train"), "--testpref", str(tmp_path / "train"), "--source-lang", "de",
                           "--target-lang", "en", "--out", str(tmp_path / "out"), "--no-binarize"], capsys)
    assert code == 2 and f"{tmp_path}/train.de:1:5: U+2028 LINE SEPARATOR" in err, err


# -- fairseq-generate --task seq_kd ---------------------------------------------------------------------------
def seq_kd(data_bin, ckpt, out_dir, extra=(), umask=None, fsize=None):
    return run(["fairseq-generate", data_bin, "--user-dir", harness.USER_DIR, "--path", ckpt, "--cpu",
                "--gen-subset", "train", "--beam", "2", "--batch-size", "50", *harness.NO_DROP,
                "--task", "seq_kd", "--kd-output-dir", str(out_dir), *extra], umask=umask, fsize=fsize)


@pytest.fixture(scope="module")
def kd_run(word_order_bin, nll_checkpoint, tmp_path_factory):
    """One finished seq_kd run under umask 022: (folder, its files' bytes)."""
    out = tmp_path_factory.mktemp("kd") / "kd"
    proc = seq_kd(word_order_bin, nll_checkpoint, out, umask=0o022)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out, snapshot(out)


def test_seq_kd_into_the_raw_data_folder_is_refused(word_order_bin, nll_checkpoint, tmp_path):
    """Issue: --kd-output-dir naming the folder of the gold train.src/train.tgt replaced the gold targets."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("train.src", "train.tgt"):
        shutil.copy(os.path.join(os.path.dirname(word_order_bin), name), raw / name)
    before = snapshot(raw)
    proc = seq_kd(word_order_bin, nll_checkpoint, raw)
    assert proc.returncode != 0
    assert last_line(proc).startswith(f"fairseq_bso.safe_io.OutputRefused: --kd-output-dir {raw}: the output "
                                      f"{raw}/train.src exists and is a file {SEQ_KD} did not write"), last_line(proc)
    assert snapshot(raw) == before and "H-" not in proc.stdout  # nothing generated, nothing written


def test_seq_kd_output_dir_naming_a_file(word_order_bin, nll_checkpoint, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    proc = seq_kd(word_order_bin, nll_checkpoint, f)
    assert last_line(proc) == (f"fairseq_bso.safe_io.OutputRefused: --kd-output-dir: {f} is a file, not a folder: "
                               f"name a folder (it is created if missing)"), last_line(proc)
    assert f.read_text() == "mine\n"


def test_seq_kd_files_follow_the_umask_and_a_rerun_replaces_only_its_own_unchanged_files(
        kd_run, word_order_bin, nll_checkpoint, tmp_path):
    out, files = kd_run
    assert mode(out / "train.tgt") == mode(out / "train.src") == mode(out / ".seq_kd" / "train.manifest.json") == 0o644
    copy = tmp_path / "kd"
    shutil.copytree(out, copy)
    proc = seq_kd(word_order_bin, nll_checkpoint, copy)  # the same command again: allowed, same corpus
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (copy / "train.tgt").read_bytes() == files["train.tgt"]
    with open(copy / "train.tgt", "a") as f:  # the user edits the corpus: a rerun no longer overwrites it
        f.write("my own line\n")
    proc = seq_kd(word_order_bin, nll_checkpoint, copy)
    assert proc.returncode != 0 and f"the output {copy}/train.tgt exists and is a file {SEQ_KD} did not write (or " \
        f"one changed since it did" in last_line(proc), last_line(proc)
    assert (copy / "train.tgt").read_text().endswith("my own line\n")


def test_seq_kd_resume_against_other_data_of_the_same_shape_is_refused(kd_run, word_order_bin, nll_checkpoint,
                                                                        tmp_path):
    """Issue: a run into a finished run's folder with other data of the same shape and teacher reported
    "60 already in the log, 0 to generate" and kept the old data's corpus."""
    out, files = kd_run
    raw = tmp_path / "other"
    raw.mkdir()
    data = os.path.dirname(word_order_bin)
    for split in ("train", "valid", "test"):  # the same sentences, reversed word order: same shape, other data
        for side in ("src", "tgt"):
            with open(os.path.join(data, f"{split}.{side}")) as f:
                lines = [" ".join(reversed(line.split())) for line in f]
            (raw / f"{split}.{side}").write_text("\n".join(lines) + "\n")
    other_bin = harness.preprocess(str(raw), joined=False, extra=["--srcdict", f"{word_order_bin}/dict.src.txt",
                                                                   "--tgtdict", f"{word_order_bin}/dict.tgt.txt"])
    copy = tmp_path / "kd"
    shutil.copytree(out, copy)
    proc = seq_kd(other_bin, nll_checkpoint, copy)
    assert proc.returncode != 0
    last = last_line(proc)
    assert last.startswith("fairseq_bso.distill.corpus.SettingsMismatch: ") and "was generated from other data" in last
    assert f"data (the data folder): ['{word_order_bin}'] -> ['{other_bin}']" in last, last
    assert "data_sha256 (the SHA-256 of the subset's binarized files and dictionaries (other data))" in last, last
    assert snapshot(copy) == files


def test_seq_kd_with_another_teacher_is_refused(kd_run, word_order_bin, nll_checkpoint, tmp_path):
    out, files = kd_run
    state = torch.load(nll_checkpoint, weights_only=False)
    state["model"]["decoder.fc_out.bias"] += 1e-3  # same shapes, other weights
    teacher = str(tmp_path / "other_teacher.pt")
    torch.save(state, teacher)
    copy = tmp_path / "kd"
    shutil.copytree(out, copy)
    proc = seq_kd(word_order_bin, teacher, copy)
    assert proc.returncode != 0 and "teacher_sha256 (the SHA-256 of the teacher's weights (another checkpoint))" in \
        last_line(proc), last_line(proc)
    assert snapshot(copy) == files


def test_seq_kd_full_disk_names_the_log_and_the_rerun_finishes(word_order_bin, nll_checkpoint, tmp_path, kd_run):
    out = tmp_path / "kd"
    proc = seq_kd(word_order_bin, nll_checkpoint, out, fsize=6000)
    assert proc.returncode != 0
    assert last_line(proc).startswith(f"fairseq_bso.safe_io.WriteError: {out}/.seq_kd/train.shard0of1.jsonl: cannot "
                                      f"write (File too large)"), last_line(proc)
    assert not (out / "train.tgt").exists()
    assert seq_kd(word_order_bin, nll_checkpoint, out).returncode == 0  # room again: the same command finishes
    assert (out / "train.tgt").read_bytes() == kd_run[1]["train.tgt"]


# -- checkpoints ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_nonfinite_weights_is_named_by_parameter(word_order_bin, nll_checkpoint, tmp_path, value):
    state = torch.load(nll_checkpoint, weights_only=False)
    state["model"]["decoder.fc_out.weight"][3, 5] = value
    state["model"]["encoder.embed_tokens.weight"][2, :] = value
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    n = state["model"]["encoder.embed_tokens.weight"].numel()
    m = state["model"]["decoder.fc_out.weight"].numel()
    expected = (f"checkpoint {bad} has non-finite weights (NaN or infinity) in 2 parameter(s): "
                f"encoder.embed_tokens.weight (16 of {n:,} values, first at [2, 0]), decoder.fc_out.weight (1 of "
                f"{m:,} values, first at [3, 5]); it cannot be used")
    proc = harness.generate(word_order_bin, bad, check=False)
    assert last_line(proc).startswith("fairseq_bso.fairseq_fixes.checkpoint_files.NonFiniteCheckpoint: " + expected), \
        last_line(proc)
    proc = run(["fairseq-bso-prune", "stats", bad])
    assert proc.returncode == 1 and last_line(proc).startswith("fairseq-bso-prune: " + expected), last_line(proc)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_legacy_format_pickle_with_code_is_refused_naming_the_global(word_order_bin, tmp_path):
    """Issue: a legacy-format (pre-zip) malicious pickle was reported as "truncated or not a fairseq checkpoint"."""
    bad = str(tmp_path / "legacy.pt")
    with open(bad, "wb") as f:
        torch.save({"model": {}, "x": _RunsCode()}, f, _use_new_zipfile_serialization=False)
    expected = (f"refusing checkpoint {bad}: it holds the pickled Python global posix.system, which fairseq "
                f"checkpoints do not hold; safe loading (weights_only) blocks it")
    proc = harness.generate(word_order_bin, bad, check=False)
    assert proc.returncode != 0 and "pwned" not in proc.stdout
    assert last_line(proc).startswith("fairseq_bso.fairseq_fixes.checkpoint_files.UnsafeCheckpoint: " + expected), \
        last_line(proc)
    assert "weights_only` set to `False`" not in proc.stdout
    proc = run(["fairseq-bso-prune", "export", bad, str(tmp_path / "out.pt")])
    assert last_line(proc).startswith("fairseq-bso-prune: " + expected) and "pwned" not in proc.stdout, \
        last_line(proc)
    plain = str(tmp_path / "plain.pkl")  # a plain pickle, not torch's format: still named, still not run
    with open(plain, "wb") as f:
        pickle.dump({"x": _RunsCode()}, f)
    proc = run(["fairseq-bso-prune", "stats", plain])
    assert proc.returncode == 1 and "pwned" not in proc.stdout, proc.stdout
    assert last_line(proc) == (f"fairseq-bso-prune: cannot read checkpoint {plain} ({os.path.getsize(plain)} bytes): "
                               f"the file is truncated or not a fairseq checkpoint (UnpicklingError: Unsupported "
                               f"operand 149)"), last_line(proc)


# -- fairseq-bso-prune export / densify ------------------------------------------------------------------------------
@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"model": {"a.weight": torch.tensor([[0.0, 1.5], [0.0, -2.0]]), "b.bias": torch.ones(2)},
                "cfg": None, "args": None, "last_optimizer_state": {"step": 7}}, path)
    return path


def test_prune_export_over_its_input_is_refused(tiny_checkpoint):
    """Issue: `fairseq-bso-prune export ck.pt ck.pt` (or --sparse ck.pt) overwrote the training checkpoint."""
    ck = str(tiny_checkpoint)
    before = tiny_checkpoint.read_bytes()
    for argv, out in ((["export", ck, ck], ck), (["export", ck, ck + ".out", "--sparse", ck], ck)):
        proc = run(["fairseq-bso-prune", *argv])
        assert proc.returncode == 1 and last_line(proc) == (
            f"fairseq-bso-prune export: error: the output {out} is the input {ck}: writing it would destroy the "
            f"input; choose another output path"), last_line(proc)
    assert tiny_checkpoint.read_bytes() == before and not os.path.exists(ck + ".out")


def test_prune_export_and_densify_to_a_missing_folder(tiny_checkpoint, tmp_path):
    """Issue: both ended in raw tracebacks."""
    ck = str(tiny_checkpoint)
    proc = run(["fairseq-bso-prune", "export", ck, str(tmp_path / "no" / "x.pt")])
    assert last_line(proc) == (f"fairseq-bso-prune export: error: cannot write {tmp_path}/no/x.pt: the folder "
                               f"{tmp_path}/no does not exist (create it first)"), last_line(proc)
    assert run(["fairseq-bso-prune", "export", ck, str(tmp_path / "e.pt"), "--sparse",
                str(tmp_path / "e.sparse")], umask=0o022).returncode == 0
    assert mode(tmp_path / "e.pt") == mode(tmp_path / "e.sparse") == 0o644
    proc = run(["fairseq-bso-prune", "densify", str(tmp_path / "e.sparse"), str(tmp_path / "no" / "d.pt")])
    assert last_line(proc) == (f"fairseq-bso-prune densify: error: cannot write {tmp_path}/no/d.pt: the folder "
                               f"{tmp_path}/no does not exist (create it first)"), last_line(proc)


def prune_main(argv):
    with pytest.raises(SystemExit) as e:
        prune_cli.main(argv)
    return str(e.value.code)


def test_prune_outputs_by_other_paths_and_foreign_files(tiny_checkpoint, tmp_path):
    ck = str(tiny_checkpoint)
    before = tiny_checkpoint.read_bytes()
    os.symlink(ck, tmp_path / "link.pt")
    os.link(ck, tmp_path / "hard.pt")
    assert prune_main(["export", ck, str(tmp_path / "link.pt"), "--force"]).endswith(
        f"the output {tmp_path}/link.pt is the input {ck} (a symlink to it): writing it would destroy the input; "
        f"choose another output path")
    assert "(a hard link of it)" in prune_main(["export", ck, str(tmp_path / "hard.pt"), "--force"])
    assert "is the input" in prune_main(["export", ck, str(tmp_path / "sub" / ".." / "ck.pt")])
    assert "the outputs" in prune_main(["export", ck, str(tmp_path / "o.pt"), "--sparse", str(tmp_path / "o.pt")])
    assert tiny_checkpoint.read_bytes() == before
    other = tmp_path / "other.pt"
    other.write_text("someone else's file\n")
    msg = prune_main(["export", ck, str(other)])
    assert f"the output {other} exists and is a file fairseq-bso-prune export did not write" in msg and \
        "pass --force to overwrite it" in msg, msg
    assert other.read_text() == "someone else's file\n"
    prune_cli.main(["export", ck, str(other), "--force"])
    prune_cli.main(["export", ck, str(other)])  # its own, unchanged output: replaced without --force
    assert torch.load(str(other))["model"]["b.bias"].tolist() == [1.0, 1.0]
    assert "last_optimizer_state" not in torch.load(str(other)) and "last_optimizer_state" in torch.load(ck)
    assert "not a fairseq-bso-sparse-v1 file" in prune_main(["densify", ck, str(tmp_path / "d.pt")])


# -- fairseq-bso-parsing ----------------------------------------------------------------------------------------
CONLL = "1\tThe\tthe\tDET\t_\t_\t2\tdet\t_\t_\n2\tcat\tcat\tNOUN\t_\t_\t0\troot\t_\t_\n\n"


def parsing_main(argv, capsys):
    code = parsing.main(argv)
    return code, capsys.readouterr().err.strip()


def test_parsing_to_actions_refuses_its_input_and_foreign_files(tmp_path, capsys):
    gold = tmp_path / "data.src"  # a CoNLL file whose name is an output of the prefix "data"
    gold.write_text(CONLL)
    code, err = parsing_main(["to-actions", str(gold), str(tmp_path / "data")], capsys)
    assert code == 2 and err == (f"fairseq-bso-parsing: error: to-actions {tmp_path}/data: the output "
                                 f"{tmp_path}/data.src is the input {gold}: writing it would destroy the input; "
                                 f"choose another output path"), err
    assert gold.read_text() == CONLL
    (tmp_path / "p.tgt").write_text("mine\n")
    code, err = parsing_main(["to-actions", str(gold), str(tmp_path / "p")], capsys)
    assert code == 2 and "p.tgt exists and is a file fairseq-bso-parsing to-actions did not write" in err, err
    assert parsing.main(["to-actions", str(gold), str(tmp_path / "p"), "--force"]) == 0
    assert (tmp_path / "p.tgt").read_text() == "The cat @L_det\n"
    assert parsing.main(["to-actions", str(gold), str(tmp_path / "p")]) == 0  # its own output again


def test_parsing_reads_conll_words_as_fairseq_will_split_them(tmp_path, capsys):
    """A word holding a no-break space would be two tokens for fairseq: written with "_" like a space; a BOM,
    a zero-width space in a word or a CR in a line is refused naming the line."""
    nbsp = tmp_path / "nbsp.conllu"
    nbsp.write_text("1\tNew\u00a0York\tny\tPROPN\t_\t_\t0\troot\t_\t_\n\n")
    assert parsing.main(["to-actions", str(nbsp), str(tmp_path / "n")]) == 0
    assert (tmp_path / "n.src").read_text() == "New_York\n"
    capsys.readouterr()
    for data, where in (("\ufeff" + CONLL, "1:1: U+FEFF at the start"), (CONLL.replace("cat", "c\u200bat"), "2:4: the "
                        "invisible character U+200B"), (CONLL.replace("det\t", "det\r"), "1:24: a carriage return")):
        bad = tmp_path / "bad.conllu"
        bad.write_text(data, encoding="utf-8", newline="")
        code, err = parsing_main(["to-actions", str(bad), str(tmp_path / "b")], capsys)
        assert code == 2 and err.startswith(f"fairseq-bso-parsing: error: {bad}:{where}"), err


def test_parsing_evaluate_refuses_a_log_of_two_runs_or_several_hypotheses(tmp_path, capsys):
    gold = tmp_path / "gold.conllu"
    gold.write_text(CONLL)
    one = "S-0\tThe cat\nH-0\t-0.1\tThe cat @L_det\n"
    log = tmp_path / "gen.out"
    log.write_text(one + one)  # `>>` twice into one file
    code, err = parsing_main(["evaluate", str(gold), str(log)], capsys)
    assert code == 2 and err == (f"fairseq-bso-parsing: error: {log}:3: a second S-0 line (the first is line 1): "
                                 f"the file holds more than one fairseq-generate run; keep one run per file"), err
    log.write_text(one + "H-0\t-0.2\tThe @R_det cat\n")  # --nbest 2
    code, err = parsing_main(["evaluate", str(gold), str(log)], capsys)
    assert code == 2 and err.startswith(f"fairseq-bso-parsing: error: {log}:3: a second H-0 line (the first is "
                                        f"line 2): more than one hypothesis for sentence 0"), err
    log.write_text(one)
    assert parsing.main(["evaluate", str(gold), str(log)]) == 0


# -- the writer module itself -------------------------------------------------------------------------------------
def test_write_json_and_write_with_are_atomic_follow_the_umask_and_name_the_file(tmp_path):
    old = os.umask(0o027)
    try:
        safe_io.write_json(str(tmp_path / "r.json"), {"a": 1}, indent=1)
        assert mode(tmp_path / "r.json") == 0o640 and (tmp_path / "r.json").read_text() == '{\n "a": 1\n}\n'
    finally:
        os.umask(old)

    def failing(path):
        with open(path, "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(safe_io.WriteError, match=f"^{tmp_path}/r.json: cannot write \\(No space left on device\\)"):
        safe_io.write_with(str(tmp_path / "r.json"), failing)
    assert (tmp_path / "r.json").read_text() == '{\n "a": 1\n}\n' and sorted(os.listdir(tmp_path)) == ["r.json"]
