"""Every criterion and task option reaches the code it controls (issue 32).

The task, the model and the criterion are built from a parsed command line exactly as
``fairseq-train`` builds them (``options.parse_args_and_arch`` → ``tasks.setup_task`` →
``task.build_model`` / ``task.build_criterion``), then the criterion runs on a fixed model and
batch in process.  Each test compares the criterion's loss, violation count and Δ sum *with* and
*without* an option against an independent reference computed for each setting: the literal
Algorithm 1 of ``tests/bso_reference.py`` (one sentence at a time, full recompute of every
prefix), Δ from ``sacrebleu.sentence_bleu`` itself, the word-order constraint as a brute force
over token counts, magnitude pruning as a plain Python sort, and the gradual schedule's cubic
written out.  Each test also asserts that the reference values with and without the option differ
on its batch, so that an option which silently stops reaching its code fails the test.

The model: the tiny LSTM of ``harness.TINY_LSTM`` over the word-ordering fixture's dictionary,
with weights drawn from a fixed generator (N(0, 1)), in float64.  The batch: the first 8
validation sources, with golds sampled from that model itself (inverse-CDF sampling with fixed
uniforms), so that the gold stays on the beam for a few steps before it falls off: violating
segments longer than one token, sentence-BLEU Δ that varies between violations, and a
log-softmax score that differs from the raw logit (with a violation at every step, both scores
give the same loss).  ConBSO's batch is the fixture's own permutation golds.
"""

import math
import os
import re
from collections import Counter

import pytest
import torch

import harness
from bso_reference import reference_bso, reference_nll

K = 3  # training beam of the reference runs (--bso-beam-size 3 --bso-curriculum-start 3)
BSO = ["--task", "constrained_beam_training", "--criterion", "bso", "--bso-beam-size", str(K),
       "--bso-curriculum-start", str(K), "--bso-score", "logit", "--bso-gold-kth", "self"]
MODEL_SEED, GOLD_SEED = 1, 0


def build(data_bin, argv, arch=harness.TINY_LSTM):
    """(task, model, criterion, cfg) from a fairseq-train command line, built as fairseq-train builds them."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [data_bin, "--user-dir", harness.USER_DIR, *arch, "--cpu", *argv])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion, cfg


def fixed_weights(model, seed=MODEL_SEED, double=True):
    """Every parameter N(0, 1) from a fixed generator, eval mode, float64 unless ``double`` is False."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return (model.double() if double else model).eval()


def valid_batch(task, n=8):
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_sentences=n, required_batch_size_multiple=1)
    return next(iter(itr.next_epoch_itr(shuffle=False)))


def unpadded(row, pad):
    return [t for t in row.tolist() if t != pad]


def sampled_golds(model, d, sample, seed=GOLD_SEED, max_len=7):
    """Golds drawn from the model itself: inverse-CDF sampling of softmax(f) with fixed uniforms
    (never <pad>, <s>, <unk>; </s> only after the first word and always last)."""
    g = torch.Generator().manual_seed(seed)
    golds = []
    with torch.no_grad():
        for row in sample["net_input"]["src_tokens"]:
            src = torch.tensor([unpadded(row, d.pad())])
            enc = model.encoder(src, src_lengths=torch.tensor([src.size(1)]))
            prefix = []
            while len(prefix) < max_len - 1:
                logits = model.decoder(torch.tensor([[d.eos()] + prefix]), encoder_out=enc)[0][0, -1].clone()
                logits[[d.pad(), d.bos(), d.unk()]] = float("-inf")
                if not prefix:
                    logits[d.eos()] = float("-inf")
                cdf = torch.softmax(logits, -1).cumsum(0)
                u = torch.rand((), generator=g, dtype=torch.float64).item() * cdf[-1].item()
                w = min(int((cdf < u).sum()), len(cdf) - 1)
                if w == d.eos():
                    break
                prefix.append(w)
            golds.append(prefix + [d.eos()])
    return golds


def with_golds(sample, golds, pad):
    width = max(len(g) for g in golds)
    target = torch.tensor([g + [pad] * (width - len(g)) for g in golds])
    return dict(sample, target=target, ntokens=sum(len(g) for g in golds))


def sacrebleu_delta(violating, gold):
    """Δ = 1 − sentence BLEU of the violating segment against the gold segment, by sacrebleu itself."""
    import sacrebleu
    hyp, ref = " ".join(map(str, violating)), " ".join(map(str, gold))
    return 1.0 - sacrebleu.sentence_bleu(hyp, [ref], smooth_method="exp", tokenize="none").score / 100.0


REFERENCE_COSTS = {"zero_one": lambda violating, gold: 1.0, "sentence_bleu": sacrebleu_delta}


def permutation_allowed(src_words, eos):
    """Word order by brute force over counts: w may follow the prefix when the prefix + w can still
    end as a permutation of the source words followed by </s>."""
    def allowed(prefix):
        left = Counter(src_words) - Counter(prefix)
        return set(left) | ({eos} if not left else set())
    return allowed


_REFERENCES = {}


def reference(model, d, sample, beam=K, cost="zero_one", margin=1.0, score="logit", gold_kth="self", stop=False,
              constraint=False, nll=0.0):
    """(loss, violations, Δ sum, distinct Δ values) of the literal Algorithm 1 summed over the batch
    (memoized on the arguments, the model's weights and the batch: several tests share a setting)."""
    with torch.no_grad():
        key = (beam, cost, margin, score, gold_kth, stop, constraint, nll, str(sample["target"].tolist()),
               str(sample["net_input"]["src_tokens"].tolist()),
               tuple(float(p.double().sum()) for p in model.parameters()))
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(model, d, sample, beam, cost, margin, score, gold_kth, stop, constraint, nll)
    return _REFERENCES[key]


def _reference(model, d, sample, beam, cost, margin, score, gold_kth, stop, constraint, nll):
    loss, violations, deltas = 0.0, 0, []
    for src_row, tgt_row in zip(sample["net_input"]["src_tokens"], sample["target"]):
        src, gold = unpadded(src_row, d.pad()), unpadded(tgt_row, d.pad())
        src_t, length = torch.tensor([src]), torch.tensor([len(src)])
        allowed = permutation_allowed(src[:-1], d.eos()) if constraint else None
        viols, _, l_b, by_step = reference_bso(model, src_t, length, gold, beam, {d.pad(), d.bos()},
                                               REFERENCE_COSTS[cost], d.eos(), margin=margin, allowed=allowed,
                                               score=score, gold_kth=gold_kth, stop=stop)
        loss += float(l_b.detach())
        if nll:
            loss += nll * float(reference_nll(model, src_t, length, gold, d.eos()).detach())
        violations += len(viols)
        deltas += list(by_step.values())
    return loss, violations, sum(deltas), sorted({round(x, 6) for x in deltas})


def run_criterion(criterion, model, sample):
    loss, sample_size, log = criterion(model, sample)
    return float(loss.detach()), log


FLOAT32_EPS = 2.0 ** -23


def assert_matches(got, log, want, what, float32_delta=False):
    """The criterion's loss, violation count and Δ sum against the reference's.  Float64 throughout:
    summation order only, so 1e-9 relative to the loss's magnitude.  The sentence-BLEU Δ is computed in
    float32 (every loss term is positive at a violation, so its rounding is at most 2 float32 eps of the
    loss); Δ sums to 1e-5 per violation."""
    loss, violations, delta_sum, _ = want
    rel = 2 * FLOAT32_EPS if float32_delta else 1e-9
    assert abs(got - loss) <= rel * max(abs(loss), 1.0), f"{what}: criterion loss {got!r}, reference {loss!r}"
    assert log["bso_violations"] == violations, f"{what}: criterion {log['bso_violations']} violations, " \
                                                f"reference {violations}"
    assert abs(log["bso_delta"] - delta_sum) <= 1e-5 * max(violations, 1), \
        f"{what}: criterion Δ sum {log['bso_delta']!r}, reference {delta_sum!r}"


def assert_differ(a, b, what):
    """The option matters on this batch: the two references' losses differ well beyond rounding."""
    assert abs(a[0] - b[0]) > 1e-3 * max(abs(a[0]), 1.0), f"{what}: the batch does not tell them apart " \
                                                          f"(reference losses {a[0]!r} and {b[0]!r})"


@pytest.fixture(scope="module")
def sampled(word_order_bin):
    """(data_bin, dictionary, batch with sampled golds) for the fixed model."""
    task, model, _, _ = build(word_order_bin, BSO)
    model = fixed_weights(model)
    d = task.target_dictionary
    sample = valid_batch(task)
    return word_order_bin, d, with_golds(sample, sampled_golds(model, d, sample), d.pad())


def criterion_on(data_bin, argv, sample, train=False):
    """Loss and logging output of the criterion built from ``BSO + argv`` on the fixed model."""
    task, model, criterion, _ = build(data_bin, [*BSO, *argv])
    model = fixed_weights(model)
    model.train(train)
    return (*run_criterion(criterion, model, sample), model, task, criterion)


# -- the bso criterion -------------------------------------------------------------------------------------------

def test_margin_is_one(sampled):
    """The criterion's margin (a constant, the paper's 1): loss, violations and Δ equal the reference's at
    margin 1, and the batch tells margin 1 from margin 0."""
    data_bin, d, sample = sampled
    got, log, model, _, _ = criterion_on(data_bin, [], sample)
    want = reference(model, d, sample)
    assert_matches(got, log, want, "margin 1")
    assert_differ(want, reference(model, d, sample, margin=0.0), "margin 1 vs 0")
    assert log["bso_beam"] == K * sample["target"].size(0)


@pytest.mark.parametrize("option,values,lever", [
    ("--bso-cost", ("zero_one", "sentence_bleu"), "cost"),
    ("--bso-score", ("logit", "log_softmax"), "score"),
    ("--bso-gold-kth", ("self", "previous"), "gold_kth"),
])
def test_choice_options_reach_the_search(sampled, option, values, lever):
    """Each value of a choice option gives the reference's loss, violations and Δ for that value, and
    the values give different losses on this batch."""
    data_bin, d, sample = sampled
    wants = []
    for value in values:
        got, log, model, _, _ = criterion_on(data_bin, [option, value], sample)
        want = reference(model, d, sample, **{lever: value})
        assert_matches(got, log, want, f"{option} {value}", float32_delta=value == "sentence_bleu")
        wants.append(want)
    assert_differ(wants[0], wants[1], option)
    if option == "--bso-cost":  # Δ varies between violations (and sentences): not only 0 or 1
        assert len([x for x in wants[1][3] if 0 < x < 1]) >= 3, f"sentence-BLEU Δ values {wants[1][3]}"


def test_learn_to_stop_reaches_the_search(sampled):
    """--bso-learn-to-stop with the </s> logit raised by 4 (so that hypotheses finish early, as in
    test_bso_search's stop cases): the reference's loss, violations and Δ with and without the step."""
    data_bin, d, sample = sampled
    wants = {}
    for stop in (False, True):
        task, model, criterion, _ = build(data_bin, [*BSO, *(["--bso-learn-to-stop"] if stop else [])])
        model = fixed_weights(model)
        with torch.no_grad():
            model.decoder.fc_out.bias[d.eos()] += 4.0
        got, log = run_criterion(criterion, model, sample)
        wants[stop] = reference(model, d, sample, stop=stop)
        assert_matches(got, log, wants[stop], f"--bso-learn-to-stop {stop}")
        assert ("bso_finished_rivals" in log) == stop
    assert_differ(wants[False], wants[True], "--bso-learn-to-stop")


@pytest.mark.parametrize("weight", [0.5, 1.5])
def test_nll_weight_adds_lambda_times_the_nll(sampled, weight):
    data_bin, d, sample = sampled
    got, log, model, _, _ = criterion_on(data_bin, ["--bso-nll-weight", str(weight)], sample)
    want = reference(model, d, sample, nll=weight)
    assert_matches(got, log, want, f"--bso-nll-weight {weight}")
    assert_differ(want, reference(model, d, sample), "--bso-nll-weight")
    margin_only = reference(model, d, sample)[0]
    assert abs(float(log["bso_margin_loss"]) - margin_only) <= 1e-9 * max(margin_only, 1.0)


def test_beam_size_and_curriculum_follow_the_epoch(sampled):
    """--bso-beam-size 4 --bso-curriculum-start 2 --bso-curriculum-epochs 2: K is 2, 2, 3, 3, 4, 4 in epochs
    1..6 (told by fairseq's task.begin_epoch), and each epoch's loss is the reference's at that K."""
    data_bin, d, sample = sampled
    task, model, criterion, _ = build(data_bin, [*BSO, "--bso-beam-size", "4", "--bso-curriculum-start", "2",
                                                 "--bso-curriculum-epochs", "2"])
    model = fixed_weights(model)
    wants = {k: reference(model, d, sample, beam=k) for k in (2, 3, 4)}
    for epoch, k in zip(range(1, 7), (2, 2, 3, 3, 4, 4)):
        task.begin_epoch(epoch, model)
        got, log = run_criterion(criterion, model, sample)
        assert log["bso_beam"] == k * sample["target"].size(0), f"epoch {epoch}: K·B {log['bso_beam']}, want {k}·B"
        assert_matches(got, log, wants[k], f"epoch {epoch} (K = {k})")
    assert_differ(wants[2], wants[3], "K 2 vs 3")
    assert_differ(wants[3], wants[4], "K 3 vs 4")


def test_dropout_option_switches_decoder_dropout(sampled):
    """A model in train mode with decoder dropout 0.3: --bso-dropout off gives the loss of the
    dropout-free reference, shared (the default being off) gives another loss; in eval mode both are the
    reference's."""
    data_bin, d, sample = sampled
    losses = {}
    for mode in ("off", "shared"):
        task, model, criterion, _ = build(data_bin, [*BSO, "--bso-dropout", mode])
        model = fixed_weights(model)
        want = reference(model, d, sample)
        for m in model.decoder.modules():
            if type(m).__name__ == "FairseqDropout":
                m.p = 0.3
        model.eval()
        got, log = run_criterion(criterion, model, sample)
        assert_matches(got, log, want, f"--bso-dropout {mode}, eval mode")
        model.train()
        torch.manual_seed(0)
        losses[mode], log = run_criterion(criterion, model, sample)
        if mode == "off":
            assert_matches(losses[mode], log, want, "--bso-dropout off, train mode")
    assert abs(losses["shared"] - losses["off"]) > 1e-3 * losses["off"], losses


def test_curriculum_reset_optimizer_resets_when_k_grows(sampled):
    """--bso-curriculum-reset-optimizer: the optimizer step after K grows starts from a fresh Adagrad
    state (accumulators at 0), a step without growth keeps it; without the option it is never reset."""
    from fairseq.optim.adagrad import Adagrad
    from types import SimpleNamespace
    data_bin, _, _ = sampled
    for option in (True, False):
        extra = ["--bso-beam-size", "4", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1"]
        task, model, criterion, _ = build(data_bin, [*BSO, *extra, *(["--bso-curriculum-reset-optimizer"]
                                                                      if option else [])])
        params = [p for p in model.parameters()]
        opt = Adagrad(SimpleNamespace(lr=[0.1], weight_decay=0.0), params)

        def step(update):
            for p in params:
                p.grad = torch.ones_like(p)
            task.optimizer_step(opt, model, update)
            return sum(float(s["sum"].sum()) for s in opt.optimizer.state.values())

        n = sum(p.numel() for p in params)
        task.begin_epoch(1, model)
        assert step(0) == n and step(1) == 2 * n  # grad 1 everywhere: the accumulators count the steps
        task.begin_epoch(2, model)  # K: 2 -> 3
        assert step(2) == (n if option else 3 * n), f"reset option {option}: accumulators after K grew"
        assert step(3) == (2 * n if option else 4 * n)


def test_constraint_reaches_the_training_search(sampled):
    """--constraint word_order (ConBSO) on the fixture's permutation golds: the loss, violations and Δ of the
    reference whose candidates are the brute-force permutation prefixes; unconstrained gives another loss."""
    data_bin, d, _ = sampled
    task, _, _, _ = build(data_bin, BSO)
    sample = valid_batch(task)
    wants = {}
    for constraint in ("none", "word_order"):
        got, log, model, _, _ = criterion_on(data_bin, ["--constraint", constraint], sample)
        wants[constraint] = reference(model, d, sample, constraint=constraint != "none")
        assert_matches(got, log, wants[constraint], f"--constraint {constraint}")
    assert_differ(wants["none"], wants["word_order"], "--constraint")


def train_line(stdout):
    """{stat: value} of fairseq-train's epoch-1 train line."""
    line = re.search(r"\| train \| epoch 001 \|.*", stdout)
    assert line, stdout[-3000:]
    return {k: float(v) for k, v in re.findall(r"\| (\w+) ([-\d.]+)", line.group(0))}


def test_conbso_trains_with_the_constraint_through_fairseq_train(word_order_bin, nll_checkpoint, tmp_path):
    """ConBSO through fairseq-train: one update from the NLL checkpoint on one batch of the 20 validation
    pairs (--train-subset valid).  The logged training loss and violations per sentence are the literal
    reference's with the brute-force word-order constraint, not the unconstrained reference's (which
    --constraint none logs); the trained model then decodes permutations of the source."""
    from fairseq import checkpoint_utils
    task, model, _, _ = build(word_order_bin, BSO)
    model.load_state_dict(checkpoint_utils.load_checkpoint_to_cpu(nll_checkpoint)["model"])
    model = model.double().eval()
    d = task.target_dictionary
    sample = valid_batch(task, n=20)
    n = sample["target"].size(0)
    assert n == 20
    refs = {c: reference(model, d, sample, constraint=c == "word_order") for c in ("none", "word_order")}
    assert_differ(refs["none"], refs["word_order"], "--constraint on the validation pairs")
    save = str(tmp_path / "conbso")
    proc = harness.train(word_order_bin, save, criterion=BSO[2:], max_epoch=1, extra=[
        "--finetune-from-model", nll_checkpoint, "--task", "constrained_beam_training", "--constraint", "word_order",
        "--train-subset", "valid", "--batch-size", "20", "--max-update", "1", "--disable-validation"])
    stats = train_line(proc.stdout)
    (loss, violations), (free_loss, free_violations) = ((r[0] / n, r[1] / n) for r in (refs["word_order"],
                                                                                        refs["none"]))
    # logged rounded to 3 decimals; the run is float32 (rounding ~1e-6 of the loss)
    tolerance = 5e-4 + 1e-5 * loss
    assert abs(free_loss - loss) > 100 * tolerance  # the unconstrained search's loss is far off
    assert abs(stats["loss"] - loss) <= tolerance, \
        f"logged loss {stats['loss']}, reference with the constraint {loss:.4f}, without {free_loss:.4f}"
    assert abs(stats["violations"] - violations) <= 5e-4, f"logged violations per sentence " \
        f"{stats['violations']}, reference with the constraint {violations}, without {free_violations}"
    out = harness.generate(word_order_bin, os.path.join(save, "checkpoint_last.pt"), beam=3,
                           extra=["--task", "constrained_beam_training", "--constraint", "word_order"]).stdout
    srcs = dict(re.findall(r"^S-(\d+)\t(.*)$", out, re.M))
    hyps = re.findall(r"^H-(\d+)\t\S+\t(.*)$", out, re.M)
    assert len(hyps) == len(srcs) == 20
    assert all(sorted(h.split()) == sorted(srcs[i].split()) for i, h in hyps), hyps


# -- word_kd -----------------------------------------------------------------------------------------------------

def kd_reference(student, teacher, sample, alpha, topk, eps, pad):
    """(1 − α)·NLL_ε + α·(−Σ_j Σ_v q_j(v) log p_j(v)) in float64 with explicit loops; q the teacher's softmax,
    truncated to its top k and renormalized; NLL_ε fairseq's label smoothing (ε/(V−1) on the other tokens)."""
    logp = torch.log_softmax(student(**sample["net_input"])[0].double(), -1)
    t_logits = teacher(**sample["net_input"])[0].double()
    target = sample["target"]
    V = logp.size(-1)
    nll = kd = 0.0
    for b in range(target.size(0)):
        for j in range(target.size(1)):
            y = int(target[b, j])
            if y == pad:
                continue
            lp = logp[b, j].tolist()
            nll += (1 - eps - eps / (V - 1)) * -lp[y] + eps / (V - 1) * -sum(lp)
            logits = t_logits[b, j].tolist()
            keep = sorted(range(V), key=lambda v: -logits[v])[: topk or V]
            z = sum(math.exp(logits[v]) for v in keep)
            kd += -sum(math.exp(logits[v]) / z * lp[v] for v in keep)
    return (1 - alpha) * nll + alpha * kd


def test_word_kd_options_reach_the_loss(word_order_bin, nll_checkpoint):
    """--kd-teacher-path, --kd-alpha, --kd-topk, --kd-label-smoothing from the command line: the loss is the
    formula's with those values, and each option moves it on this batch."""
    from fairseq import checkpoint_utils
    teacher = checkpoint_utils.load_model_ensemble([nll_checkpoint])[0][0].double().eval()
    settings = [(0.5, 0, 0.0), (0.8, 0, 0.0), (0.5, 3, 0.0), (0.5, 0, 0.2)]
    wants = []
    for alpha, topk, eps in settings:
        task, student, criterion, _ = build(word_order_bin, [
            "--task", "translation", "--criterion", "word_kd", "--kd-teacher-path", nll_checkpoint,
            "--kd-alpha", str(alpha), "--kd-topk", str(topk), "--kd-label-smoothing", str(eps)])
        student = fixed_weights(student)
        sample = valid_batch(task)
        with torch.no_grad():
            loss, sample_size, _ = criterion(student, sample)
            want = kd_reference(student, teacher, sample, alpha, topk, eps, task.target_dictionary.pad())
        assert sample_size == sample["ntokens"]
        # the criterion takes q and the distillation term in float32: a few float32 eps of the (positive) terms
        assert abs(loss.item() - want) <= 16 * FLOAT32_EPS * want, \
            f"α={alpha} k={topk} ε={eps}: criterion {loss.item()!r}, reference {want!r}"
        wants.append(want)
    for i, what in ((1, "--kd-alpha"), (2, "--kd-topk"), (3, "--kd-label-smoothing")):
        assert abs(wants[i] - wants[0]) > 1e-3 * wants[0], f"{what} does not move the loss: {wants}"


# -- pruning options (the constrained_beam_training task) ---------------------------------------------------------

def brute_force_pruned(weights, ratio, scheme, classes):
    """Pruned (name, index) pairs by a plain sort of |w| (or |w|/σ_class); ties by position.  ``classes``:
    {name: class} of the matrices that take part."""
    import statistics
    values = {n: w.reshape(-1).tolist() for n, w in weights.items() if n in classes}
    sigma = {}
    for n, v in values.items():
        sigma.setdefault(classes[n], []).extend(v)
    sigma = {c: statistics.stdev(v) for c, v in sigma.items()}  # torch.std: the sample standard deviation
    groups, pos = {}, 0
    for n, v in values.items():
        for i, x in enumerate(v):
            score = abs(x) / sigma[classes[n]] if scheme == "class-distribution" else abs(x)
            groups.setdefault(classes[n] if scheme == "class-uniform" else "all", []).append((score, pos, n, i))
            pos += 1
    pruned = set()
    for items in groups.values():
        pruned |= {(n, i) for _, _, n, i in sorted(items)[: math.floor(ratio * len(items))]}
    return pruned


# The TINY_LSTM's weight matrices by kind and class (written out from its parameter list).
TINY_CLASSES = {
    "embeddings": {"encoder.embed_tokens.weight": "enc_emb", "decoder.embed_tokens.weight": "dec_emb"},
    "encoder": {"encoder.lstm.weight_ih_l0": "enc_l0", "encoder.lstm.weight_hh_l0": "enc_l0"},
    "decoder": {"decoder.layers.0.weight_ih": "dec_l0", "decoder.layers.0.weight_hh": "dec_l0"},
    "attention": {"decoder.attention.input_proj.weight": "in_proj", "decoder.attention.output_proj.weight": "out_proj"},
    "output": {"decoder.fc_out.weight": "fc_out"},
}


def pruned_positions(model):
    return {(n, i) for n, p in model.named_parameters() if p.dim() >= 2
            for i in (p.detach().reshape(-1) == 0).nonzero().view(-1).tolist()}


def step_task(task, model, update):
    """One optimizer step through the task (where fairseq's trainer calls it), with a zero learning rate."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    task.optimizer_step(opt, model, update)


@pytest.mark.parametrize("scheme,kinds,ratio", [("class-blind", "embeddings,encoder,decoder,attention,output", 0.5),
                                                ("class-uniform", "decoder,output", 0.3),
                                                ("class-distribution", "attention,embeddings", 0.6)])
def test_prune_ratio_scheme_and_classes_select_what_a_sort_selects(word_order_bin, scheme, kinds, ratio):
    task, model, _, _ = build(word_order_bin, ["--task", "constrained_beam_training", "--criterion", "cross_entropy",
                                               "--prune-ratio", str(ratio), "--prune-scheme", scheme,
                                               "--prune-classes", kinds, "--prune-start-update", "2"])
    model = fixed_weights(model, double=False)  # the selection sorts float32 scores: the same values here
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    classes = {n: c for k in kinds.split(",") for n, c in TINY_CLASSES[k].items()}
    for update in (0, 1):  # before --prune-start-update: nothing pruned
        step_task(task, model, update)
        assert not pruned_positions(model), f"pruned at update {update}, before --prune-start-update 2"
    step_task(task, model, 2)
    want = brute_force_pruned(weights, ratio, scheme, classes)
    got = pruned_positions(model)
    assert got == want, f"{scheme} {kinds} {ratio}: {len(got)} pruned, brute force {len(want)}, " \
                        f"{len(got ^ want)} differ"


def test_gradual_schedule_options(word_order_bin):
    """--prune-schedule gradual --prune-start-update 2 --prune-end-update 8 --prune-frequency 3
    --prune-ratio 0.6: pruning steps at updates 2, 5 and 8 to 0.6·(1 − (1 − (u − 2)/6)³) of the weights,
    i.e. 0, 0.525, 0.6 (class-blind), nothing between the steps."""
    task, model, _, _ = build(word_order_bin, ["--task", "constrained_beam_training", "--criterion", "cross_entropy",
                                               "--prune-ratio", "0.6", "--prune-schedule", "gradual",
                                               "--prune-start-update", "2", "--prune-end-update", "8",
                                               "--prune-frequency", "3"])
    model = fixed_weights(model, double=False)
    n = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    counts = []
    for update in range(11):
        step_task(task, model, update)
        counts.append(len(pruned_positions(model)))
    ratio_at = {2: 0.0, 5: 0.6 * (1 - 0.5 ** 3), 8: 0.6}
    want, current = [], 0
    for update in range(11):
        current = math.floor(ratio_at[update] * n) if update in ratio_at else current
        want.append(current)
    assert counts == want, f"zeros per update {counts}, want {want} (of {n})"


# -- generation options of the task ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv,generator", [([], "SequenceGenerator"),
                                            (["--lean-greedy"], "GreedyGenerator"),
                                            (["--bso-decoding"], "ConstrainedSequenceGenerator"),
                                            (["--constraint", "word_order"], "ConstrainedSequenceGenerator")])
def test_generation_options_choose_the_generator(word_order_bin, argv, generator):
    """--lean-greedy, --bso-decoding and --constraint reach task.build_generator (which fairseq-generate
    calls); what each generator decodes is checked against fairseq's in test_greedy, test_bso_e2e and
    test_constraints."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq import tasks
    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [word_order_bin, "--user-dir", harness.USER_DIR, "--cpu",
                                                "--task", "constrained_beam_training", "--beam", "1", *argv])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_training_parser(), [word_order_bin, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM,
                                        "--task", "constrained_beam_training"])).model)
    gen = task.build_generator([model], cfg.generation)
    assert type(gen).__name__ == generator
    if generator == "ConstrainedSequenceGenerator":
        assert gen.search.raw_scores is ("--bso-decoding" in argv)
        assert type(gen.search.constraint).__name__ == ("WordOrderConstraint" if "--constraint" in argv else "NoneType")
