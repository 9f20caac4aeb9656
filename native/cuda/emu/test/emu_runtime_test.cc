// The emulator's own behaviour: scheduling and barriers (a racy kernel must give a wrong answer),
// deadlocks and bad accesses reported as errors, poisoning, warp collectives, atomics, dp4a, WMMA, launch
// configuration, and that the process carries on after every failure.
#include <stdexcept>

#include "selftest_util.h"

namespace selftest {
namespace {

constexpr unsigned kFull = 0xffffffffu;

struct Outcome {
  cudaError_t code;
  std::string msg;
};
// The status of the last launch, as the host API reads it (launch error, else the synchronise's).
Outcome outcome() {
  cudaError_t e = cudaGetLastError();
  cudaError_t s = cudaDeviceSynchronize();
  cudaGetLastError();
  if (e == cudaSuccess) e = s;
  return {e, e == cudaSuccess ? std::string() : std::string(emu::last_error_message())};
}

__global__ void fill_kernel(int* out, int v) { gstore(out + threadIdx.x, v); }

// After a failed launch, the next one must run normally.
void check_recovers(const char* after) {
  DevBuf d(64 * sizeof(int));
  LAUNCH(1, 64, 0, 0, fill_kernel)(d.as<int>(), 7);
  Outcome o = outcome();
  auto v = d.get<int>(64);
  CHECK(o.code == cudaSuccess && std::all_of(v.begin(), v.end(), [](int x) { return x == 7; }),
        "launch after %s failed: %s", after, o.msg.c_str());
}

// ---- a tiled shared-memory SGEMM with and without its barriers -----------------------------------------------
template <bool kSyncAfterLoad, bool kSyncAfterUse>
__global__ void sgemm_tiled(const float* A, const float* B, float* C, int M, int N, int K) {
  SMEM_ARRAY(float, as, [16][16]);  // a template: plain __shared__ is refused here
  SMEM_ARRAY(float, bs, [16][16]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
  float acc = 0.f;
  for (int k0 = 0; k0 < K; k0 += 16) {
    as[ty][tx] = row < M && k0 + tx < K ? gload(A + row * K + k0 + tx) : 0.f;
    bs[ty][tx] = k0 + ty < K && col < N ? gload(B + (k0 + ty) * N + col) : 0.f;
    if (kSyncAfterLoad) __syncthreads();
    for (int k = 0; k < 16; ++k) acc += as[ty][k] * bs[k][tx];
    if (kSyncAfterUse) __syncthreads();
  }
  if (row < M && col < N) gstore(C + row * N + col, acc);
}

template <bool S1, bool S2>
double sgemm_max_error() {
  const int M = 48, N = 64, K = 80;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(M * K), b(K * N);
  for (auto& v : a) v = d(rng);
  for (auto& v : b) v = d(rng);
  DevBuf da(a.size() * 4), db(b.size() * 4), dc(M * N * 4);
  da.upload(a.data(), a.size() * 4);
  db.upload(b.data(), b.size() * 4);
  LAUNCH(dim3(N / 16, M / 16), dim3(16, 16), 0, 0, sgemm_tiled<S1, S2>)(da.as<float>(), db.as<float>(), dc.as<float>(), M, N, K);
  Outcome o = outcome();
  CHECK(o.code == cudaSuccess, "sgemm launch: %s", o.msg.c_str());
  auto c = dc.get<float>(M * N);
  double worst = 0;
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      double ref = 0;
      for (int k = 0; k < K; ++k) ref += double(a[m * K + k]) * b[k * N + n];
      double e = std::fabs(c[m * N + n] - ref);
      worst = std::isnan(e) ? INFINITY : std::max(worst, e);
    }
  return worst;
}

void test_races() {
  double ok = sgemm_max_error<true, true>();
  CHECK(ok < gamma32(81) * 80, "correct tiled sgemm: max error %g", ok);
  double e1 = sgemm_max_error<false, true>(), e2 = sgemm_max_error<true, false>();
  CHECK(e1 > 0.1, "missing barrier after the tile load went unnoticed (max error %g)", e1);
  CHECK(e2 > 0.1, "missing barrier before the next tile load went unnoticed (max error %g)", e2);
}

// Warp 0 spins (with a warp collective in the loop) until warp 1 sets a flag: the scheduler must not let
// one warp starve another.
__global__ void spin_kernel(int* out) {
  __shared__ int flag;
  if (threadIdx.x == 0) flag = 0;
  __syncthreads();
  if (threadIdx.x < 32) {
    while (atomicAdd(&flag, 0) == 0) __syncwarp();
    gstore(out + threadIdx.x, 1);
  } else {
    if (threadIdx.x == 32) atomicExch(&flag, 1);
    gstore(out + threadIdx.x, 2);
  }
}

void test_spin() {
  DevBuf d(64 * sizeof(int));
  LAUNCH(1, 64, 0, 0, spin_kernel)(d.as<int>());
  Outcome o = outcome();
  auto v = d.get<int>(64);
  bool ok = o.code == cudaSuccess;
  for (int t = 0; t < 64; ++t) ok = ok && v[t] == (t < 32 ? 1 : 2);
  CHECK(ok, "warp spinning on another warp's flag: %s", o.msg.c_str());
}

// ---- errors that must end the launch, not the process ----------------------------------------------------
__global__ void deadlock_kernel(int* out) {
  if (threadIdx.x % 32 < 16)
    __syncthreads();  // half of every warp waits for the whole block...
  else
    __syncwarp();  // ...while the other half waits for its whole warp
  gstore(out + threadIdx.x, 1);
}

__global__ void divergent_sync_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  gstore(out + threadIdx.x, 1);
}

__global__ void dyn_smem_kernel(float* out, int n) {
  DYN_SMEM(float, buf);
  buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  if (static_cast<int>(threadIdx.x) < n) gstore(out + threadIdx.x, buf[n - 1 - threadIdx.x]);
}

__global__ void trap_kernel(int* out) {
  if (threadIdx.x == 3) __trap();
  gstore(out + threadIdx.x, 1);
}

__global__ void child_kernel(int* out) { gstore(out, 1); }
__global__ void parent_kernel(int* out) {
  if (threadIdx.x == 0) LAUNCH(1, 1, 0, 0, child_kernel)(out);
}

__global__ void partial_mask_kernel(int* out) {
  gstore(out + threadIdx.x, __shfl_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 0));
}

__global__ void divergent_warp_kernel(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16)
    __syncwarp();
  else
    v = __shfl_xor_sync(kFull, v, 1);
  gstore(out + threadIdx.x, v);
}

__global__ void throwing_kernel(int* out) {
  if (threadIdx.x == 9) throw std::runtime_error("boom");
  gstore(out + threadIdx.x, 1);
}

void expect_failure(const char* what, cudaError_t code, const char* needle, const Outcome& o) {
  CHECK(o.code == code && contains(o.msg, needle), "%s: expected %s with \"%s\", got %s: %s", what,
        cudaGetErrorName(code), needle, cudaGetErrorName(o.code), o.msg.c_str());
  check_recovers(what);
}

void test_errors() {
  DevBuf out(256 * sizeof(int));
  LAUNCH(1, 64, 0, 0, deadlock_kernel)(out.as<int>());
  Outcome o = outcome();
  expect_failure("deadlock", cudaErrorLaunchFailure, "deadlock", o);
  CHECK(contains(o.msg, "__syncwarp") && contains(o.msg, "__syncthreads"), "deadlock report names the waits: %s", o.msg.c_str());

  LAUNCH(1, 64, 0, 0, divergent_sync_kernel)(out.as<int>());
  expect_failure("divergent __syncthreads", cudaErrorLaunchFailure, "divergent __syncthreads", outcome());

  DevBuf f(64 * sizeof(float));
  LAUNCH(1, 33, 32 * sizeof(float), 0, dyn_smem_kernel)(f.as<float>(), 32);  // thread 32 writes past the end
  expect_failure("dynamic smem overrun", cudaErrorIllegalAddress, "dynamic shared memory", outcome());
  LAUNCH(1, 32, 32 * sizeof(float), 0, dyn_smem_kernel)(f.as<float>(), 32);
  o = outcome();
  auto fv = f.get<float>(32);
  CHECK(o.code == cudaSuccess && fv[0] == 31.f && fv[31] == 0.f, "dynamic smem in bounds: %s", o.msg.c_str());

  DevBuf small(63 * sizeof(int));
  LAUNCH(1, 64, 0, 0, fill_kernel)(small.as<int>(), 1);  // thread 63 writes one int past the allocation
  expect_failure("global overrun", cudaErrorIllegalAddress, "past the end", outcome());

  LAUNCH(1, 32, 0, 0, trap_kernel)(out.as<int>());
  expect_failure("__trap", cudaErrorAssert, "__trap", outcome());
  LAUNCH(1, 32, 0, 0, parent_kernel)(out.as<int>());
  expect_failure("launch from a kernel", cudaErrorNotSupported, "inside a kernel", outcome());
  LAUNCH(1, 32, 0, 0, partial_mask_kernel)(out.as<int>());
  expect_failure("partial-mask shuffle", cudaErrorLaunchFailure, "part of a warp", outcome());
  LAUNCH(1, 64, 0, 0, divergent_warp_kernel)(out.as<int>());
  expect_failure("divergent warp collectives", cudaErrorLaunchFailure, "divergent warp collectives", outcome());
  LAUNCH(1, 32, 0, 0, throwing_kernel)(out.as<int>());
  expect_failure("C++ exception", cudaErrorLaunchFailure, "threw a C++ exception: boom", outcome());
}

// ---- launch configuration, parameters, indices ---------------------------------------------------------------
__global__ void big_smem_kernel(int* out, int n) {
  DYN_SMEM(int, buf);
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int i = 0; i < n; ++i) s += buf[i];
    gstore(out, s);
  }
}

// Each thread changes its own copies of the parameters; the barrier lets the others run in between.
__global__ void param_kernel(int* p, int n) {
  p += threadIdx.x;
  n += 2 * threadIdx.x;
  __syncthreads();
  gstore(p, n);
}

__global__ void index_kernel(unsigned* out) {
  unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned code = threadIdx.x | threadIdx.y << 4 | threadIdx.z << 8 | blockIdx.x << 12 | blockIdx.y << 16 | blockIdx.z << 20;
  gstore(out + block * blockDim.x * blockDim.y * blockDim.z + thread, code);
}

void test_launch() {
  emu::Order parsed = emu::Order::Forward;
  CHECK(emu::parse_order("reverse", &parsed) && parsed == emu::Order::Reverse && !emu::parse_order("sideways", &parsed),
        "EMU_ORDER parsing");
  LAUNCH(1, 2048, 0, 0, fill_kernel)(nullptr, 0);
  expect_failure("2048-thread block", cudaErrorInvalidConfiguration, "invalid configuration", outcome());
  LAUNCH(dim3(1, 70000), 32, 0, 0, fill_kernel)(nullptr, 0);
  expect_failure("grid.y 70000", cudaErrorInvalidConfiguration, "invalid configuration", outcome());

  const int n = 16 * 1024;  // 64 KiB: over the default 48 KiB limit
  DevBuf out(sizeof(int));
  cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 48 * 1024);  // an earlier pass raised it
  LAUNCH(1, 128, n * sizeof(int), 0, big_smem_kernel)(out.as<int>(), n);
  expect_failure("64 KiB dynamic smem", cudaErrorInvalidValue, "cudaFuncSetAttribute", outcome());
  CHECK(cudaFuncSetAttribute(big_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess,
        "cudaFuncSetAttribute");
  LAUNCH(1, 128, n * sizeof(int), 0, big_smem_kernel)(out.as<int>(), n);
  Outcome o = outcome();
  CHECK(o.code == cudaSuccess && out.get<int>(1)[0] == n / 2 * (n - 1), "64 KiB dynamic smem after raising the limit: %s",
        o.msg.c_str());

  DevBuf p(96 * sizeof(int));
  LAUNCH(1, 96, 0, 0, param_kernel)(p.as<int>(), 1000);
  auto pv = p.get<int>(96);
  bool ok = outcome().code == cudaSuccess;
  for (int t = 0; t < 96; ++t) ok = ok && pv[t] == 1000 + 2 * t;
  CHECK(ok, "kernel parameters are per-thread copies");

  const dim3 grid(2, 3, 2), block(4, 3, 2);
  DevBuf idx(12 * 24 * sizeof(unsigned));
  LAUNCH(grid, block, 0, 0, index_kernel)(idx.as<unsigned>());
  auto iv = idx.get<unsigned>(12 * 24);
  int bad = outcome().code != cudaSuccess;
  for (unsigned g = 0; g < 12 * 24; ++g) {
    unsigned b = g / 24, t = g % 24;
    unsigned want = (t % 4) | (t / 4 % 3) << 4 | (t / 12) << 8 | (b % 2) << 12 | (b / 2 % 3) << 16 | (b / 6) << 20;
    bad += iv[g] != want;
  }
  CHECK(bad == 0, "3-D thread and block indices: %d wrong", bad);
}

// ---- memory: poisoning, early exit, registered host memory ------------------------------------------------------
__global__ void poison_kernel(unsigned* out) {
  __shared__ float sf[64];
  __shared__ int si[64];
  DYN_SMEM(float, df);
  const int t = threadIdx.x;
  if (blockIdx.x == 0) {  // block 0 writes; block 1 must still see fresh poison
    sf[t] = 1.f;
    si[t] = 1;
    df[t] = 1.f;
  }
  __syncthreads();
  if (blockIdx.x == 1) {
    gstore(out + 3 * t, __float_as_uint(sf[t]));
    gstore(out + 3 * t + 1, static_cast<unsigned>(si[t]));
    gstore(out + 3 * t + 2, __float_as_uint(df[t]));
  }
}

// The same through SMEM_ARRAY, which templates use.
template <class T>
__global__ void poison_template_kernel(unsigned* out) {
  SMEM_ARRAY(T, st, [64]);
  const int t = threadIdx.x;
  if (blockIdx.x == 0) st[t] = T(1);
  __syncthreads();
  if (blockIdx.x == 1) {
    unsigned u = 0;
    std::memcpy(&u, &st[t], sizeof(T));
    gstore(out + t, u);
  }
}

// Threads past n return before the barriers; the rest must not wait for them.
__global__ void early_exit_kernel(const float* in, float* out, int n) {
  __shared__ float s[256];
  const int t = threadIdx.x;
  if (t >= n) return;
  s[t] = gload(in + t);
  __syncthreads();
  const float v = s[n - 1 - t];
  __syncthreads();
  s[t] = v * 2.f;
  __syncthreads();
  gstore(out + t, s[t]);
}

void test_memory() {
  DevBuf out(64 * 3 * sizeof(unsigned));
  LAUNCH(2, 64, 64 * sizeof(float), 0, poison_kernel)(out.as<unsigned>());
  auto v = out.get<unsigned>(64 * 3);
  CHECK(outcome().code == cudaSuccess && std::all_of(v.begin(), v.end(), [](unsigned x) { return x == 0xffffffffu; }),
        "uninitialised shared memory reads as NaN / -1 in every block");
  DevBuf tv(64 * sizeof(unsigned));
  LAUNCH(2, 64, 0, 0, poison_template_kernel<float>)(tv.as<unsigned>());
  auto t32 = tv.get<unsigned>(64);
  LAUNCH(2, 64, 0, 0, poison_template_kernel<__half>)(tv.as<unsigned>());
  auto t16 = tv.get<unsigned>(64);
  CHECK(outcome().code == cudaSuccess && std::all_of(t32.begin(), t32.end(), [](unsigned x) { return x == 0xffffffffu; }) &&
            std::all_of(t16.begin(), t16.end(), [](unsigned x) { return x == 0xffffu; }),
        "uninitialised SMEM_ARRAY memory reads as NaN in every block");
  DevBuf fresh(100);
  auto fv = fresh.get<float>(25);
  CHECK(std::all_of(fv.begin(), fv.end(), [](float x) { return std::isnan(x); }), "fresh cudaMalloc memory reads as NaN");

  std::vector<float> in(100);
  for (int i = 0; i < 100; ++i) in[i] = float(i);
  DevBuf din(400), dout(400);
  din.upload(in.data(), 400);
  LAUNCH(1, 256, 0, 0, early_exit_kernel)(din.as<float>(), dout.as<float>(), 100);
  Outcome o = outcome();
  auto ov = dout.get<float>(100);
  bool ok = o.code == cudaSuccess;
  for (int i = 0; i < 100; ++i) ok = ok && ov[i] == 2.f * (99 - i);
  CHECK(ok, "early return before __syncthreads: %s", o.msg.c_str());

  std::vector<int> host(64, 0);
  CHECK(emu::register_memory(host.data(), host.size() * sizeof(int)), "register_memory");
  CHECK(!emu::register_memory(host.data() + 8, 4), "overlapping register_memory accepted");
  LAUNCH(1, 64, 0, 0, fill_kernel)(host.data(), 5);
  CHECK(outcome().code == cudaSuccess && host[63] == 5, "kernel on registered host memory");
  CHECK(emu::unregister_memory(host.data()), "unregister_memory");
  LAUNCH(1, 64, 0, 0, fill_kernel)(host.data(), 6);
  expect_failure("unregistered host memory", cudaErrorIllegalAddress, "not in any", outcome());
}

// ---- warp collectives, block predicates, atomics, dp4a ---------------------------------------------------------
__global__ void warp_kernel(const int* in, int* out, int width, int n) {
  const int t = threadIdx.x;
  if (t >= n) return;  // lanes past n leave their warps
  const int v = gload(in + t);
  int* o = out + 8 * t;
  gstore(o + 0, __shfl_sync(kFull, v, 5, width));
  gstore(o + 1, __shfl_up_sync(kFull, v, 3, width));
  gstore(o + 2, __shfl_down_sync(kFull, v, 3, width));
  gstore(o + 3, __shfl_xor_sync(kFull, v, width > 1 ? 1 : 0, width));
  gstore(o + 4, static_cast<int>(__ballot_sync(kFull, v & 1)));
  gstore(o + 5, __any_sync(kFull, v == 12345));
  gstore(o + 6, __all_sync(kFull, v >= 0));
  const double d = __shfl_xor_sync(kFull, v * 0.5, width > 2 ? 2 : 0, width);  // an 8-byte type
  gstore(o + 7, static_cast<int>(d * 2));
}

void check_warp(int block, int n, int width, std::mt19937& rng) {
  std::vector<int> in(block);
  for (auto& x : in) x = static_cast<int>(rng() % 1000);
  if (n > 40) in[40] = 12345;
  if (width == 8) in[1] = -1;
  DevBuf din(block * 4), dout(block * 32);
  din.upload(in.data(), block * 4);
  LAUNCH(1, block, 0, 0, warp_kernel)(din.as<int>(), dout.as<int>(), width, n);
  Outcome o = outcome();
  CHECK(o.code == cudaSuccess, "warp kernel: %s", o.msg.c_str());
  auto out = dout.get<int>(block * 8);
  int bad = 0;
  for (int t = 0; t < n; ++t) {
    const int lane = t % 32, base = t - lane, seg = lane % width;
    const int xm = width > 1 ? 1 : 0, xm2 = width > 2 ? 2 : 0;
    // Source lanes as the CUDA documentation defines them; a source that has exited is "undefined".
    const int src[4] = {lane - seg + 5 % width, seg >= 3 ? lane - 3 : lane, seg + 3 < width ? lane + 3 : lane, lane ^ xm};
    for (int k = 0; k < 4; ++k)
      if (base + src[k] < n) bad += out[8 * t + k] != in[base + src[k]];
    unsigned ballot = 0;
    bool any = false, all = true;
    for (int l = 0; l < 32 && base + l < n; ++l) {
      ballot |= unsigned(in[base + l] & 1) << l;
      any = any || in[base + l] == 12345;
      all = all && in[base + l] >= 0;
    }
    bad += unsigned(out[8 * t + 4]) != ballot;
    bad += out[8 * t + 5] != int(any);
    bad += out[8 * t + 6] != int(all);
    if (base + (lane ^ xm2) < n) bad += out[8 * t + 7] != in[base + (lane ^ xm2)];
  }
  CHECK(bad == 0, "warp collectives block=%d n=%d width=%d: %d wrong", block, n, width, bad);
}

__global__ void block_pred_kernel(int* out, int live) {
  const int t = threadIdx.x;
  if (t >= live) return;
  const int c = __syncthreads_count(t % 3 == 0);
  const int a = __syncthreads_and(t < 1000);
  const int a2 = __syncthreads_and(t != 7);
  const int o = __syncthreads_or(t == 5);
  const int o2 = __syncthreads_or(0);
  gstore(out + 5 * t, c);
  gstore(out + 5 * t + 1, a);
  gstore(out + 5 * t + 2, a2);
  gstore(out + 5 * t + 3, o);
  gstore(out + 5 * t + 4, o2);
}

__global__ void atomic_kernel(const int* in, int n, int* hist, float* fsum, int* imax, unsigned* umin, int* cas,
                              unsigned long long* total, int* exch) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int v = gload(in + i);
  atomicAdd(hist + v % 10, 1);
  atomicAdd(fsum, 0.5f);
  atomicMax(imax, v);
  atomicMin(umin, unsigned(v) + 7u);
  int old = atomicAdd(cas, 0), assumed;
  do {
    assumed = old;
    old = atomicCAS(cas, assumed, assumed + 3);
  } while (old != assumed);
  atomicAdd(total, static_cast<unsigned long long>(v));
  atomicExch(exch, 42);
}

__global__ void dp4a_kernel(const int* a, const int* b, const int* c, int* out_s, unsigned* out_u, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  gstore(out_s + i, __dp4a(gload(a + i), gload(b + i), gload(c + i)));
  gstore(out_u + i, __dp4a(unsigned(gload(a + i)), unsigned(gload(b + i)), unsigned(gload(c + i))));
}

void test_collectives() {
  std::mt19937 rng(3);
  for (int width : {32, 16, 8, 4, 2, 1}) {
    check_warp(64, 64, width, rng);
    check_warp(64, 48, width, rng);
    check_warp(45, 45, width, rng);
  }
  for (int live : {96, 50, 6}) {
    DevBuf out(96 * 5 * sizeof(int));
    LAUNCH(1, 96, 0, 0, block_pred_kernel)(out.as<int>(), live);
    Outcome o = outcome();
    auto v = out.get<int>(96 * 5);
    int bad = o.code != cudaSuccess;
    for (int t = 0; t < live; ++t)
      bad += v[5 * t] != (live + 2) / 3 || v[5 * t + 1] != 1 || v[5 * t + 2] != (live <= 7) ||
             v[5 * t + 3] != (live > 5) || v[5 * t + 4] != 0;
    CHECK(bad == 0, "__syncthreads_count/and/or with %d live threads: %s", live, o.msg.c_str());
  }

  const int n = 1000;
  std::vector<int> in(n);
  for (auto& x : in) x = static_cast<int>(rng() % 5000);
  DevBuf din(n * 4), hist(40), fsum(4), imax(4), umin(4), cas(4), total(8), exch(4);
  din.upload(in.data(), n * 4);
  std::vector<int> zeros(10, 0);
  hist.upload(zeros.data(), 40);
  float f0 = 0;
  int i0 = -1, c0 = 0;
  unsigned u0 = ~0u;
  unsigned long long t0 = 0;
  fsum.upload(&f0, 4);
  imax.upload(&i0, 4);
  umin.upload(&u0, 4);
  cas.upload(&c0, 4);
  total.upload(&t0, 8);
  LAUNCH((n + 95) / 96, 96, 0, 0, atomic_kernel)(din.as<int>(), n, hist.as<int>(), fsum.as<float>(), imax.as<int>(),
                                                   umin.as<unsigned>(), cas.as<int>(), total.as<unsigned long long>(),
                                                   exch.as<int>());
  Outcome o = outcome();
  std::vector<int> want(10, 0);
  long long sum = 0;
  for (int x : in) ++want[x % 10], sum += x;
  CHECK(o.code == cudaSuccess && hist.get<int>(10) == want, "atomicAdd histogram: %s", o.msg.c_str());
  CHECK(fsum.get<float>(1)[0] == 500.f && cas.get<int>(1)[0] == 3 * n && exch.get<int>(1)[0] == 42 &&
            total.get<unsigned long long>(1)[0] == static_cast<unsigned long long>(sum),
        "atomicAdd(float) / atomicCAS loop / atomicExch / atomicAdd(u64)");
  CHECK(imax.get<int>(1)[0] == *std::max_element(in.begin(), in.end()) &&
            umin.get<unsigned>(1)[0] == unsigned(*std::min_element(in.begin(), in.end())) + 7u,
        "atomicMax / atomicMin");

  const int m = 300;
  std::vector<int> a(m), b(m), c(m);
  for (int i = 0; i < m; ++i) a[i] = int(rng()), b[i] = int(rng()), c[i] = int(rng() % 100000) - 50000;
  DevBuf da(m * 4), db(m * 4), dc(m * 4), ds(m * 4), du(m * 4);
  da.upload(a.data(), m * 4);
  db.upload(b.data(), m * 4);
  dc.upload(c.data(), m * 4);
  LAUNCH((m + 127) / 128, 128, 0, 0, dp4a_kernel)(da.as<int>(), db.as<int>(), dc.as<int>(), ds.as<int>(), du.as<unsigned>(), m);
  auto gs = ds.get<int>(m);
  auto gu = du.get<unsigned>(m);
  int bad = outcome().code != cudaSuccess;
  for (int i = 0; i < m; ++i) {
    int ws = c[i];
    unsigned wu = unsigned(c[i]);
    for (int k = 0; k < 4; ++k) {
      ws += int(int8_t(a[i] >> 8 * k)) * int(int8_t(b[i] >> 8 * k));
      wu += ((unsigned(a[i]) >> 8 * k) & 255u) * ((unsigned(b[i]) >> 8 * k) & 255u);
    }
    bad += gs[i] != ws || gu[i] != wu;
  }
  CHECK(bad == 0, "__dp4a signed/unsigned: %d wrong", bad);
}

// ---- WMMA tiles ------------------------------------------------------------------------------------------------
template <class T, class Acc, class LayoutB>
__global__ void wmma_tile_kernel(const T* A, const T* B, const Acc* C, Acc* D, int store_col_major) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, Acc> c;
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);
  wmma::load_matrix_sync(c, C, 16, wmma::mem_row_major);
  wmma::mma_sync(c, a, b, c);
  wmma::store_matrix_sync(D, c, 16, store_col_major ? wmma::mem_col_major : wmma::mem_row_major);
}

template <class T, class Acc, class LayoutB>
void check_wmma(const char* name, std::mt19937& rng, bool misalign = false) {
  constexpr bool kInt = std::is_same_v<Acc, int>;
  constexpr bool kColB = std::is_same_v<LayoutB, nvcuda::wmma::col_major>;
  std::vector<T> a(256 + 1), b(256);
  std::vector<Acc> c(256);
  std::vector<double> av(256), bv(256);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  for (int i = 0; i < 256; ++i) {
    if constexpr (kInt) {
      a[i] = static_cast<T>(rng());
      b[i] = static_cast<T>(rng());
      c[i] = static_cast<int>(rng() % 20001) - 10000;
    } else {
      a[i] = T(d(rng));
      b[i] = T(d(rng));
      c[i] = d(rng);
    }
    av[i] = static_cast<double>(a[i]);
    bv[i] = static_cast<double>(b[i]);
  }
  DevBuf da(a.size() * sizeof(T)), db(256 * sizeof(T)), dc(256 * sizeof(Acc)), dd(256 * sizeof(Acc));
  da.upload(a.data(), a.size() * sizeof(T));
  db.upload(b.data(), 256 * sizeof(T));
  dc.upload(c.data(), 256 * sizeof(Acc));
  for (int col_store : {0, 1}) {
    LAUNCH(1, 32, 0, 0, wmma_tile_kernel<T, Acc, LayoutB>)(da.as<T>() + (misalign ? 1 : 0), db.as<T>(), dc.as<Acc>(),
                                                          dd.as<Acc>(), col_store);
    Outcome o = outcome();
    if (misalign) {
      expect_failure("misaligned wmma tile", cudaErrorIllegalAddress, "32-byte aligned", o);
      return;
    }
    CHECK(o.code == cudaSuccess, "wmma %s: %s", name, o.msg.c_str());
    auto got = dd.get<Acc>(256);
    int bad = 0;
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        double ref = c[m * 16 + n], mag = std::fabs(ref);
        for (int k = 0; k < 16; ++k) {
          double p = av[m * 16 + k] * bv[kColB ? n * 16 + k : k * 16 + n];
          ref += p;
          mag += std::fabs(p);
        }
        double g = got[col_store ? n * 16 + m : m * 16 + n];
        bad += kInt ? g != ref : !(std::fabs(g - ref) <= gamma32(17) * mag);
      }
    CHECK(bad == 0, "wmma %s (store %s): %d wrong", name, col_store ? "col-major" : "row-major", bad);
  }
}

// The int8 MMA at its extremes, exact in int32: every product -128·-128 (or 255·255 for u8) over k = 16 added to an
// accumulator that ends exactly at INT32_MAX, and 127·-128 down to INT32_MIN + 1.
template <class T>
void check_wmma_int_extremes(const char* name, T va, T vb, int32_t c0) {
  std::vector<T> a(256, va), b(256, vb);
  std::vector<int> c(256, c0);
  DevBuf da(256 * sizeof(T)), db(256 * sizeof(T)), dc(256 * 4), dd(256 * 4);
  da.upload(a.data(), 256 * sizeof(T));
  db.upload(b.data(), 256 * sizeof(T));
  dc.upload(c.data(), 256 * 4);
  LAUNCH(1, 32, 0, 0, wmma_tile_kernel<T, int, nvcuda::wmma::col_major>)(da.as<T>(), db.as<T>(), dc.as<int>(), dd.as<int>(), 0);
  Outcome o = outcome();
  CHECK(o.code == cudaSuccess, "wmma %s: %s", name, o.msg.c_str());
  const int64_t want = int64_t(c0) + 16 * int64_t(va) * int64_t(vb);
  int bad = 0;
  for (int v : dd.get<int>(256)) bad += v != want;
  CHECK(bad == 0, "wmma %s: %d of 256 not %lld", name, bad, static_cast<long long>(want));
}

void test_wmma() {
  namespace wmma = nvcuda::wmma;
  check_wmma_int_extremes<signed char>("s8 -128·-128 to INT32_MAX", -128, -128, INT32_MAX - 16 * 128 * 128);
  check_wmma_int_extremes<signed char>("s8 127·-128 to INT32_MIN + 1", 127, -128, INT32_MIN + 1 + 16 * 127 * 128);
  check_wmma_int_extremes<unsigned char>("u8 255·255 to INT32_MAX", 255, 255, INT32_MAX - 16 * 255 * 255);
  std::mt19937 rng(29);
  check_wmma<__half, float, wmma::col_major>("f16 A row, B col", rng);
  check_wmma<__half, float, wmma::row_major>("f16 A row, B row", rng);
  check_wmma<__nv_bfloat16, float, wmma::col_major>("bf16 A row, B col", rng);
  check_wmma<signed char, int, wmma::col_major>("s8 A row, B col", rng);
  check_wmma<unsigned char, int, wmma::row_major>("u8 A row, B row", rng);
  check_wmma<__half, float, wmma::col_major>("misaligned", rng, true);
}

}  // namespace

void run_runtime_tests() {
  section("missing __syncthreads gives a wrong answer", test_races);
  section("a spinning warp does not starve another", test_spin);
  section("errors reported, process continues", test_errors);
  section("launch configuration, parameters, indices", test_launch);
  section("poisoning, early exit, registered memory", test_memory);
  section("shuffles, votes, block predicates, atomics", test_collectives);
  section("wmma f16/bf16/s8/u8 tiles", test_wmma);
}

}  // namespace selftest
