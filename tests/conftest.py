import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def word_order_bin(tmp_path_factory):
    """Tiny binarized word-ordering data, shared by the tests of a session."""
    folder = str(tmp_path_factory.mktemp("wo_data"))
    harness.make_word_order_data(folder)
    return harness.preprocess(folder)


@pytest.fixture(scope="session")
def nll_checkpoint(word_order_bin, tmp_path_factory):
    """A tiny LSTM trained one epoch with token NLL by the real fairseq-train."""
    save_dir = str(tmp_path_factory.mktemp("nll_ckpt"))
    harness.train(word_order_bin, save_dir, max_epoch=2)
    return os.path.join(save_dir, "checkpoint_last.pt")
