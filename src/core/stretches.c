/*
 * stretches.c - the seqs a pipelined claim may read: the stretches between
 * the seqs still in flight (see outbox__stretches_between in internal.h).
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int compare_seqs(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Appends the stretch lo..hi; -1 when out of memory. */
static int add(outbox_stretches *s, int64_t lo, int64_t hi)
{
    if (s->count == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        outbox_seq_range *r = outbox__realloc(s->r, cap * sizeof *r);
        if (!r) return -1;
        s->r = r;
        s->cap = cap;
    }
    s->r[s->count].lo = lo;
    s->r[s->count++].hi = hi;
    return 0;
}

int outbox__stretches_between(outbox_stretches *s, const int64_t *exclude, size_t n)
{
    const int64_t *seqs = exclude;
    int64_t next = INT64_MIN; /* the lowest seq not yet placed in a stretch or in flight */
    size_t i;

    s->count = 0;
    for (i = 1; i < n && exclude[i - 1] <= exclude[i]; i++)
        ;
    if (i < n) { /* a batch claimed below an earlier one (a retry fell due) */
        if (n > s->sorted_cap) {
            int64_t *a = outbox__realloc(s->sorted, n * sizeof *a);
            if (!a) return -1;
            s->sorted = a;
            s->sorted_cap = n;
        }
        memcpy(s->sorted, exclude, n * sizeof *exclude);
        qsort(s->sorted, n, sizeof *s->sorted, compare_seqs);
        seqs = s->sorted;
    }
    for (i = 0; i < n; i++) {
        if (seqs[i] < next) continue; /* the same seq twice */
        if (seqs[i] > next && add(s, next, seqs[i] - 1) != 0) return -1;
        if (seqs[i] == INT64_MAX) return 0; /* nothing above it */
        next = seqs[i] + 1;
    }
    return add(s, next, INT64_MAX);
}

void outbox__stretches_free(outbox_stretches *s)
{
    outbox__free(s->r);
    outbox__free(s->sorted);
    memset(s, 0, sizeof *s);
}
