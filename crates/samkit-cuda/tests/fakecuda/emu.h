// emu.h: just enough of the CUDA C++ language to run samkit's kernels on the CPU, for the tests of
// machines without a GPU. Force-included (g++ -include emu.h) before each kernels/*.cu.
//
// A block runs as blockDim.x fibers of one OS thread (blocks one after another); __shared__
// variables are function statics (shared by the threads of the running block); __syncthreads is a
// barrier; warp intrinsics exchange values through per-warp slots between two barriers; atomics
// are GCC atomics on host memory. Device pointers are host pointers (see driver.cpp).
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
#define __launch_bounds__(...)
#define __shared__ static
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
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {
// A kernel as the fake driver sees it: its name and a thunk taking cuLaunchKernel's parameters.
struct Kern {
    const char* name;
    void (*fn)(void**);
};
// Calls a kernel with cuLaunchKernel's parameter array: p[i] points to the value of parameter i.
template <class... A, std::size_t... I>
inline void call_with(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <class... A> inline void call(void (*f)(A...), void** p) {
    call_with(f, p, std::index_sequence_for<A...>{});
}
// The threads of a block are fibers of one OS thread (driver.cpp); a barrier yields until every
// live participant has arrived.
struct Bar {
    unsigned expected, arrived, gen;
};
void wait(Bar* b);
struct Warp {
    Bar bar;
    unsigned long long slot[32];
    unsigned width;
};
struct Block {
    Bar bar;
    int acc;
};
extern Warp* warp;
extern Block* block;
extern unsigned lane;
}  // namespace emu

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;

inline void __syncthreads() { emu::wait(&emu::block->bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(&emu::warp->bar); }

inline int __syncthreads_or(int p) {
    emu::Block* b = emu::block;
    emu::wait(&b->bar);
    if (p) b->acc = 1;
    emu::wait(&b->bar);
    const int r = b->acc;
    emu::wait(&b->bar);
    if (threadIdx.x == 0) b->acc = 0;
    emu::wait(&b->bar);
    return r;
}

namespace emu {
template <class T> inline T shfl(T v, int src, bool valid) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    Warp* w = warp;
    w->slot[lane] = bits;
    wait(&w->bar);
    T r = v;
    if (valid && src >= 0 && (unsigned)src < w->width) {
        const unsigned long long b = w->slot[src];
        std::memcpy(&r, &b, sizeof(T));
    }
    wait(&w->bar);
    return r;
}
}  // namespace emu

template <class T> inline T __shfl_down_sync(unsigned, T v, int d) { return emu::shfl(v, (int)emu::lane + d, true); }
template <class T> inline T __shfl_up_sync(unsigned, T v, int d) { return emu::shfl(v, (int)emu::lane - d, (int)emu::lane >= d); }
template <class T> inline T __shfl_xor_sync(unsigned, T v, int m) { return emu::shfl(v, (int)(emu::lane ^ (unsigned)m), true); }

inline unsigned __ballot_sync(unsigned, int p) {
    emu::Warp* w = emu::warp;
    w->slot[emu::lane] = p ? 1 : 0;
    emu::wait(&w->bar);
    unsigned r = 0;
    for (unsigned i = 0; i < w->width; i++)
        if (w->slot[i]) r |= 1u << i;
    emu::wait(&w->bar);
    return r;
}

// Provisional: the fake driver turns a trap into a failed launch (see driver.cpp).
namespace emu {
[[noreturn]] void trap();
}
[[noreturn]] inline void __trap() { emu::trap(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <class T> inline unsigned __match_any_sync(unsigned, T v) {
    static_assert(sizeof(T) <= 8, "match of at most 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    emu::Warp* w = emu::warp;
    w->slot[emu::lane] = bits;
    emu::wait(&w->bar);
    unsigned r = 0;
    for (unsigned i = 0; i < w->width; i++)
        if (w->slot[i] == bits) r |= 1u << i;
    emu::wait(&w->bar);
    return r;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
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

template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }

inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline unsigned long long atomicOr(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_or(p, v, __ATOMIC_RELAXED);
}

inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
using std::fabs;
using std::sqrt;
inline float fabsf(float x) { return std::fabs(x); }
inline float sqrtf(float x) { return std::sqrt(x); }
using std::exp;
using std::log;
inline float fmaxf(float a, float b) { return std::fmax(a, b); }
inline float tanhf(float x) { return std::tanh(x); }
inline float __int_as_float(int i) {
    float x;
    std::memcpy(&x, &i, 4);
    return x;
}
