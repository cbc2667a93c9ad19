/*
 * options.c - default relay options (the values documented in outbox.h).
 */
#include "internal.h"

#include <string.h>

/* Fills opts with the defaults; strings point to static text. */
void outbox_relay_options_init(outbox_relay_options *opts)
{
    if (!opts) return;
    memset(opts, 0, sizeof *opts);
    opts->size = sizeof *opts;
    opts->batch_size = 512;
    opts->max_attempts = 10;
    opts->backoff_base_ms = 500;
    opts->backoff_max_ms = 300000;
    opts->on_sent = OUTBOX_ON_SENT_DELETE;
    opts->failed_blocks_aggregate = 1;
    opts->poll_interval_ms = 1000;
    opts->change_check_ms = 2;
    opts->lease_ttl_ms = 10000;
    opts->wait_for_lease = 0;
    opts->once = 0;
    opts->source = "/outbox";
    opts->name = NULL; /* the relay uses host:pid */
    opts->publish = NULL;
    opts->publish_user = NULL;
}
