#!/usr/bin/env python3
"""Pruning under mixed precision: non-zero optimizer state at pruned positions (issue 26, items 4 and 7).

Trains the tests' tiny LSTM (``tests/harness.py``: word-ordering data, 200 pairs, 13 updates) for one epoch with
``fairseq-train --task translation_pruned --prune-ratio 0.5`` (one-shot at update 0) in each mixed-precision mode
this fairseq build runs on a CPU, then counts, in ``checkpoint_last.pt``, the pruned positions (exact zeros of the
selected weights) where a tensor of the saved optimizer state (Adam's ``exp_avg``, ``exp_avg_sq``) is non-zero.
Writes ``benchmarks/results/fp16_pruning.json``:

* ``fp16_pruned_optimizer_nonzero``: that count under ``--fp16 --fp16-no-flatten-grads`` (goal 0; 3,257 of 3,328
  before the pruner masked the fp32 master copy and the optimizer state);
* ``by_mode``: {mode → {"pruned": pruned positions, "optimizer_nonzero": that count, "final_loss": the epoch's
  training loss as fairseq logs it}};
* ``command`` and ``git_commit``.  No timing.

    OMP_NUM_THREADS=1 python3 -m benchmarks.fp16_pruning
"""

import os
import tempfile
import time

import torch

MODES = {"fp16": ["--fp16", "--fp16-no-flatten-grads"], "memory_efficient_fp16": ["--memory-efficient-fp16"],
         "amp": ["--amp"]}  # fp32: 0 before and after (issue 26)


def optimizer_nonzero_at_pruned(ckpt: str) -> dict:
    """{"pruned", "optimizer_nonzero"} of a pruned checkpoint: pruned positions (exact zeros of the weight matrices
    the default ``--prune-classes`` select) and those where any saved optimizer state tensor is non-zero.  The
    state's entries are in the order of the model's parameters (fairseq's trainer builds the optimizer over
    ``model.parameters()``), so the model is rebuilt from the checkpoint to name them."""
    from fairseq import checkpoint_utils

    import fairseq_bso  # noqa: F401
    from fairseq_bso.prune.masks import KINDS, prunable

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = checkpoint_utils.load_model_ensemble([ckpt])[0][0]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt_state = state["last_optimizer_state"]["state"]
    selected = prunable(((n, state["model"][n]) for n in names), KINDS)
    pruned = nonzero = 0
    for i, name in enumerate(names):
        if name not in selected:
            continue
        zero = selected[name] == 0
        pruned += int(zero.sum())
        any_nonzero = torch.zeros_like(zero)
        for t in opt_state.get(i, {}).values():
            if torch.is_tensor(t) and t.shape == zero.shape:
                any_nonzero |= t.ne(0)
        nonzero += int((any_nonzero & zero).sum())
    return {"pruned": pruned, "optimizer_nonzero": nonzero}


def train_log_loss(stdout: str) -> float:
    line = [ln for ln in stdout.splitlines() if "| train | epoch" in ln or " train | epoch" in ln][-1]
    return float(line.split("| loss ")[1].split()[0])


def run_mode(data_bin: str, save_dir: str, mode: str, extra=()) -> dict:
    from benchmarks.common import tiny_train

    out = tiny_train(data_bin, save_dir, extra=["--task", "translation_pruned", "--prune-ratio", "0.5",
                                                *MODES[mode], *extra], max_epoch=1)
    return {**optimizer_nonzero_at_pruned(os.path.join(save_dir, "checkpoint_last.pt")),
            "final_loss": train_log_loss(out)}


def main() -> None:
    import argparse

    argparse.ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from benchmarks.common import tiny_word_order_bin, write_results

    started = time.time()
    by_mode = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = tiny_word_order_bin(tmp)
        for mode in MODES:
            by_mode[mode] = run_mode(data, os.path.join(tmp, mode), mode)
            print(mode, by_mode[mode], flush=True)
    write_results("fp16_pruning", {"fp16_pruned_optimizer_nonzero": by_mode["fp16"]["optimizer_nonzero"],
                                   "by_mode": by_mode}, started)


if __name__ == "__main__":
    main()
