// The vectorisable exp against std::exp over the float range, and its special values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "ops/vmath.h"

namespace um {
namespace {

TEST(VMath, ExpFastAccuracyAndSpecialValues) {
  double worst = 0;
  for (float x = -87.0f; x < 88.5f; x += 3.1e-4f) {
    const double want = std::exp(double(x));
    worst = std::max(worst, std::fabs(double(exp_fast(x)) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);  // about 2 float ulp
  EXPECT_EQ(exp_fast(0.0f), 1.0f);
  EXPECT_EQ(exp_fast(-100.0f), 0.0f);
  EXPECT_EQ(exp_fast(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(exp_fast(100.0f), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(exp_fast(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_GT(exp_fast(88.7f), 3.0e38f);
  EXPECT_EQ(exp_fast(1.5), std::exp(1.5));  // the double overload is std::exp
}

}  // namespace
}  // namespace um
