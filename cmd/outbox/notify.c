/*
 * notify.c - the systemd service notification protocol for `outbox relay`
 * (READY=1, STATUS=, WATCHDOG=1, STOPPING=1; see notify.h).
 *
 * The sender is built in rather than taken from libsystemd's sd_notify:
 * the protocol is one datagram of "KEY=VALUE" lines to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a path, or '@' for Linux's abstract namespace),
 * which systemd documents as a stable interface that programs may
 * implement themselves (sd_notify(3), "Standalone Implementations"; the
 * interface portability chart lists it as reimplementable).  Linking
 * libsystemd for it would add a run-time dependency to a CLI that is
 * linked statically so that its one binary runs wherever it is copied,
 * and an optional one would give two code paths to test for the same
 * twenty lines.  What sd_notify adds beyond them (passing descriptors,
 * barriers, vsock addresses) the relay does not use.
 *
 * One thread of its own sends STATUS= and WATCHDOG=1, so that neither
 * waits on the relay loop nor slows it: it only reads the relay's
 * counters, which are atomics.
 */
#include "notify.h"

#include "cli.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* How often the STATUS= line is looked at; it is sent when it changed. */
#define STATUS_PERIOD_US INT64_C(1000000)

int cli_notify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr;
    socklen_t addr_len;
    size_t path_len;
    ssize_t sent;
    int fd, saved;

    if (!path || !path[0]) return 0;
    path_len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || path_len >= sizeof addr.sun_path) {
        errno = EAFNOSUPPORT; /* vsock: and other forms the relay does not speak */
        return -1;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, path, path_len);
    /* An abstract address is the name after a NUL byte, its length exact. */
    if (path[0] == '@') addr.sun_path[0] = '\0';
    addr_len =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + path_len + (path[0] == '@' ? 0 : 1));

    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    /* Never blocks: a service manager that does not read its socket costs
     * a notification (logged), not a stalled stop. */
    sent = sendto(fd, state, strlen(state), MSG_NOSIGNAL | MSG_DONTWAIT,
                  (const struct sockaddr *)&addr, addr_len);
    saved = errno;
    close(fd);
    errno = saved;
    return sent == (ssize_t)strlen(state) ? 1 : -1;
}

/* ------------------------------------------------------------------------
 * The status and watchdog thread
 * ---------------------------------------------------------------------- */

static pthread_mutex_t notify_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t notify_cond = PTHREAD_COND_INITIALIZER;
static pthread_t notify_thread;
static int thread_running, thread_quit, stopping_sent;
static outbox_relay *notify_relay;
static char destination[256]; /* the --to URL, redacted */
static int64_t watchdog_us;   /* WATCHDOG_USEC for this process; 0: no watchdog */
static char last_status[sizeof destination + 128]; /* the STATUS= line last sent */

/* Sends state, logging (once per kind of failure in a row) when it cannot:
 * a relay whose supervisor went away goes on publishing.  Called with
 * notify_lock held. */
static void send_logged(const char *state)
{
    static int last_errno;
    if (cli_notify_send(state) >= 0) {
        last_errno = 0;
        return;
    }
    if (errno != last_errno)
        cli_log(OUTBOX_LOG_WARN, "relay", "cannot notify the service manager at %s: %s",
                getenv("NOTIFY_SOCKET"), strerror(errno));
    last_errno = errno;
}

/* WATCHDOG_USEC when it is meant for this process (WATCHDOG_PID, when
 * set, names it), else 0. */
static int64_t watchdog_period_us(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    char *end;
    long long v;
    if (!usec || !usec[0]) return 0;
    if (pid && pid[0] && strtoll(pid, NULL, 10) != (long long)getpid()) return 0;
    errno = 0;
    v = strtoll(usec, &end, 10);
    if (errno != 0 || *end != '\0' || v <= 0) return 0;
    return (int64_t)v;
}

/* The one-line STATUS= text, e.g. "publishing to nats://host: 12
 * published, 0 failed". */
static void status_line(const char *state, char *out, size_t len)
{
    outbox_relay_stats s;
    outbox_relay_get_stats(notify_relay, &s);
    snprintf(out, len, "STATUS=%s %s: %llu published, %llu retried, %llu failed", state,
             destination, (unsigned long long)s.published, (unsigned long long)s.retried,
             (unsigned long long)s.failed);
}

/* Whether the relay loop is alive, for WATCHDOG=1: it turned within its
 * deadline (outbox_relay_get_metrics: loop_age_us, deadline_us).  An idle
 * loop turns at least every poll interval and so is alive; a loop stuck
 * in a call gets no WATCHDOG=1, and systemd restarts it after WatchdogSec.
 * The same test answers /healthz (src/monitor). */
static int relay_loop_alive(void)
{
    outbox_relay_metrics m;
    memset(&m, 0, sizeof m);
    m.size = sizeof m;
    if (outbox_relay_get_metrics(notify_relay, &m) != OUTBOX_OK) return 1;
    return m.loop_age_us <= m.deadline_us;
}

static void *notify_main(void *arg)
{
    int64_t status_due = 0, watchdog_due = 0;
    (void)arg;
    pthread_mutex_lock(&notify_lock);
    while (!thread_quit) {
        int64_t now = cli_monotonic_us(), next;
        struct timespec until;
        char status[sizeof last_status];
        if (watchdog_us > 0 && now >= watchdog_due) {
            if (relay_loop_alive()) send_logged("WATCHDOG=1");
            watchdog_due = now + watchdog_us / 2;
        }
        if (now >= status_due) {
            status_line(stopping_sent ? "stopping; was publishing to" : "publishing to", status,
                        sizeof status);
            if (strcmp(status, last_status) != 0) send_logged(status);
            memcpy(last_status, status, sizeof status);
            status_due = now + STATUS_PERIOD_US;
        }
        next = status_due;
        if (watchdog_us > 0 && watchdog_due < next) next = watchdog_due;
        /* The condition variable runs on the realtime clock: the wait is
         * converted from the monotonic deadline each turn. */
        clock_gettime(CLOCK_REALTIME, &until);
        next -= cli_monotonic_us();
        if (next < 1000) next = 1000;
        until.tv_sec += (time_t)(next / 1000000);
        until.tv_nsec += (long)(next % 1000000) * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&notify_cond, &notify_lock, &until);
    }
    pthread_mutex_unlock(&notify_lock);
    return NULL;
}

void cli_notify_ready(outbox_relay *relay, const char *to)
{
    char ready[sizeof last_status + 8];
    const char *socket_path = getenv("NOTIFY_SOCKET");
    if (!socket_path || !socket_path[0]) return;

    pthread_mutex_lock(&notify_lock);
    notify_relay = relay;
    outbox_url_redact(to, destination, sizeof destination);
    watchdog_us = watchdog_period_us();
    status_line("publishing to", last_status, sizeof last_status);
    snprintf(ready, sizeof ready, "READY=1\n%s", last_status);
    send_logged(ready);
    thread_quit = 0;
    if (pthread_create(&notify_thread, NULL, notify_main, NULL) == 0)
        thread_running = 1;
    else
        cli_log(OUTBOX_LOG_WARN, "relay",
                "cannot start the thread that sends STATUS= and WATCHDOG=1; check the "
                "process limits");
    pthread_mutex_unlock(&notify_lock);
}

void cli_notify_stopping(void)
{
    /* Under the lock, as every send: send_logged's memory is shared. */
    pthread_mutex_lock(&notify_lock);
    if (!stopping_sent && getenv("NOTIFY_SOCKET")) send_logged("STOPPING=1");
    stopping_sent = 1;
    pthread_mutex_unlock(&notify_lock);
}

void cli_notify_end(void)
{
    int joined;
    cli_notify_stopping();
    pthread_mutex_lock(&notify_lock);
    joined = thread_running;
    thread_quit = 1;
    thread_running = 0;
    pthread_cond_signal(&notify_cond);
    pthread_mutex_unlock(&notify_lock);
    if (joined) pthread_join(notify_thread, NULL);
    pthread_mutex_lock(&notify_lock);
    notify_relay = NULL;
    pthread_mutex_unlock(&notify_lock);
}
