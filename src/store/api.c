/*
 * api.c - the public store handle (outbox.h, "Store handle"): what the
 * `outbox` CLI does to a store, for any C program.
 *
 * The handle is the registry's outbox_store {ops, state} on the heap; each
 * call checks its arguments and calls through the driver's ops table, so a
 * driver adds nothing here.  Optional ops a driver lacks (drop, inbox
 * purge) give OUTBOX_ENOTBUILT, and the status fields an older driver does
 * not fill are zeroed and flagged (blocked_counted = 0).
 */
#include "internal.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* OUTBOX_EINVAL naming fn when store or a required pointer is NULL. */
static int check_args(const outbox_store *store, int required_present, const char *fn,
                      outbox_error *err)
{
    if (store == NULL || store->ops == NULL)
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: store is NULL (open it with "
                             "outbox_store_open)",
                             fn);
    if (!required_present)
        return outbox__error(err, OUTBOX_EINVAL, "%s: a required argument is NULL", fn);
    return OUTBOX_OK;
}

int outbox_store_open(const char *url, outbox_store **out, outbox_error *err)
{
    outbox_store *store;
    int rc;

    if (out == NULL) return outbox__error(err, OUTBOX_EINVAL, "outbox_store_open: out is NULL");
    *out = NULL;
    store = outbox__calloc(1, sizeof *store);
    if (store == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory opening the store");
    rc = outbox__store_open(store, url, err);
    if (rc != OUTBOX_OK) {
        outbox__free(store);
        return rc;
    }
    *out = store;
    return OUTBOX_OK;
}

void outbox_store_close(outbox_store *store)
{
    if (store == NULL) return;
    outbox__store_close(store);
    outbox__free(store);
}

const char *outbox_store_scheme(const outbox_store *store)
{
    return store && store->ops ? store->ops->scheme : "";
}

int outbox_store_init(outbox_store *store, int *from_version, int *to_version, outbox_error *err)
{
    int from = 0, to = 0;
    int rc = check_args(store, 1, "outbox_store_init", err);
    if (rc != OUTBOX_OK) return rc;
    rc = store->ops->init(store->state, &from, &to, err);
    if (from_version) *from_version = from;
    if (to_version) *to_version = to;
    return rc;
}

int outbox_store_check_schema(outbox_store *store, outbox_error *err)
{
    int rc = check_args(store, 1, "outbox_store_check_schema", err);
    return rc != OUTBOX_OK ? rc : store->ops->check_schema(store->state, err);
}

int outbox_store_enqueue(outbox_store *store, const outbox_msg *msg, outbox_error *err)
{
    int rc = check_args(store, msg != NULL, "outbox_store_enqueue", err);
    return rc != OUTBOX_OK ? rc : store->ops->enqueue(store->state, msg, err);
}

int outbox_store_status(outbox_store *store, outbox_status *out, size_t out_size, outbox_error *err)
{
    outbox_status st;
    int rc = check_args(store, out != NULL, "outbox_store_status", err);
    if (rc != OUTBOX_OK) return rc;
    if (out_size == 0)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_store_status: out_size is 0; pass "
                             "sizeof your outbox_status");
    memset(&st, 0, sizeof st);
    rc = store->ops->status(store->state, &st, err);
    if (rc != OUTBOX_OK) return rc;
    st.lease_owner[sizeof st.lease_owner - 1] = '\0';
    st.lease_host[sizeof st.lease_host - 1] = '\0';
    st.relay_note[sizeof st.relay_note - 1] = '\0';
    st.blocked_counted = store->ops->version >= 5;
    if (!st.blocked_counted) { /* an older driver leaves these unset */
        st.blocked = st.aggregates_blocked = 0;
        st.lease_pid = 0;
        st.lease_host[0] = st.relay_note[0] = '\0';
        st.lease_holder_gone = 0;
    }
    memcpy(out, &st, out_size < sizeof st ? out_size : sizeof st);
    return OUTBOX_OK;
}

void outbox_list_params_init(outbox_list_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->size = sizeof *params;
    params->status = -1;
    params->limit = 0;
}

int outbox_store_list(outbox_store *store, const outbox_list_params *given, outbox_list_fn fn,
                      void *user, outbox_error *err)
{
    outbox_list_params copy, *params = &copy;
    int rc = check_args(store, fn != NULL, "outbox_store_list", err);
    if (rc != OUTBOX_OK) return rc;
    /* Only the caller's size is read: fields past it keep their defaults. */
    outbox_list_params_init(&copy);
    if (given != NULL) {
        rc = outbox__options_copy(&copy, sizeof copy, given, given->size,
                                  offsetof(outbox_list_params, limit) + sizeof copy.limit,
                                  "outbox_store_list", "outbox_list_params_init", err);
        if (rc != OUTBOX_OK) return rc;
    }
    if (params->status != -1 &&
        (params->status < OUTBOX_STATUS_PENDING || params->status > OUTBOX_STATUS_FAILED))
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_store_list: status %d is not "
                             "OUTBOX_STATUS_* or -1 (all)",
                             params->status);
    if (params->limit < 0)
        return outbox__error(err, OUTBOX_EINVAL,
                             "outbox_store_list: limit %lld is negative "
                             "(0: no limit)",
                             (long long)params->limit);
    return store->ops->list(store->state, params, fn, user, err);
}

int outbox_store_get(outbox_store *store, const char *id, outbox_msg **out, outbox_error *err)
{
    char canonical[37];
    int rc = check_args(store, id != NULL && out != NULL, "outbox_store_get", err);
    if (rc != OUTBOX_OK) return rc;
    *out = NULL;
    if ((rc = outbox__uuid_canonical(id, canonical, "message id", err)) != OUTBOX_OK) return rc;
    return store->ops->get(store->state, canonical, out, err);
}

/* Checks the "(ids | all)" arguments of retry and drop and copies the ids
 * lower-cased into one allocation (*copy, freed by the caller; NULL for
 * all).  OUTBOX_EINVAL, OUTBOX_EBADID or OUTBOX_ENOMEM naming fn. */
static int canonical_ids(const char *fn, const char *const *ids, size_t n, int all,
                         const char ***copy, outbox_error *err)
{
    const char **ptrs;
    char *text;
    int rc;

    *copy = NULL;
    if ((n > 0) == (all != 0) || (n > 0 && ids == NULL))
        return outbox__error(err, OUTBOX_EINVAL,
                             "%s: give message ids (n > 0) or all, "
                             "not both or neither",
                             fn);
    if (n == 0) return OUTBOX_OK;
    if (n > SIZE_MAX / (sizeof *ptrs + 37))
        ptrs = NULL;
    else
        ptrs = outbox__malloc(n * (sizeof *ptrs + 37));
    if (ptrs == NULL) return outbox__error(err, OUTBOX_ENOMEM, "%s: out of memory", fn);
    text = (char *)(ptrs + n);
    for (size_t i = 0; i < n; i++) {
        ptrs[i] = text + i * 37;
        rc = ids[i] ? outbox__uuid_canonical(ids[i], text + i * 37, "message id", err)
                    : outbox__error(err, OUTBOX_EINVAL, "%s: ids[%zu] is NULL", fn, i);
        if (rc != OUTBOX_OK) {
            outbox__free(ptrs);
            return rc;
        }
    }
    *copy = ptrs;
    return OUTBOX_OK;
}

int outbox_store_retry(outbox_store *store, const char *const *ids, size_t n, int all,
                       int64_t *count, outbox_error *err)
{
    const char **copy = NULL;
    int64_t done = 0;
    int rc = check_args(store, 1, "outbox_store_retry", err);
    if (rc == OUTBOX_OK) rc = canonical_ids("outbox_store_retry", ids, n, all, &copy, err);
    if (rc == OUTBOX_OK) rc = store->ops->retry(store->state, copy, n, all, &done, err);
    if (count) *count = rc == OUTBOX_OK ? done : 0;
    outbox__free(copy);
    return rc;
}

int outbox_store_drop(outbox_store *store, const char *const *ids, size_t n, int all,
                      outbox_drop_archive_fn archive, void *user, int64_t *count, outbox_error *err)
{
    const char **copy = NULL;
    int64_t done = 0;
    int rc = check_args(store, 1, "outbox_store_drop", err);
    if (rc == OUTBOX_OK && !OUTBOX__HAS(store->ops, 5, drop))
        rc = outbox__error(err, OUTBOX_ENOTBUILT,
                           "the %s store of this build cannot drop "
                           "messages",
                           store->ops->scheme);
    if (rc == OUTBOX_OK) rc = canonical_ids("outbox_store_drop", ids, n, all, &copy, err);
    if (rc == OUTBOX_OK)
        rc = store->ops->drop(store->state, copy, n, all, archive, user, &done, err);
    if (count) *count = rc == OUTBOX_OK ? done : 0;
    outbox__free(copy);
    return rc;
}

int outbox_store_purge(outbox_store *store, int64_t older_than_ms, int64_t *count,
                       outbox_error *err)
{
    int64_t done = 0;
    int rc = check_args(store, 1, "outbox_store_purge", err);
    if (rc == OUTBOX_OK && older_than_ms < 0)
        rc = outbox__error(err, OUTBOX_EINVAL,
                           "outbox_store_purge: older_than_ms %lld is "
                           "negative",
                           (long long)older_than_ms);
    if (rc == OUTBOX_OK && older_than_ms > INT64_MAX / 1000)
        rc = outbox__error(err, OUTBOX_EINVAL,
                           "outbox_store_purge: older_than_ms %lld is "
                           "too large",
                           (long long)older_than_ms);
    if (rc == OUTBOX_OK)
        rc = store->ops->purge(store->state, outbox__now_us() - older_than_ms * 1000, &done, err);
    if (count) *count = rc == OUTBOX_OK ? done : 0;
    return rc;
}

int outbox_store_inbox_purge(outbox_store *store, int64_t retention_ms,
                             int64_t redelivery_horizon_ms, int64_t *count, outbox_error *err)
{
    int64_t done = 0;
    int rc = check_args(store, 1, "outbox_store_inbox_purge", err);
    if (rc == OUTBOX_OK && !OUTBOX__HAS(store->ops, 3, inbox_purge))
        rc = outbox__error(err, OUTBOX_ENOTBUILT,
                           "the %s store of this build has no inbox "
                           "to purge",
                           store->ops->scheme);
    if (rc == OUTBOX_OK)
        rc = store->ops->inbox_purge(store->state, retention_ms, redelivery_horizon_ms, &done, err);
    if (count) *count = rc == OUTBOX_OK ? done : 0;
    return rc;
}
