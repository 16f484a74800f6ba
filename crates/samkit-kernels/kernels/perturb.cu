// perturb.cu: pass 2 of a SAM step (samkit_core::passes::perturb_pass).
//
// w_old ← w (a bit-exact copy); w ← w + s · T ⊙ (T ⊙ base(g)) for every rule's direction, with
// s = ctl->scale computed on the device from the pass-1 norm; optionally a bit-exact copy of a
// gradient the second step needs again (GSAM, LookSAM, ImbSAM); EG-SAM/OG-SAM's extrapolation
// w̃ = (w + e) − η_x·v along g or the previous pass-2 gradient, fused in (samkit_core's
// `PerturbPlan::extrapolate`: in f32, in that order). When ctl->skip is set (a
// non-finite gradient), w is left as it is and w_old still receives it, so the restore of the
// second step is exact either way. One pass over memory.
#include "samkit.cuh"

// EG-SAM/OG-SAM's extrapolation vector v (samkit_core::plan::ExtraAlong), or none.
enum { EXTRA_NONE = 0, EXTRA_GRAD = 1, EXTRA_PREV = 2 };

struct PerturbArgs {
    const Unit* units;
    const u64* w;         // T table, read and written
    const u64* w_old;     // T table, written
    const u64* g;         // T table
    const float* m;       // FriendlySAM: two flat f32 slots of n elements
    const u64* mask;      // Sparse SAM: two bitset slots of `words` words
    const float* ft;      // ASAM filter-wise scales, or gradient centralization's filter means
    const u64* ft_start;
    const u32* ft_len;    // centralization: 0 for a segment left as it is
    const u64* copy_src;  // T table or null
    const u64* copy_dst;  // T table or null
    const Ctl* ctl;
    u64 n;
    u64 words;
    u32 n_units;
    u32 mask_pending;
    float sigma;
    float eta;
    const float* prev;    // EXTRA_PREV: OG-SAM's g2_prev, flat f32 of n elements
    float eta_x;          // the extrapolation step η_x
    u32 extra;            // EXTRA_*
};

template <class T, int BASE, int SCALE> __device__ __forceinline__ void perturb_body(const PerturbArgs& a) {
    typedef Pack<T> P;
    constexpr int N = P::N;
    const Ctl* ctl = a.ctl;
    const bool skip = ctl->skip != 0;
    const float scale = ctl->scale;
    const bool fs_init = BASE == BASE_FRIENDLY ? ctl->fsam_init != 0 : false;
    const u32 fs_cur = BASE == BASE_FRIENDLY ? ctl->fsam_cur : 0;
    const u64* mask = BASE == BASE_MASKED ? a.mask + (u64)(ctl->mask_cur ^ a.mask_pending) * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        T* w = sk_seg<T>(a.w, u);
        T* wo = sk_seg<T>(a.w_old, u);
        const T* g = sk_seg<const T>(a.g, u);
        const T* cs = a.copy_src ? sk_seg<const T>(a.copy_src, u) : nullptr;
        T* cd = a.copy_dst ? sk_seg<T>(a.copy_dst, u) : nullptr;
        const float* mprev = BASE == BASE_FRIENDLY ? a.m + (u64)fs_cur * a.n + u.global : nullptr;
        const float* prev = a.extra == EXTRA_PREV ? a.prev + u.global : nullptr;
        bool vec = sk_al16(w) && sk_al16(wo) && sk_al16(g) && (!cs || (sk_al16(cs) && sk_al16(cd))) &&
                   (!prev || sk_al16(prev));
        if (BASE == BASE_FRIENDLY) vec = vec && sk_al16(mprev);
        const bool weight = u.kind == SK_KIND_WEIGHT;
        SkFilters flt = {nullptr, 1, 0};
        if (SCALE == SCALE_FILTER && weight) flt = sk_filters(a.ft, a.ft_start, a.ft_len, u);
        // Centralization (samkit_core::passes::centralized): the same lookup into the means, on
        // the segments of two or more dimensions only.
        if (BASE == BASE_CENTRAL && a.ft_len[u.seg] != 0) flt = sk_filters(a.ft, a.ft_start, a.ft_len, u);
        const u32 npk = (u.len + N - 1) / N;
        for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            P wp = sk_ld(w + off, cnt, v);
            sk_st(wo + off, wp, cnt, v);
            if (cs) sk_st(cd + off, sk_ld(cs + off, cnt, v), cnt, v);
            if (skip) continue;
            const P gp = sk_ld(g + off, cnt, v);
            FPack<T> mp;
            if (BASE == BASE_FRIENDLY && fs_init) mp = sk_ldf<T>(mprev + off, cnt, v);
            SkMaskPack mk = {0, 0, 0};
            if (BASE == BASE_MASKED) mk = sk_mask_pack<N>(mask, u.global + off, cnt);
            FPack<T> vp;
            if (prev) vp = sk_ldf<T>(prev + off, cnt, v);
#pragma unroll
            for (int k = 0; k < N; k++) {
                const float x = sk_f32(gp.e[k]);
                const float wv = sk_f32(wp.e[k]);
                float d = x;
                if (BASE == BASE_MASKED) d = mk.bit(k) ? x : 0.f;
                if (BASE == BASE_FRIENDLY && fs_init) d = x - mp.e[k] * a.sigma;
                // Lanes past the unit's end are never stored; they must not read past the means.
                if (BASE == BASE_CENTRAL && flt.ft && (u32)k < cnt) d = x - flt.at(off + k);
                if (SCALE == SCALE_ABSW) {
                    // Adaptive SAM: e = (w² ⊙ g)·s, as the reference implementations.
                    d *= wv * wv;
                } else if (SCALE == SCALE_ABSW_PLUS) {
                    if (weight) {
                        const float t = fabsf(wv) + a.eta;
                        d = t * (t * d);
                    }
                } else if (SCALE == SCALE_FILTER) {
                    if (weight) {
                        const float t = flt.at(off + k);
                        d = t * (t * d);
                    }
                }
                float wn = wv + d * scale;
                // EG-SAM/OG-SAM: then w̃ = (w + e) − η_x·v, rounded to f32 after each operation.
                if (a.extra == EXTRA_GRAD) wn = wn - a.eta_x * x;
                else if (prev) wn = wn - a.eta_x * vp.e[k];
                wp.e[k] = sk_from<T>(wn);
            }
            sk_st(w + off, wp, cnt, v);
        }
    }
}

// The SK_BLOCK stride of perturb_body assumes SK_BLOCK threads: any other shape traps.
#define SK_PERTURB(NAME, T, SUF, BASE, SCALE)                                                      \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_perturb_##NAME##_##SUF(PerturbArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                                \
        perturb_body<T, BASE, SCALE>(a);                                                           \
    }

#define SK_PERTURB_ALL(T, SUF)                                \
    SK_DIRECTIONS(SK_PERTURB, T, SUF)                         \
    SK_UNFUSED_DIRECTIONS(SK_PERTURB, T, SUF)                 \
    SK_PERTURB(centralized, T, SUF, BASE_CENTRAL, SCALE_ONE)  \
    SK_PERTURB(centralized_adaptive, T, SUF, BASE_CENTRAL, SCALE_ABSW)
SK_STORAGE_TYPES(SK_PERTURB_ALL)

extern "C" __global__ void sk_abi_perturb(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = sizeof(PerturbArgs);
    out[1] = (u32)SK_OFFSETOF(PerturbArgs, n_units);
}

SK_ABI_CHECK(PerturbArgs);
