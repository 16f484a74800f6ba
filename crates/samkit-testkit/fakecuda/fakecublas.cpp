// fakecublas.cpp: a fake cuBLAS (soname libcublas.so) for the tests of machines without a GPU.
//
// It implements, on host memory (device pointers are host pointers under the fake driver of
// driver.cpp, and every stream operation completes at once), the part of the cuBLAS API that
// samkit-nn's CUDA backend calls, following the cuBLAS documentation rather than samkit-nn:
// handles (create, destroy, stream, math mode) and cublasSgemm_v2 (column-major, op(A) and
// op(B) of CUBLAS_OP_N/T/C, alpha and beta read from the host in the default pointer mode, the
// documented argument checks, and C not read when beta is 0). Products are accumulated in
// double, so the result is the exactly rounded one up to the last place.
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace {
enum Status : int {
    SUCCESS = 0,
    NOT_INITIALIZED = 1,
    INVALID_VALUE = 7,
};
enum Op : int { OP_N = 0, OP_T = 1, OP_C = 2 };

constexpr uint32_t MAGIC = 0xb1a5b1a5u;
struct Handle {
    uint32_t magic;
    void* stream;
    int math;
};

bool live(const Handle* h) { return h && h->magic == MAGIC; }

int at_least_one(int v) { return v < 1 ? 1 : v; }
}  // namespace

extern "C" {

int cublasCreate_v2(Handle** h) {
    if (!h) return INVALID_VALUE;
    *h = new Handle{MAGIC, nullptr, 0};
    return SUCCESS;
}

int cublasDestroy_v2(Handle* h) {
    if (!live(h)) return NOT_INITIALIZED;
    h->magic = 0;
    delete h;
    return SUCCESS;
}

int cublasSetStream_v2(Handle* h, void* stream) {
    if (!live(h)) return NOT_INITIALIZED;
    h->stream = stream;
    return SUCCESS;
}

int cublasGetStream_v2(Handle* h, void** stream) {
    if (!live(h)) return NOT_INITIALIZED;
    if (!stream) return INVALID_VALUE;
    *stream = h->stream;
    return SUCCESS;
}

// cublasMath_t: CUBLAS_DEFAULT_MATH 0, CUBLAS_TENSOR_OP_MATH 1 (deprecated), CUBLAS_PEDANTIC_MATH
// 2, CUBLAS_TF32_TENSOR_OP_MATH 3, possibly or-ed with
// CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION 16. The arithmetic here is the same in all.
int cublasSetMathMode(Handle* h, int mode) {
    if (!live(h)) return NOT_INITIALIZED;
    const int base = mode & ~16;
    if (base < 0 || base > 3) return INVALID_VALUE;
    h->math = mode;
    return SUCCESS;
}

int cublasGetMathMode(Handle* h, int* mode) {
    if (!live(h)) return NOT_INITIALIZED;
    if (!mode) return INVALID_VALUE;
    *mode = h->math;
    return SUCCESS;
}

// C = alpha·op(A)·op(B) + beta·C with op(A) m×k, op(B) k×n, C m×n, all column-major.
int cublasSgemm_v2(Handle* h, int transa, int transb, int m, int n, int k, const float* alpha, const float* A,
                   int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
    if (!live(h)) return NOT_INITIALIZED;
    if (transa < OP_N || transa > OP_C || transb < OP_N || transb > OP_C) return INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0) return INVALID_VALUE;
    const bool ta = transa != OP_N, tb = transb != OP_N;
    // The documented checks: lda ≥ max(1, m) for OP_N (A is m×k) else max(1, k); ldb ≥ max(1, k)
    // for OP_N (B is k×n) else max(1, n); ldc ≥ max(1, m).
    if (lda < at_least_one(ta ? k : m) || ldb < at_least_one(tb ? n : k) || ldc < at_least_one(m))
        return INVALID_VALUE;
    if (m == 0 || n == 0) return SUCCESS;
    if (!alpha || !beta || !C) return INVALID_VALUE;
    const float al = *alpha, be = *beta;
    const bool use_ab = al != 0.0f && k > 0;
    if (use_ab && (!A || !B)) return INVALID_VALUE;
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            if (use_ab) {
                for (int p = 0; p < k; p++) {
                    const float a = ta ? A[(int64_t)i * lda + p] : A[(int64_t)p * lda + i];
                    const float b = tb ? B[(int64_t)p * ldb + j] : B[(int64_t)j * ldb + p];
                    s += (double)a * (double)b;
                }
            }
            float* c = &C[(int64_t)j * ldc + i];
            // "If beta == 0, C does not have to be a valid input."
            const double prior = be == 0.0f ? 0.0 : (double)be * (double)*c;
            *c = (float)((double)al * s + prior);
        }
    }
    return SUCCESS;
}

}  // extern "C"
