// Launch plan of the CUDA kernel: which instantiation runs, how the rows are cut into work items,
// and the layout of the reused workspace. Plain C++ (no torch, no CUDA): dbl_cuda.cu launches from
// it, and the CPU emulation (dbl_emulate.cpp) runs the same plan through the same block program,
// so CPU tests cover it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dbl_math.h"

namespace dbl {
namespace cuda {

// Storage types the kernels read directly (bool shares kU8: one byte, 0 or 1).
enum DType { kU8 = 0, kI8, kI16, kI32, kI64, kF16, kBF16, kF32, kF64 };

DBL_HD int dtype_size(int d) {
  switch (d) {
    case kU8: case kI8: return 1;
    case kI16: case kF16: case kBF16: return 2;
    case kI32: case kF32: return 4;
    default: return 8;
  }
}

struct FusedLaunch {
  const void* logits;  // N x C, unit column stride, row stride ldz (elements)
  int z_dtype;         // kF16, kBF16, kF32 or kF64; the compute dtype is kF64 for kF64, else kF32
  int64_t ldz;
  const void* labels;  // N x C, unit column stride, row stride ldy
  int y_dtype;
  int64_t ldy;
  const void* weight;  // N x C in the compute dtype with strides (ws0, ws1), or null
  int64_t ws0, ws1;
  const void* params;  // kTableRows x C class table, compute dtype
  const void* aux;     // [reduction scale, unused], compute dtype, on the device
  void* loss;          // N x C (reduction none) or a scalar, compute dtype
  void* grad;          // N x C contiguous, logits' dtype (when need_grad)
  void* workspace;     // Plan::ws_bytes bytes, 16-byte aligned; zero when first used (see Plan)
  int64_t N, C;
  int reweight, weight_norm, reduction;
  bool logit_reg, focal, need_grad;
  double map_alpha, map_beta, map_gamma, cb_log_beta, neg_scale, gamma, scale, w_max;
  // The asymmetric element form (generic kernel only): gamma is then the positives' exponent.
  bool asymmetric, focus_grad;
  double gamma_neg, clip, smoothing;
  // Given row statistics, N x 2 (count, statistic) per row in the compute dtype, or null; with them
  // the generic kernel skips its statistics and reads by_batch's 1 / batch max from aux[1].
  const void* row_stats;
  // CSR labels (generic kernel only, with row statistics given where the weights need them):
  // ``labels`` holds the stored values, row i's columns are col[crow[i] .. crow[i + 1]), ascending.
  const int64_t* crow;
  const int64_t* col;
  // The blocks the device keeps resident at once (dbl_cuda.h resident_blocks), or 0 for kMaxBlocks:
  // the grid is capped there, so each block loops over its items and its fixed costs (the block's
  // sum, the ticket) spread over them.
  int64_t max_blocks;
};

constexpr int kThreads = 256;          // threads per block
constexpr int kRounds = 8;             // vectors per thread per chunk, at most (half for fp64)
constexpr int kVec = 8;                // elements per vector of the specialised kernels
constexpr int kMaxRows = kThreads;     // rows per item, at most (row constants in shared memory)
constexpr int64_t kMaxBlocks = 4096;   // grid cap where the device's resident blocks are not given
constexpr int64_t kTargetItems = 512;  // below this many items, chunks shrink to spread the rows
constexpr int64_t kTileRows = 512;     // wide rows needing statistics: fewer rows than this -> tiles

// Blocks per SM the kernel is compiled for (__launch_bounds__: registers <= 80 for fp32, 128 for fp64).
DBL_HD constexpr int blocks_per_sm(bool fp64) { return fp64 ? 2 : 3; }

// Vector slots of one chunk, at most: a chunk's partial row statistics sit in shared memory.
DBL_HD constexpr int max_rounds(bool fp64) { return fp64 ? kRounds / 2 : kRounds; }
DBL_HD constexpr int max_slots(bool fp64) { return kThreads * max_rounds(fp64); }

// Which instantiation runs: three main paths with everything fixed at compile time (uint8/bool
// labels, 8-element vectors), and a generic one (any dtype and stride, one element per slot, the
// options as uniform run-time branches).
enum KernelPath { PATH_GENERIC = 0, PATH_DB_FOCAL = 1, PATH_CB_FOCAL = 2, PATH_BCE = 3 };

enum StatsMode { STATS_NONE = 0, STATS_BLOCK = 1, STATS_PRE = 2 };
enum Pass { PASS_MAIN = 0, PASS_STATS = 1 };

// How one launch cuts the rows. A chunk is up to `slots` vector slots (rounds per thread); an item
// is what one block does at a time:
//   packed  (vpr <= max_slots): `rows` whole rows, slot s -> row s / vpr, vector s % vpr;
//   chunked (stats in the block, wide rows): one row in `chunks` full chunks;
//   tiles   (tiles > 1): one full chunk of one row (row statistics from the STATS pass, or none).
struct Geometry {
  int stats;        // StatsMode
  int rounds;       // vectors per thread per chunk (<= max_rounds)
  int G;            // threads per row in the statistics reduction (a power of two)
  int log2G;
  int64_t slots;    // rounds * kThreads: the stride of full chunks
  int64_t vpr;      // vectors per row (C / V)
  int64_t rows;     // rows per item
  int64_t chunks;   // chunks per item
  int64_t tiles;    // items per row
  int64_t items;
  int64_t blocks;
  // A block's next item is `blocks` items on: `step_rows` rows and `step_tiles` tiles further.
  int64_t step_rows, step_tiles;
  uint32_t magic;   // s / vpr == (s * magic) >> 24 for the slots s of a packed item (0: one row)
  uint64_t tile_magic;  // b / tiles == (b * tile_magic) >> 40 for the blocks b (no division on the device)
};

struct Plan {
  int path;
  int V;            // elements per vector slot
  bool stats_pass;  // a first launch (pass STATS) writes every row's statistics
  Geometry stats_geo, main_geo;
  // Workspace: [ticket u32, pad][batch-max key u64][partials f64 x main blocks][row stats 2T x N].
  // The ticket and the key are zero between launches (the last block resets them), so the
  // workspace is zeroed once when allocated and then reused.
  size_t off_bmax, off_partial, off_rows, ws_bytes;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t gcd_pow2(int64_t a, int64_t p2) {  // gcd(a, p2) for a power of two p2
  while (p2 > 1 && a % p2 != 0) p2 /= 2;
  return p2;
}

inline int pow2_floor(int64_t x) {
  int p = 1;
  while (static_cast<int64_t>(p) * 2 <= x && p < kThreads) p *= 2;
  return p;
}

// Exact for s < 2^11 and vpr <= 2^10 (packed items): s * magic / 2^24 is s / vpr + at most 2^-13.
inline uint32_t slot_magic(int64_t vpr) { return static_cast<uint32_t>(ceil_div(int64_t(1) << 24, vpr)); }

inline void finish_geometry(Geometry& g, int64_t max_blocks) {
  g.log2G = 0;
  while ((1 << g.log2G) < g.G) ++g.log2G;
  g.slots = static_cast<int64_t>(g.rounds) * kThreads;
  g.blocks = g.items < max_blocks ? g.items : max_blocks;
  g.step_rows = g.blocks / g.tiles * g.rows;
  g.step_tiles = g.blocks % g.tiles;
  // exact while blocks * tiles < 2^40 (blocks <= kMaxBlocks = 2^12: tiles < 2^28)
  g.tile_magic = (uint64_t(1) << 40) / static_cast<uint64_t>(g.tiles) + 1;
}

// Whole rows per item (or one row in chunks when a row exceeds a chunk).
inline Geometry rows_geometry(int64_t N, int64_t vpr, int stats, bool fp64, int64_t max_blocks) {
  Geometry g{};
  g.stats = stats;
  g.vpr = vpr;
  g.tiles = 1;
  const int64_t mr = max_rounds(fp64);
  if (vpr <= max_slots(fp64)) {
    // Full chunks when there are enough rows for kTargetItems items, smaller ones otherwise.
    const int64_t want = ceil_div(N * vpr, kTargetItems * kThreads);
    int64_t rounds = want < 1 ? 1 : (want > mr ? mr : want);
    if (rounds * kThreads < vpr) rounds = ceil_div(vpr, kThreads);
    g.rows = rounds * kThreads / vpr;
    if (g.rows > kMaxRows) g.rows = kMaxRows;
    // rows * vpr a multiple of the warp size where that costs at most an eighth of the rows: the
    // last round's idle slots are then whole warps, which skip it (dbl_block.h Block::slot)
    const int64_t align = 32 / gcd_pow2(vpr, 32);
    if (g.rows >= align && (g.rows % align) * 8 <= g.rows) g.rows -= g.rows % align;
    g.rounds = static_cast<int>(ceil_div(g.rows * vpr, kThreads));
    g.chunks = 1;
    g.items = ceil_div(N, g.rows);
    int G = g.rows >= kThreads ? 1 : pow2_floor(kThreads / g.rows);
    while (G > 1 && G / 2 >= vpr) G /= 2;  // no more threads per row than slots
    g.G = G;
    g.magic = g.rows > 1 ? slot_magic(vpr) : 0;
  } else {
    g.rounds = static_cast<int>(mr);
    g.rows = 1;
    g.chunks = ceil_div(vpr, max_slots(fp64));
    g.items = N;
    g.G = kThreads;  // one row: every thread's partial, reduced over the block
    g.magic = 0;
  }
  finish_geometry(g, max_blocks);
  return g;
}

// One chunk of one row per item (rows wider than a chunk).
inline Geometry tile_geometry(int64_t N, int64_t vpr, int stats, bool fp64, int64_t max_blocks) {
  Geometry g{};
  g.stats = stats;
  g.vpr = vpr;
  g.rounds = max_rounds(fp64);
  g.G = 1;
  g.rows = 1;
  g.chunks = 1;
  g.tiles = ceil_div(vpr, max_slots(fp64));
  g.items = N * g.tiles;
  g.magic = 0;
  finish_geometry(g, max_blocks);
  return g;
}

inline bool aligned_to(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// The main path a launch qualifies for (PATH_GENERIC when none).
inline int choose_path(const FusedLaunch& a) {
  if (a.asymmetric || a.row_stats || a.crow) return PATH_GENERIC;
  if (a.z_dtype != kBF16 && a.z_dtype != kF16 && a.z_dtype != kF32) return PATH_GENERIC;
  if (a.y_dtype != kU8) return PATH_GENERIC;
  const int64_t V = kVec;
  // 8-element vectors: 16-byte logits loads (two for fp32), 8-byte label loads, aligned tables.
  const bool vec = a.C % V == 0 && a.ldz % V == 0 && a.ldy % V == 0 && aligned_to(a.logits, 16) &&
                   aligned_to(a.labels, 8) && aligned_to(a.params, 16) && aligned_to(a.loss, 16) &&
                   (!a.need_grad || aligned_to(a.grad, 16));
  if (!vec || a.C >= (int64_t(1) << 30)) return PATH_GENERIC;
  const int fk = focal_kind<double>(a.focal, a.gamma);
  const bool cb_row = a.reweight == RW_CB_AVG_W || a.reweight == RW_CB_AVG_N || a.reweight == RW_CB_MIN_N;
  if (a.reweight == RW_REBALANCE && fk == FOCAL_SQUARE && a.logit_reg) return PATH_DB_FOCAL;
  if (cb_row && fk == FOCAL_SQUARE && !a.logit_reg) return PATH_CB_FOCAL;
  if ((a.reweight == RW_NONE || a.reweight == RW_CLASS) && fk == FOCAL_OFF && !a.logit_reg) return PATH_BCE;
  return PATH_GENERIC;
}

// The vector paths address an item with 32-bit offsets from its first row.
inline bool offsets_fit_32(const FusedLaunch& a, const Geometry& g) {
  int64_t ld = a.ldz > a.ldy ? a.ldz : a.ldy;
  ld = ld > a.C ? ld : a.C;
  return g.rows <= 1 || g.rows * ld < (int64_t(1) << 31);
}

inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }

inline Plan plan_for_path(const FusedLaunch& a, int path) {
  Plan p{};
  p.path = path;
  p.V = path == PATH_GENERIC ? 1 : kVec;
  const int64_t N = a.N, vpr = ceil_div(a.C, p.V);
  const bool f64 = a.z_dtype == kF64, fits = vpr <= max_slots(f64);
  const bool row_stats = row_stat_kind(a.reweight) != STAT_NONE;
  const bool by_batch = batch_max_needs_rows(a.reweight, a.weight_norm);
  const int64_t mb = a.max_blocks > 0 ? a.max_blocks : kMaxBlocks;
  if (!row_stats || a.row_stats) {  // none needed, or given (read as a STATS pass leaves them)
    const int stats = row_stats ? STATS_PRE : STATS_NONE;
    p.main_geo = fits ? rows_geometry(N, vpr, stats, f64, mb) : tile_geometry(N, vpr, stats, f64, mb);
  } else if (!by_batch && (fits || N >= kTileRows)) {
    p.main_geo = rows_geometry(N, vpr, STATS_BLOCK, f64, mb);  // statistics inside each item
  } else {
    // by_batch needs every row's statistics before any element; few wide rows are cut into tiles
    // after a statistics pass, so that they spread over the GPU.
    p.stats_pass = true;
    p.stats_geo = rows_geometry(N, vpr, STATS_BLOCK, f64, mb);
    p.main_geo = fits ? rows_geometry(N, vpr, STATS_PRE, f64, mb) : tile_geometry(N, vpr, STATS_PRE, f64, mb);
  }
  const size_t t = a.z_dtype == kF64 ? 8 : 4;
  p.off_bmax = 8;
  p.off_partial = 16;
  p.off_rows = align16(p.off_partial + static_cast<size_t>(p.main_geo.blocks) * sizeof(double));
  p.ws_bytes = align16(p.off_rows + (p.stats_pass ? static_cast<size_t>(N) * 2 * t : 0));
  return p;
}

inline Plan make_plan(const FusedLaunch& a) {
  const int path = choose_path(a);
  Plan p = plan_for_path(a, path);
  if (path != PATH_GENERIC && !(offsets_fit_32(a, p.main_geo) && (!p.stats_pass || offsets_fit_32(a, p.stats_geo))))
    p = plan_for_path(a, PATH_GENERIC);
  return p;
}

}  // namespace cuda
}  // namespace dbl
