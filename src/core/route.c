/*
 * route.c - subject and topic templates over message fields, shared by the
 * broker destinations: "outbox.{aggregate_type}.{type}" becomes
 * "outbox.Order.OrderPlaced".
 *
 * A template is checked once at start-up (unknown placeholders, braces,
 * characters the broker refuses, empty NATS tokens), so a bad route is a
 * configuration error and not a stream of failed publications.  Rendering
 * runs per message: field values are sanitised for the broker (characters
 * with a meaning in subjects or invalid in topics become '_'; an empty
 * value becomes "none") so a message can never land on a wildcard or an
 * unintended subject.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

enum { PART_TEXT, PART_TYPE, PART_AGGREGATE_TYPE, PART_AGGREGATE_ID };

typedef struct route_part {
    int kind;
    char *text; /* PART_TEXT only */
} route_part;

struct outbox_route {
    int kind; /* OUTBOX_ROUTE_* */
    route_part *parts;
    size_t count;
};

#define KAFKA_TOPIC_MAX 249

static int kafka_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int nats_char_ok(char c)
{
    unsigned char u = (unsigned char)c;
    return u > 0x20 && u != 0x7f && c != '*' && c != '>';
}

/* May this literal text character appear in a template of this kind? */
static int literal_ok(int kind, char c)
{
    return kind == OUTBOX_ROUTE_KAFKA_TOPIC ? kafka_char_ok(c) : nats_char_ok(c);
}

/* Replacement-free characters of a rendered field value. */
static int value_char_ok(int kind, char c)
{
    if (kind == OUTBOX_ROUTE_KAFKA_TOPIC) return kafka_char_ok(c);
    return nats_char_ok(c) && c != '.';
}

static int add_part(outbox_route *r, int kind, const char *text, size_t n)
{
    route_part *grown = outbox__realloc(r->parts, (r->count + 1) * sizeof *grown);
    if (!grown) return -1;
    r->parts = grown;
    r->parts[r->count].kind = kind;
    r->parts[r->count].text = NULL;
    if (kind == PART_TEXT) {
        char *t = outbox__malloc(n + 1);
        if (!t) return -1;
        memcpy(t, text, n);
        t[n] = '\0';
        r->parts[r->count].text = t;
    }
    r->count++;
    return 0;
}

/* Parses and checks tmpl; see internal.h. */
int outbox__route_new(outbox_route **out, const char *tmpl, int kind, outbox_error *err)
{
    const char *what = kind == OUTBOX_ROUTE_KAFKA_TOPIC ? "topic" : "subject";
    outbox_route *r;
    const char *p;
    int rc;

    *out = NULL;
    if (kind != OUTBOX_ROUTE_NATS_SUBJECT && kind != OUTBOX_ROUTE_KAFKA_TOPIC)
        return outbox__error(err, OUTBOX_EINVAL, "unknown route kind %d", kind);
    if (!tmpl || !*tmpl)
        return outbox__error(err, OUTBOX_ECONFIG, "the %s template is empty", what);
    r = outbox__calloc(1, sizeof *r);
    if (!r) return outbox__error(err, OUTBOX_ENOMEM, "out of memory");
    r->kind = kind;

    for (p = tmpl; *p;) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            size_t n;
            int part;
            if (!close) {
                rc = outbox__error(err, OUTBOX_ECONFIG, "%s template \"%s\": '{' without '}'", what,
                                   tmpl);
                goto fail;
            }
            n = (size_t)(close - p - 1);
            if (n == 4 && strncmp(p + 1, "type", 4) == 0)
                part = PART_TYPE;
            else if (n == 14 && strncmp(p + 1, "aggregate_type", 14) == 0)
                part = PART_AGGREGATE_TYPE;
            else if (n == 12 && strncmp(p + 1, "aggregate_id", 12) == 0)
                part = PART_AGGREGATE_ID;
            else {
                rc = outbox__error(err, OUTBOX_ECONFIG,
                                   "%s template \"%s\": unknown placeholder {%.*s} (known: "
                                   "{type}, {aggregate_type}, {aggregate_id})",
                                   what, tmpl, (int)(n > 40 ? 40 : n), p + 1);
                goto fail;
            }
            if (add_part(r, part, NULL, 0) != 0) goto nomem;
            p = close + 1;
        } else {
            size_t n = strcspn(p, "{}");
            size_t i;
            if (n == 0) { /* a lone '}' */
                rc = outbox__error(err, OUTBOX_ECONFIG, "%s template \"%s\": '}' without '{'", what,
                                   tmpl);
                goto fail;
            }
            for (i = 0; i < n; i++) {
                if (!literal_ok(kind, p[i])) {
                    rc = outbox__error(err, OUTBOX_ECONFIG,
                                       "%s template \"%s\": character '%c' (0x%02x) is not "
                                       "allowed in a %s",
                                       what, tmpl, (p[i] >= 0x20 && p[i] < 0x7f) ? p[i] : '?',
                                       (unsigned char)p[i], what);
                    goto fail;
                }
            }
            if (add_part(r, PART_TEXT, p, n) != 0) goto nomem;
            p += n;
        }
    }

    if (kind == OUTBOX_ROUTE_NATS_SUBJECT) {
        /* Empty tokens can only come from the literal text: placeholders
         * always render non-empty and without dots. */
        size_t i;
        int token_empty = 1;
        for (i = 0; i < r->count; i++) {
            const char *t = r->parts[i].text;
            if (r->parts[i].kind != PART_TEXT) {
                token_empty = 0;
                continue;
            }
            for (; *t; t++) {
                if (*t == '.') {
                    if (token_empty) goto empty_token;
                    token_empty = 1;
                } else {
                    token_empty = 0;
                }
            }
        }
        if (token_empty) goto empty_token;
    }
    *out = r;
    return OUTBOX_OK;

empty_token:
    rc = outbox__error(err, OUTBOX_ECONFIG,
                       "subject template \"%s\" has an empty token (a leading, trailing or "
                       "doubled '.')",
                       tmpl);
    goto fail;
nomem:
    rc = outbox__error(err, OUTBOX_ENOMEM, "out of memory");
fail:
    outbox__route_free(r);
    return rc;
}

static void append_value(outbox_buf *b, int kind, const char *v)
{
    if (!v || !*v) {
        outbox__buf_puts(b, "none");
        return;
    }
    while (*v) {
        size_t n = 0;
        while (v[n] && value_char_ok(kind, v[n]))
            n++;
        outbox__buf_append(b, v, n);
        v += n;
        if (*v) {
            outbox__buf_append(b, "_", 1);
            v++;
        }
    }
}

/* Renders the route for msg into b; see internal.h. */
int outbox__route_render(const outbox_route *route, const outbox_msg *msg, outbox_buf *b,
                         outbox_error *err)
{
    size_t i;
    outbox__buf_reset(b);
    for (i = 0; i < route->count; i++) {
        const route_part *part = &route->parts[i];
        switch (part->kind) {
        case PART_TEXT:
            outbox__buf_puts(b, part->text);
            break;
        case PART_TYPE:
            append_value(b, route->kind, msg->type);
            break;
        case PART_AGGREGATE_TYPE:
            append_value(b, route->kind, msg->aggregate_type);
            break;
        default:
            append_value(b, route->kind, msg->aggregate_id);
            break;
        }
    }
    if (b->oom) return outbox__error(err, OUTBOX_ENOMEM, "out of memory rendering a route");
    if (route->kind == OUTBOX_ROUTE_KAFKA_TOPIC && b->len > KAFKA_TOPIC_MAX)
        return outbox__error(err, OUTBOX_EREJECTED,
                             "topic for message %s is %zu bytes, Kafka allows %d", msg->id, b->len,
                             KAFKA_TOPIC_MAX);
    return OUTBOX_OK;
}

/* Non-zero when the template has no placeholders. */
int outbox__route_is_fixed(const outbox_route *route)
{
    size_t i;
    for (i = 0; i < route->count; i++)
        if (route->parts[i].kind != PART_TEXT) return 0;
    return 1;
}

void outbox__route_free(outbox_route *route)
{
    size_t i;
    if (!route) return;
    for (i = 0; i < route->count; i++)
        outbox__free(route->parts[i].text);
    outbox__free(route->parts);
    outbox__free(route);
}
