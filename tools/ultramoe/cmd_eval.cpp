// ultramoe eval: validation loss and perplexity of a checkpoint on a data directory (the training
// forward, no MTP, dropless; see train/evaluate.h). Perplexity = exp(mean main CE per token).
#include <cstdio>

#include "commands.h"
#include "core/cli_args.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/evaluate.h"

namespace um::cli {

static const char* kUsage =
    "usage: ultramoe eval --ckpt DIR --data DIR [--batches N] [--json] [--expert-stats FILE]\n"
    "                     [--logits FILE]\n"
    "\n"
    "Scores every token of the data directory's validation shard exactly once (main CE; the last\n"
    "window padded and masked) and prints the mean cross-entropy (nats per token) and the perplexity,\n"
    "exp(mean cross-entropy).\n"
    "  --ckpt DIR     a checkpoint directory\n"
    "  --data DIR     a prepared data directory with the checkpoint's tokenizer\n"
    "  --batches N    score only the first N micro-batches (default 0: all)\n"
    "  --json         print one JSON object\n"
    "  --expert-stats FILE  write the per-layer expert load on the scored tokens (JSON), for\n"
    "                       specialisation studies\n"
    "  --logits FILE  write the first micro-batch of validation windows and the model's logits on\n"
    "                 them as safetensors: input_ids (B, T+1) I32, logits (B, T, V) F32 and, per MTP\n"
    "                 depth k, mtp_logits.k (B, T-k, V) F32 (for comparing with other implementations)\n";

int cmd_eval(const Args& args) {
  if (wants_help(args, kUsage)) return 0;
  CliArgs a("eval", args, {{"ckpt", true}, {"data", true}, {"batches", true}, {"json", false},
                                         {"expert-stats", true}, {"logits", true}});
  UM_CHECK(a.positional().empty(), "eval", "unexpected argument '", a.positional()[0], "'");
  OpenedCheckpoint ck = open_checkpoint(a.require("ckpt"));
  DataDir data(a.require("data"));
  data.check_model_vocab(ck.rc.model.vocab_size);
  if (!ck.tokenizer_path.empty())
    UM_CHECK(Tokenizer::load(ck.tokenizer_path).sha256() == data.tokenizer().sha256(), "eval",
             "the data in ", data.path(), " was encoded with another tokenizer than the checkpoint's");
  const int64_t T_ = ck.rc.data.seq_len, mb = ck.rc.train.micro_batch_size;
  EvalWindows windows(data.val(), T_);
  Workspace ws;
  Ctx ctx = Ctx::cpu(&ws);
  Model<float> model(ck.rc.model, ck.table, {mb, T_, ck.rc.train.balance_scope, 0, ck.rc.train.aux_free});
  std::vector<MoeStats> load;
  const EvalResult r = evaluate(model, ck.ps, windows, a.get_int("batches", 0) * mb, ctx, nullptr,
                                a.has("expert-stats") ? &load : nullptr);
  if (a.has("expert-stats")) {
    json layers = json::array();
    for (size_t l = 0; l < load.size(); ++l)
      layers.push_back({{"layer", model.moe_layers()[l]}, {"tokens", load[l].tokens}, {"load", load[l].load},
                        {"entropy", load[l].tokens ? load[l].entropy_sum / double(load[l].tokens) : 0.0}});
    const std::string path = a.require("expert-stats");
    std::FILE* f = std::fopen(path.c_str(), "w");
    const std::string text = json({{"ckpt", ck.dir}, {"data", data.path()}, {"layers", layers}}).dump(1) + "\n";
    UM_CHECK(f && std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fclose(f) == 0, "eval",
             "cannot write ", path);
  }
  if (a.has("logits")) {
    const int64_t B = std::min<int64_t>(mb, windows.n_windows());
    UM_CHECK(B > 0, "eval", "--logits: the validation shard has no window");
    std::vector<int32_t> ids(B * (T_ + 1));
    for (int64_t b = 0; b < B; ++b) windows.fill(b, ids.data() + b * (T_ + 1));
    StepScales sc;
    sc.n_mtp.assign(ck.rc.model.num_nextn_predict_layers, 1.0);
    sc.with_mtp = ck.rc.model.num_nextn_predict_layers > 0;
    Capture<float> cap;
    model.forward_backward(ck.ps, ids.data(), B, sc, false, ctx, &cap);
    const int64_t V = ck.rc.model.vocab_size;
    SafetensorsWriter w;
    w.add("input_ids", DType::i32, {B, T_ + 1}, ids.data());
    w.add("logits", DType::f32, {B, T_, V}, cap.logits.data());
    std::vector<std::string> names;
    for (size_t k = 0; k < cap.mtp_logits.size(); ++k) names.push_back("mtp_logits." + std::to_string(k + 1));
    for (size_t k = 0; k < cap.mtp_logits.size(); ++k)
      w.add(names[k], DType::f32, {B, T_ - int64_t(k) - 1, V}, cap.mtp_logits[k].data());
    w.write(a.require("logits"), false);
  }
  if (a.has("json")) {
    std::printf("%s\n", json({{"step", ck.state.step}, {"val_loss", r.loss}, {"val_ppl", r.ppl},
                              {"val_tokens", r.tokens}}).dump().c_str());
  } else {
    std::printf("step %lld: val_loss %.4f nats/token  perplexity %.2f  (%lld tokens, %lld windows)\n",
                (long long)ck.state.step, r.loss, r.ppl, (long long)r.tokens, (long long)r.windows);
  }
  return 0;
}

}  // namespace um::cli
