// clock_skew.c — an LD_PRELOAD library that makes one process's wall clock
// run BACKBEAT_CLOCK_SKEW_PPM parts per million fast (or slow, negative),
// for PER-003's skewed node (issue 24): the drift process test and the
// Bench `drift` scenario preload it into one node of a cluster.
//
// Why not libfaketime (Debian's, which has a rate option): it cannot start a
// process linked with jemalloc, as `pulse` is (jemalloc's initialisation
// calls clock_gettime while libfaketime initialises: "Unexpected recursive
// calls to clock_gettime()", libfaketime issues #130, #327, #478). This
// library resolves nothing at start (no dlsym, no allocation): it reads the
// real clocks with the raw system call.
//
// What it changes, from the moment the library is loaded (the clocks agree
// then): CLOCK_REALTIME (and _COARSE) read through clock_gettime(3) and
// gettimeofday(2) advance at (1 + ppm/1e6) × real; an absolute
// CLOCK_REALTIME timerfd (timerfd_settime with TFD_TIMER_ABSTIME on a
// timerfd made by timerfd_create(CLOCK_REALTIME)) fires when that skewed
// clock reaches its target. CLOCK_MONOTONIC and everything else pass
// through unchanged. Kernel stamps (SO_TIMESTAMPING) stay on the real clock.
#define _GNU_SOURCE
#include "clock_skew.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static long skew_ppm;
static int64_t base_ns;  // real == skewed at this instant
#define MAX_TRACKED_FDS 65536
static unsigned char realtime_fd[MAX_TRACKED_FDS];

static int64_t raw_realtime_ns(void) {
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

__attribute__((constructor)) static void clock_skew_init(void) {
    const char *text = getenv("BACKBEAT_CLOCK_SKEW_PPM");
    if (text) {
        char *end = NULL;
        long v = strtol(text, &end, 10);
        if (end != text && *end == 0 && v > -100000 && v < 100000) skew_ppm = v;
    }
    base_ns = raw_realtime_ns();
}

long clock_skew_ppm(void) { return skew_ppm; }

/// Real → skewed.
static int64_t skewed(int64_t real_ns) {
    int64_t d = real_ns - base_ns;
    return real_ns + (int64_t)((__int128)d * skew_ppm / 1000000);
}

/// Skewed → real (the inverse of `skewed`, to the nanosecond).
static int64_t unskewed(int64_t skewed_ns) {
    int64_t d = skewed_ns - base_ns;
    return base_ns + (int64_t)((__int128)d * 1000000 / (1000000 + skew_ppm));
}

static struct timespec to_timespec(int64_t ns) {
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    if (ts.tv_nsec < 0) {
        ts.tv_nsec += 1000000000;
        ts.tv_sec -= 1;
    }
    return ts;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    long rc = syscall(SYS_clock_gettime, clock, ts);
    if (rc != 0 || skew_ppm == 0 || (clock != CLOCK_REALTIME && clock != CLOCK_REALTIME_COARSE)) return (int)rc;
    *ts = to_timespec(skewed((int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec));
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    if (!tv) return 0;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
    return 0;
}

int timerfd_create(int clock, int flags) {
    long fd = syscall(SYS_timerfd_create, clock, flags);
    if (fd >= 0 && fd < MAX_TRACKED_FDS) realtime_fd[fd] = clock == CLOCK_REALTIME;
    return (int)fd;
}

int timerfd_settime(int fd, int flags, const struct itimerspec *value, struct itimerspec *old) {
    struct itimerspec real = *value;
    if (skew_ppm != 0 && fd >= 0 && fd < MAX_TRACKED_FDS && realtime_fd[fd] && (flags & TFD_TIMER_ABSTIME) &&
        (value->it_value.tv_sec != 0 || value->it_value.tv_nsec != 0)) {
        real.it_value =
            to_timespec(unskewed((int64_t)value->it_value.tv_sec * 1000000000 + value->it_value.tv_nsec));
    }
    return (int)syscall(SYS_timerfd_settime, fd, flags, &real, old);
}
