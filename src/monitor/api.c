/*
 * api.c - the monitor's JSON endpoints: /healthz, /readyz and the console's
 * API (/api/summary, /api/history, /api/failed, /api/blocked, and the
 * retry and drop POSTs, authorised by monitor.c).  Built with jansson, so
 * every stored string is JSON-escaped; text that is not UTF-8 (a row
 * written around the library's checks) is shown with its odd bytes
 * replaced by '?', never as invalid JSON.
 *
 * /api/failed and /api/blocked read the store on request (the HTTP
 * thread's own handle), the other endpoints only the refresh thread's
 * cache and the relays' metrics.
 */
#include "monitor.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COMPONENT "monitor"

/* Most messages /api/failed and /api/blocked return (limit's range). */
#define API_LIMIT_DEFAULT 100
#define API_LIMIT_MAX 1000
/* Most Failed messages /api/blocked looks at. */
#define BLOCKED_SCAN_MAX 10000

/* A JSON string of text; NULL text gives null. */
static json_t *jstr(const char *text)
{
    json_t *s;
    char *copy;
    size_t i;

    if (text == NULL) return json_null();
    s = json_string(text);
    if (s != NULL) return s;
    copy = outbox__strdup(text);
    if (copy == NULL) return json_null();
    for (i = 0; copy[i]; i++)
        if ((unsigned char)copy[i] >= 0x80) copy[i] = '?';
    s = json_string(copy);
    outbox__free(copy);
    return s != NULL ? s : json_null();
}

static json_t *jnum_or_null(int has, double value)
{
    return has ? json_real(value) : json_null();
}

/* Serialises o (taken) into the reply with status. */
static void reply_json(monitor_reply *reply, unsigned status, json_t *o)
{
    char *text = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    reply->status = status;
    reply->content_type = "application/json";
    outbox__buf_reset(&reply->body);
    if (text == NULL) {
        reply->status = 503;
        outbox__buf_puts(&reply->body, "{\"error\":\"out of memory\"}");
        return;
    }
    outbox__buf_puts(&reply->body, text);
    outbox__free(text);
}

void outbox__monitor_json_error(monitor_reply *reply, unsigned status, const char *text)
{
    json_t *o = json_object();
    json_object_set_new(o, "error", jstr(text));
    reply_json(reply, status, o);
}

static double unix_seconds(int64_t us)
{
    return (double)us / 1e6;
}

/* Takes a snapshot; 0 after answering 503 when out of memory. */
static int take_snapshot(outbox_monitor *m, monitor_snapshot *snap, monitor_reply *reply)
{
    if (outbox__monitor_snapshot(m, snap) == 0) return 1;
    outbox__monitor_json_error(reply, 503, "out of memory");
    return 0;
}

/* ------------------------------------------------------------------------
 * /healthz and /readyz
 * ---------------------------------------------------------------------- */

/* {"status": good (200) or bad (503, when good is NULL), "relays": relays},
 * releasing the snapshot. */
static void reply_probe(monitor_reply *reply, monitor_snapshot *snap, json_t *o, json_t *relays,
                        const char *good, const char *bad)
{
    json_object_set_new(o, "status", json_string(good ? good : bad));
    json_object_set_new(o, "relays", relays);
    outbox__monitor_snapshot_release(snap);
    reply_json(reply, good ? 200 : 503, o);
}

/* Alive: every relay's loop turned within its deadline
 * (outbox_relay_metrics.deadline_us). */
void outbox__monitor_healthz(outbox_monitor *m, monitor_reply *reply)
{
    monitor_snapshot snap;
    const outbox_relay_metrics *all;
    json_t *o, *relays;
    int ok = 1;
    size_t i;

    if (!take_snapshot(m, &snap, reply)) return;
    all = snap.relays;
    o = json_object();
    relays = json_array();
    for (i = 0; i < m->n; i++) {
        json_t *r = json_object();
        int alive =
            all[i].state != OUTBOX_RELAY_STOPPED && all[i].loop_age_us <= all[i].deadline_us;
        if (!alive) ok = 0;
        json_object_set_new(r, "name", jstr(all[i].name));
        json_object_set_new(r, "state", json_string(outbox_relay_state_name(all[i].state)));
        json_object_set_new(r, "loop_age_seconds", json_real(all[i].loop_age_us / 1e6));
        json_object_set_new(r, "deadline_seconds", json_real(all[i].deadline_us / 1e6));
        json_object_set_new(r, "alive", json_boolean(alive));
        json_array_append_new(relays, r);
    }
    reply_probe(reply, &snap, o, relays, ok ? "ok" : NULL, "failing");
}

/* Ready: the store answered the last refresh, the destination is not in an
 * outage, and the relay holds its lease or stands by for it. */
void outbox__monitor_readyz(outbox_monitor *m, monitor_reply *reply)
{
    monitor_snapshot snap;
    const outbox_relay_metrics *all;
    const monitor_view *views;
    json_t *o, *relays;
    char text[400];
    int ready = 1;
    size_t i;

    if (!take_snapshot(m, &snap, reply)) return;
    all = snap.relays;
    views = snap.views;
    o = json_object();
    relays = json_array();
    for (i = 0; i < m->n; i++) {
        json_t *r = json_object();
        const char *lease = all[i].lease_held                      ? "held"
                            : all[i].state == OUTBOX_RELAY_STANDBY ? "standby"
                                                                   : "none";
        json_object_set_new(r, "name", jstr(all[i].name));
        if (!views[i].queried) {
            ready = 0;
            json_object_set_new(r, "store", json_string("not checked yet"));
        } else if (!views[i].ok) {
            ready = 0;
            json_object_set_new(r, "store", jstr(views[i].error));
        } else {
            json_object_set_new(r, "store", json_string("ok"));
        }
        if (all[i].destination_up) {
            json_object_set_new(r, "destination", json_string("up"));
        } else {
            ready = 0;
            snprintf(text, sizeof text, "down: %s", all[i].outage_error);
            json_object_set_new(r, "destination", jstr(text));
        }
        if (strcmp(lease, "none") == 0) ready = 0;
        json_object_set_new(r, "lease", json_string(lease));
        json_array_append_new(relays, r);
    }
    reply_probe(reply, &snap, o, relays, ready ? "ready" : NULL, "not ready");
}

/* ------------------------------------------------------------------------
 * /api/summary and /api/history
 * ---------------------------------------------------------------------- */

/* status --json's "relay" member (cmd/outbox/status.c), from the cache. */
static json_t *lease_json(const outbox_status *st, int64_t now)
{
    json_t *relay;
    if (!st->lease_owner[0]) return json_null();
    relay = json_object();
    json_object_set_new(relay, "owner", jstr(st->lease_owner));
    json_object_set_new(
        relay, "lease_expires_in_ms",
        json_integer(st->lease_expires_us > now ? (st->lease_expires_us - now) / 1000 : 0));
    json_object_set_new(relay, "pid",
                        st->lease_pid > 0 ? json_integer(st->lease_pid) : json_null());
    json_object_set_new(relay, "host", st->lease_host[0] ? jstr(st->lease_host) : json_null());
    json_object_set_new(relay, "gone",
                        st->blocked_counted ? json_boolean(st->lease_holder_gone) : json_null());
    json_object_set_new(relay, "note", st->relay_note[0] ? jstr(st->relay_note) : json_null());
    return relay;
}

static json_t *store_json(const outbox_relay_metrics *r, const monitor_view *v, int64_t now)
{
    const outbox_status *st = &v->status;
    json_t *o = json_object();
    int counted = st->blocked_counted;

    json_object_set_new(o, "url", jstr(r->store));
    json_object_set_new(o, "scheme", jstr(r->store_scheme));
    json_object_set_new(o, "schema_version", json_integer(st->schema_version));
    json_object_set_new(o, "pending", json_integer(st->pending));
    json_object_set_new(o, "pending_due", json_integer(st->pending_due));
    json_object_set_new(o, "retrying", json_integer(st->retrying));
    json_object_set_new(o, "blocked", counted ? json_integer(st->blocked) : json_null());
    json_object_set_new(o, "aggregates_blocked",
                        counted ? json_integer(st->aggregates_blocked) : json_null());
    json_object_set_new(o, "sent", json_integer(st->sent));
    json_object_set_new(o, "failed", json_integer(st->failed));
    json_object_set_new(o, "oldest_pending_age_seconds",
                        jnum_or_null(st->pending > 0 && st->oldest_pending_us > 0,
                                     now > st->oldest_pending_us
                                         ? (double)(now - st->oldest_pending_us) / 1e6
                                         : 0.0));
    json_object_set_new(o, "relay", lease_json(st, now));
    json_object_set_new(o, "ok", json_boolean(v->ok));
    json_object_set_new(o, "error", v->queried && !v->ok ? jstr(v->error) : json_null());
    return o;
}

void outbox__monitor_summary(outbox_monitor *m, monitor_reply *reply)
{
    monitor_snapshot snap;
    const outbox_relay_metrics *all;
    const monitor_view *views;
    const monitor_rate *rates;
    json_t *o, *relays;
    int64_t now = outbox__now_us();
    size_t i;

    if (!take_snapshot(m, &snap, reply)) return;
    all = snap.relays;
    views = snap.views;
    rates = snap.rates;
    o = json_object();
    relays = json_array();

    json_object_set_new(o, "version", json_string(outbox_version()));
    json_object_set_new(o, "now", json_real(unix_seconds(now)));
    json_object_set_new(o, "admin", json_boolean(m->admin_token != NULL));
    json_object_set_new(o, "refreshed_at",
                        views[0].refreshed_us > 0 ? json_real(unix_seconds(views[0].refreshed_us))
                                                  : json_null());
    json_object_set_new(
        o, "store", views[0].refreshed_us > 0 ? store_json(&all[0], &views[0], now) : json_null());
    for (i = 0; i < m->n; i++) {
        const outbox_relay_metrics *r = &all[i];
        json_t *j = json_object();
        json_object_set_new(j, "name", jstr(r->name));
        json_object_set_new(j, "store", jstr(r->store));
        json_object_set_new(j, "destination", jstr(r->destination));
        json_object_set_new(j, "state", json_string(outbox_relay_state_name(r->state)));
        json_object_set_new(j, "lease_held", json_boolean(r->lease_held));
        json_object_set_new(j, "partitions_owned", json_integer(r->partitions_owned));
        json_object_set_new(j, "destination_up", json_boolean(r->destination_up));
        json_object_set_new(j, "destination_backoff_seconds",
                            json_real(r->destination_backoff_seconds));
        json_object_set_new(j, "last_error", r->last_error[0] ? jstr(r->last_error) : json_null());
        json_object_set_new(j, "published", json_integer((json_int_t)r->published));
        json_object_set_new(j, "retried", json_integer((json_int_t)r->retried));
        json_object_set_new(j, "failed", json_integer((json_int_t)r->failed));
        json_object_set_new(j, "publish_errors", json_integer((json_int_t)r->publish_errors));
        json_object_set_new(j, "quarantined", json_integer((json_int_t)r->quarantined));
        json_object_set_new(j, "publish_rate", json_real(rates[i].publish_rate));
        json_object_set_new(j, "commit_to_publish_p50_seconds",
                            jnum_or_null(rates[i].has_quantiles, rates[i].p50));
        json_object_set_new(j, "commit_to_publish_p99_seconds",
                            jnum_or_null(rates[i].has_quantiles, rates[i].p99));
        json_array_append_new(relays, j);
    }
    json_object_set_new(o, "relays", relays);
    outbox__monitor_snapshot_release(&snap);
    reply_json(reply, 200, o);
}

void outbox__monitor_history(outbox_monitor *m, monitor_reply *reply)
{
    json_t *o = json_object(), *points = json_array();
    size_t i;

    pthread_mutex_lock(&m->lock);
    for (i = 0; i < m->history_count; i++) {
        const monitor_point *p = &m->history[(m->history_first + i) % MONITOR_HISTORY_POINTS];
        json_t *j = json_object();
        json_object_set_new(j, "t", json_real(unix_seconds(p->t_us)));
        json_object_set_new(j, "pending", p->has_pending ? json_integer(p->pending) : json_null());
        json_object_set_new(j, "oldest_pending_age_seconds",
                            jnum_or_null(p->has_oldest, p->oldest_age_s));
        json_object_set_new(j, "published_total", json_integer((json_int_t)p->published_total));
        json_object_set_new(j, "publish_rate", json_real(p->publish_rate));
        json_object_set_new(j, "commit_to_publish_p50_seconds",
                            jnum_or_null(p->has_quantiles, p->p50));
        json_object_set_new(j, "commit_to_publish_p99_seconds",
                            jnum_or_null(p->has_quantiles, p->p99));
        json_array_append_new(points, j);
    }
    pthread_mutex_unlock(&m->lock);
    json_object_set_new(o, "interval_seconds", json_integer(MONITOR_HISTORY_INTERVAL_S));
    json_object_set_new(o, "points", points);
    reply_json(reply, 200, o);
}

/* ------------------------------------------------------------------------
 * /api/failed and /api/blocked (store queries on request)
 * ---------------------------------------------------------------------- */

/* limit=N: API_LIMIT_DEFAULT when absent, -1 when malformed. */
static int64_t parse_limit(const char *text)
{
    char *end;
    long long v;
    if (text == NULL || text[0] == '\0') return API_LIMIT_DEFAULT;
    v = strtoll(text, &end, 10);
    if (*end != '\0' || v < 1 || v > API_LIMIT_MAX) return -1;
    return v;
}

static int add_failed(void *user, const outbox_msg *msg)
{
    json_t *messages = user, *j = json_object();
    char when[32];
    outbox_time_format(outbox_msg_occurred_at(msg), when);
    json_object_set_new(j, "id", jstr(outbox_msg_id(msg)));
    json_object_set_new(j, "type", jstr(outbox_msg_type(msg)));
    json_object_set_new(j, "aggregate_type", jstr(outbox_msg_aggregate_type(msg)));
    json_object_set_new(j, "aggregate_id", jstr(outbox_msg_aggregate_id(msg)));
    json_object_set_new(j, "attempts", json_integer(outbox_msg_attempts(msg)));
    json_object_set_new(j, "last_error", jstr(outbox_msg_last_error(msg)));
    json_object_set_new(j, "created_at", json_string(when));
    json_array_append_new(messages, j);
    return 0;
}

/* The store of the first relay for the HTTP thread, or an error reply. */
static outbox_store *api_store(outbox_monitor *m, monitor_reply *reply)
{
    outbox_error e = {0, ""};
    outbox_store *store = outbox__monitor_api_store(m, 0, &e);
    if (store == NULL) outbox__monitor_json_error(reply, 503, e.message);
    return store;
}

/* A store call failed: a 503 saying why, and a fresh handle next time. */
static void store_failed(outbox_monitor *m, monitor_reply *reply, const outbox_error *e)
{
    outbox__monitor_api_store_reset(m, 0);
    outbox__monitor_json_error(reply, 503, e->message);
}

void outbox__monitor_failed(outbox_monitor *m, const char *limit_text, monitor_reply *reply)
{
    int64_t limit = parse_limit(limit_text);
    outbox_list_params params;
    outbox_status st;
    outbox_error e = {0, ""};
    outbox_store *store;
    json_t *o, *messages;

    if (limit < 0) {
        outbox__monitor_json_error(reply, 400, "limit must be a number from 1 to 1000");
        return;
    }
    if ((store = api_store(m, reply)) == NULL) return;
    memset(&st, 0, sizeof st);
    if (outbox_store_status(store, &st, sizeof st, &e) != OUTBOX_OK) {
        store_failed(m, reply, &e);
        return;
    }
    outbox_list_params_init(&params);
    params.status = OUTBOX_STATUS_FAILED;
    params.limit = limit;
    messages = json_array();
    if (outbox_store_list(store, &params, add_failed, messages, &e) != OUTBOX_OK) {
        json_decref(messages);
        store_failed(m, reply, &e);
        return;
    }
    o = json_object();
    json_object_set_new(o, "messages", messages);
    json_object_set_new(o, "total", json_integer(st.failed));
    reply_json(reply, 200, o);
}

/* Blocked aggregates, derived from two listings (the store API has no
 * per-aggregate count): every Failed message (up to BLOCKED_SCAN_MAX),
 * the first of each aggregate id holding it; then every pending message,
 * counted as held when its aggregate has a Failed message with a lower
 * seq.  It reads the pending messages once, so it costs about what
 * `outbox list --status pending` does; the console asks for it only when
 * the cached status counts blocked messages. */
typedef struct blocker {
    char *aggregate_type, *aggregate_id;
    char failed_id[37];
    int64_t seq;
    int64_t held;
} blocker;

typedef struct blocked_scan {
    blocker *items;
    size_t n, cap;
    outbox_aggindex index; /* aggregate id -> items index */
    int oom;
} blocked_scan;

static int collect_failed(void *user, const outbox_msg *msg)
{
    blocked_scan *s = user;
    blocker *b;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        blocker *p = outbox__realloc(s->items, cap * sizeof *p);
        if (p == NULL) {
            s->oom = 1;
            return 1;
        }
        s->items = p;
        s->cap = cap;
    }
    b = &s->items[s->n];
    memset(b, 0, sizeof *b);
    b->aggregate_type = outbox__strdup(outbox_msg_aggregate_type(msg));
    b->aggregate_id = outbox__strdup(outbox_msg_aggregate_id(msg));
    snprintf(b->failed_id, sizeof b->failed_id, "%s", outbox_msg_id(msg));
    b->seq = outbox_msg_seq(msg);
    if (b->aggregate_type == NULL || b->aggregate_id == NULL) {
        outbox__free(b->aggregate_type);
        outbox__free(b->aggregate_id);
        s->oom = 1;
        return 1;
    }
    s->n++;
    return 0;
}

static int count_held(void *user, const outbox_msg *msg)
{
    blocked_scan *s = user;
    uint32_t at;
    if (outbox__aggindex_lookup(&s->index, outbox_msg_aggregate_id(msg), &at) &&
        outbox_msg_seq(msg) > s->items[at].seq)
        s->items[at].held++;
    return 0;
}

void outbox__monitor_blocked(outbox_monitor *m, const char *limit_text, monitor_reply *reply)
{
    int64_t limit = parse_limit(limit_text), total = 0;
    outbox_list_params params;
    outbox_error e = {0, ""};
    outbox_store *store;
    blocked_scan s;
    json_t *o, *aggregates;
    size_t i;
    int rc;

    if (limit < 0) {
        outbox__monitor_json_error(reply, 400, "limit must be a number from 1 to 1000");
        return;
    }
    if ((store = api_store(m, reply)) == NULL) return;
    memset(&s, 0, sizeof s);
    outbox__aggindex_init(&s.index);
    outbox_list_params_init(&params);
    params.status = OUTBOX_STATUS_FAILED;
    params.limit = BLOCKED_SCAN_MAX;
    /* Indexed after the listing (items moves while it grows); the first
     * Failed message of an aggregate (lowest seq) is the one that holds it. */
    rc = outbox_store_list(store, &params, collect_failed, &s, &e);
    if (rc == OUTBOX_OK && !s.oom) {
        if (outbox__aggindex_reserve(&s.index, s.n) != OUTBOX_OK) s.oom = 1;
        for (i = 0; !s.oom && i < s.n; i++)
            if (!outbox__aggindex_lookup(&s.index, s.items[i].aggregate_id, NULL))
                outbox__aggindex_insert(&s.index, s.items[i].aggregate_id, (uint32_t)i, NULL);
        params.status = OUTBOX_STATUS_PENDING;
        params.limit = 0;
        if (!s.oom && s.n > 0) rc = outbox_store_list(store, &params, count_held, &s, &e);
    }
    if (rc != OUTBOX_OK || s.oom) {
        if (rc != OUTBOX_OK)
            store_failed(m, reply, &e);
        else
            outbox__monitor_json_error(reply, 503, "out of memory");
        aggregates = NULL;
    } else {
        aggregates = json_array();
        for (i = 0; i < s.n; i++) {
            json_t *j;
            if (s.items[i].held == 0) continue;
            total++;
            if ((int64_t)json_array_size(aggregates) >= limit) continue;
            j = json_object();
            json_object_set_new(j, "aggregate_type", jstr(s.items[i].aggregate_type));
            json_object_set_new(j, "aggregate_id", jstr(s.items[i].aggregate_id));
            json_object_set_new(j, "failed_id", jstr(s.items[i].failed_id));
            json_object_set_new(j, "held", json_integer(s.items[i].held));
            json_array_append_new(aggregates, j);
        }
        o = json_object();
        json_object_set_new(o, "aggregates", aggregates);
        json_object_set_new(o, "total", json_integer(total));
        reply_json(reply, 200, o);
    }
    for (i = 0; i < s.n; i++) {
        outbox__free(s.items[i].aggregate_type);
        outbox__free(s.items[i].aggregate_id);
    }
    outbox__free(s.items);
    outbox__aggindex_free(&s.index);
}

/* ------------------------------------------------------------------------
 * Retry and drop
 * ---------------------------------------------------------------------- */

void outbox__monitor_message_action(outbox_monitor *m, const char *id, const char *action,
                                    monitor_reply *reply)
{
    const char *ids[1];
    outbox_error e = {0, ""};
    outbox_store *store;
    int64_t count = 0;
    json_t *o;
    size_t i;
    int rc, retry = strcmp(action, "retry") == 0;

    if (!outbox_uuid_valid(id)) {
        outbox__monitor_json_error(reply, 404, "no such message: the id is not a UUID");
        return;
    }
    if ((store = api_store(m, reply)) == NULL) return;
    ids[0] = id;
    rc = retry ? outbox_store_retry(store, ids, 1, 0, &count, &e)
               : outbox_store_drop(store, ids, 1, 0, NULL, NULL, &count, &e);
    if (rc == OUTBOX_ENOTFOUND || rc == OUTBOX_EBADID) {
        outbox__monitor_json_error(reply, 404, e.message);
        return;
    }
    if (rc == OUTBOX_EINVAL) {
        outbox__monitor_json_error(reply, 409, e.message);
        return;
    }
    if (rc != OUTBOX_OK) {
        if (rc == OUTBOX_ENOTBUILT) {
            outbox__monitor_json_error(reply, 501, e.message);
            return;
        }
        store_failed(m, reply, &e);
        return;
    }
    outbox__log(OUTBOX_LOG_INFO, COMPONENT, "message %s %s from the console", id,
                retry ? "requeued" : "dropped");
    for (i = 0; i < m->n; i++)
        outbox_relay_wake(m->relays[i]);
    o = json_object();
    json_object_set_new(o, "ok", json_true());
    json_object_set_new(o, "count", json_integer(count));
    reply_json(reply, 200, o);
}
