// fisher.cu: SSAM-F's empirical Fisher, F += g ⊙ g (samkit_core::passes::fisher_accumulate).
// F is a flat f32 arena; g is any layout-shaped buffer of f32, bf16 or f16.
#include "samkit.cuh"

struct FisherArgs {
    const Unit* units;
    const u64* g;  // T table
    float* f;      // flat f32
    u32 n_units;
    u32 pad;
};

// Packs p, p + SK_BLOCK, ...: assumes SK_BLOCK threads and traps on any other block shape.
template <class T> __device__ __forceinline__ void fisher_body(const FisherArgs& a) {
    SK_REQUIRE_BLOCK(SK_BLOCK);
    constexpr int N = Pack<T>::N;
    for (u32 ui = blockIdx.x; ui < a.n_units; ui += gridDim.x) {
        const Unit u = a.units[ui];
        const T* g = sk_seg<const T>(a.g, u);
        float* f = a.f + u.global;
        const bool vec = sk_al16(g) && sk_al16(f);
        const u32 npk = (u.len + N - 1) / N;
        for (u32 p = threadIdx.x; p < npk; p += SK_BLOCK) {
            const u32 off = p * N;
            const u32 cnt = min((u32)N, u.len - off);
            const bool v = vec && cnt == (u32)N;
            const Pack<T> gp = sk_ld(g + off, cnt, v);
            FPack<T> fp = sk_ldf<T>(f + off, cnt, v);
#pragma unroll
            for (int k = 0; k < N; k++) {
                const float x = sk_f32(gp.e[k]);
                fp.e[k] += x * x;
            }
            sk_stf<T>(f + off, fp, cnt, v);
        }
    }
}

extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_fisher_f32(FisherArgs a) { fisher_body<float>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_fisher_bf16(FisherArgs a) { fisher_body<__nv_bfloat16>(a); }
extern "C" __global__ void __launch_bounds__(SK_BLOCK) sk_fisher_f16(FisherArgs a) { fisher_body<__half>(a); }

extern "C" __global__ void sk_abi_fisher(u32* out) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    out[0] = sizeof(FisherArgs);
}

SK_ABI_CHECK(FisherArgs);
