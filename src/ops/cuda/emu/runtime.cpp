// cuda-emu's runtime bookkeeping: error state and strings, streams and events (handles that are
// checked but order nothing, as everything already runs in order), the emulated device's
// properties, kernel attributes, and the "[cuda-emu]" messages.

#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "internal.h"

struct CUstream_st {
  unsigned flags;
};

struct CUevent_st {
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point time;
};

namespace um_emu::detail {
namespace {

thread_local cudaError_t t_last_error = cudaSuccess;
thread_local cudaError_t t_launch_error = cudaSuccess;

std::mutex g_mutex;  // guards the handle sets and the attribute map
std::set<const CUstream_st*> g_streams;
std::set<const CUevent_st*> g_events;
std::map<const void*, size_t> g_dynamic_smem_limits;

bool is_live_event(cudaEvent_t event) {
  std::lock_guard lock(g_mutex);
  return g_events.count(event) != 0;
}

}  // namespace

// One write: messages of concurrent threads do not interleave, and the SIGSEGV handler may
// report without taking stdio's locks.
void report(const char* format, ...) {
  char message[4096] = "[cuda-emu] ";
  const size_t prefix = strlen(message);
  va_list args;
  va_start(args, format);
  const int n = vsnprintf(message + prefix, sizeof(message) - prefix - 1, format, args);
  va_end(args);
  size_t length = std::min(prefix + size_t(std::max(n, 0)), sizeof(message) - 2);
  message[length++] = '\n';
  for (size_t done = 0; done < length;) {
    const ssize_t written = write(STDERR_FILENO, message + done, length - done);
    if (written <= 0) break;
    done += size_t(written);
  }
}

cudaError_t set_error(cudaError_t error) {
  if (error != cudaSuccess) t_last_error = error;
  return error;
}

void set_launch_error(cudaError_t error) {
  set_error(error);
  t_launch_error = error;
}

cudaError_t take_launch_error() {
  const cudaError_t error = t_launch_error;
  t_launch_error = cudaSuccess;
  return set_error(error);
}

bool is_valid_stream(cudaStream_t stream) {
  if (stream == nullptr) return true;
  std::lock_guard lock(g_mutex);
  return g_streams.count(stream) != 0;
}

size_t dynamic_smem_limit(const void* kernel) {
  std::lock_guard lock(g_mutex);
  const auto it = g_dynamic_smem_limits.find(kernel);
  return it == g_dynamic_smem_limits.end() ? kDefaultDynamicSmem : it->second;
}

}  // namespace um_emu::detail

using um_emu::detail::report;
using um_emu::detail::set_error;

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
#define UM_EMU_NAME(e) \
  case e: return #e;
    UM_EMU_NAME(cudaSuccess)
    UM_EMU_NAME(cudaErrorInvalidValue)
    UM_EMU_NAME(cudaErrorMemoryAllocation)
    UM_EMU_NAME(cudaErrorInitializationError)
    UM_EMU_NAME(cudaErrorInvalidConfiguration)
    UM_EMU_NAME(cudaErrorInvalidDevicePointer)
    UM_EMU_NAME(cudaErrorInvalidMemcpyDirection)
    UM_EMU_NAME(cudaErrorInvalidDeviceFunction)
    UM_EMU_NAME(cudaErrorNoDevice)
    UM_EMU_NAME(cudaErrorInvalidDevice)
    UM_EMU_NAME(cudaErrorInvalidResourceHandle)
    UM_EMU_NAME(cudaErrorNotReady)
    UM_EMU_NAME(cudaErrorIllegalAddress)
    UM_EMU_NAME(cudaErrorLaunchOutOfResources)
    UM_EMU_NAME(cudaErrorLaunchTimeout)
    UM_EMU_NAME(cudaErrorLaunchFailure)
    UM_EMU_NAME(cudaErrorNotSupported)
    UM_EMU_NAME(cudaErrorUnknown)
#undef UM_EMU_NAME
  }
  return "unrecognized error code";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorUnknown: return "unknown error";
  }
  return "unrecognized error code";
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = um_emu::detail::t_last_error;
  um_emu::detail::t_last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return um_emu::detail::t_last_error; }

cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
  return cudaStreamCreateWithFlags(pStream, cudaStreamDefault);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  if (!pStream || (flags & ~unsigned(cudaStreamNonBlocking)))
    return set_error(cudaErrorInvalidValue);
  *pStream = new CUstream_st{flags};
  std::lock_guard lock(um_emu::detail::g_mutex);
  um_emu::detail::g_streams.insert(*pStream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  {
    std::lock_guard lock(um_emu::detail::g_mutex);
    if (stream == nullptr || um_emu::detail::g_streams.erase(stream) == 0) {
      report("cudaStreamDestroy: %p is not a live stream", static_cast<void*>(stream));
      return set_error(cudaErrorInvalidResourceHandle);
    }
  }
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (!um_emu::detail::is_valid_stream(stream)) {
    report("cudaStreamSynchronize: %p is not a live stream", static_cast<void*>(stream));
    return set_error(cudaErrorInvalidResourceHandle);
  }
  return um_emu::detail::take_launch_error();
}

cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  if (!um_emu::detail::is_valid_stream(stream) || !um_emu::detail::is_live_event(event)) {
    report("cudaStreamWaitEvent: stream %p or event %p is not live", static_cast<void*>(stream),
           static_cast<void*>(event));
    return set_error(cudaErrorInvalidResourceHandle);
  }
  if (flags != 0) return set_error(cudaErrorInvalidValue);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  return cudaEventCreateWithFlags(event, cudaEventDefault);
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (!event || (flags & ~unsigned(cudaEventBlockingSync | cudaEventDisableTiming)))
    return set_error(cudaErrorInvalidValue);
  *event = new CUevent_st{flags, false, {}};
  std::lock_guard lock(um_emu::detail::g_mutex);
  um_emu::detail::g_events.insert(*event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!um_emu::detail::is_live_event(event) || !um_emu::detail::is_valid_stream(stream)) {
    report("cudaEventRecord: event %p or stream %p is not live", static_cast<void*>(event),
           static_cast<void*>(stream));
    return set_error(cudaErrorInvalidResourceHandle);
  }
  event->recorded = true;
  event->time = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!um_emu::detail::is_live_event(event)) {
    report("cudaEventSynchronize: %p is not a live event", static_cast<void*>(event));
    return set_error(cudaErrorInvalidResourceHandle);
  }
  return um_emu::detail::take_launch_error();
}

// Host time between the records: what the CPU took, not what a GPU would.
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!ms) return set_error(cudaErrorInvalidValue);
  if (!um_emu::detail::is_live_event(start) || !um_emu::detail::is_live_event(end) ||
      !start->recorded || !end->recorded || ((start->flags | end->flags) & cudaEventDisableTiming))
    return set_error(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->time - start->time).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  {
    std::lock_guard lock(um_emu::detail::g_mutex);
    if (um_emu::detail::g_events.erase(event) == 0) {
      report("cudaEventDestroy: %p is not a live event", static_cast<void*>(event));
      return set_error(cudaErrorInvalidResourceHandle);
    }
  }
  delete event;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return um_emu::detail::take_launch_error(); }

cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice);
}

cudaError_t cudaGetDevice(int* device) {
  if (!device) return set_error(cudaErrorInvalidValue);
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* count) {
  if (!count) return set_error(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (!prop) return set_error(cudaErrorInvalidValue);
  if (device != 0) return set_error(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  snprintf(prop->name, sizeof(prop->name), "cuda-emu (CPU emulation of a compute 9.0 device)");
  prop->totalGlobalMem = um_emu::detail::device_memory_capacity();
  prop->sharedMemPerBlock = um_emu::detail::kDefaultDynamicSmem;
  prop->sharedMemPerBlockOptin = um_emu::detail::kMaxDynamicSmem;
  prop->sharedMemPerMultiprocessor = 228 << 10;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = 132;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->major = 9;
  prop->minor = 0;
  prop->l2CacheSize = 50 << 20;
  prop->totalConstMem = 64 << 10;
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (!func) return set_error(cudaErrorInvalidDeviceFunction);
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      size_t(value) > um_emu::detail::kMaxDynamicSmem)
    return set_error(cudaErrorInvalidValue);
  std::lock_guard lock(um_emu::detail::g_mutex);
  um_emu::detail::g_dynamic_smem_limits[func] = size_t(value);
  return cudaSuccess;
}
