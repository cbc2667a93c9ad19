/*
 * fuzz_route.c - route templates (outbox__route_new) and their rendering
 * (outbox__route_render) for NATS subjects and Kafka topics.
 *
 * Input: one byte choosing the kind (even: NATS subject, odd: Kafka
 * topic), then template, type, aggregate_type and aggregate_id separated
 * by NUL bytes.  The message is built as an application would
 * (outbox_msg_new); when its fields are refused the route is rendered
 * with a fixed valid message instead, so every accepted template renders.
 *
 * Beyond memory errors it checks what a rendered name promises (internal.h):
 * a NATS subject has no empty token, space, control byte, '*' or '>'; a
 * Kafka topic only [A-Za-z0-9._-].
 */
#include "fuzz.h"
#include "internal.h"

static void check_subject(const outbox_buf *b)
{
    size_t i;
    if (b->len == 0 || b->data[0] == '.' || b->data[b->len - 1] == '.') abort();
    for (i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (c <= 0x20 || c == 0x7f || c == '*' || c == '>') abort();
        if (c == '.' && b->data[i + 1] == '.') abort();
    }
}

static void check_topic(const outbox_buf *b)
{
    size_t i;
    if (b->len == 0) abort();
    for (i = 0; i < b->len; i++) {
        char c = b->data[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_fields f;
    outbox_route *route = NULL;
    outbox_msg *msg = NULL;
    outbox_error err;
    outbox_buf b;
    int kind;

    if (size < 1 || size > 4096) return 0;
    kind = data[0] & 1 ? OUTBOX_ROUTE_KAFKA_TOPIC : OUTBOX_ROUTE_NATS_SUBJECT;
    if (fuzz_fields_split(&f, data + 1, size - 1, 4) != 0) return 0;
    if (outbox__route_new(&route, f.field[0], kind, &err) != OUTBOX_OK) {
        if (route != NULL) abort(); /* *out is NULL on failure */
        fuzz_fields_free(&f);
        return 0;
    }
    (void)outbox__route_is_fixed(route);
    if (outbox_msg_new(&msg, f.field[1], f.field[2], f.field[3], NULL, &err) != OUTBOX_OK &&
        outbox_msg_new(&msg, "order.placed", "order", "42", NULL, &err) != OUTBOX_OK)
        abort();
    outbox__buf_init(&b);
    if (outbox__route_render(route, msg, &b, &err) == OUTBOX_OK) {
        if (kind == OUTBOX_ROUTE_NATS_SUBJECT)
            check_subject(&b);
        else
            check_topic(&b);
    }
    outbox__buf_free(&b);
    outbox_msg_free(msg);
    outbox__route_free(route);
    fuzz_fields_free(&f);
    return 0;
}
