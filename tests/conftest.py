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


@pytest.fixture(scope="session")
def uneven_bin(word_order_bin, tmp_path_factory):
    """203 training and 20 valid pairs, numbers fairseq's default --required-batch-size-multiple 8 does not
    divide, binarized with word_order_bin's dictionaries (so nll_checkpoint reads them)."""
    folder = str(tmp_path_factory.mktemp("uneven_data"))
    harness.make_word_order_data(folder, n_train=203)
    return harness.preprocess(folder, joined=False, extra=["--srcdict", f"{word_order_bin}/dict.src.txt",
                                                           "--tgtdict", f"{word_order_bin}/dict.tgt.txt"])
