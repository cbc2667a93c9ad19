/*
 * store.c - the store registry: picks the store driver by the URL's scheme.
 *
 * Drivers are `const outbox_store_ops` tables (src/store/<db>.c).  The
 * relay and the CLI open a store with outbox__store_open() and then only
 * call through store->ops.  Schemes of drivers that exist in the project but
 * are not compiled into this build are recognised, so the user gets "not
 * built with X" instead of "unknown scheme".  URLs in messages are redacted.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>

#ifdef OUTBOX_HAVE_LIBPQ
#define POSTGRES (&outbox__store_postgres)
#else
#define POSTGRES NULL
#endif

/* The store drivers, by URL scheme (one driver may answer to several
 * schemes: postgres and postgresql are the same store); ops NULL: the
 * project has it, this build does not.  usage and doc stand in for a
 * driver's own (help and docs list every store, built or not). */
static const struct {
    const char *scheme;
    const outbox_store_ops *ops;
    const char *usage;
    const char *doc;
} drivers[] = {
    {"sqlite", &outbox__store_sqlite, NULL, NULL},
    {"postgres", POSTGRES, "postgres://USER@HOST/DB",
     "PostgreSQL: a libpq connection URI, or postgres:KEY=VALUE ... libpq settings (see the "
     "README's PostgreSQL section)."},
    {"postgresql", POSTGRES, "postgresql://USER@HOST/DB", "The same store as postgres://."},
};

/* Known schemes whose driver is absent from this build, and why. */
static const struct {
    const char *scheme;
    const char *reason;
} absent[] = {
#ifndef OUTBOX_HAVE_LIBPQ
    {"postgres", "this build has no PostgreSQL store (not built with libpq)"},
    {"postgresql", "this build has no PostgreSQL store (not built with libpq)"},
#endif
    {NULL, NULL}
};

/* Case-insensitive compare of the n-byte scheme with name. */
static int scheme_is(const char *scheme, size_t n, const char *name)
{
    size_t i;
    if (strlen(name) != n) return 0;
    for (i = 0; i < n; i++)
        if (tolower((unsigned char)scheme[i]) != (unsigned char)name[i]) return 0;
    return 1;
}

/* Opens the store named by url.  On success store->ops/state are set and the
 * caller closes the store with outbox__store_close.  On failure *store is
 * zeroed and err says which URL (redacted) and how to fix it:
 * OUTBOX_EINVAL (NULL arguments), OUTBOX_EBADURL, OUTBOX_ENOTBUILT, or the
 * driver's own open error. */
int outbox__store_open(outbox_store *store, const char *url, outbox_error *err)
{
    char shown[512];
    const char *colon;
    size_t n, i;
    void *state = NULL;
    int rc;

    if (!store) return outbox__error(err, OUTBOX_EINVAL, "outbox__store_open: store is NULL");
    store->ops = NULL;
    store->state = NULL;
    if (!url || !*url)
        return outbox__error(err, OUTBOX_EBADURL,
                             "store URL is empty: pass --store sqlite:PATH (or set OUTBOX_STORE)");

    outbox__url_redact(url, shown, sizeof shown);
    colon = strchr(url, ':');
    n = colon ? (size_t)(colon - url) : 0;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (!isalnum(c) && c != '+' && c != '-' && c != '.') {
            n = 0;
            break;
        }
    }
    if (n == 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "store URL '%s' has no scheme: write it as sqlite:PATH "
                             "(supported schemes: sqlite)",
                             shown);

    for (i = 0; absent[i].scheme; i++)
        if (scheme_is(url, n, absent[i].scheme))
            return outbox__error(err, OUTBOX_ENOTBUILT, "store URL '%s': %s", shown,
                                 absent[i].reason);

    for (i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
        if (drivers[i].ops == NULL || !scheme_is(url, n, drivers[i].scheme)) continue;
        rc = drivers[i].ops->open(&state, url, err);
        if (rc != OUTBOX_OK) return rc;
        store->ops = drivers[i].ops;
        store->state = state;
        return OUTBOX_OK;
    }
    return outbox__error(err, OUTBOX_EBADURL,
                         "store URL '%s' has an unsupported scheme '%.*s': supported "
                         "schemes: sqlite (sqlite:PATH)"
#ifdef OUTBOX_HAVE_LIBPQ
                         ", postgres (postgres://user@host/db or postgres:KEY=VALUE ...)"
#endif
                         ,
                         shown, (int)n, url);
}

/* Closes an open store and zeroes it; harmless on a zeroed or closed store. */
void outbox__store_close(outbox_store *store)
{
    if (!store) return;
    if (store->ops && store->state) store->ops->close(store->state);
    store->ops = NULL;
    store->state = NULL;
}

/* The i-th store driver, built or not, for outbox_driver_get: its own
 * usage, doc and props when it has them (ops version 6), else the table's. */
int outbox__store_driver(size_t i, outbox_driver_entry *out)
{
    const outbox_store_ops *ops;
    if (i >= sizeof drivers / sizeof drivers[0]) return 0;
    ops = drivers[i].ops;
    out->scheme = drivers[i].scheme;
    out->built = ops != NULL;
    out->usage = ops && ops->version >= 6 && ops->usage ? ops->usage : drivers[i].usage;
    out->doc = ops && ops->version >= 6 && ops->doc ? ops->doc : drivers[i].doc;
    out->props = ops && ops->version >= 6 ? ops->props : NULL;
    return 1;
}
