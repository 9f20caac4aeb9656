// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"), keyed by (seed, stream),
// counter = element offset / 4. Every element's value depends only on (seed, stream, index), so results are
// the same for any thread count and on any device.
#pragma once
#include <cmath>
#include <cstdint>

// The counter-based core is shared with the CUDA kernels (dropout masks equal to the CPU's, bit for bit).
#if defined(__CUDACC__)
#define PEFT_HOST_DEVICE __host__ __device__
#else
#define PEFT_HOST_DEVICE
#endif

namespace peft {

// The functions are `static inline`: kernels built with AVX2/AVX-512 flags call them too, and an
// out-of-line copy with external linkage could be shared by the linker with code that runs on any CPU.

struct Philox4x32 {
  uint32_t v[4];
};

static inline PEFT_HOST_DEVICE Philox4x32 philox4x32_10(uint64_t counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = key0, k1 = key1;
  for (int round = 0; round < 10; round++) {
    uint64_t p0 = static_cast<uint64_t>(kM0) * c0, p1 = static_cast<uint64_t>(kM1) * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = static_cast<uint32_t>(p1);
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = static_cast<uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += kW0, k1 += kW1;
  }
  return {{c0, c1, c2, c3}};
}

// The (seed, stream) pair folded into Philox's 64-bit key.
struct RngKey {
  uint32_t k0, k1;
};
static inline PEFT_HOST_DEVICE RngKey rng_key(uint64_t seed, uint64_t stream) {
  uint64_t mixed = seed ^ (stream * 0x9E3779B97F4A7C15ull);
  // seed and stream both reach both key words
  return {static_cast<uint32_t>(mixed) ^ static_cast<uint32_t>(stream >> 32), static_cast<uint32_t>(mixed >> 32) ^ static_cast<uint32_t>(stream)};
}

// Uniform in (0, 1]: 24 random bits, never 0 (log is safe).
static inline PEFT_HOST_DEVICE float u32_to_unit(uint32_t x) { return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }

// Four standard normals for the block of elements [4*block, 4*block + 4): Box–Muller on two pairs.
static inline void normals4(RngKey key, uint64_t block, float out[4]) {
  Philox4x32 r = philox4x32_10(block, key.k0, key.k1);
  for (int p = 0; p < 2; p++) {
    float u1 = u32_to_unit(r.v[2 * p]), u2 = u32_to_unit(r.v[2 * p + 1]);
    float rad = std::sqrt(-2.0f * std::log(u1));
    float th = 6.28318530717958647692f * u2;
    out[2 * p] = rad * std::cos(th);
    out[2 * p + 1] = rad * std::sin(th);
  }
}

// Four uniforms in (0, 1] for elements [4*block, 4*block + 4) (dropout masks, uniform init).
static inline void uniforms4(RngKey key, uint64_t block, float out[4]) {
  Philox4x32 r = philox4x32_10(block, key.k0, key.k1);
  for (int i = 0; i < 4; i++) out[i] = u32_to_unit(r.v[i]);
}

}  // namespace peft
