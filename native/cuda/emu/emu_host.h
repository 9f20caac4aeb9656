// CUDA-on-CPU emulation, part 3: the host side — kernel launch, the runtime API subset, and the controls
// tests use (scheduling order, error details).
//
// Launches are synchronous and serialised process-wide (static shared memory is one global section).
// A launch that goes wrong (bad configuration, out-of-bounds access, deadlock, divergent barrier) sets the
// calling thread's last error like a real launch; last_error_message() says what happened and where.
#pragma once
#include <cstdint>
#include <tuple>
#include <utility>

#include "emu_types.h"

namespace emu {

// ---- controls ---------------------------------------------------------------------------------------
// The order in which the scheduler runs the threads of a block (and the blocks of a grid). A correct
// kernel gives the same result in every order; racy ones usually do not. Default: EMU_ORDER from the
// environment (forward|reverse|random), else forward.
enum class Order { Forward = 0, Reverse = 1, Random = 2 };
void set_order(Order o);
Order order();
bool parse_order(const char* s, Order* out);
const char* order_name(Order o);
void set_seed(uint64_t seed);  // for Order::Random; EMU_SEED, else 1

// Details of the last error set on the calling thread (kept after cudaGetLastError() clears the code).
const char* last_error_message();

// Lets emulated kernels use memory that did not come from cudaMalloc (a host buffer standing in for
// device memory); accesses are checked against it like any allocation. Returns false when the range
// overlaps a registered one (or, for unregister, was not registered by register_memory).
bool register_memory(const void* p, size_t bytes);
bool unregister_memory(const void* p);

// ---- runtime API subset -------------------------------------------------------------------------------
cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) { return cudaMalloc(reinterpret_cast<void**>(p), bytes); }
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value);
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*fn)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), attr, value);
}

// ---- launch -----------------------------------------------------------------------------------------
namespace detail {
// `params` is param_types<P...>(), from which error messages take the kernel's parameter types (the
// launch site's text alone may read "kernel<T>").
void launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char* name, const char* params,
            const void* fn, void (*thunk)(void*), void* ctx);
template <class... P>
const char* param_types() { return __PRETTY_FUNCTION__; }
}

// What LAUNCH(grid, block, smem, stream, kernel)(args...) expands to. The arguments are converted to the
// kernel's parameter types once; every emulated thread then calls the kernel with its own by-value copies,
// so kernels that modify their parameters behave as on the GPU.
template <class... P>
struct Launcher {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const char* name;
  void (*kernel)(P...);

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "wrong number of kernel arguments");
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<P...> args;
    } ctx{kernel, std::tuple<P...>(std::forward<A>(args)...)};
    auto thunk = [](void* c) {
      Ctx* x = static_cast<Ctx*>(c);
      std::apply(x->kernel, x->args);
    };
    detail::launch(grid, block, smem, stream, name, detail::param_types<P...>(), reinterpret_cast<const void*>(kernel),
                   thunk, &ctx);
  }
};
template <class... P>
Launcher<P...> launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t stream, const char* name,
                        void (*kernel)(P...)) {
  return {grid, block, smem, stream, name, kernel};
}

}  // namespace emu
