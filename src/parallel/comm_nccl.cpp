// Compiled only with ULTRAMOE_CUDA (see src/CMakeLists.txt).
#include "parallel/comm_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <vector>

#include "core/error.h"

namespace um {

namespace {

void check_nccl(ncclResult_t r, const char* op) {
  UM_CHECK(r == ncclSuccess, "nccl", op, " failed: ", ncclGetErrorString(r));
}
void check_cuda(cudaError_t r, const char* op) {
  UM_CHECK(r == cudaSuccess, "cuda", op, " failed: ", cudaGetErrorString(r));
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::min: return ncclMin;
  }
  return ncclSum;
}

struct StreamRequest final : Request::Impl {
  cudaStream_t stream;
  explicit StreamRequest(cudaStream_t s) : stream(s) {}
  void wait() override { check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }
};

class NcclComm final : public Comm {
 public:
  NcclComm(Comm& bootstrap, int device) : bootstrap_(bootstrap.split(0, bootstrap.rank())), device_(device) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    ncclUniqueId id;
    if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    // broadcast the id over the CPU group: a sum where only rank 0 contributes
    std::vector<uint8_t> bytes(sizeof(id), 0);
    if (bootstrap.rank() == 0) std::memcpy(bytes.data(), &id, sizeof(id));
    std::vector<int64_t> wide(bytes.begin(), bytes.end());
    bootstrap.all_reduce(wide.data(), int64_t(wide.size()), DType::i64, ReduceOp::sum);
    for (size_t i = 0; i < wide.size(); ++i) bytes[i] = uint8_t(wide[i]);
    std::memcpy(&id, bytes.data(), sizeof(id));
    rank_ = bootstrap.rank();
    size_ = bootstrap.size();
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~NcclComm() override {
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "nccl"; }
  std::unique_ptr<Comm> split(int color, int key) const override {
    auto sub = bootstrap_->split(color, key);
    return std::make_unique<NcclComm>(*sub, device_);
  }
  void all_reduce(void* buf, int64_t n, DType t, ReduceOp op) override { iall_reduce(buf, n, t, op).wait(); }
  void all_gather(const void* send, void* recv, int64_t n, DType t) override {
    check_nccl(ncclAllGather(send, recv, size_t(n), nccl_type(t), comm_, stream_), "ncclAllGather");
    sync();
  }
  void reduce_scatter(const void* send, void* recv, int64_t n, DType t, ReduceOp op) override {
    check_nccl(ncclReduceScatter(send, recv, size_t(n), nccl_type(t), nccl_op(op), comm_, stream_), "ncclReduceScatter");
    sync();
  }
  void all_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                    const int64_t* ro, DType t) override {
    iall_to_all_v(send, sc, so, recv, rc, ro, t).wait();
  }
  void send(const void* buf, int64_t n, DType t, int dst, int) override { isend(buf, n, t, dst, 0).wait(); }
  void recv(void* buf, int64_t n, DType t, int src, int) override { irecv(buf, n, t, src, 0).wait(); }
  void barrier() override { bootstrap_->barrier(); }
  Request iall_reduce(void* buf, int64_t n, DType t, ReduceOp op) override {
    check_nccl(ncclAllReduce(buf, buf, size_t(n), nccl_type(t), nccl_op(op), comm_, stream_), "ncclAllReduce");
    return Request(std::make_unique<StreamRequest>(stream_));
  }
  // all_to_all_v as grouped point-to-point, the usual NCCL idiom
  Request iall_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                        const int64_t* ro, DType t) override {
    const size_t es = dtype_size(t);
    check_nccl(ncclGroupStart(), "ncclGroupStart");
    for (int q = 0; q < size_; ++q) {
      if (sc[q] > 0)
        check_nccl(ncclSend(static_cast<const char*>(send) + so[q] * es, size_t(sc[q]), nccl_type(t), q, comm_, stream_),
                   "ncclSend");
      if (rc[q] > 0)
        check_nccl(ncclRecv(static_cast<char*>(recv) + ro[q] * es, size_t(rc[q]), nccl_type(t), q, comm_, stream_),
                   "ncclRecv");
    }
    check_nccl(ncclGroupEnd(), "ncclGroupEnd");
    return Request(std::make_unique<StreamRequest>(stream_));
  }
  Request isend(const void* buf, int64_t n, DType t, int dst, int) override {
    check_nccl(ncclSend(buf, size_t(n), nccl_type(t), dst, comm_, stream_), "ncclSend");
    return Request(std::make_unique<StreamRequest>(stream_));
  }
  Request irecv(void* buf, int64_t n, DType t, int src, int) override {
    check_nccl(ncclRecv(buf, size_t(n), nccl_type(t), src, comm_, stream_), "ncclRecv");
    return Request(std::make_unique<StreamRequest>(stream_));
  }

 private:
  void sync() { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
  std::unique_ptr<Comm> bootstrap_;
  int device_;
  int rank_ = 0, size_ = 1;
  ncclComm_t comm_{};
  cudaStream_t stream_{};
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(Comm& bootstrap, int device) {
  return std::make_unique<NcclComm>(bootstrap, device);
}

}  // namespace um
