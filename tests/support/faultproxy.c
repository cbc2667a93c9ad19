/*
 * faultproxy.c - a TCP fault proxy for the tests (see faultproxy.h).
 *
 * One thread polls the listening socket, a self-pipe (mode changes, drip
 * rate, stop) and both sockets of every connection.  Each direction of a
 * connection has one buffer: it is read into only when empty (and the mode
 * forwards), and written out before the next read, so a slow side slows
 * the other down as TCP would.  halfopen attaches a classic BPF program
 * that accepts nothing (SO_ATTACH_FILTER): the kernel then drops every
 * segment for that socket before TCP sees it, so the peer's data, ACKs and
 * keepalive probes go unanswered, as across a dead link.
 */
#include "support/faultproxy.h"

#include "support/proc.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

enum { FP_BUF = 16384, FP_MAX_CONN = 256 };

/* Bytes read from one side, waiting to be written to the other. */
typedef struct fp_dir {
    char buf[FP_BUF];
    size_t len, off;
    int eof;       /* the source side sent FIN */
    int allowance; /* drip mode: bytes this direction may still read this tick */
} fp_dir;

typedef struct fp_conn {
    int cfd, sfd; /* client side, target side (-1: none) */
    fp_dir up, down;
    fp_mode fate; /* FP_PASS: forwarding; FP_HALFOPEN or FP_BLACKHOLE: for good */
} fp_conn;

struct fp_proxy {
    int listen_fd, port, target_port;
    int wake[2];
    pthread_t thread;
    atomic_int stop;

    pthread_mutex_t mu; /* guards mode, drip and counters */
    fp_mode mode;
    int drip_bytes, drip_ms;
    fp_counters counters;

    /* The thread's own. */
    fp_mode applied;
    fp_conn *conns[FP_MAX_CONN];
    int nconns;
    int listener_filtered;
};

static const char *const mode_names[FP_MODE_COUNT] = {
    [FP_PASS] = "pass",         [FP_STALL] = "stall", [FP_RESET] = "reset",
    [FP_HALFOPEN] = "halfopen", [FP_DRIP] = "drip",   [FP_BLACKHOLE] = "blackhole",
};

const char *fp_mode_name(fp_mode mode)
{
    return mode >= 0 && mode < FP_MODE_COUNT ? mode_names[mode] : "?";
}

static void count(fp_proxy *p, int64_t *field, int64_t n)
{
    pthread_mutex_lock(&p->mu);
    *field += n;
    pthread_mutex_unlock(&p->mu);
}

static void nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Drops every segment that reaches fd (detach: accept them again). */
static void drop_filter(int fd, int attach)
{
    struct sock_filter nothing[] = {BPF_STMT(BPF_RET | BPF_K, 0)};
    struct sock_fprog prog = {1, nothing};
    int unused = 0; /* the kernel wants an int there */
    int rc = attach ? setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog)
                    : setsockopt(fd, SOL_SOCKET, SO_DETACH_FILTER, &unused, sizeof unused);
    if (rc != 0)
        TEST_FAIL_("fault proxy: %s: %s", attach ? "SO_ATTACH_FILTER" : "SO_DETACH_FILTER",
                   strerror(errno));
}

/* Closes fd with an RST. */
static void reset_fd(int fd)
{
    struct linger l = {1, 0};
    if (fd < 0) return;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd);
}

static void conn_close(fp_proxy *p, int k, int rst)
{
    fp_conn *c = p->conns[k];
    if (rst) {
        reset_fd(c->cfd);
        reset_fd(c->sfd);
        count(p, &p->counters.resets, 1);
    } else {
        if (c->cfd >= 0) close(c->cfd);
        if (c->sfd >= 0) close(c->sfd);
    }
    free(c);
    p->conns[k] = p->conns[--p->nconns];
    count(p, &p->counters.open, -1);
}

static int connect_target(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons((uint16_t)port);
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { /* loopback: immediate */
        close(fd);
        return -1;
    }
    nonblocking(fd);
    return fd;
}

/* Puts c into a fate it keeps: halfopen (silent at the TCP level) or
 * blackhole (swallows what arrives). */
static void doom(fp_conn *c, fp_mode fate)
{
    c->fate = fate;
    c->up.len = c->up.off = 0;
    c->down.len = c->down.off = 0;
    if (fate == FP_HALFOPEN) {
        drop_filter(c->cfd, 1);
        if (c->sfd >= 0) drop_filter(c->sfd, 1);
    }
}

static void accept_one(fp_proxy *p, fp_mode mode)
{
    int fd = accept(p->listen_fd, NULL, NULL);
    fp_conn *c;
    if (fd < 0) return;
    count(p, &p->counters.accepted, 1);
    if (mode == FP_RESET || p->nconns == FP_MAX_CONN) {
        reset_fd(fd);
        count(p, &p->counters.resets, 1);
        return;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL) TEST_FAIL_("fault proxy: out of memory");
    c->cfd = fd;
    c->sfd = -1;
    nonblocking(fd);
    if (mode != FP_BLACKHOLE) {
        c->sfd = connect_target(p->target_port);
        if (c->sfd < 0) { /* the target is down: so is this connection */
            reset_fd(fd);
            free(c);
            count(p, &p->counters.resets, 1);
            return;
        }
    }
    p->conns[p->nconns++] = c;
    count(p, &p->counters.open, 1);
    if (mode == FP_BLACKHOLE || mode == FP_HALFOPEN) doom(c, mode);
}

/* Applies a mode change to the open connections and the listener. */
static void apply_mode(fp_proxy *p, fp_mode mode)
{
    int k;
    if (mode == FP_HALFOPEN && !p->listener_filtered) {
        drop_filter(p->listen_fd, 1);
        p->listener_filtered = 1;
    } else if (mode != FP_HALFOPEN && p->listener_filtered) {
        drop_filter(p->listen_fd, 0);
        p->listener_filtered = 0;
    }
    for (k = p->nconns - 1; k >= 0; k--) {
        fp_conn *c = p->conns[k];
        if (mode == FP_RESET)
            conn_close(p, k, 1);
        else if ((mode == FP_HALFOPEN || mode == FP_BLACKHOLE) && c->fate == FP_PASS)
            doom(c, mode);
    }
    p->applied = mode;
}

/* Reads what src offers into d (up to allowance in drip mode); -1 when
 * the connection is over (an error). */
static int fill(int src, fp_dir *d, fp_mode mode)
{
    size_t room = sizeof d->buf;
    ssize_t n;
    if (mode == FP_DRIP && (size_t)d->allowance < room) room = (size_t)d->allowance;
    if (room == 0) return 0;
    n = recv(src, d->buf, room, 0);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0) {
        d->eof = 1;
        return 0;
    }
    d->len = (size_t)n;
    d->off = 0;
    if (mode == FP_DRIP) d->allowance -= (int)n;
    return 0;
}

/* Writes d's bytes to dst; -1 when the connection is over. */
static int flush(fp_proxy *p, int dst, fp_dir *d, int64_t *counter)
{
    while (d->off < d->len) {
        ssize_t n = send(dst, d->buf + d->off, d->len - d->off, MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
        d->off += (size_t)n;
        count(p, counter, n);
    }
    d->len = d->off = 0;
    return 0;
}

/* Discards what fd has; -1 at EOF or an error. */
static int swallow(fp_proxy *p, int fd)
{
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n > 0) count(p, &p->counters.discarded, n);
    if (n < 0) return errno == EAGAIN || errno == EINTR ? 0 : -1;
    return n == 0 ? -1 : 0;
}

static void *proxy_main(void *arg)
{
    fp_proxy *p = arg;
    struct pollfd fds[2 + 2 * FP_MAX_CONN];
    int owner[2 + 2 * FP_MAX_CONN]; /* connection index of fds[i] (-1: none) */
    int64_t next_tick = 0;

    while (!atomic_load(&p->stop)) {
        fp_mode mode;
        int drip_bytes, drip_ms, nfds = 0, timeout = -1, k, i;

        pthread_mutex_lock(&p->mu);
        mode = p->mode;
        drip_bytes = p->drip_bytes;
        drip_ms = p->drip_ms;
        pthread_mutex_unlock(&p->mu);
        if (mode != p->applied) apply_mode(p, mode);
        if (mode == FP_DRIP) {
            int64_t now = ch_now_ms();
            if (now >= next_tick) {
                for (k = 0; k < p->nconns; k++)
                    p->conns[k]->up.allowance = p->conns[k]->down.allowance = drip_bytes;
                next_tick = now + drip_ms;
            }
            timeout = (int)(next_tick - now);
        }

        fds[nfds] = (struct pollfd){p->wake[0], POLLIN, 0};
        owner[nfds++] = -1;
        fds[nfds] = (struct pollfd){p->listen_fd, POLLIN, 0};
        owner[nfds++] = -1;
        for (k = 0; k < p->nconns; k++) {
            fp_conn *c = p->conns[k];
            short cev = 0, sev = 0;
            if (c->fate == FP_HALFOPEN) continue;
            if (c->fate == FP_BLACKHOLE) {
                cev = POLLIN;
                sev = POLLIN;
            } else if (mode != FP_STALL) {
                if (c->up.len > 0)
                    sev |= POLLOUT;
                else if (!c->up.eof && (mode != FP_DRIP || c->up.allowance > 0))
                    cev |= POLLIN;
                if (c->down.len > 0)
                    cev |= POLLOUT;
                else if (!c->down.eof && (mode != FP_DRIP || c->down.allowance > 0))
                    sev |= POLLIN;
            }
            if (cev) {
                fds[nfds] = (struct pollfd){c->cfd, cev, 0};
                owner[nfds++] = k;
            }
            if (sev && c->sfd >= 0) {
                fds[nfds] = (struct pollfd){c->sfd, sev, 0};
                owner[nfds++] = k;
            }
        }
        if (poll(fds, (nfds_t)nfds, timeout) < 0) {
            if (errno == EINTR) continue;
            TEST_FAIL_("fault proxy: poll: %s", strerror(errno));
        }
        if (fds[0].revents) {
            char drain[64];
            while (read(p->wake[0], drain, sizeof drain) > 0) {
            }
        }
        /* Connections first (indexes stay valid: closing is marked, done
         * after), then new ones. */
        int gone[FP_MAX_CONN];
        memset(gone, 0, sizeof gone);
        for (i = 2; i < nfds; i++) {
            fp_conn *c;
            int bad = 0;
            k = owner[i];
            c = p->conns[k];
            if (gone[k] || !fds[i].revents) continue;
            if (c->fate == FP_BLACKHOLE) {
                if (fds[i].fd == c->cfd)
                    bad = swallow(p, c->cfd) < 0;
                else if (swallow(p, c->sfd) < 0) {
                    close(c->sfd);
                    c->sfd = -1;
                }
            } else if (fds[i].fd == c->cfd) {
                if (fds[i].revents & POLLOUT)
                    bad |= flush(p, c->cfd, &c->down, &p->counters.bytes_down);
                if (fds[i].revents & (POLLIN | POLLHUP | POLLERR) && c->up.len == 0 && !c->up.eof)
                    bad |= fill(c->cfd, &c->up, mode);
            } else {
                if (fds[i].revents & POLLOUT)
                    bad |= flush(p, c->sfd, &c->up, &p->counters.bytes_up);
                if (fds[i].revents & (POLLIN | POLLHUP | POLLERR) && c->down.len == 0 &&
                    !c->down.eof)
                    bad |= fill(c->sfd, &c->down, mode);
            }
            /* A side that said goodbye: pass it on once its bytes are out. */
            if (!bad && c->fate == FP_PASS && c->up.eof && c->up.len == 0)
                shutdown(c->sfd, SHUT_WR);
            if (!bad && c->fate == FP_PASS && c->down.eof && c->down.len == 0)
                shutdown(c->cfd, SHUT_WR);
            if (bad || (c->fate == FP_PASS && c->up.eof && c->down.eof && c->up.len == 0 &&
                        c->down.len == 0))
                gone[k] = 1;
        }
        for (k = p->nconns - 1; k >= 0; k--)
            if (gone[k]) conn_close(p, k, 0);
        if (fds[1].revents & POLLIN) accept_one(p, mode);
    }
    while (p->nconns > 0)
        conn_close(p, p->nconns - 1, 0);
    return NULL;
}

static void wake(fp_proxy *p)
{
    char b = 1;
    if (write(p->wake[1], &b, 1) < 0 && errno != EAGAIN)
        TEST_FAIL_("fault proxy: wake: %s", strerror(errno));
}

fp_proxy *fp_start(int target_port)
{
    fp_proxy *p = calloc(1, sizeof *p);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int one = 1;
    if (p == NULL) TEST_FAIL_("fault proxy: out of memory");
    p->target_port = target_port;
    p->drip_bytes = 64;
    p->drip_ms = 100;
    pthread_mutex_init(&p->mu, NULL);
    if (pipe(p->wake) != 0) TEST_FAIL_("fault proxy: pipe: %s", strerror(errno));
    nonblocking(p->wake[0]);
    nonblocking(p->wake[1]);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (p->listen_fd < 0) TEST_FAIL_("fault proxy: socket: %s", strerror(errno));
    setsockopt(p->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(p->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->listen_fd, 64) != 0 ||
        getsockname(p->listen_fd, (struct sockaddr *)&a, &len) != 0)
        TEST_FAIL_("fault proxy: cannot listen on 127.0.0.1: %s", strerror(errno));
    nonblocking(p->listen_fd);
    p->port = ntohs(a.sin_port);
    if (pthread_create(&p->thread, NULL, proxy_main, p) != 0)
        TEST_FAIL_("fault proxy: pthread_create failed");
    return p;
}

int fp_port(const fp_proxy *p)
{
    return p->port;
}

void fp_set_mode(fp_proxy *p, fp_mode mode)
{
    pthread_mutex_lock(&p->mu);
    p->mode = mode;
    pthread_mutex_unlock(&p->mu);
    wake(p);
}

void fp_set_drip(fp_proxy *p, int bytes, int interval_ms)
{
    pthread_mutex_lock(&p->mu);
    p->drip_bytes = bytes > 0 ? bytes : 1;
    p->drip_ms = interval_ms > 0 ? interval_ms : 1;
    pthread_mutex_unlock(&p->mu);
    wake(p);
}

void fp_counters_get(fp_proxy *p, fp_counters *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->counters;
    pthread_mutex_unlock(&p->mu);
}

void fp_stop(fp_proxy *p)
{
    if (p == NULL) return;
    atomic_store(&p->stop, 1);
    wake(p);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
