// Documents, the validation split, `data prepare` and the data directory (see data.h).
// Everything is held in memory while preparing: fine for corpora of a few GB, not beyond.
#include "train/data.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "core/error.h"

namespace um {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

int64_t line_of_offset(std::string_view text, size_t offset) {
  return 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n');
}

// The first 8 bytes of SHA-256(text), big-endian.
uint64_t document_hash(std::string_view text) {
  const Sha256 d = sha256(text);
  uint64_t h = 0;
  for (int i = 0; i < 8; ++i) h = (h << 8) | d[i];
  return h;
}

// Lines of a text, each with its '\n' (the last may lack one).
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t nl = text.find('\n', begin);
    size_t end = nl == std::string_view::npos ? text.size() : nl + 1;
    lines.push_back(text.substr(begin, end - begin));
    begin = end;
  }
  return lines;
}

// Encodes documents as BOS ids EOS, concatenated. Large documents are cut after newlines into
// pieces encoded in parallel: no SentencePiece piece spans a newline (the trainer sees lines),
// so the ids are the same as encoding the document whole (a test checks it).
std::vector<int32_t> encode_documents(const Tokenizer& tok, const std::vector<Document>& docs) {
  constexpr size_t kPiece = 1 << 16;
  struct Task {
    size_t doc;
    std::string_view text;
  };
  std::vector<Task> tasks;
  for (size_t d = 0; d < docs.size(); ++d) {
    std::string_view t = docs[d].text;
    while (t.size() > kPiece) {
      size_t nl = t.find('\n', kPiece);
      if (nl == std::string_view::npos) break;
      tasks.push_back({d, t.substr(0, nl + 1)});
      t.remove_prefix(nl + 1);
    }
    tasks.push_back({d, t});
  }
  std::vector<std::vector<int32_t>> ids(tasks.size());
  std::string error;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < tasks.size(); ++i) {
    try {
      ids[i] = tok.encode(tasks[i].text);
    } catch (const Error& e) {
#pragma omp critical(um_data_encode_error)
      if (error.empty()) error = docs[tasks[i].doc].source + ": " + e.what();
    }
  }
  UM_CHECK(error.empty(), "data", error);
  size_t total = 2 * docs.size();
  for (const auto& v : ids) total += v.size();
  std::vector<int32_t> out;
  out.reserve(total);
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (i == 0 || tasks[i].doc != tasks[i - 1].doc) out.push_back(Tokenizer::kBosId);
    out.insert(out.end(), ids[i].begin(), ids[i].end());
    if (i + 1 == tasks.size() || tasks[i + 1].doc != tasks[i].doc) out.push_back(Tokenizer::kEosId);
  }
  return out;
}

}  // namespace

std::vector<Document> read_documents(const std::string& path) {
  std::error_code ec;
  UM_CHECK(fs::exists(path, ec), "data", "input ", path, ": no such file");
  UM_CHECK(!fs::is_directory(path, ec), "data", "input ", path,
           " is a directory (give the files in it)");
  const std::string bytes = read_file(path, "data");
  std::vector<Document> docs;
  if (!ends_with(path, ".jsonl")) {
    if (size_t bad = utf8_error_offset(bytes); bad != std::string::npos)
      fail("data", path, ":", line_of_offset(bytes, bad), ": not valid UTF-8 (byte offset ", bad,
           ")");
    docs.push_back({bytes, path});
    return docs;
  }
  const std::string_view all = bytes;
  int64_t line_no = 0;
  for (std::string_view line : split_lines(all)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r\n") == std::string_view::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    json record;
    try {
      record = json::parse(line);
    } catch (const json::parse_error& e) {
      fail("data", where, ": not valid JSON (", e.what(), ")");
    }
    UM_CHECK(record.is_object() && record.contains("text") && record["text"].is_string(), "data",
             where, ": no string field \"text\"");
    std::string text = record["text"].get<std::string>();
    if (size_t bad = utf8_error_offset(text); bad != std::string::npos)
      fail("data", where, ": text is not valid UTF-8 (byte offset ", bad, ")");
    docs.push_back({std::move(text), where});
  }
  return docs;
}

bool hash_picks_validation(std::string_view text, double val_fraction) {
  if (val_fraction <= 0) return false;
  // F * 2^64 as an integer threshold; F < 1 keeps it below 2^64
  const uint64_t threshold = static_cast<uint64_t>(std::ldexp(static_cast<long double>(val_fraction), 64));
  return document_hash(text) < threshold;
}

Split split_documents(std::vector<Document> docs, double val_fraction) {
  UM_CHECK(std::isfinite(val_fraction) && val_fraction >= 0 && val_fraction < 1, "data",
           "validation fraction must be in [0, 1), got ", val_fraction);
  std::erase_if(docs, [](const Document& d) { return d.text.empty(); });
  Split split;
  if (static_cast<int64_t>(docs.size()) >= kMinDocumentsForHashSplit) {
    split.rule = "document_hash";
    std::vector<bool> val(docs.size());
    size_t n_val = 0;
    for (size_t i = 0; i < docs.size(); ++i) n_val += val[i] = hash_picks_validation(docs[i].text, val_fraction);
    // Keep both splits non-empty when F > 0, choosing by the same hash so it stays
    // deterministic.
    if (val_fraction > 0 && (n_val == 0 || n_val == docs.size())) {
      size_t pick = 0;
      for (size_t i = 1; i < docs.size(); ++i) {
        const uint64_t hi = document_hash(docs[i].text), hp = document_hash(docs[pick].text);
        if (n_val == 0 ? hi < hp : hi > hp) pick = i;
      }
      val[pick] = n_val == 0;
    }
    for (size_t i = 0; i < docs.size(); ++i)
      (val[i] ? split.val : split.train).push_back(std::move(docs[i]));
    return split;
  }
  split.rule = "trailing_lines";
  for (Document& d : docs) {
    const std::vector<std::string_view> lines = split_lines(d.text);
    const int64_t n = static_cast<int64_t>(lines.size());
    int64_t n_val = std::llround(val_fraction * static_cast<double>(n));
    if (val_fraction > 0) n_val = std::max<int64_t>(n_val, 1);
    n_val = std::min<int64_t>(n_val, n - 1);
    if (n_val <= 0) {
      split.train.push_back(std::move(d));
      continue;
    }
    const size_t cut = static_cast<size_t>(lines[n - n_val].data() - d.text.data());
    Document val{d.text.substr(cut), cat(d.source, " (last ", n_val, " of ", n, " lines)")};
    d.text.resize(cut);
    split.train.push_back(std::move(d));
    split.val.push_back(std::move(val));
  }
  return split;
}

json prepare_data(const PrepareOptions& o) {
  UM_CHECK(!o.inputs.empty(), "data", "no input files (give --input PATH...)");
  UM_CHECK(!o.out_dir.empty(), "data", "no output directory (give --out DIR)");
  UM_CHECK(std::isfinite(o.val_fraction) && o.val_fraction >= 0 && o.val_fraction < 1, "data",
           "--val-fraction must be in [0, 1), got ", o.val_fraction);
  if (!o.tokenizer)
    UM_CHECK(o.vocab_size >= Tokenizer::kMinVocabSize &&
                 o.vocab_size <= std::numeric_limits<int32_t>::max(),
             "data", "--vocab-size ", o.vocab_size, " is out of range: byte fallback alone needs ",
             Tokenizer::kMinVocabSize, " ids (8 fixed + 256 byte pieces)");

  // Output directory first, so a bad --out fails before minutes of work.
  std::error_code ec;
  if (fs::exists(o.out_dir, ec)) {
    UM_CHECK(fs::is_directory(o.out_dir, ec), "data", "--out ", o.out_dir,
             " exists and is not a directory");
  } else {
    fs::create_directories(o.out_dir, ec);
    UM_CHECK(!ec, "data", "cannot create --out ", o.out_dir, ": ", ec.message());
  }
  UM_CHECK(::access(o.out_dir.c_str(), W_OK) == 0, "data", "--out ", o.out_dir,
           " is not writable");

  std::optional<Tokenizer> given;
  if (o.tokenizer) given.emplace(Tokenizer::load(*o.tokenizer));

  std::vector<Document> docs;
  json sources = json::array();
  int64_t input_bytes = 0;
  for (const std::string& path : o.inputs) {
    std::vector<Document> d = read_documents(path);
    int64_t bytes = 0;
    for (const Document& doc : d) bytes += static_cast<int64_t>(doc.text.size());
    sources.push_back({{"path", path}, {"documents", d.size()}, {"bytes", bytes}});
    input_bytes += bytes;
    for (Document& doc : d) docs.push_back(std::move(doc));
  }
  const int64_t n_docs = static_cast<int64_t>(docs.size());
  const int64_t n_empty = std::count_if(docs.begin(), docs.end(),
                                        [](const Document& d) { return d.text.empty(); });
  UM_CHECK(n_docs > n_empty, "data", "the input holds no text (", o.inputs.size(), " file",
           o.inputs.size() == 1 ? "" : "s", ", ", n_docs, " documents, all empty)");

  Split split = split_documents(std::move(docs), o.val_fraction);

  Tokenizer tok = [&] {
    if (given) return std::move(*given);
    std::vector<std::string_view> texts;
    for (const Document& d : split.train) texts.push_back(d.text);
    TokenizerTrainOptions t;
    t.vocab_size = o.vocab_size;
    return train_tokenizer(texts, t);
  }();

  const std::vector<int32_t> train_ids = encode_documents(tok, split.train);
  const std::vector<int32_t> val_ids = encode_documents(tok, split.val);

  const fs::path dir(o.out_dir);
  write_shard((dir / "train.bin").string(), train_ids, tok.vocab_size(), tok.sha256());
  write_shard((dir / "val.bin").string(), val_ids, tok.vocab_size(), tok.sha256());
  write_file_atomic((dir / "tokenizer.model").string(), tok.model_bytes(), "data");

  json meta;
  meta["format"] = "ultramoe-data";
  meta["version"] = 1;
  meta["tokenizer"] = {
      {"file", "tokenizer.model"},
      {"sha256", to_hex(tok.sha256())},
      {"vocab_size", tok.vocab_size()},
      {"vocab_size_requested", o.tokenizer ? json(nullptr) : json(o.vocab_size)},
      {"trained", !o.tokenizer},
      {"source", o.tokenizer ? json(*o.tokenizer) : json(nullptr)},
      {"type", "sentencepiece-bpe"},
      {"ids", {{"unk", Tokenizer::kUnkId}, {"bos", Tokenizer::kBosId},
               {"eos", Tokenizer::kEosId}, {"pad", Tokenizer::kPadId},
               {"roles", Tokenizer::kRoleSymbols}}},
  };
  meta["token_width"] = shard_token_width(tok.vocab_size());
  meta["splits"] = {
      {"train", {{"file", "train.bin"}, {"tokens", train_ids.size()},
                 {"documents", split.train.size()}}},
      {"val", {{"file", "val.bin"}, {"tokens", val_ids.size()}, {"documents", split.val.size()}}},
  };
  meta["split_rule"] = {
      {"rule", split.rule},
      {"val_fraction", o.val_fraction},
      {"min_documents_for_hash", kMinDocumentsForHashSplit},
      {"description",
       split.rule == "document_hash"
           ? "a document is validation iff the first 8 bytes of SHA-256(text), big-endian, are "
             "< val_fraction * 2^64 (at least one document each side when val_fraction > 0)"
           : "the last round(val_fraction * lines) lines of each document (>= 1 when "
             "val_fraction > 0, <= lines - 1) form a validation document"},
  };
  meta["sources"] = sources;
  meta["input_bytes"] = input_bytes;
  meta["documents"] = n_docs;
  meta["empty_documents_skipped"] = n_empty;
  write_file_atomic((dir / "meta.json").string(), meta.dump(2) + "\n", "data");
  return meta;
}

DataDir::DataDir(const std::string& dir)
    : path_(dir),
      tokenizer_(Tokenizer::load((fs::path(dir) / "tokenizer.model").string())),
      train_((fs::path(dir) / "train.bin").string(), tokenizer_.sha256(), tokenizer_.name()),
      val_((fs::path(dir) / "val.bin").string(), tokenizer_.sha256(), tokenizer_.name()) {
  for (const Shard* s : {&train_, &val_})
    UM_CHECK(s->vocab_size() == tokenizer_.vocab_size(), "data", s->path(), ": vocabulary size ",
             s->vocab_size(), " differs from ", tokenizer_.name(), "'s ", tokenizer_.vocab_size());
}

void DataDir::check_model_vocab(int64_t model_vocab_size) const {
  UM_CHECK(model_vocab_size >= vocab_size(), "data", "model.vocab_size ", model_vocab_size,
           " is smaller than the data's vocabulary ", vocab_size(), " (", tokenizer_.name(), ")");
}

}  // namespace um
