// The CUDA execution model on the CPU, for running qkernels/cuda/*.cu unchanged as C++20.
//
// A launch runs its blocks one after another; a block runs one OS thread per CUDA thread.
// threadIdx and blockIdx are thread_local, blockDim and gridDim are set per launch.
// __shared__ variables become function statics, which every thread of the running block
// shares (blocks do not overlap, so each block has the storage to itself); the dynamic shared
// memory (QK_DYNAMIC_SHARED) is a buffer of the launch's size, filled with 0xA5 bytes before
// every block so that a kernel that reads it before writing it gets garbage, as on a GPU.
// __syncthreads() is a barrier over all the block's threads that gives up after a timeout: a
// barrier that some thread never reaches (it exited, or took another branch) ends the launch
// with an error instead of hanging. (std::barrier cannot time out; this one is a mutex and a
// condition variable.) Atomics go through std::atomic_ref; float intrinsics are the plain
// IEEE operations, compiled with -ffp-contract=off so that nothing is fused.
//
// Each kernel is exported by QK_EXPORT(name) as
//   int qk_launch_<name>(unsigned grid, unsigned block, size_t shared_bytes, void** params,
//                        double timeout_s)
// (params as in cuLaunchKernel: one pointer to each argument's value; 0 on success, 1 on a
// deadlock, 2 on another failure) and const char* qk_signature_<name>(), the argument types.

#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <math.h>  // CUDA's math functions (fmax, fabs, ...) are global
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

namespace qk_emulation {

struct Deadlock : std::exception {};

class Barrier {
  public:
    Barrier(int count, double timeout_s) : count_(count), timeout_(timeout_s) {}

    void wait() {
        std::unique_lock<std::mutex> lock(mutex_);
        if (broken_) throw Deadlock();
        const long generation = generation_;
        if (++waiting_ == count_) {
            waiting_ = 0;
            ++generation_;
            changed_.notify_all();
            return;
        }
        const auto deadline = std::chrono::steady_clock::now() +
                              std::chrono::duration<double>(timeout_);
        while (generation_ == generation && !broken_) {
            if (changed_.wait_until(lock, deadline) == std::cv_status::timeout &&
                generation_ == generation) {
                broken_ = true;
                changed_.notify_all();
            }
        }
        if (generation_ == generation) throw Deadlock();
    }

  private:
    std::mutex mutex_;
    std::condition_variable changed_;
    const int count_;
    const double timeout_;
    int waiting_ = 0;
    long generation_ = 0;
    bool broken_ = false;
};

inline thread_local Barrier* block_barrier = nullptr;
inline thread_local unsigned char* dynamic_shared = nullptr;

}  // namespace qk_emulation

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define QK_DYNAMIC_SHARED(name) unsigned char* name = qk_emulation::dynamic_shared

inline void __syncthreads() { qk_emulation::block_barrier->wait(); }

inline unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
inline float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }

template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
    return b < a ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
    return a < b ? b : a;
}

template <class T>
inline T atomicAdd(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value);
}
namespace qk_emulation {

template <class... Args, std::size_t... I>
void call(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<Args>>*>(params[I])...);
}

// What a block's threads share; kept alive by every thread, so that a block given up on
// (a thread that never ends) leaves its threads nothing freed under them.
struct BlockState {
    BlockState(unsigned block, std::size_t shared_bytes, double timeout_s)
        : barrier(static_cast<int>(block), timeout_s),
          dynamic(std::max<std::size_t>(shared_bytes, 1), 0xA5) {}
    Barrier barrier;
    std::vector<unsigned char> dynamic;
    std::atomic<int> status{0};
    std::atomic<unsigned> finished{0};
};

// Status: 0 done, 1 a deadlock (a barrier not reached by every thread), 2 an exception, 3 a
// thread still running timeout_s after the others finished (an endless loop; its threads are
// left running, detached, and the launch fails instead of hanging).
template <class... Args>
int launch(void (*kernel)(Args...), unsigned grid, unsigned block, std::size_t shared_bytes,
           void** params, double timeout_s) {
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        auto state = std::make_shared<BlockState>(block, shared_bytes, timeout_s);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([state, kernel, params, t, b, grid, block] {
                gridDim = dim3{grid, 1, 1};
                blockDim = dim3{block, 1, 1};
                threadIdx = dim3{t, 0, 0};
                blockIdx = dim3{b, 0, 0};
                block_barrier = &state->barrier;
                dynamic_shared = state->dynamic.data();
                try {
                    call(kernel, params, std::index_sequence_for<Args...>{});
                } catch (const Deadlock&) {
                    state->status.store(1);
                } catch (...) {
                    state->status.store(2);
                }
                state->finished.fetch_add(1);
            });
        }
        // wait while threads finish; give up once none has for timeout_s (plus the barrier's
        // own timeout, after which waiting threads finish with a deadlock)
        unsigned seen = 0;
        auto last = std::chrono::steady_clock::now();
        while (state->finished.load() < block) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
            const unsigned now = state->finished.load();
            if (now != seen) {
                seen = now;
                last = std::chrono::steady_clock::now();
            } else if (std::chrono::steady_clock::now() - last >
                       std::chrono::duration<double>(2 * timeout_s)) {
                for (auto& thread : threads) thread.detach();
                return 3;
            }
        }
        for (auto& thread : threads) thread.join();
        if (state->status.load()) return state->status.load();
    }
    return 0;
}

template <class... Args>
const char* signature(void (*)(Args...)) {
    static const std::string text = [] {
        std::string s;
        ((s += std::string(typeid(Args).name()) + ","), ...);
        return s;
    }();
    return text.c_str();
}

}  // namespace qk_emulation

#define QK_EXPORT(name)                                                                      \
    extern "C" int qk_launch_##name(unsigned grid, unsigned block, std::size_t shared_bytes, \
                                    void** params, double timeout_s) {                      \
        return qk_emulation::launch(name, grid, block, shared_bytes, params, timeout_s);     \
    }                                                                                        \
    extern "C" const char* qk_signature_##name() { return qk_emulation::signature(name); }
