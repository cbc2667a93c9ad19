/*
 * pg_wal_capture.c - the PostgreSQL store's capture mode (capture=wal):
 * the relay reads the messages <schema>.emit wrote to the WAL from a
 * logical replication slot (pgoutput, messages 'true') instead of claiming
 * table rows, and the table keeps only the exceptions.  The design is in
 * docs/WAL.md; in short:
 *
 * - The lease is the slot: lease_acquire starts streaming from it on a
 *   second, replication connection (a slot streams to one walsender at a
 *   time, so a second relay gets OUTBOX_ELEASED and, with --wait-lease,
 *   stands by), then takes the table's partitions as table mode does.
 * - Messages arrive committed and in commit order.  Each is kept in a
 *   queue in arrival order with seq = -(its arrival number): negative, so
 *   that the relay's exclude lists and completions tell them from table
 *   rows (seq > 0), which the same relay claims too.
 * - Exceptions go to the table: a message whose outcome is FAILED is
 *   inserted as Failed; its aggregate is then blocked (as is any aggregate
 *   with pending or, when failed messages block, Failed rows: a set kept
 *   in memory, loaded from the table), and every later message of a
 *   blocked aggregate is inserted as pending behind it, in arrival order,
 *   once no earlier message of that aggregate is still out.  The table
 *   claim then publishes them in seq order; `outbox retry` and `drop`
 *   work on them as on any row.  RETRY outcomes stay in memory with their
 *   backoff and hold back the later messages of their aggregate.
 * - Confirmed flush (guarantee 2): the slot's flush position advances
 *   past a transaction's end only when every message of it and of every
 *   transaction before it is confirmed: sent, or committed to the table.
 *   After a crash or a lost connection the stream resumes from there and
 *   the replay is published again (de-duplicated by id at the
 *   destination).
 * - Reading stops between transactions once WAL_QUEUE_MAX messages are in
 *   memory (the slot keeps the WAL meanwhile), and starts again when they
 *   are down to WAL_QUEUE_RESUME; status updates go on.
 */
#include "internal.h"

#ifdef OUTBOX_HAVE_LIBPQ

#include "pg.h"
#include "pg_wal.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Messages in memory (any state) above which no further transaction is
 * read from the stream. */
#define WAL_QUEUE_MAX 20000
/* ... and below which reading starts again.  Not at the first free place:
 * a relay slower than the stream (a broker's acknowledgements) would then
 * read a few messages after each completion, and each such read lets the
 * walsender, blocked on a full socket, wake up and send a few more: to
 * JetStream that tripled the walsender's CPU per message.  Reading a quarter
 * of the queue at a time wakes it once per quarter. */
#define WAL_QUEUE_RESUME (WAL_QUEUE_MAX * 3 / 4)
/* Standby status updates: when the flush position moved, at most this
 * often; and at least this often anyway (wal_sender_timeout is 60 s by
 * default), or when the server asks. */
#define STATUS_MOVED_US 200000
#define STATUS_EVERY_US 10000000
/* Reconnecting the replication connection: the pause doubles up to this. */
#define RECONNECT_FIRST_MS 100
#define RECONNECT_MAX_MS 5000
/* The blocked set is reloaded from the table at least this often (it
 * learns `drop` and `retry` that way), and the table is looked at for rows
 * to publish at least this often when nothing says there are some; both
 * wait for a claim with nothing to publish from memory, up to twice as
 * long (refresh_due). */
#define BLOCKED_REFRESH_US 5000000
#define TABLE_POLL_US 1000000
/* A --once relay reads the stream up to where the WAL was when it started
 * for at most this long before its first claim. */
#define CATCH_UP_MAX_US 10000000
/* While it waits for messages there, it wakes up at most this often, so
 * that a backlog arrives in large reads: woken for every protocol message
 * the walsender sends on its own (and answering each wake-up with a status
 * update), the relay and the walsender both paid for every message's
 * wake-up, two to three times their CPU per message. */
#define CATCH_UP_GATHER_US 200
/* ... and when the stream has been quiet this long, it asks the walsender
 * for its position (a keepalive), which says when the end is reached. */
#define CATCH_UP_QUIET_MS 20
/* libpq reads at most its input buffer (16 KiB) from the socket at a time:
 * a read that brought at least half of that may have left more behind. */
#define STREAM_REFILL_BYTES 8192
/* PostgreSQL's epoch (2000-01-01) in unix microseconds. */
#define PG_EPOCH_US INT64_C(946684800000000)

/* An entry's state.  OPEN: its transaction's commit has not arrived.
 * NEW: committed, not yet routed.  READY: to be published from memory.
 * FLIGHT: claimed by the relay.  WAIT: in retry backoff until due_us.
 * TABLE: to be inserted into the table (table_status).  DONE: confirmed. */
enum { E_OPEN, E_NEW, E_READY, E_FLIGHT, E_WAIT, E_TABLE, E_DONE };

typedef struct wal_entry {
    outbox_msg *msg; /* owned; NULL for content that could not be decoded */
    char *raw;       /* undecodable: the content (owned), raw_len bytes */
    size_t raw_len;
    char *error;      /* TABLE: its last_error (owned), or NULL */
    uint64_t lsn;     /* the message's own LSN */
    uint64_t end_lsn; /* its transaction's end LSN (0 while OPEN) */
    int64_t due_us;   /* WAIT: wall clock when it may be tried again */
    int state;
    int table_status; /* TABLE: OUTBOX_STATUS_PENDING or OUTBOX_STATUS_FAILED */
} wal_entry;

struct pg_wal {
    PGconn *repl; /* the replication connection, NULL while down */
    int streaming;
    int walsender_pid; /* the server process of the last stream (0: none yet) */
    int set_up;        /* the slot and publication were checked */
    int ever_streamed;
    int64_t reconnect_at_us; /* monotonic */
    unsigned reconnect_failures;
    char prefix[80]; /* "outbox:<schema>" */

    /* The queue: a ring of entries in arrival order. */
    wal_entry *q;
    size_t cap, head, len;
    uint64_t first_no;   /* arrival number of q[head] */
    uint64_t next_no;    /* of the next entry */
    uint64_t flight_end; /* one past the last entry ever claimed: none after it is FLIGHT */
    int full;            /* reading paused: the queue reached WAL_QUEUE_MAX */
    size_t ntable;       /* TABLE entries (counted wherever one becomes TABLE) */

    int in_txn;          /* between Begin and Commit */
    uint64_t stream_pos; /* end of the last commit, or a keepalive's position outside one */
    uint64_t flushed;    /* everything before it is confirmed */
    uint64_t reported;   /* the flush position last sent */
    int64_t status_at_us;
    int reply_due;
    int64_t heard_at_us;  /* monotonic time the server last sent anything */
    int64_t asked_at_us;  /* a keepalive was asked for since then (0: not) */
    int arrived;          /* committed entries since `changed` last said so */
    uint64_t once_target; /* --once: the WAL's end when the drain began */
    int caught_up;        /* --once: the stream reached once_target */

    /* Aggregates with pending (or failed) rows in the table: keys owned. */
    outbox_aggindex blocked;
    int blocked_loaded, blocked_stale, blocked_fba;
    int64_t blocked_at_us;
    int table_due; /* the table may hold rows to publish */
    /* Waiting (see outbox__pg_wal_idle, outbox__pg_wal_next_due). */
    int64_t commit_at_us; /* monotonic time the last commit arrived (0: none yet) */
    int flag_up;          /* the relay's waiting flag is set in the table */
    int due_known;        /* due_us below holds the table's next retry */
    int64_t due_us;       /* the table's earliest retry (0: none) */
    int64_t due_at_us;    /* monotonic time it was read */
    int64_t table_at_us;
    outbox_aggindex walk; /* scratch for a claim: aggregate -> PIN_* */
    outbox_completion *split;
    size_t split_cap;
    int64_t *positive;
    size_t positive_cap;
};

/* ------------------------------------------------------------------------
 * The queue and the blocked set
 * ---------------------------------------------------------------------- */

static wal_entry *entry_at(struct pg_wal *w, size_t i)
{
    return &w->q[(w->head + i) % w->cap];
}

/* The entry with arrival number no, or NULL (gone, or from before a
 * reconnect). */
static wal_entry *entry_of(struct pg_wal *w, uint64_t no)
{
    if (no < w->first_no || no - w->first_no >= w->len) return NULL;
    return entry_at(w, (size_t)(no - w->first_no));
}

static void entry_free(wal_entry *e)
{
    outbox_msg_free(e->msg);
    outbox__free(e->raw);
    outbox__free(e->error);
    memset(e, 0, sizeof *e);
}

/* A new entry at the tail (zeroed, arrival number next_no); NULL when out
 * of memory. */
static wal_entry *entry_push(struct pg_wal *w)
{
    wal_entry *e;
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 256, i;
        wal_entry *q = outbox__calloc(cap, sizeof *q);
        if (!q) return NULL;
        for (i = 0; i < w->len; i++)
            q[i] = *entry_at(w, i);
        outbox__free(w->q);
        w->q = q;
        w->cap = cap;
        w->head = 0;
    }
    e = entry_at(w, w->len++);
    memset(e, 0, sizeof *e);
    w->next_no++;
    return e;
}

/* Drops every entry (a lost stream: what follows the flush position is
 * read again). */
static void queue_clear(struct pg_wal *w)
{
    while (w->len > 0) {
        entry_free(entry_at(w, 0));
        w->head = (w->head + 1) % w->cap;
        w->len--;
        w->first_no++;
    }
    w->first_no = w->next_no;
    w->ntable = 0;
    w->full = 0;
    w->in_txn = 0;
    /* What was in memory is read again from the flush position: left at the
     * lost stream's position, the next advance_flush of the empty queue
     * would confirm it unpublished. */
    w->stream_pos = w->flushed;
}

/* May the stream be read (the queue has room)?  No from when it holds
 * WAL_QUEUE_MAX entries until it is down to WAL_QUEUE_RESUME. */
static int queue_room(struct pg_wal *w)
{
    if (w->len >= WAL_QUEUE_MAX)
        w->full = 1;
    else if (w->len <= WAL_QUEUE_RESUME)
        w->full = 0;
    return !w->full;
}

static void blocked_clear(struct pg_wal *w)
{
    size_t i;
    for (i = 0; w->blocked.count > 0 && i < w->blocked.cap; i++)
        outbox__free((char *)w->blocked.slots[i].key); /* the set's own copies */
    outbox__aggindex_reset(&w->blocked);
}

static int blocked_add(struct pg_wal *w, const char *agg)
{
    char *copy;
    if (outbox__aggindex_lookup(&w->blocked, agg, NULL)) return OUTBOX_OK;
    if (outbox__aggindex_reserve(&w->blocked, 1) != OUTBOX_OK) return OUTBOX_ENOMEM;
    copy = outbox__strdup(agg);
    if (!copy) return OUTBOX_ENOMEM;
    outbox__aggindex_insert(&w->blocked, copy, 0, NULL);
    return OUTBOX_OK;
}

/* Loads the blocked set from the table: aggregates with a pending row, or
 * a Failed one when failed messages block their aggregate. */
static int blocked_load(pg_store *st, int fba, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    const char *params[1] = {fba ? "true" : "false"};
    PGresult *res;
    int i, rows, code = OUTBOX_OK;

    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "SELECT DISTINCT aggregate_id FROM %s.outbox WHERE status = 'pending'"
                       " OR (status = 'failed' AND $1::boolean)",
                       st->qschema);
    if (st->sql.oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    res = outbox__pg_store_query(st, st->sql.data, 1, params);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = outbox__pg_store_fail(st, res, "reading the aggregates the table holds", err);
        PQclear(res);
        return code;
    }
    blocked_clear(w);
    rows = PQntuples(res);
    for (i = 0; i < rows && code == OUTBOX_OK; i++)
        if (blocked_add(w, PQgetvalue(res, i, 0)) != OUTBOX_OK)
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory loading blocked aggregates");
    PQclear(res);
    if (code != OUTBOX_OK) {
        blocked_clear(w);
        w->blocked_loaded = 0;
        return code;
    }
    w->blocked_loaded = 1;
    w->blocked_stale = 0;
    w->blocked_fba = fba;
    w->blocked_at_us = outbox__monotonic_us();
    if (rows > 0) w->table_due = 1;
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * The replication connection
 * ---------------------------------------------------------------------- */

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    int i;
    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_u64(unsigned char *p, uint64_t v)
{
    int i;
    for (i = 7; i >= 0; i--) {
        p[i] = (unsigned char)(v & 0xff);
        v >>= 8;
    }
}

#define LSN_FMT "%X/%X"
#define LSN_ARGS(l) (unsigned)((l) >> 32), (unsigned)(l)

/* Sends a standby status update: written, flushed and applied are all
 * the flush position (nothing past it may be skipped after a restart);
 * ask: the server is to answer at once (with a keepalive). */
static void send_status(struct pg_wal *w, int ask)
{
    unsigned char buf[34];
    if (!w->streaming) return;
    buf[0] = 'r';
    put_u64(buf + 1, w->flushed);
    put_u64(buf + 9, w->flushed);
    put_u64(buf + 17, w->flushed);
    put_u64(buf + 25, (uint64_t)(outbox__now_us() - PG_EPOCH_US));
    buf[33] = ask ? 1 : 0;
    if (PQputCopyData(w->repl, (const char *)buf, sizeof buf) != 1 || PQflush(w->repl) < 0) {
        char msg[300];
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "sending the slot's flush position: %s",
                    outbox__pg_message(PQerrorMessage(w->repl), msg, sizeof msg));
        return;
    }
    w->reported = w->flushed;
    w->status_at_us = outbox__monotonic_us();
    w->reply_due = 0;
}

/* Sends a status update when one is due; and, when the stream has been
 * silent for half of query_timeout (an idle server sends nothing while
 * the updates come), one that asks for a keepalive, once: a live server
 * answers at once, so that a stream still silent half a query_timeout
 * later is dropped (silent_stream). */
static void maybe_send_status(const pg_store *st)
{
    struct pg_wal *w = st->wal;
    int64_t now = outbox__monotonic_us(), since = now - w->status_at_us;
    int ask = w->asked_at_us == 0 && now - w->heard_at_us >= st->query_timeout_ms * 500;

    if (ask || w->reply_due || since >= STATUS_EVERY_US ||
        (w->flushed != w->reported && since >= STATUS_MOVED_US)) {
        send_status(w, ask);
        if (ask) w->asked_at_us = now;
    }
}

/* Has the stream said nothing for query_timeout, not even the keepalive
 * asked for half of it ago?  (Counted from the question, not from the
 * last data: a relay busy elsewhere for a while asks late.) */
static int silent_stream(const pg_store *st)
{
    const struct pg_wal *w = st->wal;
    return w->asked_at_us != 0 &&
           outbox__monotonic_us() - w->asked_at_us >= st->query_timeout_ms * 500;
}

/* Pops the confirmed entries at the head and moves the flush position:
 * past the last transaction popped whole, or to the stream's position
 * when nothing is left in memory. */
static void advance_flush(struct pg_wal *w)
{
    uint64_t last = 0;
    while (w->len > 0 && entry_at(w, 0)->state == E_DONE) {
        wal_entry *e = entry_at(w, 0);
        last = e->end_lsn;
        entry_free(e);
        w->head = (w->head + 1) % w->cap;
        w->len--;
        w->first_no++;
    }
    if (w->len == 0) {
        if (!w->in_txn && w->stream_pos > w->flushed) w->flushed = w->stream_pos;
    } else {
        const wal_entry *h = entry_at(w, 0);
        /* An open transaction commits after every one before it. */
        if (last > w->flushed && (h->state == E_OPEN || last < h->end_lsn)) w->flushed = last;
    }
}

/* The stream is gone: forget what is in memory (it is read again from the
 * flush position) and reconnect after a pause. */
static void stream_lost(pg_store *st, const char *why)
{
    struct pg_wal *w = st->wal;
    unsigned shift = w->reconnect_failures < 6 ? w->reconnect_failures : 6;
    int64_t pause_ms = (int64_t)RECONNECT_FIRST_MS << shift;

    if (pause_ms > RECONNECT_MAX_MS) pause_ms = RECONNECT_MAX_MS;
    if (w->streaming)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "replication stream of slot %s lost (%s); reconnecting from " LSN_FMT
                    "; %zu messages in memory will be published again",
                    st->slot, why, LSN_ARGS(w->flushed), w->len);
    if (w->repl) PQfinish(w->repl);
    w->repl = NULL;
    w->streaming = 0;
    queue_clear(w);
    w->reconnect_failures++;
    w->reconnect_at_us = outbox__monotonic_us() + pause_ms * 1000;
}

/* The slot is busy: is it with this relay's own previous stream, lost on
 * this side (a timeout, a network that failed) while its walsender on the
 * server still waits (for wal_sender_timeout, or its keepalives)?  That
 * one is ended, on the table connection, and 1 returned: the stream can
 * start again in a moment.  0 when another process streams from it. */
static int end_own_stale_stream(pg_store *st)
{
    const char *params[2];
    char pid[16];
    PGresult *res;
    outbox_error ignored;
    int ended;

    if (st->wal->walsender_pid <= 0 || outbox__pg_need_conn(st, &ignored) != OUTBOX_OK) return 0;
    snprintf(pid, sizeof pid, "%d", st->wal->walsender_pid);
    params[0] = st->slot;
    params[1] = pid;
    res = outbox__pg_store_query(st,
                                 "SELECT pg_terminate_backend(active_pid) FROM"
                                 " pg_replication_slots WHERE slot_name = $1"
                                 " AND active_pid = $2::integer",
                                 2, params);
    ended = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
            PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    return ended;
}

/* Opens the replication connection and starts streaming from the slot at
 * the flush position.  OUTBOX_ELEASED when another relay streams from the
 * slot. */
static int stream_start(pg_store *st, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    PGresult *res;
    char sql[300], msg[300];
    int code, expired;

    /* Test builds fail a start here as an unreachable server would
     * (test_store_pg_wal: a reconnect that fails once after a lost stream). */
    if (OUTBOX_FAULT("wal_stream_start") != 0)
        return outbox__error(err, OUTBOX_EIO,
                             "cannot open a replication connection to %s: fault point "
                             "wal_stream_start",
                             st->shown);
    w->repl = PQconnectdb(st->repl_conninfo);
    if (!w->repl) return outbox__error(err, OUTBOX_ENOMEM, "out of memory connecting");
    if (PQstatus(w->repl) != CONNECTION_OK) {
        code =
            outbox__error(err, OUTBOX_EIO,
                          "cannot open a replication connection to %s: %s (the role needs "
                          "REPLICATION, pg_hba.conf a replication entry, and the server free "
                          "max_wal_senders)",
                          st->shown, outbox__pg_message(PQerrorMessage(w->repl), msg, sizeof msg));
        goto fail;
    }
    /* Non-blocking from the start: its statements wait at most
     * query_timeout, and the stream is read without waiting. */
    if (PQsetnonblocking(w->repl, 1) != 0) {
        code =
            outbox__error(err, OUTBOX_EIO, "cannot make the replication connection non-blocking");
        goto fail;
    }
    res = outbox__pg_query_within(w->repl, st->query_timeout_ms, "IDENTIFY_SYSTEM", &expired);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        code = expired
                   ? outbox__pg_timeout_error(st, "identifying the server for replication", err)
                   : outbox__pg_fail(w->repl, res, "identifying the server for replication", err);
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    snprintf(sql, sizeof sql,
             "START_REPLICATION SLOT \"%s\" LOGICAL " LSN_FMT
             " (proto_version '1', publication_names '\"%s\"', messages 'true')",
             st->slot, LSN_ARGS(w->flushed), st->publication);
    res = outbox__pg_query_within(w->repl, st->query_timeout_ms, sql, &expired);
    if (expired) {
        code = outbox__pg_timeout_error(st, "starting to stream from the replication slot", err);
        goto fail;
    }
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "55006") == 0 && end_own_stale_stream(st)) {
            code = outbox__error(err, OUTBOX_EIO,
                                 "replication slot %s was still streamed to this relay's lost "
                                 "connection (walsender pid %d): that session was ended; "
                                 "streaming again in a moment",
                                 st->slot, st->wal->walsender_pid);
        } else if (state && strcmp(state, "55006") == 0) {
            code = outbox__error(err, OUTBOX_ELEASED,
                                 "replication slot %s is streamed by another relay (%s)", st->slot,
                                 outbox__pg_error_text(w->repl, res, msg, sizeof msg));
        } else {
            code =
                outbox__pg_fail(w->repl, res, "starting to stream from the replication slot", err);
            if (state && strcmp(state, "42704") == 0) code = OUTBOX_ECONFIG;
        }
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    w->streaming = 1;
    w->walsender_pid = PQbackendPID(w->repl);
    w->in_txn = 0;
    w->status_at_us = w->heard_at_us = outbox__monotonic_us();
    w->asked_at_us = 0;
    if (w->ever_streamed)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "reconnected to %s: streaming slot %s again from " LSN_FMT, st->shown, st->slot,
                    LSN_ARGS(w->flushed));
    else
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "streaming slot %s (publication %s) from its confirmed position", st->slot,
                    st->publication);
    w->ever_streamed = 1;
    w->reconnect_failures = 0;
    return OUTBOX_OK;

fail:
    PQfinish(w->repl);
    w->repl = NULL;
    return code;
}

/* Streams again after a loss, once its pause is over.  OUTBOX_ELEASELOST
 * when another relay took the slot meanwhile. */
static int stream_ensure(pg_store *st, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    int code;

    if (w->streaming) return OUTBOX_OK;
    if (outbox__monotonic_us() < w->reconnect_at_us)
        return outbox__error(err, OUTBOX_EIO, "the replication stream of slot %s is down",
                             st->slot);
    code = stream_start(st, err);
    if (code == OUTBOX_ELEASED)
        return outbox__error(err, OUTBOX_ELEASELOST, "replication slot %s was taken over: %s",
                             st->slot, err ? err->message : "");
    if (code != OUTBOX_OK) {
        unsigned shift = w->reconnect_failures < 6 ? w->reconnect_failures : 6;
        int64_t pause_ms = (int64_t)RECONNECT_FIRST_MS << shift;
        if (pause_ms > RECONNECT_MAX_MS) pause_ms = RECONNECT_MAX_MS;
        w->reconnect_failures++;
        w->reconnect_at_us = outbox__monotonic_us() + pause_ms * 1000;
    }
    return code;
}

/* A logical decoding message ('M') of our prefix: a new entry. */
static int on_message(pg_store *st, const unsigned char *p, size_t n, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    int transactional;
    uint64_t lsn;
    const char *prefix;
    size_t plen;
    uint32_t clen;
    wal_entry *e;
    outbox_error why;
    int code;

    if (n < 9) return outbox__error(err, OUTBOX_EIO, "a short message in the replication stream");
    transactional = p[0] & 1;
    lsn = get_u64(p + 1);
    prefix = (const char *)p + 9;
    plen = strnlen(prefix, n - 9);
    if (9 + plen + 1 + 4 > n)
        return outbox__error(err, OUTBOX_EIO, "a malformed message in the replication stream");
    clen = get_u32(p + 9 + plen + 1);
    if (clen > n - (9 + plen + 1 + 4))
        return outbox__error(err, OUTBOX_EIO, "a truncated message in the replication stream");
    if (strcmp(prefix, w->prefix) != 0) return OUTBOX_OK; /* another schema's or program's */
    e = entry_push(w);
    if (!e) return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading the stream");
    e->lsn = lsn;
    e->state = E_OPEN;
    code = outbox__pg_wal_message((const char *)p + 9 + plen + 1 + 4, clen,
                                  -(int64_t)(w->next_no - 1), &e->msg, &why);
    if (code == OUTBOX_ENOMEM) {
        if (err) *err = why;
        return code;
    }
    if (code != OUTBOX_OK) {
        char error[600];
        e->raw = outbox__malloc(clen + 1);
        snprintf(error, sizeof error, "WAL message at " LSN_FMT " cannot be decoded: %s",
                 LSN_ARGS(lsn), why.message);
        e->error = outbox__strdup(error);
        if (!e->raw || !e->error)
            return outbox__error(err, OUTBOX_ENOMEM, "out of memory reading the stream");
        memcpy(e->raw, p + 9 + plen + 1 + 4, clen);
        e->raw[clen] = '\0';
        e->raw_len = clen;
        e->table_status = OUTBOX_STATUS_FAILED;
        outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                    "%s; it is kept in the table as Failed (type outbox.undecodable)", error);
    }
    if (!transactional) { /* not what emit writes: a transaction of its own */
        e->end_lsn = lsn + 1;
        e->state = e->msg ? E_NEW : E_TABLE;
        if (!e->msg) w->ntable++;
        w->arrived++;
    }
    return OUTBOX_OK;
}

/* One CopyData message from the walsender. */
static int on_copy_data(pg_store *st, const unsigned char *p, size_t n, outbox_error *err)
{
    struct pg_wal *w = st->wal;

    if (n >= 18 && p[0] == 'k') { /* primary keepalive */
        if (!w->in_txn && get_u64(p + 1) > w->stream_pos) w->stream_pos = get_u64(p + 1);
        if (p[17]) w->reply_due = 1;
        return OUTBOX_OK;
    }
    if (n < 26 || p[0] != 'w') return OUTBOX_OK;
    p += 25;
    n -= 25;
    switch (p[0]) {
    case 'B':
        w->in_txn = 1;
        return OUTBOX_OK;
    case 'M':
        return on_message(st, p + 1, n - 1, err);
    case 'C': {
        uint64_t end;
        size_t i;
        if (n < 26) return outbox__error(err, OUTBOX_EIO, "a short commit in the stream");
        end = get_u64(p + 10);
        for (i = w->len; i > 0; i--) {
            wal_entry *e = entry_at(w, i - 1);
            if (e->state != E_OPEN) break;
            e->end_lsn = end;
            e->state = e->msg ? E_NEW : E_TABLE;
            if (!e->msg) w->ntable++;
            w->arrived++;
            w->commit_at_us = outbox__monotonic_us(); /* one with messages of ours */
        }
        w->in_txn = 0;
        if (end > w->stream_pos) w->stream_pos = end;
        return OUTBOX_OK;
    }
    default:
        return OUTBOX_OK; /* relations, types, origins: none with an empty publication */
    }
}

/* Reads what the stream has without waiting: until it has nothing more,
 * or (between transactions) the queue is full.  A lost stream is not an
 * error here (stream_ensure reconnects); memory is. */
static int stream_read(pg_store *st, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    char msg[300];
    size_t got = 0; /* bytes of CopyData since the socket was last read */

    if (!w->streaming) return OUTBOX_OK;
    /* While reading is paused the socket is not read either: libpq would
     * read all it holds into its input buffer, which it enlarges without
     * bound, and move what is left of it to the buffer's start at every
     * read; at every claim and completion of a relay slower than the
     * stream (JetStream), that kept the walsender streaming into the
     * relay's memory instead of pausing, and the moves took about 6% of the
     * relay's CPU.  (Status updates go on: the walsender does not time out.) */
    if ((w->in_txn || queue_room(w)) && !PQconsumeInput(w->repl)) {
        stream_lost(st, outbox__pg_message(PQerrorMessage(w->repl), msg, sizeof msg));
        return OUTBOX_OK;
    }
    for (;;) {
        char *buf = NULL;
        int n, code;
        if (!w->in_txn && !queue_room(w)) {
            w->heard_at_us = outbox__monotonic_us(); /* not read: not silent */
            w->asked_at_us = 0;
            break;
        }
        n = PQgetCopyData(w->repl, &buf, 1);
        if (n == 0 && got >= STREAM_REFILL_BYTES) {
            got = 0;
            if (!PQconsumeInput(w->repl)) {
                stream_lost(st, outbox__pg_message(PQerrorMessage(w->repl), msg, sizeof msg));
                return OUTBOX_OK;
            }
            continue;
        }
        if (n == 0) break;
        if (n < 0) {
            PGresult *res = PQgetResult(w->repl);
            outbox__pg_error_text(w->repl, res, msg, sizeof msg);
            PQclear(res);
            stream_lost(st, n == -1 ? "the server ended the stream" : msg);
            return OUTBOX_OK;
        }
        got += (size_t)n;
        w->heard_at_us = outbox__monotonic_us();
        w->asked_at_us = 0;
        code = on_copy_data(st, (const unsigned char *)buf, (size_t)n, err);
        PQfreemem(buf);
        if (code == OUTBOX_EIO) {
            stream_lost(st, err ? err->message : "a malformed stream");
            return OUTBOX_OK;
        }
        if (code != OUTBOX_OK) {
            stream_lost(st, "out of memory");
            return code;
        }
    }
    if (silent_stream(st)) {
        snprintf(msg, sizeof msg,
                 "the server sent nothing for %lld ms, not even the keepalive asked for "
                 "(query_timeout %lld ms)",
                 (long long)((outbox__monotonic_us() - w->heard_at_us) / 1000),
                 (long long)st->query_timeout_ms);
        stream_lost(st, msg);
        return OUTBOX_OK;
    }
    advance_flush(w);
    maybe_send_status(st);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Writing to the table
 * ---------------------------------------------------------------------- */

/* Inserts one TABLE entry (in the open transaction).  A row the table
 * refuses (a CHECK, a payload that is not JSON) is kept as undecodable
 * instead; *retry_raw = 1 then. */
static int insert_entry(pg_store *st, wal_entry *e, outbox_error *err)
{
    const outbox_msg *m = e->msg;
    const char *params[10];
    char at[32], attempts[16], agg[48], id[37];
    outbox_buf payload;
    PGresult *res;
    int code = OUTBOX_OK;

    outbox__buf_init(&payload);
    outbox__buf_reset(&st->sql);
    outbox__buf_printf(&st->sql,
                       "INSERT INTO %s.outbox (id, occurred_at, type, aggregate_type,"
                       " aggregate_id, payload, headers, status, attempts, last_error)"
                       " VALUES ($1::uuid, 'epoch'::timestamptz + $2::bigint * interval"
                       " '1 microsecond', $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9::int, $10)"
                       " ON CONFLICT (id) DO NOTHING",
                       st->qschema);
    if (m) {
        params[0] = m->id;
        snprintf(at, sizeof at, "%lld", (long long)m->occurred_at);
        params[2] = m->type;
        params[3] = m->aggregate_type;
        params[4] = m->aggregate_id;
        params[5] = m->payload;
        params[6] = m->headers_json;
        snprintf(attempts, sizeof attempts, "%d", m->attempts);
    } else {
        /* Undecodable: the content as a JSON string, under a new id. */
        outbox_uuid_v7(id);
        params[0] = id;
        snprintf(at, sizeof at, "%lld", (long long)outbox__now_us());
        params[2] = "outbox.undecodable";
        params[3] = "";
        snprintf(agg, sizeof agg, "wal:" LSN_FMT, LSN_ARGS(e->lsn));
        params[4] = agg;
        outbox__buf_json_string(&payload, e->raw ? e->raw : "");
        params[5] = payload.data;
        params[6] = "{}";
        snprintf(attempts, sizeof attempts, "0");
    }
    params[1] = at;
    params[7] = e->table_status == OUTBOX_STATUS_FAILED ? "failed" : "pending";
    params[8] = attempts;
    params[9] = e->error;
    if (st->sql.oom || payload.oom) {
        outbox__buf_free(&payload);
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory writing to the table");
    }
    res = outbox__pg_store_query(st, st->sql.data, 10, params);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        code = outbox__pg_store_fail(st, res, "writing a WAL message to the table", err);
    PQclear(res);
    outbox__buf_free(&payload);
    return code;
}

/* Inserts the TABLE entries in arrival order in one transaction (durable:
 * once it committed they count as confirmed).  A row the table refuses
 * becomes an undecodable Failed row, in a second try. */
static int flush_table(pg_store *st, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    size_t i;
    int code, round;

    /* Called at every claim and complete: counted, not looked for (the
     * queue holds up to WAL_QUEUE_MAX entries). */
    if (w->ntable == 0) return OUTBOX_OK;
    if (st->in_txn) return OUTBOX_OK; /* a claim's transaction is open: after its complete */
    for (round = 0; round < 2; round++) {
        code = outbox__pg_store_exec(st, "BEGIN", "writing WAL messages to the table", err);
        for (i = 0; i < w->len && code == OUTBOX_OK; i++) {
            wal_entry *e = entry_at(w, i);
            if (e->state != E_TABLE) continue;
            code = insert_entry(st, e, err);
            if (code != OUTBOX_OK && round == 0 && e->msg && PQstatus(st->conn) == CONNECTION_OK) {
                /* The table refused the row (a payload that is not JSON, a
                 * CHECK): keep it as undecodable, and write them all again. */
                char error[600];
                outbox_buf raw;
                outbox__buf_init(&raw);
                outbox__buf_printf(&raw, "%s", e->msg->payload);
                snprintf(error, sizeof error, "WAL message %s cannot be stored: %s", e->msg->id,
                         err ? err->message : "refused");
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "%s; kept as Failed (outbox.undecodable)",
                            error);
                outbox__free(e->error);
                e->error = outbox__strdup(error);
                outbox_msg_free(e->msg);
                e->msg = NULL;
                e->raw = raw.data;
                e->raw_len = raw.len;
                e->table_status = OUTBOX_STATUS_FAILED;
                break;
            }
        }
        if (code == OUTBOX_OK) break;
        outbox__pg_store_rollback(st);
        if (PQstatus(st->conn) != CONNECTION_OK) return code;
    }
    if (code == OUTBOX_OK)
        code = outbox__pg_store_exec(st, "COMMIT", "committing WAL messages", err);
    if (code != OUTBOX_OK) {
        outbox__pg_store_rollback(st);
        return code;
    }
    for (i = 0; i < w->len; i++)
        if (entry_at(w, i)->state == E_TABLE) entry_at(w, i)->state = E_DONE;
    w->ntable = 0;
    w->table_due = 1;
    advance_flush(w);
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Open, close, lease
 * ---------------------------------------------------------------------- */

int outbox__pg_wal_open(pg_store *st, outbox_error *err)
{
    struct pg_wal *w = outbox__calloc(1, sizeof *w);
    if (!w) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    snprintf(w->prefix, sizeof w->prefix, "outbox:%s", st->schema);
    outbox__aggindex_init(&w->blocked);
    outbox__aggindex_init(&w->walk);
    w->next_no = w->first_no = 1;
    st->wal = w;
    return OUTBOX_OK;
}

void outbox__pg_wal_close(pg_store *st)
{
    struct pg_wal *w = st ? st->wal : NULL;
    if (!w) return;
    if (w->repl) PQfinish(w->repl);
    queue_clear(w);
    outbox__free(w->q);
    blocked_clear(w);
    outbox__aggindex_free(&w->blocked);
    outbox__aggindex_free(&w->walk);
    outbox__free(w->split);
    outbox__free(w->positive);
    outbox__free(w);
    st->wal = NULL;
}

int outbox__pg_wal_lease_acquire(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;
    int code = outbox__pg_need_schema(st, err);

    if (code != OUTBOX_OK) return code;
    if (!w->set_up) {
        int created = 0;
        outbox__pg_end_claim(st);
        code = outbox__pg_wal_setup(st->conn, st->slot, st->publication, &created, err);
        if (code != OUTBOX_OK) return code;
        if (created)
            outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                        "created logical replication slot %s (pgoutput) and publication %s; "
                        "messages emitted before now are not in it",
                        st->slot, st->publication);
        w->set_up = 1;
    }
    if (!w->streaming) {
        code = stream_start(st, err);
        if (code != OUTBOX_OK) return code;
    }
    w->blocked_loaded = 0;
    return outbox__pg_lease_acquire(state, owner, ttl_ms, err);
}

int outbox__pg_wal_lease_renew(void *state, const char *owner, int64_t ttl_ms, outbox_error *err)
{
    pg_store *st = state;
    outbox_error e;
    int code = stream_read(st, err);

    if (code != OUTBOX_OK) return code;
    code = stream_ensure(st, &e);
    if (code == OUTBOX_ELEASELOST) {
        if (err) *err = e;
        return code;
    }
    return outbox__pg_lease_renew(state, owner, ttl_ms, err);
}

int outbox__pg_wal_lease_release(void *state, const char *owner, outbox_error *err)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;

    if (w->streaming) {
        (void)stream_read(st, NULL);
        advance_flush(w);
        send_status(w, 0);
        outbox__log(OUTBOX_LOG_INFO, COMPONENT, "slot %s confirmed up to " LSN_FMT, st->slot,
                    LSN_ARGS(w->flushed));
    }
    if (w->repl) PQfinish(w->repl);
    w->repl = NULL;
    w->streaming = 0;
    if (w->len > 0)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "%zu messages past the confirmed position stay to the next relay", w->len);
    queue_clear(w);
    return outbox__pg_lease_release(state, owner, err);
}

/* ------------------------------------------------------------------------
 * Claim and complete
 * ---------------------------------------------------------------------- */

/* Per-claim marks of an aggregate (in w->walk): an earlier message of it
 * is still in memory (its later ones cannot go to the table yet), and it
 * stays unpublished there (its later ones cannot be published yet). */
enum { PIN_EARLIER = 1, PIN_HOLD = 2 };

static void pin(struct pg_wal *w, const char *agg, uint32_t bits)
{
    uint32_t v = 0;
    outbox__aggindex_lookup(&w->walk, agg, &v);
    outbox__aggindex_insert(&w->walk, agg, v | bits, NULL);
}

/* Routes the committed entries and claims up to max of them into arr (the
 * relay's copies), in arrival order, applying the ordering rule; entries
 * of blocked aggregates become TABLE entries.  With no aggregate blocked
 * (the usual case) only held-back aggregates are marked in w->walk: the
 * other marks (PIN_EARLIER alone) only matter to a blocked aggregate, and
 * marking every message in flight and claimed cost a hash insert each. */
static int route_and_claim(pg_store *st, const outbox_claim_params *p, outbox_msg **arr, size_t max,
                           size_t *count, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    int any_blocked = w->blocked.count > 0;
    size_t i;

    *count = 0;
    outbox__aggindex_reset(&w->walk);
    if (outbox__aggindex_reserve(&w->walk, w->len) != OUTBOX_OK)
        return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    for (i = 0; i < w->len; i++) {
        wal_entry *e = entry_at(w, i);
        const char *agg;
        uint32_t pins = 0;
        int blocked, due;
        outbox_msg *copy;

        if (e->state == E_OPEN) break;
        /* The batch is full: what is left only needs walking to send a
         * blocked aggregate's messages to the table, which the next claim
         * does as well.  Without blocked aggregates, stop (the queue holds
         * up to WAL_QUEUE_MAX messages; walking all of them at every claim
         * took about 14% of the relay's CPU in a profile). */
        if (*count >= max && !any_blocked) break;
        if (e->state == E_DONE || e->state == E_TABLE || !e->msg) continue;
        agg = e->msg->aggregate_id;
        outbox__aggindex_lookup(&w->walk, agg, &pins);
        if (e->state == E_FLIGHT) {
            if (any_blocked) pin(w, agg, PIN_EARLIER);
            continue;
        }
        blocked = outbox__aggindex_lookup(&w->blocked, agg, NULL);
        if (e->state == E_NEW) e->state = E_READY;
        if (blocked && e->state == E_READY) {
            if (pins & PIN_EARLIER) {
                pin(w, agg, PIN_EARLIER | PIN_HOLD);
                continue;
            }
            e->state = E_TABLE;
            e->table_status = OUTBOX_STATUS_PENDING;
            w->ntable++;
            continue;
        }
        due = e->state == E_READY || e->due_us <= p->now_us;
        if (!due || (pins & PIN_HOLD) || *count >= max) {
            pin(w, agg, PIN_EARLIER | PIN_HOLD);
            continue;
        }
        copy = outbox__msg_clone(e->msg, err);
        if (!copy) return OUTBOX_ENOMEM;
        copy->status = OUTBOX_STATUS_PENDING;
        arr[(*count)++] = copy;
        e->state = E_FLIGHT;
        if (w->first_no + i + 1 > w->flight_end) w->flight_end = w->first_no + i + 1;
        if (any_blocked) pin(w, agg, PIN_EARLIER);
    }
    return OUTBOX_OK;
}

/* Entries never claimed (arrival order: those after the last claimed). */
static size_t unclaimed(const struct pg_wal *w)
{
    uint64_t from = w->flight_end > w->first_no ? w->flight_end : w->first_no;
    return (size_t)(w->next_no - from);
}

/* Is catch_up to read on (see there)? */
static int catching_up(struct pg_wal *w, size_t want, int64_t until)
{
    return w->streaming && w->stream_pos < w->once_target && queue_room(w) && unclaimed(w) < want &&
           outbox__monotonic_us() < until;
}

/* --once: reads the stream up to the WAL's end as it was at the first
 * claim (bounded by CATCH_UP_MAX_US and the queue's size), so that a
 * drain sees what was committed before it began; but stops waiting once
 * want entries that were never claimed are in memory, so that the relay
 * publishes them while the walsender goes on sending (waiting for a full
 * queue left the relay idle while the walsender filled it, and the
 * walsender blocked while the relay worked through it).  A walsender
 * with nothing more to send sends a keepalive with its position while the
 * relay has not confirmed all it sent; one asked for when the stream has
 * been quiet for CATCH_UP_QUIET_MS makes sure. */
static int catch_up(pg_store *st, size_t want, outbox_error *err)
{
    struct pg_wal *w = st->wal;
    int64_t until = outbox__monotonic_us() + CATCH_UP_MAX_US;
    int code;

    if (w->caught_up || !w->streaming) return OUTBOX_OK;
    if (w->once_target == 0) {
        PGresult *res = outbox__pg_store_query(st, "SELECT pg_current_wal_flush_lsn()", 0, NULL);
        unsigned hi = 0, lo = 0;
        if (PQresultStatus(res) != PGRES_TUPLES_OK ||
            sscanf(PQgetvalue(res, 0, 0), "%X/%X", &hi, &lo) != 2) {
            code = outbox__pg_store_fail(st, res, "reading the WAL's position", err);
            PQclear(res);
            return code;
        }
        PQclear(res);
        w->once_target = ((uint64_t)hi << 32) | lo;
    }
    while (catching_up(w, want, until)) {
        struct pollfd pfd;
        int ready;
        pfd.fd = PQsocket(w->repl);
        pfd.events = POLLIN;
        pfd.revents = 0;
        ready = poll(&pfd, 1, CATCH_UP_QUIET_MS);
        if (ready == 0) send_status(w, 1);
        code = stream_read(st, err);
        if (code != OUTBOX_OK) return code;
        if (ready > 0 && catching_up(w, want, until)) outbox__sleep_us(CATCH_UP_GATHER_US);
    }
    if (w->stream_pos >= w->once_target) w->caught_up = 1;
    return OUTBOX_OK;
}

/* Is a periodic refresh (the blocked set's reload, the table poll) due,
 * since_us after the last one?  A claim that publishes messages from
 * memory leaves it for up to a second period: its round trips (a few ms,
 * tens when the table claim writes the relay's heartbeat) would delay
 * every one of those messages, and the claim that comes next when they are
 * published finds nothing and does it then.  Only a relay the stream keeps
 * busy waits the second period. */
static int refresh_due(int64_t since_us, int64_t period_us, int publishing)
{
    return since_us >= (publishing ? 2 * period_us : period_us);
}

/* Reads the stream, reloads the blocked set when due, routes and claims
 * from memory, writes what goes to the table, then claims table rows with
 * the room left (plain: in a transaction left open until complete). */
static int wal_claim(pg_store *st, const outbox_claim_params *p, int pipelined,
                     const int64_t *exclude, size_t exclude_count, outbox_msg ***msgs, size_t *n,
                     outbox_error *err)
{
    struct pg_wal *w = st->wal;
    outbox_msg **arr = NULL, **rows = NULL;
    outbox_error stream_err;
    size_t count = 0, nrows = 0, i, npos = 0;
    int64_t now = outbox__monotonic_us();
    int code, stream_code;

    *msgs = NULL;
    *n = 0;
    if (!p || p->batch_size == 0)
        return outbox__error(err, OUTBOX_EINVAL, "claim: batch_size is 0");
    /* A batch the relay dropped without recording it (a plain claim: any;
     * pipelined: those not in flight) is claimed again. */
    outbox__pg_end_claim(st);
    /* Only entries up to the last one claimed can be in flight: not the
     * whole queue (up to WAL_QUEUE_MAX) at every claim. */
    for (i = 0; w->flight_end > w->first_no && i < w->len && i < w->flight_end - w->first_no; i++)
        if (entry_at(w, i)->state == E_FLIGHT) entry_at(w, i)->state = E_READY;
    for (i = 0; i < exclude_count; i++) {
        wal_entry *e = exclude[i] < 0 ? entry_of(w, (uint64_t)(-exclude[i])) : NULL;
        if (e && e->state == E_READY) e->state = E_FLIGHT;
    }
    stream_code = stream_ensure(st, &stream_err);
    if (stream_code == OUTBOX_ELEASELOST) {
        if (err) *err = stream_err;
        return stream_code;
    }
    code = stream_read(st, err);
    if (code == OUTBOX_OK && p->once) code = catch_up(st, p->batch_size, err);
    if (code != OUTBOX_OK) return code;
    code = outbox__pg_need_schema(st, err);
    if (code != OUTBOX_OK) return code;
    if (!w->blocked_loaded || w->blocked_stale || w->blocked_fba != p->failed_blocks_aggregate ||
        refresh_due(now - w->blocked_at_us, BLOCKED_REFRESH_US, 1)) {
        code = blocked_load(st, p->failed_blocks_aggregate, err);
        if (code != OUTBOX_OK) return code;
    }
    arr = outbox__calloc(p->batch_size, sizeof *arr);
    if (!arr) return outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
    code = route_and_claim(st, p, arr, p->batch_size, &count, err);
    if (code == OUTBOX_OK && count == 0 && p->once && !w->caught_up) {
        /* What is in memory cannot be published yet (held back, blocked):
         * read on, as far as the queue allows, before a --once relay is
         * told there is nothing left. */
        code = catch_up(st, SIZE_MAX, err);
        if (code == OUTBOX_OK) code = route_and_claim(st, p, arr, p->batch_size, &count, err);
    }
    if (code == OUTBOX_OK) code = flush_table(st, err);
    if (code != OUTBOX_OK) goto fail;
    advance_flush(w);
    maybe_send_status(st);
    if (count == 0 && refresh_due(now - w->blocked_at_us, BLOCKED_REFRESH_US, 0)) {
        code = blocked_load(st, p->failed_blocks_aggregate, err);
        if (code != OUTBOX_OK) goto fail;
    }

    /* The table's rows: pending ones of blocked aggregates, requeued ones,
     * rows written by table-mode producers. */
    if (count < p->batch_size &&
        (w->table_due || refresh_due(now - w->table_at_us, TABLE_POLL_US, count > 0))) {
        outbox_claim_params tp = *p;
        tp.batch_size = p->batch_size - count;
        w->table_at_us = now;
        if (pipelined) {
            if (exclude_count > w->positive_cap) {
                int64_t *grown = outbox__realloc(w->positive, exclude_count * sizeof *grown);
                if (!grown) {
                    code = outbox__error(err, OUTBOX_ENOMEM, "out of memory claiming");
                    goto fail;
                }
                w->positive = grown;
                w->positive_cap = exclude_count;
            }
            for (i = 0; i < exclude_count; i++)
                if (exclude[i] > 0) w->positive[npos++] = exclude[i];
            code = outbox__pg_claim_pipelined(st, &tp, w->positive, npos, &rows, &nrows, err);
        } else {
            code = outbox__pg_claim(st, &tp, &rows, &nrows, err);
        }
        if (code != OUTBOX_OK) goto fail;
        if (nrows < tp.batch_size) w->table_due = 0;
        for (i = 0; i < nrows; i++)
            arr[count++] = rows[i];
        outbox__free(rows);
    }
    if (count == 0) {
        outbox__free(arr);
        /* Nothing to publish while the stream is down: say why. */
        if (stream_code != OUTBOX_OK && err) *err = stream_err;
        return stream_code;
    }
    *msgs = arr;
    *n = count;
    return OUTBOX_OK;

fail:
    /* Claimed entries go back to READY (the relay never saw them). */
    for (i = 0; i < count; i++) {
        if (arr[i]->seq < 0) {
            wal_entry *e = entry_of(w, (uint64_t)(-arr[i]->seq));
            if (e && e->state == E_FLIGHT) e->state = E_READY;
        }
        outbox_msg_free(arr[i]);
    }
    outbox__free(arr);
    return code;
}

int outbox__pg_wal_claim(void *state, const outbox_claim_params *p, outbox_msg ***msgs, size_t *n,
                         outbox_error *err)
{
    return wal_claim(state, p, 0, NULL, 0, msgs, n, err);
}

int outbox__pg_wal_claim_pipelined(void *state, const outbox_claim_params *p,
                                   const int64_t *exclude, size_t exclude_count, outbox_msg ***msgs,
                                   size_t *n, outbox_error *err)
{
    return wal_claim(state, p, 1, exclude, exclude_count, msgs, n, err);
}

/* Applies the outcome of one message from memory. */
static int wal_outcome(pg_store *st, const outbox_completion *c, int fba)
{
    struct pg_wal *w = st->wal;
    wal_entry *e = entry_of(w, (uint64_t)(-c->msg->seq));

    if (!e || e->state != E_FLIGHT || !e->msg) return OUTBOX_OK; /* from before a reconnect */
    switch (c->outcome) {
    case OUTBOX_OUTCOME_SENT:
        e->state = E_DONE;
        break;
    case OUTBOX_OUTCOME_RETRY:
        e->state = E_WAIT;
        e->due_us = c->available_at;
        e->msg->attempts++;
        break;
    case OUTBOX_OUTCOME_FAILED:
        e->msg->attempts++;
        outbox__free(e->error);
        e->error = outbox__strdup(c->error ? c->error : "failed");
        if (!e->error) return OUTBOX_ENOMEM;
        e->state = E_TABLE;
        e->table_status = OUTBOX_STATUS_FAILED;
        w->ntable++;
        if (fba) return blocked_add(w, e->msg->aggregate_id);
        break;
    default:
        e->state = E_READY;
        break;
    }
    return OUTBOX_OK;
}

/* Records outcomes: those of WAL messages in memory (Failed ones into the
 * table), those of table rows as table mode does. */
static int wal_complete(pg_store *st, const outbox_completion *c, size_t n,
                        const outbox_complete_params *p, int pipelined, int in_flight,
                        outbox_error *err)
{
    struct pg_wal *w = st->wal;
    size_t i, ntable = 0;
    int code = OUTBOX_OK;

    for (i = 0; i < n; i++)
        if (!c[i].msg)
            return outbox__error(err, OUTBOX_EINVAL,
                                 "recording outcomes: completion %zu has no message", i);
    if (n > w->split_cap) {
        outbox_completion *grown = outbox__realloc(w->split, n * sizeof *grown);
        if (!grown) return outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        w->split = grown;
        w->split_cap = n;
    }
    for (i = 0; i < n; i++) {
        if (c[i].msg->seq > 0) {
            w->split[ntable++] = c[i];
        } else if (wal_outcome(st, &c[i], w->blocked_fba) != OUTBOX_OK) {
            w->blocked_stale = 1;
            code = outbox__error(err, OUTBOX_ENOMEM, "out of memory recording outcomes");
        }
    }
    if (ntable > 0) {
        int tcode = pipelined
                        ? outbox__pg_complete_pipelined(st, w->split, ntable, p, in_flight, err)
                        : outbox__pg_complete(st, w->split, ntable, p, err);
        if (tcode != OUTBOX_OK) return tcode;
        w->blocked_stale = 1; /* an aggregate may be free of the table now */
        w->table_due = 1;
        w->due_known = 0; /* a retry may be due later */
    }
    if (code != OUTBOX_OK) return code;
    code = flush_table(st, err);
    advance_flush(w);
    maybe_send_status(st);
    return code;
}

int outbox__pg_wal_complete(void *state, const outbox_completion *c, size_t n,
                            const outbox_complete_params *p, outbox_error *err)
{
    return wal_complete(state, c, n, p, 0, 0, err);
}

int outbox__pg_wal_complete_pipelined(void *state, const outbox_completion *c, size_t n,
                                      const outbox_complete_params *p, int in_flight,
                                      outbox_error *err)
{
    return wal_complete(state, c, n, p, 1, in_flight, err);
}

/* ------------------------------------------------------------------------
 * Waiting
 * ---------------------------------------------------------------------- */

int outbox__pg_wal_changed(void *state, int *changed, outbox_error *err)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;
    int code, table_changed = 0;

    code = outbox__pg_changed(state, &table_changed, err);
    if (code != OUTBOX_OK) return code;
    if (table_changed) w->table_due = 1;
    code = stream_read(st, err);
    if (code != OUTBOX_OK) return code;
    if (!w->streaming && outbox__monotonic_us() >= w->reconnect_at_us) table_changed = 1;
    *changed = table_changed || w->arrived > 0;
    w->arrived = 0;
    return OUTBOX_OK;
}

/* The table's earliest retry is read again only after this relay recorded
 * outcomes of table rows (only those set a retry time there) or
 * BLOCKED_REFRESH_US after the last read (another relay's), not before
 * every wait: each read is a round trip the stream's next commit may
 * have to wait for. */
int outbox__pg_wal_next_due(void *state, int64_t *due_us, outbox_error *err)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;
    int64_t now = outbox__monotonic_us();
    size_t i;

    if (!w->due_known || now - w->due_at_us >= BLOCKED_REFRESH_US) {
        int code = outbox__pg_next_due(state, &w->due_us, err);
        if (code != OUTBOX_OK) return code;
        w->due_known = !st->in_txn; /* next_due reads nothing inside a claim's transaction */
        w->due_at_us = now;
    }
    *due_us = w->due_us;
    for (i = 0; i < w->len; i++) {
        const wal_entry *e = entry_at(w, i);
        if (e->state == E_WAIT && (*due_us == 0 || e->due_us < *due_us)) *due_us = e->due_us;
    }
    return OUTBOX_OK;
}

/* The waiting flag makes table-mode enqueuers notify this relay.  While
 * commits arrive on the stream (the last one less than TABLE_POLL_US ago)
 * the relay is woken by the stream's socket, and setting and clearing the
 * flag around every commit cost two round trips the next commit could
 * arrive in (at 100 commits/s they took about a fifth of the relay's
 * time): the flag stays down, and rows written to the table meanwhile are
 * found by the table poll (wal_claim) within TABLE_POLL_US of the relay's
 * next claim with nothing from memory, at most twice that. */
int outbox__pg_wal_idle(void *state, int waiting, outbox_error *err)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;
    int code;

    if (waiting && w->streaming && w->commit_at_us != 0 &&
        outbox__monotonic_us() - w->commit_at_us < TABLE_POLL_US)
        return OUTBOX_OK;
    if (!waiting && !w->flag_up) return OUTBOX_OK;
    code = outbox__pg_idle(state, waiting, err);
    if (code == OUTBOX_OK) w->flag_up = waiting != 0;
    return code;
}

/* The replication connection's socket: readable when a commit (or a
 * keepalive) arrives. */
int outbox__pg_wal_wait_fd(void *state)
{
    pg_store *st = state;
    struct pg_wal *w = st->wal;
    if (!w->streaming) return outbox__pg_wait_fd(state);
    maybe_send_status(st);
    /* Paused, the stream's socket is left unread (stream_read) and would
     * stay readable: nothing it brings is read before a completion makes
     * room, so the table connection's tells what may change. */
    if (!w->in_txn && !queue_room(w)) return outbox__pg_wait_fd(state);
    return PQsocket(w->repl);
}

#else

/* Without libpq this file only keeps the translation unit non-empty. */
typedef int outbox__pg_wal_capture_not_built;

#endif /* OUTBOX_HAVE_LIBPQ */
