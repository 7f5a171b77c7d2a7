// Tests of cuda-emu, the CPU emulation of the CUDA subset our backend uses
// (src/ops/cuda/emu/emu.h): kernels written the way the backend writes them — UM_LAUNCH,
// UM_DYNAMIC_SMEM, plain CUDA syntax otherwise — must run with CUDA's semantics (indices,
// barriers, shuffles and votes, shared memory, atomics, bf16 rounding, cuBLAS, WMMA), and the
// emulator's checks must fire: host pointers passed to kernels, copies in the wrong direction,
// deadlocks, misused warp operations, out-of-bounds accesses, host reads of device memory in
// guard mode. Compiled with g++ against the emulator's headers only.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <mma.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

// The launch macros of the backend's common header, as it defines them in emulation mode.
#define UM_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::um_emu::launch(kernel, dim3(grid), dim3(block), size_t(smem), stream, __VA_ARGS__)
#define UM_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::um_emu::dynamic_smem())

namespace {

// Whether `text` contains `part`; prints the text when it does not.
testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return testing::AssertionSuccess();
  return testing::AssertionFailure() << "\"" << part << "\" is not in:\n" << text;
}

// A failed launch is the last error and the next synchronising call's error, once; the
// synchronising call's error is in turn the last error.
void expect_launch_error(cudaError_t error) {
  EXPECT_EQ(cudaGetLastError(), error);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // cleared by the read
  EXPECT_EQ(cudaDeviceSynchronize(), error);
  EXPECT_EQ(cudaGetLastError(), error);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

// A cudaMalloc'd array of n T.
template <class T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) { EXPECT_EQ(cudaMalloc(&p_, n * sizeof(T)), cudaSuccess); }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { EXPECT_EQ(cudaFree(p_), cudaSuccess); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return p_; }
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), n_);
    EXPECT_EQ(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    EXPECT_EQ(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  size_t n_;
  T* p_ = nullptr;
};

// ---- Indices --------------------------------------------------------------------------------

__global__ void write_indices(uint4* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
  out[block * threads + thread] =
      make_uint4(block, thread, threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16,
                 blockIdx.x | blockIdx.y << 8 | blockIdx.z << 16);
}

TEST(CudaEmu, IndicesCoverMultiDimensionalGridsAndBlocks) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  const unsigned blocks = 12, threads = 64;
  DeviceArray<uint4> out(blocks * threads);
  UM_LAUNCH(write_indices, grid, block, 0, 0, out.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<uint4> host = out.download();
  for (unsigned bz = 0, b = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx, ++b)
        for (unsigned tz = 0, t = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 4; ++ty)
            for (unsigned tx = 0; tx < 8; ++tx, ++t) {
              const uint4 v = host[b * threads + t];
              ASSERT_EQ(v.x, b);
              ASSERT_EQ(v.y, t);
              ASSERT_EQ(v.z, tx | ty << 8 | tz << 16);
              ASSERT_EQ(v.w, bx | by << 8 | bz << 16);
            }
}

// ---- Block reduction ------------------------------------------------------------------------

__global__ void __launch_bounds__(256)
    block_sum(const float* __restrict__ x, int n, float* __restrict__ partial) {
  __shared__ float s[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

TEST(CudaEmu, BlockReductionThroughSharedMemoryAndSyncthreads) {
  const int n = 100000, threads = 256, blocks = (n + threads - 1) / threads;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = dist(rng);
  DeviceArray<float> dx(x), dpartial(blocks);
  UM_LAUNCH(block_sum, blocks, threads, 0, 0, dx.get(), n, dpartial.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> partial = dpartial.download();

  // Each partial is exactly the float tree reduction of its block, in the kernel's order.
  double total = 0.0, emulated_total = 0.0;
  for (int b = 0; b < blocks; ++b) {
    float s[threads];
    for (int t = 0; t < threads; ++t) s[t] = b * threads + t < n ? x[b * threads + t] : 0.0f;
    for (int stride = threads / 2; stride > 0; stride /= 2)
      for (int t = 0; t < stride; ++t) s[t] += s[t + stride];
    ASSERT_EQ(partial[b], s[0]) << "block " << b;
    emulated_total += partial[b];
  }
  for (float v : x) total += v;
  EXPECT_NEAR(emulated_total, total, 1e-5 * n);
}

// ---- Warp operations ------------------------------------------------------------------------

__device__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__global__ void warp_sums(const float* x, float* out) {
  const unsigned t = threadIdx.x + blockDim.x * threadIdx.y;
  const unsigned i = blockIdx.x * blockDim.x * blockDim.y + t;
  out[i] = warp_sum(x[i]);
}

TEST(CudaEmu, WarpReductionWithShflXor) {
  const dim3 block(16, 8);  // lanes follow the linear thread index: a warp spans two rows
  const int blocks = 3, n = blocks * 128;
  std::vector<float> x(n);
  for (int i = 0; i < n; ++i) x[i] = float(i % 97);  // integers: the sums are exact
  DeviceArray<float> dx(x), dout(n);
  UM_LAUNCH(warp_sums, blocks, block, 0, 0, dx.get(), dout.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> out = dout.download();
  for (int w = 0; w < n / 32; ++w) {
    const float expected = std::accumulate(x.begin() + w * 32, x.begin() + w * 32 + 32, 0.0f);
    for (int lane = 0; lane < 32; ++lane) ASSERT_EQ(out[w * 32 + lane], expected) << w << lane;
  }
}

// One row of results per operation, one column per lane.
enum Shuffle {
  kDown3,
  kUp5Width8,
  kIdx,
  kIdx9Width8,
  kXor16Width16,
  kXor1Double,
  kDown1Int64,
  kBallot,
  kAny,
  kAllTrue,
  kAllFalse,
  kShuffles
};

__global__ void shuffles(long long* out) {
  const int lane = threadIdx.x % 32;
  const int v = 100 + lane;
  long long* row = out + lane;
  row[kDown3 * 32] = __shfl_down_sync(0xffffffffu, v, 3);
  row[kUp5Width8 * 32] = __shfl_up_sync(0xffffffffu, v, 5, 8);
  row[kIdx * 32] = __shfl_sync(0xffffffffu, v, lane * 7 % 32);
  row[kIdx9Width8 * 32] = __shfl_sync(0xffffffffu, v, 9, 8);
  row[kXor16Width16 * 32] = __shfl_xor_sync(0xffffffffu, v, 16, 16);
  row[kXor1Double * 32] = (long long)__shfl_xor_sync(0xffffffffu, v + 0.5, 1);
  row[kDown1Int64 * 32] = __shfl_down_sync(0xffffffffu, (1ll << 40) + v, 1);
  row[kBallot * 32] = __ballot_sync(0xffffffffu, lane % 3 == 0);
  row[kAny * 32] = __any_sync(0xffffffffu, lane == 7);
  row[kAllTrue * 32] = __all_sync(0xffffffffu, lane < 32);
  row[kAllFalse * 32] = __all_sync(0xffffffffu, lane != 5);
}

TEST(CudaEmu, ShuffleAndVoteSemantics) {
  DeviceArray<long long> dout(kShuffles * 32);
  UM_LAUNCH(shuffles, 1, 32, 0, 0, dout.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<long long> out = dout.download();
  // The rules of the CUDA programming guide: lanes form groups of `width`; down/up read
  // delta lanes away within the group, else the caller's own value; srcLane is taken modulo
  // width within the group; xor may read an earlier group but not a later one.
  auto value = [](int lane) { return 100 + lane; };
  unsigned ballot = 0;
  for (int lane = 0; lane < 32; lane += 3) ballot |= 1u << lane;
  for (int lane = 0; lane < 32; ++lane) {
    auto at = [&](Shuffle s) { return out[s * 32 + lane]; };
    EXPECT_EQ(at(kDown3), value(lane + 3 < 32 ? lane + 3 : lane)) << lane;
    EXPECT_EQ(at(kUp5Width8), value(lane % 8 >= 5 ? lane - 5 : lane)) << lane;
    EXPECT_EQ(at(kIdx), value(lane * 7 % 32)) << lane;
    EXPECT_EQ(at(kIdx9Width8), value(lane / 8 * 8 + 1)) << lane;
    EXPECT_EQ(at(kXor16Width16), value(lane >= 16 ? lane - 16 : lane)) << lane;
    EXPECT_EQ(at(kXor1Double), value(lane ^ 1)) << lane;
    EXPECT_EQ(at(kDown1Int64), (1ll << 40) + value(lane < 31 ? lane + 1 : lane)) << lane;
    EXPECT_EQ(at(kBallot), ballot);
    EXPECT_EQ(at(kAny), 1);
    EXPECT_EQ(at(kAllTrue), 1);
    EXPECT_EQ(at(kAllFalse), 0);
  }
}

// Two half-warps shuffle concurrently with disjoint masks.
__global__ void half_warp_sums(int* out) {
  const unsigned lane = threadIdx.x % 32, mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  int v = int(lane);
  for (int offset = 8; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset);
  __syncwarp();
  out[threadIdx.x] = v + __syncthreads_count(lane == 0);
}

TEST(CudaEmu, DisjointMasksAndSyncthreadsCount) {
  DeviceArray<int> dout(64);
  UM_LAUNCH(half_warp_sums, 1, 64, 0, 0, dout.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<int> out = dout.download();
  for (int t = 0; t < 64; ++t) EXPECT_EQ(out[t], (t % 32 < 16 ? 120 : 376) + 2) << t;
}

// ---- Dynamic shared memory ------------------------------------------------------------------

__global__ void reverse_blocks(const float* in, float* out, int* fresh) {
  UM_DYNAMIC_SMEM(float, s);
  const unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
  fresh[base + t] = std::isnan(s[t]);  // no earlier block's value shows through
  s[t] = in[base + t];
  __syncthreads();
  out[base + t] = s[blockDim.x - 1 - t];
}

TEST(CudaEmu, DynamicSharedMemoryIsPerBlock) {
  const int threads = 64, blocks = 4, n = threads * blocks;
  std::vector<float> in(n);
  std::iota(in.begin(), in.end(), 0.0f);
  DeviceArray<float> din(in), dout(n);
  DeviceArray<int> dfresh(n);
  UM_LAUNCH(reverse_blocks, blocks, threads, threads * sizeof(float), 0, din.get(), dout.get(),
            dfresh.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> out = dout.download();
  const std::vector<int> fresh = dfresh.download();
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(out[i], in[i / threads * threads + threads - 1 - i % threads]) << i;
    EXPECT_EQ(fresh[i], 1) << i;
  }
}

TEST(CudaEmu, DynamicSharedMemoryOver48KiBNeedsTheAttribute) {
  const int threads = 32, smem = 64 << 10;
  DeviceArray<float> din(std::vector<float>(threads, 1.0f)), dout(threads);
  DeviceArray<int> dfresh(threads);
  testing::internal::CaptureStderr();
  UM_LAUNCH(reverse_blocks, 1, threads, smem, 0, din.get(), dout.get(), dfresh.get());
  EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(), "cudaFuncSetAttribute"));
  expect_launch_error(cudaErrorInvalidValue);

  ASSERT_EQ(cudaFuncSetAttribute(reverse_blocks, cudaFuncAttributeMaxDynamicSharedMemorySize, smem),
            cudaSuccess);
  UM_LAUNCH(reverse_blocks, 1, threads, smem, 0, din.get(), dout.get(), dfresh.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// ---- Atomics --------------------------------------------------------------------------------

struct Counters {
  int count;
  int max;
  int min;
  unsigned cas_max;
  int exchanged;
  unsigned long long sum64;
  float fsum;
  double dsum;
};

__global__ void atomics(Counters* c, int* tickets) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  tickets[i] = atomicAdd(&c->count, 1);
  atomicMax(&c->max, i * 7 % 1000);
  atomicMin(&c->min, 5000 - i);
  unsigned old = c->cas_max, assumed;
  do {
    assumed = old;
    old = atomicCAS(&c->cas_max, assumed, max(assumed, unsigned(i) * 3));
  } while (old != assumed);
  atomicExch(&c->exchanged, i);
  atomicAdd(&c->sum64, (1ull << 33) + unsigned(i));
  atomicAdd(&c->fsum, 1.0f);
  atomicAdd(&c->dsum, 0.5);
}

TEST(CudaEmu, Atomics) {
  const int threads = 128, blocks = 8, n = threads * blocks;
  DeviceArray<Counters> dc(std::vector<Counters>{{0, -1, 1 << 30, 0, -1, 0, 0.0f, 0.0}});
  DeviceArray<int> dtickets(n);
  UM_LAUNCH(atomics, blocks, threads, 0, 0, dc.get(), dtickets.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const Counters c = dc.download()[0];
  std::vector<int> tickets = dtickets.download();
  std::sort(tickets.begin(), tickets.end());
  for (int i = 0; i < n; ++i) ASSERT_EQ(tickets[i], i);  // every old value returned once
  EXPECT_EQ(c.count, n);
  EXPECT_EQ(c.max, 999);
  EXPECT_EQ(c.min, 5000 - (n - 1));
  EXPECT_EQ(c.cas_max, unsigned(n - 1) * 3);
  EXPECT_GE(c.exchanged, 0);
  EXPECT_LT(c.exchanged, n);
  EXPECT_EQ(c.sum64, n * (1ull << 33) + 1ull * n * (n - 1) / 2);
  EXPECT_EQ(c.fsum, float(n));
  EXPECT_EQ(c.dsum, 0.5 * n);
}

// ---- bf16 -----------------------------------------------------------------------------------

double bf16_value(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

// Reference rounding of float to bf16 by value: of the two bf16 neighbours of x, the nearer;
// on a tie, the one whose mantissa is even. The neighbour past the largest finite bf16 counts
// as 2^128, so that values from halfway up round to infinity, as IEEE 754 specifies.
uint16_t reference_bf16(float x) {
  if (std::isnan(x)) return 0x7fff;  // CUDA's canonical NaN
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint16_t toward_zero = uint16_t(u >> 16);
  if ((u & 0xffff) == 0) return toward_zero;
  const uint16_t away = uint16_t(toward_zero + 1);
  const double lo = std::fabs(bf16_value(toward_zero));
  const double hi = (away & 0x7fff) == 0x7f80 ? std::ldexp(1.0, 128) : std::fabs(bf16_value(away));
  const double below = std::fabs(double(x)) - lo, above = hi - std::fabs(double(x));
  if (below != above) return below < above ? toward_zero : away;
  return toward_zero % 2 == 0 ? toward_zero : away;
}

uint16_t emulated_bf16(float x) { return __bfloat16_as_ushort(__float2bfloat16(x)); }

TEST(CudaEmu, Bf16RoundsToNearestEven) {
  const uint16_t low_halves[] = {0x0000, 0x0001, 0x1234, 0x7fff, 0x8000, 0x8001, 0xc000, 0xffff};
  for (uint32_t high = 0; high < 0x10000; ++high)
    for (uint16_t low : low_halves) {
      const float x = std::bit_cast<float>(high << 16 | low);
      const uint16_t expected = reference_bf16(x);
      ASSERT_EQ(emulated_bf16(x), expected) << std::hex << (high << 16 | low);
      ASSERT_EQ(__bfloat16_as_ushort(__float2bfloat16_rn(x)), expected);
      if (!std::isnan(x)) {
        ASSERT_EQ(double(__bfloat162float(__ushort_as_bfloat16(expected))), bf16_value(expected));
      }
    }
}

TEST(CudaEmu, Bf16SpecialValues) {
  auto bits = [](uint32_t u) { return emulated_bf16(std::bit_cast<float>(u)); };
  EXPECT_EQ(bits(0x3f808000), 0x3f80);  // 1 + 2^-8: a tie, to even (down)
  EXPECT_EQ(bits(0x3f818000), 0x3f82);  // a tie, to even (up)
  EXPECT_EQ(bits(0x7fc00000), 0x7fff);  // quiet NaN
  EXPECT_EQ(bits(0x7f800001), 0x7fff);  // signalling NaN stays NaN
  EXPECT_EQ(bits(0xffc00001), 0x7fff);  // any NaN becomes the canonical one
  EXPECT_EQ(bits(0x7f800000), 0x7f80);  // inf
  EXPECT_EQ(bits(0xff800000), 0xff80);  // -inf
  EXPECT_EQ(bits(0x7f7fffff), 0x7f80);  // FLT_MAX rounds up to inf
  EXPECT_EQ(bits(0x7f7f7fff), 0x7f7f);  // just below halfway: the largest finite bf16
  EXPECT_EQ(bits(0x80000000), 0x8000);  // -0
  EXPECT_EQ(bits(0x00000001), 0x0000);  // the smallest subnormal rounds to 0
  EXPECT_EQ(bits(0x00008000), 0x0000);  // subnormal tie, to even (down)
  EXPECT_EQ(bits(0x00018000), 0x0002);  // subnormal tie, to even (up)
  EXPECT_EQ(bits(0x80008001), 0x8001);  // negative subnormal above halfway

  // Implicit conversions, as device code uses them.
  const __nv_bfloat16 h = 1.5f;
  const float f = h;
  EXPECT_EQ(f, 1.5f);
}

// ---- Math and bit intrinsics ----------------------------------------------------------------

enum Math {
  kExp,
  kLog,
  kDivide,
  kRsqrt,
  kFrsqrt,
  kSaturateNan,
  kSaturateHigh,
  kIsnan,
  kIsinf,
  kFmax,
  kMinInt,
  kPopc,
  kFfs,
  kClz,
  kFloatAsInt,
  kMath
};

__global__ void math_intrinsics(float* out) {
  const float x = 2.0f, nan = __int_as_float(0x7fc00000);
  out[kExp] = __expf(x) - expf(x);
  out[kLog] = __logf(x) - logf(x);
  out[kDivide] = __fdividef(1.0f, 4.0f);
  out[kRsqrt] = rsqrtf(4.0f);
  out[kFrsqrt] = __frsqrt_rn(16.0f);
  out[kSaturateNan] = __saturatef(nan);
  out[kSaturateHigh] = __saturatef(7.0f);
  out[kIsnan] = isnan(nan) ? 1.0f : 0.0f;
  out[kIsinf] = isinf(-INFINITY) ? 1.0f : 0.0f;
  out[kFmax] = fmaxf(nan, 3.0f);
  out[kMinInt] = float(min(-3, 2));
  out[kPopc] = float(__popc(0xf0f0u));
  out[kFfs] = float(__ffs(0x50));
  out[kClz] = float(__clz(0x00ff0000));
  out[kFloatAsInt] = float(__float_as_uint(1.0f) == 0x3f800000u);
}

TEST(CudaEmu, MathAndBitIntrinsics) {
  DeviceArray<float> dout(kMath);
  UM_LAUNCH(math_intrinsics, 1, 32, 0, 0, dout.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> out = dout.download();
  const float expected[kMath] = {0, 0, 0.25f, 0.5f, 0.25f, 0, 1, 1, 1, 3, -3, 8, 5, 8, 1};
  for (int i = 0; i < kMath; ++i) EXPECT_EQ(out[i], expected[i]) << i;
}

// ---- cuBLAS ---------------------------------------------------------------------------------

// A column-major matrix of rows x cols with leading dimension ld, stored as float; `sentinel`
// fills the padding between columns.
struct Matrix {
  int rows, cols, ld;
  std::vector<float> v;
  Matrix(int r, int c, int ld_, std::mt19937& rng, float sentinel = 1234.5f)
      : rows(r), cols(c), ld(ld_), v(size_t(ld_) * c, sentinel) {
    // Multiples of 1/8 in [-2, 2]: exact in bf16, and their products sum exactly in float.
    std::uniform_int_distribution<int> dist(-16, 16);
    for (int j = 0; j < c; ++j)
      for (int i = 0; i < r; ++i) at(i, j) = dist(rng) / 8.0f;
  }
  float& at(int i, int j) { return v[size_t(j) * ld + i]; }
  float at(int i, int j) const { return v[size_t(j) * ld + i]; }
};

// The bytes of a Matrix as cuBLAS type `type` (32F or 16BF).
std::vector<unsigned char> as_type(const std::vector<float>& v, cudaDataType type) {
  std::vector<unsigned char> bytes(v.size() * (type == CUDA_R_32F ? 4 : 2));
  for (size_t i = 0; i < v.size(); ++i) {
    if (type == CUDA_R_32F)
      memcpy(&bytes[i * 4], &v[i], 4);
    else
      reinterpret_cast<__nv_bfloat16*>(bytes.data())[i] = __float2bfloat16(v[i]);
  }
  return bytes;
}

std::vector<float> from_type(const std::vector<unsigned char>& bytes, cudaDataType type) {
  std::vector<float> v(bytes.size() / (type == CUDA_R_32F ? 4 : 2));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = type == CUDA_R_32F ? reinterpret_cast<const float*>(bytes.data())[i]
                              : float(reinterpret_cast<const __nv_bfloat16*>(bytes.data())[i]);
  return v;
}

// alpha op(A) op(B) + beta C in double, from the stored matrices.
double reference_gemm(const Matrix& a, const Matrix& b, const Matrix& c, bool ta, bool tb, int i,
                      int j, int k, double alpha, double beta) {
  double sum = 0.0;
  for (int l = 0; l < k; ++l)
    sum += double(ta ? a.at(l, i) : a.at(i, l)) * (tb ? b.at(j, l) : b.at(l, j));
  return alpha * sum + (beta != 0.0 ? beta * c.at(i, j) : 0.0);
}

class CublasTest : public testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS); }
  void TearDown() override { EXPECT_EQ(cublasDestroy(handle_), CUBLAS_STATUS_SUCCESS); }
  cublasHandle_t handle_ = nullptr;
};

struct GemmTypes {
  cudaDataType ab, c;
};

TEST_F(CublasTest, GemmExAllTransposesTypesAndBetas) {
  const int m = 13, n = 7, k = 9;
  std::mt19937 rng(7);
  for (const GemmTypes types :
       {GemmTypes{CUDA_R_32F, CUDA_R_32F}, GemmTypes{CUDA_R_16BF, CUDA_R_32F},
        GemmTypes{CUDA_R_16BF, CUDA_R_16BF}})
    for (const bool ta : {false, true})
      for (const bool tb : {false, true})
        for (const float beta : {0.0f, 1.0f}) {
          SCOPED_TRACE(testing::Message()
                       << "AB type " << types.ab << " C type " << types.c << " transa " << ta
                       << " transb " << tb << " beta " << beta);
          const Matrix a(ta ? k : m, ta ? m : k, (ta ? k : m) + 3, rng);
          const Matrix b(tb ? n : k, tb ? k : n, (tb ? n : k) + 2, rng);
          Matrix c(m, n, m + 4, rng, -777.0f);
          if (beta == 0.0f)  // not read when beta is 0
            for (int j = 0; j < n; ++j)
              for (int i = 0; i < m; ++i) c.at(i, j) = NAN;
          DeviceArray<unsigned char> da(as_type(a.v, types.ab)), db(as_type(b.v, types.ab));
          DeviceArray<unsigned char> dc(as_type(c.v, types.c));
          const float alpha = 1.5f;
          ASSERT_EQ(
              cublasGemmEx(handle_, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                           m, n, k, &alpha, da.get(), types.ab, a.ld, db.get(), types.ab, b.ld,
                           &beta, dc.get(), types.c, c.ld, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
          const std::vector<float> out = from_type(dc.download(), types.c);
          for (int j = 0; j < n; ++j) {
            for (int i = 0; i < m; ++i) {
              const double expected = reference_gemm(a, b, c, ta, tb, i, j, k, alpha, beta);
              const float got = out[size_t(j) * c.ld + i];
              if (types.c == CUDA_R_32F)
                ASSERT_EQ(got, float(expected)) << i << "," << j;  // exact: see Matrix
              else
                ASSERT_EQ(got, float(__float2bfloat16(float(expected)))) << i << "," << j;
            }
            for (int i = m; i < c.ld; ++i)  // the padding is not written
              ASSERT_EQ(out[size_t(j) * c.ld + i], types.c == CUDA_R_32F ? -777.0f : -776.0f);
          }
        }
}

TEST_F(CublasTest, GemmExRejectsWhatCublasRejects) {
  DeviceArray<float> d(64);
  std::vector<float> host(64);
  const float one = 1.0f;
  testing::internal::CaptureStderr();
  // 32F inputs with a bf16 output is not a cuBLAS combination.
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.get(), CUDA_R_32F, 4,
                         d.get(), CUDA_R_32F, 4, &one, d.get(), CUDA_R_16BF, 4, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  // lda below the rows of A.
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.get(), CUDA_R_32F, 3,
                         d.get(), CUDA_R_32F, 4, &one, d.get(), CUDA_R_32F, 4, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_INVALID_VALUE);
  // C in host memory; B overrunning its allocation (ldb 40 x 4 columns > 64 floats).
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.get(), CUDA_R_32F, 4,
                         d.get(), CUDA_R_32F, 4, &one, host.data(), CUDA_R_32F, 4,
                         CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_EXECUTION_FAILED);
  EXPECT_EQ(cublasGemmEx(handle_, CUBLAS_OP_N, CUBLAS_OP_N, 4, 4, 4, &one, d.get(), CUDA_R_32F, 4,
                         d.get(), CUDA_R_32F, 40, &one, d.get(), CUDA_R_32F, 4, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_EXECUTION_FAILED);
  const std::string messages = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(Contains(messages, "matrix C (4 x 4, ld 4): 0x"));
  EXPECT_TRUE(Contains(messages, "is not device memory"));
  EXPECT_TRUE(Contains(messages, "overrun the 256-byte allocation"));
}

TEST_F(CublasTest, StridedAndPointerArrayBatches) {
  const int m = 5, n = 4, k = 6, batches = 3, lda = 7, ldb = 6, ldc = 5;
  const long long stride_a = lda * k + 3, stride_b = ldb * k, stride_c = ldc * n + 1;
  std::mt19937 rng(3);
  std::vector<Matrix> as, bs, cs;
  std::vector<float> a_all(stride_a * batches, 0.0f), b_all(stride_b * batches, 0.0f),
      c_all(stride_c * batches, 0.0f);
  for (int i = 0; i < batches; ++i) {
    as.emplace_back(m, k, lda, rng);
    bs.emplace_back(n, k, ldb, rng);  // used transposed
    cs.emplace_back(m, n, ldc, rng);
    std::copy(as[i].v.begin(), as[i].v.end(), a_all.begin() + i * stride_a);
    std::copy(bs[i].v.begin(), bs[i].v.end(), b_all.begin() + i * stride_b);
    std::copy(cs[i].v.begin(), cs[i].v.end(), c_all.begin() + i * stride_c);
  }
  const float alpha = -0.5f, beta = 2.0f;
  auto check = [&](const std::vector<float>& out) {
    for (int b = 0; b < batches; ++b)
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i)
          ASSERT_EQ(out[b * stride_c + j * ldc + i],
                    float(reference_gemm(as[b], bs[b], cs[b], false, true, i, j, k, alpha, beta)));
  };
  {
    DeviceArray<float> da(a_all), db(b_all), dc(c_all);
    ASSERT_EQ(cublasGemmStridedBatchedEx(handle_, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha,
                                         da.get(), CUDA_R_32F, lda, stride_a, db.get(), CUDA_R_32F,
                                         ldb, stride_b, &beta, dc.get(), CUDA_R_32F, ldc, stride_c,
                                         batches, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    check(dc.download());
  }
  {
    DeviceArray<float> da(a_all), db(b_all), dc(c_all);
    std::vector<const void*> a_ptrs, b_ptrs;
    std::vector<void*> c_ptrs;
    for (int i = 0; i < batches; ++i) {
      a_ptrs.push_back(da.get() + i * stride_a);
      b_ptrs.push_back(db.get() + i * stride_b);
      c_ptrs.push_back(dc.get() + i * stride_c);
    }
    DeviceArray<const void*> darrays_a(a_ptrs), darrays_b(b_ptrs);
    DeviceArray<void*> darrays_c(c_ptrs);
    ASSERT_EQ(cublasGemmBatchedEx(handle_, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha,
                                  darrays_a.get(), CUDA_R_32F, lda, darrays_b.get(), CUDA_R_32F,
                                  ldb, &beta, darrays_c.get(), CUDA_R_32F, ldc, batches,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    check(dc.download());
    // The pointer arrays must be device memory, as in cuBLAS.
    testing::internal::CaptureStderr();
    EXPECT_EQ(cublasGemmBatchedEx(handle_, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, &alpha, a_ptrs.data(),
                                  CUDA_R_32F, lda, darrays_b.get(), CUDA_R_32F, ldb, &beta,
                                  darrays_c.get(), CUDA_R_32F, ldc, batches, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_EXECUTION_FAILED);
    EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(), "pointer array Aarray"));
  }
}

TEST_F(CublasTest, GroupedBatchesWithDifferentShapesAndAnEmptyGroup) {
  // Group 0: two 4 x 3 (k 5) products, A^T B; group 1: one with m = 0; group 2: two 6 x 2
  // (k 3), A B^T, with its own alpha and beta.
  const cublasOperation_t transa[] = {CUBLAS_OP_T, CUBLAS_OP_N, CUBLAS_OP_N};
  const cublasOperation_t transb[] = {CUBLAS_OP_N, CUBLAS_OP_N, CUBLAS_OP_T};
  const int ms[] = {4, 0, 6}, ns[] = {3, 2, 2}, ks[] = {5, 2, 3}, sizes[] = {2, 1, 2};
  const int ldas[] = {6, 1, 6}, ldbs[] = {5, 2, 3}, ldcs[] = {4, 1, 7};
  const float alphas[] = {1.0f, 1.0f, 2.0f}, betas[] = {0.0f, 1.0f, 0.5f};
  std::mt19937 rng(11);
  struct Problem {
    Matrix a, b, c;
    int group;
  };
  std::vector<Problem> problems;
  for (int g = 0; g < 3; ++g)
    for (int i = 0; i < sizes[g]; ++i) {
      const bool ta = transa[g] == CUBLAS_OP_T, tb = transb[g] == CUBLAS_OP_T;
      problems.push_back({Matrix(ta ? ks[g] : ms[g], ta ? ms[g] : ks[g], ldas[g], rng),
                          Matrix(tb ? ns[g] : ks[g], tb ? ks[g] : ns[g], ldbs[g], rng),
                          Matrix(std::max(ms[g], 1), ns[g], ldcs[g], rng, -9.0f), g});
    }
  std::vector<std::unique_ptr<DeviceArray<float>>> buffers;
  std::vector<const void*> a_ptrs, b_ptrs;
  std::vector<void*> c_ptrs;
  for (const Problem& p : problems) {
    for (const Matrix* m : {&p.a, &p.b, &p.c})
      buffers.push_back(std::make_unique<DeviceArray<float>>(m->v));
    a_ptrs.push_back(buffers[buffers.size() - 3]->get());
    b_ptrs.push_back(buffers[buffers.size() - 2]->get());
    c_ptrs.push_back(buffers[buffers.size() - 1]->get());
  }
  DeviceArray<const void*> da(a_ptrs), db(b_ptrs);
  DeviceArray<void*> dc(c_ptrs);
  ASSERT_EQ(cublasGemmGroupedBatchedEx(handle_, transa, transb, ms, ns, ks, alphas, da.get(),
                                       CUDA_R_32F, ldas, db.get(), CUDA_R_32F, ldbs, betas,
                                       dc.get(), CUDA_R_32F, ldcs, 3, sizes, CUBLAS_COMPUTE_32F),
            CUBLAS_STATUS_SUCCESS);
  for (size_t p = 0; p < problems.size(); ++p) {
    const Problem& pr = problems[p];
    const int g = pr.group;
    const std::vector<float> out = buffers[3 * p + 2]->download();
    if (ms[g] == 0) {
      EXPECT_EQ(out, pr.c.v);  // untouched
      continue;
    }
    for (int j = 0; j < ns[g]; ++j)
      for (int i = 0; i < ms[g]; ++i)
        ASSERT_EQ(out[j * ldcs[g] + i],
                  float(reference_gemm(pr.a, pr.b, pr.c, transa[g] == CUBLAS_OP_T,
                                       transb[g] == CUBLAS_OP_T, i, j, ks[g], alphas[g], betas[g])))
            << "problem " << p;
  }
}

// ---- WMMA -----------------------------------------------------------------------------------

// C (32 x 32) = A (32 x 48) B (48 x 32) / 2, one warp per 16 x 16 tile of C. A_ROW: A is stored
// row-major (else column-major), B the other way; C is stored in A's order.
template <bool A_ROW>
__global__ void wmma_product(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c) {
  using namespace nvcuda;
  using LayoutA = std::conditional_t<A_ROW, wmma::row_major, wmma::col_major>;
  using LayoutB = std::conditional_t<A_ROW, wmma::col_major, wmma::row_major>;
  const int warp = int(threadIdx.x / 32), tm = warp / 2, tn = warp % 2;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int kk = 0; kk < 48; kk += 16) {
    // Tile (tm, kk) of A and (kk, tn) of B; A is 32 x 48 (ld 48 row-major, 32 col-major), B is
    // 48 x 32 (ld 48 col-major, 32 row-major).
    wmma::load_matrix_sync(fa, A_ROW ? a + tm * 16 * 48 + kk : a + kk * 32 + tm * 16,
                           A_ROW ? 48 : 32);
    wmma::load_matrix_sync(fb, A_ROW ? b + tn * 16 * 48 + kk : b + kk * 32 + tn * 16,
                           A_ROW ? 48 : 32);
    wmma::mma_sync(acc, fa, fb, acc);
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 0.5f;
  wmma::store_matrix_sync(A_ROW ? c + tm * 16 * 32 + tn * 16 : c + tn * 16 * 32 + tm * 16, acc, 32,
                          A_ROW ? wmma::mem_row_major : wmma::mem_col_major);
}

TEST(CudaEmu, WmmaProductFromTiles) {
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> dist(-16, 16);
  std::vector<float> a(32 * 48), b(48 * 32);  // a[m][k], b[k][n]
  for (float& v : a) v = dist(rng) / 8.0f;
  for (float& v : b) v = dist(rng) / 8.0f;
  for (const bool a_row : {true, false}) {
    SCOPED_TRACE(a_row ? "A row-major" : "A column-major");
    std::vector<__nv_bfloat16> sa(32 * 48), sb(48 * 32);
    for (int m = 0; m < 32; ++m)
      for (int k = 0; k < 48; ++k) sa[a_row ? m * 48 + k : k * 32 + m] = a[m * 48 + k];
    for (int k = 0; k < 48; ++k)
      for (int n = 0; n < 32; ++n) sb[a_row ? n * 48 + k : k * 32 + n] = b[k * 32 + n];
    DeviceArray<__nv_bfloat16> da(sa), db(sb);
    DeviceArray<float> dc(32 * 32);
    if (a_row)
      UM_LAUNCH(wmma_product<true>, 1, 128, 0, 0, da.get(), db.get(), dc.get());
    else
      UM_LAUNCH(wmma_product<false>, 1, 128, 0, 0, da.get(), db.get(), dc.get());
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> c = dc.download();
    for (int m = 0; m < 32; ++m)
      for (int n = 0; n < 32; ++n) {
        double expected = 0.0;
        for (int k = 0; k < 48; ++k) expected += double(a[m * 48 + k]) * b[k * 32 + n];
        ASSERT_EQ(c[a_row ? m * 32 + n : n * 32 + m], float(expected / 2)) << m << "," << n;
      }
  }
}

// ---- Checks ---------------------------------------------------------------------------------

__global__ void set_flag(float* out, int* ran) {
  out[threadIdx.x] = 1.0f;
  *ran = 1;
}

TEST(CudaEmuChecks, HostPointerArgumentIsRejected) {
  std::vector<float> host(32);
  DeviceArray<int> ran(std::vector<int>{0});
  testing::internal::CaptureStderr();
  UM_LAUNCH(set_flag, 1, 32, 0, 0, host.data(), ran.get());
  const std::string message = testing::internal::GetCapturedStderr();
  expect_launch_error(cudaErrorInvalidDevicePointer);
  EXPECT_TRUE(Contains(message, "[cuda-emu] kernel "));
  EXPECT_TRUE(Contains(message, "set_flag"));
  EXPECT_TRUE(Contains(message, "argument 0 is not a device pointer"));
  EXPECT_EQ(ran.download()[0], 0);  // the kernel did not run
  EXPECT_EQ(host[0], 0.0f);

  // A freed allocation is no longer device memory.
  float* freed = nullptr;
  ASSERT_EQ(cudaMalloc(&freed, 128), cudaSuccess);
  ASSERT_EQ(cudaFree(freed), cudaSuccess);
  testing::internal::CaptureStderr();
  UM_LAUNCH(set_flag, 1, 32, 0, 0, freed, ran.get());
  EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(), "not in a live allocation"));
  expect_launch_error(cudaErrorInvalidDevicePointer);

  // Pinned host memory is host memory too.
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 32 * sizeof(float)), cudaSuccess);
  testing::internal::CaptureStderr();
  UM_LAUNCH(set_flag, 1, 32, 0, 0, pinned, ran.get());
  testing::internal::GetCapturedStderr();
  expect_launch_error(cudaErrorInvalidDevicePointer);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

TEST(CudaEmuChecks, MemcpyAndMemsetCheckDirectionsAndBounds) {
  DeviceArray<float> d(16);
  std::vector<float> host(17, 1.0f);
  testing::internal::CaptureStderr();
  EXPECT_EQ(cudaMemcpy(d.get(), host.data(), 64, cudaMemcpyDeviceToHost),
            cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(host.data(), host.data() + 1, 4, cudaMemcpyHostToDevice),
            cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(d.get(), d.get(), 4, cudaMemcpyHostToDevice),
            cudaErrorInvalidMemcpyDirection);
  EXPECT_EQ(cudaMemcpy(d.get(), host.data(), 68, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemset(host.data(), 0, 4), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemset(d.get() + 8, 0, 36), cudaErrorInvalidValue);
  const std::string messages = testing::internal::GetCapturedStderr();
  EXPECT_TRUE(Contains(messages, "cudaMemcpy(DeviceToHost): the destination"));
  EXPECT_TRUE(Contains(messages, "68 bytes at"));
  EXPECT_TRUE(Contains(messages, "overrun the 64-byte allocation"));
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);  // the last failure's
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);

  // cudaMemcpyDefault infers the direction; device-to-device copies may overlap.
  std::iota(host.begin(), host.end(), 0.0f);
  ASSERT_EQ(cudaMemcpy(d.get(), host.data(), 64, cudaMemcpyDefault), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d.get() + 1, d.get(), 60, cudaMemcpyDeviceToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(d.get() + 15, 0, 4), cudaSuccess);
  std::vector<float> back(16);
  ASSERT_EQ(cudaMemcpy(back.data(), d.get(), 64, cudaMemcpyDefault), cudaSuccess);
  EXPECT_EQ(back[0], 0.0f);
  for (int i = 1; i < 15; ++i) EXPECT_EQ(back[i], float(i - 1));
  EXPECT_EQ(back[15], 0.0f);
}

__global__ void early_return_before_barrier(float* out) {
  __shared__ float s[64];
  if (threadIdx.x == 3) return;
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void lane_returns_before_shuffle(float* out) {
  if (threadIdx.x == 37) return;
  out[threadIdx.x] = warp_sum(1.0f);
}

TEST(CudaEmuChecks, DeadlocksAreReportedNotHung) {
  DeviceArray<float> out(64);
  testing::internal::CaptureStderr();
  UM_LAUNCH(early_return_before_barrier, 2, 64, 0, 0, out.get());
  std::string message = testing::internal::GetCapturedStderr();
  expect_launch_error(cudaErrorLaunchTimeout);
  EXPECT_TRUE(Contains(message, "early_return_before_barrier"));
  EXPECT_TRUE(Contains(message, "deadlock in block (0,0,0)"));
  EXPECT_TRUE(Contains(message, "63 threads wait at __syncthreads()"));
  EXPECT_TRUE(Contains(message, "1 thread has returned, the first thread (3,0,0)"));

  testing::internal::CaptureStderr();
  UM_LAUNCH(lane_returns_before_shuffle, 1, 64, 0, 0, out.get());
  message = testing::internal::GetCapturedStderr();
  expect_launch_error(cudaErrorLaunchTimeout);
  EXPECT_TRUE(Contains(message, "warp 1: lanes 0xffffffdf wait at __shfl_xor_sync"));

  // The emulator recovers: the next launch runs.
  UM_LAUNCH(warp_sums, 1, 64, 0, 0, out.get(), out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

__global__ void shuffle_in_partial_warp(float* out) { out[threadIdx.x] = warp_sum(1.0f); }

__global__ void divergent_warp_operations(float* out) {
  const unsigned lane = threadIdx.x % 32;
  out[threadIdx.x] = lane < 16 ? float(__ballot_sync(0xffffffffu, 1)) : warp_sum(1.0f);
}

TEST(CudaEmuChecks, MisusedWarpOperationsFailTheLaunch) {
  DeviceArray<float> out(64);
  testing::internal::CaptureStderr();
  UM_LAUNCH(shuffle_in_partial_warp, 1, 48, 0, 0, out.get());
  EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(),
                       "mask 0xffffffff names lanes that do not exist"));
  expect_launch_error(cudaErrorLaunchFailure);

  testing::internal::CaptureStderr();
  UM_LAUNCH(divergent_warp_operations, 1, 32, 0, 0, out.get());
  EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(), "wait at __ballot_sync instead"));
  expect_launch_error(cudaErrorLaunchFailure);
}

TEST(CudaEmuChecks, StreamsAndEvents) {
  cudaStream_t stream;
  cudaEvent_t start, stop;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&stop, cudaEventDefault), cudaSuccess);
  DeviceArray<float> x(std::vector<float>(256, 1.0f)), out(256);
  ASSERT_EQ(cudaEventRecord(start, stream), cudaSuccess);
  UM_LAUNCH(warp_sums, 2, 128, 0, stream, x.get(), out.get());
  ASSERT_EQ(cudaEventRecord(stop, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(nullptr, stop), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  float ms = -1.0f;
  ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_EQ(out.download()[5], 32.0f);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);
  testing::internal::CaptureStderr();
  UM_LAUNCH(warp_sums, 2, 128, 0, stream, x.get(), out.get());
  EXPECT_TRUE(Contains(testing::internal::GetCapturedStderr(), "is not a live stream"));
  expect_launch_error(cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventDestroy(start), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(stop), cudaSuccess);
}

__global__ void read_one_past(const float* x, int n, float* out) { out[0] = x[n]; }

__global__ void write_past_dynamic_smem(float* out) {
  UM_DYNAMIC_SMEM(float, s);
  s[threadIdx.x + 1] = 1.0f;  // one past the end for the last thread
  out[threadIdx.x] = s[0];
}

using CudaEmuDeathTest = testing::Test;

TEST_F(CudaEmuDeathTest, OutOfBoundsAccessesFaultWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  DeviceArray<float> x(256), out(64);  // 1 KiB: its end is the end of its pages
  EXPECT_DEATH(UM_LAUNCH(read_one_past, 1, 32, 0, 0, x.get(), 256, out.get()),
               "kernel .*read_one_past.*, block \\(0,0,0\\), thread \\(0,0,0\\): invalid access "
               "to device address 0x[0-9a-f]+, 0 bytes past the end of the 1024-byte allocation");
  EXPECT_DEATH(UM_LAUNCH(write_past_dynamic_smem, 1, 64, 64 * sizeof(float), 0, out.get()),
               "thread \\(63,0,0\\): access 0 bytes past the end of the 256 bytes of dynamic "
               "shared memory");
}

__global__ void double_values(float* x) { x[threadIdx.x] *= 2.0f; }

TEST_F(CudaEmuDeathTest, GuardModeFaultsHostAccessToDeviceMemory) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  um_emu::set_guard(true);
  {
    DeviceArray<float> x(std::vector<float>(64, 1.5f));  // cudaMemcpy works
    UM_LAUNCH(double_values, 1, 64, 0, 0, x.get());      // kernels work
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(x.download()[63], 3.0f);
    float* p = x.get();
    EXPECT_DEATH(
        {
          volatile float v = p[3];
          (void)v;
        },
        "host code accessed device address 0x[0-9a-f]+, byte 12 of the 256-byte allocation .*"
        "guard mode");
  }
  um_emu::set_guard(false);
}

}  // namespace
