#!/usr/bin/env python3
"""Plots of the benchmark results (PNG in benchmarks/results/), from whatever results files exist.

    python3 benchmarks/plots.py
"""

import json
import os

from common import RESULTS


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        print(f"skip: {path} does not exist (run benchmarks/{name}.py)")
        return None
    with open(path) as f:
        return json.load(f)


def bleu_vs_beam(plt, results, methods, title, out):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in methods:
        if name in results:
            beams = sorted(results[name], key=int)
            ax.plot([int(b) for b in beams], [results[name][b] for b in beams], marker="o", label=name)
    ax.set_xlabel("test beam size")
    ax.set_ylabel("BLEU")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, out), dpi=120)
    print(f"wrote {out}")


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wo = load("word_ordering")
    if wo:
        bleu_vs_beam(plt, wo, ["seq2seq", "bso", "conbso"], "Word ordering (kjv)", "word_ordering.png")
    tr = load("translation")
    if tr:
        bleu_vs_beam(plt, tr, ["pretrained", "seq2seq", "bso"], "de→en (l10n)", "translation.png")
    pr = load("pruning")
    if pr:
        ratios = sorted(pr["bleu"], key=int)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([int(r) for r in ratios], [pr["bleu"][r] for r in ratios], marker="o")
        ax.set_xlabel("weights pruned (%), class-blind, retrained")
        ax.set_ylabel("BLEU (beam 5)")
        ax.set_title("Seq-KD student: BLEU vs sparsity")
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "pruning.png"), dpi=120)
        print("wrote pruning.png")
    sp = load("bso_speed")
    if sp:
        rows = {k: v for k, v in sp["rows"].items() if k.startswith("bso")}
        ks = sorted(rows, key=lambda k: int(k[3:]))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([int(k[3:]) for k in ks], [rows[k]["time_ratio"] for k in ks], marker="o")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("training beam size K")
        ax.set_ylabel("time per update / NLL")
        ax.set_title("BSO training cost")
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "bso_speed.png"), dpi=120)
        print("wrote bso_speed.png")


if __name__ == "__main__":
    main()
