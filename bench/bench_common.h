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
    long long count;         /* messages handled, as the child saw it */
    double teardown_seconds; /* after the measured work: closing, freeing */
    char message[512];
} bench_report;

/* What the parent knows of a finished child. */
typedef struct bench_result {
    double seconds;
    double user_seconds;
    double sys_seconds;
    double teardown_seconds;
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

#endif /* OUTBOX_BENCH_COMMON_H */
