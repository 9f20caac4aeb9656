#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention_tiles.h"
#include "parallel.h"
#include "rows.h"

namespace peft {
namespace {

constexpr int kBK = kAttnKeys, kBQ = kAttnQueries;

int64_t tiles(int64_t n, int64_t t) { return (n + t - 1) / t; }

// The key tile [j0, j0 + cols) as an additive bias: 0 where the mask keeps the key, -inf where it does not
// and past cols.
void key_bias(const AttentionShape& a, int64_t b, int64_t j0, int cols, float* bias) {
  for (int j = 0; j < kBK; j++)
    bias[j] = j < cols && (!a.key_ok || a.key_ok[b * a.S + j0 + j]) ? 0.0f : -std::numeric_limits<float>::infinity();
}

// Per query row i0 + r: keys j0 + j with j < limit[r] are causally visible (all of them when not causal).
void causal_limits(const AttentionShape& a, int64_t i0, int rows, int64_t j0, int* limit) {
  for (int r = 0; r < rows; r++) {
    int64_t lim = a.causal ? a.S - a.T + i0 + r + 1 - j0 : kBK;
    limit[r] = static_cast<int>(std::clamp<int64_t>(lim, 0, kBK));
  }
}

// Rows of one head of a [B][L][H][D] tensor into f32 scratch [n][Dp] (n rows from position p0; the padding
// columns D..Dp stay as allocated, zero).
void load_rows(const void* base, DType dt, int64_t b, int64_t p0, int n, int64_t L, int64_t H, int64_t h, int64_t D, int64_t Dp, float* dst) {
  for (int r = 0; r < n; r++) load_row(base, dt, ((b * L + p0 + r) * H + h) * D, dst + r * Dp, D);
}

// The head dimension padded to whole vectors.
int64_t padded(int64_t D) { return (D + kAttnLanes - 1) / kAttnLanes * kAttnLanes; }

// Buffers kept on the calling thread between calls (the packs and the dq partials), so a training loop does
// not fault fresh pages in and zero them on every call; one larger than kKeepBytes is freed by ~Scratch, so a
// thread holds at most 6 × 16 MiB between calls.
constexpr size_t kKeepBytes = size_t{16} << 20;
thread_local std::vector<float> t_slots[6];

class Scratch {
 public:
  // Slot `i` (0..5, one per buffer a call uses at once) with n floats, all zero.
  explicit Scratch(int i, size_t n) : v_(t_slots[i]) {
    if (v_.size() < n) v_.resize(n);
    std::fill(v_.begin(), v_.begin() + static_cast<int64_t>(n), 0.0f);
  }
  ~Scratch() {
    if (v_.capacity() * sizeof(float) > kKeepBytes) std::vector<float>().swap(v_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  float* data() { return v_.data(); }

 private:
  std::vector<float>& v_;
};

// A [B][L][H][D] tensor converted once per call into f32 laid out for the tiles: either head rows
// [B][H][L + 4][Dp] (zero-padded; 4 spare rows per head because the scores read up to 3 rows past a tile),
// or, transposed, tiles [B][H][ceil(L / kBK)][Dp][kBK] (zero past the last key).
class Packed {
 public:
  // Slot `slot` filled from the first L of the Ls positions per batch row of src: head rows, or (cols)
  // transposed key tiles.
  Packed(int slot, const void* src, DType dt, int64_t B, int64_t L, int64_t Ls, int64_t H, int64_t D, bool cols)
      : buf_(slot, static_cast<size_t>(B * H * (cols ? tiles(L, kBK) * kBK : L + 4) * padded(D))), L_(L), H_(H), Dp_(padded(D)), nt_(tiles(L, kBK)) {
    if (!cols) {
      parallel_for(B * L * H, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t rb, int64_t re) {
        for (int64_t r = rb; r < re; r++) {
          const int64_t b = r / (L * H), p = r / H % L, h = r % H;
          load_row(src, dt, ((b * Ls + p) * H + h) * D, rows(b, h, p), D);
        }
      });
      return;
    }
    parallel_for(B * H * nt_, 1, [&](int64_t tb, int64_t te) {
      std::vector<float> row(D);
      for (int64_t t = tb; t < te; t++) {
        const int64_t b = t / (H * nt_), h = t / nt_ % H, j0 = t % nt_ * kBK;
        float* dst = tile(b, h, t % nt_);
        for (int64_t r = 0; r < std::min<int64_t>(kBK, L - j0); r++) {
          load_row(src, dt, ((b * Ls + j0 + r) * H + h) * D, row.data(), D);
          for (int64_t d = 0; d < D; d++) dst[d * kBK + r] = row[d];
        }
      }
    });
  }
  float* rows(int64_t b, int64_t h, int64_t p) { return buf_.data() + ((b * H_ + h) * (L_ + 4) + p) * Dp_; }
  float* tile(int64_t b, int64_t h, int64_t t) { return buf_.data() + ((b * H_ + h) * nt_ + t) * Dp_ * kBK; }

 private:
  Scratch buf_;
  int64_t L_, H_, Dp_, nt_;
};

// Query rows per call up to which the forward reads K and V in place (AttentionTiles::direct) instead of
// packing them: a decode step's one query row would otherwise convert the whole cache on every call.
constexpr int64_t kDirectMaxT = 4;

// The forward for few query rows and f32/bf16 K/V: one job per (batch, kv head, query), whose `group` query
// heads share the job's K/V rows.
void attention_forward_direct(const AttentionShape& a, const void* q, const void* k, const void* v, DType dt, void* out, float* lse) {
  const int64_t D = a.D, group = a.Hq / a.Hkv, Ls = a.kv_rows ? a.kv_rows : a.S, stride = a.Hkv * D;
  const AttentionTiles& kt = attention_tiles();
  // A job reads about 2·S·D elements per query head: under ~64 K multiply-adds a thread's share is not worth
  // waking the pool for.
  const int64_t work = std::max<int64_t>(1, 2 * a.S * D * group);
  parallel_for(a.B * a.Hkv * a.T, std::max<int64_t>(1, (int64_t{1} << 16) / work), [&](int64_t jb, int64_t je) {
    std::vector<float> Q(group * D), O(group * D), P(std::max<int64_t>(a.S, 1)), z(group);
    for (int64_t job = jb; job < je; job++) {
      const int64_t b = job / (a.Hkv * a.T), hk = job / a.T % a.Hkv, i = job % a.T;
      for (int64_t g = 0; g < group; g++) load_row(q, dt, ((b * a.T + i) * a.Hq + hk * group + g) * D, Q.data() + g * D, D);
      // Causal: query i sees keys j <= S − T + i.
      const int64_t n = a.causal ? std::clamp<int64_t>(a.S - a.T + i + 1, 0, a.S) : a.S;
      const size_t at = static_cast<size_t>((b * Ls * a.Hkv + hk) * D) * dtype_size(dt);
      kt.direct(Q.data(), static_cast<int>(group), static_cast<const char*>(k) + at, static_cast<const char*>(v) + at, dt == DType::BF16, stride, n,
                static_cast<int>(D), a.scale, a.key_ok ? a.key_ok + b * a.S : nullptr, P.data(), O.data(), z.data());
      for (int64_t g = 0; g < group; g++) {
        const int64_t h = hk * group + g;
        store_row(O.data() + g * D, out, dt, ((b * a.T + i) * a.Hq + h) * D, D);
        lse[(b * a.Hq + h) * a.T + i] = z[g];
      }
    }
  });
}

}  // namespace

void attention_forward_cpu(const AttentionShape& a, const void* q, const void* k, const void* v, DType dt, void* out, float* lse) {
  if (a.T <= kDirectMaxT && (dt == DType::F32 || dt == DType::BF16)) return attention_forward_direct(a, q, k, v, dt, out, lse);
  const int64_t D = a.D, Dp = padded(D), group = a.Hq / a.Hkv, nqt = tiles(a.T, kBQ);
  const int dp = static_cast<int>(Dp);
  const int64_t Ls = a.kv_rows ? a.kv_rows : a.S;
  Packed kt_all(0, k, dt, a.B, a.S, Ls, a.Hkv, D, true), v_all(1, v, dt, a.B, a.S, Ls, a.Hkv, D, false);
  // A job's rows: the query tile of every query head reading the job's kv head (they share each K/V tile),
  // plus room for the scores' rounding up to 4 rows.
  const int64_t R = group * kBQ + 4;
  const AttentionTiles& kt = attention_tiles();
  // One job per (batch, kv head, query tile).
  parallel_for(a.B * a.Hkv * nqt, 1, [&](int64_t jb, int64_t je) {
    // l keeps one partial sum per vector lane; the lanes are added at the end.
    std::vector<float> Q(R * Dp), S(R * kBK), acc(R * Dp), m(R), l(R * kAttnLanes), bias(kBK);
    std::vector<int> limit(R);
    for (int64_t job = jb; job < je; job++) {
      // Query tiles in zigzag order (first, last, second, second last, ...): under causal masking later tiles
      // cost more, and the pool hands each thread a contiguous run of jobs.
      const int64_t b = job / (a.Hkv * nqt), hk = job / nqt % a.Hkv, zz = job % nqt;
      const int64_t i0 = (zz % 2 ? nqt - 1 - zz / 2 : zz / 2) * kBQ;
      const int tq = static_cast<int>(std::min<int64_t>(kBQ, a.T - i0)), rows = static_cast<int>(group) * tq;
      for (int64_t g = 0; g < group; g++) load_rows(q, dt, b, i0, tq, a.T, a.Hq, hk * group + g, D, Dp, Q.data() + g * tq * Dp);
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      // Key tiles past the last query's causal limit hold nothing this tile sees.
      const int64_t end = a.causal ? std::min(a.S, a.S - a.T + i0 + tq) : a.S;
      for (int64_t j0 = 0; j0 < end; j0 += kBK) {
        const int cols = static_cast<int>(std::min<int64_t>(kBK, a.S - j0));
        key_bias(a, b, j0, cols, bias.data());
        causal_limits(a, i0, tq, j0, limit.data());
        for (int64_t g = 1; g < group; g++) std::copy(limit.begin(), limit.begin() + tq, limit.begin() + g * tq);
        kt.scores(Q.data(), rows, kt_all.tile(b, hk, j0 / kBK), dp, a.scale, S.data());
        kt.softmax_step(S.data(), rows, bias.data(), limit.data(), m.data(), l.data(), acc.data(), dp);
        kt.accum(S.data(), kBK, 1, rows, cols, v_all.rows(b, hk, j0), dp, acc.data());
      }
      for (int rr = 0; rr < rows; rr++) {
        const int64_t h = hk * group + rr / tq, i = i0 + rr % tq;
        float sum = 0.0f;
        for (int ln = 0; ln < kAttnLanes; ln++) sum += l[rr * kAttnLanes + ln];
        float* o = acc.data() + rr * Dp;
        const float inv = sum > 0 ? 1.0f / sum : 0.0f;
        for (int64_t d = 0; d < D; d++) o[d] *= inv;
        store_row(o, out, dt, ((b * a.T + i) * a.Hq + h) * D, D);
        lse[(b * a.Hq + h) * a.T + i] = sum > 0 ? m[rr] + std::log(sum) : std::numeric_limits<float>::infinity();
      }
    }
  });
}

void attention_backward_cpu(const AttentionShape& a, const void* q, const void* k, const void* v, DType dt, const void* out,
                            const float* lse, const void* dout, void* dq, void* dk, void* dv) {
  const int64_t B = a.B, T = a.T, S = a.S, Hq = a.Hq, Hkv = a.Hkv, D = a.D, Dp = padded(D), group = Hq / Hkv;
  const int dp = static_cast<int>(Dp);
  const AttentionTiles& kt = attention_tiles();
  // delta[b][h][t] = Σ_d dO·O: the row term of the softmax backward, dS = P ∘ (dP − delta).
  std::vector<float> delta(static_cast<size_t>(B * Hq * T));
  parallel_for(B * T * Hq, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t rb, int64_t re) {
    std::vector<float> o(D), g(D);
    for (int64_t r = rb; r < re; r++) {
      load_row(out, dt, r * D, o.data(), D);
      load_row(dout, dt, r * D, g.data(), D);
      double s = 0;
      for (int64_t d = 0; d < D; d++) s += static_cast<double>(o[d]) * g[d];
      const int64_t b = r / (T * Hq), t = r / Hq % T, h = r % Hq;
      delta[(b * Hq + h) * T + t] = static_cast<float>(s);
    }
  });
  Packed k_rows(0, k, dt, B, S, S, Hkv, D, false), k_cols(1, k, dt, B, S, S, Hkv, D, true), v_cols(2, v, dt, B, S, S, Hkv, D, true);
  Packed q_rows(3, q, dt, B, T, T, Hq, D, false), do_rows(4, dout, dt, B, T, T, Hq, D, false);
  // Jobs own (batch, kv head, a chunk of key tiles): dk and dv rows are theirs alone; dq goes to the job's own
  // f32 partial [chunk][B][Hq][T][Dp], summed after. Key tiles are split into chunks only as far as needed to
  // give every thread work, dealt round-robin (chunk c takes tiles c, c + chunks, ...) so that under causal
  // masking, where early keys see more queries, every chunk gets a like share of the work.
  const int64_t nkt = tiles(S, kBK);
  const int64_t chunks = std::clamp<int64_t>(tiles(2 * num_threads(), std::max<int64_t>(B * Hkv, 1)), 1, std::max<int64_t>(nkt, 1));
  const int64_t qsize = B * Hq * T * Dp;
  Scratch dq_part(5, static_cast<size_t>(chunks * qsize));
  parallel_for(B * Hkv * chunks, 1, [&](int64_t jb, int64_t je) {
    std::vector<float> dK(kBK * Dp), dV(kBK * Dp), bias(kBK), P(kBQ * kBK), dP(kBQ * kBK);
    int limit[kBQ];
    for (int64_t job = jb; job < je; job++) {
      const int64_t b = job / (Hkv * chunks), hk = job / chunks % Hkv, c = job % chunks;
      float* dqc = dq_part.data() + c * qsize;
      for (int64_t t = c; t < nkt; t += chunks) {
        const int64_t j0 = t * kBK;
        const int cols = static_cast<int>(std::min<int64_t>(kBK, S - j0));
        const float *kr = k_rows.rows(b, hk, j0), *ktt = k_cols.tile(b, hk, t), *vtt = v_cols.tile(b, hk, t);
        key_bias(a, b, j0, cols, bias.data());
        std::fill(dK.begin(), dK.end(), 0.0f);
        std::fill(dV.begin(), dV.end(), 0.0f);
        // Causal: queries before j0 − (S − T) see none of this tile.
        const int64_t first = a.causal ? std::max<int64_t>(0, j0 - (S - T)) : 0;
        for (int64_t h = hk * group; h < (hk + 1) * group; h++)
          for (int64_t i0 = first; i0 < T; i0 += kBQ) {
            const int rows = static_cast<int>(std::min<int64_t>(kBQ, T - i0));
            const float *Q = q_rows.rows(b, h, i0), *dO = do_rows.rows(b, h, i0);
            const float *z = lse + (b * Hq + h) * T + i0, *dl = delta.data() + (b * Hq + h) * T + i0;
            causal_limits(a, i0, rows, j0, limit);
            for (int r = 0; r < rows; r++)
              if (std::isinf(z[r])) limit[r] = 0;  // a query with no key: zero probabilities, zero gradients
            kt.scores(Q, rows, ktt, dp, a.scale, P.data());
            kt.probs(P.data(), rows, bias.data(), limit, z);
            kt.accum(P.data(), 1, kBK, cols, rows, dO, dp, dV.data());    // dV += Pᵀ·dO
            kt.scores(dO, rows, vtt, dp, 1.0f, dP.data());                 // dP = dO·Vᵀ
            kt.dscores(P.data(), dP.data(), rows, dl, a.scale);            // dS
            kt.accum(dP.data(), 1, kBK, cols, rows, Q, dp, dK.data());     // dK += dSᵀ·Q
            kt.accum(dP.data(), kBK, 1, rows, cols, kr, dp, dqc + ((b * Hq + h) * T + i0) * Dp);  // dQ += dS·K
          }
        for (int j = 0; j < cols; j++) {
          store_row(dK.data() + j * Dp, dk, dt, ((b * S + j0 + j) * Hkv + hk) * D, D);
          store_row(dV.data() + j * Dp, dv, dt, ((b * S + j0 + j) * Hkv + hk) * D, D);
        }
      }
    }
  });
  // dq[b][t][h] = Σ_chunks partial[chunk][b][h][t], rounded once into dt.
  parallel_for(B * T * Hq, std::max<int64_t>(1, 4096 / std::max<int64_t>(D, 1)), [&](int64_t rb, int64_t re) {
    std::vector<float> sum(D);
    for (int64_t r = rb; r < re; r++) {
      const int64_t b = r / (T * Hq), t = r / Hq % T, h = r % Hq;
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int64_t c = 0; c < chunks; c++) {
        const float* p = dq_part.data() + c * qsize + ((b * Hq + h) * T + t) * Dp;
        for (int64_t d = 0; d < D; d++) sum[d] += p[d];
      }
      store_row(sum.data(), dq, dt, r * D, D);
    }
  });
}

}  // namespace peft
