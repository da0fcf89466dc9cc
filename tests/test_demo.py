"""README command 1's demo, end to end on tiny data (1 NLL epoch + 1 extra epoch per row)."""

import json
import os
import subprocess
import sys

import harness
from fairseq_bso.evaluation import parse_hypotheses


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
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900, env=harness.env_without_overrides())
    assert proc.returncode == 0, proc.stdout[-3000:]
    check_demo(work, proc.stdout)


def check_demo(work, stdout):
    """The demo's results, table and logs in ``work`` (a run with --beams 1 2 --seed 3 on 10 test sentences)."""
    results = json.load(open(os.path.join(work, "results.json")))
    assert sorted(results) == ["bso", "bso_paper", "conbso", "seq2seq"]
    # every row tested as trained and with the word_order constraint at decoding (ConBSO: also without it)
    for name, r in results.items():
        keys = ["test", "test_constrained"] + (["test_unconstrained"] if name == "conbso" else [])
        assert sorted(r) == keys, (name, r)
        assert all(sorted(scores) == ["1", "2"] for scores in r.values()), (name, r)
    assert results["conbso"]["test_constrained"] == results["conbso"]["test"]
    table = [line.split("|")[1].strip() for line in stdout.splitlines() if line.startswith("| ")]
    assert table == ["method", "seq2seq", "seq2seq + constrained decoding", "BSO", "BSO + constrained decoding",
                     "ConBSO", "ConBSO, unconstrained decoding", "BSO, paper recipe",
                     "BSO, paper recipe + constrained decoding"], stdout[-2000:]
    # the constrained rows were decoded with the constraint: every output is a permutation of its source, and
    # the unconstrained ones were not (an LSTM after one epoch on random words drops or repeats some)
    sources = open(os.path.join(work, "corpus", "test.src")).read().split("\n")[:10]
    broken = {}
    for log_name in ("seq2seq.test_constrained", "bso.test_constrained", "conbso", "bso_paper.test_constrained",
                     "seq2seq", "bso", "conbso.test_unconstrained", "bso_paper"):
        for beam in (1, 2):
            with open(os.path.join(work, f"generate.{log_name}.beam{beam}.log")) as f:
                text = f.read()
            hyps = parse_hypotheses(text, len(sources))
            wanted = "word_order" if log_name.endswith("test_constrained") or log_name == "conbso" else "none"
            assert f"'constraint': '{wanted}'" in text, (log_name, beam)
            broken[log_name, beam] = sum(sorted(h.split()) != sorted(s.split()) for h, s in zip(hyps, sources))
    constrained = {k: v for k, v in broken.items() if k[0].endswith("test_constrained") or k[0] == "conbso"}
    assert all(v == 0 for v in constrained.values()), constrained
    assert sum(v for k, v in broken.items() if k not in constrained) > 0, broken
    # every row validated with --eval-bleu and kept its best checkpoint
    for row in ("seq2seq", "bso", "conbso", "bso_paper"):
        assert os.path.exists(os.path.join(work, row, "checkpoint_best.pt"))
        log = open(os.path.join(work, row + ".log")).read()
        assert "bleu" in log
        # --seed reaches every fairseq-train run
        assert "'seed': 3," in log, row
    assert "'seed': 3," in open(os.path.join(work, "nll.log")).read()
