/*
 * relay_thread.h - a relay's run() in a thread of its own, for tests that
 * act on the relay's surroundings (servers, files, signals, the store)
 * while it runs.  The test creates the relay, sets it in the struct, starts
 * the thread, and later stops it and frees the relay.
 */
#ifndef OUTBOX_TEST_RELAY_THREAD_H
#define OUTBOX_TEST_RELAY_THREAD_H

#include <pthread.h>

#include "outbox.h"

typedef struct relay_thread {
    pthread_t thread;
    outbox_relay *relay; /* borrowed: set by the test before relay_thread_start */
    int rc;              /* run()'s result, once the thread has ended */
    outbox_error err;    /* run()'s error details */
} relay_thread;

static inline void *relay_thread_main_(void *arg)
{
    relay_thread *t = arg;
    t->rc = outbox_relay_run(t->relay, &t->err);
    return NULL;
}

/* Runs t->relay in a new thread.  0, or -1 when the thread cannot be
 * created (the caller fails the test, or exits a child process). */
static inline int relay_thread_start(relay_thread *t)
{
    t->rc = -999;
    return pthread_create(&t->thread, NULL, relay_thread_main_, t) == 0 ? 0 : -1;
}

/* Waits for the thread (after the relay stopped by itself, --once); returns
 * run()'s result. */
static inline int relay_thread_join(relay_thread *t)
{
    pthread_join(t->thread, NULL);
    return t->rc;
}

/* Asks the relay to stop and waits for the thread; returns run()'s result.
 * The relay is not freed. */
static inline int relay_thread_stop(relay_thread *t)
{
    outbox_relay_stop(t->relay);
    return relay_thread_join(t);
}

#endif /* OUTBOX_TEST_RELAY_THREAD_H */
