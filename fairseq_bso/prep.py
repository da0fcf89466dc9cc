"""Data pipelines: word ordering and sentencepiece translation corpora.

Both pipelines read plain text, check it line by line and write the files that
``fairseq-preprocess`` binarizes.  Bad input raises :class:`DataError` naming the
file and line at fault; nothing is written until a whole split has passed the
checks, and the whole output (text files, sentencepiece model, ``bin/``) is
written into a temporary folder inside ``--out`` and renamed into place only once
everything has been written (``fairseq_bso.safe_io.StagedOutputs``): an error leaves
the old output whole, never a mix of two corpora.

Outputs never destroy data: an output that is one of the inputs (same path, a
symlink or a hard link), or an existing file the command did not write itself (see
the ledger in ``fairseq_bso.safe_io``), is refused naming both paths (``--force``
overwrites the latter, never an input).  Files get the umask's permissions.

Input text is read by ``fairseq_bso.safe_io.read_text_lines``: a byte-order mark,
NUL and control characters, a carriage return inside a line, Unicode line
separators, zero-width and other invisible format characters, and tabs are refused
naming file, line and column (CR LF line ends are fine).

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
from typing import Iterable, List, Sequence, Tuple

from .safe_io import DataError, OutputRefused, StagedOutputs, WriteError, read_text_lines, write_lines

COMMAND = "fairseq-bso-prep"
BIN = "bin"


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


def read_lines(path: str, tabs: bool = False) -> List[str]:
    """Read a text file (optionally gzipped): refuse missing, empty, non-UTF-8 files and text that is not what
    it looks like (``safe_io.read_text_lines``; ``tabs`` allows tabs, e.g. for CoNLL columns)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    opener = (lambda p: gzip.open(p, "rb")) if path.endswith(".gz") else None
    lines = read_text_lines(path, tabs=tabs, opener=opener)
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    return lines


def write_atomic(path: str, lines: Iterable[str]) -> None:
    """Write lines to ``path`` through a temporary file renamed into place (``safe_io.write_lines``; no
    clobber check: callers check their outputs with ``safe_io.check_outputs`` first)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_lines(path, lines)


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
                       binarize: bool = True, force: bool = False) -> None:
    """Word-ordering corpus: ``out/{train,valid,test}.{src,tgt}`` and ``out/bin``, as one staged output."""
    inputs = [train, valid, test]
    names = [f"{split}.{side}" for split in ("train", "valid", "test") for side in ("src", "tgt")] + [BIN]
    splits = {}
    for split, path in (("train", train), ("valid", valid), ("test", test)):
        splits[split] = (path, *word_order_pairs(path, max_tokens))
    with StagedOutputs(out, names, COMMAND, inputs=inputs, force=force, what=f"--out {out}") as staged:
        for split, (path, sources, targets, empty, too_long) in splits.items():
            write_lines(staged.path(f"{split}.src"), sources)
            write_lines(staged.path(f"{split}.tgt"), targets)
            print(f"{split}: {len(targets)} sentences from {path} "
                  f"({empty} empty lines skipped, {too_long} longer than {max_tokens} tokens dropped)",
                  flush=True)
        if binarize:
            fairseq_preprocess(staged.path(BIN), *(os.path.join(staged.tmp, s) for s in ("train", "valid", "test")),
                               src="src", tgt="tgt", joined=True)
        staged.commit()


def prepare_translation(prefix_train: str, prefix_valid: str, prefix_test: str, src: str, tgt: str,
                        out: str, vocab_size: int = 8000, binarize: bool = True, force: bool = False) -> None:
    """sentencepiece translation corpus: a joint model trained on the training side only; one staged output."""
    import sentencepiece as spm

    prefixes = (("train", prefix_train), ("valid", prefix_valid), ("test", prefix_test))
    inputs = [f"{prefix}.{lang}" for _, prefix in prefixes for lang in (src, tgt)]
    names = (["spm.model", "spm.vocab"] + [f"{split}{kind}.{lang}" for split, _ in prefixes for kind in ("", ".spm")
                                           for lang in (src, tgt)] + [BIN])
    splits = {}
    for split, prefix in prefixes:
        s, t, empty = read_parallel(f"{prefix}.{src}", f"{prefix}.{tgt}")
        splits[split] = (s, t)
        print(f"{split}: {len(s)} pairs from {prefix}.{{{src},{tgt}}} ({empty} empty pairs skipped)", flush=True)
    with StagedOutputs(out, names, COMMAND, inputs=inputs, force=force, what=f"--out {out}") as staged:
        raw = os.path.join(staged.tmp, "spm_train.txt")
        write_lines(raw, splits["train"][0] + splits["train"][1])
        model_prefix = os.path.join(staged.tmp, "spm")
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
                write_lines(staged.path(f"{split}.spm.{lang}"),
                            (" ".join(p) for p in sp.encode(lines, out_type=str)))
                write_lines(staged.path(f"{split}.{lang}"), lines)
        if binarize:
            fairseq_preprocess(staged.path(BIN),
                               *(os.path.join(staged.tmp, f"{s}.spm") for s in ("train", "valid", "test")),
                               src=src, tgt=tgt, joined=True)
        staged.commit()


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
    wo.add_argument("--force", action="store_true",
                    help="overwrite existing outputs this command did not write (never one of the inputs)")
    tr = sub.add_parser("translation", help="sentencepiece + binarize a parallel corpus")
    tr.add_argument("--trainpref", required=True)
    tr.add_argument("--validpref", required=True)
    tr.add_argument("--testpref", required=True)
    tr.add_argument("--source-lang", required=True)
    tr.add_argument("--target-lang", required=True)
    tr.add_argument("--out", required=True)
    tr.add_argument("--vocab-size", type=int, default=8000)
    tr.add_argument("--no-binarize", action="store_true")
    tr.add_argument("--force", action="store_true",
                    help="overwrite existing outputs this command did not write (never one of the inputs)")
    args = parser.parse_args(argv)
    try:
        if args.command == "word-order":
            if args.max_tokens < 0:
                parser.error("--max-tokens must be >= 0")
            prepare_word_order(args.train, args.valid, args.test, args.out, args.max_tokens,
                               binarize=not args.no_binarize, force=args.force)
        else:
            if args.vocab_size < 10:
                parser.error("--vocab-size must be >= 10")
            prepare_translation(args.trainpref, args.validpref, args.testpref, args.source_lang,
                                args.target_lang, args.out, args.vocab_size, binarize=not args.no_binarize,
                                force=args.force)
    except (DataError, OutputRefused, WriteError) as e:
        print(f"fairseq-bso-prep: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"fairseq-bso-prep: error: {' '.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
