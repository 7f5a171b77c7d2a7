// Core layer: dtype conversion, RNG properties, arena, errors, CLI argument parsing, safetensors
// files and shard sets.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <vector>

#include "core/arena.h"
#include "core/cli_args.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/json_reader.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace um {
namespace {

TEST(BF16, RoundTripsExactValues) {
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 0.15625f, 65280.0f, 1.0e-38f}) {
    bf16 b = bf16::from_float(f);
    // these values have <= 8 significant bits, so they survive exactly
    if (f != 1.0e-38f) {
      EXPECT_EQ(b.to_float(), f) << f;
    }
  }
}

TEST(BF16, RoundsToNearestEven) {
  // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1+2^-7: ties go to even (1.0).
  EXPECT_EQ(bf16::from_float(1.0f + 0x1.0p-8f).to_float(), 1.0f);
  // 1 + 3*2^-8 is halfway between 1+2^-7 (odd mantissa) and 1+2^-6 (even): goes up.
  EXPECT_EQ(bf16::from_float(1.0f + 3 * 0x1.0p-8f).to_float(), 1.0f + 0x1.0p-6f);
  // just above half rounds up
  EXPECT_EQ(bf16::from_float(1.0f + 0x1.0p-8f + 0x1.0p-20f).to_float(), 1.0f + 0x1.0p-7f);
  // unit roundoff of an 8-significant-bit format: relative error <= 2^-8
  Philox rng(7, "bf16");
  for (int i = 0; i < 10000; ++i) {
    float f = static_cast<float>(rng.normal(i) * 100.0);
    float r = bf16::from_float(f).to_float();
    EXPECT_LE(std::fabs(r - f), std::fabs(f) * 0x1.0p-8f) << f;
  }
}

TEST(BF16, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(bf16::from_float(inf).to_float(), inf);
  EXPECT_EQ(bf16::from_float(-inf).to_float(), -inf);
  EXPECT_TRUE(std::isnan(bf16::from_float(std::nanf("")).to_float()));
  // the largest float rounds to infinity in bf16 (as in PyTorch)
  EXPECT_EQ(bf16::from_float(std::numeric_limits<float>::max()).to_float(), inf);
}

TEST(Rng, SameSeedSameValuesAnyThreadCount) {
  const int n = 4096;
  Philox rng(1234, "model.layers.0.mlp.gate.weight");
  std::vector<double> serial(n), parallel(n);
  for (int i = 0; i < n; ++i) serial[i] = rng.normal(i);
  for (int threads : {1, 2, 3}) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 7)
    for (int i = 0; i < n; ++i) parallel[i] = rng.normal(i);
    EXPECT_EQ(serial, parallel) << threads << " threads";
  }
  // Call order across streams does not matter: drawing another stream in between changes nothing.
  Philox other(1234, "model.norm.weight");
  std::vector<double> interleaved(n);
  for (int i = n - 1; i >= 0; --i) {
    (void)other.normal(i);
    interleaved[i] = rng.normal(i);
  }
  EXPECT_EQ(serial, interleaved);
}

TEST(Rng, StreamsAndSeedsDiffer) {
  Philox a(1, "w"), b(2, "w"), c(1, "v");
  int same_ab = 0, same_ac = 0;
  for (int i = 0; i < 1000; ++i) {
    same_ab += a.uniform(i) == b.uniform(i);
    same_ac += a.uniform(i) == c.uniform(i);
  }
  EXPECT_EQ(same_ab, 0);
  EXPECT_EQ(same_ac, 0);
}

TEST(Rng, NormalMoments) {
  Philox rng(42, "moments");
  const int n = 200000;
  double s = 0, s2 = 0, s4 = 0;
  for (int i = 0; i < n; ++i) {
    double x = rng.normal(i);
    s += x;
    s2 += x * x;
    s4 += x * x * x * x;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);      // 4.5 standard errors
  EXPECT_NEAR(s2 / n, 1.0, 0.015);
  EXPECT_NEAR(s4 / n, 3.0, 0.06);
  double u = 0;
  for (int i = 0; i < n; ++i) u += rng.uniform(i);
  EXPECT_NEAR(u / n, 0.5, 0.003);
  for (int i = 0; i < 1000; ++i) EXPECT_LT(rng.below(i, 10), 10u);
}

TEST(Arena, AlignsCountsAndRejectsOverflow) {
  Arena probe = Arena::counting();
  EXPECT_EQ(probe.alloc<float>(3), nullptr);
  probe.alloc<double>(100);
  EXPECT_EQ(probe.used(), 64u + 832u);
  Arena arena(probe.used());
  float* a = arena.alloc<float>(3);
  double* b = arena.alloc<double>(100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  EXPECT_THROW(arena.alloc<float>(1), Error);
  arena.reset();
  EXPECT_NE(arena.alloc<float>(1), nullptr);
}

TEST(Tensor, ContiguousViews) {
  std::vector<float> buf(24);
  TensorView v = TensorView::of(buf.data(), {2, 3, 4});
  EXPECT_EQ(v.numel(), 24);
  EXPECT_EQ(v.stride[0], 12);
  EXPECT_EQ(v.stride[2], 1);
  EXPECT_TRUE(v.is_contiguous());
  EXPECT_EQ(v.nbytes(), 96u);
  EXPECT_THROW(v.ptr<double>(), Error);
  EXPECT_EQ(shape_str(v.dims()), "(2,3,4)");
}

TEST(Error, CarriesOriginAndValue) {
  try {
    UM_CHECK(1 + 1 == 3, "checkpoint", "tensor ", "x", ": expected ", 3, ", got ", 2);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.origin(), "checkpoint");
    EXPECT_STREQ(e.what(), "[checkpoint] tensor x: expected 3, got 2");
  }
}

TEST(CliArgs, ParsesAndRejects) {
  CliArgs a("train", {"--config", "c.json", "--set", "a=1", "--set=b=2", "--resume"},
            {{"config", true}, {"set", true, true}, {"resume", false}});
  EXPECT_EQ(a.require("config"), "c.json");
  EXPECT_EQ(a.all("set"), (std::vector<std::string>{"a=1", "b=2"}));
  EXPECT_TRUE(a.has("resume"));
  EXPECT_THROW(CliArgs("train", {"--bogus"}, {{"config", true}}), Error);
  EXPECT_THROW(CliArgs("train", {"--config"}, {{"config", true}}), Error);
  EXPECT_THROW(CliArgs("train", {"--config", "a", "--config", "b"}, {{"config", true}}), Error);
  CliArgs n("x", {"--steps", "12x"}, {{"steps", true}});
  EXPECT_THROW(n.get_int("steps", 0), Error);
}

TEST(JsonReader, StrictKeysAndTypes) {
  json j = json::parse(R"({"a": 3, "b": "x", "c": 2.5, "d": true})");
  JsonReader r(j, "train");
  EXPECT_EQ(r.get<int64_t>("a"), 3);
  EXPECT_EQ(r.get<std::string>("b"), "x");
  EXPECT_THROW(r.get<int64_t>("c"), Error);  // 2.5 is not an integer
  EXPECT_EQ(r.opt<double>("missing", 7.0), 7.0);
  EXPECT_THROW(r.finish(), Error);            // d was never read
  r.skip("d");
  EXPECT_NO_THROW(r.finish());
  try {
    JsonReader r2(j, "train");
    r2.get<bool>("a");
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "[config] train.a: expected true or false, got 3");
  }
}

TEST(JsonReader, Overrides) {
  json j = json::parse(R"({"train": {"lr": 1.0}})");
  apply_override(j, "train.lr=3e-4");
  apply_override(j, "train.lr_schedule=cosine");
  apply_override(j, "parallel.ep=2");
  EXPECT_DOUBLE_EQ(j["train"]["lr"].get<double>(), 3e-4);
  EXPECT_EQ(j["train"]["lr_schedule"], "cosine");
  EXPECT_EQ(j["parallel"]["ep"], 2);
  EXPECT_THROW(apply_override(j, "novalue"), Error);
  EXPECT_THROW(apply_override(j, "train.lr.x=1"), Error);
}

// Shards tied by an index read like one file, by name (memory-mapped, converted on read); an
// index that names a missing file, or a tensor its file lacks, is an error naming both.
TEST(Safetensors, ShardSetsReadByNameAndCheckTheIndex) {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / ("um_st_" + std::to_string(::getpid()))).string();
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1.0f};
  std::vector<uint16_t> b(4);
  for (int i = 0; i < 4; ++i) b[i] = bf16::from_float(0.5f * float(i) - 1.0f).bits;
  SafetensorsWriter w1, w2;
  w1.add("a", DType::f32, {2, 3}, a.data());
  w2.add("b", DType::bf16, {4}, b.data());
  w1.write(dir + "/" + shard_file_name("model", 1, 2), false);
  w2.write(dir + "/" + shard_file_name("model", 2, 2), false);
  EXPECT_EQ(shard_file_name("model", 2, 2), "model-00002-of-00002.safetensors");
  write_safetensors_index(dir + "/model.safetensors.index.json",
                          {{"a", "model-00001-of-00002.safetensors"}, {"b", "model-00002-of-00002.safetensors"}},
                          6 * 4 + 4 * 2, false);
  ASSERT_TRUE(SafetensorsSet::exists(dir, "model"));
  {
    SafetensorsSet set(dir, "model");
    EXPECT_TRUE(set.sharded());
    EXPECT_EQ(set.tensors().size(), 2u);
    std::vector<float> ra(6), rb(4);
    set.read_into<float>("a", ra.data(), {2, 3});
    set.read_into<float>("b", rb.data(), {4});
    EXPECT_EQ(ra, a);
    EXPECT_EQ(rb, (std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f}));
    EXPECT_THROW(set.read_into<float>("a", ra.data(), {3, 2}), Error);  // shape checked
    EXPECT_THROW(set.entry("c"), Error);
  }
  auto error_of = [&] {
    try {
      SafetensorsSet set(dir, "model");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  write_safetensors_index(dir + "/model.safetensors.index.json",
                          {{"a", "model-00001-of-00002.safetensors"}, {"c", "model-00002-of-00002.safetensors"}}, 0, false);
  EXPECT_NE(error_of().find("tensor c is not in model-00002-of-00002.safetensors"), std::string::npos) << error_of();
  write_safetensors_index(dir + "/model.safetensors.index.json", {{"a", "model-00009-of-00009.safetensors"}}, 0, false);
  EXPECT_NE(error_of().find("lists model-00009-of-00009.safetensors, which is missing"), std::string::npos) << error_of();
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"weight_map\": {\"a\": \"../x\"}}";
  EXPECT_NE(error_of().find("is not a file name"), std::string::npos) << error_of();
  // a truncated shard is caught when its header is read
  w1.write(dir + "/model.safetensors", false);
  fs::remove(dir + "/model.safetensors.index.json");
  fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") - 4);
  EXPECT_NE(error_of().find("truncated"), std::string::npos) << error_of();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace um
