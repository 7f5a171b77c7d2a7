// The tokenizer (design.md 3): a SentencePiece BPE model, used and trained through the SentencePiece
// C++ library. Training settings make decode(encode(x)) == x for any valid UTF-8 text: byte
// fallback, full character coverage, identity normalisation, no dummy prefix, whitespace kept.
// Fixed ids: unk 0, bos 1, eos 2, pad 3, then the chat-role symbols <|system|> 4, <|user|> 5,
// <|assistant|> 6, <|end|> 7, then the 256 byte pieces, then the learned merges.
// Not here: documents and the train/val split (data.h), shards (shard.h).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "train/shard.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace um {

class Tokenizer {
 public:
  static constexpr int32_t kUnkId = 0;
  static constexpr int32_t kBosId = 1;
  static constexpr int32_t kEosId = 2;
  static constexpr int32_t kPadId = 3;
  // <|system|>, <|user|>, <|assistant|>, <|end|> take ids kFirstRoleId + 0..3
  static constexpr int32_t kFirstRoleId = 4;
  static constexpr std::array<const char*, 4> kRoleSymbols = {"<|system|>", "<|user|>",
                                                              "<|assistant|>", "<|end|>"};
  // 8 fixed ids + 256 byte pieces: no vocabulary can be smaller
  static constexpr int64_t kMinVocabSize = 8 + 256;

  // Loads a SentencePiece model file; it must use the fixed ids above.
  static Tokenizer load(const std::string& path);
  // The same from the bytes of a model file; `name` identifies it in errors.
  static Tokenizer from_model_bytes(std::string model_bytes, const std::string& name);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text to ids, no BOS/EOS added. The text must be valid UTF-8 (else an error).
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids to text; control ids (bos, eos, pad) decode to nothing. An id outside the vocabulary is
  // an error.
  std::string decode(std::span<const int32_t> ids) const;

  int64_t vocab_size() const { return vocab_size_; }
  int32_t unk_id() const { return kUnkId; }
  int32_t bos_id() const { return kBosId; }
  int32_t eos_id() const { return kEosId; }
  int32_t pad_id() const { return kPadId; }
  // The id of a piece, or -1 when the vocabulary does not have it.
  int32_t piece_id(std::string_view piece) const;
  std::string piece(int32_t id) const;
  // What a piece is and its score (BPE: higher merges first), for writing the vocabulary in
  // other formats (the Hugging Face tokenizer.json of `ultramoe export`).
  enum class PieceKind : uint8_t { normal, control, unknown, user_defined, byte };
  PieceKind piece_kind(int32_t id) const;
  float piece_score(int32_t id) const;

  // The serialized model (exactly the bytes of tokenizer.model) and their SHA-256.
  const std::string& model_bytes() const { return model_bytes_; }
  const Sha256& sha256() const { return sha256_; }
  const std::string& name() const { return name_; }

 private:
  Tokenizer();

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string model_bytes_;
  Sha256 sha256_{};
  std::string name_;
  int64_t vocab_size_ = 0;
  std::array<int32_t, 3> space_bytes_{};  // the byte pieces of U+2581 (see encode)
};

struct TokenizerTrainOptions {
  // Upper bound on the vocabulary (hard_vocab_limit false): a small text may give fewer pieces.
  int64_t vocab_size = 8192;
  // The trainer sees at most about this many bytes of lines, sampled deterministically, so
  // training stays in seconds however large the corpus.
  int64_t max_training_bytes = 16 << 20;
  // Seeds the line sample (only used when the text is larger than max_training_bytes).
  uint64_t seed = 0;
};

// Trains a BPE tokenizer on the lines of `texts` (SentencePiece trains on sentences; a line is
// one). Deterministic: the same texts and options give the same model bytes.
Tokenizer train_tokenizer(std::span<const std::string_view> texts,
                          const TokenizerTrainOptions& options);

// Index of the first byte where `text` stops being valid UTF-8, or npos when it is valid.
size_t utf8_error_offset(std::string_view text);

}  // namespace um
