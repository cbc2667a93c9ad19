/*
 * relay.c - the relay loop: claim due messages from a store, publish them
 * through a transport, record the outcomes, and wait for more.
 *
 *   take the lease -> loop { claim -> publish -> outcomes -> complete } -> idle wait
 *
 * Outcomes (guarantees 2, 4, 5): a message is recorded SENT only when the
 * destination confirmed it.  Within a batch, once a message of an aggregate
 * did not succeed, the later messages of that aggregate are UNSENT (nothing
 * recorded, not an attempt): they are claimed again after it.  A failed
 * attempt is rescheduled with full-jitter exponential backoff, or moved to
 * Failed after max_attempts or when the destination rejected it for good.
 * Outcomes are recorded in one store transaction that also renews the lease.
 *
 * Destination outage: when the destination failed the batch as a whole, or
 * every message it tried failed with a retriable code (none confirmed, none
 * rejected), the failure is the destination's, not the messages': every
 * message is UNSENT (no attempt spent, so a long outage turns nothing
 * Failed; order and "sent only after confirmation" hold as for any UNSENT
 * message), and the relay pauses the whole destination before claiming
 * again (equal jitter, growing from backoff_base_ms to min(backoff_max_ms,
 * 30 s), longer when the destination sent Retry-After; the lease is renewed
 * meanwhile).  It logs once when the destination goes down and once when a
 * batch is answered again, and keeps a note in the store (lease_note) for
 * `outbox status` while it is down.  In once mode run() gives up after
 * 10 s of outage with the destination's error.
 *
 * outbox_relay_reopen (SIGHUP) sets a flag and wakes the loop, which asks
 * the destination to reopen its files before its next batch (with no
 * batch in flight).
 *
 * Pipelining (on when the store has the pipelined claim and complete and
 * the destination has publish_begin/publish_end, nats:// and kafka://: the
 * optional entries of their ops tables; the environment variable
 * OUTBOX_RELAY_PIPELINE=0 turns it off).  One step claims batch N+1 and
 * begins publishing it, then waits for
 * batch N's confirmations and records them, so the store's claim and
 * complete run while the broker acks N+1 instead of between batches:
 *
 *   claim N+1 -> begin N+1 -> end N (its acks) -> decide + complete N -> ...
 *
 * The window: two batches are out at most, unless the destination bounds
 * its own window (publish_room: kafka:// counts unconfirmed messages and
 * bytes); then a step claims and begins batch after batch while the window
 * has room, up to OUTBOX_PIPELINE_MAX_DEPTH, and ends the oldest once it
 * is full (or a claim came back short).  Batches end in the order they
 * began.  Everything below holds for any number of open batches ("N+1":
 * the ones after N).  Why this is safe:
 *   - Sent only after the ack (guarantee 2): outcomes come only from
 *     publish_end's results, as before; a stop finishes the batch in flight
 *     the same way, a fatal store error ends it unrecorded, a crash records
 *     nothing of it.
 *   - Exclusion: the claim of N+1 excludes the seqs of every open batch.
 *     The store keeps nothing open between claim and complete and hands no
 *     partition to another relay while a batch is out (SQLite: the relay is
 *     alone; PostgreSQL: the partition advisory locks, no rebalancing and no
 *     reconnect while a batch is out, instead of a second connection with a
 *     second FOR UPDATE transaction).  Excluding the seqs rather than
 *     claiming after the highest one keeps a retry that falls due below it
 *     in seq order with the rest of its aggregate.
 *   - Order (guarantee 4): the destination keeps an aggregate's order
 *     across the two batches (nats.c: a message is sent only once the
 *     previous message of its aggregate in either open batch is confirmed,
 *     and not at all when that one failed; kafka.c: the idempotent
 *     producer's per-partition order, as within one batch).  When a message of N fails,
 *     its aggregate also stays held back while N+1 is decided (the held set
 *     carries over), so later messages of it in N+1 are UNSENT, never
 *     recorded sent before it (were one acked, it would count as
 *     "acked but behind a failure" in the debug log).  Any batch that is not wholly
 *     sent stops the pipeline (drain): nothing more is claimed until N+1 is
 *     recorded too, so every claim sees all outcomes but those of the one
 *     batch in flight.
 *   - The pipeline is emptied whenever a claim comes back short, so the
 *     relay can go idle with nothing out, and, with a store whose relays
 *     share its partitions, so that it can give partitions up (only with
 *     nothing out): when the store says so (rebalance_wanted: PostgreSQL,
 *     which takes free partitions with batches out and asks only when it
 *     holds more than its share), else (partitions_held: MariaDB) at least
 *     every PIPELINE_SPAN_US.  A store held by one relay (SQLite) has
 *     nothing to rebalance.  Emptying a deep window stalls the relay for
 *     the recording of every open batch in turn (about a third of a busy
 *     Kafka relay's time, docs/BENCHMARKS.md).  Retries that fall due need
 *     no emptying: every claim excludes only the seqs in flight, so it
 *     sees them.
 *   - Claim ahead (stores with claim_ahead: SQLite on a store thread,
 *     PostgreSQL sent without waiting): right after a full batch is claimed,
 *     the claim of the next one is started, excluding every open batch and
 *     this one, and its batch is taken by the next step's claim.  It reads
 *     while this thread publishes and records the oldest batch, which is
 *     what bounds a deep window (the store's work and the producer's on one
 *     thread).  Recording the oldest while it reads is safe for the reason
 *     above (everything in flight is excluded); when a step ends with the
 *     pipeline draining (a failure or a message held back: the read may not
 *     have seen the retry that now blocks its aggregate), on an error, and
 *     when the relay stops, the batch read ahead is discarded unpublished.
 *   - Complete behind (stores with complete_behind: SQLite on another store thread):
 *     a wholly sent batch is recorded while this thread goes on; its slot
 *     (batches[REC_SLOT]) keeps its messages, and its seqs stay in every
 *     claim's exclude list, until the outcomes are written (the next such
 *     batch, or a step that ends with nothing in flight or the pipeline
 *     draining, waits for that).  Only then is it counted as published; when
 *     the write fails, its messages are published again, as when complete
 *     fails.  A batch with any other outcome is recorded in turn.
 *
 * Waiting: poll() on a self-pipe that outbox_relay_stop, outbox_relay_wake
 * and outbox_relay_reopen write to (one byte at most for wakes, coalesced by an atomic flag), with
 * a timeout bounded by the cheap change check, the next retry due time, the lease renewal and the
 * fallback poll interval.  The enqueuing code wakes the relay (through the in-process wake-up
 * registry, src/core/wake.c, where run() registers the store's wake_path) before its transaction
 * commits, so after a wake the relay checks for a commit every 200 us for up to 50 ms.
 *
 * Store errors during the loop (busy, I/O) are logged and retried after a
 * short, growing pause; only a lost lease or a missing schema ends run().
 *
 * Metrics (outbox_relay_get_metrics, read by the monitor's threads): the
 * counters are relaxed atomics; the histograms and the last error are
 * gathered per batch in `observed` by the loop alone, then merged into
 * `shown` under metrics_lock, which the loop only tries: while a reader
 * holds it, the observations wait for the next batch (or idle turn), so
 * the publish loop never waits for a scrape.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COMPONENT "relay"

/* The slot of the batch being recorded behind (complete_behind). */
#define REC_SLOT OUTBOX_PIPELINE_MAX_DEPTH

/* After a wake: how often and how long to look for the enqueuer's commit. */
#define WAKE_SPIN_STEP_US 200
#define WAKE_SPIN_TOTAL_US 50000
/* Pause after a store error: doubles from the first to the last value. */
#define STORE_RETRY_FIRST_MS 50
#define STORE_RETRY_MAX_MS 2000
/* In once mode (a drain that should finish), store errors in a row before
 * run() gives up and returns the last one (about 10 s of retrying). */
#define ONCE_MAX_STORE_FAILURES 8
/* Destination outage: the pause between rounds grows from backoff_base_ms
 * up to min(backoff_max_ms, this); a Retry-After the destination sent is
 * honoured up to max(backoff_max_ms, this). */
#define OUTAGE_PAUSE_CAP_MS 30000
/* In once mode, how long a destination may stay down before run() gives
 * up and returns the outage's error (like the store errors' budget). */
#define ONCE_OUTAGE_BUDGET_MS 10000
/* Pipelining: with a store whose relays share its partitions, the
 * pipeline is emptied at least this often, so that it can rebalance them. */
#define PIPELINE_SPAN_US 500000

/* Histogram bounds (outbox_histogram.le): seconds for commit-to-publish
 * and publish duration, messages for batch sizes.  The last is +Inf. */
static const double seconds_bounds[OUTBOX_HISTOGRAM_BUCKETS - 1] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double batch_bounds[OUTBOX_HISTOGRAM_BUCKETS - 1] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 100000};

/* Observations not yet shown (see the top of the file): the three
 * histograms' counts and sums, and the last error. */
typedef struct relay_observed {
    uint64_t commit[OUTBOX_HISTOGRAM_BUCKETS], duration[OUTBOX_HISTOGRAM_BUCKETS],
        batch[OUTBOX_HISTOGRAM_BUCKETS];
    double commit_sum, duration_sum, batch_sum;
    int dirty;
    char last_error[256]; /* "" when none since the last merge */
    int outage_changed;   /* outage_error below changed */
    char outage_error[256];
} relay_observed;

/* Set of aggregate ids that did not succeed in the current batch (and, when
 * pipelined, in the batch before it): the core's aggregate index, whose
 * keys are copies the set owns (a pipelined batch outlives the messages of
 * the one before). */
typedef struct agg_set {
    outbox_aggindex ids;
    int oom; /* an id could not be copied */
} agg_set;

/* One claimed batch and its per-message scratch (grown to the largest
 * batch seen). */
typedef struct relay_batch {
    outbox_msg **msgs; /* owned; NULL when the slot is free */
    size_t n;
    int open;                 /* publish_begin succeeded: publish_end is due */
    int chained;              /* begun while another batch was in flight */
    int whole_failed;         /* the destination failed it as a whole (fail_whole_batch) */
    int64_t publish_start_us; /* monotonic: when its publication began */
    outbox_publish_result *results;
    outbox_completion *completions;
    size_t *error_offsets; /* into errors.data, per message with an error */
    int64_t *seqs;         /* pipelined: msgs[i]->seq, copied once when claimed */
    size_t cap;
    outbox_buf errors;
} relay_batch;

struct outbox_relay {
    outbox_relay_options opts; /* strings point to the copies below */
    char *name;
    char *source;
    char store_shown[512]; /* redacted URLs for logs */
    char dest_shown[512];

    outbox_store store;
    outbox_transport transport;

    int pipe_rd, pipe_wr; /* self-pipe: stop and wake write one byte */
    atomic_int stop_requested;
    atomic_int wake_pending;
    atomic_int reopen_requested; /* outbox_relay_reopen: reopen before the next batch */
    atomic_int running;

    atomic_int lease_held; /* atomic: read by outbox_relay_get_metrics */
    /* What the store's partitions_held said after the last lease or claim
     * call (1 for a store without partitions); read with lease_held by
     * outbox_relay_get_metrics, which must not touch the store handle. */
    atomic_int partitions_owned;
    int store_waiting;     /* idle(1) succeeded; neither idle(0) nor a sleep since */
    int64_t last_renew_us; /* monotonic time of the last lease renewal */
    int64_t renew_due_us;  /* monotonic time of the next renewal attempt */

    /* batches[0] is the serial loop's; pipelining uses the first
     * OUTBOX_PIPELINE_MAX_DEPTH as a ring of open batches (the window),
     * oldest at window_first, and batches[REC_SLOT] for the batch being
     * recorded behind. */
    relay_batch batches[OUTBOX_PIPELINE_MAX_DEPTH + 1];
    agg_set held;

    /* Pipelining (see the top of the file). */
    int pipelining;            /* the store and the destination support it */
    int window_first;          /* the oldest batch begun, not completed yet */
    int window_count;          /* batches begun, not completed yet */
    int window_max_seen;       /* the most open at once (logged when it grows) */
    int drain;                 /* claim nothing until the pipeline is empty */
    int64_t pipeline_since_us; /* monotonic: when the pipeline last was empty */
    int64_t *exclude;          /* seqs of the open batches, for the claim */
    size_t exclude_cap;
    int ahead;                         /* a claim ahead (the store's claim_ahead) is out */
    int ahead_off;                     /* the store cannot claim ahead */
    int rec_busy;                      /* batches[REC_SLOT] is being recorded behind */
    int behind_off;                    /* the store cannot complete behind */
    outbox_complete_params rec_params; /* its complete's, kept until the end */

    /* Destination outage (see the top of the file). */
    int outage;      /* the last batch recorded was one: pause before the next */
    int outage_code; /* its error: code, text, Retry-After */
    char outage_error[256];
    int64_t outage_retry_after_ms;
    _Atomic int64_t down_since_us; /* wall clock; 0 while the destination is up */
    int64_t down_since_mono_us;
    unsigned outage_rounds; /* batches in a row that found it down */
    int noted;              /* a note is set through the store's lease_note */

    _Atomic uint64_t published, retried, failed, batches_done, publish_errors, quarantined;

    /* Metrics (see the top of the file). */
    _Atomic uint64_t failed_rejected, outage_publications, store_errors;
    atomic_int state;                /* OUTBOX_RELAY_* */
    _Atomic int64_t loop_turn_us;    /* monotonic: the loop's last turn */
    _Atomic int64_t outage_pause_ms; /* the current outage pause, 0 when up */
    relay_observed observed;         /* the loop's own */
    pthread_mutex_t metrics_lock;    /* guards shown */
    relay_observed shown;            /* merged: histograms and texts to show */
    char *store_url;                 /* as given (secrets included): never shown */
    char dest_label[256];            /* scheme and host of the destination */
};

/* ------------------------------------------------------------------------
 * Aggregate set
 * ---------------------------------------------------------------------- */

static void agg_set_clear(agg_set *set)
{
    size_t i;
    for (i = 0; set->ids.count > 0 && i < set->ids.cap; i++)
        outbox__free((char *)set->ids.slots[i].key); /* the set's own copies */
    outbox__aggindex_reset(&set->ids);
    set->oom = 0;
}

/* Makes room for n more insertions, keeping what the set holds; -1 when
 * out of memory. */
static int agg_set_reserve(agg_set *set, size_t n)
{
    return outbox__aggindex_reserve(&set->ids, n) == OUTBOX_OK ? 0 : -1;
}

static int agg_set_contains(const agg_set *set, const char *id)
{
    return outbox__aggindex_lookup(&set->ids, id, NULL);
}

/* Room must have been reserved (agg_set_reserve). */
static void agg_set_add(agg_set *set, const char *id)
{
    char *copy;
    if (outbox__aggindex_lookup(&set->ids, id, NULL)) return;
    copy = outbox__strdup(id);
    if (copy == NULL) {
        set->oom = 1;
        return;
    }
    outbox__aggindex_insert(&set->ids, copy, 0, NULL);
}

/* ------------------------------------------------------------------------
 * Creation
 * ---------------------------------------------------------------------- */

/* The destination as a metric label: its scheme and host, without
 * credentials, path or query ("https://hooks.example.com", "file:"). */
static void destination_label(const char *url, char *out, size_t len)
{
    const char *colon, *host, *end, *p;

    if (url == NULL) {
        snprintf(out, len, "callback:");
        return;
    }
    colon = strchr(url, ':');
    if (colon == NULL) {
        snprintf(out, len, "unknown:");
        return;
    }
    if (strncmp(colon, "://", 3) != 0) {
        snprintf(out, len, "%.*s:", (int)(colon - url), url);
        return;
    }
    host = colon + 3;
    end = host + strcspn(host, "/?#");
    for (p = host; p < end; p++)
        if (*p == '@') host = p + 1; /* user:password@ */
    snprintf(out, len, "%.*s://%.*s", (int)(colon - url), url, (int)(end - host), host);
}

static int check_options(const outbox_relay_options *o, outbox_error *err)
{
    if (o->batch_size < 1 || o->batch_size > 100000)
        return outbox__error(err, OUTBOX_ECONFIG, "batch_size is %u; use 1 to 100000 (default 512)",
                             o->batch_size);
    if (o->max_attempts < 1)
        return outbox__error(err, OUTBOX_ECONFIG, "max_attempts is 0; use at least 1 (default 10)");
    if (o->backoff_base_ms < 1)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "backoff_base_ms is 0; use at least 1 (default 500)");
    if (o->backoff_max_ms < o->backoff_base_ms)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "backoff_max_ms (%u) is smaller than backoff_base_ms (%u); "
                             "make it at least as large",
                             o->backoff_max_ms, o->backoff_base_ms);
    if (o->on_sent != OUTBOX_ON_SENT_DELETE && o->on_sent != OUTBOX_ON_SENT_MARK)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "on_sent is %d; use OUTBOX_ON_SENT_DELETE (0) or "
                             "OUTBOX_ON_SENT_MARK (1)",
                             o->on_sent);
    if (o->poll_interval_ms < 1)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "poll_interval_ms is 0; use at least 1 (default 1000)");
    if (o->change_check_ms < 1)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "change_check_ms is 0; use at least 1 (default 2)");
    if (o->lease_ttl_ms < 1000)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "lease_ttl_ms is %u; use at least 1000 (default 10000)",
                             o->lease_ttl_ms);
    if (o->source != NULL) {
        /* The source goes into every CloudEvent as a JSON string, escaped
         * but not repaired: text that is not UTF-8 would make every event
         * unreadable JSON.  json_string refuses exactly that text. */
        json_t *text = json_string(o->source);
        if (text == NULL)
            return outbox__error(err, OUTBOX_ECONFIG,
                                 "source is not valid UTF-8; give a URI reference such as "
                                 "/outbox (the default)");
        json_decref(text);
    }
    return OUTBOX_OK;
}

static int make_pipe(outbox_relay *r, outbox_error *err)
{
    int fds[2], i;
    if (pipe(fds) != 0)
        return outbox__error(err, OUTBOX_EIO, "cannot create the relay's wake-up pipe: %s",
                             strerror(errno));
    for (i = 0; i < 2; i++) {
        int fl = fcntl(fds[i], F_GETFL);
        if (fl < 0 || fcntl(fds[i], F_SETFL, fl | O_NONBLOCK) != 0 ||
            fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
            int e = errno;
            close(fds[0]);
            close(fds[1]);
            return outbox__error(err, OUTBOX_EIO, "cannot set up the relay's wake-up pipe: %s",
                                 strerror(e));
        }
    }
    r->pipe_rd = fds[0];
    r->pipe_wr = fds[1];
    return OUTBOX_OK;
}

/* Creates a relay (see outbox.h).  On failure *out is NULL and nothing is
 * left open; err names the option or URL at fault. */
int outbox_relay_new(outbox_relay **out, const char *store_url, const char *to_url,
                     const outbox_relay_options *opts, outbox_error *err)
{
    outbox_relay *r = NULL;
    outbox_transport_config cfg;
    char host[256];
    int rc, i;

    if (out == NULL) return outbox__error(err, OUTBOX_EINVAL, "outbox_relay_new: out is NULL");
    *out = NULL;
    if (store_url == NULL || store_url[0] == '\0')
        return outbox__error(err, OUTBOX_ECONFIG,
                             "no store URL: pass the outbox database, e.g. sqlite:app.db");

    r = outbox__calloc(1, sizeof *r);
    if (r == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the relay");
    r->pipe_rd = r->pipe_wr = -1;
    pthread_mutex_init(&r->metrics_lock, NULL);
    atomic_store(&r->loop_turn_us, outbox__monotonic_us());
    for (i = 0; i <= REC_SLOT; i++)
        outbox__buf_init(&r->batches[i].errors);
    /* Only the caller's size is read: fields past it keep their defaults. */
    outbox_relay_options_init(&r->opts);
    rc = opts == NULL ? OUTBOX_OK
                      : outbox__options_copy(&r->opts, sizeof r->opts, opts, opts->size,
                                             offsetof(outbox_relay_options, destination_options),
                                             "outbox_relay_new", "outbox_relay_options_init", err);
    if (rc == OUTBOX_OK) rc = check_options(&r->opts, err);
    if (rc != OUTBOX_OK) goto fail;
    if (to_url != NULL && r->opts.publish != NULL) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "both a destination URL and a publish callback were given; "
                           "pass one of them (to_url NULL for the callback)");
        goto fail;
    }
    if (to_url == NULL && r->opts.publish == NULL) {
        rc = outbox__error(err, OUTBOX_ECONFIG,
                           "no destination: pass a destination URL (e.g. file:events.jsonl, "
                           "stdout:) or set the publish callback in the options");
        goto fail;
    }

    if (r->opts.name != NULL && r->opts.name[0] != '\0') {
        r->name = outbox__strdup(r->opts.name);
    } else {
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        r->name = outbox__malloc(strlen(host) + 24);
        if (r->name) sprintf(r->name, "%s:%ld", host, (long)getpid());
    }
    r->source = outbox__strdup(r->opts.source && r->opts.source[0] ? r->opts.source : "/outbox");
    if (r->name == NULL || r->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the relay");
        goto fail;
    }
    r->opts.name = r->name;
    r->opts.source = r->source;

    outbox__url_redact(store_url, r->store_shown, sizeof r->store_shown);
    destination_label(to_url, r->dest_label, sizeof r->dest_label);
    r->store_url = outbox__strdup(store_url);
    if (r->store_url == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the relay");
        goto fail;
    }
    if (to_url)
        outbox__url_redact(to_url, r->dest_shown, sizeof r->dest_shown);
    else
        snprintf(r->dest_shown, sizeof r->dest_shown, "publish callback");

    rc = make_pipe(r, err);
    if (rc != OUTBOX_OK) goto fail;

    rc = outbox__store_open(&r->store, store_url, err);
    if (rc != OUTBOX_OK) {
        r->store.ops = NULL;
        goto fail;
    }
    rc = r->store.ops->check_schema(r->store.state, err);
    if (rc != OUTBOX_OK) goto fail;

    cfg.source = r->source;
    cfg.publish = r->opts.publish;
    cfg.publish_user = r->opts.publish_user;
    cfg.options = r->opts.destination_options;
    r->opts.destination_options = NULL; /* read here only: the caller keeps them */
    rc = outbox__transport_open(&r->transport, to_url, &cfg, err);
    if (rc != OUTBOX_OK) goto fail;

    {
        const char *env = getenv("OUTBOX_RELAY_PIPELINE");
        const outbox_store_ops *sops = r->store.ops;
        const outbox_transport_ops *tops = r->transport.ops;
        r->pipelining = OUTBOX__HAS(sops, 4, claim_pipelined) &&
                        OUTBOX__HAS(sops, 4, complete_pipelined) &&
                        OUTBOX__HAS(tops, 4, publish_begin) && OUTBOX__HAS(tops, 4, publish_end) &&
                        !(env != NULL && strcmp(env, "0") == 0);
        env = getenv("OUTBOX_RELAY_CLAIM_AHEAD");
        r->ahead_off = !OUTBOX__HAS(sops, 8, claim_ahead) ||
                       !OUTBOX__HAS(sops, 8, claim_ahead_end) ||
                       (env != NULL && strcmp(env, "0") == 0);
        env = getenv("OUTBOX_RELAY_COMPLETE_BEHIND");
        r->behind_off = !OUTBOX__HAS(sops, 8, complete_behind) ||
                        !OUTBOX__HAS(sops, 8, complete_behind_end) ||
                        (env != NULL && strcmp(env, "0") == 0);
    }

    *out = r;
    return OUTBOX_OK;

fail:
    outbox_relay_free(r);
    return rc;
}

/* ------------------------------------------------------------------------
 * Stop, wake, stats
 * ---------------------------------------------------------------------- */

/* Async-signal-safe: an atomic store and write(2), errno preserved (and the
 * transport's interrupt, also async-signal-safe, which cuts short a publish
 * waiting on a slow destination: its unconfirmed messages are retried).  The
 * request stays set: a run() started afterwards returns OUTBOX_OK at once
 * (a signal that arrives just before run() is not lost). */
void outbox_relay_stop(outbox_relay *relay)
{
    int saved_errno = errno;
    ssize_t w;
    if (relay == NULL) return;
    atomic_store(&relay->stop_requested, 1);
    if (relay->transport.ops != NULL && relay->transport.state != NULL &&
        OUTBOX__HAS(relay->transport.ops, 4, interrupt))
        relay->transport.ops->interrupt(relay->transport.state);
    w = write(relay->pipe_wr, "s", 1);
    (void)w; /* a full pipe already wakes the loop */
    errno = saved_errno;
}

/* Coalesced: at most one wake byte sits in the pipe.  Also async-signal-
 * safe. */
void outbox_relay_wake(outbox_relay *relay)
{
    int saved_errno = errno;
    ssize_t w;
    if (relay == NULL) return;
    if (atomic_exchange(&relay->wake_pending, 1) != 0) return;
    w = write(relay->pipe_wr, "w", 1);
    (void)w;
    errno = saved_errno;
}

/* The relay's callback in the in-process wake-up registry (core/wake.c):
 * an enqueue on the file the relay drains. */
static void wake_relay(void *user)
{
    outbox_relay_wake(user);
}

/* Async-signal-safe, like outbox_relay_wake: a flag the loop reads before
 * its next batch (reopen_destination), and a byte that ends a wait. */
void outbox_relay_reopen(outbox_relay *relay)
{
    int saved_errno = errno;
    ssize_t w;
    if (relay == NULL) return;
    atomic_store(&relay->reopen_requested, 1);
    w = write(relay->pipe_wr, "r", 1);
    (void)w;
    errno = saved_errno;
}

/* Counters are atomics: safe to read while run() executes. */

void outbox_relay_get_stats(const outbox_relay *relay, outbox_relay_stats *stats)
{
    if (stats == NULL) return;
    memset(stats, 0, sizeof *stats);
    if (relay == NULL) return;
    stats->published = atomic_load_explicit(&relay->published, memory_order_relaxed);
    stats->retried = atomic_load_explicit(&relay->retried, memory_order_relaxed);
    stats->failed = atomic_load_explicit(&relay->failed, memory_order_relaxed);
    stats->batches = atomic_load_explicit(&relay->batches_done, memory_order_relaxed);
    stats->publish_errors = atomic_load_explicit(&relay->publish_errors, memory_order_relaxed);
    stats->quarantined = atomic_load_explicit(&relay->quarantined, memory_order_relaxed);
}

/* ------------------------------------------------------------------------
 * Metrics (see the top of the file)
 * ---------------------------------------------------------------------- */

const char *outbox_relay_state_name(int state)
{
    switch (state) {
    case OUTBOX_RELAY_STARTING:
        return "starting";
    case OUTBOX_RELAY_RUNNING:
        return "running";
    case OUTBOX_RELAY_STANDBY:
        return "standby";
    case OUTBOX_RELAY_STOPPED:
        return "stopped";
    default:
        return "unknown";
    }
}

static void observe(uint64_t *counts, double *sum, const double *bounds, double value)
{
    size_t i = 0;
    while (i < OUTBOX_HISTOGRAM_BUCKETS - 1 && value > bounds[i])
        i++;
    counts[i]++;
    *sum += value;
}

static void loop_turned(outbox_relay *r)
{
    atomic_store_explicit(&r->loop_turn_us, outbox__monotonic_us(), memory_order_relaxed);
}

/* Keeps text as the relay's last error, shown at the next merge. */
static void note_error(outbox_relay *r, const char *text)
{
    snprintf(r->observed.last_error, sizeof r->observed.last_error, "%s", text);
    r->observed.dirty = 1;
}

/* Merges what the loop observed into what readers see, unless a reader
 * holds the lock right now: then it waits for the next call. */
static void metrics_merge(outbox_relay *r)
{
    relay_observed *o = &r->observed, *s = &r->shown;
    size_t i;

    if (!o->dirty || pthread_mutex_trylock(&r->metrics_lock) != 0) return;
    for (i = 0; i < OUTBOX_HISTOGRAM_BUCKETS; i++) {
        s->commit[i] += o->commit[i];
        s->duration[i] += o->duration[i];
        s->batch[i] += o->batch[i];
    }
    s->commit_sum += o->commit_sum;
    s->duration_sum += o->duration_sum;
    s->batch_sum += o->batch_sum;
    if (o->last_error[0]) memcpy(s->last_error, o->last_error, sizeof s->last_error);
    if (o->outage_changed) memcpy(s->outage_error, o->outage_error, sizeof s->outage_error);
    pthread_mutex_unlock(&r->metrics_lock);
    memset(o, 0, sizeof *o);
}

static void histogram_fill(outbox_histogram *h, const uint64_t *counts, double sum,
                           const double *bounds)
{
    size_t i;
    h->count = 0;
    for (i = 0; i < OUTBOX_HISTOGRAM_BUCKETS; i++) {
        h->le[i] = i < OUTBOX_HISTOGRAM_BUCKETS - 1 ? bounds[i] : INFINITY;
        h->counts[i] = counts[i];
        h->count += counts[i];
    }
    h->sum = sum;
}

/* Reads the atomics and, under metrics_lock, the merged histograms and
 * texts (the loop never waits for this lock: see metrics_merge). */
int outbox_relay_get_metrics(const outbox_relay *relay, outbox_relay_metrics *out)
{
    outbox_relay *r = (outbox_relay *)relay; /* for its lock only */
    outbox_relay_metrics m;
    uint64_t failed, rejected;
    int64_t turn, poll3;
    size_t size;

    if (relay == NULL || out == NULL || out->size < offsetof(outbox_relay_metrics, state))
        return OUTBOX_EINVAL;
    size = out->size < sizeof m ? out->size : sizeof m;
    memset(&m, 0, sizeof m);
    m.size = size;
    m.published = atomic_load_explicit(&r->published, memory_order_relaxed);
    m.retried = atomic_load_explicit(&r->retried, memory_order_relaxed);
    failed = atomic_load_explicit(&r->failed, memory_order_relaxed);
    rejected = atomic_load_explicit(&r->failed_rejected, memory_order_relaxed);
    m.failed = failed;
    m.failed_rejected = rejected;
    m.failed_max_attempts = failed > rejected ? failed - rejected : 0;
    m.quarantined = atomic_load_explicit(&r->quarantined, memory_order_relaxed);
    m.outage_publications = atomic_load_explicit(&r->outage_publications, memory_order_relaxed);
    m.publish_errors = atomic_load_explicit(&r->publish_errors, memory_order_relaxed);
    m.batches = atomic_load_explicit(&r->batches_done, memory_order_relaxed);
    m.store_errors = atomic_load_explicit(&r->store_errors, memory_order_relaxed);
    m.state = atomic_load(&r->state);
    m.lease_held = atomic_load(&r->lease_held) != 0;
    m.partitions_owned = m.lease_held ? atomic_load(&r->partitions_owned) : 0;
    m.down_since_us = atomic_load(&r->down_since_us);
    m.destination_up = m.down_since_us == 0;
    m.destination_backoff_seconds =
        m.destination_up ? 0.0 : (double)atomic_load(&r->outage_pause_ms) / 1000.0;
    turn = atomic_load_explicit(&r->loop_turn_us, memory_order_relaxed);
    m.loop_age_us = outbox__monotonic_us() - turn;
    if (m.loop_age_us < 0) m.loop_age_us = 0;
    poll3 = (int64_t)r->opts.poll_interval_ms * 3000;
    m.deadline_us = (int64_t)r->opts.lease_ttl_ms * 1000;
    if (poll3 > m.deadline_us) m.deadline_us = poll3;
    if (m.deadline_us < 10000000) m.deadline_us = 10000000;
    snprintf(m.name, sizeof m.name, "%s", r->name);
    snprintf(m.store, sizeof m.store, "%.255s", r->store_shown);
    snprintf(m.store_scheme, sizeof m.store_scheme, "%s",
             r->store.ops != NULL ? r->store.ops->scheme : "");
    snprintf(m.destination, sizeof m.destination, "%s", r->dest_label);

    pthread_mutex_lock(&r->metrics_lock);
    memcpy(m.last_error, r->shown.last_error, sizeof m.last_error);
    if (!m.destination_up) memcpy(m.outage_error, r->shown.outage_error, sizeof m.outage_error);
    histogram_fill(&m.commit_to_publish, r->shown.commit, r->shown.commit_sum, seconds_bounds);
    histogram_fill(&m.publish_duration, r->shown.duration, r->shown.duration_sum, seconds_bounds);
    histogram_fill(&m.batch_messages, r->shown.batch, r->shown.batch_sum, batch_bounds);
    pthread_mutex_unlock(&r->metrics_lock);

    memcpy(out, &m, size);
    return OUTBOX_OK;
}

/* The store URL as given (with its secrets), for the monitor's own store
 * handle: never shown. */
const char *outbox__relay_store_url(const outbox_relay *relay)
{
    return relay->store_url;
}

static int stopping(outbox_relay *r)
{
    return atomic_load(&r->stop_requested) != 0;
}

static int reopen_pending(outbox_relay *r)
{
    return atomic_load(&r->reopen_requested) != 0;
}

/* Empties the self-pipe, then clears the wake flag (in that order: a wake
 * between the two is covered by the change check that follows). */
static void drain_pipe(outbox_relay *r)
{
    char junk[64];
    while (read(r->pipe_rd, junk, sizeof junk) > 0) {
    }
    atomic_store(&r->wake_pending, 0);
}

/* Waits up to timeout_ms for a byte on the pipe.  Returns 1 when woken
 * (the pipe drained), 0 on timeout (or EINTR: callers re-check their
 * deadlines). */
static int wait_pipe(outbox_relay *r, int64_t timeout_ms)
{
    struct pollfd p;
    int n;
    if (timeout_ms < 0) timeout_ms = 0;
    if (timeout_ms > 3600000) timeout_ms = 3600000;
    p.fd = r->pipe_rd;
    p.events = POLLIN;
    p.revents = 0;
    n = poll(&p, 1, (int)timeout_ms);
    if (n > 0 && (p.revents & POLLIN)) {
        drain_pipe(r);
        return 1;
    }
    return 0;
}

/* wait_pipe that also polls fd (>= 0) of the store.  Returns 1 when woken
 * through the pipe, 2 when fd is readable, 0 on timeout. */
static int wait_pipe_or_fd(outbox_relay *r, int64_t timeout_ms, int fd)
{
    struct pollfd p[2];
    int n;
    if (fd < 0) return wait_pipe(r, timeout_ms);
    if (timeout_ms < 0) timeout_ms = 0;
    if (timeout_ms > 3600000) timeout_ms = 3600000;
    p[0].fd = r->pipe_rd;
    p[0].events = POLLIN;
    p[0].revents = 0;
    p[1].fd = fd;
    p[1].events = POLLIN;
    p[1].revents = 0;
    n = poll(p, 2, (int)timeout_ms);
    if (n > 0 && (p[0].revents & POLLIN)) {
        drain_pipe(r);
        return 1;
    }
    if (n > 0 && p[1].revents != 0) return 2;
    return 0;
}

/* Sleeps ms unless stopped first. */
static void pause_ms(outbox_relay *r, int64_t ms)
{
    int64_t end = outbox__monotonic_us() + ms * 1000;
    while (!stopping(r)) {
        int64_t left = end - outbox__monotonic_us();
        loop_turned(r);
        if (left <= 0) break;
        wait_pipe(r, (left + 999) / 1000);
    }
}

/* ------------------------------------------------------------------------
 * One batch
 * ---------------------------------------------------------------------- */

static int grow_scratch(relay_batch *b, size_t n)
{
    size_t cap;
    void *p;
    if (n <= b->cap) return 0;
    cap = b->cap ? b->cap : 64;
    while (cap < n)
        cap *= 2;
    p = outbox__realloc(b->results, cap * sizeof *b->results);
    if (p == NULL) return -1;
    b->results = p;
    p = outbox__realloc(b->completions, cap * sizeof *b->completions);
    if (p == NULL) return -1;
    b->completions = p;
    p = outbox__realloc(b->error_offsets, cap * sizeof *b->error_offsets);
    if (p == NULL) return -1;
    b->error_offsets = p;
    p = outbox__realloc(b->seqs, cap * sizeof *b->seqs);
    if (p == NULL) return -1;
    b->seqs = p;
    b->cap = cap;
    return 0;
}

static void free_batch(outbox_msg **msgs, size_t n)
{
    size_t i;
    if (msgs == NULL) return;
    for (i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    outbox__free(msgs);
}

/* Frees a slot's messages; the slot is free again (scratch kept). */
static void release_batch(relay_batch *b)
{
    free_batch(b->msgs, b->n);
    b->msgs = NULL;
    b->n = 0;
    b->open = 0;
    b->chained = 0;
    b->whole_failed = 0;
}

static int fatal_store_error(int rc)
{
    return rc == OUTBOX_ELEASELOST || rc == OUTBOX_ENOSCHEMA || rc == OUTBOX_ESCHEMANEWER;
}

/* Gives every message of b the same whole-batch error result; the batch is
 * a destination outage (decide_outcomes).  with_reason: results[0].error
 * holds the destination's reason (see outbox_transport_ops.publish). */
static void fail_whole_batch(relay_batch *b, int rc, int with_reason)
{
    int code = rc == OUTBOX_EREJECTED ? OUTBOX_EPUBLISH : rc;
    char why[sizeof b->results[0].error];
    size_t i;

    if (b->n == 0) return;
    if (with_reason && b->results[0].error[0] != '\0')
        snprintf(why, sizeof why, "%s", b->results[0].error);
    else
        snprintf(why, sizeof why, "the destination failed the whole batch: %s",
                 outbox_strerror(rc));
    b->whole_failed = 1;
    for (i = 0; i < b->n; i++) {
        b->results[i].code = code;
        b->results[i].retry_after_ms = 0;
        memcpy(b->results[i].error, why, sizeof why);
    }
}

/* Whether b, just published, is a destination outage rather than failures
 * of its messages (see the top of the file): the destination failed it as
 * a whole, or every message it tried failed with a retriable code (none
 * confirmed, none rejected).  Messages held behind the batch before
 * (r->held, before decide_outcomes adds to it) and ones cut short by a stop
 * say nothing either way.  On 1, r->outage_* describe it. */
static int batch_is_outage(outbox_relay *r, const relay_batch *b)
{
    const outbox_publish_result *first = NULL;
    int64_t retry_after = 0;
    size_t i;

    if (b->whole_failed) {
        first = &b->results[0];
    } else {
        for (i = 0; i < b->n; i++) {
            const outbox_publish_result *res = &b->results[i];
            if (agg_set_contains(&r->held, b->msgs[i]->aggregate_id)) continue;
            if (res->code == OUTBOX_OK || res->code == OUTBOX_EREJECTED) return 0;
            if (res->code == OUTBOX_ESTOPPED && stopping(r)) continue;
            if (!outbox_err_retriable(res->code)) return 0;
            if (first == NULL) first = res;
            if (res->retry_after_ms > retry_after) retry_after = res->retry_after_ms;
        }
        if (first == NULL) return 0;
    }
    r->outage_code = first->code;
    r->outage_retry_after_ms = retry_after;
    snprintf(r->outage_error, sizeof r->outage_error, "%s",
             first->error[0] ? first->error : outbox_strerror(first->code));
    return 1;
}

/* Decides each message's outcome from its publish result (see the top of
 * the file).  Fills b->completions[0..n); counts into *sent etc. (*rejected:
 * of *failed, those the destination refused); *errors:
 * messages whose publication failed (charged or not); *outage: the batch
 * was a destination outage (every message unsent, nothing charged).  The
 * set of aggregates held back starts empty, unless b was published while
 * the batch before it was in flight: then what that batch held back holds
 * here too. */
static int decide_outcomes(outbox_relay *r, relay_batch *b, int64_t now_us, size_t *sent,
                           size_t *retried, size_t *failed, size_t *rejected, size_t *held,
                           size_t *carried, size_t *errors, int *outage)
{
    const outbox_relay_options *o = &r->opts;
    outbox_msg **msgs = b->msgs;
    size_t i, n = b->n, first_held;

    if (!b->chained) agg_set_clear(&r->held);
    first_held = r->held.ids.count; /* held over from the batch before */
    *carried = 0;
    *errors = 0;
    *outage = batch_is_outage(r, b);
    if (agg_set_reserve(&r->held, n) != 0) return OUTBOX_ENOMEM;
    outbox__buf_reset(&b->errors);
    *sent = *retried = *failed = *rejected = *held = 0;

    for (i = 0; i < n; i++) {
        const outbox_msg *m = msgs[i];
        const outbox_publish_result *res = &b->results[i];
        outbox_completion *c = &b->completions[i];
        unsigned attempt;

        c->msg = m;
        c->available_at = 0;
        c->error = NULL;
        b->error_offsets[i] = (size_t)-1;

        if (agg_set_contains(&r->held, m->aggregate_id)) {
            c->outcome = OUTBOX_OUTCOME_UNSENT;
            (*held)++;
            if (first_held > 0 && res->code == OUTBOX_OK) (*carried)++;
            continue;
        }
        if (res->code == OUTBOX_OK) {
            c->outcome = OUTBOX_OUTCOME_SENT;
            (*sent)++;
            continue;
        }
        if (res->code == OUTBOX_ESTOPPED && stopping(r)) {
            /* Cut short by outbox_relay_stop (transport interrupt): not an
             * attempt; left as it was, like a crash mid-request. */
            agg_set_add(&r->held, m->aggregate_id);
            c->outcome = OUTBOX_OUTCOME_UNSENT;
            (*held)++;
            continue;
        }

        agg_set_add(&r->held, m->aggregate_id);
        (*errors)++;
        if (*outage) {
            /* The destination's condition, not the message's: no attempt. */
            c->outcome = OUTBOX_OUTCOME_UNSENT;
            (*held)++;
            continue;
        }
        attempt = (unsigned)(m->attempts < 0 ? 0 : m->attempts) + 1;
        b->error_offsets[i] = b->errors.len;
        outbox__buf_printf(&b->errors, "attempt %u/%u: %s", attempt, o->max_attempts,
                           res->error[0] ? res->error : outbox_strerror(res->code));
        outbox__buf_append(&b->errors, "", 1); /* keep the NUL: strings are packed */

        if (res->code == OUTBOX_EREJECTED || attempt >= o->max_attempts) {
            c->outcome = OUTBOX_OUTCOME_FAILED;
            (*failed)++;
            if (res->code == OUTBOX_EREJECTED) (*rejected)++;
            outbox__log_msg(OUTBOX_LOG_ERROR, COMPONENT, m, attempt, r->dest_shown,
                            "message %s (aggregate %s) failed for good after attempt %u/%u%s: %s",
                            m->id, m->aggregate_id, attempt, o->max_attempts,
                            res->code == OUTBOX_EREJECTED ? " (rejected by the destination)" : "",
                            res->error[0] ? res->error : outbox_strerror(res->code));
        } else {
            int64_t delay = outbox__backoff_ms(attempt, o->backoff_base_ms, o->backoff_max_ms);
            if (res->retry_after_ms > delay) delay = res->retry_after_ms;
            c->outcome = OUTBOX_OUTCOME_RETRY;
            c->available_at = now_us + delay * 1000;
            (*retried)++;
            outbox__log_msg(OUTBOX_LOG_WARN, COMPONENT, m, attempt, r->dest_shown,
                            "message %s attempt %u/%u failed, next try in %lld ms: %s", m->id,
                            attempt, o->max_attempts, (long long)delay,
                            res->error[0] ? res->error : outbox_strerror(res->code));
        }
    }
    if (b->errors.oom || r->held.oom) return OUTBOX_ENOMEM;
    for (i = 0; i < n; i++)
        if (b->error_offsets[i] != (size_t)-1)
            b->completions[i].error = b->errors.data + b->error_offsets[i];
    return OUTBOX_OK;
}

/* Sets (note non-NULL) or clears the relay's note in the store, shown by
 * `outbox status`, when the store keeps notes.  Best effort: a failure
 * only leaves status less informed. */
static void set_note(outbox_relay *r, const char *note)
{
    outbox_error e;
    if (!OUTBOX__HAS(r->store.ops, 5, lease_note)) return;
    if (note == NULL && !r->noted) return;
    e.code = 0;
    e.message[0] = '\0';
    if (r->store.ops->lease_note(r->store.state, r->name, note, &e) != OUTBOX_OK) {
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: cannot store its note: %s", r->name,
                    e.message);
        return;
    }
    r->noted = note != NULL;
}

/* Follows the destination's state from a recorded batch: an outage (the
 * first one logs, notes and starts the clock; each one asks for a pause
 * before the next batch), or an answer (the destination took or refused a
 * message: it is up; the first after an outage logs and clears the
 * note).  Neither: nothing learnt. */
static void destination_observed(outbox_relay *r, int outage, int answered)
{
    char note[256], when[32];

    if (outage) {
        r->outage = 1;
        r->outage_rounds++;
        if (r->down_since_us != 0) return;
        r->down_since_us = outbox__now_us();
        r->down_since_mono_us = outbox__monotonic_us();
        memcpy(r->observed.outage_error, r->outage_error, sizeof r->observed.outage_error);
        r->observed.outage_changed = 1;
        r->observed.dirty = 1;
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "relay %s: destination %s is down: %s; backing off, no attempts are "
                    "charged",
                    r->name, r->dest_shown, r->outage_error);
        outbox_time_format(r->down_since_us, when);
        snprintf(note, sizeof note, "destination down since %s: %.190s", when, r->outage_error);
        set_note(r, note);
        return;
    }
    if (!answered || r->down_since_us == 0) return;
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "relay %s: destination %s is back after %lld s, %u batches held", r->name,
                r->dest_shown,
                (long long)((outbox__monotonic_us() - r->down_since_mono_us + 500000) / 1000000),
                r->outage_rounds);
    r->outage = 0;
    r->outage_rounds = 0;
    r->down_since_us = 0;
    atomic_store(&r->outage_pause_ms, 0);
    r->observed.outage_error[0] = '\0';
    r->observed.outage_changed = 1;
    r->observed.dirty = 1;
    set_note(r, NULL);
}

/* Counts the outcomes of batch b, just recorded (its completions filled),
 * in the relay's counters and histograms. */
static void count_recorded(outbox_relay *r, const relay_batch *b, int64_t now_us, size_t retried,
                           size_t failed, size_t rejected, size_t held, size_t carried, int outage,
                           int behind)
{
    size_t i, n = b->n, sent = 0;

    r->last_renew_us = outbox__monotonic_us();
    if (OUTBOX_FAULT("after_mark_sent") != 0)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "injected fault after_mark_sent (ignored)");
    /* Commit to publish: from the message's creation (occurred_at, set just
     * before its enqueue committed) to now, after the confirmation. */
    for (i = 0; i < n; i++)
        if (b->completions[i].outcome == OUTBOX_OUTCOME_SENT) {
            int64_t age_us = now_us - b->msgs[i]->occurred_at;
            observe(r->observed.commit, &r->observed.commit_sum, seconds_bounds,
                    age_us > 0 ? (double)age_us / 1e6 : 0.0);
            r->observed.dirty = 1;
            sent++;
        }
    atomic_fetch_add_explicit(&r->published, sent, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->retried, retried, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->failed_rejected, rejected, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->failed, failed, memory_order_relaxed);
    metrics_merge(r);
    if (outbox__log_enabled(OUTBOX_LOG_DEBUG))
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "batch of %zu%s: %zu sent, %zu retrying, %zu failed, %zu held back "
                    "(%zu acked but behind a failure in the batch before)%s%s",
                    n, b->chained ? " (pipelined)" : "", sent, retried, failed, held, carried,
                    outage ? "; the destination is down: nothing charged" : "",
                    behind ? "; recorded behind" : "");
}

static int complete_behind(outbox_relay *r, relay_batch *b, const outbox_complete_params *done,
                           int in_flight, outbox_error *err);

/* Decides and records the outcomes of a published batch b (its results
 * filled).  pipelined/in_flight go to the store's complete.  *held_back
 * receives how many messages were held back or left unrecorded. */
static int record_batch(outbox_relay *r, relay_batch *b, int pipelined, int in_flight,
                        size_t *held_back, outbox_error *err)
{
    outbox_complete_params done;
    size_t n = b->n, sent, retried, failed, rejected, held, carried, errors, i;
    int64_t now_us = outbox__now_us();
    int rc, outage;

    *held_back = 0;
    rc = decide_outcomes(r, b, now_us, &sent, &retried, &failed, &rejected, &held, &carried,
                         &errors, &outage);
    if (rc != OUTBOX_OK)
        return outbox__error(err, rc, "out of memory recording a batch of %zu messages", n);
    atomic_fetch_add_explicit(&r->publish_errors, errors, memory_order_relaxed);
    if (outage) {
        atomic_fetch_add_explicit(&r->outage_publications, errors, memory_order_relaxed);
        note_error(r, r->outage_error);
    } else if (errors > 0) {
        for (i = 0; i < n; i++)
            if (b->completions[i].error != NULL) {
                note_error(r, b->completions[i].error);
                break;
            }
    }
    destination_observed(r, outage, sent + retried + failed > 0);

    if (OUTBOX_FAULT("before_mark_sent") != 0) {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "injected fault before_mark_sent: %zu outcomes not recorded "
                    "(the messages are published again)",
                    n);
        *held_back = n;
        return OUTBOX_OK;
    }
    memset(&done, 0, sizeof done);
    done.on_sent = r->opts.on_sent;
    done.now_us = now_us;
    done.lease_owner = r->name;
    done.lease_ttl_ms = r->opts.lease_ttl_ms;
    /* A wholly sent batch of the pipeline: recorded behind when the store
     * can, while the relay goes on (see the top of the file). */
    if (pipelined && sent == n && !r->behind_off) {
        rc = complete_behind(r, b, &done, in_flight, err);
        if (rc != OUTBOX_ENOTBUILT) {
            *held_back = 0;
            return rc;
        }
    }
    if (pipelined)
        rc = r->store.ops->complete_pipelined(r->store.state, b->completions, n, &done, in_flight,
                                              err);
    else
        rc = r->store.ops->complete(r->store.state, b->completions, n, &done, err);
    if (rc != OUTBOX_OK) return rc;
    *held_back = held;
    count_recorded(r, b, now_us, retried, failed, rejected, held, carried, outage, 0);
    return OUTBOX_OK;
}

/* Ends the batch being recorded behind, if any: waits for its outcomes to
 * be written and counts them.  Its messages are released either way; when
 * they were not recorded (an error), they are claimed and published again,
 * after the pipeline drains. */
static int recording_end(outbox_relay *r, outbox_error *err)
{
    relay_batch *b = &r->batches[REC_SLOT];
    outbox_error e;
    int rc;

    if (!r->rec_busy) return OUTBOX_OK;
    r->rec_busy = 0;
    rc = r->store.ops->complete_behind_end(r->store.state, err ? err : &e);
    if (rc == OUTBOX_OK)
        count_recorded(r, b, r->rec_params.now_us, 0, 0, 0, 0, 0, 0, 1);
    else
        r->drain = 1;
    release_batch(b);
    return rc;
}

/* Starts recording the wholly sent batch b behind: b's messages and
 * outcomes move to batches[REC_SLOT] (b gets that slot's empty scratch),
 * after the batch recorded behind before it has ended.  OUTBOX_ENOTBUILT:
 * the store cannot; b is as it was, for complete_pipelined. */
static int complete_behind(outbox_relay *r, relay_batch *b, const outbox_complete_params *done,
                           int in_flight, outbox_error *err)
{
    relay_batch *rec = &r->batches[REC_SLOT], tmp;
    outbox_error e;
    int rc = recording_end(r, err);

    if (rc != OUTBOX_OK) return rc;
    tmp = *rec;
    *rec = *b;
    *b = tmp;
    r->rec_params = *done;
    rc = r->store.ops->complete_behind(r->store.state, rec->completions, rec->n, &r->rec_params,
                                       in_flight, &e);
    if (rc == OUTBOX_OK) {
        r->rec_busy = 1;
        return OUTBOX_OK;
    }
    tmp = *rec;
    *rec = *b;
    *b = tmp;
    if (rc == OUTBOX_EFAULT) { /* an injected failure of the recording itself */
        if (err) *err = e;
        return rc;
    }
    if (rc == OUTBOX_ENOTBUILT) r->behind_off = 1;
    outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: recording in turn: %s", r->name, e.message);
    return OUTBOX_ENOTBUILT;
}

static void observe_batch(outbox_relay *r, size_t n)
{
    observe(r->observed.batch, &r->observed.batch_sum, batch_bounds, (double)n);
    r->observed.dirty = 1;
}

/* The publication of b, begun at b->publish_start_us, has its results. */
static void observe_publish_duration(outbox_relay *r, const relay_batch *b)
{
    int64_t us = outbox__monotonic_us() - b->publish_start_us;
    observe(r->observed.duration, &r->observed.duration_sum, seconds_bounds,
            us > 0 ? (double)us / 1e6 : 0.0);
    r->observed.dirty = 1;
}

/* Claims, publishes and records one batch.  *claimed receives the number of
 * messages claimed, *held_back how many were held behind a failure of their
 * aggregate or left unrecorded by an injected fault (they may be claimable
 * right away: the caller claims again instead of waiting).  Returns OUTBOX_OK, or a store error
 * (the caller pauses and retries, or ends on a fatal one). */
static int run_batch(outbox_relay *r, size_t *claimed, size_t *held_back, outbox_error *err)
{
    relay_batch *b = &r->batches[0];
    outbox_claim_params cp;
    uint64_t quarantined = 0;
    int rc;

    *claimed = 0;
    *held_back = 0;
    memset(&cp, 0, sizeof cp);
    cp.batch_size = r->opts.batch_size;
    cp.now_us = outbox__now_us();
    cp.failed_blocks_aggregate = r->opts.failed_blocks_aggregate;
    cp.once = r->opts.once;
    cp.quarantined = &quarantined;
    rc = r->store.ops->claim(r->store.state, &cp, &b->msgs, &b->n, err);
    atomic_fetch_add_explicit(&r->quarantined, quarantined, memory_order_relaxed);
    if (rc != OUTBOX_OK) return rc;
    *claimed = b->n;
    if (b->n == 0) goto out;
    atomic_fetch_add_explicit(&r->batches_done, 1, memory_order_relaxed);
    observe_batch(r, b->n);

    if (OUTBOX_FAULT("after_claim") != 0) {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "injected fault after_claim: dropping a batch of %zu unpublished", b->n);
        *held_back = b->n;
        goto out;
    }
    if (grow_scratch(b, b->n) != 0) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory for a batch of %zu messages", b->n);
        goto out;
    }

    b->results[0].error[0] = '\0';
    b->publish_start_us = outbox__monotonic_us();
    rc = r->transport.ops->publish(r->transport.state, b->msgs, b->n, b->results);
    observe_publish_duration(r, b);
    if (rc != OUTBOX_OK) {
        fail_whole_batch(b, rc, 1);
    } else if (OUTBOX_FAULT("after_publish") != 0) {
        b->results[0].error[0] = '\0';
        fail_whole_batch(b, OUTBOX_EFAULT, 0);
    }
    rc = record_batch(r, b, 0, 0, held_back, err);

out:
    release_batch(b);
    return rc;
}

/* ------------------------------------------------------------------------
 * Pipelined batches
 * ---------------------------------------------------------------------- */

/* The k-th open batch of the window, oldest first. */
static relay_batch *window_at(outbox_relay *r, int k)
{
    return &r->batches[(r->window_first + k) % OUTBOX_PIPELINE_MAX_DEPTH];
}

/* May one more batch be begun?  The destination's own window when it has
 * one (publish_room: unconfirmed messages and bytes), else
 * OUTBOX_PIPELINE_DEPTH batches; never more than the ring holds. */
static int window_has_room(outbox_relay *r)
{
    const outbox_transport_ops *tops = r->transport.ops;
    if (r->window_count >= OUTBOX_PIPELINE_MAX_DEPTH) return 0;
    if (OUTBOX__HAS(tops, 5, publish_room))
        return tops->publish_room(r->transport.state, r->window_count, r->opts.batch_size);
    return r->window_count < OUTBOX_PIPELINE_DEPTH;
}

/* Waits for the oldest open batch's results and records them (see the top
 * of the file); its slot is free afterwards.  A batch not wholly sent stops
 * the pipeline (drain) until the ones after it are recorded too. */
static int finish_oldest(outbox_relay *r, size_t *held_back, outbox_error *err)
{
    relay_batch *b = window_at(r, 0);
    int rc = OUTBOX_OK;
    size_t i;

    *held_back = 0;
    r->window_first = (r->window_first + 1) % OUTBOX_PIPELINE_MAX_DEPTH;
    r->window_count--;
    if (b->open) {
        rc = r->transport.ops->publish_end(r->transport.state, b->msgs, b->n, b->results);
        b->open = 0;
    }
    observe_publish_duration(r, b);
    if (rc == OUTBOX_OK && OUTBOX_FAULT("after_publish") != 0) rc = OUTBOX_EFAULT;
    if (rc != OUTBOX_OK) fail_whole_batch(b, rc, 0);
    for (i = 0; i < b->n; i++)
        if (b->results[i].code != OUTBOX_OK) r->drain = 1;
    rc = record_batch(r, b, 1, r->window_count > 0, held_back, err);
    if (rc != OUTBOX_OK || *held_back > 0) r->drain = 1;
    release_batch(b);
    return rc;
}

/* Fills r->exclude with the seqs of every open batch; *count: how many.
 * -1 when out of memory.  The seqs come from each batch's own copy
 * (relay_batch.seqs): reading them through the messages cost a cache miss
 * per message in flight at every claim (20,000 with Kafka's window).  They
 * go in claim order, the batch recorded behind (the oldest) first, so that
 * in a drain the list is already sorted and the store need not sort it
 * (outbox__stretches_between). */
static int window_seqs(outbox_relay *r, const relay_batch *extra, size_t *count)
{
    const relay_batch *rec = r->rec_busy ? &r->batches[REC_SLOT] : NULL;
    size_t total = (extra ? extra->n : 0) + (rec ? rec->n : 0), at = 0;
    int k;
    for (k = 0; k < r->window_count; k++)
        total += window_at(r, k)->n;
    if (total > r->exclude_cap) {
        int64_t *e = outbox__realloc(r->exclude, total * sizeof *e);
        if (e == NULL) return -1;
        r->exclude = e;
        r->exclude_cap = total;
    }
    /* Recorded behind: maybe not yet written, so still pending. */
    if (rec && rec->n > 0) {
        memcpy(r->exclude, rec->seqs, rec->n * sizeof *rec->seqs);
        at = rec->n;
    }
    for (k = 0; k < r->window_count; k++) {
        const relay_batch *b = window_at(r, k);
        if (b->n > 0) memcpy(r->exclude + at, b->seqs, b->n * sizeof *b->seqs);
        at += b->n;
    }
    if (extra && extra->n > 0) memcpy(r->exclude + at, extra->seqs, extra->n * sizeof *extra->seqs);
    *count = total;
    return 0;
}

/* Discards the batch read ahead, if a claim ahead is out (see the top of
 * the file): its messages stay pending, nothing was published. */
static void ahead_drop(outbox_relay *r)
{
    outbox_msg **msgs = NULL;
    size_t n = 0;
    if (!r->ahead) return;
    r->ahead = 0;
    (void)r->store.ops->claim_ahead_end(r->store.state, 0, NULL, &msgs, &n, NULL);
}

/* Starts the claim of the batch after cur, which was just claimed: it
 * excludes every open batch and cur.  A store that cannot claim ahead is
 * not asked again; one that could not start this time is asked again
 * after the next claim. */
static void ahead_start(outbox_relay *r, const outbox_claim_params *cp, const relay_batch *cur)
{
    outbox_error e;
    size_t nexclude = 0;
    int rc;
    if (r->ahead || r->ahead_off) return;
    if (window_seqs(r, cur, &nexclude) != 0) return; /* out of memory: claim in turn */
    rc = r->store.ops->claim_ahead(r->store.state, cp, r->exclude, nexclude, &e);
    if (rc == OUTBOX_OK) {
        r->ahead = 1;
        return;
    }
    if (rc == OUTBOX_ENOTBUILT) r->ahead_off = 1;
    if (outbox__log_enabled(OUTBOX_LOG_DEBUG))
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "claim ahead not started (claiming in turn): %s",
                    e.message);
}

/* Ends the open batches without recording anything (their messages are
 * published again): for a relay that stops on a fatal store error. */
static void abandon_window(outbox_relay *r)
{
    ahead_drop(r);
    (void)recording_end(r, NULL);
    while (r->window_count > 0) {
        relay_batch *b = window_at(r, 0);
        r->window_first = (r->window_first + 1) % OUTBOX_PIPELINE_MAX_DEPTH;
        r->window_count--;
        if (b->open) r->transport.ops->publish_end(r->transport.state, b->msgs, b->n, b->results);
        b->open = 0;
        release_batch(b);
    }
    r->drain = 0;
}

/* Whether the pipeline must be emptied so that the store can rebalance
 * its partitions (see the pipeline notes at the top). */
static int rebalance_due(const outbox_relay *r)
{
    if (OUTBOX__HAS(r->store.ops, 9, rebalance_wanted))
        return r->store.ops->rebalance_wanted(r->store.state);
    return OUTBOX__HAS(r->store.ops, 7, partitions_held) &&
           outbox__monotonic_us() - r->pipeline_since_us > PIPELINE_SPAN_US;
}

/* One step of the pipelined loop: while the window has room, claim the
 * next batch (excluding the open ones) and begin publishing it; then, when
 * the window is full, or the claim came back short or empty, wait for the
 * oldest open batch and record it, while the newer ones' acks come back.
 * *claimed: messages claimed in this step; *held_back: as for run_batch,
 * plus the whole batch size when the step did not claim (draining the
 * pipeline), so that the caller claims again rather than concluding
 * nothing is due.  A claim error is returned after the oldest batch is
 * recorded. */
static int pipeline_step(outbox_relay *r, size_t *claimed, size_t *held_back, outbox_error *err)
{
    relay_batch *cur = NULL;
    outbox_claim_params cp;
    outbox_error claim_err;
    uint64_t quarantined = 0;
    int rc, claim_rc = OUTBOX_OK, open_before = r->window_count;
    size_t nexclude = 0, i;

    *claimed = 0;
    *held_back = 0;
    if (open_before == 0) {
        r->drain = 0;
        r->pipeline_since_us = outbox__monotonic_us();
    } else if (rebalance_due(r) || reopen_pending(r)) {
        r->drain = 1; /* let the store rebalance; let the destination reopen */
    }
    if (r->drain || stopping(r)) ahead_drop(r);

    if (!stopping(r) && open_before > 0 && r->drain) *held_back = r->opts.batch_size;
    if (!stopping(r) && !(open_before > 0 && r->drain) && window_has_room(r)) {
        cur = window_at(r, r->window_count);
        memset(&cp, 0, sizeof cp);
        cp.batch_size = r->opts.batch_size;
        cp.now_us = outbox__now_us();
        cp.failed_blocks_aggregate = r->opts.failed_blocks_aggregate;
        cp.once = r->opts.once;
        cp.quarantined = &quarantined;
        if (r->ahead) {
            r->ahead = 0;
            claim_rc = r->store.ops->claim_ahead_end(r->store.state, 1, &cp, &cur->msgs, &cur->n,
                                                     &claim_err);
            if (claim_rc == OUTBOX_OK && outbox__log_enabled(OUTBOX_LOG_DEBUG))
                outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "claimed ahead: %zu messages", cur->n);
        } else if (window_seqs(r, NULL, &nexclude) != 0) {
            claim_rc =
                outbox__error(&claim_err, OUTBOX_ENOMEM, "out of memory claiming the next batch");
            cur = NULL;
            goto finish;
        } else {
            claim_rc = r->store.ops->claim_pipelined(r->store.state, &cp, r->exclude, nexclude,
                                                     &cur->msgs, &cur->n, &claim_err);
        }
        atomic_fetch_add_explicit(&r->quarantined, quarantined, memory_order_relaxed);
        if (claim_rc != OUTBOX_OK || cur->n == 0) {
            release_batch(cur);
            cur = NULL;
            goto finish;
        }
        *claimed = cur->n;
        atomic_fetch_add_explicit(&r->batches_done, 1, memory_order_relaxed);
        observe_batch(r, cur->n);
        if (OUTBOX_FAULT("after_claim") != 0) {
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "injected fault after_claim: dropping a batch of %zu unpublished", cur->n);
            *held_back = cur->n;
            r->drain = 1;
            release_batch(cur);
            cur = NULL;
            goto finish;
        }
        if (grow_scratch(cur, cur->n) != 0) {
            claim_rc = outbox__error(&claim_err, OUTBOX_ENOMEM,
                                     "out of memory for a batch of %zu messages", cur->n);
            release_batch(cur);
            cur = NULL;
            goto finish;
        }
        for (i = 0; i < cur->n; i++)
            cur->seqs[i] = cur->msgs[i]->seq;
        /* A full batch: more is likely due; read it while this one is
         * published and the oldest recorded. */
        if (cur->n == r->opts.batch_size && !r->drain && !stopping(r)) ahead_start(r, &cp, cur);
        cur->chained = open_before > 0;
        cur->results[0].error[0] = '\0';
        cur->publish_start_us = outbox__monotonic_us();
        rc = r->transport.ops->publish_begin(r->transport.state, cur->msgs, cur->n, cur->results);
        if (rc == OUTBOX_OK) {
            cur->open = 1;
        } else {
            fail_whole_batch(cur, rc, 1); /* an outage, recorded when finished */
            /* The destination never saw it, so it cannot hold the next
             * batch's messages of the same aggregates behind it: claim
             * nothing more until it is recorded. */
            r->drain = 1;
        }
        r->window_count++;
        if (r->window_count > r->window_max_seen) {
            r->window_max_seen = r->window_count;
            if (outbox__log_enabled(OUTBOX_LOG_DEBUG)) {
                size_t open_msgs = 0;
                int k;
                for (k = 0; k < r->window_count; k++)
                    open_msgs += window_at(r, k)->n;
                outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                            "publish window: %d batches open (%zu messages)", r->window_count,
                            open_msgs);
            }
        }
    }

finish:
    rc = OUTBOX_OK;
    /* A full batch with room left: claim the next one first. */
    if (r->window_count > 0 &&
        (cur == NULL || cur->n < r->opts.batch_size || !cur->open || !window_has_room(r))) {
        size_t held = 0;
        rc = finish_oldest(r, &held, err);
        *held_back += held;
    }
    /* With nothing more in flight, or the pipeline draining, the batch
     * recorded behind ends too: what comes next (a claim that must see
     * every outcome, idling, the end of --once, an outage pause) sees its
     * outcomes. */
    if (r->rec_busy && (r->window_count == 0 || r->drain || stopping(r) || rc != OUTBOX_OK ||
                        claim_rc != OUTBOX_OK)) {
        int rec_rc = recording_end(r, rc == OUTBOX_OK ? err : NULL);
        if (rc == OUTBOX_OK) rc = rec_rc;
    }
    /* An outcome just recorded may block what was read ahead (see the top
     * of the file). */
    if (r->drain || rc != OUTBOX_OK || claim_rc != OUTBOX_OK) ahead_drop(r);
    if (rc != OUTBOX_OK) return rc;
    if (claim_rc != OUTBOX_OK) {
        if (err) *err = claim_err;
        return claim_rc;
    }
    return OUTBOX_OK;
}

/* ------------------------------------------------------------------------
 * Lease and idle waiting
 * ---------------------------------------------------------------------- */

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

/* Waits *pause after a store error, and doubles it for the next one in a
 * row, up to STORE_RETRY_MAX_MS. */
static void store_backoff(outbox_relay *r, int64_t *pause)
{
    pause_ms(r, *pause);
    *pause = min64(*pause * 2, STORE_RETRY_MAX_MS);
}

/* Keeps how many partitions the store handle holds, for the metrics: the
 * store changes it in lease_acquire, lease_renew and the claims (a
 * rebalance, a takeover, a lost session), so the relay reads it after
 * those, on its own thread. */
static void note_partitions(outbox_relay *r)
{
    int held = 1;
    if (OUTBOX__HAS(r->store.ops, 7, partitions_held))
        held = r->store.ops->partitions_held(r->store.state);
    atomic_store_explicit(&r->partitions_owned, held, memory_order_relaxed);
}

/* Takes the lease, waiting for it with --wait-lease.  A store error that
 * may pass (the connection lost to a database restart, a busy database) is
 * retried with the main loop's backoff, as it is once the relay runs; a
 * --once run returns it. */
static int acquire_lease(outbox_relay *r, outbox_error *err)
{
    int64_t step_ms = r->opts.lease_ttl_ms / 2, store_pause_ms = STORE_RETRY_FIRST_MS;
    int logged = 0;
    int rc;

    if (step_ms > 1000) step_ms = 1000;
    for (;;) {
        rc = r->store.ops->lease_acquire(r->store.state, r->name, r->opts.lease_ttl_ms, err);
        loop_turned(r);
        if (rc == OUTBOX_OK) {
            note_partitions(r);
            r->lease_held = 1;
            r->last_renew_us = outbox__monotonic_us();
            atomic_store(&r->state, OUTBOX_RELAY_RUNNING);
            return OUTBOX_OK;
        }
        if (rc == OUTBOX_ELEASED && r->opts.wait_for_lease) {
            atomic_store(&r->state, OUTBOX_RELAY_STANDBY);
            if (!logged) {
                outbox__log(OUTBOX_LOG_INFO, COMPONENT, "relay %s: waiting for the lease: %s",
                            r->name, err->message);
                logged = 1;
            }
            pause_ms(r, step_ms);
        } else if (rc != OUTBOX_ELEASED && outbox_err_retriable(rc) && !r->opts.once) {
            atomic_fetch_add_explicit(&r->store_errors, 1, memory_order_relaxed);
            note_error(r, err->message);
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "relay %s: cannot take the lease yet (retrying in %lld ms): %s", r->name,
                        (long long)store_pause_ms, err->message);
            store_backoff(r, &store_pause_ms);
        } else {
            return rc;
        }
        if (stopping(r)) return OUTBOX_ESTOPPED;
    }
}

/* When the next lease renewal is due: a third of the TTL after the last
 * one (the complete step of every batch renews it too). */
static int64_t renew_due(const outbox_relay *r)
{
    int64_t due = r->last_renew_us + (int64_t)r->opts.lease_ttl_ms * 1000 / 3;
    return due > r->renew_due_us ? due : r->renew_due_us;
}

/* Renews the lease when due.  Returns OUTBOX_ELEASELOST (fatal) or
 * OUTBOX_OK; other errors (a busy database) are logged and retried after
 * a twentieth of the TTL, well before the lease runs out. */
static int maybe_renew(outbox_relay *r, outbox_error *err)
{
    int64_t now = outbox__monotonic_us();
    outbox_error e;
    int rc;

    if (now < renew_due(r)) return OUTBOX_OK;
    e.code = 0;
    e.message[0] = '\0';
    rc = r->store.ops->lease_renew(r->store.state, r->name, r->opts.lease_ttl_ms, &e);
    note_partitions(r);
    if (rc == OUTBOX_OK) {
        r->last_renew_us = now;
        return OUTBOX_OK;
    }
    if (rc == OUTBOX_ELEASELOST) {
        if (err) *err = e;
        return rc;
    }
    r->renew_due_us = now + (int64_t)r->opts.lease_ttl_ms * 1000 / 20;
    atomic_fetch_add_explicit(&r->store_errors, 1, memory_order_relaxed);
    note_error(r, e.message);
    outbox__log(OUTBOX_LOG_WARN, COMPONENT, "relay %s: could not renew the lease (will retry): %s",
                r->name, e.message);
    return OUTBOX_OK;
}

/* Calls the store's change check; errors count as "changed" (a claim then
 * reports the real problem). */
static int store_changed(outbox_relay *r)
{
    outbox_error e;
    int changed = 1;
    if (r->store.ops->changed(r->store.state, &changed, &e) != OUTBOX_OK) return 1;
    return changed;
}

static int store_has_idle(const outbox_relay *r)
{
    return OUTBOX__HAS(r->store.ops, 2, idle);
}

/* Tells the store the relay is awake again (after idle(1)).  Failures only
 * cost stray wake-up hints: logged at debug level. */
static void store_awake(outbox_relay *r)
{
    outbox_error e;
    if (!r->store_waiting) return;
    r->store_waiting = 0;
    if (r->store.ops->idle(r->store.state, 0, &e) != OUTBOX_OK)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: store idle(0): %s", r->name, e.message);
}

/* Waits until there may be something to claim.  last_claim_us is the
 * monotonic time of the previous claim and claim_wall_us its wall-clock
 * "now".  Returns OUTBOX_OK to claim, OUTBOX_ESTOPPED when stopped, or
 * OUTBOX_ELEASELOST. */
static int idle_wait(outbox_relay *r, int64_t last_claim_us, int64_t claim_wall_us,
                     outbox_error *err)
{
    const outbox_relay_options *o = &r->opts;
    int64_t due_us = 0;
    outbox_error e;
    int rc, fd_wakes = 0;

    /* The earliest retry.  One in the past the claim did not return is
     * blocked (e.g. behind a failed message): ignore it. */
    if (r->store.ops->next_due(r->store.state, &due_us, &e) != OUTBOX_OK) due_us = 0;
    if (due_us <= claim_wall_us) due_us = 0;

    /* Ask the store for wake-up hints, then claim once more: a commit
     * that happened before the store saw the request sent none. */
    if (store_has_idle(r) && !r->store_waiting && !stopping(r)) {
        if (r->store.ops->idle(r->store.state, 1, &e) == OUTBOX_OK) {
            r->store_waiting = 1;
            return OUTBOX_OK;
        }
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: store idle(1): %s", r->name, e.message);
    }
    /* The wake-up this sleep ends with may have used the store's flag up
     * (an enqueuer clears it when it notifies): ask again next time. */
    r->store_waiting = 0;

    for (;;) {
        int64_t now, timeout_us;
        int fd, woke;

        if (stopping(r)) return OUTBOX_ESTOPPED;
        if (reopen_pending(r)) return OUTBOX_OK;
        loop_turned(r);
        metrics_merge(r); /* what a busy reader kept from the last batch */
        rc = maybe_renew(r, err);
        if (rc != OUTBOX_OK) return rc;

        now = outbox__monotonic_us();
        if (now - last_claim_us >= (int64_t)o->poll_interval_ms * 1000) return OUTBOX_OK;
        if (due_us > 0 && outbox__now_us() >= due_us) return OUTBOX_OK;

        /* A store descriptor replaces the periodic change check (unless it
         * keeps waking us for nothing).  What the store already read off it
         * does not make it readable again: check that first. */
        fd = OUTBOX__HAS(r->store.ops, 2, wait_fd) && fd_wakes < 100
                 ? r->store.ops->wait_fd(r->store.state)
                 : -1;
        if (fd >= 0 && store_changed(r)) return OUTBOX_OK;
        timeout_us = fd >= 0 ? INT64_MAX : (int64_t)o->change_check_ms * 1000;
        timeout_us = min64(timeout_us, last_claim_us + (int64_t)o->poll_interval_ms * 1000 - now);
        timeout_us = min64(timeout_us, renew_due(r) - now);
        if (due_us > 0) timeout_us = min64(timeout_us, due_us - outbox__now_us());
        if (timeout_us < 0) timeout_us = 0;

        woke = wait_pipe_or_fd(r, (timeout_us + 999) / 1000, fd);
        if (woke == 2) {
            if (store_changed(r)) return OUTBOX_OK;
            fd_wakes++;
            continue;
        }
        if (woke == 1) {
            int64_t until;
            if (stopping(r)) return OUTBOX_ESTOPPED;
            if (reopen_pending(r)) return OUTBOX_OK;
            /* Woken by an enqueue that may not have committed yet. */
            until = outbox__monotonic_us() + WAKE_SPIN_TOTAL_US;
            do {
                if (store_changed(r)) return OUTBOX_OK;
                if (stopping(r)) return OUTBOX_ESTOPPED;
                outbox__sleep_us(WAKE_SPIN_STEP_US);
            } while (outbox__monotonic_us() < until);
            continue;
        }
        if (store_changed(r)) return OUTBOX_OK;
    }
}

/* The pause before the next batch while the destination is down: equal
 * jitter (half fixed, half random) under a ceiling that doubles from
 * backoff_base_ms with each round up to min(backoff_max_ms,
 * OUTAGE_PAUSE_CAP_MS), or the destination's Retry-After when longer (up
 * to max(backoff_max_ms, OUTAGE_PAUSE_CAP_MS)). */
static int64_t outage_pause_ms(const outbox_relay *r)
{
    int64_t cap = min64(r->opts.backoff_max_ms, OUTAGE_PAUSE_CAP_MS);
    int64_t ceiling = r->opts.backoff_base_ms, pause;
    unsigned k;

    for (k = 1; k < r->outage_rounds && ceiling < cap; k++)
        ceiling *= 2;
    if (ceiling > cap) ceiling = cap;
    pause = ceiling / 2 + (int64_t)(outbox__random64() % (uint64_t)(ceiling - ceiling / 2 + 1));
    if (r->outage_retry_after_ms > pause) {
        int64_t most = r->opts.backoff_max_ms > OUTAGE_PAUSE_CAP_MS ? r->opts.backoff_max_ms
                                                                    : OUTAGE_PAUSE_CAP_MS;
        pause = min64(r->outage_retry_after_ms, most);
    }
    return pause;
}

/* Waits ms while the destination is down, renewing the lease; ends early
 * on a stop or a reopen request (a reopened file may be the fix).
 * OUTBOX_OK, or OUTBOX_ELEASELOST. */
static int outage_wait(outbox_relay *r, int64_t ms, outbox_error *err)
{
    int64_t end = outbox__monotonic_us() + ms * 1000;
    int rc;

    outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                "relay %s: destination still down (round %u), next batch in %lld ms", r->name,
                r->outage_rounds, (long long)ms);
    atomic_store(&r->outage_pause_ms, ms);
    while (!stopping(r) && !reopen_pending(r)) {
        int64_t now = outbox__monotonic_us(), left = end - now;
        loop_turned(r);
        metrics_merge(r);
        if (left <= 0) break;
        rc = maybe_renew(r, err);
        if (rc != OUTBOX_OK) return rc;
        left = min64(left, renew_due(r) - now);
        wait_pipe(r, left > 0 ? (left + 999) / 1000 : 0);
    }
    return OUTBOX_OK;
}

/* Asks the destination to reopen its files (outbox_relay_reopen).  A
 * failure keeps the old files and is logged. */
static void reopen_destination(outbox_relay *r)
{
    const outbox_transport_ops *ops = r->transport.ops;
    outbox_error e;

    if (!OUTBOX__HAS(ops, 2, reopen)) {
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s: asked to reopen its files; destination %s has none", r->name,
                    r->dest_shown);
        return;
    }
    e.code = 0;
    e.message[0] = '\0';
    if (ops->reopen(r->transport.state, &e) != OUTBOX_OK)
        outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                    "relay %s: cannot reopen destination %s, still writing where it was: %s",
                    r->name, r->dest_shown, e.message);
}

/* Logs, in once mode, how many messages are still waiting in backoff. */
static void log_not_due(outbox_relay *r)
{
    outbox_status st;
    outbox_error e;
    char when[32];

    if (r->store.ops->status == NULL) return;
    memset(&st, 0, sizeof st);
    if (r->store.ops->status(r->store.state, &st, &e) != OUTBOX_OK) return;
    if (st.pending - st.pending_due > 0) {
        outbox_time_format(st.next_due_us, when);
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s: %lld message(s) waiting in retry backoff are not due yet "
                    "(next at %s); run again later to publish them",
                    r->name, (long long)(st.pending - st.pending_due), when);
    }
    if (st.failed > 0)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s: %lld failed message(s) wait for `outbox retry` or `outbox drop`",
                    r->name, (long long)st.failed);
}

/* ------------------------------------------------------------------------
 * Run
 * ---------------------------------------------------------------------- */

/* Runs the loop (see outbox.h).  Error returns fill err. */
int outbox_relay_run(outbox_relay *relay, outbox_error *err)
{
    outbox_relay *r = relay;
    outbox_error e; /* details of the current problem; copied to err on return */
    const char *wake_path;
    int64_t store_pause_ms = STORE_RETRY_FIRST_MS;
    int store_failures = 0; /* consecutive */
    int rc;

    if (r == NULL) return outbox__error(err, OUTBOX_EINVAL, "outbox_relay_run: relay is NULL");
    if (atomic_exchange(&r->running, 1) != 0)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_relay_run: this relay is already running");
    atomic_store(&r->state, OUTBOX_RELAY_STARTING);
    e.code = 0;
    e.message[0] = '\0';

    rc = acquire_lease(r, &e);
    if (rc == OUTBOX_ESTOPPED) {
        rc = OUTBOX_OK;
        goto out;
    }
    if (rc != OUTBOX_OK) goto out;

    wake_path =
        OUTBOX__HAS(r->store.ops, 1, wake_path) ? r->store.ops->wake_path(r->store.state) : NULL;
    if (outbox__wake_register(wake_path, wake_relay, r) != OUTBOX_OK)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "out of memory registering for in-process wake-up; new messages are seen "
                    "by change checks instead");
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "relay %s: %s -> %s (batch %u, max attempts %u, backoff %u..%u ms, on sent %s, "
                "failed %s its aggregate%s%s)",
                r->name, r->store_shown, r->dest_shown, r->opts.batch_size, r->opts.max_attempts,
                r->opts.backoff_base_ms, r->opts.backoff_max_ms,
                r->opts.on_sent == OUTBOX_ON_SENT_MARK ? "mark" : "delete",
                r->opts.failed_blocks_aggregate ? "blocks" : "does not block",
                r->opts.once ? ", once" : "", r->pipelining ? ", pipelined" : "");

    /* Take the change check's baseline now: the first claim sees everything
     * committed so far, and a later wake-up then waits for a real commit. */
    (void)store_changed(r);

    for (;;) {
        size_t claimed = 0, held_back = 0;
        int64_t claim_mono, claim_wall;

        loop_turned(r);
        /* A stopping relay still finishes the batch in flight. */
        if (stopping(r) && r->window_count == 0) break;
        if (r->window_count == 0 && atomic_exchange(&r->reopen_requested, 0) != 0)
            reopen_destination(r);
        claim_mono = outbox__monotonic_us();
        claim_wall = outbox__now_us();
        if (r->pipelining)
            rc = pipeline_step(r, &claimed, &held_back, &e);
        else
            rc = run_batch(r, &claimed, &held_back, &e);
        note_partitions(r);
        if (rc != OUTBOX_OK) {
            atomic_fetch_add_explicit(&r->store_errors, 1, memory_order_relaxed);
            note_error(r, e.message);
            metrics_merge(r);
            if (fatal_store_error(rc)) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "relay %s: stopping: %s", r->name,
                            e.message);
                if (rc == OUTBOX_ELEASELOST) r->lease_held = 0;
                abandon_window(r);
                goto unregister;
            }
            if (r->opts.once && ++store_failures >= ONCE_MAX_STORE_FAILURES) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "relay %s: giving up after %d store errors in a row: %s", r->name,
                            store_failures, e.message);
                abandon_window(r);
                goto unregister;
            }
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "relay %s: store error (retrying in %lld ms): %s", r->name,
                        (long long)store_pause_ms, e.message);
            store_backoff(r, &store_pause_ms);
            continue;
        }
        store_pause_ms = STORE_RETRY_FIRST_MS;
        store_failures = 0;
        /* Busy again: enqueuers need not wake this relay. */
        if (claimed > 0) store_awake(r);
        if (r->window_count > 0) continue; /* the next steps finish them */
        if (r->outage) {
            ahead_drop(r);
            /* The destination is down: nothing was charged; wait, then
             * claim the same messages again. */
            int64_t pause = outage_pause_ms(r);
            r->outage = 0;
            if (r->opts.once) {
                int64_t left =
                    ONCE_OUTAGE_BUDGET_MS - (outbox__monotonic_us() - r->down_since_mono_us) / 1000;
                if (left <= 0) {
                    rc = r->outage_code != OUTBOX_OK ? r->outage_code : OUTBOX_EPUBLISH;
                    outbox__error(&e, rc,
                                  "destination %s is down: %s; gave up after %u tries in %lld s "
                                  "(no attempts were charged: run again once it is back)",
                                  r->dest_shown, r->outage_error, r->outage_rounds,
                                  (long long)((ONCE_OUTAGE_BUDGET_MS - left + 500) / 1000));
                    outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "relay %s: %s", r->name, e.message);
                    goto unregister;
                }
                pause = min64(pause, left);
            }
            rc = outage_wait(r, pause, &e);
            if (rc != OUTBOX_OK) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "relay %s: stopping: %s", r->name,
                            e.message);
                if (rc == OUTBOX_ELEASELOST) r->lease_held = 0;
                goto unregister;
            }
            continue;
        }
        if (claimed >= r->opts.batch_size || held_back > 0) continue;
        ahead_drop(r); /* nothing is read ahead of a short claim; this keeps it so */
        if (r->opts.once) {
            if (claimed > 0) continue;
            log_not_due(r);
            break;
        }
        rc = idle_wait(r, claim_mono, claim_wall, &e);
        if (rc == OUTBOX_ESTOPPED) break;
        if (rc != OUTBOX_OK) {
            outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "relay %s: stopping: %s", r->name, e.message);
            if (rc == OUTBOX_ELEASELOST) r->lease_held = 0;
            goto unregister;
        }
    }
    rc = OUTBOX_OK;

unregister:
    ahead_drop(r);
    (void)recording_end(r, NULL);
    outbox__wake_unregister(wake_relay, r);
    store_awake(r);
    if (r->lease_held) set_note(r, NULL); /* it spoke of this run */
out:
    if (r->lease_held) {
        outbox_error rel;
        if (r->store.ops->lease_release(r->store.state, r->name, &rel) != OUTBOX_OK)
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "relay %s: could not release the lease (it expires by itself): %s", r->name,
                        rel.message);
        r->lease_held = 0;
    }
    if (rc == OUTBOX_OK)
        outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                    "relay %s: stopped (%llu published, %llu retried, %llu failed, %llu "
                    "publish errors)",
                    r->name, (unsigned long long)atomic_load(&r->published),
                    (unsigned long long)atomic_load(&r->retried),
                    (unsigned long long)atomic_load(&r->failed),
                    (unsigned long long)atomic_load(&r->publish_errors));
    if (rc != OUTBOX_OK && err != NULL) {
        *err = e;
        err->code = rc;
    }
    atomic_store(&r->state, OUTBOX_RELAY_STOPPED);
    metrics_merge(r);
    atomic_store(&r->running, 0);
    return rc;
}

/* Releases the lease if held, closes the store and the destination, and
 * frees the relay.  Must not be called while run() is executing. */
void outbox_relay_free(outbox_relay *relay)
{
    outbox_relay *r = relay;
    int i;
    if (r == NULL) return;
    outbox__wake_unregister(wake_relay, r);
    if (r->lease_held && r->store.ops != NULL) {
        outbox_error e;
        r->store.ops->lease_release(r->store.state, r->name, &e);
    }
    outbox__transport_close(&r->transport);
    if (r->store.ops != NULL) outbox__store_close(&r->store);
    if (r->pipe_rd >= 0) close(r->pipe_rd);
    if (r->pipe_wr >= 0) close(r->pipe_wr);
    for (i = 0; i <= REC_SLOT; i++) {
        release_batch(&r->batches[i]);
        outbox__free(r->batches[i].results);
        outbox__free(r->batches[i].completions);
        outbox__free(r->batches[i].seqs);
        outbox__free(r->batches[i].error_offsets);
        outbox__buf_free(&r->batches[i].errors);
    }
    outbox__free(r->exclude);
    agg_set_clear(&r->held);
    outbox__aggindex_free(&r->held.ids);
    outbox__free(r->name);
    outbox__free(r->source);
    outbox__free(r->store_url);
    pthread_mutex_destroy(&r->metrics_lock);
    outbox__free(r);
}
