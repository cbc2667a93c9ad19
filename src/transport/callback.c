/*
 * callback.c - the in-process destination: the application's
 * outbox_publish_fn, called once per message in batch (enqueue) order.
 *
 * Ordering (guarantee 4): once a message of an aggregate fails, the later
 * messages of that aggregate in the same batch are not passed to the
 * callback at all (result OUTBOX_EPUBLISH, "held back ..."), so the
 * application never sees them before the failed one; the relay records
 * them as unsent.  Return codes: OUTBOX_OK confirms; OUTBOX_EREJECTED fails
 * the attempt for good; anything else is retried with backoff.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct callback_state {
    outbox_publish_fn publish;
    void *user;
    const char **failed; /* aggregate ids (borrowed from the batch) that failed */
    size_t failed_cap;
} callback_state;

static int callback_open(void **state, const char *url, const outbox_transport_config *cfg,
                         outbox_error *err)
{
    callback_state *st;

    (void)url;
    *state = NULL;
    if (cfg->publish == NULL)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "the callback destination needs a publish "
                             "function (outbox_relay_options.publish)");
    st = outbox__calloc(1, sizeof *st);
    if (st == NULL) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    st->publish = cfg->publish;
    st->user = cfg->publish_user;
    *state = st;
    return OUTBOX_OK;
}

/* Copies src into dst (size > 0), cut at a UTF-8 character boundary. */
static void copy_text(char *dst, size_t size, const char *src)
{
    size_t len = strlen(src);
    if (len >= size) {
        len = size - 1;
        while (len > 0 && ((unsigned char)src[len] & 0xC0) == 0x80)
            len--;
    }
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static int is_held(const callback_state *st, size_t nfailed, const char *aggregate_id)
{
    size_t i;
    for (i = 0; i < nfailed; i++)
        if (strcmp(st->failed[i], aggregate_id) == 0) return 1;
    return 0;
}

static int callback_publish(void *state, outbox_msg *const *msgs, size_t n,
                            outbox_publish_result *results)
{
    callback_state *st = state;
    size_t nfailed = 0, i;

    /* Failures are the exception: a list scanned linearly is enough, and it
     * is only scanned once something failed in this batch. */
    if (st->failed_cap < n) {
        const char **f = outbox__realloc(st->failed, n * sizeof *f);
        if (f == NULL) return OUTBOX_ENOMEM;
        st->failed = f;
        st->failed_cap = n;
    }
    for (i = 0; i < n; i++) {
        outbox_publish_result *r = &results[i];
        const outbox_msg *m = msgs[i];
        outbox_error e;
        int rc;

        r->retry_after_ms = 0;
        r->error[0] = '\0';
        if (nfailed > 0 && is_held(st, nfailed, m->aggregate_id)) {
            r->code = OUTBOX_EPUBLISH;
            snprintf(r->error, sizeof r->error,
                     "held back behind an earlier message of aggregate %s", m->aggregate_id);
            continue;
        }
        e.code = OUTBOX_OK;
        e.message[0] = '\0';
        rc = st->publish(st->user, m, &e);
        if (rc == OUTBOX_OK) {
            r->code = OUTBOX_OK;
            continue;
        }
        if (rc == OUTBOX_EREJECTED)
            r->code = OUTBOX_EREJECTED;
        else if (rc < 0)
            r->code = rc;
        else
            r->code = OUTBOX_EPUBLISH; /* a positive return is not a confirmation */
        e.message[sizeof e.message - 1] = '\0';
        if (e.message[0] != '\0')
            copy_text(r->error, sizeof r->error, e.message);
        else if (rc > 0)
            snprintf(r->error, sizeof r->error, "publish callback returned %d", rc);
        else
            snprintf(r->error, sizeof r->error, "publish callback returned %s",
                     outbox_strerror(rc));
        st->failed[nfailed++] = m->aggregate_id;
    }
    return OUTBOX_OK;
}

static void callback_close(void *state)
{
    callback_state *st = state;
    if (st == NULL) return;
    outbox__free(st->failed);
    outbox__free(st);
}

/* The in-process callback destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_callback = {
    .version = 4,
    .scheme = "callback",
    .open = callback_open,
    .publish = callback_publish,
    .close = callback_close,
    .reopen = NULL,
    .usage = "(in-process)",
    .doc = "The application's publish function (outbox_relay_options.publish), called "
           "once per message; it has no URL.",
    .props = NULL, /* no settings (the registry refuses any) */
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = NULL,
};
