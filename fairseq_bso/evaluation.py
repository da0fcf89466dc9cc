"""Read ``fairseq-generate`` output and score it with sacrebleu."""

import re
from typing import Dict, List, Optional, Sequence

_HYP_RE = re.compile(r"^H-(\d+)\t(\S+)\t(.*)$")
_DETOK_RE = re.compile(r"^D-(\d+)\t(\S+)\t(.*)$")
_SPEED_RE = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s")


def parse_hypotheses(text: str, expected: Optional[int] = None, detok: bool = False) -> List[str]:
    """The first (best) hypothesis per sentence, in sample-id order.

    ``fairseq-generate`` prints batches in length-sorted order; this restores the
    order of the input file.  ``detok`` reads the ``D-`` lines (after
    ``--post-process``) instead of the ``H-`` lines.  ``expected`` is the number of
    sentences the subset holds: fewer is an error (fairseq >= 0.12.3 drops the
    last partial batch unless ``--required-batch-size-multiple 1``).
    """
    pattern = _DETOK_RE if detok else _HYP_RE
    best: Dict[int, str] = {}
    for line in text.splitlines():
        m = pattern.match(line)
        if m:
            best.setdefault(int(m.group(1)), m.group(3))
    if not best:
        raise ValueError("no hypotheses found in fairseq-generate output")
    n = max(best) + 1 if expected is None else expected
    missing = [i for i in range(n) if i not in best]
    if missing:
        raise ValueError(f"fairseq-generate output lacks {len(missing)} sentence ids (first: {missing[:10]}); "
                         "pass --required-batch-size-multiple 1")
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
