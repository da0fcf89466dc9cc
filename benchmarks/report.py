#!/usr/bin/env python3
"""The README's Results tables (markdown) from benchmarks/results/*.json, beside the talk's numbers.

    python3 benchmarks/report.py > /tmp/results.md
"""

import json
import os

from common import RESULTS, tagged_results

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


def lost(row, key):
    return f"{row[key]:.2f}" if key in row else "–"  # no 0% row to compare with


def versus_seq2seq(results, name):
    """A translation row's test beam-5 BLEU minus seq2seq's, with the paired bootstrap's p-value when measured."""
    gap = results.get("minus_seq2seq_beam5", {}).get(name)
    if gap is None:
        return "–"
    p = results.get("paired_bootstrap_beam5", {}).get(name, {}).get("p_value")
    return f"{gap:+.2f}" + ("" if p is None else f" (p = {p:.3f})")


def ended(row):
    """best epoch / epochs, marked when the epoch cap (not --patience) ended the run."""
    cap = " (cap)" if row.get("stopped") == "epoch cap" else ""
    return f"{row.get('best_epoch', '–')} / {row.get('epochs', '–')}{cap}"


def beam_table(name, title, methods):
    results = load(name)
    if results:
        print(f"{title}\n")
        print("| method | here | talk |\n|---|---|---|")
        for m in methods:
            if m in results:  # a results file may hold some rows only (e.g. word_ordering.py --rows)
                print(f"| {m} | {beams(results[m].get('test', results[m]))} | {TALK[name].get(m, '–')} |")
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


def seed_summary(first, extra):
    """Each row's beam-5 gap to seq2seq per seed at the 8-epoch budget (seed 1: translation.json), with the mean
    and the sample standard deviation over the seeds that have both rows."""
    import statistics

    budget = first["settings"]["extra_epochs"]
    runs = [(1, first)] + [(res["settings"]["seed"], res) for _, res in extra
                           if res.get("settings", {}).get("seed", 1) != 1
                           and res["settings"].get("extra_epochs") == budget]
    rows = sorted({n for _, res in runs for n in res.get("minus_seq2seq_beam5", {})})
    lines = []
    for name in rows:
        gaps = [(seed, res["minus_seq2seq_beam5"][name]) for seed, res in runs
                if name in res.get("minus_seq2seq_beam5", {})]
        if len(gaps) < 2:
            continue
        values = [g for _, g in gaps]
        lines.append(f"| {name} | {', '.join(f'{s}: {g:+.2f}' for s, g in gaps)} | {statistics.mean(values):+.2f} | "
                     f"{statistics.stdev(values):.2f} |")
    if lines:
        print(f"**Translation across seeds** ({budget} extra epochs; test beam 5 minus seq2seq's of the same seed)\n")
        print("| row | seed: gap | mean | sd |\n|---|---|---|---|")
        print("\n".join(lines) + "\n")


def main():
    recipe_table("bso_recipe_v2", "**BSO levers, 12 extra epochs** (`bso_recipe_v2.json`)")
    recipe_table("bso_recipe_long", "**BSO levers, the longer budget** (`bso_recipe_long.json`: 30 extra epochs this session)")
    beam_table("word_ordering", "**Word ordering** (kjv, BLEU at test beams 1 / 5 / 10; talk: PTB)",
               ("seq2seq", "bso", "conbso", "bso_paper"))
    tr = load("translation")
    if tr and "nll_baseline" in tr:
        base = tr["nll_baseline"]
        print(f"**Translation** (l10n-de-en from the NLL model of the distillation table: best epoch "
              f"{base.get('best_epoch')} of {base.get('epochs')} (stopped: {base.get('stopped')}), valid "
              f"{base.get('best_valid_bleu')}; every row {tr['settings']['extra_epochs']} "
              "extra epochs, best valid BLEU under its own decoding; detokenized test BLEU at beams 1 / 5 / 10; "
              "talk: IWSLT14 de-en)\n")
        print("| row | decoding | best epoch | valid | test 1 / 5 / 10 | beam 5 − seq2seq's (p) | talk |\n"
              "|---|---|---|---|---|---|---|")
        for name, row in tr.items():
            if isinstance(row, dict) and "test" in row:
                label = "NLL baseline (the start)" if name == "nll_baseline" else name
                decoding = "`--bso-decoding`" if "--bso-decoding" in row.get("decoding", []) else "standard beam"
                print(f"| {label} | {decoding} | {row['best_epoch']} | "
                      f"{row['best_valid_bleu']:.2f} | {beams(row['test'])} | {versus_seq2seq(tr, name)} | "
                      f"{TALK['translation'].get(name, '–')} |")
        print()
        extra = tagged_results("translation", "_")  # longer budgets (translation_e16.json), other seeds (_s2)
        if extra:
            print("**Translation, longer budgets and other seeds** (the same protocol; `translation.py --extra-epochs N`"
                  " extends the 8-epoch runs, `--seed S` retrains every row from the same NLL start)\n")
            print("| file | row | extra epochs | seed | best epoch | valid | test 1 / 5 / 10 | beam 5 − seq2seq's (p) |\n"
                  "|---|---|---|---|---|---|---|---|")
            for tag, res in extra:
                settings = res.get("settings", {})
                for name, row in res.items():
                    if not isinstance(row, dict) or "test" not in row or name == "nll_baseline":
                        continue
                    print(f"| translation{tag} | {name} | {settings.get('extra_epochs')} | {settings.get('seed', 1)} | "
                          f"{row['best_epoch']} | {row['best_valid_bleu']:.2f} | {beams(row['test'])} | "
                          f"{versus_seq2seq(res, name)} |")
            print()
        seed_summary(tr, extra)
    elif tr:
        beam_table("translation", "**Translation** (l10n-de-en, detokenized BLEU at test beams 1 / 5 / 10; talk: "
                   "IWSLT14 de-en)", ("pretrained", "seq2seq", "bso"))
    ds = load("distillation")
    speed = load("decode_speed")
    if ds:
        print("**Distillation** (l10n-de-en, each model trained until valid BLEU stopped improving (--patience) or, "
              "marked (cap), to its epoch cap; test BLEU greedy / beam 5; talk: WMT14 en→de)\n")
        print("| model | BLEU here | talk | best epoch / epochs | params | mass on greedy |\n|---|---|---|---|---|---|")
        for m in ("teacher", "student", "word_kd", "seq_kd", "seq_inter", "seq_kd_small"):
            r = ds.get(m)
            if not r:
                continue
            print(f"| {m} | {r['bleu_greedy']:.2f} / {r['bleu_beam5']:.2f} | {TALK['distillation'].get(m, '–')} | "
                  f"{ended(r)} | {r['params'] / 1e6:.2f}M | "
                  f"{r['greedy_mass_percent']:.1f}% |")
        print()
    full = load("decode_speed_full")  # the batched setting on the whole test set, when measured separately
    if speed:
        print("**Decoding speed** (`decode_speed.json`, batched from `decode_speed_full.json`: source words/s on one thread, teacher at beam 5, "
              "students greedy; median of paired rounds; batch 1: the first "
              f"{speed['batch1']['sentences']} test sentences; batched: {(full or speed)['batched']['sentences']} "
              "sentences)\n")
        print("| model | params | batch 1: words/s | × teacher | batched: words/s | × teacher |")
        print("|---|---|---|---|---|---|")
        teacher = next(iter(speed["models"]))
        for m, info in speed["models"].items():
            b1, bb = speed["batch1"][m], (full or speed)["batched"][m]
            label = ("teacher greedy, `--lean-greedy`" if m == f"{teacher}+lean"
                     else m.replace("+lean", ", `--lean-greedy`"))
            print(f"| {label} | {info['params'] / 1e6:.2f}M | {b1['words_per_sec']:.0f} | "
                  f"{b1.get('speedup_vs_teacher', 1.0):.1f} | {bb['words_per_sec']:.0f} | "
                  f"{bb.get('speedup_vs_teacher', 1.0):.1f} |")
        print()
        if ds and teacher in ds and speed["models"][teacher]["beam"] == 5:  # BLEU at beam 5 is what ds holds
            print("**Size, speed and BLEU** (students greedy with `--lean-greedy`, against the teacher's beam 5 "
                  "with fairseq's generator; BLEU from `distillation.json`)\n")
            print("| model | params | BLEU (greedy) | vs teacher beam 5 | batch 1 × teacher | batched × teacher |")
            print("|---|---|---|---|---|---|")
            print(f"| teacher, beam 5 | {speed['models'][teacher]['params'] / 1e6:.2f}M | "
                  f"{ds[teacher]['bleu_beam5']:.2f} (beam 5) | – | 1.0 | 1.0 |")
            for m in ("student", "seq_kd", "seq_kd_small", teacher):
                lean = f"{m}+lean"
                b1, bb = speed["batch1"].get(lean), (full or speed)["batched"].get(lean)
                if not (b1 and bb and m in ds):
                    continue
                print(f"| {m}{' greedy' if m == teacher else ''} | {speed['models'][lean]['params'] / 1e6:.2f}M | "
                      f"{ds[m]['bleu_greedy']:.2f} | {ds[m]['bleu_greedy'] - ds[teacher]['bleu_beam5']:+.2f} | "
                      f"{b1['speedup_vs_teacher']:.1f} | {bb['speedup_vs_teacher']:.1f} |")
            print()
    pr = load("pruning")
    if pr and "rows" in pr:
        print("**Pruning** the converged Seq-KD student, retrained until valid BLEU stopped improving or an epoch "
              "cap (the table says which; test BLEU greedy / beam 5)\n")
        print("| scheme | pruned | BLEU | lost vs 0% (greedy / beam 5) | best epoch / epochs | non-zero params | "
              "sparse copy |\n|---|---|---|---|---|---|---|")
        rows = [(r, "") for r in pr["rows"].values()]
        for _, lever in tagged_results("pruning", "_lr"):  # retraining-lr levers (--tag), losses vs the 0% row
            rows += [(r, f", retrained at lr {lever['settings']['retrain_lr']:g}") for r in lever.get("rows", {}).values()]
        for r, note in rows:
            print(f"| {r['scheme']} | {r['ratio_percent']}%{note} | {r['bleu_greedy']:.2f} / {r['bleu_beam5']:.2f} | "
                  f"{lost(r, 'bleu_lost_greedy')} / {lost(r, 'bleu_lost_beam5')} | "
                  f"{ended(r)} | {r['nonzero_params']:,} | "
                  f"{r['sparse_export_bytes'] / 2**20:.1f} MiB |")
        print(f"\nTalk (class-blind, beam 5): {', '.join(f'{k}% {v}' for k, v in TALK['pruning'].items())}\n")
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
