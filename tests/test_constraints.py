"""Constraints: masks against brute force, ConBSO search against the literal reference, generation."""

import itertools
import random
import re
from collections import Counter

import pytest
import torch

import harness
from bso_reference import reference_bso
from fairseq_bso.constraints import CONSTRAINTS, WordOrderConstraint, build_constraint
from fairseq_bso.bso.costs import COSTS
from fairseq_bso.bso.search import bso_loss, bso_search, deterministic_decoder, rescore
from test_bso_search import assert_loss_equal, left_pad, list_cost, make_dict, make_model, right_pad


def brute_force_allowed(src_words, prefix, vocab, eos):
    """Tokens w such that prefix + [w] can still end as a permutation of the source followed by </s>."""
    allowed = set()
    for w in range(vocab):
        seq = prefix + [w]
        if eos in seq[:-1]:
            continue
        body = seq[:-1] if seq[-1] == eos else seq
        remaining = Counter(src_words)
        remaining.subtract(Counter(body))
        if min(remaining.values(), default=0) < 0:
            continue
        if seq[-1] == eos and sum(remaining.values()) != 0:
            continue
        allowed.add(w)
    return allowed


def test_word_order_mask_equals_brute_force_on_all_prefixes():
    d = make_dict()
    c = WordOrderConstraint(d, d)
    words = [d.index(s) for s in "abc"]
    for src_words in ([words[0]], [words[0], words[1]], [words[0], words[0], words[2]]):
        src = torch.tensor([src_words + [d.eos()]])
        for length in range(len(src_words) + 1):
            for prefix in itertools.product(words, repeat=length):
                prefix = list(prefix)
                if Counter(prefix) - Counter(src_words):
                    continue  # unreachable under the constraint
                state = c.initial_state(src, 2)
                for tok in prefix:
                    state = c.step(state, torch.tensor([tok, tok]))
                mask = c.mask(state)
                assert torch.equal(mask[0], mask[1])
                got = set((mask[0] == 0).nonzero().view(-1).tolist())
                assert got == brute_force_allowed(src_words, prefix, len(d), d.eos()), (src_words, prefix)


def test_apply_in_place_keeps_the_allowed_scores_and_forbids_the_rest():
    """word_order's in-place apply_ (used in the search and in generation) on random scores: every row keeps
    its score on the tokens the brute force allows after its own prefix, and is −inf everywhere else (the
    mask test above sees apply_ on zeros only, where a zeroed or shifted score would go unnoticed)."""
    d = make_dict()
    c = WordOrderConstraint(d, d)
    rng = random.Random(0)
    words = [d.index(s) for s in "abcde"]
    rows = 3
    for _ in range(50):
        src_words = [rng.choice(words) for _ in range(rng.randint(1, 5))]
        src = torch.tensor([[d.pad()] * (5 - len(src_words)) + src_words + [d.eos()]])  # left-padded
        state = c.initial_state(src, rows)
        prefixes = [[] for _ in range(rows)]
        for _ in range(rng.randint(0, len(src_words))):  # each row emits one of its own unused words
            tokens = []
            for prefix in prefixes:
                left = Counter(src_words) - Counter(prefix)
                tokens.append(rng.choice(sorted(left.elements())))
                prefix.append(tokens[-1])
            state = c.step(state, torch.tensor(tokens))
        scores = torch.randn(rows, len(d), dtype=torch.float64)
        got = c.apply_(scores.clone(), state)
        for r, prefix in enumerate(prefixes):
            allowed = brute_force_allowed(src_words, prefix, len(d), d.eos())
            want = [scores[r, w].item() if w in allowed else float("-inf") for w in range(len(d))]
            assert got[r].tolist() == want, (src_words, prefix, got[r].tolist(), want)


def test_check_reports_non_permutations():
    d = make_dict()
    c = WordOrderConstraint(d, d)
    a, b = d.index("a"), d.index("b")
    assert c.check(torch.tensor([a, b, d.eos()]), torch.tensor([b, a, d.eos()])) is None
    assert "not a permutation" in c.check(torch.tensor([a, b, d.eos()]), torch.tensor([b, b, d.eos()]))


def test_registry_rejects_unknown_names_and_accepts_user_constraints():
    d = make_dict()
    with pytest.raises(ValueError, match="--constraint 'nope' is unknown; registered: none, .*word_order"):
        build_constraint("nope", d, d)
    assert build_constraint("none", d, d) is None
    assert isinstance(build_constraint("word_order", d, d), CONSTRAINTS["word_order"])


@pytest.mark.parametrize("seed,K", [(s, K) for s in range(5) for K in (2, 3)])
def test_conbso_search_equals_reference_with_constraint(seed, K):
    """ConBSO: constrained training search (state reset on LaSO reset) vs the literal reference,
    whose allowed set is recomputed from scratch for every prefix."""
    d = make_dict()
    c = WordOrderConstraint(d, d)
    model = make_model(d, seed + 100, share=seed % 2 == 0)
    rng = random.Random(seed)
    words = [d.index(s) for s in "abcde"]
    golds = []
    for _ in range(4):
        body = [rng.choice(words) for _ in range(rng.randint(1, 5))]
        golds.append(body + [d.eos()])
    golds.sort(key=len, reverse=True)
    srcs = [sorted(g[:-1]) + [d.eos()] for g in golds]
    src = left_pad(srcs, d.pad())
    target = right_pad(golds, d.pad())
    enc = model.encoder(src, src_lengths=torch.tensor([len(s) for s in srcs]))
    with deterministic_decoder(model.decoder):
        result = bso_search(model, enc, target, K, d.pad(), d.eos(), d.bos(), COSTS["zero_one"],
                            score="logit", gold_kth="self", constraint=c, src_tokens=src)
        scored = rescore(model, enc, target, result, d.pad(), d.eos())
    loss = bso_loss(scored.gold, scored.violating, result)
    ref_total = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        allowed = lambda prefix, s=s: brute_force_allowed(s[:-1], prefix, len(d), d.eos())  # noqa: E731
        viols, resets, l_b, _ = reference_bso(model, torch.tensor([s]), torch.tensor([len(s)]), g, K,
                                              {d.pad(), d.bos()}, list_cost("zero_one"), d.eos(), allowed=allowed)
        assert result.violation[b].nonzero().view(-1).tolist() == viols
        assert result.reset[b].nonzero().view(-1).tolist() == resets
        ref_total = ref_total + l_b
    assert_loss_equal(loss.item(), ref_total)


def test_constraint_state_is_reset_with_the_beam():
    """A stale state would forbid the gold token: after a reset the beam holds y_{1:t}, and its
    state must be the gold prefix's, not the K-th item's."""
    d = make_dict()
    c = WordOrderConstraint(d, d)
    a, b = d.index("a"), d.index("b")
    src = torch.tensor([[a, b, d.eos()]])
    state = c.initial_state(src, 2)
    # slot 0 emitted b (the K-th, violating item), slot 1 emitted the gold a
    state = c.step(state, torch.tensor([b, a]))
    stale = c.mask(state)[0]
    assert stale[b] == float("-inf")  # the violating row can no longer emit b
    reset = c.reorder(state, torch.tensor([1, 1]))  # LaSO reset: every row copies the gold row
    assert (c.mask(reset)[:, b] == 0).all()  # the gold's next token b is allowed again


def test_generate_word_order_outputs_are_permutations(word_order_bin, nll_checkpoint):
    for beam, raw in ((1, []), (3, []), (3, ["--bso-decoding"]), (10, ["--bso-decoding"])):
        out = harness.generate(word_order_bin, nll_checkpoint, beam=beam,
                               extra=["--task", "constrained_beam_training", "--constraint", "word_order",
                                      "--nbest", str(beam), *raw]).stdout
        srcs = dict(re.findall(r"^S-(\d+)\t(.*)$", out, re.M))
        hyps = re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)
        assert len(srcs) == 20
        for sid, hyp in hyps:
            assert sorted(hyp.split()) == sorted(srcs[sid].split()), (srcs[sid], hyp)
        # n-best: as many distinct orders as the beam holds, fewer when the source has fewer
        for sid, src in srcs.items():
            orders = [h for i, h in hyps if i == sid]
            n_orders = len(set(itertools.permutations(src.split())))
            assert len(orders) == len(set(orders)) == min(beam, n_orders), (src, orders)


def test_unconstrained_task_equals_translation(word_order_bin, nll_checkpoint):
    plain = harness.generate(word_order_bin, nll_checkpoint, beam=3).stdout
    ours = harness.generate(word_order_bin, nll_checkpoint, beam=3,
                            extra=["--task", "constrained_beam_training", "--constraint", "none"]).stdout
    lines = lambda out: sorted(l for l in out.splitlines() if l[:2] in ("H-", "P-", "S-", "T-"))  # noqa: E731
    assert lines(plain) == lines(ours) and len(lines(plain)) == 80


def test_bad_targets_are_refused_or_skipped(tmp_path):
    folder = str(tmp_path)
    harness.make_word_order_data(folder, n_train=30, n_valid=5, n_test=5)
    lines = open(f"{folder}/train.tgt").read().splitlines()
    lines[6] = lines[6] + " unto"  # line 7 is no longer a permutation of its source
    open(f"{folder}/train.tgt", "w").write("\n".join(lines) + "\n")
    data = harness.preprocess(folder)
    task = ["--task", "constrained_beam_training", "--constraint", "word_order"]
    refused = harness.train(data, str(tmp_path / "a"), extra=task, check=False)
    assert refused.returncode != 0
    assert "1 of 30 train targets violate --constraint word_order: example 6 (line 7 of the train text)" \
        in refused.stdout
    skipped = harness.train(data, str(tmp_path / "b"), extra=[*task, "--constraint-bad-target", "skip"])
    assert "skipping 1 of 30 train examples" in skipped.stdout
    assert re.search(r"\| train \| epoch 001 \|.*\| bsz 14\.5 \|", skipped.stdout)  # 29 examples in 2 batches


def test_user_constraint_from_own_user_dir(word_order_bin, nll_checkpoint):
    """examples/constraints/my_constraints registers 'no_repeat' from its own --user-dir; the task checks the
    gold targets with it (5 of the 20 test targets repeat a word) and generation obeys it."""
    user_dir = f"{harness.ROOT}/examples/constraints/my_constraints"
    out = harness.run(["fairseq-generate", word_order_bin, "--user-dir", user_dir, "--path", nll_checkpoint,
                       "--cpu", "--gen-subset", "test", "--beam", "3", "--batch-size", "8", *harness.NO_DROP,
                       "--task", "constrained_beam_training", "--constraint", "no_repeat",
                       "--constraint-bad-target", "skip"]).stdout
    assert "skipping 5 of 20 test examples" in out
    hyps = re.findall(r"^H-\d+\t\S+\t(.*)$", out, re.M)
    assert len(hyps) == 15
    for hyp in hyps:
        words = hyp.split()
        assert all(a != b for a, b in zip(words, words[1:])), hyp


@pytest.mark.parametrize("name", ["word_order", "arc_standard"])
def test_builtin_constraints_refuse_two_dictionaries(name):
    """The built-in constraints compare target tokens with source tokens: a source and a target
    dictionary that differ are refused naming the constraint and the fix; one dictionary is taken."""
    from fairseq.data import Dictionary
    src, tgt = Dictionary(), Dictionary()
    for w in "a b @L_nsubj @R_dobj".split():  # words, and arc_standard's reduce actions
        src.add_symbol(w)
        tgt.add_symbol(w)
    assert build_constraint(name, src, tgt) is not None
    tgt.add_symbol("d")
    with pytest.raises(ValueError, match=rf"--constraint {name} needs one dictionary for source and target "
                                         r"\(fairseq-preprocess --joined-dictionary\)"):
        build_constraint(name, src, tgt)
