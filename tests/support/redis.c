/*
 * redis.c - a real redis-server for the tests (see redis.h).
 */
#include "support/chaos.h"

#ifdef OUTBOX_HAVE_HIREDIS

#include "support/redis.h"

#include <signal.h>
#include <sys/stat.h>

const char *rh_available(void)
{
    return access(RH_SERVER_BIN, X_OK) == 0 ? NULL : RH_SERVER_BIN " not found";
}

void rh_require_server(void)
{
    if (rh_available() != NULL)
        SKIP("%s not found: install the redis-server package to run the Redis tests",
             RH_SERVER_BIN);
}

/* PONG from the server within a second. */
static int answers(const rh_server *s)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    redisReply *r;
    int ok = 0;
    if (c == NULL) return 0;
    if (!c->err) {
        redisSetTimeout(c, tv);
        r = redisCommand(c, "PING");
        ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
        if (r) freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

void rh_server_start(rh_server *s)
{
    char port[16];
    rh_require_server();
    if (s->port == 0) s->port = ch_free_port();
    if (!s->dir[0]) {
        char name[64];
        snprintf(name, sizeof name, "redis-%d", s->port);
        ch_path(s->dir, name);
        mkdir(s->dir, 0755);
        snprintf(name, sizeof name, "redis-%d.log", s->port);
        ch_path(s->log, name);
    }
    snprintf(s->url, sizeof s->url, "redis://127.0.0.1:%d", s->port);
    snprintf(port, sizeof port, "%d", s->port);
    const char *argv[] = {RH_SERVER_BIN,
                          "--port",
                          port,
                          "--bind",
                          "127.0.0.1",
                          "--dir",
                          s->dir,
                          "--appendonly",
                          s->no_aof ? "no" : "yes",
                          "--appendfsync",
                          s->no_aof ? "everysec" : "always",
                          "--save",
                          "",
                          "--daemonize",
                          "no",
                          "--protected-mode",
                          "no",
                          NULL};
    s->pid = ch_spawn(argv, NULL, s->log, s->log);
    int64_t deadline = ch_now_ms() + 30000;
    while (!answers(s)) {
        if (!ch_alive(s->pid)) {
            ch_dump("redis-server log", s->log);
            TEST_FAIL_("redis-server exited at start (port %d)", s->port);
        }
        if (ch_now_ms() > deadline) {
            ch_dump("redis-server log", s->log);
            TEST_FAIL_("redis-server did not answer on port %d within 30 s", s->port);
        }
        ch_sleep_ms(10);
    }
}

void rh_server_kill(rh_server *s)
{
    if (s->pid > 0) ch_kill9(s->pid);
    s->pid = 0;
}

void rh_server_stop(rh_server *s)
{
    if (s->pid > 0) ch_stop(s->pid, SIGTERM, 10000);
    s->pid = 0;
}

redisContext *rh_connect(const rh_server *s)
{
    struct timeval tv = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (c == NULL || c->err)
        TEST_FAIL_("connect to redis on port %d: %s", s->port, c ? c->errstr : "out of memory");
    redisSetTimeout(c, tv);
    return c;
}

int64_t rh_stream_len(const rh_server *s, const char *key)
{
    redisContext *c = rh_connect(s);
    redisReply *r = redisCommand(c, "XLEN %s", key);
    int64_t n;
    if (r == NULL || r->type != REDIS_REPLY_INTEGER)
        TEST_FAIL_("XLEN %s: %s", key, r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
    n = r->integer;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

/* The value of field name in an entry's field/value array, or NULL. */
static const char *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (strcmp(fields->element[i]->str, name) == 0) return fields->element[i + 1]->str;
    return NULL;
}

/* One entry as {"id", "subject", "data"}. */
static void write_line(FILE *f, const redisReply *fields)
{
    const char *event = field(fields, "event");
    json_error_t je;
    json_t *o;
    if (event != NULL) {
        o = json_loads(event, 0, &je); /* a CloudEvent already */
    } else {
        const char *id = field(fields, "id"), *agg = field(fields, "aggregate_id");
        const char *payload = field(fields, "payload");
        json_t *data = payload ? json_loads(payload, 0, &je) : NULL;
        o = json_object();
        json_object_set_new(o, "id", json_string(id ? id : ""));
        json_object_set_new(o, "subject", json_string(agg ? agg : ""));
        json_object_set_new(o, "data", data ? data : json_null());
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    fprintf(f, "%s\n", text ? text : "");
    free(text);
    json_decref(o);
}

int64_t rh_stream_dump(const rh_server *s, const char *key, const char *path)
{
    redisContext *c = rh_connect(s);
    FILE *f = fopen(path, "w");
    char start[64] = "-";
    int64_t count = 0;
    if (!f) TEST_FAIL_("cannot write %s", path);
    for (;;) {
        redisReply *r = redisCommand(c, "XRANGE %s %s + COUNT 1000", key, start);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY)
            TEST_FAIL_("XRANGE %s: %s", key,
                       r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        if (r->elements == 0) {
            freeReplyObject(r);
            break;
        }
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *e = r->element[i];
            write_line(f, e->element[1]);
            count++;
            if (i + 1 == r->elements) snprintf(start, sizeof start, "(%s", e->element[0]->str);
        }
        freeReplyObject(r);
    }
    fclose(f);
    redisFree(c);
    return count;
}

#endif /* OUTBOX_HAVE_HIREDIS */
