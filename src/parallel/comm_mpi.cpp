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
  void wait() override {
    Busy b(*busy);
    check(MPI_Wait(&req, MPI_STATUS_IGNORE), "MPI_Wait");
  }
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
    std::vector<int> c = int_counts(sc, so, rc, ro);
    Busy b(busy_seconds_);
    check(MPI_Alltoallv(send, c.data(), c.data() + size_, mpi_type(t), recv, c.data() + 2 * size_,
                        c.data() + 3 * size_, mpi_type(t), comm_),
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
    auto r = std::make_unique<MpiRequest>();
    r->busy = &busy_seconds_;
    check(MPI_Iallreduce(MPI_IN_PLACE, buf, as_int(n, "all_reduce"), mpi_type(t), mpi_op(op), comm_, &r->req),
          "MPI_Iallreduce");
    return Request(std::move(r));
  }
  Request iall_to_all_v(const void* send, const int64_t* sc, const int64_t* so, void* recv, const int64_t* rc,
                        const int64_t* ro, DType t) override {
    auto r = std::make_unique<MpiRequest>();
    r->busy = &busy_seconds_;
    r->counts = int_counts(sc, so, rc, ro);
    const int* c = r->counts.data();
    check(MPI_Ialltoallv(send, c, c + size_, mpi_type(t), recv, c + 2 * size_, c + 3 * size_, mpi_type(t), comm_,
                         &r->req),
          "MPI_Ialltoallv");
    return Request(std::move(r));
  }
  Request isend(const void* buf, int64_t n, DType t, int dst, int tag) override {
    auto r = std::make_unique<MpiRequest>();
    r->busy = &busy_seconds_;
    check(MPI_Isend(buf, as_int(n, "send"), mpi_type(t), dst, tag, comm_, &r->req), "MPI_Isend");
    return Request(std::move(r));
  }
  Request irecv(void* buf, int64_t n, DType t, int src, int tag) override {
    auto r = std::make_unique<MpiRequest>();
    r->busy = &busy_seconds_;
    check(MPI_Irecv(buf, as_int(n, "recv"), mpi_type(t), src, tag, comm_, &r->req), "MPI_Irecv");
    return Request(std::move(r));
  }

 private:
  std::vector<int> int_counts(const int64_t* sc, const int64_t* so, const int64_t* rc, const int64_t* ro) const {
    std::vector<int> c(4 * size_);
    for (int i = 0; i < size_; ++i) {
      c[i] = as_int(sc[i], "all_to_all_v");
      c[size_ + i] = as_int(so[i], "all_to_all_v");
      c[2 * size_ + i] = as_int(rc[i], "all_to_all_v");
      c[3 * size_ + i] = as_int(ro[i], "all_to_all_v");
    }
    return c;
  }
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
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
