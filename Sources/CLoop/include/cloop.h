// CLoop: a small single-threaded event loop over epoll, timerfd and eventfd.
//
// It owns file-descriptor registrations, timers and one thread-safe doorway
// (an eventfd plus a bounded message queue) for calls from other threads.
// It has no policy: it tells the caller which registrations are ready and
// the caller dispatches. Tables are sized once at creation; registering past
// the limit fails with -ENOSPC instead of growing.
//
// Every registration is a slot index (the "token") plus a generation. epoll's
// data.u64 carries both, so an event for a slot that was removed (and maybe
// reused for another fd) while a batch was being dispatched is recognised as
// stale: call cloop_live() before dispatching each event.
//
// Functions return 0 or a non-negative value on success and -errno on failure.
#ifndef CLOOP_H
#define CLOOP_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cloop cloop_t;

/// Interest and readiness bits.
enum {
    CLOOP_READ = 1u << 0,
    CLOOP_WRITE = 1u << 1,
    CLOOP_HANGUP = 1u << 2,
    CLOOP_ERROR = 1u << 3,
};

/// One ready registration, as returned by cloop_wait().
typedef struct cloop_event {
    uint32_t token;
    uint32_t generation;
    uint32_t events;
    uint32_t _pad;
} cloop_event_t;

/// A message posted through the doorway from any thread.
typedef struct cloop_msg {
    uint32_t kind;
    int32_t arg;
    uint64_t value;
    void *ptr;
} cloop_msg_t;

/// The token of the doorway's own registration (always slot 0).
#define CLOOP_DOORWAY_TOKEN 0u

/// Creates a loop with room for `max_slots` registrations (the doorway takes
/// one) and a doorway queue of `queue_capacity` messages. NULL and errno set on
/// failure.
cloop_t *cloop_create(uint32_t max_slots, uint32_t queue_capacity);
void cloop_destroy(cloop_t *loop);

/// Marks the calling thread as the loop thread (cloop_on_loop_thread()).
void cloop_bind_thread(cloop_t *loop);
bool cloop_on_loop_thread(const cloop_t *loop);

/// Registers `fd` with the given interest (level-triggered). The loop does not
/// own the fd unless `owned` is true, in which case cloop_remove closes it.
int cloop_add(cloop_t *loop, int fd, uint32_t interest, bool owned, uint32_t *token_out);
/// Changes the interest of a live registration. A registration whose fd was
/// closed behind the loop's back is stale: -ESTALE when another live slot now
/// holds the same fd number (a MOD would rewrite the newcomer's registration,
/// so none is attempted), or the kernel's -EBADF / -ENOENT / -EPERM when the
/// number is free or reused by a file the loop does not watch. -EINVAL for a
/// token that is not in use.
int cloop_modify(cloop_t *loop, uint32_t token, uint32_t interest);
/// Unregisters and frees the slot (closing the fd if owned). If the fd was
/// already closed elsewhere, the kernel removed it from epoll already; the
/// slot is freed anyway and no other slot's registration is disturbed.
int cloop_remove(cloop_t *loop, uint32_t token);
int cloop_fd(const cloop_t *loop, uint32_t token);
uint32_t cloop_interest(const cloop_t *loop, uint32_t token);
uint32_t cloop_generation(const cloop_t *loop, uint32_t token);
/// True when (token, generation) still names a live registration.
bool cloop_live(const cloop_t *loop, uint32_t token, uint32_t generation);
uint32_t cloop_slots_used(const cloop_t *loop);

/// Waits up to `timeout_ns` (-1: forever, 0: poll) and fills at most `max`
/// events. EINTR returns 0 events. Events for the doorway are included (token
/// CLOOP_DOORWAY_TOKEN); drain it with cloop_drain().
int cloop_wait(cloop_t *loop, cloop_event_t *out, int max, int64_t timeout_ns);

/// Thread-safe: enqueue a message and wake the loop. -EAGAIN when full.
int cloop_post(cloop_t *loop, const cloop_msg_t *msg);
/// Loop thread: take up to `max` messages; clears the eventfd when emptied.
int cloop_drain(cloop_t *loop, cloop_msg_t *out, int max);
/// Messages refused because the queue was full, since creation.
uint64_t cloop_post_dropped(const cloop_t *loop);

/// Creates a timerfd on `clock` (CLOCK_REALTIME or CLOCK_MONOTONIC) and
/// registers it for reading. The loop owns and closes it.
int cloop_timer_create(cloop_t *loop, clockid_t clock, uint32_t *token_out);
/// Arms a one-shot timer at absolute `at_ns` on the timer's clock. With
/// `cancel_on_set` on a CLOCK_REALTIME timer, a wall-clock step makes the next
/// cloop_timer_read() return -ECANCELED so the caller can re-plan.
int cloop_timer_arm_at(cloop_t *loop, uint32_t token, int64_t at_ns, bool cancel_on_set);
/// Arms a timer `after_ns` from now, repeating every `interval_ns` (0: once).
int cloop_timer_arm_after(cloop_t *loop, uint32_t token, int64_t after_ns, int64_t interval_ns);
int cloop_timer_disarm(cloop_t *loop, uint32_t token);
/// Reads the expiration count (0 if none yet, -ECANCELED on a clock step).
int64_t cloop_timer_read(cloop_t *loop, uint32_t token);

/// Blocks `signals` for the calling thread (and the threads it creates later:
/// call this before starting any) and registers a signalfd for them.
int cloop_signals_create(cloop_t *loop, const int *signals, int count, uint32_t *token_out);
/// Reads one pending signal: its number, 0 if none, or -errno.
int cloop_signal_read(cloop_t *loop, uint32_t token);

/// Clocks, in nanoseconds.
int64_t cloop_realtime_ns(void);
int64_t cloop_monotonic_ns(void);
/// Spins on CLOCK_REALTIME until it reaches `target_ns`, for at most
/// `max_spin_ns` of monotonic time; returns the realtime reading it stopped at.
int64_t cloop_spin_until_realtime(int64_t target_ns, int64_t max_spin_ns);

/// Running "pinned to a core": each returns 0 or -errno.
int cloop_pin_to_cpu(int cpu);
int cloop_set_fifo_priority(int priority);
int cloop_lock_memory(void);
int cloop_set_timer_slack_ns(uint64_t slack_ns);
/// The CPU the calling thread runs on now.
int cloop_current_cpu(void);

/// Helper-thread placement. Threads inherit their creator's CPU affinity and
/// scheduling policy, so a thread created by (or after) a pinned SCHED_FIFO
/// loop thread would run on the beat core at real-time priority.
/// cloop_thread_place_helper() moves the calling thread back to the process's
/// start-up CPU set (captured when the library is loaded, before anything can
/// pin) at SCHED_OTHER, nice 0. 0 or -errno.
int cloop_thread_place_helper(void);
/// As cloop_thread_place_helper(), once per thread (a thread-local flag):
/// cheap enough for the top of every library callback. 1 if it placed the
/// thread now, 0 if it was already placed, or -errno.
int cloop_thread_place_helper_once(void);
/// The calling thread's placement, saved and restored around work that
/// creates threads (cloop_placement_save() also reports it for tests).
typedef struct cloop_placement {
    int policy;
    int priority;
    int cpu_count;  // CPUs in the affinity mask
    unsigned char mask[128];  // cpu_set_t bytes (1024 CPUs)
} cloop_placement_t;
int cloop_placement_save(cloop_placement_t *out);
int cloop_placement_restore(const cloop_placement_t *saved);
/// CPUs in the process's start-up affinity mask (0 if it could not be read).
int cloop_startup_cpu_count(void);
/// The calling thread's kernel thread id.
int cloop_gettid(void);

/// jemalloc: pointer to the calling thread's running count of bytes allocated
/// (`thread.allocatedp`), or NULL if jemalloc is not the process allocator.
/// Reading through the pointer costs one load and allocates nothing.
const uint64_t *cloop_thread_allocated_counter(void);
/// jemalloc's version string, or NULL when jemalloc is not linked in.
const char *cloop_allocator_version(void);

/* The commit the binary was built from (`make` writes it), or "unknown". */
const char *cloop_build_commit(void);

/// Software TX timestamps on a connected TCP socket (cloop_txts.c): one per
/// send() call, for its last byte, on the socket's error queue, with a byte
/// id. Enable stores the id base for cloop_txts_next_key(); 0 or -errno.
int cloop_txts_enable(int fd, int64_t *base_out);
int cloop_txts_disable(int fd);
/// The id the last byte written so far carries (read from TCP_INFO), or
/// -errno (-EAGAIN: nothing written since enabling).
int64_t cloop_txts_next_key(int fd, int64_t base);
/// Reads one send timestamp from the error queue without blocking: 1 (key,
/// CLOCK_REALTIME ns), 0 when the queue is empty, or -errno. Allocation-free.
int cloop_txts_read(int fd, uint32_t *key_out, int64_t *ns_out);

#ifdef __cplusplus
}
#endif

#endif
