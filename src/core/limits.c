/*
 * limits.c - process-wide size limits, read on every validation, so they
 * are C11 atomics.
 */
#include "internal.h"

#include <stdatomic.h>

static _Atomic size_t limits[2] = {1048576, 256};

/* Sets limit `which` to value (0 only queries); returns the previous value,
 * or 0 for an unknown `which`. */
size_t outbox_limit(int which, size_t value)
{
    if (which < 0 || which > 1) return 0;
    if (value == 0) return atomic_load(&limits[which]);
    return atomic_exchange(&limits[which], value);
}
