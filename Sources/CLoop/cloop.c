// CLoop: epoll + timerfd + eventfd. See include/cloop.h for the contract.
#define _GNU_SOURCE
#include "cloop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

typedef struct cloop_slot {
    int fd;
    uint32_t generation;
    uint32_t interest;
    bool used;
    bool owned;
} cloop_slot_t;

struct cloop {
    int epfd;
    int doorway_fd;
    uint32_t max_slots;
    uint32_t used_slots;
    cloop_slot_t *slots;
    uint32_t *free_stack;  // indices of free slots
    uint32_t free_count;
    struct epoll_event *scratch;  // sized max_slots, for epoll_wait

    pthread_t thread;
    bool bound;

    pthread_mutex_t queue_lock;
    cloop_msg_t *queue;
    uint32_t queue_capacity;
    uint32_t queue_head;
    uint32_t queue_len;
    uint64_t queue_dropped;
};

static int neg_errno(void) { return errno ? -errno : -EIO; }

static uint32_t to_epoll(uint32_t interest) {
    uint32_t ev = 0;
    if (interest & CLOOP_READ) ev |= EPOLLIN | EPOLLRDHUP;
    if (interest & CLOOP_WRITE) ev |= EPOLLOUT;
    if (interest & CLOOP_HANGUP) ev |= EPOLLRDHUP;  /* the peer's FIN alone, without EPOLLIN */
    return ev;
}

static uint32_t from_epoll(uint32_t ev) {
    uint32_t out = 0;
    if (ev & (EPOLLIN | EPOLLPRI)) out |= CLOOP_READ;
    if (ev & EPOLLOUT) out |= CLOOP_WRITE;
    if (ev & (EPOLLHUP | EPOLLRDHUP)) out |= CLOOP_HANGUP;
    if (ev & EPOLLERR) out |= CLOOP_ERROR;
    return out;
}

static uint64_t pack(uint32_t token, uint32_t generation) {
    return ((uint64_t)generation << 32) | token;
}

static bool valid_token(const cloop_t *loop, uint32_t token) {
    return loop != NULL && token < loop->max_slots && loop->slots[token].used;
}

cloop_t *cloop_create(uint32_t max_slots, uint32_t queue_capacity) {
    if (max_slots < 2 || max_slots > (1u << 20) || queue_capacity == 0 || queue_capacity > (1u << 20)) {
        errno = EINVAL;
        return NULL;
    }
    cloop_t *loop = calloc(1, sizeof(*loop));
    if (loop == NULL) return NULL;
    loop->epfd = -1;
    loop->doorway_fd = -1;
    loop->max_slots = max_slots;
    loop->slots = calloc(max_slots, sizeof(cloop_slot_t));
    loop->free_stack = calloc(max_slots, sizeof(uint32_t));
    loop->scratch = calloc(max_slots, sizeof(struct epoll_event));
    loop->queue = calloc(queue_capacity, sizeof(cloop_msg_t));
    loop->queue_capacity = queue_capacity;
    if (!loop->slots || !loop->free_stack || !loop->scratch || !loop->queue) goto fail;
    if (pthread_mutex_init(&loop->queue_lock, NULL) != 0) goto fail;
    // Free slots are handed out lowest index first; slot 0 is the doorway.
    for (uint32_t i = 0; i < max_slots; i++) {
        loop->slots[i].fd = -1;
        loop->free_stack[i] = max_slots - 1 - i;
    }
    loop->free_count = max_slots;
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) goto fail;
    loop->doorway_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->doorway_fd < 0) goto fail;
    uint32_t token;
    int rc = cloop_add(loop, loop->doorway_fd, CLOOP_READ, true, &token);
    if (rc < 0 || token != CLOOP_DOORWAY_TOKEN) {
        errno = rc < 0 ? -rc : EINVAL;
        goto fail;
    }
    return loop;
fail: {
    int saved = errno;
    if (loop->doorway_fd >= 0 && !(loop->slots && loop->slots[0].used)) close(loop->doorway_fd);
    cloop_destroy(loop);
    errno = saved;
    return NULL;
}
}

void cloop_destroy(cloop_t *loop) {
    if (loop == NULL) return;
    if (loop->slots) {
        for (uint32_t i = 0; i < loop->max_slots; i++) {
            if (loop->slots[i].used && loop->slots[i].owned && loop->slots[i].fd >= 0) close(loop->slots[i].fd);
        }
    }
    if (loop->epfd >= 0) close(loop->epfd);
    pthread_mutex_destroy(&loop->queue_lock);
    free(loop->slots);
    free(loop->free_stack);
    free(loop->scratch);
    free(loop->queue);
    free(loop);
}

void cloop_bind_thread(cloop_t *loop) {
    loop->thread = pthread_self();
    loop->bound = true;
}

bool cloop_on_loop_thread(const cloop_t *loop) {
    return loop->bound && pthread_equal(loop->thread, pthread_self());
}

int cloop_add(cloop_t *loop, int fd, uint32_t interest, bool owned, uint32_t *token_out) {
    if (loop == NULL || fd < 0 || token_out == NULL) return -EINVAL;
    if (loop->free_count == 0) return -ENOSPC;
    uint32_t token = loop->free_stack[loop->free_count - 1];
    cloop_slot_t *slot = &loop->slots[token];
    uint32_t generation = slot->generation + 1;
    struct epoll_event ev = {.events = to_epoll(interest), .data.u64 = pack(token, generation)};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        // The previous owner of this fd number may have closed it without
        // telling us; epoll dropped it then, so EEXIST means a live duplicate.
        return neg_errno();
    }
    loop->free_count--;
    slot->fd = fd;
    slot->generation = generation;
    slot->interest = interest;
    slot->used = true;
    slot->owned = owned;
    loop->used_slots++;
    *token_out = token;
    return 0;
}

int cloop_modify(cloop_t *loop, uint32_t token, uint32_t interest) {
    if (!valid_token(loop, token)) return -EINVAL;
    cloop_slot_t *slot = &loop->slots[token];
    if (slot->interest == interest) return 0;
    // Same check as cloop_remove: if another live slot holds this fd number,
    // ours was closed elsewhere and the number reused; EPOLL_CTL_MOD would
    // rewrite the newcomer's events and data. Refuse instead.
    for (uint32_t i = 0; i < loop->max_slots; i++) {
        if (i != token && loop->slots[i].used && loop->slots[i].fd == slot->fd) return -ESTALE;
    }
    struct epoll_event ev = {.events = to_epoll(interest), .data.u64 = pack(token, slot->generation)};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, slot->fd, &ev) != 0) return neg_errno();
    slot->interest = interest;
    return 0;
}

int cloop_remove(cloop_t *loop, uint32_t token) {
    if (!valid_token(loop, token) || token == CLOOP_DOORWAY_TOKEN) return -EINVAL;
    cloop_slot_t *slot = &loop->slots[token];
    int fd = slot->fd;
    // If another live slot holds the same fd number, this slot's fd was closed
    // elsewhere and the number reused: epoll already forgot ours, and a DEL
    // would remove the newcomer's registration.
    bool reused = false;
    for (uint32_t i = 0; i < loop->max_slots && !reused; i++) {
        reused = i != token && loop->slots[i].used && loop->slots[i].fd == fd;
    }
    int rc = 0;
    if (!reused && epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL) != 0) {
        if (errno != EBADF && errno != ENOENT) rc = neg_errno();
    }
    if (slot->owned && !reused) close(fd);
    slot->used = false;
    slot->fd = -1;
    slot->interest = 0;
    slot->generation++;  // stale events for the old registration no longer match
    loop->free_stack[loop->free_count++] = token;
    loop->used_slots--;
    return rc;
}

int cloop_fd(const cloop_t *loop, uint32_t token) {
    return valid_token(loop, token) ? loop->slots[token].fd : -EINVAL;
}

uint32_t cloop_interest(const cloop_t *loop, uint32_t token) {
    return valid_token(loop, token) ? loop->slots[token].interest : 0;
}

uint32_t cloop_generation(const cloop_t *loop, uint32_t token) {
    return valid_token(loop, token) ? loop->slots[token].generation : 0;
}

bool cloop_live(const cloop_t *loop, uint32_t token, uint32_t generation) {
    return valid_token(loop, token) && loop->slots[token].generation == generation;
}

uint32_t cloop_slots_used(const cloop_t *loop) { return loop->used_slots; }

int cloop_wait(cloop_t *loop, cloop_event_t *out, int max, int64_t timeout_ns) {
    if (loop == NULL || out == NULL || max <= 0) return -EINVAL;
    if (max > (int)loop->max_slots) max = (int)loop->max_slots;
    struct timespec ts;
    struct timespec *tsp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        tsp = &ts;
    }
    int n = epoll_pwait2(loop->epfd, loop->scratch, max, tsp, NULL);
    if (n < 0 && errno == ENOSYS) {
        int timeout_ms = timeout_ns < 0 ? -1 : (int)((timeout_ns + 999999) / 1000000);
        n = epoll_wait(loop->epfd, loop->scratch, max, timeout_ms);
    }
    if (n < 0) return errno == EINTR ? 0 : neg_errno();
    int count = 0;
    for (int i = 0; i < n; i++) {
        uint64_t data = loop->scratch[i].data.u64;
        uint32_t token = (uint32_t)data;
        uint32_t generation = (uint32_t)(data >> 32);
        if (!cloop_live(loop, token, generation)) continue;
        out[count].token = token;
        out[count].generation = generation;
        out[count].events = from_epoll(loop->scratch[i].events);
        out[count]._pad = 0;
        count++;
    }
    return count;
}

int cloop_post(cloop_t *loop, const cloop_msg_t *msg) {
    if (loop == NULL || msg == NULL) return -EINVAL;
    pthread_mutex_lock(&loop->queue_lock);
    if (loop->queue_len == loop->queue_capacity) {
        loop->queue_dropped++;
        pthread_mutex_unlock(&loop->queue_lock);
        return -EAGAIN;
    }
    uint32_t tail = (loop->queue_head + loop->queue_len) % loop->queue_capacity;
    loop->queue[tail] = *msg;
    loop->queue_len++;
    pthread_mutex_unlock(&loop->queue_lock);
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(loop->doorway_fd, &one, sizeof(one));
    } while (w < 0 && errno == EINTR);
    return 0;  // EAGAIN on write means the counter is saturated: already awake
}

int cloop_drain(cloop_t *loop, cloop_msg_t *out, int max) {
    if (loop == NULL || out == NULL || max <= 0) return -EINVAL;
    uint64_t value;
    ssize_t r;
    do {
        r = read(loop->doorway_fd, &value, sizeof(value));
    } while (r < 0 && errno == EINTR);
    pthread_mutex_lock(&loop->queue_lock);
    int count = 0;
    while (count < max && loop->queue_len > 0) {
        out[count++] = loop->queue[loop->queue_head];
        loop->queue_head = (loop->queue_head + 1) % loop->queue_capacity;
        loop->queue_len--;
    }
    bool more = loop->queue_len > 0;
    pthread_mutex_unlock(&loop->queue_lock);
    if (more) {
        uint64_t one = 1;
        do {
            r = write(loop->doorway_fd, &one, sizeof(one));
        } while (r < 0 && errno == EINTR);
    }
    return count;
}

uint64_t cloop_post_dropped(const cloop_t *loop) {
    pthread_mutex_lock((pthread_mutex_t *)&loop->queue_lock);
    uint64_t dropped = loop->queue_dropped;
    pthread_mutex_unlock((pthread_mutex_t *)&loop->queue_lock);
    return dropped;
}

int cloop_timer_create(cloop_t *loop, clockid_t clock, uint32_t *token_out) {
    int fd = timerfd_create(clock, TFD_NONBLOCK | TFD_CLOEXEC);
    if (fd < 0) return neg_errno();
    int rc = cloop_add(loop, fd, CLOOP_READ, true, token_out);
    if (rc < 0) close(fd);
    return rc;
}

static struct timespec to_timespec(int64_t ns) {
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    return ts;
}

int cloop_timer_arm_at(cloop_t *loop, uint32_t token, int64_t at_ns, bool cancel_on_set) {
    if (!valid_token(loop, token)) return -EINVAL;
    if (at_ns <= 0) at_ns = 1;  // zero would disarm; a past instant fires at once
    struct itimerspec spec = {.it_interval = {0, 0}, .it_value = to_timespec(at_ns)};
    int flags = TFD_TIMER_ABSTIME | (cancel_on_set ? TFD_TIMER_CANCEL_ON_SET : 0);
    if (timerfd_settime(loop->slots[token].fd, flags, &spec, NULL) != 0) return neg_errno();
    return 0;
}

int cloop_timer_arm_after(cloop_t *loop, uint32_t token, int64_t after_ns, int64_t interval_ns) {
    if (!valid_token(loop, token) || after_ns < 0 || interval_ns < 0) return -EINVAL;
    if (after_ns == 0) after_ns = 1;
    struct itimerspec spec = {.it_interval = to_timespec(interval_ns), .it_value = to_timespec(after_ns)};
    if (timerfd_settime(loop->slots[token].fd, 0, &spec, NULL) != 0) return neg_errno();
    return 0;
}

int cloop_timer_disarm(cloop_t *loop, uint32_t token) {
    if (!valid_token(loop, token)) return -EINVAL;
    struct itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    if (timerfd_settime(loop->slots[token].fd, 0, &spec, NULL) != 0) return neg_errno();
    return 0;
}

int64_t cloop_timer_read(cloop_t *loop, uint32_t token) {
    if (!valid_token(loop, token)) return -EINVAL;
    uint64_t expirations = 0;
    ssize_t r;
    do {
        r = read(loop->slots[token].fd, &expirations, sizeof(expirations));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno == EAGAIN ? 0 : neg_errno();
    return (int64_t)expirations;
}

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t cloop_realtime_ns(void) { return now_ns(CLOCK_REALTIME); }

int64_t cloop_monotonic_ns(void) { return now_ns(CLOCK_MONOTONIC); }

int64_t cloop_spin_until_realtime(int64_t target_ns, int64_t max_spin_ns) {
    int64_t deadline = now_ns(CLOCK_MONOTONIC) + max_spin_ns;
    int64_t now = now_ns(CLOCK_REALTIME);
    while (now < target_ns) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (now_ns(CLOCK_MONOTONIC) >= deadline) break;
        now = now_ns(CLOCK_REALTIME);
    }
    return now;
}

int cloop_signals_create(cloop_t *loop, const int *signals, int count, uint32_t *token_out) {
    if (loop == NULL || signals == NULL || count <= 0) return -EINVAL;
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) sigaddset(&set, signals[i]);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (rc != 0) return -rc;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return neg_errno();
    rc = cloop_add(loop, fd, CLOOP_READ, true, token_out);
    if (rc < 0) close(fd);
    return rc;
}

int cloop_signal_read(cloop_t *loop, uint32_t token) {
    if (!valid_token(loop, token)) return -EINVAL;
    struct signalfd_siginfo info;
    ssize_t r;
    do {
        r = read(loop->slots[token].fd, &info, sizeof(info));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno == EAGAIN ? 0 : neg_errno();
    if (r != (ssize_t)sizeof(info)) return -EIO;
    return (int)info.ssi_signo;
}
