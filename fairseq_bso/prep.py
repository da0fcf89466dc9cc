"""Data pipelines: word ordering and sentencepiece translation corpora.

Both pipelines read plain text, check it line by line and write the files that
``fairseq-preprocess`` binarizes.  Bad input raises :class:`DataError` naming the
file and line at fault; nothing is written until a whole split has passed the
checks, and every file is written atomically (temporary file + rename), so a
failed or interrupted run never leaves a half-written corpus behind.

Policy on empty lines: *skipped and counted* (a parallel pair is skipped when
either side is empty); the count is printed.  Empty files and parallel files
whose line counts differ are refused.
"""

import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
from typing import Iterable, List, Sequence, Tuple


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


_TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)*|[^\sa-z0-9]")


def tokenize(line: str) -> List[str]:
    """Lowercase and split words from punctuation (deterministic, no model)."""
    return _TOKEN_RE.findall(line.lower())


def scramble(tokens: Sequence[str]) -> List[str]:
    """The canonical scrambled order of a word-ordering source: sorted tokens."""
    return sorted(tokens)


def open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_lines(path: str) -> List[str]:
    """Read a text file (optionally gzipped); refuse missing, empty or non-UTF-8 files."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with open_text(path) as f:
            lines = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    return lines


def write_atomic(path: str, lines: Iterable[str]) -> None:
    """Write lines to ``path`` through a temporary file renamed into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def word_order_pairs(path: str, max_tokens: int = 0) -> Tuple[List[str], List[str], int, int]:
    """Build (sources, targets) for word ordering from one sentence per line.

    Returns the sources, targets, the number of empty lines skipped and the number
    of sentences dropped for being longer than ``max_tokens`` (0 = no limit).
    """
    sources, targets, empty, too_long = [], [], 0, 0
    for line in read_lines(path):
        tokens = tokenize(line)
        if not tokens:
            empty += 1
            continue
        if max_tokens and len(tokens) > max_tokens:
            too_long += 1
            continue
        targets.append(" ".join(tokens))
        sources.append(" ".join(scramble(tokens)))
    if not targets:
        raise DataError(f"{path}: no usable sentence (all empty or longer than {max_tokens} tokens)")
    return sources, targets, empty, too_long


def read_parallel(src_path: str, tgt_path: str) -> Tuple[List[str], List[str], int]:
    """Read a parallel corpus; refuse differing line counts, skip empty pairs."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
            "a parallel corpus needs one line per segment on both sides"
        )
    keep_src, keep_tgt, empty = [], [], 0
    for s, t in zip(src, tgt):
        if not s.strip() or not t.strip():
            empty += 1
            continue
        keep_src.append(s.strip())
        keep_tgt.append(t.strip())
    return keep_src, keep_tgt, empty


def fairseq_preprocess(destdir: str, trainpref: str, validpref: str, testpref: str,
                       src: str, tgt: str, joined: bool, workers: int = 1,
                       extra: Sequence[str] = ()) -> None:
    cmd = [
        "fairseq-preprocess", "--source-lang", src, "--target-lang", tgt,
        "--trainpref", trainpref, "--validpref", validpref, "--testpref", testpref,
        "--destdir", destdir, "--workers", str(workers),
    ]
    if joined:
        cmd.append("--joined-dictionary")
    cmd.extend(extra)
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare_word_order(train: str, valid: str, test: str, out: str, max_tokens: int = 0,
                       binarize: bool = True) -> None:
    """Word-ordering corpus: ``out/{train,valid,test}.{src,tgt}`` and ``out/bin``."""
    for split, path in (("train", train), ("valid", valid), ("test", test)):
        sources, targets, empty, too_long = word_order_pairs(path, max_tokens)
        write_atomic(os.path.join(out, f"{split}.src"), sources)
        write_atomic(os.path.join(out, f"{split}.tgt"), targets)
        print(f"{split}: {len(targets)} sentences from {path} "
              f"({empty} empty lines skipped, {too_long} longer than {max_tokens} tokens dropped)",
              flush=True)
    if binarize:
        fairseq_preprocess(os.path.join(out, "bin"), *(os.path.join(out, s) for s in ("train", "valid", "test")),
                           src="src", tgt="tgt", joined=True)


def prepare_translation(prefix_train: str, prefix_valid: str, prefix_test: str, src: str, tgt: str,
                        out: str, vocab_size: int = 8000, binarize: bool = True) -> None:
    """sentencepiece translation corpus: a joint model trained on the training side only."""
    import sentencepiece as spm

    splits = {}
    for split, prefix in (("train", prefix_train), ("valid", prefix_valid), ("test", prefix_test)):
        s, t, empty = read_parallel(f"{prefix}.{src}", f"{prefix}.{tgt}")
        splits[split] = (s, t)
        print(f"{split}: {len(s)} pairs from {prefix}.{{{src},{tgt}}} ({empty} empty pairs skipped)", flush=True)
    os.makedirs(out, exist_ok=True)
    raw = os.path.join(out, "spm_train.txt")
    write_atomic(raw, splits["train"][0] + splits["train"][1])
    model_prefix = os.path.join(out, "spm")
    try:
        spm.SentencePieceTrainer.train(
            input=raw, model_prefix=model_prefix, vocab_size=vocab_size, character_coverage=1.0,
            model_type="unigram", input_sentence_size=2_000_000, shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000, num_threads=2, minloglevel=2,
            bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size too high (40). Please set it to a value <= 37."
        raise DataError(f"sentencepiece on {prefix_train}.{{{src},{tgt}}}: {e} (see --vocab-size)") from e
    finally:
        os.unlink(raw)
    sp = spm.SentencePieceProcessor(model_file=model_prefix + ".model")
    for split, (s, t) in splits.items():
        for lang, lines in ((src, s), (tgt, t)):
            write_atomic(os.path.join(out, f"{split}.spm.{lang}"),
                         (" ".join(p) for p in sp.encode(lines, out_type=str)))
            write_atomic(os.path.join(out, f"{split}.{lang}"), lines)
    if binarize:
        fairseq_preprocess(os.path.join(out, "bin"),
                           *(os.path.join(out, f"{s}.spm") for s in ("train", "valid", "test")),
                           src=src, tgt=tgt, joined=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fairseq-bso-prep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wo = sub.add_parser("word-order", help="word ordering from one English sentence per line")
    wo.add_argument("--train", required=True)
    wo.add_argument("--valid", required=True)
    wo.add_argument("--test", required=True)
    wo.add_argument("--out", required=True)
    wo.add_argument("--max-tokens", type=int, default=0, help="drop longer sentences (0: keep all)")
    wo.add_argument("--no-binarize", action="store_true")
    tr = sub.add_parser("translation", help="sentencepiece + binarize a parallel corpus")
    tr.add_argument("--trainpref", required=True)
    tr.add_argument("--validpref", required=True)
    tr.add_argument("--testpref", required=True)
    tr.add_argument("--source-lang", required=True)
    tr.add_argument("--target-lang", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--vocab-size", type=int, default=8000)
    tr.add_argument("--no-binarize", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "word-order":
            if args.max_tokens < 0:
                parser.error("--max-tokens must be >= 0")
            prepare_word_order(args.train, args.valid, args.test, args.out, args.max_tokens,
                               binarize=not args.no_binarize)
        else:
            if args.vocab_size < 10:
                parser.error("--vocab-size must be >= 10")
            prepare_translation(args.trainpref, args.validpref, args.testpref, args.source_lang,
                                args.target_lang, args.out, args.vocab_size, binarize=not args.no_binarize)
    except DataError as e:
        print(f"fairseq-bso-prep: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"fairseq-bso-prep: error: {' '.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
