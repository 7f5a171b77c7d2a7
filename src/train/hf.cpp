#include "train/hf.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "core/safetensors.h"
#include "model/params.h"
#include "train/checkpoint.h"
#include "train/run_config.h"

namespace um {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void sync_path(const std::string& path, bool directory, const char* origin) {
  const int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  UM_CHECK(fd >= 0, origin, "cannot open ", path, " to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  UM_CHECK(rc == 0, origin, "fsync of ", path, " failed: ", std::strerror(err));
}

void write_text_file(const std::string& path, const std::string& text, const char* origin) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  UM_CHECK(fd >= 0, origin, "cannot create ", path, ": ", std::strerror(errno));
  const char* c = text.data();
  size_t n = text.size();
  while (n > 0) {
    const ssize_t k = ::write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const int err = errno;
      ::close(fd);
      fail(origin, "writing ", path, " failed: ", std::strerror(err));
    }
    c += k;
    n -= size_t(k);
  }
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  UM_CHECK(ok, origin, "fsync of ", path, " failed: ", std::strerror(err));
}

// A folder is created as DIR.tmp and renamed into place when complete, so a failure never
// leaves a half-written DIR; an existing DIR is never touched.
std::string begin_output_dir(const std::string& out, const char* origin) {
  UM_CHECK(!out.empty(), origin, "no output directory");
  UM_CHECK(!fs::exists(out), origin, out, " already exists; choose a new directory (nothing was overwritten)");
  const fs::path parent = fs::absolute(fs::path(out)).parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  UM_CHECK(!ec, origin, "cannot create ", parent.string(), ": ", ec.message());
  const std::string tmp = out + ".tmp";
  fs::remove_all(tmp, ec);
  fs::create_directory(tmp, ec);
  UM_CHECK(!ec, origin, "cannot create ", tmp, ": ", ec.message());
  return tmp;
}

void finish_output_dir(const std::string& tmp, const std::string& out, const char* origin) {
  sync_path(tmp, true, origin);
  std::error_code ec;
  fs::rename(tmp, out, ec);
  UM_CHECK(!ec, origin, "cannot rename ", tmp, " to ", out, ": ", ec.message());
  sync_path(fs::absolute(fs::path(out)).parent_path().string(), true, origin);
}

// Tensors written in shards of at most max_bytes (a larger tensor gets a shard of its own),
// each shard filled, written and released before the next, so memory holds one shard.
class ShardedWriter {
 public:
  struct Item {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t bytes() const { return uint64_t(numel_of(shape)) * dtype_size(dtype); }
  };
  // fill(item, dst): writes item's bytes to dst.
  using Fill = std::function<void(const Item&, void*)>;

  void add(std::string name, DType dtype, Shape shape) { items_.push_back({std::move(name), dtype, std::move(shape)}); }

  // Writes base.safetensors (one shard, when !always_index) or base-0000i-of-0000N.safetensors
  // plus base.safetensors.index.json. Returns the file names.
  std::vector<std::string> write(const std::string& dir, const std::string& base, uint64_t max_bytes,
                                 bool always_index, const Fill& fill, const std::map<std::string, std::string>& meta) {
    std::vector<int> shard(items_.size());
    int n_shards = 0;
    uint64_t in_shard = 0;
    for (size_t i = 0; i < items_.size(); ++i) {
      const uint64_t b = items_[i].bytes();
      if (n_shards == 0 || (in_shard > 0 && in_shard + b > max_bytes)) {
        ++n_shards;
        in_shard = 0;
      }
      shard[i] = n_shards - 1;
      in_shard += b;
    }
    const bool indexed = always_index || n_shards > 1;
    auto file_of = [&](int s) {
      return indexed ? shard_file_name(base, s + 1, n_shards) : base + ".safetensors";
    };
    std::map<std::string, std::string> weight_map;
    uint64_t total = 0;
    std::vector<std::string> files;
    for (int s = 0; s < n_shards; ++s) {
      std::vector<std::vector<char>> data;
      SafetensorsWriter w;
      for (size_t i = 0; i < items_.size(); ++i) {
        if (shard[i] != s) continue;
        data.emplace_back(items_[i].bytes());
        fill(items_[i], data.back().data());
        w.add(items_[i].name, items_[i].dtype, items_[i].shape, data.back().data());
        weight_map[items_[i].name] = file_of(s);
        total += items_[i].bytes();
      }
      for (const auto& [k, v] : meta) w.set_metadata(k, v);
      w.write(dir + "/" + file_of(s), true);
      files.push_back(file_of(s));
    }
    if (indexed) {
      write_safetensors_index(dir + "/" + base + ".safetensors.index.json", weight_map, total, true);
      files.push_back(base + ".safetensors.index.json");
    }
    return files;
  }

 private:
  std::vector<Item> items_;
};

void convert(const SafetensorsFile& f, const std::string& name, const Shape& shape, float* dst) {
  f.read_into<float>(name, dst, shape);
}

void store(const float* src, int64_t n, DType dtype, void* dst) {
  if (dtype == DType::f32) {
    std::memcpy(dst, src, size_t(n) * 4);
  } else {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) d[i] = bf16::from_float(src[i]).bits;
  }
}

// Rows of a (rows, cols) matrix reordered: out row r = in row perm[r] (or the inverse).
void permute_rows(const float* in, float* out, const std::vector<int64_t>& perm, int64_t cols, bool inverse) {
  for (size_t r = 0; r < perm.size(); ++r) {
    const int64_t a = int64_t(r), b = perm[r];
    if (inverse) std::memcpy(out + b * cols, in + a * cols, size_t(cols) * 4);
    else std::memcpy(out + a * cols, in + b * cols, size_t(cols) * 4);
  }
}

const char* kExportedFrom = "ultramoe.json";  // the run config, beside the HF files

}  // namespace

uint64_t parse_byte_size(const std::string& s, const std::string& where) {
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  double v = 0;
  try {
    v = i > 0 ? std::stod(s.substr(0, i)) : -1;
  } catch (...) {
    v = -1;
  }
  std::string unit = s.substr(i);
  for (char& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "KB") scale = 1e3;
  else if (unit == "MB") scale = 1e6;
  else if (unit == "GB") scale = 1e9;
  else if (unit == "KIB") scale = 1024.0;
  else if (unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "GIB") scale = 1024.0 * 1024 * 1024;
  UM_CHECK(v > 0 && scale > 0, "cli", where, ": expected a size such as 5GB, 200MB or 64KB, got '", s, "'");
  return uint64_t(v * scale);
}

std::vector<std::string> deepseek_v3_blockers(const ModelConfig& c) {
  std::vector<std::string> why;
  if (c.sandwich_norm)
    why.push_back("sandwich norm (DSSN: post-attention and post-FFN norms; DeepSeek-V3 layers are Pre-LN — "
                  "train with model.sandwich_norm=false to export)");
  if (c.topk_method == TopkMethod::moge) why.push_back("MoGE routing (topk_method moge)");
  if (c.n_routed_experts > 0 && c.scoring_func != ScoreFunc::sigmoid)
    why.push_back("softmax router scores (DeepSeek-V3 scores with a sigmoid)");
  if (c.moe_router_scale) why.push_back("the learned per-expert router scale (moe_router_scale)");
  if (!c.rope_scaling.is_null()) why.push_back("rope_scaling");
  if (c.n_routed_experts > 0) {
    const int64_t groups = c.topk_method == TopkMethod::group_limited ? c.n_group : 1;
    if (c.n_routed_experts / groups < 2)
      why.push_back("groups of one expert (DeepSeek-V3 ranks a group by its two best experts)");
  }
  if (c.n_routed_experts > 0 && c.n_shared_experts == 0)
    why.push_back("no shared expert (DeepSeek-V3 layers always have one)");
  if (c.n_routed_experts == 0) why.push_back("a dense model (DeepSeek-V3 is a MoE)");
  return why;
}

json deepseek_v3_config(const ModelConfig& c, DType dtype) {
  const bool grouped = c.topk_method == TopkMethod::group_limited;
  const std::string dt = dtype == DType::bf16 ? "bfloat16" : "float32";
  json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_attention_heads;  // MLA: every head has its own K/V
  j["n_shared_experts"] = c.n_shared_experts;
  j["n_routed_experts"] = c.n_routed_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["topk_method"] = "noaux_tc";
  j["scoring_func"] = "sigmoid";
  j["n_group"] = grouped ? c.n_group : 1;
  j["topk_group"] = grouped ? c.topk_group : 1;
  j["first_k_dense_replace"] = c.first_k_dense_replace;
  j["moe_layer_freq"] = 1;
  j["q_lora_rank"] = c.q_lora_rank > 0 ? json(c.q_lora_rank) : json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["rope_interleave"] = true;  // the rope rows are written interleaved, as DeepSeek's files are
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["bos_token_id"] = Tokenizer::kBosId;
  j["eos_token_id"] = Tokenizer::kEosId;
  j["pad_token_id"] = Tokenizer::kPadId;
  j["use_cache"] = true;
  j["torch_dtype"] = dt;  // transformers 4.x
  j["dtype"] = dt;        // transformers 5.x
  return j;
}

bool hf_rope_interleaved(const json& hf) {
  const std::string type = hf.value("model_type", "");
  if (type == "ultramoe") return false;
  if (type == "deepseek_v3" && hf.contains("rope_interleave") && hf["rope_interleave"].is_boolean())
    return hf["rope_interleave"].get<bool>();
  return true;
}

ModelConfig model_config_from_hf(const json& hf, const std::string& where) {
  UM_CHECK(hf.is_object(), "import", where, ": not a JSON object");
  const std::string type = hf.value("model_type", "");
  if (type == "ultramoe") return parse_model_config(hf, where);
  UM_CHECK(type == "deepseek_v3" || type == "deepseek_v2", "import", where, ": model_type \"", type,
           "\" is not supported (deepseek_v3, deepseek_v2, ultramoe)");
  const bool v3 = type == "deepseek_v3";
  auto num = [&](const char* k) -> const json& {
    UM_CHECK(hf.contains(k) && hf[k].is_number(), "import", where, ": ", k, " is missing or not a number");
    return hf[k];
  };
  auto opt_int = [&](const char* k, int64_t fallback) -> int64_t {
    if (!hf.contains(k) || hf[k].is_null()) return fallback;
    UM_CHECK(hf[k].is_number_integer(), "import", where, ": ", k, " is not an integer");
    return hf[k].get<int64_t>();
  };
  // refuse what the model would silently compute differently
  if (hf.contains("rope_scaling") && !hf["rope_scaling"].is_null())
    fail("import", where, ": rope_scaling ", hf["rope_scaling"].dump(), " (YaRN) is not implemented; only "
         "plain RoPE models can be imported");
  if (hf.contains("rope_parameters") && hf["rope_parameters"].is_object()) {
    const std::string rt = hf["rope_parameters"].value("rope_type", "default");
    UM_CHECK(rt == "default", "import", where, ": rope_parameters.rope_type \"", rt,
             "\" is not implemented; only plain RoPE models can be imported");
  }
  UM_CHECK(hf.value("hidden_act", std::string("silu")) == "silu", "import", where, ": hidden_act must be silu");
  UM_CHECK(!hf.value("attention_bias", false), "import", where, ": attention_bias must be false");
  UM_CHECK(!hf.value("mlp_bias", false), "import", where, ": mlp_bias must be false");
  UM_CHECK(opt_int("moe_layer_freq", 1) == 1, "import", where, ": moe_layer_freq ", opt_int("moe_layer_freq", 1),
           " is not supported (every layer after first_k_dense_replace is MoE)");
  const int64_t H = num("num_attention_heads").get<int64_t>();
  const int64_t kvh = opt_int("num_key_value_heads", H);
  UM_CHECK(kvh == H, "import", where, ": num_key_value_heads ", kvh, " differs from num_attention_heads ", H,
           " (MLA expands K/V per head)");

  json m = json::object();
  for (const char* k : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                        "num_experts_per_tok", "moe_intermediate_size"})
    m[k] = num(k);
  m["intermediate_size"] = opt_int("intermediate_size", 0);
  m["first_k_dense_replace"] = opt_int("first_k_dense_replace", 0);
  m["n_shared_experts"] = opt_int("n_shared_experts", 0);
  m["q_lora_rank"] = opt_int("q_lora_rank", 0);
  m["max_position_embeddings"] = opt_int("max_position_embeddings", 4096);
  m["num_nextn_predict_layers"] = opt_int("num_nextn_predict_layers", 0);
  m["rms_norm_eps"] = hf.value("rms_norm_eps", 1e-6);
  double theta = hf.value("rope_theta", 10000.0);
  if (hf.contains("rope_parameters") && hf["rope_parameters"].is_object())
    theta = hf["rope_parameters"].value("rope_theta", theta);
  m["rope_theta"] = theta;
  m["tie_word_embeddings"] = hf.value("tie_word_embeddings", false);
  if (hf.contains("initializer_range") && hf["initializer_range"].is_number())
    m["initializer_range"] = hf["initializer_range"];
  m["sandwich_norm"] = false;
  const int64_t K = m["num_experts_per_tok"].get<int64_t>();
  const int64_t n_group = opt_int("n_group", 1), topk_group = opt_int("topk_group", n_group);
  const double scaling = hf.value("routed_scaling_factor", 1.0);
  m["routed_scaling_factor"] = scaling;
  if (v3) {
    // DeepSeek-V3: sigmoid scores plus the correction bias, group-limited, always
    const std::string sf = hf.value("scoring_func", std::string("sigmoid"));
    UM_CHECK(sf == "sigmoid", "import", where, ": scoring_func \"", sf, "\" (DeepSeek-V3 scores with sigmoid)");
    const std::string tm = hf.value("topk_method", std::string("noaux_tc"));
    UM_CHECK(tm == "noaux_tc", "import", where, ": topk_method \"", tm, "\" (DeepSeek-V3 routes with noaux_tc)");
    m["scoring_func"] = "sigmoid";
    m["topk_method"] = "noaux_tc";
    m["n_group"] = n_group;
    m["topk_group"] = topk_group;
    m["norm_topk_prob"] = hf.value("norm_topk_prob", true);
  } else {
    // DeepSeek-V2: softmax scores, no bias; its group-limited greedy ranks groups by their best
    // score, which the model does not implement
    const std::string sf = hf.value("scoring_func", std::string("softmax"));
    UM_CHECK(sf == "softmax", "import", where, ": scoring_func \"", sf, "\" with model_type deepseek_v2");
    const std::string tm = hf.value("topk_method", std::string("greedy"));
    UM_CHECK(tm == "greedy" || (tm == "group_limited_greedy" && topk_group == n_group), "import", where,
             ": topk_method \"", tm, "\" with n_group ", n_group, ", topk_group ", topk_group,
             " ranks groups by their best expert, which is not implemented (greedy, or topk_group = n_group)");
    const bool norm = hf.value("norm_topk_prob", false);
    UM_CHECK(!(norm && K > 1), "import", where, ": norm_topk_prob true with model_type deepseek_v2 is "
             "ambiguous (implementations differ on whether routed_scaling_factor then applies); not imported");
    m["scoring_func"] = "softmax";
    m["topk_method"] = "greedy";
    m["norm_topk_prob"] = false;
  }
  return parse_model_config(m, where);
}

std::vector<int64_t> rope_row_permutation(const std::string& name, const ModelConfig& c) {
  const int64_t d = c.qk_rope_head_dim, half = d / 2;
  auto interleave = [&](std::vector<int64_t>& perm, int64_t base) {
    for (int64_t j = 0; j < half; ++j) {
      perm[base + 2 * j] = base + j;
      perm[base + 2 * j + 1] = base + j + half;
    }
  };
  std::vector<int64_t> perm;
  if (ends_with(name, ".self_attn.q_b_proj.weight") || ends_with(name, ".self_attn.q_proj.weight")) {
    const int64_t qk = c.qk_head_dim(), H = c.num_attention_heads;
    perm.resize(H * qk);
    for (int64_t r = 0; r < H * qk; ++r) perm[r] = r;
    for (int64_t h = 0; h < H; ++h) interleave(perm, h * qk + c.qk_nope_head_dim);
  } else if (ends_with(name, ".self_attn.kv_a_proj_with_mqa.weight")) {
    perm.resize(c.kv_lora_rank + d);
    for (int64_t r = 0; r < int64_t(perm.size()); ++r) perm[r] = r;
    interleave(perm, c.kv_lora_rank);
  }
  return perm;
}

std::string hf_tokenizer_json(const Tokenizer& tok) {
  using Kind = Tokenizer::PieceKind;
  const int32_t n = int32_t(tok.vocab_size());
  json vocab = json::object();
  std::map<std::string, int32_t> id_of;
  json added = json::array();
  for (int32_t i = 0; i < n; ++i) {
    const std::string p = tok.piece(i);
    vocab[p] = i;
    id_of[p] = i;
    const Kind k = tok.piece_kind(i);
    if (k == Kind::control || k == Kind::unknown || k == Kind::user_defined)
      added.push_back({{"id", i}, {"content", p}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", k != Kind::user_defined}});
  }
  // SentencePiece BPE merges the adjacent pair whose union is the best-scoring piece; as merge
  // rules: every split of a piece into two normal pieces, the pieces ordered by score
  std::vector<std::tuple<float, int32_t, int32_t, int32_t>> merges;  // -score, piece, left, right
  for (int32_t i = 0; i < n; ++i) {
    if (tok.piece_kind(i) != Kind::normal) continue;
    const std::string p = tok.piece(i);
    for (size_t cut = 1; cut < p.size(); ++cut) {
      if ((static_cast<unsigned char>(p[cut]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      auto l = id_of.find(p.substr(0, cut)), r = id_of.find(p.substr(cut));
      if (l == id_of.end() || r == id_of.end()) continue;
      if (tok.piece_kind(l->second) != Kind::normal || tok.piece_kind(r->second) != Kind::normal) continue;
      merges.emplace_back(-tok.piece_score(i), i, l->second, r->second);
    }
  }
  std::sort(merges.begin(), merges.end());
  json merge_list = json::array();
  for (const auto& [score, piece, l, r] : merges) {
    const std::string a = tok.piece(l), b = tok.piece(r);
    UM_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos, "export",
             "tokenizer piece with a space cannot be written as a merge rule");
    merge_list.push_back(a + " " + b);
  }
  const std::string bos = tok.piece(Tokenizer::kBosId);
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  // identity normalisation and no dummy prefix: only spaces become U+2581, as SentencePiece shows them
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}};
  j["pre_tokenizer"] = nullptr;
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"pair",
       {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
        {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
      {"special_tokens", {{bos, {{"id", bos}, {"ids", {Tokenizer::kBosId}}, {"tokens", {bos}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders",
                   {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                    {{"type", "ByteFallback"}},
                    {{"type", "Fuse"}}}}};
  j["model"] = {{"type", "BPE"},           {"dropout", nullptr},        {"unk_token", tok.piece(Tokenizer::kUnkId)},
                {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                {"fuse_unk", true},        {"byte_fallback", true},     {"ignore_merges", false},
                {"vocab", vocab},          {"merges", merge_list}};
  return j.dump() + "\n";
}

json export_hf(const ExportOptions& o) {
  UM_CHECK(o.dtype == DType::f32 || o.dtype == DType::bf16, "export", "--dtype must be f32 or bf16");
  const RunConfig rc = read_checkpoint_config(o.ckpt);
  const ModelConfig& c = rc.model;
  const std::vector<std::string> why = deepseek_v3_blockers(c);
  if (!why.empty()) {
    std::string all;
    for (const std::string& w : why) all += (all.empty() ? "" : "; ") + w;
    fail("export", o.ckpt, " cannot be written as DeepSeek-V3: ", all);
  }
  const SafetensorsSet src(o.ckpt, "model");
  const ParamTable table = build_param_table(c);
  for (const ParamInfo& p : table.params)
    UM_CHECK(src.has(p.name) && src.entry(p.name).shape == p.shape, "export", src.describe(), ": tensor ", p.name,
             src.has(p.name) ? " has the wrong shape" : " is missing");
  const bool use_bias = rc.train.aux_free || c.aux_free_bias;
  const std::string tmp = begin_output_dir(o.out, "export");

  try {
    // tensor -> (source tensor, rope permutation): the table's tensors, then the MTP copies
    struct Source {
      std::string from;
      std::vector<int64_t> perm;
      bool zeros = false;
    };
    std::map<std::string, Source> sources;
    ShardedWriter writer;
    for (const ParamInfo& p : table.params) {
      writer.add(p.name, o.dtype, p.shape);
      sources[p.name] = {p.name, rope_row_permutation(p.name, c)};
    }
    for (const BufferInfo& b : table.buffers) {
      writer.add(b.name, DType::f32, {b.numel});  // the correction bias stays f32, like DeepSeek's
      sources[b.name] = {b.name, {}, !use_bias};
    }
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    for (int64_t k = 1; k <= c.num_nextn_predict_layers; ++k) {
      const std::string pre = "model.layers." + std::to_string(c.num_hidden_layers + k - 1) + ".";
      writer.add(pre + "embed_tokens.weight", o.dtype, {c.vocab_size, c.hidden_size});
      sources[pre + "embed_tokens.weight"] = {"model.embed_tokens.weight", {}};
      writer.add(pre + "shared_head.head.weight", o.dtype, {c.vocab_size, c.hidden_size});
      sources[pre + "shared_head.head.weight"] = {head, {}};
    }
    std::vector<float> a, b;
    int64_t n_tensors = 0;
    uint64_t n_bytes = 0;
    auto fill = [&](const ShardedWriter::Item& it, void* dst) {
      const Source& s = sources.at(it.name);
      const int64_t n = numel_of(it.shape);
      a.resize(size_t(n));
      if (s.zeros) std::fill(a.begin(), a.end(), 0.0f);
      else convert(src.file_of(s.from), s.from, it.shape, a.data());
      if (!s.perm.empty()) {
        b.resize(a.size());
        permute_rows(a.data(), b.data(), s.perm, it.shape[1], false);
        a.swap(b);
      }
      store(a.data(), n, it.dtype, dst);
      ++n_tensors;
      n_bytes += it.bytes();
    };
    std::vector<std::string> files = writer.write(tmp, "model", o.max_shard_bytes, true, fill, {{"format", "pt"}});

    write_text_file(tmp + "/config.json", deepseek_v3_config(c, o.dtype).dump(2) + "\n", "export");
    write_text_file(tmp + "/generation_config.json",
                    json({{"bos_token_id", Tokenizer::kBosId}, {"eos_token_id", Tokenizer::kEosId},
                          {"pad_token_id", Tokenizer::kPadId}, {"do_sample", true}}).dump(2) + "\n", "export");
    write_text_file(tmp + "/" + kExportedFrom, rc.to_json().dump(2) + "\n", "export");
    files.insert(files.end(), {"config.json", "generation_config.json", kExportedFrom});
    if (fs::exists(o.ckpt + "/tokenizer.model")) {
      const Tokenizer tok = Tokenizer::load(o.ckpt + "/tokenizer.model");
      write_text_file(tmp + "/tokenizer.model", tok.model_bytes(), "export");
      write_text_file(tmp + "/tokenizer.json", hf_tokenizer_json(tok), "export");
      const json special = {{"bos_token", tok.piece(Tokenizer::kBosId)}, {"eos_token", tok.piece(Tokenizer::kEosId)},
                            {"unk_token", tok.piece(Tokenizer::kUnkId)}, {"pad_token", tok.piece(Tokenizer::kPadId)}};
      json tc = special;
      tc["tokenizer_class"] = "PreTrainedTokenizerFast";
      tc["model_max_length"] = c.max_position_embeddings;
      tc["clean_up_tokenization_spaces"] = false;
      write_text_file(tmp + "/tokenizer_config.json", tc.dump(2) + "\n", "export");
      write_text_file(tmp + "/special_tokens_map.json", special.dump(2) + "\n", "export");
      files.insert(files.end(), {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"});
    }
    finish_output_dir(tmp, o.out, "export");
    return {{"out", o.out}, {"files", files}, {"tensors", n_tensors}, {"bytes", n_bytes},
            {"dtype", o.dtype == DType::bf16 ? "bf16" : "f32"}};
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

namespace {

// Whether two configs route identically given the correction bias: (groups kept, bias used).
bool same_routing(const ModelConfig& hf, bool hf_bias, const ModelConfig& ours, bool our_bias, bool bias_zero) {
  auto groups = [](const ModelConfig& c) -> std::pair<int64_t, int64_t> {
    if (c.topk_method == TopkMethod::greedy || c.topk_group == c.n_group) return {1, 1};
    return {c.n_group, c.topk_group};
  };
  if (ours.topk_method == TopkMethod::moge || hf.topk_method == TopkMethod::moge) return false;
  return groups(hf) == groups(ours) && (hf_bias == our_bias || bias_zero);
}

// The keys config.json expresses; the rest (init, DSSN constants, ...) come from the run config.
const char* kHfModelKeys[] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "first_k_dense_replace", "moe_intermediate_size",
    "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "num_attention_heads", "q_lora_rank",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_theta", "rope_scaling",
    "rms_norm_eps", "num_nextn_predict_layers", "sandwich_norm", "tie_word_embeddings", "scoring_func",
    "norm_topk_prob", "routed_scaling_factor", "max_position_embeddings", "moe_router_scale"};

}  // namespace

json import_hf(const ImportOptions& o) {
  const std::string cfg_path = o.hf + "/config.json";
  UM_CHECK(fs::is_directory(o.hf), "import", o.hf, " is not a directory");
  UM_CHECK(fs::exists(cfg_path), "import", o.hf, " has no config.json");
  const json hf = read_json_file(cfg_path, "import");
  ModelConfig from_hf = model_config_from_hf(hf, cfg_path);
  const bool hf_bias = from_hf.aux_free_bias;  // DeepSeek-V3 always routes with the bias
  const bool interleaved = hf_rope_interleaved(hf);
  const SafetensorsSet src(o.hf, "model");
  auto tensor_of = [&](const std::string& name) -> const SafetensorsFile& { return src.file_of(name); };

  // MTP modules: declared by the config; a folder whose weights lack them (transformers drops
  // them when it saves) is imported without
  std::vector<std::string> notes;
  if (from_hf.num_nextn_predict_layers > 0 &&
      !src.has("model.layers." + std::to_string(from_hf.num_hidden_layers) + ".eh_proj.weight")) {
    notes.push_back("config.json declares " + std::to_string(from_hf.num_nextn_predict_layers) +
                    " MTP layer(s) but the weights have none; imported without MTP");
    from_hf.num_nextn_predict_layers = 0;
  }
  // the aux-free bias: zero unless the file has a non-zero one
  bool bias_zero = true;
  for (const auto& [name, f] : src.tensors()) {
    if (!ends_with(name, ".mlp.gate.e_score_correction_bias")) continue;
    const std::vector<float> v = src.files()[f].read<float>(name);
    for (float x : v) bias_zero = bias_zero && x == 0.0f;
  }

  // the run config: ours from an exported folder, else --config, else defaults; its model must
  // describe the same network as config.json
  RunConfig rc;
  std::string rc_source;
  if (!o.config.empty()) {
    rc = load_run_config(o.config, {});
    rc_source = o.config;
  } else if (fs::exists(o.hf + "/" + kExportedFrom)) {
    rc = parse_run_config(read_json_file(o.hf + "/" + kExportedFrom, "import"));
    rc_source = o.hf + "/" + kExportedFrom;
  }
  if (rc_source.empty()) {
    rc.model = from_hf;
    rc.data.seq_len = std::min<int64_t>(rc.data.seq_len, from_hf.max_position_embeddings);
    rc.train.micro_batch_size = std::min<int64_t>(rc.train.micro_batch_size, rc.train.batch_size);
    rc.train.lr_schedule = LrSchedule::constant;  // a schedule needs the run's length: pass --config
  } else {
    const json a = model_config_to_json(from_hf), b = model_config_to_json(rc.model);
    for (const char* k : kHfModelKeys) {
      if (std::string(k) == "num_nextn_predict_layers" && b[k] != a[k] && b[k].get<int64_t>() == 0) {
        from_hf.num_nextn_predict_layers = 0;  // the run does not want the MTP modules: drop them
        notes.push_back(rc_source + " has no MTP layers; the file's MTP modules are not imported");
        continue;
      }
      UM_CHECK(a[k] == b[k], "import", rc_source, " and ", cfg_path, " disagree on model.", k, " (",
               b[k].dump(), " vs ", a[k].dump(), ")");
    }
    if (rc.model.first_k_dense_replace > 0)
      UM_CHECK(a["intermediate_size"] == b["intermediate_size"], "import", rc_source, " and ", cfg_path,
               " disagree on model.intermediate_size (", b["intermediate_size"].dump(), " vs ",
               a["intermediate_size"].dump(), ")");
    const bool our_bias = rc.model.aux_free_bias || rc.train.aux_free;
    UM_CHECK(rc.model.n_routed_experts == 0 || same_routing(from_hf, hf_bias, rc.model, our_bias, bias_zero),
             "import", rc_source, " routes differently from ", cfg_path, " (topk_method ",
             topk_method_name(rc.model.topk_method), ", n_group ", rc.model.n_group, ", topk_group ",
             rc.model.topk_group, ", correction bias ", our_bias ? "used" : "unused", " with ",
             bias_zero ? "a zero" : "a non-zero", " bias in the file)");
  }
  rc.model_json = model_config_to_json(rc.model);
  // checks the run config as a whole (batch, seq_len against positions, ...)
  rc = parse_run_config(rc.to_json());
  const ModelConfig& c = rc.model;
  const ParamTable table = build_param_table(c);

  // every tensor of the file must be used or be a copy that is checked
  std::set<std::string> used;
  for (const ParamInfo& p : table.params) {
    UM_CHECK(src.has(p.name), "import", src.describe(), ": missing tensor ", p.name);
    const auto& e = src.entry(p.name);
    UM_CHECK(e.dtype == DType::f32 || e.dtype == DType::bf16, "import", src.describe(), ": tensor ", p.name, " is ",
             dtype_name(e.dtype), " (import reads BF16 and F32)");
    UM_CHECK(e.shape == p.shape, "import", "tensor ", p.name, ": expected ", shape_str(p.shape), ", file has ",
             shape_str(e.shape));
    used.insert(p.name);
  }
  for (const BufferInfo& b : table.buffers)
    if (src.has(b.name)) {
      UM_CHECK(src.entry(b.name).shape == Shape{b.numel}, "import", "tensor ", b.name, ": expected (", b.numel,
               "), file has ", shape_str(src.entry(b.name).shape));
      used.insert(b.name);
    }
  const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  std::vector<float> a, bb;
  auto read_f32 = [&](const std::string& name, const Shape& shape, std::vector<float>& out) {
    out.resize(size_t(numel_of(shape)));
    convert(tensor_of(name), name, shape, out.data());
  };
  for (int64_t k = 1; k <= from_hf.num_nextn_predict_layers; ++k) {
    const std::string pre = "model.layers." + std::to_string(c.num_hidden_layers + k - 1) + ".";
    for (const auto& [copy, main] : {std::pair{pre + "embed_tokens.weight", std::string("model.embed_tokens.weight")},
                                     std::pair{pre + "shared_head.head.weight", head}}) {
      if (!src.has(copy)) continue;
      read_f32(copy, {c.vocab_size, c.hidden_size}, a);
      read_f32(main, {c.vocab_size, c.hidden_size}, bb);
      UM_CHECK(a == bb, "import", src.describe(), ": ", copy, " differs from ", main,
               " (the MTP module shares the main embedding and head)");
      used.insert(copy);
    }
  }
  if (c.tie_word_embeddings && src.has("lm_head.weight")) {
    read_f32("lm_head.weight", {c.vocab_size, c.hidden_size}, a);
    read_f32("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, bb);
    UM_CHECK(a == bb, "import", "tie_word_embeddings is true but lm_head.weight differs from model.embed_tokens.weight");
    used.insert("lm_head.weight");
  }
  std::vector<std::string> unused;
  for (const auto& [name, f] : src.tensors()) {
    if (used.count(name)) continue;
    // the MTP modules of a run that does not keep them
    const bool dropped_mtp = [&] {
      for (int64_t l = c.n_layers_total(); l < from_hf.num_hidden_layers + int64_t(hf.value("num_nextn_predict_layers", 0)); ++l)
        if (name.rfind("model.layers." + std::to_string(l) + ".", 0) == 0) return true;
      return false;
    }();
    if (!dropped_mtp) unused.push_back(name);
  }
  if (!unused.empty()) {
    std::string list;
    for (size_t i = 0; i < unused.size() && i < 5; ++i) list += (i ? ", " : "") + unused[i];
    fail("import", src.describe(), " has ", unused.size(), " tensor(s) this model does not use: ", list,
         unused.size() > 5 ? ", ..." : "", " (FP8 scales, biases and other layouts are not imported)");
  }

  const std::string tmp = begin_output_dir(o.out, "import");
  try {
    ShardedWriter writer;
    for (const ParamInfo& p : table.params) writer.add(p.name, DType::f32, p.shape);
    for (const BufferInfo& b : table.buffers) writer.add(b.name, DType::f32, {b.numel});
    auto fill = [&](const ShardedWriter::Item& it, void* dst) {
      float* out = static_cast<float*>(dst);
      const int64_t n = numel_of(it.shape);
      if (!src.has(it.name)) {  // a bias the file does not have (DeepSeek-V2)
        std::fill(out, out + n, 0.0f);
        return;
      }
      const std::vector<int64_t> perm = interleaved ? rope_row_permutation(it.name, c) : std::vector<int64_t>{};
      if (perm.empty()) {
        convert(tensor_of(it.name), it.name, it.shape, out);
      } else {
        read_f32(it.name, it.shape, a);
        permute_rows(a.data(), out, perm, it.shape[1], true);
      }
    };
    const std::vector<std::string> files = writer.write(tmp, "model", o.max_shard_bytes, false, fill, {{"format", "pt"}});
    write_text_file(tmp + "/config.json", hf_config_json(c).dump(2) + "\n", "import");
    write_text_file(tmp + "/ultramoe.json", rc.to_json().dump(2) + "\n", "import");
    TrainerState state;  // step 0, no Adam updates: training from here starts fresh moments
    state.counters = {{"imported_from", o.hf}};
    write_text_file(tmp + "/trainer_state.json", state.to_json().dump(2) + "\n", "import");
    if (fs::exists(o.hf + "/tokenizer.model")) {
      const Tokenizer tok = Tokenizer::load(o.hf + "/tokenizer.model");  // checks the fixed ids
      UM_CHECK(tok.vocab_size() <= c.vocab_size, "import", o.hf, "/tokenizer.model has ", tok.vocab_size(),
               " pieces, more than vocab_size ", c.vocab_size);
      write_text_file(tmp + "/tokenizer.model", tok.model_bytes(), "import");
    } else {
      notes.push_back(o.hf + " has no tokenizer.model (a SentencePiece model); eval and sample need one "
                      "beside the data, and resume cannot check the data's tokenizer");
    }
    finish_output_dir(tmp, o.out, "import");
    return {{"out", o.out}, {"files", files}, {"tensors", table.params.size() + table.buffers.size()},
            {"notes", notes}, {"run_config", rc_source.empty() ? "defaults" : rc_source}};
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
}

}  // namespace um
