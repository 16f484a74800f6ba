// nn.cu: the small kernels of samkit-nn's CUDA backend (crates/samkit-nn/src/cuda): everything a
// ResNet-18 or an MLP needs beside cuDNN's convolutions and batch norm and cuBLAS's GEMMs.
//
// Conventions (mirrored by crates/samkit-nn/src/cuda/kernels.rs, which launches them):
// - Activations are NCHW f32, contiguous; a buffer is passed as its device address.
// - Scalar arguments, one per parameter (no argument struct): pointers are 64-bit addresses,
//   counts are u64 when they index a whole activation and u32 when they are a dimension.
// - Element-wise kernels are grid-stride loops over 64-bit indices with NN_BLOCK threads; their
//   results do not depend on the grid. Reductions that the CPU backend does in f64 are done in
//   f64 here too, in a fixed order per output (the same bits whatever the grid).
// - Built with the options of samkit-cuda (`--fmad=false`, IEEE division and square root), so
//   f32 expressions round as the CPU backend's do.
#include "samkit.cuh"

#define NN_BLOCK 256

__device__ __forceinline__ u64 nn_tid() { return (u64)blockIdx.x * NN_BLOCK + threadIdx.x; }
__device__ __forceinline__ u64 nn_stride() { return (u64)gridDim.x * NN_BLOCK; }

// ---------------------------------------------------------------------------------------------
// Element-wise
// ---------------------------------------------------------------------------------------------

// dy ← dy ⊙ [y > 0] (ReLU backward from the ReLU's output; a NaN output keeps its gradient, as
// on the CPU).
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_relu_mask(const float* __restrict__ y, float* __restrict__ dy, u64 n) {
    for (u64 i = nn_tid(); i < n; i += nn_stride())
        if (y[i] <= 0.f) dy[i] = 0.f;
}

// dst ← dst + src.
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_add(float* __restrict__ dst, const float* __restrict__ src, u64 n) {
    for (u64 i = nn_tid(); i < n; i += nn_stride()) dst[i] = dst[i] + src[i];
}

// y ← act(y + r): the residual add (r may be null) and ReLU (relu != 0) after batch norm.
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_residual_relu(float* __restrict__ y, const float* __restrict__ r, u64 n, u32 relu) {
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        float v = y[i];
        if (r) v = v + r[i];
        if (relu) v = fmaxf(v, 0.f);
        y[i] = v;
    }
}

// x ← act(x) in place: kind 0 = ReLU, 1 = tanh.
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_act(float* __restrict__ x, u64 n, u32 kind) {
    for (u64 i = nn_tid(); i < n; i += nn_stride()) x[i] = kind == 0 ? fmaxf(x[i], 0.f) : tanhf(x[i]);
}

// dy ← dy ⊙ act'(·) from the activation's output y: kind 0 = ReLU, 1 = tanh (1 − y²).
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_act_bwd(const float* __restrict__ y, float* __restrict__ dy, u64 n, u32 kind) {
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
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_square(const float* __restrict__ x, float* __restrict__ y, u64 n) {
    for (u64 i = nn_tid(); i < n; i += nn_stride()) {
        const float v = x[i];
        y[i] = v * v;
    }
}

// dst[j] ← dst[j] + Σ_b src[b·stride + j]² for j < len, b < count: the per-sample squared
// gradients of a chunk of samples (SSAM-F's Fisher), added in sample order.
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_sq_accumulate(const float* __restrict__ src, float* __restrict__ dst, u64 len, u64 stride, u32 count) {
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
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_bias_add(float* __restrict__ y, const float* __restrict__ b, u64 n, u32 out) {
    const u64 total = n * out;
    for (u64 i = nn_tid(); i < total; i += nn_stride()) y[i] = y[i] + b[i % out];
}

// out[c] (← 0 unless accumulate) + Σ_r f(x[r·cols + c]), f = identity or square, summed in f64 in
// row order (a linear layer's bias gradient, or its per-sample squares).
extern "C" __global__ void __launch_bounds__(NN_BLOCK) sk_nn_col_sum(const float* __restrict__ x,
                                                                    float* __restrict__ out, u32 rows,
                                                                    u32 cols, u32 square, u32 accumulate) {
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
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_avgpool_fwd(const float* __restrict__ x, float* __restrict__ y, u64 rows, u32 hw, double inv) {
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
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_avgpool_bwd(const float* __restrict__ dy, float* __restrict__ dx, u64 rows, u32 hw, float inv) {
    const u64 total = rows * hw;
    for (u64 i = nn_tid(); i < total; i += nn_stride()) dx[i] = dy[i / hw] * inv;
}

// ---------------------------------------------------------------------------------------------
// Batch norm in inference mode (cuDNN has no backward pass for it)
// ---------------------------------------------------------------------------------------------

// saved_mean ← running_mean; saved_invstd ← 1/√(running_var + eps) (in f64, as on the CPU).
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_bn_eval_stats(const float* __restrict__ rmean, const float* __restrict__ rvar,
                        float* __restrict__ smean, float* __restrict__ sinvstd, u32 c, double eps) {
    for (u64 i = nn_tid(); i < c; i += nn_stride()) {
        smean[i] = rmean[i];
        sinvstd[i] = (float)(1.0 / sqrt((double)rvar[i] + eps));
    }
}

// Backward of y = γ·(x − μ)·σ⁻¹ + β with fixed statistics, one block per channel:
// dx = γσ⁻¹·dy; per sample i, b_i = Σ_hw dy and g_i = Σ_hw dy·x̂ (f64);
// psq = 0: dβ = Σ_i b_i, dγ = Σ_i g_i (written); psq = 1: dβ += Σ_i b_i², dγ += Σ_i g_i² (the
// per-sample squared gradients of SSAM-F's Fisher).
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_bn_eval_bwd(const float* __restrict__ x, const float* __restrict__ dy,
                      const float* __restrict__ gamma, const float* __restrict__ mean,
                      const float* __restrict__ invstd, float* __restrict__ dgamma,
                      float* __restrict__ dbeta, float* __restrict__ dx, u32 n, u32 c, u32 hw, u32 psq) {
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
extern "C" __global__ void __launch_bounds__(NN_BLOCK)
    sk_nn_smooth_ce(const float* __restrict__ z, const u32* __restrict__ labels,
                    const float* __restrict__ w, float* __restrict__ loss, float* __restrict__ dz, u32 n,
                    u32 k, float smoothing) {
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
