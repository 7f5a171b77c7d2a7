// Elementwise exp written so the compiler vectorises it (no libm call in the loop): the hot
// loops of softmax, cross-entropy, attention and SwiGLU spend most of their time in exp, and
// glibc's vector exp is only reachable with -ffast-math, which would also break NaN checks.
// exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 (Cody-Waite, two-part ln 2),
// exp(r) on |r| <= ln2/2 by a degree-6 Taylor-Horner polynomial. Max relative error about
// 2.3e-7 (about 2 float ulp) over the float range, tested against std::exp; inputs below -87.3
// give 0 and above 88.7 give +inf, NaN stays NaN. The double overload is std::exp.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace um {

inline float exp_fast(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  // clamp with ternaries (they vectorise; fmin/fmax do not); exp(-87.34) ~ FLT_MIN. A NaN input
  // fails every comparison and flows through the arithmetic as NaN.
  const float xc = x < -87.3365f ? -87.3365f : (x > 88.7228f ? 88.7228f : x);
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (ties even)
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n by building the exponent field; n = 128 (x near the top) is done as 2 * 2^127
  const float nc = n > 127.0f ? 127.0f : n;
  const float scale = std::bit_cast<float>((static_cast<int32_t>(nc) + 127) << 23);
  float y = p * scale * (n > 127.0f ? 2.0f : 1.0f);
  y = x < -87.3365f ? 0.0f : y;
  y = x > 88.7228f ? INFINITY : y;
  return y;
}

inline double exp_fast(double x) { return std::exp(x); }

}  // namespace um
