"""A second, deliberately naive reading of design.md 1.2-1.8: per-token Python loops over numpy
float64 vectors, no batching, no masks, no gathers. check.py runs it on the golden parameters and
tokens and compares it with the vectorised model's golden outputs, so a slip in model.py's
indexing, masking, permutation or capacity sorting shows up as a mismatch.
What it is not: fast (tiny configs only) or a trainer.
"""
import math

import numpy as np

from config import capacity

EOS, PAD = 2, 3


def rms_norm(x, g, eps):
    return g * x / math.sqrt(float(np.mean(x * x)) + eps)


def silu(x):
    return x / (1.0 + np.exp(-x))


def swiglu(P, prefix, x):
    return P[prefix + "down_proj.weight"] @ (silu(P[prefix + "gate_proj.weight"] @ x) *
                                             (P[prefix + "up_proj.weight"] @ x))


def rope(x, p, theta):
    d = len(x)
    h = d // 2
    out = np.empty_like(x)
    for j in range(h):
        a = p * theta ** (-2.0 * j / d)
        c, s = math.cos(a), math.sin(a)
        out[j] = x[j] * c - x[j + h] * s
        out[j + h] = x[j + h] * c + x[j] * s
    return out


def docs_and_positions(seq):
    """seq: T+1 token ids -> doc ids (T+1) and positions (T), by walking the window."""
    doc, d = [], 0
    for t in seq:
        doc.append(d)
        if t == EOS:
            d += 1
    pos, p = [], 0
    for t in seq[:-1]:
        pos.append(p)
        p = 0 if t == EOS else p + 1
    return doc, pos


def attention(P, pre, cfg, xs, pos, doc):
    """xs: list of (D,) inputs of one sequence; returns list of (D,) outputs."""
    H, dn, dr, dv = (cfg["num_attention_heads"], cfg["qk_nope_head_dim"],
                     cfg["qk_rope_head_dim"], cfg["v_head_dim"])
    r, eps, theta = cfg["kv_lora_rank"], cfg["rms_norm_eps"], cfg["rope_theta"]
    qs, ks, vs = [], [], []
    for x, p in zip(xs, pos):
        if cfg["q_lora_rank"]:
            cq = rms_norm(P[pre + "q_a_proj.weight"] @ x, P[pre + "q_a_layernorm.weight"], eps)
            q = P[pre + "q_b_proj.weight"] @ cq
        else:
            q = P[pre + "q_proj.weight"] @ x
        kva = P[pre + "kv_a_proj_with_mqa.weight"] @ x
        ckv = rms_norm(kva[:r], P[pre + "kv_a_layernorm.weight"], eps)
        k_pe = rope(kva[r:], p, theta)
        kv = P[pre + "kv_b_proj.weight"] @ ckv
        q_h, k_h, v_h = [], [], []
        for h in range(H):
            qh = q[h * (dn + dr):(h + 1) * (dn + dr)]
            q_h.append(np.concatenate([qh[:dn], rope(qh[dn:], p, theta)]))
            kvh = kv[h * (dn + dv):(h + 1) * (dn + dv)]
            k_h.append(np.concatenate([kvh[:dn], k_pe]))
            v_h.append(kvh[dn:])
        qs.append(q_h)
        ks.append(k_h)
        vs.append(v_h)
    outs = []
    for i in range(len(xs)):
        o = []
        for h in range(H):
            keys = [j for j in range(i + 1) if doc[j] == doc[i]]
            sc = np.array([qs[i][h] @ ks[j][h] / math.sqrt(dn + dr) for j in keys])
            w = np.exp(sc - sc.max())
            w /= w.sum()
            o.append(sum(wj * vs[j][h] for wj, j in zip(w, keys)))
        outs.append(P[pre + "o_proj.weight"] @ np.concatenate(o))
    return outs


def route_token(cfg, s, b):
    """Selected experts of one token from its scores s and bias b (design.md 1.5)."""
    E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    sb = s + b
    by_score = lambda e: (-sb[e], e)       # noqa: E731  ties -> lower index
    method = cfg["topk_method"]
    if method == "moge":
        M = cfg["n_group"]
        n = E // M
        return [e for g in range(M) for e in sorted(range(g * n, (g + 1) * n), key=by_score)[:K // M]]
    if method in ("group_limited", "noaux_tc"):
        G = cfg["n_group"]
        n = E // G
        score = [sum(sorted(sb[g * n:(g + 1) * n], reverse=True)[:min(2, n)]) for g in range(G)]
        groups = sorted(range(G), key=lambda g: (-score[g], g))[:cfg["topk_group"]]
        cand = [e for g in groups for e in range(g * n, (g + 1) * n)]
        return sorted(sorted(cand, key=by_score)[:K])
    return sorted(sorted(range(E), key=by_score)[:K])


def moe_layer(P, pre, cfg, xs, cap_factor):
    """xs: the (D,) inputs of every token of one micro-batch, in (sequence, position) order."""
    E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    W, bias = P[pre + "gate.weight"], P[pre + "gate.e_score_correction_bias"]
    zs, ss, sels, gates = [], [], [], []
    for x in xs:
        z = W @ x
        s = 1 / (1 + np.exp(-z)) if cfg["scoring_func"] == "sigmoid" else np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        sel = route_token(cfg, s, bias)
        g = {e: s[e] for e in sel}
        if cfg["norm_topk_prob"]:
            tot = sum(g.values()) + 1e-20
            g = {e: v / tot for e, v in g.items()}
        g = {e: v * cfg["routed_scaling_factor"] for e, v in g.items()}
        if cfg["moe_router_scale"]:
            g = {e: v * P[pre + "router_scale"][e] for e, v in g.items()}
        zs.append(z)
        ss.append(s)
        sels.append(sel)
        gates.append(g)
    dropped = set()
    if cap_factor > 0:
        C = capacity(cap_factor, len(xs), K, E)
        for e in range(E):
            pairs = sorted([t for t in range(len(xs)) if e in sels[t]], key=lambda t: (-ss[t][e], t))
            dropped |= {(t, e) for t in pairs[C:]}
    ys = []
    for t, x in enumerate(xs):
        y = np.zeros_like(x)
        for e, g in gates[t].items():
            if (t, e) not in dropped:
                y += g * swiglu(P, f"{pre}experts.{e}.", x)
        if cfg["n_shared_experts"] > 0:
            y += swiglu(P, pre + "shared_experts.", x)
        ys.append(y)
    return ys, {"z": zs, "s": ss, "sel": sels, "dropped": len(dropped)}


def decoder_layer(P, i, cfg, hs, pos, doc, n_seq, cap_factor):
    """hs: per sequence a list of (D,) states. Returns new states and routing info (or None)."""
    pre, eps = f"model.layers.{i}.", cfg["rms_norm_eps"]
    sandwich = cfg["sandwich_norm"]
    out = []
    for b in range(n_seq):
        a = attention(P, pre + "self_attn.", cfg, [rms_norm(h, P[pre + "input_layernorm.weight"], eps)
                                                    for h in hs[b]], pos[b], doc[b])
        if sandwich:
            out.append([h + rms_norm(ai, P[pre + "post_attention_layernorm.weight"], eps)
                        for h, ai in zip(hs[b], a)])
        else:
            out.append([h + ai for h, ai in zip(hs[b], a)])
    ffn_norm = "pre_mlp_layernorm.weight" if sandwich else "post_attention_layernorm.weight"
    xs = [rms_norm(h, P[pre + ffn_norm], eps) for seq in out for h in seq]
    if i >= cfg["first_k_dense_replace"]:
        fs, info = moe_layer(P, pre + "mlp.", cfg, xs, cap_factor)
    else:
        fs, info = [swiglu(P, pre + "mlp.", x) for x in xs], None
    if sandwich:
        fs = [rms_norm(f, P[pre + "post_mlp_layernorm.weight"], eps) for f in fs]
    n = len(out[0])
    return [[h + fs[b * n + t] for t, h in enumerate(out[b])] for b in range(n_seq)], info


def log_softmax(v):
    m = v.max()
    return v - m - math.log(np.exp(v - m).sum())


def forward_micro_batch(P, cfg, tokens, cap_factor):
    """tokens: list of windows (T+1 ids). Returns logits, mtp logits, hidden, norm output,
    routing info per MoE layer -- all as nested lists of numpy vectors."""
    L, n_mtp, eps = cfg["num_hidden_layers"], cfg["num_nextn_predict_layers"], cfg["rms_norm_eps"]
    emb = P["model.embed_tokens.weight"]
    head = emb if cfg["tie_word_embeddings"] else P["lm_head.weight"]
    n_seq, T = len(tokens), len(tokens[0]) - 1
    dp = [docs_and_positions(seq) for seq in tokens]
    doc, pos = [d for d, _ in dp], [p for _, p in dp]
    hs = [[emb[t].copy() for t in seq[:T]] for seq in tokens]
    hidden, routing = [], {}
    for i in range(L):
        hs, info = decoder_layer(P, i, cfg, hs, pos, doc, n_seq, cap_factor)
        hidden.append(hs)
        if info:
            routing[i] = info
    h_norm = [[rms_norm(h, P["model.norm.weight"], eps) for h in seq] for seq in hs]
    logits = [[head @ h for h in seq] for seq in h_norm]
    mtp_logits, prev = [], h_norm
    for k in range(1, n_mtp + 1):
        i, pre = L + k - 1, f"model.layers.{L + k - 1}."
        n = T - k
        hk = [[P[pre + "eh_proj.weight"] @ np.concatenate([
            rms_norm(emb[tokens[b][t + k]], P[pre + "enorm.weight"], eps),
            rms_norm(prev[b][t], P[pre + "hnorm.weight"], eps)]) for t in range(n)] for b in range(n_seq)]
        hk, info = decoder_layer(P, i, cfg, hk, [p[:n] for p in pos], doc, n_seq, cap_factor)
        hidden.append(hk)
        if info:
            routing[i] = info
        prev = [[rms_norm(h, P[pre + "shared_head.norm.weight"], eps) for h in seq] for seq in hk]
        mtp_logits.append([[head @ h for h in seq] for seq in prev])
    return logits, mtp_logits, hidden, h_norm, routing, doc


def step_losses(P, cfg, train, tokens, mtp_lambda):
    """The loss parts of design.md 1.6-1.8 for one global batch, summed term by term."""
    m = train["micro_batch_size"]
    B, T = len(tokens), len(tokens[0]) - 1
    E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    n_mtp = cfg["num_nextn_predict_layers"]
    ce_sum, n_main = 0.0, 0
    mtp_sum, mtp_n = [0.0] * n_mtp, [0] * n_mtp
    pool = 1 if train["balance_scope"] == "sequence" else m
    bal, z2, n_tok, drops = {}, {}, {}, {}
    outs = []
    for a in range(B // m):
        mb = tokens[a * m:(a + 1) * m]
        logits, mtp_logits, hidden, h_norm, routing, doc = forward_micro_batch(
            P, cfg, mb, train["capacity_factor"])
        outs.append((logits, mtp_logits, hidden, h_norm))
        for b, seq in enumerate(mb):
            for i in range(T):
                if doc[b][i + 1] == doc[b][i] and seq[i + 1] != PAD:
                    ce_sum -= log_softmax(logits[b][i])[seq[i + 1]]
                    n_main += 1
            for k in range(1, n_mtp + 1):
                for i in range(T - k):
                    if doc[b][i] == doc[b][i + k + 1] and seq[i + k + 1] != PAD:
                        mtp_sum[k - 1] -= log_softmax(mtp_logits[k - 1][b][i])[seq[i + k + 1]]
                        mtp_n[k - 1] += 1
        for layer, info in routing.items():
            per_seq = len(info["s"]) // m
            for p0 in range(0, m, pool):
                toks = range(p0 * per_seq, (p0 + pool) * per_seq)
                size = len(toks)
                value = 0.0
                for e in range(E):
                    c = sum(1 for t in toks if e in info["sel"][t])
                    if cfg["scoring_func"] == "sigmoid":
                        P_e = sum(info["s"][t][e] / info["s"][t].sum() for t in toks) / size
                    else:
                        P_e = sum(info["s"][t][e] for t in toks) / size
                    value += E / (K * size) * c * P_e
                bal.setdefault(layer, []).append(value)
            z2[layer] = z2.get(layer, 0.0) + sum(
                (math.log(np.exp(z - z.max()).sum()) + z.max()) ** 2 for z in info["z"])
            n_tok[layer] = n_tok.get(layer, 0) + len(info["z"])
            drops[layer] = drops.get(layer, 0) + info["dropped"]
    ce = ce_sum / n_main if n_main else 0.0
    mtp_ce = [s / n if n else 0.0 for s, n in zip(mtp_sum, mtp_n)]
    balance = {l: sum(v) / len(v) for l, v in bal.items()}
    parts = {
        "loss": ce,
        "mtp_ce": mtp_ce,
        "loss_mtp": mtp_lambda / n_mtp * sum(mtp_ce) if n_mtp else 0.0,
        "loss_bal": train["balance_alpha"] * sum(balance.values()),
        "loss_z": train["z_loss_coef"] * sum(z2[l] / n_tok[l] for l in z2),
        "n_main": n_main,
        "n_mtp": mtp_n,
        "balance": [balance[l] for l in sorted(balance)],
        "dropped_pairs": [drops[l] for l in sorted(drops)],
    }
    parts["loss_total"] = parts["loss"] + parts["loss_mtp"] + parts["loss_bal"] + parts["loss_z"]
    return parts, outs
