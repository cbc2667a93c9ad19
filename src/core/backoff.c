/*
 * backoff.c - retry delays (exponential with full jitter), duration parsing
 * for the CLI and options, and the redelivery horizon that inbox retention
 * must exceed (guarantee 6).
 */
#include "internal.h"

/* min(max_ms, base_ms * 2^(attempt-1)) without overflow; attempt 0 counts
 * as 1. */
static uint64_t backoff_cap(unsigned attempt, unsigned base_ms, unsigned max_ms)
{
    unsigned shift = attempt > 1 ? attempt - 1 : 0;
    uint64_t cap;
    if (base_ms == 0) return 0;
    if (shift >= 32) return max_ms;
    cap = (uint64_t)base_ms << shift;
    return cap < max_ms ? cap : max_ms;
}

/* Full jitter: uniform in [0, min(max_ms, base_ms * 2^(attempt-1))]. */
int64_t outbox__backoff_ms(unsigned attempt, unsigned base_ms, unsigned max_ms)
{
    uint64_t cap = backoff_cap(attempt, base_ms, max_ms);
    return (int64_t)(outbox__random64() % (cap + 1));
}

/* "250ms", "30s", "5m", "2h", "7d" or a bare number of seconds, as
 * milliseconds; -1 for NULL, empty, negative, garbage or overflow. */
int64_t outbox__duration_parse_ms(const char *text)
{
    int64_t value = 0, unit;
    const char *p = text;
    if (!p || *p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (value > (INT64_MAX - (*p - '0')) / 10) return -1;
        value = value * 10 + (*p - '0');
    }
    if (p[0] == '\0' || (p[0] == 's' && p[1] == '\0')) unit = 1000;
    else if (p[0] == 'm' && p[1] == 's' && p[2] == '\0') unit = 1;
    else if (p[0] == 'm' && p[1] == '\0') unit = 60 * 1000;
    else if (p[0] == 'h' && p[1] == '\0') unit = 3600 * 1000;
    else if (p[0] == 'd' && p[1] == '\0') unit = INT64_C(86400) * 1000;
    else return -1;
    if (value > INT64_MAX / unit) return -1;
    return value * unit;
}

/* The public name of the above (outbox.h). */
int64_t outbox_duration_parse_ms(const char *text)
{
    return outbox__duration_parse_ms(text);
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
        uint64_t cap = backoff_cap(i, opts->backoff_base_ms, opts->backoff_max_ms);
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
