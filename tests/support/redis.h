/*
 * redis.h - a real redis-server for the tests (tests/support; the
 * destination contract suite, test_crash_redis, bench_redis):
 *
 * - redis-server on 127.0.0.1 and a free port, its data (the AOF) in a
 *   directory of the test's, with `appendonly yes` + `appendfsync always`
 *   unless the test asks for a server without AOF; started as a child of
 *   proc.h (SIGKILLed at exit even when a test fails), killed with SIGKILL
 *   (a crash) and restarted on the same port and directory.  Absent
 *   binary: exit 77.
 * - Reading a stream back in stream order (XRANGE in pages) and writing
 *   its entries as CloudEvents-like JSON lines ({"id", "subject", "data"})
 *   so that ch_check_file counts lost, duplicates (entries beyond the first
 *   of an id) and per-aggregate order violations.
 */
#ifndef OUTBOX_TEST_SUPPORT_REDIS_H
#define OUTBOX_TEST_SUPPORT_REDIS_H

#include "support/tmp.h"

#include <hiredis/hiredis.h>

#include <stdint.h>
#include <sys/types.h>

#define RH_SERVER_BIN "/usr/bin/redis-server"

typedef struct rh_server {
    pid_t pid;
    int port;
    int no_aof;        /* 1: appendonly no (the durability warning's test) */
    char dir[CH_PATH]; /* the AOF's directory */
    char log[CH_PATH];
    char url[128]; /* redis://127.0.0.1:PORT */
} rh_server;

/* NULL when a server can be started here, else why not (for a skip). */
const char *rh_available(void);

/* Skips the test (77) when there is no redis-server. */
void rh_require_server(void);

/* Starts (or restarts) s on s->port (0: pick one) with s->dir (empty: a new
 * one in the test's directory); returns once it answers PING (its AOF
 * loaded). */
void rh_server_start(rh_server *s);

/* SIGKILLs the server (as a crash would). */
void rh_server_kill(rh_server *s);

/* Stops the server with SIGTERM (SIGKILL after 10 s). */
void rh_server_stop(rh_server *s);

/* A connection to s, failing the test otherwise. */
redisContext *rh_connect(const rh_server *s);

/* Entries in stream key, 0 when it does not exist. */
int64_t rh_stream_len(const rh_server *s, const char *key);

/* Dumps stream key into path as lines for ch_check_file (fields id,
 * aggregate_id and payload, or id and event with format=cloudevents);
 * returns how many entries. */
int64_t rh_stream_dump(const rh_server *s, const char *key, const char *path);

#endif /* OUTBOX_TEST_SUPPORT_REDIS_H */
