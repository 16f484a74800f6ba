// samkit.cuh: pieces shared by every kernel family of samkit (see crates/samkit-cuda).
//
// Conventions (mirrored by crates/samkit-cuda/src/abi.rs; the `sk_abi` kernel reports the sizes so
// the host can check them when a device is opened):
// - The flat index space of a layout is cut into units: at most SK_UNIT elements, never crossing a
//   segment. A unit is processed by one block of SK_BLOCK threads; the partition depends on the
//   layout alone, so every reduction has the same shape whatever the grid size.
// - A buffer is passed as a table of per-segment base addresses (`const u64*`): a flat arena and a
//   list of separate device allocations look the same to a kernel.
// - Inside a unit, thread t handles the 16-byte packs t, t + SK_BLOCK, ... (4 f32 or 8 bf16/f16
//   elements), loaded with one 128-bit access when every buffer of the unit is 16-byte aligned and
//   element by element otherwise; the arithmetic and the summation order are the same either way.
//   128-bit accesses are streaming (ld/st.global.cs): a step touches every byte once, far more
//   bytes than L2 holds.
// - Storage is f32, bf16 or f16; arithmetic is f32, reductions are f64. Compiled with
//   --fmad=false so that every f32 expression rounds exactly as the CPU reference does.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef unsigned int u32;
typedef unsigned long long u64;

#define SK_BLOCK 256
#define SK_WARPS (SK_BLOCK / 32)
#define SK_UNIT 4096
#define SK_FIN_BLOCK 256
// Kernels whose indexing assumes a block shape (a stride of SK_BLOCK, a fixed warp count) trap
// on any other shape: a wrong launch fails loudly instead of silently skipping elements.
#define SK_REQUIRE_BLOCK(n)                      \
    do {                                         \
        if (blockDim.x != (n)) __trap();         \
    } while (0)
// The host passes its struct sizes as -DSK_ABI_SIZE_<name>=<bytes> (abi.rs); every family checks
// its structures against them at compile time.
#define SK_ABI_CHECK(T) static_assert(sizeof(T) == SK_ABI_SIZE_##T, #T " differs from crates/samkit-cuda/src/abi.rs")
// offsetof for the ABI probes (NVRTC has no <cstddef>).
#define SK_OFFSETOF(T, f) ((u32)(u64)(&((const T*)0)->f))

// ---------------------------------------------------------------------------------------------
// Shared structures
// ---------------------------------------------------------------------------------------------

enum { SK_KIND_WEIGHT = 0, SK_KIND_BIAS = 1 };

struct Unit {
    u64 global;   // offset of the unit in the flat index space
    u64 seg_off;  // offset of the unit inside its segment
    u32 seg;
    u32 len;
    u32 kind;
    u32 pad;
};

// Device-resident step state: counters, the skip decision and the scalars of a step. It never
// leaves the device inside a step.
struct Ctl {
    u64 step;          // completed steps
    u64 skipped;       // skipped steps
    u64 base_steps;    // base-optimizer updates applied
    u64 mask_updates;  // sparse-mask updates committed
    u32 skip;          // this step is skipped (a non-finite gradient was seen)
    u32 fsam_init;     // FriendlySAM's m holds a value
    u32 fsam_cur;      // FriendlySAM: slot of m (the other slot receives the next m)
    u32 mask_cur;      // Sparse SAM: slot of the committed mask
    double g_sq;       // pass-1 Σ d² (global)
    double xy;         // pass-2 <x, y>
    double yy;         // pass-2 ‖y‖²
    double gv_sq;      // LookSAM ‖g_v‖² (global)
    float scale;       // perturbation scale ρ / (‖d‖ + eps)
    float kappa;       // update direction κ·x + b·(y − proj·x): ImbSAM's κ (1 for other rules)
    float b;           // GSAM −α, ImbSAM 1, LookSAM reuse α‖g‖/‖g_v‖ (samkit_core::plan)
    float coef_c;      // LookSAM side output g_v = x − c·g
    u32 sc_first;      // base-optimizer scalars of this update
    float sc_lr;
    float sc_step_size;
    float sc_bc2_sqrt;
    float proj;        // GSAM's projection <g, g_p> / (‖g_p‖² + eps_p) (SecondPlan::Gsam)
    u32 pad;
};

// ---------------------------------------------------------------------------------------------
SK_ABI_CHECK(Unit);
SK_ABI_CHECK(Ctl);

// ---------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ float sk_f32(float x) { return x; }
__device__ __forceinline__ float sk_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float sk_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T sk_from(float x);
template <> __device__ __forceinline__ float sk_from<float>(float x) { return x; }
template <> __device__ __forceinline__ __half sk_from<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 sk_from<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__device__ __forceinline__ bool sk_nonfinite(float x) {
    return (__float_as_uint(x) & 0x7f800000u) == 0x7f800000u;
}

// Sixteen bytes of elements: the unit of a 128-bit access.
template <class T> struct __align__(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T e[N];
};

template <class T> __device__ __forceinline__ T* sk_seg(const u64* tab, const Unit& u) {
    return reinterpret_cast<T*>(tab[u.seg]) + u.seg_off;
}

__device__ __forceinline__ bool sk_al16(const void* p) {
    return (reinterpret_cast<u64>(p) & 15ull) == 0;
}

// Raw (bit-exact) load of the pack at `p`: `n` valid elements, one 128-bit access when `vec`.
template <class T> __device__ __forceinline__ Pack<T> sk_ld(const T* p, u32 n, bool vec) {
    Pack<T> r;
    if (vec) {
        *reinterpret_cast<uint4*>(&r) = __ldcs(reinterpret_cast<const uint4*>(p));
    } else {
#pragma unroll
        for (int k = 0; k < Pack<T>::N; k++) r.e[k] = k < (int)n ? p[k] : sk_from<T>(0.f);
    }
    return r;
}

template <class T> __device__ __forceinline__ void sk_st(T* p, const Pack<T>& r, u32 n, bool vec) {
    if (vec) {
        __stcs(reinterpret_cast<uint4*>(p), *reinterpret_cast<const uint4*>(&r));
    } else {
#pragma unroll
        for (int k = 0; k < Pack<T>::N; k++)
            if (k < (int)n) p[k] = r.e[k];
    }
}

// f32 buffers that travel with T-typed ones share their pack width (N elements of T).
template <class T> struct FPack {
    float e[Pack<T>::N];
};

template <class T> __device__ __forceinline__ FPack<T> sk_ldf(const float* p, u32 n, bool vec) {
    FPack<T> r;
    constexpr int N = Pack<T>::N;
    if (vec) {
#pragma unroll
        for (int k = 0; k < N; k += 4) {
            const float4 v = __ldcs(reinterpret_cast<const float4*>(p + k));
            r.e[k] = v.x;
            r.e[k + 1] = v.y;
            r.e[k + 2] = v.z;
            r.e[k + 3] = v.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < N; k++) r.e[k] = k < (int)n ? p[k] : 0.f;
    }
    return r;
}

template <class T> __device__ __forceinline__ void sk_stf(float* p, const FPack<T>& r, u32 n, bool vec) {
    constexpr int N = Pack<T>::N;
    if (vec) {
#pragma unroll
        for (int k = 0; k < N; k += 4)
            __stcs(reinterpret_cast<float4*>(p + k), make_float4(r.e[k], r.e[k + 1], r.e[k + 2], r.e[k + 3]));
    } else {
#pragma unroll
        for (int k = 0; k < N; k++)
            if (k < (int)n) p[k] = r.e[k];
    }
}

// ---------------------------------------------------------------------------------------------
// The perturbation direction T ⊙ base(g), shared by its norm (norm.cu) and the perturbation
// itself (perturb.cu), which must read the same elements the same way
// ---------------------------------------------------------------------------------------------

// base(g): g, Sparse SAM's M ⊙ g, FriendlySAM's g − σ·m, gradient centralization's g minus its
// filter's mean (perturb.cu only: the norm of a centralized step is of g).
enum { BASE_GRAD = 0, BASE_MASKED = 1, BASE_FRIENDLY = 2, BASE_CENTRAL = 3 };
// T: 1, |w|, ASAM element-wise |w| + η on weights, ASAM filter-wise ‖w_f‖ + η on weights.
// masked_asam (SK_UNFUSED_DIRECTIONS) is SAM-ON's `asam` form: M ⊙ g, T = |w| + η on weights.
enum { SCALE_ONE = 0, SCALE_ABSW = 1, SCALE_ABSW_PLUS = 2, SCALE_FILTER = 3 };

// The direction variants both families instantiate, as X(NAME, T, SUF, BASE, SCALE), and the
// storage types, as X(T, SUF): one list, so the norm and the perturbation never disagree on
// which kernels exist.
#define SK_DIRECTIONS(X, T, SUF)                    \
    X(plain, T, SUF, BASE_GRAD, SCALE_ONE)          \
    X(adaptive, T, SUF, BASE_GRAD, SCALE_ABSW)      \
    X(asam, T, SUF, BASE_GRAD, SCALE_ABSW_PLUS)     \
    X(asam_filter, T, SUF, BASE_GRAD, SCALE_FILTER) \
    X(masked, T, SUF, BASE_MASKED, SCALE_ONE)       \
    X(friendly, T, SUF, BASE_FRIENDLY, SCALE_ONE)   \
    X(friendly_adaptive, T, SUF, BASE_FRIENDLY, SCALE_ABSW)
// Directions of both families whose norm has no fused variant (the optimizer runs its two
// stages as two launches in every arrangement): SAM-ON's `asam` form, whose fused norm spilled
// 4 bytes on sm_90 for f16 (ptxas of CUDA 13), which the compile check refuses.
#define SK_UNFUSED_DIRECTIONS(X, T, SUF) X(masked_asam, T, SUF, BASE_MASKED, SCALE_ABSW_PLUS)
#define SK_STORAGE_TYPES(X) X(float, f32) X(__nv_bfloat16, bf16) X(__half, f16)

// A per-filter table (ASAM's filter scales, centralization's filter means) seen from one unit:
// element j of the unit is in filter (seg_off + j) / fl of its segment, i.e. entry (r0 + j) / fl
// of `ft` from the unit's first filter, with one 64-bit division per unit and 32-bit ones after.
struct SkFilters {
    const float* ft;  // null: no table for this unit
    u32 fl;           // elements per filter
    u32 r0;
    __device__ __forceinline__ float at(u32 j) const { return ft[(r0 + j) / fl]; }
};

__device__ __forceinline__ SkFilters sk_filters(const float* ft, const u64* ft_start, const u32* ft_len,
                                                const Unit& u) {
    SkFilters f;
    f.fl = ft_len[u.seg];
    f.ft = ft + ft_start[u.seg] + u.seg_off / f.fl;
    f.r0 = (u32)(u.seg_off % f.fl);
    return f;
}

// Sparse SAM's mask over one pack: the bitset words holding flat elements i0 .. i0 + cnt − 1 (a
// pack of N <= 64 elements spans two words at most), each loaded once per pack.
struct SkMaskPack {
    u64 i0, w0, w1;
    __device__ __forceinline__ bool bit(int k) const {
        const u64 i = i0 + k;
        const u64 word = ((i >> 6) == (i0 >> 6)) ? w0 : w1;
        return (word >> (i & 63)) & 1ull;
    }
};

template <int N> __device__ __forceinline__ SkMaskPack sk_mask_pack(const u64* mask, u64 i0, u32 cnt) {
    SkMaskPack m;
    m.i0 = i0;
    m.w0 = mask[i0 >> 6];
    m.w1 = 0;
    if ((i0 & 63) + N > 64 && ((i0 + cnt - 1) >> 6) != (i0 >> 6)) m.w1 = mask[(i0 >> 6) + 1];
    return m;
}

// ---------------------------------------------------------------------------------------------
// Deterministic block reductions (fixed shape: same bits whatever the grid)
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ double sk_warp_sum(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Sum over a block of NT threads; the result is valid in thread 0. `sh` holds NT/32 doubles.
template <int NT> __device__ __forceinline__ double sk_block_sum(double v, double* sh) {
    v = sk_warp_sum(v);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double r = 0.0;
    if (threadIdx.x == 0) {
#pragma unroll
        for (int i = 0; i < NT / 32; i++) r += sh[i];
    }
    __syncthreads();
    return r;
}

// True in every thread of the last block of the launch to get here (a ticket counter that is zero
// between launches); that block then sees what every other block wrote, and resets the counter
// for the next launch (stream order). Every thread fences its own writes before the block takes
// its ticket, so it holds whichever threads wrote the results; a block takes its ticket only when
// all its warps are done (their results written, their reads of shared state made).
__device__ __forceinline__ bool sk_last_block(u32* ticket) {
    __shared__ u32 last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(ticket, 1u) == gridDim.x - 1 ? 1u : 0u;
        if (last) *ticket = 0u;
    }
    __syncthreads();
    if (!last) return false;
    __threadfence();
    return true;
}

// ---------------------------------------------------------------------------------------------
// Bitsets, order-preserving keys and Philox4x32-10 (same conventions as samkit-core)
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ bool sk_bit(const u64* words, u64 i) { return (words[i >> 6] >> (i & 63)) & 1ull; }

// ORs the 64 bits of `x` into a bitset at bits i0 .. i0 + 63 (atomically: other warps write
// neighbouring bits of the same words); a word that would receive no bit is not touched.
__device__ __forceinline__ void sk_or_bits(u64* words, u64 i0, u64 x) {
    const u64 word = i0 >> 6;
    const u32 sh = (u32)(i0 & 63);
    const u64 lo64 = x << sh;
    if (lo64) atomicOr(&words[word], lo64);
    if (sh) {
        const u64 hi64 = x >> (64 - sh);
        if (hi64) atomicOr(&words[word + 1], hi64);
    }
}

// f32 → u32 with the same order; NaN below everything (samkit_core::select::f32_key).
__device__ __forceinline__ u32 sk_f32_key(float x) {
    if (x != x) return 0u;
    const u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

#define SK_PHILOX_M0 0xD2511F53u
#define SK_PHILOX_M1 0xCD9E8D57u
#define SK_PHILOX_W0 0x9E3779B9u
#define SK_PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ uint4 sk_philox4x32_10(uint4 c, uint2 k) {
#pragma unroll
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k.x += SK_PHILOX_W0;
            k.y += SK_PHILOX_W1;
        }
        const u32 hi0 = __umulhi(SK_PHILOX_M0, c.x), lo0 = SK_PHILOX_M0 * c.x;
        const u32 hi1 = __umulhi(SK_PHILOX_M1, c.z), lo1 = SK_PHILOX_M1 * c.z;
        c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    }
    return c;
}

// The key SSAM-D gives flat index i at mask update `update` (samkit_core::philox::index_key).
__device__ __forceinline__ u32 sk_index_key(u64 seed, u32 update, u64 i) {
    return sk_philox4x32_10(make_uint4((u32)i, (u32)(i >> 32), update, 0u),
                            make_uint2((u32)seed, (u32)(seed >> 32)))
        .x;
}

// x^n by binary powering, the same sequence of roundings as Rust's f64::powi (compiler-rt's
// __powidf2), so the Adam bias corrections match the CPU bit for bit.
__device__ __forceinline__ double sk_powi(double a, int b) {
    const bool recip = b < 0;
    double r = 1.0;
    while (true) {
        if (b & 1) r *= a;
        b /= 2;
        if (b == 0) break;
        a *= a;
    }
    return recip ? 1.0 / r : r;
}
