/*
 * redis.c - the `redis://` destination: Redis Streams through hiredis.
 *
 *   redis://[user:pass@]host:port[/db]?stream=TEMPLATE&maxlen=N&dedup_window=DUR&...
 *
 * Each message is one stream entry (fields in docs/REDIS.md), added by one
 * Lua script (EVALSHA; loaded at connect, again after NOSCRIPT) that
 * remembers the message id for dedup_window in a key of its own
 * (SET NX-like: GET, then XADD and SET PX only when the id is new), so a
 * republished message is not added twice: it answers the entry id it got
 * the first time, which counts as confirmed (as JetStream's duplicate ack
 * does).  The XADD and the id key are written by one script, which Redis
 * runs atomically and logs to the AOF as one MULTI/EXEC: a crash cannot
 * keep one without the other.  A reply is a confirmation only as durable
 * as the server's persistence: open reads appendonly and appendfsync and
 * warns (or, with require_fsync=true, refuses) unless they are "yes" and
 * "always".
 *
 * Pipelining (publish_begin / publish_end, see internal.h): publish_begin
 * writes a whole batch's scripts at once and publish_end reads their
 * replies, in order, on the one connection.  The window (publish_room):
 * two batches are open, and more (up to OUTBOX_PIPELINE_MAX_DEPTH) while
 * the messages of the open batches, with the next batch, stay within
 * window_messages.
 *
 * Order: a batch may hold several messages of one aggregate, and the ones
 * before it may still be open, so a message's script can run although the
 * previous message of its aggregate failed (an error reply: out of memory,
 * a script error) or never arrived (a connection that broke mid-write, a
 * reconnect while old writes are still on their way).  So every message
 * whose aggregate has an earlier message in the open batches carries that
 * message's id key (KEYS[3]), and the script adds it only when that key
 * exists, that is, when the earlier message is in the stream: otherwise it
 * answers "held" and the message is retried.  Redis runs the scripts one at
 * a time, so "added" for message k of an aggregate implies that every
 * earlier one in the open batches was added before it, whatever failed or
 * arrived late.
 *
 * Keys: the id key is "<dedup_prefix>:{<slot text>}:<message id>", where
 * the slot text is what Redis Cluster hashes of the stream's name (its
 * hash tag, or the whole name), so both keys of a script share one slot.
 *
 * Connection: a command timeout and TCP keepalive detect a dead server; an
 * I/O error or a timeout drops the connection, the replies still owed are
 * retriable, and the next batch connects again (and loads the script).
 * rediss:// (TLS) needs hiredis_ssl, which hiredis 0.14 does not have: the
 * registry answers that this build has none.  Passwords never reach errors
 * or logs: only host:port is shown.
 */
#include "internal.h"

#include <stddef.h>
#include <stdint.h>

enum { FORMAT_FIELDS = 0, FORMAT_CLOUDEVENTS = 1 };

/* What the settings (URL query and --to-opt) are read into.  The table is
 * in every build, so help and docs describe the driver where hiredis is
 * absent too. */
typedef struct redis_config {
    char *stream;
    int64_t maxlen;
    int64_t dedup_window_ms;
    char *dedup_prefix;
    int format;
    int require_fsync;
    char *password;
    int64_t connect_timeout_ms;
    int64_t timeout_ms;
    int64_t window_messages;
} redis_config;

#define REDIS_FIELD(f) offsetof(redis_config, f)

static const outbox_prop redis_props[] = {
    {"stream", OUTBOX_PROP_STRING, REDIS_FIELD(stream), "outbox:{aggregate_type}", NULL, "TEMPLATE",
     "The stream (key) of each message, made of {type}, {aggregate_type} and {aggregate_id}; "
     "no spaces, '*' or '>'."},
    {"maxlen", OUTBOX_PROP_INT, REDIS_FIELD(maxlen), "0", "0..", NULL,
     "Trim each stream to about this many entries (XADD MAXLEN ~); 0: never trim."},
    {"dedup_window", OUTBOX_PROP_DURATION, REDIS_FIELD(dedup_window_ms), "1h", "1s..", NULL,
     "How long Redis remembers a message id, so that a republished message is not added "
     "again; longer than the relay can be down or retrying."},
    {"dedup_prefix", OUTBOX_PROP_STRING, REDIS_FIELD(dedup_prefix), "outbox:dedup", NULL, "PREFIX",
     "The start of the keys that remember message ids (no '{' or '}')."},
    {"format", OUTBOX_PROP_ENUM, REDIS_FIELD(format), "fields", "fields|cloudevents", NULL,
     "fields: one entry field per message field; cloudevents: fields id and event (a "
     "structured-mode CloudEvent)."},
    {"require_fsync", OUTBOX_PROP_BOOL, REDIS_FIELD(require_fsync), "false", NULL, NULL,
     "true: refuse to start unless the server has appendonly yes and appendfsync always."},
    {"password", OUTBOX_PROP_SECRET, REDIS_FIELD(password), NULL, NULL, "PASSWORD",
     "The password (AUTH); user:password@ in the URL is the other way."},
    {"connect_timeout", OUTBOX_PROP_DURATION, REDIS_FIELD(connect_timeout_ms), "5s", "1ms..", NULL,
     "How long connecting to the server may take."},
    {"timeout", OUTBOX_PROP_DURATION, REDIS_FIELD(timeout_ms), "10s", "1ms..", NULL,
     "How long a batch waits for a reply; then the connection is dropped and what is "
     "unconfirmed is retried."},
    {"window_messages", OUTBOX_PROP_INT, REDIS_FIELD(window_messages), "4096", "1..1000000", NULL,
     "The publish window: the relay keeps two batches written without their replies, and "
     "begins more only while their messages, plus the next batch, stay within this many."},
    OUTBOX_PROPS_END,
};

#ifdef OUTBOX_HAVE_HIREDIS

#include <hiredis/hiredis.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#define COMPONENT "transport.redis"

/* KEYS[1] the stream, KEYS[2] the message's id key, KEYS[3] (optional) the
 * id key of the previous message of its aggregate in the open batches.
 * ARGV[1] dedup window (ms), ARGV[2] maxlen (0: none), then the entry's
 * field/value pairs.  Answers {"new"|"dup", entry id} or {"held", ""}. */
static const char script[] =
    "local seen = redis.call('GET', KEYS[2])\n"
    "if seen then return {'dup', seen} end\n"
    "if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then return {'held', ''} end\n"
    "local id\n"
    "if ARGV[2] ~= '0' then\n"
    "  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))\n"
    "else\n"
    "  id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))\n"
    "end\n"
    "redis.call('SET', KEYS[2], id, 'PX', ARGV[1])\n"
    "return {'new', id}\n";

/* The most arguments one EVALSHA takes: EVALSHA sha numkeys, 3 keys, 2
 * ARGV, 8 field/value pairs (id and 7 more). */
#define MAX_ARGS 24

/* One batch between publish_begin and publish_end. */
typedef struct redis_batch {
    outbox_msg *const *msgs; /* NULL: the slot is free */
    outbox_publish_result *results;
    size_t n;
    uint64_t conn;        /* the connection it was written on */
    unsigned char *sent;  /* per message: its script was written (a reply is owed) */
    size_t *key_at;       /* per message: offset of its id key in keys ((size_t)-1: none) */
    outbox_buf keys;      /* the id keys, NUL-separated */
    outbox_aggindex aggs; /* aggregate id -> index of its last message */
    size_t cap;           /* room in the per-message arrays */
} redis_batch;

typedef struct redis_state {
    redisContext *c; /* NULL: not connected */
    uint64_t conn;   /* increases with every connection */
    char host[256];
    int port;
    int db;
    char *user;
    char *password;
    char target[300]; /* host:port for messages: no credentials */
    outbox_route *route;
    char *source;
    char *prefix;
    int format;
    char window[24];
    char maxlen[24];
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    int64_t window_messages;
    char sha[41];
    int noscript;      /* a reply said NOSCRIPT: reconnect after this batch */
    outbox_buf stream; /* scratch: a rendered stream name */
    outbox_buf event;  /* scratch: a CloudEvent */
    redis_batch batches[OUTBOX_PIPELINE_MAX_DEPTH];
    int first; /* slot of the oldest open batch */
    int count; /* open batches */
} redis_state;

static struct timeval timeval_ms(int64_t ms)
{
    struct timeval tv;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    return tv;
}

/* ------------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------- */

static void disconnect(redis_state *st)
{
    if (st->c != NULL) redisFree(st->c);
    st->c = NULL;
}

/* A command's reply, checked: NULL with err filled on an I/O error (the
 * connection is dropped) or an error reply (what names the command). */
static redisReply *command(redis_state *st, int argc, const char **argv, const char *what,
                           outbox_error *err)
{
    redisReply *r = redisCommandArgv(st->c, argc, argv, NULL);
    if (r == NULL) {
        outbox__error(err, OUTBOX_EPUBLISH, "redis destination: %s on %s failed: %s", what,
                      st->target, st->c->errstr[0] ? st->c->errstr : "connection lost");
        disconnect(st);
        return NULL;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        outbox__error(err, OUTBOX_EPUBLISH, "redis destination: %s on %s: %s", what, st->target,
                      r->str);
        freeReplyObject(r);
        return NULL;
    }
    return r;
}

/* Connects, authenticates, selects the database and loads the script. */
static int connect_server(redis_state *st, outbox_error *err)
{
    redisReply *r;
    char db[16];
    disconnect(st);
    st->c = redisConnectWithTimeout(st->host, st->port, timeval_ms(st->connect_timeout_ms));
    if (st->c == NULL)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting to redis");
    if (st->c->err) {
        outbox__error(err, OUTBOX_EPUBLISH,
                      "redis destination: cannot connect to %s: %s; check that redis-server runs "
                      "there",
                      st->target, st->c->errstr);
        disconnect(st);
        return err ? err->code : OUTBOX_EPUBLISH;
    }
    st->conn++;
    if (redisSetTimeout(st->c, timeval_ms(st->timeout_ms)) != REDIS_OK ||
        redisEnableKeepAlive(st->c) != REDIS_OK) {
        outbox__error(err, OUTBOX_EPUBLISH,
                      "redis destination: cannot set the timeout or keepalive on %s: %s",
                      st->target, st->c->errstr);
        disconnect(st);
        return OUTBOX_EPUBLISH;
    }
    if (st->password != NULL) {
        const char *auth[] = {"AUTH", st->user ? st->user : st->password, st->password};
        r = redisCommandArgv(st->c, st->user ? 3 : 2, auth, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            int io = r == NULL;
            outbox__error(err, io ? OUTBOX_EPUBLISH : OUTBOX_ECONFIG,
                          "redis destination: %s refused the credentials%s%s; check the "
                          "user:password in the URL or password=",
                          st->target, io ? "" : ": ", io ? "" : r->str);
            if (r) freeReplyObject(r);
            disconnect(st);
            return err ? err->code : OUTBOX_ECONFIG;
        }
        freeReplyObject(r);
    }
    if (st->db != 0) {
        const char *sel[] = {"SELECT", db};
        snprintf(db, sizeof db, "%d", st->db);
        r = command(st, 2, sel, "SELECT", err);
        if (r == NULL) {
            disconnect(st);
            return err ? err->code : OUTBOX_EPUBLISH;
        }
        freeReplyObject(r);
    }
    {
        const char *load[] = {"SCRIPT", "LOAD", script};
        r = command(st, 3, load, "SCRIPT LOAD", err);
        if (r == NULL) {
            disconnect(st);
            return err ? err->code : OUTBOX_EPUBLISH;
        }
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            freeReplyObject(r);
            disconnect(st);
            return outbox__error(err, OUTBOX_EPUBLISH,
                                 "redis destination: SCRIPT LOAD on %s gave no SHA1", st->target);
        }
        memcpy(st->sha, r->str, 40);
        st->sha[40] = '\0';
        freeReplyObject(r);
    }
    return OUTBOX_OK;
}

/* The value of CONFIG GET name, into out ("" when the server has none);
 * -1 when the server refuses (ACL, renamed command). */
static int config_get(redis_state *st, const char *name, char *out, size_t len, char *why,
                      size_t why_len)
{
    const char *argv[] = {"CONFIG", "GET", name};
    redisReply *r = redisCommandArgv(st->c, 3, argv, NULL);
    out[0] = '\0';
    if (r == NULL) {
        snprintf(why, why_len, "%s", st->c->errstr[0] ? st->c->errstr : "connection lost");
        return -1;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(why, why_len, "%s", r->str);
        freeReplyObject(r);
        return -1;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING)
        snprintf(out, len, "%s", r->element[1]->str);
    freeReplyObject(r);
    return 0;
}

/* Warns (once, at open) when the server's persistence cannot keep a
 * confirmed message; with require, refuses instead. */
static int check_durability(redis_state *st, int require, outbox_error *err)
{
    char aof[32], fsync[32], why[200];
    if (config_get(st, "appendonly", aof, sizeof aof, why, sizeof why) != 0 ||
        config_get(st, "appendfsync", fsync, sizeof fsync, why, sizeof why) != 0) {
        if (st->c->err) {
            return outbox__error(err, OUTBOX_EPUBLISH,
                                 "redis destination: lost %s while reading its settings: %s",
                                 st->target, why);
        }
        if (require)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "redis destination: cannot read the server's persistence "
                                 "settings on %s (CONFIG GET: %s), and require_fsync=true; "
                                 "allow CONFIG GET to this user or drop require_fsync",
                                 st->target, why);
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "cannot read the server's persistence settings on %s (CONFIG GET: %s): a "
                    "confirmed message is only as durable as they make it (appendonly yes + "
                    "appendfsync always keep it across a crash)",
                    st->target, why);
        return OUTBOX_OK;
    }
    if (strcasecmp(aof, "yes") == 0 && strcasecmp(fsync, "always") == 0) return OUTBOX_OK;
    if (require)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "redis destination: %s has appendonly %s, appendfsync %s: a "
                             "confirmed message can be lost in a crash, and require_fsync=true; "
                             "set appendonly yes and appendfsync always on the server",
                             st->target, aof[0] ? aof : "?", fsync[0] ? fsync : "?");
    outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                "%s has appendonly %s, appendfsync %s: a message it confirmed can be lost if "
                "the server crashes; set appendonly yes and appendfsync always for at-least-once "
                "across a Redis crash (require_fsync=true makes this an error)",
                st->target, aof[0] ? aof : "?", fsync[0] ? fsync : "?");
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Open and close
 * ---------------------------------------------------------------------- */

/* host, port and database from the URL's hosts and path. */
static int parse_target(redis_state *st, const outbox_url *u, outbox_error *err)
{
    const char *h = u->hosts, *colon;
    size_t hlen;
    char *end = NULL;
    long v;

    if (h == NULL || h[0] == '\0' || strchr(h, ',') != NULL)
        return outbox__error(err, OUTBOX_EBADURL,
                             "redis destination needs one server: use redis://host:6379");
    if (h[0] == '[') { /* [v6]:port */
        const char *close = strchr(h, ']');
        if (close == NULL)
            return outbox__error(err, OUTBOX_EBADURL, "redis destination: unbalanced '[' in %s", h);
        hlen = (size_t)(close - h - 1);
        h++;
        colon = close[1] == ':' ? close + 1 : NULL;
    } else {
        colon = strrchr(h, ':');
        hlen = colon ? (size_t)(colon - h) : strlen(h);
    }
    if (hlen == 0 || hlen >= sizeof st->host)
        return outbox__error(err, OUTBOX_EBADURL, "redis destination: bad host in %s", u->hosts);
    memcpy(st->host, h, hlen);
    st->host[hlen] = '\0';
    st->port = 6379;
    if (colon != NULL) {
        errno = 0;
        v = strtol(colon + 1, &end, 10);
        if (errno != 0 || end == colon + 1 || *end != '\0' || v < 1 || v > 65535)
            return outbox__error(err, OUTBOX_EBADURL,
                                 "redis destination: bad port in %s; use host:6379", u->hosts);
        st->port = (int)v;
    }
    st->db = 0;
    if (u->path != NULL && u->path[0] != '\0') {
        errno = 0;
        v = strtol(u->path, &end, 10);
        if (errno != 0 || *end != '\0' || v < 0 || v > 1000000)
            return outbox__error(err, OUTBOX_EBADURL,
                                 "redis destination: bad database \"%s\"; use redis://host:port/N "
                                 "with N a database number",
                                 u->path);
        st->db = (int)v;
    }
    snprintf(st->target, sizeof st->target, "%s:%d", st->host, st->port);
    return OUTBOX_OK;
}

static void redis_close(void *state)
{
    redis_state *st = state;
    int k;
    if (st == NULL) return;
    disconnect(st);
    outbox__route_free(st->route);
    outbox__buf_free(&st->stream);
    outbox__buf_free(&st->event);
    for (k = 0; k < OUTBOX_PIPELINE_MAX_DEPTH; k++) {
        redis_batch *b = &st->batches[k];
        outbox__aggindex_free(&b->aggs);
        outbox__buf_free(&b->keys);
        outbox__free(b->sent);
        outbox__free(b->key_at);
    }
    outbox__free(st->user);
    outbox__free(st->password);
    outbox__free(st->source);
    outbox__free(st->prefix);
    outbox__free(st);
}

static int redis_open(void **state, const char *url, const outbox_transport_config *cfg,
                      outbox_error *err)
{
    redis_state *st = NULL;
    outbox_url u;
    redis_config c;
    int rc, parsed = 0, k;

    *state = NULL;
    memset(&u, 0, sizeof u);
    memset(&c, 0, sizeof c);
    rc = outbox__url_parse(&u, url, cfg->options, err);
    if (rc != OUTBOX_OK) return rc;
    parsed = 1;
    rc = outbox__props_parse(redis_props, "redis destination", &u, &c, err);
    if (rc != OUTBOX_OK) goto out;

    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the redis destination");
        goto out;
    }
    outbox__buf_init(&st->stream);
    outbox__buf_init(&st->event);
    for (k = 0; k < OUTBOX_PIPELINE_MAX_DEPTH; k++) {
        outbox__buf_init(&st->batches[k].keys);
        outbox__aggindex_init(&st->batches[k].aggs);
    }
    rc = parse_target(st, &u, err);
    if (rc != OUTBOX_OK) goto out;
    if (strpbrk(c.dedup_prefix, "{}") != NULL) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "redis destination: dedup_prefix \"%s\" has '{' or '}'; the driver "
                           "adds the stream's hash tag itself",
                           c.dedup_prefix);
        goto out;
    }
    rc = outbox__route_new(&st->route, c.stream, OUTBOX_ROUTE_NATS_SUBJECT, err);
    if (rc != OUTBOX_OK) goto out;
    st->source = outbox__strdup(cfg->source ? cfg->source : "/outbox");
    st->prefix = outbox__strdup(c.dedup_prefix);
    if (u.user != NULL && u.user[0] != '\0') st->user = outbox__strdup(u.user);
    if (c.password != NULL || u.password != NULL)
        st->password = outbox__strdup(c.password ? c.password : u.password);
    if (st->source == NULL || st->prefix == NULL || (u.user && u.user[0] && !st->user) ||
        ((c.password || u.password) && !st->password)) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the redis destination");
        goto out;
    }
    st->format = c.format;
    snprintf(st->window, sizeof st->window, "%lld", (long long)c.dedup_window_ms);
    snprintf(st->maxlen, sizeof st->maxlen, "%lld", (long long)c.maxlen);
    st->timeout_ms = c.timeout_ms;
    st->connect_timeout_ms = c.connect_timeout_ms;
    st->window_messages = c.window_messages;

    rc = connect_server(st, err);
    if (rc != OUTBOX_OK) goto out;
    rc = check_durability(st, c.require_fsync, err);
    if (rc != OUTBOX_OK) goto out;
    if (c.dedup_window_ms < outbox_redelivery_horizon_ms(NULL))
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "dedup_window %lld ms is shorter than the relay's default redelivery horizon "
                    "(%lld ms): a message retried after that can be added to the stream twice",
                    (long long)c.dedup_window_ms, (long long)outbox_redelivery_horizon_ms(NULL));
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "connected to %s: stream %s, dedup window %lld ms, maxlen %lld, timeout %lld ms, "
                "window %lld messages",
                st->target, c.stream, (long long)c.dedup_window_ms, (long long)c.maxlen,
                (long long)c.timeout_ms, (long long)c.window_messages);
out:
    outbox__props_free(redis_props, &c);
    if (parsed) outbox__url_free(&u);
    if (rc != OUTBOX_OK) {
        redis_close(st);
        return rc;
    }
    *state = st;
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Publish
 * ---------------------------------------------------------------------- */

/* The k-th open batch, oldest first. */
static redis_batch *batch_at(redis_state *st, int k)
{
    return &st->batches[(st->first + k) % OUTBOX_PIPELINE_MAX_DEPTH];
}

/* What Redis Cluster hashes of key: the text of its first "{...}" when
 * that is not empty, else the whole key. */
static void slot_text(const char *key, const char **text, size_t *len)
{
    const char *open = strchr(key, '{');
    const char *close = open ? strchr(open + 1, '}') : NULL;
    if (open != NULL && close != NULL && close > open + 1) {
        *text = open + 1;
        *len = (size_t)(close - open - 1);
    } else {
        *text = key;
        *len = strlen(key);
    }
}

/* Appends message m's id key for stream to b: "<prefix>:{<slot text>}:<id>"
 * (a slot text with '}', possible only without a hash tag, cannot be a
 * tag: then "<prefix>:<stream>:<id>", fine outside a cluster). */
static void append_key(outbox_buf *b, const char *prefix, const char *stream, const char *id)
{
    const char *text;
    size_t len;
    slot_text(stream, &text, &len);
    outbox__buf_puts(b, prefix);
    if (memchr(text, '}', len) == NULL) {
        outbox__buf_append(b, ":{", 2);
        outbox__buf_append(b, text, len);
        outbox__buf_append(b, "}:", 2);
    } else {
        outbox__buf_append(b, ":", 1);
        outbox__buf_puts(b, stream);
        outbox__buf_append(b, ":", 1);
    }
    outbox__buf_puts(b, id);
    outbox__buf_append(b, "", 1); /* the separator */
}

/* Sizes batch b for n messages; -1 when out of memory. */
static int batch_reserve(redis_batch *b, size_t n)
{
    outbox__aggindex_reset(&b->aggs);
    outbox__buf_reset(&b->keys);
    b->keys.oom = 0;
    if (outbox__aggindex_reserve(&b->aggs, n) != OUTBOX_OK) return -1;
    if (n > b->cap) {
        unsigned char *s = outbox__realloc(b->sent, n);
        if (s == NULL) return -1;
        b->sent = s;
        size_t *k = outbox__realloc(b->key_at, n * sizeof *k);
        if (k == NULL) return -1;
        b->key_at = k;
        b->cap = n;
    }
    memset(b->sent, 0, n);
    return 0;
}

/* Queues message i of b (its stream in st->stream, its id key at
 * b->key_at[i]; prev_key the previous message's of its aggregate, or
 * NULL) into the connection's output buffer. */
static int append_script(redis_state *st, redis_batch *b, size_t i, const char *prev_key)
{
    const outbox_msg *m = b->msgs[i];
    const char *argv[MAX_ARGS];
    char time_text[32];
    int argc = 0;
    argv[argc++] = "EVALSHA";
    argv[argc++] = st->sha;
    argv[argc++] = prev_key ? "3" : "2";
    argv[argc++] = st->stream.data;
    argv[argc++] = b->keys.data + b->key_at[i];
    if (prev_key) argv[argc++] = prev_key;
    argv[argc++] = st->window;
    argv[argc++] = st->maxlen;
    argv[argc++] = "id";
    argv[argc++] = m->id;
    if (st->format == FORMAT_CLOUDEVENTS) {
        outbox__buf_reset(&st->event);
        outbox__cloudevent_json(&st->event, m, st->source);
        if (st->event.oom) return -1;
        argv[argc++] = "event";
        argv[argc++] = st->event.data;
    } else {
        outbox_time_format(m->occurred_at, time_text);
        argv[argc++] = "type";
        argv[argc++] = m->type;
        argv[argc++] = "source";
        argv[argc++] = st->source;
        argv[argc++] = "aggregate_type";
        argv[argc++] = m->aggregate_type;
        argv[argc++] = "aggregate_id";
        argv[argc++] = m->aggregate_id;
        argv[argc++] = "occurred_at";
        argv[argc++] = time_text;
        argv[argc++] = "headers";
        argv[argc++] = m->headers_json;
        argv[argc++] = "payload";
        argv[argc++] = m->payload;
    }
    return redisAppendCommandArgv(st->c, argc, argv, NULL) == REDIS_OK ? 0 : -1;
}

/* The window (publish_room in internal.h): two batches, and more while the
 * messages of the open batches (written, replies not read), with the next
 * batch, stay within window_messages; none while the connection is gone
 * (the open batches' replies are lost: they end first). */
static int redis_publish_room(void *state, int open, size_t next)
{
    redis_state *st = state;
    size_t out = 0;
    int k;
    if (open != st->count || st->count >= OUTBOX_PIPELINE_MAX_DEPTH) return 0;
    if (st->count < OUTBOX_PIPELINE_DEPTH) return 1;
    if (st->c == NULL) return 0;
    for (k = 0; k < st->count; k++)
        out += batch_at(st, k)->n;
    return (int64_t)(out + next) <= st->window_messages;
}

/* Where the previous message of aggregate agg is in the open batches
 * before b (the newest one that has one): its batch, and its index in
 * *index; NULL when none has it. */
static const redis_batch *find_older(redis_state *st, const char *agg, uint32_t *index)
{
    int k;
    for (k = st->count - 1; k >= 0; k--) {
        const redis_batch *older = batch_at(st, k);
        if (outbox__aggindex_lookup(&older->aggs, agg, index)) return older;
    }
    return NULL;
}

/* Begins a batch (publish_begin in internal.h): writes every message's
 * script and returns without reading a reply.  A message with an earlier
 * message of its aggregate in the open batches names that one's id key, so
 * the script adds it only after that one (see "Order" at the top). */
static int redis_publish_begin(void *state, outbox_msg *const *msgs, size_t n,
                               outbox_publish_result *results)
{
    redis_state *st = state;
    redis_batch *b;
    const redis_batch *older;
    outbox_error cerr;
    size_t i;
    int done = 0;

    if (st->count >= OUTBOX_PIPELINE_MAX_DEPTH) return OUTBOX_EINVAL;
    if (st->c == NULL) {
        memset(&cerr, 0, sizeof cerr);
        if (connect_server(st, &cerr) != OUTBOX_OK) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT, "%s", cerr.message);
            if (n > 0) outbox__result_set(&results[0], OUTBOX_EPUBLISH, "%s", cerr.message);
            return OUTBOX_EPUBLISH;
        }
        outbox__log(OUTBOX_LOG_INFO, COMPONENT, "reconnected to %s", st->target);
    }
    b = batch_at(st, st->count);
    if (batch_reserve(b, n) != 0) return OUTBOX_ENOMEM;
    b->msgs = msgs;
    b->results = results;
    b->n = n;
    b->conn = st->conn;
    if (n > 0)
        outbox__result_set(&results[0], OUTBOX_EPUBLISH,
                           "no reply from redis at %s (connection lost or timeout)", st->target);
    for (i = 1; i < n; i++)
        results[i] = results[0]; /* formatted once */

    for (i = 0; i < n; i++) {
        const outbox_msg *m = msgs[i];
        const char *prev_key = NULL;
        const outbox_buf *prev_keys = NULL; /* where the previous message's key is */
        size_t prev_at = 0;
        outbox_error rerr;
        uint32_t prev;
        b->key_at[i] = (size_t)-1; /* until its script is queued */
        /* The previous message of its aggregate: in this batch, or else in
         * the newest open one before that has one.  This one becomes its
         * aggregate's last. */
        if (outbox__aggindex_insert(&b->aggs, m->aggregate_id, (uint32_t)i, &prev)) {
            prev_keys = &b->keys;
            prev_at = b->key_at[prev];
        } else if ((older = find_older(st, m->aggregate_id, &prev)) != NULL) {
            prev_keys = &older->keys;
            prev_at = older->key_at[prev];
        }
        if (prev_keys != NULL && prev_at == (size_t)-1) {
            outbox__result_set(&results[i], OUTBOX_EPUBLISH,
                               "not sent: an earlier message of its aggregate was not sent");
            continue;
        }
        if (OUTBOX_FAULT("redis_reject") != 0) {
            outbox__result_set(&results[i], OUTBOX_EREJECTED,
                               "injected fault redis_reject: refused");
            continue;
        }
        memset(&rerr, 0, sizeof rerr);
        if (outbox__route_render(st->route, m, &st->stream, &rerr) != OUTBOX_OK) {
            outbox__result_set(&results[i],
                               rerr.code == OUTBOX_ENOMEM ? OUTBOX_ENOMEM : OUTBOX_EREJECTED, "%s",
                               rerr.message);
            continue;
        }
        size_t at = b->keys.len;
        append_key(&b->keys, st->prefix, st->stream.data, m->id);
        if (b->keys.oom) {
            outbox__result_set(&results[i], OUTBOX_ENOMEM,
                               "out of memory queueing the message for redis");
            continue;
        }
        if (prev_keys != NULL) prev_key = prev_keys->data + prev_at; /* after the buffer grew */
        b->key_at[i] = at;                                           /* append_script reads it */
        if (append_script(st, b, i, prev_key) != 0) {
            outbox__result_set(&results[i], OUTBOX_ENOMEM,
                               "out of memory queueing the message for redis");
            b->key_at[i] = (size_t)-1;
            continue;
        }
        b->sent[i] = 1;
    }
    st->count++;

    /* Everything goes out now; the replies are read by publish_end. */
    while (!done) {
        if (redisBufferWrite(st->c, &done) != REDIS_OK) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "writing to %s failed: %s; the batch will be retried", st->target,
                        st->c->errstr);
            disconnect(st); /* the batch's replies are then lost: publish_end says so */
            break;
        }
    }
    return OUTBOX_OK;
}

/* Classifies reply r of message i of batch b. */
static void apply_reply(redis_state *st, redis_batch *b, size_t i, redisReply *r)
{
    outbox_publish_result *res = &b->results[i];
    if (r->type == REDIS_REPLY_ERROR) {
        if (strncmp(r->str, "NOSCRIPT", 8) == 0) {
            /* The script cache was flushed: load it again on a new
             * connection before the next batch. */
            outbox__result_set(res, OUTBOX_EPUBLISH,
                               "redis at %s lost the outbox script (NOSCRIPT)", st->target);
            st->noscript = 1;
        } else if (strncmp(r->str, "WRONGTYPE", 9) == 0) {
            outbox__result_set(res, OUTBOX_EREJECTED,
                               "redis refused message %s: its stream key holds another type (%s); "
                               "change stream= or remove that key",
                               b->msgs[i]->id, r->str);
        } else {
            outbox__result_set(res, OUTBOX_EPUBLISH, "redis error: %s", r->str);
        }
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING) {
        outbox__result_set(res, OUTBOX_EPUBLISH, "redis at %s gave an unexpected reply (type %d)",
                           st->target, r->type);
        return;
    }
    if (strcmp(r->element[0]->str, "held") == 0) {
        outbox__result_set(res, OUTBOX_EPUBLISH,
                           "not added: an earlier message of its aggregate is not in the stream");
        return;
    }
    /* Tests: a confirmation that never arrived (the retry is a duplicate
     * the script drops). */
    if (OUTBOX_FAULT("redis_reply_lost") != 0) {
        outbox__result_set(res, OUTBOX_EPUBLISH,
                           "injected fault redis_reply_lost: the reply was dropped");
        return;
    }
    outbox__result_set(res, OUTBOX_OK, NULL);
}

/* Ends the oldest open batch (publish_end in internal.h): reads its
 * replies in order.  When the connection it was written on is gone, or
 * breaks or times out now, what has no reply stays retriable. */
static int redis_publish_end(void *state, outbox_msg *const *msgs, size_t n,
                             outbox_publish_result *results)
{
    redis_state *st = state;
    redis_batch *b;
    size_t i, replies = 0;

    if (st->count == 0) return OUTBOX_EINVAL;
    b = batch_at(st, 0);
    if (b->msgs != msgs || b->n != n || b->results != results) return OUTBOX_EINVAL;

    for (i = 0; i < n; i++) {
        void *reply = NULL;
        if (!b->sent[i]) continue;
        if (st->c == NULL || b->conn != st->conn) break; /* its replies are lost */
        if (redisGetReply(st->c, &reply) != REDIS_OK || reply == NULL) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "no reply from %s: %s; %zu of %zu messages unconfirmed, they will be "
                        "retried",
                        st->target, st->c->errstr[0] ? st->c->errstr : "connection lost",
                        n - replies, n);
            disconnect(st);
            break;
        }
        apply_reply(st, b, i, reply);
        freeReplyObject(reply);
        replies++;
    }
    if (st->noscript) {
        /* The script cache was flushed: a new connection loads it again (a
         * batch still open on this one loses its replies and is retried). */
        st->noscript = 0;
        disconnect(st);
    }
    b->msgs = NULL;
    b->results = NULL;
    b->n = 0;
    st->first = (st->first + 1) % OUTBOX_PIPELINE_MAX_DEPTH;
    st->count--;
    return OUTBOX_OK;
}

/* One batch, begun and ended (the relay's synchronous path). */
static int redis_publish(void *state, outbox_msg *const *msgs, size_t n,
                         outbox_publish_result *results)
{
    return outbox__publish_whole(&outbox__transport_redis, state, msgs, n, results);
}

#define REDIS_ENTRY(f) f

#else

#define REDIS_ENTRY(f) NULL /* not built: only the description below */

#endif /* OUTBOX_HAVE_HIREDIS */

/* The Redis Streams destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_redis = {
    .version = 5,
    .scheme = "redis",
    .open = REDIS_ENTRY(redis_open),
    .publish = REDIS_ENTRY(redis_publish),
    .close = REDIS_ENTRY(redis_close),
    .reopen = NULL,
    .publish_begin = REDIS_ENTRY(redis_publish_begin),
    .publish_end = REDIS_ENTRY(redis_publish_end),
    .interrupt = NULL,
    .publish_room = REDIS_ENTRY(redis_publish_room),
    .usage = "redis://HOST:6379",
    .doc =
        "Redis Streams: the reply of the script that adds the entry (XADD) confirms a message, "
        "as durably as the server's appendonly/appendfsync; the message id is remembered for "
        "dedup_window so a republication is not added twice.  redis://user:password@HOST:6379/DB "
        "to authenticate and pick a database.",
    .props = redis_props,
};

/* rediss:// (TLS): hiredis 0.14 has no TLS (hiredis_ssl came with 1.0), so
 * this table only describes it; the registry answers "this build has no
 * ...". */
const outbox_transport_ops outbox__transport_rediss = {
    .version = 4,
    .scheme = "rediss",
    .usage = "rediss://HOST:6380",
    .doc = "Redis Streams over TLS: not in builds with hiredis 0.14, which has no TLS; use "
           "redis:// through a TLS tunnel (stunnel, spiped) meanwhile.",
    .props = redis_props,
};
