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
 * Waiting: poll() on a self-pipe that outbox_relay_stop and outbox_relay_wake
 * write to (one byte at most for wakes, coalesced by an atomic flag), with a
 * timeout bounded by the cheap change check, the next retry due time, the
 * lease renewal and the fallback poll interval.  The enqueuing code wakes the
 * relay before its transaction commits, so after a wake the relay checks for
 * a commit every 200 us for up to 50 ms.
 *
 * Store errors during the loop (busy, I/O) are logged and retried after a
 * short, growing pause; only a lost lease or a missing schema ends run().
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COMPONENT "relay"

/* After a wake: how often and how long to look for the enqueuer's commit. */
#define WAKE_SPIN_STEP_US 200
#define WAKE_SPIN_TOTAL_US 50000
/* Pause after a store error: doubles from the first to the last value. */
#define STORE_RETRY_FIRST_MS 50
#define STORE_RETRY_MAX_MS 2000
/* In once mode (a drain that should finish), store errors in a row before
 * run() gives up and returns the last one (about 10 s of retrying). */
#define ONCE_MAX_STORE_FAILURES 8

/* Set of aggregate ids (borrowed from the batch's messages) that did not
 * succeed in the current batch: open addressing, power-of-two capacity. */
typedef struct agg_set {
    const char **slots;
    size_t cap;
    size_t count;
} agg_set;

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
    atomic_int running;

    int lease_held;
    int store_waiting;     /* idle(1) succeeded; neither idle(0) nor a sleep since */
    int64_t last_renew_us; /* monotonic time of the last lease renewal */
    int64_t renew_due_us;  /* monotonic time of the next renewal attempt */

    /* Per-batch scratch, grown to the largest batch seen. */
    outbox_publish_result *results;
    outbox_completion *completions;
    size_t *error_offsets; /* into errors.data, per message with an error */
    size_t scratch_cap;
    outbox_buf errors;
    agg_set held;

    _Atomic uint64_t published, retried, failed, batches;
};

/* ------------------------------------------------------------------------
 * Aggregate set
 * ---------------------------------------------------------------------- */

static uint64_t hash_text(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    while (*s) {
        h ^= (unsigned char)*s++;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Empties the set and makes room for n insertions; -1 when out of memory. */
static int agg_set_reset(agg_set *set, size_t n)
{
    size_t want = 16;
    while (want < n * 2)
        want *= 2;
    if (want > set->cap) {
        const char **slots = calloc(want, sizeof *slots);
        if (slots == NULL) return -1;
        free(set->slots);
        set->slots = slots;
        set->cap = want;
    } else if (set->count > 0) {
        memset(set->slots, 0, set->cap * sizeof *set->slots);
    }
    set->count = 0;
    return 0;
}

static int agg_set_contains(const agg_set *set, const char *id)
{
    size_t mask = set->cap - 1, i;
    if (set->count == 0) return 0;
    for (i = (size_t)hash_text(id) & mask; set->slots[i] != NULL; i = (i + 1) & mask)
        if (strcmp(set->slots[i], id) == 0) return 1;
    return 0;
}

static void agg_set_add(agg_set *set, const char *id)
{
    size_t mask = set->cap - 1, i;
    for (i = (size_t)hash_text(id) & mask; set->slots[i] != NULL; i = (i + 1) & mask)
        if (strcmp(set->slots[i], id) == 0) return;
    set->slots[i] = id;
    set->count++;
}

/* ------------------------------------------------------------------------
 * Creation
 * ---------------------------------------------------------------------- */

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
    int rc;

    if (out == NULL) return outbox__error(err, OUTBOX_EINVAL, "outbox_relay_new: out is NULL");
    *out = NULL;
    if (store_url == NULL || store_url[0] == '\0')
        return outbox__error(err, OUTBOX_ECONFIG,
                             "no store URL: pass the outbox database, e.g. sqlite:app.db");

    r = calloc(1, sizeof *r);
    if (r == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the relay");
    r->pipe_rd = r->pipe_wr = -1;
    outbox__buf_init(&r->errors);
    if (opts != NULL)
        r->opts = *opts;
    else
        outbox_relay_options_init(&r->opts);

    rc = check_options(&r->opts, err);
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
        r->name = strdup(r->opts.name);
    } else {
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        r->name = malloc(strlen(host) + 24);
        if (r->name) sprintf(r->name, "%s:%ld", host, (long)getpid());
    }
    r->source = strdup(r->opts.source && r->opts.source[0] ? r->opts.source : "/outbox");
    if (r->name == NULL || r->source == NULL) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory creating the relay");
        goto fail;
    }
    r->opts.name = r->name;
    r->opts.source = r->source;

    outbox__url_redact(store_url, r->store_shown, sizeof r->store_shown);
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
    if (relay->transport.interrupt != NULL && relay->transport.state != NULL)
        relay->transport.interrupt(relay->transport.state);
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

/* Counters are atomics: safe to read while run() executes. */

void outbox_relay_get_stats(const outbox_relay *relay, outbox_relay_stats *stats)
{
    if (stats == NULL) return;
    memset(stats, 0, sizeof *stats);
    if (relay == NULL) return;
    stats->published = atomic_load_explicit(&relay->published, memory_order_relaxed);
    stats->retried = atomic_load_explicit(&relay->retried, memory_order_relaxed);
    stats->failed = atomic_load_explicit(&relay->failed, memory_order_relaxed);
    stats->batches = atomic_load_explicit(&relay->batches, memory_order_relaxed);
}

static int stopping(outbox_relay *r)
{
    return atomic_load(&r->stop_requested) != 0;
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
        if (left <= 0) break;
        wait_pipe(r, (left + 999) / 1000);
    }
}

/* ------------------------------------------------------------------------
 * One batch
 * ---------------------------------------------------------------------- */

static int grow_scratch(outbox_relay *r, size_t n)
{
    size_t cap;
    void *p;
    if (n <= r->scratch_cap) return 0;
    cap = r->scratch_cap ? r->scratch_cap : 64;
    while (cap < n)
        cap *= 2;
    p = realloc(r->results, cap * sizeof *r->results);
    if (p == NULL) return -1;
    r->results = p;
    p = realloc(r->completions, cap * sizeof *r->completions);
    if (p == NULL) return -1;
    r->completions = p;
    p = realloc(r->error_offsets, cap * sizeof *r->error_offsets);
    if (p == NULL) return -1;
    r->error_offsets = p;
    r->scratch_cap = cap;
    return 0;
}

static void free_batch(outbox_msg **msgs, size_t n)
{
    size_t i;
    if (msgs == NULL) return;
    for (i = 0; i < n; i++)
        outbox_msg_free(msgs[i]);
    free(msgs);
}

static int fatal_store_error(int rc)
{
    return rc == OUTBOX_ELEASELOST || rc == OUTBOX_ENOSCHEMA || rc == OUTBOX_ESCHEMANEWER;
}

/* Decides each message's outcome from its publish result (see the top of
 * the file).  Fills r->completions[0..n); counts into *sent etc. */
static int decide_outcomes(outbox_relay *r, outbox_msg **msgs, size_t n, int64_t now_us,
                           size_t *sent, size_t *retried, size_t *failed, size_t *held)
{
    const outbox_relay_options *o = &r->opts;
    size_t i;

    if (agg_set_reset(&r->held, n) != 0) return OUTBOX_ENOMEM;
    outbox__buf_reset(&r->errors);
    *sent = *retried = *failed = *held = 0;

    for (i = 0; i < n; i++) {
        const outbox_msg *m = msgs[i];
        const outbox_publish_result *res = &r->results[i];
        outbox_completion *c = &r->completions[i];
        unsigned attempt;

        c->msg = m;
        c->available_at = 0;
        c->error = NULL;
        r->error_offsets[i] = (size_t)-1;

        if (agg_set_contains(&r->held, m->aggregate_id)) {
            c->outcome = OUTBOX_OUTCOME_UNSENT;
            (*held)++;
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
        attempt = (unsigned)(m->attempts < 0 ? 0 : m->attempts) + 1;
        r->error_offsets[i] = r->errors.len;
        outbox__buf_printf(&r->errors, "attempt %u/%u: %s", attempt, o->max_attempts,
                           res->error[0] ? res->error : outbox_strerror(res->code));
        outbox__buf_append(&r->errors, "", 1); /* keep the NUL: strings are packed */

        if (res->code == OUTBOX_EREJECTED || attempt >= o->max_attempts) {
            c->outcome = OUTBOX_OUTCOME_FAILED;
            (*failed)++;
            outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
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
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "message %s attempt %u/%u failed, next try in %lld ms: %s", m->id, attempt,
                        o->max_attempts, (long long)delay,
                        res->error[0] ? res->error : outbox_strerror(res->code));
        }
    }
    if (r->errors.oom) return OUTBOX_ENOMEM;
    for (i = 0; i < n; i++)
        if (r->error_offsets[i] != (size_t)-1)
            r->completions[i].error = r->errors.data + r->error_offsets[i];
    return OUTBOX_OK;
}

/* Claims, publishes and records one batch.  *claimed receives the number of
 * messages claimed, *held_back how many were held behind a failure of their
 * aggregate or left unrecorded by an injected fault (they may be claimable
 * right away: the caller claims again instead of waiting).  Returns OUTBOX_OK, or a store error
 * (the caller pauses and retries, or ends on a fatal one). */
static int run_batch(outbox_relay *r, size_t *claimed, size_t *held_back, outbox_error *err)
{
    outbox_claim_params cp;
    outbox_complete_params done;
    outbox_msg **msgs = NULL;
    size_t n = 0, i, sent, retried, failed, held;
    int64_t now_us;
    int rc;

    *claimed = 0;
    *held_back = 0;
    cp.batch_size = r->opts.batch_size;
    cp.now_us = outbox__now_us();
    cp.failed_blocks_aggregate = r->opts.failed_blocks_aggregate;
    cp.once = r->opts.once;
    rc = r->store.ops->claim(r->store.state, &cp, &msgs, &n, err);
    if (rc != OUTBOX_OK) return rc;
    *claimed = n;
    if (n == 0) {
        free(msgs);
        return OUTBOX_OK;
    }
    atomic_fetch_add_explicit(&r->batches, 1, memory_order_relaxed);

    if (OUTBOX_FAULT("after_claim") != 0) {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "injected fault after_claim: dropping a batch of %zu unpublished", n);
        *held_back = n;
        goto out;
    }
    if (grow_scratch(r, n) != 0) {
        rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory for a batch of %zu messages", n);
        goto out;
    }

    rc = r->transport.ops->publish(r->transport.state, msgs, n, r->results);
    if (rc == OUTBOX_OK && OUTBOX_FAULT("after_publish") != 0) rc = OUTBOX_EFAULT;
    if (rc != OUTBOX_OK) {
        int code = rc == OUTBOX_EREJECTED ? OUTBOX_EPUBLISH : rc;
        for (i = 0; i < n; i++) {
            r->results[i].code = code;
            r->results[i].retry_after_ms = 0;
            snprintf(r->results[i].error, sizeof r->results[i].error,
                     "the destination failed the whole batch: %s", outbox_strerror(rc));
        }
        rc = OUTBOX_OK;
    }

    now_us = outbox__now_us();
    rc = decide_outcomes(r, msgs, n, now_us, &sent, &retried, &failed, &held);
    if (rc != OUTBOX_OK) {
        rc = outbox__error(err, rc, "out of memory recording a batch of %zu messages", n);
        goto out;
    }

    if (OUTBOX_FAULT("before_mark_sent") != 0) {
        outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                    "injected fault before_mark_sent: %zu outcomes not recorded "
                    "(the messages are published again)",
                    n);
        *held_back = n;
        goto out;
    }
    done.on_sent = r->opts.on_sent;
    done.now_us = now_us;
    done.lease_owner = r->name;
    done.lease_ttl_ms = r->opts.lease_ttl_ms;
    rc = r->store.ops->complete(r->store.state, r->completions, n, &done, err);
    if (rc != OUTBOX_OK) goto out;
    r->last_renew_us = outbox__monotonic_us();
    *held_back = held;
    if (OUTBOX_FAULT("after_mark_sent") != 0)
        outbox__log(OUTBOX_LOG_WARN, COMPONENT, "injected fault after_mark_sent (ignored)");

    atomic_fetch_add_explicit(&r->published, sent, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->retried, retried, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->failed, failed, memory_order_relaxed);
    if (outbox__log_enabled(OUTBOX_LOG_DEBUG))
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT,
                    "batch of %zu: %zu sent, %zu retrying, %zu failed, %zu held back", n, sent,
                    retried, failed, held);

out:
    free_batch(msgs, n);
    return rc;
}

/* ------------------------------------------------------------------------
 * Lease and idle waiting
 * ---------------------------------------------------------------------- */

static int acquire_lease(outbox_relay *r, outbox_error *err)
{
    int64_t step_ms = r->opts.lease_ttl_ms / 2;
    int logged = 0;
    int rc;

    if (step_ms > 1000) step_ms = 1000;
    for (;;) {
        rc = r->store.ops->lease_acquire(r->store.state, r->name, r->opts.lease_ttl_ms, err);
        if (rc == OUTBOX_OK) {
            r->lease_held = 1;
            r->last_renew_us = outbox__monotonic_us();
            return OUTBOX_OK;
        }
        if (rc != OUTBOX_ELEASED || !r->opts.wait_for_lease) return rc;
        if (!logged) {
            outbox__log(OUTBOX_LOG_INFO, COMPONENT, "relay %s: waiting for the lease: %s", r->name,
                        err->message);
            logged = 1;
        }
        pause_ms(r, step_ms);
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
    if (rc == OUTBOX_OK) {
        r->last_renew_us = now;
        return OUTBOX_OK;
    }
    if (rc == OUTBOX_ELEASELOST) {
        if (err) *err = e;
        return rc;
    }
    r->renew_due_us = now + (int64_t)r->opts.lease_ttl_ms * 1000 / 20;
    outbox__log(OUTBOX_LOG_WARN, COMPONENT, "relay %s: could not renew the lease (will retry): %s",
                r->name, e.message);
    return OUTBOX_OK;
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
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
    return r->store.ops->version >= 2 && r->store.ops->idle != NULL;
}

/* Tells the store the relay is awake again (after idle(1)).  Failures only
 * cost stray wake-up hints: logged at debug level. */
static void store_awake(outbox_relay *r)
{
    outbox_error e;
    if (!r->store_waiting) return;
    r->store_waiting = 0;
    if (r->store.ops->idle(r->store.state, 0, &e) != OUTBOX_OK)
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: store idle(0): %s", r->name,
                    e.message);
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
        outbox__log(OUTBOX_LOG_DEBUG, COMPONENT, "relay %s: store idle(1): %s", r->name,
                    e.message);
    }
    /* The wake-up this sleep ends with may have used the store's flag up
     * (an enqueuer clears it when it notifies): ask again next time. */
    r->store_waiting = 0;

    for (;;) {
        int64_t now, timeout_us;
        int fd, woke;

        if (stopping(r)) return OUTBOX_ESTOPPED;
        rc = maybe_renew(r, err);
        if (rc != OUTBOX_OK) return rc;

        now = outbox__monotonic_us();
        if (now - last_claim_us >= (int64_t)o->poll_interval_ms * 1000) return OUTBOX_OK;
        if (due_us > 0 && outbox__now_us() >= due_us) return OUTBOX_OK;

        /* A store descriptor replaces the periodic change check (unless it
         * keeps waking us for nothing).  What the store already read off it
         * does not make it readable again: check that first. */
        fd = r->store.ops->version >= 2 && r->store.ops->wait_fd && fd_wakes < 100
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
                    "relay %s: %lld failed message(s) wait for `outbox retry`", r->name,
                    (long long)st.failed);
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
    e.code = 0;
    e.message[0] = '\0';

    rc = acquire_lease(r, &e);
    if (rc == OUTBOX_ESTOPPED) {
        rc = OUTBOX_OK;
        goto out;
    }
    if (rc != OUTBOX_OK) goto out;

    wake_path = r->store.ops->wake_path ? r->store.ops->wake_path(r->store.state) : NULL;
    outbox__wake_register(r, wake_path);
    outbox__log(OUTBOX_LOG_INFO, COMPONENT,
                "relay %s: %s -> %s (batch %u, max attempts %u, backoff %u..%u ms, on sent %s, "
                "failed %s its aggregate%s)",
                r->name, r->store_shown, r->dest_shown, r->opts.batch_size, r->opts.max_attempts,
                r->opts.backoff_base_ms, r->opts.backoff_max_ms,
                r->opts.on_sent == OUTBOX_ON_SENT_MARK ? "mark" : "delete",
                r->opts.failed_blocks_aggregate ? "blocks" : "does not block",
                r->opts.once ? ", once" : "");

    /* Take the change check's baseline now: the first claim sees everything
     * committed so far, and a later wake-up then waits for a real commit. */
    (void)store_changed(r);

    for (;;) {
        size_t claimed = 0, held_back = 0;
        int64_t claim_mono, claim_wall;

        if (stopping(r)) break;
        claim_mono = outbox__monotonic_us();
        claim_wall = outbox__now_us();
        rc = run_batch(r, &claimed, &held_back, &e);
        if (rc != OUTBOX_OK) {
            if (fatal_store_error(rc)) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT, "relay %s: stopping: %s", r->name,
                            e.message);
                if (rc == OUTBOX_ELEASELOST) r->lease_held = 0;
                goto unregister;
            }
            if (r->opts.once && ++store_failures >= ONCE_MAX_STORE_FAILURES) {
                outbox__log(OUTBOX_LOG_ERROR, COMPONENT,
                            "relay %s: giving up after %d store errors in a row: %s", r->name,
                            store_failures, e.message);
                goto unregister;
            }
            outbox__log(OUTBOX_LOG_WARN, COMPONENT,
                        "relay %s: store error (retrying in %lld ms): %s", r->name,
                        (long long)store_pause_ms, e.message);
            pause_ms(r, store_pause_ms);
            store_pause_ms = min64(store_pause_ms * 2, STORE_RETRY_MAX_MS);
            continue;
        }
        store_pause_ms = STORE_RETRY_FIRST_MS;
        store_failures = 0;
        /* Busy again: enqueuers need not wake this relay. */
        if (claimed > 0) store_awake(r);
        if (claimed >= r->opts.batch_size || held_back > 0) continue;
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
    outbox__wake_unregister(r);
    store_awake(r);
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
                    "relay %s: stopped (%llu published, %llu retried, %llu failed)", r->name,
                    (unsigned long long)atomic_load(&r->published),
                    (unsigned long long)atomic_load(&r->retried),
                    (unsigned long long)atomic_load(&r->failed));
    if (rc != OUTBOX_OK && err != NULL) {
        *err = e;
        err->code = rc;
    }
    atomic_store(&r->running, 0);
    return rc;
}

/* Releases the lease if held, closes the store and the destination, and
 * frees the relay.  Must not be called while run() is executing. */
void outbox_relay_free(outbox_relay *relay)
{
    outbox_relay *r = relay;
    if (r == NULL) return;
    outbox__wake_unregister(r);
    if (r->lease_held && r->store.ops != NULL) {
        outbox_error e;
        r->store.ops->lease_release(r->store.state, r->name, &e);
    }
    outbox__transport_close(&r->transport);
    if (r->store.ops != NULL) outbox__store_close(&r->store);
    if (r->pipe_rd >= 0) close(r->pipe_rd);
    if (r->pipe_wr >= 0) close(r->pipe_wr);
    free(r->results);
    free(r->completions);
    free(r->error_offsets);
    free(r->held.slots);
    outbox__buf_free(&r->errors);
    free(r->name);
    free(r->source);
    free(r);
}
