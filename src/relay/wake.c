/*
 * wake.c - in-process wake-up: relays register the database file they
 * drain, and outbox_enqueue_sqlite notifies the relays on its connection's
 * file, so a relay in the same process publishes right after the commit
 * instead of at its next change check.
 *
 * The registry is a mutex and a small array of {path, canonical path,
 * relay}.  outbox__wake_notify runs inside every enqueue, so when no relay
 * is registered it costs one atomic load.  Holding the mutex while waking
 * keeps a relay from being freed in between: unregister takes the same
 * mutex.  Wake-ups are hints; correctness never depends on them.
 */
#include "internal.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct wake_entry {
    outbox_relay *relay;
    char *path;     /* as given by the store */
    char *realpath; /* canonical (symlinks resolved); may equal path */
} wake_entry;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int registered;
static wake_entry *entries;
static size_t entry_count;
static size_t entry_cap;

/* Registers relay for wake-ups on db_path (NULL or "": nothing to do, e.g.
 * an in-memory database).  Out of memory only loses the fast wake-up (the
 * relay still sees changes by polling), so it is logged, not returned. */
void outbox__wake_register(outbox_relay *relay, const char *db_path)
{
    char *path = NULL, *real = NULL;

    if (relay == NULL || db_path == NULL || db_path[0] == '\0') return;
    path = strdup(db_path);
    real = realpath(db_path, NULL);
    if (real == NULL) real = strdup(db_path);
    if (path == NULL || real == NULL) goto oom;

    pthread_mutex_lock(&registry_lock);
    if (entry_count == entry_cap) {
        size_t cap = entry_cap ? entry_cap * 2 : 4;
        wake_entry *e = realloc(entries, cap * sizeof *e);
        if (e == NULL) {
            pthread_mutex_unlock(&registry_lock);
            goto oom;
        }
        entries = e;
        entry_cap = cap;
    }
    entries[entry_count].relay = relay;
    entries[entry_count].path = path;
    entries[entry_count].realpath = real;
    entry_count++;
    atomic_fetch_add(&registered, 1);
    pthread_mutex_unlock(&registry_lock);
    return;

oom:
    free(path);
    free(real);
    outbox__log(OUTBOX_LOG_WARN, "relay",
                "out of memory registering for in-process wake-up; new messages are seen "
                "by change checks instead");
}

/* Removes every registration of relay; harmless when it has none. */
void outbox__wake_unregister(outbox_relay *relay)
{
    size_t i = 0;

    pthread_mutex_lock(&registry_lock);
    while (i < entry_count) {
        if (entries[i].relay == relay) {
            free(entries[i].path);
            free(entries[i].realpath);
            entries[i] = entries[--entry_count];
            atomic_fetch_sub(&registered, 1);
        } else {
            i++;
        }
    }
    if (entry_count == 0) {
        free(entries);
        entries = NULL;
        entry_cap = 0;
    }
    pthread_mutex_unlock(&registry_lock);
}

/* Wakes relays registered on path; returns how many matched.  Caller holds
 * the registry lock. */
static size_t wake_matching(const char *path)
{
    size_t i, matched = 0;
    for (i = 0; i < entry_count; i++) {
        if (strcmp(entries[i].path, path) == 0 || strcmp(entries[i].realpath, path) == 0) {
            outbox_relay_wake(entries[i].relay);
            matched++;
        }
    }
    return matched;
}

/* Wakes the relays of this process that drain db_path.  One atomic load
 * when none is registered; otherwise a path comparison (and a realpath()
 * only when the plain path matches no relay). */
void outbox__wake_notify(const char *db_path)
{
    size_t matched;
    char *real;

    if (atomic_load_explicit(&registered, memory_order_acquire) == 0) return;
    if (db_path == NULL || db_path[0] == '\0') return;

    pthread_mutex_lock(&registry_lock);
    matched = wake_matching(db_path);
    pthread_mutex_unlock(&registry_lock);
    if (matched > 0) return;

    real = realpath(db_path, NULL);
    if (real == NULL) return;
    pthread_mutex_lock(&registry_lock);
    wake_matching(real);
    pthread_mutex_unlock(&registry_lock);
    free(real);
}
