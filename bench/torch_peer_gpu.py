#!/usr/bin/env python3
"""The GPU PyTorch peer of `ultramoe bench --device cuda`: the same model, config, batch and
windows, trained the way a strong engineer would write it in recent PyTorch.

Model math (design.md section 1): embedding; decoder layers with DSSN (sandwich norm, depth-scaled
post gains, TinyInit); MLA (q_lora, kv_lora, decoupled rotate-half RoPE with positions restarting
at each document start, one shared k_pe); dense SwiGLU layers below first_k_dense_replace; MoE with
sigmoid/softmax scores, greedy top-k, norm_topk_prob, routed_scaling_factor, shared experts; the
balance loss (design.md 1.6) and optional router z-loss; MTP modules (1.7); main CE over valid
targets with document masking (1.8); the loss J; AdamW with decay on weight matrices only; clipping
at train.grad_clip; gradient accumulation over micro-batches of train.micro_batch_size.

Speed features (each guarded; the path taken is printed on stderr and put in the JSON):
  * bf16 autocast with fp32 master weights and fp32 AdamW state (fp32/fp64 on the CPU, for
    checking); the residual stream, RMSNorm, the router (GEMM, scores, top-k, gates, balance
    statistics) and the CE stay fp32
  * attention: torch.nn.attention.flex_attention with a causal + document BlockMask (built per
    micro-batch by a compiled create_block_mask), compiled inside each layer; fallbacks: smaller
    flex blocks, q/k zero-padded to 256, F.scaled_dot_product_attention with a dense boolean mask,
    plain matmul + softmax
  * experts: (token, expert) pairs sorted by expert, each expert's rows padded to 16, one grouped
    GEMM per projection (F.grouped_mm / torch._grouped_mm) with gate and up fused; static shapes,
    so it compiles without graph breaks; dispatch and combine are gathers both ways (custom
    autograd functions, no index_add atomics). Alternatives: a padded torch.bmm over experts, a
    loop; `--experts auto` times grouped_mm against bmm on the real shapes and takes the faster
  * torch.compile of every decoder layer (one graph for dense, one for MoE layers; the MTP layer
    reuses the MoE graph: it runs on all T positions with its last k masked out) and of the LM
    head + CE; the first forward+backward (compile included) is timed apart and not counted
  * torch.optim.AdamW(fused=True) on CUDA, clip_grad_norm_(foreach=True)

The windows file is int32 (warmup+steps, B, T+1) as written by `ultramoe bench --save-windows`
(without --windows, windows of the same kind are synthesised). Prints one JSON line on stdout.

    python3 bench/torch_peer_gpu.py --config configs/gpu-1b.json --windows W.bin \
        [--steps 5] [--warmup 2] [--no-compile] [--init-from CKPT_DIR] [--print-losses]
    python3 bench/torch_peer_gpu.py --config configs/tiny.json --device cpu --precision fp64 ...
"""
import argparse
import gc
import json
import math
import os
import statistics
import struct
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
from config import load_config, schedule_value  # noqa: E402
from model import window_layout, matrix_std  # noqa: E402
from train import lr_at  # noqa: E402

IGNORE = -100
H100_BF16_PEAK = 989.4e12     # design.md 7: H100/H200 dense bf16


def log(msg):
    print(f"torch_peer_gpu: {msg}", file=sys.stderr, flush=True)


def short_error(e):
    s = f"{type(e).__name__}: {e}"
    s = " ".join(s.split())
    return s[:400]


# ---------------------------------------------------------------------------------------------
# Optional features, probed once
# ---------------------------------------------------------------------------------------------
def find_grouped_mm():
    fn = getattr(F, "grouped_mm", None)
    if fn is not None:
        return fn, "torch.nn.functional.grouped_mm"
    fn = getattr(torch, "_grouped_mm", None)
    if fn is not None:
        return fn, "torch._grouped_mm"
    return None, None


try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    HAVE_FLEX = True
except Exception:  # noqa: BLE001 - any import problem means no flex
    create_block_mask = flex_attention = None
    HAVE_FLEX = False


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """y = g * x / sqrt(mean(x^2) + eps), in at least fp32 (design.md 1.2)."""

    def __init__(self, dim, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x):
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):
    """rotate-half RoPE: x*cos + [-x2; x1]*sin, computed in the dtype of cos, cast back."""
    h = x.shape[-1] // 2
    xf = x.to(cos.dtype)
    x1, x2 = xf[..., :h], xf[..., h:]
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def attention_math(q, k, v, mask, scale):
    """Reference attention: mask (B, 1, T, T) bool."""
    s = torch.matmul(q, k.transpose(-1, -2))
    s = (s if s.dtype in (torch.float32, torch.float64) else s.float()) * scale
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).to(v.dtype)
    return torch.matmul(p, v)


class MLA(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        D, H = cfg.hidden_size, cfg.num_attention_heads
        self.H, self.dn, self.dr, self.dv = H, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kvl, self.ql = cfg.kv_lora_rank, cfg.q_lora_rank or 0
        dqk = self.dn + self.dr
        lin = lambda i, o: nn.Linear(i, o, bias=False, dtype=dtype)  # noqa: E731
        if self.ql:
            self.q_a_proj = lin(D, self.ql)
            self.q_a_layernorm = RMSNorm(self.ql, cfg.rms_norm_eps, dtype)
            self.q_b_proj = lin(self.ql, H * dqk)
        else:
            self.q_proj = lin(D, H * dqk)
        self.kv_a_proj_with_mqa = lin(D, self.kvl + self.dr)
        self.kv_a_layernorm = RMSNorm(self.kvl, cfg.rms_norm_eps, dtype)
        self.kv_b_proj = lin(self.kvl, H * (self.dn + self.dv))
        self.o_proj = lin(H * self.dv, D)
        self.scale = 1.0 / math.sqrt(dqk)
        self.impl = "math"          # set by configure(): flex | sdpa | math
        self.flex_fn = None
        self.flex_opts = None
        self.pad_qk = 0

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, dn, dr, dv = self.H, self.dn, self.dr, self.dv
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.ql else self.q_proj(x)
        q = q.view(B, T, H, dn + dr)
        kva = self.kv_a_proj_with_mqa(x)
        ckv, k_pe = kva[..., :self.kvl], kva[..., self.kvl:]            # one k_pe for all heads
        kv = self.kv_b_proj(self.kv_a_layernorm(ckv)).view(B, T, H, dn + dv)
        cdt = kv.dtype
        q_pe = rope(q[..., dn:], cos[:, :, None], sin[:, :, None]).to(cdt)
        k_pe = rope(k_pe, cos, sin).to(cdt)
        qh = torch.cat([q[..., :dn].to(cdt), q_pe], dim=-1).transpose(1, 2)            # (B,H,T,dqk)
        kh = torch.cat([kv[..., :dn], k_pe[:, :, None].expand(B, T, H, dr)], dim=-1).transpose(1, 2)
        vh = kv[..., dn:].transpose(1, 2)                                                # (B,H,T,dv)
        if self.impl == "flex":
            if self.pad_qk:
                qh = F.pad(qh, (0, self.pad_qk - qh.shape[-1]))
                kh = F.pad(kh, (0, self.pad_qk - kh.shape[-1]))
            kw = {"kernel_options": self.flex_opts} if self.flex_opts else {}
            # contiguous (B,H,T,d): compiled flex on transposed views built inside the same graph
            # gave wrong results (torch 2.15, inductor CPU); the copy fuses with the cat anyway
            o = self.flex_fn(qh.contiguous(), kh.contiguous(), vh.contiguous(), block_mask=mask,
                             scale=self.scale, **kw)
        elif self.impl == "sdpa":
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
        else:
            o = attention_math(qh, kh, vh, mask, self.scale)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))


class SwiGLU(nn.Module):
    """(silu(x W_gate) * x W_up) W_down with W_gate and W_up fused into one (2I, D) matrix."""

    def __init__(self, D, width, dtype):
        super().__init__()
        self.width = width
        self.gate_up = nn.Linear(D, 2 * width, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(width, D, bias=False, dtype=dtype)

    def forward(self, x):
        h = self.gate_up(x)
        return self.down_proj(F.silu(h[..., :self.width]) * h[..., self.width:])


# ---------------------------------------------------------------------------------------------
# Dropless experts: three implementations of y_t = sum_k g_tk SwiGLU_{e_tk}(x_t)
# ---------------------------------------------------------------------------------------------
def expert_plan(idx, E, rows_of):
    """Sort the N*K (token, expert) pairs by expert (stable: token order inside an expert).
    rows_of(counts) gives each expert's row block sizes and the buffer size M. Returns dest
    (N*K,) the buffer row of each pair (pairs token-major), row_pair (M,) the pair of each buffer
    row (N*K for padding rows) and the per-expert block ends. Static shapes when rows_of is."""
    N, K = idx.shape
    NK = N * K
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.long, device=idx.device).scatter_add_(0, flat, torch.ones_like(flat))
    starts = torch.cumsum(counts, 0) - counts
    block, M = rows_of(counts)
    block_ends = torch.cumsum(block, 0)
    block_starts = block_ends - block
    sorted_e = flat[order]
    rank = torch.arange(NK, device=idx.device) - starts[sorted_e]
    dest = torch.empty_like(order).scatter_(0, order, block_starts[sorted_e] + rank)
    row_pair = torch.full((M,), NK, dtype=torch.long, device=idx.device).scatter_(
        0, dest, torch.arange(NK, device=idx.device))
    return dest, row_pair, block_ends, M


def _gather_rows(x, index):
    """x[index] where index may equal len(x): that row is zeros."""
    return torch.cat([x, x.new_zeros(1, x.shape[1])]).index_select(0, index)


class Dispatch(torch.autograd.Function):
    """rows = the token of each buffer row (zeros for padding rows). The backward sums each
    token's K copies by gathering them (no index_add with atomics)."""

    @staticmethod
    def forward(ctx, x, row_pair, dest, K):
        ctx.save_for_backward(dest)
        ctx.K = K
        N = x.shape[0]
        src = torch.where(row_pair < N * K, row_pair // K, N)
        return _gather_rows(x, src)

    @staticmethod
    def backward(ctx, grad):
        (dest,) = ctx.saved_tensors
        K, D = ctx.K, grad.shape[1]
        acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
        gx = grad.index_select(0, dest).view(-1, K, D).to(acc).sum(1).to(grad.dtype)
        return gx, None, None, None


class Combine(torch.autograd.Function):
    """y_pairs = buffer rows of the pairs (token-major); dest is injective, so the backward is a
    gather through row_pair (zeros for padding rows), again without atomics."""

    @staticmethod
    def forward(ctx, y, dest, row_pair):
        ctx.save_for_backward(row_pair)
        return y.index_select(0, dest)

    @staticmethod
    def backward(ctx, grad):
        (row_pair,) = ctx.saved_tensors
        return _gather_rows(grad, row_pair), None, None


def combine(y_rows, dest, row_pair, g, N, K, D):
    yp = Combine.apply(y_rows, dest, row_pair).view(N, K, D)
    return (yp.to(g.dtype) * g[..., None]).sum(1)


def experts_grouped(x, idx, g, w13, w2, gmm, align=16):
    """Grouped GEMM over expert-sorted rows; each expert's block padded to a multiple of `align`
    rows (16-byte aligned group starts for every operand of the backward); the last group runs to
    the end of the buffer so no row is left outside a group."""
    N, D = x.shape
    K, E, Fw = idx.shape[1], w13.shape[0], w2.shape[2]
    M = N * K + E * align

    def rows_of(counts):
        return (counts + align - 1) // align * align, M
    dest, row_pair, ends, M = expert_plan(idx, E, rows_of)
    offs = torch.cat([ends[:-1], ends.new_full((1,), M)]).to(torch.int32)
    xs = Dispatch.apply(x, row_pair, dest, K)                                       # (M, D)
    h = gmm(xs, w13.transpose(-2, -1), offs=offs)                                  # (M, 2F)
    a = F.silu(h[:, :Fw]) * h[:, Fw:]
    y = gmm(a, w2.transpose(-2, -1), offs=offs)                                     # (M, D)
    return combine(y, dest, row_pair, g, N, K, D)


def experts_bmm(x, idx, g, w13, w2, align=64):
    """Every expert padded to the step's largest expert load C (rounded up), one batched GEMM."""
    N, D = x.shape
    K, E, Fw = idx.shape[1], w13.shape[0], w2.shape[2]
    flat = idx.reshape(-1)
    cmax = int(torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat)).max())
    C = max(align, (cmax + align - 1) // align * align)

    def rows_of(counts):
        return torch.full_like(counts, C), E * C
    dest, row_pair, _, M = expert_plan(idx, E, rows_of)
    xs = Dispatch.apply(x, row_pair, dest, K).view(E, C, D)
    h = torch.bmm(xs, w13.transpose(1, 2))
    a = F.silu(h[..., :Fw]) * h[..., Fw:]
    y = torch.bmm(a, w2.transpose(1, 2)).reshape(E * C, D)
    return combine(y, dest, row_pair, g, N, K, D)


def experts_loop(x, idx, g, w13, w2):
    """One GEMM pair per expert on its contiguous segment (every expert runs, even on 0 rows)."""
    N, D = x.shape
    K, E, Fw = idx.shape[1], w13.shape[0], w2.shape[2]
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    rows = x.index_select(0, order // K)
    outs = []
    for e, seg in enumerate(torch.split(rows, counts.tolist())):
        h = seg @ w13[e].t()
        outs.append((F.silu(h[:, :Fw]) * h[:, Fw:]) @ w2[e].t())
    y_sorted = torch.cat(outs)
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(N * K, device=x.device))
    yp = y_sorted.index_select(0, inv).view(N, K, D)
    return (yp.to(g.dtype) * g[..., None]).sum(1)


class MoE(nn.Module):
    def __init__(self, cfg, dtype, pool_size):
        super().__init__()
        D, E, Fw = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
        self.E, self.K, self.Fw = E, cfg.num_experts_per_tok, Fw
        self.sigmoid = cfg.scoring_func == "sigmoid"
        self.norm_topk = cfg.norm_topk_prob
        self.scale = cfg.routed_scaling_factor
        self.pool_size = pool_size
        self.gate_weight = nn.Parameter(torch.empty(E, D, dtype=dtype))           # mlp.gate.weight
        self.register_buffer("bias", torch.zeros(E, dtype=torch.float64 if dtype == torch.float64 else torch.float32))
        self.w13 = nn.Parameter(torch.empty(E, 2 * Fw, D, dtype=dtype))          # [gate; up] per expert
        self.w2 = nn.Parameter(torch.empty(E, D, Fw, dtype=dtype))               # down per expert
        self.shared = SwiGLU(D, cfg.n_shared_experts * Fw, dtype) if cfg.n_shared_experts > 0 else None
        self.impl = "loop"          # set by configure(): grouped | bmm | loop
        self.gmm = None
        self.cdt = dtype            # expert GEMM dtype (bf16 under autocast)

    def experts(self, x, idx, g):
        w13, w2 = self.w13.to(self.cdt), self.w2.to(self.cdt)
        x = x.to(self.cdt)
        if self.impl == "grouped":
            return experts_grouped(x, idx, g, w13, w2, self.gmm)
        if self.impl == "bmm":
            return experts_bmm(x, idx, g, w13, w2)
        return experts_loop(x, idx, g, w13, w2)

    def forward(self, x, valid):
        """x (B, T, D); valid (B*T,) float: 1 for the tokens this layer really has (MTP layer k
        runs on T positions, the last k are padding). Returns y and (sum over this forward's
        pools of B_l(S), sum of valid lse(z)^2, biased-selection load (E,))."""
        B, T, D = x.shape
        N = B * T
        xf = x.reshape(N, D)
        rdt = torch.float64 if self.gate_weight.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = F.linear(xf.to(rdt), self.gate_weight.to(rdt))                       # router in fp32
            s = torch.sigmoid(z) if self.sigmoid else torch.softmax(z, dim=-1)
            idx = torch.topk(s.detach() + self.bias.to(rdt), self.K, dim=-1).indices  # bias: selection only
            g = s.gather(1, idx)
            if self.norm_topk:
                g = g / (g.sum(-1, keepdim=True) + 1e-20)
            g = g * self.scale
            # balance statistics (design.md 1.6) over the pools of this forward
            sel = torch.zeros_like(s).scatter_(1, idx, 1.0) * valid[:, None]
            s_norm = s / s.sum(-1, keepdim=True) if self.sigmoid else s
            n_pools = B // self.pool_size
            size = valid.view(n_pools, -1).sum(1, keepdim=True)                          # |S|
            c = sel.view(n_pools, -1, self.E).sum(1)
            P = (s_norm * valid[:, None]).view(n_pools, -1, self.E).sum(1) / size
            f = (self.E / self.K) * c / size
            bal = (f * P).sum()
            zsq = (torch.logsumexp(z, dim=-1).pow(2) * valid).sum()
            load = c.detach().sum(0)
        y = self.experts(xf, idx, g)
        if self.shared is not None:
            y = y + self.shared(xf)
        return y.view(B, T, D), (bal, zsq, load)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, index, dtype, pool_size):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sandwich = cfg.sandwich_norm
        self.is_moe = index >= cfg.first_k_dense_replace
        self.input_layernorm = RMSNorm(D, eps, dtype)
        self.self_attn = MLA(cfg, dtype)
        self.post_attention_layernorm = RMSNorm(D, eps, dtype)   # Pre-LN: the pre-FFN norm
        if self.sandwich:
            self.pre_mlp_layernorm = RMSNorm(D, eps, dtype)
            self.post_mlp_layernorm = RMSNorm(D, eps, dtype)
        self.mlp = MoE(cfg, dtype, pool_size) if self.is_moe else SwiGLU(D, cfg.intermediate_size, dtype)

    def forward(self, h, cos, sin, mask, valid):
        a = self.self_attn(self.input_layernorm(h), cos, sin, mask)
        if self.sandwich:
            h = h + self.post_attention_layernorm(a)
            x = self.pre_mlp_layernorm(h)
        else:
            h = h + a
            x = self.post_attention_layernorm(h)
        if self.is_moe:
            f, stats = self.mlp(x, valid)
        else:
            f, stats = self.mlp(x), None
        h = h + (self.post_mlp_layernorm(f) if self.sandwich else f)
        return h, stats


class MTPModule(nn.Module):
    def __init__(self, cfg, index, dtype, pool_size):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.enorm = RMSNorm(D, eps, dtype)
        self.hnorm = RMSNorm(D, eps, dtype)
        self.eh_proj = nn.Linear(2 * D, D, bias=False, dtype=dtype)
        self.layer = DecoderLayer(cfg, index, dtype, pool_size)
        self.head_norm = RMSNorm(D, eps, dtype)          # shared_head.norm


def head_ce(h, w, targets):
    """sum over non-ignored positions of -log p(target); logits in the autocast dtype, CE in fp32."""
    logits = F.linear(h, w)
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


class PeerModel(nn.Module):
    def __init__(self, cfg, dtype, pool_size):
        super().__init__()
        self.cfg = cfg
        L, Dm = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList([DecoderLayer(cfg, i, dtype, pool_size) for i in range(L)])
        self.mtp = nn.ModuleList([MTPModule(cfg, L + k, dtype, pool_size) for k in range(Dm)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        # callables (compiled or not), set by configure()
        self.layer_fns = None
        self.mtp_fns = None
        self.head_fn = head_ce

    def head_weight(self):
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def moe_layers(self):
        """(layer index, MoE module) in HF index order, MTP layers included."""
        out = [(i, l.mlp) for i, l in enumerate(self.layers) if l.is_moe]
        L = len(self.layers)
        out += [(L + k, m.layer.mlp) for k, m in enumerate(self.mtp) if m.layer.is_moe]
        return out

    def forward(self, tokens, cos, sin, mask, main_targets, mtp_targets):
        """tokens (b, T+1); cos/sin (b, T, dr); mask: BlockMask or (b,1,T,T) bool;
        targets with IGNORE where not counted. Every layer runs on T positions: MTP module k pads
        its last k positions (they are causal followers of the real ones, never targets, and
        excluded from the balance statistics). Returns CE sums and per-MoE-layer stats."""
        b, T = tokens.shape[0], tokens.shape[1] - 1
        dev = tokens.device
        w = self.head_weight()
        ones = torch.ones(b * T, dtype=cos.dtype, device=dev)
        stats = []
        h = self.embed(tokens[:, :T])
        for fn in self.layer_fns:
            h, st = fn(h, cos, sin, mask, ones)
            if st is not None:
                stats.append(st)
        h_prev = self.norm(h)
        ce = self.head_fn(h_prev, w, main_targets)
        mtp_ce = []
        for k, (m, fn) in enumerate(zip(self.mtp, self.mtp_fns), start=1):
            xk = tokens[:, k:]
            if xk.shape[1] < T:
                xk = F.pad(xk, (0, T - xk.shape[1]))
            e = m.enorm(self.embed(xk))
            hk = m.eh_proj(torch.cat([e, m.hnorm(h_prev)], dim=-1))      # embedding half first
            hk = hk.to(e.dtype)          # the residual stream stays fp32 as in the main layers
            valid = (torch.arange(T, device=dev) < T - k).to(cos.dtype).expand(b, T).reshape(-1)
            hk, st = fn(hk, cos, sin, mask, valid)
            if st is not None:
                stats.append(st)
            h_prev = m.head_norm(hk)
            mtp_ce.append(self.head_fn(h_prev, w, mtp_targets[k - 1]))
        return ce, mtp_ce, stats


# ---------------------------------------------------------------------------------------------
# HF names (design.md 1.4/1.5/1.7/6): every checkpoint tensor as a view into our parameters
# ---------------------------------------------------------------------------------------------
def hf_views(model):
    """[(hf_name, tensor view)] covering every parameter and the aux-free biases once."""
    cfg = model.cfg
    out = [("model.embed_tokens.weight", model.embed.weight)]

    def layer_views(i, layer):
        pre = f"model.layers.{i}."
        a = layer.self_attn
        v = [(pre + "input_layernorm.weight", layer.input_layernorm.weight),
             (pre + "post_attention_layernorm.weight", layer.post_attention_layernorm.weight)]
        if layer.sandwich:
            v += [(pre + "pre_mlp_layernorm.weight", layer.pre_mlp_layernorm.weight),
                  (pre + "post_mlp_layernorm.weight", layer.post_mlp_layernorm.weight)]
        if a.ql:
            v += [(pre + "self_attn.q_a_proj.weight", a.q_a_proj.weight),
                  (pre + "self_attn.q_a_layernorm.weight", a.q_a_layernorm.weight),
                  (pre + "self_attn.q_b_proj.weight", a.q_b_proj.weight)]
        else:
            v += [(pre + "self_attn.q_proj.weight", a.q_proj.weight)]
        v += [(pre + "self_attn.kv_a_proj_with_mqa.weight", a.kv_a_proj_with_mqa.weight),
              (pre + "self_attn.kv_a_layernorm.weight", a.kv_a_layernorm.weight),
              (pre + "self_attn.kv_b_proj.weight", a.kv_b_proj.weight),
              (pre + "self_attn.o_proj.weight", a.o_proj.weight)]

        def swiglu(p, m):
            W = m.width
            return [(p + "gate_proj.weight", m.gate_up.weight[:W]), (p + "up_proj.weight", m.gate_up.weight[W:]),
                    (p + "down_proj.weight", m.down_proj.weight)]
        if layer.is_moe:
            moe = layer.mlp
            v += [(pre + "mlp.gate.weight", moe.gate_weight),
                  (pre + "mlp.gate.e_score_correction_bias", moe.bias)]
            for e in range(moe.E):
                p = f"{pre}mlp.experts.{e}."
                v += [(p + "gate_proj.weight", moe.w13[e, :moe.Fw]), (p + "up_proj.weight", moe.w13[e, moe.Fw:]),
                      (p + "down_proj.weight", moe.w2[e])]
            if moe.shared is not None:
                v += swiglu(pre + "mlp.shared_experts.", moe.shared)
        else:
            v += swiglu(pre + "mlp.", layer.mlp)
        return v

    for i, layer in enumerate(model.layers):
        out += layer_views(i, layer)
    L = cfg.num_hidden_layers
    for k, m in enumerate(model.mtp):
        i = L + k
        pre = f"model.layers.{i}."
        out += [(pre + "enorm.weight", m.enorm.weight), (pre + "hnorm.weight", m.hnorm.weight),
                (pre + "eh_proj.weight", m.eh_proj.weight), (pre + "shared_head.norm.weight", m.head_norm.weight)]
        out += layer_views(i, m.layer)
    out.append(("model.norm.weight", model.norm.weight))
    if model.lm_head is not None:
        out.append(("lm_head.weight", model.lm_head.weight))
    return out


@torch.no_grad()
def init_random(model, seed):
    """design.md 1.3 by name (same distributions as ultramoe, not the same draws)."""
    cfg = model.cfg
    L = cfg.num_hidden_layers
    depth = math.sqrt(L) if cfg.dssn_depth_scaled else None
    w_std = matrix_std(cfg)
    gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    for name, t in hf_views(model):
        if name.endswith("e_score_correction_bias"):
            t.zero_()
        elif t.dim() == 2:
            std = cfg.init_embedding_std if (name == "model.embed_tokens.weight" and not cfg.tie_word_embeddings) else w_std
            t.normal_(0.0, std, generator=gen)
        elif name.endswith("post_attention_layernorm.weight") and cfg.sandwich_norm:
            t.fill_(cfg.dssn_c_attn / depth if depth else 1.0)
        elif name.endswith("post_mlp_layernorm.weight"):
            t.fill_(cfg.dssn_c_ffn / depth if depth else 1.0)
        else:
            t.fill_(1.0)


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    buf = bytearray(raw[8 + n:])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        t = torch.frombuffer(buf, dtype=torch.uint8, count=b - a, offset=a) if b > a else torch.empty(0, dtype=torch.uint8)
        out[name] = t.view(dt).reshape(info["shape"]).clone()
    return out


def load_checkpoint(model, path):
    """DIR/model.safetensors, DIR/model.safetensors.index.json (HF shards) or a .safetensors file."""
    files = [path]
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(os.path.join(path, "model.safetensors")):
            files = [os.path.join(path, "model.safetensors")]
        elif os.path.exists(index):
            with open(index) as f:
                files = [os.path.join(path, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors nor model.safetensors.index.json")
    tensors = {}
    for fpath in files:
        tensors.update(read_safetensors(fpath))
    views = hf_views(model)
    names = {n for n, _ in views}
    missing = [n for n, _ in views if n not in tensors and not n.endswith("e_score_correction_bias")]
    if missing:
        raise KeyError(f"{path}: missing {len(missing)} tensors, e.g. {missing[:3]}")
    L = model.cfg.num_hidden_layers
    copies = {f"model.layers.{L + k}.{s}" for k in range(len(model.mtp))
              for s in ("embed_tokens.weight", "shared_head.head.weight")}
    extra = sorted(set(tensors) - names - copies)
    if extra:
        log(f"warning: {len(extra)} checkpoint tensors not used, e.g. {extra[:3]}")
    with torch.no_grad():
        for name, t in views:
            if name not in tensors:
                t.zero_()
                continue
            src = tensors[name]
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"{path}: {name} has shape {tuple(src.shape)}, the config wants {tuple(t.shape)}")
            t.copy_(src.to(device=t.device, dtype=t.dtype))
    return len(files)


# ---------------------------------------------------------------------------------------------
# Configuration of the fast paths, with fallbacks
# ---------------------------------------------------------------------------------------------
FLEX_SMALL_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32}


def set_dynamo_limits():
    cfg = torch._dynamo.config
    for key in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(cfg, key):
            try:
                setattr(cfg, key, max(getattr(cfg, key), 256))
            except Exception:  # noqa: BLE001
                pass


def configure(model, mode, cdt, gmm, compile_mode=None):
    """mode: dict(compile, attention in flex|flex-small|flex-pad256|sdpa|math, experts)."""
    attn = mode["attention"]
    flex_fn = None
    if attn.startswith("flex"):
        # inside compiled layers the plain function is traced; alone it is compiled by itself
        flex_fn = flex_attention if mode["compile"] or model.embed.weight.device.type == "cpu" else \
            torch.compile(flex_attention, dynamic=False)
    mods = [l for l in model.layers] + [m.layer for m in model.mtp]
    for layer in mods:
        a = layer.self_attn
        a.impl = "flex" if attn.startswith("flex") else attn
        a.flex_fn = flex_fn
        a.flex_opts = FLEX_SMALL_BLOCKS if attn == "flex-small" else None
        a.pad_qk = 256 if attn == "flex-pad256" else 0
        if layer.is_moe:
            layer.mlp.impl = mode["experts"]
            layer.mlp.gmm = gmm
            layer.mlp.cdt = cdt
    if mode["compile"]:
        kw = {"mode": compile_mode} if compile_mode else {}
        model.layer_fns = [torch.compile(l, dynamic=False, **kw) for l in model.layers]
        model.mtp_fns = [torch.compile(m.layer, dynamic=False, **kw) for m in model.mtp]
        model.head_fn = torch.compile(head_ce, dynamic=False, **kw)
    else:
        model.layer_fns = list(model.layers)
        model.mtp_fns = [m.layer for m in model.mtp]
        model.head_fn = head_ce


def make_mask(doc, impl, compiled=False):
    """doc (b, T): query i attends key j iff j <= i and doc(j) = doc(i) (design.md 1.4). For flex a
    BlockMask (built by a compiled kernel when `compiled`), else a dense (b, 1, T, T) bool mask."""
    b, T = doc.shape
    if impl.startswith("flex"):
        def mask_mod(bi, hi, qi, ki):
            return (qi >= ki) & (doc[bi, qi] == doc[bi, ki])
        kw = {"_compile": True} if compiled else {}
        return create_block_mask(mask_mod, b, None, T, T, device=doc.device, **kw)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()
    return (causal & (doc[:, :, None] == doc[:, None, :]))[:, None]


def rope_tables(pos, dim, theta, dtype):
    inv = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)
    ang = pos.to(torch.float64)[..., None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


# ---------------------------------------------------------------------------------------------
# One training step (design.md 1.8 accumulation, 2 clipping + AdamW)
# ---------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, model, opt, tc, T, precision, device):
        self.model, self.opt, self.tc, self.T = model, opt, tc, T
        self.precision, self.device = precision, device
        self.Dm = model.cfg.num_nextn_predict_layers
        self.mb = tc.micro_batch_size
        self.pool = 1 if tc.balance_scope == "sequence" else self.mb
        self.attention = "math"
        self.compile_mask = False
        self.notes = []
        self.table_dtype = torch.float64 if precision == "fp64" else torch.float32
        self.params = [p for p in model.parameters()]

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return torch.autocast(device_type=self.device.type, enabled=False)

    def prepare(self, batch):
        """Step-global counts and per-position tables, known before the forward (1.8)."""
        Dm = self.Dm
        lay = window_layout(batch, Dm)
        tgt = batch[:, 1:].masked_fill(~lay.main_valid, IGNORE)
        mtp_t = []
        for k in range(1, Dm + 1):
            t = batch[:, k + 1:].masked_fill(~lay.mtp_valid[k - 1], IGNORE)
            mtp_t.append(F.pad(t, (0, k), value=IGNORE))
        n_main = lay.main_valid.sum().clamp(min=1).to(self.table_dtype)
        n_mtp = [v.sum().clamp(min=1).to(self.table_dtype) for v in lay.mtp_valid]
        return lay, tgt, mtp_t, n_main, n_mtp

    def micro_batch(self, batch, prep, a, step, acc):
        """Forward + backward of micro-batch a; adds the detached loss parts to acc."""
        tc, cfg, T, mb = self.tc, self.model.cfg, self.T, self.mb
        lay, tgt, mtp_t, n_main, n_mtp = prep
        B = batch.shape[0]
        sl = slice(a * mb, (a + 1) * mb)
        tokens = batch[sl]
        cos, sin = rope_tables(lay.pos[sl], cfg.qk_rope_head_dim, cfg.rope_theta, self.table_dtype)
        mask = None
        if self.compile_mask:
            try:
                mask = make_mask(lay.doc[sl, :T], self.attention, compiled=True)
            except Exception as e:  # noqa: BLE001
                self.compile_mask = False
                self.notes.append(f"compiled create_block_mask failed, eager from now on: {short_error(e)}")
                log(self.notes[-1])
        if mask is None:
            mask = make_mask(lay.doc[sl, :T], self.attention)
        lam = schedule_value(tc.mtp_lambda, step)
        with self.autocast():
            ce, mtp_ce, stats = self.model(tokens, cos, sin, mask, tgt[sl], [t[sl] for t in mtp_t])
        ce = ce / n_main
        mtp_parts = [c / n for c, n in zip(mtp_ce, n_mtp)]
        mtp = (lam / self.Dm) * sum(mtp_parts) if self.Dm else torch.zeros_like(ce)
        n_pools = B // self.pool
        L = cfg.num_hidden_layers
        bal = torch.zeros_like(ce)
        zl = torch.zeros_like(ce)
        for (layer, _), (b_sum, zsq, load) in zip(self.model.moe_layers(), stats):
            bal = bal + tc.balance_alpha * b_sum / n_pools
            if tc.z_loss_coef:
                t_layer = T if layer < L else T - (layer - L + 1)
                zl = zl + tc.z_loss_coef * zsq / (B * t_layer)
            acc["load"][layer] = acc["load"].get(layer, 0) + load
        total = ce + mtp + bal + zl
        total.backward()
        acc["loss"] += ce.detach()
        acc["loss_mtp"] += mtp.detach()
        acc["loss_bal"] += bal.detach()
        acc["loss_z"] += zl.detach()
        for k, c in enumerate(mtp_parts):
            acc["mtp_ce"][k] += c.detach()

    def new_acc(self):
        z = torch.zeros((), dtype=self.table_dtype, device=self.device)
        return {"loss": z.clone(), "loss_mtp": z.clone(), "loss_bal": z.clone(), "loss_z": z.clone(),
                "mtp_ce": [z.clone() for _ in range(self.Dm)], "load": {}}

    def step(self, batch, step):
        tc = self.tc
        prep = self.prepare(batch)
        acc = self.new_acc()
        for a in range(batch.shape[0] // self.mb):
            self.micro_batch(batch, prep, a, step, acc)
        for p in self.params:        # an expert no token reached has gradient 0, not "none"
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        norm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip,
                                              foreach=self.device.type == "cuda")
        lr = lr_at(tc, step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if tc.aux_free:
            gamma = schedule_value(tc.aux_free_gamma, step)
            with torch.no_grad():
                for layer, moe in self.model.moe_layers():
                    load = acc["load"][layer].to(moe.bias.dtype)
                    moe.bias += gamma * torch.sign(load.mean() - load)
        acc["grad_norm"] = norm
        acc["lr"] = lr
        return acc

    def probe(self, batch):
        """Forward + backward of the first micro-batch, gradients discarded: triggers (and times)
        compilation and tells whether this path works at all."""
        prep = self.prepare(batch)
        acc = self.new_acc()
        self.micro_batch(batch, prep, 0, 1, acc)
        float(acc["loss"])
        self.opt.zero_grad(set_to_none=True)


def make_optimizer(model, tc, device):
    decay, no_decay = [], []
    for p in model.parameters():   # weight matrices (2-D; experts stacked 3-D) decay, gains do not
        (decay if p.dim() >= 2 or tc.weight_decay_norms else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=tc.adam_eps)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw), "AdamW(fused=True)"
        except Exception as e:  # noqa: BLE001
            log(f"fused AdamW unavailable ({short_error(e)}); using foreach")
    return torch.optim.AdamW(groups, foreach=True, **kw), "AdamW(foreach=True)"


# ---------------------------------------------------------------------------------------------
# Checks and micro-benchmarks of the optional paths
# ---------------------------------------------------------------------------------------------
def check_experts(impl, gmm, device, cdt, D=64, Fw=32):
    """impl against the loop path on a small problem with the model's D and F (one expert gets
    no token), forward and gradients; raises on a mismatch."""
    g0 = torch.Generator(device="cpu").manual_seed(0)
    N, K, E = 96, 2, 4
    x = torch.randn(N, D, generator=g0).to(device, cdt)
    w13 = (torch.randn(E, 2 * Fw, D, generator=g0) / math.sqrt(D)).to(device, cdt)
    w2 = (torch.randn(E, D, Fw, generator=g0) / math.sqrt(Fw)).to(device, cdt)
    idx = torch.stack([torch.randperm(E - 1, generator=g0)[:K] for _ in range(N)]).to(device)
    g = torch.rand(N, K, generator=g0, dtype=torch.float64).to(device, torch.float32 if cdt != torch.float64 else cdt)
    dy = torch.randn(N, D, generator=g0).to(device, g.dtype)
    outs = []
    for which in (impl, "loop"):
        xs, a, b, gg = [t.clone().requires_grad_(True) for t in (x, w13, w2, g)]
        if which == "grouped":
            y = experts_grouped(xs, idx, gg, a, b, gmm)
        elif which == "bmm":
            y = experts_bmm(xs, idx, gg, a, b)
        else:
            y = experts_loop(xs, idx, gg, a, b)
        (y * dy).sum().backward()
        outs.append([y.detach().double()] + [t.grad.double() for t in (xs, a, b, gg)])
    tol = 3e-2 if cdt in (torch.bfloat16, torch.float16) else (1e-4 if cdt == torch.float32 else 1e-10)
    for name, u, v in zip(("y", "dx", "dw13", "dw2", "dg"), outs[0], outs[1]):
        err = float((u - v).abs().max()) / max(float(v.abs().max()), 1e-30)
        if not err <= tol:
            raise RuntimeError(f"experts '{impl}' differ from the loop on {name}: rel err {err:.3g}")
    return True


def bench_experts(impls, gmm, device, cdt, N, K, E, D, Fw, reps=4):
    """Median fwd+bwd time (ms) of each expert implementation on the layer's real shapes."""
    g0 = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(N, D, device=device, generator=g0).to(cdt).requires_grad_(True)
    w13 = (torch.randn(E, 2 * Fw, D, device=device, generator=g0) * 0.02).to(cdt).requires_grad_(True)
    w2 = (torch.randn(E, D, Fw, device=device, generator=g0) * 0.02).to(cdt).requires_grad_(True)
    s = torch.rand(N, E, device=device, generator=g0)
    idx = torch.topk(s, K, dim=-1).indices
    g = torch.rand(N, K, device=device, generator=g0).requires_grad_(True)
    out = {}
    for impl in impls:
        times = []
        for r in range(reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if impl == "grouped":
                y = experts_grouped(x, idx, g, w13, w2, gmm)
            else:
                y = experts_bmm(x, idx, g, w13, w2)
            y.float().sum().backward()
            torch.cuda.synchronize()
            if r:
                times.append((time.perf_counter() - t0) * 1e3)
            x.grad = w13.grad = w2.grad = g.grad = None
        out[impl] = statistics.median(times)
    return out


def check_attention(impl, device, dtype, grad, dqk=48, dv=32, T=256):
    """The document mask through `impl` against plain masked attention (random documents)."""
    g0 = torch.Generator(device="cpu").manual_seed(1)
    b, H = 2, 2
    doc = torch.cumsum((torch.rand(b, T, generator=g0) < 0.03).long(), 1).to(device)
    q, k, v = [torch.randn(b, H, T, d, generator=g0).to(device, dtype) for d in (dqk, dqk, dv)]
    scale = 1 / math.sqrt(dqk)
    dense = make_mask(doc, "sdpa")
    outs = []
    for which in (impl, "math"):
        qs, ks, vs = [t.clone().requires_grad_(grad) for t in (q, k, v)]
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            if which.startswith("flex"):
                fn = flex_attention if device.type == "cpu" else torch.compile(flex_attention, dynamic=False)
                kw = {"kernel_options": FLEX_SMALL_BLOCKS} if which == "flex-small" else {}
                qp, kp = qs, ks
                if which == "flex-pad256":
                    qp, kp = F.pad(qs, (0, 256 - dqk)), F.pad(ks, (0, 256 - dqk))
                o = fn(qp, kp, vs, block_mask=make_mask(doc, "flex"), scale=scale, **kw)
            elif which == "sdpa":
                o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=dense, scale=scale)
            else:
                o = attention_math(qs, ks, vs, dense, scale)
            res = [o.detach().double()]
            if grad:
                o.float().pow(2).sum().backward()
                res += [t.grad.double() for t in (qs, ks, vs)]
        outs.append(res)
    tol = 3e-2 if dtype == torch.bfloat16 else (2e-5 if dtype == torch.float32 else 1e-10)
    errs = []
    for u, w in zip(outs[0], outs[1]):
        errs.append(float((u - w).abs().max()) / max(float(w.abs().max()), 1e-30))
    if max(errs) > tol:
        raise RuntimeError(f"attention '{impl}' differs from masked math attention: rel errs {errs}")
    return max(errs)


# ---------------------------------------------------------------------------------------------
# Windows and FLOPs
# ---------------------------------------------------------------------------------------------
def synthetic_windows(n, T, V, seed):
    """Like ultramoe's synthetic windows: documents BOS w... EOS with 1..2T words, uniform ids."""
    rng = np.random.default_rng(seed)
    need = n * T + 1
    parts, size = [], 0
    while size < need:
        m = int(rng.integers(1, 2 * T + 1))
        parts.append(np.concatenate([[1], rng.integers(4, V, size=m), [2]]).astype(np.int32))
        size += m + 2
    stream = np.concatenate(parts)
    return np.stack([stream[s * T:s * T + T + 1] for s in range(n)])


def flops_per_token(cfg, T):
    """design.md 7 (the formula of src/model/flops.cpp)."""
    D, V, H = cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads
    L, Dm = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
    dqk, dv = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    ql = cfg.q_lora_rank or 0
    att = (D * ql + ql * H * dqk if ql else D * H * dqk) + D * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + \
        cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + dv) + H * dv * D
    n_mm = 0.0
    for layer in range(L + Dm):
        if layer < cfg.first_k_dense_replace:
            ffn = 3 * D * cfg.intermediate_size
        else:
            ffn = D * cfg.n_routed_experts + 3 * D * cfg.n_shared_experts * cfg.moe_intermediate_size + \
                cfg.num_experts_per_tok * 3 * D * cfg.moe_intermediate_size
        n_mm += att + ffn
    n_mm += V * D * (1 + Dm) + Dm * 2 * D * D
    return 6 * n_mm + 6 * H * (dqk + dv) * (T + 1) / 2 * (L + Dm)


def check_supported(cfg, tc):
    bad = []
    if cfg.topk_method != "greedy":
        bad.append(f"topk_method {cfg.topk_method} (greedy only)")
    if tc.capacity_factor > 0:
        bad.append("train.capacity_factor > 0 (dropless only)")
    if cfg.moe_router_scale:
        bad.append("moe_router_scale")
    if bad:
        raise SystemExit("torch_peer_gpu: not supported by the GPU peer: " + "; ".join(bad))


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--windows", help="int32 (warmup+steps, B, T+1) from `ultramoe bench --save-windows`; "
                                      "default: synthetic windows of the same kind")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile anywhere")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode for the layers and the head, e.g. max-autotune-no-cudagraphs "
                         "(default: torch's default mode)")
    ap.add_argument("--init-from", help="checkpoint dir (model.safetensors, HF names) or .safetensors file")
    ap.add_argument("--print-losses", action="store_true", help="per-step losses on stderr and in the JSON")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None)
    ap.add_argument("--precision", choices=["bf16", "fp32", "fp64"], default=None,
                    help="bf16 = autocast with fp32 master weights (CUDA default); fp32 (CPU default); fp64")
    ap.add_argument("--attention", choices=["auto", "flex", "flex-small", "flex-pad256", "sdpa", "math"], default="auto")
    ap.add_argument("--experts", choices=["auto", "grouped", "bmm", "loop"], default="auto")
    ap.add_argument("--strict", action="store_true", help="fail instead of falling back to a slower path")
    ap.add_argument("--check", action="store_true",
                    help="first check the chosen attention (document mask, model head dims) against plain "
                         "masked attention, forward and backward (forward only for flex on the CPU)")
    ap.add_argument("--seed", type=int, default=None, help="init seed (default train.seed)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="override KEY=VALUE (train.* / model.* / data.*)")
    args = ap.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_peer_gpu: --device cuda but torch.cuda.is_available() is false")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count())
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    compile_on = not args.no_compile and device.type == "cuda"
    if not args.no_compile and device.type == "cpu":
        log("CPU run: no torch.compile (the CPU mode is for checking the logic)")

    rc = load_config_with_overrides(args.config, args.set)
    cfg, tc, T = rc.model, rc.train, rc.seq_len
    check_supported(cfg, tc)
    B, mb = tc.batch_size, tc.micro_batch_size
    n_steps = args.warmup + args.steps

    if args.windows:
        w = np.fromfile(args.windows, dtype=np.int32)
        if w.size != n_steps * B * (T + 1):
            raise SystemExit(f"torch_peer_gpu: {args.windows} holds {w.size} ids, expected {n_steps}x{B}x{T + 1}")
        windows_src = args.windows
    else:
        w = synthetic_windows(n_steps * B, T, cfg.vocab_size, tc.seed)
        windows_src = "synthetic"
    windows = torch.from_numpy(w.astype(np.int64)).view(n_steps, B, T + 1).to(device)

    pdt = torch.float64 if precision == "fp64" else torch.float32
    cdt = torch.bfloat16 if precision == "bf16" else pdt
    pool = 1 if tc.balance_scope == "sequence" else mb
    t_build = time.perf_counter()
    with torch.device(device):
        model = PeerModel(cfg, pdt, pool)
    if args.init_from:
        load_checkpoint(model, args.init_from)
        init = args.init_from
    else:
        init_random(model, tc.seed if args.seed is None else args.seed)
        init = "random"
    n_params = sum(p.numel() for p in model.parameters())
    opt, opt_name = make_optimizer(model, tc, device)
    log(f"torch {torch.__version__}, device {device_name(device)}, precision {precision}, "
        f"{n_params / 1e6:.1f}M parameters, init {init}, built in {time.perf_counter() - t_build:.1f}s")

    # --- experts ------------------------------------------------------------------------------
    gmm, gmm_name = find_grouped_mm()
    notes = []
    grouped_ok = False
    if gmm is not None and args.experts in ("auto", "grouped"):
        try:
            check_experts("grouped", gmm, device, cdt, cfg.hidden_size, cfg.moe_intermediate_size)
            grouped_ok = True
        except Exception as e:  # noqa: BLE001
            notes.append(f"grouped_mm check failed: {short_error(e)}")
            log(notes[-1])
    expert_bench = None
    if args.experts != "auto":
        experts = args.experts
        if experts == "grouped" and not grouped_ok:
            if args.strict:
                raise SystemExit("torch_peer_gpu: --experts grouped but grouped_mm is unavailable or wrong")
            experts = "bmm"
            notes.append("--experts grouped: grouped_mm unavailable or wrong, using bmm")
            log(notes[-1])
    elif device.type == "cuda":
        impls = (["grouped"] if grouped_ok else []) + ["bmm"]
        try:
            expert_bench = bench_experts(impls, gmm, device, cdt, mb * T, cfg.num_experts_per_tok,
                                         cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
            experts = min(expert_bench, key=expert_bench.get)
            log("experts fwd+bwd ms per layer per micro-batch: " +
                ", ".join(f"{k} {v:.2f}" for k, v in expert_bench.items()) + f" -> {experts}")
        except Exception as e:  # noqa: BLE001
            notes.append(f"expert micro-benchmark failed: {short_error(e)}")
            log(notes[-1])
            experts = "grouped" if grouped_ok else "bmm"
    else:
        experts = "grouped" if grouped_ok else "bmm"

    # --- attention ------------------------------------------------------------------------------
    attention = args.attention
    if attention == "auto":
        if device.type == "cuda":
            attention = "flex" if (HAVE_FLEX and compile_on) else "sdpa"
        else:
            attention = "sdpa"     # flex has no CPU backward
    if attention.startswith("flex") and not HAVE_FLEX:
        raise SystemExit("torch_peer_gpu: flex_attention is not importable in this torch")

    checks = {}
    if args.check:
        dqk, dv = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
        grad = not (attention.startswith("flex") and device.type == "cpu")
        try:
            err = check_attention(attention, device, cdt, grad, dqk, dv)
            checks["attention"] = f"{attention} vs masked math, d_qk {dqk} d_v {dv}, " \
                                  f"{'fwd+bwd' if grad else 'fwd'}: max rel err {err:.2e}"
        except Exception as e:  # noqa: BLE001
            checks["attention"] = f"{attention} FAILED: {short_error(e)}"
        log("check: " + checks["attention"])
        if "FAILED" in checks["attention"] and args.strict:
            raise SystemExit("torch_peer_gpu: attention check failed")
        checks["experts_grouped"] = "ok" if grouped_ok else "not used"

    # --- probe the path; fall back on failure ---------------------------------------------------
    set_dynamo_limits()
    cmode = args.compile_mode if compile_on else None
    attempts = [dict(compile=compile_on, attention=attention, experts=experts, compile_mode=cmode)]
    if not args.strict:
        if cmode:
            attempts.append(dict(compile=True, attention=attention, experts=experts, compile_mode=None))
        for alt in (["flex-small", "flex-pad256", "sdpa"] if attention == "flex" else ["sdpa"]):
            if alt != attention:
                attempts.append(dict(compile=compile_on, attention=alt, experts=experts, compile_mode=None))
        if compile_on:
            attempts.append(dict(compile=False, attention="sdpa", experts=experts, compile_mode=None))
        if experts == "grouped":
            attempts.append(dict(compile=False, attention="sdpa", experts="bmm", compile_mode=None))
        attempts.append(dict(compile=False, attention="math", experts="loop", compile_mode=None))
    trainer = Trainer(model, opt, tc, T, precision, device)
    fallbacks = []
    compile_s = None
    tried = []
    while attempts:
        mode = attempts.pop(0)
        if mode in tried:
            continue
        tried.append(mode)
        try:
            configure(model, mode, cdt, gmm, mode["compile_mode"])
            trainer.attention = mode["attention"]
            trainer.compile_mask = mode["compile"] and mode["attention"].startswith("flex")
            sync(device)
            t0 = time.perf_counter()
            trainer.probe(windows[0])
            sync(device)
            compile_s = time.perf_counter() - t0
            break
        except Exception as e:  # noqa: BLE001
            msg = f"path {mode} failed: {short_error(e)}"
            fallbacks.append(msg)
            log(msg)
            if os.environ.get("PEER_TRACEBACK"):
                traceback.print_exc()
            if "grouped_mm" in str(e) and mode["experts"] == "grouped":
                # the grouped GEMM (or inductor's template for it) is what failed: keep the
                # attention, drop grouped_mm from every remaining attempt
                attempts = [dict(m, experts="bmm") if m["experts"] == "grouped" else m for m in attempts]
                attempts.insert(0, dict(mode, experts="bmm"))
            opt.zero_grad(set_to_none=True)
            torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    else:
        raise SystemExit("torch_peer_gpu: every path failed: " + " | ".join(fallbacks))
    log(f"path: compile={mode['compile']} attention={mode['attention']} experts={mode['experts']}"
        f"{' (' + gmm_name + ')' if mode['experts'] == 'grouped' else ''}; first forward+backward "
        f"(compile included) {compile_s:.1f}s")

    # --- the run ----------------------------------------------------------------------------------
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, logs = [], []
    first_step_s = None
    for s in range(1, n_steps + 1):
        sync(device)
        t0 = time.perf_counter()
        acc = trainer.step(windows[s - 1], s)
        sync(device)
        dt = time.perf_counter() - t0
        if s == 1:
            first_step_s = dt
        if s > args.warmup:
            times.append(dt)
        logs.append(acc)
    med = statistics.median(times)
    notes += trainer.notes
    fl = flops_per_token(cfg, T)
    out = {"peer": "pytorch-gpu", "torch_version": torch.__version__, "device": device_name(device),
           "config": args.config, "precision": precision, "compiled": mode["compile"],
           "attention": describe_attention(mode["attention"]), "experts": describe_experts(mode["experts"], gmm_name),
           "expert_bench_ms": expert_bench, "optimizer": opt_name, "fallbacks": fallbacks, "notes": notes,
           "checks": checks, "compile_mode": mode["compile_mode"] if mode["compile"] else None,
           "block_mask": ("create_block_mask(_compile=True)" if trainer.compile_mask else "create_block_mask")
           if mode["attention"].startswith("flex") else None,
           "windows": windows_src, "init": init, "parameters": n_params,
           "tokens_per_step": B * T, "micro_batch_size": mb, "warmup": args.warmup,
           "step_s": times, "step_s_median": med, "tokens_per_s": B * T / med,
           "compile_s": compile_s, "first_step_s": first_step_s,
           "model_flops_per_token": fl, "model_tflops": fl * B * T / med / 1e12}
    if device.type == "cuda":
        out["mfu"] = fl * B * T / med / H100_BF16_PEAK
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
    else:
        import resource
        out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.print_losses:
        rows = []
        for s, acc in enumerate(logs, start=1):
            r = {"step": s, "lr": acc["lr"], "loss": float(acc["loss"]), "loss_mtp": float(acc["loss_mtp"]),
                 "mtp_ce": [float(c) for c in acc["mtp_ce"]], "loss_bal": float(acc["loss_bal"]),
                 "loss_z": float(acc["loss_z"]), "grad_norm": float(acc["grad_norm"])}
            r["loss_total"] = r["loss"] + r["loss_mtp"] + r["loss_bal"] + r["loss_z"]
            rows.append(r)
            log(f"step {s}: loss {r['loss']:.6f} mtp {r['loss_mtp']:.6f} bal {r['loss_bal']:.6f} "
                f"z {r['loss_z']:.3g} total {r['loss_total']:.6f} grad_norm {r['grad_norm']:.4f} lr {r['lr']:.3g}")
        out["losses"] = rows
    print(json.dumps(out), flush=True)


def describe_attention(a):
    return {"flex": "flex_attention (compiled, causal+document BlockMask)",
            "flex-small": "flex_attention (compiled, BlockMask, 64-wide blocks)",
            "flex-pad256": "flex_attention (compiled, BlockMask, q/k zero-padded to 256)",
            "sdpa": "scaled_dot_product_attention (dense causal+document bool mask)",
            "math": "matmul + masked softmax"}[a]


def describe_experts(e, gmm_name):
    return {"grouped": f"sorted by expert + {gmm_name} (groups padded to 16 rows)",
            "bmm": "sorted by expert + torch.bmm padded to the largest expert load",
            "loop": "sorted by expert + one GEMM pair per expert"}[e]


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def load_config_with_overrides(path, sets):
    if not sets:
        return load_config(path)
    from config import parse_config
    with open(path) as f:
        raw = json.load(f)
    for kv in sets:
        key, _, value = kv.partition("=")
        section, _, name = key.partition(".")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        raw.setdefault(section, {})[name] = value
    return parse_config(raw)


if __name__ == "__main__":
    main()
