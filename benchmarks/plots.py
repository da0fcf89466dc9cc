#!/usr/bin/env python3
"""Plots of the benchmark results (PNG in benchmarks/results/), from whatever results files exist.

    python3 -m benchmarks.plots

Then regenerate docs/results.md (``python3 -m benchmarks.report --write``), which links the plots.
``distillation.png`` and ``pruning.png`` are not drawn here: ``python3 -m benchmarks.compression`` draws them
with the results files it writes (``--report`` redraws them from what exists).
"""

import argparse
import json
import os

from benchmarks.common import RESULTS, tagged_results, write_file


def save_png(fig, name):
    """``fig`` as results/NAME (PNG, 120 dpi), written atomically."""
    write_file(os.path.join(RESULTS, name), save=lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    print(f"wrote {name}")


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        print(f"skip: {path} does not exist (run python3 -m benchmarks.{name})")
        return None
    with open(path) as f:
        return json.load(f)


def bleu_vs_beam(plt, results, methods, title, out):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in methods:
        if name in results:
            row = results[name].get("test", results[name])  # newer files nest the test BLEU under "test"
            beams = sorted(row, key=int)
            ax.plot([int(b) for b in beams], [row[b] for b in beams], marker="o", label=name)
    ax.set_xlabel("test beam size")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    save_png(fig, out)


def learning_curves(plt, results, out):
    """Valid BLEU per epoch of every row (its own decoding), the NLL baseline's curve before them."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = results.get("nll_baseline")
    offset = 0
    if base:
        epochs, bleu = zip(*base["valid_curve"])
        ax.plot(epochs, bleu, color="black", lw=1.2, label="NLL baseline (to convergence)")
        offset = base["best_epoch"]
        ax.axvline(offset, color="grey", lw=0.6, ls=":")
    for name, row in results.items():
        if not isinstance(row, dict) or "valid_curve" not in row or name == "nll_baseline":
            continue
        epochs, bleu = zip(*row["valid_curve"])
        ax.plot([offset + e for e in epochs], bleu, marker=".", label=name)
    ax.set_xlabel("epoch (rows continue from the NLL baseline's best epoch)")
    ax.set_ylabel("valid BLEU, beam 5, own decoding")
    ax.set_title("Learning curves")
    lo = min(b for row in results.values() if isinstance(row, dict) and "valid_curve" in row
             for _, b in row["valid_curve"])
    ax.set_ylim(bottom=max(0, min(lo, 40) - 2))
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out)


def convergence_curves(plt, rows, title, out):
    """Valid BLEU per epoch of runs trained to convergence (deen.run_info's curves), best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in rows.items():
        if not row.get("valid_bleu_curve"):
            continue
        epochs, bleu = zip(*row["valid_bleu_curve"])
        best = row.get("best_epoch")
        line, = ax.plot(epochs, bleu, marker=".", label=name if best is None else f"{name} (best ep {best})")
        if best is not None and row.get("best_valid_bleu") is not None:
            ax.plot([best], [row["best_valid_bleu"]], marker="o", color=line.get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid BLEU")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, out)


def demo_recipe_curves(plt, results, out):
    """The demo's rows per seed (one panel each): valid BLEU per extra epoch, one colour per row, one line
    style per BSO recipe (seq2seq is shared by the recipes of a seed)."""
    seeds = sorted({r["seed"] for r in results["runs"].values()})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4 * len(seeds), 3.6), squeeze=False, sharey=True)
    styles = ["-", "--", ":", "-."]
    recipes = sorted({r["recipe"] for r in results["runs"].values()})
    colours = {"seq2seq": "black", "bso": "tab:blue", "conbso": "tab:green"}
    for ax, seed in zip(axes[0], seeds):
        for run in (r for r in results["runs"].values() if r["seed"] == seed):
            ls = styles[recipes.index(run["recipe"]) % len(styles)]
            for name, row in run["rows"].items():
                if name == "seq2seq" and run["recipe"] != recipes[0] or not row["valid_curve"]:
                    continue
                epochs, bleu = zip(*row["valid_curve"])
                label = name if name == "seq2seq" else f"{name} ({run['recipe']})"
                ax.plot(epochs, bleu, ls=ls, marker=".", color=colours.get(name), label=label)
        ax.set_title(f"seed {seed}", fontsize=9)
        ax.set_xlabel("extra epoch after the NLL model")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("valid BLEU, beam 5, own decoding")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    save_png(fig, out)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wo = load("word_ordering")
    if wo:
        bleu_vs_beam(plt, wo, ["seq2seq", "bso", "conbso", "bso_paper"], "Word ordering (kjv)", "word_ordering.png")
        if "nll_baseline" in wo:
            learning_curves(plt, wo, "word_ordering_curves.png")
    tr = load("translation")
    if tr:
        bleu_vs_beam(plt, tr, ["pretrained", "nll_baseline", "seq2seq", "bso", "bso_stop", "bso_log_softmax",
                               "bso_log_softmax_nll", "bso_log_softmax_nll0.5", "bso_log_softmax_nll2"], "de→en (l10n)",
                       "translation.png")
    # the measured protocol, then longer budgets and other seeds (translation_e16.json, ...): a figure each
    for tag, res in ([("", tr)] if tr else []) + tagged_results("translation", "_"):
        rows = {n: r for n, r in res.items() if isinstance(r, dict) and "valid_bleu_curve" in r and n != "nll_baseline"}
        if rows:
            which = f" ({tag.lstrip('_')})" if tag else ""
            convergence_curves(plt, rows, f"de→en{which}: valid BLEU (beam 5, own decoding) per extra epoch",
                               f"translation{tag}_curves.png")
    # distillation.png and pruning.png are drawn by compression.py (``--report`` redraws them), the script that
    # writes their results files
    dr = load("demo_recipes")
    if dr and dr.get("runs"):
        demo_recipe_curves(plt, dr, "demo_recipes.png")
    for name in ("bso_recipe", "bso_recipe_v2", "bso_recipe_long"):
        rec = load(name)
        if rec:
            learning_curves(plt, rec, f"{name}.png")
    sp = load("bso_speed")
    if sp:
        rows = {k: v for k, v in sp["rows"].items() if k.startswith("bso") and k[3:].isdigit()}
        ks = sorted(rows, key=lambda k: int(k[3:]))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([int(k[3:]) for k in ks], [rows[k]["time_ratio"] for k in ks], marker="o")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("training beam size K")
        ax.set_ylabel("time per update / NLL")
        ax.set_title("BSO training cost")
        fig.tight_layout()
        save_png(fig, "bso_speed.png")


if __name__ == "__main__":
    main()
