/*
 * monitor.h - what the parts of the relay monitor share (src/monitor):
 *
 *   monitor.c  the outbox_monitor object, its HTTP server (libmicrohttpd,
 *              one internal thread) with the routing, authentication and
 *              security headers, and the refresh thread that queries the
 *              stores and keeps the history ring;
 *   metrics.c  GET /metrics: the Prometheus text and OpenMetrics writer;
 *   api.c      the JSON endpoints: /healthz, /readyz, /api/...
 *
 * Three threads touch a monitor: the relays' loops never do (the monitor
 * reads them with outbox_relay_get_metrics, which never makes a loop
 * wait); the refresh thread writes views and history under `lock`; the
 * HTTP thread reads them under `lock` and uses the api_stores alone.
 */
#ifndef OUTBOX_MONITOR_H
#define OUTBOX_MONITOR_H

#include "internal.h"

#include <pthread.h>

/* The console's history: this many points, one per interval (15 min). */
#define MONITOR_HISTORY_POINTS 90
#define MONITOR_HISTORY_INTERVAL_S 10

/* The store counts of one relay's store, as last queried. */
typedef struct monitor_view {
    int queried;          /* a query finished (ok or not) */
    int ok;               /* the last query succeeded */
    char error[512];      /* why not, when !ok */
    outbox_status status; /* of the last successful query */
    int64_t refreshed_us; /* unix time of that query */
} monitor_view;

/* One relay's rates over the last history interval. */
typedef struct monitor_rate {
    double publish_rate; /* messages per second */
    int has_quantiles;   /* any confirmation in the interval */
    double p50, p99;     /* commit to publish, seconds */
} monitor_rate;

typedef struct monitor_point {
    int64_t t_us;
    int has_pending;
    int64_t pending;
    int has_oldest;
    double oldest_age_s;
    uint64_t published_total;
    double publish_rate;
    int has_quantiles;
    double p50, p99;
} monitor_point;

typedef struct monitor_expo monitor_expo;

struct outbox_monitor {
    outbox_relay **relays; /* borrowed */
    size_t n;
    char *admin_token; /* NULL: read-only */
    unsigned refresh_ms;
    int public_listen; /* allow_public: any Host header */
    unsigned port;
    void *daemon; /* struct MHD_Daemon */

    pthread_t refresher;
    int refresher_started;
    pthread_mutex_t lock; /* guards stopping and everything below */
    pthread_cond_t wake;
    int stopping;
    monitor_view *views; /* per relay */
    monitor_rate *rates; /* per relay */
    monitor_point history[MONITOR_HISTORY_POINTS];
    size_t history_first, history_count;

    /* The refresh thread's own. */
    outbox_store **refresh_stores; /* per relay, NULL until opened */
    uint64_t *last_published;      /* per relay, at the last history sample */
    uint64_t (*last_commit)[OUTBOX_HISTOGRAM_BUCKETS];
    int64_t last_sample_us; /* monotonic */

    /* The HTTP thread's own. */
    outbox_store **api_stores; /* per relay, NULL until opened */
    monitor_expo *expo;        /* metrics.c: the text kept between scrapes */
    outbox_buf metrics_body;   /* the last scrape's memory, written again by the next */
};

/* The console page (generated at build time from src/monitor/console.html
 * by src/monitor/embed.cmake). */
extern const unsigned char outbox__console_html[];
extern const size_t outbox__console_html_len;

/* An answer to a request. */
typedef struct monitor_reply {
    unsigned status;
    outbox_buf body;
    const char *content_type;
    int bearer_challenge;  /* add WWW-Authenticate: Bearer */
    const char *allow;     /* for 405: the Allow header */
    outbox_buf *keep_body; /* non-NULL: body's memory goes back here once sent */
} monitor_reply;

/* What a request shows, copied at once: every relay's metrics, and the
 * refresh thread's views and rates. */
typedef struct monitor_snapshot {
    outbox_relay_metrics *relays; /* m->n each */
    monitor_view *views;
    monitor_rate *rates;
} monitor_snapshot;

/* Fills s (released with outbox__monitor_snapshot_release); 0, or -1 when
 * out of memory (nothing to release). */
int outbox__monitor_snapshot(outbox_monitor *m, monitor_snapshot *s);
void outbox__monitor_snapshot_release(monitor_snapshot *s);

/* The store of relay i for the HTTP thread (opened on first use, reopened
 * after a failure); NULL with err filled when it cannot be opened. */
outbox_store *outbox__monitor_api_store(outbox_monitor *m, size_t i, outbox_error *err);
/* Closes it after an error, so the next request reopens it. */
void outbox__monitor_api_store_reset(outbox_monitor *m, size_t i);

/* GET /metrics: text exposition (openmetrics != 0: OpenMetrics 1.0). */
void outbox__monitor_metrics(outbox_monitor *m, int openmetrics, monitor_reply *reply);
/* Appends a sample value: integral values as "%.1f" writes them, others
 * with six decimals (trailing zeros dropped), NaN, +Inf, -Inf. */
void outbox__monitor_write_double(outbox_buf *b, double v);
/* Frees what outbox__monitor_metrics keeps between scrapes. */
void outbox__monitor_metrics_free(outbox_monitor *m);

/* The JSON endpoints (api.c).  limit_text: the query's limit, or NULL. */
void outbox__monitor_healthz(outbox_monitor *m, monitor_reply *reply);
void outbox__monitor_readyz(outbox_monitor *m, monitor_reply *reply);
void outbox__monitor_summary(outbox_monitor *m, monitor_reply *reply);
void outbox__monitor_history(outbox_monitor *m, monitor_reply *reply);
void outbox__monitor_failed(outbox_monitor *m, const char *limit_text, monitor_reply *reply);
void outbox__monitor_blocked(outbox_monitor *m, const char *limit_text, monitor_reply *reply);
/* POST /api/messages/<id>/<action>, action "retry" or "drop", once
 * authorised. */
void outbox__monitor_message_action(outbox_monitor *m, const char *id, const char *action,
                                    monitor_reply *reply);
/* A JSON error body {"error": text} with status. */
void outbox__monitor_json_error(monitor_reply *reply, unsigned status, const char *text);

/* Commit-to-publish quantile q (0..1) of the observations counts[] over
 * bounds le[] (as Prometheus's histogram_quantile); -1 when empty. */
double outbox__monitor_quantile(const double *le, const uint64_t *counts, double q);

#endif /* OUTBOX_MONITOR_H */
