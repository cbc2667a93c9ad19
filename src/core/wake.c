/*
 * wake.c - the in-process wake-up registry: a key (a database file's path)
 * to callbacks (see internal.h).  The relay registers the file it drains
 * with a callback that wakes it; outbox_enqueue_sqlite notifies its
 * connection's file.
 *
 * A mutex and a small array of {key, canonical key, fn, user}.
 * outbox__wake_notify runs inside every enqueue, so when nothing is
 * registered it costs one atomic load.  Callbacks run with the mutex held,
 * and unregister takes the same mutex: once it returns, the callback's
 * user (a relay about to be freed) is no longer reached.
 */
#include "internal.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct wake_entry {
    outbox_wake_fn fn;
    void *user;
    char *key;      /* as given */
    char *realpath; /* canonical (symlinks resolved); may equal key */
} wake_entry;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int registered;
static wake_entry *entries;
static size_t entry_count;
static size_t entry_cap;

/* See internal.h. */
int outbox__wake_register(const char *key, outbox_wake_fn fn, void *user)
{
    char *copy = NULL, *real = NULL;

    if (fn == NULL || key == NULL || key[0] == '\0') return OUTBOX_OK;
    copy = outbox__strdup(key);
    real = realpath(key, NULL);
    if (real == NULL) real = outbox__strdup(key);
    if (copy == NULL || real == NULL) goto oom;

    pthread_mutex_lock(&registry_lock);
    if (entry_count == entry_cap) {
        size_t cap = entry_cap ? entry_cap * 2 : 4;
        wake_entry *e = outbox__realloc(entries, cap * sizeof *e);
        if (e == NULL) {
            pthread_mutex_unlock(&registry_lock);
            goto oom;
        }
        entries = e;
        entry_cap = cap;
    }
    entries[entry_count].fn = fn;
    entries[entry_count].user = user;
    entries[entry_count].key = copy;
    entries[entry_count].realpath = real;
    entry_count++;
    atomic_fetch_add(&registered, 1);
    pthread_mutex_unlock(&registry_lock);
    return OUTBOX_OK;

oom:
    outbox__free(copy);
    outbox__free(real);
    return OUTBOX_ENOMEM;
}

/* See internal.h. */
void outbox__wake_unregister(outbox_wake_fn fn, void *user)
{
    size_t i = 0;

    pthread_mutex_lock(&registry_lock);
    while (i < entry_count) {
        if (entries[i].fn == fn && entries[i].user == user) {
            outbox__free(entries[i].key);
            outbox__free(entries[i].realpath);
            entries[i] = entries[--entry_count];
            atomic_fetch_sub(&registered, 1);
        } else {
            i++;
        }
    }
    if (entry_count == 0) {
        outbox__free(entries);
        entries = NULL;
        entry_cap = 0;
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Calls the callbacks registered on key; returns how many matched.  Caller
 * holds the registry lock. */
static size_t wake_matching(const char *key)
{
    size_t i, matched = 0;
    for (i = 0; i < entry_count; i++) {
        if (strcmp(entries[i].key, key) == 0 || strcmp(entries[i].realpath, key) == 0) {
            entries[i].fn(entries[i].user);
            matched++;
        }
    }
    return matched;
}

/* One atomic load when nothing is registered; otherwise a key comparison
 * (and a realpath() only when the plain key matches no registration). */
void outbox__wake_notify(const char *key)
{
    size_t matched;
    char *real;

    if (atomic_load_explicit(&registered, memory_order_acquire) == 0) return;
    if (key == NULL || key[0] == '\0') return;

    pthread_mutex_lock(&registry_lock);
    matched = wake_matching(key);
    pthread_mutex_unlock(&registry_lock);
    if (matched > 0) return;

    real = realpath(key, NULL);
    if (real == NULL) return;
    pthread_mutex_lock(&registry_lock);
    wake_matching(real);
    pthread_mutex_unlock(&registry_lock);
    outbox__free(real);
}
