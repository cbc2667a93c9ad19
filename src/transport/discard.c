/*
 * discard.c - the `discard:` destination: publishes nothing and confirms
 * every message.  It measures the relay and the store without any
 * destination cost (benchmarks) and drains an outbox on purpose.  Never use
 * it where the messages matter: they are deleted (or marked sent) unseen.
 */
#include "internal.h"

#include <string.h>

/* Non-NULL state so the registry's close logic stays uniform. */
static int discard_token;

static int discard_open(void **state, const char *url, const outbox_transport_config *cfg,
                        outbox_error *err)
{
    const char *rest = url + strlen("discard:");

    (void)cfg;
    *state = NULL;
    if (strcmp(rest, "") != 0 && strcmp(rest, "//") != 0)
        return outbox__error(err, OUTBOX_EBADURL,
                             "destination \"discard:\" takes nothing after the colon; "
                             "use \"discard:\"");
    *state = &discard_token;
    return OUTBOX_OK;
}

static int discard_publish(void *state, outbox_msg *const *msgs, size_t n,
                           outbox_publish_result *results)
{
    size_t i;
    (void)state;
    (void)msgs;
    for (i = 0; i < n; i++) {
        results[i].code = OUTBOX_OK;
        results[i].retry_after_ms = 0;
        results[i].error[0] = '\0';
    }
    return OUTBOX_OK;
}

static void discard_close(void *state)
{
    (void)state;
}

/* The discarding destination driver (see the top of this file). */
const outbox_transport_ops outbox__transport_discard = {
    .version = 4,
    .scheme = "discard",
    .open = discard_open,
    .publish = discard_publish,
    .close = discard_close,
    .reopen = NULL,
    .usage = "discard:",
    .doc = "Confirms every message and keeps nothing: for benchmarks, or to drain an "
           "outbox on purpose.",
    .props = NULL, /* no settings (the registry refuses any) */
    .publish_begin = NULL,
    .publish_end = NULL,
    .interrupt = NULL,
};
