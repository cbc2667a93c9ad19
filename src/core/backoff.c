/*
 * backoff.c - retry delays (exponential with full jitter) and duration
 * parsing for the CLI and options.  The policy built on them (the relay's
 * defaults, its redelivery horizon) lives with the relay,
 * src/relay/options.c.
 */
#include "internal.h"

/* min(max_ms, base_ms * 2^(attempt-1)) without overflow; attempt 0 counts
 * as 1. */
uint64_t outbox__backoff_cap_ms(unsigned attempt, unsigned base_ms, unsigned max_ms)
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
    uint64_t cap = outbox__backoff_cap_ms(attempt, base_ms, max_ms);
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
    if (p[0] == '\0' || (p[0] == 's' && p[1] == '\0'))
        unit = 1000;
    else if (p[0] == 'm' && p[1] == 's' && p[2] == '\0')
        unit = 1;
    else if (p[0] == 'm' && p[1] == '\0')
        unit = 60 * 1000;
    else if (p[0] == 'h' && p[1] == '\0')
        unit = 3600 * 1000;
    else if (p[0] == 'd' && p[1] == '\0')
        unit = INT64_C(86400) * 1000;
    else
        return -1;
    if (value > INT64_MAX / unit) return -1;
    return value * unit;
}

/* The public name of the above (outbox.h). */
int64_t outbox_duration_parse_ms(const char *text)
{
    return outbox__duration_parse_ms(text);
}
