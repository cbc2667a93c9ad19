/*
 * fuzz_msg.c - message validation as an application or the webhook
 * receiver meets it: outbox_msg_new (type, aggregate, JSON payload),
 * outbox_msg_set_headers_json, outbox_msg_set_header (with the
 * traceparent and tracestate rules), outbox_msg_set_id, the header
 * readers, the size check, outbox_traceparent_valid, outbox_uuid_valid,
 * outbox_msg_status_parse and outbox_time_parse.
 *
 * Input: type, aggregate_type, aggregate_id, payload, headers_json,
 * header name, header value, id, time, separated by NUL bytes.
 *
 * Beyond memory errors it checks two promises of outbox.h: a failed call
 * leaves *out NULL, and a time outbox_time_parse accepts is written by
 * outbox_time_format (years 1970..9999) as text that parses back to the
 * same instant.
 */
#include "fuzz.h"
#include "internal.h"

static void check_time(const char *text)
{
    int64_t t = 0, again = 0;
    char buf[32];
    /* outbox_time_format clamps to the years 1970..9999. */
    if (outbox_time_parse(text, &t) != 0 || t < 0 || t > INT64_C(253402300799999999)) return;
    outbox_time_format(t, buf);
    if (strlen(buf) >= sizeof buf) abort();
    if (outbox_time_parse(buf, &again) != 0 || again != t) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_fields f;
    outbox_msg *msg = NULL;
    outbox_error err;
    size_t i, n;

    if (size > 16384 || fuzz_fields_split(&f, data, size, 9) != 0) return 0;
    (void)outbox_traceparent_valid(f.field[6]);
    (void)outbox_uuid_valid(f.field[7]);
    (void)outbox_msg_status_parse(f.field[0]);
    check_time(f.field[8]);

    if (outbox_msg_new(&msg, f.field[0], f.field[2][0] ? f.field[1] : NULL, f.field[2],
                       f.field[3][0] ? f.field[3] : NULL, &err) != OUTBOX_OK) {
        if (msg != NULL) abort();
        /* The setters still run, on a message that is valid. */
        if (outbox_msg_new(&msg, "order.placed", "order", "42", NULL, &err) != OUTBOX_OK) abort();
    }
    (void)outbox_msg_set_headers_json(msg, f.field[4], &err);
    (void)outbox_msg_set_header(msg, f.field[5], f.field[6], &err);
    (void)outbox_msg_set_header(msg, "traceparent", f.field[6], &err);
    (void)outbox_msg_set_header(msg, "tracestate", f.field[6], &err);
    (void)outbox_msg_set_id(msg, f.field[7], &err);
    n = outbox_msg_header_count(msg);
    for (i = 0; i <= n; i++) {
        const char *name = outbox_msg_header_name(msg, i);
        if ((name == NULL) != (i == n)) abort();
        if (name && outbox_msg_header(msg, name) == NULL) abort();
        (void)outbox_msg_header_value(msg, i);
    }
    (void)outbox_msg_header(msg, f.field[5]);
    (void)outbox__msg_check_size(msg, &err);
    if (strlen(outbox_msg_headers_json(msg)) < 2) abort();
    outbox_msg_free(msg);
    fuzz_fields_free(&f);
    return 0;
}
