"""docs/results.md is generated from benchmarks/results/*.json by ``python3 -m benchmarks.report --write``.

- the committed document equals what the command writes now (``--check``, through the real module entry point);
- ``--check`` fails, naming the changed figure, once a results file changes, and passes again after ``--write``;
- the compression tables read issue 28's keys (``p_wstar_percent``, ``dense:N`` pruning rows, decode-speed files
  without ``models``) and missing files, against rows written out by hand.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import report  # noqa: E402


def run_report(*args):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.report", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)
    return proc.returncode, proc.stdout


def test_results_doc_is_current():
    code, out = run_report("--check")
    assert code == 0, f"docs/results.md is stale; run `python3 -m benchmarks.report --write`:\n{out}"


def test_check_fails_when_a_results_file_changes(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(report.RESULTS, results)
    output = tmp_path / "docs" / "results.md"
    assert run_report("--write", "--results", str(results), "--output", str(output))[0] == 0
    code, out = run_report("--check", "--results", str(results), "--output", str(output))
    assert code == 0, out

    path = results / "word_ordering.json"
    data = json.loads(path.read_text())
    old = data["seq2seq"]["test"]["5"]
    data["seq2seq"]["test"]["5"] = 12.34
    path.write_text(json.dumps(data))
    code, out = run_report("--check", "--results", str(results), "--output", str(output))
    assert code == 1, out
    assert "differs" in out and "12.34" in out and f"{old:.2f}" in out, out

    assert run_report("--write", "--results", str(results), "--output", str(output))[0] == 0
    assert run_report("--check", "--results", str(results), "--output", str(output))[0] == 0
    assert "| seq2seq | token NLL continued | standard beam | 5 | 53.44 | 49.27 / 12.34 / 51.04 |" in output.read_text()

    os.remove(output)
    code, out = run_report("--check", "--results", str(results), "--output", str(output))
    assert code == 1 and "does not exist" in out, out


def test_missing_files_say_not_measured(tmp_path):
    text = report.render(str(tmp_path), str(tmp_path / "results.md"))
    for name in ("demo_recipes", "word_ordering", "translation", "distillation", "decode_speed", "pruning"):
        assert f"Not measured: `benchmarks/results/{name}.json` does not exist." in text, name
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| effect")]
    assert rows and all("| not measured |" in row for row in rows), "\n".join(rows)  # only the glance table


def write(folder, name, data):
    with open(os.path.join(folder, f"{name}.json"), "w") as f:
        json.dump(data, f)


@pytest.fixture
def new_keys(tmp_path):
    """Compression files with issue 28's keys only (no scheme/ratio_percent/params/models fields)."""
    write(tmp_path, "distillation", {
        "teacher": {"bleu_greedy": 30.0, "bleu_beam5": 31.5, "valid_bleu_curve": [[1, 20.0], [2, 25.0]],
                    "p_wstar_percent": 12.34, "epochs": 2, "best_epoch": 2, "stopped": "epoch cap"},
        "student": {"bleu_greedy": 25.0, "bleu_beam5": 26.0, "valid_bleu_curve": [[1, 20.0]], "p_wstar_percent": 5.0},
        "seq_kd": {"bleu_greedy": 28.0, "bleu_beam5": 28.5, "valid_bleu_curve": [[1, 21.0]], "p_wstar_percent": 20.06},
        "generation_throughput_ratio": 0.97, "suite_wall_seconds": 7200, "command": "python3 benchmarks/compression.py"})
    write(tmp_path, "pruning", {"rows": {
        "class-blind:0": {"bleu_greedy": 40.0, "bleu_beam5": 41.0, "nonzero_params": 1000},
        "class-blind:50": {"bleu_greedy": 39.5, "bleu_beam5": 40.75, "nonzero_params": 500},
        "dense:80": {"bleu_greedy": 35.25, "bleu_beam5": 36.0, "nonzero_params": 200}},
        "settings": {"retrain_lr": 0.001}})
    write(tmp_path, "decode_speed", {
        "batch1": {"sentences": 10, "teacher": {"words_per_sec": 100.0},
                   "seq_kd": {"words_per_sec": 250.0, "speedup_vs_teacher": 2.5},
                   "seq_kd+lean": {"words_per_sec": 1000.0, "speedup_vs_teacher": 10.0}},
        "batched": {"sentences": 20, "teacher": {"words_per_sec": 400.0},
                    "seq_kd": {"words_per_sec": 2000.0, "speedup_vs_teacher": 5.0},
                    "seq_kd+lean": {"words_per_sec": 4800.0, "speedup_vs_teacher": 12.0}},
        "settings": {"teacher_beam": 5}, "command": "python3 benchmarks/compression.py"})
    return tmp_path


def test_compression_tables_read_the_new_keys(new_keys):
    text = report.render(str(new_keys), str(new_keys / "results.md"))
    lines = set(text.splitlines())
    expected = [
        # distillation: p(w*) from p_wstar_percent, the talk beside it, a missing row (word_kd) left out
        "| teacher | 30.00 / 31.50 | 17.7 / 19.5 | 2 / 2 (cap) | – | 12.3% | – |",
        "| student | 25.00 / 26.00 | 14.7 / 17.6 | – / – | – | 5.0% | 0.9% |",
        "| seq_kd | 28.00 / 28.50 | 18.9 / 19.0 | – / – | – | 20.1% | 16.9% |",
        "- `seq_kd` corpus generation throughput / plain `fairseq-generate`'s: 0.97; whole chain wall time: 120 min.",
        # pruning: scheme and ratio from the row keys, losses against the 0% row computed, the dense row
        "| `pruning.json` | class-blind | 0% | lr 0.001 | 40.00 / 41.00 | 0.00 / 0.00 | – / – | 1,000 | – | 19.3 (84M) |",
        "| `pruning.json` | class-blind | 50% | lr 0.001 | 39.50 / 40.75 | 0.50 / 0.25 | – / – | 500 | – | 19.3 (42M) |",
        "| `pruning.json` | dense | none (the non-zeros of 80%) | – | 35.25 / 36.00 | 4.75 / 5.00 | – / – | 200 | – | – |",
        # decoding speed without a models field, and the size/speed/BLEU table from distillation.json's BLEU
        "| teacher | – | 100 | 1.0 | – | 400 | 1.0 |",
        "| seq_kd | – | 250 | 2.5 | – | 2000 | 5.0 |",
        "| seq_kd, `--lean-greedy` | – | 1000 | 10.0 | – | 4800 | 12.0 |",
        "| teacher, beam 5 | – | 31.50 (beam 5) | – | 1.0 | 1.0 |",
        "| seq_kd | – | 28.00 | -3.50 | 10.0 | 12.0 |",
        # the glance table: differences computed from the same files, missing ones "not measured"
        "| Seq-KD student greedy − baseline student greedy (WMT14 en→de) | +4.2 | +3.00 | "
        "[distillation](#distillation-l10n-de-en) |",
        "| BLEU lost at beam 5, 50% class-blind pruned and retrained (Seq-KD student) | 0.0 | 0.25 (`pruning.json`) | "
        "[pruning](#pruning-the-seq-kd-student) |",
        "| BLEU lost at beam 5, 90% class-blind pruned and retrained (Seq-KD student) | 0.8 | not measured | "
        "[pruning](#pruning-the-seq-kd-student) |",
        "| greedy Seq-KD student's words/s / teacher beam 5's (GPU) | about 10× | 10.0× batch size 1, `--lean-greedy`; "
        "2.5× batch size 1, fairseq's generator; 12.0× batched, `--lean-greedy`; 5.0× batched, fairseq's generator "
        "(one CPU thread) | [decoding speed](#decoding-speed) |",
        "| BSO − seq2seq, word ordering, test beam 5 (PTB) | +3.4 | not measured | [word ordering](#word-ordering-on-kjv) |",
    ]
    missing = [line for line in expected if line not in lines]
    assert not missing, "missing lines:\n" + "\n".join(missing) + "\n--- got:\n" + text
    assert not any(line.startswith("| word_kd") for line in lines), text


def test_results_index_names_every_results_file():
    with open(os.path.join(report.RESULTS, "README.md")) as f:
        index = f.read()
    files = sorted(name for folder in (report.RESULTS, os.path.join(report.RESULTS, "archive")) if os.path.isdir(folder)
                   for name in os.listdir(folder) if name.endswith(".json"))
    unlisted = [name for name in files if name not in index]
    assert files and not unlisted, f"benchmarks/results/README.md does not name: {unlisted}"


def test_partial_compression_files_render(tmp_path):
    """A compression run in progress writes its files with null figures, unfinished rows and a list of targets."""
    empty = {"epochs": 0, "valid_bleu_curve": [], "finished": False, "bleu_greedy": None, "bleu_beam5": None,
             "p_wstar_percent": None}
    write(tmp_path, "distillation", {
        "teacher": dict(empty), "seq_kd": dict(empty), "generation_throughput_ratio": None,
        "targets": [{"target": "Seq-KD greedy >= student greedy + 2", "measured": 3.0, "pass": True},
                    {"target": "Seq-Inter beam 5 >= Seq-KD beam 5", "measured": None, "pass": None}],
        "state": "partial: not yet measured: ['seq_kd']", "training": "a fixed epoch budget."})
    write(tmp_path, "pruning", {"rows": {"class-blind:0": {**empty, "scheme": "class-blind", "ratio_percent": 0},
                                         "dense:80": {**empty, "width": None}}})
    text = report.render(str(tmp_path), str(tmp_path / "results.md"))
    expected = [
        "| seq_kd | – / – | 18.9 / 19.0 | – / 0 (unfinished) | – | – | 16.9% |",
        "| Seq-KD greedy >= student greedy + 2 | 3.00 | yes |",
        "| Seq-Inter beam 5 >= Seq-KD beam 5 | – | – |",
        "- state: partial: not yet measured: ['seq_kd']",
        "| `pruning.json` | class-blind | 0% | – | – / – | – / – | – / 0 (unfinished) | – | – | 19.3 (84M) |",
        "| `pruning.json` | dense | none (the non-zeros of 80%) | – | – / – | – / – | – / 0 (unfinished) | – | – | – |",
    ]
    lines = set(text.splitlines())
    missing = [line for line in expected if line not in lines]
    assert not missing, "missing lines:\n" + "\n".join(missing) + "\n--- got:\n" + text
    assert "Training: a fixed epoch budget. Test BLEU greedy / beam 5." in text, text


def test_speed_and_bleu_are_joined_only_for_the_same_teacher(new_keys):
    """BLEU from distillation.json and speed from decode_speed.json share a table only when both files measured
    the same teacher (equal parameter counts, or one command wrote both)."""
    speed = json.loads((new_keys / "decode_speed.json").read_text())
    speed["models"] = {"teacher": {"beam": 5, "params": 4483584}, "seq_kd": {"beam": 1, "params": 1000},
                       "seq_kd+lean": {"beam": 1, "params": 1000}}
    (new_keys / "decode_speed.json").write_text(json.dumps(speed))
    distillation = json.loads((new_keys / "distillation.json").read_text())
    distillation["teacher"]["params"] = 2162944
    (new_keys / "distillation.json").write_text(json.dumps(distillation))
    text = report.render(str(new_keys), str(new_keys / "results.md"))
    assert ("No size/speed/BLEU table: `decode_speed.json` and `distillation.json` measured different teachers "
            "(4,483,584 against 2,162,944 parameters).") in text, text
    assert "| teacher, beam 5 |" not in text, text


def test_a_results_file_no_section_reads_is_listed(tmp_path):
    write(tmp_path, "new_benchmark", {"speedup": 2.5, "rows": {"a": 1}, "question": "is it faster?",
                                      "command": "python3 benchmarks/new_benchmark.py", "conditions": "quiet"})
    text = report.render(str(tmp_path), str(tmp_path / "results.md"))
    for line in ("## Other results files", "### `new_benchmark.json`", "| speedup | 2.5 |", "- question: is it faster?",
                 "- File: `benchmarks/results/new_benchmark.json`, written by `python3 benchmarks/new_benchmark.py`.",
                 "- Conditions: quiet."):
        assert line in text.splitlines(), f"{line!r} not in:\n{text}"
