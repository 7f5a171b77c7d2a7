"""`ultramoe export` / `ultramoe import` against Hugging Face transformers (ctest label interop).

Runs in the pinned virtual environment that `scripts/install-deps.sh --hf` makes (torch,
transformers, safetensors from PyPI). Offline: every model here is made on the spot.

  1. a tiny Pre-LN MoE (MLA with query compression, group-limited sigmoid routing with a trained
     aux-free bias, one MTP module) is trained for a few steps;
  2. exported (f32, sharded), transformers loads it as DeepSeek-V3 and its logits equal `ultramoe
     eval --logits` on the same windows; the MTP module, run from the exported tensors with
     transformers' own decoder layer, equals ultramoe's MTP logits;
  3. AutoTokenizer encodes text to the ids `ultramoe data prepare` writes, and decodes them back;
  4. import of the export is bit-identical; import of the bf16 export evaluates like transformers
     on the bf16 weights;
  5. a folder that transformers itself saves (sharded, rope_parameters, no MTP weights), and a
     DeepSeek-V2 model made by transformers, import and evaluate like transformers;
  6. what DeepSeek-V3 cannot express is refused with the reason.
Prints "N passed, N failed" and exits non-zero on any failure.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import traceback

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

torch.set_num_threads(1)
EOS = 2

# f32 on both sides, different summation orders: agreement to float round-off of O(1) logits
LOGIT_ATOL = 2e-4

MODEL = {
    "vocab_size": 640, "hidden_size": 64, "num_hidden_layers": 2, "first_k_dense_replace": 1,
    "intermediate_size": 96, "moe_intermediate_size": 32, "n_routed_experts": 8, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "topk_method": "noaux_tc", "n_group": 4, "topk_group": 2,
    "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "num_attention_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8, "v_head_dim": 16, "rope_theta": 10000.0, "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6, "num_nextn_predict_layers": 1, "sandwich_norm": False, "init": "small"}
TRAIN = {"steps": 12, "batch_size": 4, "micro_batch_size": 4, "seed": 3, "lr": 0.01, "warmup_steps": 2,
         "decay_steps": 12, "min_lr": 0.001, "aux_free": True, "aux_free_gamma": 0.01, "eval_batches": 1}

PROBE = ("It is a truth universally acknowledged,  that a single man\tin possession of a good fortune,\n"
         "must be in want of a wife.\n\n  Numbers 12345 and 3.14159; unicode: naïve café – “quotes” — "
         "漢字 and an emoji 😀.<|user|> roles <|end|>\nTrailing spaces   \n")


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def run(self, name, fn):
        try:
            detail = fn()
            self.passed += 1
            print(f"[ PASS ] {name}" + (f" ({detail})" if detail else ""), flush=True)
        except Exception:  # report every check, then fail the run
            self.failed += 1
            print(f"[ FAIL ] {name}\n{traceback.format_exc()}", flush=True)


def run(cmd, expect_ok=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def read_shard(path):
    """A token shard: 64-byte header (magic, version, width, count, vocab, sha256), then ids."""
    with open(path, "rb") as f:
        head = f.read(64)
        _, _, width, count, _ = struct.unpack("<8sIIQQ", head[:32])
        data = f.read(count * width)
    fmt = {2: "H", 4: "I"}[width]
    return list(struct.unpack(f"<{count}{fmt}", data))


def load_hf(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def first_doc_len(ids):
    """Positions 0..e of a window see only the first document's tokens (e: first EOS, inclusive),
    so there the document-masked ultramoe forward and a plain causal forward agree."""
    for i, t in enumerate(ids):
        if t == EOS:
            return i + 1
    return len(ids)


def compare_main_logits(hf_model, dump, atol=LOGIT_ATOL):
    ids, ours = dump["input_ids"].long(), dump["logits"]
    B, T1 = ids.shape
    worst, compared = 0.0, 0
    with torch.no_grad():
        for b in range(B):
            n = first_doc_len(ids[b, : T1 - 1].tolist())
            theirs = hf_model(ids[b : b + 1, :n]).logits[0]
            worst = max(worst, (theirs - ours[b, :n]).abs().max().item())
            compared += n
    assert compared >= T1 - 1, f"only {compared} positions compared"
    assert worst < atol, f"max |logit difference| {worst:.3g} >= {atol}"
    return f"{compared} positions, max |logit difference| {worst:.2g}"


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def check_mtp(hf_dir, dump, cfg):
    """MTP depth 1 from the exported tensors: h' = eh_proj [enorm(emb(x_{i+1})); hnorm(h0_i)], the
    decoder layer model.layers.L (run by transformers' own DeepseekV3DecoderLayer, loaded from the
    export with num_hidden_layers = L + 1), shared_head.norm, shared_head.head."""
    L, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    tensors = {}
    index = json.load(open(os.path.join(hf_dir, "model.safetensors.index.json")))["weight_map"]
    for name, file in index.items():
        if name.startswith(f"model.layers.{L}.") or name in ("model.embed_tokens.weight", "lm_head.weight"):
            with safe_open(os.path.join(hf_dir, file), "pt") as f:
                tensors[name] = f.get_tensor(name).float()
    p = f"model.layers.{L}."
    assert torch.equal(tensors[p + "embed_tokens.weight"], tensors["model.embed_tokens.weight"])
    assert torch.equal(tensors[p + "shared_head.head.weight"], tensors["lm_head.weight"])
    main = load_hf(hf_dir)
    host = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager",
                                                num_hidden_layers=L + 1).eval()
    layer, rotary = host.model.layers[L], host.model.rotary_emb
    ids, ours = dump["input_ids"].long(), dump["mtp_logits.1"]
    B, T1 = ids.shape
    worst = 0.0
    with torch.no_grad():
        for b in range(B):
            n = first_doc_len(ids[b, : T1 - 1].tolist()) - 1  # positions i with x_{i+1} in the document
            if n < 1:
                continue
            h0 = main.model(ids[b : b + 1, : n]).last_hidden_state  # final-norm output
            e = main.model.embed_tokens(ids[b : b + 1, 1 : n + 1])
            cat = torch.cat([rms(e, tensors[p + "enorm.weight"], eps), rms(h0, tensors[p + "hnorm.weight"], eps)], -1)
            h = cat @ tensors[p + "eh_proj.weight"].T
            pos = torch.arange(n)[None]
            mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
            h = layer(h, attention_mask=mask, position_ids=pos, position_embeddings=rotary(h, pos))
            if isinstance(h, tuple):
                h = h[0]
            logits = rms(h, tensors[p + "shared_head.norm.weight"], eps) @ tensors[p + "shared_head.head.weight"].T
            worst = max(worst, (logits[0] - ours[b, :n]).abs().max().item())
    assert worst < LOGIT_ATOL, f"MTP: max |logit difference| {worst:.3g}"
    return f"max |logit difference| {worst:.2g}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ultramoe", required=True)
    ap.add_argument("--corpus", required=True, help="text files for the tokenizer and the data", nargs="+")
    ap.add_argument("--keep", help="work in this directory and keep it")
    args = ap.parse_args()
    U = args.ultramoe
    work = args.keep or tempfile.mkdtemp(prefix="ultramoe-hf-")
    os.makedirs(work, exist_ok=True)
    j = lambda *p: os.path.join(work, *p)  # noqa: E731
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, work {work}", flush=True)

    run([U, "data", "prepare", "--input", *args.corpus, "--out", j("data"), "--vocab-size", "600"])
    cfg = {"model": MODEL, "train": TRAIN, "data": {"seq_len": 64}}
    json.dump(cfg, open(j("cfg.json"), "w"))
    run([U, "train", "--config", j("cfg.json"), "--data", j("data"), "--out", j("run"), "--log-every", "100"])
    ck = j("run", "checkpoints", "step_%07d" % TRAIN["steps"])
    run([U, "eval", "--ckpt", ck, "--data", j("data"), "--logits", j("logits.safetensors")])
    dump = load_file(j("logits.safetensors"))
    run([U, "export", "--ckpt", ck, "--out", j("hf32"), "--max-shard-size", "300KB"])
    run([U, "export", "--ckpt", ck, "--out", j("hfbf"), "--dtype", "bf16"])
    c = Checks()

    def export_layout():
        files = os.listdir(j("hf32"))
        shards = [f for f in files if f.startswith("model-") and f.endswith(".safetensors")]
        assert len(shards) > 1 and "model.safetensors.index.json" in files, files
        hfc = json.load(open(j("hf32", "config.json")))
        assert hfc["model_type"] == "deepseek_v3" and hfc["rope_interleave"] is True
        assert (hfc["bos_token_id"], hfc["eos_token_id"], hfc["pad_token_id"]) == (1, 2, 3)
        bias = load_file(os.path.join(j("hf32"), json.load(open(j("hf32", "model.safetensors.index.json")))
                                      ["weight_map"]["model.layers.1.mlp.gate.e_score_correction_bias"]))
        assert bias["model.layers.1.mlp.gate.e_score_correction_bias"].abs().max() > 0, "the bias never moved"
    c.run("export writes a sharded DeepSeek-V3 folder", export_layout)

    c.run("transformers logits equal ultramoe eval's (f32)", lambda: compare_main_logits(load_hf(j("hf32")), dump))
    c.run("the MTP module equals ultramoe's MTP logits", lambda: check_mtp(j("hf32"), dump, MODEL))

    def tokenizer():
        tok = AutoTokenizer.from_pretrained(j("hf32"))
        probe = j("probe.txt")
        open(probe, "w").write(PROBE)
        run([U, "data", "prepare", "--input", probe, "--tokenizer", j("data", "tokenizer.model"),
             "--out", j("probe_data"), "--val-fraction", "0"])
        ours = read_shard(j("probe_data", "train.bin"))
        assert ours[0] == 1 and ours[-1] == 2, ours[:3]
        theirs = tok(PROBE)["input_ids"]
        assert theirs == ours[:-1], f"AutoTokenizer {theirs[:40]}\nultramoe      {ours[:40]}"
        assert tok.decode(theirs, skip_special_tokens=True) == PROBE
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 3)
    c.run("AutoTokenizer encodes and decodes like the ultramoe tokenizer", tokenizer)

    def round_trip():
        run([U, "import", "--hf", j("hf32"), "--out", j("back32")])
        with open(j("back32", "model.safetensors"), "rb") as a, open(os.path.join(ck, "model.safetensors"), "rb") as b:
            assert a.read() == b.read(), "model.safetensors differs after export -> import"
        assert json.load(open(j("back32", "ultramoe.json")))["model"] == json.load(open(os.path.join(ck, "ultramoe.json")))["model"]
    c.run("export -> import is bit-identical in f32", round_trip)

    def bf16():
        run([U, "import", "--hf", j("hfbf"), "--out", j("backbf")])
        run([U, "eval", "--ckpt", j("backbf"), "--data", j("data"), "--logits", j("logits_bf.safetensors")])
        return compare_main_logits(load_hf(j("hfbf")), load_file(j("logits_bf.safetensors")))
    c.run("a bf16 export imports and evaluates like transformers on the bf16 weights", bf16)

    def resume_from_import():
        os.makedirs(j("ft", "checkpoints"))
        run([U, "import", "--hf", j("hf32"), "--out", j("ft", "checkpoints", "step_0000000")])
        r = run([U, "train", "--config", j("cfg.json"), "--data", j("data"), "--out", j("ft"), "--resume",
                 "--log-every", "100", "--set", "train.steps=2"])
        assert "resumed from" in r.stdout, r.stdout
    c.run("train --resume continues from an imported checkpoint", resume_from_import)

    def transformers_saved():
        # transformers' own writer: its key order, rope_parameters, no MTP weights, small shards
        load_hf(j("hf32")).save_pretrained(j("saved"), max_shard_size="200KB")
        nomtp = dict(cfg, model=dict(MODEL, num_nextn_predict_layers=0))
        json.dump(nomtp, open(j("cfg_nomtp.json"), "w"))
        r = run([U, "import", "--hf", j("saved"), "--out", j("from_saved"), "--config", j("cfg_nomtp.json")])
        assert "MTP" in r.stdout, r.stdout  # says it imported without the MTP module
        run([U, "eval", "--ckpt", j("from_saved"), "--data", j("data"), "--logits", j("logits_saved.safetensors")])
        again = load_file(j("logits_saved.safetensors"))
        assert torch.equal(again["logits"], dump["logits"]), "main logits changed through transformers' files"
    c.run("a folder saved by transformers imports (sharded, rope_parameters)", transformers_saved)

    def deepseek_v2():
        v2 = transformers.DeepseekV2Config(
            vocab_size=640, hidden_size=48, intermediate_size=64, moe_intermediate_size=24, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, n_shared_experts=2, n_routed_experts=6,
            num_experts_per_tok=2, routed_scaling_factor=1.5, kv_lora_rank=16, q_lora_rank=None,
            qk_rope_head_dim=8, v_head_dim=12, qk_nope_head_dim=12, first_k_dense_replace=1,
            topk_method="greedy", n_group=1, topk_group=1, max_position_embeddings=128, rms_norm_eps=1e-6)
        torch.manual_seed(0)
        m = transformers.DeepseekV2ForCausalLM(v2).eval()
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0, 0.08)
        m.save_pretrained(j("v2"), max_shard_size="100KB")
        run([U, "import", "--hf", j("v2"), "--out", j("from_v2")])
        rc = json.load(open(j("from_v2", "ultramoe.json")))
        assert rc["model"]["scoring_func"] == "softmax" and rc["model"]["norm_topk_prob"] is False
        run([U, "eval", "--ckpt", j("from_v2"), "--data", j("data"), "--logits", j("logits_v2.safetensors")])
        return compare_main_logits(m, load_file(j("logits_v2.safetensors")))
    c.run("a DeepSeek-V2 model imports and evaluates like transformers", deepseek_v2)

    def refusals():
        dssn = dict(cfg, model=dict(MODEL, sandwich_norm=True), train=dict(TRAIN, steps=1))
        json.dump(dssn, open(j("cfg_dssn.json"), "w"))
        run([U, "train", "--config", j("cfg_dssn.json"), "--data", j("data"), "--out", j("dssn")])
        r = run([U, "export", "--ckpt", j("dssn", "checkpoints", "step_0000001"), "--out", j("no")], expect_ok=False)
        assert r.returncode != 0 and "ultramoe: error: [export]" in r.stderr and "sandwich norm" in r.stderr, r.stderr
        assert not os.path.exists(j("no")) and not os.path.exists(j("no.tmp"))
        yarn = j("yarn")
        shutil.copytree(j("hf32"), yarn)
        hc = json.load(open(os.path.join(yarn, "config.json")))
        hc["rope_scaling"] = {"type": "yarn", "factor": 40}
        json.dump(hc, open(os.path.join(yarn, "config.json"), "w"))
        r = run([U, "import", "--hf", yarn, "--out", j("no")], expect_ok=False)
        assert r.returncode != 0 and "YaRN" in r.stderr, r.stderr
        r = run([U, "import", "--hf", j("hf32"), "--out", j("back32")], expect_ok=False)
        assert r.returncode != 0 and "already exists" in r.stderr, r.stderr
    c.run("what DeepSeek-V3 cannot express is refused, naming it", refusals)

    print(f"{c.passed} passed, {c.failed} failed", flush=True)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if c.failed else 0


if __name__ == "__main__":
    sys.exit(main())
