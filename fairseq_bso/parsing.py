"""Dependency parsing as sequence-to-sequence: arc-standard transitions.

The source is the sentence's words; the target interleaves the shifted words
with reduce actions ``@L_label`` (the stack top s0 becomes the head of s1) and
``@R_label`` (s1 becomes the head of s0), the final ROOT arc removed: exactly
2n − 1 actions for n words.

* :func:`oracle` — the static arc-standard oracle: tree → actions (None for a
  non-projective tree, or one without a single root).
* :func:`actions_to_tree` — actions → (heads, labels), with a well-formedness flag.
* ``fairseq-bso-parsing to-actions`` converts a CoNLL-U (UD) or CoNLL-X file into
  ``.src``/``.tgt`` text for ``fairseq-preprocess --joined-dictionary``;
  ``fairseq-bso-parsing evaluate`` scores ``fairseq-generate`` output: UAS/LAS
  over all tokens, punctuation included.
"""

import argparse
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .evaluation import parse_hypotheses
from .prep import DataError, read_lines, write_atomic

LEFT, RIGHT = "@L_", "@R_"


@dataclass
class Tree:
    words: List[str]
    heads: List[int]  # 1-based head of each word, 0 = root
    labels: List[str]
    line: int = 0  # first line of the sentence in its file


def is_reduce(token: str) -> bool:
    return token.startswith(LEFT) or token.startswith(RIGHT)


def read_conll(path: str) -> List[Tree]:
    """Sentences of a CoNLL-U or CoNLL-X file (comments, multiword tokens and empty nodes skipped)."""
    trees, words, heads, labels, start = [], [], [], [], 0
    for number, line in enumerate(read_lines(path) + [""], 1):
        line = line.strip()
        if not line:
            if words:
                trees.append(Tree(words, heads, labels, start))
            words, heads, labels = [], [], []
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
        words.append(cols[1].replace(" ", "_"))
        heads.append(head)
        labels.append(cols[7].replace(" ", "_"))
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


def actions_to_tree(words: Sequence[str], actions: Sequence[str]) -> Tuple[List[int], List[str], bool]:
    """Replay actions; returns heads (1-based, 0 = root), labels, and whether the sequence was
    well-formed (each shift the next word, reduces with two stack items, one item left)."""
    n = len(words)
    heads, labels = [0] * n, ["root"] * n
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
        heads[item - 1], labels[item - 1] = 0, "root"
    return heads, labels, ok


def attachment_scores(gold: Sequence[Tree], predicted: Sequence[Sequence[str]]) -> dict:
    total = uas = las = wellformed = 0
    for tree, actions in zip(gold, predicted):
        heads, labels, ok = actions_to_tree(tree.words, actions)
        wellformed += ok
        for h, l, gh, gl in zip(heads, labels, tree.heads, tree.labels):
            total += 1
            uas += h == gh
            las += h == gh and l == gl
    return {"UAS": 100.0 * uas / max(total, 1), "LAS": 100.0 * las / max(total, 1),
            "well_formed": wellformed, "sentences": len(gold), "tokens": total}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fairseq-bso-parsing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("to-actions", help="CoNLL-U/CoNLL-X trees -> PREFIX.src / PREFIX.tgt (arc-standard)")
    conv.add_argument("conll")
    conv.add_argument("prefix")
    ev = sub.add_parser("evaluate", help="UAS/LAS of fairseq-generate output against the gold trees")
    ev.add_argument("conll", help="the gold trees (the file converted with to-actions)")
    ev.add_argument("generate_output")
    args = parser.parse_args(argv)
    try:
        trees = read_conll(args.conll)
        if args.command == "to-actions":
            kept, skipped = [], 0
            for tree in trees:
                actions = oracle(tree)
                if actions is None:
                    skipped += 1
                else:
                    kept.append((tree, actions))
            write_atomic(args.prefix + ".src", (" ".join(t.words) for t, _ in kept))
            write_atomic(args.prefix + ".tgt", (" ".join(a) for _, a in kept))
            print(f"{len(kept)} trees converted, {skipped} non-projective (or multi-root) trees skipped",
                  flush=True)
        else:
            projective = [t for t in trees if oracle(t) is not None]
            hyps = parse_hypotheses(open(args.generate_output, encoding="utf-8").read(), len(projective))
            scores = attachment_scores(projective, [h.split() for h in hyps])
            print(f"UAS {scores['UAS']:.2f} LAS {scores['LAS']:.2f} ({scores['well_formed']} of "
                  f"{scores['sentences']} outputs well-formed, {scores['tokens']} tokens)")
    except DataError as e:
        print(f"fairseq-bso-parsing: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
