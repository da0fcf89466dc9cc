"""docs/results.md is generated from benchmarks/results/*.json by ``python3 -m benchmarks.report --write``.

- the committed document equals what the command writes now (``--check``, through the real module entry point);
- ``--check`` fails, naming the changed figure, once a results file changes, and passes again after ``--write``;
- the compression tables read issue 28's keys (``p_wstar_percent``, ``dense:N`` pruning rows, decode-speed files
  without ``models``) and missing files, against rows written out by hand;
- the sections of ``bso_authors.json`` (with its warning when the run was cut, and without it when not),
  ``fp16_pruning.json`` and ``gpu_readiness.json``, against rows written out by hand, and each reads the committed
  file's own figures.
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
    for name in ("demo_recipes", "word_ordering", "translation", "distillation", "decode_speed", "pruning",
                 "bso_authors", "fp16_pruning", "gpu_readiness"):
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


def section_text(text, heading):
    """The lines of one ``## heading`` section of the document (up to the next ``## ``)."""
    lines = text.splitlines()
    assert f"## {heading}" in lines, f"no section {heading!r} in:\n{text}"
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def bso_authors_file(state="unfinished: seed 2; seed 3", bso_epochs=10, cut="time: a shared machine"):
    row = lambda test, con, best, epochs, **more: {  # noqa: E731
        "decoding": ["standard beam"], "valid_curve": [[e, 20.0 + e] for e in range(1, epochs + 1)], "epochs": epochs,
        "best_epoch": best, "best_valid_bleu": 20.0 + best, "test": test, "test_constrained": con,
        "constrained_not_permutations": 3, **more}
    seq2seq = row({"1": 40.0, "5": 41.5, "10": 41.25}, {"1": 45.0, "5": 46.0, "10": 46.5}, 3, bso_epochs)
    bso = row({"1": 38.0, "5": 36.25, "10": 35.0}, {"1": 44.0, "5": 44.5, "10": 43.0}, bso_epochs, bso_epochs,
              test_standard_beam={"1": 38.0, "5": 40.5, "10": 41.0})
    bso["decoding"] = ["--bso-decoding"]
    return {"question": "BSO or NLL?", "state": state,
            "budget": {"bso_epochs_max": bso_epochs, "patience": 4, "authors_bso_epochs": 39, "cut": cut},
            "nll_start": {"valid_curve": [[1, 10.0], [2, 30.0]], "epochs": 12, "best_epoch": 11, "best_valid_bleu": 30.0,
                          "test": {"1": 29.0, "5": 31.0, "10": 31.5}, "test_constrained": {"1": 33.0, "5": 34.0, "10": 35.0}},
            "rows": {"seq2seq": {"seeds": {"1": seq2seq}}, "bso_authors": {"seeds": {"1": bso}}},
            "per_seed": {"1": {"bso_minus_seq2seq_beam5": -5.25, "bso_minus_seq2seq_beam5_constrained": -1.5,
                               "paired_bootstrap_beam5": {"bso_authors": {"p_value": 0.004}},
                               "paired_bootstrap_beam5_constrained": {"bso_authors": {"p_value": 0.2}}}},
            "gap_beam5": [-5.25], "gap_beam5_mean": -5.25, "gap_beam5_sd": None,
            "settings": {"train_sentences": 120, "test_sentences": 40, "nll": "Adam 2e-3"}, "seeds": [1],
            "command": "python3 -m benchmarks.bso_authors --bso-epochs 10 --code a snapshot --cut time: a shared machine"}


def test_bso_authors_section_says_the_run_was_cut(tmp_path):
    write(tmp_path, "bso_authors", bso_authors_file())
    text = report.render(str(tmp_path), str(tmp_path / "results.md"))
    lines = section_text(text, "BSO at the authors' setting")
    expected = [
        "> **The run was cut: these figures are a partial run, not the protocol's result.** Training seeds in the "
        "file: 1 (the run's state: unfinished: seed 2; seed 3); every row trained at most 10 of the 39 epochs the "
        "protocol plans (the authors' budget); the NLL start ran 12 epochs (best 11) and was not shown converged (its "
        "valid BLEU did not stay flat for 4 epochs). They say what this budget gave for these seeds; they do not "
        "answer the question below.",
        "| NLL start | 1 | standard beam | 11 / 12 | 30.00 | 29.00 / 31.00 / 31.50 | 33.00 / 34.00 / 35.00 | – |",
        "| seq2seq | 1 | standard beam | 3 / 10 | 23.00 | 40.00 / 41.50 / 41.25 | 45.00 / 46.00 / 46.50 | – |",
        "| bso_authors | 1 | `--bso-decoding` | 10 / 10 | 30.00 | 38.00 / 36.25 / 35.00 | 44.00 / 44.50 / 43.00 | "
        "38.00 / 40.50 / 41.00 |",
        "bso_authors − seq2seq at test beam 5 (negative: continued NLL is ahead): seed 1, own decodings: -5.25 "
        "(p 0.004); seed 1, both with the constraint: -1.50 (p 0.200).",
        "The same `bso_authors` checkpoint (seed 1) at test beam 5: 36.25 decoded as trained, 40.50 under the standard "
        "beam (-1.00 against seq2seq's 41.50; no bootstrap in the file).",
        "Best valid epoch = the last allowed epoch for `bso_authors` (seed 1): still improving when the budget ended.",
        "- File: `benchmarks/results/bso_authors.json`, written by `python3 -m benchmarks.bso_authors --bso-epochs 10 "
        "…`.",
        "- Note (from the file): cut: time: a shared machine",
    ]
    missing = [line for line in expected if line not in lines]
    assert not missing, "missing lines:\n" + "\n".join(missing) + "\n--- got:\n" + "\n".join(lines)
    assert "## Other results files" not in text, text


def test_bso_authors_section_without_a_cut_has_no_warning(tmp_path):
    data = bso_authors_file(state="finished", bso_epochs=39, cut=None)
    data["nll_start"].update(epochs=20, best_epoch=14)  # flat for 6 epochs: converged under patience 4
    data["rows"]["bso_authors"]["seeds"]["1"].update(epochs=20, best_epoch=16)  # stopped by patience
    data["gap_beam5"], data["gap_beam5_mean"], data["gap_beam5_sd"] = [-5.25, 1.0], -2.13, 4.42
    write(tmp_path, "bso_authors", data)
    lines = section_text(report.render(str(tmp_path), str(tmp_path / "results.md")), "BSO at the authors' setting")
    assert not any(line.startswith("> ") for line in lines), "\n".join(lines)
    assert "Over 2 seeds, own decodings: mean -2.13, sd 4.42." in lines, "\n".join(lines)
    assert not any("still improving" in line for line in lines), "\n".join(lines)


def test_fp16_and_gpu_readiness_sections(tmp_path):
    write(tmp_path, "fp16_pruning", {
        "fp16_pruned_optimizer_nonzero": 0, "fp16_pruned_optimizer_nonzero_before": 1234, "pruned_positions": 2000,
        "by_mode": {"fp16": {"pruned": 2000, "optimizer_nonzero": 0, "final_loss": 3.5},
                    "amp": {"pruned": 2000, "optimizer_nonzero": 7, "final_loss": 3.25}}})
    write(tmp_path, "gpu_readiness", {
        "ddp_max_abs_grad_diff": {"pytorch_ddp": 0.0, "legacy_ddp": 2.5e-17},
        "host_syncs_per_forward": {"10": 4, "20": 5},
        "rescore_saved_mib": {"16": 3.0, "128": 50.0}, "parallel_pass_saved_mib": {"16": 4.0, "128": 40.0},
        "fp16_pruned_optimizer_nonzero": None, "command": "python3 -m benchmarks.gpu_readiness"})
    text = report.render(str(tmp_path), str(tmp_path / "results.md"))
    fp16 = section_text(text, "Pruning in mixed precision")
    gpu = section_text(text, "GPU readiness (CPU stand-ins)")
    expected_fp16 = [
        "| `--fp16 --fp16-no-flatten-grads` | 2,000 | 0 | 3.500 |",
        "| `--amp` | 2,000 | 7 | 3.250 |",
        "| `--fp16 --fp16-no-flatten-grads`, before the pruner masked the fp32 master copy and the optimizer state | "
        "2,000 | 1,234 | – |"]
    expected_gpu = [
        "| `pytorch_ddp` (`c10d`) | 0 |",
        "| `legacy_ddp` (`no_c10d`) | 2.5e-17 |",
        "| T | 10 | 20 |",
        "| host reads per forward (LSTM) | 4 | 5 |",
        "| 16 | 3.0 | 4.0 | 0.75 | 9.7 |",
        "| 128 | 50.0 | 40.0 | 1.25 | 300.7 |",
        "**Pruning in fp16.** Pruned positions with non-zero optimizer state after training under `--fp16 "
        "--fp16-no-flatten-grads`: not measured (copied from `fp16_pruning.json`; every mode in [Pruning in mixed "
        "precision](#pruning-in-mixed-precision)).",
        "- File: `benchmarks/results/gpu_readiness.json`, written by `python3 -m benchmarks.gpu_readiness`."]
    missing = [line for line in expected_fp16 if line not in fp16] + [line for line in expected_gpu if line not in gpu]
    assert not missing, "missing lines:\n" + "\n".join(missing) + "\n--- got:\n" + text


def test_new_sections_read_the_committed_files():
    """Each of the three sections exists in the document from the committed files and shows their figures."""
    text = report.render()

    def load(name):
        with open(os.path.join(report.RESULTS, f"{name}.json")) as f:
            return json.load(f)

    gpu, fp16, authors = load("gpu_readiness"), load("fp16_pruning"), load("bso_authors")
    lines = section_text(text, "GPU readiness (CPU stand-ins)")
    for T, mib in gpu["rescore_saved_mib"].items():
        one = gpu["parallel_pass_saved_mib"][T]
        row = f"| {T} | {mib:.1f} | {one:.1f} | {mib / one:.2f} |"
        assert any(line.startswith(row) for line in lines), f"{row!r} not in:\n" + "\n".join(lines)
    syncs = "| host reads per forward (LSTM) | " + " | ".join(map(str, gpu["host_syncs_per_forward"].values())) + " |"
    assert syncs in lines, "\n".join(lines)
    lines = section_text(text, "Pruning in mixed precision")
    for mode, r in fp16["by_mode"].items():
        row = f"| `{report.FP16_MODES[mode]}` | {r['pruned']:,} | {r['optimizer_nonzero']:,} | {r['final_loss']:.3f} |"
        assert row in lines, f"{row!r} not in:\n" + "\n".join(lines)
    lines = section_text(text, "BSO at the authors' setting")
    warned = lines[1].startswith("> **The run was cut")
    cut = authors["state"] != "finished" or authors["budget"]["bso_epochs_max"] < authors["budget"]["authors_bso_epochs"]
    assert warned == cut, "\n".join(lines)
    for name, row in authors["rows"].items():
        for seed, r in row["seeds"].items():
            assert any(line.startswith(f"| {name} | {seed} |") and f"{r['test']['5']:.2f}" in line for line in lines), \
                f"{name} seed {seed} test beam 5 {r['test']['5']} not in:\n" + "\n".join(lines)
    for name in ("gpu_readiness.json", "fp16_pruning.json", "bso_authors.json"):
        assert f"### `{name}`" not in text, f"{name} still under 'Other results files'"
