// Comm: the communication group every distributed piece talks through (design.md 4) — a small
// interface in the spirit of MLX's distributed groups. Implementations: Local (one process;
// collectives return their input, so single-process code has no branches), MPI (Open MPI, CPU
// buffers) and NCCL (GPU buffers, bootstrapped over MPI; built with the CUDA option).
// Counts are in elements of `dtype`. Every reduction is a plain operation on the data: callers
// decide what to divide by (design.md 1.8: nothing divides by W or ep).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/dtype.h"

namespace um {

enum class ReduceOp : uint8_t { sum, max, min };

// A pending non-blocking operation; wait() completes it (and is called by the destructor).
class Request {
 public:
  struct Impl {
    virtual ~Impl() = default;
    virtual void wait() = 0;
    // Whether the operation has completed, without blocking (the default blocks: completes it).
    virtual bool test() {
      wait();
      return true;
    }
    // Called once the request has completed, instead of delete: a communicator that pools its
    // request objects (so a steady-state step allocates nothing) takes it back here.
    virtual void release() { delete this; }
  };
  Request() = default;
  explicit Request(std::unique_ptr<Impl> impl) : impl_(impl.release()) {}
  explicit Request(Impl* pooled) : impl_(pooled) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&& o) noexcept {
    if (this != &o) {
      wait();
      impl_ = std::move(o.impl_);
    }
    return *this;
  }
  ~Request() { wait(); }
  void wait() {
    if (impl_) {
      impl_->wait();
      impl_.reset();
    }
  }
  // True once complete (then the request is empty); never blocks on MPI.
  bool test() {
    if (impl_ && impl_->test()) impl_.reset();
    return !impl_;
  }

 private:
  struct Release {
    void operator()(Impl* p) const { p->release(); }
  };
  std::unique_ptr<Impl, Release> impl_;
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const char* backend() const = 0;

  // Ranks with the same color form a new group, ordered by key (then by rank).
  virtual std::unique_ptr<Comm> split(int color, int key) const = 0;

  virtual void all_reduce(void* buf, int64_t count, DType t, ReduceOp op) = 0;  // in place
  // recv: size() * count elements, rank i's contribution at i * count
  virtual void all_gather(const void* send, void* recv, int64_t count, DType t) = 0;
  // send: size() * count elements; rank i receives the reduction of block i
  virtual void reduce_scatter(const void* send, void* recv, int64_t count, DType t, ReduceOp op) = 0;
  // counts and offsets per peer, in elements
  virtual void all_to_all_v(const void* send, const int64_t* send_counts, const int64_t* send_offsets,
                            void* recv, const int64_t* recv_counts, const int64_t* recv_offsets,
                            DType t) = 0;
  virtual void send(const void* buf, int64_t count, DType t, int dst, int tag) = 0;
  virtual void recv(void* buf, int64_t count, DType t, int src, int tag) = 0;
  virtual void barrier() = 0;

  // Non-blocking forms: the buffers must stay valid and untouched until the Request completes.
  virtual Request iall_reduce(void* buf, int64_t count, DType t, ReduceOp op) = 0;
  virtual Request iall_to_all_v(const void* send, const int64_t* send_counts,
                                const int64_t* send_offsets, void* recv,
                                const int64_t* recv_counts, const int64_t* recv_offsets,
                                DType t) = 0;
  virtual Request isend(const void* buf, int64_t count, DType t, int dst, int tag) = 0;
  virtual Request irecv(void* buf, int64_t count, DType t, int src, int tag) = 0;

  // Wall seconds this group has spent inside blocking calls and waits (communication time as the
  // caller sees it; time hidden behind computation by the non-blocking forms is not counted).
  double busy_seconds() const { return busy_seconds_; }

  // Convenience: sum a few doubles or int64s across the group.
  void sum(std::vector<double>& v) { all_reduce(v.data(), int64_t(v.size()), DType::f64, ReduceOp::sum); }
  void sum(std::vector<int64_t>& v) { all_reduce(v.data(), int64_t(v.size()), DType::i64, ReduceOp::sum); }

 protected:
  double busy_seconds_ = 0;
};

// A group of one process.
std::unique_ptr<Comm> make_local_comm();

// The process runtime: initialises MPI when the process was started by an MPI launcher
// (mpirun/mpiexec/srun set the PMIx/PMI environment), else stays single-process. world() is the
// MPI world or a Local group. Destroyed last; finalises MPI.
class Runtime {
 public:
  Runtime(int* argc, char*** argv);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;
  Comm& world() { return *world_; }
  bool mpi() const { return mpi_; }
  // Ends every process of the job with a message: never a hang when one rank fails.
  [[noreturn]] void abort(int code);
  static Runtime* current();

 private:
  bool mpi_ = false;
  std::unique_ptr<Comm> world_;
};

// True when an MPI launcher started this process.
bool launched_by_mpi();

}  // namespace um
