"""Mixed precision on a CPU for pruning, word_kd and BSO, through fairseq-train (and, for BSO, the criterion's
forward on a model in half precision, under CPU autocast, in float32 and in float64).

What this fairseq build (fairseq-fixed 0.12.3.1) runs with ``--cpu``:

* ``--fp16 --fp16-no-flatten-grads``: the model in float16, ``FP16Optimizer`` with an fp32 master copy per
  parameter and dynamic loss scaling;
* ``--memory-efficient-fp16``: the model in float16, ``MemoryEfficientFP16Optimizer`` (fairseq's Adam keeps
  its state in float32);
* ``--amp``: runs, but in float32: fairseq uses ``torch.cuda.amp.autocast`` and ``torch.cuda.amp.GradScaler``,
  which torch disables without CUDA (a warning; the logged ``loss_scale`` stays 1);
* ``--fp16`` alone (flat fp32 master copy) stops in fairseq's ``build_fp32_params``, which calls
  ``torch.cuda.current_device()`` ("Torch not compiled with CUDA enabled"): checked below, so a fairseq that
  starts running it on CPU is noticed.

BSO on a half model: the decoder runs in float16, its logits are cast to float32 before the search ranks them
and before the re-scoring's log-softmax or margin, so the search's scores, the re-scored ones, Δ and the loss
are float32 (float64 for a float64 model).  ``--amp`` on a GPU autocasts matmuls to float16 with float32 weights,
which CPU autocast (``torch.autocast("cpu", dtype=...)``) stands in for here, float16 and bfloat16.
"""

import math
import os
import re

import pytest
import torch

import harness
from benchmarks.fp16_pruning import MODES, optimizer_nonzero_at_pruned, train_log_loss

MIXED = {m: MODES[m] for m in ("fp16", "memory_efficient_fp16", "amp")}


@pytest.mark.parametrize("mode", sorted(MIXED))
def test_pruning_in_mixed_precision_keeps_every_copy_of_pruned_weights_zero(word_order_bin, tmp_path, mode):
    """One epoch pruned to 50% at update 2 (after Adam has moments for every weight): finite loss, exactly
    floor(0.5·N) zeros, and no saved optimizer state tensor non-zero at a pruned position (under --fp16 it was
    3,257 of 3,328 before the pruner masked the fp32 master copy and the state)."""
    out = harness.train(word_order_bin, str(tmp_path), extra=["--task", "translation_pruned", "--prune-ratio", "0.5",
                                                              "--prune-start-update", "2", *MIXED[mode]]).stdout
    assert math.isfinite(train_log_loss(out)), out[-2000:]
    if mode != "amp":
        assert re.search(r"loss_scale (\d+)", out) and "loss_scale 1 " not in out, out[-1500:]  # really scaled
    counts = optimizer_nonzero_at_pruned(os.path.join(str(tmp_path), "checkpoint_last.pt"))
    total = sum(p.numel() for p in _selected_weights(os.path.join(str(tmp_path), "checkpoint_last.pt")))
    assert counts["pruned"] == math.floor(0.5 * total), f"{mode}: {counts['pruned']} zeros of {total}"
    assert counts["optimizer_nonzero"] == 0, f"{mode}: optimizer state non-zero at {counts['optimizer_nonzero']} " \
                                             f"of {counts['pruned']} pruned positions"


def _selected_weights(ckpt):
    from fairseq_bso.prune.masks import KINDS, prunable
    return prunable(torch.load(ckpt, map_location="cpu", weights_only=False)["model"].items(), KINDS).values()


def test_flat_fp16_needs_cuda_in_this_fairseq(word_order_bin, tmp_path):
    proc = harness.train(word_order_bin, str(tmp_path), extra=["--fp16"], check=False)
    assert proc.returncode != 0 and "Torch not compiled with CUDA enabled" in proc.stdout, proc.stdout[-1500:]


@pytest.mark.parametrize("mode", sorted(MIXED))
def test_word_kd_in_mixed_precision(word_order_bin, nll_checkpoint, tmp_path, mode):
    """word_kd with --kd-topk 4 trains two epochs with finite losses; the teacher runs in the student's dtype."""
    out = harness.train(word_order_bin, str(tmp_path), max_epoch=2, extra=MIXED[mode],
                        criterion=["--criterion", "word_kd", "--kd-teacher-path", nll_checkpoint, "--kd-alpha", "0.5",
                                   "--kd-topk", "4"]).stdout
    losses = [float(x) for x in re.findall(r"\| train \| epoch \d+ \| loss ([^ ]+)", out)]
    kd = [float(x) for x in re.findall(r"\| train \| epoch \d+ .*?\| kd_loss ([^ ]+)", out)]
    assert len(losses) == 2 and len(kd) == 2 and all(map(math.isfinite, losses + kd)), out[-2000:]


def test_teacher_runs_in_the_students_dtype(word_order_bin, nll_checkpoint):
    from fairseq_bso.distill.word_kd import WordKDCriterion
    task, student, _, sample = harness.task_and_valid_batch(nll_checkpoint, word_order_bin)
    crit = WordKDCriterion(task, kd_teacher_path=nll_checkpoint, kd_alpha=0.5, kd_topk=3)
    for dtype in (torch.float64, torch.float16, torch.float32):
        student = student.to(dtype)
        loss, _, _ = crit(student, sample)
        teacher_dtypes = {p.dtype for p in crit._teacher[0].parameters()}
        assert teacher_dtypes == {dtype}, f"student {dtype}, teacher {teacher_dtypes}"
        assert torch.isfinite(loss), f"{dtype}: loss {loss}"


# -- BSO in mixed precision -------------------------------------------------------------------------------------------

BSO = ["--criterion", "bso", "--bso-beam-size", "3", "--bso-curriculum-start", "3", "--bso-nll-weight", "0.5"]


def _epoch_line(out, split):
    """{stat: value} of fairseq's epoch-1 ``train`` or ``valid`` line."""
    lines = [ln for ln in out.splitlines() if f"| {split} | epoch 001 |" in ln]
    assert lines, f"no {split} epoch line:\n{out[-2000:]}"
    return dict(re.findall(r"\| (\w+) ([^ |]+)", lines[-1]))


@pytest.mark.parametrize("mode", sorted(MIXED))
def test_bso_trains_in_mixed_precision(word_order_bin, nll_checkpoint, tmp_path, mode):
    """--criterion bso (log_softmax score, K = 3, --bso-nll-weight 0.5) fine-tunes the NLL checkpoint for one epoch
    (13 updates) in each mode: the run completes, its train and valid losses are finite, the fp16 modes really ran
    with a scaled loss and a half model (every saved weight is a float16 value: fairseq saves the half model's
    weights cast to float32), --amp ran in float32 on CPU, and the checkpoint loads and scores a batch finitely."""
    out = harness.train(word_order_bin, str(tmp_path), criterion=BSO,
                        extra=["--finetune-from-model", nll_checkpoint, *MIXED[mode]]).stdout
    train, valid = _epoch_line(out, "train"), _epoch_line(out, "valid")
    for split, stats in (("train", train), ("valid", valid)):
        for key in ("loss", "margin_loss", "nll_loss"):
            assert math.isfinite(float(stats[key])), f"{mode} {split} {key} = {stats[key]}:\n{out[-2000:]}"
    assert float(train["violations"]) > 0, f"{mode}: no violation, the margin loss was never exercised: {train}"
    assert train["num_updates"] == "13", train
    from fairseq import checkpoint_utils
    import fairseq_bso  # noqa: F401
    ckpt = os.path.join(str(tmp_path), "checkpoint_last.pt")
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    weights = {n: p.detach() for n, p in models[0].named_parameters()}
    assert all(torch.isfinite(w).all() for w in weights.values()), f"{mode}: non-finite weights in {ckpt}"
    in_half = {n: bool(torch.equal(w.half().float(), w)) for n, w in weights.items()}
    if mode == "amp":  # torch disables CUDA autocast on CPU: float32 weights, the loss unscaled
        assert not all(in_half.values()) and "loss_scale 1 " in out, f"amp: weights all float16 values? {in_half}"
    else:
        assert int(train["loss_scale"]) > 1, f"{mode}: loss_scale {train['loss_scale']}"
        assert all(in_half.values()), f"{mode}: weights that are not float16 values: " \
                                      f"{[n for n, ok in in_half.items() if not ok]}"
    start = torch.load(nll_checkpoint, map_location="cpu", weights_only=False)["model"]
    assert any(not torch.equal(start[n].float(), w) for n, w in weights.items()), f"{mode}: the weights never moved"
    from fairseq_bso.bso.criterion import BSOCriterion
    _, _, _, sample = harness.task_and_valid_batch(ckpt, word_order_bin)
    with torch.no_grad():
        loss, _, _ = BSOCriterion(task, bso_beam_size=3, bso_curriculum_start=3, bso_nll_weight=0.5)(models[0], sample)
    assert torch.isfinite(loss), f"{mode}: the loaded checkpoint's BSO loss {loss}"


@pytest.mark.parametrize("mode,optimizer", [("fp16", "adagrad"), ("memory_efficient_fp16", "adam"), ("amp", "adagrad")])
def test_bso_curriculum_reset_reaches_the_optimizer_inside_the_mixed_precision_wrapper(word_order_bin, tmp_path, mode,
                                                                                      optimizer):
    """--bso-curriculum-reset-optimizer under fairseq's FP16Optimizer, MemoryEfficientFP16Optimizer (which refuses
    Adagrad: fairseq's "Unsupported optimizer") and AMPOptimizer: K grows at epoch 2 (4 updates per epoch), and the
    saved optimizer state counts the 4 steps since the reset, not 8, for every parameter."""
    out = harness.train(word_order_bin, str(tmp_path), max_epoch=2,
                        criterion=["--criterion", "bso", "--bso-beam-size", "3", "--bso-curriculum-start", "2",
                                   "--bso-curriculum-epochs", "1", "--bso-curriculum-reset-optimizer"],
                        extra=["--optimizer", optimizer, "--batch-size", "64", *MIXED[mode]]).stdout
    assert "K grew to 3, optimizer state reset" in out, out[-2000:]
    state = torch.load(os.path.join(str(tmp_path), "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 8, state["optimizer_history"][-1]
    steps = [float(s["step"]) for s in state["last_optimizer_state"]["state"].values()]
    assert steps and all(step == 4 for step in steps), f"{mode} {optimizer}: optimizer steps per parameter {steps}"


def test_bso_adagrad_keeps_its_layer_rates_under_fp16(word_order_bin, tmp_path):
    """The authors' optimizer (--optimizer bso_adagrad --bso-layer-lrs 0.02,0.02,0.2) under --fp16
    --fp16-no-flatten-grads: the float32 master copies are grouped into the three layers of the half model, the
    output layer at 0.2 (--memory-efficient-fp16 refuses it in fairseq: "Unsupported optimizer: BSOAdagrad"; --amp
    hands it the model's own parameters)."""
    out = harness.train(word_order_bin, str(tmp_path), criterion=["--criterion", "bso", "--bso-beam-size", "3"],
                        extra=["--optimizer", "bso_adagrad", "--bso-layer-lrs", "0.02,0.02,0.2", "--batch-size", "64",
                               *MIXED["fp16"]]).stdout
    layers = re.search(r"bso_adagrad: encoder lr 0.02 \((\d+) parameters\), decoder lr 0.02 \((\d+) parameters\), "
                       r"output lr 0.2 \((\d+) parameters\)", out)
    assert layers, out[-2000:]
    state = torch.load(os.path.join(str(tmp_path), "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    fc_out = sum(v.numel() for k, v in state["model"].items() if k.startswith("decoder.fc_out."))
    total = sum(v.numel() for v in state["model"].values())
    assert int(layers.group(3)) == fc_out and sum(map(int, layers.groups())) == total, (layers.groups(), fc_out, total)
    assert math.isfinite(train_log_loss(out)), out[-2000:]


#: Arithmetic of the unit test below: (parameter dtype, autocast dtype or None, the unit roundoff's eps).
#: ``float16`` is what --fp16 / --memory-efficient-fp16 run (the model cast to half); ``autocast_float16`` and
#: ``autocast_bfloat16`` are CPU stand-ins for --amp on a GPU (float32 weights, matmuls autocast to 16 bits:
#: mixed-dtype tensors meet in the criterion); float32 and float64 are the references.
PRECISIONS = {
    "float16": (torch.float16, None, 2.0 ** -10),
    "autocast_float16": (torch.float32, torch.float16, 2.0 ** -10),
    "autocast_bfloat16": (torch.float32, torch.bfloat16, 2.0 ** -7),
    "float32": (torch.float32, None, 2.0 ** -23),
    "float64": (torch.float64, None, 2.0 ** -52),
}
#: Rounding errors per score, in units of eps · A (A: :func:`_output_magnitude`): the output layer's dot product
#: and the features' own rounding, carried through it (the observed worst case is 0.4 of this bound).
ROUNDINGS = 4
#: Output layers scaled by these (only the output layers: the scores' rounding stays in proportion to A).
LSTM_SPREAD, TRANSFORMER_SPREAD = 10.0, 4.0


@pytest.fixture(scope="module")
def bso_models(word_order_bin, nll_checkpoint):
    """(task, {"lstm": (the NLL checkpoint's LSTM, a batch), "transformer": (a random 1-layer Transformer, a batch)}):
    output layers scaled (LSTM_SPREAD), each batch the first 8 valid pairs, 4 targets the model's greedy outputs."""
    import argparse
    from fairseq.models.transformer import TransformerModel, base_architecture
    task, lstm, _, sample = harness.task_and_valid_batch(nll_checkpoint, word_order_bin)
    torch.manual_seed(1)
    args = argparse.Namespace(encoder_layers=1, decoder_layers=1, encoder_embed_dim=16, decoder_embed_dim=16,
                              encoder_ffn_embed_dim=32, decoder_ffn_embed_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                              max_source_positions=64, max_target_positions=64)
    base_architecture(args)
    transformer = TransformerModel.build_model(args, task)
    models = {"lstm": lstm.float(), "transformer": transformer.float()}
    with torch.no_grad():  # spread the logits (a barely trained or a random model's are tiny): beams differ, no ties
        for model, scale in ((lstm.decoder.fc_out, LSTM_SPREAD), (transformer.decoder.output_projection,
                                                                   TRANSFORMER_SPREAD)):
            for p in model.parameters():
                p.mul_(scale)
    return task, {name: (model, _with_greedy_rows(model, sample, task.target_dictionary))
                  for name, model in models.items()}


def _with_greedy_rows(model, sample, d, rows=4):
    """The batch with its first ``rows`` targets replaced by the model's own greedy outputs (2 to 5 words, then
    ``</s>``; float64): on those the gold leads the beam and violates only where its margin over the K-th item is
    under 1, so segments longer than one step occur (on the data's targets this model violates at every step)."""
    import copy
    ref = copy.deepcopy(model).double().eval()
    pad, eos = d.pad(), d.eos()
    net = sample["net_input"]
    with torch.no_grad():
        enc = ref.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        tokens = torch.full((sample["target"].size(0), 1), eos)
        for _ in range(5):
            logits = ref.decoder(tokens, encoder_out=enc)[0][:, -1]
            logits[:, [pad, eos, d.bos(), d.unk()]] = -math.inf
            tokens = torch.cat([tokens, logits.argmax(1, keepdim=True)], 1)
    golds = [tokens[b, 1: 3 + b % 4].tolist() + [eos] for b in range(rows)]
    golds += [[w for w in row if w != pad] for row in sample["target"][rows:].tolist()]
    width = max(map(len, golds))
    target = torch.tensor([g + [pad] * (width - len(g)) for g in golds])
    prev = torch.full_like(target, eos)
    prev[:, 1:] = target[:, :-1].masked_fill(target[:, 1:].eq(pad), pad)  # fairseq's: </s> y_1 .. y_{n-1}, padded
    return {**sample, "target": target, "ntokens": int(target.ne(pad).sum()),
            "net_input": {**net, "prev_output_tokens": prev}}


def _output_magnitude(model, sample, rows, eos):
    """A = max over positions and vocabulary of Σ_i |f_i · W_vi| + |b_v|, the size of the terms whose rounding the
    scores carry, from a float64 teacher-forced pass of ``model`` over ``rows`` (the golds and the violating paths)."""
    import copy
    from fairseq_bso.bso.search import output_projection, teacher_forced_features
    ref = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        net = sample["net_input"]
        enc = ref.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        n = rows.size(0) // sample["target"].size(0)
        enc = ref.encoder.reorder_encoder_out(enc, torch.arange(sample["target"].size(0)).repeat(n))
        features = teacher_forced_features(ref.decoder, enc, rows, eos)
        weight, bias = output_projection(ref.decoder)
        terms = features.abs() @ weight.abs().t()
        if bias is not None:
            terms = terms + bias.abs()
    return terms.max().item()


@pytest.mark.parametrize("route", ["parallel", "incremental"])
@pytest.mark.parametrize("score", ["logit", "log_softmax"])
@pytest.mark.parametrize("arch", ["lstm", "transformer"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_bso_rescored_scores_agree_with_the_search_in_each_precision(bso_models, monkeypatch, precision, arch, score,
                                                                     route):
    """The criterion's forward (training mode, --bso-nll-weight 0.5) on a model in half precision, under CPU
    autocast, in float32 and in float64: at every violation the gold's and the rival's scores re-computed under
    autograd by the re-scoring (``Rescored``, both routes) agree with the ones the search ranked by
    (``SearchResult``) within the precision's rounding; the margin loss equals the one the search's scores imply;
    the NLL term equals the NLL of fairseq's teacher-forced forward of the same model at the same precision (the
    log-softmax in float32 for a 16-bit model, as fairseq's ``get_normalized_probs``); the loss is float32
    (float64 for a float64 model), never accumulated in half; the gradients are finite.

    Tolerances: one score carries the rounding of a dot product over the output layer, ROUNDINGS · eps · A with A
    the largest Σ_i |f_i W_vi| + |b_v| (:func:`_output_magnitude`); a ``log_softmax`` score at step t sums t + 1
    log-probabilities, each z_y − logsumexp(z) with two such errors.  The Transformer's attention softmax runs in
    float32 in fairseq whatever the model's dtype, so its eps is at least float32's."""
    _check_scores_in_precision(bso_models, monkeypatch, precision, arch, score, route)


@pytest.mark.parametrize("score,lenpen", [("logit", 1.0), ("log_softmax", 0.6)])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_bso_learning_to_stop_scores_agree_with_the_search_in_each_precision(bso_models, monkeypatch, precision,
                                                                             score, lenpen):
    """The same with --bso-learn-to-stop (the LSTM, the criterion's own choice of re-scoring route): the violations
    whose rival is a hypothesis that finished early compare the whole gold's ranking score g(y) (its final logit,
    or S(y) / T^lenpen) with the finished one's, and those agree with the search's too."""
    _check_scores_in_precision(bso_models, monkeypatch, precision, "lstm", score, "auto", stop=True, lenpen=lenpen)


@pytest.mark.parametrize("score", ["logit", "log_softmax"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_bso_shared_dropout_scores_agree_with_the_search_in_each_precision(bso_models, monkeypatch, precision, score):
    """The same with --bso-dropout shared (the LSTM, dropout 0.3 everywhere): the masks (drawn in the model's dtype)
    that the search and the re-scoring share keep their scores in agreement.  A grows by 1 / (1 − p), the masks'
    scale; the NLL term is not compared (fairseq's forward would draw other masks)."""
    _check_scores_in_precision(bso_models, monkeypatch, precision, "lstm", score, "auto", dropout=0.3)


def _check_scores_in_precision(bso_models, monkeypatch, precision, arch, score, route, stop=False, lenpen=1.0,
                               dropout=0.0):
    import copy
    import functools
    from fairseq_bso.bso import criterion as crit_module
    from fairseq_bso.bso.search import rescore, segment_sums, upcast
    task, models = bso_models
    model, sample = models[arch]
    param_dtype, autocast, eps = PRECISIONS[precision]
    if arch == "transformer":
        eps = max(eps, 2.0 ** -23)
    model = copy.deepcopy(model).to(param_dtype).train()
    if dropout:
        for m in model.modules():
            if type(m).__name__ == "FairseqDropout":
                m.p = dropout
        torch.manual_seed(3)
    monkeypatch.setattr(crit_module, "rescore", functools.partial(rescore, mode=route))
    crit = crit_module.BSOCriterion(task, bso_beam_size=3, bso_curriculum_start=3, bso_score=score,
                                    bso_nll_weight=0.5, bso_learn_to_stop=stop, bso_lenpen=lenpen,
                                    bso_dropout="shared" if dropout else "off")
    captured = []
    passes = crit.passes
    crit.passes = lambda *args, **kwargs: captured.append(passes(*args, **kwargs)) or captured[-1]
    d = task.target_dictionary
    target = sample["target"]
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        loss, sample_size, log = crit(model, sample)
        model.eval()  # the NLL reference: fairseq's teacher-forced forward of the same model, without dropout
        out = model(**sample["net_input"])
        lprobs = torch.log_softmax(upcast(out[0]), dim=-1)  # (get_normalized_probs: float32 even for float64)
    model.train()
    result, scored = captured[0]
    want_dtype = torch.float64 if param_dtype == torch.float64 else torch.float32
    assert loss.dtype == want_dtype and scored.gold.dtype == want_dtype and result.gold_scores.dtype == want_dtype, \
        f"{precision}: loss {loss.dtype}, re-scored {scored.gold.dtype}, search {result.gold_scores.dtype}"
    assert torch.isfinite(loss) and sample_size == target.size(0), \
        f"{precision}: loss {loss}, sample_size {sample_size}"
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), precision
    v = result.violation
    steps = torch.arange(target.size(1)).expand_as(target)
    longer = int((result.segment_start[v] < steps[v]).sum())
    assert v.sum() >= 5 and longer > 0, f"{precision} {arch}: a weak case, {int(v.sum())} violations, " \
                                        f"{longer} after a step on the beam"
    A = _output_magnitude(model, sample, torch.cat([target, result.violating_tokens]), d.eos()) / (1 - dropout)
    per_step = ROUNDINGS * eps * A
    label = f"{precision} {arch} {score} {route}" + (f" stop lenpen {lenpen}" if stop else "") + \
        (f" dropout {dropout} shared" if dropout else "")
    gold, violating = scored.gold, scored.violating
    finished = result.gold_step > steps  # learning to stop: a finished rival, compared with the whole gold
    if stop:
        assert finished[v].any(), f"{precision}: no finished rival among {int(v.sum())} violations"
    if score == "log_softmax":  # the search ranks whole prefixes: S(y_{1:t}); the re-scoring gives step log-probs
        cum = gold.cumsum(1)
        prefix = torch.cat([gold.new_zeros(gold.size(0), 1), cum], 1).gather(1, result.segment_start)
        violating = prefix + segment_sums(violating, result.segment_start)
        normalizer = (steps + 1).to(gold.dtype).pow(lenpen)  # g of a finished hypothesis: S / length^lenpen
        whole = cum.gather(1, result.gold_step) / (result.gold_step + 1).to(gold.dtype).pow(lenpen)
        gold = torch.where(finished, whole, cum)
        violating = torch.where(finished, violating / normalizer, violating)
        tol = 2 * per_step * (steps + 1).to(gold.dtype)
        gold_tol = 2 * per_step * (result.gold_step + 1).to(gold.dtype)  # (normalized by >= 1: lenpen >= 0)
    else:  # a finished rival is compared with the gold's final logit
        gold = gold.gather(1, result.gold_step)
        tol = gold_tol = torch.full(target.shape, per_step, dtype=gold.dtype)
    for name, got, want, bound in (("gold", gold, result.gold_scores, gold_tol),
                                   ("rival", violating, result.rival_scores, tol)):
        diff = (got - want).abs()
        worst = (diff - bound).masked_fill(~v, -math.inf).argmax()
        b, t = divmod(worst.item(), target.size(1))
        assert (diff[v] <= bound[v]).all(), (
            f"{label}: {name} score at (sentence {b}, step {t}): re-scored "
            f"{got[b, t].item():.6g}, search {want[b, t].item():.6g}, |diff| {diff[b, t].item():.3e} > tolerance "
            f"{bound[b, t].item():.3e} (eps {eps:.3g}, A {A:.3g}); max |diff| over {int(v.sum())} violations "
            f"{diff[v].max().item():.3e}")
    # the margin loss the search's own scores imply: Σ Δ (1 − S(y) + S(ŷ)) (the shared gold prefix cancels)
    implied = (result.delta * (1.0 - result.gold_scores + result.rival_scores))[v].sum().item()
    loss_tol = (result.delta * (gold_tol + tol))[v].sum().item()
    margin = log["bso_margin_loss"].item()
    assert abs(margin - implied) <= loss_tol, (f"{label}: margin loss {margin:.6g}, "
                                               f"from the search's scores {implied:.6g}, tolerance {loss_tol:.3e}")
    if dropout:
        return
    # the NLL term against the NLL of fairseq's teacher-forced forward (log-probabilities in float32 for a half model)
    ce = -lprobs.gather(2, target.unsqueeze(2)).squeeze(2).masked_fill(target.eq(d.pad()), 0.0).sum().item()
    nll = log["bso_nll"].item()
    nll_tol = 2 * per_step * sample["ntokens"]
    assert abs(nll - ce) <= nll_tol, (f"{label}: NLL term {nll:.6g}, fairseq's "
                                      f"teacher-forced NLL {ce:.6g}, tolerance {nll_tol:.3e}")
    assert abs(loss.item() - (margin + 0.5 * nll)) <= 1e-6 * max(abs(loss.item()), 1.0), (loss.item(), margin, nll)
