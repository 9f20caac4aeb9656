// CUDA-on-CPU emulation, part 4: the nvcuda::wmma subset the kernels use — m16n16k16 (also m32n8k16 and
// m8n32k16) with half or bf16 inputs and float accumulators, s8/u8 inputs and int accumulators, and
// m16n16k8 with precision::tf32 inputs (stored as float) and float accumulators.
//
// Every lane holds the WHOLE tile, row-major, whatever the layout (num_elements = rows*cols, not the
// hardware's per-lane share). Uniform element-wise code on fragment.x[] works the same; code that relies
// on which element sits in which lane does not, so position-dependent epilogues must go through
// store_matrix_sync to shared memory first. load/store/mma wait for every lane of the warp, as the
// _sync names promise; stores are split between the lanes, so reading another lane's part of a stored
// tile still needs a __syncwarp or __syncthreads, as on the GPU.
#pragma once
#include <type_traits>

#include "emu_device.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};  // a matrix_a / matrix_b element type: f32 storage, read by the MMA as TF32
}

// cvt.rna.tf32.f32: f32 rounded to TF32's 10 mantissa bits, to nearest with ties away from zero (adding
// half of the dropped range to the magnitude bits carries into the kept ones exactly when the dropped part
// is at least half), the low 13 bits cleared. Infinities and NaN pass through.
inline float __float_to_tf32(float in) {
  uint32_t u = std::bit_cast<uint32_t>(in);
  if ((u & 0x7f800000u) == 0x7f800000u) return in;
  return std::bit_cast<float>((u + 0x1000u) & 0xffffe000u);
}

namespace detail {
template <class Use, int M, int N, int K>
struct Shape;
template <int M, int N, int K>
struct Shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K>
struct Shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K>
struct Shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

// What a fragment of element type T stores: float for precision::tf32, T otherwise.
template <class T>
using Storage = std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>;

template <class T>
constexpr bool is_input_type = std::is_same_v<T, emu::__half> || std::is_same_v<T, emu::__nv_bfloat16> ||
                               std::is_same_v<T, signed char> || std::is_same_v<T, unsigned char> ||
                               std::is_same_v<T, precision::tf32>;
template <class T>
using Acc = std::conditional_t<std::is_same_v<T, signed char> || std::is_same_v<T, unsigned char>, int, float>;
// An input element as the MMA reads it. TF32 operands: the tensor cores ignore the low 13 mantissa bits of
// the f32 register (a kernel that skips __float_to_tf32 gets truncation, as on the GPU).
template <class T>
inline Acc<T> widen(Storage<T> v) {
  if constexpr (std::is_same_v<T, precision::tf32>)
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) & 0xffffe000u);
  else
    return static_cast<Acc<T>>(v);
}

// The GPU requires 256-bit aligned tile pointers and a stride that is a multiple of 16 bytes.
inline void check_tile(const void* p, unsigned ldm, size_t elem, const emu::SrcLoc& loc) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    emu::detail::fail(emu::cudaErrorIllegalAddress, loc, "wmma tile pointer %p is not 32-byte aligned", p);
  if ((ldm * elem) % 16 != 0)
    emu::detail::fail(emu::cudaErrorLaunchFailure, loc, "wmma ldm %u is not a multiple of %zu elements", ldm,
                      16 / elem);
}
// Checks the rows (or columns) of a tile as ranges of memory, then synchronises the warp.
inline void tile_access(int op, const void* p, unsigned ldm, bool col_major, int rows, int cols, size_t elem,
                        const emu::SrcLoc& loc) {
  check_tile(p, ldm, elem, loc);
  unsigned active;
  emu::detail::warp_collective(op, 0xffffffffu, 0, loc, &active);
  int lines = col_major ? cols : rows, len = col_major ? rows : cols;
  for (int i = 0; i < lines; ++i)
    emu::check_access(static_cast<const char*>(p) + static_cast<size_t>(i) * ldm * elem, len * elem, loc);
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16) ||
                    (M == 16 && N == 16 && K == 8),
                "unsupported wmma shape");
  static_assert(!std::is_same_v<T, precision::tf32> || K == 8, "tf32 fragments are m16n16k8");
  static_assert(K != 8 || std::is_same_v<T, precision::tf32> || std::is_same_v<Use, accumulator>,
                "m16n16k8 inputs are tf32");
  static constexpr int rows = detail::Shape<Use, M, N, K>::rows, cols = detail::Shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  using element_type = detail::Storage<T>;
  element_type x[num_elements];  // the whole tile, row-major
};

template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const detail::Storage<T>* p, unsigned ldm,
                      const emu::SrcLoc& loc = emu::SrcLoc::current()) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulator loads need a layout_t argument");
  static_assert(detail::is_input_type<T>, "matrix_a/matrix_b element type must be half, bf16, s8 or u8");
  static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>, "layout must be row_major or col_major");
  using F = fragment<Use, M, N, K, T, L>;
  constexpr bool cm = std::is_same_v<L, col_major>;
  detail::tile_access(emu::detail::kWarpMmaLoad, p, ldm, cm, F::rows, F::cols, sizeof(*p), loc);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = cm ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, class T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const std::type_identity_t<T>* p, unsigned ldm,
                      layout_t layout, const emu::SrcLoc& loc = emu::SrcLoc::current()) {
  using F = fragment<accumulator, M, N, K, T>;
  bool cm = layout == mem_col_major;
  detail::tile_access(emu::detail::kWarpMmaLoad, p, ldm, cm, F::rows, F::cols, sizeof(T), loc);
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = cm ? p[c * ldm + r] : p[r * ldm + c];
}

template <int M, int N, int K, class T>
void store_matrix_sync(std::type_identity_t<T>* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm,
                       layout_t layout, const emu::SrcLoc& loc = emu::SrcLoc::current()) {
  using F = fragment<accumulator, M, N, K, T>;
  bool cm = layout == mem_col_major;
  detail::tile_access(emu::detail::kWarpMmaStore, p, ldm, cm, F::rows, F::cols, sizeof(T), loc);
  // Each lane stores its share; all lanes hold the same tile.
  for (int e = static_cast<int>(emu::detail::lane_id()); e < F::num_elements; e += 32) {
    int r = e / F::cols, c = e % F::cols;
    p[cm ? c * ldm + r : r * ldm + c] = f.x[e];
  }
}

template <class Use, int M, int N, int K, class T, class L>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, const detail::Storage<T>& v) {
  for (int i = 0; i < fragment<Use, M, N, K, T, L>::num_elements; ++i) f.x[i] = v;
}

// d = a*b + c, accumulated in k order for each output element. Products of half, bf16 or TF32 values are
// exact in float and int8 products are exact in int, so only the order of the additions differs from hardware.
template <int M, int N, int K, class T, class LA, class LB, class TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
              const emu::SrcLoc& loc = emu::SrcLoc::current()) {
  static_assert(std::is_same_v<TC, detail::Acc<T>>, "accumulator must be float for half/bf16 and int for s8/u8");
  unsigned active;
  emu::detail::warp_collective(emu::detail::kWarpMma, 0xffffffffu, 0, loc, &active);
  TC av[M * K], bv[K * N], acc[M * N];
  for (int i = 0; i < M * K; ++i) av[i] = detail::widen<T>(a.x[i]);
  for (int i = 0; i < K * N; ++i) bv[i] = detail::widen<T>(b.x[i]);
  for (int i = 0; i < M * N; ++i) acc[i] = c.x[i];
  for (int i = 0; i < M; ++i)
    for (int k = 0; k < K; ++k) {
      TC aik = av[i * K + k];
      for (int j = 0; j < N; ++j) acc[i * N + j] += aik * bv[k * N + j];
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = acc[i];
}

}  // namespace wmma
}  // namespace nvcuda
