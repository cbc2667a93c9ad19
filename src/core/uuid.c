/*
 * uuid.c - UUIDv7 ids (RFC 9562) and the syntax checks for ids and W3C
 * trace-context headers.
 *
 * Layout of a v7 id: 48-bit unix milliseconds, version 7, 12 bits rand_a,
 * variant 10, 62 random bits.  rand_a is used as a counter (RFC 9562
 * method 1) so that ids made in one process are strictly increasing, even
 * within one millisecond or when the wall clock steps back: each new
 * millisecond reseeds the counter randomly in its low 9 bits; if it would
 * overflow, the timestamp moves one millisecond ahead.
 */
#include "internal.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t uuid_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t uuid_last_ms;
static unsigned uuid_counter;

/* Writes a new lower-case UUIDv7 into uuid_out (37 bytes); OUTBOX_OK. */
int outbox_uuid_v7(char uuid_out[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16], rnd[10];
    uint64_t now = (uint64_t)(outbox__now_us() / 1000), ms;
    unsigned counter;
    int i, o;

    outbox__random_bytes(rnd, sizeof rnd);
    pthread_mutex_lock(&uuid_lock);
    if (now > uuid_last_ms) {
        uuid_last_ms = now;
        uuid_counter = (unsigned)(rnd[0] | (rnd[1] << 8)) & 0x1ff;
    } else if (uuid_counter >= 0xfff) {
        uuid_last_ms++;
        uuid_counter = (unsigned)(rnd[0] | (rnd[1] << 8)) & 0x1ff;
    } else {
        uuid_counter++;
    }
    ms = uuid_last_ms;
    counter = uuid_counter;
    pthread_mutex_unlock(&uuid_lock);

    b[0] = (unsigned char)(ms >> 40);
    b[1] = (unsigned char)(ms >> 32);
    b[2] = (unsigned char)(ms >> 24);
    b[3] = (unsigned char)(ms >> 16);
    b[4] = (unsigned char)(ms >> 8);
    b[5] = (unsigned char)ms;
    b[6] = (unsigned char)(0x70 | (counter >> 8));
    b[7] = (unsigned char)(counter & 0xff);
    b[8] = (unsigned char)(0x80 | (rnd[2] & 0x3f));
    memcpy(b + 9, rnd + 3, 7);

    for (i = 0, o = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) uuid_out[o++] = '-';
        uuid_out[o++] = hex[b[i] >> 4];
        uuid_out[o++] = hex[b[i] & 15];
    }
    uuid_out[o] = '\0';
    return OUTBOX_OK;
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static int is_lowhex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* 1 when uuid is canonical 8-4-4-4-12 hex (either case), else 0. */
int outbox_uuid_valid(const char *uuid)
{
    int i;
    if (!uuid) return 0;
    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (uuid[i] != '-') return 0;
        } else if (!is_hex(uuid[i])) {
            return 0;
        }
    }
    return uuid[36] == '\0';
}

/* 1 when uuid (a valid UUID) is the nil UUID 00000000-0000-0000-0000-000000000000. */
int outbox__uuid_is_nil(const char *uuid)
{
    int i;
    for (i = 0; i < 36; i++)
        if (uuid[i] != '0' && uuid[i] != '-') return 0;
    return 1;
}

/* n lower-case hex digits at p, not all '0' when nonzero is set. */
static int lowhex_field(const char *p, int n, int nonzero)
{
    int i, any = 0;
    for (i = 0; i < n; i++) {
        if (!is_lowhex(p[i])) return 0;
        if (p[i] != '0') any = 1;
    }
    return any || !nonzero;
}

/* 1 when value is a W3C traceparent: version 00 exactly
 * "00-<32>-<16>-<2>" in lower-case hex with non-zero ids; versions 01..fe
 * the same 55 characters optionally followed by '-' and more; "ff" invalid. */
int outbox_traceparent_valid(const char *value)
{
    size_t len;
    if (!value) return 0;
    len = strlen(value);
    if (len < 55) return 0;
    if (!lowhex_field(value, 2, 0)) return 0;
    if (value[2] != '-' || value[35] != '-' || value[52] != '-') return 0;
    if (!lowhex_field(value + 3, 32, 1) || !lowhex_field(value + 36, 16, 1) ||
        !lowhex_field(value + 53, 2, 0))
        return 0;
    if (value[0] == 'f' && value[1] == 'f') return 0;
    if (value[0] == '0' && value[1] == '0') return len == 55;
    return len == 55 || value[55] == '-';
}

/* Canonical (lower-case) copy of a UUID; see internal.h. */
int outbox__uuid_canonical(const char *id, char out[37], const char *what, outbox_error *err)
{
    int i;
    if (!id || !outbox_uuid_valid(id))
        return outbox__error(err, OUTBOX_EBADID, "%s '%.64s' is not a UUID (8-4-4-4-12 hex digits)",
                             what, id ? id : "(null)");
    for (i = 0; i < 36; i++)
        out[i] = (id[i] >= 'A' && id[i] <= 'F') ? (char)(id[i] - 'A' + 'a') : id[i];
    out[36] = '\0';
    return OUTBOX_OK;
}
