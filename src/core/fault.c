/*
 * fault.c - fault points for test builds (see internal.h, "Fault points").
 *
 * OUTBOX_FAULT is parsed once, on the first point reached.  Each entry
 * names a point, an action (crash, exit, error) and when it fires (the N-th
 * hit, or each hit with probability X).  Hit counters are atomic, so points
 * reached from several threads count every hit once.  Probabilistic
 * decisions hash (OUTBOX_FAULT_SEED, point, hit number), so a seeded run
 * repeats the same faults.  Malformed entries are logged once and ignored.
 * Release builds do not compile this file's body.
 *
 * In-process sweeps (tests/test_io_sweep.c) replace the configuration
 * between runs with outbox__fault_set and read outbox__fault_fired; the
 * `error=ERRNO` form gives a system-call point the errno it fails with.
 */
#include "internal.h"

#ifdef OUTBOX_FAULT_INJECTION

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ACTION_CRASH = 1, ACTION_EXIT = 2, ACTION_ERROR = 3 };
enum { MAX_FAULTS = 32, MAX_NAME = 64 };

typedef struct fault_entry {
    char name[MAX_NAME];
    int action;
    uint64_t nth;       /* fire on this hit (1-based); 0 when probabilistic */
    double probability; /* used when nth == 0 */
    int errnum;         /* error=ERRNO: the errno a system-call point fails with */
    atomic_uint_fast64_t hits;
} fault_entry;

static fault_entry faults[MAX_FAULTS];
static int fault_count;
static atomic_uint_fast64_t fault_fired;

/* The errno values `error=NAME` accepts: the ways a disk fails. */
static const struct {
    const char *name;
    int value;
} errno_names[] = {{"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
static uint64_t fault_seed;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Parses one "name:action[:when]" entry of length n; 0 on success. */
static int parse_entry(const char *s, size_t n, fault_entry *e)
{
    const char *c1 = memchr(s, ':', n), *c2, *end = s + n, *a;
    size_t alen;
    char when[64];
    memset(e, 0, sizeof *e);
    if (!c1 || c1 == s || (size_t)(c1 - s) >= MAX_NAME) return -1;
    memcpy(e->name, s, (size_t)(c1 - s));
    a = c1 + 1;
    c2 = memchr(a, ':', (size_t)(end - a));
    alen = (size_t)((c2 ? c2 : end) - a);
    if (alen == 5 && memcmp(a, "crash", 5) == 0)
        e->action = ACTION_CRASH;
    else if (alen == 4 && memcmp(a, "exit", 4) == 0)
        e->action = ACTION_EXIT;
    else if (alen >= 5 && memcmp(a, "error", 5) == 0) {
        e->action = ACTION_ERROR;
        if (alen > 5) { /* error=ERRNO */
            size_t i, nlen = alen - 6;
            if (a[5] != '=') return -1;
            for (i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
                if (strlen(errno_names[i].name) == nlen &&
                    memcmp(a + 6, errno_names[i].name, nlen) == 0)
                    e->errnum = errno_names[i].value;
            if (e->errnum == 0) return -1;
        }
    } else
        return -1;
    e->nth = 1;
    if (c2) {
        size_t wlen = (size_t)(end - c2 - 1);
        char *stop;
        if (wlen == 0 || wlen >= sizeof when) return -1;
        memcpy(when, c2 + 1, wlen);
        when[wlen] = '\0';
        if (when[0] == 'p') {
            if (when[1] == '\0') return -1;
            e->probability = strtod(when + 1, &stop);
            if (*stop || e->probability < 0 || e->probability > 1) return -1;
            e->nth = 0;
        } else {
            unsigned long long v;
            if (when[0] < '0' || when[0] > '9') return -1;
            v = strtoull(when, &stop, 10);
            if (*stop || v == 0) return -1;
            e->nth = v;
        }
    }
    atomic_init(&e->hits, 0);
    return 0;
}

/* Replaces the configuration with the entries of spec (NULL: none). */
static void parse_spec(const char *spec)
{
    fault_count = 0;
    while (spec && *spec) {
        size_t n = strcspn(spec, ",");
        if (n > 0) {
            if (fault_count >= MAX_FAULTS) {
                outbox__log(OUTBOX_LOG_ERROR, "fault",
                            "OUTBOX_FAULT: more than %d entries, the rest are ignored", MAX_FAULTS);
                break;
            }
            if (parse_entry(spec, n, &faults[fault_count]) == 0)
                fault_count++;
            else
                outbox__log(OUTBOX_LOG_ERROR, "fault",
                            "OUTBOX_FAULT entry \"%.*s\" ignored: expected "
                            "name:crash|exit|error[=ENOSPC|EIO|EDQUOT|EROFS][:N|:pX]",
                            (int)(n > 200 ? 200 : n), spec);
        }
        spec += n;
        if (*spec == ',') spec++;
    }
}

static void parse_env(void)
{
    const char *seed = getenv("OUTBOX_FAULT_SEED");
    fault_seed = seed && *seed ? strtoull(seed, NULL, 10) : (uint64_t)outbox__now_us();
    parse_spec(getenv("OUTBOX_FAULT"));
}

void outbox__fault_set(const char *spec)
{
    pthread_once(&fault_once, parse_env); /* so the environment cannot override it later */
    parse_spec(spec);
    atomic_store(&fault_fired, 0);
}

uint64_t outbox__fault_fired(void)
{
    return atomic_load(&fault_fired);
}

/* Counts a hit on point `name` and applies its configured fault: returns
 * OUTBOX_EFAULT for "error" (and its errno, or fallback, in *errnum),
 * does not return for "crash"/"exit", and 0 when nothing is configured or
 * it is not this hit's turn. */
static int hit_point(const char *name, int fallback, int *errnum)
{
    int i, rc = 0;
    pthread_once(&fault_once, parse_env);
    for (i = 0; i < fault_count; i++) {
        fault_entry *e = &faults[i];
        uint64_t hit;
        int fire;
        if (strcmp(e->name, name) != 0) continue;
        hit = atomic_fetch_add(&e->hits, 1) + 1;
        if (e->nth)
            fire = hit == e->nth;
        else
            fire = (double)(mix64(fault_seed ^ outbox__hash_text(name) ^ mix64(hit)) >> 11) *
                       (1.0 / 9007199254740992.0) <
                   e->probability;
        if (!fire) continue;
        atomic_fetch_add(&fault_fired, 1);
        switch (e->action) {
        case ACTION_CRASH:
            outbox__log(OUTBOX_LOG_WARN, "fault", "fault point %s: crash", name);
            kill(getpid(), SIGKILL);
            _exit(137); /* not reached */
        case ACTION_EXIT:
            outbox__log(OUTBOX_LOG_WARN, "fault", "fault point %s: exit", name);
            _exit(99);
        default:
            outbox__log(OUTBOX_LOG_INFO, "fault", "fault point %s: error (hit %llu)", name,
                        (unsigned long long)hit);
            rc = OUTBOX_EFAULT;
            *errnum = e->errnum ? e->errnum : fallback;
        }
    }
    return rc;
}

int outbox__fault(const char *name)
{
    int errnum;
    return hit_point(name, 0, &errnum);
}

int outbox__fault_errno(const char *name, int fallback)
{
    int errnum = 0;
    return hit_point(name, fallback, &errnum) != 0 ? errnum : 0;
}

#else
typedef int outbox__fault_not_built; /* keeps the translation unit non-empty */
#endif
