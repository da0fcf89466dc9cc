"""The examples' hydra configs run under the real fairseq-hydra-train (tiny model overrides).

The configs name no device (fairseq then trains on a GPU when there is one); the tests pass ``common.cpu=true``."""

import os
import re

import torch

import harness

TINY = ["model.encoder_embed_dim=16", "model.encoder_hidden_size=16", "model.decoder_embed_dim=16",
        "model.decoder_hidden_size=16", "model.decoder_out_embed_dim=16", "model.dropout=0.0",
        "optimization.max_epoch=1", "dataset.batch_size=16", "dataset.max_tokens=null",
        "model.encoder_bidirectional=false", "model.share_decoder_input_output_embed=false"]  # as nll_checkpoint


def hydra_train(config_dir, name, data, save_dir, tmp_path, extra=()):
    return harness.run(["fairseq-hydra-train", "--config-dir", os.path.join(harness.ROOT, config_dir),
                        "--config-name", name, f"task.data={data}", f"common.user_dir={harness.USER_DIR}",
                        f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={tmp_path}/hydra", "common.cpu=true",
                        *TINY, *extra])


def test_configs_name_no_device():
    """A GPU user following the YAMLs trains on the GPU: no config hard-codes common.cpu."""
    import glob
    import yaml
    configs = glob.glob(os.path.join(harness.ROOT, "examples", "*", "config", "*.yaml"))
    assert len(configs) >= 4, configs
    pinned = [c for c in configs if "cpu" in ((yaml.safe_load(open(c)) or {}).get("common") or {})]
    assert not pinned, f"common.cpu set in {pinned}"


def test_bso_config(word_order_bin, nll_checkpoint, tmp_path):
    out = hydra_train("examples/word_ordering/config", "bso", word_order_bin, tmp_path / "bso", tmp_path,
                      ["task.constraint=word_order", f"checkpoint.finetune_from_model={nll_checkpoint}"]).stdout
    assert re.search(r"epoch 001 \| loss [\d.]+ \| violations [\d.]+ .*\| bso_beam 2 ", out), out[-2000:]


def test_word_kd_config(word_order_bin, nll_checkpoint, tmp_path):
    out = hydra_train("examples/distillation/config", "word_kd", word_order_bin, tmp_path / "kd", tmp_path,
                      [f"criterion.kd_teacher_path={nll_checkpoint}"]).stdout
    assert re.search(r"epoch 001 \| loss [\d.]+ \| nll_loss [\d.]+ \| kd_loss [\d.]+", out), out[-2000:]


def test_prune_config(word_order_bin, nll_checkpoint, tmp_path):
    out = hydra_train("examples/pruning/config", "prune", word_order_bin, tmp_path / "pr", tmp_path,
                      [f"checkpoint.finetune_from_model={nll_checkpoint}"]
                      ).stdout
    assert "pruned to 80.00% (class-blind) at update 0" in out
    state = torch.load(tmp_path / "pr" / "checkpoint_last.pt", map_location="cpu")
    weights = [t for n, t in state["model"].items() if t.dim() >= 2]
    zeros, total = sum(int((t == 0).sum()) for t in weights), sum(t.numel() for t in weights)
    assert zeros == int(0.8 * total)
