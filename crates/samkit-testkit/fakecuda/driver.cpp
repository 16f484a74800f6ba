// driver.cpp: a fake CUDA driver (libcuda.so.1) for the tests of machines without a GPU.
//
// It implements the part of the driver API that cudarc calls for samkit-cuda, on host memory:
// device pointers are host pointers, every stream operation but one runs to completion at once, a
// module's kernels are the CPU builds of crates/samkit-kernels/kernels/*.cu (emu.h) linked into this library, found by
// name in the registries the test harness generates (fake.rs; the image given to
// cuModuleLoadData is ignored).
//
// It is adversarial, so that what a sequential CPU run hides fails here as it could on an H200:
// - Scheduling: a block runs as one fiber per thread. At every round the runnable fibers resume
//   in a shuffled order and each warp may lag for rounds; the blocks of a grid run in a shuffled
//   order. SAMKIT_FAKE_SEED (default 1) seeds it; 0 runs everything in order. The seed is printed
//   once when the library loads and in every failure.
// - Memory: allocations have their exact size at a 256-byte aligned address, with canaries
//   before and after; the canaries of every live allocation are checked after each launch and on
//   free (CUDA_ERROR_ILLEGAL_ADDRESS naming the allocation). Fresh allocations and the __shared__
//   variables (before every block) are filled with 0xff bytes, NaN as f32/f64. Host copies and
//   memsets must stay inside one allocation.
// - Warp collectives must be reached by exactly the lanes of their mask (emu.h); __trap() and
//   every violation fail the launch with an error code (CUDA_ERROR_LAUNCH_FAILED,
//   CUDA_ERROR_ILLEGAL_INSTRUCTION) and a line on stderr, and the next launch works again (a
//   real context would stay broken).
// - Launch limits of an sm_90 device: blocks of at most 1024 threads (1024, 1024, 64) and at most
//   the kernel's __launch_bounds__ (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES); grids below
//   (2^31, 65536, 65536); dynamic shared memory within 48 KiB (less the static part) unless
//   cuFuncSetAttribute raised the limit (at most 227 KiB). 132 SMs (SAMKIT_FAKE_SMS overrides)
//   and the occupancy of an H100/H200: min(32, 2048 / threads) blocks per SM, limited by the
//   65536 registers and 228 KiB of shared memory of an SM. A kernel's registers and static shared
//   memory are read from the cubin given to cuModuleLoadData (NVRTC's sm_90 build of the same
//   source), as cuFuncGetAttribute reports them; without a cubin, 32 registers and none.
// - Asynchronous copies: a device-to-host copy into page-locked memory (cuMemHostAlloc) reads
//   the device at its place in the stream but reaches the host only at a synchronization that
//   follows it: cuStreamSynchronize, cuCtxSynchronize, cuEventSynchronize/cuEventQuery of an
//   event recorded after it, or a copy into pageable memory (which returns complete, so what
//   precedes it in the stream is complete too). A host read that waits on nothing, or on an event never recorded
//   after the copy, sees the old contents, as it may on a GPU (on the H200 such a read gave an
//   optimizer stale step counters; the emulator, running each copy at once, had hidden it).
#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <elf.h>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <ucontext.h>
#include <vector>

#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

extern "C" const emu::Kern emu_reg_norm[];
extern "C" const emu::Kern emu_reg_perturb[];
extern "C" const emu::Kern emu_reg_update[];
extern "C" const emu::Kern emu_reg_fisher[];
extern "C" const emu::Kern emu_reg_select[];
extern "C" const emu::Kern emu_reg_nn[];
// The deliberately broken test kernels of samkit-cuda's tests/emulator_catches.rs (catches.cu).
extern "C" const emu::Kern emu_reg_catches[];

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_OUT_OF_MEMORY = 2,
    ERR_INVALID_HANDLE = 400,
    ERR_NOT_FOUND = 500,
    ERR_ILLEGAL_ADDRESS = 700,
    ERR_LAUNCH_OUT_OF_RESOURCES = 701,
    ERR_ILLEGAL_INSTRUCTION = 715,
    ERR_LAUNCH_FAILED = 719,
    ERR_NOT_SUPPORTED = 801,
};

static const char* error_name(int e) {
    switch (e) {
        case OK: return "CUDA_SUCCESS";
        case ERR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case ERR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case ERR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case ERR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case ERR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case ERR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case ERR_ILLEGAL_INSTRUCTION: return "CUDA_ERROR_ILLEGAL_INSTRUCTION";
        case ERR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case ERR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}
static const char* error_string(int e) {
    switch (e) {
        case OK: return "no error";
        case ERR_INVALID_VALUE: return "invalid argument";
        case ERR_OUT_OF_MEMORY: return "out of memory";
        case ERR_INVALID_HANDLE: return "invalid resource handle";
        case ERR_NOT_FOUND: return "named symbol not found";
        case ERR_ILLEGAL_ADDRESS: return "an illegal memory access was encountered";
        case ERR_LAUNCH_OUT_OF_RESOURCES: return "too many resources requested for launch";
        case ERR_ILLEGAL_INSTRUCTION: return "an illegal instruction was encountered";
        case ERR_LAUNCH_FAILED: return "unspecified launch failure";
        case ERR_NOT_SUPPORTED: return "operation not supported";
        default: return "unknown error";
    }
}

static int g_ctx_obj, g_module_obj, g_stream_obj;
static thread_local void* g_current = nullptr;

// ---------------------------------------------------------------------------------------------
// The device: an sm_90 part with the H200's SM count and the limits of compute capability 9.0.
// ---------------------------------------------------------------------------------------------

constexpr int SMS = 132;
constexpr unsigned MAX_THREADS_PER_BLOCK = 1024;
constexpr unsigned MAX_BLOCK_Z = 64;
constexpr unsigned long long MAX_GRID_X = (1ull << 31) - 1;
constexpr unsigned MAX_GRID_YZ = 65535;
constexpr int MAX_THREADS_PER_SM = 2048;
constexpr int MAX_BLOCKS_PER_SM = 32;
constexpr int SHARED_PER_SM = 228 * 1024;
constexpr int SHARED_PER_BLOCK_DEFAULT = 48 * 1024;
constexpr int SHARED_PER_BLOCK_OPTIN = 227 * 1024;
constexpr int SHARED_RESERVED_PER_BLOCK = 1024;
constexpr int REGS_PER_SM = 65536;
// What cuFuncGetAttribute reports for every kernel: the CPU build has no register allocation;
// 32 registers never limit the occupancy below the thread limit, so grids match a lean kernel.
constexpr int REGS_PER_THREAD = 32;

static int sm_count() {
    const char* v = std::getenv("SAMKIT_FAKE_SMS");
    return v ? std::atoi(v) : SMS;
}

// The schedule's seed: SAMKIT_FAKE_SEED, 1 when unset; 0 turns the shuffling off.
static unsigned long long seed() {
    static const unsigned long long s = [] {
        const char* v = std::getenv("SAMKIT_FAKE_SEED");
        return v && *v ? std::strtoull(v, nullptr, 0) : 1ull;
    }();
    return s;
}

__attribute__((constructor)) static void announce() {
    std::fprintf(stderr,
                 "fake CUDA: SAMKIT_FAKE_SEED=%llu (the schedule of the emulated device; set it to try another)\n",
                 seed());
}

// splitmix64: a small, good generator for the schedules.
struct Rng {
    unsigned long long s;
    unsigned long long next() {
        unsigned long long z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, n).
    unsigned long long below(unsigned long long n) { return (unsigned long long)(((unsigned __int128)next() * n) >> 64); }
};

// ---------------------------------------------------------------------------------------------
// Kernels: attributes set through cuFuncSetAttribute.
// ---------------------------------------------------------------------------------------------

// What the cubin given to cuModuleLoadData says of a kernel (NVRTC's build of the same source for
// sm_90): its registers per thread and static shared memory. Kernels without one (a PTX module,
// the test family) get REGS_PER_THREAD and no static shared memory.
struct CubinInfo {
    int regs = REGS_PER_THREAD;
    int smem = 0;
};
static std::mutex g_cubin_mu;
static std::map<std::string, CubinInfo> g_cubin;

// Reads an ELF cubin: the size of `.nv.shared.<kernel>` is the kernel's static shared memory plus
// the 1 KiB an sm_90 block reserves; the attribute table `.nv.info` holds EIATTR_REGCOUNT
// entries (format EIFMT_SVAL, payload: symbol index, registers).
static void read_cubin(const void* image) {
    constexpr unsigned char EIFMT_SVAL = 0x04, EIATTR_REGCOUNT = 0x2f;
    const unsigned char* p = static_cast<const unsigned char*>(image);
    if (!p || std::memcmp(p, ELFMAG, SELFMAG) != 0 || p[EI_CLASS] != ELFCLASS64) return;
    Elf64_Ehdr eh;
    std::memcpy(&eh, p, sizeof eh);
    if (eh.e_shentsize != sizeof(Elf64_Shdr) || eh.e_shstrndx >= eh.e_shnum) return;
    auto section = [&](unsigned i) {
        Elf64_Shdr s;
        std::memcpy(&s, p + eh.e_shoff + (size_t)i * sizeof(Elf64_Shdr), sizeof s);
        return s;
    };
    const Elf64_Shdr names = section(eh.e_shstrndx);
    auto name_of = [&](const Elf64_Shdr& s) { return reinterpret_cast<const char*>(p + names.sh_offset + s.sh_name); };
    Elf64_Shdr symtab{}, info{};
    std::lock_guard<std::mutex> l(g_cubin_mu);
    for (unsigned i = 0; i < eh.e_shnum; i++) {
        const Elf64_Shdr s = section(i);
        const char* name = name_of(s);
        if (s.sh_type == SHT_SYMTAB) symtab = s;
        if (std::strcmp(name, ".nv.info") == 0) info = s;
        if (std::strncmp(name, ".nv.shared.", 11) == 0 && std::strncmp(name + 11, "reserved.", 9) != 0)
            g_cubin[name + 11].smem = (int)(s.sh_size >= (size_t)SHARED_RESERVED_PER_BLOCK ? s.sh_size - SHARED_RESERVED_PER_BLOCK : s.sh_size);
    }
    if (!symtab.sh_size || !info.sh_size || symtab.sh_link >= eh.e_shnum) return;
    const Elf64_Shdr strtab = section(symtab.sh_link);
    for (size_t o = info.sh_offset; o + 4 <= info.sh_offset + info.sh_size;) {
        const unsigned char fmt = p[o], attr = p[o + 1];
        unsigned short size = 0;
        std::memcpy(&size, p + o + 2, 2);
        if (fmt != EIFMT_SVAL) {
            o += 4;
            continue;
        }
        if (attr == EIATTR_REGCOUNT && size == 8) {
            unsigned sym = 0, regs = 0;
            std::memcpy(&sym, p + o + 4, 4);
            std::memcpy(&regs, p + o + 8, 4);
            if ((sym + 1) * sizeof(Elf64_Sym) <= symtab.sh_size) {
                Elf64_Sym y;
                std::memcpy(&y, p + symtab.sh_offset + (size_t)sym * sizeof(Elf64_Sym), sizeof y);
                g_cubin[reinterpret_cast<const char*>(p + strtab.sh_offset + y.st_name)].regs = (int)regs;
            }
        }
        o += 4 + size;
    }
}

static CubinInfo cubin_info(const emu::Kern* k) {
    std::lock_guard<std::mutex> l(g_cubin_mu);
    auto it = g_cubin.find(k->name);
    return it == g_cubin.end() ? CubinInfo{} : it->second;
}

// The kernel's limit on dynamic shared memory: 48 KiB with the static part unless
// cuFuncSetAttribute set it (-1: not set).
struct FuncState {
    int max_dynamic_shared = -1;
};
static std::mutex g_func_mu;
static std::map<const emu::Kern*, FuncState> g_funcs;

static int max_dynamic_shared(const emu::Kern* k) {
    int v;
    {
        std::lock_guard<std::mutex> l(g_func_mu);
        v = g_funcs[k].max_dynamic_shared;
    }
    return v >= 0 ? v : std::max(0, SHARED_PER_BLOCK_DEFAULT - cubin_info(k).smem);
}

static unsigned max_threads(const emu::Kern* k) {
    return k->max_threads ? std::min(k->max_threads, MAX_THREADS_PER_BLOCK) : MAX_THREADS_PER_BLOCK;
}

// Registers of one warp: allocated in units of 256.
static int warp_regs(int regs) { return ((regs * 32 + 255) / 256) * 256; }

// Resident blocks per SM for `threads` threads and `dynamic` bytes of dynamic shared memory.
static int occupancy(const emu::Kern* k, int threads, size_t dynamic) {
    if (threads <= 0 || (unsigned)threads > max_threads(k)) return 0;
    const CubinInfo c = cubin_info(k);
    const int warps = (threads + 31) / 32;
    int n = std::min(MAX_BLOCKS_PER_SM, (MAX_THREADS_PER_SM / 32) / warps);
    n = std::min(n, (REGS_PER_SM / warp_regs(std::max(c.regs, 1))) / warps);
    const size_t smem = (size_t)c.smem + dynamic + SHARED_RESERVED_PER_BLOCK;
    n = std::min<long long>(n, (long long)(SHARED_PER_SM / smem));
    return n;
}

// ---------------------------------------------------------------------------------------------
// Memory: exact sizes, canaries on both sides.
// ---------------------------------------------------------------------------------------------

// Bytes of canary before an allocation (keeps the 256-byte alignment CUDA guarantees); after
// it, the canary runs to the next multiple of 256 plus CANARY_BACK bytes.
constexpr size_t CANARY_FRONT = 256;
constexpr size_t CANARY_BACK = 256;
constexpr unsigned char POISON_BYTE = 0xff;

struct Alloc {
    size_t n;
    char* base;  // the block from aligned_alloc: CANARY_FRONT bytes before the user's pointer
    size_t total;
};
static std::mutex g_alloc_mu;
static std::map<CUdeviceptr, Alloc> g_allocs;

static unsigned char canary_byte(size_t i) { return (unsigned char)(0x5a + 0x3b * (unsigned)i); }

static void arm(const Alloc& a) {
    for (size_t i = 0; i < CANARY_FRONT; i++) a.base[i] = (char)canary_byte(i);
    for (size_t i = CANARY_FRONT + a.n; i < a.total; i++) a.base[i] = (char)canary_byte(i);
}

// The offset (from the user's pointer) of the first damaged canary byte; false when intact.
static bool damaged(const Alloc& a, long long* at) {
    for (size_t i = 0; i < CANARY_FRONT; i++)
        if ((unsigned char)a.base[i] != canary_byte(i)) {
            *at = (long long)i - (long long)CANARY_FRONT;
            return true;
        }
    for (size_t i = CANARY_FRONT + a.n; i < a.total; i++)
        if ((unsigned char)a.base[i] != canary_byte(i)) {
            *at = (long long)(i - CANARY_FRONT);
            return true;
        }
    return false;
}

// Every damaged allocation, described on stderr after `when`; the canaries are re-armed so that
// one overrun is reported once. Returns whether any was damaged.
static bool check_all_canaries(const char* when) {
    std::lock_guard<std::mutex> l(g_alloc_mu);
    bool bad = false;
    for (auto& [p, a] : g_allocs) {
        long long at;
        if (damaged(a, &at)) {
            std::fprintf(stderr,
                         "fake CUDA: %s: CUDA_ERROR_ILLEGAL_ADDRESS: a write outside the allocation at 0x%llx of %zu "
                         "bytes (first damaged byte at offset %lld) (SAMKIT_FAKE_SEED=%llu)\n",
                         when, p, a.n, at, seed());
            arm(a);
            bad = true;
        }
    }
    return bad;
}

// Whether [p, p + n) lies inside one live allocation; else an error on stderr.
static bool inside(CUdeviceptr p, size_t n, const char* what) {
    std::lock_guard<std::mutex> l(g_alloc_mu);
    auto it = g_allocs.upper_bound(p);
    if (it != g_allocs.begin()) {
        --it;
        if (p >= it->first && p - it->first <= it->second.n && n <= it->second.n - (p - it->first)) return true;
        std::fprintf(stderr, "fake CUDA: %s of %zu bytes at 0x%llx: outside the allocation at 0x%llx of %zu bytes\n",
                     what, n, p, it->first, it->second.n);
        return false;
    }
    std::fprintf(stderr, "fake CUDA: %s of %zu bytes at 0x%llx: not device memory\n", what, n, p);
    return false;
}

// Fresh allocations are filled with 0xff bytes (NaN for floats): a kernel that reads memory
// nobody wrote makes the parity tests fail instead of passing by luck.
static CUresult alloc(CUdeviceptr* p, size_t n) {
    const size_t total = CANARY_FRONT + ((n + 255) / 256) * 256 + CANARY_BACK;
    char* m = static_cast<char*>(std::aligned_alloc(256, total));
    if (!m) return ERR_OUT_OF_MEMORY;
    std::memset(m + CANARY_FRONT, POISON_BYTE, n);
    const Alloc a{n, m, total};
    arm(a);
    *p = (CUdeviceptr)(m + CANARY_FRONT);
    std::lock_guard<std::mutex> l(g_alloc_mu);
    g_allocs[*p] = a;
    return OK;
}

static CUresult release(CUdeviceptr p) {
    if (p == 0) return OK;
    Alloc a;
    {
        std::lock_guard<std::mutex> l(g_alloc_mu);
        auto it = g_allocs.find(p);
        if (it == g_allocs.end()) {
            std::fprintf(stderr, "fake CUDA: cuMemFree of 0x%llx, which is not a live allocation\n", p);
            return ERR_INVALID_VALUE;
        }
        a = it->second;
        g_allocs.erase(it);
    }
    long long at;
    const bool bad = damaged(a, &at);
    if (bad)
        std::fprintf(stderr,
                     "fake CUDA: cuMemFree: CUDA_ERROR_ILLEGAL_ADDRESS: a write outside the allocation at 0x%llx of %zu "
                     "bytes (first damaged byte at offset %lld) (SAMKIT_FAKE_SEED=%llu)\n",
                     p, a.n, at, seed());
    std::free(a.base);
    return bad ? ERR_ILLEGAL_ADDRESS : OK;
}

// ---------------------------------------------------------------------------------------------
// The fibers of a block.
// ---------------------------------------------------------------------------------------------

// The threads of a block are fibers of one OS thread, resumed by one scheduler in rounds: a
// thread runs until it waits (a barrier, a warp collective) or returns. Launches are serialised
// (one scheduler at a time). On x86-64 a fiber switch saves the callee-saved registers and swaps
// stacks (a dozen instructions); else ucontext.
namespace fib {
constexpr unsigned MAX = MAX_THREADS_PER_BLOCK;
constexpr size_t STACK = 256 * 1024;

enum State : unsigned char { RUNNABLE, AT_BARRIER, AT_WARP, EXITED, ABANDONED };
struct Thread {
    State st;
    emu::Op op;
    const char* name;
    unsigned mask;  // effective mask of the collective it waits in
    int src;
    unsigned long long val, res;
};
struct Warp {
    unsigned exists;   // lanes of this warp in the block
    unsigned live;     // lanes that have not exited
    unsigned waiting;  // lanes waiting in a collective
    unsigned long long lag;  // the warp runs in a round when (rng & lag) == 0
};

char* stacks[MAX];
bool dirty[MAX];  // the stack of an abandoned fiber (its sanitizer shadow must be cleared)
Thread th[MAX];
Warp warps[MAX / 32];
unsigned cur, nthreads;
const emu::Kern* kern;
void** params;
Rng rng;
bool shuffle;
// The block barrier.
// Threads alive, threads waiting at the barrier and how many of them passed a non-zero predicate;
// the result of the last release (its count of predicates and of live threads).
unsigned live, at_barrier, barrier_preds, barrier_count, barrier_live;
std::vector<unsigned> released;

// The first error of the running launch.
int err_code;
std::string err_msg;
uint3 err_block, err_thread;

void enter(unsigned t) {
    cur = t;
    if (blockDim.y == 1 && blockDim.z == 1) threadIdx = uint3{t, 0, 0};
    else threadIdx = uint3{t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
}

void set_error(int code, const std::string& what) {
    if (err_code) return;
    err_code = code;
    err_msg = what;
    err_block = blockIdx;
    err_thread = threadIdx;
}

std::string lanes(unsigned m) {
    char b[16];
    std::snprintf(b, sizeof b, "0x%08x", m);
    return b;
}

void release_barrier() {
    barrier_live = live;
    for (unsigned t = 0; t < nthreads; t++)
        if (th[t].st == AT_BARRIER) {
            th[t].st = RUNNABLE;
            released.push_back(t);
        }
    barrier_count = barrier_preds;
    at_barrier = 0;
    barrier_preds = 0;
}

// Completes the collective of the lanes `m` of warp `w` (all waiting with mask m).
bool resolve(unsigned w, unsigned m) {
    Thread* g = &th[w * 32];
    const unsigned first = (unsigned)__builtin_ctz(m);
    for (unsigned bits = m; bits; bits &= bits - 1) {
        const unsigned l = (unsigned)__builtin_ctz(bits);
        if (g[l].op != g[first].op || (g[l].name != g[first].name && std::strcmp(g[l].name, g[first].name) != 0)) {
            set_error(ERR_ILLEGAL_INSTRUCTION, "warp " + std::to_string(w) + ": lane " + std::to_string(first) +
                                                   " is in " + g[first].name + " and lane " + std::to_string(l) +
                                                   " in " + g[l].name + ", with the same mask " + lanes(m));
            return false;
        }
    }
    unsigned long long ballot = 0, acc = 0;
    const emu::Op op = g[first].op;
    if (op == emu::OP_REDUCE_AND) acc = ~0ull;
    if (op == emu::OP_REDUCE_MIN) acc = 0xffffffffull;
    bool all_equal = true;
    // Shuffles (most collectives) need no aggregate.
    const bool aggregate = op != emu::OP_SHFL && op != emu::OP_SYNCWARP;
    for (unsigned bits = aggregate ? m : 0; bits; bits &= bits - 1) {
        const unsigned l = (unsigned)__builtin_ctz(bits);
        const unsigned long long v = g[l].val;
        if (v) ballot |= 1ull << l;
        if (v != g[first].val) all_equal = false;
        switch (op) {
            case emu::OP_REDUCE_ADD: acc = (acc + v) & 0xffffffffull; break;
            case emu::OP_REDUCE_MIN: acc = std::min(acc, v & 0xffffffffull); break;
            case emu::OP_REDUCE_MAX: acc = std::max(acc, v & 0xffffffffull); break;
            case emu::OP_REDUCE_AND: acc &= v; break;
            case emu::OP_REDUCE_OR: acc |= v; break;
            case emu::OP_REDUCE_XOR: acc ^= v; break;
            default: break;
        }
    }
    for (unsigned bits = m; bits; bits &= bits - 1) {
        const unsigned l = (unsigned)__builtin_ctz(bits);
        Thread& x = g[l];
        switch (op) {
            case emu::OP_SHFL:
                if (x.src == emu::SRC_SELF) x.res = x.val;
                else if (x.src >= 0 && x.src < 32 && ((m >> x.src) & 1)) x.res = g[x.src].val;
                else x.res = emu::POISON;  // a lane outside the collective: undefined on the GPU
                break;
            case emu::OP_BALLOT: x.res = ballot; break;
            case emu::OP_MATCH_ANY: {
                unsigned long long r = 0;
                for (unsigned b2 = m; b2; b2 &= b2 - 1)
                    if (g[__builtin_ctz(b2)].val == x.val) r |= 1ull << __builtin_ctz(b2);
                x.res = r;
                break;
            }
            case emu::OP_MATCH_ALL: x.res = all_equal ? m : 0; break;
            case emu::OP_SYNCWARP: x.res = 0; break;
            default: x.res = acc; break;
        }
        x.st = RUNNABLE;
        released.push_back(w * 32 + l);
    }
    warps[w].waiting &= ~m;
    return true;
}

// Whether the lanes of `m` all wait in a collective with the mask `m`.
bool complete(unsigned w, unsigned m) {
    if ((warps[w].waiting & m) != m) return false;
    for (unsigned bits = m; bits; bits &= bits - 1)
        if (th[w * 32 + __builtin_ctz(bits)].mask != m) return false;
    return true;
}

void body();

#if EMU_ASAN
// The sanitizer must know which stack runs (it keeps a shadow of each).
const void* sched_bottom;
size_t sched_size;
void* fake_stacks[MAX];
#endif

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

void to_sched(unsigned t, bool dying) {
#if EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake_stacks[t], sched_bottom, sched_size);
#else
    (void)dying;
#endif
    emu_switch(&sp[t], sched_sp);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stacks[t], &sched_bottom, &sched_size);
#endif
}

[[noreturn]] void trampoline() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    body();
    to_sched(cur, true);
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
void resume(unsigned t) {
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stacks[t], STACK);
#endif
    emu_switch(&sched_sp, sp[t]);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}
#else
ucontext_t sched;
ucontext_t ctx[MAX];
void trampoline() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched_bottom, &sched_size);
#endif
    body();
#if EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, sched_bottom, sched_size);
#endif
}
void prepare(unsigned t) {
    getcontext(&ctx[t]);
    ctx[t].uc_stack.ss_sp = stacks[t];
    ctx[t].uc_stack.ss_size = STACK;
    ctx[t].uc_link = &sched;
    makecontext(&ctx[t], (void (*)())trampoline, 0);
}
void resume(unsigned t) {
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, stacks[t], STACK);
#endif
    swapcontext(&sched, &ctx[t]);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}
void to_sched(unsigned t, bool dying) {
#if EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &fake_stacks[t], sched_bottom, sched_size);
#else
    (void)dying;
#endif
    swapcontext(&ctx[t], &sched);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake_stacks[t], &sched_bottom, &sched_size);
#endif
}
#endif

// Leaves the running fiber for good (after an error): the scheduler abandons the block.
[[noreturn]] void abandon() {
    const unsigned t = cur;
    th[t].st = ABANDONED;
    dirty[t] = true;
    to_sched(t, true);
    __builtin_unreachable();
}

void exit_thread(unsigned t) {
    th[t].st = EXITED;
    live--;
    Warp& w = warps[t / 32];
    const unsigned bit = 1u << (t % 32);
    w.live &= ~bit;
    // A lane that waits in a collective naming this one would wait forever.
    for (unsigned bits = w.waiting; bits; bits &= bits - 1) {
        const Thread& x = th[(t & ~31u) + __builtin_ctz(bits)];
        if (x.mask & bit) {
            set_error(ERR_ILLEGAL_INSTRUCTION,
                      "lane " + std::to_string(t % 32) + " of warp " + std::to_string(t / 32) +
                          " exited while lane " + std::to_string(__builtin_ctz(bits)) + " waits for it in " + x.name +
                          " with mask " + lanes(x.mask));
            return;
        }
    }
    if (at_barrier > 0 && at_barrier == live) release_barrier();
}

void body() {
    const unsigned t = cur;
    kern->fn(params);
    exit_thread(t);
}

void describe_deadlock() {
    std::string d = "no thread can go on:";
    for (unsigned w = 0; w * 32 < nthreads; w++) {
        const Warp& x = warps[w];
        if (!x.waiting) continue;
        d += " warp " + std::to_string(w) + ":";
        for (unsigned bits = x.waiting; bits; bits &= bits - 1) {
            const unsigned l = (unsigned)__builtin_ctz(bits);
            const Thread& y = th[w * 32 + l];
            d += " lane " + std::to_string(l) + " in " + y.name + " with mask " + lanes(y.mask) + ";";
        }
        const unsigned missing = x.live & ~x.waiting;
        if (missing) d += " lanes " + lanes(missing) + " of the masks are at __syncthreads;";
    }
    set_error(ERR_ILLEGAL_INSTRUCTION, d);
}

// Runs block `b` of the launch; false when it failed (fib::err_*).
bool run_block(unsigned n) {
    nthreads = n;
    live = n;
    at_barrier = 0;
    barrier_preds = 0;
    barrier_count = 0;
    barrier_live = n;
    released.clear();
    const unsigned nw = (n + 31) / 32;
    for (unsigned w = 0; w < nw; w++) {
        const unsigned width = std::min(32u, n - 32 * w);
        const unsigned ex = width == 32 ? 0xffffffffu : (1u << width) - 1u;
        // Half the warps run every round; the others lag (1 round in 2 or 1 in 8).
        static const unsigned long long lags[4] = {0, 0, 1, 7};
        warps[w] = Warp{ex, ex, 0, shuffle ? lags[rng.next() & 3] : 0};
    }
    for (unsigned t = 0; t < n; t++) {
        if (!stacks[t]) stacks[t] = static_cast<char*>(std::malloc(STACK));
#if EMU_ASAN
        if (dirty[t]) ASAN_UNPOISON_MEMORY_REGION(stacks[t], STACK);
#endif
        dirty[t] = false;
        prepare(t);
        th[t] = Thread{RUNNABLE, emu::OP_SYNCWARP, "", 0, 0, 0, 0};
    }
    // Shared memory as a new block finds it: whatever the last one left, here poison.
    if (kern->shared_end > kern->shared_begin)
        std::memset(kern->shared_begin, POISON_BYTE, (size_t)(kern->shared_end - kern->shared_begin));
    static std::vector<unsigned> run, next;
    run.resize(n);
    for (unsigned t = 0; t < n; t++) run[t] = t;
    bool sel[MAX / 32];
    while (!run.empty()) {
        if (shuffle) {
            // Fisher-Yates with 16 random bits per draw (four per call): the bias is irrelevant here.
            unsigned long long bits = 0;
            unsigned left = 0;
            for (size_t i = run.size(); i > 1; i--) {
                if (left == 0) {
                    bits = rng.next();
                    left = 4;
                }
                const size_t j = (size_t)(((bits & 0xffff) * i) >> 16);
                bits >>= 16;
                left--;
                std::swap(run[i - 1], run[j]);
            }
            bool any = false;
            for (unsigned w = 0; w < nw; w++) sel[w] = (rng.next() & warps[w].lag) == 0;
            for (unsigned t : run) any = any || sel[t / 32];
            if (!any)
                for (unsigned w = 0; w < nw; w++) sel[w] = true;
        } else {
            for (unsigned w = 0; w < nw; w++) sel[w] = true;
        }
        next.clear();
        for (unsigned t : run) {
            if (!sel[t / 32]) {
                next.push_back(t);
                continue;
            }
            enter(t);
            resume(t);
            if (err_code) return false;
        }
        next.insert(next.end(), released.begin(), released.end());
        released.clear();
        std::swap(run, next);
    }
    if (live > 0) {
        describe_deadlock();
        return false;
    }
    return true;
}
}  // namespace fib

void emu::fail(int code, const char* what) {
    fib::set_error(code, what);
    fib::abandon();
}

void emu::trap() { emu::fail(ERR_LAUNCH_FAILED, "__trap()"); }

unsigned emu::lane_id() { return fib::cur % 32; }

unsigned emu::active_lanes() { return fib::warps[fib::cur / 32].live; }

unsigned emu::block_sync(int pred, bool all) {
    using namespace fib;
    const unsigned t = cur;
    th[t].st = AT_BARRIER;
    at_barrier++;
    if (pred) barrier_preds++;
    if (at_barrier == live) release_barrier();
    to_sched(t, false);
    // Every released thread reads the result before any of them can reach the next barrier.
    return all ? (barrier_count == barrier_live ? 1u : 0u) : barrier_count;
}

unsigned long long emu::warp_op(Op op, const char* name, unsigned mask, unsigned long long value, int src) {
    using namespace fib;
    const unsigned t = cur, w = t / 32, l = t % 32;
    Warp& x = warps[w];
    const unsigned eff = mask & x.exists;
    if (!((eff >> l) & 1)) {
        set_error(ERR_ILLEGAL_INSTRUCTION, std::string(name) + " in lane " + std::to_string(l) + " of warp " +
                                               std::to_string(w) + " with mask " + lanes(mask) +
                                               ", which does not include the lane");
        abandon();
    }
    if (eff & ~x.live) {
        set_error(ERR_ILLEGAL_INSTRUCTION, std::string(name) + " in lane " + std::to_string(l) + " of warp " +
                                               std::to_string(w) + " with mask " + lanes(mask) + ": lanes " +
                                               lanes(eff & ~x.live) + " have exited");
        abandon();
    }
    th[t] = Thread{AT_WARP, op, name, eff, src, value, 0};
    x.waiting |= 1u << l;
    if (complete(w, eff) && !resolve(w, eff)) abandon();
    to_sched(t, false);
    return th[t].res;
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
        case 1: *v = (int)MAX_THREADS_PER_BLOCK; break;      // max threads per block
        case 2: *v = (int)MAX_THREADS_PER_BLOCK; break;      // max block dim x
        case 3: *v = (int)MAX_THREADS_PER_BLOCK; break;      // max block dim y
        case 4: *v = (int)MAX_BLOCK_Z; break;                // max block dim z
        case 5: *v = (int)MAX_GRID_X; break;                 // max grid dim x
        case 6: *v = (int)MAX_GRID_YZ; break;                // max grid dim y
        case 7: *v = (int)MAX_GRID_YZ; break;                // max grid dim z
        case 8: *v = SHARED_PER_BLOCK_DEFAULT; break;        // max shared memory per block
        case 10: *v = 32; break;                             // warp size
        case 12: *v = REGS_PER_SM; break;                    // max registers per block
        case 16: *v = sm_count(); break;                     // multiprocessor count
        // L2 cache size: small, so that the benchmark's L2 flush stays cheap on the CPU.
        case 38: *v = 1 << 20; break;
        case 39: *v = MAX_THREADS_PER_SM; break;             // max threads per SM
        case 75: *v = 9; break;                              // compute capability major
        case 76: *v = 0; break;                              // minor
        case 81: *v = SHARED_PER_SM; break;                  // max shared memory per SM
        case 82: *v = REGS_PER_SM; break;                    // max registers per SM
        case 97: *v = SHARED_PER_BLOCK_OPTIN; break;         // max shared memory per block (opt-in)
        case 106: *v = MAX_BLOCKS_PER_SM; break;             // max blocks per SM
        case 111: *v = SHARED_RESERVED_PER_BLOCK; break;     // reserved shared memory per block
        case 115: *v = 1; break;                             // memory pools supported
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
// The pending device-to-host copies into page-locked memory (see the header), in stream order.
struct PendingCopy {
    unsigned long long seq;
    std::thread::id thread;
    unsigned char* dst;
    std::vector<unsigned char> bytes;
};
static std::mutex g_pending_mu;
static std::vector<PendingCopy> g_pending;
// Stream operations enqueued so far (a pending copy's place; an event's place is the count when
// it was recorded).
static unsigned long long g_stream_seq = 0;
// Page-locked allocations: address -> size.
static std::map<uintptr_t, size_t> g_pinned;

// Delivers this thread's pending copies that precede `upto` (all of them for ~0ull).
static void deliver(unsigned long long upto) {
    std::lock_guard<std::mutex> l(g_pending_mu);
    const std::thread::id me = std::this_thread::get_id();
    auto keep = g_pending.begin();
    for (auto it = g_pending.begin(); it != g_pending.end(); ++it) {
        if (it->thread == me && it->seq < upto) {
            std::memcpy(it->dst, it->bytes.data(), it->bytes.size());
        } else {
            // Not onto itself: a vector moved onto itself is left empty.
            if (keep != it) *keep = std::move(*it);
            ++keep;
        }
    }
    g_pending.erase(keep, g_pending.end());
}

static bool page_locked(const void* p, size_t n) {
    std::lock_guard<std::mutex> l(g_pending_mu);
    const uintptr_t a = (uintptr_t)p;
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

CUresult cuCtxSynchronize() {
    deliver(~0ull);
    return OK;
}

CUresult cuStreamCreate(void** s, unsigned) {
    *s = &g_stream_obj;
    return OK;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) {
    *s = &g_stream_obj;
    return OK;
}
CUresult cuStreamDestroy_v2(void*) { return OK; }
CUresult cuStreamSynchronize(void*) {
    deliver(~0ull);
    return OK;
}
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return OK; }

struct Event {
    std::chrono::steady_clock::time_point t;
    // The stream operations before its last record (0: never recorded, it waits for nothing).
    unsigned long long seq;
};
CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now(), 0};
    return OK;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return OK;
}
CUresult cuEventRecord(void* e, void*) {
    Event* ev = static_cast<Event*>(e);
    ev->t = std::chrono::steady_clock::now();
    std::lock_guard<std::mutex> l(g_pending_mu);
    ev->seq = ++g_stream_seq;
    return OK;
}
CUresult cuEventSynchronize(void* e) {
    deliver(static_cast<Event*>(e)->seq);
    return OK;
}
// Reports the event complete (a schedule a GPU may take), so what precedes it has arrived.
CUresult cuEventQuery(void* e) { return cuEventSynchronize(e); }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->t - static_cast<Event*>(a)->t).count();
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t n) { return alloc(p, n); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t n, void*) { return alloc(p, n); }
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return release(p); }
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    *p = std::aligned_alloc(64, ((n + 63) / 64) * 64 + 64);
    if (!*p) return ERR_OUT_OF_MEMORY;
    std::lock_guard<std::mutex> l(g_pending_mu);
    g_pinned[(uintptr_t)*p] = n;
    return OK;
}
CUresult cuMemFreeHost(void* p) {
    {
        std::lock_guard<std::mutex> l(g_pending_mu);
        auto a = g_pinned.find((uintptr_t)p);
        if (a != g_pinned.end()) {
            // A copy still pending into it never arrives.
            const uintptr_t lo = a->first, hi = a->first + a->second;
            g_pending.erase(std::remove_if(g_pending.begin(), g_pending.end(),
                                           [&](const PendingCopy& c) {
                                               return (uintptr_t)c.dst >= lo && (uintptr_t)c.dst < hi;
                                           }),
                            g_pending.end());
            g_pinned.erase(a);
        }
    }
    std::free(p);
    return OK;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t n) {
    if (!inside(d, n, "cuMemcpyHtoD")) return ERR_INVALID_VALUE;
    std::memcpy((void*)d, s, n);
    return OK;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t n, void*) { return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t n) {
    if (!inside(s, n, "cuMemcpyDtoH")) return ERR_INVALID_VALUE;
    std::memcpy(d, (const void*)s, n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* d, CUdeviceptr s, size_t n, void*) {
    // Into pageable memory the copy returns once it is complete on a GPU too, so what precedes it
    // in the stream, a pending copy included, is complete as well.
    if (!page_locked(d, n)) {
        deliver(~0ull);
        return cuMemcpyDtoH_v2(d, s, n);
    }
    if (!inside(s, n, "cuMemcpyDtoHAsync")) return ERR_INVALID_VALUE;
    const unsigned char* src = (const unsigned char*)s;
    std::lock_guard<std::mutex> l(g_pending_mu);
    g_pending.push_back(PendingCopy{++g_stream_seq, std::this_thread::get_id(), (unsigned char*)d,
                                    std::vector<unsigned char>(src, src + n)});
    return OK;
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr d, CUdeviceptr s, size_t n) {
    if (!inside(d, n, "cuMemcpyDtoD (destination)") || !inside(s, n, "cuMemcpyDtoD (source)")) return ERR_INVALID_VALUE;
    std::memmove((void*)d, (const void*)s, n);
    return OK;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuMemsetD8_v2(CUdeviceptr d, unsigned char v, size_t n) {
    if (!inside(d, n, "cuMemsetD8")) return ERR_INVALID_VALUE;
    std::memset((void*)d, v, n);
    return OK;
}
CUresult cuMemsetD8Async(CUdeviceptr d, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(d, v, n); }

CUresult cuModuleLoadData(void** m, const void* image) {
    read_cubin(image);
    *m = &g_module_obj;
    return OK;
}
CUresult cuModuleUnload(void*) { return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    for (const emu::Kern* reg :
         {emu_reg_norm, emu_reg_perturb, emu_reg_update, emu_reg_fisher, emu_reg_select, emu_reg_nn, emu_reg_catches}) {
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

// CUfunction_attribute values.
enum {
    FA_MAX_THREADS_PER_BLOCK = 0,
    FA_SHARED_SIZE_BYTES = 1,
    FA_CONST_SIZE_BYTES = 2,
    FA_LOCAL_SIZE_BYTES = 3,
    FA_NUM_REGS = 4,
    FA_PTX_VERSION = 5,
    FA_BINARY_VERSION = 6,
    FA_CACHE_MODE_CA = 7,
    FA_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
    FA_PREFERRED_SHARED_MEMORY_CARVEOUT = 9,
};

CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    const emu::Kern* k = static_cast<const emu::Kern*>(f);
    if (!k) return ERR_INVALID_HANDLE;
    switch (attr) {
        case FA_MAX_THREADS_PER_BLOCK: *v = (int)max_threads(k); break;
        case FA_SHARED_SIZE_BYTES: *v = cubin_info(k).smem; break;
        case FA_NUM_REGS: *v = cubin_info(k).regs; break;
        case FA_PTX_VERSION:
        case FA_BINARY_VERSION: *v = 90; break;
        case FA_MAX_DYNAMIC_SHARED_SIZE_BYTES: *v = max_dynamic_shared(k); break;
        case FA_PREFERRED_SHARED_MEMORY_CARVEOUT: *v = -1; break;
        default: *v = 0; break;
    }
    return OK;
}
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
    const emu::Kern* k = static_cast<const emu::Kern*>(f);
    if (!k) return ERR_INVALID_HANDLE;
    if (attr == FA_MAX_DYNAMIC_SHARED_SIZE_BYTES) {
        const int limit = SHARED_PER_BLOCK_OPTIN - cubin_info(k).smem;
        if (v < 0 || v > limit) {
            std::fprintf(stderr, "fake CUDA: cuFuncSetAttribute(%s): %d bytes of dynamic shared memory, above %d\n",
                         k->name, v, limit);
            return ERR_INVALID_VALUE;
        }
        std::lock_guard<std::mutex> l(g_func_mu);
        g_funcs[k].max_dynamic_shared = v;
        return OK;
    }
    if (attr == FA_PREFERRED_SHARED_MEMORY_CARVEOUT) return OK;
    return ERR_INVALID_VALUE;
}
CUresult cuFuncSetCacheConfig(void*, int) { return OK; }
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* n, void* f, int threads, size_t dynamic, unsigned) {
    const emu::Kern* k = static_cast<const emu::Kern*>(f);
    if (!k) return ERR_INVALID_HANDLE;
    *n = occupancy(k, threads, dynamic);
    return OK;
}
CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* n, void* f, int threads, size_t dynamic) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(n, f, threads, dynamic, 0);
}

}  // extern "C"

// Per calling OS thread (each test runs on its own): with the seed, it makes the schedule of
// each launch of a test the same from run to run, whatever the other tests do meanwhile.
static thread_local unsigned long long t_launches = 0;

static CUresult launch_error(const emu::Kern* k, const dim3& g, const dim3& b, int code, const std::string& what) {
    std::fprintf(stderr, "fake CUDA: launch of %s (grid %ux%ux%u, block %ux%ux%u) failed: %s: %s\n", k->name, g.x, g.y,
                 g.z, b.x, b.y, b.z, error_name(code), what.c_str());
    return code;
}

extern "C" {

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void*, void** params, void** extra) {
    const emu::Kern* k = static_cast<const emu::Kern*>(f);
    if (!k) return ERR_INVALID_HANDLE;
    const dim3 g{gx, gy, gz}, b{bx, by, bz};
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (!gx || !gy || !gz || !bx || !by || !bz)
        return launch_error(k, g, b, ERR_INVALID_VALUE, "a zero grid or block dimension");
    if (bx > MAX_THREADS_PER_BLOCK || by > MAX_THREADS_PER_BLOCK || bz > MAX_BLOCK_Z || threads > MAX_THREADS_PER_BLOCK)
        return launch_error(k, g, b, ERR_INVALID_VALUE, "more than 1024 threads per block, or a block dimension above (1024, 1024, 64)");
    if (gx > MAX_GRID_X || gy > MAX_GRID_YZ || gz > MAX_GRID_YZ)
        return launch_error(k, g, b, ERR_INVALID_VALUE, "a grid dimension above (2^31 - 1, 65535, 65535)");
    if (threads > max_threads(k))
        return launch_error(k, g, b, ERR_LAUNCH_OUT_OF_RESOURCES,
                            std::to_string(threads) + " threads per block, above the kernel's __launch_bounds__(" +
                                std::to_string(max_threads(k)) + ")");
    const int regs = cubin_info(k).regs;
    if ((long long)((threads + 31) / 32) * warp_regs(regs) > REGS_PER_SM)
        return launch_error(k, g, b, ERR_LAUNCH_OUT_OF_RESOURCES,
                            std::to_string(threads) + " threads of " + std::to_string(regs) +
                                " registers each, above the 65536 registers of an SM");
    const int dyn_limit = max_dynamic_shared(k);
    if ((long long)smem > dyn_limit)
        return launch_error(k, g, b, ERR_INVALID_VALUE,
                            std::to_string(smem) + " bytes of dynamic shared memory, above the kernel's limit of " +
                                std::to_string(dyn_limit) + " (cuFuncSetAttribute raises it up to 227 KiB)");
    if (extra) return launch_error(k, g, b, ERR_NOT_SUPPORTED, "kernel parameters through `extra`");
    // One launch at a time: __shared__ variables are statics and the fibers are global.
    static std::mutex one;
    std::lock_guard<std::mutex> lock(one);
    const unsigned long long s = seed();
    const unsigned long long nth = ++t_launches;
    unsigned long long h = s * 0x9e3779b97f4a7c15ull ^ nth;
    for (const char* c = k->name; *c; c++) h = (h ^ (unsigned char)*c) * 0x100000001b3ull;
    fib::rng = Rng{h};
    fib::shuffle = s != 0;
    fib::kern = k;
    fib::params = params;
    fib::err_code = 0;
    fib::err_msg.clear();
    blockDim = b;
    gridDim = g;
    // The blocks in a shuffled order: block i runs (a·i + c) mod N-th, with a coprime to N.
    const unsigned long long nb = (unsigned long long)gx * gy * gz;
    unsigned long long a = 1, c = 0;
    if (fib::shuffle && nb > 1) {
        c = fib::rng.below(nb);
        do a = 1 + fib::rng.below(nb - 1);
        while (std::gcd(a, nb) != 1);
    }
    CUresult r = OK;
    for (unsigned long long i = 0; i < nb; i++) {
        const unsigned long long lin = (unsigned long long)(((unsigned __int128)a * i + c) % nb);
        blockIdx = uint3{(unsigned)(lin % gx), (unsigned)((lin / gx) % gy), (unsigned)(lin / ((unsigned long long)gx * gy))};
        if (!fib::run_block((unsigned)threads)) {
            char where[160];
            std::snprintf(where, sizeof where, " [block (%u,%u,%u), thread (%u,%u,%u), SAMKIT_FAKE_SEED=%llu, launch %llu of this thread]",
                          fib::err_block.x, fib::err_block.y, fib::err_block.z, fib::err_thread.x, fib::err_thread.y,
                          fib::err_thread.z, s, nth);
            r = launch_error(k, g, b, fib::err_code, fib::err_msg + where);
            break;
        }
    }
    const std::string when = std::string("after the launch of ") + k->name;
    if (check_all_canaries(when.c_str()) && r == OK) r = ERR_ILLEGAL_ADDRESS;
    return r;
}

// NVRTC opens libcuda.so.1 itself and asks for the driver's private export tables: there are
// none here, and it copes with that.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return ERR_NOT_SUPPORTED;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    *s = error_string(e);
    return OK;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    *s = error_name(e);
    return OK;
}

}  // extern "C"
