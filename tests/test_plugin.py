"""The plugin loads through --user-dir and as the installed package."""

import os
import re
import subprocess
import sys

import pytest

import harness


def choices(text, option):
    """The choices fairseq-train prints for ``option``: ``--option {a,b,...}`` in --help, or argparse's
    "argument --option: invalid choice: ... (choose from 'a', 'b', ...)"."""
    m = re.search(re.escape(option) + r" \{([^}]*)\}", text) or re.search(
        r"argument " + re.escape(option) + r": invalid choice: .*?\(choose from ([^)]*)\)", text, re.S)
    assert m, f"no choice list for {option} in:\n{text[-2000:]}"
    return {c.strip(" '") for c in m.group(1).split(",")}


def test_train_help_lists_plugin_with_user_dir():
    criteria, task_names = {"bso", "word_kd"}, {"constrained_beam_training", "seq_kd"}
    ours = harness.run(["fairseq-train", "--user-dir", harness.USER_DIR, "--help"]).stdout
    assert criteria <= choices(ours, "--criterion"), f"missing: {sorted(criteria - choices(ours, '--criterion'))}"
    # fairseq's --help prints --task without its choices (metavar TASK): each task name is accepted instead
    for name in sorted(task_names):
        proc = harness.run(["fairseq-train", "--user-dir", harness.USER_DIR, "--task", name, "--help"], check=False)
        assert proc.returncode == 0 and "usage: fairseq-train" in proc.stdout, proc.stdout[-1500:]
    # stock fairseq lists none of them, so the checks above are about the plugin
    stock = harness.run(["fairseq-train", "--help"]).stdout
    assert not criteria & choices(stock, "--criterion")
    stock = harness.run(["fairseq-train", "--task", "seq_kd", "--help"], check=False).stdout
    assert not task_names & choices(stock, "--task") and "translation" in choices(stock, "--task")


def test_user_dir_of_installed_package_points_at_plugin():
    # as in fairseq-train --user-dir "$(python3 -m fairseq_bso.path)": stdout only
    proc = subprocess.run(["python3", "-m", "fairseq_bso.path"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, check=True, cwd="/", env=harness.env_without_overrides())
    path = proc.stdout.strip()
    assert os.path.isfile(os.path.join(path, "__init__.py"))
    assert os.path.basename(path) == "fairseq_bso"


def test_import_registers_and_allow_lists():
    proc = harness.run(["python", "-c",
                        "import argparse, torch, fairseq_bso;"
                        "print(argparse.Namespace in torch.serialization.get_safe_globals())"])
    assert proc.stdout.strip().endswith("True")


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="no numpy 1.x for Python >= 3.13 (docs/bad_inputs.md)")
def test_installed_numpy_runs_fairseqs_language_modeling_datasets():
    """The install pins numpy < 2: fairseq's TokenBlockDataset (language modeling) uses np.compat.long."""
    import numpy as np
    import torch
    from fairseq.data import TokenBlockDataset

    blocks = TokenBlockDataset([torch.tensor([4, 5, 6, 2]), torch.tensor([7, 8, 2])], sizes=np.array([4, 3]),
                               block_size=None, pad=1, eos=2, break_mode="eos")
    assert int(np.__version__.split(".")[0]) < 2
    assert [blocks[i].tolist() for i in range(len(blocks))] == [[4, 5, 6, 2], [7, 8, 2]]
