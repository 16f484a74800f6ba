// update.cu: pass 3 of a SAM step (samkit_core::passes::{update_pass, restore_pass}) and the
// end-of-step bookkeeping.
//
// sk_update_<opt>_<t>: w ← update(src, κ·x + b·(y − proj·x)) with src = w_old (the exact restore of
// a SAM step, fused) or w itself (a one-pass step); SGD (momentum, dampening, nesterov, weight
// decay), Adam, AdamW (amsgrad) and RMSprop (momentum, centered), maximize on all, with torch.optim
// semantics; b per segment or global; LookSAM's side output g_v = x − c·g with its per-unit ‖g_v‖²;
// OG-SAM's g2_prev ← x (flat f32), kept for the next step's extrapolation.
// When ctl->skip is set the pass only restores w ← w_old (bit-exact) and leaves every state buffer
// untouched.
// sk_restore_<t>: w ← w_old. sk_commit: the step's counters and buffer flips (one thread).
// sk_update_<opt>_<t>_fused (the fused step variant, crates/samkit-cuda/src/variants.rs): the same
// update, then the last block to finish (a ticket counter) does sk_commit's work: one launch
// instead of two, the same bits.
//
// Every kernel here whose indexing assumes a block shape traps on any other (SK_REQUIRE_BLOCK).
#include "samkit.cuh"

enum { OPT_SGD = 0, OPT_ADAM = 1, OPT_ADAMW = 2, OPT_RMSPROP = 3 };

struct UpdateArgs {
    const Unit* units;
    const u64* w;            // T table, written (read as the source when src is null)
    const u64* src;          // T table (w_old) or null
    const u64* x;            // T table: the direction's first term
    const u64* y;            // T table or null: the second term, b·(y − proj·x)
    const float* y32;        // flat f32 or null: the second term (LookSAM's g_v)
    const u64* side_g;       // T table or null: LookSAM's clean gradient
    float* side_out;         // flat f32 or null: LookSAM's g_v
    float* s0;               // flat f32 state buffers, in BaseOptimizer::state_buffers order
    float* s1;
    float* s2;
    const float* b_seg;      // per segment b, or null: ctl->b
    const float* coef_c_seg; // per segment c, or null: ctl->coef_c
    const Ctl* ctl;
    double* part;            // per unit ‖g_v‖² (with side_out)
    float* keep;             // flat f32 or null: receives x (OG-SAM's g2_prev), not on a skip
    u32 n_units;
    u32 nesterov;
    u32 centered;
    u32 has_momentum;        // SGD / RMSprop: momentum != 0
    float momentum;
    float one_m_dampening;   // SGD: 1 − dampening (BaseConsts, as every constant here)
    float weight_decay;
    float one_m_beta1;       // Adam: 1 − β1
    float beta2;
    float one_m_beta2;       // Adam: 1 − β2
    float eps;
    float wscale;            // AdamW: 1 − lr·λ
    float alpha;             // RMSprop: α
    float one_m_alpha;       // RMSprop: 1 − α
    u32 amsgrad;             // Adam: s2 = max(s2, v), the denominator from s2
    u32 maximize;            // every optimizer: the gradient is negated first (torch's maximize)
};

// The scalars of one update, read once per block from the device-resident step state.
struct Sc {
    u32 first;
    float lr;
    float step_size;
    float bc2_sqrt;
};

template <int OPT> struct Step {
    // One element: returns update(w, d), with the state in s0..s2 (BaseOptimizer::apply).
    static __device__ __forceinline__ float run(const UpdateArgs& a, const Sc& c, float w, float d, float& s0,
                                                float& s1, float& s2) {
        const float wd = a.weight_decay;
        // torch: `grad = -grad if maximize`, before the weight decay (every base optimizer).
        const float dm = a.maximize ? -d : d;
        if (OPT == OPT_SGD) {
            const float g = wd != 0.f ? dm + wd * w : dm;
            if (!a.has_momentum) return w - c.lr * g;
            const float m = c.first ? g : a.momentum * s0 + a.one_m_dampening * g;
            s0 = m;
            const float step = a.nesterov ? g + a.momentum * m : m;
            return w - c.lr * step;
        } else if (OPT == OPT_ADAM || OPT == OPT_ADAMW) {
            float g = dm;
            float wi = w;
            if (wd != 0.f) {
                if (OPT == OPT_ADAMW) wi *= a.wscale;
                else g += wd * wi;
            }
            const float mi = s0 + (g - s0) * a.one_m_beta1;
            const float vi = s1 * a.beta2 + a.one_m_beta2 * g * g;
            s0 = mi;
            s1 = vi;
            float vd = vi;
            if (a.amsgrad) {
                // torch.maximum: NaN-propagating, which fmaxf is not (a NaN step is skipped
                // before any state changes, so the two agree on every step that runs).
                vd = fmaxf(s2, vi);
                s2 = vd;
            }
            const float denom = sqrtf(vd) / c.bc2_sqrt + a.eps;
            return wi - c.step_size * (mi / denom);
        } else {
            // State after square_avg: the momentum buffer first, if any, then grad_avg.
            const float g = wd != 0.f ? dm + wd * w : dm;
            const float s = a.alpha * s0 + a.one_m_alpha * g * g;
            s0 = s;
            float avg;
            if (a.centered) {
                const float ga = a.has_momentum ? s2 : s1;
                const float m = ga + (g - ga) * a.one_m_alpha;
                if (a.has_momentum) s2 = m;
                else s1 = m;
                avg = sqrtf(s - m * m) + a.eps;
            } else {
                avg = sqrtf(s) + a.eps;
            }
            if (a.has_momentum) {
                const float bi = a.momentum * s1 + g / avg;
                s1 = bi;
                return w - c.lr * bi;
            }
            return w - c.lr * (g / avg);
        }
    }
};

template <int OPT> __device__ __forceinline__ int n_state(const UpdateArgs& a) {
    if (OPT == OPT_SGD) return a.has_momentum ? 1 : 0;
    if (OPT == OPT_RMSPROP) return 1 + (a.has_momentum ? 1 : 0) + (a.centered ? 1 : 0);
    return a.amsgrad ? 3 : 2;
}

template <class T, int OPT> __device__ __forceinline__ void update_body(const UpdateArgs& a) {
    typedef Pack<T> P;
    constexpr int N = P::N;
    __shared__ double sh[SK_WARPS];
    const Ctl* ctl = a.ctl;
    const bool skip = ctl->skip != 0;
    Sc c;
    c.first = ctl->sc_first;
    c.lr = ctl->sc_lr;
    c.step_size = ctl->sc_step_size;
    c.bc2_sqrt = ctl->sc_bc2_sqrt;
    const float ca = ctl->kappa;
    const float cp = ctl->proj;
    const int ns = n_state<OPT>(a);
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        T* w = sk_seg<T>(a.w, u);
        const T* src = a.src ? sk_seg<const T>(a.src, u) : w;
        if (skip) {
            // A skipped step: the exact restore only (a no-op for one-pass steps).
            if (a.src) {
                const bool vec = sk_al16(w) && sk_al16(src);
                const u32 npk = (u.len + N - 1) / N;
                for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
                    const u32 off = p * N;
                    const u32 cnt = min((u32)N, u.len - off);
                    const bool v = vec && cnt == (u32)N;
                    sk_st(w + off, sk_ld(src + off, cnt, v), cnt, v);
                }
            }
            continue;
        }
        const T* x = sk_seg<const T>(a.x, u);
        const T* y = a.y ? sk_seg<const T>(a.y, u) : nullptr;
        const float* y32 = a.y32 ? a.y32 + u.global : nullptr;
        const T* sg = a.side_g ? sk_seg<const T>(a.side_g, u) : nullptr;
        float* so = a.side_out ? a.side_out + u.global : nullptr;
        float* kp = a.keep ? a.keep + u.global : nullptr;
        float* s0 = ns > 0 ? a.s0 + u.global : nullptr;
        float* s1 = ns > 1 ? a.s1 + u.global : nullptr;
        float* s2 = ns > 2 ? a.s2 + u.global : nullptr;
        const float cb = a.b_seg ? a.b_seg[u.seg] : ctl->b;
        const float cc = a.coef_c_seg ? a.coef_c_seg[u.seg] : ctl->coef_c;
        const bool has_y = y || y32;
        const bool vec = sk_al16(w) && sk_al16(src) && sk_al16(x) && (!y || sk_al16(y)) && (!y32 || sk_al16(y32)) &&
                         (!sg || (sk_al16(sg) && sk_al16(so))) && (!s0 || sk_al16(s0)) && (!s1 || sk_al16(s1)) &&
                         (!s2 || sk_al16(s2)) && (!kp || sk_al16(kp));
        double gv = 0.0;
        const u32 npk = (u.len + N - 1) / N;
        for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            const P wp = sk_ld(src + off, cnt, v);
            const P xp = sk_ld(x + off, cnt, v);
            P yp;
            FPack<T> y32p;
            if (y) yp = sk_ld(y + off, cnt, v);
            if (y32) y32p = sk_ldf<T>(y32 + off, cnt, v);
            FPack<T> st0, st1, st2;
            if (s0) st0 = sk_ldf<T>(s0 + off, cnt, v);
            if (s1) st1 = sk_ldf<T>(s1 + off, cnt, v);
            if (s2) st2 = sk_ldf<T>(s2 + off, cnt, v);
            P out;
            if (sg) {
                const P gp = sk_ld(sg + off, cnt, v);
                FPack<T> o;
#pragma unroll
                for (int k = 0; k < N; k++) {
                    o.e[k] = sk_f32(xp.e[k]) - cc * sk_f32(gp.e[k]);
                    if (k < (int)cnt) gv += (double)o.e[k] * (double)o.e[k];
                }
                sk_stf<T>(so + off, o, cnt, v);
            }
            if (kp) {
                FPack<T> o;
#pragma unroll
                for (int k = 0; k < N; k++) o.e[k] = sk_f32(xp.e[k]);
                sk_stf<T>(kp + off, o, cnt, v);
            }
#pragma unroll
            for (int k = 0; k < N; k++) {
                const float xv = sk_f32(xp.e[k]);
                float d;
                if (!has_y) {
                    d = ca == 1.f ? xv : ca * xv;
                } else {
                    const float yv = y ? sk_f32(yp.e[k]) : y32p.e[k];
                    d = ca * xv + cb * (yv - cp * xv);
                }
                float t0 = s0 ? st0.e[k] : 0.f, t1 = s1 ? st1.e[k] : 0.f, t2 = s2 ? st2.e[k] : 0.f;
                out.e[k] = sk_from<T>(Step<OPT>::run(a, c, sk_f32(wp.e[k]), d, t0, t1, t2));
                if (s0) st0.e[k] = t0;
                if (s1) st1.e[k] = t1;
                if (s2) st2.e[k] = t2;
            }
            sk_st(w + off, out, cnt, v);
            if (s0) sk_stf<T>(s0 + off, st0, cnt, v);
            if (s1) sk_stf<T>(s1 + off, st1, cnt, v);
            if (s2) sk_stf<T>(s2 + off, st2, cnt, v);
        }
        if (a.part) {
            const double s = sk_block_sum<SK_BLOCK>(gv, sh);
            if (threadIdx.x == 0) a.part[ui] = s;
        }
    }
}

struct CommitArgs {
    Ctl* ctl;
    u32 fsam;          // FriendlySAM: the next m becomes current
    u32 mask_pending;  // a new mask becomes current
};

// The end of a step: counters and buffer flips (one thread).
__device__ __forceinline__ void commit_body(const CommitArgs& a) {
    Ctl* c = a.ctl;
    if (c->skip) {
        c->skipped += 1;
        return;
    }
    c->step += 1;
    c->base_steps += 1;
    if (a.fsam) {
        c->fsam_cur ^= 1u;
        c->fsam_init = 1u;
    }
    if (a.mask_pending) {
        c->mask_cur ^= 1u;
        c->mask_updates += 1;
    }
}

// MINB blocks of SK_BLOCK threads per SM at least: enough loads in flight to stream at full
// bandwidth (the compile check fails if the register cap makes ptxas spill).
#define SK_UPDATE(NAME, T, SUF, OPT, MINB)                                                           \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK, MINB) sk_update_##NAME##_##SUF(UpdateArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                                  \
        update_body<T, OPT>(a);                                                                      \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK, MINB)                                     \
        sk_update_##NAME##_##SUF##_fused(UpdateArgs a, CommitArgs c, u32* ticket) {                  \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                                  \
        update_body<T, OPT>(a);                                                                      \
        if (sk_last_block(ticket) && threadIdx.x == 0) commit_body(c);                               \
    }

// f32 packs are 4 elements, 16-bit packs 8 (with 32 bytes of each f32 state buffer), hence the
// lower floor for the latter; RMSprop carries up to three state buffers.
#define SK_UPDATE_ALL(T, SUF, M1, M2)           \
    SK_UPDATE(sgd, T, SUF, OPT_SGD, M1)         \
    SK_UPDATE(adam, T, SUF, OPT_ADAM, M2)       \
    SK_UPDATE(adamw, T, SUF, OPT_ADAMW, M2)     \
    SK_UPDATE(rmsprop, T, SUF, OPT_RMSPROP, M2)

SK_UPDATE_ALL(float, f32, 4, 3)
SK_UPDATE_ALL(__nv_bfloat16, bf16, 3, 2)
SK_UPDATE_ALL(__half, f16, 3, 2)

// ---------------------------------------------------------------------------------------------

struct RestoreArgs {
    const Unit* units;
    const u64* w;      // T table, written
    const u64* w_old;  // T table
    u32 n_units;
    u32 pad;
};

template <class T> __device__ __forceinline__ void restore_body(const RestoreArgs& a) {
    constexpr int N = Pack<T>::N;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        T* w = sk_seg<T>(a.w, u);
        const T* o = sk_seg<const T>(a.w_old, u);
        const bool vec = sk_al16(w) && sk_al16(o);
        const u32 npk = (u.len + N - 1) / N;
        for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            sk_st(w + off, sk_ld(o + off, cnt, v), cnt, v);
        }
    }
}

#define SK_RESTORE(T, SUF)                                                                     \
    extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_restore_##SUF(RestoreArgs a) { \
        SK_REQUIRE_BLOCK(SK_BLOCK);                                                          \
        restore_body<T>(a);                                                                  \
    }

SK_RESTORE(float, f32)
SK_RESTORE(__nv_bfloat16, bf16)
SK_RESTORE(__half, f16)

// ---------------------------------------------------------------------------------------------

extern "C" __global__ void sk_commit(CommitArgs a) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    commit_body(a);
}

extern "C" __global__ void sk_abi_update(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = sizeof(UpdateArgs);
    out[1] = (u32)SK_OFFSETOF(UpdateArgs, n_units);
    out[2] = sizeof(RestoreArgs);
    out[3] = sizeof(CommitArgs);
}

SK_ABI_CHECK(UpdateArgs);
SK_ABI_CHECK(RestoreArgs);
SK_ABI_CHECK(CommitArgs);
