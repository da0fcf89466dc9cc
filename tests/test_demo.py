"""README command 1's demo, end to end on tiny data (1 NLL epoch + 1 extra epoch per row)."""

import json
import os
import subprocess
import sys

import harness


def test_demo_runs_every_row_and_prints_the_table(tmp_path):
    folder = str(tmp_path / "text")
    os.makedirs(folder)
    for split, n, seed in (("train", 120, 1), ("valid", 12, 2), ("test", 10, 3)):
        with open(os.path.join(folder, f"{split}.txt"), "w") as f:
            f.write("\n".join(harness.make_sentences(n, seed)) + "\n")
    work = str(tmp_path / "work")
    proc = subprocess.run(
        [sys.executable, os.path.join(harness.ROOT, "examples", "word_ordering", "demo.py"), "--workdir", work,
         "--train", f"{folder}/train.txt", "--valid", f"{folder}/valid.txt", "--test", f"{folder}/test.txt",
         "--nll-epochs", "1", "--extra-epochs", "1", "--beams", "1", "2", "--seed", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=harness.env_without_overrides())
    assert proc.returncode == 0, proc.stdout[-3000:]
    results = json.load(open(os.path.join(work, "results.json")))
    assert sorted(results) == ["bso", "bso_paper", "conbso", "seq2seq"]
    assert all(sorted(r) == ["1", "2"] for r in results.values()), results
    table = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert table == ["method", "seq2seq", "BSO", "ConBSO", "BSO, paper recipe"], proc.stdout[-2000:]
    # every row validated with --eval-bleu and kept its best checkpoint
    for row in ("seq2seq", "bso", "conbso", "bso_paper"):
        assert os.path.exists(os.path.join(work, row, "checkpoint_best.pt"))
        log = open(os.path.join(work, row + ".log")).read()
        assert "bleu" in log
        # --seed reaches every fairseq-train run
        assert "'seed': 3," in log, row
    assert "'seed': 3," in open(os.path.join(work, "nll.log")).read()
