/*
 * nats.h - a real nats-server for the tests (tests/support; test_nats,
 * test_crash_nats, test_pipeline, the destination contract suite,
 * bench_nats):
 *
 * - nats-server -js (file storage in a temp dir) on 127.0.0.1 and a free
 *   port, started as a child of proc.h (so it is SIGKILLed at exit even
 *   when a test fails), killed and restarted on the same port and store
 *   dir.  Absent binary: exit 77.
 * - Stream set-up through nats.c (js_AddStream with a duplicate window).
 * - Reading a stream back in stream order with an ordered consumer, and
 *   writing what it holds as CloudEvents-like JSON lines ({"id", "subject",
 *   "data"}) so that ch_check_file counts lost, duplicates (messages in the
 *   stream beyond the first of an id) and per-aggregate order violations.
 * - An extra configuration file (conf: nats-server -c, the command-line
 *   options above still win) and a user credentials file (creds) for the
 *   helpers' own connections, for servers in operator (JWT) mode.
 */
#ifndef OUTBOX_TEST_SUPPORT_NATS_H
#define OUTBOX_TEST_SUPPORT_NATS_H

#include "support/tmp.h"

#include <nats/nats.h>

#include <stdint.h>
#include <sys/types.h>

#define NH_SERVER_BIN "/usr/sbin/nats-server"

typedef struct nh_server {
    pid_t pid;
    int port;
    char dir[CH_PATH]; /* JetStream store dir */
    char log[CH_PATH];
    char user[64], pass[64]; /* "" for no auth */
    char token[64];          /* "" for no token auth */
    char tls_cert[CH_PATH];  /* with tls_key: TLS required ("" for plain) */
    char tls_key[CH_PATH];
    char tls_ca[CH_PATH]; /* the CA the helpers' own client trusts */
    char url[128];        /* nats://127.0.0.1:PORT (no credentials) */
    char conf[CH_PATH];   /* "" or a config file given with -c */
    char creds[CH_PATH];  /* "" or the .creds file the helpers connect with */
} nh_server;

/* Skips the test (77) when there is no nats-server. */
void nh_require_server(void);

/* Starts (or restarts) s on s->port (0: pick one) with s->dir as store
 * (empty: a new one in the test's directory). */
void nh_server_start(nh_server *s);

/* Starts a new server (fresh store dir, free port) that requires TLS with
 * the PEM certificate and key; the helpers' own client trusts ca. */
void nh_server_start_tls(nh_server *s, const char *cert, const char *key, const char *ca);

/* SIGKILLs the server (as a crash would). */
void nh_server_kill(nh_server *s);

/* Stops the server with SIGTERM (SIGKILL after 10 s). */
void nh_server_stop(nh_server *s);

/* nats.c 3.4 leaves the "sig" field out of CONNECT when the ed25519
 * signature of the server's nonce starts with a zero byte (1 connection in
 * 256 with creds or an nkey; the server logs "Signature missing" and
 * answers Authorization Violation).  The nonce differs on each attempt, so
 * the helpers' own connections with creds try a few times. */
#define NH_CREDS_ATTEMPTS 4

/* A connection to s (with its credentials), failing the test otherwise;
 * *js (when js is not NULL) gets a JetStream context.  JetStream may need a
 * moment after a start: callers retry requests. */
natsConnection *nh_connect(const nh_server *s, jsCtx **js);

/* Creates stream `name` on subjects (file storage, duplicate window
 * 10 minutes: longer than any test). */
void nh_stream_create(const nh_server *s, const char *name, const char *subjects);

/* Messages in the stream, or -1 when it does not exist. */
int64_t nh_stream_count(const nh_server *s, const char *name);

/* Called for each stream message in order; msg is borrowed. */
typedef void (*nh_msg_fn)(void *user, natsMsg *msg);

/* Reads every message of stream `name` (subjects `filter`) in stream order
 * with an ordered consumer; returns how many. */
int64_t nh_stream_read(const nh_server *s, const char *name, const char *filter, nh_msg_fn fn,
                       void *user);

/* The value of header key of m, or NULL. */
const char *nh_header(natsMsg *m, const char *key);

/* Dumps stream `name` into path as lines for ch_check_file; returns count. */
int64_t nh_stream_dump(const nh_server *s, const char *name, const char *filter, const char *path);

/* ------------------------------------------------------------------------
 * A JetStream cluster of three nats-server processes on loopback
 * ---------------------------------------------------------------------- */

#define NH_CLUSTER_SIZE 3

typedef struct nh_cluster {
    nh_server node[NH_CLUSTER_SIZE]; /* server_name "n0".."n2" */
    int route_port[NH_CLUSTER_SIZE];
    nh_server client; /* url lists every node: the helpers' connections use it */
    char url[400];    /* nats://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2 (the relay's form) */
} nh_cluster;

/* Starts the three servers (ports, route ports, store dirs and config
 * files in the test's directory) and waits until JetStream has a meta
 * leader.  Skips (77) without nats-server. */
void nh_cluster_start(nh_cluster *c);

/* Creates stream `name` on subjects with `replicas` replicas (file
 * storage, duplicate window 10 minutes), retrying while the cluster
 * settles. */
void nh_stream_create_replicated(const nh_server *s, const char *name, const char *subjects,
                                 int replicas);

/* Index of the node that leads stream `name` (-1 when none answers within
 * timeout_ms). */
int nh_cluster_stream_leader(nh_cluster *c, const char *name, int64_t timeout_ms);

/* Waits (timeout_ms at most) until stream `name` has a leader and every
 * other replica is online and current (the leader's view: caught up; a few
 * entries of lag are normal while messages flow): a node restarted a moment
 * ago is still catching up.  Returns 1 when so, 0 on timeout. */
int nh_cluster_stream_current(nh_cluster *c, const char *name, int64_t timeout_ms);

/* Prints stream `name`'s state as its leader reports it (messages, first
 * and last sequence, each replica's current/offline/lag) to stderr, for a
 * failing test's diagnostics. */
void nh_stream_describe(nh_cluster *c, const char *name);

/* Stops every node (SIGTERM). */
void nh_cluster_stop(nh_cluster *c);

#endif /* OUTBOX_TEST_SUPPORT_NATS_H */
