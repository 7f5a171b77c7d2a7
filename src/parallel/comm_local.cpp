// Local: a group of one. Collectives copy their input to their output; point-to-point has no peer.
#include <cstring>

#include "core/error.h"
#include "parallel/comm.h"

namespace um {

namespace {

class LocalComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const char* backend() const override { return "local"; }
  std::unique_ptr<Comm> split(int, int) const override { return std::make_unique<LocalComm>(); }
  void all_reduce(void*, int64_t, DType, ReduceOp) override {}
  void all_gather(const void* send, void* recv, int64_t count, DType t) override { copy(recv, send, count, t); }
  void reduce_scatter(const void* send, void* recv, int64_t count, DType t, ReduceOp) override {
    copy(recv, send, count, t);
  }
  void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_offsets, void* recv,
                    const int64_t* recv_counts, const int64_t* recv_offsets, DType t) override {
    UM_CHECK(send_counts[0] == recv_counts[0], "comm", "local all_to_all_v: send ", send_counts[0],
             " elements but receive ", recv_counts[0]);
    copy(static_cast<char*>(recv) + recv_offsets[0] * int64_t(dtype_size(t)),
         static_cast<const char*>(send) + send_offsets[0] * int64_t(dtype_size(t)), send_counts[0], t);
  }
  void send(const void*, int64_t, DType, int dst, int) override { no_peer(dst); }
  void recv(void*, int64_t, DType, int src, int) override { no_peer(src); }
  void barrier() override {}
  Request iall_reduce(void*, int64_t, DType, ReduceOp) override { return {}; }
  Request iall_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                        const int64_t* ro, DType t) override {
    all_to_all_v(send, sc, so, recv, rc, ro, t);
    return {};
  }
  Request isend(const void*, int64_t, DType, int dst, int) override { no_peer(dst); }
  Request irecv(void*, int64_t, DType, int src, int) override { no_peer(src); }

 private:
  static void copy(void* dst, const void* src, int64_t count, DType t) {
    if (dst != src && count > 0) std::memmove(dst, src, size_t(count) * dtype_size(t));
  }
  [[noreturn]] static void no_peer(int peer) {
    fail("comm", "point-to-point with rank ", peer, " in a single-process group");
  }
};

}  // namespace

std::unique_ptr<Comm> make_local_comm() { return std::make_unique<LocalComm>(); }

}  // namespace um
