"""Arc-standard parsing: oracle round trip, constraint masks against brute force, constrained generation."""

import itertools
import random
import re

import torch
from fairseq.data import Dictionary

import harness
from fairseq_bso.constraints import ArcStandardConstraint
from fairseq_bso.parsing import Tree, actions_to_tree, is_reduce, oracle, read_conll

CONLLU = """# sent_id = 1
# text = The cat sat on the mat.
1	The	the	DET	_	_	2	det	_	_
2	cat	cat	NOUN	_	_	3	nsubj	_	_
3	sat	sit	VERB	_	_	0	root	_	_
4	on	on	ADP	_	_	6	case	_	_
5	the	the	DET	_	_	6	det	_	_
6	mat	mat	NOUN	_	_	3	obl	_	SpaceAfter=No
7	.	.	PUNCT	_	_	3	punct	_	_

# a multiword token and an empty node are skipped
1-2	du	_	_	_	_	_	_	_	_
1	de	de	ADP	_	_	2	case	_	_
2	le	le	DET	_	_	3	det	_	_
2.1	x	x	X	_	_	_	_	_	_
3	chat	chat	NOUN	_	_	0	root	_	_

1	A	a	X	_	_	3	dep	_	_
2	B	b	X	_	_	4	dep	_	_
3	C	c	X	_	_	0	root	_	_
4	D	d	X	_	_	3	dep	_	_
"""


def test_read_conll_and_oracle_on_hand_written_trees(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    trees = read_conll(str(path))
    assert [t.words for t in trees] == [["The", "cat", "sat", "on", "the", "mat", "."], ["de", "le", "chat"],
                                         ["A", "B", "C", "D"]]
    assert oracle(trees[0]) == ["The", "cat", "@L_det", "sat", "@L_nsubj", "on", "the", "mat", "@L_det",
                                "@L_case", "@R_obl", ".", "@R_punct"]
    assert oracle(trees[1]) == ["de", "le", "@L_case", "chat", "@L_det"]
    assert oracle(trees[2]) is None  # A->C crosses B->D: non-projective
    for tree in trees[:2]:
        heads, labels, ok = actions_to_tree(tree.words, oracle(tree))
        assert ok and heads == tree.heads and labels == tree.labels


def random_actions(rng, n, labels=("a", "b")):
    """A random well-formed arc-standard sequence over n words w0..w{n-1}."""
    actions, stack, shifted = [], 0, 0
    while shifted < n or stack > 1:
        if shifted < n and (stack < 2 or rng.random() < 0.5):
            actions.append(f"w{shifted}")
            shifted += 1
            stack += 1
        else:
            actions.append(rng.choice(["@L_", "@R_"]) + rng.choice(labels))
            stack -= 1
    return actions


def test_oracle_round_trip_is_identity_on_random_projective_trees():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 9)
        words = [f"w{i}" for i in range(n)]
        heads, labels, ok = actions_to_tree(words, random_actions(rng, n))
        assert ok
        tree = Tree(words, heads, labels)
        actions = oracle(tree)
        assert actions is not None and len(actions) == 2 * n - 1
        assert actions_to_tree(words, actions) == (heads, labels, True)


def make_parse_dict(words, labels=("a", "b")):
    d = Dictionary()
    for w in words:
        d.add_symbol(w)
    for lab in labels:
        d.add_symbol("@L_" + lab)
        d.add_symbol("@R_" + lab)
    return d


def completable(prefix, words, n):
    """Brute force: can ``prefix`` be completed to a well-formed sequence (then </s>)?"""
    if len(prefix) > 2 * n - 1:
        return False
    _, _, ok = actions_to_tree(words, prefix)
    if ok:
        return True
    vocab = words + ["@L_a", "@R_b"]
    return any(completable(prefix + [t], words, n) for t in vocab)


def test_arc_standard_mask_equals_brute_force():
    d = make_parse_dict(["x", "y", "z"])
    c = ArcStandardConstraint(d, d)
    for words in (["x"], ["x", "y"], ["y", "x", "z"], ["x", "x", "y"]):
        n = len(words)
        src = torch.tensor([[d.pad(), d.pad()] + [d.index(w) for w in words] + [d.eos()]])  # left-padded
        vocab = words + ["@L_a", "@R_a", "@L_b", "@R_b"]
        for length in range(2 * n):
            for prefix in itertools.product(sorted(set(vocab)), repeat=length):
                prefix = list(prefix)
                if not completable(prefix, words, n):
                    continue
                state = c.initial_state(src, 1)
                for tok in prefix:
                    state = c.step(state, torch.tensor([d.index(tok)]))
                got = {d[i] for i in (c.mask(state)[0] == 0).nonzero().view(-1).tolist()}
                expected = {t for t in set(vocab) if completable(prefix + [t], words, n)}
                if actions_to_tree(words, prefix)[2]:
                    expected.add("</s>")
                assert got == expected, (words, prefix)


def write_treebank(path, rng, n_sents, vocab):
    lines = []
    for _ in range(n_sents):
        n = rng.randint(1, 6)
        words = [rng.choice(vocab) for _ in range(n)]
        names = [f"w{i}" for i in range(n)]
        heads, labels, _ = actions_to_tree(names, random_actions(rng, n))
        for i, (w, h, lab) in enumerate(zip(words, heads, labels), 1):
            lines.append(f"{i}\t{w}\t{w}\tX\t_\t_\t{h}\t{lab}\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def test_constrained_generation_outputs_well_formed_trees(tmp_path):
    rng = random.Random(1)
    vocab = "dog cat saw the a big".split()
    for split, n in (("train", 120), ("valid", 10), ("test", 15)):
        write_treebank(tmp_path / f"{split}.conllu", rng, n, vocab)
        proc = harness.run(["fairseq-bso-parsing", "to-actions", str(tmp_path / f"{split}.conllu"),
                            str(tmp_path / split)])
        assert f"{n} trees converted, 0 non-projective" in proc.stdout
    data = harness.preprocess(str(tmp_path))
    harness.train(data, str(tmp_path / "ckpt"), max_epoch=1)
    ckpt = str(tmp_path / "ckpt" / "checkpoint_last.pt")
    for extra in ([], ["--bso-decoding"]):
        out = harness.generate(data, ckpt, beam=3, extra=["--task", "constrained_beam_training",
                                                          "--constraint", "arc_standard", *extra]).stdout
        srcs = dict(re.findall(r"^S-(\d+)\t(.*)$", out, re.M))
        hyps = re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)
        assert len(hyps) == 15
        for sid, hyp in hyps:
            words = srcs[sid].split()
            assert actions_to_tree(words, hyp.split())[2], (srcs[sid], hyp)
    (tmp_path / "gen.txt").write_text(out)
    proc = harness.run(["fairseq-bso-parsing", "evaluate", str(tmp_path / "test.conllu"), str(tmp_path / "gen.txt")])
    assert re.search(r"UAS [\d.]+ LAS [\d.]+ \(15 of 15 outputs well-formed", proc.stdout)


def test_bad_conll_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text("1\tA\ta\tX\t_\t_\t0\troot\t_\t_\n2\tB\tb\tX\t_\t_\tzero\tdep\t_\t_\n")
    proc = harness.run(["fairseq-bso-parsing", "to-actions", str(path), str(tmp_path / "out")], check=False)
    assert proc.returncode == 2 and "bad.conllu:2: word id and head must be integers" in proc.stdout


def test_non_projective_trees_are_skipped_and_counted(tmp_path):
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    proc = harness.run(["fairseq-bso-parsing", "to-actions", str(path), str(tmp_path / "out")])
    assert "2 trees converted, 1 non-projective (or multi-root) trees skipped" in proc.stdout
    assert len((tmp_path / "out.tgt").read_text().splitlines()) == 2
    assert all(len(t.split()) == 2 * len(s.split()) - 1 for s, t in
               zip((tmp_path / "out.src").read_text().splitlines(), (tmp_path / "out.tgt").read_text().splitlines()))
    assert not any(is_reduce(w) for w in (tmp_path / "out.src").read_text().split())
