#include "indexing.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "convert.h"
#include "elem.h"
#include "elementwise.h"
#include "id_groups.h"
#include "nn_kernels.h"
#include "parallel.h"
#include "stage.h"

namespace peft {
namespace {

// Least bytes worth handing to another thread.
constexpr int64_t kGrainBytes = int64_t(1) << 16;

template <size_t N>
struct Bytes {
  unsigned char b[N];
};

// ---- strided copy ----

struct Dim {
  int64_t size, s, d;  // extent, src stride, dst stride (elements)
};

// Size-1 dims dropped; a dim merged into its inner neighbour when both tensors step through the pair as one.
std::vector<Dim> coalesce(const int64_t* shape, const int64_t* ss, const int64_t* ds, int ndim) {
  std::vector<Dim> v;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] == 1) continue;
    if (!v.empty() && v.back().s == ss[i] * shape[i] && v.back().d == ds[i] * shape[i]) {
      v.back().size *= shape[i];
      v.back().s = ss[i];
      v.back().d = ds[i];
    } else {
      v.push_back({shape[i], ss[i], ds[i]});
    }
  }
  return v;
}

template <typename E>
void line_typed(const E* s, int64_t ss, E* d, int64_t ds, int64_t n) {
  if (ss == 1 && ds == 1) {
    std::memcpy(d, s, static_cast<size_t>(n) * sizeof(E));
  } else if (ss == 0) {
    const E v = s[0];
    for (int64_t i = 0; i < n; i++) d[i * ds] = v;
  } else {
    for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss];
  }
}

void line_same(const char* s, int64_t ss, char* d, int64_t ds, int64_t n, size_t es) {
  switch (es) {
    case 1: line_typed(reinterpret_cast<const Bytes<1>*>(s), ss, reinterpret_cast<Bytes<1>*>(d), ds, n); break;
    case 2: line_typed(reinterpret_cast<const Bytes<2>*>(s), ss, reinterpret_cast<Bytes<2>*>(d), ds, n); break;
    case 4: line_typed(reinterpret_cast<const Bytes<4>*>(s), ss, reinterpret_cast<Bytes<4>*>(d), ds, n); break;
    default: line_typed(reinterpret_cast<const Bytes<8>*>(s), ss, reinterpret_cast<Bytes<8>*>(d), ds, n); break;
  }
}

// A line between dtypes: gathered into a contiguous buffer, converted, scattered.
void line_convert(const char* s, DType sdt, int64_t ss, char* d, DType ddt, int64_t ds, int64_t n) {
  constexpr int64_t kPiece = 256;
  alignas(64) unsigned char a[kPiece * 8], b[kPiece * 8];
  const size_t ses = dtype_size(sdt), des = dtype_size(ddt);
  for (int64_t o = 0; o < n; o += kPiece) {
    const int64_t len = std::min(kPiece, n - o);
    line_same(s + o * ss * static_cast<int64_t>(ses), ss, reinterpret_cast<char*>(a), 1, len, ses);
    convert_cpu(a, sdt, b, ddt, len);
    line_same(reinterpret_cast<const char*>(b), 1, d + o * ds * static_cast<int64_t>(des), ds, len, des);
  }
}

constexpr int64_t kTileT = 32;

// One tile of a transposition: element (ja, ib) at s[ja + ib*sb] goes to d[ja*da + ib], for ja < na, ib < nb
// (<= kTileT). The tile's source rows are first copied into a contiguous buffer: with power-of-two strides
// they share cache sets, and reading them in place column by column would evict lines still in use.
template <typename E>
void tile_typed(const E* s, int64_t sb, E* d, int64_t da, int64_t na, int64_t nb) {
  E buf[kTileT * kTileT];
  for (int64_t ib = 0; ib < nb; ib++) std::memcpy(buf + ib * kTileT, s + ib * sb, static_cast<size_t>(na) * sizeof(E));
  for (int64_t ja = 0; ja < na; ja++) {
    E* dr = d + ja * da;
    for (int64_t ib = 0; ib < nb; ib++) dr[ib] = buf[ib * kTileT + ja];
  }
}

void tile_same(const char* s, int64_t sb, char* d, int64_t da, int64_t na, int64_t nb, size_t es) {
  switch (es) {
    case 1: tile_typed(reinterpret_cast<const Bytes<1>*>(s), sb, reinterpret_cast<Bytes<1>*>(d), da, na, nb); break;
    case 2: tile_typed(reinterpret_cast<const uint16_t*>(s), sb, reinterpret_cast<uint16_t*>(d), da, na, nb); break;
    case 4: tile_typed(reinterpret_cast<const uint32_t*>(s), sb, reinterpret_cast<uint32_t*>(d), da, na, nb); break;
    default: tile_typed(reinterpret_cast<const uint64_t*>(s), sb, reinterpret_cast<uint64_t*>(d), da, na, nb); break;
  }
}

// Offsets (src, dst) of flat index `flat` over dims.
inline void offsets_of(const std::vector<Dim>& dims, int64_t flat, int64_t& so, int64_t& dof) {
  so = 0, dof = 0;
  for (int i = static_cast<int>(dims.size()) - 1; i >= 0; i--) {
    const int64_t c = flat % dims[i].size;
    flat /= dims[i].size;
    so += c * dims[i].s;
    dof += c * dims[i].d;
  }
}

// Same dtype, one dim contiguous in src (a) and another contiguous in dst (b): T x T tiles over (a, b), so
// both sides move whole cache lines. Consecutive tiles step along a: a band of T source rows is read front
// to back while each tile writes T fresh destination rows.
void copy_transposed(const char* sb, char* db, size_t es, const std::vector<Dim>& dims, size_t a, size_t b) {
  constexpr int64_t T = kTileT;
  std::vector<Dim> rest;
  for (size_t i = 0; i < dims.size(); i++)
    if (i != a && i != b) rest.push_back(dims[i]);
  const Dim A = dims[a], B = dims[b];
  const int64_t ta = (A.size + T - 1) / T, tb = (B.size + T - 1) / T;
  int64_t nrest = 1;
  for (const Dim& r : rest) nrest *= r.size;
  const int64_t tasks = nrest * ta * tb;
  const int64_t e = static_cast<int64_t>(es);
  dynamic_for(tasks, std::max<int64_t>(1, kGrainBytes / (T * T * e)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const int64_t ja = t % ta, jb = (t / ta) % tb, r = t / ta / tb;
      int64_t so, dof;
      offsets_of(rest, r, so, dof);
      const int64_t a0 = ja * T, b0 = jb * T;
      so += a0 + b0 * B.s;
      dof += a0 * A.d + b0;
      tile_same(sb + so * e, B.s, db + dof * e, A.d, std::min(T, A.size - a0), std::min(T, B.size - b0), es);
    }
  });
}

}  // namespace

void copy_strided_cpu(const void* src, DType sdt, const int64_t* shape, const int64_t* src_st, int64_t src_off,
                      int ndim, void* dst, DType ddt, const int64_t* dst_st, int64_t dst_off) {
  for (int i = 0; i < ndim; i++)
    if (shape[i] == 0) return;
  const size_t ses = dtype_size(sdt), des = dtype_size(ddt);
  const char* sb = static_cast<const char*>(src) + src_off * static_cast<int64_t>(ses);
  char* db = static_cast<char*>(dst) + dst_off * static_cast<int64_t>(des);
  std::vector<Dim> dims = coalesce(shape, src_st, dst_st, ndim);
  if (dims.empty()) dims.push_back({1, 1, 1});
  const bool same = sdt == ddt;
  const Dim in = dims.back();
  if (same && !(in.s == 1 && in.d == 1) && dims.size() >= 2) {
    size_t a = dims.size(), b = dims.size();
    for (size_t i = 0; i < dims.size(); i++) {
      if (dims[i].s == 1 && a == dims.size()) a = i;
      if (dims[i].d == 1 && b == dims.size()) b = i;
    }
    if (a < dims.size() && b < dims.size() && a != b) {
      copy_transposed(sb, db, ses, dims, a, b);
      return;
    }
  }
  // Lines along the innermost dim; a long line is split so every thread gets a share.
  std::vector<Dim> outer(dims.begin(), dims.end() - 1);
  int64_t rows = 1;
  for (const Dim& d : outer) rows *= d.size;
  const int64_t line_bytes = in.size * static_cast<int64_t>(std::max(ses, des));
  const int64_t want = 4 * num_threads();
  const int64_t pieces = rows >= want ? 1 : std::max<int64_t>(1, std::min<int64_t>(want / rows, line_bytes / kGrainBytes));
  const int64_t tasks = rows * pieces;
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, line_bytes / pieces));
  dynamic_for(tasks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const int64_t row = t / pieces, pc = t % pieces;
      const int64_t l0 = in.size * pc / pieces, l1 = in.size * (pc + 1) / pieces;
      int64_t so, dof;
      offsets_of(outer, row, so, dof);
      so += l0 * in.s;
      dof += l0 * in.d;
      if (same) {
        line_same(sb + so * static_cast<int64_t>(ses), in.s, db + dof * static_cast<int64_t>(des), in.d, l1 - l0, ses);
      } else {
        line_convert(sb + so * static_cast<int64_t>(ses), sdt, in.s, db + dof * static_cast<int64_t>(des), ddt, in.d, l1 - l0);
      }
    }
  });
}

int64_t first_index_out_of_range(const void* index, DType idt, int64_t n, int64_t bound) {
  return first_bad_id(index, idt, n, bound);
}

void index_select_cpu(const void* x, size_t esize, int64_t outer, int64_t D, int64_t inner, const void* index, DType idt,
                      int64_t n, void* out) {
  const size_t row = static_cast<size_t>(inner) * esize;
  if (row == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrainBytes / static_cast<int64_t>(row));
  parallel_for(outer * n, grain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      const int64_t o = t / n, i = t % n;
      std::memcpy(static_cast<char*>(out) + t * row, static_cast<const char*>(x) + (o * D + load_id(index, idt, i)) * row, row);
    }
  });
}

void index_add_cpu(void* dst, DType ddt, int64_t outer, int64_t D, int64_t inner, const void* index, DType idt,
                   int64_t n, const void* src, DType sdt) {
  if (n == 0 || inner == 0 || outer == 0) return;
  // A task owns one destination slice.
  const IdGroups grp = group_ids(index, idt, n);
  const int64_t groups = grp.count();
  const int64_t tw = std::min(inner, kStageBlock), tiles = (inner + tw - 1) / tw;
  const int64_t per_task = tw * std::max<int64_t>(1, n / groups);
  parallel_for(outer * groups * tiles, std::max<int64_t>(1, (int64_t(1) << 14) / per_task), [&](int64_t b, int64_t e) {
    alignas(64) float acc[kStageBlock], buf[kStageBlock];
    for (int64_t t = b; t < e; t++) {
      const int64_t tile = t % tiles, g = (t / tiles) % groups, o = t / tiles / groups;
      const int64_t c0 = tile * tw, w = std::min(tw, inner - c0);
      const int64_t doff = (o * D + grp.id_of(g)) * inner + c0;
      float* a = stage_inout(dst, ddt, doff, w, acc);
      for (int64_t q = grp.starts[g]; q < grp.starts[g + 1]; q++) {
        const float* s = stage_in(src, sdt, (o * n + grp.order[q]) * inner + c0, w, buf);
        for (int64_t i = 0; i < w; i++) a[i] += s[i];
      }
      stage_out(dst, ddt, doff, w, a);
    }
  });
}

namespace {

template <typename E>
void gather_rows(const E* x, const int64_t* xs, int nd, int dim, const void* index, DType idt, const int64_t* is,
                 E* out, int64_t r0, int64_t r1) {
  const int64_t last = is[nd - 1];
  for (int64_t r = r0; r < r1; r++) {
    // coordinates of row r over index dims [0, nd - 1), mapped to x offsets without `dim`
    int64_t base = 0, rem = r;
    for (int d = nd - 2; d >= 0; d--) {
      const int64_t c = rem % is[d];
      rem /= is[d];
      if (d != dim) base += c * xs[d];
    }
    const int64_t p0 = r * last;
    if (dim == nd - 1) {
      for (int64_t c = 0; c < last; c++) out[p0 + c] = x[base + load_id(index, idt, p0 + c)];
    } else {
      const int64_t sd = xs[dim];
      for (int64_t c = 0; c < last; c++) out[p0 + c] = x[base + c + load_id(index, idt, p0 + c) * sd];
    }
  }
}

}  // namespace

void gather_cpu(const void* x, size_t esize, const int64_t* x_shape, int ndim, int dim, const void* index, DType idt,
                const int64_t* idx_shape, void* out) {
  const int64_t one = 1;
  const int nd = ndim == 0 ? 1 : ndim;
  const int64_t* xsh = ndim == 0 ? &one : x_shape;
  const int64_t* ish = ndim == 0 ? &one : idx_shape;
  int64_t numel = 1;
  for (int d = 0; d < nd; d++) numel *= ish[d];
  if (numel == 0) return;
  std::vector<int64_t> xs(static_cast<size_t>(nd));
  int64_t s = 1;
  for (int d = nd - 1; d >= 0; d--) xs[d] = s, s *= xsh[d];
  const int64_t rows = numel / ish[nd - 1];
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / ish[nd - 1]);
  parallel_for(rows, grain, [&](int64_t b, int64_t e) {
    switch (esize) {
      case 1: gather_rows(static_cast<const uint8_t*>(x), xs.data(), nd, dim, index, idt, ish, static_cast<uint8_t*>(out), b, e); break;
      case 2: gather_rows(static_cast<const uint16_t*>(x), xs.data(), nd, dim, index, idt, ish, static_cast<uint16_t*>(out), b, e); break;
      case 4: gather_rows(static_cast<const uint32_t*>(x), xs.data(), nd, dim, index, idt, ish, static_cast<uint32_t*>(out), b, e); break;
      default: gather_rows(static_cast<const uint64_t*>(x), xs.data(), nd, dim, index, idt, ish, static_cast<uint64_t*>(out), b, e); break;
    }
  });
}

void scatter_add_cpu(void* dst, DType ddt, const int64_t* dst_shape, int ndim, int dim, const void* index, DType idt,
                     const int64_t* idx_shape, const void* src, DType sdt, const int64_t* src_shape) {
  const int64_t one = 1;
  const int nd = ndim == 0 ? 1 : ndim;
  const int64_t* dsh = ndim == 0 ? &one : dst_shape;
  const int64_t* ish = ndim == 0 ? &one : idx_shape;
  const int64_t* ssh = ndim == 0 ? &one : src_shape;
  int64_t numel = 1;
  for (int d = 0; d < nd; d++) numel *= ish[d];
  if (numel == 0) return;
  std::vector<int64_t> ds(static_cast<size_t>(nd)), is(static_cast<size_t>(nd)), ss(static_cast<size_t>(nd));
  int64_t a = 1, b = 1, c = 1;
  for (int d = nd - 1; d >= 0; d--) {
    ds[d] = a, a *= dsh[d];
    is[d] = b, b *= ish[d];
    ss[d] = c, c *= ssh[d];
  }
  // A line: every coordinate but `dim` fixed. Lines write disjoint destination lines, so they run in
  // parallel; along a line the adds go in index order.
  const int64_t len = ish[dim], lines = numel / len;
  parallel_for(lines, std::max<int64_t>(1, (int64_t(1) << 14) / len), [&](int64_t lb, int64_t le) {
    for (int64_t l = lb; l < le; l++) {
      int64_t rem = l, doff = 0, ioff = 0, soff = 0;
      for (int d = nd - 1; d >= 0; d--) {
        if (d == dim) continue;
        const int64_t co = rem % ish[d];
        rem /= ish[d];
        doff += co * ds[d], ioff += co * is[d], soff += co * ss[d];
      }
      for (int64_t j = 0; j < len; j++) {
        const int64_t p = doff + load_id(index, idt, ioff + j * is[dim]) * ds[dim];
        store_f32(dst, ddt, p, load_f32(dst, ddt, p) + load_f32(src, sdt, soff + j * ss[dim]));
      }
    }
  });
}

}  // namespace peft
