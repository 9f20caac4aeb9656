// Machine ceilings for the bench: register-only peak loops per instruction family, memory bandwidth
// loops, and cache-line eviction. Ratios in bench/ are measured against these in the same run.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace peft {

struct CeilingInfo {
  std::string name, unit, what;
};

// The ceilings this CPU can run (a family is listed only when its instructions are usable).
std::vector<CeilingInfo> ceilings_available();
// Runs ceiling `name` on `threads` pool threads for about `seconds` and returns its rate in its unit
// (GFLOP/s, GOP/s or GB/s). Throws RangeError for a name this CPU cannot run.
double ceiling_measure(const std::string& name, int threads, double seconds);
// Flushes every cache line of [p, p + bytes) to memory (clflushopt where present), then fences.
void evict_lines(const void* p, size_t bytes);

namespace ceiling_detail {
// Register-only loops: each runs `iters` iterations and returns the floating-point (or integer) ops done.
double fma_avx512(int64_t iters);
double fma_avx2(int64_t iters);
double dpbf16_avx512(int64_t iters);
double vnni_avx512(int64_t iters);
double amx_bf16(int64_t iters);
double amx_int8(int64_t iters);
}  // namespace ceiling_detail

}  // namespace peft
