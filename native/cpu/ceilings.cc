// The ceiling registry: which loops this CPU can run, timing them on the pool, and the memory loops
// (plain SSE2 on x86, portable loops elsewhere: two 16-byte loads a cycle are far above what DRAM delivers,
// so the ISA does not matter).
#include "ceilings.h"

#include "isa.h"
#if PEFT_X86
#include <emmintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>

#include "../core/errors.h"
#include "isa.h"
#include "parallel.h"

namespace peft {
namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// A buffer well beyond any L3, touched once, kept for the process (bench only).
constexpr size_t kStreamBytes = size_t(512) << 20;
float* stream_buffer() {
  static float* buf = [] {
    auto* p = static_cast<float*>(std::aligned_alloc(64, kStreamBytes));
    if (!p) throw std::bad_alloc();
    for (size_t i = 0; i < kStreamBytes / 4; i++) p[i] = 1.0f;
    return p;
  }();
  return buf;
}

// Streams through [p, p + n floats): reads only, or reads and writes back (x = x * 1 + 0 keeps values).
#if PEFT_X86
double read_pass(const float* p, size_t n) {
  __m128 s0 = _mm_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = 0; i < n; i += 16) {
    s0 = _mm_add_ps(s0, _mm_load_ps(p + i));
    s1 = _mm_add_ps(s1, _mm_load_ps(p + i + 4));
    s2 = _mm_add_ps(s2, _mm_load_ps(p + i + 8));
    s3 = _mm_add_ps(s3, _mm_load_ps(p + i + 12));
  }
  alignas(16) float out[4];
  _mm_store_ps(out, _mm_add_ps(_mm_add_ps(s0, s1), _mm_add_ps(s2, s3)));
  return out[0];
}
void rmw_pass(float* p, size_t n) {
  const __m128 one = _mm_set1_ps(1.0f), zero = _mm_setzero_ps();
  for (size_t i = 0; i < n; i += 4) _mm_store_ps(p + i, _mm_add_ps(_mm_mul_ps(_mm_load_ps(p + i), one), zero));
}
#else
double read_pass(const float* p, size_t n) {
  float s[4] = {0, 0, 0, 0};
  for (size_t i = 0; i < n; i += 4)
    for (int j = 0; j < 4; j++) s[j] += p[i + j];
  return s[0] + s[1] + s[2] + s[3];
}
void rmw_pass(float* p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = p[i] * 1.0f + 0.0f;
}
#endif

volatile float sink;  // keeps the read loop's result alive

struct Entry {
  CeilingInfo info;
  bool (*usable)();
  double (*work)(int64_t iters);  // register-only loops: ops done
  bool memory;                    // bandwidth loops: bytes moved (read = 1x, rmw = 2x the buffer slice)
  bool rmw;
};

bool has_avx512() { return cpu_features().avx512; }
bool has_avx2() { return cpu_features().avx2_fma; }
bool has_bf16() { return cpu_features().avx512_bf16; }
bool has_vnni() { return cpu_features().avx512_vnni; }
bool has_amx() { return amx_enabled(); }
bool always() { return true; }

const Entry kEntries[] = {
#if PEFT_X86
    {{"fma-avx512", "GFLOP/s", "f32 FMA peak, zmm, register-only"}, has_avx512, ceiling_detail::fma_avx512, false, false},
    {{"fma-avx2", "GFLOP/s", "f32 FMA peak, ymm, register-only"}, has_avx2, ceiling_detail::fma_avx2, false, false},
    {{"dpbf16-avx512", "GFLOP/s", "vdpbf16ps peak (bf16 pairs into f32), register-only"}, has_bf16, ceiling_detail::dpbf16_avx512, false, false},
    {{"vnni-avx512", "GOP/s", "vpdpbusd peak (u8 x s8 into i32), register-only"}, has_vnni, ceiling_detail::vnni_avx512, false, false},
    {{"amx-bf16", "GFLOP/s", "AMX tdpbf16ps peak, tile-only"}, has_amx, ceiling_detail::amx_bf16, false, false},
    {{"amx-int8", "GOP/s", "AMX tdpbssd peak, tile-only"}, has_amx, ceiling_detail::amx_int8, false, false},
#endif
    {{"dram-read", "GB/s", "streaming read of 512 MiB split over the threads"}, always, nullptr, true, false},
    {{"dram-rmw", "GB/s", "in-place read-modify-write of 512 MiB (bytes read + written)"}, always, nullptr, true, true},
};

}  // namespace

std::vector<CeilingInfo> ceilings_available() {
  std::vector<CeilingInfo> out;
  for (const Entry& e : kEntries)
    if (e.usable()) out.push_back(e.info);
  return out;
}

double ceiling_measure(const std::string& name, int threads, double seconds) {
  const Entry* e = nullptr;
  for (const Entry& x : kEntries)
    if (name == x.info.name) e = &x;
  if (!e || !e->usable()) fail_range(cat("ceiling \"", name, "\" is not available on this CPU"));
  threads = std::max(1, std::min(threads, num_threads()));
  float* buf = e->memory ? stream_buffer() : nullptr;
  std::vector<double> work(threads, 0.0);
  // The rate over the whole run's wall time, not each part's own: the pool may run two parts one after the
  // other on one thread (a worker that did not wake), and per-part times would then count that time twice.
  const auto start = Clock::now();
  parallel_run(threads, [&](int tid, int nt) {
    auto t0 = Clock::now();
    double done = 0;
    if (e->memory) {
      size_t per = kStreamBytes / 4 / nt / 16 * 16;
      float* p = buf + per * tid;
      do {
        if (e->rmw) rmw_pass(p, per), done += 2.0 * per * 4;
        else sink = read_pass(p, per), done += per * 4.0;
      } while (seconds_since(t0) < seconds);
    } else {
      // Chunks of about a millisecond between clock reads.
      do done += e->work(100000);
      while (seconds_since(t0) < seconds);
    }
    work[tid] = done;
  });
  const double wall = seconds_since(start);
  double total = 0;
  for (int t = 0; t < threads; t++) total += work[t];
  return total / wall / 1e9;
}

void evict_lines(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  c = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(c) & ~uintptr_t(63));
#if PEFT_X86
  if (cpu_features().clflushopt) {
    for (; c < end; c += 64) __asm__ volatile("clflushopt %0" : "+m"(*const_cast<char*>(c)));
  } else {
    for (; c < end; c += 64) __asm__ volatile("clflush %0" : "+m"(*const_cast<char*>(c)));
  }
  __asm__ volatile("mfence" ::: "memory");
#elif defined(__aarch64__)
  for (; c < end; c += 64) __asm__ volatile("dc civac, %0" : : "r"(c) : "memory");
  __asm__ volatile("dsb ish" ::: "memory");
#else
  // No cache-flush instruction known here: stream a buffer far larger than any cache instead.
  (void)end;
  sink = static_cast<float>(read_pass(stream_buffer(), kStreamBytes / 4));
#endif
}

}  // namespace peft
