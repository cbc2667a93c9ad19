/*
 * chaos.h - what the tests that break things on purpose share
 * (tests/support; test_crash*, test_lease, test_inbox_e2e, test_outage,
 * the destination tests and the contract suites):
 *
 * - A producer that enqueues messages through the library (into a SQLite
 *   file, or a PostgreSQL outbox) in transactions of 1-50 messages over
 *   many aggregates, each payload carrying the per-aggregate enqueue
 *   counter: {"agg":"a17","n":42}.  It remembers every committed id by
 *   (aggregate, n).
 * - A checker that reads a relay's file destination (CloudEvents JSON, one
 *   object per line) and counts lost ids, per-aggregate first-publication
 *   order violations, duplicates and torn (unparseable) lines.
 * - Store queries straight on the SQLite file (counts per status), and
 *   relays from a SQLite outbox.
 *
 * The processes, paths and ports it uses come with it (proc.h, tmp.h,
 * net.h).
 */
#ifndef OUTBOX_TEST_SUPPORT_CHAOS_H
#define OUTBOX_TEST_SUPPORT_CHAOS_H

#include "test.h"

#include "support/net.h"
#include "support/proc.h"
#include "support/tmp.h"

#include <outbox.h>

#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------
 * Randomness
 * ---------------------------------------------------------------------- */

/* xorshift64*: small, seedable, good enough to pick delays and aggregates. */
uint64_t ch_rand(uint64_t *state);
/* Uniform in [lo, hi]. */
int64_t ch_rand_range(uint64_t *state, int64_t lo, int64_t hi);
/* Seed from OUTBOX_TEST_SEED when set (to replay a run), else from the clock. */
uint64_t ch_seed(void);

/* ------------------------------------------------------------------------
 * Relay processes and stores
 * ---------------------------------------------------------------------- */

/* Stops n running relay processes with SIGTERM; each must exit 0 within
 * 20 s (errs[i]: its stderr file, shown when it does not).  Waits a second
 * first, so that a relay restarted just before has installed its signal
 * handlers. */
void ch_relays_stop(const pid_t *pids, int n, char (*errs)[CH_PATH]);

/* One relay life of a kill sweep: spawns argv (stderr to err_path), lets
 * it run 50-800 ms (drawn from *rng), then SIGKILLs it.  Fails the test
 * when the relay exited on its own.  Returns 1 when the kill found it
 * alive. */
int ch_relay_kill_life(const char *const *argv, const char *err_path, uint64_t *rng);

/* `outbox init --store sqlite:DB`, which must exit 0. */
void ch_init_store(const char *db_path);

/* A fresh SQLite outbox at ch_path(name), its path written to path. */
void ch_new_store(char *path, const char *name);

/* outbox_relay_new from the SQLite outbox at db_path to `to`, with short
 * backoff and many attempts (tests drive failures on purpose); returns the
 * code, the relay in *out (or NULL). */
int ch_relay_new(outbox_relay **out, const char *db_path, const char *to, int once,
                 outbox_error *err);

/* Options for a relay under a failure sweep (test_alloc_sweep,
 * test_io_sweep): --once, sent rows kept (to check them), backoff 1-5 ms,
 * 1000 attempts, a 2 s lease, batches of 4. */
void ch_sweep_relay_options(outbox_relay_options *o);

/* Runs a --once relay from db_path to `to` to the end. */
void ch_drain_once(const char *db_path, const char *to);

/* Waits until the outbox at db_path has no pending message; fails the test
 * after timeout_ms or when pid (if > 0) exits meanwhile. */
void ch_wait_drained(const char *db_path, pid_t pid, int64_t timeout_ms, const char *err_path);

/* ------------------------------------------------------------------------
 * Store queries (straight on the SQLite file)
 * ---------------------------------------------------------------------- */

/* Opens path with a 30 s busy timeout; fails the test when it cannot. */
sqlite3 *ch_db_open(const char *path);
/* Result of a one-number query; fails the test on an SQL error. */
int64_t ch_db_count(sqlite3 *db, const char *sql);
void ch_db_exec(sqlite3 *db, const char *sql);
/* Messages in the outbox table with the given status ("pending", "sent",
 * "failed"), or all rows when status is NULL. */
int64_t ch_outbox_count(const char *db_path, const char *status);
/* Calls has(user, id) for every message marked sent in the outbox on db
 * (has NULL: none) and fails the test, naming `where`, when one answers 0;
 * returns how many are sent. */
int64_t ch_check_sent(sqlite3 *db, int (*has)(void *user, const char *id), void *user,
                      const char *where);
/* Checks that the (first) Failed message's last_error contains `expect`,
 * and prints it; fails the test when there is no Failed message. */
void ch_expect_failed_error(const char *db_path, const char *expect);

/* ------------------------------------------------------------------------
 * Producer
 * ---------------------------------------------------------------------- */

typedef struct ch_agg {
    int count; /* committed messages of this aggregate: n runs 0..count-1 */
    int cap;
    char (*ids)[37];
} ch_agg;

typedef struct ch_producer {
    /* Settings. */
    const char *db_path;
    int total;      /* messages to commit */
    int aggregates; /* aggregate ids a0 .. a<aggregates-1> */
    int max_txn;    /* 1..max_txn messages per transaction */
    int pause_us;   /* sleep between transactions (0: none) */
    uint64_t seed;
    const char *pg_conninfo; /* set: enqueue into this PostgreSQL outbox
                                (outbox_enqueue_pg) instead of db_path */
    int pg_async_commit;     /* with pg_conninfo: synchronous_commit=off,
                                only for runs where the database itself is
                                not crashed */
    int pg_emit;             /* with pg_conninfo: write the messages to the
                                WAL (pgh_emit, schema "outbox") instead of
                                the table, for capture=wal */

    /* Results (read after ch_producer_join). */
    ch_agg *aggs;
    int committed;
    int transactions;
    int rollbacks;
    char error[600]; /* "" unless the producer failed */

    atomic_int done; /* set when the thread ends */
    pthread_t thread;
} ch_producer;

/* Starts the producer thread; p's settings must be filled (db_path, or
 * pg_conninfo in builds with the PostgreSQL store).  Starting it again
 * after a join continues the same aggregates' counters up to the new
 * p->total. */
void ch_producer_start(ch_producer *p);
int ch_producer_done(ch_producer *p);
/* Joins the thread; fails the test when the producer reported an error. */
void ch_producer_join(ch_producer *p);
/* Commits `more` messages, synchronously. */
void ch_produce(ch_producer *p, int more);
void ch_producer_free(ch_producer *p);

/* ------------------------------------------------------------------------
 * Checker
 * ---------------------------------------------------------------------- */

typedef struct ch_report {
    int64_t expected;   /* ids committed */
    int64_t lines;      /* lines in the file */
    int64_t published;  /* lines that parsed */
    int64_t torn;       /* lines that did not parse */
    int64_t foreign;    /* parsed but not an id we committed, or wrong fields */
    int64_t lost;       /* committed ids never in the file */
    int64_t duplicates; /* parsed lines beyond the first of each id */
    int64_t violations; /* first(n) before first(n-1) within an aggregate */
    char first_problem[300];
} ch_report;

/* Reads the file destination at path and checks it against what p
 * committed.  Lines are CloudEvents objects with "id", "subject" (aggregate
 * id) and "data" {"agg":..., "n":...}. */
void ch_check_file(const char *path, const ch_producer *p, ch_report *r);

/* Concatenates files (NULL-terminated list, absent ones skipped) into out,
 * for checking the publications of successive relays as one stream. */
void ch_concat(const char *out, const char *const *files);

void ch_report_print(const char *label, const ch_report *r);

/* ------------------------------------------------------------------------
 * A database server crashed and restarted under a draining relay
 * (test_crash_pg, test_crash_mysql)
 * ---------------------------------------------------------------------- */

typedef struct ch_restarts {
    int64_t (*pending)(void);    /* pending messages, -1 while the server does not answer */
    void (*stop)(void *server);  /* crashes it (immediate stop, kill -9) */
    void (*start)(void *server); /* starts it again on the same port and data */
    void *server;
    int at_least;     /* restarts made at least */
    int during_drain; /* and at least this many with messages pending: more restarts, */
    int max;          /* up to max, until so (a fast drain can end before them) */
    int done;         /* out: restarts made */
    int pending_seen; /* out: of which with messages pending */
} ch_restarts;

/* Waits (60 s at most) for the relay pid to start draining, then restarts
 * the server as r says, 20-200 ms apart, down for 0-300 ms each time; fails
 * the test (showing err_path) when the relay exits meanwhile.  Prints one
 * line per restart with OUTBOX_TEST_VERBOSE, and a summary labelled label. */
void ch_restart_during_drain(ch_restarts *r, const char *label, pid_t pid, uint64_t *rng,
                             const char *err_path);

/* Copies the file several relays append to (in) to out, splitting a line
 * where a CloudEvents object starts in its middle: a relay killed inside
 * its write(2) leaves a partial line (never confirmed, so published again),
 * and a surviving relay, which does not re-check the tail before each
 * append, then appends its own complete lines right after it.  The partial
 * part still counts as torn. */
void ch_split_glued(const char *in, const char *out);

/* Waits until pending() says 0; after timeout_ms fails the test, showing
 * err_path. */
void ch_wait_pending_zero(int64_t (*pending)(void), int64_t timeout_ms, const char *err_path);

/* After restarts: waits for drained, for the relay's "reconnected" line
 * (60 s) and stops it with SIGTERM, which must exit 0. */
void ch_restarts_finish(const ch_restarts *r, pid_t pid, const char *err_path);

#endif /* OUTBOX_TEST_SUPPORT_CHAOS_H */
