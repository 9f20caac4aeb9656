// Embedding rows: the forward gathers rows of W by id (a word copy, any dtype); the backward adds dy rows
// into dW grouped by destination (the host groups the ids), one thread per (group, column), each
// destination element summing its sources in index order in f32 and rounding once, as the CPU does.
#include "dtype.cuh"
#include "launch.cuh"

namespace peft::PEFT_CUDA_NS {
namespace {

constexpr int kEmbThreads = 256;

template <class W>
__global__ void __launch_bounds__(kEltThreads) embedding_kernel(const void* ids, DType idt, int64_t n,
                                                                const W* __restrict__ w, W* __restrict__ out,
                                                                int64_t row_words) {
  PEFT_GRID_STRIDE(i, n * row_words) {
    const int64_t r = i / row_words, j = i % row_words;
    const int64_t id = idt == DType::I64 ? gload(static_cast<const int64_t*>(ids) + r)
                                         : int64_t(gload(static_cast<const int32_t*>(ids) + r));
    gstore(out + i, gload(w + id * row_words + j));
  }
}

template <class W>
void embedding_words(const void* ids, DType idt, int64_t n, const void* w, void* out, int64_t row_bytes) {
  const int64_t words = row_bytes / int64_t(sizeof(W));
  LAUNCH(elt_grid(n * words), kEltThreads, 0, 0, embedding_kernel<W>)(ids, idt, n, static_cast<const W*>(w),
                                                                      static_cast<W*>(out), words);
}

__global__ void __launch_bounds__(kEmbThreads) embedding_backward_kernel(const int64_t* rows, const int64_t* starts,
                                                                         const int64_t* order, const void* dy,
                                                                         DType dydt, void* dw, DType dwdt,
                                                                         int64_t dim) {
  const int64_t g = blockIdx.x, d = int64_t(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  const int64_t dst = gload(rows + g) * dim + d;
  float acc = load_f32(dw, dwdt, dst);
  for (int64_t k = gload(starts + g), e = gload(starts + g + 1); k < e; ++k)
    acc += load_f32(dy, dydt, gload(order + k) * dim + d);
  store_f32(dw, dwdt, dst, acc);
}

}  // namespace

cudaError_t launch_embedding(const void* ids, DType idt, int64_t n, const void* w, void* out, int64_t row_bytes) {
  if (row_bytes % 4 == 0) embedding_words<unsigned>(ids, idt, n, w, out, row_bytes);
  else if (row_bytes % 2 == 0) embedding_words<unsigned short>(ids, idt, n, w, out, row_bytes);
  else embedding_words<unsigned char>(ids, idt, n, w, out, row_bytes);
  return cudaGetLastError();
}

cudaError_t launch_embedding_backward(const int64_t* rows, const int64_t* starts, const int64_t* order, int64_t groups,
                                      const void* dy, DType dydt, void* dw, DType dwdt, int64_t dim) {
  const dim3 grid(unsigned(groups), unsigned((dim + kEmbThreads - 1) / kEmbThreads));
  LAUNCH(grid, kEmbThreads, 0, 0, embedding_backward_kernel)(rows, starts, order, dy, dydt, dw, dwdt, dim);
  return cudaGetLastError();
}

}  // namespace peft::PEFT_CUDA_NS
