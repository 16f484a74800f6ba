// catches.cu: deliberately broken kernels, each beside its fixed twin, for
// tests/emulator_catches.rs. Linked into the fake driver only (fake.rs, family "catches"): they
// prove that the emulator fails what a sequential CPU run would let pass. Never part of kernels/.
typedef unsigned int u32;

#define EMU_TEST_BLOCK 256

// A block reverses its slice of `in` through shared memory. The broken twin reads a slot another
// thread may not have written yet: no __syncthreads between the write and the read.
template <bool SYNC> __device__ __forceinline__ void reverse_body(const float* in, float* out) {
    __shared__ float sh[EMU_TEST_BLOCK];
    const u32 t = threadIdx.x, base = blockIdx.x * EMU_TEST_BLOCK;
    sh[t] = in[base + t];
    if (SYNC) __syncthreads();
    out[base + t] = sh[EMU_TEST_BLOCK - 1 - t];
}
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK) emu_test_reverse_nosync(const float* in, float* out) {
    reverse_body<false>(in, out);
}
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK) emu_test_reverse(const float* in, float* out) {
    reverse_body<true>(in, out);
}

// A block sums its slice twice through one shared array (two reductions in a row, as
// sk_block_sum does). The broken twin lacks the barrier between thread 0's read of the partials
// and the next reduction's writes: a warp that runs ahead overwrites a partial before thread 0
// has read it.
template <bool SYNC> __device__ __forceinline__ float two_sums_body(const float* in, float* out) {
    __shared__ float sh[EMU_TEST_BLOCK / 32];
    const u32 t = threadIdx.x, lane = t & 31, w = t >> 5;
    float r = 0.f;
    for (int round = 0; round < 2; round++) {
        float v = in[blockIdx.x * EMU_TEST_BLOCK + t] * (float)(round + 1);
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[w] = v;
        __syncthreads();
        if (t == 0) {
            float s = 0.f;
            for (int i = 0; i < EMU_TEST_BLOCK / 32; i++) s += sh[i];
            r += s;
        }
        if (SYNC) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = r;
    return r;
}
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK) emu_test_two_sums_nosync(const float* in, float* out) {
    two_sums_body<false>(in, out);
}
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK) emu_test_two_sums(const float* in, float* out) {
    two_sums_body<true>(in, out);
}

// out[i] = 2 in[i] for i < n. The broken twin writes one element past the end (`<=`).
template <bool OVERRUN> __device__ __forceinline__ void scale_body(const float* in, float* out, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (OVERRUN ? i <= n : i < n) out[i] = 2.f * (i < n ? in[i] : 0.f);
}
extern "C" __global__ void emu_test_scale_overrun(const float* in, float* out, u32 n) { scale_body<true>(in, out, n); }
extern "C" __global__ void emu_test_scale(const float* in, float* out, u32 n) { scale_body<false>(in, out, n); }

// Lane 0 and lane 16 of each warp write the sum of their half-warp (width-16 shuffles). MODE 0:
// right (the mask names the 16 lanes that take part); 1: the full mask while lanes 16-31 skip the
// shuffles (they exit instead); 2: every lane calls with the lower half's mask.
template <int MODE> __device__ __forceinline__ void half_sum_body(const u32* in, u32* out) {
    const u32 t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31;
    u32 v = in[t];
    if (MODE == 2 || lane < 16) {
        const u32 mask = MODE == 0 ? 0x0000ffffu : MODE == 1 ? 0xffffffffu : 0x0000ffffu;
        for (int o = 8; o > 0; o >>= 1) v += __shfl_down_sync(mask, v, o, 16);
        if (lane == 0) out[t / 32] = v;
    }
}
extern "C" __global__ void emu_test_half_sum(const u32* in, u32* out) { half_sum_body<0>(in, out); }
extern "C" __global__ void emu_test_half_sum_full_mask(const u32* in, u32* out) { half_sum_body<1>(in, out); }
extern "C" __global__ void emu_test_half_sum_foreign_lanes(const u32* in, u32* out) { half_sum_body<2>(in, out); }

// A kernel compiled for at most 128 threads per block (its registers are allocated for that):
// out[i] = i.
extern "C" __global__ void __launch_bounds__(128) emu_test_bounded(u32* out) {
    out[blockIdx.x * blockDim.x + threadIdx.x] = blockIdx.x * blockDim.x + threadIdx.x;
}

// Traps when `bad` is non-zero (as SK_REQUIRE_BLOCK does on a wrong block shape).
extern "C" __global__ void emu_test_trap(u32 bad, u32* out) {
    if (bad && threadIdx.x == 7) __trap();
    out[threadIdx.x] = threadIdx.x;
}

// The last-block pattern of the fused kernels: every block writes its partial sum, fences, takes
// a ticket; the block with the last ticket adds the partials in block order and resets the
// counter for the next launch.
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK)
    emu_test_ticket_sum(const u32* in, unsigned long long* part, u32* ticket, unsigned long long* total) {
    __shared__ unsigned long long sh[EMU_TEST_BLOCK / 32];
    __shared__ u32 last;
    const u32 t = threadIdx.x, lane = t & 31, w = t >> 5;
    unsigned long long v = in[blockIdx.x * EMU_TEST_BLOCK + t];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (t == 0) {
        unsigned long long s = 0;
        for (int i = 0; i < EMU_TEST_BLOCK / 32; i++) s += sh[i];
        part[blockIdx.x] = s;
        __threadfence();
        last = atomicInc(ticket, gridDim.x - 1) == gridDim.x - 1;
    }
    __syncthreads();
    if (last && t == 0) {
        __threadfence();
        unsigned long long s = 0;
        for (u32 b = 0; b < gridDim.x; b++) s += ((volatile unsigned long long*)part)[b];
        *total = s;
    }
}

// Warp-aggregated counting with __match_any_sync: each group of lanes with the same key adds its
// size once, from its lowest lane. counts[k] = how many elements have key k (keys < 8).
extern "C" __global__ void __launch_bounds__(EMU_TEST_BLOCK) emu_test_match_count(const u32* keys, u32* counts) {
    const u32 key = keys[blockIdx.x * EMU_TEST_BLOCK + threadIdx.x] & 7u;
    const unsigned peers = __match_any_sync(__activemask(), key);
    if ((threadIdx.x & 31) == (u32)(__ffs(peers) - 1)) atomicAdd(&counts[key], (u32)__popc(peers));
}
