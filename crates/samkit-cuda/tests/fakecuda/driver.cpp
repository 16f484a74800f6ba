// driver.cpp: a fake CUDA driver (libcuda.so.1) for the tests of machines without a GPU.
//
// It implements the part of the driver API that cudarc calls for samkit-cuda, on host memory:
// device pointers are host pointers, every stream operation runs to completion at once, a
// module's kernels are the CPU builds of kernels/*.cu (emu.h) linked into this library, found by
// name in the registries the test harness generates. Launches run each block as blockDim.x
// fibers, the blocks one after another.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <ucontext.h>
#include <vector>

#include "emu.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;
namespace emu {
Warp* warp;
Block* block;
unsigned lane;
}  // namespace emu

extern "C" const emu::Kern emu_reg_norm[];
extern "C" const emu::Kern emu_reg_perturb[];
extern "C" const emu::Kern emu_reg_update[];
extern "C" const emu::Kern emu_reg_fisher[];
extern "C" const emu::Kern emu_reg_select[];
extern "C" const emu::Kern emu_reg_nn[];

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum { OK = 0, ERR_INVALID_VALUE = 1, ERR_NOT_FOUND = 500 };

static int g_ctx_obj, g_module_obj, g_stream_obj;
static thread_local void* g_current = nullptr;

static int sm_count() {
    const char* v = std::getenv("SAMKIT_FAKE_SMS");
    return v ? std::atoi(v) : 3;
}

extern "C" {

CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return OK;
}
CUresult cuDeviceGetCount(int* c) {
    *c = 1;
    return OK;
}
CUresult cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return ERR_INVALID_VALUE;
    *d = 0;
    return OK;
}
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 16: *v = sm_count(); break;                 // multiprocessor count
        case 38: *v = 1 << 20; break;                    // L2 cache size
        case 75: *v = 9; break;                          // compute capability major
        case 76: *v = 0; break;                          // minor
        case 115: *v = 1; break;                         // memory pools supported
        case 1: *v = 1024; break;                        // max threads per block
        default: *v = 0; break;
    }
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "samkit fake CUDA device (CPU emulation)");
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) {
    *b = (size_t)1 << 34;
    return OK;
}
CUresult cuMemGetInfo_v2(size_t* f, size_t* t) {
    *f = *t = (size_t)1 << 34;
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** c, int) {
    *c = &g_ctx_obj;
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxGetCurrent(void** c) {
    *c = g_current;
    return OK;
}
CUresult cuCtxSetCurrent(void* c) {
    g_current = c;
    return OK;
}
CUresult cuCtxSynchronize() { return OK; }

CUresult cuStreamCreate(void** s, unsigned) {
    *s = &g_stream_obj;
    return OK;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = &g_stream_obj;
    return OK;
}
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) { return OK; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }

struct Event {
    std::chrono::steady_clock::time_point t;
};
CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now()};
    return OK;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
CUresult cuEventRecord(void* e, void*) {
    static_cast<Event*>(e)->t = std::chrono::steady_clock::now();
    return OK;
}
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventQuery(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->t - static_cast<Event*>(a)->t).count();
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// Fresh allocations are filled with 0xff bytes (NaN for floats): a kernel that reads memory
// nobody wrote makes the parity tests fail instead of passing by luck.
static CUresult alloc(CUdeviceptr* p, size_t n) {
    const size_t sz = ((n + 255) / 256) * 256 + 256;
    void* m = std::aligned_alloc(256, sz);
    if (!m) return 2;
    std::memset(m, 0xff, sz);
    *p = (CUdeviceptr)m;
    return OK;
}
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) { return alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) {
    std::free((void*)p);
    return OK;
}
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return cuMemFree_v2(p); }
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    *p = std::aligned_alloc(64, ((n + 63) / 64) * 64 + 64);
    return *p ? OK : 2;
}
CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return OK;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) {
    std::memcpy((void*)d, s, n);
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) {
    std::memcpy(d, (const void*)s, n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoH_v2(d, s, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
    std::memmove((void*)d, (const void*)s, n);
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
    std::memset((void*)d, v, n);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(d, v, n); }

CUresult cuModuleLoadData(void** m, const void*) {
    *m = &g_module_obj;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    for (const emu::Kern* reg : {emu_reg_norm, emu_reg_perturb, emu_reg_update, emu_reg_fisher, emu_reg_select, emu_reg_nn}) {
        for (const emu::Kern* k = reg; k->name; k++) {
            if (std::strcmp(k->name, name) == 0) {
                *f = const_cast<emu::Kern*>(k);
                return OK;
            }
        }
    }
    std::fprintf(stderr, "fake CUDA: no kernel named %s\n", name);
    return ERR_NOT_FOUND;
}
CUresult cuFuncGetAttribute(int* v, int, void*) {
    *v = 0;
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void*, int, size_t, unsigned) {
    *n = 1;
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void*, int, size_t) {
    *n = 1;
    return OK;
}

}  // extern "C"

// The threads of a block are fibers run round-robin by one scheduler: a thread runs until it
// waits at a barrier or returns. Launches are serialised (one scheduler at a time). On x86-64 a
// fiber switch saves the callee-saved registers and swaps stacks (a dozen instructions); else
// ucontext.
namespace fib {
constexpr unsigned MAX = 1024;
constexpr size_t STACK = 256 * 1024;
char* stacks[MAX];
bool done[MAX];
unsigned cur, nthreads;
const emu::Kern* kern;
void** params;
emu::Block* blk;
emu::Warp* warps;

void enter(unsigned t) {
    cur = t;
    threadIdx = uint3{t, 0, 0};
    emu::block = blk;
    emu::warp = &warps[t / 32];
    emu::lane = t % 32;
}

// An exited thread no longer takes part in the barriers of the others.
void drop(emu::Bar* b) {
    b->expected--;
    if (b->arrived > 0 && b->arrived == b->expected) {
        b->arrived = 0;
        b->gen++;
    }
}

void body() {
    const unsigned t = cur;
    kern->fn(params);
    drop(&warps[t / 32].bar);
    drop(&blk->bar);
    done[t] = true;
}

#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
void* sched_sp;
void* sp[MAX];

[[noreturn]] void trampoline() {
    body();
    emu_switch(&sp[cur], sched_sp);
    __builtin_unreachable();
}

void prepare(unsigned t) {
    auto top = reinterpret_cast<uintptr_t>(stacks[t] + STACK) & ~uintptr_t(15);
    auto* s = reinterpret_cast<void**>(top);
    *--s = nullptr;                                   // alignment: rsp ≡ 8 (mod 16) on entry
    *--s = reinterpret_cast<void*>(&trampoline);      // popped by ret
    for (int i = 0; i < 6; i++) *--s = nullptr;       // rbp rbx r12 r13 r14 r15
    sp[t] = s;
}
void resume(unsigned t) { emu_switch(&sched_sp, sp[t]); }
void yield(unsigned t) { emu_switch(&sp[t], sched_sp); }
#else
ucontext_t sched;
ucontext_t ctx[MAX];
void prepare(unsigned t) {
    getcontext(&ctx[t]);
    ctx[t].uc_stack.ss_sp = stacks[t];
    ctx[t].uc_stack.ss_size = STACK;
    ctx[t].uc_link = &sched;
    makecontext(&ctx[t], (void (*)())body, 0);
}
void resume(unsigned t) { swapcontext(&sched, &ctx[t]); }
void yield(unsigned t) { swapcontext(&ctx[t], &sched); }
#endif

void run_block(const emu::Kern* k, void** p, unsigned b, unsigned g, unsigned n) {
    const unsigned nwarps = (n + 31) / 32;
    std::vector<emu::Warp> ws(nwarps);
    for (unsigned w = 0; w < nwarps; w++) {
        ws[w].width = std::min(32u, n - 32 * w);
        ws[w].bar = emu::Bar{ws[w].width, 0, 0};
    }
    emu::Block bl{emu::Bar{n, 0, 0}, 0};
    kern = k;
    params = p;
    blk = &bl;
    warps = ws.data();
    nthreads = n;
    blockIdx = uint3{b, 0, 0};
    blockDim = dim3{n, 1, 1};
    gridDim = dim3{g, 1, 1};
    for (unsigned t = 0; t < n; t++) {
        if (!stacks[t]) stacks[t] = static_cast<char*>(std::malloc(STACK));
        prepare(t);
        done[t] = false;
    }
    unsigned left = n;
    while (left > 0) {
        for (unsigned t = 0; t < n; t++) {
            if (done[t]) continue;
            enter(t);
            resume(t);
            if (done[t]) left--;
        }
    }
}
}  // namespace fib

// Provisional: a trap aborts the test process with a message (to be turned into a failed launch).
void emu::trap() {
    std::fprintf(stderr, "fake CUDA: __trap() in block %u thread %u\n", blockIdx.x, threadIdx.x);
    std::abort();
}

void emu::wait(emu::Bar* b) {
    const unsigned g = b->gen;
    if (++b->arrived == b->expected) {
        b->arrived = 0;
        b->gen++;
        return;
    }
    const unsigned t = fib::cur;
    while (b->gen == g) fib::yield(t);
}

extern "C" {

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned, void*, void** params, void**) {
    if (gy != 1 || gz != 1 || by != 1 || bz != 1 || bx == 0 || bx > 1024) return ERR_INVALID_VALUE;
    const emu::Kern* k = static_cast<const emu::Kern*>(f);
    // One launch at a time: __shared__ variables are function statics.
    static std::mutex one;
    std::lock_guard<std::mutex> lock(one);
    for (unsigned b = 0; b < gx; b++) fib::run_block(k, params, b, gx, bx);
    return OK;
}

// NVRTC opens libcuda.so.1 itself and asks for the driver's private export tables: there are
// none here, and it copes with that.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return 801;  // CUDA_ERROR_NOT_SUPPORTED
}

CUresult cuGetErrorString(CUresult, const char** s) {
    *s = "fake CUDA driver error";
    return OK;
}
CUresult cuGetErrorName(CUresult, const char** s) {
    *s = "CUDA_ERROR_FAKE";
    return OK;
}

}  // extern "C"
