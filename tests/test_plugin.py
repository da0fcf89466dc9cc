"""The plugin loads through --user-dir and as the installed package."""

import os
import subprocess

import harness


def test_train_help_lists_plugin_with_user_dir():
    proc = harness.run(["fairseq-train", "--user-dir", harness.USER_DIR, "--help"])
    assert "--criterion" in proc.stdout


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
