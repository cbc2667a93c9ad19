/*
 * aggindex.c - the aggregate index: borrowed string keys (aggregate ids,
 * message ids) to small integers, for the per-message work of the publish
 * path (the relay's set of held-back aggregates, the HTTP destination's
 * per-aggregate chains, the NATS destination's aggregate and id lookups).
 * Here is what allocates; the per-message lookup and insert, and the one
 * string hash (FNV-1a) they use, are inline in internal.h.
 *
 * Open addressing with linear probing in a power-of-two table kept at most
 * half full.  A slot keeps the key's pointer, a 32-bit hash and the value:
 * a probe compares hashes first, so strcmp runs only on a (nearly certain)
 * match, and growing moves slots without hashing a key again.  Memory is
 * allocated only by reserve; reset keeps it, so a driver that resets its
 * index per batch allocates nothing in the steady state.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void outbox__aggindex_init(outbox_aggindex *ix)
{
    ix->slots = NULL;
    ix->cap = 0;
    ix->count = 0;
}

void outbox__aggindex_free(outbox_aggindex *ix)
{
    if (ix == NULL) return;
    outbox__free(ix->slots);
    outbox__aggindex_init(ix);
}

/* Empties the index, keeping its memory; cheap when it is empty. */
void outbox__aggindex_reset(outbox_aggindex *ix)
{
    if (ix->count == 0) return;
    memset(ix->slots, 0, ix->cap * sizeof *ix->slots);
    ix->count = 0;
}

/* Makes room for n more keys (the table stays at most half full), keeping
 * the entries.  OUTBOX_OK, or OUTBOX_ENOMEM with the index unchanged. */
int outbox__aggindex_reserve(outbox_aggindex *ix, size_t n)
{
    size_t want = 16, i;
    outbox_aggindex_slot *slots;

    while (want < (ix->count + n) * 2)
        want *= 2;
    if (want <= ix->cap) return OUTBOX_OK;
    slots = outbox__calloc(want, sizeof *slots);
    if (slots == NULL) return OUTBOX_ENOMEM;
    for (i = 0; ix->count > 0 && i < ix->cap; i++) {
        size_t j;
        if (ix->slots[i].key == NULL) continue;
        for (j = ix->slots[i].hash & (want - 1); slots[j].key != NULL; j = (j + 1) & (want - 1)) {
        }
        slots[j] = ix->slots[i];
    }
    outbox__free(ix->slots);
    ix->slots = slots;
    ix->cap = want;
    return OUTBOX_OK;
}
