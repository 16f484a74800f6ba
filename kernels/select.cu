// select.cu: global top-k masks (samkit_core::select, samkit_core::sparse).
//
// The k candidates with the largest 32-bit keys, ties to the lower flat index, written as a
// bitset: three radix passes (11, 11 and 10 bits) with block histograms in shared memory merged by
// integer atomics (order-free, hence deterministic), a one-warp scan per pass for the boundary
// bin, then a count of threshold-equal candidates per (unit, warp), an exclusive scan of those
// counts, and the write, where each warp ranks its threshold-equal candidates with ballots in
// flat-index order. The same set as the CPU whatever the launch: the selection is a pure function
// of the keys.
//
// Key sources: SSAM-F's Fisher scores (f32_key of f32, bf16 or f16 values), SSAM-D's drop keys (!f32_key(|g|) among live
// indices), grow keys (!philox among dead indices) and initial keys (!philox, update 0).
// sk_mask_combine writes the resulting mask into a slot chosen on the device.
#include "samkit.cuh"

enum { SRC_SCORES = 0, SRC_DROP = 1, SRC_GROW = 2, SRC_INIT = 3 };
#define SK_HIST_BINS (2048 + 2048 + 1024)

struct SelState {
    u64 k_rem;      // candidates still to take inside the current prefix
    u64 total;      // candidates
    u32 prefix;     // key bits fixed so far; the threshold after the last pass
    u32 take_all;   // k >= total: every candidate is taken
};

struct SelArgs {
    const Unit* units;
    const u64* src;   // T table: the scores (SRC_SCORES) or the gradient (SRC_DROP)
    const u64* mask;  // two bitset slots; the committed one is ctl->mask_cur
    const Ctl* ctl;
    u64* hist;        // SK_HIST_BINS counters, zeroed
    SelState* st;
    u32* eq;          // per unit and warp: threshold-equal candidates
    u64* eq_base;     // exclusive prefix sums of eq
    u64* out;         // the selected set, zeroed
    u64 seed;
    u64 words;
    u64 k;
    u32 n_units;
    u32 update;
    u32 pass;
    u32 pad;
};

__device__ __forceinline__ u32 pass_shift(u32 pass) { return pass == 0 ? 21u : pass == 1 ? 10u : 0u; }
__device__ __forceinline__ u32 pass_bins(u32 pass) { return pass == 2 ? 1024u : 2048u; }
__device__ __forceinline__ u32 pass_off(u32 pass) { return pass == 0 ? 0u : pass == 1 ? 2048u : 4096u; }

template <int SRC, class T>
__device__ __forceinline__ bool sel_key(const SelArgs& a, const u64* cur, const Unit& u, const void* base, u32 j,
                                        u32& key) {
    const u64 gi = u.global + j;
    if (SRC == SRC_SCORES) {
        key = sk_f32_key(sk_f32(reinterpret_cast<const T*>(base)[j]));
        return true;
    } else if (SRC == SRC_DROP) {
        if (!sk_bit(cur, gi)) return false;
        key = ~sk_f32_key(fabsf(sk_f32(reinterpret_cast<const T*>(base)[j])));
        return true;
    } else if (SRC == SRC_GROW) {
        if (sk_bit(cur, gi)) return false;
        key = ~sk_index_key(a.seed, a.update, gi);
        return true;
    } else {
        key = ~sk_index_key(a.seed, a.update, gi);
        return true;
    }
}

template <int SRC, class T> __device__ __forceinline__ const void* sel_base(const SelArgs& a, const Unit& u) {
    if (SRC == SRC_SCORES || SRC == SRC_DROP) return reinterpret_cast<const T*>(a.src[u.seg]) + u.seg_off;
    return nullptr;
}

template <int SRC, class T> __device__ __forceinline__ void hist_body(const SelArgs& a) {
    __shared__ u32 h[2048];
    const u32 pass = a.pass;
    u32 prefix = 0;
    if (pass > 0) {
        if (a.st->take_all) return;
        prefix = a.st->prefix;
    }
    const u32 shift = pass_shift(pass), bins = pass_bins(pass);
    const u32 hs = shift + (pass == 2 ? 10u : 11u);
    for (u32 i = threadIdx.x; i < bins; i += SK_BLOCK) h[i] = 0;
    __syncthreads();
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const void* base = sel_base<SRC, T>(a, u);
        for (u32 j = threadIdx.x; j < u.len; j += SK_BLOCK) {
            u32 key;
            if (sel_key<SRC, T>(a, cur, u, base, j, key) && (pass == 0 || (key >> hs) == (prefix >> hs)))
                atomicAdd(&h[(key >> shift) & (bins - 1)], 1u);
        }
    }
    __syncthreads();
    u64* gh = a.hist + pass_off(pass);
    for (u32 i = threadIdx.x; i < bins; i += SK_BLOCK)
        if (h[i]) atomicAdd(&gh[i], (u64)h[i]);
}

// Sub-range of a unit handled by warp w in the count and write passes: contiguous, a multiple of
// 32 elements long, in flat-index order across the warps.
__device__ __forceinline__ void warp_range(u32 len, u32 w, u32& lo, u32& hi) {
    const u32 span = ((len + SK_BLOCK - 1) / SK_BLOCK) * 32;
    lo = min(len, w * span);
    hi = min(len, lo + span);
}

template <int SRC, class T> __device__ __forceinline__ void count_body(const SelArgs& a) {
    if (a.st->take_all) return;
    const u32 thr = a.st->prefix;
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const void* base = sel_base<SRC, T>(a, u);
        u32 lo, hi;
        warp_range(u.len, w, lo, hi);
        u32 c = 0;
        for (u32 j = lo + lane; j < hi; j += 32) {
            u32 key;
            if (sel_key<SRC, T>(a, cur, u, base, j, key) && key == thr) c++;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
        if (lane == 0) a.eq[(u64)ui * SK_WARPS + w] = c;
    }
}

template <int SRC, class T> __device__ __forceinline__ void write_body(const SelArgs& a) {
    const bool take_all = a.st->take_all != 0;
    const u32 thr = a.st->prefix;
    const u64 need = a.st->k_rem;
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u32 lt = (1u << lane) - 1u;
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const void* base = sel_base<SRC, T>(a, u);
        u32 lo, hi;
        warp_range(u.len, w, lo, hi);
        u64 rank = take_all ? 0 : a.eq_base[(u64)ui * SK_WARPS + w];
        for (u32 s = lo; s < hi; s += 32) {
            const u32 j = s + lane;
            u32 key = 0;
            const bool valid = j < hi && sel_key<SRC, T>(a, cur, u, base, j, key);
            const bool eq = valid && !take_all && key == thr;
            const u32 eqb = __ballot_sync(0xffffffffu, eq);
            const u64 r = rank + (u64)__popc(eqb & lt) + 1;
            const bool take = valid && (take_all || key > thr || (eq && r <= need));
            const u32 tb = __ballot_sync(0xffffffffu, take);
            rank += (u64)__popc(eqb);
            if (lane == 0 && tb) {
                const u64 gi0 = u.global + s;
                const u64 word = gi0 >> 6;
                const u32 sh = (u32)(gi0 & 63);
                const u64 lo64 = (u64)tb << sh;
                if (lo64) atomicOr(&a.out[word], lo64);
                if (sh > 32) {
                    const u64 hi64 = (u64)tb >> (64 - sh);
                    if (hi64) atomicOr(&a.out[word + 1], hi64);
                }
            }
        }
    }
}

#define SK_SEL(NAME, SRC, T)                                                                                           \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_hist_##NAME(SelArgs a) { hist_body<SRC, T>(a); }   \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_count_##NAME(SelArgs a) { count_body<SRC, T>(a); } \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_write_##NAME(SelArgs a) { write_body<SRC, T>(a); }

SK_SEL(scores_f32, SRC_SCORES, float)
SK_SEL(scores_bf16, SRC_SCORES, __nv_bfloat16)
SK_SEL(scores_f16, SRC_SCORES, __half)
SK_SEL(drop_f32, SRC_DROP, float)
SK_SEL(drop_bf16, SRC_DROP, __nv_bfloat16)
SK_SEL(drop_f16, SRC_DROP, __half)
SK_SEL(grow, SRC_GROW, float)
SK_SEL(init, SRC_INIT, float)

__device__ __forceinline__ u64 warp_incl_scan(u64 v, u32 lane) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= (u32)o) v += t;
    }
    return v;
}

// One warp: the boundary bin of pass `a.pass` (launched with 32 threads).
extern "C" __global__ void __launch_bounds__(32) sk_sel_scan(SelArgs a) {
    const u32 lane = threadIdx.x & 31;
    const u32 pass = a.pass, bins = pass_bins(pass), shift = pass_shift(pass);
    const u64* h = a.hist + pass_off(pass);
    SelState* st = a.st;
    u64 k_rem;
    if (pass == 0) {
        u64 t = 0;
        for (u32 i = lane; i < bins; i += 32) t += h[i];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        const bool all = a.k >= t;
        if (lane == 0) {
            st->total = t;
            st->take_all = all ? 1u : 0u;
            st->prefix = 0;
            st->k_rem = a.k;
        }
        if (all) return;
        k_rem = a.k;
    } else {
        if (st->take_all) return;
        k_rem = st->k_rem;
    }
    // Lane L holds the L-th chunk of bins counted from the top.
    const u32 c = bins / 32;
    const u32 top = bins - lane * c;  // bins [top - c, top)
    u64 cs = 0;
    for (u32 b = top - c; b < top; b++) cs += h[b];
    const u64 incl = warp_incl_scan(cs, lane);
    const u64 before = incl - cs;
    const u32 hit = __ballot_sync(0xffffffffu, incl >= k_rem);
    if (hit == 0) return;  // unreachable: the prefix bin holds at least k_rem candidates
    if (lane == (u32)(__ffs(hit) - 1)) {
        u64 acc = before;
        u32 b = top;
        while (b > top - c) {
            b--;
            if (acc + h[b] >= k_rem) break;
            acc += h[b];
        }
        st->prefix = (pass == 0 ? 0u : st->prefix) | (b << shift);
        st->k_rem = k_rem - acc;
    }
}

// One block: eq_base = exclusive prefix sums of eq (n_units × SK_WARPS entries).
#define SK_SCAN_BLOCK 1024
extern "C" __global__ void __launch_bounds__(SK_SCAN_BLOCK) sk_sel_eq_scan(SelArgs a) {
    __shared__ u64 sh[SK_SCAN_BLOCK / 32];
    if (a.st->take_all) return;
    const u64 m = (u64)a.n_units * SK_WARPS;
    const u64 chunk = (m + SK_SCAN_BLOCK - 1) / SK_SCAN_BLOCK;
    const u64 lo = min(m, (u64)threadIdx.x * chunk), hi = min(m, lo + chunk);
    u64 s = 0;
    for (u64 i = lo; i < hi; i++) s += a.eq[i];
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u64 incl = warp_incl_scan(s, lane);
    if (lane == 31) sh[w] = incl;
    __syncthreads();
    if (w == 0) {
        const u64 v = sh[lane];
        sh[lane] = warp_incl_scan(v, lane) - v;
    }
    __syncthreads();
    u64 run = sh[w] + incl - s;
    for (u64 i = lo; i < hi; i++) {
        a.eq_base[i] = run;
        run += a.eq[i];
    }
}

// ---------------------------------------------------------------------------------------------

enum { COMB_TO_PENDING = 0, COMB_DROP_GROW = 1, COMB_KEEP = 2, COMB_TO_CURRENT = 3 };

struct CombArgs {
    u64* mask;      // two slots
    const u64* a;
    const u64* b;
    const Ctl* ctl;
    u64 words;
    u32 mode;
    u32 pad;
};

// TO_PENDING: pending = a. DROP_GROW: pending = current & !a | b. KEEP: pending = current.
// TO_CURRENT: current = a. The pending slot becomes current when the step commits.
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_mask_combine(CombArgs c) {
    const u32 cur = c.ctl->mask_cur;
    const u64* m = c.mask + (u64)cur * c.words;
    u64* out = c.mask + (u64)(c.mode == COMB_TO_CURRENT ? cur : cur ^ 1u) * c.words;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < c.words; i += stride) {
        u64 v;
        switch (c.mode) {
            case COMB_DROP_GROW: v = (m[i] & ~c.a[i]) | c.b[i]; break;
            case COMB_KEEP: v = m[i]; break;
            default: v = c.a[i]; break;
        }
        out[i] = v;
    }
}

extern "C" __global__ void sk_abi_select(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = sizeof(SelState);
    out[1] = sizeof(SelArgs);
    out[2] = (u32)SK_OFFSETOF(SelArgs, n_units);
    out[3] = sizeof(CombArgs);
}

SK_ABI_CHECK(SelState);
SK_ABI_CHECK(SelArgs);
SK_ABI_CHECK(CombArgs);
