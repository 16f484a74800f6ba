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
//
// Two arrangements of the same selection (crates/samkit-cuda/src/variants.rs, TopkVariant):
// sk_sel_* (Baseline) and sk_selv_* (Vectorized, below): same keys, passes, ranking and bits.
#include "samkit.cuh"

enum { SRC_SCORES = 0, SRC_DROP = 1, SRC_GROW = 2, SRC_INIT = 3 };
#define SK_HIST_BINS (2048 + 2048 + 1024)

struct SelState {
    u64 k_rem;      // candidates still to take inside the current prefix
    u64 total;      // candidates
    u32 prefix;     // key bits fixed so far; the threshold after the last pass
    u32 take_all;   // k >= total: every candidate is taken
    u32 ticket;     // Vectorized: blocks done with the current launch (0 between launches)
    u32 eq_all;     // after the last pass: every threshold-equal candidate is taken
};

struct SelArgs {
    const Unit* units;
    const u64* src;   // T table: the scores (SRC_SCORES) or the gradient (SRC_DROP); Vectorized
                      // grow and init: the key buffer (u32, unit ui at ui * SK_UNIT)
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
    SK_REQUIRE_BLOCK(SK_BLOCK);
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
// 32 elements long, in flat-index order across the warps. Assumes SK_BLOCK threads (SK_WARPS
// warps): the callers trap on any other block shape.
__device__ __forceinline__ void warp_range(u32 len, u32 w, u32& lo, u32& hi) {
    const u32 span = ((len + SK_BLOCK - 1) / SK_BLOCK) * 32;
    lo = min(len, w * span);
    hi = min(len, lo + span);
}

template <int SRC, class T> __device__ __forceinline__ void count_body(const SelArgs& a) {
    SK_REQUIRE_BLOCK(SK_BLOCK);
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
    SK_REQUIRE_BLOCK(SK_BLOCK);
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
            if (lane == 0 && tb) sk_or_bits(a.out, u.global + s, tb);
        }
    }
}

#define SK_SEL(NAME, SRC, T)                                                                                           \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_hist_##NAME(SelArgs a) { hist_body<SRC, T>(a); }   \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_count_##NAME(SelArgs a) { count_body<SRC, T>(a); } \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sel_write_##NAME(SelArgs a) { write_body<SRC, T>(a); }

// The key sources both passes (baseline and vectorized) are instantiated for, as X(NAME, SRC, T).
#define SEL_SOURCES(X)                      \
    X(scores_f32, SRC_SCORES, float)         \
    X(scores_bf16, SRC_SCORES, __nv_bfloat16) \
    X(scores_f16, SRC_SCORES, __half)        \
    X(drop_f32, SRC_DROP, float)             \
    X(drop_bf16, SRC_DROP, __nv_bfloat16)    \
    X(drop_f16, SRC_DROP, __half)            \
    X(grow, SRC_GROW, float)                 \
    X(init, SRC_INIT, float)

SEL_SOURCES(SK_SEL)

__device__ __forceinline__ u64 warp_incl_scan(u64 v, u32 lane) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= (u32)o) v += t;
    }
    return v;
}

// One warp (all 32 lanes): the boundary bin of pass `a.pass` from the merged histogram. Lane L
// sums the L-th chunk of bins counted from the top; the first lane whose inclusive sum reaches
// k_rem holds the boundary bin and alone writes the new prefix and k_rem (pass 0: lane 0 alone
// writes the totals, and the prefix only when every candidate is taken). The histogram is read
// through a volatile pointer: in the Vectorized variant other blocks of the same launch wrote it.
__device__ __forceinline__ void sel_scan_warp(const SelArgs& a, u32 lane) {
    const u32 pass = a.pass, bins = pass_bins(pass), shift = pass_shift(pass);
    const volatile u64* h = a.hist + pass_off(pass);
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
            if (all) {
                st->prefix = 0;
                st->k_rem = a.k;
            }
        }
        if (all) return;
        k_rem = a.k;
    } else {
        if (st->take_all) return;
        k_rem = st->k_rem;
    }
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
        // After the last pass: the threshold bin holds exactly the candidates still to take.
        if (pass == 2) st->eq_all = h[b] == k_rem - acc ? 1u : 0u;
    }
}

// Baseline: one warp, launched with 32 threads after each histogram pass.
extern "C" __global__ void __launch_bounds__(32) sk_sel_scan(SelArgs a) {
    SK_REQUIRE_BLOCK(32);
    sel_scan_warp(a, threadIdx.x & 31);
}

// One block of NT threads: eq_base = exclusive prefix sums of eq (n_units × SK_WARPS entries).
// `eq` is read through a volatile pointer (Vectorized: other blocks of the launch wrote it).
template <int NT> __device__ __forceinline__ void eq_scan_block(const SelArgs& a, u64* sh) {
    const volatile u32* eq = a.eq;
    const u64 m = (u64)a.n_units * SK_WARPS;
    const u64 chunk = (m + NT - 1) / NT;
    const u64 lo = min(m, (u64)threadIdx.x * chunk), hi = min(m, lo + chunk);
    u64 s = 0;
    for (u64 i = lo; i < hi; i++) s += eq[i];
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u64 incl = warp_incl_scan(s, lane);
    if (lane == 31) sh[w] = incl;
    __syncthreads();
    if (w == 0) {
        const u64 v = lane < NT / 32 ? sh[lane] : 0;
        const u64 ex = warp_incl_scan(v, lane) - v;
        if (lane < NT / 32) sh[lane] = ex;
    }
    __syncthreads();
    u64 run = sh[w] + incl - s;
    for (u64 i = lo; i < hi; i++) {
        a.eq_base[i] = run;
        run += eq[i];
    }
}

// Baseline: one block of SK_SCAN_BLOCK threads.
#define SK_SCAN_BLOCK 1024
extern "C" __global__ void __launch_bounds__(SK_SCAN_BLOCK) sk_sel_eq_scan(SelArgs a) {
    SK_REQUIRE_BLOCK(SK_SCAN_BLOCK);
    __shared__ u64 sh[SK_SCAN_BLOCK / 32];
    if (a.st->take_all) return;
    eq_scan_block<SK_SCAN_BLOCK>(a, sh);
}

// =============================================================================================
// Variant (c), TopkVariant::Vectorized: the same selection with fewer launches and atomics.
// - Keys are loaded 16 bytes at a time (4 f32 or 8 bf16/f16 scores or gradients, 4 u32 keys),
//   with the default cache policy: the five passes re-read the same bytes, which L2 may keep.
// - Histogram updates are aggregated per warp: the lanes whose keys fall in one bin
//   (__match_any_sync) add their count with one shared-memory atomic.
// - The boundary-bin scan runs in the last block to finish each histogram pass, the eq-count
//   scan in the last block of the count pass (a ticket counter, SelState::ticket): no one-warp
//   or one-block launches. Integer sums, hence the same result whatever block finishes last.
// - SSAM-D's Philox keys (grow, the initial mask) are computed once per mask update, by pass 0,
//   into the key buffer (unit ui at ui * SK_UNIT: every pack 16-byte aligned); passes 1 and 2,
//   the count and the write load them.
// - When the threshold bin holds exactly the candidates still to take (the common case for
//   continuous scores), the count pass does nothing and the write takes key >= threshold.
// Every loop around a warp intrinsic is warp-uniform: the 32 lanes take part with a full mask.

#define SK_FULL 0xffffffffu

// A 16-byte load with the default cache policy, or element by element.
template <class T> __device__ __forceinline__ Pack<T> sel_ld(const T* p, u32 n, bool vec) {
    Pack<T> r;
    if (vec) {
        *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
    } else {
#pragma unroll
        for (int k = 0; k < Pack<T>::N; k++) r.e[k] = k < (int)n ? p[k] : sk_from<T>(0.f);
    }
    return r;
}

// Bits i0 .. i0 + n - 1 of a bitset (n <= 8, every index inside the bitset).
__device__ __forceinline__ u32 sel_bits(const u64* w, u64 i0, u32 n) {
    const u64 wi = i0 >> 6;
    const u32 sh = (u32)(i0 & 63);
    u64 v = w[wi] >> sh;
    if (sh + n > 64) v |= w[wi + 1] << (64 - sh);
    return (u32)v & ((1u << n) - 1u);
}

// The keys of pack p of unit ui (elements p·N .. p·N + N − 1 of the unit, those below `end`)
// and which of them are candidates (bit k: element p·N + k). `fill`: pass 0 of the Philox
// sources computes the keys and stores them; later passes load them.
template <int SRC, class T, int N>
__device__ __forceinline__ u32 sel_vkeys(const SelArgs& a, const u64* cur, const Unit& u, u32 ui, u32 p, u32 end,
                                         bool fill, u32 (&key)[N]) {
    static_assert(N == Pack<T>::N, "one pack of T");
    static_assert(SRC == SRC_SCORES || SRC == SRC_DROP || N == 4, "keys are packed 4 to 16 bytes");
    const u32 off = p * N;
    if (off >= end) {
#pragma unroll
        for (int k = 0; k < N; k++) key[k] = 0;
        return 0;
    }
    const u32 cnt = min((u32)N, end - off);
    u32 valid = (1u << cnt) - 1u;
    if (SRC == SRC_SCORES || SRC == SRC_DROP) {
        const T* base = reinterpret_cast<const T*>(a.src[u.seg]) + u.seg_off + off;
        const Pack<T> pk = sel_ld(base, cnt, cnt == (u32)N && sk_al16(base));
#pragma unroll
        for (int k = 0; k < N; k++) {
            const float x = sk_f32(pk.e[k]);
            key[k] = SRC == SRC_SCORES ? sk_f32_key(x) : ~sk_f32_key(fabsf(x));
        }
    } else {
        u32* kb = reinterpret_cast<u32*>(const_cast<u64*>(a.src)) + (u64)ui * SK_UNIT + off;
        if (fill) {
            // The whole pack, also past the unit's end: it stays inside the unit's slot.
#pragma unroll
            for (int k = 0; k < N; k++) key[k] = ~sk_index_key(a.seed, a.update, u.global + off + k);
            *reinterpret_cast<uint4*>(kb) = make_uint4(key[0], key[1], key[2], key[3]);
        } else {
            const uint4 v = *reinterpret_cast<const uint4*>(kb);
            key[0] = v.x;
            key[1] = v.y;
            key[2] = v.z;
            key[3] = v.w;
        }
    }
    if (SRC == SRC_DROP) valid &= sel_bits(cur, u.global + off, cnt);
    if (SRC == SRC_GROW) valid &= ~sel_bits(cur, u.global + off, cnt);
    return valid;
}

template <int SRC, class T> __device__ __forceinline__ void vhist_body(const SelArgs& a) {
    SK_REQUIRE_BLOCK(SK_BLOCK);
    constexpr int N = Pack<T>::N;
    __shared__ u32 h[2048];
    const u32 pass = a.pass;
    u32 prefix = 0;
    if (pass > 0) {
        if (a.st->take_all) return;
        prefix = a.st->prefix;
    }
    const u32 shift = pass_shift(pass), bins = pass_bins(pass);
    const u32 hs = pass == 0 ? 0u : shift + (pass == 2 ? 10u : 11u);
    for (u32 i = threadIdx.x; i < bins; i += SK_BLOCK) h[i] = 0;
    __syncthreads();
    const u32 lane = threadIdx.x & 31;
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const u32 npk = (u.len + N - 1) / N;
        for (u32 p0 = threadIdx.x - lane; p0 < npk; p0 += SK_BLOCK) {
            u32 key[N];
            u32 valid = sel_vkeys<SRC, T, N>(a, cur, u, ui, p0 + lane, u.len, pass == 0, key);
            if (pass > 0) {
#pragma unroll
                for (int k = 0; k < N; k++)
                    if ((key[k] >> hs) != (prefix >> hs)) valid &= ~(1u << k);
            }
            // Passes 1 and 2: most warps hold no key inside the prefix.
            if (__ballot_sync(SK_FULL, valid != 0) == 0) continue;
#pragma unroll
            for (int k = 0; k < N; k++) {
                const bool on = (valid >> k) & 1u;
                const u32 bin = on ? (key[k] >> shift) & (bins - 1) : 0xffffffffu;
                const u32 peers = __match_any_sync(SK_FULL, bin);
                if (on && lane == (u32)(__ffs(peers) - 1)) atomicAdd(&h[bin], (u32)__popc(peers));
            }
        }
    }
    __syncthreads();
    u64* gh = a.hist + pass_off(pass);
    for (u32 i = threadIdx.x; i < bins; i += SK_BLOCK)
        if (h[i]) atomicAdd(&gh[i], (u64)h[i]);
    if (sk_last_block(&a.st->ticket) && threadIdx.x < 32) sel_scan_warp(a, threadIdx.x);
}

template <int SRC, class T> __device__ __forceinline__ void vcount_body(const SelArgs& a) {
    SK_REQUIRE_BLOCK(SK_BLOCK);
    constexpr int N = Pack<T>::N;
    __shared__ u64 sh[SK_WARPS];
    if (a.st->take_all || a.st->eq_all) return;
    const u32 thr = a.st->prefix;
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        u32 lo, hi;
        warp_range(u.len, w, lo, hi);
        u32 c = 0;
        for (u32 p = lo / N + lane; p * N < hi; p += 32) {
            u32 key[N];
            const u32 v = sel_vkeys<SRC, T, N>(a, cur, u, ui, p, hi, false, key);
#pragma unroll
            for (int k = 0; k < N; k++) c += ((v >> k) & 1u) && key[k] == thr ? 1u : 0u;
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(SK_FULL, c, o);
        if (lane == 0) a.eq[(u64)ui * SK_WARPS + w] = c;
    }
    if (sk_last_block(&a.st->ticket)) eq_scan_block<SK_BLOCK>(a, sh);
}

// Bit i of x (i < 64/N) to bit N·i.
template <int N> __device__ __forceinline__ u64 sel_spread(u32 v) {
    u64 x = v;
    if (N == 4) {
        x &= 0xffffull;
        x = (x | (x << 24)) & 0x000000ff000000ffull;
        x = (x | (x << 12)) & 0x000f000f000f000full;
        x = (x | (x << 6)) & 0x0303030303030303ull;
        x = (x | (x << 3)) & 0x1111111111111111ull;
    } else {
        x &= 0xffull;
        x = (x | (x << 28)) & 0x0000000f0000000full;
        x = (x | (x << 14)) & 0x0003000300030003ull;
        x = (x | (x << 7)) & 0x0101010101010101ull;
    }
    return x;
}

template <int SRC, class T> __device__ __forceinline__ void vwrite_body(const SelArgs& a) {
    SK_REQUIRE_BLOCK(SK_BLOCK);
    constexpr int N = Pack<T>::N;
    constexpr u32 L = 64 / N;  // lanes whose packs make one 64-bit word of the result
    const bool take_all = a.st->take_all != 0;
    const bool eq_all = !take_all && a.st->eq_all != 0;
    const bool rank_eq = !take_all && !eq_all;
    const u32 thr = a.st->prefix;
    const u64 need = a.st->k_rem;
    const u32 lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const u64* cur = a.mask ? a.mask + (u64)a.ctl->mask_cur * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        u32 lo, hi;
        warp_range(u.len, w, lo, hi);
        u64 rank = rank_eq ? a.eq_base[(u64)ui * SK_WARPS + w] : 0;
        for (u32 s = lo; s < hi; s += 32 * N) {
            u32 key[N];
            const u32 v = sel_vkeys<SRC, T, N>(a, cur, u, ui, s / N + lane, hi, false, key);
            u32 take = 0, eqm = 0;
#pragma unroll
            for (int k = 0; k < N; k++) {
                if (!((v >> k) & 1u)) continue;
                if (take_all || key[k] > thr)
                    take |= 1u << k;
                else if (key[k] == thr)
                    eqm |= 1u << k;
            }
            if (rank_eq) {
                // Threshold-equal candidates ranked in flat-index order: lane by lane, then k.
                const u64 c = (u64)__popc(eqm);
                const u64 incl = warp_incl_scan(c, lane);
                u64 tot = c;
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) tot += __shfl_xor_sync(SK_FULL, tot, o);
                u64 r = rank + incl - c;
#pragma unroll
                for (int k = 0; k < N; k++) {
                    if (!((eqm >> k) & 1u)) continue;
                    r++;
                    if (r <= need) take |= 1u << k;
                }
                rank += tot;
            } else {
                take |= eqm;
            }
            u32 b[N];
#pragma unroll
            for (int k = 0; k < N; k++) b[k] = __ballot_sync(SK_FULL, (take >> k) & 1u);
            // Lane m < N/2 assembles the word of elements s + 64·m .. s + 64·m + 63.
            if (lane < (u32)(N / 2)) {
                u64 x = 0;
#pragma unroll
                for (int k = 0; k < N; k++) x |= sel_spread<N>((b[k] >> (lane * L)) & ((1u << L) - 1u)) << k;
                if (x) sk_or_bits(a.out, u.global + s + (u64)lane * 64, x);
            }
        }
    }
}

#define SK_SELV(NAME, SRC, T)                                                                                            \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_selv_hist_##NAME(SelArgs a) { vhist_body<SRC, T>(a); }   \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_selv_count_##NAME(SelArgs a) { vcount_body<SRC, T>(a); } \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_selv_write_##NAME(SelArgs a) { vwrite_body<SRC, T>(a); }

SEL_SOURCES(SK_SELV)

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
