"""Read ``fairseq-generate`` output and score it with sacrebleu."""

import re
from typing import Dict, List, Optional, Sequence

_HYP_RE = re.compile(r"^H-(\d+)\t(\S+)\t(.*)$")
_DETOK_RE = re.compile(r"^D-(\d+)\t(\S+)\t(.*)$")
_SRC_RE = re.compile(r"^S-(\d+)\t")
_SPEED_RE = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")


def parse_hypotheses(text: str, expected: Optional[int] = None, detok: bool = False,
                     source: str = "fairseq-generate output", nbest: bool = False) -> List[str]:
    """The first (best) hypothesis per sentence, in sample-id order.

    ``fairseq-generate`` prints batches in length-sorted order; this restores the
    order of the input file.  ``detok`` reads the ``D-`` lines (after
    ``--post-process``) instead of the ``H-`` lines.  ``expected`` is the number of
    sentences the subset holds: fewer is an error (fairseq >= 0.12.3 drops the
    last partial batch unless ``--required-batch-size-multiple 1``).

    A log holding more than one run (an ``S-`` line, or without ``S-`` lines an ``H-``/``D-``
    line, twice for one id, e.g. two runs appended to one file) is refused, and so is more
    than one hypothesis per id (the output of ``--nbest`` > 1) unless ``nbest``: then the
    first of an id's hypotheses, fairseq's best, is kept.  Errors name ``source`` and the line.
    """
    pattern = _DETOK_RE if detok else _HYP_RE
    best: Dict[int, str] = {}
    first_line: Dict[int, int] = {}
    seen_src: Dict[int, int] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("S-"):
            m = _SRC_RE.match(line)
            if m:
                sid = int(m.group(1))
                if sid in seen_src:
                    raise ValueError(f"{source}:{number}: a second S-{sid} line (the first is line {seen_src[sid]}): "
                                     f"the file holds more than one fairseq-generate run; keep one run per file")
                seen_src[sid] = number
            continue
        m = pattern.match(line)
        if m:
            sid = int(m.group(1))
            if sid in best:
                if not nbest or (seen_src and seen_src.get(sid, 0) > first_line[sid]):
                    kind = "D" if detok else "H"
                    raise ValueError(
                        f"{source}:{number}: a second {kind}-{sid} line (the first is line {first_line[sid]}): more "
                        f"than one hypothesis for sentence {sid} (--nbest > 1, or more than one run in the file); "
                        f"rerun fairseq-generate with --nbest 1 into a file of its own")
                continue
            best[sid] = m.group(3)
            first_line[sid] = number
    if not best:
        raise ValueError(f"{source}: no hypotheses found in fairseq-generate output")
    n = max(best) + 1 if expected is None else expected
    missing = [i for i in range(n) if i not in best]
    if missing:
        raise ValueError(f"{source}: fairseq-generate output lacks {len(missing)} sentence ids (first: "
                         f"{missing[:10]}); pass --required-batch-size-multiple 1")
    extra = sorted(i for i in best if i >= n)
    if extra:
        raise ValueError(f"{source}: fairseq-generate output holds sentence ids beyond the {n} expected (first: "
                         f"{extra[:10]}): the output of other data")
    return [best[i] for i in range(n)]


def generation_speed(text: str) -> Optional[Dict[str, float]]:
    """Sentences, tokens and seconds from fairseq-generate's closing line."""
    m = _SPEED_RE.search(text)
    if not m:
        return None
    return {"sentences": int(m.group(1).replace(",", "")),
            "tokens": int(m.group(2).replace(",", "")),
            "seconds": float(m.group(3))}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], tokenized: bool) -> float:
    """sacrebleu corpus BLEU.  ``tokenized=True`` scores text as it is (tokenize='none');
    otherwise sacrebleu's standard 13a tokenization on detokenized text."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)],
                                 tokenize="none" if tokenized else "13a", force=tokenized)
    return float(bleu.score)
