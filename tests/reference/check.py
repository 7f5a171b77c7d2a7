"""Self-checks of the PyTorch reference and of the committed goldens.

  1. naive:    a per-token loop implementation (naive.py) recomputes, from each golden's
               parameters and tokens, the step-1 logits, hidden states, loss parts, counts,
               balance and drops; the loss parts must add up to J.
  2. fd:       finite differences of J (float64) along a random direction of every parameter
               tensor, for every config, against the autograd gradient; plus
               torch.autograd.gradcheck of J w.r.t. a few small tensors (router, gains,
               router_scale) on tiny_dssn and tiny_moge.
  3. replay:   the 10 training steps again with a hand-written AdamW, LR schedule, clipping and
               aux-free update (not train.py's), against the golden per-step log and final
               parameters/buffers.
  4. float32:  the model in float32 on the golden parameters reproduces the float64 logits and
               routing (it is also the benchmark's PyTorch peer).
  5. determinism: make_goldens run twice gives byte-identical files, equal to the committed ones.

Usage: python3 tests/reference/check.py [--golden tests/golden] [--skip determinism ...]
"""
import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_goldens  # noqa: E402
import naive  # noqa: E402
import st_io  # noqa: E402
from config import parse_config, schedule_value  # noqa: E402
from model import UltramoeModel, micro_batch_loss, step_counts  # noqa: E402
from train import accumulate_gradients  # noqa: E402

FAILURES = []


def expect(ok, what):
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def max_rel(a, b):
    """max |a - b| relative to the scale (max |b|) of the expected tensor."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if not b.numel():
        return 0.0
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-300))


def load_golden(golden_dir, name):
    tensors = st_io.load(golden_dir / f"{name}.safetensors")
    summary = json.loads((golden_dir / f"{name}.json").read_text())
    return tensors, summary


def model_from_golden(tensors, summary, prefix="", dtype=torch.float64):
    rc = parse_config(summary["config"])
    model = UltramoeModel(rc.model, dtype)
    state = {n[len(prefix) + 6:]: t for n, t in tensors.items() if n.startswith(prefix + "param.")}
    state.update({n[len(prefix) + 7:]: t for n, t in tensors.items() if n.startswith(prefix + "buffer.")})
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return model, rc


# ---------------------------------------------------------------------------------------------
def check_naive(golden_dir, name):
    tensors, summary = load_golden(golden_dir, name)
    cfg, train = summary["config"]["model"], summary["config"]["train"]
    P = {n[6:]: t.numpy() for n, t in tensors.items() if n.startswith("param.")}
    P.update({n[7:]: t.numpy() for n, t in tensors.items() if n.startswith("buffer.")})
    tokens = tensors["tokens"][0].tolist()
    lam = schedule_value(train["mtp_lambda"], 1)
    parts, outs = naive.step_losses(P, cfg, train, tokens, lam)

    def stack(get):   # nested per-micro-batch lists of vectors -> (B, n, X)
        return np.array([seq for o in outs for seq in get(o)])
    worst = max_rel(stack(lambda o: o[0]), tensors["logits"])
    worst = max(worst, max_rel(stack(lambda o: o[3]), tensors["hidden.norm"]))
    for i in range(len(outs[0][2])):
        worst = max(worst, max_rel(stack(lambda o: o[2][i]), tensors[f"hidden.{i}"]))
    for k in range(len(outs[0][1])):
        worst = max(worst, max_rel(stack(lambda o: o[1][k]), tensors[f"mtp_logits.{k + 1}"]))
    expect(worst < 1e-10, f"{name}: naive loops reproduce logits/hidden/mtp_logits (max rel {worst:.1e})")
    for key in ("loss", "loss_mtp", "loss_bal", "loss_z", "loss_total"):
        err = abs(parts[key] - summary[key])
        expect(err < 1e-11, f"{name}: naive {key} = {parts[key]:.12f} (golden {summary[key]:.12f})")
    expect(max_rel(parts["mtp_ce"], summary["mtp_ce"]) < 1e-11, f"{name}: naive mtp_ce")
    expect(max_rel(parts["balance"], summary["balance"]) < 1e-11, f"{name}: naive balance B_l")
    for key in ("n_main", "n_mtp", "dropped_pairs"):
        expect(parts[key] == summary[key], f"{name}: naive {key} {parts[key]}")
    recomposed = summary["loss"] + summary["loss_mtp"] + summary["loss_bal"] + summary["loss_z"]
    expect(abs(recomposed - summary["loss_total"]) < 1e-12, f"{name}: J = CE + L_MTP + L_bal + L_z")
    D = cfg["num_nextn_predict_layers"]
    mtp = summary["mtp_lambda"] / D * sum(summary["mtp_ce"]) if D else 0.0
    expect(abs(mtp - summary["loss_mtp"]) < 1e-12, f"{name}: L_MTP = lambda/D * sum CE^k")


# ---------------------------------------------------------------------------------------------
def loss_J(model, batch, tc, step):
    """J of one global batch, as a differentiable scalar (all micro-batches summed)."""
    counts = step_counts(model, batch, tc.balance_scope, tc.micro_batch_size)
    lam = schedule_value(tc.mtp_lambda, step)
    m, J = tc.micro_batch_size, 0.0
    for a in range(batch.shape[0] // m):
        tokens = batch[a * m:(a + 1) * m]
        out = model(tokens, tc.capacity_factor)
        J = J + micro_batch_loss(out, tokens, counts, model.cfg, lam, tc.balance_alpha,
                                 tc.z_loss_coef).total
    return J


def check_finite_differences(golden_dir, name, gradcheck_names=()):
    tensors, summary = load_golden(golden_dir, name)
    model, rc = model_from_golden(tensors, summary)
    batch = tensors["tokens"][0]
    accumulate_gradients(model, batch, rc.train, 1)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    gold = max(max_rel(grads[n], tensors[f"grad.{n}"]) for n in grads)
    expect(gold < 1e-12, f"{name}: autograd gradient equals the golden grad.* (max rel {gold:.1e})")
    gen = torch.Generator().manual_seed(0)
    eps, worst, worst_name = 1e-5, 0.0, ""
    with torch.no_grad():
        for n, p in model.named_parameters():
            v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            v /= v.norm()
            p += eps * v
            jp = float(loss_J(model, batch, rc.train, 1))
            p -= 2 * eps * v
            jm = float(loss_J(model, batch, rc.train, 1))
            p += eps * v
            fd, an = (jp - jm) / (2 * eps), float((grads[n] * v).sum())
            err = abs(fd - an) / (abs(an) + 1e-6)
            if err > worst:
                worst, worst_name = err, n
    expect(worst < 1e-5, f"{name}: finite differences along every tensor (worst rel {worst:.1e} at {worst_name})")

    if gradcheck_names:
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        inputs = tuple(params[n].detach().clone().requires_grad_(True) for n in gradcheck_names)

        def f(*xs):
            state = {**params, **buffers, **dict(zip(gradcheck_names, xs))}
            state = {"inner." + k: v for k, v in state.items()}
            return torch.nn.utils.stateless.functional_call(
                _JModule(model, batch, rc.train), state, ())
        ok = torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False)
        expect(ok, f"{name}: torch.autograd.gradcheck of J w.r.t. {', '.join(gradcheck_names)}")


class _JModule(torch.nn.Module):
    """Wraps the model so functional_call can swap its parameters; forward() returns J."""

    def __init__(self, model, batch, tc):
        super().__init__()
        self.inner, self.batch, self.tc = model, batch, tc

    def forward(self):
        return loss_J(self.inner, self.batch, self.tc, 1)


# ---------------------------------------------------------------------------------------------
def lr_schedule(t, s):
    """Section 8, written out again independently of train.lr_at."""
    w, lr, lo = t["warmup_steps"], t["lr"], t["min_lr"]
    if s <= w:
        return lr * s / w
    if t["lr_schedule"] == "constant":
        return lr
    if t["lr_schedule"] == "cosine":
        return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * (s - w) / (t["decay_steps"] - w))) \
            if s <= t["decay_steps"] else lo
    a = t["decay_start"]
    if s <= a:
        return lr
    return lr + (lo - lr) * min(1.0, (s - a) / t["decay_steps"])


def check_replay(golden_dir, name):
    tensors, summary = load_golden(golden_dir, name)
    model, rc = model_from_golden(tensors, summary)
    t = summary["config"]["train"]
    b1, b2, eps = t["adam_beta1"], t["adam_beta2"], t["adam_eps"]
    aux = t["aux_free"] or summary["config"]["model"]["topk_method"] == "noaux_tc"
    params = dict(model.named_parameters())
    m1 = {n: torch.zeros_like(p) for n, p in params.items()}
    m2 = {n: torch.zeros_like(p) for n, p in params.items()}
    worst_log = 0.0
    for s in range(1, t["steps"] + 1):
        st = accumulate_gradients(model, tensors["tokens"][s - 1], rc.train, s)
        norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params.values()))
        lr = lr_schedule(t, s)
        log = summary["steps"][s - 1]
        worst_log = max(worst_log, abs(lr - log["lr"]), abs(norm - log["grad_norm"]) / norm,
                        abs(st.loss_total - log["loss_total"]), abs(st.loss - log["loss"]))
        coef = min(1.0, t["grad_clip"] / (norm + 1e-6))
        with torch.no_grad():
            for n, p in params.items():
                g = p.grad * coef
                m1[n] = b1 * m1[n] + (1 - b1) * g
                m2[n] = b2 * m2[n] + (1 - b2) * g * g
                wd = t["weight_decay"] if p.dim() == 2 else 0.0
                p.mul_(1 - lr * wd)
                p -= lr * (m1[n] / (1 - b1 ** s)) / ((m2[n] / (1 - b2 ** s)).sqrt() + eps)
            if aux:
                gamma = schedule_value(t["aux_free_gamma"], s)
                for layer, load in st.loads.items():
                    b = model.model.layers[layer].mlp.gate.e_score_correction_bias
                    b += gamma * torch.sign(load.mean() - load)
    expect(worst_log < 1e-10, f"{name}: replayed lr, grad_norm, losses match the step log ({worst_log:.1e})")
    worst = max(max_rel(p, tensors[f"final.param.{n}"]) for n, p in params.items())
    expect(worst < 1e-8, f"{name}: hand-written AdamW/clip/schedule give final.param.* (max rel {worst:.1e})")
    worst_b = max((float((b - tensors[f"final.buffer.{n}"]).abs().max()) for n, b in model.named_buffers()),
                  default=0.0)
    expect(worst_b < 1e-12, f"{name}: aux-free update gives final.buffer.* (max abs {worst_b:.1e})")
    clipped = sum(1 for x in summary["steps"] if x["clipped"])
    print(f"       ({clipped} of {t['steps']} steps clipped)")


# ---------------------------------------------------------------------------------------------
def check_float32(golden_dir, name):
    tensors, summary = load_golden(golden_dir, name)
    m64, rc = model_from_golden(tensors, summary)
    m32, _ = model_from_golden(tensors, summary, dtype=torch.float32)
    mb = rc.train.micro_batch_size
    batch = tensors["tokens"][0]
    worst, same = 0.0, True
    with torch.no_grad():
        for a in range(batch.shape[0] // mb):
            tokens = batch[a * mb:(a + 1) * mb]
            o64, o32 = m64(tokens, rc.train.capacity_factor), m32(tokens, rc.train.capacity_factor)
            worst = max(worst, float((o32.logits.double() - o64.logits).abs().max()))
            same &= all(torch.equal(o64.routing[l].selected, o32.routing[l].selected) for l in o64.routing)
    expect(worst < 1e-4 and same, f"{name}: float32 logits within {worst:.1e} of float64, same routing")


def check_determinism(golden_dir):
    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        make_goldens.main(["--out", d1])
        make_goldens.main(["--out", d2])
        for f in sorted(Path(d1).iterdir()):
            a, b = f.read_bytes(), (Path(d2) / f.name).read_bytes()
            expect(a == b, f"{f.name}: two runs byte-identical")
            committed = golden_dir / f.name
            expect(committed.exists() and committed.read_bytes() == a,
                   f"{f.name}: committed golden is current")


def main(argv=None):
    ap = argparse.ArgumentParser(description="self-checks of the PyTorch reference")
    ap.add_argument("--golden", type=Path, default=HERE.parent / "golden")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["naive", "fd", "replay", "float32", "determinism"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = sorted(p.stem for p in (HERE / "configs").glob("*.json"))
    gradcheck = {"tiny_dssn": ("model.layers.1.mlp.gate.weight", "model.layers.1.post_mlp_layernorm.weight",
                               "model.layers.3.hnorm.weight"),
                 "tiny_moge": ("model.layers.2.mlp.router_scale", "model.layers.1.mlp.gate.weight")}
    t0 = time.time()
    for name in names:
        print(f"[{name}]")
        if "naive" not in args.skip:
            check_naive(args.golden, name)
        if "fd" not in args.skip:
            check_finite_differences(args.golden, name, gradcheck.get(name, ()))
        if "replay" not in args.skip:
            check_replay(args.golden, name)
        if "float32" not in args.skip:
            check_float32(args.golden, name)
    if "determinism" not in args.skip:
        print("[determinism]")
        check_determinism(args.golden)
    print(f"{len(FAILURES)} failure(s), {time.time() - t0:.0f}s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
