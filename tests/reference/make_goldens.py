"""Write the golden files the C++ model tests compare against.

For every config in tests/reference/configs/: build the model in float64, make S = train.steps
batches of token windows, run S training steps and write
  tests/golden/<name>.safetensors   tokens, initial params/buffers, step-1 forward outputs,
                                    step-1 gradients, final params/buffers
  tests/golden/<name>.json          config, loss parts, counts, per-step log, routing margins.
See tests/reference/README.md for the exact layout. Deterministic: two runs give identical bytes.

Usage: python3 tests/reference/make_goldens.py [--out tests/golden] [--only NAME ...]
"""
import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import st_io  # noqa: E402
from config import parse_config  # noqa: E402
from model import BOS, EOS, UltramoeModel, init_parameters  # noqa: E402
from train import make_optimizer, train_step  # noqa: E402

# Routing must not flip between implementations (see README): smallest allowed gap in the
# quantity that decides each selection, at the first step (float32 must agree) and at any step.
MIN_MARGIN_STEP1 = 1e-4
MIN_MARGIN_ANY = 1e-6
MAX_ATTEMPTS = 50


def make_batches(seed, n_batches, batch_size, seq_len, vocab_size):
    """A stream of documents BOS w... EOS (ids >= 4), cut into windows of T+1 tokens with
    stride T (consecutive windows share one token, design.md 1.8/3); batch s = windows
    [s*B, (s+1)*B). Mostly short documents so every window holds several; a few longer ones.
    No empty documents: BOS EOS pairs would add more tokens whose states are bit-identical
    (every document-opening BOS already is one), which tie in capacity mode (README)."""
    rng = random.Random(seed)
    T = seq_len
    need = n_batches * batch_size * T + 1
    stream = []
    while len(stream) < need + 2 * T:
        n = rng.randint(1, 10) if rng.random() < 0.85 else rng.randint(11, 2 * T)
        stream += [BOS] + [rng.randrange(4, vocab_size) for _ in range(n)] + [EOS]
    stream = stream[rng.randrange(0, T):]          # the first window starts mid-document
    windows = [stream[w * T:w * T + T + 1] for w in range(n_batches * batch_size)]
    return torch.tensor(windows, dtype=torch.int64).view(n_batches, batch_size, T + 1)


def run(raw_config, seed):
    """Build, train S steps and collect everything the golden holds."""
    raw = copy.deepcopy(raw_config)
    raw["train"]["seed"] = seed
    rc = parse_config(raw)
    cfg, tc = rc.model, rc.train
    S = tc.steps
    model = UltramoeModel(cfg, torch.float64)
    init_parameters(model, seed)
    batches = make_batches(seed, S, tc.batch_size, rc.seq_len, cfg.vocab_size)

    tensors = {"tokens": batches}
    for n, p in model.named_parameters():
        tensors[f"param.{n}"] = p.detach().clone()
    for n, b in model.named_buffers():
        tensors[f"buffer.{n}"] = b.detach().clone()

    def snapshot_grads(m, st):
        for n, p in m.named_parameters():
            tensors[f"grad.{n}"] = p.grad.detach().clone()

    opt = make_optimizer(model, tc)
    log = []
    for s in range(1, S + 1):
        first = s == 1
        st = train_step(model, opt, batches[s - 1], tc, s,
                        on_grads=snapshot_grads if first else None, keep_outputs=first)
        log.append(st)

    st1 = log[0]
    outs = st1.outputs
    tensors["logits"] = torch.cat([o.logits for o in outs]).detach()
    tensors["hidden.norm"] = torch.cat([o.hidden_norm for o in outs]).detach()
    for i in range(len(outs[0].hidden)):
        tensors[f"hidden.{i}"] = torch.cat([o.hidden[i] for o in outs]).detach()
    for k in range(1, cfg.num_nextn_predict_layers + 1):
        tensors[f"mtp_logits.{k}"] = torch.cat([o.mtp_logits[k - 1] for o in outs]).detach()
    for n, p in model.named_parameters():
        tensors[f"final.param.{n}"] = p.detach().clone()
    for n, b in model.named_buffers():
        tensors[f"final.buffer.{n}"] = b.detach().clone()

    moe_layers = model.moe_layers
    summary = {
        "config": raw,
        "loss": st1.loss,
        "loss_mtp": st1.loss_mtp,
        "mtp_ce": st1.mtp_ce,
        "mtp_lambda": st1.mtp_lambda,
        "loss_bal": st1.loss_bal,
        "loss_z": st1.loss_z,
        "loss_total": st1.loss_total,
        "n_main": st1.n_main,
        "n_mtp": st1.n_mtp,
        "moe_layers": moe_layers,
        "balance": [st1.balance[i] for i in moe_layers],
        "expert_load": [[int(v) for v in st1.loads[i].tolist()] for i in moe_layers],
        "dropped_pairs": [int(st1.n_dropped[i]) for i in moe_layers],
        "steps": [{"step": st.step, "lr": st.lr, "mtp_lambda": st.mtp_lambda, "loss": st.loss,
                   "loss_mtp": st.loss_mtp, "loss_bal": st.loss_bal, "loss_z": st.loss_z,
                   "loss_total": st.loss_total, "grad_norm": st.grad_norm,
                   "clipped": st.grad_norm + 1e-6 > tc.grad_clip,
                   "dropped_pairs": [int(st.n_dropped[i]) for i in moe_layers]}
                  for st in log],
        "routing_margin_min": min(st.margin for st in log),
        "routing_margin_min_step1": st1.margin,
        "torch_version": torch.__version__,
    }
    return tensors, summary


def margins_ok(summary):
    return (summary["routing_margin_min_step1"] >= MIN_MARGIN_STEP1 and
            summary["routing_margin_min"] >= MIN_MARGIN_ANY)


def make_golden(config_path, out_dir):
    raw = json.loads(Path(config_path).read_text())
    base_seed = raw["train"]["seed"]
    for attempt in range(MAX_ATTEMPTS):
        seed = base_seed + attempt      # the next data/init seed, deterministically
        tensors, summary = run(raw, seed)
        if margins_ok(summary):
            break
        print(f"  seed {seed}: routing margins {summary['routing_margin_min_step1']:.3g} (step 1)"
              f" / {summary['routing_margin_min']:.3g} (any) too small, next seed")
    else:
        raise RuntimeError(f"[make_goldens] {config_path}: no seed with safe routing margins")
    summary["seed_attempts"] = attempt + 1
    name = Path(config_path).stem
    out_dir.mkdir(parents=True, exist_ok=True)
    st_io.save(tensors, out_dir / f"{name}.safetensors")
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return name, summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "golden")
    ap.add_argument("--only", nargs="*", help="config names (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)            # fixed reduction order: byte-identical reruns
    torch.use_deterministic_algorithms(True)
    configs = sorted((HERE / "configs").glob("*.json"))
    if args.only:
        configs = [c for c in configs if c.stem in args.only]
    for c in configs:
        t0 = time.time()
        name, s = make_golden(c, args.out)
        size = (args.out / f"{name}.safetensors").stat().st_size
        print(f"{name}: J={s['loss_total']:.6f} CE={s['loss']:.6f} margin step1 "
              f"{s['routing_margin_min_step1']:.3g} any {s['routing_margin_min']:.3g} "
              f"seed {s['config']['train']['seed']} ({size / 1024:.0f} KiB, {time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
