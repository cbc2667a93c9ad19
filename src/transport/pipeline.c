/*
 * pipeline.c - which destinations can pipeline: the table of their
 * publish_begin/publish_end entry points (see outbox_transport_pipeline in
 * internal.h).  A separate table rather than fields of outbox_transport_ops,
 * since only two drivers have them; the relay asks here and falls back to
 * the synchronous publish for everything else.
 */
#include "internal.h"

#include <stddef.h>

static const outbox_transport_pipeline *const pipelines[] = {
#ifdef OUTBOX_HAVE_NATS
    &outbox__transport_nats_pipeline,
#endif
#ifdef OUTBOX_HAVE_RDKAFKA
    &outbox__transport_kafka_pipeline,
#endif
    NULL,
};

/* Borrowed pointer to a static table entry, or NULL (also for ops NULL). */
const outbox_transport_pipeline *outbox__transport_pipeline(const outbox_transport_ops *ops)
{
    size_t i;
    if (ops == NULL) return NULL;
    for (i = 0; pipelines[i] != NULL; i++)
        if (pipelines[i]->driver == ops) return pipelines[i];
    return NULL;
}
