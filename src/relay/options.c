/*
 * options.c - the relay's policy: its default options (the values
 * documented in outbox.h) and what follows from them, the redelivery
 * horizon (how long retries can keep republishing a message) that an
 * inbox's retention must exceed (guarantee 6).  The mechanisms they use
 * (backoff, durations) are core's, src/core/backoff.c.
 */
#include "internal.h"

#include <string.h>

/* Fills opts with the defaults; strings point to static text. */
void outbox_relay_options_init(outbox_relay_options *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->batch_size = 512;
    opts->max_attempts = 10;
    opts->backoff_base_ms = 500;
    opts->backoff_max_ms = 300000;
    opts->on_sent = OUTBOX_ON_SENT_DELETE;
    opts->failed_blocks_aggregate = 1;
    opts->poll_interval_ms = 1000;
    opts->change_check_ms = 2;
    opts->lease_ttl_ms = 10000;
    opts->wait_for_lease = 0;
    opts->once = 0;
    opts->source = "/outbox";
    opts->name = NULL; /* the relay uses host:pid */
    opts->publish = NULL;
    opts->publish_user = NULL;
}

/* Sum of the delay caps over retries 1..max_attempts-1: the longest time
 * retries can keep republishing a message.  NULL opts: defaults. */
int64_t outbox_redelivery_horizon_ms(const outbox_relay_options *opts)
{
    outbox_relay_options defaults;
    int64_t total = 0;
    unsigned i;
    if (!opts) {
        outbox_relay_options_init(&defaults);
        opts = &defaults;
    }
    for (i = 1; i < opts->max_attempts; i++) {
        uint64_t cap = outbox__backoff_cap_ms(i, opts->backoff_base_ms, opts->backoff_max_ms);
        if (cap == opts->backoff_max_ms) {
            /* every later retry has the same cap: add them at once */
            uint64_t rest = (uint64_t)(opts->max_attempts - i);
            if (cap != 0 && rest > (uint64_t)(INT64_MAX - total) / cap) return INT64_MAX;
            return total + (int64_t)(rest * cap);
        }
        total += (int64_t)cap; /* below max_ms: no overflow */
    }
    return total;
}

/* See internal.h. */
int outbox__inbox_retention_check(const char *fn, int64_t retention_ms,
                                  int64_t redelivery_horizon_ms, outbox_error *err)
{
    int64_t horizon = redelivery_horizon_ms;
    if (retention_ms < 0)
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: inbox retention_ms is negative (%lld): pass a duration >= 0", fn,
                             (long long)retention_ms);
    if (horizon <= 0) horizon = outbox_redelivery_horizon_ms(NULL);
    if (retention_ms < horizon)
        outbox__log(OUTBOX_LOG_WARN, "inbox",
                    "inbox retention %lld ms is shorter than the relay's redelivery horizon "
                    "%lld ms: a message redelivered after its inbox entry is purged would be "
                    "applied twice; keep entries longer",
                    (long long)retention_ms, (long long)horizon);
    return OUTBOX_OK;
}
