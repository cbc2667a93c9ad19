/*
 * cloudevents.c - one message as a CloudEvents 1.0 structured-mode JSON
 * object, the form written by the stdout: and file: transports, and the
 * mapping of header names to extension attribute names used by every
 * transport.
 *
 * Key order: specversion, id, source, type, subject, time, datacontenttype,
 * aggregatetype (when set), header extensions, data (the payload verbatim,
 * last).  This runs once per message in the relay's hot path: it writes
 * straight into the caller's buffer, with no JSON library and no other
 * allocation.  Uniqueness of extension names is checked against the keys
 * already written: in the output a key is always preceded by `,"` and
 * followed by `":` and that pair cannot occur inside an escaped string.
 */
#include "internal.h"

#include <string.h>

static const char *const reserved[] = {
    "specversion",     "id",         "source", "type",        "subject",      "time",
    "datacontenttype", "dataschema", "data",   "data_base64", "aggregatetype"};

/* Writes the extension attribute name for a header: lower-cased, only
 * [a-z0-9] kept, cut to out_len-1 bytes; "" when nothing is left. */
void outbox__cloudevent_ext_name(const char *header, char *out, size_t out_len)
{
    size_t o = 0;
    if (out_len == 0) return;
    for (; header && *header && o + 1 < out_len; header++) {
        char c = *header;
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) out[o++] = c;
    }
    out[o] = '\0';
}

/* Is `name` already a key of the object that starts at b->data[start]? */
static int name_taken(const outbox_buf *b, size_t start, const char *name)
{
    size_t i, n = strlen(name);
    for (i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(reserved[i], name) == 0) return 1;
    if (!b->data) return 0;
    {
        const char *p = b->data + start;
        while ((p = strstr(p, ",\"")) != NULL) {
            p += 2;
            if (strncmp(p, name, n) == 0 && p[n] == '"' && p[n + 1] == ':') return 1;
        }
    }
    return 0;
}

static void put_attr(outbox_buf *b, const char *key, const char *value)
{
    outbox__buf_append(b, ",\"", 2);
    outbox__buf_puts(b, key);
    outbox__buf_append(b, "\":", 2);
    outbox__buf_json_string(b, value);
}

/* Appends msg as one CloudEvents JSON object (no newline) to b; on
 * allocation failure b->oom is set. */
void outbox__cloudevent_json(outbox_buf *b, const outbox_msg *msg, const char *source)
{
    size_t start = b->len, i;
    char time_text[32];
    outbox__buf_puts(b, "{\"specversion\":\"1.0\"");
    put_attr(b, "id", msg->id);
    put_attr(b, "source", source && *source ? source : "/outbox");
    put_attr(b, "type", msg->type);
    put_attr(b, "subject", msg->aggregate_id);
    outbox_time_format(msg->occurred_at, time_text);
    put_attr(b, "time", time_text);
    outbox__buf_puts(b, ",\"datacontenttype\":\"application/json\"");
    if (msg->aggregate_type && msg->aggregate_type[0])
        put_attr(b, "aggregatetype", msg->aggregate_type);
    for (i = 0; i < msg->header_count; i++) {
        char name[80];
        size_t n;
        outbox__cloudevent_ext_name(msg->header_names[i], name, 64);
        if (!name[0]) continue;
        n = strlen(name);
        while (name_taken(b, start, name) && n + 1 < sizeof name) {
            memmove(name + 1, name, n + 1);
            name[0] = 'x';
            n++;
        }
        put_attr(b, name, msg->header_values[i]);
    }
    outbox__buf_puts(b, ",\"data\":");
    outbox__buf_puts(b, msg->payload && msg->payload[0] ? msg->payload : "{}");
    outbox__buf_append(b, "}", 1);
}

/* One JSON line per message; see internal.h. */
int outbox__cloudevent_lines(outbox_buf *b, outbox_msg *const *msgs, size_t n, const char *source)
{
    size_t i, j, start;
    outbox__buf_reset(b);
    for (i = 0; i < n; i++) {
        start = b->len;
        outbox__cloudevent_json(b, msgs[i], source);
        /* One event per line, even for a payload written over several
         * lines (its text is kept as given): a raw line break in valid
         * JSON is whitespace between tokens (in a string it is escaped),
         * so a space in its place keeps the same value. */
        for (j = start; !b->oom && j < b->len; j++)
            if (b->data[j] == '\n' || b->data[j] == '\r') b->data[j] = ' ';
        outbox__buf_append(b, "\n", 1);
    }
    if (b->oom) {
        outbox__buf_free(b);
        outbox__buf_init(b);
        return OUTBOX_ENOMEM;
    }
    return OUTBOX_OK;
}
