// Storage types, vector loads and stores, and small device helpers of the CUDA block program
// (dbl_block.h). Every function has a device form (PTX where the instruction matters: non-coherent
// 16-byte loads, predicated stores, cvt.rn packing) and a host form for the CPU emulation.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dbl_math.h"
#include "dbl_plan.h"

#if defined(__CUDACC__)
#define DBL_BLK __device__ __forceinline__
#define DBL_NO_UNROLL _Pragma("unroll 1")
#else
#define DBL_BLK inline
#define DBL_NO_UNROLL
#endif

namespace dbl {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// Storage types and vector accesses.
// ---------------------------------------------------------------------------------------------
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };
struct alignas(16) W4 { uint32_t w[4]; };
struct alignas(8) W2 { uint32_t w[2]; };

// Loads of the inputs (read-only for the whole kernel: the non-coherent global path on the device).
template <class P>
DBL_BLK P load_raw(const void* p) {
  P v;
#if defined(__CUDA_ARCH__)
  static_assert(sizeof(P) == 16 || sizeof(P) == 8, "16- or 8-byte vectors");
  if constexpr (sizeof(P) == 16) {
    asm("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.w[0]), "=r"(v.w[1]), "=r"(v.w[2]), "=r"(v.w[3]) : "l"(p));
  } else {
    asm("ld.global.nc.v2.u32 {%0, %1}, [%2];" : "=r"(v.w[0]), "=r"(v.w[1]) : "l"(p));
  }
#else
  std::memcpy(&v, p, sizeof v);
#endif
  return v;
}

template <class P>
DBL_BLK void store_raw(void* p, const P& v) {
#if defined(__CUDA_ARCH__)
  *static_cast<P*>(p) = v;
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

// A 16-byte store under a predicate: a predicated instruction, not a branch around it.
DBL_BLK void store_if(bool pred, void* p, const W4& v) {
#if defined(__CUDA_ARCH__)
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p st.global.v4.b32 [%1], {%2, %3, %4, %5};\n}"
               :: "r"(static_cast<int>(pred)), "l"(p), "r"(v.w[0]), "r"(v.w[1]), "r"(v.w[2]), "r"(v.w[3])
               : "memory");
#else
  if (pred) std::memcpy(p, &v, sizeof v);
#endif
}

DBL_BLK float bf16_lo(uint32_t w) { return bits_float(static_cast<int32_t>(w << 16)); }
DBL_BLK float bf16_hi(uint32_t w) { return bits_float(static_cast<int32_t>(w & 0xffff0000u)); }

#if !defined(__CUDA_ARCH__)
// Host conversions, round to nearest even (as the device's cvt.rn).
inline uint32_t host_bf16(float f) {
  const uint32_t u = static_cast<uint32_t>(float_bits(f));
  if ((u & 0x7fffffffu) > 0x7f800000u) return ((u >> 16) | 0x40u) & 0xffffu;  // quiet NaN
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline uint32_t host_f16(float f) {
  const uint32_t x = static_cast<uint32_t>(float_bits(f));
  const uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf (65520 and up)
  if (ax < 0x38800000u) {                         // below 2^-14: a subnormal half, in units of 2^-24
    const float t = bits_float(static_cast<int32_t>(ax)) * 16777216.0f;
    return sign | static_cast<uint32_t>((t + 12582912.0f) - 12582912.0f);
  }
  return sign | ((ax - 0x38000000u + 0xfffu + ((ax >> 13) & 1u)) >> 13);
}
inline float host_f16_to_float(uint32_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.96046448e-08f;
    return sign ? -v : v;
  }
  return bits_float(static_cast<int32_t>(sign | (e == 31 ? 0x7f800000u : (e + 112u) << 23) | (m << 13)));
}
#endif

DBL_BLK float f16_to_float(uint32_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(static_cast<unsigned short>(h)));
  return f;
#else
  return host_f16_to_float(h);
#endif
}

// Two floats as one word of two 16-bit values (lo in the low half).
template <class Z>
DBL_BLK uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same<Z, bf16_t>::value || std::is_same<Z, f16_t>::value, "16-bit storage only");
#if defined(__CUDA_ARCH__)
  uint32_t r;
  if (std::is_same<Z, bf16_t>::value) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return std::is_same<Z, bf16_t>::value ? host_bf16(lo) | (host_bf16(hi) << 16) : host_f16(lo) | (host_f16(hi) << 16);
#endif
}

// One element of storage type Z as the compute type T, and back.
template <class T>
DBL_BLK T load_one(const float* p) { return static_cast<T>(*p); }
template <class T>
DBL_BLK T load_one(const double* p) { return static_cast<T>(*p); }
template <class T>
DBL_BLK T load_one(const bf16_t* p) { return static_cast<T>(bf16_lo(p->bits)); }
template <class T>
DBL_BLK T load_one(const f16_t* p) { return static_cast<T>(f16_to_float(p->bits)); }

template <class T>
DBL_BLK void store_one(float* p, T v) { *p = static_cast<float>(v); }
template <class T>
DBL_BLK void store_one(double* p, T v) { *p = static_cast<double>(v); }
template <class T>
DBL_BLK void store_one(bf16_t* p, T v) { p->bits = static_cast<uint16_t>(pack2<bf16_t>(static_cast<float>(v), 0.0f)); }
template <class T>
DBL_BLK void store_one(f16_t* p, T v) { p->bits = static_cast<uint16_t>(pack2<f16_t>(static_cast<float>(v), 0.0f)); }

// kVec consecutive elements (16-byte aligned): one 16-byte access for 16-bit types, two for fp32.
DBL_BLK void load8(const float* p, float (&out)[kVec]) {
  const W4 a = load_raw<W4>(p), b = load_raw<W4>(p + 4);
  for (int e = 0; e < 4; ++e) {
    out[e] = bits_float(static_cast<int32_t>(a.w[e]));
    out[e + 4] = bits_float(static_cast<int32_t>(b.w[e]));
  }
}
DBL_BLK void load8(const bf16_t* p, float (&out)[kVec]) {
  const W4 a = load_raw<W4>(p);
  for (int e = 0; e < 4; ++e) {
    out[2 * e] = bf16_lo(a.w[e]);
    out[2 * e + 1] = bf16_hi(a.w[e]);
  }
}
DBL_BLK void load8(const f16_t* p, float (&out)[kVec]) {
  const W4 a = load_raw<W4>(p);
  for (int e = 0; e < 4; ++e) {
    out[2 * e] = f16_to_float(a.w[e] & 0xffffu);
    out[2 * e + 1] = f16_to_float(a.w[e] >> 16);
  }
}
DBL_BLK void store8_if(bool pred, float* p, const float (&v)[kVec]) {
  W4 a, b;
  for (int e = 0; e < 4; ++e) {
    a.w[e] = static_cast<uint32_t>(float_bits(v[e]));
    b.w[e] = static_cast<uint32_t>(float_bits(v[e + 4]));
  }
  store_if(pred, p, a);
  store_if(pred, p + 4, b);
}
template <class Z>
DBL_BLK void store8_if(bool pred, Z* p, const float (&v)[kVec]) {
  W4 a;
  for (int e = 0; e < 4; ++e) a.w[e] = pack2<Z>(v[2 * e], v[2 * e + 1]);
  store_if(pred, p, a);
}

// A label of run-time dtype d as T (the generic kernel).
template <class T>
DBL_BLK T load_label(int d, const void* row, int64_t c) {
  switch (d) {
    case kU8: return static_cast<T>(static_cast<const uint8_t*>(row)[c]);
    case kI8: return static_cast<T>(static_cast<const int8_t*>(row)[c]);
    case kI16: return static_cast<T>(static_cast<const int16_t*>(row)[c]);
    case kI32: return static_cast<T>(static_cast<const int32_t*>(row)[c]);
    case kI64: return static_cast<T>(static_cast<const int64_t*>(row)[c]);
    case kF16: return load_one<T>(static_cast<const f16_t*>(row) + c);
    case kBF16: return load_one<T>(static_cast<const bf16_t*>(row) + c);
    case kF32: return static_cast<T>(static_cast<const float*>(row)[c]);
    default: return static_cast<T>(static_cast<const double*>(row)[c]);
  }
}

// p, as a value the compiler cannot see through: it keeps the item's base pointers in registers
// instead of re-deriving base + 64-bit row offset at every access.
template <class P>
DBL_BLK P* opaque(P* p) {
#if defined(__CUDA_ARCH__)
  asm("" : "+l"(p));
#endif
  return p;
}

// (a * b) >> 32.
DBL_BLK uint32_t mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Order-preserving key of a weight for an unsigned atomic max (0 is below every value, so a zeroed
// workspace holds "no maximum yet").
DBL_BLK unsigned long long max_key(float v) {
  const uint32_t b = static_cast<uint32_t>(float_bits(v));
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
DBL_BLK float from_max_key(unsigned long long k, float) {
  const uint32_t b = static_cast<uint32_t>(k);
  return bits_float(static_cast<int32_t>((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b));
}
DBL_BLK unsigned long long max_key(double v) {
  uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : (b | (uint64_t(1) << 63));
}
DBL_BLK double from_max_key(unsigned long long k, double) {
  const uint64_t b = (k >> 63) ? (k & ~(uint64_t(1) << 63)) : ~k;
  double v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

}  // namespace cuda
}  // namespace dbl
