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


def test_bso_lowers_violations(bso_run):
    _, first, resumed = bso_run
    viol = [float(v) for v in re.findall(r"\| train \| epoch \d+ \|.*?\| violations ([\d.]+)", first + resumed)]
    assert len(viol) == 4 and viol[-1] < viol[0]


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
])
def test_bad_bso_options_fail_before_training(word_order_bin, tmp_path, args, message):
    proc = harness.train(word_order_bin, str(tmp_path), criterion=["--criterion", "bso", *args], check=False)
    assert proc.returncode != 0
    assert message in proc.stdout
    assert "num_updates" not in proc.stdout


def test_transformer_trains_with_bso(word_order_bin, tmp_path):
    arch = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "16",
            "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "32", "--decoder-ffn-embed-dim", "32",
            "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
    proc = harness.train(word_order_bin, str(tmp_path), arch=arch, criterion=BSO, max_epoch=1)
    assert epoch_beams(proc.stdout) == {1: 2.0}


def test_model_without_incremental_decoder_is_refused():
    from types import SimpleNamespace
    from fairseq.data import Dictionary
    from fairseq_bso.criterions.bso import BSOCriterion

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
    from fairseq_bso.criterions.bso import curriculum_beam_size
    assert [curriculum_beam_size(e, 2, 2, 6) for e in range(1, 13)] == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 6, 6]
    assert [curriculum_beam_size(e, 6, 2, 6) for e in range(1, 4)] == [6, 6, 6]
