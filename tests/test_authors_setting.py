"""The authors' setting (issue 29.2): ``--optimizer bso_adagrad`` per-layer learning rates and the accumulator reset
at K growth, through the real fairseq-train / fairseq-hydra-train, checked against a literal Adagrad step.

Adagrad's first step from a fresh accumulator is ``Δ = −lr·g / (|g| + 1e-10)``: every element whose gradient is not
tiny moves by exactly its layer's rate, whatever the gradient.  So the update sizes read from two checkpoints say
which rate reached which parameter, and whether the accumulator was fresh (a second step without a reset moves by
``lr·|g2| / sqrt(g1² + g2²)`` < lr)."""

import os
import sys

import pytest
import torch
import yaml

import harness
from test_hydra import hydra_train

sys.path.insert(0, os.path.join(harness.ROOT, "examples", "word_ordering"))


def layer(name):
    """The layer a checkpoint key belongs to, by the rule bso_adagrad documents (stated here by name)."""
    if name.startswith("decoder.fc_out.") or name.startswith("decoder.additional_fc."):
        return "output"
    return name.split(".")[0]


def step_ratios(before, after, rates):
    """{layer: float64 tensor of |Δ| / rate} over the elements that moved, and the float32 rounding tolerance."""
    ratios, tol = {}, {}
    for name, old in before.items():
        if not torch.is_floating_point(old):
            continue
        old, new = old.double(), after[name].double()
        moved = (new - old).abs()
        mask = moved > 0
        key = layer(name)
        ratios.setdefault(key, []).append(moved[mask] / rates[key])
        # rounding of float32 parameters of this magnitude, relative to the rate, plus the 1e-10 of Adagrad's eps
        tol[key] = max(tol.get(key, 0.0),
                       4 * torch.finfo(torch.float32).eps * float(old.abs().max()) / rates[key] + 1e-4)
    return {k: torch.cat(v) for k, v in ratios.items()}, tol


def model_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_fresh_adagrad_step(before, after, rates):
    ratios, tol = step_ratios(before, after, rates)
    assert sorted(ratios) == ["decoder", "encoder", "output"], sorted(ratios)
    for key, r in ratios.items():
        assert r.numel() > 0, f"no {key} parameter moved"
        median, top = float(r.median()), float(r.max())
        # every element moves by its layer's rate (no larger; a tiny gradient moves slightly less)
        assert abs(median - 1) <= tol[key] and top <= 1 + tol[key], (
            f"{key}: |Δ|/lr median {median:.6f}, max {top:.6f} (lr {rates[key]}, tolerance {tol[key]:.2e}); "
            f"the ratios of the other layers: { {k: round(float(v.median()), 4) for k, v in ratios.items()} }")
        share = float(((r - 1).abs() <= tol[key]).double().mean())
        assert share >= 0.95, f"{key}: only {share:.3f} of the moved elements moved by exactly lr {rates[key]}"


BSO = ["--task", "constrained_beam_training", "--criterion", "bso", "--bso-score", "logit", "--bso-gold-kth", "self",
       "--bso-beam-size", "3", "--bso-curriculum-start", "2", "--bso-curriculum-epochs", "1", "--bso-nll-weight", "1"]


def bso_adagrad_train(data_bin, save_dir, nll_checkpoint, extra, epochs=1):
    """fairseq-train with bso_adagrad from the NLL checkpoint; one batch of the whole training set per epoch, and a
    checkpoint per epoch."""
    return harness.run(["fairseq-train", data_bin, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM, *harness.COMMON,
                        *BSO, "--optimizer", "bso_adagrad", "--lr", "0.5", "--clip-norm", "5",
                        "--batch-size", "256", "--max-epoch", str(epochs), "--save-dir", save_dir,
                        "--finetune-from-model", nll_checkpoint, "--disable-validation", *extra], timeout=900)


def test_layer_rates_reach_the_optimizer_groups(word_order_bin, nll_checkpoint, tmp_path):
    rates = {"encoder": 0.01, "decoder": 0.03, "output": 0.3}  # distinct, and none equal to --lr
    save = str(tmp_path / "run")
    out = bso_adagrad_train(word_order_bin, save, nll_checkpoint,
                            ["--bso-layer-lrs", f"{rates['encoder']},{rates['decoder']},{rates['output']}",
                             "--max-update", "1"]).stdout
    assert "bso_adagrad: encoder lr 0.01" in out and "output lr 0.3" in out, out[-3000:]
    assert_fresh_adagrad_step(model_state(nll_checkpoint), model_state(os.path.join(save, "checkpoint_last.pt")),
                              rates)


@pytest.mark.parametrize("reset", [True, False])
def test_accumulators_reset_when_K_grows(word_order_bin, nll_checkpoint, tmp_path, reset):
    """Two epochs of one update each; K grows 2 → 3 at epoch 2.  With --bso-curriculum-reset-optimizer epoch 2's
    update is a fresh Adagrad step (|Δ| = lr); without it, it is not (the control shows the check can fail).
    Small rates, so that the first step barely changes the model and g2 ≈ g1: a second step without a reset
    then moves by about lr/√2."""
    rates = {"encoder": 1e-4, "decoder": 3e-4, "output": 3e-3}
    save = str(tmp_path / "run")
    out = bso_adagrad_train(word_order_bin, save, nll_checkpoint,
                            ["--bso-layer-lrs", "1e-4,3e-4,3e-3",
                             *(["--bso-curriculum-reset-optimizer"] if reset else [])],
                            epochs=2).stdout
    assert "training beam size K = 3" in out, out[-3000:]
    assert ("optimizer state reset" in out) == reset, out[-3000:]
    before, after = (model_state(os.path.join(save, f"checkpoint{e}.pt")) for e in (1, 2))
    if reset:
        assert_fresh_adagrad_step(before, after, rates)
    else:
        ratios, _ = step_ratios(before, after, rates)
        medians = {k: float(v.median()) for k, v in ratios.items()}
        # lr·|g2| / sqrt(g1² + g2²): about 1/√2 when g2 ≈ g1, and 1 only if the accumulator were fresh
        assert all(m < 0.9 for m in medians.values()), medians


def test_authors_yaml_trains_at_its_own_layer_rates(word_order_bin, nll_checkpoint, tmp_path):
    """examples/word_ordering/config/bso_authors.yaml (tiny model overrides): one update, rates 0.02 / 0.02 / 0.2."""
    config = yaml.safe_load(open(os.path.join(harness.ROOT, "examples", "word_ordering", "config",
                                              "bso_authors.yaml")))
    encoder, decoder, output = (float(r) for r in config["optimizer"]["bso_layer_lrs"].split(","))
    assert (encoder, decoder, output) == (0.02, 0.02, 0.2)
    out = hydra_train("examples/word_ordering/config", "bso_authors", word_order_bin, tmp_path / "authors", tmp_path,
                      [f"checkpoint.finetune_from_model={nll_checkpoint}", "optimization.max_update=1",
                       "dataset.batch_size=256", "+criterion.bso_nll_weight=1"]).stdout
    assert "training beam size K = 2" in out, out[-3000:]
    assert_fresh_adagrad_step(model_state(nll_checkpoint),
                              model_state(os.path.join(tmp_path, "authors", "checkpoint_last.pt")),
                              {"encoder": encoder, "decoder": decoder, "output": output})


def test_demo_authors_recipe_is_the_yaml():
    """`demo.py --bso-recipe authors` and bso_authors.yaml are one option set."""
    import demo

    config = yaml.safe_load(open(os.path.join(harness.ROOT, "examples", "word_ordering", "config",
                                              "bso_authors.yaml")))
    expected = [("--criterion", "bso"), ("--optimizer", config["optimizer"]["_name"]),
                ("--bso-layer-lrs", config["optimizer"]["bso_layer_lrs"])]
    for key, value in config["criterion"].items():
        if key not in ("_name", "bso_cost"):  # bso_cost: zero_one, the criterion's default
            flag = "--" + key.replace("_", "-")
            expected.append((flag,) if value is True else (flag, str(value)))
    train, decode = demo.RECIPES["authors"]
    got, i = [], 0
    while i < len(train):
        takes_value = i + 1 < len(train) and not train[i + 1].startswith("--")
        got.append(tuple(train[i:i + 2]) if takes_value else (train[i],))
        i += 2 if takes_value else 1
    assert sorted(got) == sorted(expected)
    assert decode == ["--bso-decoding"]


def test_bad_layer_rates_are_one_clear_error(word_order_bin, nll_checkpoint, tmp_path):
    proc = harness.run(["fairseq-train", word_order_bin, "--user-dir", harness.USER_DIR, *harness.TINY_LSTM,
                        *harness.COMMON, "--criterion", "cross_entropy", "--optimizer", "bso_adagrad",
                        "--bso-layer-lrs", "0.02,0.2", "--lr", "0.1", "--max-update", "1", "--batch-size", "16",
                        "--save-dir", str(tmp_path / "bad")], check=False)
    assert proc.returncode != 0
    assert "--bso-layer-lrs must be three positive learning rates" in proc.stdout, proc.stdout[-2000:]


def test_schedule_scales_every_layer_rate():
    """set_lr/get_lr against literals: the scheduled rate scales the three layer rates together."""
    import argparse

    from fairseq import optim
    from fairseq.data import Dictionary
    from fairseq.models.lstm import LSTMModel, base_architecture
    from omegaconf import OmegaConf

    import fairseq_bso  # noqa: F401  (registers bso_adagrad)

    d = Dictionary()
    for w in harness.WORDS:
        d.add_symbol(w)

    class Task:
        source_dictionary = target_dictionary = d

    args = argparse.Namespace(arch="lstm", encoder_embed_dim=8, encoder_hidden_size=8, decoder_embed_dim=8,
                              decoder_hidden_size=8, decoder_out_embed_dim=8, encoder_layers=1, decoder_layers=1,
                              dropout=0.0, share_decoder_input_output_embed=True, criterion="cross_entropy")
    base_architecture(args)
    model = LSTMModel.build_model(args, Task())
    cfg = OmegaConf.create({"_name": "bso_adagrad", "bso_layer_lrs": "0.02,0.02,0.2", "lr": [0.5]})
    opt = optim.build_optimizer(cfg, list(model.parameters()))
    layers = {g["layer"]: g for g in opt.param_groups}
    assert {k: g["lr"] for k, g in layers.items()} == {"encoder": 0.02, "decoder": 0.02, "output": 0.2}
    # the shared decoder embedding is the output projection: it is in the output group
    assert any(p is model.decoder.embed_tokens.weight for p in layers["output"]["params"])
    assert opt.get_lr() == pytest.approx(0.5, rel=1e-12)
    opt.set_lr(0.25)
    assert {k: g["lr"] for k, g in layers.items()} == pytest.approx({"encoder": 0.01, "decoder": 0.01, "output": 0.1},
                                                                     rel=1e-12)
    assert opt.get_lr() == pytest.approx(0.25, rel=1e-12)
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n
