//! The CPU shim's scheduler (see cuda_shim.h for the model): runs the blocks of a grid one after
//! another on the calling OS thread, each block's threads as fibers that switch only at
//! barriers, so that a launch of a few thousand threads costs milliseconds, not OS threads.
//!
//! A fiber switch saves the callee-saved registers on the fiber's own stack and exchanges
//! stack pointers (a dozen instructions on x86-64). glibc's swapcontext also saves and
//! restores the signal mask, a system call per switch, which made it most of a launch's time;
//! other architectures still use it.

#include <memory>
#include <new>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace shim {

thread_local ThreadState* current_thread = nullptr;
thread_local uint3 block_idx;
thread_local uint3 block_dim;
thread_local uint3 grid_dim;

namespace {

// run_grid's return codes; cuda/src/exec.rs turns them into errors.
constexpr int kOk = 0;
constexpr int kBadGrid = 1;
constexpr int kDeadlock = 2;
constexpr int kNoMemory = 3;

constexpr unsigned kMaxThreads = 1024;
constexpr unsigned kWarp = 32;
// Kernels keep little on the stack; this leaves room for an unoptimised build.
constexpr size_t kStackBytes = 64 * 1024;

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

#if defined(__x86_64__)
/// A suspended execution: its stack pointer, where its callee-saved registers and its resume
/// address were pushed.
struct Context {
    void* sp = nullptr;
};

extern "C" void infinity_shim_switch(void** save, void* load);
// Pushes the callee-saved registers, saves the stack pointer to *save, loads `load` and pops
// the registers saved there; `ret` resumes the other execution where it switched away. (The
// SysV ABI's callee-saved MXCSR and x87 control bits are never changed by kernels.)
asm(R"(
    .text
    .p2align 4
    .globl infinity_shim_switch
    .hidden infinity_shim_switch
    .type infinity_shim_switch, @function
infinity_shim_switch:
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
    .size infinity_shim_switch, .-infinity_shim_switch
)");

void switch_to(Context& save, Context& load) { infinity_shim_switch(&save.sp, load.sp); }

/// Makes `c` start `entry` on the stack [stack, stack + bytes) when switched to: below the
/// 16-byte aligned top, a null return address (entry never returns), `entry` for the switch's
/// `ret`, and six zero registers for its pops. `entry` then sees the stack as after a call.
bool start(Context& c, char* stack, size_t bytes, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(entry);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;
    c.sp = sp;
    return true;
}
#else
struct Context {
    ucontext_t uc;
};

void switch_to(Context& save, Context& load) { swapcontext(&save.uc, &load.uc); }

/// getcontext returns twice, which may clobber a caller's locals: kept out of loops. `entry`
/// never returns, so no uc_link.
bool start(Context& c, char* stack, size_t bytes, void (*entry)()) {
    if (getcontext(&c.uc) != 0) return false;
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
    return true;
}
#endif

struct Fiber {
    ThreadState thread;
    State state;
    Context context;
};

/// One warp's fragments of an mma in flight (see mma_m16n8k16_bf16).
struct MmaSlots {
    unsigned a[kWarp][4];
    unsigned b[kWarp][2];
};

struct Block {
    Context scheduler;
    // Sized once per launch: a ucontext points into itself, so fibers must never move.
    std::vector<Fiber> fibers;
    // Two buffers of 32 exchange slots per warp.
    std::vector<uint64_t> slots;
    std::vector<MmaSlots> mma;
    Fiber* running = nullptr;
    void (*body)(const void*) = nullptr;
    const void* arg = nullptr;
};

thread_local Block* active = nullptr;

/// The fibers' stacks, kept from launch to launch by each OS thread that launches: their
/// pages are mapped once, not at every launch.
thread_local std::unique_ptr<char[]> stacks;
thread_local size_t stack_count = 0;

void fiber_main() {
    Block& b = *active;
    b.body(b.arg);
    b.running->state = State::Done;
    // Never resumed: the scheduler only resumes Ready fibers.
    switch_to(b.running->context, b.scheduler);
}

void park(State s) {
    Fiber* f = active->running;
    f->state = s;
    switch_to(f->context, active->scheduler);
}

/// Sets every fiber parked at a barrier that all its live participants have reached back to
/// Ready. False when no barrier could be released.
bool release(Block& b) {
    bool released = false;
    auto live = [](const Fiber& f) { return f.state != State::Done; };
    size_t n = b.fibers.size();
    for (size_t first = 0; first < n; first += kWarp) {
        size_t last = first + kWarp < n ? first + kWarp : n;
        bool any = false, all = true;
        for (size_t i = first; i < last; ++i) {
            if (!live(b.fibers[i])) continue;
            any = true;
            all = all && b.fibers[i].state == State::AtWarpBarrier;
        }
        if (any && all) {
            for (size_t i = first; i < last; ++i)
                if (live(b.fibers[i])) b.fibers[i].state = State::Ready;
            released = true;
        }
    }
    bool any = false, all = true;
    for (const Fiber& f : b.fibers) {
        if (!live(f)) continue;
        any = true;
        all = all && f.state == State::AtBlockBarrier;
    }
    if (any && all) {
        for (Fiber& f : b.fibers)
            if (live(f)) f.state = State::Ready;
        released = true;
    }
    return released;
}

int run_block(Block& b, char* stack_base) {
    for (size_t i = 0; i < b.fibers.size(); ++i) {
        Fiber& f = b.fibers[i];
        unsigned linear = unsigned(i);
        f.thread.idx = {linear % block_dim.x, linear / block_dim.x % block_dim.y, linear / (block_dim.x * block_dim.y)};
        f.thread.lane = linear % kWarp;
        f.thread.warp = linear / kWarp;
        f.thread.warp_syncs = 0;
        f.state = State::Ready;
        if (!start(f.context, stack_base + i * kStackBytes, kStackBytes, fiber_main)) return kNoMemory;
    }
    const size_t n = b.fibers.size();
    for (bool descending = true;; descending = !descending) {
        bool done = true;
        for (size_t k = 0; k < n; ++k) {
            Fiber& f = b.fibers[descending ? n - 1 - k : k];
            if (f.state == State::Ready) {
                b.running = &f;
                current_thread = &f.thread;
                switch_to(b.scheduler, f.context);
            }
            done = done && f.state == State::Done;
        }
        if (done) return kOk;
        // Every fiber is now parked or finished: if no barrier opens, none ever will.
        if (!release(b)) return kDeadlock;
    }
}

}  // namespace

void sync_block() { park(State::AtBlockBarrier); }

void sync_warp() {
    park(State::AtWarpBarrier);
    current_thread->warp_syncs++;
}

uint64_t* exchange_slots(unsigned parity) {
    return &active->slots[(current_thread->warp * 2 + parity) * kWarp];
}

namespace {

/// Element `half` (0 low, 1 high) of a fragment register, as a float.
float bf16_half(unsigned reg, unsigned half) { return __bfloat162float({uint16_t(reg >> (16 * half))}); }

/// A(row, k) and B(k, n) of the warp's deposited fragments, by the PTX ISA layout of
/// m16n8k16 .bf16 (common.cuh): the inverse of the assignment of elements to lanes.
float a_at(const MmaSlots& s, unsigned row, unsigned k) {
    return bf16_half(s.a[(row % 8) * 4 + (k % 8) / 2][row / 8 + 2 * (k / 8)], k % 2);
}
float b_at(const MmaSlots& s, unsigned k, unsigned n) { return bf16_half(s.b[n * 4 + (k % 8) / 2][k / 8], k % 2); }

}  // namespace

void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    ThreadState& t = *current_thread;
    MmaSlots& s = active->mma[t.warp];
    memcpy(s.a[t.lane], a, sizeof s.a[0]);
    memcpy(s.b[t.lane], b, sizeof s.b[0]);
    sync_warp();
    const unsigned g = t.lane / 4, col = 2 * (t.lane % 4);
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r / 2), n = col + r % 2;
        // Products of bf16 values are exact in f32; they are summed in k order.
        float sum = 0.0f;
        for (unsigned k = 0; k < 16; ++k) sum += a_at(s, row, k) * b_at(s, k, n);
        d[r] += sum;
    }
    // No lane may deposit its next fragments before every lane has read these.
    sync_warp();
}

int run_grid(const Grid& grid, void (*body)(const void*), const void* arg) {
    const unsigned* t = grid.threads;
    const unsigned* g = grid.blocks;
    unsigned long long threads = 1ull * t[0] * t[1] * t[2];
    if (threads == 0 || threads > kMaxThreads || g[0] == 0 || g[1] == 0 || g[2] == 0) return kBadGrid;
    try {
        if (stack_count < threads) {
            stacks.reset(new char[threads * kStackBytes]);
            stack_count = threads;
        }
        Block b;
        b.fibers.resize(threads);
        b.slots.resize((threads + kWarp - 1) / kWarp * 2 * kWarp);
        b.mma.resize((threads + kWarp - 1) / kWarp);
        b.body = body;
        b.arg = arg;
        active = &b;
        block_dim = {t[0], t[1], t[2]};
        grid_dim = {g[0], g[1], g[2]};
        int status = kOk;
        for (unsigned z = 0; z < g[2] && status == kOk; ++z)
            for (unsigned y = 0; y < g[1] && status == kOk; ++y)
                for (unsigned x = 0; x < g[0] && status == kOk; ++x) {
                    block_idx = {x, y, z};
                    status = run_block(b, stacks.get());
                }
        active = nullptr;
        current_thread = nullptr;
        return status;
    } catch (const std::bad_alloc&) {
        return kNoMemory;
    }
}

}  // namespace shim
