"""Run-config parsing for the PyTorch reference (design.md 1.1, 1.10 and section 8).

What it is: the `model`, `train` and `data` sections of a project config file, read strictly
(unknown keys and wrong types are errors, as design.md 1.1 and 8 require), with the defaults docs/design.md
states. What it is not: the C++ config loader; keys that only matter to the C++ trainer
(checkpointing, eval, spikes, parallel) are accepted and ignored here.
"""
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Optional

REQUIRED = object()

# name: (allowed python types, default). Types: int is accepted where float is expected.
MODEL_KEYS = {
    # geometry (required)
    "vocab_size": ((int,), REQUIRED),
    "hidden_size": ((int,), REQUIRED),
    "num_hidden_layers": ((int,), REQUIRED),
    "first_k_dense_replace": ((int,), REQUIRED),
    "intermediate_size": ((int,), REQUIRED),
    "moe_intermediate_size": ((int,), REQUIRED),
    "n_routed_experts": ((int,), REQUIRED),
    "n_shared_experts": ((int,), REQUIRED),
    "num_experts_per_tok": ((int,), REQUIRED),
    "num_attention_heads": ((int,), REQUIRED),
    "q_lora_rank": ((int, type(None)), REQUIRED),
    "kv_lora_rank": ((int,), REQUIRED),
    "qk_nope_head_dim": ((int,), REQUIRED),
    "qk_rope_head_dim": ((int,), REQUIRED),
    "v_head_dim": ((int,), REQUIRED),
    "num_nextn_predict_layers": ((int,), REQUIRED),
    # routing / numerics (docs/design.md names no default for these; our configs spell them all out)
    "n_group": ((int,), 1),
    "topk_group": ((int,), 1),
    "topk_method": ((str,), "greedy"),
    "scoring_func": ((str,), "sigmoid"),
    "norm_topk_prob": ((bool,), True),
    "routed_scaling_factor": ((float,), 1.0),
    "rope_theta": ((float,), 10000.0),
    "rope_scaling": ((dict, type(None)), None),
    "max_position_embeddings": ((int,), 4096),
    "rms_norm_eps": ((float,), 1e-6),
    "sandwich_norm": ((bool,), True),
    "tie_word_embeddings": ((bool,), False),
    "initializer_range": ((float,), 0.006),
    "hidden_act": ((str,), "silu"),
    "attention_bias": ((bool,), False),
    # ultramoe additions (design.md 1.1)
    "init": ((str,), "tiny"),
    "init_embedding_std": ((float,), 0.5),
    "dssn_c_attn": ((float, str), 0.283),
    "dssn_c_ffn": ((float, str), 0.432),
    "dssn_depth_scaled": ((bool,), True),
    "moe_router_scale": ((bool,), False),
}

TRAIN_KEYS = {
    "steps": ((int,), REQUIRED),
    "batch_size": ((int,), REQUIRED),
    "micro_batch_size": ((int,), None),  # None = batch_size
    "seed": ((int,), 0),
    "lr": ((float,), REQUIRED),
    "min_lr": ((float,), 0.0),
    "lr_schedule": ((str,), "constant"),
    "warmup_steps": ((int,), 0),
    "decay_steps": ((int,), 0),
    "decay_start": ((int,), 0),
    "weight_decay": ((float,), 0.1),
    "weight_decay_norms": ((bool,), False),
    "adam_beta1": ((float,), 0.9),
    "adam_beta2": ((float,), 0.95),
    "adam_eps": ((float,), 1e-8),
    "grad_clip": ((float,), 1.0),
    "mtp_lambda": ((float, list), 0.3),
    "balance_scope": ((str,), "micro_batch"),
    "balance_alpha": ((float,), 0.01),
    "aux_free": ((bool,), False),
    "aux_free_gamma": ((float, list), 1e-3),
    "z_loss_coef": ((float,), 0.0),
    "capacity_factor": ((float,), 0.0),
    # accepted, no effect on the math the reference computes
    "checkpoint_every": ((int,), 0),
    "keep_checkpoints": ((int,), 0),
    "eval_every": ((int,), 0),
    "eval_batches": ((int,), 0),
    "spike_window": ((int,), 100),
    "grad_spike_factor": ((float,), 2.0),
    "loss_spike_factor": ((float,), 1.05),
    "recompute": ((list,), []),
    "imbalance_devices": ((int,), 1),
}

DATA_KEYS = {
    "seq_len": ((int,), REQUIRED),
    "path": ((str, type(None)), None),
}

PARALLEL_KEYS = {
    "ep": ((int,), 1),
    "zero": ((int,), 0),
    "ranks_per_node": ((int,), 1),
    "dp_attention_balance": ((bool,), False),
}


class ConfigError(ValueError):
    pass


def _read_section(name, raw, spec):
    if not isinstance(raw, dict):
        raise ConfigError(f"[config] section '{name}' must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise ConfigError(f"[config] unknown key {name}.{unknown[0]}")
    out = {}
    for key, (types, default) in spec.items():
        if key not in raw:
            if default is REQUIRED:
                raise ConfigError(f"[config] missing required key {name}.{key}")
            out[key] = default
            continue
        value = raw[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"[config] {name}.{key}: wrong type {type(value).__name__} "
                              f"(value {value!r})")
        out[key] = value
    return out


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    first_k_dense_replace: int
    intermediate_size: int
    moe_intermediate_size: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    num_attention_heads: int
    q_lora_rank: Optional[int]
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    num_nextn_predict_layers: int
    n_group: int
    topk_group: int
    topk_method: str
    scoring_func: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    rope_theta: float
    rope_scaling: Optional[dict]
    max_position_embeddings: int
    rms_norm_eps: float
    sandwich_norm: bool
    tie_word_embeddings: bool
    initializer_range: float
    hidden_act: str
    attention_bias: bool
    init: str
    init_embedding_std: float
    dssn_c_attn: Any
    dssn_c_ffn: Any
    dssn_depth_scaled: bool
    moe_router_scale: bool

    @property
    def group_limited(self):
        # design.md 1.1: noaux_tc is read as group_limited with the aux-free bias on.
        return self.topk_method in ("group_limited", "noaux_tc")

    def validate(self):
        def bad(msg):
            raise ConfigError(f"[config] model: {msg}")
        if self.topk_method not in ("greedy", "group_limited", "noaux_tc", "moge"):
            bad(f"topk_method {self.topk_method!r}")
        if self.scoring_func not in ("sigmoid", "softmax"):
            bad(f"scoring_func {self.scoring_func!r}")
        if self.hidden_act != "silu":
            bad(f"hidden_act {self.hidden_act!r} (silu only)")
        if self.attention_bias:
            bad("attention_bias must be false")
        if self.rope_scaling is not None:
            bad("rope_scaling (YaRN) is not implemented by the reference")
        if self.init not in ("tiny", "small", "small_scaled", "fixed"):
            bad(f"init {self.init!r}")
        for c in (self.dssn_c_attn, self.dssn_c_ffn):
            if not isinstance(c, float):
                bad(f"dssn_c {c!r}: only numbers are supported by the reference ('auto' is not)")
        if self.qk_rope_head_dim % 2:
            bad("qk_rope_head_dim must be even (rotate-half)")
        E, K = self.n_routed_experts, self.num_experts_per_tok
        if not 1 <= K <= E:
            bad(f"num_experts_per_tok {K} with {E} experts")
        if self.topk_method == "moge":
            if self.scoring_func != "softmax" or self.routed_scaling_factor != 1.0:
                bad("moge requires softmax scoring and routed_scaling_factor 1")
            if self.norm_topk_prob:
                bad("moge with norm_topk_prob is rejected")
            if E % self.n_group or K % self.n_group:
                bad(f"moge: n_group {self.n_group} must divide E={E} and K={K}")
        if self.group_limited:
            if E % self.n_group or not 1 <= self.topk_group <= self.n_group:
                bad(f"group_limited: n_group {self.n_group}, topk_group {self.topk_group}, E {E}")
            if K > self.topk_group * (E // self.n_group):
                bad("group_limited: K exceeds the experts of the kept groups")


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    micro_batch_size: int
    seed: int
    lr: float
    min_lr: float
    lr_schedule: str
    warmup_steps: int
    decay_steps: int
    decay_start: int
    weight_decay: float
    weight_decay_norms: bool
    adam_beta1: float
    adam_beta2: float
    adam_eps: float
    grad_clip: float
    mtp_lambda: Any
    balance_scope: str
    balance_alpha: float
    aux_free: bool
    aux_free_gamma: Any
    z_loss_coef: float
    capacity_factor: float

    def validate(self):
        def bad(msg):
            raise ConfigError(f"[config] train: {msg}")
        if self.batch_size % self.micro_batch_size:
            bad(f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size}")
        if self.lr_schedule not in ("constant", "cosine", "wsd"):
            bad(f"lr_schedule {self.lr_schedule!r}")
        if self.balance_scope not in ("sequence", "micro_batch", "ep_group", "global"):
            bad(f"balance_scope {self.balance_scope!r}")
        if self.lr_schedule == "cosine" and self.decay_steps <= self.warmup_steps:
            bad("cosine needs decay_steps > warmup_steps")
        for key in ("mtp_lambda", "aux_free_gamma"):
            v = getattr(self, key)
            if isinstance(v, list):
                if not v or not all(isinstance(p, list) and len(p) == 2 for p in v):
                    bad(f"{key} must be a number or [[step, value], ...]")


@dataclass
class RunConfig:
    model: ModelConfig
    train: TrainConfig
    seq_len: int
    raw: dict  # the config as read (for the golden JSON)


def parse_config(raw):
    sections = {"model", "train", "data", "parallel"}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"[config] unknown section '{unknown[0]}'")
    model = _read_section("model", raw.get("model", {}), MODEL_KEYS)
    train = _read_section("train", raw.get("train", {}), TRAIN_KEYS)
    data = _read_section("data", raw.get("data", {}), DATA_KEYS)
    _read_section("parallel", raw.get("parallel", {}), PARALLEL_KEYS)
    if train["micro_batch_size"] is None:
        train["micro_batch_size"] = train["batch_size"]
    mc = ModelConfig(**model)
    tc = TrainConfig(**{f.name: train[f.name] for f in fields(TrainConfig)})
    mc.validate()
    tc.validate()
    return RunConfig(mc, tc, data["seq_len"], raw)


def load_config(path):
    with open(path) as f:
        return parse_config(json.load(f))


def schedule_value(value, step):
    """A number, or [[step, value], ...] piecewise constant, each value applying from its step on
    (design.md 1.10). Before the first listed step the first value applies."""
    if not isinstance(value, list):
        return float(value)
    out = float(value[0][1])
    for s, v in sorted(value, key=lambda p: p[0]):
        if step >= s:
            out = float(v)
    return out


def capacity(capacity_factor, tokens_local, k, n_experts):
    """design.md 1.5/1.10: C = ceil(x - 1e-9), x = cf * T_local * K / E in double."""
    return int(math.ceil(capacity_factor * tokens_local * k / n_experts - 1e-9))
