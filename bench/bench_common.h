/*
 * bench_common.h - helpers shared by the benchmark programs.
 *
 * A measured case runs in a forked child (bench_run_child): the parent
 * reads the child's peak RSS and CPU time from wait4(), and the child sends
 * its elapsed CLOCK_MONOTONIC time, a message count and, on failure, the
 * reason back through a pipe.  A child never prints a figure: the parent
 * checks the result first.  Payloads (bench_payload) are JSON objects of an
 * exact size, so the benchmarks compare messages of the same bytes.
 *
 * Everything is static so each program takes only what it uses.
 */
#ifndef OUTBOX_BENCH_COMMON_H
#define OUTBOX_BENCH_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* What a child sends back to the parent. */
typedef struct bench_report {
    int ok;
    double seconds;
    long long count;           /* messages handled, as the child saw it */
    double teardown_seconds;   /* after the measured work: closing, freeing */
    double thread_cpu_seconds; /* CPU of the thread that did the work, while measured */
    char message[512];
} bench_report;

/* What the parent knows of a finished child. */
typedef struct bench_result {
    double seconds;
    double user_seconds;
    double sys_seconds;
    double teardown_seconds;
    double thread_cpu_seconds; /* the child's working thread (bench_report); 0: not measured */
    long long count;
    long maxrss_kib;
} bench_result;

/* The work of a child: fills r (r->ok = 1 on success). */
typedef void (*bench_fn)(void *arg, bench_report *r);

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of the calling thread: where one thread bounds a rate (the
 * relay's, a producer's), its CPU per message does not depend on what else
 * the machine runs, as the wall time does. */
static inline double bench_thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void bench_fail(bench_report *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static inline void bench_fail(bench_report *r, const char *fmt, ...)
{
    va_list ap;
    r->ok = 0;
    va_start(ap, fmt);
    vsnprintf(r->message, sizeof r->message, fmt, ap);
    va_end(ap);
}

/* Writes the payload of message i into out: a JSON object of exactly
 * `bytes` characters (at least 120) plus the terminating NUL. */
static inline void bench_payload(char *out, size_t bytes, long long i, unsigned aggregate)
{
    int len = snprintf(out, bytes + 1,
                       "{\"order_id\":\"o-%010lld\",\"customer\":\"c-%06u\",\"amount_cents\":%lld,"
                       "\"currency\":\"EUR\",\"note\":\"",
                       i, aggregate, 100 + (i * 37) % 99900);
    while (len < (int)bytes - 2) {
        out[len] = (char)('a' + (i + len) % 26);
        len++;
    }
    out[len++] = '"';
    out[len++] = '}';
    out[len] = '\0';
}

/* Runs fn(arg) in a forked child.  in_child (may be NULL) runs first in the
 * child, to disarm exit handlers inherited from the parent (servers it must
 * not stop, directories it must not remove).  Returns 0 with *res filled,
 * or -1 with the reason printed to stderr under `name`. */
static inline int bench_run_child(const char *name, bench_fn fn, void *arg, void (*in_child)(void),
                                  bench_result *res)
{
    int fds[2], status;
    pid_t pid;
    bench_report rep;
    struct rusage ru;
    ssize_t got;

    memset(res, 0, sizeof *res);
    if (pipe(fds) != 0) {
        fprintf(stderr, "%s: pipe: %s\n", name, strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", name, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        if (in_child) in_child();
        memset(&rep, 0, sizeof rep);
        fn(arg, &rep);
        got = write(fds[1], &rep, sizeof rep);
        close(fds[1]);
        exit(got != (ssize_t)sizeof rep ? 3 : rep.ok ? 0 : 1);
    }
    close(fds[1]);
    memset(&rep, 0, sizeof rep);
    got = read(fds[0], &rep, sizeof rep);
    close(fds[0]);
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) {
            fprintf(stderr, "%s: wait4: %s\n", name, strerror(errno));
            return -1;
        }
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got != (ssize_t)sizeof rep || !rep.ok) {
        fprintf(stderr, "%s failed (%s %d): %s\n", name, WIFEXITED(status) ? "exit" : "signal",
                WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
                got == (ssize_t)sizeof rep ? rep.message : "no report");
        return -1;
    }
    res->seconds = rep.seconds;
    res->count = rep.count;
    res->teardown_seconds = rep.teardown_seconds;
    res->thread_cpu_seconds = rep.thread_cpu_seconds;
    res->maxrss_kib = ru.ru_maxrss;
    res->user_seconds = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    res->sys_seconds = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    return 0;
}

/* Copies src to dst and syncs dst, so the copy's write-back does not run
 * during a measured case.  Returns 0, or -1 with the reason printed. */
static inline int bench_copy_file(const char *src, const char *dst)
{
    static char buf[1 << 20];
    int in = -1, out = -1, rc = -1;
    ssize_t n = 0;

    in = open(src, O_RDONLY);
    if (in < 0) goto out;
    out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) goto out;
    while ((n = read(in, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0) goto out;
            off += w;
        }
    }
    if (n < 0 || fsync(out) != 0) goto out;
    rc = 0;
out:
    if (rc) fprintf(stderr, "copy %s -> %s: %s\n", src, dst, strerror(errno));
    if (in >= 0) close(in);
    if (out >= 0 && close(out) != 0) rc = -1;
    return rc;
}

/* The 1-minute load average, or -1. */
static inline double bench_loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

/* ------------------------------------------------------------------------
 * The relay monitor under load (--listen in bench_sqlite_drain and
 * bench_pg_drain): outbox_monitor on 127.0.0.1, and a thread that scrapes
 * its /metrics every interval_ms over plain HTTP/1.0, as Prometheus would
 * (only much more often), for the duration of a drain.
 * ---------------------------------------------------------------------- */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>

#include "outbox.h"

typedef struct bench_monitor {
    outbox_monitor *monitor;
    pthread_t thread;
    atomic_int stop;
    int wake[2]; /* a pipe: bench_monitor_stop ends the scraper's wait at once */
    unsigned port;
    int interval_ms;
    long scrapes, failures; /* written by the thread, read after the join */
} bench_monitor;

/* One GET /metrics; 0 when the answer was a 200 with a body. */
static inline int bench_scrape(unsigned port)
{
    static const char request[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    struct sockaddr_in a;
    char buf[16384];
    size_t total = 0;
    ssize_t got;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok = 0;

    if (fd < 0) return -1;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        write(fd, request, sizeof request - 1) == (ssize_t)(sizeof request - 1)) {
        while ((got = read(fd, buf, sizeof buf)) > 0) {
            if (total == 0 && got > 12 && memcmp(buf + 9, "200", 3) == 0) ok = 1;
            total += (size_t)got;
        }
    }
    close(fd);
    return ok && total > 1000 ? 0 : -1;
}

static inline void *bench_scraper_main(void *arg)
{
    bench_monitor *b = arg;
    while (!atomic_load(&b->stop)) {
        if (bench_scrape(b->port) == 0)
            b->scrapes++;
        else
            b->failures++;
        /* Not usleep: the stop must not wait out the rest of an interval,
         * or the drain's time would include it (half an interval on
         * average, 50 ms of a 0.4 s drain). */
        struct pollfd p = {b->wake[0], POLLIN, 0};
        poll(&p, 1, b->interval_ms);
    }
    return NULL;
}

/* Starts a monitor for relay (default options: a 5 s store refresh) and
 * the scraper.  0, or -1 with the reason in why (why_len bytes). */
static inline int bench_monitor_start(bench_monitor *b, outbox_relay *relay, int interval_ms,
                                      char *why, size_t why_len)
{
    outbox_monitor_options mo;
    outbox_error err = {0, ""};
    memset(b, 0, sizeof *b);
    outbox_monitor_options_init(&mo);
    mo.listen = "127.0.0.1:0";
    if (outbox_monitor_new(&b->monitor, &relay, 1, &mo, &err) != OUTBOX_OK) {
        snprintf(why, why_len, "outbox_monitor_new: %s", err.message);
        return -1;
    }
    b->port = outbox_monitor_port(b->monitor);
    b->interval_ms = interval_ms;
    if (pipe(b->wake) != 0) {
        outbox_monitor_free(b->monitor);
        snprintf(why, why_len, "pipe: %s", strerror(errno));
        return -1;
    }
    if (pthread_create(&b->thread, NULL, bench_scraper_main, b) != 0) {
        close(b->wake[0]);
        close(b->wake[1]);
        outbox_monitor_free(b->monitor);
        snprintf(why, why_len, "cannot start the scraper thread");
        return -1;
    }
    return 0;
}

/* Stops the scraper and frees the monitor; returns the scrapes made (-1
 * when one failed). */
static inline long bench_monitor_stop(bench_monitor *b)
{
    atomic_store(&b->stop, 1);
    if (write(b->wake[1], "x", 1) != 1) {
        /* the scraper then ends after its current interval */
    }
    pthread_join(b->thread, NULL);
    close(b->wake[0]);
    close(b->wake[1]);
    outbox_monitor_free(b->monitor);
    return b->failures > 0 ? -1 : b->scrapes;
}

#endif /* OUTBOX_BENCH_COMMON_H */
