#!/usr/bin/python3
"""Plots of an ultramoe run from its metrics.jsonl (matplotlib).

    /usr/bin/python3 scripts/plot_metrics.py RUN_DIR/metrics.jsonl [OUT_DIR]

writes OUT_DIR/loss.png (training loss parts, validation loss, learning rate) and
OUT_DIR/expert_load.png (per MoE layer, the share of routed pairs each expert received at every
step: a heatmap of experts x steps, with the device imbalance score below).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def read(path):
    train, evals = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            j = json.loads(line)
            (train if j.get("kind") == "train" else evals).append(j)
    return train, evals


def plot_loss(train, evals, out):
    steps = [t["step"] for t in train]
    fig, ax = plt.subplots(figsize=(9, 5))
    def series(key):
        return [t[key] if t.get(key) is not None else np.nan for t in train]
    ax.plot(steps, series("loss"), label="train CE (main)", lw=1.2)
    ax.plot(steps, series("loss_total"), label="train J (total)", lw=0.8, alpha=0.7)
    if any(t.get("loss_mtp") for t in train):
        ax.plot(steps, series("loss_mtp"), label="MTP loss (weighted)", lw=0.8)
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation CE", color="black")
    skipped = [t["step"] for t in train if t.get("skipped")]
    for s in skipped:
        ax.axvline(s, color="red", alpha=0.3)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per token")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, series("lr"), color="gray", ls="--", lw=0.8, label="learning rate")
    ax2.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right")
    ax.set_title("ultramoe training loss")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_expert_load(train, out):
    rows = [t for t in train if t.get("moe")]
    if not rows:
        return False
    layers = [m["layer"] for m in rows[0]["moe"]]
    n = len(layers)
    fig, axes = plt.subplots(2, n, figsize=(max(4.5 * n, 6), 6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    steps = [t["step"] for t in rows]
    for i, layer in enumerate(layers):
        load = np.array([t["moe"][i]["load"] for t in rows], dtype=float)  # steps x experts
        share = load / np.maximum(load.sum(axis=1, keepdims=True), 1)
        ax = axes[0][i]
        im = ax.imshow(share.T, aspect="auto", origin="lower", cmap="viridis",
                       extent=[steps[0], steps[-1], -0.5, share.shape[1] - 0.5])
        ax.set_title(f"layer {layer}: expert load share")
        ax.set_xlabel("step")
        ax.set_ylabel("expert")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax = axes[1][i]
        ax.plot(steps, [t["moe"][i]["is"] for t in rows], lw=0.8, label="IS")
        ax.plot(steps, [t["moe"][i]["max_mean"] - 1 for t in rows], lw=0.8, label="max/mean - 1")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("ultramoe expert load per MoE layer")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(path))
    train, evals = read(path)
    if not train:
        sys.exit(f"plot_metrics: no training lines in {path}")
    os.makedirs(out_dir, exist_ok=True)
    plot_loss(train, evals, os.path.join(out_dir, "loss.png"))
    print("wrote", os.path.join(out_dir, "loss.png"))
    if plot_expert_load(train, os.path.join(out_dir, "expert_load.png")):
        print("wrote", os.path.join(out_dir, "expert_load.png"))


if __name__ == "__main__":
    main()
