#!/usr/bin/python3
"""The PyTorch peer of `ultramoe bench`: the same model, config, batch and windows, trained in
PyTorch eager on the CPU.

The model is tests/reference/model.py (written independently from the design, docs/design.md, for the golden
files) run in float32: MLA, DSSN, MoE with sort-based dropless dispatch and a loop over
experts, MTP, the same loss J, torch.optim.AdamW. It materialises the (T, V) logits like any
eager PyTorch model. Prints one JSON line: tokens_per_s (median step), step times, torch version.

    /usr/bin/python3 bench/torch_peer.py --config configs/bench-cpu.json --windows W.bin \
        [--steps 5] [--warmup 2] [--threads N]
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from config import load_config  # noqa: E402
from model import UltramoeModel, init_parameters  # noqa: E402
from train import make_optimizer, train_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--windows", required=True, help="int32 (warmup+steps, B, T+1) from `ultramoe bench --save-windows`")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = ap.parse_args()

    torch.set_num_threads(args.threads or os.cpu_count())
    rc = load_config(args.config)
    tc, T = rc.train, rc.seq_len
    B = tc.batch_size
    windows = np.fromfile(args.windows, dtype=np.int32)
    n_steps = args.warmup + args.steps
    if windows.size != n_steps * B * (T + 1):
        sys.exit(f"torch_peer: {args.windows} holds {windows.size} ids, expected {n_steps}x{B}x{T + 1}")
    windows = torch.from_numpy(windows.astype(np.int64)).view(n_steps, B, T + 1)

    model = UltramoeModel(rc.model, dtype=torch.float32)
    init_parameters(model, tc.seed)
    opt = make_optimizer(model, tc)
    times = []
    for s in range(1, n_steps + 1):
        t0 = time.perf_counter()
        train_step(model, opt, windows[s - 1], tc, s)
        dt = time.perf_counter() - t0
        if s > args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"peer": "pytorch", "torch_version": torch.__version__, "threads": torch.get_num_threads(),
                      "tokens_per_step": B * T, "step_s": times, "step_s_median": med,
                      "tokens_per_s": B * T / med}))


if __name__ == "__main__":
    main()
