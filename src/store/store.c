/*
 * store.c - the store registry: picks the store driver by the URL's scheme.
 *
 * Drivers are `const outbox_store_ops` tables (src/store/<db>.c).  The
 * relay and the CLI open a store with outbox__store_open() and then only
 * call through store->ops.  Every driver the project has is listed, built
 * or not: one whose library this build leaves out has its table with open
 * NULL, so help and docs describe it and its URLs give "not built with X"
 * instead of "unknown scheme".  URLs in messages are redacted.
 */
#include "internal.h"

#include <ctype.h>
#include <string.h>

static const char no_libpq[] = "this build has no PostgreSQL store (not built with libpq)";
static const char no_mariadb[] =
    "this build has no MariaDB/MySQL store (not built with MariaDB Connector/C)";

/* The store drivers, by their scheme (one driver may have a table per
 * scheme: postgres and postgresql are the same store), and what a URL of a
 * driver this build has not gets as the reason. */
static const struct {
    const outbox_store_ops *ops;
    const char *not_built;
} drivers[] = {
    {&outbox__store_sqlite, NULL},         {&outbox__store_postgres, no_libpq},
    {&outbox__store_postgresql, no_libpq}, {&outbox__store_mysql, no_mariadb},
    {&outbox__store_mariadb, no_mariadb},
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

    for (i = 0; i < sizeof drivers / sizeof drivers[0]; i++) {
        if (!scheme_is(url, n, drivers[i].ops->scheme)) continue;
        if (drivers[i].ops->open == NULL)
            return outbox__error(err, OUTBOX_ENOTBUILT, "store URL '%s': %s", shown,
                                 drivers[i].not_built);
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

/* The i-th store driver, built or not, for outbox_driver_get. */
int outbox__store_driver(size_t i, outbox_driver_entry *out)
{
    const outbox_store_ops *ops;
    if (i >= sizeof drivers / sizeof drivers[0]) return 0;
    ops = drivers[i].ops;
    out->scheme = ops->scheme;
    out->usage = ops->usage;
    out->doc = ops->doc;
    out->built = ops->open != NULL;
    out->props = ops->props;
    return 1;
}
