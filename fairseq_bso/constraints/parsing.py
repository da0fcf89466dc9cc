"""Dependency parsing as sequence-to-sequence: arc-standard transitions.

The source is the sentence's words; the target interleaves the shifted words
with reduce actions ``@L_label`` (the stack top s0 becomes the head of s1) and
``@R_label`` (s1 becomes the head of s0), the final ROOT arc removed: exactly
2n − 1 actions for n words.

* :func:`oracle` — the static arc-standard oracle: tree → actions (None for a
  non-projective tree, or one without a single root).
* :func:`projectivize` — a projective, single-rooted tree close to a given one (lifting).
* :func:`actions_to_tree` — actions → (heads, labels), with a well-formedness flag.
* ``fairseq-bso-parsing to-actions`` converts a CoNLL-U (UD) or CoNLL-X file into
  ``.src``/``.tgt`` text for ``fairseq-preprocess --joined-dictionary``;
  ``fairseq-bso-parsing evaluate`` scores ``fairseq-generate`` output against every
  gold tree of the file (non-projective ones included), by the standard protocol:
  UAS/LAS without punctuation (CoNLL-U: UPOS ``PUNCT``; CoNLL-X: the PTB punctuation
  tags in :data:`PTB_PUNCT_TAGS`), as Chen and Manning (2014) and the BSO paper on
  PTB-SD; ``--punct`` scores every token.
"""

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..evaluation import parse_hypotheses
from ..prep import DataError, read_lines
from ..safe_io import OutputRefused, WriteError, write_outputs

_SPACE_RE = re.compile(r"\s")

LEFT, RIGHT = "@L_", "@R_"
UNK = "<unk>"  # how fairseq prints a word outside the dictionary (S- and H- lines)
# The universal POS tags of CoNLL-U (column 4); punctuation is PUNCT there.
UPOS_TAGS = frozenset("ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split())
# Punctuation in CoNLL-X PTB treebanks (column 5, the PTB tag): the tags Chen and Manning (2014)
# exclude from UAS/LAS on PTB-SD (the BSO paper follows them).
PTB_PUNCT_TAGS = frozenset(["``", "''", ",", ".", ":"])


@dataclass
class Tree:
    words: List[str]
    heads: List[int]  # 1-based head of each word, 0 = root
    labels: List[str]
    line: int = 0  # first line of the sentence in its file
    upos: List[str] = field(default_factory=list)  # column 4: UPOS (CoNLL-U) or CPOSTAG (CoNLL-X)
    xpos: List[str] = field(default_factory=list)  # column 5: XPOS (CoNLL-U) or POSTAG (CoNLL-X)


def is_reduce(token: str) -> bool:
    return token.startswith(LEFT) or token.startswith(RIGHT)


def read_conll(path: str) -> List[Tree]:
    """Sentences of a CoNLL-U or CoNLL-X file (comments, multiword tokens and empty nodes skipped)."""
    trees, words, heads, labels, upos, xpos, start = [], [], [], [], [], [], 0
    for number, line in enumerate(read_lines(path, tabs=True) + [""], 1):
        line = line.strip()
        if not line:
            if words:
                trees.append(Tree(words, heads, labels, start, upos, xpos))
            words, heads, labels, upos, xpos = [], [], [], [], []
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 8:
            raise DataError(f"{path}:{number}: expected 10 tab-separated CoNLL columns, found {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue  # multiword token range or empty node
        if not words:
            start = number
        try:
            if int(cols[0]) != len(words) + 1:
                raise DataError(f"{path}:{number}: word id {cols[0]}, expected {len(words) + 1}")
            head = int(cols[6])
        except ValueError as e:
            raise DataError(f"{path}:{number}: word id and head must be integers ({e})") from e
        # a space (or NBSP, or any Unicode space) inside a word or label would split it into two tokens for
        # fairseq, and the sentence would no longer line up with its tree
        words.append(_SPACE_RE.sub("_", cols[1]))
        heads.append(head)
        labels.append(_SPACE_RE.sub("_", cols[7]))
        upos.append(cols[3])
        xpos.append(cols[4])
    for tree in trees:
        n = len(tree.words)
        if any(h < 0 or h > n for h in tree.heads):
            raise DataError(f"{path}:{tree.line}: a head points outside the sentence")
    return trees


def oracle(tree: Tree) -> Optional[List[str]]:
    """Static arc-standard oracle; None when the tree is not projective (or has several roots)."""
    n = len(tree.words)
    if sum(1 for h in tree.heads if h == 0) != 1:
        return None
    pending = [0] * (n + 1)  # dependents not yet attached
    for h in tree.heads:
        pending[h] += 1
    stack: List[int] = []
    buffer = 1
    actions: List[str] = []
    while buffer <= n or len(stack) > 1:
        if len(stack) >= 2:
            s0, s1 = stack[-1], stack[-2]
            if tree.heads[s1 - 1] == s0:
                actions.append(LEFT + tree.labels[s1 - 1])
                pending[s0] -= 1
                del stack[-2]
                continue
            if tree.heads[s0 - 1] == s1 and pending[s0] == 0:
                actions.append(RIGHT + tree.labels[s0 - 1])
                pending[s1] -= 1
                stack.pop()
                continue
        if buffer > n:
            return None  # stuck: non-projective
        actions.append(tree.words[buffer - 1])
        stack.append(buffer)
        buffer += 1
    return actions


def _descends(heads: Sequence[int], k: int, h: int) -> bool:
    """Whether word k is h or below h (1-based heads; False on a cycle)."""
    for _ in range(len(heads) + 1):
        if k == h:
            return True
        if k == 0:
            return False
        k = heads[k - 1]
    return False


def projectivize(tree: Tree) -> Optional[Tree]:
    """A projective, single-rooted tree close to ``tree``, with the same words and labels.

    Extra roots are attached to the first root; then, while an arc crosses a word that is not
    below its head, the shortest such arc is lifted (its dependent attaches to its head's head,
    Nivre and Nilsson 2005 without label encoding). None when the heads hold a cycle.
    """
    heads = list(tree.heads)
    roots = [i + 1 for i, h in enumerate(heads) if h == 0]
    if not roots:
        return None
    for r in roots[1:]:
        heads[r - 1] = roots[0]
    if not all(_descends(heads, d, roots[0]) for d in range(1, len(heads) + 1)):
        return None  # a cycle
    while True:
        crossing = [(abs(h - d), d) for d, h in enumerate(heads, 1) if h != 0 and
                    not all(_descends(heads, k, h) for k in range(min(h, d) + 1, max(h, d)))]
        if not crossing:
            break
        d = min(crossing)[1]
        heads[d - 1] = heads[heads[d - 1] - 1]
    return Tree(list(tree.words), heads, list(tree.labels), tree.line, list(tree.upos), list(tree.xpos))


def actions_to_tree(words: Sequence[str], actions: Sequence[str],
                    root_label: str = "root") -> Tuple[List[int], List[str], bool]:
    """Replay actions; returns heads (1-based, 0 = root), labels, and whether the sequence was
    well-formed (each shift the next word, reduces with two stack items, one item left).

    ``words`` are the source words as the model saw them: fairseq's ``<unk>`` where a word is
    outside the dictionary, so a shift of ``<unk>`` there is the right shift. The items left on
    the stack attach to the root with ``root_label``."""
    n = len(words)
    heads, labels = [0] * n, [root_label] * n
    stack: List[int] = []
    buffer, ok = 1, True
    for action in actions:
        if is_reduce(action):
            if len(stack) < 2:
                ok = False
                continue
            s0, s1 = stack[-1], stack[-2]
            if action.startswith(LEFT):
                heads[s1 - 1], labels[s1 - 1] = s0, action[len(LEFT):]
                del stack[-2]
            else:
                heads[s0 - 1], labels[s0 - 1] = s1, action[len(RIGHT):]
                stack.pop()
        else:
            if buffer > n or action != words[buffer - 1]:
                ok = False
            if buffer <= n:
                stack.append(buffer)
                buffer += 1
    ok = ok and buffer == n + 1 and len(stack) == 1 and len(actions) == 2 * n - 1
    for item in stack:
        heads[item - 1], labels[item - 1] = 0, root_label
    return heads, labels, ok


def conll_format(trees: Sequence[Tree]) -> str:
    """``conllu`` when every tag given in column 4 is a universal POS tag, else ``conllx``."""
    tags = {t for tree in trees for t in tree.upos if t != "_"}
    return "conllu" if tags and tags <= UPOS_TAGS else "conllx"


def punctuation(tree: Tree, fmt: str) -> List[bool]:
    """Which words are punctuation: UPOS ``PUNCT`` (CoNLL-U), a PTB punctuation tag (CoNLL-X)."""
    if fmt == "conllu":
        return [t == "PUNCT" for t in tree.upos]
    return [t in PTB_PUNCT_TAGS for t in tree.xpos]


def root_label(trees: Sequence[Tree]) -> str:
    """The label of the root words (head 0) in the gold trees; the most frequent one if several."""
    counts = Counter(label for tree in trees for h, label in zip(tree.heads, tree.labels) if h == 0)
    return counts.most_common(1)[0][0] if counts else "root"


def attachment_scores(gold: Sequence[Tree], predicted: Sequence[Sequence[str]],
                      sources: Optional[Sequence[Sequence[str]]] = None, punct: bool = False,
                      fmt: Optional[str] = None, root: Optional[str] = None) -> dict:
    """UAS/LAS (percent) of predicted action sequences against every gold tree.

    ``sources``: the words as the model saw them (``<unk>`` for unknown words; default the gold
    words). Punctuation (see :func:`punctuation`; ``fmt`` defaults to :func:`conll_format`) is
    left out unless ``punct``. The root label is ``root`` (default: :func:`root_label` of ``gold``).
    """
    fmt = fmt or conll_format(gold)
    root = root or root_label(gold)
    total = uas = las = wellformed = skipped = non_projective = 0
    for i, (tree, actions) in enumerate(zip(gold, predicted)):
        words = sources[i] if sources is not None else tree.words
        heads, labels, ok = actions_to_tree(words, actions, root)
        wellformed += ok
        non_projective += oracle(tree) is None
        for h, l, gh, gl, p in zip(heads, labels, tree.heads, tree.labels, punctuation(tree, fmt)):
            if p and not punct:
                skipped += 1
                continue
            total += 1
            uas += h == gh
            las += h == gh and l == gl
    return {"UAS": 100.0 * uas / max(total, 1), "LAS": 100.0 * las / max(total, 1),
            "well_formed": wellformed, "sentences": len(gold), "tokens": total, "punct_skipped": skipped,
            "non_projective": non_projective, "format": fmt, "root_label": root}


_SRC_RE = re.compile(r"^S-(\d+)\t(.*)$")


def read_generate_output(path: str, trees: Sequence[Tree]) -> Tuple[List[List[str]], List[List[str]]]:
    """(source words as the model saw them, best actions) per gold tree, from fairseq-generate output.

    The output must hold one sentence per gold tree, in the file's order: every S- line must be
    the gold sentence of its id, with ``<unk>`` allowed for any word."""
    text = "\n".join(read_lines(path, tabs=True))
    sources: Dict[int, List[str]] = {}
    for line in text.splitlines():
        m = _SRC_RE.match(line)
        if m:
            sources[int(m.group(1))] = m.group(2).split()
    try:
        hyps = parse_hypotheses(text, source=path)
    except ValueError as e:
        raise DataError(str(e)) from e
    if len(hyps) != len(trees):
        raise DataError(f"{path} holds {len(hyps)} sentences, the gold file {len(trees)}: translate every "
                        "sentence (to-actions --non-projective lift keeps the non-projective ones) and pass "
                        "--required-batch-size-multiple 1 to fairseq-generate")
    words = []
    for i, tree in enumerate(trees):
        src = sources.get(i, tree.words)
        if len(src) != len(tree.words) or any(s != w and s != UNK for s, w in zip(src, tree.words)):
            raise DataError(f"{path}: sentence {i} is '{' '.join(src)}' but gold sentence {i} (line {tree.line}) "
                            f"is '{' '.join(tree.words)}': the output is not of this file, or not in its order")
        words.append(src)
    return words, [h.split() for h in hyps]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fairseq-bso-parsing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("to-actions", help="CoNLL-U/CoNLL-X trees -> PREFIX.src / PREFIX.tgt (arc-standard)")
    conv.add_argument("conll")
    conv.add_argument("prefix")
    conv.add_argument("--non-projective", choices=["skip", "lift"], default="skip",
                      help="a non-projective or multi-root tree: skip it (default; for training data), or "
                           "write the actions of a projective tree close to it (lift; for the data to "
                           "evaluate on, so that every sentence is parsed and scored)")
    conv.add_argument("--force", action="store_true",
                      help="overwrite existing PREFIX.src/.tgt this command did not write (never the input)")
    ev = sub.add_parser("evaluate", help="UAS/LAS of fairseq-generate output against the gold trees")
    ev.add_argument("conll", help="the gold trees (the file converted with to-actions --non-projective lift)")
    ev.add_argument("generate_output")
    ev.add_argument("--punct", action="store_true",
                    help="score punctuation tokens too (default: excluded, as Chen and Manning 2014)")
    ev.add_argument("--format", choices=["auto", "conllu", "conllx"], default="auto",
                    help="punctuation by UPOS PUNCT (conllu) or by the PTB tags `` '' , . : in column 5 "
                         "(conllx); auto: conllu when column 4 holds universal POS tags only")
    args = parser.parse_args(argv)
    try:
        trees = read_conll(args.conll)
        if args.command == "to-actions":
            sources, targets, non_projective, broken = [], [], 0, 0
            for tree in trees:
                actions = oracle(tree)
                if actions is None:
                    non_projective += 1
                    if args.non_projective == "skip":
                        continue
                    lifted = projectivize(tree)
                    actions = oracle(lifted) if lifted is not None else None
                    if actions is None:
                        broken += 1
                        continue
                sources.append(" ".join(tree.words))
                targets.append(" ".join(actions))
            write_outputs({args.prefix + ".src": sources, args.prefix + ".tgt": targets},
                          "fairseq-bso-parsing to-actions", inputs=[args.conll], force=args.force,
                          what=f"to-actions {args.prefix}")
            done = "skipped" if args.non_projective == "skip" else "lifted to projective trees"
            print(f"{len(targets)} trees converted, {non_projective} non-projective (or multi-root) trees {done}"
                  + (f" ({broken} with a cycle in their heads skipped)" if broken else ""), flush=True)
        else:
            words, actions = read_generate_output(args.generate_output, trees)
            fmt = None if args.format == "auto" else args.format
            s = attachment_scores(trees, actions, words, punct=args.punct, fmt=fmt)
            rule = "UPOS PUNCT" if s["format"] == "conllu" else "PTB tags `` '' , . :"
            punct = ("punctuation included" if args.punct else
                     f"punctuation ({rule}) excluded: {s['punct_skipped']} tokens")
            print(f"UAS {s['UAS']:.2f} LAS {s['LAS']:.2f} ({s['tokens']} tokens scored, {punct}; "
                  f"{s['sentences']} sentences, {s['non_projective']} with a non-projective gold tree; "
                  f"{s['well_formed']} of {s['sentences']} outputs well-formed; root label '{s['root_label']}')")
    except (DataError, OutputRefused, WriteError) as e:
        print(f"fairseq-bso-parsing: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
