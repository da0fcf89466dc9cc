"""Magnitude pruning: the schemes against a brute-force sort, exact zeros through Adam, gradual schedule, masks
kept through a real fairseq-train resume, export to stock fairseq-generate, sparse copy, bad options."""

import argparse
import math
import os
import re
import statistics
from collections import OrderedDict

import pytest
import torch

import harness
from fairseq_bso.prune.masks import (Pruner, PruningConfig, compute_masks, cubic_ratio, prunable, weight_class,
                                 weight_kind)


def tiny_lstm(seed=0):
    from fairseq.data import Dictionary
    from fairseq.models import lstm
    d = Dictionary()
    for w in "a b c d e".split():
        d.add_symbol(w)
    ns = argparse.Namespace(arch="lstm", encoder_bidirectional=True, encoder_embed_dim=4, encoder_hidden_size=4,
                            decoder_embed_dim=4, decoder_hidden_size=6, decoder_out_embed_dim=4, criterion="x",
                            max_source_positions=100, max_target_positions=100)
    lstm.base_architecture(ns)

    class T:
        source_dictionary = d
        target_dictionary = d
    torch.manual_seed(seed)
    return lstm.LSTMModel.build_model(ns, T())


def brute_force(weights, ratio, scheme):
    """The pruned (name, index) pairs, from a plain Python sort of every weight."""
    items = []  # (score, position in the global order, name, index)
    sigma = {}
    if scheme == "class-distribution":
        by_class = {}
        for n, w in weights.items():
            by_class.setdefault(weight_class(n), []).extend(w.reshape(-1).tolist())
        sigma = {c: statistics.stdev(v) for c, v in by_class.items()}
    pos = 0
    for n, w in weights.items():
        for i, v in enumerate(w.reshape(-1).tolist()):
            score = abs(v) / sigma[weight_class(n)] if scheme == "class-distribution" else abs(v)
            items.append((score, pos, n, i))
            pos += 1
    groups = {}
    for it in items:
        groups.setdefault(weight_class(it[2]) if scheme == "class-uniform" else "all", []).append(it)
    pruned = set()
    for group in groups.values():
        k = math.floor(ratio * len(group))
        pruned |= {(n, i) for _, _, n, i in sorted(group)[:k]}
    return pruned


# The kind and the class of every weight matrix of tiny_lstm(), written out from the table in the docstring of
# fairseq_bso.prune.masks (class names are the test's own: only which matrices share a class matters).
TINY_LSTM_KINDS_AND_CLASSES = {
    "encoder.embed_tokens.weight": ("embeddings", "source embedding"),
    "encoder.lstm.weight_ih_l0": ("encoder", "encoder layer 0"),
    "encoder.lstm.weight_hh_l0": ("encoder", "encoder layer 0"),
    "encoder.lstm.weight_ih_l0_reverse": ("encoder", "encoder layer 0"),
    "encoder.lstm.weight_hh_l0_reverse": ("encoder", "encoder layer 0"),
    "decoder.embed_tokens.weight": ("embeddings", "target embedding"),
    "decoder.encoder_hidden_proj.weight": ("decoder", "hidden projection"),
    "decoder.encoder_cell_proj.weight": ("decoder", "cell projection"),
    "decoder.layers.0.weight_ih": ("decoder", "decoder layer 0"),
    "decoder.layers.0.weight_hh": ("decoder", "decoder layer 0"),
    "decoder.attention.input_proj.weight": ("attention", "attention input projection"),
    "decoder.attention.output_proj.weight": ("attention", "attention output projection"),
    "decoder.additional_fc.weight": ("output", "additional fc"),
    "decoder.fc_out.weight": ("output", "output projection"),
}


def partition(names, key):
    groups = {}
    for n in names:
        groups.setdefault(key(n), set()).add(n)
    return sorted(sorted(g) for g in groups.values())


def test_kinds_and_classes_of_an_lstm():
    """Every weight matrix of a bidirectional LSTM model: its kind, and which matrices share a class, against
    the literal table (biases never take part)."""
    model = tiny_lstm()
    weights = prunable(model.named_parameters(), ["embeddings", "encoder", "decoder", "attention", "output"])
    assert list(weights) == list(TINY_LSTM_KINDS_AND_CLASSES)
    assert {n: weight_kind(n) for n in weights} == {n: k for n, (k, _) in TINY_LSTM_KINDS_AND_CLASSES.items()}
    assert partition(weights, weight_class) == partition(weights, lambda n: TINY_LSTM_KINDS_AND_CLASSES[n][1])
    for kind in ("encoder", "attention"):  # a kind alone selects its matrices only
        assert list(prunable(model.named_parameters(), [kind])) == \
            [n for n, (k, _) in TINY_LSTM_KINDS_AND_CLASSES.items() if k == kind]


@pytest.mark.parametrize("scheme", ["class-blind", "class-uniform", "class-distribution"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.8])
def test_scheme_selects_what_a_brute_force_sort_selects(scheme, ratio):
    model = tiny_lstm(seed=int(ratio * 10))
    weights = OrderedDict((n, p.detach()) for n, p in
                          prunable(model.named_parameters(), ["embeddings", "encoder", "decoder", "attention",
                                                              "output"]).items())
    masks = compute_masks(weights, ratio, scheme)
    ours = {(n, i) for n, m in masks.items() for i, keep in enumerate(m.reshape(-1).tolist()) if not keep}
    assert ours == brute_force(weights, ratio, scheme)


def config(**kw):
    cfg = PruningConfig()
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def train_with_adam(model, pruner, updates):
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    src = torch.tensor([[4, 5, 6, 2], [5, 7, 8, 2]])
    prev = torch.tensor([[2, 4, 5, 6], [2, 5, 7, 8]])
    for update in range(updates):
        opt.zero_grad()
        out = model(src, torch.tensor([4, 4]), prev)[0]
        out.logsumexp(-1).sum().backward()
        pruner.before_step(update)
        opt.step()
        pruner.after_step()


def test_pruned_weights_stay_exactly_zero_through_adam():
    model = tiny_lstm()
    pruner = Pruner(config(prune_ratio=0.5, prune_start_update=3), model)
    train_with_adam(model, pruner, 3)  # Adam builds up moments for every weight first
    assert pruner.masks is None
    train_with_adam(model, pruner, 12)  # updates 0..11 again: prunes at update 3, then 8 more Adam steps
    n = sum(p.numel() for p in pruner.weights.values())
    zeros = sum(int((p == 0).sum()) for p in pruner.weights.values())
    assert zeros == n // 2
    for name, p in pruner.weights.items():
        assert torch.equal(p.detach() == 0, pruner.masks[name] == 0), name  # exactly the masked ones are zero
    assert int((pruner.weights["encoder.lstm.weight_ih_l0"] == 0).sum()) > 0  # nn.LSTM weights included


def test_gradual_schedule_is_cubic_and_monotone():
    assert cubic_ratio(10, 0.8, 10, 110) == 0.0
    assert cubic_ratio(60, 0.8, 10, 110) == pytest.approx(0.8 * (1 - 0.5 ** 3))
    assert cubic_ratio(500, 0.8, 10, 110) == pytest.approx(0.8)
    model = tiny_lstm()
    pruner = Pruner(config(prune_ratio=0.8, prune_schedule="gradual", prune_start_update=0, prune_end_update=10,
                           prune_frequency=4), model)
    assert [u for u in range(15) if pruner.target_ratio(u) is not None] == [0, 4, 8, 10]
    seen = []
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for update in range(12):
        opt.zero_grad()
        model(torch.tensor([[4, 5, 2]]), torch.tensor([3]), torch.tensor([[2, 4, 5]]))[0].sum().backward()
        pruner.before_step(update)
        opt.step()
        pruner.after_step()
        seen.append(sum(int((p == 0).sum()) for p in pruner.weights.values()))
    n = sum(p.numel() for p in pruner.weights.values())
    assert seen == sorted(seen) and seen[-1] == math.floor(0.8 * n)


def zero_sets(ckpt):
    state = torch.load(ckpt, map_location="cpu")
    return {n: (t == 0) for n, t in state["model"].items() if t.dim() >= 2}, state


PRUNE = ["--task", "constrained_beam_training", "--prune-ratio", "0.6", "--prune-scheme", "class-uniform"]


def test_train_resume_export(word_order_bin, tmp_path):
    save = str(tmp_path / "ckpt")
    out = harness.train(word_order_bin, save, extra=PRUNE, max_epoch=1).stdout
    assert "pruned to 60.00% (class-uniform) at update 0" in out
    zeros1, state1 = zero_sets(f"{save}/checkpoint_last.pt")
    # class-uniform: 60% of every class (harness.TINY_LSTM's classes written out), encoder nn.LSTM included
    classes = [["encoder.embed_tokens.weight"], ["encoder.lstm.weight_ih_l0", "encoder.lstm.weight_hh_l0"],
               ["decoder.embed_tokens.weight"], ["decoder.layers.0.weight_ih", "decoder.layers.0.weight_hh"],
               ["decoder.attention.input_proj.weight"], ["decoder.attention.output_proj.weight"],
               ["decoder.fc_out.weight"]]
    assert sorted(n for c in classes for n in c) == sorted(zeros1)
    for members in classes:
        total = sum(zeros1[n].numel() for n in members)
        zeros = sum(int(zeros1[n].sum()) for n in members)
        assert zeros == math.floor(0.6 * total), f"{members}: {zeros} of {total} pruned"
    out = harness.train(word_order_bin, save, extra=PRUNE, max_epoch=2).stdout  # resumes checkpoint_last.pt
    assert "masks re-derived from the exact zeros" in out and "pruned to" not in out
    zeros2, state2 = zero_sets(f"{save}/checkpoint_last.pt")
    assert all(torch.equal(zeros1[n], zeros2[n]) for n in zeros1)
    assert not torch.equal(state1["model"]["decoder.fc_out.weight"], state2["model"]["decoder.fc_out.weight"])

    stats = harness.run(["fairseq-bso-prune", "stats", f"{save}/checkpoint_last.pt"]).stdout
    nonzero, total = (int(x.replace(",", "")) for x in re.search(r"^\[total\]\s+([\d,]+)\s+([\d,]+)", stats,
                                                                    re.M).groups())
    assert total == sum(z.numel() for z in zeros2.values())
    assert nonzero == total - sum(int(z.sum()) for z in zeros2.values())
    assert 0.59 < 1 - nonzero / total <= 0.6

    exported, sparse, dense = str(tmp_path / "stock.pt"), str(tmp_path / "stock.sparse"), str(tmp_path / "d.pt")
    out = harness.run(["fairseq-bso-prune", "export", f"{save}/checkpoint_last.pt", exported, "--sparse", sparse])
    sizes = [int(s.replace(",", "")) for s in re.findall(r": ([\d,]+) bytes", out.stdout)]
    assert sizes == [os.path.getsize(exported), os.path.getsize(sparse)]
    ours = harness.generate(word_order_bin, f"{save}/checkpoint_last.pt", beam=3).stdout
    stock = harness.generate(word_order_bin, exported, beam=3, user_dir=False).stdout
    hyps = lambda text: sorted(re.findall(r"^H-\d+\t.*$", text, re.M))  # noqa: E731
    assert len(hyps(ours)) == 20 and hyps(ours) == hyps(stock)
    harness.run(["fairseq-bso-prune", "densify", sparse, dense])
    a, b = torch.load(exported, map_location="cpu")["model"], torch.load(dense, map_location="cpu")["model"]
    assert list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("extra,message", [
    (["--prune-ratio", "1.0"], "--prune-ratio must be in [0, 1), got 1.0"),
    (["--prune-ratio", "-0.1"], "--prune-ratio must be in [0, 1), got -0.1"),
    (["--prune-ratio", "0.5", "--prune-scheme", "class-random"], "invalid choice: 'class-random'"),
    (["--prune-ratio", "0.5", "--prune-classes", "softmax"], "unknown kind(s) ['softmax']"),
    (["--prune-ratio", "0.5", "--prune-classes", "attention", "--decoder-attention", "False"],
     "--prune-classes 'attention' selects no weight matrix of this model"),
    (["--prune-ratio", "0.5", "--prune-schedule", "gradual", "--prune-end-update", "0"],
     "--prune-schedule gradual needs --prune-end-update > --prune-start-update"),
])
def test_bad_options_fail_before_training(word_order_bin, tmp_path, extra, message):
    proc = harness.train(word_order_bin, str(tmp_path / "c"), extra=["--task", "constrained_beam_training", *extra],
                         check=False)
    assert proc.returncode != 0 and message in proc.stdout, proc.stdout[-1500:]
    assert "num_updates" not in proc.stdout  # nothing trained


def test_tied_weights_count_once_in_a_loaded_state_dict(tmp_path):
    from fairseq_bso.prune.cli import stats
    shared = torch.randn(6, 4)
    state = {"model": OrderedDict([("decoder.embed_tokens.weight", shared), ("decoder.fc_out.weight", shared),
                                   ("decoder.fc_out.bias", torch.zeros(6))])}
    torch.save(state, tmp_path / "c.pt")
    text = stats(torch.load(tmp_path / "c.pt"))
    assert re.search(r"^\[total\]\s+24\s+24\s", text, re.M), text
    assert "all parameters (biases included): 24 non-zero of 30" in text


def sparsity(ckpt):
    """(exact zeros, total) over the weight matrices the default --prune-classes select, in a checkpoint."""
    from fairseq_bso.prune.masks import KINDS
    weights = prunable(torch.load(ckpt, map_location="cpu")["model"].items(), KINDS)
    return sum(int((w == 0).sum()) for w in weights.values()), sum(w.numel() for w in weights.values())


ONE_SHOT = ["--task", "constrained_beam_training", "--prune-ratio", "0.6"]  # class-blind, at update 0


def test_dense_checkpoint_restored_past_prune_start_is_pruned_to_the_target(word_order_bin, nll_checkpoint,
                                                                             tmp_path):
    """--restore-file without --reset-optimizer keeps fairseq's update count (26 after nll_checkpoint's 2 epochs),
    past --prune-start-update 0: the masks re-derived from the dense model's zeros would prune nothing."""
    dense_zeros, total = sparsity(nll_checkpoint)
    assert dense_zeros / total < 0.01, f"{dense_zeros} of {total}"  # the embeddings' padding rows only
    save = str(tmp_path / "ckpt")
    out = harness.train(word_order_bin, save, extra=[*ONE_SHOT, "--restore-file", nll_checkpoint], max_epoch=3).stdout
    assert "Loaded checkpoint" in out and "@ 26 updates)" in out, out[-2000:]
    assert (f"pruning: this run starts at update 26, past --prune-start-update 0, but the selected weights are only "
            f"{dense_zeros / total:.2%} sparse ({dense_zeros:,} exact zeros of {total:,}) where --prune-ratio 0.6 "
            f"--prune-schedule one-shot has them 60.00% sparse by now; pruning to 60.00% at this update") in out, \
        out[-3000:]
    assert "pruned to 60.00% (class-blind) at update 26" in out
    zeros, total = sparsity(f"{save}/checkpoint_last.pt")  # after 13 more updates: the masks held
    assert zeros == math.floor(0.6 * total), f"{zeros} of {total} weights are zero ({zeros / total:.2%}), not 60%"


def test_resumed_pruned_run_keeps_its_masks(word_order_bin, tmp_path):
    """A pruned run resumed past --prune-start-update: the exact zeros are at the target, so they are the masks
    (no warning, no new pruning), and the same weights stay zero through another epoch."""
    save = str(tmp_path / "ckpt")
    harness.train(word_order_bin, save, extra=ONE_SHOT, max_epoch=1)
    zeros1, total = sparsity(f"{save}/checkpoint_last.pt")
    assert zeros1 == math.floor(0.6 * total), f"{zeros1} of {total} zero after pruning"
    before = zero_sets(f"{save}/checkpoint_last.pt")[0]
    out = harness.train(word_order_bin, save, extra=ONE_SHOT, max_epoch=2).stdout
    assert "masks re-derived from the exact zeros of the weights at update 13 (resume)" in out, out[-3000:]
    assert "pruning: this run starts" not in out and "pruned to" not in out
    after = zero_sets(f"{save}/checkpoint_last.pt")[0]
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert not changed, f"zero sets changed in {changed}"


@pytest.mark.parametrize("scheme", ["class-blind", "class-uniform"])
def test_gradual_restart_between_steps_prunes_to_the_last_step(scheme):
    """Gradual schedule, a dense model first seen at update 6 (steps at 0, 4, 8, 10): pruned to the ratio of
    step 4; a model already at that ratio keeps its zeros."""
    cfg = config(prune_ratio=0.8, prune_schedule="gradual", prune_start_update=0, prune_end_update=10,
                 prune_frequency=4, prune_scheme=scheme)
    pruner = Pruner(cfg, tiny_lstm())
    n = sum(p.numel() for p in pruner.weights.values())
    pruner.before_step(6)
    zeros = sum(int((p == 0).sum()) for p in pruner.weights.values())
    expected = pruner.pruned_count(cubic_ratio(4, 0.8, 0, 10))
    assert zeros == expected and 0 < zeros < n, f"{zeros} of {n} zero, expected {expected}"
    kept = Pruner(cfg, tiny_lstm())  # a resumed run: the pruned weights in a fresh model
    for name, p in kept.weights.items():
        p.data.copy_(pruner.weights[name].detach())
    kept.before_step(7)
    assert all(torch.equal(kept.masks[name] == 0, pruner.weights[name] == 0) for name in kept.weights)
    assert kept.current_ratio == 0.0  # re-derived, not pruned again
