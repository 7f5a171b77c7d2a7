"""Independent PyTorch reference of the ultramoe model (design.md section 1).

What it is: the model math of design.md 1.2-1.10 -- DSSN / sandwich / Pre-LN decoder layers, MLA
with decoupled rotate-half RoPE and document masks, dense SwiGLU and MoE FFNs (greedy,
group_limited, moge routing; dropless or capacity mode), MTP, and the loss J of 1.6-1.8 -- written
from the design specification alone (docs/design.md), parameterised by dtype (float64 for
goldens, float32 as the benchmark peer).
Parameter names are the HF names of design.md 1.4, 1.5, 1.7, 1.10 and section 6.
What it is not: the trainer (train.py: AdamW, LR schedule, accumulation, aux-free update) or a
port of the C++ code.

Dimension legend: B sequences, T positions, D hidden, H heads, E routed experts, K experts per
token, F expert width, V vocab, N tokens of one layer in one forward (B*T_layer).
"""
import hashlib
import math
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import ModelConfig, capacity

UNK, BOS, EOS, PAD = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------
# 1.8 Windows, documents, positions, targets
# ---------------------------------------------------------------------------------------------
@dataclass
class WindowLayout:
    doc: torch.Tensor          # (B, T+1) int64: document index of x_i inside its window
    pos: torch.Tensor          # (B, T)   int64: RoPE position of input x_i
    main_valid: torch.Tensor   # (B, T)   bool: target x_{i+1} of position i counts
    mtp_valid: List[torch.Tensor]  # k=1..D: (B, T-k) bool: target x_{i+k+1} counts


def window_layout(tokens, mtp_depth):
    """tokens (B, T+1). A document is a maximal run ending with EOS, the EOS belonging to the
    document it closes; positions restart at x_0 and right after every EOS (design.md 1.8)."""
    B, T1 = tokens.shape
    T = T1 - 1
    is_eos = tokens == EOS
    doc = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()          # EOS before i, strictly
    idx = torch.arange(T, device=tokens.device).expand(B, T)
    after_eos = torch.zeros_like(is_eos[:, :T])
    after_eos[:, 1:] = is_eos[:, :T - 1]
    start = torch.where(after_eos, idx, torch.zeros_like(idx)).cummax(dim=1).values
    pos = idx - start
    not_pad = tokens != PAD                                            # padding is never a target
    main_valid = (doc[:, 1:] == doc[:, :T]) & not_pad[:, 1:]
    mtp_valid = [(doc[:, k + 1:] == doc[:, :T - k]) & not_pad[:, k + 1:]
                 for k in range(1, mtp_depth + 1)]
    return WindowLayout(doc, pos, main_valid, mtp_valid)


def attention_mask(doc, n):
    """(B, n, n) bool: query i attends key j iff j <= i and doc(j) = doc(i) (design.md 1.4)."""
    d = doc[:, :n]
    causal = torch.ones(n, n, dtype=torch.bool, device=doc.device).tril()
    return causal & (d[:, :, None] == d[:, None, :])


# ---------------------------------------------------------------------------------------------
# 1.2 RMSNorm
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """y = g * x / sqrt(mean(x^2) + eps), in at least fp32."""

    def __init__(self, dim, eps, dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x):
        xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * y).to(x.dtype)


def linear(n_in, n_out, dtype):
    return nn.Linear(n_in, n_out, bias=False, dtype=dtype)  # weight (out, in)


# ---------------------------------------------------------------------------------------------
# 1.4 MLA with decoupled rotate-half RoPE
# ---------------------------------------------------------------------------------------------
def rope_cos_sin(pos, dim, theta, dtype):
    """pos (B, T) -> cos, sin (B, T, dim); frequency j = theta^(-2j/dim), rotate-half layout."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)    # (dim/2)
    ang = pos.to(torch.float64)[..., None] * inv_freq                           # (B, T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x (..., dim): x*cos + rotate_half(x)*sin, rotate_half([x1; x2]) = [-x2; x1]."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        D, H = cfg.hidden_size, cfg.num_attention_heads
        self.H, self.dn, self.dr, self.dv = H, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora = cfg.kv_lora_rank
        self.q_lora = cfg.q_lora_rank or 0
        dqk = self.dn + self.dr
        if self.q_lora:
            self.q_a_proj = linear(D, self.q_lora, dtype)
            self.q_a_layernorm = RMSNorm(self.q_lora, cfg.rms_norm_eps, dtype)
            self.q_b_proj = linear(self.q_lora, H * dqk, dtype)
        else:
            self.q_proj = linear(D, H * dqk, dtype)
        self.kv_a_proj_with_mqa = linear(D, self.kv_lora + self.dr, dtype)
        self.kv_a_layernorm = RMSNorm(self.kv_lora, cfg.rms_norm_eps, dtype)
        self.kv_b_proj = linear(self.kv_lora, H * (self.dn + self.dv), dtype)
        self.o_proj = linear(H * self.dv, D, dtype)
        self.scale = 1.0 / math.sqrt(dqk)

    def forward(self, x, cos, sin, mask):
        """x (B, T, D); cos, sin (B, T, dr); mask (B, T, T) bool -> (B, T, D)."""
        B, T, _ = x.shape
        H, dn, dr, dv = self.H, self.dn, self.dr, self.dv
        if self.q_lora:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(B, T, H, dn + dr)                                    # per head [q_nope; q_pe]
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        kva = self.kv_a_proj_with_mqa(x)                                # [ckv; k_pe]
        ckv, k_pe = kva[..., :self.kv_lora], kva[..., self.kv_lora:]    # k_pe: one key, all heads
        kv = self.kv_b_proj(self.kv_a_layernorm(ckv)).view(B, T, H, dn + dv)
        k_nope, v = kv[..., :dn], kv[..., dn:]
        q_pe = apply_rope(q_pe, cos[:, :, None], sin[:, :, None])        # (B, T, H, dr)
        k_pe = apply_rope(k_pe, cos, sin)                                # (B, T, dr)
        q = torch.cat([q_nope, q_pe], dim=-1).transpose(1, 2)          # (B, H, T, dqk)
        k = torch.cat([k_nope, k_pe[:, :, None].expand(B, T, H, dr)], dim=-1).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale      # (B, H, T, T)
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        o = torch.matmul(torch.softmax(scores, dim=-1), v.transpose(1, 2))   # (B, H, T, dv)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))


# ---------------------------------------------------------------------------------------------
# 1.5 FFNs: SwiGLU, router, MoE
# ---------------------------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """(silu(x W_gate) * x W_up) W_down; used for dense FFNs, experts and shared experts."""

    def __init__(self, D, width, dtype):
        super().__init__()
        self.gate_proj = linear(D, width, dtype)
        self.up_proj = linear(D, width, dtype)
        self.down_proj = linear(width, D, dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """mlp.gate: weight (E, D) and the aux-free bias e_score_correction_bias (E), a buffer."""

    def __init__(self, D, E, dtype):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(E, D, dtype=dtype))
        self.register_buffer("e_score_correction_bias", torch.zeros(E, dtype=dtype))


@dataclass
class Routing:
    """What one MoE layer's forward reports besides its output (N tokens, E experts)."""
    z: torch.Tensor            # (N, E) router logits (grad)
    s: torch.Tensor            # (N, E) scores (grad)
    selected: torch.Tensor     # (N, E) bool, biased selection before drops
    n_dropped: int             # (token, expert) pairs dropped by capacity
    margin: float              # smallest gap deciding a selection (README), inf if none


def topk_lower_index(v, k):
    """Indices of the k largest along the last dim, ties to the lower index (design.md 1.5), and
    the sorted values."""
    vals, order = torch.sort(v, dim=-1, descending=True, stable=True)
    return order[..., :k], vals


def gap_at(sorted_vals, k):
    """sorted_vals[..., k-1] - sorted_vals[..., k]: the margin deciding a top-k (inf if k = all
    or the runner-up is -inf)."""
    if k >= sorted_vals.shape[-1]:
        return math.inf
    g = sorted_vals[..., k - 1] - sorted_vals[..., k]
    g = torch.where(torch.isinf(g), torch.full_like(g, math.inf), g)
    return g.min().item() if g.numel() else math.inf


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        D, E, Fw = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
        self.cfg = cfg
        self.E, self.K = E, cfg.num_experts_per_tok
        self.gate = Router(D, E, dtype)
        self.experts = nn.ModuleList([SwiGLU(D, Fw, dtype) for _ in range(E)])
        if cfg.n_shared_experts > 0:   # one MLP, width = sum of the shared experts
            self.shared_experts = SwiGLU(D, cfg.n_shared_experts * Fw, dtype)
        if cfg.moe_router_scale:
            self.router_scale = nn.Parameter(torch.ones(E, dtype=dtype))

    # -- router: z, s -------------------------------------------------------------------------
    def scores(self, x):
        """x (N, D) -> z, s (N, E). The router GEMM runs in at least fp32."""
        w = self.gate.weight
        if x.dtype not in (torch.float32, torch.float64):
            x, w = x.float(), w.float()
        z = x @ w.t()
        s = torch.sigmoid(z) if self.cfg.scoring_func == "sigmoid" else torch.softmax(z, dim=-1)
        return z, s

    # -- selection: greedy / group_limited / moge, on s + b ---------------------------------
    def select(self, s):
        """s (N, E) -> idx (N, K) selected experts, margin (float). Selection only: no grad."""
        cfg, E, K = self.cfg, self.E, self.K
        sb = s.detach() + self.gate.e_score_correction_bias      # bias: selection only
        N = sb.shape[0]
        if cfg.topk_method == "moge":
            M = cfg.n_group
            per_group = sb.view(N, M, E // M)
            local, vals = topk_lower_index(per_group, K // M)    # top K/M of every group
            idx = (local + torch.arange(M, device=s.device)[:, None] * (E // M)).reshape(N, K)
            return idx, gap_at(vals, K // M)
        if cfg.group_limited:
            G = cfg.n_group
            grouped = sb.view(N, G, E // G)
            n_top = min(2, E // G)                               # design.md 1.10
            group_score = grouped.topk(n_top, dim=-1).values.sum(-1)   # (N, G)
            gidx, gvals = topk_lower_index(group_score, cfg.topk_group)
            keep = torch.zeros(N, G, dtype=torch.bool, device=s.device).scatter(1, gidx, True)
            keep = keep[:, :, None].expand(N, G, E // G).reshape(N, E)
            masked = sb.masked_fill(~keep, float("-inf"))        # never 0
            idx, vals = topk_lower_index(masked, K)
            return idx, min(gap_at(gvals, cfg.topk_group), gap_at(vals, K))
        idx, vals = topk_lower_index(sb, K)
        return idx, gap_at(vals, K)

    # -- gates -------------------------------------------------------------------------------
    def gates(self, s, idx):
        """(N, K) weights of the selected experts (design.md 1.5, 1.10)."""
        g = s.gather(1, idx)
        if self.cfg.norm_topk_prob:
            g = g / (g.sum(-1, keepdim=True) + 1e-20)
        g = g * self.cfg.routed_scaling_factor
        if self.cfg.moe_router_scale:   # after renormalisation and scaling, any topk_method
            g = g * self.router_scale[idx]
        return g

    # -- capacity mode -----------------------------------------------------------------------
    def capacity_keep(self, s, idx, cap):
        """keep (N, K) bool: per expert the cap pairs with the highest unbiased s, ties to the
        lower token index; also the margin around each cut-off."""
        N, K = idx.shape
        pair_expert = idx.reshape(-1)                             # token-major pair order
        pair_s = s.detach().gather(1, idx).reshape(-1)
        by_s = torch.sort(pair_s, descending=True, stable=True).indices   # ties: lower token
        order = by_s[torch.sort(pair_expert[by_s], stable=True).indices]  # group by expert
        counts = torch.bincount(pair_expert, minlength=self.E)
        seg_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(N * K, device=s.device) - seg_start[pair_expert[order]]
        keep = torch.zeros(N * K, dtype=torch.bool, device=s.device)
        keep[order] = rank < cap
        margin = math.inf
        sorted_s = pair_s[order]
        for e in range(self.E):
            if counts[e] > cap:
                a = int(seg_start[e])
                margin = min(margin, (sorted_s[a + cap - 1] - sorted_s[a + cap]).item())
        return keep.view(N, K), margin

    # -- dispatch, experts, combine ------------------------------------------------------------
    def experts_combine(self, x, idx, g, keep):
        """Permute pairs so each expert's rows are contiguous, run each expert on its segment,
        weight by the gate and add back to the tokens (design.md 1.5 dropless; dropped pairs are
        simply absent)."""
        N, K = idx.shape
        pair_token = torch.arange(N, device=x.device).repeat_interleave(K)
        pair_expert, pair_gate = idx.reshape(-1), g.reshape(-1)
        if keep is not None:
            kept = keep.reshape(-1)
            pair_token, pair_expert, pair_gate = pair_token[kept], pair_expert[kept], pair_gate[kept]
        order = torch.sort(pair_expert, stable=True).indices
        counts = torch.bincount(pair_expert, minlength=self.E).tolist()
        rows = x[pair_token[order]]                                      # (pairs, D)
        outs = [self.experts[e](seg) for e, seg in enumerate(torch.split(rows, counts)) if counts[e]]
        y_pairs = torch.cat(outs) * pair_gate[order, None] if outs else rows[:0]
        return torch.zeros_like(x).index_add(0, pair_token[order], y_pairs.to(x.dtype))

    def forward(self, x, capacity_factor=0.0):
        """x (B, Tl, D) -> y (B, Tl, D), Routing. Capacity is per forward (one rank's micro-batch,
        T_local = B*Tl tokens)."""
        B, Tl, D = x.shape
        xf = x.reshape(B * Tl, D)
        z, s = self.scores(xf)
        with torch.no_grad():
            idx, margin = self.select(s)
            selected = torch.zeros_like(s, dtype=torch.bool).scatter(1, idx, True)
        g = self.gates(s, idx)
        keep, n_dropped = None, 0
        if capacity_factor > 0:
            cap = capacity(capacity_factor, B * Tl, self.K, self.E)
            with torch.no_grad():
                keep, cap_margin = self.capacity_keep(s, idx, cap)
            n_dropped = int((~keep).sum())
            margin = min(margin, cap_margin)
        y = self.experts_combine(xf, idx, g.to(x.dtype), keep)
        if hasattr(self, "shared_experts"):
            y = y + self.shared_experts(xf)                              # never scaled, never dropped
        return y.view(B, Tl, D), Routing(z, s, selected, n_dropped, margin)


# ---------------------------------------------------------------------------------------------
# 1.2 Decoder layer (DSSN / plain sandwich / Pre-LN) and 1.7 MTP module
# ---------------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index, dtype):
        super().__init__()
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.sandwich = cfg.sandwich_norm
        self.is_moe = layer_index >= cfg.first_k_dense_replace
        self.input_layernorm = RMSNorm(D, eps, dtype)
        self.self_attn = MLA(cfg, dtype)
        # sandwich: post_attention_layernorm is the post-attention norm; Pre-LN: the pre-FFN norm
        self.post_attention_layernorm = RMSNorm(D, eps, dtype)
        if self.sandwich:
            self.pre_mlp_layernorm = RMSNorm(D, eps, dtype)
            self.post_mlp_layernorm = RMSNorm(D, eps, dtype)
        self.mlp = MoE(cfg, dtype) if self.is_moe else SwiGLU(D, cfg.intermediate_size, dtype)

    def forward(self, h, cos, sin, mask, capacity_factor):
        routing = None
        a = self.self_attn(self.input_layernorm(h), cos, sin, mask)
        if self.sandwich:
            h = h + self.post_attention_layernorm(a)
            x = self.pre_mlp_layernorm(h)
        else:
            h = h + a
            x = self.post_attention_layernorm(h)
        if self.is_moe:
            f, routing = self.mlp(x, capacity_factor)
        else:
            f = self.mlp(x)
        h = h + (self.post_mlp_layernorm(f) if self.sandwich else f)
        return h, routing


class SharedHead(nn.Module):
    def __init__(self, D, eps, dtype):
        super().__init__()
        self.norm = RMSNorm(D, eps, dtype)


class MTPLayer(DecoderLayer):
    """Module k at index L+k-1: enorm, hnorm, eh_proj (2D -> D), shared_head.norm + a layer."""

    def __init__(self, cfg: ModelConfig, layer_index, dtype):
        super().__init__(cfg, layer_index, dtype)
        D, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.enorm = RMSNorm(D, eps, dtype)
        self.hnorm = RMSNorm(D, eps, dtype)
        self.eh_proj = linear(2 * D, D, dtype)
        self.shared_head = SharedHead(D, eps, dtype)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype):
        super().__init__()
        L, n_mtp = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(
            [DecoderLayer(cfg, i, dtype) for i in range(L)] +
            [MTPLayer(cfg, i, dtype) for i in range(L, L + n_mtp)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)


@dataclass
class ForwardOut:
    logits: torch.Tensor                 # (B, T, V)
    mtp_logits: List[torch.Tensor]       # k=1..D: (B, T-k, V)
    hidden: List[torch.Tensor]           # every decoder layer's output; MTP ones (B, T-k, D)
    hidden_norm: torch.Tensor            # (B, T, D) final-norm output
    routing: dict                        # layer index -> Routing, MoE layers only
    layout: WindowLayout


class UltramoeModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.dtype = dtype
        self.model = Backbone(cfg, dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, dtype)

    @property
    def moe_layers(self):
        return [i for i, layer in enumerate(self.model.layers) if layer.is_moe]

    def head(self, h):
        w = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return h @ w.t()

    def forward(self, tokens, capacity_factor=0.0):
        """tokens (B, T+1) int64 windows; inputs are x_0..x_{T-1}. capacity_factor > 0 is
        training-only capacity mode with this forward as one rank's micro-batch."""
        cfg = self.cfg
        L, n_mtp = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        T = tokens.shape[1] - 1
        layout = window_layout(tokens, n_mtp)
        cos, sin = rope_cos_sin(layout.pos, cfg.qk_rope_head_dim, cfg.rope_theta, self.dtype)
        mask = attention_mask(layout.doc, T)
        emb = self.model.embed_tokens
        hidden, routing = [], {}

        h = emb(tokens[:, :T])
        for i in range(L):
            h, r = self.model.layers[i](h, cos, sin, mask, capacity_factor)
            hidden.append(h)
            if r is not None:
                routing[i] = r
        h_norm = self.model.norm(h)
        logits = self.head(h_norm)

        # 1.7 MTP: module k on positions i = 0..T-k-1, same positions and document mask
        mtp_logits, h_prev = [], h_norm
        for k in range(1, n_mtp + 1):
            layer = self.model.layers[L + k - 1]
            n = T - k
            e = layer.enorm(emb(tokens[:, k:k + n]))                    # Emb(x_{i+k})
            hp = layer.hnorm(h_prev[:, :n])                             # h^{k-1}_i
            h_k = layer.eh_proj(torch.cat([e, hp], dim=-1))             # embedding half first
            h_k, r = layer(h_k, cos[:, :n], sin[:, :n], mask[:, :n, :n], capacity_factor)
            hidden.append(h_k)
            if r is not None:
                routing[L + k - 1] = r
            h_prev = layer.shared_head.norm(h_k)
            mtp_logits.append(self.head(h_prev))
        return ForwardOut(logits, mtp_logits, hidden, h_norm, routing, layout)


# ---------------------------------------------------------------------------------------------
# 1.3 Initialisation
# ---------------------------------------------------------------------------------------------
def matrix_std(cfg: ModelConfig):
    D, L = cfg.hidden_size, cfg.num_hidden_layers
    return {"tiny": math.sqrt(1.0 / (2 * D * L)),
            "small": math.sqrt(2.0 / (5 * D)),
            "small_scaled": math.sqrt(2.0 / (5 * D * L)),
            "fixed": cfg.initializer_range}[cfg.init]


def _stream(seed, name):
    """A torch generator keyed by (seed, parameter name): values never depend on which other
    tensors exist (design.md 1.3; the C++ side loads our values, it need not reproduce them)."""
    key = int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(key & ((1 << 63) - 1))


def init_parameters(model: UltramoeModel, seed):
    cfg = model.cfg
    L = cfg.num_hidden_layers
    depth = math.sqrt(L) if cfg.dssn_depth_scaled else None
    w_std = matrix_std(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:   # weight matrices, embedding included
                std = w_std
                if name == "model.embed_tokens.weight" and not cfg.tie_word_embeddings:
                    std = cfg.init_embedding_std
                draw = torch.randn(p.shape, generator=_stream(seed, name), dtype=torch.float64)
                p.copy_(draw * std)
            elif name.endswith("post_attention_layernorm.weight") and cfg.sandwich_norm:
                p.fill_(cfg.dssn_c_attn / depth if depth else 1.0)
            elif name.endswith("post_mlp_layernorm.weight"):
                p.fill_(cfg.dssn_c_ffn / depth if depth else 1.0)
            else:              # other norm gains and router_scale
                p.fill_(1.0)
        for _, b in model.named_buffers():
            b.zero_()


# ---------------------------------------------------------------------------------------------
# 1.6-1.8 The loss J of one micro-batch, normalised by the step's global counts
# ---------------------------------------------------------------------------------------------
@dataclass
class StepCounts:
    """Global (whole-step) denominators, known from the data before the forward (design.md 1.8)."""
    n_main: int
    n_mtp: List[int]
    n_pools: int                 # balance pools of the step
    tokens_per_layer: dict       # layer index -> tokens the layer sees in the whole step
    pool_size: int               # sequences per pool


def balance_pool_size(scope, micro_batch_size):
    # One process, world size 1: ep_group and global pools are the micro-batch (design.md 1.6).
    return 1 if scope == "sequence" else micro_batch_size


def step_counts(model: UltramoeModel, batch, scope, micro_batch_size):
    cfg = model.cfg
    layout = window_layout(batch, cfg.num_nextn_predict_layers)
    B, T = batch.shape[0], batch.shape[1] - 1
    pool = balance_pool_size(scope, micro_batch_size)
    L = cfg.num_hidden_layers
    per_layer = {i: B * (T if i < L else T - (i - L + 1)) for i in model.moe_layers}
    return StepCounts(int(layout.main_valid.sum()), [int(v.sum()) for v in layout.mtp_valid],
                      B // pool, per_layer, pool)


@dataclass
class LossParts:
    """This micro-batch's share of each term of J; summed over micro-batches they give J."""
    ce: torch.Tensor
    mtp_ce: List[torch.Tensor]   # unweighted CE^k shares
    mtp: torch.Tensor            # (lambda / D) * sum_k CE^k
    bal: torch.Tensor            # alpha * sum_l mean_pools B_l
    z: torch.Tensor              # beta_z * sum_l mean_tokens lse(z)^2
    balance: dict                # layer -> share of mean_pools B_l (unweighted, no grad)

    @property
    def total(self):
        return self.ce + self.mtp + self.bal + self.z


def ce_sum(logits, targets, valid):
    """sum over valid positions of -log p(target)."""
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                          reduction="none")
    return (nll * valid.reshape(-1).to(nll.dtype)).sum()


def balance_terms(routing: Routing, cfg: ModelConfig, n_seq, tokens_per_seq, pool_size):
    """B_l(S) for every pool S of this forward (design.md 1.6): f_i = E/(K|S|) c_i,
    P_i = mean_S s'_i, B = sum_i f_i P_i; s' = s renormalised over all E."""
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    s = routing.s
    s_norm = s / s.sum(-1, keepdim=True) if cfg.scoring_func == "sigmoid" else s
    n_pools = n_seq // pool_size
    size = pool_size * tokens_per_seq                                   # |S|
    c = routing.selected.to(s.dtype).view(n_pools, size, E).sum(1)     # (pools, E) no grad
    P = s_norm.view(n_pools, size, E).mean(1)
    f = E / (K * size) * c
    return (f * P).sum(-1)                                              # (pools,)


def micro_batch_loss(out: ForwardOut, tokens, counts: StepCounts, cfg: ModelConfig,
                     mtp_lambda, balance_alpha, z_loss_coef):
    n_seq = tokens.shape[0]
    zero = out.logits.new_zeros(())
    layout = out.layout
    ce = ce_sum(out.logits, tokens[:, 1:], layout.main_valid) / max(counts.n_main, 1)
    mtp_ce = []
    for k, lg in enumerate(out.mtp_logits, start=1):
        mtp_ce.append(ce_sum(lg, tokens[:, k + 1:], layout.mtp_valid[k - 1]) / max(counts.n_mtp[k - 1], 1))
    n_mtp = len(out.mtp_logits)
    mtp = (mtp_lambda / n_mtp) * sum(mtp_ce) if n_mtp else zero
    bal, zl, balance = zero, zero, {}
    for layer, r in out.routing.items():
        tokens_per_seq = r.s.shape[0] // n_seq
        b = balance_terms(r, cfg, n_seq, tokens_per_seq, counts.pool_size).sum() / counts.n_pools
        balance[layer] = b.detach()
        bal = bal + balance_alpha * b
        if z_loss_coef:
            lse = torch.logsumexp(r.z, dim=-1)
            zl = zl + z_loss_coef * lse.pow(2).sum() / counts.tokens_per_layer[layer]
    return LossParts(ce, mtp_ce, mtp, bal, zl, balance)
