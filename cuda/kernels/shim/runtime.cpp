//! The CPU shim's scheduler (see cuda_shim.h for the model): runs the blocks of a grid one after
//! another on the calling OS thread, each block's threads as fibers that switch only at
//! barriers, so that a launch of a few thousand threads costs milliseconds, not OS threads.

#include <ucontext.h>

#include <memory>
#include <new>
#include <vector>

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

struct Fiber {
    ThreadState thread;
    State state;
    ucontext_t context;
};

/// One warp's fragments of an mma in flight (see mma_m16n8k16_bf16).
struct MmaSlots {
    unsigned a[kWarp][4];
    unsigned b[kWarp][2];
};

struct Block {
    ucontext_t scheduler;
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

void fiber_main() {
    Block& b = *active;
    b.body(b.arg);
    b.running->state = State::Done;
    // Returning resumes the scheduler through uc_link.
}

void park(State s) {
    Fiber* f = active->running;
    f->state = s;
    swapcontext(&f->context, &active->scheduler);
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

/// Points the fiber's context at the start of fiber_main on its own stack. Separate from the
/// loop in run_block because getcontext returns twice, which may clobber a caller's locals.
bool prepare(Fiber& f, char* stack, ucontext_t* scheduler) {
    if (getcontext(&f.context) != 0) return false;
    f.context.uc_stack.ss_sp = stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = scheduler;
    makecontext(&f.context, fiber_main, 0);
    return true;
}

int run_block(Block& b, char* stacks) {
    for (size_t i = 0; i < b.fibers.size(); ++i) {
        Fiber& f = b.fibers[i];
        unsigned linear = unsigned(i);
        f.thread.idx = {linear % block_dim.x, linear / block_dim.x % block_dim.y, linear / (block_dim.x * block_dim.y)};
        f.thread.lane = linear % kWarp;
        f.thread.warp = linear / kWarp;
        f.thread.warp_syncs = 0;
        f.state = State::Ready;
        if (!prepare(f, stacks + i * kStackBytes, &b.scheduler)) return kNoMemory;
    }
    const size_t n = b.fibers.size();
    for (bool descending = true;; descending = !descending) {
        bool done = true;
        for (size_t k = 0; k < n; ++k) {
            Fiber& f = b.fibers[descending ? n - 1 - k : k];
            if (f.state == State::Ready) {
                b.running = &f;
                current_thread = &f.thread;
                swapcontext(&b.scheduler, &f.context);
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
        std::unique_ptr<char[]> stacks(new char[threads * kStackBytes]);
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
