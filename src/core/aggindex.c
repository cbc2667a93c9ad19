/*
 * aggindex.c - the library's one string hash (FNV-1a) and the one index
 * built on it: borrowed string keys (aggregate ids, message ids) to small
 * integers, for the per-message work of the publish path (the relay's set
 * of held-back aggregates, the HTTP destination's per-aggregate chains,
 * the NATS destination's aggregate and id lookups).
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

/* FNV-1a, 64 bits. */
uint64_t outbox__hash_text(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The 64-bit hash folded to the 32 bits a slot keeps (and places by). */
static uint32_t slot_hash(const char *key)
{
    uint64_t h = outbox__hash_text(key);
    return (uint32_t)(h ^ (h >> 32));
}

void outbox__aggindex_init(outbox_aggindex *ix)
{
    ix->slots = NULL;
    ix->cap = 0;
    ix->count = 0;
}

void outbox__aggindex_free(outbox_aggindex *ix)
{
    if (ix == NULL) return;
    free(ix->slots);
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
    slots = calloc(want, sizeof *slots);
    if (slots == NULL) return OUTBOX_ENOMEM;
    for (i = 0; ix->count > 0 && i < ix->cap; i++) {
        size_t j;
        if (ix->slots[i].key == NULL) continue;
        for (j = ix->slots[i].hash & (want - 1); slots[j].key != NULL; j = (j + 1) & (want - 1)) {
        }
        slots[j] = ix->slots[i];
    }
    free(ix->slots);
    ix->slots = slots;
    ix->cap = want;
    return OUTBOX_OK;
}

/* The slot holding key, or the empty slot where it would go; cap > 0. */
static outbox_aggindex_slot *find_slot(const outbox_aggindex *ix, const char *key, uint32_t hash)
{
    size_t mask = ix->cap - 1, i;
    for (i = hash & mask; ix->slots[i].key != NULL; i = (i + 1) & mask)
        if (ix->slots[i].hash == hash && strcmp(ix->slots[i].key, key) == 0) break;
    return &ix->slots[i];
}

/* 1 and *value (when not NULL) set when key is in the index, else 0. */
int outbox__aggindex_lookup(const outbox_aggindex *ix, const char *key, uint32_t *value)
{
    const outbox_aggindex_slot *s;
    if (ix->count == 0) return 0;
    s = find_slot(ix, key, slot_hash(key));
    if (s->key == NULL) return 0;
    if (value != NULL) *value = s->value;
    return 1;
}

/* Sets key's value.  A new key is stored as given (borrowed: it must stay
 * valid while in the index); for a key already there the value is replaced,
 * its stored pointer kept, and the old value goes to *previous (when not
 * NULL).  Returns 1 when the key was there, 0 when added.  Room must have
 * been reserved. */
int outbox__aggindex_insert(outbox_aggindex *ix, const char *key, uint32_t value,
                            uint32_t *previous)
{
    uint32_t hash = slot_hash(key);
    outbox_aggindex_slot *s = find_slot(ix, key, hash);
    if (s->key != NULL) {
        if (previous != NULL) *previous = s->value;
        s->value = value;
        return 1;
    }
    s->key = key;
    s->hash = hash;
    s->value = value;
    ix->count++;
    return 0;
}
