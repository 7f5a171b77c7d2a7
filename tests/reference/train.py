"""Training step of the PyTorch reference (design.md 1.6 aux-free update, 1.8 accumulation,
section 2 AdamW and clipping, section 8 LR schedule).

What it is: one optimizer step = forward/backward over the micro-batches of a global batch with
every term already divided by the step's global counts (so accumulation is a plain sum), global
gradient-norm clipping, torch.optim.AdamW, then the aux-free bias update.
What it is not: data loading, checkpoints, spikes, non-finite skipping or anything distributed.
"""
import math
from dataclasses import dataclass, field
from typing import List

import torch

from config import TrainConfig, schedule_value
from model import UltramoeModel, micro_batch_loss, step_counts


# ---------------------------------------------------------------------------------------------
# Section 8: LR schedule, a function of the (1-based) optimizer step s only
# ---------------------------------------------------------------------------------------------
def lr_at(tc: TrainConfig, s):
    if tc.warmup_steps > 0 and s <= tc.warmup_steps:
        return tc.lr * s / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    if tc.lr_schedule == "cosine":   # decay_steps: the step where the cosine reaches min_lr
        if s >= tc.decay_steps:
            return tc.min_lr
        t = (s - tc.warmup_steps) / (tc.decay_steps - tc.warmup_steps)
        return tc.min_lr + (tc.lr - tc.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
    # wsd: constant until decay_start, then linear to min_lr over decay_steps steps
    if s <= tc.decay_start:
        return tc.lr
    if tc.decay_steps <= 0 or s >= tc.decay_start + tc.decay_steps:
        return tc.min_lr
    return tc.lr + (tc.min_lr - tc.lr) * (s - tc.decay_start) / tc.decay_steps


# ---------------------------------------------------------------------------------------------
# Section 2: AdamW (torch semantics), decay on 2-D weights only
# ---------------------------------------------------------------------------------------------
def make_optimizer(model: UltramoeModel, tc: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_norm = p.dim() == 1 and "norm" in name
        (decay if p.dim() == 2 or (is_norm and tc.weight_decay_norms) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
                             eps=tc.adam_eps, foreach=False)


# ---------------------------------------------------------------------------------------------
# 1.8: gradient of J over the whole step, accumulated over micro-batches
# ---------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    step: int
    lr: float
    mtp_lambda: float
    loss: float = 0.0            # main CE
    loss_mtp: float = 0.0
    mtp_ce: List[float] = field(default_factory=list)
    loss_bal: float = 0.0
    loss_z: float = 0.0
    loss_total: float = 0.0
    grad_norm: float = 0.0       # before clipping
    balance: dict = field(default_factory=dict)     # layer -> mean over pools of B_l
    loads: dict = field(default_factory=dict)       # layer -> (E,) biased-selection counts
    n_dropped: dict = field(default_factory=dict)   # layer -> dropped pairs over the step
    margin: float = math.inf
    outputs: list = field(default_factory=list)     # ForwardOut per micro-batch (if kept)
    n_main: int = 0
    n_mtp: List[int] = field(default_factory=list)


def accumulate_gradients(model: UltramoeModel, batch, tc: TrainConfig, step, keep_outputs=False):
    """Zero the grads, then forward/backward every micro-batch of `batch` (B, T+1)."""
    cfg = model.cfg
    counts = step_counts(model, batch, tc.balance_scope, tc.micro_batch_size)
    lam = schedule_value(tc.mtp_lambda, step)
    st = StepStats(step=step, lr=lr_at(tc, step), mtp_lambda=lam,
                   mtp_ce=[0.0] * cfg.num_nextn_predict_layers,
                   n_main=counts.n_main, n_mtp=list(counts.n_mtp))
    model.zero_grad(set_to_none=True)
    m = tc.micro_batch_size
    for a in range(batch.shape[0] // m):
        tokens = batch[a * m:(a + 1) * m]
        out = model(tokens, tc.capacity_factor)
        parts = micro_batch_loss(out, tokens, counts, cfg, lam, tc.balance_alpha, tc.z_loss_coef)
        parts.total.backward()
        st.loss += parts.ce.item()
        st.loss_mtp += parts.mtp.item()
        st.mtp_ce = [acc + c.item() for acc, c in zip(st.mtp_ce, parts.mtp_ce)]
        st.loss_bal += parts.bal.item()
        st.loss_z += parts.z.item()
        for layer, r in out.routing.items():
            load = r.selected.sum(0).to(torch.float64)
            st.loads[layer] = st.loads.get(layer, 0) + load
            st.n_dropped[layer] = st.n_dropped.get(layer, 0) + r.n_dropped
            st.balance[layer] = st.balance.get(layer, 0.0) + parts.balance[layer].item()
            st.margin = min(st.margin, r.margin)
        if keep_outputs:
            st.outputs.append(out)
    st.loss_total = st.loss + st.loss_mtp + st.loss_bal + st.loss_z
    for p in model.parameters():   # an expert no token reached has gradient 0, not "none"
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return st


def global_grad_norm(model):
    """Every parameter counted once (a tied embedding/head is one tensor)."""
    sq = sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)
    return math.sqrt(float(sq))


def clip_gradients(model, grad_clip, norm):
    """coef = min(1, clip / (norm + 1e-6)) on the full gradient (design.md section 2)."""
    coef = min(1.0, grad_clip / (norm + 1e-6))
    if coef < 1.0:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(coef)


# ---------------------------------------------------------------------------------------------
# 1.6: aux-loss-free bias update after each applied optimizer step
# ---------------------------------------------------------------------------------------------
def aux_free_enabled(model: UltramoeModel, tc: TrainConfig):
    return tc.aux_free or model.cfg.topk_method == "noaux_tc"


@torch.no_grad()
def aux_free_update(model: UltramoeModel, loads, gamma):
    """b_i += gamma * sign(mean_j load_j - load_i), load over the whole step, biased selection."""
    for layer, load in loads.items():
        bias = model.model.layers[layer].mlp.gate.e_score_correction_bias
        bias += gamma * torch.sign(load.mean() - load).to(bias.dtype)


def train_step(model, optimizer, batch, tc: TrainConfig, step, on_grads=None, keep_outputs=False):
    """One optimizer step s (1-based). on_grads(model, stats) sees the unclipped gradient."""
    st = accumulate_gradients(model, batch, tc, step, keep_outputs)
    st.grad_norm = global_grad_norm(model)
    if on_grads is not None:
        on_grads(model, st)
    clip_gradients(model, tc.grad_clip, st.grad_norm)
    for g in optimizer.param_groups:
        g["lr"] = st.lr
    optimizer.step()
    if aux_free_enabled(model, tc):
        aux_free_update(model, st.loads, schedule_value(tc.aux_free_gamma, step))
    return st
