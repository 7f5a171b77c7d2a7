// MPI (Open MPI) implementation of Comm, for CPU buffers, and the process Runtime.
#include <mpi.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "parallel/comm.h"

namespace um {

namespace {

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::bf16: return MPI_UINT16_T;  // moved, never reduced
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return MPI_SUM;
    case ReduceOp::max: return MPI_MAX;
    case ReduceOp::min: return MPI_MIN;
  }
  return MPI_SUM;
}

int as_int(int64_t n, const char* what) {
  UM_CHECK(n >= 0 && n <= INT_MAX, "comm", what, " of ", n, " elements exceeds MPI's int counts");
  return static_cast<int>(n);
}

void check(int rc, const char* op) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("comm", op, " failed: ", std::string(msg, size_t(len)));
}

// Adds the wall time of a scope to a counter.
struct Busy {
  double& total;
  double t0 = MPI_Wtime();
  explicit Busy(double& t) : total(t) {}
  ~Busy() { total += MPI_Wtime() - t0; }
};

struct MpiRequest final : Request::Impl {
  MPI_Request req = MPI_REQUEST_NULL;
  std::vector<int> counts;  // int copies of the counts/offsets, alive until completion
  double* busy = nullptr;
  std::vector<MpiRequest*>* free_list = nullptr;  // the owning communicator's pool
  void wait() override {
    Busy b(*busy);
    check(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait");
  }
  bool test() override {
    int done = 0;
    check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
    return done != 0;
  }
  void release() override { free_list->push_back(this); }
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const char* backend() const override { return "mpi"; }

  std::unique_ptr<Comm> split(int color, int key) const override {
    MPI_Comm c;
    check(MPI_Comm_split(comm_, color, key, &c), "MPI_Comm_split");
    return std::make_unique<MpiComm>(c, true);
  }
  void all_reduce(void* buf, int64_t n, DType t, ReduceOp op) override {
    Busy b(busy_seconds_);
    check(MPI_Allreduce(MPI_IN_PLACE, buf, as_int(n, "all_reduce"), mpi_type(t), mpi_op(op), comm_), "MPI_Allreduce");
  }
  void all_gather(const void* send, void* recv, int64_t n, DType t) override {
    Busy b(busy_seconds_);
    check(MPI_Allgather(send, as_int(n, "all_gather"), mpi_type(t), recv, as_int(n, "all_gather"), mpi_type(t), comm_),
          "MPI_Allgather");
  }
  void reduce_scatter(const void* send, void* recv, int64_t n, DType t, ReduceOp op) override {
    Busy b(busy_seconds_);
    check(MPI_Reduce_scatter_block(send, recv, as_int(n, "reduce_scatter"), mpi_type(t), mpi_op(op), comm_),
          "MPI_Reduce_scatter_block");
  }
  void all_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                    const int64_t* ro, DType t) override {
    int_counts(counts_, sc, so, rc, ro);
    const int* c = counts_.data();
    Busy b(busy_seconds_);
    check(MPI_Alltoallv(send, c, c + size_, mpi_type(t), recv, c + 2 * size_, c + 3 * size_, mpi_type(t), comm_),
          "MPI_Alltoallv");
  }
  void send(const void* buf, int64_t n, DType t, int dst, int tag) override {
    Busy b(busy_seconds_);
    check(MPI_Send(buf, as_int(n, "send"), mpi_type(t), dst, tag, comm_), "MPI_Send");
  }
  void recv(void* buf, int64_t n, DType t, int src, int tag) override {
    Busy b(busy_seconds_);
    check(MPI_Recv(buf, as_int(n, "recv"), mpi_type(t), src, tag, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
  }
  void barrier() override {
    Busy b(busy_seconds_);
    check(MPI_Barrier(comm_), "MPI_Barrier");
  }

  Request iall_reduce(void* buf, int64_t n, DType t, ReduceOp op) override {
    MpiRequest* r = acquire();
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, as_int(n, "all_reduce"), mpi_type(t), mpi_op(op), comm_, &r->req),
          "MPI_Iallreduce");
    return Request(r);
  }
  Request iall_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                        const int64_t* ro, DType t) override {
    MpiRequest* r = acquire();
    int_counts(r->counts, sc, so, rc, ro);
    const int* c = r->counts.data();
    check(MPI_Ialltoallv(send, c, c + size_, mpi_type(t), recv, c + 2 * size_, c + 3 * size_, mpi_type(t), comm_,
                         &r->req),
          "MPI_Ialltoallv");
    return Request(r);
  }
  Request isend(const void* buf, int64_t n, DType t, int dst, int tag) override {
    MpiRequest* r = acquire();
    check(MPI_Isend(buf, as_int(n, "send"), mpi_type(t), dst, tag, comm_, &r->req), "MPI_Isend");
    return Request(r);
  }
  Request irecv(void* buf, int64_t n, DType t, int src, int tag) override {
    MpiRequest* r = acquire();
    check(MPI_Irecv(buf, as_int(n, "recv"), mpi_type(t), src, tag, comm_, &r->req), "MPI_Irecv");
    return Request(r);
  }

 private:
  // A request object from the pool; new ones only until the pool covers a step's requests.
  MpiRequest* acquire() {
    if (free_.empty()) {
      all_.push_back(std::make_unique<MpiRequest>());
      all_.back()->busy = &busy_seconds_;
      all_.back()->free_list = &free_;
      free_.reserve(all_.size());
      return all_.back().get();
    }
    MpiRequest* r = free_.back();
    free_.pop_back();
    r->req = MPI_REQUEST_NULL;
    return r;
  }
  void int_counts(std::vector<int>& c, const int64_t* sc, const int64_t* so, const int64_t* rc,
                  const int64_t* ro) const {
    c.resize(4 * size_);
    for (int i = 0; i < size_; ++i) {
      c[i] = as_int(sc[i], "all_to_all_v");
      c[size_ + i] = as_int(so[i], "all_to_all_v");
      c[2 * size_ + i] = as_int(rc[i], "all_to_all_v");
      c[3 * size_ + i] = as_int(ro[i], "all_to_all_v");
    }
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  std::vector<int> counts_;                         // all_to_all_v's int counts, reused
  // Request objects: owned here, lent to Request and returned by MpiRequest::release. Requests
  // must complete before their communicator is destroyed (they always do within a step).
  std::vector<std::unique_ptr<MpiRequest>> all_;
  std::vector<MpiRequest*> free_;
};

Runtime* g_runtime = nullptr;

}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

Runtime::Runtime(int* argc, char*** argv) {
  mpi_ = launched_by_mpi();
  if (mpi_) {
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    world_ = std::make_unique<MpiComm>(MPI_COMM_WORLD, false);
  } else {
    world_ = make_local_comm();
  }
  g_runtime = this;
}

Runtime::~Runtime() {
  world_.reset();
  if (mpi_) MPI_Finalize();
  g_runtime = nullptr;
}

void Runtime::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

Runtime* Runtime::current() { return g_runtime; }

}  // namespace um
