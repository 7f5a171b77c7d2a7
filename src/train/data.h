// The data pipeline (design.md 3): documents from text/JSONL files, the train/validation split,
// `ultramoe data prepare` (tokenizer + shards + meta.json), and opening a prepared data
// directory for training. Include this one header for the whole pipeline: it brings the
// tokenizer (tokenizer.h), shards (shard.h) and windows (windows.h).
//
// A data directory holds
//   tokenizer.model  the SentencePiece model
//   train.bin        training shard     (documents as BOS tokens EOS, concatenated)
//   val.bin          validation shard   (same)
//   meta.json        what was prepared from what (informational; nothing reads it back)
// Not here: batching across ranks, document masks, the loss.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/shard.h"
#include "train/tokenizer.h"
#include "train/windows.h"

namespace um {

struct Document {
  std::string text;
  std::string source;  // "FILE" for a text file, "FILE:LINE" for a JSONL record
};

// A `.jsonl` file is one document per line (a JSON object with a string `text`; blank lines are
// skipped); any other file is one document. Text must be valid UTF-8. Errors name FILE[:LINE].
std::vector<Document> read_documents(const std::string& path);

inline constexpr int64_t kMinDocumentsForHashSplit = 20;

// Validation by document hash: the first 8 bytes of SHA-256(text), read big-endian as u64 h,
// pick the document when h < F * 2^64. Only the text counts, so the choice is independent of
// file order and of the other documents, and duplicated documents never straddle the split.
bool hash_picks_validation(std::string_view text, double val_fraction);

struct Split {
  std::vector<Document> train, val;
  std::string rule;  // "document_hash" or "trailing_lines"
};

// The validation split (design.md 3). With at least kMinDocumentsForHashSplit documents, whole
// documents by hash_picks_validation; when F > 0 but the hash picks none, the document with the
// smallest hash goes to validation, and when it picks all, the largest stays in training. With
// fewer documents, the last round(F * lines) lines of each document (at least 1 when F > 0,
// at most lines - 1) become a validation document of their own, cut after a newline; a
// one-line document stays whole in training. Empty documents are dropped. 0 <= F < 1.
Split split_documents(std::vector<Document> docs, double val_fraction);

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  int64_t vocab_size = 8192;                 // maximum, for a trained tokenizer
  std::optional<std::string> tokenizer;      // use this model instead of training one
  double val_fraction = 0.05;
};

// Reads the inputs, splits, trains (or loads) the tokenizer, encodes and writes the data
// directory, every file atomically (shards first, then tokenizer.model and meta.json: a crash in
// between leaves shards whose tokenizer hash does not match, which DataDir reports). Returns the
// meta.json object.
nlohmann::json prepare_data(const PrepareOptions& options);

// A prepared data directory, opened for training: the tokenizer and both shards, memory-mapped,
// with every check of Shard and the shards' tokenizer hash against tokenizer.model.
class DataDir {
 public:
  explicit DataDir(const std::string& dir);

  const std::string& path() const { return path_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  const Shard& train() const { return train_; }
  const Shard& val() const { return val_; }
  int64_t vocab_size() const { return tokenizer_.vocab_size(); }

  // design.md 3: the model's vocabulary must cover the data's (extra rows are never targets).
  void check_model_vocab(int64_t model_vocab_size) const;

 private:
  std::string path_;
  Tokenizer tokenizer_;
  Shard train_, val_;
};

}  // namespace um
