/*
 * alloc.c - the library's one allocation hook (see internal.h, "Memory").
 *
 * Every allocation in src/ goes through outbox__malloc and friends, so that
 * a test build can fail the N-th one and a test can sweep N = 1, 2, ...
 * over an operation (tests/test_alloc_sweep.c), as SQLite's and curl's
 * torture tests do.  The memory itself is libc's: the hook only counts and
 * fails, so a block from outbox__malloc may be released with free() and
 * one from a library (realpath, json_dumps) with outbox__free.
 *
 * Arming: outbox__alloc_fail_at(n) (tests in the same process) or the
 * environment variable OUTBOX_ALLOC_FAIL=N (whole-process runs such as
 * the CLI), read once on the first allocation; the latter says on stderr
 * when the failure happened, so the sweep knows when N went past the last
 * allocation.  Only the N-th allocation
 * after arming fails; those after it succeed again, so the code under test
 * goes on with the failure handled.  Release builds do not compile this
 * file's body: the hook is a set of macros over the libc calls.
 */
#include "internal.h"

#ifdef OUTBOX_FAULT_INJECTION

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static atomic_uint_fast64_t alloc_calls;    /* allocations counted since arming */
static atomic_uint_fast64_t alloc_fail_nth; /* 0: disarmed */
static atomic_uint_fast64_t alloc_failures; /* failures injected since arming */
static atomic_int alloc_from_env;           /* armed by OUTBOX_ALLOC_FAIL */
static pthread_once_t alloc_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
    const char *v = getenv("OUTBOX_ALLOC_FAIL");
    if (v != NULL && *v >= '0' && *v <= '9') {
        atomic_store(&alloc_fail_nth, strtoull(v, NULL, 10));
        atomic_store(&alloc_from_env, 1);
    }
}

/* Tells a whole-process sweep (tests/test_alloc_cli.sh) that the failure
 * it armed happened: written to stderr directly, as it may come before the
 * program installed a logger, and a log line could need memory itself. */
static void say_injected(uint64_t nth)
{
    char line[96];
    int n = snprintf(line, sizeof line,
                     "outbox: injected allocation failure %llu "
                     "(OUTBOX_ALLOC_FAIL)\n",
                     (unsigned long long)nth);
    if (n > 0 && write(2, line, (size_t)n) < 0) return;
}

/* See internal.h. */
int outbox__alloc_fault(void)
{
    uint_fast64_t nth, call;
    pthread_once(&alloc_once, read_env);
    call = atomic_fetch_add(&alloc_calls, 1) + 1;
    nth = atomic_load(&alloc_fail_nth);
    if (nth == 0 || call != nth) return 0;
    atomic_fetch_add(&alloc_failures, 1);
    if (atomic_load(&alloc_from_env)) say_injected(nth);
    return 1;
}

/* See internal.h. */
void outbox__alloc_fail_at(uint64_t n)
{
    pthread_once(&alloc_once, read_env);
    atomic_store(&alloc_from_env, 0);
    atomic_store(&alloc_fail_nth, 0);
    atomic_store(&alloc_calls, 0);
    atomic_store(&alloc_failures, 0);
    atomic_store(&alloc_fail_nth, n);
}

uint64_t outbox__alloc_count(void)
{
    return atomic_load(&alloc_calls);
}

uint64_t outbox__alloc_failures(void)
{
    return atomic_load(&alloc_failures);
}

void *outbox__malloc(size_t n)
{
    return outbox__alloc_fault() ? NULL : malloc(n);
}

void *outbox__calloc(size_t count, size_t size)
{
    return outbox__alloc_fault() ? NULL : calloc(count, size);
}

void *outbox__realloc(void *p, size_t n)
{
    return outbox__alloc_fault() ? NULL : realloc(p, n);
}

char *outbox__strdup(const char *s)
{
    return outbox__alloc_fault() ? NULL : strdup(s);
}

char *outbox__strndup(const char *s, size_t n)
{
    return outbox__alloc_fault() ? NULL : strndup(s, n);
}

void outbox__free(void *p)
{
    free(p);
}

#else
typedef int outbox__alloc_not_built; /* keeps the translation unit non-empty */
#endif
