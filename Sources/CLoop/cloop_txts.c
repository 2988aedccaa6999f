// CLoop TX timestamps: the kernel's software transmit timestamp of the last
// byte of each send() on a TCP socket (SO_TIMESTAMPING), read back from the
// socket's error queue. Used for the honest publish time of a beat frame
// (requirements §9): when the frame's bytes were handed to the device, not
// when the loop decided to publish.
//
// Guarantees: nothing here blocks (MSG_DONTWAIT) or allocates (stack buffers
// only), so the beat path may call it after its write.
//
// Ids (OPT_ID on TCP): each timestamp carries the byte offset of the send's
// last byte, counted from the socket's write sequence when stamping was
// enabled (OPT_ID_TCP, Linux 6.2+) or its acknowledged sequence (plain
// OPT_ID, older kernels; the two agree when nothing is in flight). The bytes
// written so far are read from TCP_INFO under the socket lock, so the id the
// last written byte will carry is known right after a write.
#define _GNU_SOURCE
#include "cloop.h"

#include <errno.h>
#include <linux/errqueue.h>
#include <linux/net_tstamp.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#ifndef SO_TIMESTAMPING
#define SO_TIMESTAMPING 37
#endif
#ifndef SCM_TIMESTAMPING
#define SCM_TIMESTAMPING SO_TIMESTAMPING
#endif
// Older uapi headers lack it; the kernel refuses it with EINVAL before 6.2.
#define CLOOP_SOF_OPT_ID_TCP (1 << 16)

/// Bytes handed to TCP on `fd` since the connection opened (first-time data:
/// sent minus retransmitted, plus not yet sent), or -errno.
static int64_t tcp_bytes_written(int fd, uint64_t *acked_out) {
    struct tcp_info info;
    socklen_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return -errno;
    // tcpi_bytes_sent/retrans arrived in 4.19; without them the ids cannot be predicted.
    if (len < offsetof(struct tcp_info, tcpi_bytes_retrans) + sizeof(info.tcpi_bytes_retrans)) return -ENOTSUP;
    if (acked_out) *acked_out = info.tcpi_bytes_acked;
    return (int64_t)(info.tcpi_bytes_sent - info.tcpi_bytes_retrans) + (int64_t)info.tcpi_notsent_bytes;
}

int cloop_txts_enable(int fd, int64_t *base_out) {
    int flags = SOF_TIMESTAMPING_TX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID |
                SOF_TIMESTAMPING_OPT_TSONLY;
    uint64_t acked = 0;
    int64_t written = tcp_bytes_written(fd, &acked);
    if (written < 0) return (int)written;
    int with_tcp = flags | CLOOP_SOF_OPT_ID_TCP;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &with_tcp, sizeof(with_tcp)) == 0) {
        *base_out = written;  // ids count from the write sequence
        return 0;
    }
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) != 0) return -errno;
    *base_out = (int64_t)acked;  // ids count from the acknowledged sequence
    return 0;
}

int cloop_txts_disable(int fd) {
    int flags = 0;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &flags, sizeof(flags)) == 0 ? 0 : -errno;
}

int64_t cloop_txts_next_key(int fd, int64_t base) {
    int64_t written = tcp_bytes_written(fd, NULL);
    if (written < 0) return written;
    if (written - base < 1) return -EAGAIN;  // nothing written since enabling
    return (int64_t)(uint32_t)(written - base - 1);
}

int cloop_txts_read(int fd, uint32_t *key_out, int64_t *ns_out) {
    // A few entries that are not send timestamps (other origins) are skipped.
    for (int attempt = 0; attempt < 8; attempt++) {
        char control[256];
        char data[1];
        struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
        struct msghdr msg;
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        ssize_t n = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
        int64_t ns = -1;
        int have_key = 0;
        uint32_t key = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPING &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct scm_timestamping))) {
                struct scm_timestamping ts;
                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                if (ts.ts[0].tv_sec != 0 || ts.ts[0].tv_nsec != 0)
                    ns = (int64_t)ts.ts[0].tv_sec * 1000000000LL + ts.ts[0].tv_nsec;
            } else if (((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
                        (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)) &&
                       c->cmsg_len >= CMSG_LEN(sizeof(struct sock_extended_err))) {
                struct sock_extended_err err;
                memcpy(&err, CMSG_DATA(c), sizeof(err));
                if (err.ee_errno == ENOMSG && err.ee_origin == SO_EE_ORIGIN_TIMESTAMPING &&
                    err.ee_info == SCM_TSTAMP_SND) {
                    key = err.ee_data;
                    have_key = 1;
                }
            }
        }
        if (have_key && ns >= 0) {
            *key_out = key;
            *ns_out = ns;
            return 1;
        }
    }
    return 0;
}
