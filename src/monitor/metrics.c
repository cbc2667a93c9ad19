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
 *
 * A scrape is cheap (an eager Prometheus scrapes every few seconds, and
 * this runs beside the relay): numbers are written by hand, not by printf;
 * the text that stays the same from one scrape to the next (each relay's
 * label sets and its histograms' bucket lines up to the value, le
 * included) is built once and kept, and the body is written into the
 * memory of the last one.  Only the HTTP thread scrapes (libmicrohttpd's
 * one internal thread), so these are its own, without a lock.
 */
#include "monitor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The histogram families, in the order they are written; the cache keeps
 * each one's bucket lines in this order. */
static const struct {
    const char *name, *help;
    size_t offset; /* of an outbox_histogram in outbox_relay_metrics */
} histograms[] = {
    {"outbox_commit_to_publish_seconds",
     "From a message's creation (just before its enqueue committed) to the destination's "
     "confirmation.",
     offsetof(outbox_relay_metrics, commit_to_publish)},
    {"outbox_publish_duration_seconds", "Time to publish one batch and get its confirmations.",
     offsetof(outbox_relay_metrics, publish_duration)},
    {"outbox_batch_messages", "Messages per claimed batch.",
     offsetof(outbox_relay_metrics, batch_messages)},
};
#define HISTOGRAMS (sizeof histograms / sizeof histograms[0])

static const outbox_histogram *histogram_of(const outbox_relay_metrics *r, size_t h)
{
    return (const outbox_histogram *)((const char *)r + histograms[h].offset);
}

/* One relay's text that does not change between scrapes, built on its
 * first scrape and again only when what it was built from changes. */
typedef struct expo_relay {
    int built;
    char name[sizeof((outbox_relay_metrics *)0)->name];
    char store_scheme[sizeof((outbox_relay_metrics *)0)->store_scheme];
    char destination[sizeof((outbox_relay_metrics *)0)->destination];
    double le[HISTOGRAMS][OUTBOX_HISTOGRAM_BUCKETS];
    outbox_buf labels;       /* relay="...",store="...",destination="..." */
    outbox_buf store_labels; /* relay="...",store="..." */
    outbox_buf buckets;      /* each bucket line up to its value, back to back */
    size_t bucket_at[HISTOGRAMS][OUTBOX_HISTOGRAM_BUCKETS + 1]; /* offsets into buckets */
} expo_relay;

struct monitor_expo {
    size_t n;
    expo_relay *relays;
    outbox_buf scratch; /* one sample's extra labels */
};

typedef struct expo {
    outbox_buf *b;
    int om; /* OpenMetrics */
    monitor_expo *cache;
} expo;

/* ------------------------------------------------------------------------
 * Numbers, without printf: a scrape writes a few hundred of them.
 * ---------------------------------------------------------------------- */

static void write_u64(outbox_buf *b, uint64_t v)
{
    char digits[20];
    size_t i = sizeof digits;
    do {
        digits[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    outbox__buf_append(b, digits + i, sizeof digits - i);
}

/* Below 2^32 (seconds: until the year 2106) a value read from a
 * microsecond clock is within a quarter of a microsecond of it, and v * 1e6
 * rounds by at most another quarter, so rounding v * 1e6 gives back the
 * microseconds exactly. */
#define FIXED_LIMIT 4294967296.0

/* A sample value as Prometheus reads it (Go's ParseFloat; NaN, +Inf,
 * -Inf).  An integral value as "%.1f" writes it ("3.0": the canonical
 * form OpenMetrics asks of le); any other with six decimals, trailing
 * zeros dropped, which shows whole every non-integral value here: times
 * read from microsecond clocks and sums of them.  A value too large or too
 * small for that (none of today's metrics) is written by snprintf "%.9g". */
void outbox__monitor_write_double(outbox_buf *b, double v)
{
    char text[32];
    int neg = signbit(v) != 0;
    double a = neg ? -v : v;
    uint64_t units;

    if (isnan(v)) {
        outbox__buf_append(b, "NaN", 3);
        return;
    }
    if (isinf(v)) {
        outbox__buf_append(b, neg ? "-Inf" : "+Inf", 4);
        return;
    }
    if (neg) outbox__buf_append(b, "-", 1);
    if (a < 1e15 && a == (double)(uint64_t)a) {
        write_u64(b, (uint64_t)a);
        outbox__buf_append(b, ".0", 2);
        return;
    }
    units = a < FIXED_LIMIT ? (uint64_t)(a * 1e6 + 0.5) : 0;
    if (units == 0) {
        snprintf(text, sizeof text, "%.9g", a);
        outbox__buf_puts(b, text);
        return;
    }
    write_u64(b, units / 1000000);
    if (units % 1000000 == 0) {
        outbox__buf_append(b, ".0", 2);
    } else {
        uint64_t frac = units % 1000000;
        size_t len = 6, i;
        while (frac % 10 == 0) {
            frac /= 10;
            len--;
        }
        text[0] = '.';
        for (i = len; i > 0; i--) {
            text[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        outbox__buf_append(b, text, len + 1);
    }
}

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
    outbox__buf_append(e->b, "# HELP ", 7);
    outbox__buf_append(e->b, name, len);
    outbox__buf_append(e->b, " ", 1);
    outbox__buf_puts(e->b, help);
    outbox__buf_append(e->b, "\n# TYPE ", 8);
    outbox__buf_append(e->b, name, len);
    outbox__buf_append(e->b, " ", 1);
    outbox__buf_puts(e->b, type);
    outbox__buf_append(e->b, "\n", 1);
}

/* Appends ,key="value" (without the comma for the first label). */
static void label(outbox_buf *l, const char *key, const char *value)
{
    const char *p, *run = value;
    if (l->len > 0) outbox__buf_append(l, ",", 1);
    outbox__buf_puts(l, key);
    outbox__buf_append(l, "=\"", 2);
    for (p = value;; p++) {
        const char *escaped = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : NULL;
        if (escaped == NULL && *p != '\0') continue;
        outbox__buf_append(l, run, (size_t)(p - run));
        if (*p == '\0') break;
        outbox__buf_append(l, escaped, 2);
        run = p + 1;
    }
    outbox__buf_append(l, "\"", 1);
}

/* The labels of a sample and the space before its value: {labels,extra}
 * (nothing but the space when there are none).  extra: more labels
 * already written as key="value", or NULL. */
static void sample_labels(expo *e, const outbox_buf *labels, const char *extra)
{
    if (labels != NULL && labels->len > 0) {
        outbox__buf_append(e->b, "{", 1);
        outbox__buf_append(e->b, labels->data, labels->len);
        if (extra != NULL) {
            outbox__buf_append(e->b, ",", 1);
            outbox__buf_puts(e->b, extra);
        }
        outbox__buf_append(e->b, "} ", 2);
    } else {
        outbox__buf_append(e->b, " ", 1);
    }
}

static void sample_start(expo *e, const char *name, const outbox_buf *labels, const char *extra)
{
    outbox__buf_puts(e->b, name);
    sample_labels(e, labels, extra);
}

static void sample(expo *e, const char *name, const outbox_buf *labels, const char *extra,
                   double value)
{
    sample_start(e, name, labels, extra);
    outbox__monitor_write_double(e->b, value);
    outbox__buf_append(e->b, "\n", 1);
}

static void sample_u64(expo *e, const char *name, const outbox_buf *labels, const char *extra,
                       uint64_t value)
{
    sample_start(e, name, labels, extra);
    write_u64(e->b, value);
    outbox__buf_append(e->b, "\n", 1);
}

/* ------------------------------------------------------------------------
 * The text kept between scrapes
 * ---------------------------------------------------------------------- */

static int expo_relay_current(const expo_relay *c, const outbox_relay_metrics *r)
{
    size_t h;
    if (!c->built || strcmp(c->name, r->name) != 0 ||
        strcmp(c->store_scheme, r->store_scheme) != 0 ||
        strcmp(c->destination, r->destination) != 0)
        return 0;
    for (h = 0; h < HISTOGRAMS; h++)
        if (memcmp(c->le[h], histogram_of(r, h)->le, sizeof c->le[h]) != 0) return 0;
    return 1;
}

/* The labels every per-relay family has, the store families' labels, and
 * every bucket line up to its value:
 * NAME_bucket{relay="...",store="...",destination="...",le="0.005"} */
static void expo_relay_build(expo_relay *c, const outbox_relay_metrics *r)
{
    size_t h, k;

    memcpy(c->name, r->name, sizeof c->name);
    memcpy(c->store_scheme, r->store_scheme, sizeof c->store_scheme);
    memcpy(c->destination, r->destination, sizeof c->destination);
    outbox__buf_reset(&c->labels);
    outbox__buf_reset(&c->store_labels);
    outbox__buf_reset(&c->buckets);
    label(&c->store_labels, "relay", r->name);
    label(&c->store_labels, "store", r->store_scheme);
    outbox__buf_append(&c->labels, c->store_labels.data, c->store_labels.len);
    label(&c->labels, "destination", r->destination);
    for (h = 0; h < HISTOGRAMS; h++) {
        const outbox_histogram *hist = histogram_of(r, h);
        memcpy(c->le[h], hist->le, sizeof c->le[h]);
        for (k = 0; k < OUTBOX_HISTOGRAM_BUCKETS; k++) {
            c->bucket_at[h][k] = c->buckets.len;
            outbox__buf_puts(&c->buckets, histograms[h].name);
            outbox__buf_append(&c->buckets, "_bucket{", 8);
            outbox__buf_append(&c->buckets, c->labels.data, c->labels.len);
            outbox__buf_append(&c->buckets, ",le=\"", 5);
            outbox__monitor_write_double(&c->buckets, hist->le[k]);
            outbox__buf_append(&c->buckets, "\"} ", 3);
        }
        c->bucket_at[h][OUTBOX_HISTOGRAM_BUCKETS] = c->buckets.len;
    }
    c->built = !c->labels.oom && !c->store_labels.oom && !c->buckets.oom;
}

/* The cache, (re)built for the relays of this scrape; NULL when out of
 * memory. */
static monitor_expo *expo_cache(outbox_monitor *m, const outbox_relay_metrics *all)
{
    monitor_expo *x = m->expo;
    size_t i;

    if (x == NULL) {
        x = outbox__calloc(1, sizeof *x);
        if (x == NULL) return NULL;
        x->relays = outbox__calloc(m->n, sizeof *x->relays);
        if (x->relays == NULL) {
            outbox__free(x);
            return NULL;
        }
        x->n = m->n;
        outbox__buf_init(&x->scratch);
        for (i = 0; i < x->n; i++) {
            outbox__buf_init(&x->relays[i].labels);
            outbox__buf_init(&x->relays[i].store_labels);
            outbox__buf_init(&x->relays[i].buckets);
        }
        m->expo = x;
    }
    for (i = 0; i < x->n; i++) {
        if (!expo_relay_current(&x->relays[i], &all[i])) expo_relay_build(&x->relays[i], &all[i]);
        if (!x->relays[i].built) return NULL;
    }
    return x;
}

void outbox__monitor_metrics_free(outbox_monitor *m)
{
    monitor_expo *x = m->expo;
    size_t i;
    outbox__buf_free(&m->metrics_body);
    if (x == NULL) return;
    for (i = 0; i < x->n; i++) {
        outbox__buf_free(&x->relays[i].labels);
        outbox__buf_free(&x->relays[i].store_labels);
        outbox__buf_free(&x->relays[i].buckets);
    }
    outbox__buf_free(&x->scratch);
    outbox__free(x->relays);
    outbox__free(x);
    m->expo = NULL;
}

/* One family per (name, labels) of a counter picked out of each relay. */
static void relay_counter(expo *e, const outbox_relay_metrics *all, size_t n, const char *name,
                          const char *help, size_t offset)
{
    size_t i;
    family(e, name, "counter", help);
    for (i = 0; i < n; i++)
        sample_u64(e, name, &e->cache->relays[i].labels, NULL,
                   *(const uint64_t *)((const char *)&all[i] + offset));
}

static void histogram(expo *e, const outbox_relay_metrics *all, size_t n, size_t h)
{
    size_t i, k;

    family(e, histograms[h].name, "histogram", histograms[h].help);
    for (i = 0; i < n; i++) {
        const outbox_histogram *hist = histogram_of(&all[i], h);
        const expo_relay *c = &e->cache->relays[i];
        uint64_t cumulative = 0;
        for (k = 0; k < OUTBOX_HISTOGRAM_BUCKETS; k++) {
            cumulative += hist->counts[k];
            outbox__buf_append(e->b, c->buckets.data + c->bucket_at[h][k],
                               c->bucket_at[h][k + 1] - c->bucket_at[h][k]);
            write_u64(e->b, cumulative);
            outbox__buf_append(e->b, "\n", 1);
        }
        outbox__buf_puts(e->b, histograms[h].name);
        outbox__buf_append(e->b, "_sum", 4);
        sample_labels(e, &c->labels, NULL);
        outbox__monitor_write_double(e->b, hist->sum);
        outbox__buf_puts(e->b, "\n");
        outbox__buf_puts(e->b, histograms[h].name);
        outbox__buf_append(e->b, "_count", 6);
        sample_labels(e, &c->labels, NULL);
        write_u64(e->b, cumulative);
        outbox__buf_append(e->b, "\n", 1);
    }
}

/* ------------------------------------------------------------------------
 * Process metrics (Linux /proc; absent values are left out)
 * ---------------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t got = 0;
    if (fd < 0) return -1;
    while (got < len - 1) {
        ssize_t r = read(fd, buf + got, len - 1 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
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
        sample(e, "process_cpu_seconds_total", NULL, NULL,
               (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    }
    if (read_file("/proc/self/statm", text, sizeof text) == 0) {
        char *end;
        unsigned long long vsize = strtoull(text, &end, 10), rss = 0;
        if (end != text && *end == ' ') rss = strtoull(end + 1, &end, 10);
        if (rss > 0) {
            family(e, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
            sample(e, "process_resident_memory_bytes", NULL, NULL, (double)rss * (double)page);
            family(e, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
            sample(e, "process_virtual_memory_bytes", NULL, NULL, (double)vsize * (double)page);
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
        sample(e, "process_open_fds", NULL, NULL, (double)(fds < 0 ? 0 : fds));
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        family(e, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        sample(e, "process_max_fds", NULL, NULL, (double)rl.rlim_cur);
    }
    pthread_once(&start_time_once, read_start_time);
    if (start_time_s > 0) {
        family(e, "process_start_time_seconds", "gauge",
               "Start time of the process since the Unix epoch in seconds.");
        sample(e, "process_start_time_seconds", NULL, NULL, start_time_s);
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
    size_t g, i;

    for (g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        family(e, gauges[g].name, "gauge", gauges[g].help);
        for (i = 0; i < n; i++)
            sample(e, gauges[g].name, &e->cache->relays[i].labels, NULL, gauges[g].value(&all[i]));
    }
}

/* The store's counts, as `outbox status` gives them (the refresh thread's
 * cache), labelled with the relay and the store's scheme.  offset: of an
 * int64_t count in outbox_status; the two ages are computed. */
enum { GAUGE_OLDEST_AGE = -1, GAUGE_REFRESHED = -2 };

static void store_gauges(expo *e, const monitor_view *views, size_t n)
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
    size_t g, i;

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
            sample(e, gauges[g].name, &e->cache->relays[i].store_labels, NULL, v);
        }
    }
}

/* PostgreSQL WAL capture: how far the store's replication slot lags
 * (outbox_status.wal_*), only for stores that have a slot; a slot nobody
 * reads keeps WAL on the server until its disk fills (docs/WAL.md). */
static void wal_gauges(expo *e, const monitor_view *views, size_t n)
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
    outbox_buf *slot = &e->cache->scratch;
    size_t g, i;

    for (i = 0; i < n; i++)
        if (views[i].refreshed_us && views[i].status.wal_slot_exists) break;
    if (i == n) return; /* no store with a slot: no families */
    for (g = 0; g < sizeof gauges / sizeof gauges[0]; g++) {
        family(e, gauges[g].name, "gauge", gauges[g].help);
        for (i = 0; i < n; i++) {
            const outbox_status *st = &views[i].status;
            if (views[i].refreshed_us == 0 || !st->wal_slot_exists) continue;
            outbox__buf_reset(slot);
            label(slot, "slot", st->wal_slot);
            sample(e, gauges[g].name, &e->cache->relays[i].store_labels, slot->data,
                   gauges[g].seconds ? (double)st->wal_lag_us / 1e6 : (double)st->wal_lag_bytes);
        }
    }
}

void outbox__monitor_metrics(outbox_monitor *m, int openmetrics, monitor_reply *reply)
{
    monitor_snapshot snap;
    const outbox_relay_metrics *all;
    const monitor_view *views;
    expo e;
    outbox_buf *extra;
    size_t h, i, n = m->n;

    /* The last scrape's memory: the body is built where it was, and
     * send_reply hands it back (MHD copies it). */
    reply->body = m->metrics_body;
    outbox__buf_init(&m->metrics_body);
    outbox__buf_reset(&reply->body);
    reply->keep_body = &m->metrics_body;
    if (outbox__monitor_snapshot(m, &snap) != 0) {
        reply->body.oom = 1;
        return;
    }
    all = snap.relays;
    views = snap.views;
    e.b = &reply->body;
    e.om = openmetrics;
    e.cache = expo_cache(m, all);
    if (e.cache == NULL) {
        reply->body.oom = 1;
        outbox__monitor_snapshot_release(&snap);
        return;
    }
    extra = &e.cache->scratch;
    reply->content_type = openmetrics ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                      : "text/plain; version=0.0.4; charset=utf-8";

    family(&e, "outbox_relay_info", "info", "The relay: version of liboutbox, store, destination.");
    for (i = 0; i < n; i++) {
        outbox__buf_reset(extra);
        label(extra, "version", outbox_version());
        label(extra, "state", outbox_relay_state_name(all[i].state));
        sample(&e, "outbox_relay_info", &e.cache->relays[i].labels, extra->data, 1);
    }
    relay_counter(&e, all, n, "outbox_messages_published_total",
                  "Messages confirmed by the destination and recorded sent.",
                  offsetof(outbox_relay_metrics, published));

    family(&e, "outbox_publish_attempts_total", "counter",
           "Publications by outcome: ok (confirmed), retry (rescheduled), failed (moved to "
           "Failed), outage (the destination was down: not charged).");
    for (i = 0; i < n; i++) {
        static const char *const outcomes[] = {"outcome=\"ok\"", "outcome=\"retry\"",
                                               "outcome=\"failed\"", "outcome=\"outage\""};
        uint64_t values[4];
        size_t k;
        values[0] = all[i].published;
        values[1] = all[i].retried;
        values[2] = all[i].failed;
        values[3] = all[i].outage_publications;
        for (k = 0; k < 4; k++)
            sample_u64(&e, "outbox_publish_attempts_total", &e.cache->relays[i].labels, outcomes[k],
                       values[k]);
    }
    /* OpenMetrics would name this counter's family outbox_messages_failed,
     * the gauge of Failed messages below: there it is typed unknown, which
     * keeps the sample name whole. */
    family(&e, "outbox_messages_failed_total", openmetrics ? "unknown" : "counter",
           "Messages moved to Failed, by reason: rejected (by the destination), max_attempts, "
           "quarantined (a stored row that could not be read).");
    for (i = 0; i < n; i++) {
        static const char *const reasons[] = {"reason=\"rejected\"", "reason=\"max_attempts\"",
                                              "reason=\"quarantined\""};
        uint64_t values[3];
        size_t k;
        values[0] = all[i].failed_rejected;
        values[1] = all[i].failed_max_attempts;
        values[2] = all[i].quarantined;
        for (k = 0; k < 3; k++)
            sample_u64(&e, "outbox_messages_failed_total", &e.cache->relays[i].labels, reasons[k],
                       values[k]);
    }
    relay_counter(&e, all, n, "outbox_publish_errors_total",
                  "Publications that did not succeed, charged or not.",
                  offsetof(outbox_relay_metrics, publish_errors));
    relay_counter(&e, all, n, "outbox_batches_total", "Claims that returned messages.",
                  offsetof(outbox_relay_metrics, batches));
    relay_counter(&e, all, n, "outbox_store_errors_total",
                  "Store calls of the relay loop that failed (each retried).",
                  offsetof(outbox_relay_metrics, store_errors));

    for (h = 0; h < HISTOGRAMS; h++)
        histogram(&e, all, n, h);

    relay_gauges(&e, all, n);
    store_gauges(&e, views, n);
    wal_gauges(&e, views, n);
    family(&e, "outbox_store_up", "gauge", "1 when the last query of the store succeeded.");
    for (i = 0; i < n; i++)
        sample(&e, "outbox_store_up", &e.cache->relays[i].store_labels, NULL, views[i].ok ? 1 : 0);

    process_metrics(&e);
    if (openmetrics) outbox__buf_puts(e.b, "# EOF\n");
    outbox__monitor_snapshot_release(&snap);
}
