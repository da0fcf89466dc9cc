#!/usr/bin/env python3
"""The README's Results tables (markdown) from benchmarks/results/*.json, beside the talk's numbers.

    python3 benchmarks/report.py > /tmp/results.md
"""

import json
import os

from common import RESULTS

TALK = {
    "word_ordering": {"seq2seq": "25.2 / 29.8 / 31.0", "bso": "28.0 / 33.2 / 34.3", "conbso": "28.6 / 34.3 / 34.5"},
    "translation": {"seq2seq": "22.53 / 24.03 / 23.87", "bso": "23.83 / 26.36 / 25.48"},
    "distillation": {"teacher": "17.7 / 19.5", "student": "14.7 / 17.6", "word_kd": "15.4 / 17.7",
                     "seq_kd": "18.9 / 19.0", "seq_inter": "18.9 / 19.3"},
    "pruning": {"0": "19.3 (84M)", "50": "19.3 (42M)", "80": "19.1 (17M)", "85": "18.8 (13M)", "90": "18.5 (8M)"},
}


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def beams(row, keys=("1", "5", "10")):
    return " / ".join(f"{row[k]:.2f}" for k in keys if k in row)


def beam_table(name, title, methods):
    results = load(name)
    if results:
        print(f"{title}\n")
        print("| method | here | talk |\n|---|---|---|")
        for m in methods:
            print(f"| {m} | {beams(results[m])} | {TALK[name].get(m, '–')} |")
        print()


def recipe_table(name, title):
    """One row per lever of a bso_recipe results file: best epoch, valid BLEU, test BLEU under the
    row's own decoding (and the other decoding for BSO rows)."""
    results = load(name)
    if not results:
        return
    print(f"{title}\n")
    print("| row | lever | decoding | best epoch | valid | test 1 / 5 / 10 | other decoding 1 / 5 / 10 |")
    print("|---|---|---|---|---|---|---|")
    for row_name, row in results.items():
        if not isinstance(row, dict) or "test" not in row or row_name == "nll_baseline":
            continue
        other = row.get("test_other_decoding")
        print(f"| {row_name} | {row['lever']} | {' '.join(row['decoding'])} | {row['best_epoch']} | "
              f"{row['best_valid_bleu']:.2f} | {beams(row['test'])} | {beams(other) if other else '–'} |")
    print()


def main():
    recipe_table("bso_recipe_v2", "**BSO levers, 12 extra epochs** (`bso_recipe_v2.json`)")
    recipe_table("bso_recipe_long", "**BSO levers, the longer budget** (`bso_recipe_long.json`: 30 extra epochs this session)")
    beam_table("word_ordering", "**Word ordering** (kjv, BLEU at test beams 1 / 5 / 10; talk: PTB)",
               ("seq2seq", "bso", "conbso"))
    beam_table("translation", "**Translation** (l10n-de-en, detokenized BLEU at test beams 1 / 5 / 10; talk: "
               "IWSLT14 de-en)", ("pretrained", "seq2seq", "bso"))
    ds = load("distillation")
    if ds:
        print("**Distillation** (l10n-de-en; BLEU greedy / beam 5; source words/s on one thread: teacher at beam 5,"
              " students greedy; talk: WMT14 en→de)\n")
        print("| model | BLEU here | talk | params | words/s | × teacher | mass on greedy |\n|---|---|---|---|---|---|---|")
        for m in ("teacher", "student", "word_kd", "seq_kd", "seq_inter"):
            r = ds[m]
            print(f"| {m} | {r['bleu_greedy']:.2f} / {r['bleu_beam5']:.2f} | {TALK['distillation'][m]} | "
                  f"{r['params'] / 1e6:.2f}M | {r['words_per_sec']:.0f} | {r.get('speedup_vs_teacher_beam5', 1.0):.1f} | "
                  f"{r['greedy_mass_percent']:.1f}% |")
        print(f"\n`seq_kd` corpus generation vs plain `fairseq-generate`: {ds['generation_throughput_ratio']:.3f}×\n")
    pr = load("pruning")
    if pr:
        print("**Pruning** the Seq-KD student (class-blind, retrained; BLEU at beam 5)\n")
        print("| pruned | BLEU | talk | non-zero params | export | sparse copy |\n|---|---|---|---|---|---|")
        for r in ("0", "50", "80", "85", "90"):
            print(f"| {r}% | {pr['bleu'][r]:.2f} | {TALK['pruning'][r]} | {pr['nonzero_params'][r]:,} | "
                  f"{pr['export_bytes'][r] / 2**20:.1f} MiB | {pr['sparse_export_bytes'][r] / 2**20:.1f} MiB |")
        print(f"\nCallback step-time overhead: {pr['overhead_ratio']:.3f}×\n")
    sp = load("bso_speed")
    if sp:
        print("**BSO training cost** (time per update and peak memory rise vs NLL, same batches)\n")
        print("| K | time × NLL | memory × NLL |\n|---|---|---|")
        for k in range(2, 7):
            row = sp["rows"][f"bso{k}"]
            print(f"| {k} | {row['time_ratio']:.2f} | {row['mem_ratio']:.2f} |")
        print()


if __name__ == "__main__":
    main()
