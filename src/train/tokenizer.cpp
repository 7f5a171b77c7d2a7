// The SentencePiece BPE tokenizer: training, loading, encode/decode (see tokenizer.h).
// All the tokenization is SentencePiece's; this file only fixes the settings, feeds it lines,
// and works around the one input SentencePiece cannot round-trip (a literal U+2581, below).
#include "train/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/rng.h"

namespace um {

namespace {

// SentencePiece shows spaces as U+2581 LOWER ONE EIGHTH BLOCK ("▁") inside pieces and turns every
// U+2581 back into a space when decoding, so a literal U+2581 in the text would come back as a
// space. encode() therefore cuts the text at each literal U+2581 and emits it as its three byte
// pieces, which decode to the bytes themselves.
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";

// encode() hands SentencePiece pieces of about this many bytes, cut after a newline.
constexpr size_t kEncodePiece = 4096;

// Sentences longer than this are cut for training (SentencePiece skips sentences longer than
// its max_sentence_length, and a JSONL document is often one long line).
constexpr size_t kMaxTrainingLine = 4096;

uint32_t decode_utf8(std::string_view s, size_t& i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  uint8_t c = b(i);
  if (c < 0x80) {
    ++i;
    return c;
  }
  int n = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
  uint32_t cp = c & (0x3F >> n);
  for (int k = 1; k <= n; ++k) cp = (cp << 6) | (b(i + k) & 0x3F);
  i += n + 1;
  return cp;
}

class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string_view>& lines) : lines_(lines) { load(); }
  bool done() const override { return i_ >= lines_.size(); }
  void Next() override {
    ++i_;
    load();
  }
  const std::string& value() const override { return current_; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  void load() {
    if (i_ < lines_.size()) current_.assign(lines_[i_]);
  }
  const std::vector<std::string_view>& lines_;
  size_t i_ = 0;
  std::string current_;
};

// The end of a training chunk of at most kMaxTrainingLine bytes: after the last space, else at a
// UTF-8 character boundary.
size_t chunk_end(std::string_view line) {
  if (line.size() <= kMaxTrainingLine) return line.size();
  size_t space = line.rfind(' ', kMaxTrainingLine - 1);
  if (space != std::string_view::npos && space > 0) return space + 1;
  size_t end = kMaxTrainingLine;
  while (end > 0 && (static_cast<uint8_t>(line[end]) & 0xC0) == 0x80) --end;
  return end;
}

}  // namespace

size_t utf8_error_offset(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const uint8_t c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t min;
    if ((c & 0xE0) == 0xC0) len = 2, min = 0x80;
    else if ((c & 0xF0) == 0xE0) len = 3, min = 0x800;
    else if ((c & 0xF8) == 0xF0) len = 4, min = 0x10000;
    else return i;
    if (i + len > n) return i;
    uint32_t cp = c & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      const uint8_t t = static_cast<uint8_t>(s[i + k]);
      if ((t & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (t & 0x3F);
    }
    // overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8
    if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;
    i += len;
  }
  return std::string_view::npos;
}

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::load(const std::string& path) {
  return from_model_bytes(read_file(path, "tokenizer"), path);
}

Tokenizer Tokenizer::from_model_bytes(std::string model_bytes, const std::string& name) {
  Tokenizer t;
  auto status = t.sp_->LoadFromSerializedProto(model_bytes);
  UM_CHECK(status.ok(), "tokenizer", name, ": not a SentencePiece model (", status.ToString(),
           ")");
  auto& sp = *t.sp_;
  UM_CHECK(sp.unk_id() == kUnkId && sp.bos_id() == kBosId && sp.eos_id() == kEosId &&
               sp.pad_id() == kPadId,
           "tokenizer", name, ": ids unk/bos/eos/pad are ", sp.unk_id(), "/", sp.bos_id(), "/",
           sp.eos_id(), "/", sp.pad_id(), ", expected 0/1/2/3");
  for (int k = 0; k < 4; ++k) {
    const int id = sp.PieceToId(kRoleSymbols[k]);
    UM_CHECK(id == kFirstRoleId + k, "tokenizer", name, ": ",
             kRoleSymbols[k], " must have id ", kFirstRoleId + k, ", model has ",
             id);
  }
  // Without byte pieces, text outside the vocabulary would decode to <unk>: no round trip.
  for (int k = 0; k < 3; ++k) {
    char piece[8];
    std::snprintf(piece, sizeof piece, "<0x%02X>", static_cast<uint8_t>(kSpaceSymbol[k]));
    const int id = sp.PieceToId(piece);
    UM_CHECK(id != sp.unk_id() && sp.IsByte(id), "tokenizer", name,
             ": model has no byte-fallback pieces (train it with byte_fallback=true)");
    t.space_bytes_[k] = id;
  }
  t.vocab_size_ = sp.GetPieceSize();
  t.sha256_ = um::sha256(model_bytes);
  t.model_bytes_ = std::move(model_bytes);
  t.name_ = name;
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (size_t bad = utf8_error_offset(text); bad != std::string_view::npos)
    fail("tokenizer", "text is not valid UTF-8 at byte ", bad);
  std::vector<int32_t> out;
  std::vector<int> ids;
  const auto encode_piece = [&](std::string_view piece) {
    auto status = sp_->Encode(piece, &ids);
    UM_CHECK(status.ok(), "tokenizer", name_, ": encode failed: ", status.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  };
  size_t begin = 0;
  for (;;) {
    const size_t hit = text.find(kSpaceSymbol, begin);
    std::string_view segment =
        text.substr(begin, hit == std::string_view::npos ? std::string_view::npos : hit - begin);
    // SentencePiece's encoding time grows faster than linearly with the input; cutting after a
    // newline changes no ids (no piece spans one) and keeps it at ~2 MB/s per thread.
    while (segment.size() > kEncodePiece) {
      const size_t nl = segment.find('\n', kEncodePiece);
      if (nl == std::string_view::npos) break;
      encode_piece(segment.substr(0, nl + 1));
      segment.remove_prefix(nl + 1);
    }
    if (!segment.empty()) encode_piece(segment);
    if (hit == std::string_view::npos) break;
    out.insert(out.end(), space_bytes_.begin(), space_bytes_.end());
    begin = hit + kSpaceSymbol.size();
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::vector<int> v(ids.begin(), ids.end());
  for (size_t i = 0; i < v.size(); ++i)
    UM_CHECK(v[i] >= 0 && v[i] < vocab_size_, "tokenizer", name_, ": id ", v[i],
             " at position ", i, " is outside the vocabulary [0, ", vocab_size_, ")");
  std::string text;
  auto status = sp_->Decode(v, &text);
  UM_CHECK(status.ok(), "tokenizer", name_, ": decode failed: ", status.ToString());
  return text;
}

int32_t Tokenizer::piece_id(std::string_view piece) const {
  const int id = sp_->PieceToId(piece);
  // PieceToId answers unk_id for unknown pieces
  return id == kUnkId && piece != sp_->IdToPiece(kUnkId) ? -1 : id;
}

std::string Tokenizer::piece(int32_t id) const {
  UM_CHECK(id >= 0 && id < vocab_size_, "tokenizer", name_, ": id ", id,
           " is outside the vocabulary [0, ", vocab_size_, ")");
  return sp_->IdToPiece(id);
}

Tokenizer::PieceKind Tokenizer::piece_kind(int32_t id) const {
  piece(id);  // checks the range
  if (sp_->IsUnknown(id)) return PieceKind::unknown;
  if (sp_->IsControl(id)) return PieceKind::control;
  if (sp_->IsByte(id)) return PieceKind::byte;
  // the only user-defined symbols are the chat roles, at fixed ids (checked on load)
  if (id >= kFirstRoleId && id < kFirstRoleId + int32_t(kRoleSymbols.size())) return PieceKind::user_defined;
  return PieceKind::normal;
}

float Tokenizer::piece_score(int32_t id) const {
  piece(id);
  return sp_->GetScore(id);
}

Tokenizer train_tokenizer(std::span<const std::string_view> texts,
                          const TokenizerTrainOptions& options) {
  // Lines (cut to kMaxTrainingLine) are SentencePiece's sentences; empty lines carry nothing.
  std::vector<std::string_view> lines;
  int64_t total_bytes = 0;
  for (std::string_view text : texts) {
    size_t begin = 0;
    while (begin < text.size()) {
      size_t nl = text.find('\n', begin);
      std::string_view line = text.substr(begin, nl == std::string_view::npos ? nl : nl - begin);
      begin = nl == std::string_view::npos ? text.size() : nl + 1;
      while (!line.empty()) {
        const size_t end = chunk_end(line);
        lines.push_back(line.substr(0, end));
        total_bytes += static_cast<int64_t>(end);
        line.remove_prefix(end);
      }
    }
  }
  UM_CHECK(!lines.empty(), "tokenizer", "no text to train the tokenizer on");

  // A Bernoulli sample of lines keyed by the line index: the same corpus always gives the same
  // sample, without the reservoir sampler of SentencePiece (seeded from std::random_device).
  if (total_bytes > options.max_training_bytes) {
    const double keep = static_cast<double>(options.max_training_bytes) / total_bytes;
    const Philox rng(options.seed, "data.tokenizer.sample");
    std::vector<std::string_view> sample;
    for (size_t i = 0; i < lines.size(); ++i)
      if (rng.uniform(i) < keep) sample.push_back(lines[i]);
    if (sample.empty()) sample.push_back(lines.front());
    lines = std::move(sample);
  }

  // character_coverage 1.0 makes every distinct character a required piece; SentencePiece
  // counts spaces as U+2581 and ignores NUL.
  std::set<uint32_t> chars;
  for (std::string_view line : lines) {
    if (size_t bad = utf8_error_offset(line); bad != std::string_view::npos)
      fail("tokenizer", "training text is not valid UTF-8");
    for (size_t i = 0; i < line.size();) {
      uint32_t cp = decode_utf8(line, i);
      if (cp == ' ') cp = 0x2581;
      if (cp != 0) chars.insert(cp);
    }
  }
  const int64_t needed = Tokenizer::kMinVocabSize + static_cast<int64_t>(chars.size());
  UM_CHECK(options.vocab_size >= needed, "tokenizer", "vocabulary size ", options.vocab_size,
           " is too small for this text: it needs at least ", needed, " (8 fixed ids, 256 byte ",
           "pieces and ", chars.size(), " distinct characters)");

  std::string roles;
  for (const char* r : Tokenizer::kRoleSymbols) {
    if (!roles.empty()) roles.push_back(',');
    roles.append(r);
  }
  const std::unordered_map<std::string, std::string> kwargs = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"hard_vocab_limit", "false"},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "3"},
      {"user_defined_symbols", roles},
      {"input_sentence_size", "0"},  // we sampled above
      {"max_sentence_length", std::to_string(kMaxTrainingLine + 16)},
      {"model_prefix", ""},  // the model comes back serialized, no files are written
      {"minloglevel", "2"},  // SentencePiece logs progress to stderr; keep errors only
  };
  LineIterator it(lines);
  std::string model;
  auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &it, &model);
  UM_CHECK(status.ok(), "tokenizer", "SentencePiece training failed: ", status.ToString());
  return Tokenizer::from_model_bytes(std::move(model), "trained tokenizer");
}

}  // namespace um
