/*
 * fuzz_cloudevents.c - the CloudEvents structured-mode encoder
 * (outbox__cloudevent_json, outbox__cloudevent_lines) and the extension
 * attribute names (outbox__cloudevent_ext_name), over messages built from
 * the input as an application builds them.
 *
 * Input: type, aggregate_type, aggregate_id, payload, headers_json, id,
 * time, source, separated by NUL bytes.  A source that is not UTF-8 is
 * skipped: outbox_relay_new refuses it (found by this target).
 *
 * Beyond memory errors it checks the encoder's promise: every line is one
 * JSON object with no key given twice (a header that would clash gets an
 * "x" prefix), whose id, type and data are the message's.
 */
#include "fuzz.h"
#include "internal.h"

#include <jansson.h>

static void check_string(json_t *ev, const char *key, const char *want)
{
    const char *have = json_string_value(json_object_get(ev, key));
    if (have == NULL || strcmp(have, want) != 0) abort();
}

static void check_event(const char *line, size_t len, const outbox_msg *msg)
{
    json_error_t jerr;
    json_t *ev = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr);
    json_t *data, *payload;
    if (ev == NULL || !json_is_object(ev)) abort();
    check_string(ev, "id", msg->id);
    check_string(ev, "type", msg->type);
    data = json_object_get(ev, "data");
    payload = json_loads(msg->payload, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &jerr);
    if (data == NULL || payload == NULL || !json_equal(data, payload)) abort();
    json_decref(payload);
    json_decref(ev);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t name_sizes[] = {1, 2, 8, 64};
    fuzz_fields f;
    outbox_msg *msg = NULL;
    outbox_msg *msgs[2];
    outbox_error err;
    outbox_buf b;
    json_t *source;
    int64_t t;
    size_t i, j;

    if (size > 16384 || fuzz_fields_split(&f, data, size, 8) != 0) return 0;
    if (outbox_msg_new(&msg, f.field[0], f.field[1], f.field[2], f.field[3][0] ? f.field[3] : NULL,
                       &err) != OUTBOX_OK &&
        outbox_msg_new(&msg, "order.placed", "order", "42", f.field[3][0] ? f.field[3] : NULL,
                       &err) != OUTBOX_OK &&
        outbox_msg_new(&msg, "order.placed", "order", "42", NULL, &err) != OUTBOX_OK)
        abort();
    (void)outbox_msg_set_headers_json(msg, f.field[4], &err);
    (void)outbox_msg_set_id(msg, f.field[5], &err);
    if (outbox_time_parse(f.field[6], &t) == 0) (void)outbox_msg_set_occurred_at(msg, t, &err);

    for (i = 0; i < msg->header_count; i++) {
        for (j = 0; j < sizeof name_sizes / sizeof name_sizes[0]; j++) {
            char *name = malloc(name_sizes[j]);
            if (name == NULL) abort();
            outbox__cloudevent_ext_name(msg->header_names[i], name, name_sizes[j]);
            if (strlen(name) >= name_sizes[j]) abort();
            free(name);
        }
    }

    /* The relay refuses a source that is not UTF-8 (outbox_relay_new), the
     * one way a source reaches the encoder; json_string refuses the same. */
    source = json_string(f.field[7]);
    if (source == NULL) goto out;
    json_decref(source);

    msgs[0] = msgs[1] = msg;
    outbox__buf_init(&b);
    if (outbox__cloudevent_lines(&b, msgs, 2, f.field[7]) == OUTBOX_OK) {
        const char *nl = memchr(b.data, '\n', b.len);
        if (nl == NULL || (size_t)(nl - b.data) * 2 + 2 != b.len) abort();
        check_event(b.data, (size_t)(nl - b.data), msg);
    }
    outbox__buf_free(&b);
out:
    outbox_msg_free(msg);
    fuzz_fields_free(&f);
    return 0;
}
