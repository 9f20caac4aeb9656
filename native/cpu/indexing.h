// CPU kernels of the view and indexing ops: the strided copy behind transpose/permute/expand/narrow/cat/
// split/stack, index_select / index_add, gather / scatter_add. ops/ has checked shapes, bounds and index
// ranges, so these never fail. Element strides and offsets count elements of the tensor's dtype.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../core/dtype.h"

namespace peft {

// dst[dst_off + Σ i_d dst_st[d]] = src[src_off + Σ i_d src_st[d]] for every index i of `shape`, converted
// from sdt to ddt (the rules of convert_cpu) when they differ. The written elements must not overlap each
// other, and src must not overlap them.
void copy_strided_cpu(const void* src, DType sdt, const int64_t* shape, const int64_t* src_st, int64_t src_off,
                      int ndim, void* dst, DType ddt, const int64_t* dst_st, int64_t dst_off);

// out[o, i, :] = x[o, index[i], :] with x (outer, D, inner) and out (outer, n, inner); elements of esize bytes.
void index_select_cpu(const void* x, size_t esize, int64_t outer, int64_t D, int64_t inner, const void* index, DType idt,
                      int64_t n, void* out);

// dst[o, index[i], :] += src[o, i, :] with dst (outer, D, inner) and src (outer, n, inner), float dtypes. Each
// destination slice sums its sources in index order in f32 and is rounded once: the result does not depend
// on the thread count.
void index_add_cpu(void* dst, DType ddt, int64_t outer, int64_t D, int64_t inner, const void* index, DType idt,
                   int64_t n, const void* src, DType sdt);

// torch.gather: out[p] = x[p with coordinate `dim` replaced by index[p]], out shaped like index.
void gather_cpu(const void* x, size_t esize, const int64_t* x_shape, int ndim, int dim, const void* index, DType idt,
                const int64_t* idx_shape, void* out);

// torch.scatter_add_: dst[p with coordinate `dim` replaced by index[p]] += src[p] for every p of index's
// shape, float dtypes, in index order along `dim` (each add rounded into dst's dtype, as PyTorch does).
void scatter_add_cpu(void* dst, DType ddt, const int64_t* dst_shape, int ndim, int dim, const void* index, DType idt,
                     const int64_t* idx_shape, const void* src, DType sdt, const int64_t* src_shape);

// The position of the first index outside [0, bound), or -1.
int64_t first_index_out_of_range(const void* index, DType idt, int64_t n, int64_t bound);

}  // namespace peft
