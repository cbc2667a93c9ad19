/*
 * fuzz_webhook_verify.c - Standard Webhooks verification as a receiver
 * meets it (outbox_webhook_verify): the secret, the three headers and the
 * body, at a fixed "now" so that every run is the same.  Also the secret's
 * decoding (outbox__webhook_key_decode) and signing (outbox_webhook_sign).
 *
 * Input: 8 bytes of tolerance in seconds (little-endian, signed), then
 * secret, webhook-id, webhook-timestamp, webhook-signature and the body
 * (the rest, NUL bytes included), separated by NUL bytes.
 *
 * Beyond memory errors it checks the round trip: a body signed with
 * outbox_webhook_sign verifies with that signature, at the timestamp
 * signed, under any tolerance.
 */
#include "fuzz.h"
#include "internal.h"

static const int64_t now_s = 1767225600; /* 2026-01-01T00:00:00Z */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_fields f;
    outbox_error err;
    uint64_t raw = 0;
    int64_t tolerance_s;
    unsigned char key[OUTBOX_WEBHOOK_KEY_MAX];
    size_t i, key_len = 0;
    char signature[OUTBOX_WEBHOOK_SIGNATURE_SIZE], stamp[32];
    const char *id, *body;
    size_t body_len;

    if (size < 8 || size > 16384) return 0;
    for (i = 0; i < 8; i++)
        raw |= (uint64_t)data[i] << (8 * i);
    memcpy(&tolerance_s, &raw, sizeof tolerance_s);
    if (fuzz_fields_split(&f, data + 8, size - 8, 5) != 0) return 0;
    id = f.field[1];
    body = f.field[4];
    body_len = f.count == 5 ? f.last_len : 0;

    (void)outbox_webhook_verify(f.field[0], id, f.field[2], f.field[3], body, body_len, tolerance_s,
                                now_s, &err);
    /* Absent headers, as a receiver passes them. */
    (void)outbox_webhook_verify(f.field[0], NULL, f.field[2], f.field[3], body, body_len,
                                tolerance_s, now_s, &err);
    (void)outbox__webhook_key_decode(f.field[0], "the fuzzed secret", key, &key_len, &err);
    if (key_len > sizeof key) abort();

    if (id[0] != '\0' &&
        outbox_webhook_sign(f.field[0], id, now_s, body, body_len, signature, &err) == OUTBOX_OK) {
        if (strlen(signature) >= sizeof signature) abort();
        snprintf(stamp, sizeof stamp, "%lld", (long long)now_s);
        if (outbox_webhook_verify(f.field[0], id, stamp, signature, body, body_len, tolerance_s,
                                  now_s, &err) != OUTBOX_OK)
            abort();
    }
    fuzz_fields_free(&f);
    return 0;
}
