// The program one thread block of the CUDA kernel runs, written once for nvcc (the kernel, one
// thread per call, __syncthreads between steps) and for g++ (dbl_emulate.cpp: every thread of a
// step in turn, blocks one after the other), so that CPU tests run the kernel's indexing,
// reductions and final sum. An executor supplies the parts that differ: `each` (run a step for
// the calling thread, or for all threads), `sync`, per-thread locals, atomics and fences.
//
// Per item (see Plan / Geometry in dbl_plan.h):
//   1. statistics (STATS_BLOCK): each slot's partial (count, stat) into shared memory, then per
//      row a fixed tree over G threads -> the row constants (or, in a STATS pass, the row's
//      statistics to global memory and the block's largest row weight for by_batch);
//   2. elements: every slot's vector of logits, labels and class-table entries -> loss and
//      gradient; the loss summed per thread in fp32 per item, in fp64 across items.
// At the end each block writes its fp64 partial, and the last block to finish (an atomic ticket)
// adds all partials in index order, writes the loss and resets the ticket: deterministic, one
// launch. All global offsets are 64-bit; in-item offsets are 32-bit (bounded by the plan).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dbl_math.h"
#include "dbl_plan.h"
#include "dbl_vec.h"

namespace dbl {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// Storage types and vector accesses.
// ----------------------------------------------------------------------------------------------
template <class T>
struct KArgs {
  const void* z;
  int64_t ldz;
  const void* y;
  int64_t ldy;
  int y_dtype;
  const T* w;  // weight_ij (compute dtype, strides ws0, ws1) or null
  int64_t ws0, ws1;
  const T* params;
  const T* stat_tbl;  // the class_params row of the row statistic
  const T* aux;
  T* loss;
  void* grad;
  uint32_t* ticket;
  unsigned long long* bmax;
  double* partial;
  T* row_stats;  // (count, stat) per row, written by the STATS pass
  int64_t N, C;
  Spec<T> spec;
  ElemConsts<T> kc;  // gs is read from aux on the device (in the row step)
  T inv_batch;       // by_batch when its max is known on the host (else read from bmax)
  Geometry g;
  int pass, reduction;
  bool need_grad;
  // Read by the generic kernel only (kept last: the main paths' argument layout is unchanged).
  bool asymmetric;
  AslConsts<T> asl;
  bool rows_given;  // row_stats point at the caller's statistics; by_batch reads aux[1]
  const int64_t* crow;  // CSR labels (y: the stored values), or null
  const int64_t* col;
};

// The label at (row, c) of CSR labels: a lower-bound search of c in the row's ascending columns;
// 0 (a negative) where nothing is stored.
template <class T>
DBL_BLK T csr_label(const KArgs<T>& a, int64_t row, int64_t c) {
  int64_t lo = a.crow[row], hi = a.crow[row + 1];
  const int64_t end = hi;
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (a.col[mid] < c) lo = mid + 1;
    else hi = mid;
  }
  return lo < end && a.col[lo] == c ? load_label<T>(a.y_dtype, a.y, lo) : T(0);
}

template <class T>
struct Shared {
  static constexpr int kChunk = max_slots(sizeof(T) == 8);
  T cnt[kChunk], stat[kChunk];      // per-slot (or per-thread) partial row statistics
  T red_c[kThreads], red_s[kThreads];
  RowConst<T> rc[kMaxRows];         // row constants of the item's rows
  double dred[kThreads];            // each thread's loss sum (kept here: it lives across items)
  T mx[kThreads];                   // STATS pass: each thread's largest row weight
  T inv_batch;                      // by_batch: 1 / the batch max weight
  int last;
};

// Compile-time options of an instantiation. STAT_ROW: the row statistic (STAT_NONE, STAT_SUM
// without the count (rebalance), or -1 for count plus a sum or max decided per launch).
template <int WFORM_, int FOCAL_, int LABELS_, bool NTR_, bool GRAD_, int STAT_>
struct PathOpts {
  static constexpr int WFORM = WFORM_, FOCAL = FOCAL_, LABELS = LABELS_, STAT = STAT_;
  static constexpr bool NTR = NTR_, GRAD = GRAD_;
};
constexpr int kStatCountAndKind = -1;
constexpr int kStatSumOnly = 100;

// ---------------------------------------------------------------------------------------------
// The block program.
// ---------------------------------------------------------------------------------------------
template <class Z, int V, class P, class Fn, class T, class Ex>
struct Block {
  Ex& ex;
  const KArgs<T>& a;
  Shared<T>& sh;
  const int64_t block, nblocks;

  // In-item offsets: 32-bit on the vector paths (the plan bounds them), 64-bit on the generic one.
  using I = typename std::conditional<V == kVec, uint32_t, int64_t>::type;

  // A chunk of the current item: its first vector in the row (cs; items of several chunks and
  // tiles have full chunks, so chunk ch starts at ch * slots) and how many of its slots hold a
  // vector.
  struct Chunk {
    I cs, n;
  };
  DBL_BLK Chunk chunk(I ch, I nrows) const {
    Chunk c;
    const I slots = static_cast<I>(a.g.slots);
    c.cs = ch * slots;
    const I n = nrows * static_cast<I>(a.g.vpr) - c.cs;  // packed: ch = 0; else one row
    c.n = n < slots ? n : slots;
    return c;
  }
  // Slot s (< c.n) of chunk c: its row within the item and its vector index in the row. Each
  // thread takes slots t, t + kThreads, ... below c.n: past the chunk's end a thread stops, and a
  // warp whose threads all have stopped issues nothing (the plan makes a packed item's idle slots
  // whole warps).
  struct Slot {
    I rl, v;
  };
  DBL_BLK Slot slot(int s, const Chunk& c) const {
    Slot r;
    r.rl = static_cast<I>(mulhi(static_cast<uint32_t>(s) << 8, a.g.magic));  // s / vpr
    r.v = c.cs + static_cast<I>(s) - r.rl * static_cast<I>(a.g.vpr);
    return r;
  }

  // The item's first row of logits and labels.
  DBL_BLK const Z* zitem(int64_t row0) const { return static_cast<const Z*>(a.z) + row0 * a.ldz; }
  DBL_BLK int64_t ysize() const { return V == kVec ? 1 : dtype_size(a.y_dtype); }  // vector paths: uint8
  DBL_BLK const char* yitem(int64_t row0) const { return static_cast<const char*>(a.y) + row0 * a.ldy * ysize(); }

  // The statistics of V labels at column c of item row rl: count += sum y+, stat += sum y+ t (or max
  // over y+ > 0).
  template <int KIND>
  DBL_BLK void vec_stats(const char* yi, I rl, I c, const T* tbl, T& count, T& stat) const {
    if constexpr (V == kVec) {
      const W2 yb = load_raw<W2>(yi + (rl * static_cast<I>(a.ldy) + c));
      float t[kVec];
      load8(tbl + c, t);
      for (int e = 0; e < kVec; ++e) {
        const bool pos = ((yb.w[e / 4] >> (8 * (e % 4))) & 0xffu) != 0;
        if (KIND == STAT_MAX) {  // the CB weights are positive: a non-positive label adds 0 to the max
          count += pos ? T(1) : T(0);
          const T v = pos ? t[e] : T(0);
          stat = v > stat ? v : stat;
        } else if (pos) {  // binary labels: predicated adds
          if (KIND != kStatSumOnly) count += T(1);
          stat += t[e];
        }
      }
    } else {
      const T y = load_label<T>(a.y_dtype, yi + rl * a.ldy * ysize(), c);
      const T yp = y > T(0) ? y : T(0);
      count += yp;
      stat = KIND == STAT_MAX ? (yp > T(0) && tbl[c] > stat ? tbl[c] : stat) : stat + yp * tbl[c];
    }
  }

  // Step 1: partial statistics per slot (one chunk) or per thread (several chunks).
  template <int KIND>
  DBL_BLK void stats_step(const T* tbl, int64_t row0, int64_t nrows, int64_t nch) {
    const char* yi = opaque(yitem(row0));
    tbl = opaque(tbl);
    if (nch == 1) {  // a partial per slot
      const Chunk cn = chunk(0, static_cast<I>(nrows));
      ex.each([&](int t) {
        DBL_NO_UNROLL
        for (int s = t; s < static_cast<int>(cn.n); s += kThreads) {
          const Slot sl = slot(s, cn);
          T c = T(0), v = T(0);
          vec_stats<KIND>(yi, sl.rl, sl.v * V, tbl, c, v);
          if (KIND != kStatSumOnly) sh.cnt[s] = c;
          sh.stat[s] = v;
        }
      });
      return;
    }
    ex.each([&](int t) {  // a partial per thread, over the chunks of one row
      T cnt = T(0), st = T(0);
      for (I ch = 0; ch < static_cast<I>(nch); ++ch) {
        const Chunk cn = chunk(ch, static_cast<I>(nrows));
        DBL_NO_UNROLL
        for (int s = t; s < static_cast<int>(cn.n); s += kThreads) {
          const Slot sl = slot(s, cn);
          T c = T(0), v = T(0);
          vec_stats<KIND>(yi, sl.rl, sl.v * V, tbl, c, v);
          cnt += c;
          st = KIND == STAT_MAX ? (v > st ? v : st) : st + v;
        }
      }
      if (KIND != kStatSumOnly) sh.cnt[t] = cnt;
      sh.stat[t] = st;
    });
  }

  // Per row: the sum (or max) of its segment of partials, as a fixed tree over G threads, left in
  // sh.red_c[r], sh.red_s[r] (r < nrows <= kThreads). Row r's threads are r, r + R, r + 2R, ...
  // (R = kThreads / G).
  template <int KIND>
  DBL_BLK void reduce_rows(int64_t nrows, int64_t nch) {
    static_assert(kThreads == 256 && kMaxRows <= kThreads, "t / R below is t >> (8 - log2 G)");
    const int G = a.g.G, lg = a.g.log2G;
    const int R = kThreads >> lg;
    const int L = nch > 1 ? kThreads : static_cast<int>(a.g.vpr);  // partials per row (<= max_slots)
    const auto comb = [](T x, T y) { return KIND == STAT_MAX ? (y > x ? y : x) : x + y; };
    ex.sync();
    if (G == 1) {
      ex.each([&](int t) {
        for (int r = t; r < nrows; r += kThreads) {
          T c = T(0), s = T(0);
          DBL_NO_UNROLL  // a handful of partials (vectors per row): unrolling only adds set-up code
          for (int j = r * L; j < (r + 1) * L; ++j) {
            if (KIND != kStatSumOnly) c += sh.cnt[j];
            s = comb(s, sh.stat[j]);
          }
          sh.red_c[r] = c;
          sh.red_s[r] = s;
        }
      });
      return;
    }
    ex.each([&](int t) {
      const int r = t & (R - 1);
      T c = T(0), s = T(0);
      if (r < nrows) {
        for (int j = t >> (8 - lg); j < L; j += G) {  // t / R: this thread's lane in the row
          if (KIND != kStatSumOnly) c += sh.cnt[r * L + j];
          s = comb(s, sh.stat[r * L + j]);
        }
      }
      sh.red_c[t] = c;
      sh.red_s[t] = s;
    });
    for (int half = kThreads / 2; half >= R; half /= 2) {
      ex.sync();
      ex.each([&](int t) {
        if (t < half) {
          if (KIND != kStatSumOnly) sh.red_c[t] += sh.red_c[t + half];
          sh.red_s[t] = comb(sh.red_s[t], sh.red_s[t + half]);
        }
      });
    }
  }

  // Step 2: loss and gradient of every slot of the item.
  template <bool HAS_W>
  DBL_BLK void element_step(int64_t row0, int64_t nrows, int64_t ch0, int64_t nch) {
    const int64_t C = a.C;
    const T* tw = opaque(a.params + static_cast<int64_t>(weight_param(a.spec.reweight)) * C);
    const T* bias = a.params + static_cast<int64_t>(P_BIAS) * C;
    const I boff = static_cast<I>((P_BIAS - weight_param(a.spec.reweight)) * C);  // bias row - weight row
    const bool store_loss = a.reduction == RED_NONE;
    const bool store_grad = P::GRAD && a.need_grad;
    const Z* zi = opaque(zitem(row0));
    const char* yi = opaque(yitem(row0));
    Z* gi = a.grad ? opaque(static_cast<Z*>(a.grad) + row0 * C) : nullptr;  // outputs: contiguous N x C
    T* li = opaque(a.loss + row0 * C);
    ex.each([&](int t) {
      T accf = T(0);
      for (I ch = static_cast<I>(ch0); ch < static_cast<I>(ch0 + nch); ++ch) {
        const Chunk cn = chunk(ch, static_cast<I>(nrows));
        DBL_NO_UNROLL
        for (int s = t; s < static_cast<int>(cn.n); s += kThreads) {
          const Slot sl = slot(s, cn);
          const I c = sl.v * V;
          const I out = sl.rl * static_cast<I>(C) + c;
          const RowConst<T> rc = sh.rc[sl.rl];
          T lv[V], gv[V];
          if constexpr (V == kVec) {
            static_assert(std::is_same<T, float>::value, "vector paths compute in fp32");
            float zv[kVec], twv[kVec], bv[kVec];
            load8(zi + (sl.rl * static_cast<I>(a.ldz) + c), zv);
            load8(tw + c, twv);
            if (P::NTR) load8(tw + (c + boff), bv);
            const W2 yb = load_raw<W2>(yi + (sl.rl * static_cast<I>(a.ldy) + c));
            for (int e = 0; e < V; ++e) {
              const bool pos = ((yb.w[e / 4] >> (8 * (e % 4))) & 0xffu) != 0;
              const T f = HAS_W ? a.w[(row0 + sl.rl) * a.ws0 + (c + e) * a.ws1] : T(1);
              T g = T(0);
              lv[e] = element<T, Fn, P::WFORM, P::FOCAL, P::LABELS, P::NTR, P::GRAD>(
                  zv[e], pos ? T(1) : T(0), pos, f, twv[e], P::NTR ? bv[e] : T(0), rc, a.kc, g);
              gv[e] = g;
            }
          } else {
            const T y = a.crow ? csr_label(a, row0 + sl.rl, c)
                               : load_label<T>(a.y_dtype, yi + sl.rl * a.ldy * ysize(), c);
            const T f = (y != T(-1) ? T(1) : T(0)) * (HAS_W ? a.w[(row0 + sl.rl) * a.ws0 + c * a.ws1] : T(1));
            const T yp = y > T(0) ? y : T(0);
            const T z = load_one<T>(zi + (sl.rl * a.ldz + c));
            T g = T(0);
            if (a.asymmetric) {  // a uniform branch
              const T pw = a.params[static_cast<int64_t>(P_POS_W) * C + c];
              lv[0] = element_asl<T, Fn, P::WFORM, P::NTR, P::GRAD>(z, yp, f, tw[c], bias[c], pw, rc, a.kc, a.asl, g);
            } else {
              lv[0] = element<T, Fn, P::WFORM, P::FOCAL, P::LABELS, P::NTR, P::GRAD>(z, yp, yp != T(0), f, tw[c],
                                                                                     bias[c], rc, a.kc, g);
            }
            gv[0] = g;
          }
          T vsum = lv[0];
          for (int e = 1; e < V; ++e) vsum += lv[e];
          accf += vsum;
          if constexpr (V == kVec) {
            if (P::GRAD) store8_if(store_grad, gi + out, gv);
            store8_if(store_loss, li + out, lv);
          } else {
            if (store_grad) store_one(gi + out, gv[0]);
            if (store_loss) li[out] = lv[0];
          }
        }
      }
      sh.dred[t] += static_cast<double>(accf);
    });
  }

  // Fixed-order tree over the block's threads (dred), result in sh.dred[0].
  template <class Op>
  DBL_BLK void block_tree(Op&& op) {
    for (int off = kThreads / 2; off > 0; off /= 2) {
      ex.sync();
      ex.each([&](int t) {
        if (t < off) sh.dred[t] = op(sh.dred[t], sh.dred[t + off]);
      });
    }
    ex.sync();
  }

  template <int KIND>
  DBL_BLK void run_kind() {
    const Geometry& g = a.g;
    const Spec<T>& sp = a.spec;
    const bool stats_pass = a.pass == PASS_STATS;
    ex.each([&](int t) {
      sh.dred[t] = 0.0;
      sh.mx[t] = -INFINITY;
      // by_batch: 1 / the largest weight of the batch, left by the STATS pass (or known on the host)
      if (t == 0) {
        const bool rows = !stats_pass && batch_max_needs_rows(sp.reweight, sp.weight_norm);
        // (given row statistics come to the generic kernel only: V == 1 folds it away elsewhere)
        const bool given = V == 1 && a.rows_given;
        sh.inv_batch = rows ? (given ? a.aux[1] : Fn::Row::rcp(from_max_key(*a.bmax, T(0)))) : a.inv_batch;
      }
    });
    ex.sync();  // sh.inv_batch is read by every thread's row step
    // Item `block`, then every `nblocks`-th: as (first row, first chunk), stepped without divisions.
    // (tiles per row < 2^31: the tile index is 32-bit)
    const uint32_t tiles = static_cast<uint32_t>(g.tiles), step_tiles = static_cast<uint32_t>(g.step_tiles);
    const uint32_t first = static_cast<uint32_t>((static_cast<uint64_t>(block) * g.tile_magic) >> 40);  // block / tiles
    int64_t row0 = static_cast<int64_t>(first) * g.rows;
    uint32_t ch0 = static_cast<uint32_t>(block) - first * tiles;
    for (; row0 < a.N; row0 += g.step_rows, ch0 += step_tiles) {
      if (ch0 >= tiles) {
        ch0 -= tiles;
        row0 += g.rows;
        if (row0 >= a.N) break;
      }
      const int64_t nrows = a.N - row0 < g.rows ? a.N - row0 : g.rows;
      const int64_t nch = g.chunks;
      // A row's statistics -> its constants (MAIN), or to global memory plus the thread's running
      // max of the row weights, for by_batch (STATS pass; a max: the same in any order).
      const auto finish = [&](int t, int64_t r, T count, T stat) {
        if (stats_pass) {
          a.row_stats[2 * (row0 + r)] = count;
          a.row_stats[2 * (row0 + r) + 1] = stat;
          const T w = row_max_weight<typename Fn::Row>(count, stat, sp, a.kc);
          sh.mx[t] = w > sh.mx[t] ? w : sh.mx[t];
        } else {
          ElemConsts<T> kc = a.kc;  // with the reduction scale, read on the device
          kc.gs = a.aux[0];
          sh.rc[r] = row_const<typename Fn::Row, P::WFORM>(count, stat, sh.inv_batch, sp, kc);
        }
      };
      // The statistics: found here (then in sh.red_c, sh.red_s), given (STATS_PRE) or none. Then
      // one loop of row constants, thread r for row r: only the warps holding rows run it.
      const bool here = KIND != STAT_NONE && g.stats == STATS_BLOCK;
      if constexpr (KIND != STAT_NONE) {
        if (here) {
          stats_step<KIND>(a.stat_tbl, row0, nrows, nch);
          reduce_rows<KIND>(nrows, nch);
        }
      }
      ex.sync();
      ex.each([&](int t) {
        const bool pre = g.stats == STATS_PRE;
        DBL_NO_UNROLL  // nrows <= kMaxRows = kThreads: one trip
        for (int64_t r = t; r < nrows; r += kThreads) {
          const int64_t i = 2 * (row0 + r);
          finish(t, r, here ? sh.red_c[r] : (pre ? a.row_stats[i] : T(0)),
                 here ? sh.red_s[r] : (pre ? a.row_stats[i + 1] : T(0)));
        }
      });
      ex.sync();
      if (!stats_pass) {
        if (a.w) element_step<true>(row0, nrows, ch0, nch);
        else element_step<false>(row0, nrows, ch0, nch);
        ex.sync();
      }
    }
    if (stats_pass) {
      ex.each([&](int t) { sh.dred[t] = static_cast<double>(sh.mx[t]); });
      block_tree([](double x, double y) { return y > x ? y : x; });
      ex.each([&](int t) {
        if (t == 0) ex.atomic_max(a.bmax, max_key(static_cast<T>(sh.dred[0])));
      });
      return;
    }
    block_tree([](double x, double y) { return x + y; });
    ex.each([&](int t) {
      if (t == 0) {
        a.partial[block] = sh.dred[0];
        ex.fence();
        sh.last = ex.ticket(a.ticket) == static_cast<uint32_t>(nblocks - 1);
      }
    });
    ex.sync();
    if (!sh.last) return;
    // The last block: every partial, in index order per thread and a fixed tree.
    ex.fence();
    ex.each([&](int t) {
      double s = 0.0;
      for (int64_t i = t; i < nblocks; i += kThreads) s += ex.load_cg(a.partial + i);
      sh.dred[t] = s;
    });
    block_tree([](double x, double y) { return x + y; });
    ex.each([&](int t) {
      if (t == 0) {
        if (a.reduction != RED_NONE) *a.loss = static_cast<T>(sh.dred[0]);  // aux[0] is in the element losses
        *a.ticket = 0;  // the workspace's resting state, for the next launch
        *a.bmax = 0;
      }
    });
  }

  DBL_BLK void run() {
    if constexpr (P::STAT == STAT_NONE || P::STAT == kStatSumOnly) {
      run_kind<P::STAT>();
    } else {
      if (row_stat_kind(a.spec.reweight) == STAT_MAX) run_kind<STAT_MAX>();
      else run_kind<STAT_SUM>();
    }
  }
};

// ---------------------------------------------------------------------------------------------
// What the host launches (shared by dbl_cuda.cu and the CPU emulation, so both run the same
// instantiations with the same arguments).
// ---------------------------------------------------------------------------------------------
// The instantiations: three main paths (uint8/bool labels, 8-element vectors; options fixed) and
// the generic kernel (run-time options and label dtype, one element per slot).
template <bool GRAD>
using DbFocal = PathOpts<WF_REBAL, FOCAL_SQUARE, LABELS_BINARY, true, GRAD, kStatSumOnly>;
template <bool GRAD>
using CbFocal = PathOpts<WF_LINEAR, FOCAL_SQUARE, LABELS_BINARY, false, GRAD, kStatCountAndKind>;
template <bool GRAD>
using Bce = PathOpts<WF_LINEAR, FOCAL_OFF, LABELS_BINARY, false, GRAD, STAT_NONE>;
using Generic = PathOpts<WF_RUNTIME, FOCAL_RUNTIME, LABELS_PER_ELEMENT, true, true, kStatCountAndKind>;

// Calls f.template run<Z, V, P, T>() for the instantiation that serves launch a under plan p.
template <class F>
void dispatch(const FusedLaunch& a, const Plan& p, F&& f) {
  if (p.path == PATH_GENERIC) {
    switch (a.z_dtype) {
      case kF64: f.template run<double, 1, Generic, double>(); break;
      case kF16: f.template run<f16_t, 1, Generic, float>(); break;
      case kBF16: f.template run<bf16_t, 1, Generic, float>(); break;
      default: f.template run<float, 1, Generic, float>(); break;
    }
    return;
  }
  const auto by_path = [&](auto z) {
    using Z = decltype(z);
    const bool g = a.need_grad;
    switch (p.path) {
      case PATH_DB_FOCAL:
        g ? f.template run<Z, kVec, DbFocal<true>, float>() : f.template run<Z, kVec, DbFocal<false>, float>();
        break;
      case PATH_CB_FOCAL:
        g ? f.template run<Z, kVec, CbFocal<true>, float>() : f.template run<Z, kVec, CbFocal<false>, float>();
        break;
      default:
        g ? f.template run<Z, kVec, Bce<true>, float>() : f.template run<Z, kVec, Bce<false>, float>();
        break;
    }
  };
  switch (a.z_dtype) {
    case kF16: by_path(f16_t{}); break;
    case kBF16: by_path(bf16_t{}); break;
    default: by_path(float{}); break;
  }
}

// The kernel arguments of one pass.
template <class T>
KArgs<T> make_args(const FusedLaunch& a, const Plan& p, int pass) {
  KArgs<T> k{};
  char* ws = static_cast<char*>(a.workspace);
  k.z = a.logits;
  k.ldz = a.ldz;
  k.y = a.labels;
  k.ldy = a.ldy;
  k.y_dtype = a.y_dtype;
  k.w = static_cast<const T*>(a.weight);
  k.ws0 = a.ws0;
  k.ws1 = a.ws1;
  k.params = static_cast<const T*>(a.params);
  k.stat_tbl = k.params + static_cast<int64_t>(row_stat_param(a.reweight)) * a.C;
  k.aux = static_cast<const T*>(a.aux);
  k.loss = static_cast<T*>(a.loss);
  k.grad = a.grad;
  k.ticket = reinterpret_cast<uint32_t*>(ws);
  k.bmax = reinterpret_cast<unsigned long long*>(ws + p.off_bmax);
  k.partial = reinterpret_cast<double*>(ws + p.off_partial);
  k.rows_given = a.row_stats != nullptr;
  k.crow = a.crow;
  k.col = a.col;
  k.row_stats = k.rows_given ? static_cast<T*>(const_cast<void*>(a.row_stats)) : reinterpret_cast<T*>(ws + p.off_rows);
  k.N = a.N;
  k.C = a.C;
  k.spec = make_spec<T>(a.reweight, a.weight_norm, a.logit_reg, a.focal, a.map_alpha, a.map_beta, a.map_gamma,
                        a.cb_log_beta, a.neg_scale, a.gamma, a.scale, a.w_max);
  k.kc = elem_consts(k.spec, T(1));  // the reduction scale is read from aux on the device
  k.inv_batch = a.reweight == RW_CLASS ? static_cast<T>(1.0 / a.w_max) : T(1);  // by_batch of a class vector
  k.g = pass == PASS_STATS ? p.stats_geo : p.main_geo;
  k.pass = pass;
  k.reduction = a.reduction;
  k.need_grad = a.need_grad;
  k.asymmetric = a.asymmetric;
  k.asl = asl_consts<T>(a.gamma, a.gamma_neg, a.clip, a.smoothing, a.focus_grad);
  return k;
}

}  // namespace cuda
}  // namespace dbl
