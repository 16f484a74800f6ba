// fakecudnn.cpp: a fake cuDNN 9 (soname libcudnn.so) for the tests of machines without a GPU.
//
// It implements, on host memory (device pointers are host pointers under the fake driver of
// driver.cpp, and every stream operation completes at once), the part of cuDNN's legacy API that
// samkit-nn's CUDA backend calls, written from the cuDNN API reference rather than from
// samkit-nn, so that the backend's use of the API is checked:
//
// - handles, 4-d tensor and filter descriptors (FLOAT data, NCHW or NHWC), 2-d convolution
//   descriptors (padding, stride, dilation, CUDNN_CONVOLUTION flips the filter,
//   CUDNN_CROSS_CORRELATION does not; group count; math type);
// - the algorithm searches (cudnnFind*AlgorithmEx, which also write the operation's output as
//   documented, and cudnnGet*Algorithm_v7) list one deterministic algorithm in FMA math with no
//   workspace; the *WorkspaceSize queries say 0;
// - cudnnConvolutionForward / BackwardData / BackwardFilter: reference loops in double, any
//   group count, with the documented blending dst = alpha·result + beta·dst, where dst is not
//   read when beta is 0 ("it may contain uninitialized data, including NaN");
// - batch norm in spatial mode: ForwardTraining (batch mean and biased variance; the running
//   statistics, when given, become (1 − f)·running + f·batch with the unbiased variance, as
//   cuDNN and PyTorch do; saved mean and 1/√(var + eps) when given), ForwardInference, Backward
//   (alpha/beta for the data gradient and separately for the parameter gradients; the saved
//   statistics when given, recomputed otherwise).
//
// Shapes that do not agree (output dimensions, channel counts, groups) and the null pointers the
// reference calls out are CUDNN_STATUS_BAD_PARAM, as cuDNN returns them.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace {
enum Status : int {
    SUCCESS = 0,
    NOT_INITIALIZED = 1,
    BAD_PARAM = 3,
    NOT_SUPPORTED = 9,
};
enum Kind : uint32_t { HANDLE = 0x1a2b0001, TENSOR, FILTER, CONV };

struct Obj {
    uint32_t kind;
};
struct Handle : Obj {
    void* stream;
};
// A 4-d tensor (or filter: n = K, c = C per group, h = R, w = S) with its strides in elements.
struct Tensor : Obj {
    bool set;
    int n, c, h, w;
    int64_t sn, sc, sh, sw;
    int64_t at(int i, int j, int y, int x) const { return i * sn + j * sc + y * sh + x * sw; }
    int64_t count() const { return (int64_t)n * c * h * w; }
};
struct Conv : Obj {
    bool set;
    int pad_h, pad_w, u, v, dil_h, dil_w, mode, groups, math;
};

template <class T> T* as(void* p, Kind k) {
    auto* o = static_cast<Obj*>(p);
    return o && o->kind == k ? static_cast<T*>(o) : nullptr;
}

constexpr int DATA_FLOAT = 0;
constexpr int FORMAT_NCHW = 0, FORMAT_NHWC = 1;
constexpr int CONVOLUTION = 0, CROSS_CORRELATION = 1;
constexpr int BN_PER_ACTIVATION = 0, BN_SPATIAL = 1, BN_SPATIAL_PERSISTENT = 2;
constexpr int FMA_MATH = 3;
constexpr int DETERMINISTIC = 1;
// The algorithms listed: IMPLICIT_GEMM forward, ALGO_1 backward-data and backward-filter (the
// deterministic ones of cuDNN), and how many values each enum has.
constexpr int FWD_ALGO = 0, BWD_DATA_ALGO = 1, BWD_FILTER_ALGO = 1;
constexpr int FWD_ALGO_COUNT = 8, BWD_DATA_ALGO_COUNT = 6, BWD_FILTER_ALGO_COUNT = 7;

int set_strides(Tensor* t, int format, int n, int c, int h, int w) {
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return BAD_PARAM;
    t->n = n, t->c = c, t->h = h, t->w = w;
    if (format == FORMAT_NCHW) {
        t->sw = 1, t->sh = w, t->sc = (int64_t)h * w, t->sn = (int64_t)c * h * w;
    } else if (format == FORMAT_NHWC) {
        t->sc = 1, t->sw = c, t->sh = (int64_t)w * c, t->sn = (int64_t)h * w * c;
    } else {
        return NOT_SUPPORTED;
    }
    t->set = true;
    return SUCCESS;
}

// dst = alpha·acc + beta·dst over a tensor's elements (dst not read when beta is 0).
void blend(const Tensor& d, float* dst, const std::vector<double>& acc, float alpha, float beta) {
    int64_t k = 0;
    for (int i = 0; i < d.n; i++)
        for (int j = 0; j < d.c; j++)
            for (int y = 0; y < d.h; y++)
                for (int x = 0; x < d.w; x++, k++) {
                    float* p = dst + d.at(i, j, y, x);
                    const double prior = beta == 0.0f ? 0.0 : (double)beta * (double)*p;
                    *p = (float)((double)alpha * acc[k] + prior);
                }
}
int64_t lin(const Tensor& d, int i, int j, int y, int x) { return (((int64_t)i * d.c + j) * d.h + y) * d.w + x; }

// The shapes of one convolution, checked against each other.
struct Shape {
    const Tensor *x, *w, *y;
    const Conv* cd;
    int groups, cg, kg;
};
int check_shape(const Tensor* x, const Tensor* w, const Conv* cd, const Tensor* y, Shape* s) {
    if (!x || !w || !cd || !y || !x->set || !w->set || !cd->set || !y->set) return BAD_PARAM;
    const int g = cd->groups;
    // The filter's C is the input channels of one group; its K all output channels.
    if (g < 1 || w->c * g != x->c || w->n % g != 0) return BAD_PARAM;
    const int eff_r = (w->h - 1) * cd->dil_h + 1, eff_s = (w->w - 1) * cd->dil_w + 1;
    const int oh = 1 + (x->h + 2 * cd->pad_h - eff_r) / cd->u;
    const int ow = 1 + (x->w + 2 * cd->pad_w - eff_s) / cd->v;
    if (x->h + 2 * cd->pad_h < eff_r || x->w + 2 * cd->pad_w < eff_s) return BAD_PARAM;
    if (y->n != x->n || y->c != w->n || y->h != oh || y->w != ow) return BAD_PARAM;
    *s = Shape{x, w, y, cd, g, w->c, w->n / g};
    return SUCCESS;
}

enum Op { FWD, BWD_DATA, BWD_FILTER };

// One loop nest for the three directions: every (sample, output pixel, filter tap) pair adds
// its product to the accumulator of the direction's output (laid out densely, NCHW / KCRS).
std::vector<double> convolve(const Shape& s, Op op, const float* a, const float* b) {
    const Tensor &X = *s.x, &W = *s.w, &Y = *s.y;
    const Conv& cd = *s.cd;
    std::vector<double> acc(op == FWD ? Y.count() : op == BWD_DATA ? X.count() : W.count(), 0.0);
    const bool flip = cd.mode == CONVOLUTION;
    for (int n = 0; n < X.n; n++)
        for (int g = 0; g < s.groups; g++)
            for (int k = g * s.kg; k < (g + 1) * s.kg; k++)
                for (int oy = 0; oy < Y.h; oy++)
                    for (int ox = 0; ox < Y.w; ox++) {
                        double yacc = 0.0;
                        const double dy =
                            op == FWD ? 0.0 : (double)b[Y.at(n, k, oy, ox)];  // bwd: b is dy
                        for (int c = 0; c < s.cg; c++) {
                            const int xc = g * s.cg + c;
                            for (int r = 0; r < W.h; r++) {
                                const int iy = oy * cd.u - cd.pad_h + r * cd.dil_h;
                                if (iy < 0 || iy >= X.h) continue;
                                for (int q = 0; q < W.w; q++) {
                                    const int ix = ox * cd.v - cd.pad_w + q * cd.dil_w;
                                    if (ix < 0 || ix >= X.w) continue;
                                    const int fr = flip ? W.h - 1 - r : r, fq = flip ? W.w - 1 - q : q;
                                    switch (op) {
                                        case FWD:  // a = x, b = w
                                            yacc += (double)a[X.at(n, xc, iy, ix)] * (double)b[W.at(k, c, fr, fq)];
                                            break;
                                        case BWD_DATA:  // a = w, b = dy
                                            acc[lin(X, n, xc, iy, ix)] += dy * (double)a[W.at(k, c, fr, fq)];
                                            break;
                                        case BWD_FILTER:  // a = x, b = dy
                                            acc[lin(W, k, c, fr, fq)] += dy * (double)a[X.at(n, xc, iy, ix)];
                                            break;
                                    }
                                }
                            }
                        }
                        if (op == FWD) acc[lin(Y, n, k, oy, ox)] = yacc;
                    }
    return acc;
}

int run_conv(Op op, const void* alpha, const Tensor* x, const void* a, const Tensor* w, const void* b,
             const Conv* cd, const Tensor* y, int algo, const void* beta, void* out) {
    Shape s;
    if (const int e = check_shape(x, w, cd, y, &s)) return e;
    if (!alpha || !beta || !a || !b || !out) return BAD_PARAM;
    const int count = op == FWD ? FWD_ALGO_COUNT : op == BWD_DATA ? BWD_DATA_ALGO_COUNT : BWD_FILTER_ALGO_COUNT;
    if (algo < 0 || algo >= count) return BAD_PARAM;
    const std::vector<double> acc = convolve(s, op, static_cast<const float*>(a), static_cast<const float*>(b));
    const Tensor& dst = op == FWD ? *y : op == BWD_DATA ? *x : *w;
    blend(dst, static_cast<float*>(out), acc, *static_cast<const float*>(alpha), *static_cast<const float*>(beta));
    return SUCCESS;
}

// cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t (the same layout for the three).
struct Perf {
    int algo;
    int status;
    float time;
    size_t memory;
    int determinism;
    int math_type;
    int reserved[3];
};

int list_one(int algo, int requested, int* returned, void* perf) {
    if (requested < 1 || !returned || !perf) return BAD_PARAM;
    Perf* p = static_cast<Perf*>(perf);
    *p = Perf{algo, SUCCESS, 0.01f, 0, DETERMINISTIC, FMA_MATH, {0, 0, 0}};
    *returned = 1;
    return SUCCESS;
}

// Batch norm: the parameter descriptor must be 1×C×1×1 for the spatial modes; x and y alike.
int check_bn(int mode, const Tensor* x, const Tensor* y, const Tensor* p) {
    if (mode == BN_PER_ACTIVATION) return NOT_SUPPORTED;
    if (mode != BN_SPATIAL && mode != BN_SPATIAL_PERSISTENT) return BAD_PARAM;
    if (!x || !y || !p || !x->set || !y->set || !p->set) return BAD_PARAM;
    if (x->n != y->n || x->c != y->c || x->h != y->h || x->w != y->w) return BAD_PARAM;
    if (p->n != 1 || p->c != x->c || p->h != 1 || p->w != 1) return BAD_PARAM;
    return SUCCESS;
}

// Mean and biased variance of channel j (in double).
void moments(const Tensor& X, const float* x, int j, double* mean, double* var) {
    double s = 0.0;
    const double m = (double)X.n * X.h * X.w;
    for (int i = 0; i < X.n; i++)
        for (int y = 0; y < X.h; y++)
            for (int q = 0; q < X.w; q++) s += (double)x[X.at(i, j, y, q)];
    const double mu = s / m;
    double v = 0.0;
    for (int i = 0; i < X.n; i++)
        for (int y = 0; y < X.h; y++)
            for (int q = 0; q < X.w; q++) {
                const double d = (double)x[X.at(i, j, y, q)] - mu;
                v += d * d;
            }
    *mean = mu;
    *var = v / m;
}

float blend1(float alpha, float beta, double v, const float* prior) {
    return (float)((double)alpha * v + (beta == 0.0f ? 0.0 : (double)beta * (double)*prior));
}
}  // namespace

extern "C" {

size_t cudnnGetVersion() { return 90800; }  // 9.8.0 as major·10000 + minor·100 + patch

const char* cudnnGetErrorString(int status) {
    switch (status) {
        case SUCCESS: return "CUDNN_STATUS_SUCCESS";
        case NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
        case BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM (fake cuDNN)";
        case NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED (fake cuDNN)";
        default: return "CUDNN_STATUS_? (fake cuDNN)";
    }
}

int cudnnCreate(void** h) {
    if (!h) return BAD_PARAM;
    auto* o = new Handle;
    o->kind = HANDLE;
    o->stream = nullptr;
    *h = o;
    return SUCCESS;
}
int cudnnDestroy(void* h) {
    auto* o = as<Handle>(h, HANDLE);
    if (!o) return BAD_PARAM;
    o->kind = 0;
    delete o;
    return SUCCESS;
}
int cudnnSetStream(void* h, void* stream) {
    auto* o = as<Handle>(h, HANDLE);
    if (!o) return BAD_PARAM;
    o->stream = stream;
    return SUCCESS;
}
int cudnnGetStream(void* h, void** stream) {
    auto* o = as<Handle>(h, HANDLE);
    if (!o || !stream) return BAD_PARAM;
    *stream = o->stream;
    return SUCCESS;
}

// --- descriptors ---------------------------------------------------------------------------

static int create_tensor(void** d, Kind k) {
    if (!d) return BAD_PARAM;
    auto* t = new Tensor{};
    t->kind = k;
    *d = t;
    return SUCCESS;
}
static int destroy(void* d, Kind k) {
    if (!d) return SUCCESS;  // destroying NULL is allowed
    auto* o = static_cast<Obj*>(d);
    if (o->kind != k) return BAD_PARAM;
    o->kind = 0;
    if (k == CONV)
        delete static_cast<Conv*>(o);
    else
        delete static_cast<Tensor*>(o);
    return SUCCESS;
}

int cudnnCreateTensorDescriptor(void** d) { return create_tensor(d, TENSOR); }
int cudnnDestroyTensorDescriptor(void* d) { return destroy(d, TENSOR); }
int cudnnSetTensor4dDescriptor(void* d, int format, int dtype, int n, int c, int h, int w) {
    auto* t = as<Tensor>(d, TENSOR);
    if (!t) return BAD_PARAM;
    if (dtype != DATA_FLOAT) return NOT_SUPPORTED;
    return set_strides(t, format, n, c, h, w);
}

int cudnnCreateFilterDescriptor(void** d) { return create_tensor(d, FILTER); }
int cudnnDestroyFilterDescriptor(void* d) { return destroy(d, FILTER); }
int cudnnSetFilter4dDescriptor(void* d, int dtype, int format, int k, int c, int h, int w) {
    auto* t = as<Tensor>(d, FILTER);
    if (!t) return BAD_PARAM;
    if (dtype != DATA_FLOAT) return NOT_SUPPORTED;
    // NCHW is KCRS; NHWC is KRSC.
    return set_strides(t, format, k, c, h, w);
}

int cudnnCreateConvolutionDescriptor(void** d) {
    if (!d) return BAD_PARAM;
    auto* c = new Conv{};
    c->kind = CONV;
    c->groups = 1;
    c->math = 0;  // CUDNN_DEFAULT_MATH
    *d = c;
    return SUCCESS;
}
int cudnnDestroyConvolutionDescriptor(void* d) { return destroy(d, CONV); }
int cudnnSetConvolution2dDescriptor(void* d, int pad_h, int pad_w, int u, int v, int dil_h, int dil_w, int mode,
                                    int compute) {
    auto* c = as<Conv>(d, CONV);
    if (!c) return BAD_PARAM;
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0) return BAD_PARAM;
    if (mode != CONVOLUTION && mode != CROSS_CORRELATION) return BAD_PARAM;
    if (compute != DATA_FLOAT) return NOT_SUPPORTED;
    c->pad_h = pad_h, c->pad_w = pad_w, c->u = u, c->v = v, c->dil_h = dil_h, c->dil_w = dil_w, c->mode = mode;
    c->set = true;
    return SUCCESS;
}
int cudnnSetConvolutionGroupCount(void* d, int groups) {
    auto* c = as<Conv>(d, CONV);
    if (!c || groups < 1) return BAD_PARAM;
    c->groups = groups;
    return SUCCESS;
}
int cudnnSetConvolutionMathType(void* d, int math) {
    auto* c = as<Conv>(d, CONV);
    if (!c || math < 0 || math > FMA_MATH) return BAD_PARAM;
    c->math = math;
    return SUCCESS;
}
int cudnnGetConvolutionMathType(void* d, int* math) {
    auto* c = as<Conv>(d, CONV);
    if (!c || !math) return BAD_PARAM;
    *math = c->math;
    return SUCCESS;
}

// --- algorithms ----------------------------------------------------------------------------

#define HANDLE_OR_FAIL(h) \
    if (!as<Handle>(h, HANDLE)) return BAD_PARAM

int cudnnGetConvolutionForwardAlgorithm_v7(void* h, void* x, void* w, void* cd, void* y, int req, int* ret,
                                           void* perf) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(x, TENSOR), as<Tensor>(w, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(y, TENSOR), &s))
        return e;
    return list_one(FWD_ALGO, req, ret, perf);
}
int cudnnGetConvolutionBackwardDataAlgorithm_v7(void* h, void* w, void* dy, void* cd, void* dx, int req, int* ret,
                                                void* perf) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(dx, TENSOR), as<Tensor>(w, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(dy, TENSOR), &s))
        return e;
    return list_one(BWD_DATA_ALGO, req, ret, perf);
}
int cudnnGetConvolutionBackwardFilterAlgorithm_v7(void* h, void* x, void* dy, void* cd, void* dw, int req,
                                                  int* ret, void* perf) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(x, TENSOR), as<Tensor>(dw, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(dy, TENSOR), &s))
        return e;
    return list_one(BWD_FILTER_ALGO, req, ret, perf);
}

// The Ex searches run the operation (alpha 1, beta 0) into the given output buffer, as cuDNN's
// benchmark does, then list the one algorithm.
static const float ONE = 1.0f, ZERO = 0.0f;
int cudnnFindConvolutionForwardAlgorithmEx(void* h, void* x, const void* xp, void* w, const void* wp, void* cd,
                                           void* y, void* yp, int req, int* ret, void* perf, void*, size_t) {
    HANDLE_OR_FAIL(h);
    if (const int e = run_conv(FWD, &ONE, as<Tensor>(x, TENSOR), xp, as<Tensor>(w, FILTER), wp, as<Conv>(cd, CONV),
                               as<Tensor>(y, TENSOR), FWD_ALGO, &ZERO, yp))
        return e;
    return list_one(FWD_ALGO, req, ret, perf);
}
int cudnnFindConvolutionBackwardDataAlgorithmEx(void* h, void* w, const void* wp, void* dy, const void* dyp,
                                                void* cd, void* dx, void* dxp, int req, int* ret, void* perf, void*,
                                                size_t) {
    HANDLE_OR_FAIL(h);
    if (const int e = run_conv(BWD_DATA, &ONE, as<Tensor>(dx, TENSOR), wp, as<Tensor>(w, FILTER), dyp,
                               as<Conv>(cd, CONV), as<Tensor>(dy, TENSOR), BWD_DATA_ALGO, &ZERO, dxp))
        return e;
    return list_one(BWD_DATA_ALGO, req, ret, perf);
}
int cudnnFindConvolutionBackwardFilterAlgorithmEx(void* h, void* x, const void* xp, void* dy, const void* dyp,
                                                  void* cd, void* dw, void* dwp, int req, int* ret, void* perf,
                                                  void*, size_t) {
    HANDLE_OR_FAIL(h);
    if (const int e = run_conv(BWD_FILTER, &ONE, as<Tensor>(x, TENSOR), xp, as<Tensor>(dw, FILTER), dyp,
                               as<Conv>(cd, CONV), as<Tensor>(dy, TENSOR), BWD_FILTER_ALGO, &ZERO, dwp))
        return e;
    return list_one(BWD_FILTER_ALGO, req, ret, perf);
}

int cudnnGetConvolutionForwardWorkspaceSize(void* h, void* x, void* w, void* cd, void* y, int algo, size_t* size) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(x, TENSOR), as<Tensor>(w, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(y, TENSOR), &s))
        return e;
    if (algo < 0 || algo >= FWD_ALGO_COUNT || !size) return BAD_PARAM;
    *size = 0;
    return SUCCESS;
}
int cudnnGetConvolutionBackwardDataWorkspaceSize(void* h, void* w, void* dy, void* cd, void* dx, int algo,
                                                 size_t* size) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(dx, TENSOR), as<Tensor>(w, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(dy, TENSOR), &s))
        return e;
    if (algo < 0 || algo >= BWD_DATA_ALGO_COUNT || !size) return BAD_PARAM;
    *size = 0;
    return SUCCESS;
}
int cudnnGetConvolutionBackwardFilterWorkspaceSize(void* h, void* x, void* dy, void* cd, void* dw, int algo,
                                                   size_t* size) {
    HANDLE_OR_FAIL(h);
    Shape s;
    if (const int e = check_shape(as<Tensor>(x, TENSOR), as<Tensor>(dw, FILTER), as<Conv>(cd, CONV),
                                  as<Tensor>(dy, TENSOR), &s))
        return e;
    if (algo < 0 || algo >= BWD_FILTER_ALGO_COUNT || !size) return BAD_PARAM;
    *size = 0;
    return SUCCESS;
}

// --- convolutions --------------------------------------------------------------------------

int cudnnConvolutionForward(void* h, const void* alpha, void* x, const void* xp, void* w, const void* wp, void* cd,
                            int algo, void*, size_t, const void* beta, void* y, void* yp) {
    HANDLE_OR_FAIL(h);
    return run_conv(FWD, alpha, as<Tensor>(x, TENSOR), xp, as<Tensor>(w, FILTER), wp, as<Conv>(cd, CONV),
                    as<Tensor>(y, TENSOR), algo, beta, yp);
}
int cudnnConvolutionBackwardData(void* h, const void* alpha, void* w, const void* wp, void* dy, const void* dyp,
                                 void* cd, int algo, void*, size_t, const void* beta, void* dx, void* dxp) {
    HANDLE_OR_FAIL(h);
    return run_conv(BWD_DATA, alpha, as<Tensor>(dx, TENSOR), wp, as<Tensor>(w, FILTER), dyp, as<Conv>(cd, CONV),
                    as<Tensor>(dy, TENSOR), algo, beta, dxp);
}
int cudnnConvolutionBackwardFilter(void* h, const void* alpha, void* x, const void* xp, void* dy, const void* dyp,
                                   void* cd, int algo, void*, size_t, const void* beta, void* dw, void* dwp) {
    HANDLE_OR_FAIL(h);
    return run_conv(BWD_FILTER, alpha, as<Tensor>(x, TENSOR), xp, as<Tensor>(dw, FILTER), dyp, as<Conv>(cd, CONV),
                    as<Tensor>(dy, TENSOR), algo, beta, dwp);
}

// --- batch norm ----------------------------------------------------------------------------

int cudnnBatchNormalizationForwardTraining(void* h, int mode, const void* alpha, const void* beta, void* xd,
                                           const void* xp, void* yd, void* yp, void* pd, const void* scale,
                                           const void* bias, double factor, void* rmean, void* rvar, double eps,
                                           void* smean, void* sinv) {
    HANDLE_OR_FAIL(h);
    const Tensor *X = as<Tensor>(xd, TENSOR), *Y = as<Tensor>(yd, TENSOR), *P = as<Tensor>(pd, TENSOR);
    if (const int e = check_bn(mode, X, Y, P)) return e;
    if (!alpha || !beta || !xp || !yp || !scale || !bias) return BAD_PARAM;
    if ((rmean == nullptr) != (rvar == nullptr) || (smean == nullptr) != (sinv == nullptr)) return BAD_PARAM;
    if (!(eps >= 0.0)) return BAD_PARAM;  // CUDNN_BN_MIN_EPSILON is 0 in cuDNN 8 and 9
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    const float* x = static_cast<const float*>(xp);
    float* y = static_cast<float*>(yp);
    const float *g = static_cast<const float*>(scale), *bb = static_cast<const float*>(bias);
    const double m = (double)X->n * X->h * X->w;
    for (int j = 0; j < X->c; j++) {
        double mu, var;
        moments(*X, x, j, &mu, &var);
        const double inv = 1.0 / std::sqrt(var + eps);
        for (int i = 0; i < X->n; i++)
            for (int r = 0; r < X->h; r++)
                for (int q = 0; q < X->w; q++) {
                    const double v = (double)g[j] * ((double)x[X->at(i, j, r, q)] - mu) * inv + (double)bb[j];
                    float* o = y + Y->at(i, j, r, q);
                    *o = blend1(a, b, v, o);
                }
        if (rmean) {
            float *rm = static_cast<float*>(rmean), *rv = static_cast<float*>(rvar);
            const double unbiased = m > 1.0 ? var * m / (m - 1.0) : var;
            rm[j] = (float)((1.0 - factor) * (double)rm[j] + factor * mu);
            rv[j] = (float)((1.0 - factor) * (double)rv[j] + factor * unbiased);
        }
        if (smean) {
            static_cast<float*>(smean)[j] = (float)mu;
            static_cast<float*>(sinv)[j] = (float)inv;
        }
    }
    return SUCCESS;
}

int cudnnBatchNormalizationForwardInference(void* h, int mode, const void* alpha, const void* beta, void* xd,
                                            const void* xp, void* yd, void* yp, void* pd, const void* scale,
                                            const void* bias, const void* emean, const void* evar, double eps) {
    HANDLE_OR_FAIL(h);
    const Tensor *X = as<Tensor>(xd, TENSOR), *Y = as<Tensor>(yd, TENSOR), *P = as<Tensor>(pd, TENSOR);
    if (const int e = check_bn(mode, X, Y, P)) return e;
    if (!alpha || !beta || !xp || !yp || !scale || !bias || !emean || !evar) return BAD_PARAM;
    if (!(eps >= 0.0)) return BAD_PARAM;
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    const float* x = static_cast<const float*>(xp);
    float* y = static_cast<float*>(yp);
    const float *g = static_cast<const float*>(scale), *bb = static_cast<const float*>(bias);
    const float *em = static_cast<const float*>(emean), *ev = static_cast<const float*>(evar);
    for (int j = 0; j < X->c; j++) {
        const double inv = 1.0 / std::sqrt((double)ev[j] + eps);
        for (int i = 0; i < X->n; i++)
            for (int r = 0; r < X->h; r++)
                for (int q = 0; q < X->w; q++) {
                    const double v = (double)g[j] * ((double)x[X->at(i, j, r, q)] - (double)em[j]) * inv + (double)bb[j];
                    float* o = y + Y->at(i, j, r, q);
                    *o = blend1(a, b, v, o);
                }
    }
    return SUCCESS;
}

int cudnnBatchNormalizationBackward(void* h, int mode, const void* alpha_d, const void* beta_d, const void* alpha_p,
                                    const void* beta_p, void* xd, const void* xp, void* dyd, const void* dyp,
                                    void* dxd, void* dxp, void* pd, const void* scale, void* dscale, void* dbias,
                                    double eps, const void* smean, const void* sinv) {
    HANDLE_OR_FAIL(h);
    const Tensor *X = as<Tensor>(xd, TENSOR), *DY = as<Tensor>(dyd, TENSOR), *DX = as<Tensor>(dxd, TENSOR),
                 *P = as<Tensor>(pd, TENSOR);
    if (const int e = check_bn(mode, X, DY, P)) return e;
    if (const int e = check_bn(mode, X, DX, P)) return e;
    if (!alpha_d || !beta_d || !alpha_p || !beta_p || !xp || !dyp || !dxp || !scale || !dscale || !dbias)
        return BAD_PARAM;
    if ((smean == nullptr) != (sinv == nullptr)) return BAD_PARAM;
    if (!(eps >= 0.0)) return BAD_PARAM;
    const float ad = *static_cast<const float*>(alpha_d), bd = *static_cast<const float*>(beta_d);
    const float ap = *static_cast<const float*>(alpha_p), bp = *static_cast<const float*>(beta_p);
    const float *x = static_cast<const float*>(xp), *dy = static_cast<const float*>(dyp);
    float* dx = static_cast<float*>(dxp);
    const float* g = static_cast<const float*>(scale);
    float *ds = static_cast<float*>(dscale), *db = static_cast<float*>(dbias);
    const double m = (double)X->n * X->h * X->w;
    for (int j = 0; j < X->c; j++) {
        double mu, inv;
        if (smean) {
            mu = (double)static_cast<const float*>(smean)[j];
            inv = (double)static_cast<const float*>(sinv)[j];
        } else {
            double var;
            moments(*X, x, j, &mu, &var);
            inv = 1.0 / std::sqrt(var + eps);
        }
        double sb = 0.0, sg = 0.0;
        for (int i = 0; i < X->n; i++)
            for (int r = 0; r < X->h; r++)
                for (int q = 0; q < X->w; q++) {
                    const double d = (double)dy[DY->at(i, j, r, q)];
                    sb += d;
                    sg += d * ((double)x[X->at(i, j, r, q)] - mu) * inv;
                }
        // dx = γσ⁻¹/m · (m·dy − Σdy − x̂·Σ(dy·x̂)).
        const double k = (double)g[j] * inv / m;
        for (int i = 0; i < X->n; i++)
            for (int r = 0; r < X->h; r++)
                for (int q = 0; q < X->w; q++) {
                    const double xh = ((double)x[X->at(i, j, r, q)] - mu) * inv;
                    const double v = k * (m * (double)dy[DY->at(i, j, r, q)] - sb - xh * sg);
                    float* o = dx + DX->at(i, j, r, q);
                    *o = blend1(ad, bd, v, o);
                }
        ds[j] = blend1(ap, bp, sg, &ds[j]);
        db[j] = blend1(ap, bp, sb, &db[j]);
    }
    return SUCCESS;
}

}  // extern "C"
