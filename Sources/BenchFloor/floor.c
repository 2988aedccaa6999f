// BenchFloor: the bare C publisher (see include/bench_floor.h).
#define _GNU_SOURCE
#include "bench_floor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <linux/net_tstamp.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define OPT_ID_TCP (1 << 16)

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void note(char *notes, const char *text) {
    size_t used = strlen(notes);
    if (used + strlen(text) + 2 < 256) {
        if (used) strcat(notes, "; ");
        strcat(notes, text);
    }
}

/// Reads until `want` appears (bounded: 2 s, 8 KiB).
static int read_until(int fd, const char *want) {
    char buf[8192];
    size_t have = 0;
    int64_t deadline = clock_ns(CLOCK_MONOTONIC) + 2000000000;
    while (have < sizeof(buf) - 1 && clock_ns(CLOCK_MONOTONIC) < deadline) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (n <= 0) return -1;
        have += (size_t)n;
        buf[have] = 0;
        if (strstr(buf, want)) return 0;
    }
    return -1;
}

static int write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    int64_t deadline = clock_ns(CLOCK_MONOTONIC) + 2000000000;
    while (len > 0 && clock_ns(CLOCK_MONOTONIC) < deadline) {
        ssize_t n = write(fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
    }
    return len == 0 ? 0 : -1;
}

/// Bytes handed to TCP so far (as cloop_txts.c counts them).
static int64_t tcp_written(int fd) {
    struct tcp_info info;
    socklen_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -1;
    return (int64_t)(info.tcpi_bytes_sent - info.tcpi_bytes_retrans) + (int64_t)info.tcpi_notsent_bytes;
}

/// One stamp from the error queue: 1 (key, ns), 0 none, -1 error.
static int read_stamp(int fd, uint32_t *key, int64_t *ns) {
    char control[256];
    char data[1];
    struct iovec iov = {.iov_base = data, .iov_len = 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
    if (recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) return errno == EAGAIN ? 0 : -1;
    int have_key = 0;
    *ns = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPING) {
            struct scm_timestamping ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            *ns = (int64_t)ts.ts[0].tv_sec * 1000000000 + ts.ts[0].tv_nsec;
        } else if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) {
            struct sock_extended_err err;
            memcpy(&err, CMSG_DATA(c), sizeof(err));
            if (err.ee_origin == SO_EE_ORIGIN_TIMESTAMPING && err.ee_info == SCM_TSTAMP_SND) {
                *key = err.ee_data;
                have_key = 1;
            }
        }
    }
    return have_key && *ns != 0;
}

static int connect_nats(const bench_floor_config_t *c, char *error) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return snprintf(error, 128, "socket: %s", strerror(errno)), -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    if (inet_pton(AF_INET, c->host, &a.sin_addr) != 1 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        snprintf(error, 128, "connect %s:%d: %s", c->host, c->port, strerror(errno));
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const char *hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"bench-send-floor\"}\r\nPING\r\n";
    if (read_until(fd, "INFO") != 0 || write_all(fd, hello, strlen(hello)) != 0 || read_until(fd, "PONG") != 0) {
        snprintf(error, 128, "no NATS handshake with %s:%d", c->host, c->port);
        close(fd);
        return -1;
    }
    return fd;
}

int bench_floor_run(const bench_floor_config_t *c, bench_floor_beat_t *out, char *error, char *notes) {
    error[0] = 0;
    notes[0] = 0;
    if (c->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(c->cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) != 0) note(notes, "could not pin the send floor");
    }
    if (c->priority > 0) {
        struct sched_param p = {.sched_priority = c->priority};
        if (sched_setscheduler(0, SCHED_FIFO, &p) != 0) note(notes, "SCHED_FIFO refused for the send floor");
    }
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    int fd = connect_nats(c, error);
    if (fd < 0) return -EIO;
    // The pulse's socket: non-blocking, TCP_USER_TIMEOUT, TX timestamps with ids.
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    unsigned timeout_ms = 250;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof(timeout_ms));
    int64_t base = tcp_written(fd);
    int flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID |
                SOF_TIMESTAMPING_OPT_TSONLY | OPT_ID_TCP;
    int stamps = setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) == 0;
    if (!stamps) note(notes, "SO_TIMESTAMPING with OPT_ID_TCP refused: no TX stamps");
    int tfd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 1};
    if (tfd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev) != 0) {
        snprintf(error, 128, "timerfd/epoll: %s", strerror(errno));
        close(fd);
        if (tfd >= 0) close(tfd);
        if (ep >= 0) close(ep);
        return -EIO;
    }
    int64_t instant = (clock_ns(CLOCK_REALTIME) / c->period_ns + 2) * c->period_ns;
    int done = 0;
    int missing = 0;
    for (int i = -1; i < c->beats; i++, instant += c->period_ns) {  // beat -1 warms up, not recorded
        bench_floor_beat_t b = {.instant_ns = instant};
        int64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        int64_t at = instant - c->lead_ns;
        struct itimerspec spec = {.it_value = {.tv_sec = at / 1000000000, .tv_nsec = at % 1000000000}};
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &spec, NULL);
        struct epoll_event got;
        int woke = 0;
        for (int w = 0; w < 200 && !woke; w++) woke = epoll_wait(ep, &got, 1, 50) > 0;
        if (!woke) break;
        b.wake_ns = clock_ns(CLOCK_REALTIME);
        uint64_t expirations;
        if (read(tfd, &expirations, sizeof(expirations)) < 0) { /* level-triggered: cleared or not, go on */
        }
        // Thread CPU read before the decision: nothing but the write may
        // stand between the decision and the write (the clock read is a
        // syscall, not vDSO).
        int64_t w0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        int64_t now = b.wake_ns;
        if (c->lead_ns > 0) {  // the pulse's spin: pause, bounded by the lead + 1 ms of monotonic time
            int64_t deadline = clock_ns(CLOCK_MONOTONIC) + c->lead_ns + 1000000;
            while (now < instant) {
                __builtin_ia32_pause();
                if (clock_ns(CLOCK_MONOTONIC) >= deadline) break;
                now = clock_ns(CLOCK_REALTIME);
            }
        }
        b.decision_ns = now;
        ssize_t n = write(fd, c->message, (size_t)c->message_len);
        b.write_ns = clock_ns(CLOCK_REALTIME);
        int64_t w1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        if (n != c->message_len) {
            snprintf(error, 128, "write: %zd of %d bytes (%s)", n, c->message_len, n < 0 ? strerror(errno) : "short");
            break;
        }
        if (stamps) {
            int64_t key = tcp_written(fd) - base - 1;
            uint32_t k = 0;
            int64_t ns = 0;
            for (int tries = 0; tries < 64; tries++) {  // usually queued before write(2) returns
                int r = read_stamp(fd, &k, &ns);
                if (r == 1 && k == (uint32_t)key) {
                    b.tx_ns = ns;
                    break;
                }
                if (r <= 0) {
                    if (tries > 8) break;
                    struct pollfd p = {.fd = fd, .events = 0};
                    poll(&p, 1, 1);  // POLLERR when it arrives
                }
            }
            if (b.tx_ns == 0) missing++;
        }
        int64_t w2 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
        b.cpu_wake_write_ns = w1 - cpu0;
        b.cpu_write_ns = w1 - w0;
        b.cpu_tx_ns = w2 - w1;
        if (i >= 0) out[done++] = b;
        // Drain what the server sent (PING): the floor has no subscription.
        char sink[512];
        while (read(fd, sink, sizeof(sink)) > 0) {
            if (memmem(sink, sizeof(sink), "PING", 4)) write_all(fd, "PONG\r\n", 6);
        }
    }
    if (missing > 0) {
        char text[96];
        snprintf(text, sizeof(text), "%d beats without a TX stamp", missing);
        note(notes, text);
    }
    close(tfd);
    close(ep);
    close(fd);
    return done;
}
