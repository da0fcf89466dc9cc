#!/usr/bin/env python3
"""docs/results.md, generated from the results files in benchmarks/results/ (and nothing else).

    python3 -m benchmarks.report            # print the document
    python3 -m benchmarks.report --write    # write docs/results.md (atomically)
    python3 -m benchmarks.report --check    # exit 1, with a diff summary, when docs/results.md differs

Every table reads whichever keys its results file holds: a missing file gives a one-line "not measured"
section, a missing row or column is skipped or shown as "–", and the compression files are read both
with their earlier keys (``greedy_mass_percent``, ``scheme``/``ratio_percent`` in each pruning row) and
with issue 28's (``p_wstar_percent``, ``dense:N`` pruning rows, ``generation_throughput_ratio``,
``suite_wall_seconds``). Each section states the file's own protocol fields (``settings``,
``conditions``, ``notes``, ``command``, code revision) and the talk's figure where the talk has one.
The ``bso_authors.json`` section opens with a warning when its run was cut (``state`` not "finished", an epoch
budget below the protocol's, or a ``budget.cut`` note). The only figures not read from a results
file are the talk's (``TALK``) and the re-scoring memory of the route the packed pass replaced
(``INCREMENTAL_RESCORE_MIB``, that script's earlier output). The output depends only on the results files and on
which plots exist, so ``--check`` is exact.

Standard library only: runs without fairseq or matplotlib.
"""

import argparse
import difflib
import glob
import json
import os
import statistics
import sys

from benchmarks.common import write_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
OUTPUT = os.path.join(ROOT, "docs", "results.md")

# The talk's figures (Rush, "Training and Distilling Seq2Seq Models"; /work/shared/docs/REFERENCE.md):
# BLEU at test beams 1 / 5 / 10 (BSO), greedy / beam 5 (distillation), beam 5 and parameters (pruning).
TALK = {
    "word_ordering": {"seq2seq": "25.2 / 29.8 / 31.0", "bso": "28.0 / 33.2 / 34.3", "conbso": "28.6 / 34.3 / 34.5"},
    "translation": {"seq2seq": "22.53 / 24.03 / 23.87", "bso": "23.83 / 26.36 / 25.48"},
    "distillation": {"teacher": "17.7 / 19.5", "student": "14.7 / 17.6", "word_kd": "15.4 / 17.7",
                     "seq_kd": "18.9 / 19.0", "seq_inter": "18.9 / 19.3"},
    "distillation_mass": {"student": "0.9%", "seq_kd": "16.9%"},
    "pruning": {0: "19.3 (84M)", 50: "19.3 (42M)", 80: "19.1 (17M)", 85: "18.8 (13M)", 90: "18.5 (8M)"},
}
BEAMS = ("1", "5", "10")
DASH = "–"


class Doc:
    """The document being built: markdown lines, the results files read and the plots linked."""

    def __init__(self, results_dir, output):
        self.results_dir = results_dir
        self.output = output
        self.lines = []
        self.linked = set()
        self.read = set()  # results files a section read (the others go to "Other results files")

    def add(self, *lines):
        self.lines.extend(lines)

    def load(self, name):
        path = os.path.join(self.results_dir, f"{name}.json")
        if not os.path.exists(path):
            return None
        self.read.add(f"{name}.json")
        with open(path) as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as e:
                raise SystemExit(f"report: {path}: not valid JSON ({e})")

    def tagged(self, name, prefix):
        """[(tag, results)] of results/{name}{prefix}*.json, sorted by file name."""
        found = []
        for path in sorted(glob.glob(os.path.join(self.results_dir, f"{name}{prefix}*.json"))):
            tag = os.path.basename(path)[len(name):-len(".json")]
            found.append((tag, self.load(name + tag)))
        return found

    def plots(self, *names):
        """Markdown image links to those of the PNGs that exist, relative to the output file."""
        links = []
        for name in names:
            path = os.path.join(self.results_dir, name)
            if os.path.exists(path):
                self.linked.add(name)
                rel = os.path.relpath(path, os.path.dirname(os.path.abspath(self.output))).replace(os.sep, "/")
                links.append(f"![{name[:-len('.png')]}]({rel})")
        if links:
            self.add(" ".join(links), "")

    def text(self):
        return "\n".join(self.lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------- formatting


def num(x, digits=2):
    return DASH if x is None else f"{x:.{digits}f}"


def beams(test, keys=BEAMS):
    if not test:
        return DASH
    return " / ".join(num(test.get(k)) for k in keys)


def code(options):
    """A list of command-line options as inline code (``standard beam`` for an empty list)."""
    if not options:
        return "standard beam"
    if isinstance(options, str):
        return options if options == "standard beam" else f"`{options}`"
    return "`" + " ".join(str(o) for o in options) + "`"


def decoding(options):
    if not options or options == ["standard beam"]:
        return "standard beam"
    return code(options)


def best_valid(curve):
    return max(b for _, b in curve) if curve else None


def versus(results, name):
    """beam-5 BLEU minus seq2seq's, with the paired bootstrap's p-value where the file holds them."""
    gap = (results.get("minus_seq2seq_beam5") or {}).get(name)
    if gap is None:
        return DASH
    p = ((results.get("paired_bootstrap_beam5") or {}).get(name) or {}).get("p_value")
    return f"{gap:+.2f}" + ("" if p is None else f" (p {p:.3f})")


def ended(row):
    """best epoch / epochs, marked (cap) when the epoch cap, not patience, ended the run, and (unfinished) when
    the file says the run has not finished."""
    cap = " (cap)" if row.get("stopped") == "epoch cap" else ""
    unfinished = " (unfinished)" if row.get("finished") is False else ""
    return f"{row.get('best_epoch', DASH)} / {row.get('epochs', DASH)}{cap}{unfinished}"


def describe(value):
    """A descriptive field of a results file as text: a string, or a dict / list of scalars and strings."""
    if isinstance(value, dict):
        return "; ".join(f"{k} {describe(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(describe(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# descriptive fields shown under a table when a results file has them (issue 28's compression files)
# (``training`` and ``retraining`` describe the protocol in the section's first paragraph instead)
DESCRIPTIVE = ("state", "losses_against", "class_blind_vs_uniform", "corpora", "generation_throughput",
               "stage_wall_seconds")


def count(n):
    """An integer with thousands separators (– when missing)."""
    return DASH if n is None else f"{n:,}" if isinstance(n, int) else str(n)


def millions(n):
    return DASH if n is None else f"{n / 1e6:.2f}M"


def settings_line(settings, skip=()):
    """The file's settings as `key` value pairs (lists of options as code)."""
    if not settings:
        return None
    parts = []
    for key, value in settings.items():
        if key in skip or value is None or value in ([], "", {}) or value is False:
            continue
        if isinstance(value, list):
            value = code(value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key} {value}")
    return "; ".join(parts)


def provenance(doc, name, results, skip_settings=()):
    """The protocol fields a results file carries about itself, as a bullet list."""
    lines = [f"- File: `benchmarks/results/{name}.json`"
             + (f", written by `{results['command']}`" if results.get("command") else "")
             + (f" at code revision `{results['git_commit'][:7]}`" if results.get("git_commit") else "") + "."]
    if results.get("seeds"):
        lines.append(f"- Training seed(s): {', '.join(str(s) for s in results['seeds'])}.")
    line = settings_line(results.get("settings"), skip_settings)
    if line:
        lines.append(f"- Settings: {line}.")
    if results.get("conditions"):
        lines.append(f"- Conditions: {results['conditions']}.")
    notes = results.get("notes")
    for note in [notes] if isinstance(notes, str) else notes or []:
        lines.append(f"- Note (from the file): {note}")
    for key in ("runs_command", "runs_wall", "speed") + DESCRIPTIVE:
        if results.get(key) not in (None, "", {}, []):
            lines.append(f"- {key.replace('_', ' ')}: {describe(results[key])}")
    models = results.get("models")
    if isinstance(models, dict) and models and all(isinstance(v, str) for v in models.values()):
        lines += [f"- Model `{name}`: `{options}`" for name, options in models.items()]
    if results.get("missing"):
        lines.append(f"- Rows planned but not in the file: {', '.join(str(m) for m in results['missing'])}.")
    doc.add(*lines, "")


def absent(doc, *names):
    doc.add("Not measured: " + ", ".join(f"`benchmarks/results/{n}.json`" for n in names)
            + (" does not exist." if len(names) == 1 else " do not exist."), "")


def section(doc, title, name, needs=None):
    """Open a section: its heading, then results/NAME.json; None (after the "Not measured" line) when the file
    does not exist or its ``needs`` entry is missing or empty."""
    doc.add(f"## {title}", "")
    res = doc.load(name)
    if not res or (needs is not None and not res.get(needs)):
        absent(doc, name)
        return None
    return res


# ---------------------------------------------------------------- sections


def demo_section(doc):
    res = section(doc, "The demo over seeds", "demo_recipes", needs="runs")
    if not res:
        return
    settings = res.get("settings", {})
    doc.add(f"`examples/word_ordering/demo.py` itself ({settings.get('nll_epochs', DASH)} NLL epochs, then "
            f"{settings.get('extra_epochs', DASH)} extra epochs per row, best valid checkpoint) per training seed "
            "and BSO recipe; the NLL model and the seq2seq row are shared by a seed's recipes. Test BLEU at beams "
            "1 / 5 / 10; valid = best valid BLEU at beam 5 under the row's own decoding; p = sacrebleu's paired "
            "bootstrap of beam 5 against seq2seq's. Talk (PTB word ordering): seq2seq "
            f"{TALK['word_ordering']['seq2seq']}, BSO {TALK['word_ordering']['bso']}, ConBSO "
            f"{TALK['word_ordering']['conbso']}.", "")
    doc.add("| seed | recipe | row | valid | test 1 / 5 / 10 | beam 5 − seq2seq | p |", "|---|---|---|---|---|---|---|")
    runs = sorted(res["runs"].values(), key=lambda r: (r.get("seed", 0), r.get("recipe", "")))
    shown_seq2seq = set()
    for run in runs:
        rows = run.get("rows", {})
        base = (rows.get("seq2seq") or {}).get("test", {})
        for name, row in rows.items():
            if name == "seq2seq":
                if run.get("seed") in shown_seq2seq:
                    continue
                shown_seq2seq.add(run.get("seed"))
            test = row.get("test", {})
            gap = f"{test['5'] - base['5']:+.2f}" if name != "seq2seq" and "5" in test and "5" in base else DASH
            p = ((run.get("paired_bootstrap_beam5") or {}).get(name) or {}).get("p_value")
            recipe = DASH if name == "seq2seq" else run.get("recipe", DASH)
            doc.add(f"| {run.get('seed', DASH)} | {recipe} | {name} | {num(best_valid(row.get('valid_curve')))} | "
                    f"{beams(test)} | {gap} | {num(p, 3)} |")
    doc.add("")
    summary = res.get("summary") or {}
    if summary:
        doc.add("BSO − seq2seq at test beam 5, per recipe (mean and sample sd over seeds):", "",
                "| recipe | per seed | mean | sd |", "|---|---|---|---|")
        for recipe, s in summary.items():
            gaps = ", ".join(f"{g:+.2f}" for g in s.get("bso_minus_seq2seq_beam5", []))
            doc.add(f"| {recipe} | {gaps} | {s['mean']:+.2f} | {num(s.get('sd'))} |")
        doc.add("")
    provenance(doc, "demo_recipes", res, skip_settings=("workdir",))
    doc.plots("demo_recipes.png")


def word_ordering_section(doc):
    res = section(doc, "Word ordering on kjv", "word_ordering")
    if not res:
        return
    s, base = res.get("settings", {}), res.get("nll_baseline", {})
    doc.add(f"Corpus {s.get('corpus', DASH)} (sentences of at most {s.get('max_tokens', DASH)} tokens; "
            f"{s.get('train_sentences', DASH)} training, {s.get('test_sentences', DASH)} test sentences). An NLL model "
            f"trained until valid BLEU stopped improving (best epoch {base.get('best_epoch', DASH)} of "
            f"{base.get('epochs', DASH)}, valid {num(base.get('best_valid_bleu'))}), then every row "
            f"{s.get('epochs', DASH)} more epochs from it; valid BLEU at beam {s.get('valid_decoding_beam', 5)} under "
            "the row's own decoding after each epoch, the best checkpoint, test BLEU at beams 1 / 5 / 10; "
            "\"other decoding\" is the same checkpoint decoded the other way; p = sacrebleu's paired bootstrap "
            "against seq2seq at beam 5. Talk: PTB word ordering.", "")
    doc.add("| row | recipe | decoding | best epoch | valid | test 1 / 5 / 10 | other decoding 1 / 5 / 10 | "
            "beam 5 − seq2seq (p) | talk |", "|---|---|---|---|---|---|---|---|---|")
    if base:
        doc.add(f"| NLL baseline (the start) | token NLL to convergence | standard beam | {base.get('best_epoch', DASH)} | "
                f"{num(base.get('best_valid_bleu'))} | {beams(base.get('test'))} | {DASH} | {DASH} | {DASH} |")
    for name, row in res.items():
        if not isinstance(row, dict) or "test" not in row or name == "nll_baseline":
            continue
        other = row.get("test_other_decoding")
        doc.add(f"| {name} | {row.get('lever', DASH)} | {decoding(row.get('decoding'))} | {row.get('best_epoch', DASH)} | "
                f"{num(row.get('best_valid_bleu'))} | {beams(row['test'])} | "
                f"{beams(other) + ' (' + decoding(other.get('decoding')) + ')' if other else DASH} | "
                f"{versus(res, name)} | {TALK['word_ordering'].get(name, DASH)} |")
    doc.add("")
    provenance(doc, "word_ordering", res)
    doc.plots("word_ordering.png", "word_ordering_curves.png")


def recipe_rows(doc, res):
    doc.add("| row | lever | decoding | extra epochs | best epoch | valid | test 1 / 5 / 10 | other decoding 1 / 5 / 10 |",
            "|---|---|---|---|---|---|---|---|")
    base = res.get("nll_baseline")
    if base:
        doc.add(f"| NLL baseline (the start) | token NLL to convergence | standard beam | {DASH} | "
                f"{base.get('best_epoch', DASH)} of {base.get('epochs', DASH)} | {num(base.get('best_valid_bleu'))} | "
                f"{beams(base.get('test'))} | {DASH} |")
    unfinished = []
    for name, row in res.items():
        if not isinstance(row, dict) or name == "nll_baseline" or name in ("settings", "levers_not_run"):
            continue
        if "test" not in row:
            if row.get("status"):
                unfinished.append((name, row))
            continue
        other = row.get("test_other_decoding")
        extra = row.get("extra_epochs", (res.get("settings") or {}).get("epochs", DASH))
        doc.add(f"| {name} | {row.get('lever', DASH)} | {decoding(row.get('decoding'))} | {extra} | "
                f"{row.get('best_epoch', DASH)} | {num(row.get('best_valid_bleu'))} | {beams(row['test'])} | "
                f"{beams(other) + ' (' + decoding(other.get('decoding')) + ')' if other else DASH} |")
    doc.add("")
    for name, row in unfinished:
        curve = ", ".join(f"{b}" for _, b in row.get("valid_curve", []))
        doc.add(f"- `{name}` ({row.get('lever', DASH)}): {row['status']}"
                + (f"; valid BLEU per epoch {curve}" if curve else "") + (f"; why: {row['why']}." if row.get("why") else "."))
    for lever, why in (res.get("levers_not_run") or {}).items():
        doc.add(f"- Not run in this file, `{lever}` (the file's note, as of its code revision): {why}.")
    if unfinished or res.get("levers_not_run"):
        doc.add("")
    options = [(n, r["train_options"]) for n, r in res.items()
               if isinstance(r, dict) and r.get("train_options") and "test" in r]
    if options:
        doc.add("Training options of each row (later options override earlier ones):", "")
        doc.add(*[f"- `{n}`: {code(o)}" for n, o in options], "")


def recipe_section(doc):
    doc.add("## BSO recipe ablations (the demo corpus)", "")
    doc.add("`benchmarks/bso_recipe.py`: the demo's corpus and model; an NLL model trained until valid BLEU stopped "
            "improving, then every row the same number of extra epochs from it, one lever per row; valid BLEU at "
            "beam 5 under the row's own decoding after each epoch, the best checkpoint, test BLEU at beams "
            "1 / 5 / 10 (\"other decoding\": the same checkpoint decoded the other way).", "")
    found = False
    for name, title in (("bso_recipe_v2", "Second ablation"), ("bso_recipe_long", "The longer budget"),
                        ("bso_recipe", "First ablation (an earlier NLL baseline: not comparable row by row with "
                                       "the second)")):
        res = doc.load(name)
        if not res:
            continue
        found = True
        doc.add(f"### {title}", "")
        recipe_rows(doc, res)
        provenance(doc, name, res)
        doc.plots(f"{name}.png")
    if not found:
        absent(doc, "bso_recipe_v2", "bso_recipe_long", "bso_recipe")


def translation_section(doc):
    tr = section(doc, "Translation (l10n-de-en)", "translation")
    if not tr:
        return
    s, base = tr.get("settings", {}), tr.get("nll_baseline", {})
    doc.add(f"Every row starts from the NLL model of the distillation table (best epoch {base.get('best_epoch', DASH)} "
            f"of {base.get('epochs', DASH)}, stopped by {base.get('stopped', DASH)}, valid {num(base.get('best_valid_bleu'))}) "
            f"and trains {s.get('extra_epochs', DASH)} more epochs with no early stop; valid BLEU at beam 5 under the "
            "row's own decoding after each epoch, the checkpoint with the best; detokenized test BLEU at beams "
            "1 / 5 / 10; p = sacrebleu's paired bootstrap against seq2seq at beam 5. Talk: IWSLT14 de-en "
            "(BSO with the sentence-BLEU cost).", "")
    doc.add("| row | decoding | best epoch | valid | test 1 / 5 / 10 | beam 5 − seq2seq (p) | talk |",
            "|---|---|---|---|---|---|---|")
    for name, row in tr.items():
        if isinstance(row, dict) and "test" in row:
            label = "NLL baseline (the start)" if name == "nll_baseline" else name
            dec = [o for o in row.get("decoding", []) if o not in ("--task", "constrained_beam_training")]
            doc.add(f"| {label} | {decoding(dec)} | {ended(row) if name == 'nll_baseline' else row.get('best_epoch', DASH)} | "
                    f"{num(row.get('best_valid_bleu'))} | {beams(row['test'])} | {versus(tr, name)} | "
                    f"{TALK['translation'].get(name, DASH)} |")
    doc.add("")
    trained = [(n, r) for n, r in tr.items() if isinstance(r, dict) and r.get("train")]
    if trained:
        doc.add("Training options of each row (after the NLL model's own; later options override earlier ones):", "")
        for name, row in trained:
            note = f" ({row['note']})" if row.get("note") else ""
            doc.add(f"- `{name}`: {code(row['train'])}{note}")
        doc.add("")
    provenance(doc, "translation", tr, skip_settings=("only", "report"))
    doc.plots("translation.png", "translation_curves.png")

    extra = [(tag, res) for tag, res in doc.tagged("translation", "_")
             if isinstance(res.get("settings"), dict) and "extra_epochs" in res["settings"]]
    if extra:
        doc.add("### Longer budgets and other seeds", "")
        doc.add("The same protocol: `translation.py --extra-epochs N` extends the 8-epoch runs (the learning rate is "
                "constant and the curriculum counts epochs), `--seed S` retrains the rows from the same NLL start.", "")
        doc.add("| file | row | extra epochs | seed | best epoch | valid | test 1 / 5 / 10 | beam 5 − seq2seq (p) |",
                "|---|---|---|---|---|---|---|---|")
        for tag, res in extra:
            st = res.get("settings", {})
            for name, row in res.items():
                if not isinstance(row, dict) or "test" not in row or name == "nll_baseline":
                    continue
                doc.add(f"| `translation{tag}.json` | {name} | {st.get('extra_epochs', DASH)} | {st.get('seed', 1)} | "
                        f"{row.get('best_epoch', DASH)} | {num(row.get('best_valid_bleu'))} | {beams(row['test'])} | "
                        f"{versus(res, name)} |")
        doc.add("")
        for tag, res in extra:
            doc.add(f"- `translation{tag}.json`: `{res.get('command', DASH)}`"
                    + (f" at code revision `{res['git_commit'][:7]}`" if res.get("git_commit") else "") + ".")
        doc.add("")
        seed_summary(doc, tr, extra)
        doc.plots(*[f"translation{tag}_curves.png" for tag, _ in extra])


def seed_summary(doc, first, extra):
    """Each row's beam-5 gap to seq2seq per seed at translation.json's budget, mean and sample sd."""
    budget = (first.get("settings") or {}).get("extra_epochs")
    runs = [((first.get("settings") or {}).get("seed", 1), first)]
    runs += [(res["settings"].get("seed", 1), res) for _, res in extra
             if res["settings"].get("seed", 1) != runs[0][0] and res["settings"].get("extra_epochs") == budget]
    lines = []
    for name in sorted({n for _, res in runs for n in res.get("minus_seq2seq_beam5", {})}):
        gaps = [(seed, res["minus_seq2seq_beam5"][name]) for seed, res in runs
                if name in res.get("minus_seq2seq_beam5", {})]
        if len(gaps) < 2:
            continue
        values = [g for _, g in gaps]
        lines.append(f"| {name} | {', '.join(f'{s}: {g:+.2f}' for s, g in gaps)} | {statistics.mean(values):+.2f} | "
                     f"{statistics.stdev(values):.2f} |")
    if lines:
        doc.add(f"Across seeds at {budget} extra epochs (test beam 5 minus seq2seq's of the same seed; sample sd):", "",
                "| row | seed: gap | mean | sd |", "|---|---|---|---|", *lines, "")


def speed_rows(doc, sp, before=None):
    rows = sp.get("rows", {})
    ks = sorted((k for k in rows if k.startswith("bso") and k[3:].isdigit()), key=lambda k: int(k[3:]))
    old = (before or {}).get("time_ratio", {})
    head = "| K | ms per update | time × NLL |" + (" time × NLL, earlier revision |" if old else "") + " memory × NLL |"
    doc.add(head, "|" + "---|" * (head.count("|") - 1))
    nll = rows.get("nll", {})
    doc.add(f"| NLL | {num(nll.get('ms_per_update'), 1)} | 1.00 |" + (" 1.00 |" if old else "") + " 1.00 |")
    for k in ks + sorted(k for k in rows if k.startswith("bso") and not k[3:].isdigit()):
        r = rows[k]
        kk, _, score = k[3:].partition("_")
        label = f"{kk}, `--bso-score {score}`" if score else kk
        doc.add(f"| {label} | {num(r.get('ms_per_update'), 1)} | {num(r.get('time_ratio'))} |"
                + (f" {num(old.get(k))} |" if old else "") + f" {num(r.get('mem_ratio'))} |")
    doc.add("")
    prof = sp.get("profile_k6")
    if prof:
        doc.add("Torch profiler, K = 6, ms per update: "
                + "; ".join(f"{k} {v}" for k, v in prof.items()) + ".", "")


def bso_speed_section(doc):
    doc.add("## BSO training cost", "")
    found = False
    for name, title in (("bso_speed", "Translation model"), ("bso_speed_demo", "The demo's model")):
        sp = doc.load(name)
        if not sp:
            continue
        found = True
        doc.add(f"### {title}", "")
        doc.add(f"Model {code(sp.get('model'))} on {sp.get('data', DASH)}; batches of {sp.get('batch_sentences', DASH)} "
                f"sentences (mean {sp.get('mean_target_tokens', DASH)} target tokens), {sp.get('threads', DASH)} threads; "
                f"time per update and peak memory rise of the `bso` criterion at training beam K against NLL on the "
                f"same batches, medians of paired per-round ratios over {sp.get('rounds', DASH)} rounds. The talk: "
                "\"Backprop only requires 2x time as standard methods\".", "")
        speed_rows(doc, sp, sp.get("before"))
        if sp.get("before"):
            doc.add(f"- Earlier revision: {sp['before'].get('how', DASH)}", "")
        wo = sp.get("word_order_constraint")
        if wo:
            doc.add(f"The `word_order` constraint's cost: BSO training {num(wo.get('training_overhead_ratio'), 3)}× "
                    f"(ms per update {', '.join(f'{k} {v}' for k, v in wo.get('train_ms_per_update', {}).items())}); "
                    f"BSO decoding {num(wo.get('generation_overhead_ratio_per_beam_row'), 3)}× per beam row, "
                    f"{num(wo.get('generation_wall_ratio'), 3)}× wall time ({wo.get('valid_sentences', DASH)} valid "
                    "sentences, beam 5).", "")
        provenance(doc, name, sp)
        doc.plots(f"{name}.png")
    if not found:
        absent(doc, "bso_speed", "bso_speed_demo")


def targets_table(doc, targets):
    """A file's list of targets (issue 28: ``{"target", "measured", "pass"}``) as a table."""
    if not isinstance(targets, list) or not targets:
        return
    doc.add("| target | measured | met |", "|---|---|---|")
    for t in targets:
        met = {True: "yes", False: "no"}.get(t.get("pass"), DASH)
        measured = t.get("measured")
        doc.add(f"| {t.get('target', DASH)} | {num(measured) if isinstance(measured, (int, float)) else measured or DASH} "
                f"| {met} |")
    doc.add("")


def distill_rows(ds):
    order = ("teacher", "student", "word_kd", "seq_kd", "seq_inter")
    names = [n for n in order if isinstance(ds.get(n), dict)]
    names += [n for n, r in ds.items() if n not in order and isinstance(r, dict) and "bleu_greedy" in r]
    return names


def mass(row):
    for key in ("p_wstar_percent", "greedy_mass_percent"):
        if row.get(key) is not None:
            return f"{row[key]:.1f}%"
    return DASH


def distillation_section(doc):
    ds = section(doc, "Distillation (l10n-de-en)", "distillation")
    if not ds:
        return
    how = (f"Training: {ds['training']}" if isinstance(ds.get("training"), str) else
           "Each model trained until valid BLEU (teacher beam 5, students greedy) stopped improving, or to its epoch "
           "cap (marked \"(cap)\")")
    doc.add(how.rstrip(".") + ". Test BLEU greedy / beam 5. \"Mass on greedy\": the model's probability of its own "
            "greedy output, averaged over the test sentences (p(w*)). Talk: WMT14 en→de, teacher 4×1000, "
            "students 2×500.", "")
    doc.add("| model | test greedy / beam 5 | talk | best epoch / epochs | params | mass on greedy | talk |",
            "|---|---|---|---|---|---|---|")
    for name in distill_rows(ds):
        r = ds[name]
        doc.add(f"| {name} | {num(r.get('bleu_greedy'))} / {num(r.get('bleu_beam5'))} | "
                f"{TALK['distillation'].get(name, DASH)} | {ended(r)} | {millions(r.get('params'))} | {mass(r)} | "
                f"{TALK['distillation_mass'].get(name, DASH)} |")
    doc.add("")
    facts = []
    targets = ds.get("targets")
    if isinstance(targets, dict):
        facts += [f"{key.replace('_', ' ')}: {value:+.2f}" if isinstance(value, (int, float)) else
                  f"{key.replace('_', ' ')}: {describe(value)}" for key, value in targets.items()]
    targets_table(doc, targets)
    if ds.get("generation_throughput_ratio") is not None:
        facts.append(f"`seq_kd` corpus generation throughput / plain `fairseq-generate`'s: "
                     f"{ds['generation_throughput_ratio']:.2f}")
    if ds.get("suite_wall_seconds") is not None:
        facts.append(f"whole chain wall time: {ds['suite_wall_seconds'] / 60:.0f} min")
    if facts:
        doc.add("- " + "; ".join(facts) + ".", "")
    provenance(doc, "distillation", ds, skip_settings=("only_student", "report", "throughput", "dir", "quiet_file"))
    doc.plots("distillation.png")


def speed_models(speed):
    """Model names of a decode_speed file in its order (``models`` when present, else the rows measured)."""
    if isinstance(speed.get("models"), dict):
        return list(speed["models"])
    names = []
    for part in ("batch1", "batched"):
        for k, v in (speed.get(part) or {}).items():
            if isinstance(v, dict) and k not in names:
                names.append(k)
    return names


def params_of(speed, name, ds):
    info = (speed.get("models") or {}).get(name) or {}
    if info.get("params") is not None:
        return info["params"]
    return (ds.get(name.replace("+lean", "")) or {}).get("params") if ds else None


def speed_files(doc):
    """(decode_speed.json, decode_speed_full.json or None): the batched figures come from decode_speed_full.json
    only when it measured the same checkpoints as decode_speed.json."""
    speed, full = doc.load("decode_speed"), doc.load("decode_speed_full")
    if not speed or not full or (full.get("settings") or {}).get("models") != (speed.get("settings") or {}).get("models"):
        return speed, None
    return speed, full


def same_teacher(speed, teacher, ds):
    """(True, "") when decode_speed.json's teacher is distillation.json's: equal parameter counts, or, when either
    file lacks them, the same command wrote both files; else (False, why)."""
    if not ds.get(teacher):
        return False, "distillation.json has no teacher row"
    p_speed = ((speed.get("models") or {}).get(teacher) or {}).get("params")
    p_ds = ds[teacher].get("params")
    if p_speed is not None and p_ds is not None:
        if p_speed == p_ds:
            return True, ""
        return False, (f"`decode_speed.json` and `distillation.json` measured different teachers ({p_speed:,} against "
                       f"{p_ds:,} parameters)")
    if speed.get("command") and speed.get("command") == ds.get("command"):
        return True, ""
    return False, "`decode_speed.json` and `distillation.json` do not say they measured the same teacher"


def decode_speed_section(doc):
    doc.add("## Decoding speed", "")
    speed, full = speed_files(doc)
    if not speed:
        return absent(doc, "decode_speed")
    ds = doc.load("distillation") or {}
    same = full is not None
    batched_from = full if same else speed
    b1, bb = speed.get("batch1") or {}, batched_from.get("batched") or {}
    models = speed_models(speed)
    teacher = models[0] if models else "teacher"
    tbeam = ((speed.get("models") or {}).get(teacher) or {}).get("beam", (speed.get("settings") or {}).get("teacher_beam"))
    doc.add(f"Source words per second, teacher at beam {tbeam if tbeam is not None else DASH}, the others greedy; "
            "\"+lean\" rows decode with `--lean-greedy` (the plugin's greedy generator), the others with fairseq's "
            f"generator; × teacher = the median of paired per-round ratios. Batch size 1: {b1.get('sentences', DASH)} "
            f"test sentences; batched: {bb.get('sentences', DASH)} sentences"
            + (" (from `decode_speed_full.json`, the same checkpoints)" if same else "")
            + ". Talk (GPU): the greedy 2×500 student about 10× the beam-5 teacher (1051 against 101.9 words/s).", "")
    doc.add("| model | params | batch 1: words/s | × teacher | ms per decoder step | batched: words/s | × teacher |",
            "|---|---|---|---|---|---|---|")
    for m in models:
        r1, rb = b1.get(m) or {}, bb.get(m) or {}
        label = f"{teacher} greedy, `--lean-greedy`" if m == f"{teacher}+lean" else m.replace("+lean", ", `--lean-greedy`")
        doc.add(f"| {label} | {millions(params_of(speed, m, ds))} | {num(r1.get('words_per_sec'), 0)} | "
                f"{num(r1.get('speedup_vs_teacher', 1.0 if m == teacher else None), 1)} | "
                f"{num(r1.get('ms_per_decoder_step'), 2)} | {num(rb.get('words_per_sec'), 0)} | "
                f"{num(rb.get('speedup_vs_teacher', 1.0 if m == teacher else None), 1)} |")
    doc.add("")
    provenance(doc, "decode_speed", speed, skip_settings=("models", "name"))
    if same:
        provenance(doc, "decode_speed_full", full, skip_settings=("models", "name"))

    # the BLEU of distillation.json beside the speed of decode_speed.json only when both measured the same teacher
    same_models, why = same_teacher(speed, teacher, ds)
    if not same_models and ds.get(teacher):
        doc.add(f"No size/speed/BLEU table: {why}.", "")
    if same_models and ds[teacher].get("bleu_beam5") is not None and tbeam == 5:
        rows = []
        for m in [n for n in distill_rows(ds) if n != teacher] + [teacher]:
            lean = f"{m}+lean"
            r1, rb = b1.get(lean), bb.get(lean)
            if not (r1 and rb and ds.get(m) and ds[m].get("bleu_greedy") is not None):
                continue
            rows.append(f"| {m}{' greedy' if m == teacher else ''} | {millions(params_of(speed, lean, ds))} | "
                        f"{num(ds[m]['bleu_greedy'])} | {ds[m]['bleu_greedy'] - ds[teacher]['bleu_beam5']:+.2f} | "
                        f"{num(r1.get('speedup_vs_teacher'), 1)} | {num(rb.get('speedup_vs_teacher'), 1)} |")
        if rows:
            doc.add("### Size, speed and BLEU", "",
                    "Greedy with `--lean-greedy` against the teacher's beam 5 with fairseq's generator; BLEU from "
                    "`distillation.json`.", "",
                    "| model | params | test BLEU greedy | − teacher beam 5 | batch 1 × teacher | batched × teacher |",
                    "|---|---|---|---|---|---|",
                    f"| teacher, beam 5 | {millions(params_of(speed, teacher, ds))} | {num(ds[teacher].get('bleu_beam5'))} "
                    f"(beam 5) | {DASH} | 1.0 | 1.0 |", *rows, "")


def pruning_row_fields(key, row):
    """(scheme, percent) of a pruning row: its own fields, else its key ``scheme:percent``."""
    scheme, _, percent = key.partition(":")
    scheme = row.get("scheme", scheme)
    percent = row.get("ratio_percent", int(percent) if percent.isdigit() else None)
    return scheme, percent


def pruning_section(doc):
    pr = section(doc, "Pruning the Seq-KD student", "pruning", needs="rows")
    if not pr:
        return
    before = pr.get("seq_kd_student_before_retraining") or {}
    lr = (pr.get("settings") or {}).get("retrain_lr")
    retraining = (pr["retraining"] if isinstance(pr.get("retraining"), str) else
                  "until valid BLEU (greedy) stopped improving or an epoch cap (marked \"(cap)\")")
    doc.add("The Seq-KD student pruned by magnitude (class-blind: one threshold over all weights; "
            "class-uniform: the same share of every weight class; class-distribution: each class at λ times its "
            f"weights' standard deviation), then retrained with the masks kept, {retraining.rstrip('.')}; test BLEU "
            "greedy / beam 5; \"lost\" is against the 0% row "
            "(the same retraining without pruning); \"dense\" rows are dense students trained with as many weights as "
            "the pruned row's non-zeros. Talk (class-blind, beam 5, WMT14 en→de): "
            + ", ".join(f"{k}% {v}" for k, v in TALK["pruning"].items()) + ".", "")
    if before:
        doc.add(f"The student before pruning: {num(before.get('bleu_greedy'))} / {num(before.get('bleu_beam5'))}.", "")
    rows = [("pruning.json", k, r, f"lr {lr:g}" if lr is not None else DASH) for k, r in pr["rows"].items()]
    for tag, lever in doc.tagged("pruning", "_lr"):
        llr = (lever.get("settings") or {}).get("retrain_lr")
        rows += [(f"pruning{tag}.json", k, r, f"lr {llr:g}" if llr is not None else DASH)
                 for k, r in (lever.get("rows") or {}).items()]
    dense0 = pr["rows"].get("class-blind:0") or {}
    doc.add("| file | scheme | pruned | retraining | test greedy / beam 5 | lost greedy / beam 5 | best epoch / epochs | "
            "non-zero params | sparse copy | talk |", "|---|---|---|---|---|---|---|---|---|---|")
    for file, key, r, retrain in rows:
        scheme, percent = pruning_row_fields(key, r)
        lost_g, lost_b = r.get("bleu_lost_greedy"), r.get("bleu_lost_beam5")
        if lost_g is None and r is not dense0 and None not in (r.get("bleu_greedy"), dense0.get("bleu_greedy")):
            lost_g = dense0["bleu_greedy"] - r["bleu_greedy"]
        if lost_b is None and r is not dense0 and None not in (r.get("bleu_beam5"), dense0.get("bleu_beam5")):
            lost_b = dense0["bleu_beam5"] - r["bleu_beam5"]
        if r is dense0 and r.get("bleu_greedy") is not None:
            lost_g = lost_b = 0.0
        talk = TALK["pruning"].get(percent, DASH) if scheme == "class-blind" else DASH
        nz = r.get("nonzero_params")
        sparse = r.get("sparse_export_bytes")
        if scheme == "dense":  # a dense student as large as the pruned row's non-zeros, not a retraining
            width = f", width {r['width']}" if r.get("width") is not None else ""
            pruned, retrain = (f"none (the non-zeros of {percent}%{width})" if percent is not None else "none"), DASH
        else:
            pruned = DASH if percent is None else f"{percent}%"
        doc.add(f"| `{file}` | {scheme} | {pruned} | {retrain} | "
                f"{num(r.get('bleu_greedy'))} / {num(r.get('bleu_beam5'))} | {num(lost_g)} / {num(lost_b)} | {ended(r)} | "
                f"{DASH if nz is None else f'{nz:,}'} | {DASH if sparse is None else f'{sparse / 2**20:.1f} MiB'} | {talk} |")
    doc.add("")
    targets_table(doc, pr.get("targets"))
    provenance(doc, "pruning", pr, skip_settings=("only", "report", "overhead", "rows", "dir", "quiet_file"))
    for tag, lever in doc.tagged("pruning", "_lr"):
        provenance(doc, f"pruning{tag}", lever, skip_settings=("only", "report", "overhead", "rows"))
    doc.plots("pruning.png", "pruning_curves.png")


def glance_section(doc):
    """Each effect the talk claims, its figure there, the same difference measured here (from the files the
    sections below read), and the section. A claim whose file or rows are missing says "not measured"."""
    doc.add("## At a glance", "",
            "Each effect the talk reports, as a difference within one table (so corpora and model sizes cancel as "
            "far as they can), and the same difference here.", "",
            "| effect (talk's setting) | talk | here | section |", "|---|---|---|---|")

    def line(effect, talk, here, section):
        doc.add(f"| {effect} | {talk} | {here if here else 'not measured'} | [{TITLES[section][0]}](#{TITLES[section][1]}) |")

    wo = doc.load("word_ordering") or {}
    for row, effect, talk in (("bso", "BSO − seq2seq, word ordering, test beam 5 (PTB)", "+3.4"),
                              ("conbso", "ConBSO − seq2seq, word ordering, test beam 5 (PTB)", "+4.5")):
        here = versus(wo, row)
        line(effect, talk, None if here == DASH else f"{here}, kjv (`{row}` row)", "word_ordering_section")
    tr = doc.load("translation") or {}
    gaps = [f"`{row}` {versus(tr, row)}" for row in ("bso", "bso_log_softmax_nll") if versus(tr, row) != DASH]
    line("BSO − seq2seq, translation, test beam 5 (IWSLT14 de-en, SB-Δ)", "+2.33",
         "; ".join(gaps) + f", l10n-de-en, {(tr.get('settings') or {}).get('extra_epochs', DASH)} extra epochs"
         if gaps else None, "translation_section")
    sp = doc.load("bso_speed") or {}
    k6 = ((sp.get("rows") or {}).get("bso6") or {}).get("time_ratio", sp.get("time_ratio_k6"))
    line("BSO training time per update at K = 6 / NLL's", "about 2×",
         f"{k6:.2f}× (translation model; conditions: {sp.get('conditions', DASH)})" if k6 is not None else None,
         "bso_speed_section")
    ds = doc.load("distillation") or {}

    def diff(a, key_a, b, key_b):
        x, y = (ds.get(a) or {}).get(key_a), (ds.get(b) or {}).get(key_b)
        return None if x is None or y is None else f"{x - y:+.2f}"

    line("Seq-KD student greedy − baseline student greedy (WMT14 en→de)", "+4.2",
         diff("seq_kd", "bleu_greedy", "student", "bleu_greedy"), "distillation_section")
    line("Seq-KD student greedy − teacher beam 5", "−0.6", diff("seq_kd", "bleu_greedy", "teacher", "bleu_beam5"),
         "distillation_section")
    line("Seq-Inter student beam 5 − Seq-KD student beam 5", "+0.3", diff("seq_inter", "bleu_beam5", "seq_kd", "bleu_beam5"),
         "distillation_section")
    masses = [mass(ds[n]) for n in ("seq_kd", "student") if isinstance(ds.get(n), dict)]
    line("probability of the greedy output, Seq-KD student against baseline student", "16.9% against 0.9%",
         " against ".join(masses) if len(masses) == 2 and DASH not in masses else None, "distillation_section")
    pruned = {}
    for file, res in [("pruning.json", doc.load("pruning"))] + [(f"pruning{t}.json", r) for t, r in doc.tagged("pruning", "_lr")]:
        for key, row in ((res or {}).get("rows") or {}).items():
            if pruning_row_fields(key, row)[0] == "class-blind" and row.get("bleu_lost_beam5") is not None:
                pruned.setdefault(pruning_row_fields(key, row)[1], []).append(f"{row['bleu_lost_beam5']:.2f} (`{file}`)")
    dense0 = (((doc.load("pruning") or {}).get("rows") or {}).get("class-blind:0") or {})
    for percent, talk in ((50, "0.0"), (80, "0.2"), (90, "0.8")):
        here = pruned.get(percent)
        if not here and dense0:  # issue 28's rows may carry no loss field: against the 0% row
            row = (((doc.load("pruning") or {}).get("rows") or {}).get(f"class-blind:{percent}") or {})
            if row.get("bleu_beam5") is not None and dense0.get("bleu_beam5") is not None:
                here = [f"{dense0['bleu_beam5'] - row['bleu_beam5']:.2f} (`pruning.json`)"]
        line(f"BLEU lost at beam 5, {percent}% class-blind pruned and retrained (Seq-KD student)", talk,
             "; ".join(here) if here else None, "pruning_section")
    speed, full = speed_files(doc)
    ratios = []
    for part, label, res in (("batch1", "batch size 1", speed or {}), ("batched", "batched", full or speed or {})):
        for name, how in (("seq_kd+lean", "`--lean-greedy`"), ("seq_kd", "fairseq's generator")):
            r = ((res.get(part) or {}).get(name) or {}).get("speedup_vs_teacher")
            if r is not None:
                ratios.append(f"{r:.1f}× {label}, {how}")
    line("greedy Seq-KD student's words/s / teacher beam 5's (GPU)", "about 10×",
         "; ".join(ratios) + " (one CPU thread)" if ratios else None, "decode_speed_section")
    doc.add("")


def bso_authors_section(doc):
    res = section(doc, "BSO at the authors' setting", "bso_authors")
    if not res:
        return
    budget, s, nll = res.get("budget") or {}, res.get("settings") or {}, res.get("nll_start") or {}
    rows = res.get("rows") or {}
    seeds = [str(x) for x in res.get("seeds") or []]
    state = res.get("state", DASH)
    planned, cap = budget.get("authors_bso_epochs"), budget.get("bso_epochs_max")
    patience = budget.get("patience")
    cut = state != "finished" or (None not in (planned, cap) and cap < planned) or bool(budget.get("cut"))
    nll_done = nll.get("best_epoch") is not None and not nll.get("unfinished")
    nll_flat = (nll_done and patience is not None and nll.get("epochs") is not None
                and nll["epochs"] - nll["best_epoch"] >= patience)
    if cut:
        parts = [f"Training seeds in the file: {', '.join(seeds) if seeds else 'none'} (the run's state: {state})"]
        if None not in (planned, cap):
            parts.append(f"every row trained at most {cap}" + (f" of the {planned} epochs the protocol plans (the "
                                                               "authors' budget)" if cap < planned else " epochs"))
        if nll_done and not nll_flat:
            parts.append(f"the NLL start ran {nll.get('epochs', DASH)} epochs (best {nll['best_epoch']}) and was not "
                         f"shown converged (its valid BLEU did not stay flat for {patience if patience else DASH} epochs)")
        doc.add("> **The run was cut: these figures are a partial run, not the protocol's result.** "
                + "; ".join(parts) + ". They say what this budget gave for these seeds; they do not answer the "
                "question below.", "")
    question = str(res.get("question", DASH))
    doc.add(f"Question (the file's): {question}{'' if question.endswith(('?', '.')) else '.'} The protocol `benchmarks/bso_authors.py` declares "
            f"for the full run: the demo's corpus and model ({count(s.get('train_sentences'))} training and "
            f"{count(s.get('test_sentences'))} test sentences); an NLL start "
            f"({s.get('nll') or 'until valid BLEU stops improving'}), whose best checkpoint starts every row of every "
            "seed; per "
            "training seed (1, 2 and 3 by default), two rows of up to "
            f"{planned if planned is not None else DASH} epochs each (the authors' budget for word ordering), "
            f"stopped when valid BLEU under the row's own decoding has not improved for {patience or DASH} epochs, "
            "the best valid checkpoint tested: `seq2seq` (token NLL continued, Adam 5e-4, standard beam) and "
            "`bso_authors` (the authors' `bso_train.lua` setting: raw-logit score, 0/1 Δ, dropout masks shared by the "
            "search and the re-scoring, Adagrad with per-layer rates 0.02 / 0.02 / 0.2 reset whenever K grows, beam "
            "curriculum K = 2 → 6 with 2 epochs per K; decoded as trained, with raw scores). Test BLEU (sacrebleu on "
            "the tokenized text) at beams 1 / 5 / 10 under the row's own decoding, the same with "
            "`--constraint word_order` at decoding, and for BSO under the standard beam; sacrebleu's paired bootstrap "
            "of each seed's beam-5 output against seq2seq's; the answer is bso_authors − seq2seq at test beam 5, mean "
            "and sd over seeds.", "")
    doc.add("| row | seed | decoding | best epoch / epochs | valid | test 1 / 5 / 10 | with `--constraint word_order` "
            "| standard beam |", "|---|---|---|---|---|---|---|---|")
    if nll.get("test"):
        doc.add(f"| NLL start | 1 | standard beam | {nll.get('best_epoch', DASH)} / {nll.get('epochs', DASH)} | "
                f"{num(nll.get('best_valid_bleu'))} | {beams(nll.get('test'))} | {beams(nll.get('test_constrained'))} | "
                f"{DASH} |")
    still_rising = []
    for name, row in rows.items():
        for seed, r in sorted((row.get("seeds") or {}).items()):
            if not isinstance(r, dict) or "test" not in r:
                continue
            doc.add(f"| {name} | {seed} | {decoding(r.get('decoding'))} | {r.get('best_epoch', DASH)} / "
                    f"{r.get('epochs', DASH)} | {num(r.get('best_valid_bleu'))} | {beams(r['test'])} | "
                    f"{beams(r.get('test_constrained'))} | {beams(r.get('test_standard_beam'))} |")
            if r.get("best_epoch") is not None and r.get("best_epoch") == r.get("epochs") == cap:
                still_rising.append(f"`{name}` (seed {seed})")
    doc.add("")
    facts = []
    for seed, p in sorted((res.get("per_seed") or {}).items()):
        for key, label in (("", "own decodings"), ("_constrained", "both with the constraint")):
            gap = p.get(f"bso_minus_seq2seq_beam5{key}")
            if gap is None:
                continue
            pv = ((p.get(f"paired_bootstrap_beam5{key}") or {}).get("bso_authors") or {}).get("p_value")
            facts.append(f"seed {seed}, {label}: {gap:+.2f}" + ("" if pv is None else f" (p {pv:.3f})"))
    if facts:
        doc.add("bso_authors − seq2seq at test beam 5 (negative: continued NLL is ahead): " + "; ".join(facts) + ".", "")
    for key, label in (("gap_beam5", "own decodings"), ("gap_beam5_constrained", "with the constraint")):
        if len(res.get(key) or []) > 1:
            doc.add(f"Over {len(res[key])} seeds, {label}: mean {res[f'{key}_mean']:+.2f}, sd {num(res.get(f'{key}_sd'))}"
                    + (" (BSO ahead at every seed)" if res.get(f"{key}_every_seed_ahead") and key == "gap_beam5" else "")
                    + ".", "")
    for seed, r in sorted(((rows.get("bso_authors") or {}).get("seeds") or {}).items()):
        own, std = (r.get("test") or {}).get("5"), (r.get("test_standard_beam") or {}).get("5")
        base = ((((rows.get("seq2seq") or {}).get("seeds") or {}).get(seed) or {}).get("test") or {}).get("5")
        if None not in (own, std):
            doc.add(f"The same `bso_authors` checkpoint (seed {seed}) at test beam 5: {own:.2f} decoded as trained, "
                    f"{std:.2f} under the standard beam"
                    + (f" ({std - base:+.2f} against seq2seq's {base:.2f}; no bootstrap in the file)"
                       if base is not None else "") + ".", "")
    if still_rising:
        doc.add(f"Best valid epoch = the last allowed epoch for {', '.join(still_rising)}: still improving when the "
                "budget ended.", "")
    counts = [(name, seed, r["constrained_not_permutations"]) for name, row in rows.items()
              for seed, r in sorted((row.get("seeds") or {}).items())
              if isinstance(r, dict) and r.get("constrained_not_permutations") is not None]
    if counts:
        doc.add(f"Constrained beam-5 outputs that are not a permutation of their source, out of "
                f"{s.get('test_sentences', DASH)}: " + ", ".join(f"`{n}` seed {sd} {c}" for n, sd, c in counts)
                + " (words compared with source words outside the target vocabulary counted as `<unk>`, which the "
                "model reads and writes in their place).", "")
    shown = dict(res)
    command = res.get("command") or ""
    for flag in (" --code ", " --cut "):  # their texts are shown below (settings, the cut), once
        if flag in command:
            command = command[:command.index(flag)] + " …"
    shown["command"] = command or None
    shown["notes"] = ([f"cut: {budget['cut']}"] if budget.get("cut") else []) + (
        [res["notes"]] if isinstance(res.get("notes"), str) else list(res.get("notes") or []))
    shown.pop("state", None)  # in the notice above
    provenance(doc, "bso_authors", shown)
    doc.plots("bso_authors.png")


# the options of each mode of benchmarks/fp16_pruning.py (its MODES)
FP16_MODES = {"fp16": "--fp16 --fp16-no-flatten-grads", "memory_efficient_fp16": "--memory-efficient-fp16",
              "amp": "--amp"}


def fp16_pruning_section(doc):
    res = section(doc, "Pruning in mixed precision", "fp16_pruning")
    if not res:
        return
    doc.add("`benchmarks/fp16_pruning.py` trains the tests' tiny LSTM (word-ordering data, 200 pairs, 13 updates) for "
            "one epoch with `fairseq-train --task translation_pruned --prune-ratio 0.5` (one-shot magnitude pruning at "
            "update 0) in each mixed-precision mode this fairseq build runs on a CPU, then counts, in "
            "`checkpoint_last.pt`, the pruned positions (exact zeros of the pruned weight matrices) where any tensor "
            "of the saved Adam state (`exp_avg`, `exp_avg_sq`) is non-zero. 0 means the optimizer state carries "
            "nothing at a pruned weight, so no pruned weight can come back through its momentum. A count, no "
            "timing.", "")
    doc.add("| mode | pruned positions | non-zero optimizer state at them | final training loss |", "|---|---|---|---|")
    for mode, r in (res.get("by_mode") or {}).items():
        nz = r.get("optimizer_nonzero")
        doc.add(f"| `{FP16_MODES.get(mode, mode)}` | {DASH if r.get('pruned') is None else format(r['pruned'], ',')} | "
                f"{DASH if nz is None else format(nz, ',')} | {num(r.get('final_loss'), 3)} |")
    before = res.get("fp16_pruned_optimizer_nonzero_before")
    if before is not None:
        total = res.get("pruned_positions")
        doc.add(f"| `{FP16_MODES['fp16']}`, before the pruner masked the fp32 master copy and the optimizer state | "
                f"{DASH if total is None else format(total, ',')} | {before:,} | {DASH} |")
    doc.add("")
    provenance(doc, "fp16_pruning", res)


DDP_BACKENDS = {"pytorch_ddp": "`pytorch_ddp` (`c10d`)",
                "pytorch_ddp_find_unused": "`pytorch_ddp` with `--find-unused-parameters`",
                "legacy_ddp": "`legacy_ddp` (`no_c10d`)"}
# The re-scoring's saved memory (MiB) of the same script through the Transformer's T incremental steps, the
# route the packed pass replaced (benchmarks/results/gpu_readiness.json as first written; not in the current file).
INCREMENTAL_RESCORE_MIB = {"16": 9.7, "32": 26.9, "64": 85.6, "128": 300.7}


def gpu_readiness_section(doc):
    res = section(doc, "GPU readiness (CPU stand-ins)", "gpu_readiness")
    if not res:
        return
    doc.add("`benchmarks/gpu_readiness.py` measures on a CPU what decides how `--criterion bso` behaves on GPUs. Every "
            "figure is a deterministic count or size (no timing), so the machine's load does not change it.", "")
    ddp = res.get("ddp_max_abs_grad_diff")
    doc.add("**Several GPUs.** One BSO update (K = 4, a float64 1-layer LSTM, 4 sentences of 7 target tokens per rank) "
            "on two gloo ranks, the model wrapped as fairseq wraps it for each `--ddp-backend`; the figure is the "
            "largest absolute difference between rank 0's gradient and the gradient one process computes over both "
            "ranks' batches (0: the same gradients).", "")
    doc.add("| `--ddp-backend` | max abs gradient difference |", "|---|---|")
    if isinstance(ddp, dict) and ddp:
        doc.add(*[f"| {DDP_BACKENDS.get(k, f'`{k}`')} | {DASH if v is None else f'{v:g}'} |" for k, v in ddp.items()])
    else:
        doc.add(f"| {DASH} | not measured |")
    doc.add("")
    syncs = res.get("host_syncs_per_forward") or {}
    if syncs:
        doc.add("**Host reads.** Reads of a tensor back to the host (each one a device synchronization on a GPU: "
                "`.item()`, `.tolist()`, `nonzero`, `bool()` of a tensor, boolean-mask indexing, …, counted by a "
                "`TorchFunctionMode`) in one BSO training forward (the criterion's call, K = 4, 8 sentences, a random "
                "1-layer LSTM) at target length T. A count that does not grow with T means the search never waits "
                "for the device inside its step loop. fairseq's Transformer decoder adds 2 reads of its own per "
                "decoding step (a padding check and a position-table check, as in fairseq's generator): 2T + 9 in "
                "all, as measured with the same counter.", "")
        doc.add("| T | " + " | ".join(syncs) + " |", "|---|" + "---|" * len(syncs),
                "| host reads per forward (LSTM) | " + " | ".join(str(v) for v in syncs.values()) + " |", "")
    ours, one = res.get("rescore_saved_mib") or {}, res.get("parallel_pass_saved_mib") or {}
    if ours:
        doc.add("**Re-scoring memory.** MiB saved for backward (unique storages, parameters excluded) by the "
                "criterion's re-scoring of the gold and violating paths, against one teacher-forced pass of the "
                "decoder (features and output layer, as token NLL trains) over the 2·B rows of the gold and one "
                "violating path per sentence: a random 2-layer d = 128 Transformer, 8 sentences of 16 source tokens, "
                "1,000 types, K = 4, the `log_softmax` score, targets of T tokens. A random model violates at almost "
                "every step (about one violation per step per sentence), the worst case for the re-scoring, which then "
                "takes its packed pass (one masked row of 2T positions per sentence). The last column is the route "
                "the packed pass replaced: T incremental decoder steps, which save the cached keys and values again at "
                "every step, so their memory grows with T² (the same script's earlier figures, not in the file).", "")
        doc.add("| T | re-scoring (MiB) | one pass over 2·B rows (MiB) | re-scoring / one pass | "
                "incremental route it replaced (MiB) |", "|---|---|---|---|---|")
        for T, mib in ours.items():
            base = one.get(T)
            ratio = num(mib / base) if mib is not None and base else DASH
            doc.add(f"| {T} | {num(mib, 1)} | {num(base, 1)} | {ratio} | {num(INCREMENTAL_RESCORE_MIB.get(T), 1)} |")
        doc.add("")
    if "fp16_pruned_optimizer_nonzero" in res:
        count = res["fp16_pruned_optimizer_nonzero"]
        doc.add("**Pruning in fp16.** Pruned positions with non-zero optimizer state after training under "
                f"`--fp16 --fp16-no-flatten-grads`: {'not measured' if count is None else format(count, ',')} (copied from "
                "`fp16_pruning.json`; every mode in [Pruning in mixed precision](#pruning-in-mixed-precision)).", "")
    provenance(doc, "gpu_readiness", res)


SECTIONS = (glance_section, demo_section, word_ordering_section, recipe_section, bso_authors_section, translation_section,
            bso_speed_section, distillation_section, decode_speed_section, pruning_section, fp16_pruning_section,
            gpu_readiness_section)


def render(results_dir=RESULTS, output=OUTPUT):
    doc = Doc(results_dir, output)
    doc.add("# Results", "",
            "<!-- Generated by `python3 -m benchmarks.report --write` from benchmarks/results/*.json: do not edit by "
            "hand; regenerate after changing a results file (tests/test_report.py fails until then). -->", "",
            "Measured on a 2-core CPU machine with the scripts in `benchmarks/` (how to run them: "
            "`benchmarks/README.md`; which file feeds which table: `benchmarks/results/README.md`). Each section "
            "lists its file's command, settings and measurement conditions; speed figures are figures only where "
            "the conditions say nothing else ran. The talk's numbers come from GPUs, larger models and other corpora "
            "(PTB word ordering, IWSLT14 and WMT14 translation), so compare rows within a table, not with the talk's "
            "absolute BLEU.", "")
    doc.add("Sections: " + ", ".join(f"[{TITLES[s.__name__][0]}](#{TITLES[s.__name__][1]})" for s in SECTIONS)
            + ".", "")
    for section in SECTIONS:
        section(doc)
    other_files_section(doc)
    rest = sorted(os.path.basename(p) for p in glob.glob(os.path.join(results_dir, "*.png"))
                  if os.path.basename(p) not in doc.linked)
    if rest:
        doc.add("## Other plots", "")
        doc.plots(*rest)
    return doc.text()


def other_files_section(doc):
    """Every results file no section read: its own top-level figures and protocol fields, as they are."""
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(doc.results_dir, "*.json"))
                   if os.path.basename(p) not in doc.read)
    if not names:
        return
    doc.add("## Other results files", "",
            "Files no table above reads (no section of this document is written for them yet): their top-level "
            "figures and protocol fields as the files hold them.", "")
    for name in names:
        res = doc.load(name[:-len(".json")])
        doc.add(f"### `{name}`", "")
        if not isinstance(res, dict):
            doc.add("Not a JSON object.", "")
            continue
        figures = [(k, v) for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k != "wall_seconds"]
        shown = ("command", "git_commit", "conditions", "notes", "runs_command", "runs_wall", "speed") + DESCRIPTIVE
        texts = [(k, v) for k, v in res.items() if isinstance(v, str) and k not in shown]  # provenance shows the rest
        if figures:
            doc.add("| key | value |", "|---|---|", *[f"| {k} | {v:g} |" for k, v in figures], "")
        for k, v in texts:
            doc.add(f"- {k.replace('_', ' ')}: {v}")
        if texts:
            doc.add("")
        provenance(doc, name[:-len(".json")], res)
        doc.plots(name[:-len(".json")] + ".png")


# the contents line: (link text, the anchor GitHub gives the section's heading)
TITLES = {"glance_section": ("at a glance", "at-a-glance"),
          "demo_section": ("the demo over seeds", "the-demo-over-seeds"),
          "word_ordering_section": ("word ordering", "word-ordering-on-kjv"),
          "recipe_section": ("BSO recipe ablations", "bso-recipe-ablations-the-demo-corpus"),
          "translation_section": ("translation", "translation-l10n-de-en"),
          "bso_speed_section": ("BSO training cost", "bso-training-cost"),
          "distillation_section": ("distillation", "distillation-l10n-de-en"),
          "decode_speed_section": ("decoding speed", "decoding-speed"),
          "pruning_section": ("pruning", "pruning-the-seq-kd-student"),
          "bso_authors_section": ("BSO at the authors' setting", "bso-at-the-authors-setting"),
          "fp16_pruning_section": ("pruning in mixed precision", "pruning-in-mixed-precision"),
          "gpu_readiness_section": ("GPU readiness", "gpu-readiness-cpu-stand-ins")}


def check(path, text, context=40):
    """0 when ``path`` holds ``text``; else print a diff summary and return 1."""
    if not os.path.exists(path):
        print(f"report --check: {path} does not exist; run `python3 -m benchmarks.report --write`")
        return 1
    with open(path, encoding="utf-8") as f:
        current = f.read()
    if current == text:
        print(f"report --check: {path} is up to date")
        return 0
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), fromfile=f"{path} (on disk)",
                                     tofile=f"{path} (from the results files)", lineterm=""))
    removed = sum(1 for d in diff if d.startswith("-") and not d.startswith("---"))
    added = sum(1 for d in diff if d.startswith("+") and not d.startswith("+++"))
    print(f"report --check: {path} differs from what --write would write ({removed} lines removed, {added} added); "
          "run `python3 -m benchmarks.report --write`")
    print("\n".join(diff[:context]))
    if len(diff) > context:
        print(f"... ({len(diff) - context} more diff lines)")
    return 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the document to --output")
    mode.add_argument("--check", action="store_true", help="exit 1 when --output differs from what --write writes")
    parser.add_argument("--results", default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--output", default=OUTPUT, help="the document (default: docs/results.md)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.results):
        parser.error(f"--results {args.results}: not a folder")
    text = render(args.results, args.output)
    if args.check:
        return check(args.output, text)
    if args.write:
        write_file(args.output, text)
        print(f"wrote {args.output}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
