"""Arc-standard parsing: oracle round trip, constraint masks against brute force, constrained generation."""

import contextlib
import io
import itertools
import random
import re

import torch
from fairseq.data import Dictionary

import harness
from fairseq_bso.constraints import ArcStandardConstraint
from fairseq_bso.constraints import parsing
from fairseq_bso.constraints.parsing import Tree, actions_to_tree, is_reduce, oracle, projectivize, read_conll

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
    assert re.search(r"UAS [\d.]+ LAS [\d.]+ \(\d+ tokens scored, .*; 15 sentences, 0 with a non-projective "
                     r"gold tree; 15 of 15 outputs well-formed", proc.stdout), proc.stdout


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


def test_to_actions_lift_keeps_every_tree(tmp_path):
    """--non-projective lift: the crossing arc B<-D is lifted to B<-C, so the third tree is kept too."""
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU)
    proc = harness.run(["fairseq-bso-parsing", "to-actions", str(path), str(tmp_path / "out"),
                        "--non-projective", "lift"])
    assert "3 trees converted, 1 non-projective (or multi-root) trees lifted to projective trees" in proc.stdout
    assert (tmp_path / "out.src").read_text().splitlines()[2] == "A B C D"
    assert (tmp_path / "out.tgt").read_text().splitlines()[2] == "A B C @L_dep @L_dep D @R_dep"


def test_projectivize_lifts_crossing_arcs_and_extra_roots():
    assert projectivize(Tree(list("ABCD"), [3, 4, 0, 3], ["dep"] * 4)).heads == [3, 3, 0, 3]
    assert projectivize(Tree(list("ABC"), [0, 1, 0], ["root", "x", "root"])).heads == [0, 1, 1]
    assert projectivize(Tree(list("AB"), [2, 1], ["x", "y"])) is None  # a cycle
    rng = random.Random(2)
    for _ in range(500):  # random trees, projective or not: the result is projective, projective trees unchanged
        n = rng.randint(1, 8)
        order = rng.sample(range(1, n + 1), n)
        heads = [0] * n
        for i, w in enumerate(order[1:], 1):
            heads[w - 1] = rng.choice(order[:i])
        tree = Tree([f"w{i}" for i in range(n)], heads, ["a"] * n)
        lifted = projectivize(tree)
        assert oracle(lifted) is not None, heads
        if oracle(tree) is not None:
            assert lifted.heads == heads


# Hand-scored evaluation. Sentence 0: the model attaches "The" to "sat" (gold: "cat") and labels "cat"
# obj (gold nsubj); "." is punctuation. Sentence 1 is non-projective (A->C crosses B->D); the model's
# projective tree has A->B and B->C wrong, C (root) and D right.
GOLD = """# sent_id = s0
1	The	the	DET	DT	_	2	det	_	_
2	cat	cat	NOUN	NN	_	3	nsubj	_	_
3	sat	sit	VERB	VBD	_	0	root	_	_
4	.	.	PUNCT	.	_	3	punct	_	_

# sent_id = s1
1	A	a	X	_	_	3	dep	_	_
2	B	b	X	_	_	4	dep	_	_
3	C	c	X	_	_	0	root	_	_
4	D	d	X	_	_	3	dep	_	_
"""
# fairseq-generate output, batches in length order as fairseq prints them
OUTPUT = """S-1	A B C D
T-1	A B C @L_dep @L_dep D @R_dep
H-1	-0.41	A B @L_dep C @L_dep D @R_dep
D-1	-0.41	A B @L_dep C @L_dep D @R_dep
P-1	-0.1 -0.1 -0.1 -0.1 -0.1 -0.1 -0.1 -0.1
S-0	{s0}
T-0	The cat @L_det sat @L_nsubj . @R_punct
H-0	-0.52	{h0} sat @L_obj @L_det . @R_punct
D-0	-0.52	{h0} sat @L_obj @L_det . @R_punct
P-0	-0.1 -0.1 -0.1 -0.1 -0.1 -0.1 -0.1 -0.1
Generate test with beam=5: BLEU4 = 10.00
"""


def evaluate(tmp_path, gold, output, *extra, check=True):
    """``fairseq-bso-parsing evaluate`` in process (its main); stdout and stderr together."""
    (tmp_path / "gold.conllu").write_text(gold)
    (tmp_path / "gen.txt").write_text(output)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = parsing.main(["evaluate", str(tmp_path / "gold.conllu"), str(tmp_path / "gen.txt"), *extra])
    assert code == 0 or not check, f"evaluate exited {code}: {out.getvalue()}"
    return out.getvalue()


def scores(stdout):
    m = re.search(r"UAS ([\d.]+) LAS ([\d.]+) \((\d+) tokens scored", stdout)
    assert m, stdout
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def test_evaluate_scores_every_sentence_without_punctuation(tmp_path):
    """UAS: cat, sat, C, D of 7 non-punctuation tokens = 4/7; LAS: sat, C, D = 3/7.
    (The old protocol, projective trees with punctuation, gave 75.00 / 50.00.)"""
    out = evaluate(tmp_path, GOLD, OUTPUT.format(s0="The cat sat .", h0="The cat"))
    assert scores(out) == (57.14, 42.86, 7), out
    assert ("punctuation (UPOS PUNCT) excluded: 1 tokens; 2 sentences, 1 with a non-projective gold tree; "
            "2 of 2 outputs well-formed; root label 'root'") in out, out


def test_evaluate_punct_includes_punctuation(tmp_path):
    """With "." (right): UAS 5/8, LAS 4/8."""
    out = evaluate(tmp_path, GOLD, OUTPUT.format(s0="The cat sat .", h0="The cat"), "--punct")
    assert scores(out) == (62.5, 50.0, 8), out
    assert "punctuation included" in out, out


def test_shifted_unk_is_well_formed_where_the_source_word_is_unknown(tmp_path):
    """fairseq prints an out-of-vocabulary source word as <unk> (S- line) and the constraint makes the model
    shift that <unk>: a well-formed parse. Shifting <unk> for a word the model knows is not."""
    out = evaluate(tmp_path, GOLD, OUTPUT.format(s0="The <unk> sat .", h0="The <unk>"))
    assert "2 of 2 outputs well-formed" in out and scores(out) == (57.14, 42.86, 7), out
    out = evaluate(tmp_path, GOLD, OUTPUT.format(s0="The cat sat .", h0="The <unk>"))
    assert "1 of 2 outputs well-formed" in out and scores(out) == (57.14, 42.86, 7), out


CONLLX = """1	Dogs	_	NNS	NNS	_	2	nsubj	_	_
2	bark	_	VBP	VBP	_	0	ROOT	_	_
3	loudly	_	RB	RB	_	2	advmod	_	_
4	.	_	.	.	_	2	punct	_	_

1	``	_	``	``	_	2	punct	_	_
2	Yes	_	UH	UH	_	0	ROOT	_	_
3	''	_	''	''	_	2	punct	_	_
"""
CONLLX_OUTPUT = """S-0	Dogs bark loudly .
H-0	-0.3	Dogs bark @L_nsubj loudly @R_dep . @R_punct
S-1	`` Yes ''
H-1	-0.2	`` Yes @L_punct '' @R_punct
"""


def test_conllx_punctuation_by_ptb_tags_and_root_label_from_the_data(tmp_path):
    """CoNLL-X (PTB tags in column 4): `` '' . are punctuation by their PTB tag; the root label is the file's
    ROOT. Scored: Dogs, bark, loudly, Yes, all heads right (UAS 4/4); loudly's label wrong (LAS 3/4; with the
    root label hard-coded as 'root' it would be 1/4). With --punct: UAS 7/7, LAS 6/7."""
    out = evaluate(tmp_path, CONLLX, CONLLX_OUTPUT)
    assert scores(out) == (100.0, 75.0, 4), out
    assert "punctuation (PTB tags `` '' , . :) excluded: 3 tokens" in out and "root label 'ROOT'" in out, out
    assert scores(evaluate(tmp_path, CONLLX, CONLLX_OUTPUT, "--punct")) == (100.0, 85.71, 7)


def test_evaluate_refuses_output_of_other_sentences(tmp_path):
    """Output of a test set converted without the non-projective sentence, or in another order: an error."""
    only_projective = "S-0\tThe cat sat .\nH-0\t-0.5\tThe cat @L_det sat @L_nsubj . @R_punct\n"
    out = evaluate(tmp_path, GOLD, only_projective, check=False)
    assert "holds 1 sentences, the gold file 2" in out and "--non-projective lift" in out, out
    swapped = OUTPUT.format(s0="The cat sat .", h0="The cat").replace("S-1", "S-X").replace("S-0", "S-1")
    swapped = swapped.replace("S-X", "S-0")
    out = evaluate(tmp_path, GOLD, swapped, check=False)
    assert "sentence 0 is 'A B C D' but gold sentence 0 (line 2) is 'The cat sat .'" in out, out
