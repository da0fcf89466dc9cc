"""Safe checkpoint loading on torch >= 2.6 (weights_only=True stays on)."""

import fractions

import pytest
import torch

import harness

NEEDS_WEIGHTS_ONLY_DEFAULT = pytest.mark.skipif(
    tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 6),
    reason="torch < 2.6 does not load with weights_only=True by default")


def hypotheses(output):
    return [line for line in output.splitlines() if line.startswith("H-")]


def test_fairseq_train_checkpoint_loads_in_generate_with_plugin(word_order_bin, nll_checkpoint):
    proc = harness.generate(word_order_bin, nll_checkpoint)
    assert len(hypotheses(proc.stdout)) == 20
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in harness.env_without_overrides()


@NEEDS_WEIGHTS_ONLY_DEFAULT
def test_stock_generate_without_plugin_hits_weights_only(word_order_bin, nll_checkpoint):
    """The failure the plugin fixes: stock fairseq cannot load its own checkpoint."""
    proc = harness.generate(word_order_bin, nll_checkpoint, check=False, user_dir=False)
    assert proc.returncode != 0
    assert "weights_only" in proc.stdout or "Unsupported global" in proc.stdout


@NEEDS_WEIGHTS_ONLY_DEFAULT
def test_checkpoint_with_other_global_still_fails_loudly(word_order_bin, nll_checkpoint, tmp_path):
    state = torch.load(nll_checkpoint, weights_only=False)
    state["extra_state"]["smuggled"] = fractions.Fraction(1, 3)
    bad = str(tmp_path / "bad.pt")
    torch.save(state, bad)
    proc = harness.generate(word_order_bin, bad, check=False)
    assert proc.returncode != 0
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("fairseq_bso.fairseq_fixes.checkpoint_files.UnsafeCheckpoint: refusing checkpoint "
                           f"{bad}: it holds the pickled Python global fractions.Fraction"), last
    assert "weights_only` set to `False`" not in proc.stdout and "weights_only=False" not in proc.stdout


def test_in_process_load_with_weights_only(nll_checkpoint):
    import fairseq_bso  # noqa: F401
    from fairseq_bso.fairseq_fixes.checkpoint_safety import FAIRSEQ_CHECKPOINT_TYPES

    state = torch.load(nll_checkpoint, weights_only=True)
    assert "model" in state and any(isinstance(v, torch.Tensor) for v in state["model"].values())
    # Only the listed types were added to torch's allow-list.
    if hasattr(torch.serialization, "get_safe_globals"):
        added = set(torch.serialization.get_safe_globals())
        assert set(FAIRSEQ_CHECKPOINT_TYPES) <= added
        assert fractions.Fraction not in added
