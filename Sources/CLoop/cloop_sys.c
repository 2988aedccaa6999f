// CLoop system helpers: CPU pinning, real-time scheduling, memory locking,
// timer slack, and jemalloc's per-thread allocation counter.
#define _GNU_SOURCE
#include "cloop.h"

#include <errno.h>
#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

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
    // pthread_setschedparam, not sched_setscheduler(0): glibc caches a
    // thread's policy once pthread_getschedparam has read it (as
    // cloop_placement_save does, e.g. while -cpu is validated), and a
    // sched_setscheduler behind its back left that cache at SCHED_OTHER, so
    // ThreadPlacement.runUnpinned "restored" the loop thread to SCHED_OTHER.
    return -pthread_setschedparam(pthread_self(), SCHED_FIFO, &param);
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

// The process's CPU set at load time, before -cpu can pin anything: where
// helper threads belong. Captured by a constructor so that no caller has to
// remember to do it before pinning.
static cpu_set_t start_cpus;
static int start_cpus_ok;

__attribute__((constructor)) static void cloop_capture_start_cpus(void) {
    CPU_ZERO(&start_cpus);
    start_cpus_ok = sched_getaffinity(0, sizeof(start_cpus), &start_cpus) == 0 && CPU_COUNT(&start_cpus) > 0;
}

int cloop_startup_cpu_count(void) { return start_cpus_ok ? CPU_COUNT(&start_cpus) : 0; }

int cloop_gettid(void) { return (int)syscall(SYS_gettid); }

int cloop_thread_place_helper(void) {
    struct sched_param param = {.sched_priority = 0};
    // pthread_setschedparam acts on this thread only (sched_setscheduler(0)
    // would too on Linux, but the pthread call states the intent).
    int rc = pthread_setschedparam(pthread_self(), SCHED_OTHER, &param);
    if (rc != 0) return -rc;
    if (setpriority(PRIO_PROCESS, (id_t)cloop_gettid(), 0) != 0 && errno != EACCES) return -errno;
    if (!start_cpus_ok) return -ENOTSUP;
    return sched_setaffinity(0, sizeof(start_cpus), &start_cpus) == 0 ? 0 : -errno;
}

static _Thread_local int thread_placed;

int cloop_thread_place_helper_once(void) {
    if (thread_placed) return 0;
    int rc = cloop_thread_place_helper();
    if (rc == 0) thread_placed = 1;
    return rc == 0 ? 1 : rc;
}

_Static_assert(sizeof(((cloop_placement_t *)0)->mask) == sizeof(cpu_set_t), "cpu_set_t size");

int cloop_placement_save(cloop_placement_t *out) {
    if (out == NULL) return -EINVAL;
    memset(out, 0, sizeof(*out));
    struct sched_param param;
    int rc = pthread_getschedparam(pthread_self(), &out->policy, &param);
    if (rc != 0) return -rc;
    out->priority = param.sched_priority;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return -errno;
    memcpy(out->mask, &set, sizeof(set));
    out->cpu_count = CPU_COUNT(&set);
    return 0;
}

int cloop_placement_restore(const cloop_placement_t *saved) {
    if (saved == NULL) return -EINVAL;
    cpu_set_t set;
    memcpy(&set, saved->mask, sizeof(set));
    if (sched_setaffinity(0, sizeof(set), &set) != 0) return -errno;
    struct sched_param param = {.sched_priority = saved->priority};
    int rc = pthread_setschedparam(pthread_self(), saved->policy, &param);
    return -rc;
}
