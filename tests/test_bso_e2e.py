"""BSO through the real fairseq-train / fairseq-generate with --user-dir, on tiny data."""

import math
import os
import re

import pytest
import torch

import harness

BSO = ["--criterion", "bso", "--bso-beam-size", "4", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1"]
TASK = ["--task", "constrained_beam_training"]


def epoch_beams(log):
    """{epoch: K} from fairseq's per-epoch train lines."""
    return {int(e): float(k) for e, k in re.findall(r"\| train \| epoch (\d+) \|.*?\| bso_beam ([\d.]+)", log)}


@pytest.fixture(scope="module")
def bso_run(word_order_bin, nll_checkpoint, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("bso"))
    first = harness.train(word_order_bin, save, criterion=BSO, max_epoch=2,
                          extra=["--finetune-from-model", nll_checkpoint, *TASK, "--dropout", "0.2"])
    # resume from checkpoint_last.pt mid-curriculum
    resumed = harness.train(word_order_bin, save, criterion=BSO, max_epoch=4, extra=[*TASK, "--dropout", "0.2"])
    return save, first.stdout, resumed.stdout


def test_bso_finetunes_from_nll_and_follows_curriculum(bso_run):
    _, first, resumed = bso_run
    assert "loading pretrained model from" in first  # --finetune-from-model the NLL checkpoint
    assert epoch_beams(first) == {1: 2.0, 2: 3.0}
    assert "violations" in first and "gold_on_beam" in first and "resets" in first and "delta" in first


def test_resume_continues_with_the_right_beam_size(bso_run):
    _, _, resumed = bso_run
    assert "Loaded checkpoint" in resumed and "(epoch 3 @" in resumed
    assert epoch_beams(resumed) == {3: 4.0, 4: 4.0}


def bso_loss_at(checkpoint, data_bin, K, n=200):
    """The BSO loss of a checkpoint on the first n training sentences at a fixed K (no dropout)."""
    from fairseq_bso.bso.criterion import BSOCriterion
    task, model, _, _ = harness.task_and_valid_batch(checkpoint, data_bin)
    task.load_dataset("train")
    sample = next(iter(task.get_batch_iterator(dataset=task.dataset("train"), max_sentences=n,
                                               required_batch_size_multiple=1).next_epoch_itr(shuffle=False)))
    criterion = BSOCriterion(task, bso_beam_size=K, bso_curriculum_start=K)
    with torch.no_grad():
        loss, _, log = criterion(model.eval(), sample)
    return loss.item(), log["bso_violations"]


def test_bso_lowers_its_loss(bso_run, word_order_bin, nll_checkpoint):
    """Same K (4), same training sentences: the BSO-trained model has a lower BSO loss than its NLL start.
    (Counts from the training log's epochs would fall with the curriculum's K even without learning.)"""
    save, _, _ = bso_run
    before = bso_loss_at(nll_checkpoint, word_order_bin, 4)
    after = bso_loss_at(os.path.join(save, "checkpoint_last.pt"), word_order_bin, 4)
    assert after[0] < before[0], f"BSO loss (violations) at K=4 on the same sentences: NLL start {before}, after BSO {after}"


@pytest.mark.parametrize("score,dropout", [("logit", "off"), ("log_softmax", "off"), ("logit", "shared"),
                                           ("log_softmax", "shared")])
def test_rescored_scores_equal_the_search_with_dropout_on(word_order_bin, nll_checkpoint, score, dropout):
    """A real training step (model in train mode, dropout 0.3 everywhere): the gold and
    violating scores the re-scoring computes under autograd are the ones the search ranked by, at
    every violation (float64, so the only differences are summation order), with the decoder's
    dropout off in both passes or on with shared masks (--bso-dropout)."""
    from fairseq_bso.bso.costs import COSTS
    from fairseq_bso.bso.search import bso_search, decoder_dropout, rescore, segment_sums
    task, model, _, sample = harness.task_and_valid_batch(nll_checkpoint, word_order_bin)
    model = model.double().train()
    dropouts = [m for m in model.modules() if type(m).__name__ == "FairseqDropout"]
    assert dropouts
    for m in dropouts:  # the tiny test model trains without dropout: switch it on
        m.p = 0.3
    d = task.target_dictionary
    target, net_input = sample["target"], sample["net_input"]
    torch.manual_seed(3)
    enc = model.encoder(net_input["src_tokens"], src_lengths=net_input["src_lengths"])
    with decoder_dropout(model.decoder, dropout, target.size(0)) as shared:
        result = bso_search(model, enc, target, 4, d.pad(), d.eos(), d.bos(), COSTS["zero_one"], score=score,
                            gold_kth="self", dropout=shared)
        scored = rescore(model, enc, target, result, d.pad(), d.eos(), dropout=shared)
    v = result.violation
    assert v.any()
    gold, violating = scored.gold, scored.violating
    if score == "log_softmax":  # the search ranks whole prefixes; the re-scoring gives step log-probs
        prefix = torch.cat([gold.new_zeros(gold.size(0), 1), gold.cumsum(1)], 1).gather(1, result.segment_start)
        gold = gold.cumsum(1)
        violating = prefix + segment_sums(violating, result.segment_start)
    for name, got, want in (("gold", gold[v], result.gold_scores[v]), ("rival", violating[v], result.rival_scores[v])):
        diff = (got - want).abs().max().item()
        scale = want.abs().max().item()
        assert diff <= 1e-9 * max(scale, 1.0), f"{name}: re-scored vs search max diff {diff:.3e} (scale {scale:.3e})"


def test_generate_with_bso_decoding_scores_finished_hypotheses_by_eos_logit(bso_run, word_order_bin):
    save, _, _ = bso_run
    ckpt = os.path.join(save, "checkpoint_last.pt")
    out = harness.generate(word_order_bin, ckpt, beam=3, extra=[*TASK, "--bso-decoding"]).stdout
    hyps = re.findall(r"^H-(\d+)\t(\S+)\t(.*)$", out, re.M)
    srcs = dict(re.findall(r"^S-(\d+)\t(.*)$", out, re.M))
    assert len(hyps) == 20
    from fairseq import checkpoint_utils
    import fairseq_bso  # noqa: F401
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([ckpt])
    model = models[0].eval()
    d = task.target_dictionary
    for sid, score, text in hyps[:5]:
        src = d.encode_line(srcs[sid], add_if_not_exist=False).long().unsqueeze(0)
        prefix = d.encode_line(text, add_if_not_exist=False).long()[:-1]
        enc = model.encoder(src, src_lengths=torch.tensor([src.size(1)]))
        prev = torch.cat([torch.tensor([d.eos()]), prefix]).unsqueeze(0)
        with torch.no_grad():
            f_eos = model.decoder(prev, encoder_out=enc)[0][0, -1, d.eos()].item()
        # fairseq-generate prints scores in base 2 (divided by ln 2)
        assert float(score) * math.log(2) == pytest.approx(f_eos, abs=1e-3)


@pytest.mark.parametrize("args,message", [
    (["--bso-beam-size", "1"], "--bso-beam-size must be >= 2"),
    (["--bso-beam-size", "500"], "larger than the target vocabulary"),
    (["--bso-beam-size", "4", "--bso-curriculum-start", "5"], "--bso-curriculum-start must be in [2"),
    (["--bso-cost", "meteor"], "invalid choice: 'meteor'"),
    (["--bso-score", "softmax"], "invalid choice: 'softmax'"),
    (["--bso-gold-kth", "next"], "invalid choice: 'next'"),
    (["--bso-nll-weight", "-0.5"], "--bso-nll-weight must be >= 0, got -0.5"),
    (["--bso-dropout", "on"], "invalid choice: 'on'"),
    (["--bso-nll-weight", "inf"], "--bso-nll-weight must be >= 0, got inf"),
    (["--bso-nll-weight", "nan"], "--bso-nll-weight must be >= 0, got nan"),
    (["--bso-lenpen", "inf"], "--bso-lenpen must be a finite number, got inf"),
])
def test_bad_bso_options_fail_before_training(word_order_bin, tmp_path, args, message):
    proc = harness.train(word_order_bin, str(tmp_path), criterion=["--criterion", "bso", *args], check=False)
    assert proc.returncode != 0
    assert message in proc.stdout
    assert "num_updates" not in proc.stdout


@pytest.mark.parametrize("levers", [["--bso-score", "logit", "--bso-gold-kth", "self", "--bso-nll-weight", "0.5"],
                                    ["--bso-score", "log_softmax", "--bso-gold-kth", "previous", "--bso-nll-weight", "1"]])
def test_levers_train_through_fairseq_train(word_order_bin, nll_checkpoint, tmp_path, levers):
    """The levers' options reach the criterion through fairseq-train: the NLL term is logged beside the
    margin loss, and the logged loss is margin + λ·NLL with this λ.  Per sentence: loss and margin_loss are
    logged per sentence, nll_loss per token in bits, so λ·NLL per sentence = λ·nll_loss·ln 2·wpb/bsz (wpb and
    bsz are means over the same updates, so their ratio is tokens per sentence)."""
    proc = harness.train(word_order_bin, str(tmp_path), criterion=[*BSO, *levers], max_epoch=1,
                         extra=["--finetune-from-model", nll_checkpoint, *TASK])
    line = re.search(r"\| train \| epoch 001 \|.*", proc.stdout).group(0)
    stats = {k: float(v) for k, v in re.findall(r"\| (loss|margin_loss|nll_loss|wpb|bsz) ([\d.]+)", line)}
    assert {"loss", "margin_loss", "nll_loss", "wpb", "bsz"} <= set(stats), line
    weight = float(levers[levers.index("--bso-nll-weight") + 1])
    per_sentence = math.log(2) * stats["wpb"] / stats["bsz"]
    nll = weight * stats["nll_loss"] * per_sentence
    # every logged figure is rounded: loss and margin_loss to 1e-3, nll_loss to 1e-3, wpb and bsz to 0.1
    tolerance = 1e-3 + weight * per_sentence * (5e-4 + stats["nll_loss"] * (0.05 / stats["wpb"] + 0.05 / stats["bsz"]))
    assert abs(stats["loss"] - (stats["margin_loss"] + nll)) <= tolerance, \
        f"loss {stats['loss']} vs margin {stats['margin_loss']} + {weight}·NLL {nll:.3f} (tolerance {tolerance:.4f}): {line}"


@pytest.mark.parametrize("score", ["logit", "log_softmax"])
def test_learning_to_stop_trains_through_fairseq_train(word_order_bin, nll_checkpoint, tmp_path, score):
    """--bso-learn-to-stop reaches the search through fairseq-train: the number of violations per
    sentence whose rival is a finished (shorter) hypothesis is logged, and the run trains."""
    proc = harness.train(word_order_bin, str(tmp_path), criterion=[*BSO, "--bso-score", score, "--bso-learn-to-stop"],
                         max_epoch=1, extra=["--finetune-from-model", nll_checkpoint, *TASK])
    line = re.search(r"\| train \| epoch 001 \|.*", proc.stdout).group(0)
    stats = dict(re.findall(r"\| (loss|finished_rivals|violations) ([\d.]+)", line))
    assert {"loss", "finished_rivals", "violations"} <= set(stats), line
    assert 0 <= float(stats["finished_rivals"]) <= float(stats["violations"]), line


def test_shared_dropout_trains_through_fairseq_train(word_order_bin, nll_checkpoint, tmp_path):
    """--bso-dropout shared reaches the criterion through fairseq-train (decoder dropout 0.3)."""
    proc = harness.train(word_order_bin, str(tmp_path), criterion=[*BSO, "--bso-dropout", "shared"], max_epoch=1,
                         extra=["--finetune-from-model", nll_checkpoint, *TASK, "--decoder-dropout-out", "0.3"])
    assert re.search(r"\| train \| epoch 001 \|.*violations", proc.stdout), proc.stdout[-2000:]


def test_curriculum_resets_the_optimizer_when_k_grows(word_order_bin, nll_checkpoint, tmp_path):
    """--bso-curriculum-reset-optimizer with Adagrad: the state is reset in the epochs where K grows
    (2 -> 3 -> 4, one epoch each), not in the first, and the run trains."""
    proc = harness.train(word_order_bin, str(tmp_path), criterion=[*BSO, "--bso-curriculum-reset-optimizer"],
                         max_epoch=4, extra=["--finetune-from-model", nll_checkpoint, *TASK,
                                             "--optimizer", "adagrad", "--lr", "0.01"])
    resets = [int(e) for e in re.findall(r"BSO epoch (\d+): K grew to \d+, optimizer state reset", proc.stdout)]
    assert resets == [2, 3], proc.stdout[-3000:]


def test_reset_optimizer_state_gives_a_fresh_optimizer():
    """After a reset, Adagrad (eager state) and fairseq's Adam (lazy state) take the same step as a
    new optimizer would from the same parameters and gradient."""
    from types import SimpleNamespace
    from fairseq.optim.adam import FairseqAdam
    from fairseq.optim.adagrad import Adagrad
    from fairseq_bso.bso.criterion import reset_optimizer_state

    def stepped(make, reset):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
        opt = make([p])
        for g in (torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)):
            p.grad = g
            opt.step()
        if reset:
            reset_optimizer_state(opt)
        else:
            opt = make([p])
        p.grad = torch.full((4,), 0.5, dtype=torch.float64)
        before = p.detach().clone()
        opt.step()
        return p.detach() - before

    makers = {
        "adagrad": lambda ps: Adagrad(SimpleNamespace(lr=[0.01], weight_decay=0.0), ps),
        "adam": lambda ps: FairseqAdam(SimpleNamespace(lr=[0.001], adam_betas="(0.9, 0.98)", adam_eps=1e-8,
                                                       weight_decay=0.0, use_old_adam=False, fp16_adam_stats=False,
                                                       tpu=False), ps),
    }
    for name, make in makers.items():
        got, want = stepped(make, True), stepped(make, False)
        assert torch.allclose(got, want, rtol=1e-12, atol=0), f"{name}: step after reset {got} vs fresh {want}"


def test_transformer_trains_with_bso(word_order_bin, tmp_path):
    arch = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
            "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
            "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    proc = harness.train(word_order_bin, str(tmp_path), arch=arch, criterion=BSO, max_epoch=1)
    assert epoch_beams(proc.stdout) == {1: 2.0}


def test_shared_dropout_with_a_transformer_is_refused(word_order_bin, tmp_path):
    arch = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
            "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
            "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    proc = harness.train(word_order_bin, str(tmp_path), arch=arch, criterion=[*BSO, "--bso-dropout", "shared"],
                         max_epoch=1, check=False)
    assert proc.returncode != 0
    assert "--bso-dropout shared supports fairseq's LSTMDecoder" in proc.stdout
    assert "num_updates" not in proc.stdout


def test_model_without_incremental_decoder_is_refused():
    from types import SimpleNamespace
    from fairseq.data import Dictionary
    from fairseq_bso.bso.criterion import BSOCriterion

    d = Dictionary()
    for s in "abcdef":
        d.add_symbol(s)
    task = SimpleNamespace(target_dictionary=d, begin_epoch=lambda epoch, model: None)
    BSOCriterion(task, bso_beam_size=3, bso_curriculum_start=2)  # wraps task.begin_epoch
    model = torch.nn.Module()
    model.encoder, model.decoder = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs an encoder-decoder model with an incremental decoder"):
        task.begin_epoch(1, model)  # checked when training begins, before the first update


def test_curriculum_beam_sizes():
    from fairseq_bso.bso.criterion import curriculum_beam_size
    assert [curriculum_beam_size(e, 2, 2, 6) for e in range(1, 13)] == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6]
    assert [curriculum_beam_size(e, 6, 2, 6) for e in range(1, 4)] == [6, 6, 6]


def test_eval_bleu_decodes_as_generate_and_selects_the_checkpoint(word_order_bin, nll_checkpoint, tmp_path):
    """``--eval-bleu`` under the task validates with the decoding fairseq-generate uses with the same
    options (raw scores, the constraint, the beam): the valid BLEU in the training log equals sacrebleu
    on fairseq-generate's valid output.  The best checkpoint (bleu, maximized; it stores the BLEU counts
    as numpy arrays) loads in fairseq-generate."""
    from fairseq_bso.evaluation import corpus_bleu, parse_hypotheses
    save = str(tmp_path / "bso")
    decoding = [*TASK, "--constraint", "word_order", "--bso-decoding"]
    proc = harness.train(word_order_bin, save, criterion=BSO, max_epoch=2,
                         extra=["--finetune-from-model", nll_checkpoint, *decoding, "--eval-bleu",
                                "--eval-tokenized-bleu", "--eval-bleu-args", '{"beam": 3, "max_len_a": 1, "max_len_b": 5}',
                                "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric"])
    logged = [float(b) for b in re.findall(r"\| valid \| epoch \d+ \|.*?\| bleu ([\d.]+)", proc.stdout)]
    assert len(logged) == 2, proc.stdout[-2000:]
    out = harness.generate(word_order_bin, os.path.join(save, "checkpoint_last.pt"), beam=3, subset="valid",
                           extra=[*decoding, "--max-len-a", "1", "--max-len-b", "5"]).stdout
    refs = dict(re.findall(r"^T-(\d+)\t(.*)$", out, re.M))
    references = [refs[str(i)] for i in range(len(refs))]
    ours = corpus_bleu(parse_hypotheses(out, len(references)), references, tokenized=True)
    assert round(ours, 2) == logged[-1], f"fairseq-generate valid BLEU {ours:.2f} vs --eval-bleu {logged[-1]}"
    best = harness.generate(word_order_bin, os.path.join(save, "checkpoint_best.pt"), beam=3, extra=decoding)
    assert len(re.findall(r"^H-", best.stdout, re.M)) == 20


# -- issue 26 item 5 / issue 31: clear edges ----------------------------------------------------------------------

def test_decoder_without_extract_features_is_refused_before_training(word_order_bin, tmp_path):
    """fairseq's fconv decoder has no extract_features (the re-scoring's teacher-forced pass needs it):
    refused when training begins, naming the reason, before any update."""
    arch = ["--arch", "fconv", "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--decoder-out-embed-dim",
            "16", "--encoder-layers", "[(16, 3)]", "--decoder-layers", "[(16, 3)]", "--dropout", "0.0"]
    proc = harness.train(word_order_bin, str(tmp_path), arch=arch, criterion=BSO, check=False)
    assert proc.returncode != 0
    assert "does not implement it (fairseq's fconv and lightconv decoders do not)" in proc.stdout, proc.stdout[-2000:]
    assert "num_updates" not in proc.stdout


def test_validate_uses_the_checkpoints_beam_size(bso_run, word_order_bin):
    """fairseq-validate never begins an epoch: K comes from the checkpoint's task state (the epoch it
    trained; bso_run's last checkpoint is epoch 4, K = min(4, 2 + 3) = 4), not the curriculum's start."""
    save, _, resumed = bso_run
    proc = harness.run(["fairseq-validate", word_order_bin, "--user-dir", harness.USER_DIR, "--path",
                        os.path.join(save, "checkpoint_last.pt"), *TASK, "--cpu", "--valid-subset", "valid",
                        "--batch-size", "8", *harness.NO_DROP])
    beams = re.findall(r"bso_beam ([\d.]+)", proc.stdout)
    assert beams and float(beams[-1]) == 4.0, proc.stdout[-2000:]
    assert epoch_beams(resumed)[4] == 4.0
