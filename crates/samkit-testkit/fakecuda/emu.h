// emu.h: just enough of the CUDA C++ language to run samkit's kernels on the CPU, for the tests of
// machines without a GPU. Force-included (g++ -include emu.h) before each samkit-kernels/kernels/*.cu.
//
// The emulation is adversarial, so that what a sequential run would hide fails here as it could
// on the GPU (driver.cpp runs it; SAMKIT_FAKE_SEED picks the schedule):
// - A block runs as fibers of one OS thread. At every round the runnable threads resume in a
//   seeded, shuffled order, and some warps lag behind for several rounds: a read that is not
//   ordered by __syncthreads/__syncwarp after the write it needs sees poison or a stale value.
// - __shared__ variables are statics in one ELF section per kernel family, filled with 0xff bytes
//   (NaN as f32/f64) before every block; dynamic shared memory (`extern __shared__`) is not
//   emulated (it does not compile).
// - Warp collectives (__shfl*_sync, __ballot_sync, __any/__all_sync, __match_*_sync,
//   __reduce_*_sync, __syncwarp) are rendezvous of the lanes named by their mask: each lane's mask
//   must include itself, name only lanes that have not exited (on a partial last warp, the full
//   mask means the lanes that exist), and every lane of the mask must reach the same collective
//   with the same mask. Anything else fails the launch. A shuffle from a lane outside the
//   collective returns poison.
// - __trap() and every violation fail the launch (cuLaunchKernel returns an error, stderr says
//   why); the process goes on.
// Device pointers are host pointers (see driver.cpp); atomics are GCC atomics on host memory.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#ifndef __global__
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
// fake.rs preprocesses each family with its own definition, to read the bounds of each kernel.
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
// The section of the family being compiled (fake.rs defines one per family); driver.cpp poisons
// it before every block.
#ifndef EMU_SHARED_SECTION
#define EMU_SHARED_SECTION "emu_shared"
#endif
#define __shared__ static __attribute__((section(EMU_SHARED_SECTION), aligned(16)))
#define __align__(n) alignas(n)
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(16))) uint4 {
    unsigned x, y, z, w;
};
struct __attribute__((aligned(8))) uint2 {
    unsigned x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

namespace emu {
// A kernel as the fake driver sees it: its name, a thunk taking cuLaunchKernel's parameters, the
// shared-memory section of its family and its __launch_bounds__ (0: none).
struct Kern {
    const char* name;
    void (*fn)(void**);
    char* shared_begin;
    char* shared_end;
    unsigned max_threads;
    unsigned min_blocks;
};
constexpr unsigned lb(unsigned max_threads, unsigned = 0, unsigned = 0) { return max_threads; }
constexpr unsigned lb_min_blocks(unsigned, unsigned min_blocks = 0, unsigned = 0) { return min_blocks; }
// Calls a kernel with cuLaunchKernel's parameter array: p[i] points to the value of parameter i.
template <class... A, std::size_t... I>
inline void call_with(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <class... A> inline void call(void (*f)(A...), void** p) {
    call_with(f, p, std::index_sequence_for<A...>{});
}

// The warp collectives (driver.cpp resolves them).
enum Op : unsigned {
    OP_SHFL,
    OP_BALLOT,
    OP_MATCH_ANY,
    OP_MATCH_ALL,
    OP_SYNCWARP,
    OP_REDUCE_ADD,
    OP_REDUCE_MIN,
    OP_REDUCE_MAX,
    OP_REDUCE_AND,
    OP_REDUCE_OR,
    OP_REDUCE_XOR,
};
// Bits of a shuffle source lane: this lane's own value (the source is outside the width).
constexpr int SRC_SELF = -1;
// The value a shuffle reads from a lane that is not part of it (NaN as f32 or f64).
constexpr unsigned long long POISON = ~0ull;
// This lane's part of a warp collective: waits until every lane of `mask` has posted the same
// operation with the same mask, then returns this lane's result (see driver.cpp).
unsigned long long warp_op(Op op, const char* name, unsigned mask, unsigned long long value, int src);
// __syncthreads with a predicate: how many live threads passed a non-zero one (`all`: whether
// every live thread did).
unsigned block_sync(int pred, bool all = false);
// The lanes of the running thread's warp that have not exited.
unsigned active_lanes();
// The lane of the running thread in its warp.
unsigned lane_id();
// Fails the launch with a CUDA error code and a message; never returns to the kernel.
[[noreturn]] void fail(int code, const char* what);
[[noreturn]] void trap();

template <class T> inline unsigned long long bits_of(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "a warp collective moves at most 8 bytes");
    unsigned long long b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T> inline T from_bits(unsigned long long b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <class T> inline T shfl(const char* name, unsigned mask, T v, int src) {
    return from_bits<T>(warp_op(OP_SHFL, name, mask, bits_of(v), src));
}
inline bool valid_width(int w) { return w >= 1 && w <= 32 && (w & (w - 1)) == 0; }
}  // namespace emu

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

inline void __syncthreads() { (void)emu::block_sync(0); }
inline int __syncthreads_count(int p) { return (int)emu::block_sync(p); }
inline int __syncthreads_or(int p) { return emu::block_sync(p) != 0; }
inline int __syncthreads_and(int p) { return (int)emu::block_sync(p, true); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)emu::warp_op(emu::OP_SYNCWARP, "__syncwarp", mask, 0, 0); }
inline unsigned __activemask() { return emu::active_lanes(); }

template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    if (!emu::valid_width(width)) emu::fail(719, "__shfl_sync: width is not a power of two in [1, 32]");
    const int lane = (int)emu::lane_id();
    return emu::shfl("__shfl_sync", mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    if (!emu::valid_width(width)) emu::fail(719, "__shfl_down_sync: width is not a power of two in [1, 32]");
    const int lane = (int)emu::lane_id();
    const bool own = (lane & (width - 1)) + (long long)d >= width;
    return emu::shfl("__shfl_down_sync", mask, v, own ? emu::SRC_SELF : lane + (int)d);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    if (!emu::valid_width(width)) emu::fail(719, "__shfl_up_sync: width is not a power of two in [1, 32]");
    const int lane = (int)emu::lane_id();
    const bool own = (long long)(lane & (width - 1)) < (long long)d;
    return emu::shfl("__shfl_up_sync", mask, v, own ? emu::SRC_SELF : lane - (int)d);
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32) {
    if (!emu::valid_width(width)) emu::fail(719, "__shfl_xor_sync: width is not a power of two in [1, 32]");
    const int lane = (int)emu::lane_id();
    const int src = (lane ^ m) & 31;
    // A lane may read earlier groups of `width` lanes, never later ones (its own value then).
    const bool own = src >= ((lane | (width - 1)) + 1);
    return emu::shfl("__shfl_xor_sync", mask, v, own ? emu::SRC_SELF : src);
}

inline unsigned __ballot_sync(unsigned mask, int p) {
    return (unsigned)emu::warp_op(emu::OP_BALLOT, "__ballot_sync", mask, p ? 1 : 0, 0);
}
inline int __any_sync(unsigned mask, int p) {
    return emu::warp_op(emu::OP_BALLOT, "__any_sync", mask, p ? 1 : 0, 0) != 0;
}
inline int __all_sync(unsigned mask, int p) {
    return emu::warp_op(emu::OP_BALLOT, "__all_sync", mask, p ? 1 : 0, 0) == (mask & __activemask());
}
template <class T> inline unsigned __match_any_sync(unsigned mask, T v) {
    return (unsigned)emu::warp_op(emu::OP_MATCH_ANY, "__match_any_sync", mask, emu::bits_of(v), 0);
}
template <class T> inline unsigned __match_all_sync(unsigned mask, T v, int* pred) {
    const unsigned r = (unsigned)emu::warp_op(emu::OP_MATCH_ALL, "__match_all_sync", mask, emu::bits_of(v), 0);
    *pred = r != 0;
    return r;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_ADD, "__reduce_add_sync", mask, v, 0);
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_MIN, "__reduce_min_sync", mask, v, 0);
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_MAX, "__reduce_max_sync", mask, v, 0);
}
inline unsigned __reduce_and_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_AND, "__reduce_and_sync", mask, v, 0);
}
inline unsigned __reduce_or_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_OR, "__reduce_or_sync", mask, v, 0);
}
inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) {
    return (unsigned)emu::warp_op(emu::OP_REDUCE_XOR, "__reduce_xor_sync", mask, v, 0);
}

// A trap fails the launch: cuLaunchKernel returns CUDA_ERROR_LAUNCH_FAILED (driver.cpp).
[[noreturn]] inline void __trap() { emu::trap(); }
// The blocks of a launch run one after another on one OS thread: every write is visible to every
// later block, so a fence has nothing to order (a missing one cannot be caught here).
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_signal_fence(std::memory_order_seq_cst); }

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(unsigned long long x) { return __builtin_ffsll((long long)x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __clz(int x) { return __clz((unsigned)x); }
inline int __clzll(unsigned long long x) { return x ? __builtin_clzll(x) : 64; }
inline int __clzll(long long x) { return __clzll((unsigned long long)x); }
inline unsigned __brev(unsigned x) {
    x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
    x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
    x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
    x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
    return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, 4);
    return i;
}
inline float __int_as_float(int i) {
    float x;
    std::memcpy(&x, &i, 4);
    return x;
}
inline long long __double_as_longlong(double x) {
    long long i;
    std::memcpy(&i, &x, 8);
    return i;
}
inline double __longlong_as_double(long long i) {
    double x;
    std::memcpy(&x, &i, 8);
    return x;
}

template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }

// Atomics: relaxed GCC atomics (CUDA's atomics are relaxed too; fences order them).
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
namespace emu {
// Read-modify-write of any 4- or 8-byte type by compare-and-swap.
template <class F, class Op> inline F atomic_rmw(F* p, Op op) {
    F old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    F next = op(old);
    while (!__atomic_compare_exchange(p, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) next = op(old);
    return old;
}
}  // namespace emu
inline float atomicAdd(float* p, float v) {
    return emu::atomic_rmw(p, [v](float o) { return o + v; });
}
inline double atomicAdd(double* p, double v) {
    return emu::atomic_rmw(p, [v](double o) { return o + v; });
}
inline int atomicSub(int* p, int v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* p, unsigned v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* p, unsigned long long v) {
    return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}
template <class T> inline T emu_cas(T* p, T cmp, T v) {
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
inline int atomicCAS(int* p, int cmp, int v) { return emu_cas(p, cmp, v); }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { return emu_cas(p, cmp, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
    return emu_cas(p, cmp, v);
}
// ((old >= v) ? 0 : old + 1), the ticket counter of a last-block pattern.
inline unsigned atomicInc(unsigned* p, unsigned v) {
    return emu::atomic_rmw(p, [v](unsigned o) { return o >= v ? 0u : o + 1u; });
}
// (((old == 0) || (old > v)) ? v : old - 1)
inline unsigned atomicDec(unsigned* p, unsigned v) {
    return emu::atomic_rmw(p, [v](unsigned o) { return (o == 0u || o > v) ? v : o - 1u; });
}
inline int atomicMax(int* p, int v) { return emu::atomic_rmw(p, [v](auto o) { return o > v ? o : v; }); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu::atomic_rmw(p, [v](auto o) { return o > v ? o : v; }); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
    return emu::atomic_rmw(p, [v](auto o) { return o > v ? o : v; });
}
inline int atomicMin(int* p, int v) { return emu::atomic_rmw(p, [v](auto o) { return o < v ? o : v; }); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return emu::atomic_rmw(p, [v](auto o) { return o < v ? o : v; }); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    return emu::atomic_rmw(p, [v](auto o) { return o < v ? o : v; });
}
inline unsigned atomicAnd(unsigned* p, unsigned v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAnd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_and(p, v, __ATOMIC_RELAXED);
}
inline unsigned atomicOr(unsigned* p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}
inline unsigned atomicXor(unsigned* p, unsigned v) { return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicXor(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_xor(p, v, __ATOMIC_RELAXED);
}

inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
using std::fabs;
using std::sqrt;
inline float fabsf(float x) { return std::fabs(x); }
inline float sqrtf(float x) { return std::sqrt(x); }
using std::exp;
using std::log;
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float fminf(float a, float b) { return std::fmin(a, b); }
inline float tanhf(float x) { return std::tanh(x); }
