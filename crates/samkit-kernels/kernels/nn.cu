// nn.cu: the small kernels of samkit-nn's CUDA backend (crates/samkit-nn/src/cuda): everything a
// ResNet-18 or an MLP needs beside cuDNN's convolutions and batch norm and cuBLAS's GEMMs.
//
// Conventions (mirrored by crates/samkit-cuda/src/abi.rs, which declares the argument structs
// field for field, and crates/samkit-nn/src/cuda/kernels.rs, which launches them):
// - Activations are NCHW f32, contiguous.
// - Every kernel takes one argument struct by value, 8-byte fields (device pointers, 64-bit
//   counts, doubles) first; element counts that index a whole activation are u64, dimensions
//   u32. The struct sizes are checked against the host's with static_assert when this file
//   compiles (-DSK_ABI_SIZE_<name>, from abi.rs) and reported with key offsets and NN_BLOCK by
//   the sk_abi_nn probe, which samkit-cuda runs when it loads the family.
// - Element-wise kernels are grid-stride loops over 64-bit indices with NN_BLOCK threads; their
//   results do not depend on the grid. Reductions that the CPU backend does in f64 are done in
//   f64 here too, in a fixed order per output (the same bits whatever the grid). Every kernel
//   traps on another block shape (its indexing assumes NN_BLOCK).
// - Built with the options of samkit-cuda (`--fmad=false`, IEEE division and square root), so
//   f32 expressions round as the CPU backend's do.
#include "samkit.cuh"

#define NN_BLOCK 256

__device__ __forceinline__ u64 nn_tid() { return (u64)blockIdx.x * NN_BLOCK + threadIdx.x; }
__device__ __forceinline__ u64 nn_stride() { return (u64)gridDim.x * NN_BLOCK; }

// ---------------------------------------------------------------------------------------------
// Argument structs (abi.rs: `Nn*Args`)
// ---------------------------------------------------------------------------------------------

struct NnReluMaskArgs {
    const float* y;  // n, the ReLU's output
    float* dy;       // n, masked in place
    u64 n;
};

struct NnAddArgs {
    float* dst;  // n
    const float* src;  // n
    u64 n;
};

struct NnResidualReluArgs {
    float* y;        // n
    const float* r;  // n, or null for no residual
    u64 n;
    u32 relu;
    u32 pad;
};

struct NnActArgs {
    float* x;  // n, in place
    u64 n;
    u32 kind;  // 0 = ReLU, 1 = tanh
    u32 pad;
};

struct NnActBwdArgs {
    const float* y;  // n, the activation's output
    float* dy;       // n, in place
    u64 n;
    u32 kind;  // 0 = ReLU, 1 = tanh
    u32 pad;
};

struct NnSquareArgs {
    const float* x;  // n
    float* y;        // n
    u64 n;
};

struct NnSqAccumulateArgs {
    const float* src;  // (count − 1)·stride + len
    float* dst;        // len
    u64 len;
    u64 stride;
    u32 count;
    u32 pad;
};

struct NnBiasAddArgs {
    float* y;        // rows·out
    const float* b;  // out
    u64 rows;
    u32 out;
    u32 pad;
};

struct NnColSumArgs {
    const float* x;  // rows·cols
    float* out;      // cols
    u32 rows;
    u32 cols;
    u32 square;
    u32 accumulate;
};

struct NnAvgPoolFwdArgs {
    const float* x;  // rows·hw
    float* y;        // rows
    u64 rows;
    double inv;  // 1 / hw
    u32 hw;
    u32 pad;
};

struct NnAvgPoolBwdArgs {
    const float* dy;  // rows
    float* dx;        // rows·hw
    u64 rows;
    u32 hw;
    float inv;  // 1 / hw
};

struct NnBnEvalStatsArgs {
    const float* rmean;  // c each
    const float* rvar;
    float* smean;
    float* sinvstd;
    double eps;
    u32 c;
    u32 pad;
};

struct NnBnEvalBwdArgs {
    const float* x;  // n·c·hw (NCHW)
    const float* dy;
    const float* gamma;  // c each
    const float* mean;
    const float* invstd;
    float* dgamma;
    float* dbeta;
    float* dx;  // n·c·hw
    u32 n;
    u32 c;
    u32 hw;
    u32 psq;  // 1: per-sample squared gradients, added
};

struct NnSmoothCeArgs {
    const float* z;     // n·k logits
    const u32* labels;  // n, below k
    const float* w;     // n
    float* loss;        // n
    float* dz;          // n·k, or null for no gradient
    u64 n;
    u32 k;  // ≥ 2
    float smoothing;
};

struct NnKdArgs {
    const float* z;      // n·k student logits
    const float* t;      // n·k teacher logits
    const float* w;      // n sample weights
    const u32* present;  // n flags (0: no teacher for the sample), or null for all
    float* kd;           // n: τ²·KL(softmax(t/τ) ‖ softmax(z/τ))
    float* dz;           // n·k, gradient ADDED, or null for none
    u64 n;
    u32 k;  // ≥ 2
    float tau;  // > 0
    float lam;  // λ ≥ 0
    u32 pad;
};

struct NnEmaArgs {
    float* ema;      // n
    const float* w;  // n
    u64 n;
    float d;        // decay
    float one_m_d;  // 1 − d, rounded once on the host as the CPU does
};

// ---------------------------------------------------------------------------------------------
// Element-wise
// ---------------------------------------------------------------------------------------------

// dy ← dy ⊙ [y > 0] (ReLU backward from the ReLU's output; a NaN output keeps its gradient, as
// on the CPU).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_relu_mask(NnReluMaskArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ y = a.y;
    float* __restrict__ dy = a.dy;
    const u64 n = a.n;
    for (u64 i = nn_tid(); i < n; i += nn_stride())
        if (y[i] <= 0.f) dy[i] = 0.f;
}

// dst ← dst + src.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_add(NnAddArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    float* __restrict__ dst = a.dst;
    const float* __restrict__ src = a.src;
    const u64 n = a.n;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) dst[i] = dst[i] + src[i];
}

// y ← act(y + r): the residual add (r may be null) and ReLU (relu != 0) after batch norm.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_residual_relu(NnResidualReluArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    float* __restrict__ y = a.y;
    const float* __restrict__ r = a.r;
    const u64 n = a.n;
    const u32 relu = a.relu;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        float v = y[i];
        if (r) v = v + r[i];
        if (relu) v = fmaxf(v, 0.f);
        y[i] = v;
    }
}

// x ← act(x) in place: kind 0 = ReLU, 1 = tanh.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_act(NnActArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    float* __restrict__ x = a.x;
    const u64 n = a.n;
    const u32 kind = a.kind;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) x[i] = kind == 0 ? fmaxf(x[i], 0.f) : tanhf(x[i]);
}

// dy ← dy ⊙ act'(·) from the activation's output y: kind 0 = ReLU, 1 = tanh (1 − y²).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_act_bwd(NnActBwdArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ y = a.y;
    float* __restrict__ dy = a.dy;
    const u64 n = a.n;
    const u32 kind = a.kind;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        const float v = y[i];
        if (kind == 0) {
            if (v <= 0.f) dy[i] = 0.f;
        } else {
            dy[i] = dy[i] * (1.f - v * v);
        }
    }
}

// y ← x ⊙ x.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_square(NnSquareArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ x = a.x;
    float* __restrict__ y = a.y;
    const u64 n = a.n;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        const float v = x[i];
        y[i] = v * v;
    }
}

// dst[j] ← dst[j] + Σ_b src[b·stride + j]² for j < len, b < count: the per-sample squared
// gradients of a chunk of samples (SSAM-F's Fisher), added in sample order.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_sq_accumulate(NnSqAccumulateArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ src = a.src;
    float* __restrict__ dst = a.dst;
    const u64 len = a.len, stride = a.stride;
    const u32 count = a.count;
    for (u64 j = nn_tid(); j < len; j += nn_stride()) {
        float s = 0.f;
        for (u32 b = 0; b < count; b++) {
            const float v = src[(u64)b * stride + j];
            s = s + v * v;
        }
        dst[j] = dst[j] + s;
    }
}

// y[i·out + o] ← y[i·out + o] + b[o] for n rows.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_bias_add(NnBiasAddArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    float* __restrict__ y = a.y;
    const float* __restrict__ b = a.b;
    const u64 n = a.rows;
    const u32 out = a.out;
    const u64 total = n * out;
    for (u64 i = nn_tid(); i < total; i += nn_stride()) y[i] = y[i] + b[i % out];
}

// out[c] (← 0 unless accumulate) + Σ_r f(x[r·cols + c]), f = identity or square, summed in f64 in
// row order (a linear layer's bias gradient, or its per-sample squares).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_col_sum(NnColSumArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ x = a.x;
    float* __restrict__ out = a.out;
    const u32 rows = a.rows, cols = a.cols, square = a.square, accumulate = a.accumulate;
    for (u64 c = nn_tid(); c < cols; c += nn_stride()) {
        double s = 0.0;
        for (u32 r = 0; r < rows; r++) {
            const double v = (double)x[(u64)r * cols + c];
            s += square ? v * v : v;
        }
        out[c] = accumulate ? out[c] + (float)s : (float)s;
    }
}

// ---------------------------------------------------------------------------------------------
// Global average pooling (NCHW → row-major [N, C]: row r = n·C + c of both)
// ---------------------------------------------------------------------------------------------

// y[r] = (Σ_j x[r·hw + j]) · inv, one warp per row, the sum in f64 (lanes strided, then a fixed
// shuffle tree).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_avgpool_fwd(NnAvgPoolFwdArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ x = a.x;
    float* __restrict__ y = a.y;
    const u64 rows = a.rows;
    const u32 hw = a.hw;
    const double inv = a.inv;
    const u32 lane = threadIdx.x & 31;
    const u64 warp = nn_tid() >> 5, warps = nn_stride() >> 5;
    for (u64 r = warp; r < rows; r += warps) {
        const float* row = x + r * hw;
        double s = 0.0;
        for (u32 j = lane; j < hw; j += 32) s += (double)row[j];
        s = sk_warp_sum(s);
        if (lane == 0) y[r] = (float)(s * inv);
    }
}

// dx[r·hw + j] = dy[r] · inv.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_avgpool_bwd(NnAvgPoolBwdArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ dy = a.dy;
    float* __restrict__ dx = a.dx;
    const u64 rows = a.rows;
    const u32 hw = a.hw;
    const float inv = a.inv;
    const u64 total = rows * hw;
    for (u64 i = nn_tid(); i < total; i += nn_stride()) dx[i] = dy[i / hw] * inv;
}

// ---------------------------------------------------------------------------------------------
// Batch norm in inference mode (cuDNN has no backward pass for it)
// ---------------------------------------------------------------------------------------------

// saved_mean ← running_mean; saved_invstd ← 1/√(running_var + eps) (in f64, as on the CPU).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_bn_eval_stats(NnBnEvalStatsArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ rmean = a.rmean;
    const float* __restrict__ rvar = a.rvar;
    float* __restrict__ smean = a.smean;
    float* __restrict__ sinvstd = a.sinvstd;
    const u32 c = a.c;
    const double eps = a.eps;
    for (u64 i = nn_tid(); i < c; i += nn_stride()) {
        smean[i] = rmean[i];
        sinvstd[i] = (float)(1.0 / sqrt((double)rvar[i] + eps));
    }
}

// Backward of y = γ·(x − μ)·σ⁻¹ + β with fixed statistics, one block per channel:
// dx = γσ⁻¹·dy; per sample i, b_i = Σ_hw dy and g_i = Σ_hw dy·x̂ (f64);
// psq = 0: dβ = Σ_i b_i, dγ = Σ_i g_i (written); psq = 1: dβ += Σ_i b_i², dγ += Σ_i g_i² (the
// per-sample squared gradients of SSAM-F's Fisher).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_bn_eval_bwd(NnBnEvalBwdArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ x = a.x;
    const float* __restrict__ dy = a.dy;
    const float* __restrict__ gamma = a.gamma;
    const float* __restrict__ mean = a.mean;
    const float* __restrict__ invstd = a.invstd;
    float* __restrict__ dgamma = a.dgamma;
    float* __restrict__ dbeta = a.dbeta;
    float* __restrict__ dx = a.dx;
    const u32 n = a.n, c = a.c, hw = a.hw, psq = a.psq;
    __shared__ double sh[NN_BLOCK / 32];
    for (u32 ch = blockIdx.x; ch < c; ch += gridDim.x) {
        const float mu = mean[ch], is = invstd[ch];
        const float k = gamma[ch] * is;
        double tb = 0.0, tg = 0.0;  // psq = 0: this thread's sums over the whole batch
        double qb = 0.0, qg = 0.0;  // psq = 1: Σ_i b_i², Σ_i g_i² (thread 0)
        for (u32 i = 0; i < n; i++) {
            const u64 base = ((u64)i * c + ch) * hw;
            double sb = 0.0, sg = 0.0;
            for (u32 j = threadIdx.x; j < hw; j += NN_BLOCK) {
                const float g = dy[base + j];
                const float xh = (x[base + j] - mu) * is;
                sb += (double)g;
                sg += (double)g * (double)xh;
                dx[base + j] = k * g;
            }
            if (psq) {
                sb = sk_block_sum<NN_BLOCK>(sb, sh);
                sg = sk_block_sum<NN_BLOCK>(sg, sh);
                if (threadIdx.x == 0) {
                    qb += sb * sb;
                    qg += sg * sg;
                }
            } else {
                tb += sb;
                tg += sg;
            }
        }
        if (psq) {
            if (threadIdx.x == 0) {
                dbeta[ch] = dbeta[ch] + (float)qb;
                dgamma[ch] = dgamma[ch] + (float)qg;
            }
        } else {
            tb = sk_block_sum<NN_BLOCK>(tb, sh);
            tg = sk_block_sum<NN_BLOCK>(tg, sh);
            if (threadIdx.x == 0) {
                dbeta[ch] = (float)tb;
                dgamma[ch] = (float)tg;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------------------------

// Label-smoothed cross-entropy of ALGORITHMS.md, one thread per sample, in f64 as
// samkit_core::loss::smooth_cross_entropy: target 1 − s on the label and s/(k − 1) elsewhere;
// loss[i] = −Σ q·log_softmax(z_i); dz (may be null) = w_i·(softmax(z_i) − q).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_smooth_ce(NnSmoothCeArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ z = a.z;
    const u32* __restrict__ labels = a.labels;
    const float* __restrict__ w = a.w;
    float* __restrict__ loss = a.loss;
    float* __restrict__ dz = a.dz;
    const u64 n = a.n;
    const u32 k = a.k;
    const float smoothing = a.smoothing;
    const double off = (double)smoothing / (double)(k - 1);
    const double on = 1.0 - (double)smoothing;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        const float* zi = z + i * k;
        const u32 y = labels[i];
        float m = -__int_as_float(0x7f800000);  // −∞
        for (u32 c = 0; c < k; c++) m = fmaxf(m, zi[c]);
        const double mx = (double)m;
        double s = 0.0;
        for (u32 c = 0; c < k; c++) s += exp((double)zi[c] - mx);
        const double lse = mx + log(s);
        double l = 0.0;
        for (u32 c = 0; c < k; c++) l -= (c == y ? on : off) * ((double)zi[c] - lse);
        loss[i] = (float)l;
        if (dz) {
            const double wt = (double)w[i];
            for (u32 c = 0; c < k; c++)
                dz[i * k + c] = (float)(wt * (exp((double)zi[c] - lse) - (c == y ? on : off)));
        }
    }
}

// The log-sum-exp of v/τ over one row of k values (f64), as samkit_nn::distill's log_softmax.
__device__ double nn_lse_scaled(const float* v, u32 k, double tau) {
    double mx = -__longlong_as_double(0x7ff0000000000000LL);  // −∞
    for (u32 c = 0; c < k; c++) mx = fmax(mx, (double)v[c] / tau);
    double s = 0.0;
    for (u32 c = 0; c < k; c++) s += exp((double)v[c] / tau - mx);
    return mx + log(s);
}

// MESA/SAF's distillation term (ALGORITHMS.md "MESA and SAF", samkit_nn::distill::kd_term), one
// thread per sample in f64: kd[i] = τ²·Σ_c p_c·(log p_c − log q_c) with p = softmax(t_i/τ),
// q = softmax(z_i/τ) (a class with p_c = 0 adds 0), and dz[i·k + c] += w_i·λ·τ·(q_c − p_c). A
// sample without a teacher gets kd 0 and no gradient. The log-probabilities are recomputed per
// class from the two log-sum-exps (no per-row buffer), the same expressions as on the CPU.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_kd(NnKdArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    const float* __restrict__ z = a.z;
    const float* __restrict__ t = a.t;
    const float* __restrict__ w = a.w;
    const u32* __restrict__ present = a.present;
    float* __restrict__ kd = a.kd;
    float* __restrict__ dz = a.dz;
    const u64 n = a.n;
    const u32 k = a.k;
    const double tau = (double)a.tau;
    const double lam = (double)a.lam;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        if (present && present[i] == 0) {
            kd[i] = 0.0f;
            continue;
        }
        const float* zi = z + i * k;
        const float* ti = t + i * k;
        const double lse_z = nn_lse_scaled(zi, k, tau);
        const double lse_t = nn_lse_scaled(ti, k, tau);
        double kl = 0.0;
        for (u32 c = 0; c < k; c++) {
            const double lt = (double)ti[c] / tau - lse_t;
            const double lz = (double)zi[c] / tau - lse_z;
            const double p = exp(lt);
            kl += p == 0.0 ? 0.0 : p * (lt - lz);
        }
        kd[i] = (float)(tau * tau * kl);
        if (dz) {
            const double scale = (double)w[i] * lam * tau;
            for (u32 c = 0; c < k; c++) {
                const double lt = (double)ti[c] / tau - lse_t;
                const double lz = (double)zi[c] / tau - lse_z;
                float* o = dz + i * k + c;
                *o = (float)((double)*o + scale * (exp(lz) - exp(lt)));
            }
        }
    }
}

// MESA's teacher: ema ← d·ema + (1 − d)·w in f32, rounded as samkit_train::distill's CPU update
// (two products, one sum; --fmad=false keeps them unfused).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_ema(NnEmaArgs a) {
    SK_REQUIRE_BLOCK(NN_BLOCK);
    float* __restrict__ ema = a.ema;
    const float* __restrict__ w = a.w;
    const u64 n = a.n;
    const float d = a.d;
    const float c = a.one_m_d;
    for (u64 i = nn_tid(); i < n; i += nn_stride()) ema[i] = d * ema[i] + c * w[i];
}

// ---------------------------------------------------------------------------------------------
// ABI probe: what samkit-cuda's abi::expected() lists for the "nn" family, in this order.
// ---------------------------------------------------------------------------------------------

extern "C" __global__ void sk_abi_nn(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = NN_BLOCK;
    out[1] = sizeof(NnReluMaskArgs);
    out[2] = sizeof(NnAddArgs);
    out[3] = sizeof(NnResidualReluArgs);
    out[4] = sizeof(NnActArgs);
    out[5] = sizeof(NnActBwdArgs);
    out[6] = sizeof(NnSquareArgs);
    out[7] = sizeof(NnSqAccumulateArgs);
    out[8] = sizeof(NnBiasAddArgs);
    out[9] = sizeof(NnColSumArgs);
    out[10] = sizeof(NnAvgPoolFwdArgs);
    out[11] = sizeof(NnAvgPoolBwdArgs);
    out[12] = sizeof(NnBnEvalStatsArgs);
    out[13] = sizeof(NnBnEvalBwdArgs);
    out[14] = sizeof(NnSmoothCeArgs);
    out[15] = SK_OFFSETOF(NnSqAccumulateArgs, count);
    out[16] = SK_OFFSETOF(NnAvgPoolFwdArgs, inv);
    out[17] = SK_OFFSETOF(NnAvgPoolBwdArgs, inv);
    out[18] = SK_OFFSETOF(NnBnEvalStatsArgs, eps);
    out[19] = SK_OFFSETOF(NnBnEvalBwdArgs, n);
    out[20] = SK_OFFSETOF(NnSmoothCeArgs, n);
    out[21] = SK_OFFSETOF(NnSmoothCeArgs, smoothing);
    out[22] = sizeof(NnKdArgs);
    out[23] = SK_OFFSETOF(NnKdArgs, n);
    out[24] = SK_OFFSETOF(NnKdArgs, lam);
    out[25] = sizeof(NnEmaArgs);
    out[26] = SK_OFFSETOF(NnEmaArgs, one_m_d);
}

SK_ABI_CHECK(NnReluMaskArgs);
SK_ABI_CHECK(NnAddArgs);
SK_ABI_CHECK(NnResidualReluArgs);
SK_ABI_CHECK(NnActArgs);
SK_ABI_CHECK(NnActBwdArgs);
SK_ABI_CHECK(NnSquareArgs);
SK_ABI_CHECK(NnSqAccumulateArgs);
SK_ABI_CHECK(NnBiasAddArgs);
SK_ABI_CHECK(NnColSumArgs);
SK_ABI_CHECK(NnAvgPoolFwdArgs);
SK_ABI_CHECK(NnAvgPoolBwdArgs);
SK_ABI_CHECK(NnBnEvalStatsArgs);
SK_ABI_CHECK(NnBnEvalBwdArgs);
SK_ABI_CHECK(NnSmoothCeArgs);
SK_ABI_CHECK(NnKdArgs);
SK_ABI_CHECK(NnEmaArgs);
