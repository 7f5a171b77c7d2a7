// cuda-emu's execution engine: runs a kernel launch block by block on the calling host thread,
// each CUDA thread of a block on a fiber, switching fibers only where a thread must wait for
// others (barriers and warp operations). See emu.h for the model and what is checked.
//
// Scheduling. A block's threads start in order of their linear index. A fiber runs its thread
// until the thread returns, then runs the next thread not yet started on the same stack, so a
// kernel without barriers costs one function call per thread and two stack switches per block.
// A thread that must wait switches directly to what can run next: a thread released by a
// completed barrier (first in, first out), else a fresh fiber for the next thread not yet
// started, else the host — which then finds the block finished, or stuck: a deadlock.
// A barrier completes when its last thread arrives; that thread computes every participant's
// result (for warp operations), queues the others and carries on without a switch.
//
// Context switching is a dozen instructions of x86-64 assembly (glibc's swapcontext makes a
// sigprocmask system call per switch); other architectures, or UM_EMU_UCONTEXT, use ucontext.
// Under AddressSanitizer the switches are announced to it, so fibers are not false positives.

#include <cuda_runtime.h>

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(UM_EMU_UCONTEXT)
#include <ucontext.h>
#define UM_EMU_USE_UCONTEXT 1
#endif

extern "C" void um_emu_fiber_main();

namespace um_emu::detail {
namespace {

constexpr size_t kStackSize = 256 << 10;  // per fiber; generous for local arrays and fragments
// Below each stack, inaccessible: a frame that overflows the stack faults in it instead of
// writing into a neighbouring mapping (another fiber's stack), up to a frame this large.
constexpr size_t kStackGuard = 256 << 10;
constexpr unsigned kMaxThreadsPerBlock = 1024;

size_t page_size() {
  static const size_t size = size_t(sysconf(_SC_PAGESIZE));
  return size;
}

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

void* map_or_die(size_t size, int protection) {
  void* p = mmap(nullptr, size, protection, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    report("out of memory mapping %zu bytes", size);
    std::abort();
  }
  return p;
}

// ---- Execution contexts ---------------------------------------------------------------------

#if defined(UM_EMU_USE_UCONTEXT)
class Context {
 public:
  // The next switch to this context calls um_emu_fiber_main() on the given stack.
  void prepare(char* stack, size_t size) {
    getcontext(&context_);
    context_.uc_stack.ss_sp = stack;
    context_.uc_stack.ss_size = size;
    context_.uc_link = nullptr;
    makecontext(&context_, um_emu_fiber_main, 0);
  }
  static void swap(Context& from, Context& to) { swapcontext(&from.context_, &to.context_); }

 private:
  ucontext_t context_;
};
#else
extern "C" void um_emu_switch_stack(void** save_sp, void* load_sp);
extern "C" void um_emu_fiber_start();

// um_emu_switch_stack saves what the System V ABI says a callee preserves — rbx, rbp, r12-r15
// and the MXCSR and x87 control words — on the current stack, stores the stack pointer in
// *save_sp, and restores the same from load_sp. um_emu_fiber_start is where a fresh fiber's
// first switch returns to; its CFI marks the bottom of the fiber's call stack for debuggers.
asm(R"(
  .text
  .globl um_emu_switch_stack
  .hidden um_emu_switch_stack
  .type um_emu_switch_stack, @function
um_emu_switch_stack:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size um_emu_switch_stack, .-um_emu_switch_stack

  .globl um_emu_fiber_start
  .hidden um_emu_fiber_start
  .type um_emu_fiber_start, @function
um_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  call um_emu_fiber_main
  ud2
  .cfi_endproc
  .size um_emu_fiber_start, .-um_emu_fiber_start
)");

class Context {
 public:
  // The next switch to this context calls um_emu_fiber_main() on the given stack: the stack
  // holds the frame um_emu_switch_stack pops — control words, six zeroed registers, and
  // um_emu_fiber_start as the return address — placed so that the call in um_emu_fiber_start
  // sees the 16-byte alignment the ABI requires.
  void prepare(char* stack, size_t size) {
    auto* top = reinterpret_cast<uint64_t*>(stack + size);
    uint64_t* frame = top - 10;
    uint32_t mxcsr;
    uint16_t x87_control;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(x87_control));
    frame[0] = mxcsr | uint64_t(x87_control) << 32;
    std::fill(frame + 1, frame + 7, 0);
    frame[7] = reinterpret_cast<uint64_t>(&um_emu_fiber_start);
    stack_pointer_ = frame;
  }
  static void swap(Context& from, Context& to) {
    um_emu_switch_stack(&from.stack_pointer_, to.stack_pointer_);
  }

 private:
  void* stack_pointer_ = nullptr;
};
#endif

// A stack's extent, which AddressSanitizer must be told about at every switch.
struct StackExtent {
  const void* bottom = nullptr;
  size_t size = 0;
};

StackExtent host_stack_extent() {
  StackExtent extent;
#if defined(__SANITIZE_ADDRESS__)
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* bottom;
    pthread_attr_getstack(&attr, &bottom, &extent.size);
    extent.bottom = bottom;
    pthread_attr_destroy(&attr);
  }
#endif
  return extent;
}

// Switches from one context to another. `from_finished`: `from` will never be resumed.
void transfer(Context& from, Context& to, StackExtent to_stack, bool from_finished) {
#if defined(__SANITIZE_ADDRESS__)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(from_finished ? nullptr : &fake_stack, to_stack.bottom,
                                 to_stack.size);
  Context::swap(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)to_stack;
  (void)from_finished;
  Context::swap(from, to);
#endif
}

// ---- The engine -----------------------------------------------------------------------------

struct Fiber {
  Context context;
  char* stack;  // kStackSize bytes, with kStackGuard inaccessible bytes below
};

struct Thread {  // one CUDA thread of the running block
  uint3 idx;
  Fiber* fiber;
  bool returned;
  // The warp operation it takes part in: its inputs, and the result the last lane computes.
  WarpOp op;
  int param, width;
  uint64_t in, out;
};

struct WarpBarrier {  // a warp operation some lanes of a mask have reached
  unsigned mask, arrived;
  WarpOp op;
};

struct Warp {
  unsigned lanes;           // the lanes that exist: all 32, but in a partial last warp
  WarpBarrier pending[32];  // one per mask in progress; each has a waiting lane
  int npending;
};

const char* warp_op_name(WarpOp op) {
  switch (op) {
    case WarpOp::sync: return "__syncwarp";
    case WarpOp::shfl_idx: return "__shfl_sync";
    case WarpOp::shfl_up: return "__shfl_up_sync";
    case WarpOp::shfl_down: return "__shfl_down_sync";
    case WarpOp::shfl_xor: return "__shfl_xor_sync";
    case WarpOp::ballot: return "__ballot_sync";
    case WarpOp::any: return "__any_sync";
    case WarpOp::all: return "__all_sync";
  }
  return "?";
}

bool is_shuffle(WarpOp op) {
  return op == WarpOp::shfl_idx || op == WarpOp::shfl_up || op == WarpOp::shfl_down ||
         op == WarpOp::shfl_xor;
}

// The lane a shuffle reads, as the PTX ISA defines shfl.sync: the warp is cut into segments of
// `width` lanes; only the low 5 bits of `b` count; a source beyond the caller's segment (past
// its end for down and xor, before its start for up) makes the caller read its own value.
// An xor may read an earlier segment.
int shuffle_source(WarpOp op, int lane, int b, int width) {
  b &= 31;
  const int first = lane & ~(width - 1), last = first + width - 1;
  switch (op) {
    case WarpOp::shfl_idx: return first + (b & (width - 1));
    case WarpOp::shfl_up: return lane - b >= first ? lane - b : lane;
    case WarpOp::shfl_down: return lane + b <= last ? lane + b : lane;
    case WarpOp::shfl_xor: return (lane ^ b) <= last ? (lane ^ b) : lane;
    default: return lane;
  }
}

class Engine {
 public:
  Engine();
  ~Engine();

  void run(const LaunchInfo& info, void (*body)(void*), void* args);
  int sync_block(int predicate);
  uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width);
  [[noreturn]] void fault(const char* message);
  void fiber_main();

  void* dynamic_smem() const { return smem_; }
  bool in_kernel() const { return current_ != nullptr; }
  bool describe_fault(uintptr_t address, char* thread, size_t thread_size, char* what,
                      size_t what_size) const;

 private:
  bool check_configuration(const LaunchInfo& info);
  void prepare_dynamic_smem(size_t bytes);
  bool run_block();
  Fiber* acquire_fiber();
  void enter(Thread* t);
  void switch_to_next(Context& from, bool from_finished);
  void wait(Thread* t);
  void release(Thread* t);
  void complete(const WarpBarrier& barrier, Thread* lane0);
  void report_deadlock();
  void abandon_fibers();
  Thread* current_thread(const char* what);
  const char* name() const { return kernel_name(info_->kernel, info_->type); }

  // The launch.
  const LaunchInfo* info_ = nullptr;
  void (*body_)(void*) = nullptr;
  void* args_ = nullptr;
  unsigned nthreads_ = 0;
  std::vector<Thread> threads_;  // and warps_: set up for blocks of table_shape_
  std::vector<Warp> warps_;
  dim3 table_shape_{0, 0, 0};

  // The running block.
  Thread* current_ = nullptr;
  unsigned next_thread_ = 0;            // the first thread not yet started
  unsigned returned_ = 0;
  std::vector<Thread*> runnable_;       // released threads, a ring of nthreads_ slots
  size_t runnable_head_ = 0, runnable_count_ = 0;
  std::vector<Thread*> block_waiters_;  // at __syncthreads, in arrival order
  int block_count_ = 0, block_result_ = 0;
  bool failed_ = false;

  // Fibers, kept across launches; stacks are mapped once and reused.
  std::vector<std::unique_ptr<Fiber>> fibers_;
  std::vector<Fiber*> free_fibers_;
  Fiber* starting_fiber_ = nullptr;  // the fresh fiber um_emu_fiber_main is about to run
  Context host_;
  StackExtent host_stack_;

  // Dynamic shared memory: the buffer ends where the mapping's last, inaccessible page begins.
  char* smem_map_ = nullptr;
  size_t smem_map_size_ = 0;
  char* smem_ = nullptr;
  size_t smem_bytes_ = 0;

  // An alternate signal stack, so that a fiber's stack overflow can be reported.
  void* signal_stack_ = nullptr;
};

Engine& engine() {
  static thread_local Engine instance;
  return instance;
}
thread_local Engine* t_engine = nullptr;  // for the signal handler, which must not construct it

Engine::Engine() : host_stack_(host_stack_extent()) {
  t_engine = this;
  install_fault_handler();
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 && (current.ss_flags & SS_DISABLE)) {
    stack_t alternate{};
    alternate.ss_size = 64 << 10;
    signal_stack_ = map_or_die(alternate.ss_size, PROT_READ | PROT_WRITE);
    alternate.ss_sp = signal_stack_;
    sigaltstack(&alternate, nullptr);
  }
}

Engine::~Engine() {
  t_engine = nullptr;
  for (auto& fiber : fibers_) munmap(fiber->stack - kStackGuard, kStackGuard + kStackSize);
  if (smem_map_) munmap(smem_map_, smem_map_size_);
  if (signal_stack_) {
    stack_t disable{};
    disable.ss_flags = SS_DISABLE;
    sigaltstack(&disable, nullptr);
    munmap(signal_stack_, 64 << 10);
  }
}

bool Engine::check_configuration(const LaunchInfo& info) {
  const dim3 g = info.grid, b = info.block;
  const unsigned long long threads = 1ull * b.x * b.y * b.z;
  const char* problem = nullptr;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0)
    problem = "a grid or block dimension is 0";
  else if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > kMaxThreadsPerBlock)
    problem = "the block exceeds 1024 threads (x, y <= 1024, z <= 64)";
  else if (g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    problem = "the grid exceeds (2^31-1, 65535, 65535)";
  if (problem) {
    report("kernel %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u): %s",
           kernel_name(info.kernel, info.type), g.x, g.y, g.z, b.x, b.y, b.z, problem);
    set_launch_error(cudaErrorInvalidConfiguration);
    return false;
  }
  const size_t limit = dynamic_smem_limit(info.kernel);
  if (info.dynamic_smem > limit) {
    report("kernel %s: %zu bytes of dynamic shared memory exceed the kernel's limit of %zu%s",
           kernel_name(info.kernel, info.type), info.dynamic_smem, limit,
           limit == kDefaultDynamicSmem
               ? " (raise it with cudaFuncSetAttribute(kernel, "
                 "cudaFuncAttributeMaxDynamicSharedMemorySize, bytes))"
               : "");
    set_launch_error(cudaErrorInvalidValue);
    return false;
  }
  if (!is_valid_stream(info.stream)) {
    report("kernel %s: stream %p is not a live stream", kernel_name(info.kernel, info.type),
           static_cast<void*>(info.stream));
    set_launch_error(cudaErrorInvalidResourceHandle);
    return false;
  }
  return true;
}

void Engine::prepare_dynamic_smem(size_t bytes) {
  const size_t page = page_size(), needed = round_up(bytes, page) + page;
  if (needed > smem_map_size_) {
    if (smem_map_) munmap(smem_map_, smem_map_size_);
    smem_map_ = static_cast<char*>(map_or_die(needed, PROT_READ | PROT_WRITE));
    smem_map_size_ = needed;
    mprotect(smem_map_ + needed - page, page, PROT_NONE);
  }
  smem_bytes_ = bytes;
  smem_ = smem_map_ + smem_map_size_ - page - round_up(bytes, 16);
}

void Engine::run(const LaunchInfo& info, void (*body)(void*), void* args) {
  if (info_) {
    report("kernel %s launched from inside kernel %s: the emulator has no dynamic parallelism",
           kernel_name(info.kernel, info.type), name());
    set_launch_error(cudaErrorNotSupported);
    return;
  }
  if (!check_configuration(info)) return;

  info_ = &info;
  body_ = body;
  args_ = args;
  const dim3 block = info.block;
  if (block.x != table_shape_.x || block.y != table_shape_.y || block.z != table_shape_.z) {
    table_shape_ = block;
    nthreads_ = block.x * block.y * block.z;
    threads_.resize(nthreads_);
    for (unsigned i = 0; i < nthreads_; ++i)
      threads_[i].idx = {i % block.x, i / block.x % block.y, i / (block.x * block.y)};
    warps_.resize((nthreads_ + 31) / 32);
    for (size_t w = 0; w < warps_.size(); ++w) {
      const unsigned lanes = std::min(32u, nthreads_ - unsigned(w) * 32);
      warps_[w].lanes = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
    }
    runnable_.resize(nthreads_);
    block_waiters_.reserve(nthreads_);
  }
  prepare_dynamic_smem(info.dynamic_smem);

  gridDim = info.grid;
  blockDim = info.block;
  DeviceAccess access;
  bool ok = true;
  for (unsigned z = 0; ok && z < info.grid.z; ++z)
    for (unsigned y = 0; ok && y < info.grid.y; ++y)
      for (unsigned x = 0; ok && x < info.grid.x; ++x) {
        blockIdx = {x, y, z};
        ok = run_block();
      }
  info_ = nullptr;
}

bool Engine::run_block() {
  for (Warp& w : warps_) w.npending = 0;
  next_thread_ = returned_ = 0;
  runnable_head_ = runnable_count_ = 0;
  block_waiters_.clear();
  block_count_ = 0;
  failed_ = false;
  std::memset(smem_, 0xff, smem_bytes_);  // NaN: reading shared memory nobody wrote shows

  switch_to_next(host_, false);
  // Back on the host: the block returned, faulted or is stuck.
  if (!failed_ && returned_ < nthreads_) report_deadlock();
  if (failed_ || returned_ < nthreads_) {
    abandon_fibers();
    set_launch_error(failed_ ? cudaErrorLaunchFailure : cudaErrorLaunchTimeout);
    return false;
  }
  return true;
}

Fiber* Engine::acquire_fiber() {
  if (free_fibers_.empty()) {
    auto fiber = std::make_unique<Fiber>();
    char* mapping = static_cast<char*>(map_or_die(kStackGuard + kStackSize, PROT_NONE));
    fiber->stack = mapping + kStackGuard;
    mprotect(fiber->stack, kStackSize, PROT_READ | PROT_WRITE);
    free_fibers_.push_back(fiber.get());
    fibers_.push_back(std::move(fiber));
  }
  Fiber* fiber = free_fibers_.back();
  free_fibers_.pop_back();
#if defined(__SANITIZE_ADDRESS__)
  // The frames a fiber leaves behind by switching away for good keep their redzones.
  ASAN_UNPOISON_MEMORY_REGION(fiber->stack, kStackSize);
#endif
  fiber->context.prepare(fiber->stack, kStackSize);
  return fiber;
}

void Engine::enter(Thread* t) {
  current_ = t;
  threadIdx = t->idx;
}

// Leaves `from` for what runs next (see the scheduling notes at the top of the file).
void Engine::switch_to_next(Context& from, bool from_finished) {
  if (runnable_count_ > 0) {
    Thread* t = runnable_[runnable_head_];
    if (++runnable_head_ == nthreads_) runnable_head_ = 0;
    --runnable_count_;
    enter(t);
    transfer(from, t->fiber->context, {t->fiber->stack, kStackSize}, from_finished);
  } else if (next_thread_ < nthreads_) {
    starting_fiber_ = acquire_fiber();
    transfer(from, starting_fiber_->context, {starting_fiber_->stack, kStackSize},
             from_finished);
  } else {
    current_ = nullptr;
    transfer(from, host_, host_stack_, from_finished);
  }
}

void Engine::fiber_main() {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
  Fiber* self = starting_fiber_;
  while (next_thread_ < nthreads_) {
    Thread* t = &threads_[next_thread_++];
    t->fiber = self;
    t->returned = false;
    enter(t);
    body_(args_);
    t->returned = true;
    ++returned_;
  }
  // No thread is left to start, so no fiber is acquired before this one has switched away.
  free_fibers_.push_back(self);
  switch_to_next(self->context, true);
  __builtin_unreachable();
}

void Engine::wait(Thread* t) { switch_to_next(t->fiber->context, false); }

void Engine::release(Thread* t) {
  const size_t tail = runnable_head_ + runnable_count_++;
  runnable_[tail < nthreads_ ? tail : tail - nthreads_] = t;
}

Thread* Engine::current_thread(const char* what) {
  if (!current_) {
    report("%s called outside a kernel", what);
    std::abort();
  }
  return current_;
}

int Engine::sync_block(int predicate) {
  Thread* t = current_thread("__syncthreads");
  block_count_ += predicate != 0;
  if (block_waiters_.size() + 1 < nthreads_) {
    block_waiters_.push_back(t);
    wait(t);
  } else {
    block_result_ = block_count_;
    block_count_ = 0;
    for (Thread* w : block_waiters_) release(w);
    block_waiters_.clear();
  }
  return block_result_;  // set by the barrier's last thread; the next barrier needs this one
}

uint64_t Engine::warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width) {
  const char* what = warp_op_name(op);
  Thread* t = current_thread(what);
  const unsigned linear = unsigned(t - threads_.data()), lane = linear % 32;
  Warp& warp = warps_[linear / 32];
  if (!(mask >> lane & 1))
    kernel_fault("%s: the calling lane %u is not in the mask 0x%08x", what, lane, mask);
  if (mask & ~warp.lanes)
    kernel_fault("%s: mask 0x%08x names lanes that do not exist (this warp has lanes 0x%08x: "
                 "the block's %u threads are not a multiple of 32)",
                 what, mask, warp.lanes, nthreads_);
  if (is_shuffle(op) && (width < 1 || width > 32 || (width & (width - 1))))
    kernel_fault("%s: width %d is not a power of 2 from 1 to 32", what, width);

  // Lanes meet by mask. Barriers of overlapping masks may be pending together: lanes 0-15 may
  // wait at __syncwarp() while lanes 16-31 shuffle among themselves on their way to it.
  WarpBarrier* barrier = nullptr;
  for (int i = 0; i < warp.npending && !barrier; ++i)
    if (warp.pending[i].mask == mask) barrier = &warp.pending[i];
  if (!barrier) {
    barrier = &warp.pending[warp.npending++];
    *barrier = {mask, 0, op};
  } else if (barrier->op != op) {
    kernel_fault("%s: lanes 0x%08x of mask 0x%08x wait at %s instead: the lanes of a mask must "
                 "meet at the same warp operation",
                 what, barrier->arrived, mask, warp_op_name(barrier->op));
  }

  t->op = op;
  t->in = value;
  t->param = param;
  t->width = width;
  barrier->arrived |= 1u << lane;
  if (barrier->arrived != mask) {
    wait(t);
    return t->out;
  }
  Thread* lane0 = t - lane;
  complete(*barrier, lane0);
  for (unsigned m = mask & ~(1u << lane); m; m &= m - 1) release(lane0 + std::countr_zero(m));
  *barrier = warp.pending[--warp.npending];
  return t->out;
}

// Computes the results of a warp operation all lanes of its mask have reached.
void Engine::complete(const WarpBarrier& barrier, Thread* lane0) {
  const unsigned mask = barrier.mask;
  if (barrier.op == WarpOp::sync) return;
  if (!is_shuffle(barrier.op)) {
    unsigned votes = 0;
    for (unsigned m = mask; m; m &= m - 1) {
      const int lane = std::countr_zero(m);
      votes |= unsigned(lane0[lane].in != 0) << lane;
    }
    const uint64_t result = barrier.op == WarpOp::ballot ? votes
                            : barrier.op == WarpOp::any  ? votes != 0
                                                         : votes == mask;
    for (unsigned m = mask; m; m &= m - 1) lane0[std::countr_zero(m)].out = result;
    return;
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = std::countr_zero(m);
    Thread& t = lane0[lane];
    const int source = shuffle_source(barrier.op, lane, t.param, t.width);
    if (!(mask >> source & 1))
      kernel_fault("%s with mask 0x%08x: lane %d reads lane %d, which is not in the mask",
                   warp_op_name(barrier.op), mask, lane, source);
    t.out = lane0[source].in;
  }
}

void Engine::fault(const char* message) {
  const uint3 b = blockIdx, t = current_->idx;
  report("kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", name(), b.x, b.y, b.z, t.x, t.y,
         t.z, message);
  failed_ = true;
  Fiber* self = current_->fiber;
  current_ = nullptr;
  transfer(self->context, host_, host_stack_, true);
  __builtin_unreachable();
}

void Engine::report_deadlock() {
  char text[4096];
  size_t n = 0;
  auto append = [&](const char* format, auto... args) {
    if (n < sizeof(text)) n += size_t(snprintf(text + n, sizeof(text) - n, format, args...));
  };
  const uint3 b = blockIdx;
  append("kernel %s: deadlock in block (%u,%u,%u) of %u threads:", name(), b.x, b.y, b.z,
         nthreads_);
  if (!block_waiters_.empty())
    append("\n  %zu thread%s at __syncthreads()", block_waiters_.size(),
           block_waiters_.size() == 1 ? " waits" : "s wait");
  for (size_t w = 0; w < warps_.size(); ++w)
    for (int i = 0; i < warps_[w].npending; ++i) {
      const WarpBarrier& barrier = warps_[w].pending[i];
      append("\n  warp %zu: lanes 0x%08x wait at %s with mask 0x%08x", w, barrier.arrived,
             warp_op_name(barrier.op), barrier.mask);
    }
  for (const Thread& t : threads_)
    if (t.returned) {
      append("\n  %u thread%s returned, the first thread (%u,%u,%u)", returned_,
             returned_ == 1 ? " has" : "s have", t.idx.x, t.idx.y, t.idx.z);
      break;
    }
  append("\n  every thread of the block must reach each __syncthreads(), and every lane of a "
         "mask each warp operation with that mask");
  report("%s", text);
}

// Makes every fiber free again after a failed block; the abandoned ones never resume.
void Engine::abandon_fibers() {
  free_fibers_.clear();
  for (auto& fiber : fibers_) free_fibers_.push_back(fiber.get());
}

bool Engine::describe_fault(uintptr_t address, char* thread, size_t thread_size, char* what,
                            size_t what_size) const {
  if (!current_) return false;
  const uint3 b = blockIdx, t = current_->idx;
  snprintf(thread, thread_size, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", name(), b.x,
           b.y, b.z, t.x, t.y, t.z);
  const uintptr_t smem_end = reinterpret_cast<uintptr_t>(smem_) + round_up(smem_bytes_, 16);
  if (address - smem_end < page_size())
    snprintf(what, what_size, "access %zu bytes past the end of the %zu bytes of dynamic shared "
             "memory", size_t(address - smem_end), smem_bytes_);
  const uintptr_t stack = reinterpret_cast<uintptr_t>(current_->fiber->stack);
  if (stack - address - 1 < kStackGuard)
    snprintf(what, what_size, "stack overflow: the thread needs more than the %zu KiB of stack "
             "the emulator gives it (large local arrays?)", kStackSize >> 10);
  return true;
}

}  // namespace

bool check_pointer_argument(const LaunchInfo& info, int index, const void* p) {
  if (p == nullptr || is_device_pointer(p)) return true;
  report("kernel %s: argument %d is not a device pointer (%p)%s",
         kernel_name(info.kernel, info.type), index, p,
         in_device_range(p) ? ": it is not in a live allocation" : "");
  set_launch_error(cudaErrorInvalidDevicePointer);
  return false;
}

void run(const LaunchInfo& info, void (*body)(void*), void* args) {
  engine().run(info, body, args);
}

int sync_block(int predicate) { return engine().sync_block(predicate); }

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int param, int width) {
  return engine().warp_op(op, mask, value, param, width);
}

void kernel_fault(const char* format, ...) {
  char message[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(message, sizeof(message), format, args);
  va_end(args);
  Engine& e = engine();
  if (!e.in_kernel()) {
    report("%s (outside a kernel)", message);
    std::abort();
  }
  e.fault(message);
}

bool describe_kernel_fault(uintptr_t address, char* thread, size_t thread_size, char* what,
                           size_t what_size) {
  return t_engine && t_engine->describe_fault(address, thread, thread_size, what, what_size);
}

}  // namespace um_emu::detail

extern "C" void um_emu_fiber_main() { um_emu::detail::engine().fiber_main(); }

namespace um_emu {
void* dynamic_smem() { return detail::engine().dynamic_smem(); }
}  // namespace um_emu
