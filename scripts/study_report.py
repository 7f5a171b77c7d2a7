#!/usr/bin/python3
"""Tables of the routing and stability study (docs/experiments.md) from the runs of
scripts/study.sh:  /usr/bin/python3 scripts/study_report.py runs/study [--metrics FILE]
--metrics FILE also writes the per-step numbers behind the tables (losses, gradient norms, spikes,
per-layer expert loads and router entropy, evaluations, the expert-stats files) as one small JSON
file, to be committed beside docs/experiments.md so that every table entry can be recomputed."""
import json
import os
import statistics
import sys


def metrics(run_dir):
    train, evals = [], []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            j = json.loads(line)
            (train if j["kind"] == "train" else evals).append(j)
    return train, evals


def imbalance(load, devices, tokens):
    per = len(load) // devices
    dev = [sum(load[d * per:(d + 1) * per]) for d in range(devices)]
    return (max(dev) - min(dev)) / tokens if tokens else 0.0


def tail(xs, n=100):
    return xs[-n:] if len(xs) > n else xs


def stability(root):
    print("| run | final val loss | grad spikes (rate) | loss spikes (rate) | skipped | max grad norm |")
    print("|---|---|---|---|---|---|")
    for r in ["dssn_tiny", "dssn_small", "preln_tiny", "preln_small",
              "dssn_tiny_s2", "dssn_small_s2", "preln_tiny_s2", "preln_small_s2"]:
        d = os.path.join(root, r)
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        train, evals = metrics(d)
        counted = max(0, len(train) - 20)  # spike_window 20 in configs/study/deep.json
        gs = sum(1 for t in train if t.get("grad_spike"))
        ls = sum(1 for t in train if t.get("loss_spike"))
        sk = sum(1 for t in train if t.get("skipped"))
        gmax = max((t["grad_norm"] or 0.0) for t in train)
        val = evals[-1]["val_loss"] if evals else float("nan")
        print(f"| {r} | {val:.3f} | {gs} ({100 * gs / max(counted, 1):.1f}%) | {ls} ({100 * ls / max(counted, 1):.1f}%) "
              f"| {sk} | {gmax:.2f} |")


def tvd(a, b):
    sa, sb = sum(a), sum(b)
    return 0.5 * sum(abs(x / sa - y / sb) for x, y in zip(a, b)) if sa and sb else float("nan")


def balancing(root):
    print("| run | final val loss | max/mean load (last 100 steps) | IS, 4 devices | router entropy | "
          "Austen vs KJV expert-load distance (TVD) |")
    print("|---|---|---|---|---|---|")
    for r in ["bal_none", "bal_micro_batch", "bal_ep_group", "bal_aux_free"]:
        d = os.path.join(root, r)
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        train, evals = metrics(d)
        last = tail(train)
        mm = statistics.mean(t["load_max_mean"] for t in last)
        is4 = statistics.mean(t["is"] for t in last)
        ent = statistics.mean(statistics.mean(m["entropy"] for m in t["moe"]) for t in last)
        dist = "n/a"
        ea, ek = os.path.join(d, "experts_austen.json"), os.path.join(d, "experts_kjv.json")
        if os.path.exists(ea) and os.path.exists(ek):
            la, lk = json.load(open(ea))["layers"], json.load(open(ek))["layers"]
            per_layer = [tvd(a["load"], b["load"]) for a, b in zip(la, lk) if a["tokens"] and b["tokens"]]
            dist = f"{statistics.mean(per_layer):.3f} (layers: {', '.join(f'{x:.2f}' for x in per_layer)})"
        val = evals[-1]["val_loss"] if evals else float("nan")
        print(f"| {r} | {val:.3f} | {mm:.2f} | {is4:.3f} | {ent:.3f} | {dist} |")


def moge(root):
    print("| run | final val loss | IS, 2 devices | IS, 4 devices | IS, 8 devices | max/mean load |")
    print("|---|---|---|---|---|---|")
    for r in ["moge", "topk_soft"]:
        d = os.path.join(root, r)
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        train, evals = metrics(d)
        last = tail(train)
        cols = []
        for dev in (2, 4, 8):
            cols.append(statistics.mean(statistics.mean(imbalance(m["load"], dev, sum(m["load"]) // 4) for m in t["moe"])
                                        for t in last))
        mm = statistics.mean(t["load_max_mean"] for t in last)
        val = evals[-1]["val_loss"] if evals else float("nan")
        print(f"| {r} | {val:.3f} | {cols[0]:.3f} | {cols[1]:.3f} | {cols[2]:.3f} | {mm:.2f} |")


RUNS = ["dssn_tiny", "dssn_small", "preln_tiny", "preln_small", "dssn_tiny_s2", "dssn_small_s2", "preln_tiny_s2",
        "preln_small_s2", "bal_none", "bal_micro_batch", "bal_ep_group", "bal_aux_free", "moge", "topk_soft"]


def write_metrics(root, path):
    """The numbers the tables are computed from, per run, rounded to what the tables can show."""
    r6 = lambda x: None if x is None else round(x, 6)  # noqa: E731
    out = {"source": "scripts/study.sh", "runs": {}}
    for r in RUNS:
        d = os.path.join(root, r)
        if not os.path.exists(os.path.join(d, "metrics.jsonl")):
            continue
        train, evals = metrics(d)
        detail_from = train[-100]["step"] if len(train) > 100 else 0  # the tables use the last 100 steps
        run = {
            "train": [{"step": t["step"], "loss": r6(t["loss"]), "grad_norm": r6(t["grad_norm"]),
                       "skipped": bool(t.get("skipped")), "grad_spike": bool(t.get("grad_spike")),
                       "loss_spike": bool(t.get("loss_spike")), "load_max_mean": r6(t.get("load_max_mean")),
                       "is": r6(t.get("is")),
                       "moe": [{"load": m["load"], "entropy": r6(m["entropy"])} for m in t.get("moe", [])]
                       if t["step"] >= detail_from else []}
                      for t in train],
            "eval": [{"step": e["step"], "val_loss": r6(e["val_loss"])} for e in evals],
        }
        for name in ("experts_austen", "experts_kjv"):
            f = os.path.join(d, name + ".json")
            if os.path.exists(f):
                run[name] = [{"layer": x["layer"], "tokens": x["tokens"], "load": x["load"]}
                             for x in json.load(open(f))["layers"]]
        out["runs"][r] = run
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--metrics")]
    root = args[0] if args else "runs/study"
    if "--metrics" in sys.argv:
        write_metrics(root, sys.argv[sys.argv.index("--metrics") + 1])
        args = [a for a in args if a != sys.argv[sys.argv.index("--metrics") + 1]]
        root = args[0] if args else "runs/study"
    print("### 1. Stability\n")
    stability(root)
    print("\n### 2. Balancing\n")
    balancing(root)
    print("\n### 3. MoGE vs top-k\n")
    moge(root)


if __name__ == "__main__":
    main()
