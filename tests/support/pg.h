/*
 * pg.h - a real PostgreSQL server for the tests (tests/support): initdb
 * into a fresh temporary directory, the postmaster started on a free port
 * on 127.0.0.1 (and a unix socket in that directory), stopped at exit (also
 * when a test fails or a fatal signal arrives: proc.h) and the directory
 * removed.
 *
 * PostgreSQL refuses to run as root, and CI runs the tests as root: the
 * cluster is then created and run as `nobody`.  Tests exit 77 (skipped)
 * when no initdb/postgres binary is found (PG_BIN, then
 * /usr/lib/postgresql/<ver>/bin, then PATH) or when no unprivileged user
 * exists; pgh_available() says so beforehand, for suites that run other
 * cases without PostgreSQL.
 *
 * It runs with wal_level=logical, max_replication_slots=10 and
 * max_wal_senders=10 (WAL capture reads the replication stream).
 *
 * fsync stays on: the crash tests stop the server with
 * `pg_ctl stop -m immediate`, which is a crash from the database's view.
 */
#ifndef OUTBOX_TEST_SUPPORT_PG_H
#define OUTBOX_TEST_SUPPORT_PG_H

#include <libpq-fe.h>
#include <outbox.h>

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct pgh_server {
    char bin[256]; /* directory of initdb, postgres, pg_ctl */
    char dir[256]; /* temp dir: data/, socket, log */
    char data[300];
    char log[300];
    int port;
    uid_t uid; /* who runs the server (getuid() when not root) */
    gid_t gid;
    pid_t pid;          /* postmaster, 0 when stopped */
    char conninfo[512]; /* keyword string for libpq */
    char url[512];      /* postgres://postgres@127.0.0.1:PORT/postgres */
} pgh_server;

/* NULL when a server can be started here, else why not (for a skip). */
const char *pgh_available(void);

/* Creates a cluster in a fresh temporary directory and starts it.  Skips
 * the test (77) when PostgreSQL is not installed.  One server per
 * program. */
void pgh_start(pgh_server *s);

/* A server setting ("wal_level=replica") that the next start
 * (pgh_start, pgh_start_server) gives after the usual ones, overriding
 * them; NULL: none again. */
void pgh_set_setting(const char *setting);

/* Starts the postmaster on s->data (already initialised). */
void pgh_start_server(pgh_server *s);

/* `pg_ctl stop -m immediate` (a crash as far as the database can tell),
 * then reaps the postmaster. */
void pgh_stop_immediate(pgh_server *s);

/* In a forked child: this process's exit no longer stops the server. */
void pgh_forget(void);

/* The server's URL through its Unix socket instead of TCP (a client on the
 * database host); libpq takes it as a connection string too. */
void pgh_unix_url(const pgh_server *s, char *out, size_t len);

/* Connects to the test server; fails the test when it cannot. */
PGconn *pgh_connect(const pgh_server *s);

/* Runs sql; fails the test on an error. */
void pgh_exec(PGconn *c, const char *sql);

/* One-number query; fails the test on an error. */
int64_t pgh_count(PGconn *c, const char *sql);

/* Rows of the outbox table in schema "outbox" with this status, on a new
 * connection to s. */
int64_t pgh_outbox_count(const pgh_server *s, const char *status);

/* `outbox init --store <s's URL> --capture wal`: the schema, the
 * replication slot and the publication a capture=wal relay reads (made
 * before anything is emitted, so that the slot has every message); fails
 * the test when it does not exit 0. */
void pgh_init_wal(const pgh_server *s);

/* WAL capture (docs/WAL.md): writes m with pg_logical_emit_message(true,
 * 'outbox:<schema>', <encoding v1>) on c, in c's open transaction, as
 * <schema>.emit does.  0, or -1 with the server's error in why. */
int pgh_emit(PGconn *c, const char *schema, const outbox_msg *m, char *why, size_t why_len);

/* The encoding v1 content of m into out (malloc'd, the caller frees). */
char *pgh_emit_content(const outbox_msg *m);

#endif /* OUTBOX_TEST_SUPPORT_PG_H */
