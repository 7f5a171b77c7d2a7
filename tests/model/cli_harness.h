// Running the ultramoe binary from tests: a scratch directory, a synthetic corpus, a prepared
// data directory, and commands whose exit status, stdout and stderr are captured.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/rng.h"

namespace um::test {

namespace fs = std::filesystem;

struct CmdResult {
  int status = -1;  // exit status, or 128 + signal
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `sh -c command` with stdout/stderr captured to files in dir.
inline CmdResult run_cmd(const std::string& command, const std::string& dir) {
  const std::string o = dir + "/cmd.out", e = dir + "/cmd.err";
  const std::string full = "(" + command + ") > " + o + " 2> " + e;
  const int raw = std::system(full.c_str());
  CmdResult r;
  if (WIFEXITED(raw)) r.status = WEXITSTATUS(raw);
  else if (WIFSIGNALED(raw)) r.status = 128 + WTERMSIG(raw);
  r.out = slurp(o);
  r.err = slurp(e);
  return r;
}

inline std::string bin() { return ULTRAMOE_BINARY; }

// A scratch directory removed at the end of the test.
struct ScratchDir {
  std::string path;
  ScratchDir() {
    char tmpl[] = "/tmp/ultramoe-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// Deterministic English-like text: sentences from a small grammar, so a tiny model has structure
// to learn in a few dozen steps.
inline std::string synthetic_corpus(int n_sentences, uint64_t seed) {
  static const char* subj[] = {"the cat", "a dog", "my sister", "the old man", "Elizabeth", "Mr. Darcy", "the girl", "our neighbour"};
  static const char* verb[] = {"walked to", "looked at", "spoke with", "laughed at", "wrote to", "thought of", "danced with", "waited for"};
  static const char* obj[] = {"the garden", "the house", "her mother", "the letter", "the river", "a friend", "the ball", "the town"};
  static const char* tail[] = {".", " in the morning.", " with great pleasure.", " again.", " at last.", " before dinner."};
  Philox rng(seed, "corpus");
  std::string s;
  for (int i = 0; i < n_sentences; ++i) {
    s += subj[rng.below(4 * i, 8)];
    s += " ";
    s += verb[rng.below(4 * i + 1, 8)];
    s += " ";
    s += obj[rng.below(4 * i + 2, 8)];
    s += tail[rng.below(4 * i + 3, 6)];
    s += (i % 5 == 4) ? "\n" : " ";
  }
  return s;
}

// Writes 30 documents as JSONL and prepares a data directory with a small vocabulary.
inline std::string prepare_synthetic_data(const std::string& dir) {
  const std::string jsonl = dir + "/corpus.jsonl";
  {
    std::ofstream f(jsonl);
    for (int d = 0; d < 30; ++d) {
      std::string text = synthetic_corpus(60, 100 + d);
      std::string esc;
      for (char c : text) esc += c == '\n' ? std::string("\\n") : std::string(1, c);
      f << "{\"text\": \"" << esc << "\"}\n";
    }
  }
  const std::string data = dir + "/data";
  CmdResult r = run_cmd(bin() + " data prepare --input " + jsonl + " --out " + data +
                            " --vocab-size 400 --val-fraction 0.1", dir);
  EXPECT_EQ(r.status, 0) << r.err;
  return data;
}

// The tiny config shrunk to run in milliseconds per step on the synthetic data.
inline std::string tiny_overrides() {
  return " --set model.vocab_size=512 --set data.seq_len=32 --set train.batch_size=4"
         " --set train.micro_batch_size=2 --set train.warmup_steps=2 --set train.eval_batches=2";
}

inline std::string tiny_config() { return std::string(ULTRAMOE_SOURCE_DIR) + "/configs/tiny.json"; }

}  // namespace um::test
