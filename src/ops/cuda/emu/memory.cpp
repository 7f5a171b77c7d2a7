// cuda-emu's device memory: cudaMalloc/cudaFree from a reserved address range, the host-memory
// calls, cudaMemcpy/cudaMemset with their direction and bounds checks, guard mode, and the
// SIGSEGV handler that explains faults.
//
// Layout. The emulator reserves (PROT_NONE, no memory committed) four times the emulated
// device's capacity of address space. An allocation takes whole pages plus one inaccessible
// guard page behind them, and its pointer is placed as late in its pages as the 256-byte
// alignment cudaMalloc guarantees allows, so running off its end faults at once. Freed pages
// are returned to the system and made inaccessible; addresses are handed out next-fit from
// where the last allocation ended, so a freed range is reused only after the rest of the
// reserve has been, and a use after free faults.
//
// Guard mode. Allocations are PROT_NONE while no DeviceAccess is alive in the process and
// readable and writable while one is; a kernel launch, a memcpy/memset and a cuBLAS call each
// hold one. Opening and closing cost one mprotect per live allocation.

#include <cuda_runtime.h>

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "internal.h"

namespace um_emu::detail {
namespace {

constexpr size_t kAlignment = 256;  // what cudaMalloc guarantees

size_t round_up(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

bool env_flag(const char* name) {
  const char* value = getenv(name);
  return value && strcmp(value, "1") == 0;
}

class DeviceMemory {
 public:
  static DeviceMemory& instance();
  static DeviceMemory* existing() { return instance_.load(std::memory_order_acquire); }

  cudaError_t allocate(void** p, size_t size);
  cudaError_t free(void* p);
  bool contains(uintptr_t a) const { return a - base_ < size_; }
  bool is_live(const void* p);
  bool check_span(const void* p, size_t bytes, char* why, size_t why_size);
  bool describe(uintptr_t a, char* out, size_t out_size);
  void open();
  void close();
  void set_guard(bool on);
  bool guard() const { return guard_; }
  size_t capacity() const { return capacity_; }
  size_t used() {
    std::lock_guard lock(mutex_);
    return used_;
  }

 private:
  struct Allocation {
    uintptr_t span;  // its pages, the guard page included
    size_t span_size;
    size_t size;  // what cudaMalloc was asked for
  };

  DeviceMemory();
  void protect_all(int protection);
  // The live allocation whose span contains a, or live_.end(); mutex_ held.
  std::map<uintptr_t, Allocation>::iterator find_span(uintptr_t a);
  uintptr_t take_free_range(size_t size);
  void give_back_range(uintptr_t start, size_t size);

  static std::atomic<DeviceMemory*> instance_;
  std::mutex mutex_;
  uintptr_t base_ = 0;
  size_t size_ = 0;  // of the reserve
  size_t page_ = 0;
  size_t capacity_ = 0, used_ = 0;
  std::map<uintptr_t, Allocation> live_;  // by user pointer
  std::map<uintptr_t, size_t> free_;      // free ranges of the reserve, coalesced
  uintptr_t cursor_ = 0;                  // where the last allocation ended
  int open_count_ = 0;
  std::atomic<bool> guard_ = false;  // read without the mutex by the signal handler
  bool poison_ = false;
};

std::atomic<DeviceMemory*> DeviceMemory::instance_{nullptr};

DeviceMemory& DeviceMemory::instance() {
  static DeviceMemory* memory = [] {
    auto* m = new DeviceMemory;  // lives until exit: kernels may run from static destructors
    instance_.store(m, std::memory_order_release);
    return m;
  }();
  return *memory;
}

DeviceMemory::DeviceMemory() {
  page_ = size_t(sysconf(_SC_PAGESIZE));
  const char* gb = getenv("UM_CUDA_EMU_MEM_GB");
  capacity_ = round_up(size_t((gb && atof(gb) > 0 ? atof(gb) : 16.0) * double(1 << 30)), page_);
  guard_ = env_flag("UM_CUDA_EMU_GUARD");
  poison_ = env_flag("UM_CUDA_EMU_POISON");
  // Ask for 4x the capacity so freed addresses rest before reuse; settle for less if refused.
  for (size_t size = 4 * capacity_; size >= capacity_; size /= 2) {
    void* p = mmap(nullptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) {
      base_ = reinterpret_cast<uintptr_t>(p);
      size_ = size;
      break;
    }
  }
  if (size_ == 0) report("could not reserve address space for device memory");
  if (size_) free_[base_] = size_;
  cursor_ = base_;
  install_fault_handler();
}

cudaError_t DeviceMemory::allocate(void** p, size_t size) {
  const size_t data = round_up(size, page_), span_size = data + page_;
  std::lock_guard lock(mutex_);
  if (used_ + data > capacity_) {
    report("cudaMalloc(%zu): out of device memory (%zu of %zu bytes in use)", size, used_,
           capacity_);
    return cudaErrorMemoryAllocation;
  }
  const uintptr_t span = take_free_range(span_size);
  if (span == 0) {
    report("cudaMalloc(%zu): the reserved address range is exhausted or fragmented", size);
    return cudaErrorMemoryAllocation;
  }
  char* pages = reinterpret_cast<char*>(span);
  if (poison_) {
    mprotect(pages, data, PROT_READ | PROT_WRITE);
    memset(pages, 0xff, data);
  }
  mprotect(pages, data, guard_ && open_count_ == 0 ? PROT_NONE : PROT_READ | PROT_WRITE);
  const uintptr_t user = span + data - round_up(size, kAlignment);
  live_[user] = {span, span_size, size};
  used_ += data;
  *p = reinterpret_cast<void*>(user);
  return cudaSuccess;
}

cudaError_t DeviceMemory::free(void* p) {
  std::lock_guard lock(mutex_);
  const auto it = live_.find(reinterpret_cast<uintptr_t>(p));
  if (it == live_.end()) {
    report("cudaFree(%p): %s", p,
           contains(reinterpret_cast<uintptr_t>(p))
               ? "not the start of a live allocation (freed twice, or a pointer into one)"
               : "not device memory");
    return cudaErrorInvalidValue;
  }
  const Allocation a = it->second;
  // Mapping fresh inaccessible pages over the span returns its memory to the system.
  mmap(reinterpret_cast<void*>(a.span), a.span_size - page_, PROT_NONE,
       MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  used_ -= a.span_size - page_;
  live_.erase(it);
  give_back_range(a.span, a.span_size);
  return cudaSuccess;
}

uintptr_t DeviceMemory::take_free_range(size_t size) {
  auto fits = [&](auto first, auto last) {
    for (auto it = first; it != last; ++it)
      if (it->second >= size) return it;
    return free_.end();
  };
  const auto from_cursor = free_.lower_bound(cursor_);
  auto it = fits(from_cursor, free_.end());
  if (it == free_.end()) it = fits(free_.begin(), from_cursor);
  if (it == free_.end()) return 0;
  const uintptr_t start = it->first;
  const size_t left = it->second - size;
  free_.erase(it);
  if (left) free_[start + size] = left;
  cursor_ = start + size;
  return start;
}

void DeviceMemory::give_back_range(uintptr_t start, size_t size) {
  auto next = free_.lower_bound(start);
  if (next != free_.end() && start + size == next->first) {
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    const auto previous = std::prev(next);
    if (previous->first + previous->second == start) {
      previous->second += size;
      return;
    }
  }
  free_[start] = size;
}

std::map<uintptr_t, DeviceMemory::Allocation>::iterator DeviceMemory::find_span(uintptr_t a) {
  // Allocations are ordered by user pointer as by span; the candidate is the last one whose
  // user pointer is at or below a, or the next one (a may lie in its span before its pointer).
  auto it = live_.upper_bound(a);
  if (it != live_.end() && a - it->second.span < it->second.span_size) return it;
  if (it == live_.begin()) return live_.end();
  --it;
  return a - it->second.span < it->second.span_size ? it : live_.end();
}

bool DeviceMemory::is_live(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (!contains(a)) return false;
  std::lock_guard lock(mutex_);
  const auto it = find_span(a);
  return it != live_.end() && a >= it->first && a <= it->first + it->second.size;
}

bool DeviceMemory::check_span(const void* p, size_t bytes, char* why, size_t why_size) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (!contains(a)) {
    snprintf(why, why_size, "%p is not device memory", p);
    return false;
  }
  std::lock_guard lock(mutex_);
  const auto it = find_span(a);
  if (it == live_.end() || a < it->first || a > it->first + it->second.size) {
    snprintf(why, why_size, "%p is not inside a live allocation (freed, or never allocated)", p);
    return false;
  }
  const size_t offset = a - it->first, size = it->second.size;
  if (bytes > size - offset) {
    snprintf(why, why_size,
             "%zu bytes at %p overrun the %zu-byte allocation at %p by %zu bytes", bytes, p, size,
             reinterpret_cast<void*>(it->first), bytes - (size - offset));
    return false;
  }
  return true;
}

// Called from the signal handler: does not wait for the mutex.
bool DeviceMemory::describe(uintptr_t a, char* out, size_t out_size) {
  if (!contains(a)) return false;
  std::unique_lock lock(mutex_, std::try_to_lock);
  const auto it = lock.owns_lock() ? find_span(a) : live_.end();
  if (it == live_.end()) {
    snprintf(out, out_size, "device address %p, not in a live allocation (freed, or never "
             "allocated)", reinterpret_cast<void*>(a));
    return true;
  }
  const uintptr_t user = it->first;
  const size_t size = it->second.size;
  void* start = reinterpret_cast<void*>(user);
  if (a < user)
    snprintf(out, out_size, "device address %p, %zu bytes before the %zu-byte allocation at %p",
             reinterpret_cast<void*>(a), size_t(user - a), size, start);
  else if (a >= user + size)
    snprintf(out, out_size, "device address %p, %zu bytes past the end of the %zu-byte "
             "allocation at %p", reinterpret_cast<void*>(a), size_t(a - user - size), size, start);
  else
    snprintf(out, out_size, "device address %p, byte %zu of the %zu-byte allocation at %p",
             reinterpret_cast<void*>(a), size_t(a - user), size, start);
  return true;
}

void DeviceMemory::protect_all(int protection) {
  for (const auto& [user, a] : live_)
    mprotect(reinterpret_cast<void*>(a.span), a.span_size - page_, protection);
}

void DeviceMemory::open() {
  std::lock_guard lock(mutex_);
  if (open_count_++ == 0 && guard_) protect_all(PROT_READ | PROT_WRITE);
}

void DeviceMemory::close() {
  std::lock_guard lock(mutex_);
  if (--open_count_ == 0 && guard_) protect_all(PROT_NONE);
}

void DeviceMemory::set_guard(bool on) {
  std::lock_guard lock(mutex_);
  if (on == guard_) return;
  guard_ = on;
  if (open_count_ == 0) protect_all(on ? PROT_NONE : PROT_READ | PROT_WRITE);
}

// ---- Host memory ----------------------------------------------------------------------------

std::mutex g_host_mutex;
std::set<void*> g_host_allocations;  // from cudaMallocHost

// ---- Faults ---------------------------------------------------------------------------------

struct sigaction g_previous_action;

// Explains the fault when it concerns the emulator, then reinstates the previous action and
// returns: the faulting instruction runs again and faults into that action (by default the
// process dies with SIGSEGV, and a debugger stops at the faulting line).
void on_segv(int, siginfo_t* info, void*) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  char thread[1024] = "", what[256] = "", memory[512] = "";
  const bool in_kernel = describe_kernel_fault(a, thread, sizeof(thread), what, sizeof(what));
  DeviceMemory* m = DeviceMemory::existing();
  const bool device = m && m->describe(a, memory, sizeof(memory));
  if (in_kernel && what[0])
    report("%s: %s", thread, what);
  else if (in_kernel && device)
    report("%s: invalid access to %s", thread, memory);
  else if (in_kernel)
    report("%s: segmentation fault at %p, not device memory (a host pointer?)", thread,
           info->si_addr);
  else if (device && m->guard())
    report("host code accessed %s: device memory is accessible only inside kernels, "
           "cudaMemcpy/cudaMemset and cuBLAS calls (guard mode)", memory);
  else if (device)
    report("host code accessed %s", memory);
  sigaction(SIGSEGV, &g_previous_action, nullptr);
}

}  // namespace

void install_fault_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &g_previous_action);
  });
}

bool in_device_range(const void* p) {
  const DeviceMemory* m = DeviceMemory::existing();
  return m && m->contains(reinterpret_cast<uintptr_t>(p));
}

bool check_device_span(const void* p, size_t bytes, char* why, size_t why_size) {
  return DeviceMemory::instance().check_span(p, bytes, why, why_size);
}

bool describe_device_address(uintptr_t address, char* out, size_t out_size) {
  DeviceMemory* m = DeviceMemory::existing();
  return m && m->describe(address, out, out_size);
}

size_t device_memory_capacity() { return DeviceMemory::instance().capacity(); }

}  // namespace um_emu::detail

namespace um_emu {

using detail::DeviceMemory;

bool is_device_pointer(const void* p) {
  DeviceMemory* m = DeviceMemory::existing();
  return m && m->is_live(p);
}

void set_guard(bool on) { DeviceMemory::instance().set_guard(on); }
bool guard_enabled() { return DeviceMemory::instance().guard(); }

DeviceAccess::DeviceAccess() { DeviceMemory::instance().open(); }
DeviceAccess::~DeviceAccess() { DeviceMemory::instance().close(); }

}  // namespace um_emu

using um_emu::detail::report;
using um_emu::detail::set_error;

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  if (!devPtr) return set_error(cudaErrorInvalidValue);
  *devPtr = nullptr;
  if (size == 0) return cudaSuccess;
  return set_error(um_emu::detail::DeviceMemory::instance().allocate(devPtr, size));
}

cudaError_t cudaFree(void* devPtr) {
  if (!devPtr) return cudaSuccess;
  return set_error(um_emu::detail::DeviceMemory::instance().free(devPtr));
}

cudaError_t cudaMallocHost(void** ptr, size_t size) {
  if (!ptr) return set_error(cudaErrorInvalidValue);
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  if (posix_memalign(ptr, 4096, size) != 0) return set_error(cudaErrorMemoryAllocation);
  std::lock_guard lock(um_emu::detail::g_host_mutex);
  um_emu::detail::g_host_allocations.insert(*ptr);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* ptr) {
  if (!ptr) return cudaSuccess;
  std::lock_guard lock(um_emu::detail::g_host_mutex);
  if (um_emu::detail::g_host_allocations.erase(ptr) == 0) {
    report("cudaFreeHost(%p): not a pointer from cudaMallocHost", ptr);
    return set_error(cudaErrorInvalidValue);
  }
  free(ptr);
  return cudaSuccess;
}

namespace {

const char* kind_name(cudaMemcpyKind kind) {
  switch (kind) {
    case cudaMemcpyHostToHost: return "HostToHost";
    case cudaMemcpyHostToDevice: return "HostToDevice";
    case cudaMemcpyDeviceToHost: return "DeviceToHost";
    case cudaMemcpyDeviceToDevice: return "DeviceToDevice";
    case cudaMemcpyDefault: return "Default";
  }
  return "invalid kind";
}

// A copy of `count` bytes: the pointers must live where `kind` says, the device sides inside
// live allocations.
cudaError_t copy(const char* api, void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  if (!dst || !src) {
    report("%s(%p, %p, %zu): null pointer", api, dst, src, count);
    return set_error(cudaErrorInvalidValue);
  }
  const bool dst_device = um_emu::detail::in_device_range(dst);
  const bool src_device = um_emu::detail::in_device_range(src);
  bool want_dst_device, want_src_device;
  switch (kind) {
    case cudaMemcpyHostToHost: want_dst_device = want_src_device = false; break;
    case cudaMemcpyHostToDevice: want_dst_device = true, want_src_device = false; break;
    case cudaMemcpyDeviceToHost: want_dst_device = false, want_src_device = true; break;
    case cudaMemcpyDeviceToDevice: want_dst_device = want_src_device = true; break;
    case cudaMemcpyDefault: want_dst_device = dst_device, want_src_device = src_device; break;
    default:
      report("%s: invalid cudaMemcpyKind %d", api, int(kind));
      return set_error(cudaErrorInvalidMemcpyDirection);
  }
  if (dst_device != want_dst_device || src_device != want_src_device) {
    report("%s(%s): the destination %p is %s memory and the source %p is %s memory", api,
           kind_name(kind), dst, dst_device ? "device" : "host", src,
           src_device ? "device" : "host");
    return set_error(cudaErrorInvalidMemcpyDirection);
  }
  char why[256];
  if ((dst_device && !um_emu::detail::check_device_span(dst, count, why, sizeof(why))) ||
      (src_device && !um_emu::detail::check_device_span(src, count, why, sizeof(why)))) {
    report("%s(%s, %zu bytes): %s", api, kind_name(kind), count, why);
    return set_error(cudaErrorInvalidValue);
  }
  um_emu::DeviceAccess access;
  memmove(dst, src, count);
  return cudaSuccess;
}

cudaError_t fill(const char* api, void* dst, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  char why[256];
  if (!dst || !um_emu::detail::check_device_span(dst, count, why, sizeof(why))) {
    report("%s(%zu bytes): %s", api, count, dst ? why : "null pointer");
    return set_error(cudaErrorInvalidValue);
  }
  um_emu::DeviceAccess access;
  memset(dst, value, count);
  return cudaSuccess;
}

bool check_stream(const char* api, cudaStream_t stream) {
  if (um_emu::detail::is_valid_stream(stream)) return true;
  report("%s: stream %p is not a live stream", api, static_cast<void*>(stream));
  set_error(cudaErrorInvalidResourceHandle);
  return false;
}

}  // namespace

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  // Synchronous: it reports a failed launch before it, as CUDA does, and does not copy.
  if (const cudaError_t e = um_emu::detail::take_launch_error()) {
    report("cudaMemcpy: returns the error of an earlier launch (%s) and copies nothing",
           cudaGetErrorName(e));
    return e;
  }
  return copy("cudaMemcpy", dst, src, count, kind);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (!check_stream("cudaMemcpyAsync", stream)) return cudaErrorInvalidResourceHandle;
  return copy("cudaMemcpyAsync", dst, src, count, kind);
}

cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  return fill("cudaMemset", devPtr, value, count);
}

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  if (!check_stream("cudaMemsetAsync", stream)) return cudaErrorInvalidResourceHandle;
  return fill("cudaMemsetAsync", devPtr, value, count);
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (!free || !total) return set_error(cudaErrorInvalidValue);
  auto& m = um_emu::detail::DeviceMemory::instance();
  *total = m.capacity();
  *free = m.capacity() - m.used();
  return cudaSuccess;
}
