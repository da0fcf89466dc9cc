"""Mixed precision on a CPU for pruning and word_kd, through fairseq-train.

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
