"""The vectorized BSO search + re-scoring against the literal Algorithm 1 (tests/bso_reference.py)."""

import random

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models.lstm import LSTMDecoder, LSTMEncoder, LSTMModel

from bso_reference import reference_bso, reference_dropout, reference_nll
from fairseq_bso.bso.costs import COSTS, segment_bleu
from fairseq_bso.bso.search import (bso_loss, bso_search, decoder_dropout, deterministic_decoder,
                                         gathered_logits, nll_loss, rescore)

SYMBOLS = list("abcde")


def make_dict():
    d = Dictionary()
    for s in SYMBOLS:
        d.add_symbol(s)
    return d


def make_model(d, seed, layers=1, bidirectional=False, share=False):
    torch.manual_seed(seed)
    enc = LSTMEncoder(d, embed_dim=8, hidden_size=8, num_layers=layers, dropout_in=0.0, dropout_out=0.0,
                      bidirectional=bidirectional, padding_idx=d.pad())
    dec = LSTMDecoder(d, embed_dim=8, hidden_size=8, out_embed_dim=8, num_layers=layers, dropout_in=0.0,
                      dropout_out=0.0, encoder_output_units=enc.output_units, share_input_output_embed=share)
    model = LSTMModel(enc, dec).double()  # float64: the comparisons below check exactness
    with torch.no_grad():  # spread the logits so that beams differ and ties are unlikely
        for p in model.parameters():
            p.mul_(4.0)
    return model


def left_pad(seqs, pad):
    width = max(len(s) for s in seqs)
    return torch.tensor([[pad] * (width - len(s)) + s for s in seqs])


def right_pad(seqs, pad):
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (width - len(s)) for s in seqs])


def random_batch(d, rng, batch):
    words = [d.index(s) for s in SYMBOLS]
    srcs, golds = [], []
    for _ in range(batch):
        srcs.append([rng.choice(words) for _ in range(rng.randint(1, 5))] + [d.eos()])
        # internal </s> in some golds: </s> is an ordinary token of the training search
        body = [rng.choice(words + [d.eos()]) for _ in range(rng.randint(0, 6))]
        golds.append(body + [d.eos()])
    order = sorted(range(batch), key=lambda i: -len(srcs[i]))  # LSTM encoder: sorted by length
    return [srcs[i] for i in order], [golds[i] for i in order]


def list_cost(name):
    """Δ of two token lists (of different lengths when the rival finished early)."""
    def cost(viol, gold):
        width = max(len(viol), len(gold))
        t = torch.tensor([viol + [0] * (width - len(viol))])
        g = torch.tensor([gold + [0] * (width - len(gold))])
        t_mask = torch.tensor([[i < len(viol) for i in range(width)]])
        g_mask = torch.tensor([[i < len(gold) for i in range(width)]])
        return COSTS[name](t, g, t_mask, g_mask).item()
    return cost


def vectorized(model, d, srcs, golds, K, cost, score="logit", gold_kth="self", nll_weight=0.0, stop=False,
               lenpen=1.0):
    src = left_pad(srcs, d.pad())
    lengths = torch.tensor([len(s) for s in srcs])
    target = right_pad(golds, d.pad())
    enc = model.encoder(src, src_lengths=lengths)
    with deterministic_decoder(model.decoder):
        result = bso_search(model, enc, target, K, d.pad(), d.eos(), d.bos(), COSTS[cost], score=score,
                            gold_kth=gold_kth, stop=stop, lenpen=lenpen)
        scored = rescore(model, enc, target, result, d.pad(), d.eos(), nll=nll_weight > 0)
    loss = bso_loss(scored.gold, scored.violating, result)
    if nll_weight > 0:
        loss = loss + nll_weight * nll_loss(scored.gold_lprobs, target, d.pad())
    return result, loss


def assert_grads_equal(got, want, rel=1e-9):
    """Gradients of the same function by two routes: equal up to rounding.  The tolerance is
    ``rel`` times the largest gradient of the model (rounding errors scale with the largest terms
    of the computation, not with each tensor's own size); float64 eps ~ 2e-16, so the default 1e-9
    leaves room for summation order only."""
    scale = max(max(g.abs().max().item() for g in want.values()), 1.0)
    for name in want:
        diff = (got[name] - want[name]).abs().max().item()
        assert diff <= rel * scale, (f"{name}: max |vectorized - reference| = {diff:.3e}, "
                                     f"tolerance {rel:g} x largest gradient {scale:.3e}")


def assert_loss_equal(got, want, rel=1e-9):
    got, want = (float(x.detach()) if torch.is_tensor(x) else float(x) for x in (got, want))
    assert abs(got - want) <= rel * max(abs(want), 1.0), f"loss: vectorized {got!r} vs reference {want!r}"


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


CASES = [(seed, K, cost) for seed in range(6) for K, cost in ((2, "zero_one"), (3, "sentence_bleu"), (4, "zero_one"),
                                                                (9, "zero_one"), (12, "sentence_bleu"))]


@pytest.mark.parametrize("seed,K,cost", CASES)
def test_vectorized_search_equals_reference(seed, K, cost):
    d = make_dict()
    model = make_model(d, seed, layers=1 + seed % 2, bidirectional=seed % 3 == 0, share=seed % 2 == 1)
    model.train()
    rng = random.Random(seed)
    srcs, golds = random_batch(d, rng, batch=5)
    result, loss = vectorized(model, d, srcs, golds, K, cost)
    g_vec = grads(model, loss)

    ref_loss = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        viols, resets, l_b, deltas = reference_bso(
            model, torch.tensor([s]), torch.tensor([len(s)]), g, K, {d.pad(), d.bos()}, list_cost(cost), d.eos())
        assert result.violation[b].nonzero().view(-1).tolist() == viols, f"sentence {b}"
        assert result.reset[b].nonzero().view(-1).tolist() == resets, f"sentence {b}"
        for t, delta in deltas.items():
            assert result.delta[b, t].item() == pytest.approx(delta, abs=1e-5)
        assert not result.violation[b, len(g):].any()
        ref_loss = ref_loss + l_b
    assert_loss_equal(loss.item(), ref_loss)
    if torch.is_tensor(ref_loss) and ref_loss.requires_grad:
        assert_grads_equal(g_vec, grads(model, ref_loss))


LEVER_CASES = [(seed, K, score, gold_kth, nll) for seed in range(4)
                for K, score, gold_kth, nll in ((2, "log_softmax", "self", 0.0), (3, "logit", "previous", 0.0),
                                                (4, "log_softmax", "previous", 0.5), (3, "logit", "self", 0.7),
                                                (9, "log_softmax", "self", 0.0))]


@pytest.mark.parametrize("seed,K,score,gold_kth,nll", LEVER_CASES)
def test_levers_equal_reference(seed, K, score, gold_kth, nll):
    """--bso-score, --bso-gold-kth and --bso-nll-weight against the literal reference (float64)."""
    d = make_dict()
    model = make_model(d, 10 + seed, layers=1 + seed % 2, bidirectional=seed % 3 == 0, share=seed % 2 == 1)
    if score == "log_softmax":  # log-probabilities are smaller than the spread logits: narrow the margins' scale
        with torch.no_grad():
            for p in model.decoder.parameters():
                p.mul_(0.5)
    model.train()
    srcs, golds = random_batch(d, random.Random(100 + seed), batch=5)
    result, loss = vectorized(model, d, srcs, golds, K, "sentence_bleu", score, gold_kth, nll)
    g_vec = grads(model, loss)
    ref_loss = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        src, length = torch.tensor([s]), torch.tensor([len(s)])
        viols, resets, l_b, _ = reference_bso(model, src, length, g, K, {d.pad(), d.bos()},
                                              list_cost("sentence_bleu"), d.eos(), score=score, gold_kth=gold_kth)
        assert result.violation[b].nonzero().view(-1).tolist() == viols, f"sentence {b}"
        assert result.reset[b].nonzero().view(-1).tolist() == resets, f"sentence {b}"
        ref_loss = ref_loss + l_b
        if nll > 0:
            ref_loss = ref_loss + nll * reference_nll(model, src, length, g, d.eos())
    assert result.violation.any()  # the case has margin terms
    assert_loss_equal(loss.item(), ref_loss)
    assert_grads_equal(g_vec, grads(model, ref_loss))


STOP_CASES = [(seed, K, score, cost) for seed in range(4)
              for K, score, cost in ((2, "logit", "zero_one"), (3, "logit", "sentence_bleu"),
                                     (4, "log_softmax", "sentence_bleu"), (9, "logit", "sentence_bleu"),
                                     (9, "log_softmax", "zero_one"))]


def stop_model(d, seed, score):
    """A random model whose </s> logit is raised, so that hypotheses finish early and finished
    rivals beat the incorrect ones at the gold's last step (in a random model they rarely do)."""
    model = make_model(d, 20 + seed, layers=1 + seed % 2, bidirectional=seed % 3 == 0, share=False)
    with torch.no_grad():
        if score == "log_softmax":  # log-probabilities are smaller than the spread logits
            for p in model.decoder.parameters():
                p.mul_(0.5)
        model.decoder.fc_out.bias[d.eos()] += 2.0 if score == "logit" else 1.0
    return model


def stop_batch(d, seed):
    """Random sources and golds without an internal </s> (the learning-to-stop step requires it)."""
    srcs, golds = random_batch(d, random.Random(200 + seed), batch=6)
    return srcs, [[w for w in g[:-1] if w != d.eos()] + [d.eos()] for g in golds]


def stop_lenpen(seed):
    """fairseq's default length penalty 1, and another (only the log_softmax score reads it)."""
    return 1.0 if seed % 2 == 0 else 0.6


@pytest.mark.parametrize("seed,K,score,cost", STOP_CASES)
def test_learning_to_stop_equals_reference(seed, K, score, cost):
    """The learning-to-stop step (finished hypotheses leave the beam; the best one finishing at a
    step is a violation when it comes within the margin of the whole gold's score) against the
    literal reference, float64: violations, resets, Δ, loss, gradients."""
    d = make_dict()
    model = stop_model(d, seed, score)
    model.train()
    srcs, golds = stop_batch(d, seed)
    lenpen = stop_lenpen(seed)
    result, loss = vectorized(model, d, srcs, golds, K, cost, score, stop=True, lenpen=lenpen)
    g_vec = grads(model, loss)
    ref_loss = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        src, length = torch.tensor([s]), torch.tensor([len(s)])
        viols, resets, l_b, deltas = reference_bso(model, src, length, g, K, {d.pad(), d.bos()}, list_cost(cost),
                                                   d.eos(), score=score, stop=True, lenpen=lenpen)
        assert result.violation[b].nonzero().view(-1).tolist() == viols, f"sentence {b}"
        assert result.reset[b].nonzero().view(-1).tolist() == resets, f"sentence {b}"
        for t, delta in deltas.items():
            assert result.delta[b, t].item() == pytest.approx(delta, abs=1e-5), f"sentence {b} step {t}"
        ref_loss = ref_loss + l_b
    assert_loss_equal(loss.item(), ref_loss)
    if torch.is_tensor(ref_loss) and ref_loss.requires_grad:
        assert_grads_equal(g_vec, grads(model, ref_loss))


def test_learning_to_stop_cases_have_finished_rivals():
    """Some stop cases' violations have a finished hypothesis as their rival, some of them with a
    reset after (else the step's loss term and reset would be untested), and the step changes
    the search's rivals (finished items leave the beam, so the K-th item differs)."""
    d = make_dict()
    finished_rivals = finished_resets = changed = 0
    for seed, K, score, cost in STOP_CASES:
        model = stop_model(d, seed, score)
        srcs, golds = stop_batch(d, seed)
        with_stop, _ = vectorized(model, d, srcs, golds, K, cost, score, stop=True)
        without, _ = vectorized(model, d, srcs, golds, K, cost, score, stop=False)
        steps = torch.arange(with_stop.violation.size(1)).expand_as(with_stop.violation)
        finished = with_stop.violation & (with_stop.gold_step > steps)
        finished_rivals += int(finished.sum())
        finished_resets += int((finished & with_stop.reset).sum())
        changed += int(not torch.equal(with_stop.rival_scores, without.rival_scores))
    assert finished_rivals > 0, "no case has a finished rival"
    assert finished_resets > 0, "no finished rival is followed by a reset"
    assert changed > 0, "the learning-to-stop step never changed a rival"


def test_learning_to_stop_refuses_internal_eos():
    d = make_dict()
    model = make_model(d, 0)
    srcs, golds = [[d.index("a"), d.eos()]], [[d.index("b"), d.eos(), d.index("c"), d.eos()]]
    with pytest.raises(ValueError, match="internal </s>"):
        vectorized(model, d, srcs, golds, 2, "zero_one", stop=True)


DROPOUT_CASES = [(seed, K, score, out_dim) for seed in range(3)
                 for K, score, out_dim in ((2, "logit", 8), (3, "log_softmax", 6), (5, "logit", 6))]


def dropout_model(d, seed, layers, out_dim, score, eos_boost=0.0):
    """A float64 LSTM model whose decoder has dropout 0.3 (inputs and outputs), in train mode;
    ``eos_boost`` raises the </s> logit so that hypotheses finish early."""
    torch.manual_seed(seed)
    enc = LSTMEncoder(d, embed_dim=8, hidden_size=8, num_layers=layers, dropout_in=0.0, dropout_out=0.0,
                      padding_idx=d.pad())
    dec = LSTMDecoder(d, embed_dim=8, hidden_size=8, out_embed_dim=out_dim, num_layers=layers, dropout_in=0.3,
                      dropout_out=0.3, encoder_output_units=enc.output_units)
    model = LSTMModel(enc, dec).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0 if score == "logit" else 2.0)
        model.decoder.fc_out.bias[d.eos()] += eos_boost
    return model.train()


def shared_dropout_against_reference(model, d, srcs, golds, K, score, mask_seed, stop=False):
    """Search, re-scoring and loss with shared dropout masks, checked against the literal reference
    run with the same masks (float64): violations and resets per sentence, the loss, the gradients.
    Returns the search result."""
    src, lengths, target = left_pad(srcs, d.pad()), torch.tensor([len(x) for x in srcs]), right_pad(golds, d.pad())
    torch.manual_seed(mask_seed)
    enc_out = model.encoder(src, src_lengths=lengths)
    with decoder_dropout(model.decoder, "shared", len(srcs)) as shared:
        result = bso_search(model, enc_out, target, K, d.pad(), d.eos(), d.bos(), COSTS["zero_one"], score=score,
                            gold_kth="self", stop=stop, dropout=shared)
        scored = rescore(model, enc_out, target, result, d.pad(), d.eos(), dropout=shared)
    loss = bso_loss(scored.gold, scored.violating, result)
    g_vec = grads(model, loss)
    ref_loss = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        with reference_dropout(model.decoder, shared.masks, b):
            viols, resets, l_b, _ = reference_bso(model, torch.tensor([s]), torch.tensor([len(s)]), g, K,
                                                  {d.pad(), d.bos()}, list_cost("zero_one"), d.eos(), score=score,
                                                  stop=stop)
        assert result.violation[b].nonzero().view(-1).tolist() == viols, f"sentence {b}"
        assert result.reset[b].nonzero().view(-1).tolist() == resets, f"sentence {b}"
        ref_loss = ref_loss + l_b
    assert_loss_equal(loss.item(), ref_loss)
    assert_grads_equal(g_vec, grads(model, ref_loss))
    return result


@pytest.mark.parametrize("seed,K,score,out_dim", DROPOUT_CASES)
def test_shared_dropout_equals_reference(seed, K, score, out_dim):
    """--bso-dropout shared: the search and the re-scoring with the decoder's dropout on (p = 0.3,
    masks shared by sentence and step) against the literal reference run with the same masks
    (float64): violations, resets, loss, gradients.  ``out_dim`` != hidden size adds the
    decoder's ``additional_fc`` and its dropout."""
    d = make_dict()
    model = dropout_model(d, 30 + seed, 1 + seed % 2, out_dim, score)
    srcs, golds = random_batch(d, random.Random(300 + seed), batch=5)
    result = shared_dropout_against_reference(model, d, srcs, golds, K, score, mask_seed=seed)
    assert result.reset.any()


@pytest.mark.parametrize("seed,K,score", [(0, 3, "logit"), (1, 4, "log_softmax"), (2, 3, "logit")])
def test_learning_to_stop_with_shared_dropout_equals_reference(seed, K, score):
    """--bso-learn-to-stop with --bso-dropout shared: the gold's final score (the teacher-forced pass
    before the search) and the search's finished rivals use the same masks as the re-scoring;
    against the literal reference run with those masks (float64): violations, resets, loss,
    gradients, with at least one finished rival among the case's violations."""
    d = make_dict()
    model = dropout_model(d, 40 + seed, 1, 8, score, eos_boost=4.0 if score == "logit" else 2.0)
    srcs, golds = stop_batch(d, seed)
    result = shared_dropout_against_reference(model, d, srcs, golds, K, score, mask_seed=seed, stop=True)
    steps = torch.arange(result.violation.size(1)).expand_as(result.violation)
    finished = int((result.violation & (result.gold_step > steps)).sum())
    assert finished > 0, f"no finished rival among {int(result.violation.sum())} violations"


def test_shared_dropout_is_dropout():
    """The shared masks are real dropout: the loss differs from the dropout-off loss, masks
    differ across sentences and steps, and their entries are 0 or 1 / (1 − p)."""
    d = make_dict()
    torch.manual_seed(0)
    enc = LSTMEncoder(d, embed_dim=8, hidden_size=8, dropout_in=0.0, dropout_out=0.0, padding_idx=d.pad())
    dec = LSTMDecoder(d, embed_dim=8, hidden_size=8, out_embed_dim=8, dropout_in=0.3, dropout_out=0.3,
                      encoder_output_units=enc.output_units)
    model = LSTMModel(enc, dec).double().train()
    srcs, golds = random_batch(d, random.Random(7), batch=5)
    src, lengths, target = left_pad(srcs, d.pad()), torch.tensor([len(x) for x in srcs]), right_pad(golds, d.pad())
    enc_out = model.encoder(src, src_lengths=lengths)
    losses = {}
    for mode in ("off", "shared"):
        with decoder_dropout(model.decoder, mode, len(srcs)) as shared:
            result = bso_search(model, enc_out, target, 3, d.pad(), d.eos(), d.bos(), COSTS["zero_one"], score="logit",
                                gold_kth="self", dropout=shared)
            scored = rescore(model, enc_out, target, result, d.pad(), d.eos(), dropout=shared)
        losses[mode] = bso_loss(scored.gold, scored.violating, result).item()
        if shared is not None:
            masks = torch.stack([m for (t, c), m in sorted(shared.masks.items()) if c == 1])  # (steps, B, H)
            values = set(masks.unique().tolist())
            assert values <= {0.0, 1 / 0.7} and len(values) == 2, values
            assert not torch.equal(masks[0, 0], masks[0, 1]) and not torch.equal(masks[0, 0], masks[1, 0])
    assert losses["off"] != losses["shared"], losses
    assert model.decoder.training  # the context restores the mode


def test_shared_dropout_refuses_other_decoders():
    d = make_dict()
    with pytest.raises(ValueError, match="--bso-dropout shared supports fairseq's LSTMDecoder"):
        with decoder_dropout(make_transformer(d, 0).decoder, "shared", 2):
            pass


def test_gold_kth_rule_changes_the_rival():
    """The lever cases include a gold that is exactly the K-th item (else the rule would be untested)."""
    d = make_dict()
    hits = 0
    for seed, K, score, gold_kth, nll in LEVER_CASES:
        if gold_kth != "previous":
            continue
        model = make_model(d, 10 + seed, layers=1 + seed % 2, bidirectional=seed % 3 == 0, share=seed % 2 == 1)
        srcs, golds = random_batch(d, random.Random(100 + seed), batch=5)
        a, _ = vectorized(model, d, srcs, golds, K, "zero_one", score, "self")
        b, _ = vectorized(model, d, srcs, golds, K, "zero_one", score, "previous")
        hits += int(not torch.equal(a.rival_scores, b.rival_scores))
    assert hits > 0, "no lever case puts the gold exactly K-th"


def test_cases_cover_the_corner_cases():
    """The random cases above include length-1 targets, internal </s>, K >= vocabulary, resets."""
    d = make_dict()
    seen_len1 = seen_internal_eos = False
    for seed in range(6):
        _, golds = random_batch(d, random.Random(seed), batch=5)
        seen_len1 |= any(len(g) == 1 for g in golds)
        seen_internal_eos |= any(d.eos() in g[:-1] for g in golds)
    assert seen_len1 and seen_internal_eos
    assert max(K for _, K, _ in CASES) > len(d) - 2  # more beam slots than candidate tokens


def test_gold_that_never_falls_off_gives_zero_loss():
    """Optimize the BSO loss on one example until the gold wins everywhere: then no violation, loss 0."""
    d = make_dict()
    model = make_model(d, 0)
    model.train()
    srcs, golds = [[d.index("a"), d.index("b"), d.eos()]], [[d.index("c"), d.index("a"), d.index("e"), d.eos()]]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        result, loss = vectorized(model, d, srcs, golds, 3, "zero_one")
        if not result.violation.any():
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    result, loss = vectorized(model, d, srcs, golds, 3, "zero_one")
    assert not result.violation.any() and loss.item() == 0.0
    viols, resets, ref_loss, _ = reference_bso(model, torch.tensor(srcs), torch.tensor([3]), golds[0], 3,
                                               {d.pad(), d.bos()}, list_cost("zero_one"), d.eos())
    assert viols == [] and float(ref_loss) == 0.0
    g = grads(model, loss)  # the zero loss still backpropagates (fairseq calls backward on it)
    assert all(v.abs().sum() == 0 for v in g.values())


def test_gathered_logits_equal_full_output_layer():
    d = make_dict()
    for share in (False, True):
        model = make_model(d, 1, share=share)
        feats = torch.randn(7, 8, dtype=torch.float64)
        tokens = torch.randint(0, len(d), (7,))
        full = model.decoder.output_layer(feats).gather(1, tokens.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(gathered_logits(model.decoder, feats, tokens), full)


def test_segment_costs_use_the_segment_since_the_last_reset():
    """A hand-made case: a reset at step 1 (so the segment of steps 2.. starts at 2, as the search
    records it), then a violation at step 3 scored on steps 2..3 only.  (The search's segment starts
    are checked against the literal reference's Δ in the tests above.)"""
    from fairseq_bso.bso.search import segment_costs
    target = torch.tensor([[5, 6, 7, 8, 2]])
    viol_tokens = torch.tensor([[9, 6, 7, 9, 2]])
    violation = torch.tensor([[False, True, False, True, False]])
    segment_start = torch.tensor([[0, 0, 2, 2, 2]])
    delta = segment_costs(violation, segment_start, viol_tokens, target, COSTS["sentence_bleu"])
    mask01 = torch.tensor([[True, True, False, False, False]])
    mask23 = torch.tensor([[False, False, True, True, False]])
    assert delta[0, 1].item() == pytest.approx(1 - segment_bleu(viol_tokens, target, mask01, mask01).item())
    assert delta[0, 3].item() == pytest.approx(1 - segment_bleu(viol_tokens, target, mask23, mask23).item())
    assert delta[0, 0] == 0 and delta[0, 2] == 0


def make_transformer(d, seed):
    import argparse
    from types import SimpleNamespace
    from fairseq.models.transformer import TransformerModel, base_architecture
    torch.manual_seed(seed)
    args = argparse.Namespace(encoder_layers=1, decoder_layers=1, encoder_embed_dim=8, decoder_embed_dim=8,
                              encoder_ffn_embed_dim=16, decoder_ffn_embed_dim=16, encoder_attention_heads=2,
                              decoder_attention_heads=2, dropout=0.0, attention_dropout=0.0,
                              activation_dropout=0.0, max_source_positions=64, max_target_positions=64)
    base_architecture(args)
    model = TransformerModel.build_model(args, SimpleNamespace(source_dictionary=d, target_dictionary=d))
    model = model.double()  # float64: the comparisons check exactness
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.mark.parametrize("seed,K", [(0, 2), (1, 3), (2, 9)])
def test_transformer_decoder_search_equals_reference(seed, K):
    """Any fairseq incremental decoder: the Transformer's cached keys/values follow resets too."""
    d = make_dict()
    model = make_transformer(d, seed)
    model.train()
    srcs, golds = random_batch(d, random.Random(seed), batch=4)
    result, loss = vectorized(model, d, srcs, golds, K, "zero_one")
    g_vec = grads(model, loss)
    ref_loss = 0.0
    for b, (s, g) in enumerate(zip(srcs, golds)):
        viols, resets, l_b, _ = reference_bso(model, torch.tensor([s]), torch.tensor([len(s)]), g, K,
                                              {d.pad(), d.bos()}, list_cost("zero_one"), d.eos())
        assert result.violation[b].nonzero().view(-1).tolist() == viols
        assert result.reset[b].nonzero().view(-1).tolist() == resets
        ref_loss = ref_loss + l_b
    assert result.reset.any()  # the case exercises the splice
    # fairseq's attention softmax runs in float32 even in a float64 model (utils.softmax casts),
    # so the two routes agree to float32 rounding (eps 1.2e-7) amplified through a few layers
    assert_loss_equal(loss.item(), ref_loss, rel=1e-5)
    assert_grads_equal(g_vec, grads(model, ref_loss), rel=1e-5)


@pytest.mark.parametrize("decoder,score,nll,stop", [("lstm", "logit", 0.0, False), ("lstm", "log_softmax", 0.5, False),
                                                    ("lstm", "log_softmax", 0.0, True),
                                                    ("transformer", "logit", 0.3, False),
                                                    ("transformer", "log_softmax", 0.0, True)])
def test_rescore_modes_compute_the_same_scores(decoder, score, nll, stop):
    """The parallel teacher-forced re-scoring (one row per violation), the packed one (one masked
    2T-long row per sentence, Transformer only) and the incremental one (2·B rows spliced at
    resets) give the same gold and violating scores, loss and gradients (float64;
    the reference tests above take the criterion's ``auto`` choice, which with these random models'
    many violations is mostly the incremental one)."""
    from fairseq_bso.bso.search import rescore_incremental, rescore_packed, rescore_parallel
    d = make_dict()
    model = make_transformer(d, 5) if decoder == "transformer" else stop_model(d, 1, score)
    model.train()
    srcs, golds = stop_batch(d, 3)
    src, lengths, target = left_pad(srcs, d.pad()), torch.tensor([len(x) for x in srcs]), right_pad(golds, d.pad())
    out = {}
    with deterministic_decoder(model.decoder):
        with torch.no_grad():
            result = bso_search(model, model.encoder(src, src_lengths=lengths), target, 3, d.pad(), d.eos(), d.bos(),
                                COSTS["sentence_bleu"], score=score, gold_kth="previous", stop=stop, lenpen=0.8)
        routes = [("parallel", rescore_parallel), ("incremental", rescore_incremental)]
        if decoder == "transformer":
            routes.append(("packed", rescore_packed))
        for name, fn in routes:
            enc = model.encoder(src, src_lengths=lengths)  # a graph of its own per route
            scored = fn(model, enc, target, result, d.pad(), d.eos(), nll=nll > 0)
            loss = bso_loss(scored.gold, scored.violating, result)
            if nll > 0:
                loss = loss + nll * nll_loss(scored.gold_lprobs, target, d.pad())
            out[name] = (loss, grads(model, loss), scored)
    assert result.violation.sum() > 0 and result.reset.any()
    segment = torch.zeros_like(result.violation)  # the steps the loss reads violating scores at
    for b, t in result.violations().tolist():
        segment[b, result.segment_start[b, t] if score == "log_softmax" else t: t + 1] = True
    li, gi, si = out["incremental"]
    rel = 1e-5 if decoder == "transformer" else 1e-9  # fairseq's attention softmax runs in float32
    gold_steps = target.ne(d.pad())
    for route in out:
        if route == "incremental":
            continue
        lp, gp, sp = out[route]
        for what, got, want in (("gold", sp.gold[gold_steps], si.gold[gold_steps]),
                                ("violating", sp.violating[segment], si.violating[segment])):
            diff = (got - want).abs().max().item()
            assert diff <= rel * max(want.abs().max().item(), 1.0), f"{what}: {route} vs incremental {diff:.3e}"
        assert_loss_equal(lp, li, rel=rel)
        assert_grads_equal(gp, gi, rel=rel)


SEARCH_FIELDS = ("violation", "reset", "delta", "violating_tokens", "gold_scores", "rival_scores", "segment_start",
                 "gold_step")


@pytest.mark.parametrize("decoder,score,stop,dropout,constraint", [
    ("lstm", "logit", False, False, False), ("lstm", "log_softmax", True, False, False),
    ("lstm", "logit", True, True, False), ("lstm", "log_softmax", False, True, False),
    ("lstm", "logit", False, False, True), ("transformer", "log_softmax", False, False, False),
    ("transformer", "logit", True, False, False)])
def test_live_slots_only_and_fixed_shape_searches_agree(decoder, score, stop, dropout, constraint):
    """The search's two ways of running the decoder (COMPACT: the live slots only, a CPU's default;
    every B·K slot masked, an accelerator's) find the same violations, resets, paths and Δ, and the
    same scores up to float64 rounding (the decoder runs on other row counts), with learning to
    stop, the shared dropout bank (same masks per sentence) and the word-order constraint."""
    from fairseq_bso.constraints import WordOrderConstraint
    d = make_dict()
    if decoder == "transformer":
        model = make_transformer(d, 7)
    elif dropout:
        model = dropout_model(d, 3, 2, 8, score, eos_boost=1.0 if stop else 0.0)
    else:
        model = stop_model(d, 2, score)
    model.train()
    srcs, golds = stop_batch(d, 4)
    if constraint:  # the sources are permutations of the golds (longest first: the LSTM encoder packs them)
        golds = sorted(golds, key=len, reverse=True)
        srcs = [sorted(g[:-1]) + [d.eos()] for g in golds]
    src, lengths, target = left_pad(srcs, d.pad()), torch.tensor([len(x) for x in srcs]), right_pad(golds, d.pad())
    results = {}
    for compact in (True, False):
        torch.manual_seed(11)  # the same dropout masks in both runs
        with torch.no_grad():
            enc = model.encoder(src, src_lengths=lengths)
            with decoder_dropout(model.decoder, "shared" if dropout else "off", len(golds)) as shared:
                results[compact] = bso_search(model, enc, target, 3, d.pad(), d.eos(), d.bos(),
                                              COSTS["sentence_bleu"], score=score, gold_kth="previous", stop=stop,
                                              lenpen=0.8, dropout=shared,
                                              constraint=WordOrderConstraint(d, d) if constraint else None,
                                              src_tokens=src, compact=compact)
    live, fixed = results[True], results[False]
    assert fixed.violation.any() and fixed.reset.any(), "the case must exercise resets"
    for name in SEARCH_FIELDS:
        a, b = getattr(live, name), getattr(fixed, name)
        if a.is_floating_point():
            finite = torch.isfinite(b)
            assert torch.equal(torch.isfinite(a), finite), f"{name}: -inf at other places"
            diff = (a[finite] - b[finite]).abs().max().item() if finite.any() else 0.0
            scale = max(b[finite].abs().max().item() if finite.any() else 0.0, 1.0)
            rel = 1e-5 if decoder == "transformer" else 1e-12  # fairseq's attention softmax runs in float32
            assert diff <= rel * scale, f"{name}: live slots only vs fixed shape differ by {diff:.3e} (scale {scale:.3e})"
        else:
            assert torch.equal(a, b), f"{name}: live slots only {a.tolist()} vs fixed shape {b.tolist()}"


def test_an_unknown_compact_setting_is_refused(monkeypatch):
    """COMPACT chooses the search's route: a value it does not know is an error, not a silent fixed shape."""
    from fairseq_bso.bso import search
    d = make_dict()
    model = make_model(d, 0)
    srcs, golds = random_batch(d, random.Random(0), batch=2)
    src, target = left_pad(srcs, d.pad()), right_pad(golds, d.pad())
    monkeypatch.setattr(search, "COMPACT", "gpu")
    with pytest.raises(ValueError, match="COMPACT must be 'cpu', 'always' or 'never', got 'gpu'"):
        with torch.no_grad():
            enc = model.encoder(src, src_lengths=torch.tensor([len(x) for x in srcs]))
            search.bso_search(model, enc, target, 2, d.pad(), d.eos(), d.bos(), COSTS["zero_one"], score="logit",
                              gold_kth="self")
