// CLoop system helpers: CPU pinning, real-time scheduling, memory locking,
// timer slack, and jemalloc's per-thread allocation counter.
#define _GNU_SOURCE
#include "cloop.h"

#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <sched.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>

int cloop_pin_to_cpu(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int cloop_set_fifo_priority(int priority) {
    int lo = sched_get_priority_min(SCHED_FIFO), hi = sched_get_priority_max(SCHED_FIFO);
    if (priority < lo || priority > hi) return -EINVAL;
    struct sched_param param = {.sched_priority = priority};
    return sched_setscheduler(0, SCHED_FIFO, &param) == 0 ? 0 : -errno;
}

int cloop_lock_memory(void) { return mlockall(MCL_CURRENT | MCL_FUTURE) == 0 ? 0 : -errno; }

int cloop_set_timer_slack_ns(uint64_t slack_ns) {
    // 0 would mean "the default"; the kernel's minimum meaningful slack is 1 ns.
    return prctl(PR_SET_TIMERSLACK, slack_ns == 0 ? 1 : slack_ns, 0, 0, 0) == 0 ? 0 : -errno;
}

int cloop_current_cpu(void) { return sched_getcpu(); }

const uint64_t *cloop_thread_allocated_counter(void) {
    uint64_t *counter = NULL;
    size_t size = sizeof(counter);
    if (mallctl("thread.allocatedp", &counter, &size, NULL, 0) != 0) return NULL;
    return counter;
}

const char *cloop_allocator_version(void) {
    const char *version = NULL;
    size_t size = sizeof(version);
    if (mallctl("version", &version, &size, NULL, 0) != 0) return NULL;
    return version;
}
