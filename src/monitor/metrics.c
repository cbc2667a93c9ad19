/*
 * metrics.c - GET /metrics: the Prometheus text exposition format (0.0.4)
 * and, when the scraper asks for it in Accept, OpenMetrics 1.0 (counter
 * families named without _total, info families, "# EOF" at the end).
 * Written here, without a client library: the families are few and fixed.
 *
 * Labels are of low cardinality only: relay (its name), store (the
 * scheme), destination (scheme and host), outcome, reason.  Never a
 * message or aggregate id, nor a type.  Label values are escaped (\\, \",
 * \n) as the format requires.
 *
 * The store gauges are the refresh thread's cached counts (the same
 * store call as `outbox status`); nothing here queries a store.
 */
#include "monitor.h"

#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct expo {
    outbox_buf *b;
    int om; /* OpenMetrics */
} expo;

/* The HELP and TYPE lines of a family.  name is the sample name; for a
 * counter it ends in _total, which OpenMetrics leaves out of the family
 * name (likewise _info for an info family). */
static void family(expo *e, const char *name, const char *type, const char *help)
{
    size_t len = strlen(name);
    if (e->om && strcmp(type, "counter") == 0 && len > 6 && strcmp(name + len - 6, "_total") == 0)
        len -= 6;
    if (strcmp(type, "info") == 0) {
        if (e->om)
            len -= 5; /* "_info" */
        else
            type = "gauge";
    }
    outbox__buf_printf(e->b, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)len, name, help, (int)len,
                       name, type);
}

/* Appends ,key="value" (without the comma for the first label). */
static void label(outbox_buf *l, const char *key, const char *value)
{
    const char *p;
    outbox__buf_printf(l, "%s%s=\"", l->len > 0 ? "," : "", key);
    for (p = value; *p; p++) {
        if (*p == '\\')
            outbox__buf_puts(l, "\\\\");
        else if (*p == '"')
            outbox__buf_puts(l, "\\\"");
        else if (*p == '\n')
            outbox__buf_puts(l, "\\n");
        else
            outbox__buf_append(l, p, 1);
    }
    outbox__buf_puts(l, "\"");
}

static void format_double(char *out, size_t len, double v)
{
    if (isinf(v))
        snprintf(out, len, v > 0 ? "+Inf" : "-Inf");
    else if (isnan(v))
        snprintf(out, len, "NaN");
    else if (v > -1e15 && v < 1e15 && v == (double)(long long)v) /* no libm needed */
        snprintf(out, len, "%.1f", v);
    else
        snprintf(out, len, "%.9g", v);
}

static void sample(expo *e, const char *name, const outbox_buf *labels, double value)
{
    char v[64];
    format_double(v, sizeof v, value);
    if (labels != NULL && labels->len > 0)
        outbox__buf_printf(e->b, "%s{%s} %s\n", name, labels->data, v);
    else
        outbox__buf_printf(e->b, "%s %s\n", name, v);
}

static void sample_u64(expo *e, const char *name, const outbox_buf *labels, uint64_t value)
{
    if (labels != NULL && labels->len > 0)
        outbox__buf_printf(e->b, "%s{%s} %llu\n", name, labels->data, (unsigned long long)value);
    else
        outbox__buf_printf(e->b, "%s %llu\n", name, (unsigned long long)value);
}

/* The labels every per-relay family has. */
static void relay_labels(outbox_buf *l, const outbox_relay_metrics *r)
{
    outbox__buf_reset(l);
    label(l, "relay", r->name);
    label(l, "store", r->store_scheme);
    label(l, "destination", r->destination);
}

/* One family per (name, labels) of a counter picked out of each relay. */
static void relay_counter(expo *e, const outbox_relay_metrics *all, size_t n, const char *name,
                          const char *help, size_t offset)
{
    outbox_buf l;
    size_t i;
    outbox__buf_init(&l);
    family(e, name, "counter", help);
    for (i = 0; i < n; i++) {
        relay_labels(&l, &all[i]);
        sample_u64(e, name, &l, *(const uint64_t *)((const char *)&all[i] + offset));
    }
    outbox__buf_free(&l);
}

static void histogram(expo *e, const outbox_relay_metrics *all, size_t n, const char *name,
                      const char *help, size_t offset)
{
    char sample_name[128], le[64];
    outbox_buf l, lb;
    size_t i, k;

    outbox__buf_init(&l);
    outbox__buf_init(&lb);
    family(e, name, "histogram", help);
    for (i = 0; i < n; i++) {
        const outbox_histogram *h = (const outbox_histogram *)((const char *)&all[i] + offset);
        uint64_t cumulative = 0;
        relay_labels(&l, &all[i]);
        snprintf(sample_name, sizeof sample_name, "%s_bucket", name);
        for (k = 0; k < OUTBOX_HISTOGRAM_BUCKETS; k++) {
            cumulative += h->counts[k];
            outbox__buf_reset(&lb);
            outbox__buf_append(&lb, l.data, l.len);
            format_double(le, sizeof le, h->le[k]);
            label(&lb, "le", le);
            sample_u64(e, sample_name, &lb, cumulative);
        }
        snprintf(sample_name, sizeof sample_name, "%s_sum", name);
        sample(e, sample_name, &l, h->sum);
        snprintf(sample_name, sizeof sample_name, "%s_count", name);
        sample_u64(e, sample_name, &l, cumulative);
    }
    outbox__buf_free(&l);
    outbox__buf_free(&lb);
}

/* ------------------------------------------------------------------------
 * Process metrics (Linux /proc; absent values are left out)
 * ---------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t got;
    if (f == NULL) return -1;
    got = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[got] = '\0';
    return 0;
}

/* The process's start time, read once (it does not change): field 22 of
 * /proc/self/stat (clock ticks after boot) plus the boot time (btime in
 * /proc/stat); 0 when unknown. */
static pthread_once_t start_time_once = PTHREAD_ONCE_INIT;
static double start_time_s;

static void read_start_time(void)
{
    char text[4096], stat[8192];
    long ticks = sysconf(_SC_CLK_TCK);
    unsigned long long start = 0;
    const char *p, *bt;
    int field = 2;

    if (ticks <= 0 || read_file("/proc/self/stat", text, sizeof text) != 0) return;
    p = strrchr(text, ')');
    while (p != NULL && *p && field < 22) {
        p = strchr(p + 1, ' ');
        if (p != NULL) field++;
    }
    if (p != NULL && field == 22 && sscanf(p + 1, "%llu", &start) == 1 &&
        read_file("/proc/stat", stat, sizeof stat) == 0 && (bt = strstr(stat, "\nbtime ")) != NULL)
        start_time_s = (double)strtoull(bt + 7, NULL, 10) + (double)start / (double)ticks;
}

static void process_metrics(expo *e)
{
    struct rusage ru;
    struct rlimit rl;
    char text[4096];
    long page = sysconf(_SC_PAGESIZE);
    DIR *d;

    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        family(e, "process_cpu_seconds_total", "counter", "User and system CPU time spent.");
        sample(e, "process_cpu_seconds_total", NULL,
               (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    }
    if (read_file("/proc/self/statm", text, sizeof text) == 0) {
        unsigned long long vsize = 0, rss = 0;
        if (sscanf(text, "%llu %llu", &vsize, &rss) == 2) {
            family(e, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            sample(e, "process_resident_memory_bytes", NULL, (double)rss * (double)page);
            family(e, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            sample(e, "process_virtual_memory_bytes", NULL, (double)vsize * (double)page);
        }
    }
    d = opendir("/proc/self/fd");
    if (d != NULL) {
        struct dirent *ent;
        long fds = -1; /* the directory's own descriptor */
        while ((ent = readdir(d)) != NULL)
            if (ent->d_name[0] != '.') fds++;
        closedir(d);
        family(e, "process_open_fds", "gauge", "Number of open file descriptors.");
        sample(e, "process_open_fds", NULL, (double)(fds < 0 ? 0 : fds));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        family(e, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        sample(e, "process_max_fds", NULL, (double)rl.rlim_cur);
    }
    pthread_once(&start_time_once, read_start_time);
    if (start_time_s > 0) {
        family(e, "process_start_time_seconds", "gauge",
               "Start time of the process since the Unix epoch in seconds.");
        sample(e, "process_start_time_seconds", NULL, start_time_s);
    }
}

/* ------------------------------------------------------------------------
 * The exposition
 * ---------------------------------------------------------------------- */

static double destination_up(const outbox_relay_metrics *r)
{
    return r->destination_up ? 1 : 0;
}
static double destination_backoff(const outbox_relay_metrics *r)
{
    return r->destination_backoff_seconds;
}
static double lease_held(const outbox_relay_metrics *r)
{
    return r->lease_held ? 1 : 0;
}
static double partitions_owned(const outbox_relay_metrics *r)
{
    return (double)r->partitions_owned;
}
static double loop_age(const outbox_relay_metrics *r)
{
    return (double)r->loop_age_us / 1e6;
}

/* The relays' state as gauges. */
static void relay_gauges(expo *e, const outbox_relay_metrics *all, size_t n)
{
    static const struct {
        const char *name, *help;
        double (*value)(const outbox_relay_metrics *r);
    } gauges[] = {
        {"outbox_destination_up", "1 while the destination answers, 0 during an outage.",
         destination_up},
        {"outbox_destination_backoff_seconds",
         "The relay's current pause before trying a down destination again; 0 when up.",
         destination_backoff},
        {"outbox_relay_lease_held", "1 while the relay holds its lease.", lease_held},
        {"outbox_relay_partitions_owned",
         "Partitions of the outbox the relay publishes (1 for a store with one lease).",
         partitions_owned},
        {"outbox_relay_loop_age_seconds",
         "Time since the relay loop last turned (/healthz fails past its deadline).", loop_age},
    };
    outbox_buf l;
    size_t g, i;

    outbox__buf_init(&l);
    for (g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        family(e, gauges[g].name, "gauge", gauges[g].help);
        for (i = 0; i < n; i++) {
            relay_labels(&l, &all[i]);
            sample(e, gauges[g].name, &l, gauges[g].value(&all[i]));
        }
    }
    outbox__buf_free(&l);
}

/* The store's counts, as `outbox status` gives them (the refresh thread's
 * cache), labelled with the relay and the store's scheme.  offset: of an
 * int64_t count in outbox_status; the two ages are computed. */
enum { GAUGE_OLDEST_AGE = -1, GAUGE_REFRESHED = -2 };

static void store_gauges(expo *e, const outbox_relay_metrics *all, const monitor_view *views,
                         size_t n)
{
    static const struct {
        const char *name, *help;
        long offset; /* in outbox_status, or GAUGE_* */
        int blocked; /* only where the store counts blocked messages */
    } gauges[] = {
        {"outbox_messages_pending", "Pending messages (due or waiting to retry).",
         offsetof(outbox_status, pending), 0},
        {"outbox_messages_pending_due", "Pending messages that are due now.",
         offsetof(outbox_status, pending_due), 0},
        {"outbox_messages_retrying", "Pending messages that failed at least once.",
         offsetof(outbox_status, retrying), 0},
        {"outbox_messages_failed", "Failed messages, waiting for outbox retry or drop.",
         offsetof(outbox_status, failed), 0},
        {"outbox_messages_blocked",
         "Pending messages held behind a Failed message of their aggregate.",
         offsetof(outbox_status, blocked), 1},
        {"outbox_aggregates_blocked", "Aggregates with messages held behind a Failed one.",
         offsetof(outbox_status, aggregates_blocked), 1},
        {"outbox_messages_sent", "Messages kept as sent (on_sent=mark).",
         offsetof(outbox_status, sent), 0},
        {"outbox_oldest_pending_age_seconds", "Age of the oldest pending message (0 when none).",
         GAUGE_OLDEST_AGE, 0},
        {"outbox_store_refresh_timestamp_seconds", "When these store counts were queried.",
         GAUGE_REFRESHED, 0},
    };
    int64_t now = outbox__now_us();
    outbox_buf l;
    size_t g, i;

    outbox__buf_init(&l);
    for (g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        family(e, gauges[g].name, "gauge", gauges[g].help);
        for (i = 0; i < n; i++) {
            const outbox_status *st = &views[i].status;
            double v;
            if (views[i].refreshed_us == 0) continue; /* not queried yet */
            if (gauges[g].blocked && !st->blocked_counted) continue;
            if (gauges[g].offset == GAUGE_OLDEST_AGE)
                v = st->pending > 0 && st->oldest_pending_us > 0 && now > st->oldest_pending_us
                        ? (double)(now - st->oldest_pending_us) / 1e6
                        : 0.0;
            else if (gauges[g].offset == GAUGE_REFRESHED)
                v = (double)views[i].refreshed_us / 1e6;
            else
                v = (double)*(const int64_t *)((const char *)st + gauges[g].offset);
            outbox__buf_reset(&l);
            label(&l, "relay", all[i].name);
            label(&l, "store", all[i].store_scheme);
            sample(e, gauges[g].name, &l, v);
        }
    }
    outbox__buf_free(&l);
}

/* PostgreSQL WAL capture: how far the store's replication slot lags
 * (outbox_status.wal_*), only for stores that have a slot; a slot nobody
 * reads keeps WAL on the server until its disk fills (docs/WAL.md). */
static void wal_gauges(expo *e, const outbox_relay_metrics *all, const monitor_view *views,
                       size_t n)
{
    static const struct {
        const char *name, *help;
        int seconds; /* wal_lag_us in seconds, else wal_lag_bytes */
    } gauges[] = {
        {"outbox_wal_slot_lag_bytes",
         "WAL the server keeps for the relay's replication slot: written since the relay last "
         "confirmed.",
         0},
        {"outbox_wal_slot_lag_seconds",
         "How long the relay reading the WAL is behind (0 when caught up or unknown).", 1},
    };
    outbox_buf l;
    size_t g, i;

    for (i = 0; i < n; i++)
        if (views[i].refreshed_us && views[i].status.wal_slot_exists) break;
    if (i == n) return; /* no store with a slot: no families */
    outbox__buf_init(&l);
    for (g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        family(e, gauges[g].name, "gauge", gauges[g].help);
        for (i = 0; i < n; i++) {
            const outbox_status *st = &views[i].status;
            if (views[i].refreshed_us == 0 || !st->wal_slot_exists) continue;
            outbox__buf_reset(&l);
            label(&l, "relay", all[i].name);
            label(&l, "store", all[i].store_scheme);
            label(&l, "slot", st->wal_slot);
            sample(e, gauges[g].name, &l,
                   gauges[g].seconds ? (double)st->wal_lag_us / 1e6 : (double)st->wal_lag_bytes);
        }
    }
    outbox__buf_free(&l);
}

void outbox__monitor_metrics(outbox_monitor *m, int openmetrics, monitor_reply *reply)
{
    monitor_snapshot snap;
    const outbox_relay_metrics *all;
    const monitor_view *views;
    expo e = {&reply->body, openmetrics};
    outbox_buf l;
    size_t i, n = m->n;

    if (outbox__monitor_snapshot(m, &snap) != 0) {
        reply->body.oom = 1;
        return;
    }
    all = snap.relays;
    views = snap.views;
    outbox__buf_init(&l);
    reply->content_type = openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                      : "text/plain; version=0.0.4; charset=utf-8";

    family(&e, "outbox_relay_info", "info", "The relay: version of liboutbox, store, destination.");
    for (i = 0; i < n; i++) {
        relay_labels(&l, &all[i]);
        label(&l, "version", outbox_version());
        label(&l, "state", outbox_relay_state_name(all[i].state));
        sample(&e, "outbox_relay_info", &l, 1);
    }
    relay_counter(&e, all, n, "outbox_messages_published_total",
                  "Messages confirmed by the destination and recorded sent.",
                  offsetof(outbox_relay_metrics, published));

    family(&e, "outbox_publish_attempts_total", "counter",
           "Publications by outcome: ok (confirmed), retry (rescheduled), failed (moved to "
           "Failed), outage (the destination was down: not charged).");
    for (i = 0; i < n; i++) {
        static const char *const outcomes[] = {"ok", "retry", "failed", "outage"};
        uint64_t values[4];
        size_t k;
        values[0] = all[i].published;
        values[1] = all[i].retried;
        values[2] = all[i].failed;
        values[3] = all[i].outage_publications;
        for (k = 0; k < 4; k++) {
            relay_labels(&l, &all[i]);
            label(&l, "outcome", outcomes[k]);
            sample_u64(&e, "outbox_publish_attempts_total", &l, values[k]);
        }
    }
    /* OpenMetrics would name this counter's family outbox_messages_failed,
     * the gauge of Failed messages below: there it is typed unknown, which
     * keeps the sample name whole. */
    family(&e, "outbox_messages_failed_total", openmetrics ? "unknown" : "counter",
           "Messages moved to Failed, by reason: rejected (by the destination), max_attempts, "
           "quarantined (a stored row that could not be read).");
    for (i = 0; i < n; i++) {
        static const char *const reasons[] = {"rejected", "max_attempts", "quarantined"};
        uint64_t values[3];
        size_t k;
        values[0] = all[i].failed_rejected;
        values[1] = all[i].failed_max_attempts;
        values[2] = all[i].quarantined;
        for (k = 0; k < 3; k++) {
            relay_labels(&l, &all[i]);
            label(&l, "reason", reasons[k]);
            sample_u64(&e, "outbox_messages_failed_total", &l, values[k]);
        }
    }
    relay_counter(&e, all, n, "outbox_publish_errors_total",
                  "Publications that did not succeed, charged or not.",
                  offsetof(outbox_relay_metrics, publish_errors));
    relay_counter(&e, all, n, "outbox_batches_total", "Claims that returned messages.",
                  offsetof(outbox_relay_metrics, batches));
    relay_counter(&e, all, n, "outbox_store_errors_total",
                  "Store calls of the relay loop that failed (each retried).",
                  offsetof(outbox_relay_metrics, store_errors));

    histogram(&e, all, n, "outbox_commit_to_publish_seconds",
              "From a message's creation (just before its enqueue committed) to the "
              "destination's confirmation.",
              offsetof(outbox_relay_metrics, commit_to_publish));
    histogram(&e, all, n, "outbox_publish_duration_seconds",
              "Time to publish one batch and get its confirmations.",
              offsetof(outbox_relay_metrics, publish_duration));
    histogram(&e, all, n, "outbox_batch_messages", "Messages per claimed batch.",
              offsetof(outbox_relay_metrics, batch_messages));

    relay_gauges(&e, all, n);
    store_gauges(&e, all, views, n);
    wal_gauges(&e, all, views, n);
    family(&e, "outbox_store_up", "gauge", "1 when the last query of the store succeeded.");
    for (i = 0; i < n; i++) {
        outbox__buf_reset(&l);
        label(&l, "relay", all[i].name);
        label(&l, "store", all[i].store_scheme);
        sample(&e, "outbox_store_up", &l, views[i].ok ? 1 : 0);
    }

    process_metrics(&e);
    if (openmetrics) outbox__buf_puts(e.b, "# EOF\n");
    outbox__buf_free(&l);
    outbox__monitor_snapshot_release(&snap);
}
