// Data pipeline: tokenizer round trip and ids, shard format and its validation, training and
// eval windows, the validation split, and `ultramoe data prepare` through the binary; the pieces
// of the Hugging Face export/import that need no Python (config mapping, rope row order,
// tokenizer.json; the end-to-end check against transformers is tests/interop).
// Tokenizers are trained on small synthetic text generated here (never on the Austen corpus),
// in a temporary directory, so the whole file runs in seconds.
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "train/data.h"
#include "train/hf.h"

namespace um {
namespace {

namespace fs = std::filesystem;

// A temporary directory removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ultramoe-data-test-XXXXXX").string();
    char* p = ::mkdtemp(tmpl.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_text(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary);
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
}

std::string slurp(const std::string& path) { return read_file(path, "test"); }

// Pseudo-English from a fixed word list: words, digits, punctuation, some non-ASCII, lines of
// varying length and blank lines between paragraphs. A pure function of (seed, lines).
std::string synthetic_text(uint64_t seed, int n_lines) {
  static const char* kWords[] = {
      "the",     "of",     "and",      "to",      "a",        "in",     "was",    "her",
      "she",     "he",     "not",      "be",      "that",     "it",     "had",    "his",
      "with",    "for",    "as",       "you",     "Elizabeth", "Darcy", "Emma",   "Mr.",
      "Mrs.",    "sister", "family",   "letter",  "ball",     "walk",   "garden", "morning",
      "evening", "house",  "carriage", "fortune", "café",     "naïve",  "déjà",   "vu",
      "Ωμέγα",   "über",   "£20,000",  "1811",    "3.5",      "—",      "“quoted”"};
  const Philox rng(seed, "test.synthetic_text");
  std::string s;
  uint64_t k = 0;
  for (int line = 0; line < n_lines; ++line) {
    if (rng.below(k++, 7) == 0) {
      s += "\n";
      continue;
    }
    const int n_words = 3 + static_cast<int>(rng.below(k++, 12));
    for (int w = 0; w < n_words; ++w) {
      if (w) s += rng.below(k++, 20) == 0 ? "  " : " ";
      s += kWords[rng.below(k++, std::size(kWords))];
      if (rng.below(k++, 9) == 0) s += ",";
    }
    s += rng.below(k++, 4) == 0 ? "." : "";
    s += "\n";
  }
  return s;
}

// One small tokenizer shared by the tests that only use it (training takes a fraction of a
// second, but there is no need to repeat it).
const Tokenizer& small_tokenizer() {
  static const Tokenizer tok = [] {
    const std::string text = synthetic_text(1, 3000);
    const std::string_view texts[] = {text};
    TokenizerTrainOptions o;
    o.vocab_size = 512;
    return train_tokenizer(texts, o);
  }();
  return tok;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_ERROR_HAS(stmt, text) EXPECT_PRED_FORMAT2(::testing::IsSubstring, text, error_of([&] { stmt; }))

// ---------------------------------------------------------------------------------------------
// Tokenizer

TEST(Tokenizer, SpecialIds) {
  const Tokenizer& tok = small_tokenizer();
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), 3);
  EXPECT_EQ(tok.piece_id("<|system|>"), 4);
  EXPECT_EQ(tok.piece_id("<|user|>"), 5);
  EXPECT_EQ(tok.piece_id("<|assistant|>"), 6);
  EXPECT_EQ(tok.piece_id("<|end|>"), 7);
  EXPECT_EQ(tok.piece(8), "<0x00>");  // byte pieces follow the fixed ids
  EXPECT_EQ(tok.piece_id("no such piece"), -1);
  // role symbols are single tokens inside text, and decode back
  const std::vector<int32_t> ids = tok.encode("<|user|>hi<|end|>");
  EXPECT_EQ(ids.front(), 5);
  EXPECT_EQ(ids.back(), 7);
  // control ids decode to nothing
  const std::vector<int32_t> framed = {1, 2, 3};
  EXPECT_EQ(tok.decode(framed), "");
}

TEST(Tokenizer, RoundTripsAnyText) {
  const Tokenizer& tok = small_tokenizer();
  const std::vector<std::string> cases = {
      "",
      "Hello world",
      "line one\nline two\n\n\nafter blank lines\n",
      "  leading, double  and trailing spaces  ",
      "\ttabs\t\tand\ttabs\t",
      "digits 0123456789 and 3.14159, 1811",
      "café naïve Ωμέγα 日本語 한국어 русский",
      "emoji 🎉 and a family 👩‍👩‍👧 and a flag 🇫🇷",
      "windows\r\nline\r\nends",
      "a literal \xE2\x96\x81 lower one eighth block, \xE2\x96\x81\xE2\x96\x81 twice",
      "\xE2\x96\x81",
      "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>hello<|end|>",
      std::string("nul\0byte", 8),
      "\n\n\n",
      " ",
  };
  for (const std::string& s : cases) EXPECT_EQ(tok.decode(tok.encode(s)), s) << s;

  // random strings of code points from every UTF-8 length
  const Philox rng(3, "test.random_utf8");
  uint64_t k = 0;
  for (int n = 0; n < 300; ++n) {
    std::string s;
    const int len = static_cast<int>(rng.below(k++, 40));
    for (int i = 0; i < len; ++i) {
      uint32_t cp;
      switch (rng.below(k++, 5)) {
        case 0: cp = static_cast<uint32_t>(rng.below(k++, 0x80)); break;
        case 1: cp = 0x80 + static_cast<uint32_t>(rng.below(k++, 0x780)); break;
        case 2: cp = 0x800 + static_cast<uint32_t>(rng.below(k++, 0xD000 - 0x800)); break;
        case 3: cp = 0x10000 + static_cast<uint32_t>(rng.below(k++, 0x100000)); break;
        default: {
          static const uint32_t kSpaces[] = {' ', '\n', '\t', 0x2581};
          cp = kSpaces[rng.below(k++, 4)];
        }
      }
      if (cp < 0x80) s += static_cast<char>(cp);
      else if (cp < 0x800) s += {char(0xC0 | cp >> 6), char(0x80 | (cp & 0x3F))};
      else if (cp < 0x10000)
        s += {char(0xE0 | cp >> 12), char(0x80 | (cp >> 6 & 0x3F)), char(0x80 | (cp & 0x3F))};
      else
        s += {char(0xF0 | cp >> 18), char(0x80 | (cp >> 12 & 0x3F)), char(0x80 | (cp >> 6 & 0x3F)),
              char(0x80 | (cp & 0x3F))};
    }
    ASSERT_EQ(utf8_error_offset(s), std::string::npos);
    EXPECT_EQ(tok.decode(tok.encode(s)), s) << "random case " << n;
  }
}

TEST(Tokenizer, SplitsDigits) {
  const Tokenizer& tok = small_tokenizer();
  const std::vector<int32_t> ids = tok.encode("1811");
  ASSERT_EQ(ids.size(), 4u);  // "1811" is in the training text, but digits are never merged
  for (int32_t id : ids) EXPECT_EQ(tok.decode(std::vector<int32_t>{id}).size(), 1u);
}

TEST(Tokenizer, EncodingIsIndependentOfNewlineCuts) {
  // encode() and `data prepare` cut long text after newlines; the ids must equal SentencePiece's
  // on the whole text.
  const Tokenizer& tok = small_tokenizer();
  const std::string text = synthetic_text(9, 4000);
  ASSERT_GT(text.size(), 40000u);
  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.LoadFromSerializedProto(tok.model_bytes()).ok());
  std::vector<int> whole;
  ASSERT_TRUE(sp.Encode(text, &whole).ok());
  const std::vector<int32_t> ours = tok.encode(text);
  EXPECT_EQ(std::vector<int32_t>(whole.begin(), whole.end()), ours);
  std::vector<int32_t> by_line;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const std::vector<int32_t> ids = tok.encode(line + "\n");
    by_line.insert(by_line.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(by_line, ours);
}

TEST(Tokenizer, VocabSizeIsAMaximum) {
  const std::string text = synthetic_text(2, 400);
  const std::string_view texts[] = {text};
  TokenizerTrainOptions o;
  o.vocab_size = 50000;  // far more than this text has merges for
  const Tokenizer big = train_tokenizer(texts, o);
  EXPECT_LT(big.vocab_size(), 50000);
  EXPECT_GT(big.vocab_size(), Tokenizer::kMinVocabSize);
  o.vocab_size = 400;
  EXPECT_EQ(train_tokenizer(texts, o).vocab_size(), 400);
}

TEST(Tokenizer, TooSmallVocabSays) {
  const std::string text = synthetic_text(2, 400);
  const std::string_view texts[] = {text};
  TokenizerTrainOptions o;
  o.vocab_size = Tokenizer::kMinVocabSize;
  const std::string e = error_of([&] { train_tokenizer(texts, o); });
  ASSERT_NE(e.find("[tokenizer] vocabulary size 264 is too small for this text: it needs at least "),
            std::string::npos)
      << e;
  // the minimum it names is exactly what SentencePiece needs
  const int64_t needed = std::stoll(e.substr(e.find("at least ") + 9));
  o.vocab_size = needed;
  EXPECT_EQ(train_tokenizer(texts, o).vocab_size(), needed);
}

TEST(Tokenizer, TrainingIsDeterministic) {
  const std::string text = synthetic_text(4, 1500);
  const std::string_view texts[] = {text};
  TokenizerTrainOptions o;
  o.vocab_size = 600;
  const Tokenizer a = train_tokenizer(texts, o);
  const Tokenizer b = train_tokenizer(texts, o);
  EXPECT_EQ(a.model_bytes(), b.model_bytes());
  // a sampled training set is deterministic too
  o.max_training_bytes = static_cast<int64_t>(text.size() / 3);
  EXPECT_EQ(train_tokenizer(texts, o).model_bytes(), train_tokenizer(texts, o).model_bytes());
}

TEST(Tokenizer, LoadsFromFileAndRejectsOthers) {
  TempDir dir;
  const Tokenizer& tok = small_tokenizer();
  write_text(dir / "tokenizer.model", tok.model_bytes());
  const Tokenizer loaded = Tokenizer::load(dir / "tokenizer.model");
  EXPECT_EQ(loaded.sha256(), tok.sha256());
  EXPECT_EQ(loaded.sha256(), sha256(slurp(dir / "tokenizer.model")));
  EXPECT_EQ(loaded.encode("Elizabeth walked"), tok.encode("Elizabeth walked"));

  write_text(dir / "junk.model", "this is not a model");
  EXPECT_ERROR_HAS(Tokenizer::load(dir / "junk.model"), "junk.model: not a SentencePiece model");
  EXPECT_ERROR_HAS(Tokenizer::load(dir / "missing.model"), "missing.model: cannot open");
  EXPECT_ERROR_HAS(tok.encode("bad \xFF byte"), "[tokenizer] text is not valid UTF-8 at byte 4");
  const std::vector<int32_t> bad = {5, 100000};
  EXPECT_ERROR_HAS(tok.decode(bad), "id 100000 at position 1 is outside the vocabulary");
}

TEST(Tokenizer, Utf8Validation) {
  EXPECT_EQ(utf8_error_offset("plain ascii"), std::string::npos);
  EXPECT_EQ(utf8_error_offset("caf\xC3\xA9"), std::string::npos);
  EXPECT_EQ(utf8_error_offset("ab\xC3"), 2u);              // cut short
  EXPECT_EQ(utf8_error_offset("\xC0\x80"), 0u);            // overlong NUL
  EXPECT_EQ(utf8_error_offset("x\xED\xA0\x80"), 1u);       // surrogate
  EXPECT_EQ(utf8_error_offset("\xF4\x90\x80\x80"), 0u);    // past U+10FFFF
  EXPECT_EQ(utf8_error_offset("\x80"), 0u);                // stray continuation
}

// ---------------------------------------------------------------------------------------------
// Shards

TEST(Shard, Sha256KnownAnswer) {
  EXPECT_EQ(to_hex(sha256("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(to_hex(sha256("")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Shard, RoundTripBothWidths) {
  TempDir dir;
  const Sha256 h = sha256("tokenizer");
  for (int64_t vocab : {300, 65536, 70000}) {
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < 5000; ++i) ids.push_back(static_cast<int32_t>((i * 7919) % vocab));
    ids.push_back(static_cast<int32_t>(vocab - 1));
    const std::string path = dir / ("s" + std::to_string(vocab) + ".bin");
    write_shard(path, ids, vocab, h);
    const Shard s(path, h);
    EXPECT_EQ(s.width(), vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(s.size(), static_cast<int64_t>(ids.size()));
    EXPECT_EQ(s.vocab_size(), vocab);
    EXPECT_EQ(s.tokenizer_sha256(), h);
    EXPECT_EQ(static_cast<int64_t>(fs::file_size(path)),
              kShardHeaderBytes + s.width() * static_cast<int64_t>(ids.size()));
    std::vector<int32_t> back(ids.size());
    s.copy(0, s.size(), back.data());
    EXPECT_EQ(back, ids);
    EXPECT_EQ(s[17], ids[17]);
  }
  // nothing but the shards is left in the directory: the temporaries were renamed
  int files = 0;
  for (auto& e : fs::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 3);
  // the header layout is the documented one
  const std::string bytes = slurp(dir / "s300.bin");
  EXPECT_EQ(bytes.substr(0, 8), std::string("UMOETOK\0", 8));
  EXPECT_EQ(bytes[8], 1);     // version
  EXPECT_EQ(bytes[12], 2);    // width
  uint64_t count, vocab;
  std::memcpy(&count, bytes.data() + 16, 8);
  std::memcpy(&vocab, bytes.data() + 24, 8);
  EXPECT_EQ(count, 5001u);
  EXPECT_EQ(vocab, 300u);
  EXPECT_EQ(bytes.substr(32, 32), std::string(reinterpret_cast<const char*>(h.data()), 32));
  // an empty shard is valid
  write_shard(dir / "empty.bin", {}, 300, h);
  EXPECT_EQ(Shard(dir / "empty.bin").size(), 0);
}

TEST(Shard, WriterRejectsIdsOutsideTheVocabulary) {
  TempDir dir;
  const std::vector<int32_t> ids = {1, 2, 300};
  EXPECT_ERROR_HAS(write_shard(dir / "x.bin", ids, 300, Sha256{}),
                   "token 300 at position 2 is outside the vocabulary [0, 300)");
  EXPECT_FALSE(fs::exists(dir / "x.bin"));
  EXPECT_TRUE(fs::is_empty(dir.path()));  // the temporary is gone too
}

class ShardCorruption : public ::testing::Test {
 protected:
  void SetUp() override {
    std::vector<int32_t> ids;
    for (int i = 0; i < 100; ++i) ids.push_back(i % 50);
    write_shard(path_, ids, 50, hash_);
    bytes_ = slurp(path_);
  }
  // Writes a modified copy and returns the error opening it gives.
  std::string open_modified(const std::string& bytes) {
    write_text(bad_, bytes);
    return error_of([&] { Shard s(bad_, hash_, "DIR/tokenizer.model"); });
  }
  TempDir dir_;
  std::string path_ = dir_ / "good.bin", bad_ = dir_ / "bad.bin";
  Sha256 hash_ = sha256("the tokenizer model");
  std::string bytes_;
};

TEST_F(ShardCorruption, BadMagic) {
  std::string b = bytes_;
  b[0] = 'X';
  EXPECT_EQ(open_modified(b), "[shard] " + bad_ + ": not an ultramoe token shard (bad magic)");
  EXPECT_EQ(open_modified("tiny"), "[shard] " + bad_ + ": not an ultramoe token shard (bad magic)");
  EXPECT_EQ(open_modified(""), "[shard] " + bad_ + ": not an ultramoe token shard (bad magic)");
}

TEST_F(ShardCorruption, WrongVersion) {
  std::string b = bytes_;
  b[8] = 2;
  EXPECT_EQ(open_modified(b),
            "[shard] " + bad_ + ": unsupported version 2 (this build reads version 1)");
}

TEST_F(ShardCorruption, WrongWidth) {
  std::string b = bytes_;
  b[12] = 3;
  EXPECT_EQ(open_modified(b), "[shard] " + bad_ + ": token width 3 is not 2 or 4 bytes");
}

TEST_F(ShardCorruption, Truncated) {
  EXPECT_EQ(open_modified(bytes_.substr(0, bytes_.size() - 3)),
            "[shard] " + bad_ + ": truncated: expected 264 bytes, file has 261");
  EXPECT_EQ(open_modified(bytes_.substr(0, 40)),
            "[shard] " + bad_ + ": truncated: expected at least 64 bytes of header, file has 40");
  EXPECT_EQ(open_modified(bytes_ + "xx"),
            "[shard] " + bad_ + ": trailing data: expected 264 bytes, file has 266");
}

TEST_F(ShardCorruption, WrongTokenizerHash) {
  EXPECT_NO_THROW(Shard(path_, hash_));
  const Sha256 other = sha256("another tokenizer");
  const std::string e = error_of([&] { Shard s(path_, other, "DIR/tokenizer.model"); });
  EXPECT_EQ(e, "[shard] " + path_ + ": tokenizer mismatch: the shard was written with tokenizer "
                   "sha256 " + to_hex(hash_) + ", DIR/tokenizer.model has " + to_hex(other));
}

TEST_F(ShardCorruption, IdOutsideTheVocabulary) {
  std::string b = bytes_;
  b[kShardHeaderBytes + 2 * 7] = 60;  // token 7 := 60 >= 50
  EXPECT_EQ(open_modified(b),
            "[shard] " + bad_ + ": token 60 at position 7 is >= the vocabulary size 50");
}

TEST_F(ShardCorruption, VocabDoesNotFitWidth) {
  std::string b = bytes_;
  const uint64_t vocab = 70000;
  std::memcpy(b.data() + 24, &vocab, 8);
  EXPECT_EQ(open_modified(b),
            "[shard] " + bad_ + ": vocabulary size 70000 does not fit token width 2");
}

TEST_F(ShardCorruption, MissingFile) {
  EXPECT_ERROR_HAS(Shard(dir_ / "nope.bin"), "nope.bin: cannot open: No such file or directory");
}

// ---------------------------------------------------------------------------------------------
// Windows

// A shard whose token i is i % vocab, so a window's contents give away its position.
struct CountingShard {
  CountingShard(int64_t n, int64_t vocab = 60000) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>(i % vocab);
    write_shard(dir / "s.bin", ids, vocab, Sha256{});
    shard.emplace(dir / "s.bin");
  }
  TempDir dir;
  std::optional<Shard> shard;
};

std::vector<int32_t> batch(const TrainWindows& w, int64_t step, int64_t b, int64_t first,
                           int64_t count) {
  std::vector<int32_t> out(static_cast<size_t>(count * w.window_len()), -1);
  w.fill(step, b, first, count, out.data());
  return out;
}

TEST(Windows, CountStrideAndOverlap) {
  CountingShard cs(1000);
  const int64_t T = 16;
  const TrainWindows w(*cs.shard, T, 1);
  EXPECT_EQ(w.n_windows(), (1000 - 1) / T);
  // a batch of every window (one epoch): each holds T+1 consecutive tokens starting at w*T
  const int64_t n = w.n_windows();
  const std::vector<int32_t> all = batch(w, 1, n, 0, n);
  std::vector<int> seen(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    const int32_t* win = all.data() + k * (T + 1);
    ASSERT_EQ(win[0] % T, 0);
    const int64_t id = win[0] / T;
    for (int64_t j = 0; j <= T; ++j) ASSERT_EQ(win[j], id * T + j);
    ++seen[id];
  }
  // every window exactly once per epoch; windows w and w+1 share token (w+1)*T
  for (int c : seen) EXPECT_EQ(c, 1);
  // the tail past the last complete window is never used
  EXPECT_LT((n - 1) * T + T, 1000);
}

TEST(Windows, EveryEpochIsAPermutation) {
  CountingShard cs(2000);
  const TrainWindows w(*cs.shard, 8, 42);
  const int64_t n = w.n_windows();
  const int64_t B = 7;  // does not divide n: batches straddle epochs
  std::map<int64_t, std::vector<int>> count;
  for (int64_t step = 1; step <= 3 * n / B; ++step)
    for (int64_t i = 0; i < B; ++i) {
      const int64_t pos = (step - 1) * B + i;
      auto& c = count[pos / n];
      c.resize(static_cast<size_t>(n));
      ++c[w.window_of(step, B, i)];
    }
  for (int64_t e = 0; e < 2; ++e)
    for (int64_t k = 0; k < n; ++k) ASSERT_EQ(count[e][k], 1) << "epoch " << e << " window " << k;
  EXPECT_NE(w.permutation(0), w.permutation(1));
  // the first step takes the first B windows of epoch 0's order
  for (int64_t i = 0; i < B; ++i) EXPECT_EQ(w.window_of(1, B, i), w.permutation(0)[i]);
  EXPECT_EQ(w.epoch_of(1, B), 0);
  EXPECT_EQ(w.epoch_of(n / B + 1, B), (n / B) * B / n);
  EXPECT_EQ(w.epoch_of(2 * n / B + 2, B), (2 * n / B + 1) * B / n);
}

TEST(Windows, PureFunctionOfSeedStepAndIndex) {
  CountingShard cs(5000);
  const int64_t T = 32, B = 6;
  const TrainWindows a(*cs.shard, T, 7);
  const int64_t n = a.n_windows();
  // history: a walks steps 1..40 first; b (same seed) jumps straight to the later steps
  for (int64_t s = 1; s <= 40; ++s) batch(a, s, B, 0, B);
  const TrainWindows b(*cs.shard, T, 7);
  for (int64_t s : {int64_t{41}, int64_t{3}, n / B + 1, 5 * n / B + 2})
    EXPECT_EQ(batch(a, s, B, 0, B), batch(b, s, B, 0, B)) << "step " << s;
  // another seed gives another order
  const TrainWindows c(*cs.shard, T, 8);
  EXPECT_NE(batch(a, 1, B, 0, B), batch(c, 1, B, 0, B));
  EXPECT_NE(a.permutation(0), c.permutation(0));
  // a rank or micro-batch slice equals the same rows of the whole batch
  const std::vector<int32_t> whole = batch(a, 9, B, 0, B);
  std::vector<int32_t> parts = batch(b, 9, B, 0, 2);
  const std::vector<int32_t> rest = batch(b, 9, B, 2, B - 2);
  parts.insert(parts.end(), rest.begin(), rest.end());
  EXPECT_EQ(parts, whole);
}

TEST(Windows, ConcurrentFillsAgreeWithSerial) {
  // ranks' threads may fill their slices at once, across epoch boundaries
  CountingShard cs(3000);
  const int64_t T = 8, B = 5;
  const TrainWindows serial(*cs.shard, T, 11), shared(*cs.shard, T, 11);
  const int64_t n_steps = 3 * serial.n_windows() / B;
  std::vector<std::vector<int32_t>> got(static_cast<size_t>(n_steps));
#pragma omp parallel for num_threads(4) schedule(dynamic, 1)
  for (int64_t s = 1; s <= n_steps; ++s) got[s - 1] = batch(shared, s, B, 0, B);
  for (int64_t s = 1; s <= n_steps; ++s) ASSERT_EQ(got[s - 1], batch(serial, s, B, 0, B)) << s;
}

TEST(Windows, Errors) {
  CountingShard cs(100);
  EXPECT_EQ(TrainWindows(*cs.shard, 99, 0).n_windows(), 1);  // exactly T+1 tokens
  EXPECT_ERROR_HAS(TrainWindows(*cs.shard, 100, 0),
                   "100 tokens are too few for one training window of seq_len + 1 = 101");
  const TrainWindows w(*cs.shard, 10, 0);
  std::vector<int32_t> out(11 * 4);
  EXPECT_ERROR_HAS(w.fill(0, 4, 0, 1, out.data()), "optimizer steps are numbered from 1");
  EXPECT_ERROR_HAS(w.fill(1, 4, 3, 2, out.data()), "windows [3, 5) outside the batch of 4");
}

TEST(Windows, EvalScoresEveryTokenOnce) {
  for (int64_t n : {1, 2, 17, 33, 100, 257}) {
    CountingShard cs(n);
    for (int64_t T : {1, 4, 16, 32, 300}) {
      const EvalWindows ev(*cs.shard, T, 3);
      EXPECT_EQ(ev.n_targets(), std::max<int64_t>(0, n - 1));
      std::vector<int> scored(static_cast<size_t>(n));
      std::vector<int32_t> win(static_cast<size_t>(T + 1));
      for (int64_t i = 0; i < ev.n_windows(); ++i) {
        const int64_t valid = ev.fill(i, win.data());
        ASSERT_GE(valid, 1);
        ASSERT_LE(valid, T);
        ASSERT_EQ(valid, ev.valid_targets(i));
        for (int64_t j = 0; j <= T; ++j) {
          if (j <= valid) {
            ASSERT_EQ(win[j], i * T + j);  // real tokens
          } else {
            ASSERT_EQ(win[j], 3);  // pad
          }
        }
        for (int64_t j = 0; j < valid; ++j) ++scored[i * T + j + 1];  // target of position j
        if (i + 1 < ev.n_windows()) {
          ASSERT_EQ(valid, T);  // only the last window is short
        }
      }
      for (int64_t t = 1; t < n; ++t) ASSERT_EQ(scored[t], 1) << "n " << n << " T " << T;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Documents and the split

TEST(DataSplit, HashPicksFractionDeterministically) {
  std::vector<Document> docs;
  for (int i = 0; i < 4000; ++i)
    docs.push_back({"document " + std::to_string(i) + "\nsome text\n", "d" + std::to_string(i)});
  docs.push_back(docs[10]);  // an exact duplicate
  const Split a = split_documents(docs, 0.05);
  EXPECT_EQ(a.rule, "document_hash");
  const double frac = static_cast<double>(a.val.size()) / docs.size();
  EXPECT_NEAR(frac, 0.05, 0.01);
  EXPECT_EQ(a.train.size() + a.val.size(), docs.size());
  // the same on a second call and in another input order
  std::vector<Document> reversed(docs.rbegin(), docs.rend());
  const Split b = split_documents(reversed, 0.05);
  std::set<std::string> va, vb;
  for (auto& d : a.val) va.insert(d.source);
  for (auto& d : b.val) vb.insert(d.source);
  EXPECT_EQ(va, vb);
  // the duplicate lands on the same side as its original
  const bool orig_val = hash_picks_validation(docs[10].text, 0.05);
  EXPECT_EQ(std::count_if(a.val.begin(), a.val.end(),
                          [&](const Document& d) { return d.text == docs[10].text; }),
            orig_val ? 2 : 0);
}

TEST(DataSplit, HashKeepsBothSidesNonEmpty) {
  std::vector<Document> docs;
  for (int i = 0; i < 20; ++i) docs.push_back({"doc " + std::to_string(i), ""});
  const Split tiny = split_documents(docs, 1e-9);
  EXPECT_EQ(tiny.val.size(), 1u);
  const Split huge = split_documents(docs, 0.999999999);
  EXPECT_EQ(huge.train.size(), 1u);
  const Split none = split_documents(docs, 0.0);
  EXPECT_EQ(none.val.size(), 0u);
  EXPECT_ERROR_HAS(split_documents(docs, 1.0), "validation fraction must be in [0, 1), got 1");
}

TEST(DataSplit, FewDocumentsGiveTrailingLines) {
  std::string hundred;
  for (int i = 0; i < 100; ++i) hundred += "line " + std::to_string(i) + "\n";
  std::string no_final_newline = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj";  // 10 lines
  const std::vector<Document> docs = {
      {hundred, "h"}, {no_final_newline, "n"}, {"one line only\n", "o"}, {"", "empty"}};
  const Split s = split_documents(docs, 0.05);
  EXPECT_EQ(s.rule, "trailing_lines");
  ASSERT_EQ(s.train.size(), 3u);  // the empty document is dropped
  ASSERT_EQ(s.val.size(), 2u);    // the one-line document has nothing to give
  // 5% of 100 lines = 5 lines, cut after a newline
  EXPECT_EQ(s.val[0].text, "line 95\nline 96\nline 97\nline 98\nline 99\n");
  EXPECT_EQ(s.train[0].text + s.val[0].text, hundred);
  EXPECT_EQ(s.val[0].source, "h (last 5 of 100 lines)");
  // round(0.5) lines -> at least one line
  EXPECT_EQ(s.val[1].text, "j");
  EXPECT_EQ(s.train[1].text, "a\nb\nc\nd\ne\nf\ng\nh\ni\n");
  EXPECT_EQ(s.train[2].text, "one line only\n");
  // a large fraction still leaves a line for training
  const Split big = split_documents({{"a\nb\nc\n", "x"}}, 0.99);
  EXPECT_EQ(big.train[0].text, "a\n");
  EXPECT_EQ(big.val[0].text, "b\nc\n");
}

TEST(DataDocuments, TextAndJsonl) {
  TempDir dir;
  write_text(dir / "a.txt", "plain text\nwith two lines\n");
  auto a = read_documents(dir / "a.txt");
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].text, "plain text\nwith two lines\n");
  EXPECT_EQ(a[0].source, dir / "a.txt");

  write_text(dir / "b.jsonl",
             "{\"text\": \"first\\nrecord\", \"id\": 1}\n\n{\"text\": \"caf\\u00e9 \xF0\x9F\x8E\x89\"}\n");
  auto b = read_documents(dir / "b.jsonl");
  ASSERT_EQ(b.size(), 2u);
  EXPECT_EQ(b[0].text, "first\nrecord");
  EXPECT_EQ(b[1].text, "café 🎉");
  EXPECT_EQ(b[1].source, dir / "b.jsonl:3");

  write_text(dir / "c.jsonl", "{\"text\": \"ok\"}\n{\"txt\": \"wrong key\"}\n");
  EXPECT_EQ(error_of([&] { read_documents(dir / "c.jsonl"); }),
            "[data] " + (dir / "c.jsonl:2") + ": no string field \"text\"");
  write_text(dir / "d.jsonl", "{\"text\": 5}\n");
  EXPECT_EQ(error_of([&] { read_documents(dir / "d.jsonl"); }),
            "[data] " + (dir / "d.jsonl:1") + ": no string field \"text\"");
  write_text(dir / "e.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated}\n");
  EXPECT_ERROR_HAS(read_documents(dir / "e.jsonl"), "e.jsonl:2: not valid JSON");
  write_text(dir / "f.txt", "good line\nbad \xC3 line\n");
  EXPECT_EQ(error_of([&] { read_documents(dir / "f.txt"); }),
            "[data] " + (dir / "f.txt") + ":2: not valid UTF-8 (byte offset 14)");
  EXPECT_EQ(error_of([&] { read_documents(dir / "missing.txt"); }),
            "[data] input " + (dir / "missing.txt") + ": no such file");
  EXPECT_ERROR_HAS(read_documents(dir.path().string()), "is a directory");
}

// ---------------------------------------------------------------------------------------------
// data prepare

struct RunResult {
  int status;
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

RunResult run_binary(const TempDir& dir, const std::vector<std::string>& args) {
  std::string cmd = quote(ULTRAMOE_BINARY);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " > " + quote(dir / "stdout.txt") + " 2> " + quote(dir / "stderr.txt");
  const int rc = std::system(cmd.c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, slurp(dir / "stdout.txt"),
          slurp(dir / "stderr.txt")};
}

TEST(DataPrepare, EndToEndThroughTheBinary) {
  TempDir dir;
  // 3 text files + a JSONL of 3 records: 6 documents, fewer than 20 -> trailing-line split
  std::vector<std::string> texts;
  for (int i = 0; i < 3; ++i) {
    texts.push_back(synthetic_text(100 + i, 300));
    write_text(dir / ("doc" + std::to_string(i) + ".txt"), texts.back());
  }
  std::string jsonl;
  for (int i = 0; i < 3; ++i) {
    texts.push_back(synthetic_text(200 + i, 40));
    jsonl += nlohmann::json({{"text", texts.back()}}).dump() + "\n";
  }
  write_text(dir / "more.jsonl", jsonl);
  const std::string out = dir / "data";
  const RunResult r = run_binary(dir, {"data", "prepare", "--input", dir / "doc0.txt",
                                       dir / "doc1.txt", "--input", dir / "doc2.txt",
                                       "--input=" + (dir / "more.jsonl"), "--out", out,
                                       "--vocab-size", "700", "--val-fraction", "0.1"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("train: "), std::string::npos) << r.out;

  const DataDir data(out);
  const nlohmann::json meta = nlohmann::json::parse(slurp(out + "/meta.json"));
  EXPECT_EQ(meta["tokenizer"]["vocab_size"].get<int64_t>(), data.vocab_size());
  EXPECT_LE(data.vocab_size(), 700);
  EXPECT_EQ(meta["tokenizer"]["vocab_size_requested"].get<int64_t>(), 700);
  EXPECT_EQ(meta["tokenizer"]["sha256"].get<std::string>(), to_hex(sha256(slurp(out + "/tokenizer.model"))));
  EXPECT_EQ(meta["splits"]["train"]["tokens"].get<int64_t>(), data.train().size());
  EXPECT_EQ(meta["splits"]["val"]["tokens"].get<int64_t>(), data.val().size());
  EXPECT_EQ(meta["splits"]["train"]["documents"].get<int64_t>(), 6);
  EXPECT_EQ(meta["splits"]["val"]["documents"].get<int64_t>(), 6);
  EXPECT_EQ(meta["split_rule"]["rule"].get<std::string>(), "trailing_lines");
  EXPECT_EQ(meta["sources"].size(), 4u);

  // the shards decode back to the documents, each framed BOS ... EOS
  std::vector<Document> docs;
  for (const std::string& t : texts) docs.push_back({t, ""});
  const Split split = split_documents(docs, 0.1);
  for (auto [shard, part] : {std::pair{&data.train(), &split.train}, {&data.val(), &split.val}}) {
    std::vector<int32_t> ids(static_cast<size_t>(shard->size()));
    shard->copy(0, shard->size(), ids.data());
    size_t d = 0;
    for (size_t i = 0; i < ids.size();) {
      ASSERT_EQ(ids[i], Tokenizer::kBosId);
      const size_t end = std::find(ids.begin() + i, ids.end(), Tokenizer::kEosId) - ids.begin();
      ASSERT_LT(end, ids.size());
      ASSERT_LT(d, part->size());
      EXPECT_EQ(data.tokenizer().decode(std::span(ids).subspan(i + 1, end - i - 1)),
                (*part)[d].text);
      ++d;
      i = end + 1;
    }
    EXPECT_EQ(d, part->size());
  }

  // preparing again gives the same bytes; reusing the tokenizer gives the same shards
  const std::string again = dir / "again";
  ASSERT_EQ(run_binary(dir, {"data", "prepare", "--input", dir / "doc0.txt", dir / "doc1.txt",
                             dir / "doc2.txt", dir / "more.jsonl", "--out", again,
                             "--vocab-size", "700", "--val-fraction", "0.1"})
                .status,
            0);
  for (const char* f : {"tokenizer.model", "train.bin", "val.bin", "meta.json"})
    EXPECT_EQ(slurp(out + "/" + f), slurp(again + "/" + f)) << f;
  const std::string reuse = dir / "reuse";
  const RunResult rr = run_binary(dir, {"data", "prepare", "--input", dir / "doc0.txt",
                                        dir / "doc1.txt", dir / "doc2.txt", dir / "more.jsonl",
                                        "--out", reuse, "--tokenizer", out + "/tokenizer.model",
                                        "--val-fraction", "0.1"});
  ASSERT_EQ(rr.status, 0) << rr.err;
  for (const char* f : {"tokenizer.model", "train.bin", "val.bin"})
    EXPECT_EQ(slurp(out + "/" + f), slurp(reuse + "/" + f)) << f;

  // a shard from another tokenizer is caught when the directory is opened
  const std::string other = dir / "other";
  ASSERT_EQ(run_binary(dir, {"data", "prepare", "--input", dir / "doc0.txt", "--out", other,
                             "--vocab-size", "500"})
                .status,
            0);
  fs::copy_file(other + "/train.bin", reuse + "/train.bin", fs::copy_options::overwrite_existing);
  EXPECT_ERROR_HAS(DataDir d(reuse), "train.bin: tokenizer mismatch");
  EXPECT_ERROR_HAS(data.check_model_vocab(data.vocab_size() - 1),
                   "is smaller than the data's vocabulary");
  EXPECT_NO_THROW(data.check_model_vocab(data.vocab_size() + 10));
}

TEST(DataPrepare, BadInputIsOneClearLine) {
  TempDir dir;
  write_text(dir / "a.txt", "some text\n");
  const std::string missing = dir / "missing.txt";
  RunResult r = run_binary(dir, {"data", "prepare", "--input", missing, "--out", dir / "o"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "ultramoe: error: [data] input " + missing + ": no such file\n");
  EXPECT_EQ(r.out, "");

  r = run_binary(dir, {"data", "prepare", "--input", dir / "a.txt", "--out", dir / "a.txt"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "ultramoe: error: [data] --out " + (dir / "a.txt") +
                       " exists and is not a directory\n");

  r = run_binary(dir, {"data", "prepare", "--input", dir / "a.txt", "--out", dir / "o",
                       "--vocab-size", "7"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err,
            "ultramoe: error: [data] --vocab-size 7 is out of range: byte fallback alone needs "
            "264 ids (8 fixed + 256 byte pieces)\n");

  write_text(dir / "empty.txt", "");
  r = run_binary(dir, {"data", "prepare", "--input", dir / "empty.txt", "--out", dir / "o"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "ultramoe: error: [data] the input holds no text (1 file, 1 documents, all "
                   "empty)\n");

  r = run_binary(dir, {"data", "prepare", "--out", dir / "o"});
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(r.err, "ultramoe: error: [data] missing required option --input\n");

  r = run_binary(dir, {"data", "prepare", "--help"});
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.out.find("usage: ultramoe data prepare --input PATH... --out DIR"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face interop pieces

ModelConfig exportable_model() {
  json m = {{"vocab_size", 512}, {"hidden_size", 32}, {"num_hidden_layers", 2}, {"num_attention_heads", 2},
            {"kv_lora_rank", 8}, {"qk_nope_head_dim", 2}, {"qk_rope_head_dim", 4}, {"v_head_dim", 4},
            {"q_lora_rank", 8}, {"first_k_dense_replace", 1}, {"intermediate_size", 64},
            {"moe_intermediate_size", 16}, {"n_routed_experts", 4}, {"n_shared_experts", 1},
            {"num_experts_per_tok", 2}, {"sandwich_norm", false}, {"num_nextn_predict_layers", 1}};
  return parse_model_config(m);
}

// File row r holds model row perm[r]: rotate-half pair (j, j+d/2) becomes interleaved (2j, 2j+1),
// head by head, after the nope rows; the latent rows of kv_a_proj_with_mqa stay in place.
TEST(HfInterop, RopeRowsInterleaveHeadByHead) {
  const ModelConfig c = exportable_model();
  const std::vector<int64_t> q = rope_row_permutation("model.layers.0.self_attn.q_b_proj.weight", c);
  // per head: 2 nope rows, then rope rows 0,1,2,3 (pairs (0,2), (1,3)) stored as 0,2,1,3
  EXPECT_EQ(q, (std::vector<int64_t>{0, 1, 2, 4, 3, 5, 6, 7, 8, 10, 9, 11}));
  const std::vector<int64_t> kv = rope_row_permutation("model.layers.2.self_attn.kv_a_proj_with_mqa.weight", c);
  ASSERT_EQ(kv.size(), 12u);
  EXPECT_EQ(std::vector<int64_t>(kv.begin(), kv.begin() + 8), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(std::vector<int64_t>(kv.begin() + 8, kv.end()), (std::vector<int64_t>{8, 10, 9, 11}));
  EXPECT_TRUE(rope_row_permutation("model.layers.0.self_attn.kv_b_proj.weight", c).empty());
  EXPECT_TRUE(rope_row_permutation("model.layers.0.self_attn.o_proj.weight", c).empty());
  std::vector<int64_t> seen = q;  // a permutation
  std::sort(seen.begin(), seen.end());
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], int64_t(i));
}

TEST(HfInterop, ConfigsMapAndRefuse) {
  ModelConfig c = exportable_model();
  EXPECT_TRUE(deepseek_v3_blockers(c).empty());
  const json hf = deepseek_v3_config(c, DType::bf16);
  EXPECT_EQ(hf["model_type"], "deepseek_v3");
  EXPECT_EQ(hf["rope_interleave"], true);
  EXPECT_EQ(hf["num_key_value_heads"], 2);
  EXPECT_EQ(hf["n_group"], 1);  // greedy routing is one group
  EXPECT_EQ(hf["dtype"], "bfloat16");
  EXPECT_EQ(hf["q_lora_rank"], 8);
  // and back: DeepSeek-V3 routes with the bias, group-limited
  const ModelConfig back = model_config_from_hf(hf, "config.json");
  EXPECT_EQ(back.topk_method, TopkMethod::group_limited);
  EXPECT_TRUE(back.aux_free_bias);
  EXPECT_EQ(back.hidden_size, c.hidden_size);
  EXPECT_EQ(back.num_nextn_predict_layers, 1);
  EXPECT_TRUE(hf_rope_interleaved(hf));

  ModelConfig dssn = c;
  dssn.sandwich_norm = true;
  dssn.scoring_func = ScoreFunc::softmax;
  const std::vector<std::string> why = deepseek_v3_blockers(dssn);
  ASSERT_EQ(why.size(), 2u);
  EXPECT_NE(why[0].find("sandwich norm"), std::string::npos);
  EXPECT_NE(why[1].find("softmax"), std::string::npos);

  json yarn = hf;
  yarn["rope_scaling"] = {{"type", "yarn"}, {"factor", 40}};
  EXPECT_ERROR_HAS(model_config_from_hf(yarn, "c.json"), "YaRN");
  json kvh = hf;
  kvh["num_key_value_heads"] = 1;
  EXPECT_ERROR_HAS(model_config_from_hf(kvh, "c.json"), "num_key_value_heads 1");
  json llama = hf;
  llama["model_type"] = "llama";
  EXPECT_ERROR_HAS(model_config_from_hf(llama, "c.json"), "model_type \"llama\" is not supported");
  json v2 = hf;
  v2["model_type"] = "deepseek_v2";
  v2.erase("topk_method");
  v2.erase("scoring_func");
  v2["norm_topk_prob"] = false;
  const ModelConfig m2 = model_config_from_hf(v2, "c.json");
  EXPECT_EQ(m2.scoring_func, ScoreFunc::softmax);
  EXPECT_EQ(m2.topk_method, TopkMethod::greedy);
  EXPECT_FALSE(m2.aux_free_bias);
  v2["topk_method"] = "group_limited_greedy";
  v2["n_group"] = 2;
  v2["topk_group"] = 1;
  EXPECT_ERROR_HAS(model_config_from_hf(v2, "c.json"), "ranks groups by their best expert");
  v2["topk_group"] = 2;  // every group kept: plain greedy
  EXPECT_EQ(model_config_from_hf(v2, "c.json").topk_method, TopkMethod::greedy);
  v2["norm_topk_prob"] = true;
  EXPECT_ERROR_HAS(model_config_from_hf(v2, "c.json"), "ambiguous");
}

// tokenizer.json: every piece in the vocabulary at its id, the fixed ids as added tokens, and
// merge rules whose two halves make a piece, best-scoring pieces first.
TEST(HfInterop, TokenizerJsonHoldsVocabMergesAndSpecials) {
  const Tokenizer& tok = small_tokenizer();
  const json j = json::parse(hf_tokenizer_json(tok));
  const json& vocab = j["model"]["vocab"];
  ASSERT_EQ(int64_t(vocab.size()), tok.vocab_size());
  for (int32_t i = 0; i < tok.vocab_size(); ++i) EXPECT_EQ(vocab[tok.piece(i)], i);
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  std::map<int, bool> special;
  for (const json& a : j["added_tokens"]) special[a["id"].get<int>()] = a["special"].get<bool>();
  EXPECT_EQ(special, (std::map<int, bool>{{0, true}, {1, true}, {2, true}, {3, true},
                                          {4, false}, {5, false}, {6, false}, {7, false}}));
  const json& merges = j["model"]["merges"];
  ASSERT_GT(merges.size(), 100u);
  float prev = std::numeric_limits<float>::infinity();
  for (const json& m : merges) {
    const std::string rule = m.get<std::string>();
    const size_t sp = rule.find(' ');
    ASSERT_NE(sp, std::string::npos) << rule;
    const std::string merged = rule.substr(0, sp) + rule.substr(sp + 1);
    ASSERT_TRUE(vocab.contains(merged)) << rule;
    const float score = tok.piece_score(vocab[merged].get<int32_t>());
    EXPECT_LE(score, prev) << rule;
    prev = score;
  }
  EXPECT_EQ(j["normalizer"]["content"], "\xE2\x96\x81");
}

TEST(HfInterop, ByteSizes) {
  EXPECT_EQ(parse_byte_size("5GB", "x"), 5000000000u);
  EXPECT_EQ(parse_byte_size("200MB", "x"), 200000000u);
  EXPECT_EQ(parse_byte_size("64kb", "x"), 64000u);
  EXPECT_EQ(parse_byte_size("2GiB", "x"), 2147483648u);
  EXPECT_EQ(parse_byte_size("1000", "x"), 1000u);
  EXPECT_ERROR_HAS(parse_byte_size("lots", "--max-shard-size"), "--max-shard-size");
  EXPECT_ERROR_HAS(parse_byte_size("5TB", "--max-shard-size"), "expected a size");
}

}  // namespace
}  // namespace um
