// BenchFloor: the bare C publisher Bench measures the pulse against (issue 24).
//
// One thread, pinned and at the pulse's priority, does per beat exactly what
// the pulse's beat path must do and nothing else: a CLOCK_REALTIME timerfd
// armed at an absolute time, waited for in epoll; in spin mode armed
// `lead_ns` early and finished by spinning on the clock to the instant (the
// pulse's `cloop_spin_until_realtime`); then one write(2) of the frame's
// `PUB` bytes to nats-server on a socket with the pulse's options
// (TCP_NODELAY, non-blocking, TCP_USER_TIMEOUT 250 ms, SO_TIMESTAMPING with
// OPT_ID) and the frame's software TX timestamp read back from the error
// queue. No client library, no subscription, no parse.
#ifndef BENCH_FLOOR_H
#define BENCH_FLOOR_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// One beat of the bare publisher (CLOCK_REALTIME ns; 0 = not measured).
typedef struct bench_floor_beat {
    int64_t instant_ns;
    int64_t wake_ns;      // epoll returned
    int64_t decision_ns;  // spin exit (timer only: the wake)
    int64_t write_ns;     // write(2) returned
    int64_t tx_ns;        // the TX timestamp of the frame's last byte, or 0
    int64_t cpu_wake_write_ns;  // thread CPU from before the sleep to the write's return
    int64_t cpu_write_ns;       // thread CPU of the write (spin mode: the spin too)
    int64_t cpu_tx_ns;          // thread CPU of reading the TX timestamp
} bench_floor_beat_t;

typedef struct bench_floor_config {
    const char *host;  // dotted IPv4
    int port;
    const uint8_t *message;  // the complete "PUB subject n\r\n<frame>\r\n"
    int message_len;
    int64_t period_ns;
    int64_t lead_ns;  // 0: timer only (wake at the instant); > 0: wake early and spin
    int beats;
    int cpu;        // -1: not pinned
    int priority;   // 0: SCHED_OTHER
} bench_floor_config_t;

/// Connects (NATS handshake), runs `beats` beats into `out` (sized `beats`),
/// closes. Returns the beats measured (≥ 0), or -errno with `error` (≥ 128
/// bytes) saying what failed. Problems that do not stop the run (pinning or
/// priority refused, TX stamps unavailable) are appended to `notes` (≥ 256
/// bytes, NUL-terminated).
int bench_floor_run(const bench_floor_config_t *config, bench_floor_beat_t *out, char *error, char *notes);

#ifdef __cplusplus
}
#endif

#endif
