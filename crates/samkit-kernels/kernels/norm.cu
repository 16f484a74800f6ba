// norm.cu: the reductions of a SAM step (samkit_core::passes::{norm_pass, dot_pass}).
//
// - sk_norm_*: pass 1. Per unit Σ (T ⊙ base(g))² in f64 and the non-finite flag of g, with
//   FriendlySAM's EMA of m fused in. Variants: plain, adaptive (T = |w|), ASAM element-wise
//   (T = |w| + η on weights), ASAM filter-wise (T = ‖w_f‖ + η), masked (M ⊙ g), FriendlySAM
//   and adaptive FriendlySAM (T = |w| on its d).
// - sk_dot_*: per unit <x, y>, ‖y‖² and the non-finite flag of y (GSAM, LookSAM, pass-2 check).
// - sk_sum_*: per unit Σ y (the dot kernel's body with SUM; SSAM-L fisher's per-segment Fisher
//   sums, with sk_finalize's FIN_SEG).
// - sk_filter_norms_*: ASAM's filter scales.
// - sk_finalize: the second stage. Sums the per-unit partials in a fixed order (f64), per segment
//   when asked, ORs the flags into the skip decision and derives the step's scalars on the device.
// - sk_norm_*_fused, sk_dot_*_fused (the fused step variant, crates/samkit-cuda/src/variants.rs):
//   the same first stage, then the last block to finish (a ticket counter) runs sk_finalize's
//   body: one launch instead of two, the same bits (same partials, same fixed order and tree).
//
// Every kernel here whose indexing assumes a block shape traps on any other (SK_REQUIRE_BLOCK).
#include "samkit.cuh"

struct NormArgs {
    const Unit* units;
    const u64* g;         // T table: the gradient
    const u64* w;         // T table: the weights (scaled variants)
    const u64* chk;       // T table or null: a second buffer that must be finite (ImbSAM's head)
    float* m;             // FriendlySAM: two flat f32 slots of n elements
    const u64* mask;      // Sparse SAM: two bitset slots of `words` words
    const float* ft;      // ASAM filter-wise: the filter scales
    const u64* ft_start;  // per segment: index of its first filter in ft
    const u32* ft_len;    // per segment: elements per filter
    Ctl* ctl;
    double* part;         // per unit Σ d²
    u32* bad;             // per unit: a non-finite value was seen
    u64 n;
    u64 words;
    u32 n_units;
    u32 mask_pending;     // the mask of this step is in slot mask_cur ^ mask_pending
    float sigma;
    float lambda;
    float eta;
    u32 ema;              // FriendlySAM: write the next m
};

template <class T, int BASE, int SCALE> __device__ __forceinline__ void norm_body(const NormArgs& a) {
    typedef Pack<T> P;
    constexpr int N = P::N;
    __shared__ double sh[SK_WARPS];
    const Ctl* ctl = a.ctl;
    const bool fs_init = BASE == BASE_FRIENDLY ? ctl->fsam_init != 0 : false;
    const u32 fs_cur = BASE == BASE_FRIENDLY ? ctl->fsam_cur : 0;
    const u64* mask = BASE == BASE_MASKED ? a.mask + (u64)(ctl->mask_cur ^ a.mask_pending) * a.words : nullptr;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const T* g = sk_seg<const T>(a.g, u);
        const T* w = SCALE != SCALE_ONE ? sk_seg<const T>(a.w, u) : nullptr;
        const T* chk = a.chk ? sk_seg<const T>(a.chk, u) : nullptr;
        const float* mprev = BASE == BASE_FRIENDLY ? a.m + (u64)fs_cur * a.n + u.global : nullptr;
        float* mnext = BASE == BASE_FRIENDLY ? a.m + (u64)(fs_cur ^ 1u) * a.n + u.global : nullptr;
        bool vec = sk_al16(g) && (!w || sk_al16(w)) && (!chk || sk_al16(chk));
        if (BASE == BASE_FRIENDLY) vec = vec && sk_al16(mprev) && sk_al16(mnext);
        const bool weight = u.kind == SK_KIND_WEIGHT;
        SkFilters flt = {nullptr, 1, 0};
        if (SCALE == SCALE_FILTER && weight) flt = sk_filters(a.ft, a.ft_start, a.ft_len, u);
        double acc = 0.0;
        bool bad = false;
        const u32 npk = (u.len + N - 1) / N;
        auto pack = [&](u32 p) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            const P gp = sk_ld(g + off, cnt, v);
            P wp;
            if (SCALE != SCALE_ONE) wp = sk_ld(w + off, cnt, v);
            FPack<T> mp;
            if (BASE == BASE_FRIENDLY && fs_init) mp = sk_ldf<T>(mprev + off, cnt, v);
            SkMaskPack mk = {0, 0, 0};
            if (BASE == BASE_MASKED) mk = sk_mask_pack<N>(mask, u.global + off, cnt);
            if (chk) {
                const P cp = sk_ld(chk + off, cnt, v);
#pragma unroll
                for (int k = 0; k < N; k++) bad |= sk_nonfinite(sk_f32(cp.e[k]));
            }
            FPack<T> next;
#pragma unroll
            for (int k = 0; k < N; k++) {
                const float x = sk_f32(gp.e[k]);
                bad |= sk_nonfinite(x);
                float d = x;
                if (BASE == BASE_MASKED) d = mk.bit(k) ? x : 0.f;
                if (BASE == BASE_FRIENDLY) {
                    if (fs_init) {
                        d = x - mp.e[k] * a.sigma;
                        next.e[k] = mp.e[k] * a.lambda + x * (1.f - a.lambda);
                    } else {
                        next.e[k] = x;
                    }
                }
                if (SCALE == SCALE_ABSW) {
                    d *= fabsf(sk_f32(wp.e[k]));
                } else if (SCALE == SCALE_ABSW_PLUS) {
                    if (weight) d *= fabsf(sk_f32(wp.e[k])) + a.eta;
                } else if (SCALE == SCALE_FILTER) {
                    if (weight) d *= flt.at(off + k);
                }
                if (k < (int)cnt) acc += (double)d * (double)d;
            }
            if (BASE == BASE_FRIENDLY && a.ema) sk_stf<T>(mnext + off, next, cnt, v);
        };
        // The plain norm reads one buffer only: unrolled so that several of its packs' loads are
        // in flight per thread.
        if constexpr (BASE == BASE_GRAD && SCALE == SCALE_ONE) {
#pragma unroll 4
            for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) pack(p);
        } else {
            for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) pack(p);
        }
        const int any_bad = __syncthreads_or(bad);
        const double s = sk_block_sum<SK_BLOCK>(acc, sh);
        if (threadIdx.x == 0) {
            a.part[ui] = s;
            a.bad[ui] = any_bad ? 1u : 0u;
        }
    }
}

#define SK_NORM(NAME, T, SUF, BASE, SCALE)                                                      \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_norm_##NAME##_##SUF(NormArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                             \
        norm_body<T, BASE, SCALE>(a);                                                           \
    }

#define SK_NORM_ALL(T, SUF) SK_DIRECTIONS(SK_NORM, T, SUF) SK_UNFUSED_DIRECTIONS(SK_NORM, T, SUF)
SK_STORAGE_TYPES(SK_NORM_ALL)

// ---------------------------------------------------------------------------------------------

struct DotArgs {
    const Unit* units;
    const u64* x;  // T table or null
    const u64* y;  // T table
    double* pxy;
    double* pyy;
    u32* bad;      // per unit: y has a non-finite value
    u32 n_units;
    u32 pad;
};

// SUM: Σ y into pxy instead (x must be null; pyy is 0), for per-segment sums.
template <class T, bool SUM = false> __device__ __forceinline__ void dot_body(const DotArgs& a) {
    typedef Pack<T> P;
    constexpr int N = P::N;
    __shared__ double sh[SK_WARPS];
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const T* y = sk_seg<const T>(a.y, u);
        const T* x = a.x ? sk_seg<const T>(a.x, u) : nullptr;
        const bool vec = sk_al16(y) && (!x || sk_al16(x));
        double xy = 0.0, yy = 0.0;
        bool bad = false;
        const u32 npk = (u.len + N - 1) / N;
#pragma unroll 4
        for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            const P yp = sk_ld(y + off, cnt, v);
            P xp;
            if (x) xp = sk_ld(x + off, cnt, v);
#pragma unroll
            for (int k = 0; k < N; k++) {
                const float yv = sk_f32(yp.e[k]);
                bad |= sk_nonfinite(yv);
                if (k < (int)cnt) {
                    if (SUM) {
                        xy += (double)yv;
                    } else {
                        yy += (double)yv * (double)yv;
                        if (x) xy += (double)sk_f32(xp.e[k]) * (double)yv;
                    }
                }
            }
        }
        const int any_bad = __syncthreads_or(bad);
        const double syy = SUM ? 0.0 : sk_block_sum<SK_BLOCK>(yy, sh);
        const double sxy = (SUM || x) ? sk_block_sum<SK_BLOCK>(xy, sh) : 0.0;
        if (threadIdx.x == 0) {
            a.pxy[ui] = sxy;
            a.pyy[ui] = syy;
            a.bad[ui] = any_bad ? 1u : 0u;
        }
    }
}

#define SK_DOT(T, SUF)                                                                 \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_dot_##SUF(DotArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                  \
        dot_body<T>(a);                                                              \
    }

SK_DOT(float, f32)
SK_DOT(__nv_bfloat16, bf16)
SK_DOT(__half, f16)

#define SK_SUM(T, SUF)                                                               \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_sum_##SUF(DotArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                  \
        dot_body<T, true>(a);                                                        \
    }

SK_SUM(float, f32)
SK_SUM(__nv_bfloat16, bf16)
SK_SUM(__half, f16)

// ---------------------------------------------------------------------------------------------

// One weight segment's filters.
struct FiltSeg {
    u64 first;  // index of its first filter in t
    u64 count;  // filters in the segment
    u32 seg;
    u32 len;    // elements per filter
};

struct FiltArgs {
    const u64* w;  // T table
    const FiltSeg* segs;
    float* t;
    u64 n_filters;
    u32 n_segs;
    float eta;
};

// The segment of filter f: the last one whose first filter is <= f (binary search).
__device__ __forceinline__ FiltSeg filter_seg(const FiltArgs& a, u64 f) {
    u32 lo = 0, hi = a.n_segs;
    while (hi - lo > 1) {
        const u32 mid = (lo + hi) / 2;
        if (a.segs[mid].first <= f) lo = mid; else hi = mid;
    }
    return a.segs[lo];
}

// T_f = ‖w_f‖ + η, one warp per filter (samkit_core::passes::FilterScales).
template <class T> __device__ __forceinline__ void filter_body(const FiltArgs& a) {
    const u32 lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 f = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); f < a.n_filters; f += warps) {
        const FiltSeg s = filter_seg(a, f);
        const T* row = reinterpret_cast<const T*>(a.w[s.seg]) + (f - s.first) * (u64)s.len;
        double acc = 0.0;
        for (u32 j = lane; j < s.len; j += 32) {
            const double v = (double)sk_f32(row[j]);
            acc += v * v;
        }
        acc = sk_warp_sum(acc);
        if (lane == 0) a.t[f] = (float)(sqrt(acc) + (double)a.eta);
    }
}

extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_norms_f32(FiltArgs a) { filter_body<float>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_norms_bf16(FiltArgs a) { filter_body<__nv_bfloat16>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_norms_f16(FiltArgs a) { filter_body<__half>(a); }

// Gradient centralization's filter means (samkit_core::passes::centralized): the filter's sum in
// f64, divided by its length and rounded once, one warp per filter; w is the gradient here.
template <class T> __device__ __forceinline__ void mean_body(const FiltArgs& a) {
    const u32 lane = threadIdx.x & 31;
    const u64 warps = (u64)gridDim.x * (blockDim.x >> 5);
    for (u64 f = (u64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); f < a.n_filters; f += warps) {
        const FiltSeg s = filter_seg(a, f);
        const T* row = reinterpret_cast<const T*>(a.w[s.seg]) + (f - s.first) * (u64)s.len;
        double acc = 0.0;
        for (u32 j = lane; j < s.len; j += 32) acc += (double)sk_f32(row[j]);
        acc = sk_warp_sum(acc);
        if (lane == 0) a.t[f] = (float)(acc / (double)s.len);
    }
}

extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_means_f32(FiltArgs a) { mean_body<float>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_means_bf16(FiltArgs a) { mean_body<__nv_bfloat16>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_filter_means_f16(FiltArgs a) { mean_body<__half>(a); }

// ---------------------------------------------------------------------------------------------

enum {
    FIN_NORM = 0,    // pass 1: skip = bad; g_sq; the perturbation scale
    FIN_CHECK = 1,   // one-pass step: skip = bad; the update scalars
    FIN_LOOK1 = 2,   // LookSAM between SAM steps: skip = bad; b = α‖g‖/‖g_v‖; the update scalars
    FIN_SECOND = 3,  // pass 2: skip |= bad; the combination coefficients; the update scalars
    FIN_GV = 4,      // after a LookSAM SAM step: ‖g_v‖² (unless skipped)
    FIN_SUM = 5,     // plain reduction: g_sq = Σ pa, yy = Σ pb, skip = bad
    FIN_SEG = 6,     // per-segment sums of pa into seg_tmp only (with per_seg); the step state untouched
};
enum { RULE_PLAIN = 0, RULE_GSAM = 1, RULE_LOOKSAM = 2 };

struct FinArgs {
    const double* pa;
    const double* pb;       // or null
    const u32* bad;         // or null
    const u32* seg_units;   // n_segs + 1 entries: first unit of each segment
    Ctl* ctl;
    double* seg_tmp;        // per segment Σ pa of this reduction
    double* seg_gsq;        // per segment pass-1 ‖g‖² (LookSAM per tensor)
    double* seg_gv;         // per segment ‖g_v‖² (LookSAM per tensor)
    float* b_seg;           // per segment b (LookSAM per tensor, one-pass steps)
    float* coef_c_seg;      // per segment c (LookSAM per tensor, SAM steps)
    double eps;             // FIN_NORM: ρ / (‖d‖ + eps); FIN_SECOND (GSAM): <g, g_p> / (‖g_p‖² + eps);
                            // FIN_LOOK1 (per tensor): α‖g‖ / (‖g_v‖ + eps). From samkit_core::rules.
    double beta1;           // Adam's β1, β2 and lr as torch holds them (f64, as written)
    double beta2;
    double lr_hyper;
    u32 n_units;
    u32 n_segs;
    u32 mode;
    u32 rule;
    u32 per_seg;
    u32 adam;               // the base optimizer has Adam's bias corrections
    float rho;
    float alpha;
    float kappa;            // host-known κ and b of Ctl (FIN_CHECK, FIN_SECOND for plain rules)
    float b;
    float lr;
    u32 pad;
};

// Loads of the per-unit partials. FRESH (the fused variant): they were written by other blocks of
// the running launch, so they are read past the SM's non-coherent L1 (volatile); the values, hence
// the bits, are the same either way.
template <bool FRESH, class V> __device__ __forceinline__ V fin_ld(const V* p, u32 i) {
    return FRESH ? reinterpret_cast<const volatile V*>(p)[i] : p[i];
}

// The second stage, run by one block of SK_FIN_BLOCK threads (sk_finalize, or the last block of a
// fused first stage). `sh` holds SK_FIN_BLOCK / 32 doubles.
template <bool FRESH> __device__ __forceinline__ void fin_body(const FinArgs& a, double* sh) {
    Ctl* ctl = a.ctl;
    // Global sums: fixed strided per-thread sums, then a fixed tree.
    double sa = 0.0, sb = 0.0;
    bool bad = false;
    for (u32 i = threadIdx.x; i < a.n_units; i += SK_FIN_BLOCK) {
        sa += fin_ld<FRESH>(a.pa, i);
        if (a.pb) sb += fin_ld<FRESH>(a.pb, i);
        if (a.bad) bad |= fin_ld<FRESH>(a.bad, i) != 0;
    }
    const double A = sk_block_sum<SK_FIN_BLOCK>(sa, sh);
    const double B = a.pb ? sk_block_sum<SK_FIN_BLOCK>(sb, sh) : 0.0;
    const bool any_bad = __syncthreads_or(bad) != 0;
    // Per-segment sums: one warp per segment.
    if (a.per_seg) {
        const u32 lane = threadIdx.x & 31;
        for (u32 s = threadIdx.x >> 5; s < a.n_segs; s += SK_FIN_BLOCK / 32) {
            double v = 0.0;
            for (u32 i = a.seg_units[s] + lane; i < a.seg_units[s + 1]; i += 32) v += fin_ld<FRESH>(a.pa, i);
            v = sk_warp_sum(v);
            if (lane == 0) a.seg_tmp[s] = v;
        }
        __syncthreads();
    }
    const u32 mode = a.mode;
    // Per-segment coefficients, computed by all threads (the skip flag is not needed for them).
    bool skip = ctl->skip != 0;
    __syncthreads();
    if (mode == FIN_NORM || mode == FIN_CHECK || mode == FIN_LOOK1) skip = any_bad;
    if (mode == FIN_SECOND) skip = skip || any_bad;
    if (a.per_seg) {
        for (u32 s = threadIdx.x; s < a.n_segs; s += SK_FIN_BLOCK) {
            const double v = a.seg_tmp[s];
            if (mode == FIN_NORM) {
                a.seg_gsq[s] = v;
            } else if (mode == FIN_LOOK1) {
                // pytorch_optimizer.LookSAM adds an eps (rules::EPS_LOOKSAM) to the per-tensor ‖g_v‖.
                const double gv = sqrt(a.seg_gv[s]);
                a.b_seg[s] = gv + a.eps > 0.0 ? (float)((double)a.alpha * sqrt(v) / (gv + a.eps)) : 0.f;
            } else if (mode == FIN_SECOND && a.rule == RULE_LOOKSAM) {
                const double gg = a.seg_gsq[s];
                a.coef_c_seg[s] = gg > 0.0 ? (float)(v / gg) : 0.f;
            } else if (mode == FIN_GV && !skip) {
                a.seg_gv[s] = v;
            }
        }
    }
    if (threadIdx.x != 0) return;
    switch (mode) {
        case FIN_NORM: {
            ctl->skip = skip ? 1u : 0u;
            ctl->g_sq = A;
            const double norm = sqrt(A);
            ctl->scale = (!skip && norm > 0.0) ? (float)((double)a.rho / (norm + a.eps)) : 0.f;
            return;
        }
        case FIN_GV:
            if (!skip) ctl->gv_sq = A;
            return;
        case FIN_SEG:
            return;
        case FIN_SUM:
            ctl->skip = any_bad ? 1u : 0u;
            ctl->g_sq = A;
            ctl->yy = B;
            return;
        default:
            break;
    }
    ctl->skip = skip ? 1u : 0u;
    ctl->kappa = a.kappa;
    ctl->b = a.b;
    ctl->coef_c = 0.f;
    ctl->proj = 0.f;
    if (mode == FIN_LOOK1 && !a.per_seg) {
        const double gv = sqrt(ctl->gv_sq);
        ctl->b = gv > 0.0 ? (float)((double)a.alpha * sqrt(A) / gv) : 0.f;
    }
    if (mode == FIN_SECOND) {
        ctl->xy = A;
        ctl->yy = B;
        if (a.rule == RULE_GSAM) {
            // g_p − α·(g − proj·g_p), proj = <g, g_p> / (‖g_p‖² + eps_p): x = g_p, y = g.
            ctl->kappa = 1.f;
            ctl->b = -a.alpha;
            ctl->proj = (float)(A / (B + a.eps));
        } else if (a.rule == RULE_LOOKSAM && !a.per_seg) {
            const double gg = ctl->g_sq;
            ctl->coef_c = gg > 0.0 ? (float)(A / gg) : 0.f;
        }
    }
    // Base-optimizer scalars of update number base_steps + 1 (BaseOptimizer::scalars).
    const u64 t = ctl->base_steps + 1;
    ctl->sc_first = t == 1 ? 1u : 0u;
    ctl->sc_lr = a.lr;
    if (a.adam) {
        const double bc1 = 1.0 - sk_powi(a.beta1, (int)t);
        const double bc2 = 1.0 - sk_powi(a.beta2, (int)t);
        ctl->sc_step_size = (float)(a.lr_hyper / bc1);
        ctl->sc_bc2_sqrt = (float)sqrt(bc2);
    } else {
        ctl->sc_step_size = 0.f;
        ctl->sc_bc2_sqrt = 1.f;
    }
}

extern "C" __global__ void __launch_bounds__(SK_FIN_BLOCK) sk_finalize(FinArgs a) {
    SK_REQUIRE_BLOCK(SK_FIN_BLOCK);
    __shared__ double sh[SK_FIN_BLOCK / 32];
    fin_body<false>(a, sh);
}

// ---------------------------------------------------------------------------------------------
// The fused step variant: first stage and second stage in one launch.
// ---------------------------------------------------------------------------------------------

// The last block of the launch runs the second stage with the block it already has.
static_assert(SK_FIN_BLOCK == SK_BLOCK, "the fused second stage runs on a streaming block");

// The second stage after a first stage that wrote the partials f.pa / f.pb / f.bad.
__device__ __forceinline__ void sk_fin_tail(const FinArgs& f, u32* ticket) {
    __shared__ double sh[SK_FIN_BLOCK / 32];
    if (sk_last_block(ticket)) fin_body<true>(f, sh);
}

#define SK_NORM_FUSED(NAME, T, SUF, BASE, SCALE)                                                       \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK)                                             \
        sk_norm_##NAME##_##SUF##_fused(NormArgs a, FinArgs f, u32* ticket) {                           \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                                    \
        norm_body<T, BASE, SCALE>(a);                                                                  \
        sk_fin_tail(f, ticket);                                                                        \
    }

#define SK_NORM_FUSED_ALL(T, SUF) SK_DIRECTIONS(SK_NORM_FUSED, T, SUF)
SK_STORAGE_TYPES(SK_NORM_FUSED_ALL)

#define SK_DOT_FUSED(T, SUF)                                                                         \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_dot_##SUF##_fused(DotArgs a, FinArgs f, \
                                                                               u32* ticket) {       \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                                  \
        dot_body<T>(a);                                                                              \
        sk_fin_tail(f, ticket);                                                                      \
    }

SK_DOT_FUSED(float, f32)
SK_DOT_FUSED(__nv_bfloat16, bf16)
SK_DOT_FUSED(__half, f16)

// Sizes of the shared structures, checked by the host against its own (abi.rs).
extern "C" __global__ void sk_abi(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = sizeof(Unit);
    out[1] = sizeof(Ctl);
    out[2] = sizeof(NormArgs);
    out[3] = sizeof(DotArgs);
    out[4] = sizeof(FiltSeg);
    out[5] = sizeof(FiltArgs);
    out[6] = sizeof(FinArgs);
    out[7] = (u32)SK_OFFSETOF(Ctl, g_sq);
    out[8] = (u32)SK_OFFSETOF(Ctl, scale);
    out[9] = (u32)SK_OFFSETOF(Ctl, sc_first);
    out[10] = (u32)SK_OFFSETOF(NormArgs, n_units);
    out[11] = (u32)SK_OFFSETOF(FinArgs, eps);
}

SK_ABI_CHECK(NormArgs);
SK_ABI_CHECK(DotArgs);
SK_ABI_CHECK(FiltSeg);
SK_ABI_CHECK(FiltArgs);
SK_ABI_CHECK(FinArgs);
