/*
 * webhook.c - Standard Webhooks signatures: the sender signs
 * "<id>.<timestamp>.<body>" with HMAC-SHA256 under the endpoint's secret and
 * sends "v1,<base64>" in webhook-signature; the receiver recomputes it and
 * compares in constant time, and refuses timestamps outside a tolerance so
 * that a captured request cannot be replayed later.
 *
 * A secret is "whsec_" followed by the base64 of the key bytes (the prefix
 * is optional, as in the reference libraries).  Secrets never reach error
 * messages or logs.  HMAC and the constant-time compare come from OpenSSL's
 * libcrypto; without it (no OUTBOX_HAVE_CRYPTO) every call answers
 * OUTBOX_ENOTBUILT.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifdef OUTBOX_HAVE_CRYPTO
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Standard base64 with optional '=' padding; -1 when malformed or longer
 * than out_cap, else the decoded length. */
static long b64_decode(const char *in, size_t in_len, unsigned char *out, size_t out_cap)
{
    size_t i, o = 0, pad = 0;
    unsigned acc = 0;
    int bits = 0;

    while (in_len > 0 && in[in_len - 1] == '=' && pad < 2) {
        in_len--;
        pad++;
    }
    if ((in_len + pad) % 4 != 0 && pad > 0) return -1;
    if (in_len % 4 == 1) return -1;
    for (i = 0; i < in_len; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= out_cap) return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)o;
}

/* Decodes a secret (see internal.h). */
int outbox__webhook_key_decode(const char *secret, const char *what, unsigned char *key,
                               size_t *key_len, outbox_error *err)
{
    const char *b64;
    size_t len;
    long n;

    if (secret == NULL || key == NULL || key_len == NULL)
        return outbox__error(err, OUTBOX_EINVAL, "webhook secret: NULL argument");
    b64 = strncmp(secret, "whsec_", 6) == 0 ? secret + 6 : secret;
    len = strlen(b64);
    while (len > 0 && (b64[len - 1] == '\n' || b64[len - 1] == '\r' || b64[len - 1] == ' ' ||
                       b64[len - 1] == '\t'))
        len--;
    n = len ? b64_decode(b64, len, key, OUTBOX_WEBHOOK_KEY_MAX) : -1;
    if (n <= 0)
        return outbox__error(err, OUTBOX_ECONFIG,
                             "%s is not a webhook secret: expected \"whsec_\" followed by the "
                             "base64 of 1 to %d key bytes (e.g. from `openssl rand -base64 32`)",
                             what ? what : "the webhook secret", OUTBOX_WEBHOOK_KEY_MAX);
    *key_len = (size_t)n;
    return OUTBOX_OK;
}

/* Computes a v1 signature (see internal.h). */
int outbox__webhook_sign_key(const unsigned char *key, size_t key_len, const char *msg_id,
                             int64_t timestamp, const void *body, size_t body_len,
                             char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    char prefix[128];
    size_t id_len = strlen(msg_id);
    int prefix_len;
    unsigned char *content = NULL;
    int rc = OUTBOX_OK;

    prefix_len = snprintf(prefix, sizeof prefix, ".%lld.", (long long)timestamp);
    content = outbox__malloc(id_len + (size_t)prefix_len + body_len + 1);
    if (content == NULL) return OUTBOX_ENOMEM;
    memcpy(content, msg_id, id_len);
    memcpy(content + id_len, prefix, (size_t)prefix_len);
    if (body_len) memcpy(content + id_len + (size_t)prefix_len, body, body_len);
    if (HMAC(EVP_sha256(), key, (int)key_len, content, id_len + (size_t)prefix_len + body_len, mac,
             &mac_len) == NULL ||
        mac_len != 32) {
        rc = OUTBOX_EINTERNAL;
        goto out;
    }
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)mac_len); /* 44 chars + NUL */

out:
    outbox__free(content);
    return rc;
}

/* Public one-shot signing (see outbox.h). */
int outbox_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const void *body,
                        size_t body_len, char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE], outbox_error *err)
{
    unsigned char key[OUTBOX_WEBHOOK_KEY_MAX];
    size_t key_len = 0;
    int rc;

    if (msg_id == NULL || out == NULL || (body == NULL && body_len > 0))
        return outbox__error(err, OUTBOX_EINVAL, "outbox_webhook_sign: NULL argument");
    rc = outbox__webhook_key_decode(secret, NULL, key, &key_len, err);
    if (rc != OUTBOX_OK) return rc;
    rc = outbox__webhook_sign_key(key, key_len, msg_id, timestamp, body, body_len, out);
    OPENSSL_cleanse(key, sizeof key);
    if (rc != OUTBOX_OK) return outbox__error(err, rc, "cannot compute the webhook signature");
    return OUTBOX_OK;
}

/* Verifies signature headers (see outbox.h). */
int outbox_webhook_verify(const char *secret, const char *msg_id, const char *timestamp,
                          const char *signature, const void *body, size_t body_len,
                          int64_t tolerance_s, int64_t now_s, outbox_error *err)
{
    unsigned char key[OUTBOX_WEBHOOK_KEY_MAX];
    size_t key_len = 0;
    char expected[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    const char *p;
    char *end = NULL;
    long long ts;
    int rc;

    if (body == NULL && body_len > 0)
        return outbox__error(err, OUTBOX_EINVAL, "outbox_webhook_verify: body is NULL");
    if (msg_id == NULL || *msg_id == '\0')
        return outbox__error(err, OUTBOX_ENOSIGNATURE, "webhook-id header missing");
    if (timestamp == NULL || *timestamp == '\0')
        return outbox__error(err, OUTBOX_ENOSIGNATURE, "webhook-timestamp header missing");
    if (signature == NULL || *signature == '\0')
        return outbox__error(err, OUTBOX_ENOSIGNATURE, "webhook-signature header missing");

    errno = 0;
    for (p = timestamp; *p; p++)
        if (*p < '0' || *p > '9') break;
    ts = strtoll(timestamp, &end, 10);
    if (*p != '\0' || errno != 0 || end == timestamp || strlen(timestamp) > 15)
        return outbox__error(err, OUTBOX_EBADTIMESTAMP,
                             "webhook-timestamp \"%.40s\" is not Unix time in seconds", timestamp);
    if (tolerance_s <= 0) tolerance_s = OUTBOX_WEBHOOK_TOLERANCE_S;
    if (now_s <= 0) now_s = outbox__now_us() / 1000000;
    /* ts - now_s cannot overflow (ts is 0..10^15, now_s positive), while
     * now_s +- tolerance_s can for a tolerance near INT64_MAX. */
    if (ts - now_s < -tolerance_s || ts - now_s > tolerance_s)
        return outbox__error(err, OUTBOX_ESTALE,
                             "webhook-timestamp %lld is %lld s from now, beyond the tolerance "
                             "of %lld s (replayed request, or clocks out of sync)",
                             ts, (long long)(ts - now_s), (long long)tolerance_s);

    rc = outbox__webhook_key_decode(secret, "the receiver's webhook secret", key, &key_len, err);
    if (rc != OUTBOX_OK) return rc;
    rc = outbox__webhook_sign_key(key, key_len, msg_id, ts, body, body_len, expected);
    OPENSSL_cleanse(key, sizeof key);
    if (rc != OUTBOX_OK) return outbox__error(err, rc, "cannot compute the webhook signature");

    /* Space-separated entries "version,base64"; only v1 is known.  Every
     * entry is compared (no early exit on length of a match). */
    {
        size_t exp_len = strlen(expected);
        int matched = 0;
        p = signature;
        while (*p) {
            size_t n;
            while (*p == ' ')
                p++;
            n = strcspn(p, " ");
            if (n == exp_len && CRYPTO_memcmp(p, expected, exp_len) == 0) matched = 1;
            p += n;
        }
        OPENSSL_cleanse(expected, sizeof expected);
        if (!matched)
            return outbox__error(err, OUTBOX_EBADSIGNATURE,
                                 "no v1 entry of webhook-signature matches the secret for "
                                 "webhook-id %.64s (wrong secret, or the body was altered)",
                                 msg_id);
    }
    return OUTBOX_OK;
}

#else /* !OUTBOX_HAVE_CRYPTO */

int outbox__webhook_key_decode(const char *secret, const char *what, unsigned char *key,
                               size_t *key_len, outbox_error *err)
{
    (void)secret;
    (void)key;
    (void)key_len;
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "%s cannot be used: this build has no webhook signing (not built "
                         "with OpenSSL libcrypto)",
                         what ? what : "the webhook secret");
}

int outbox__webhook_sign_key(const unsigned char *key, size_t key_len, const char *msg_id,
                             int64_t timestamp, const void *body, size_t body_len,
                             char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE])
{
    (void)key, (void)key_len, (void)msg_id, (void)timestamp, (void)body, (void)body_len;
    (void)out;
    return OUTBOX_ENOTBUILT;
}

int outbox_webhook_sign(const char *secret, const char *msg_id, int64_t timestamp, const void *body,
                        size_t body_len, char out[OUTBOX_WEBHOOK_SIGNATURE_SIZE], outbox_error *err)
{
    (void)secret, (void)msg_id, (void)timestamp, (void)body, (void)body_len, (void)out;
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "webhook signing is not in this build (not built with OpenSSL libcrypto)");
}

int outbox_webhook_verify(const char *secret, const char *msg_id, const char *timestamp,
                          const char *signature, const void *body, size_t body_len,
                          int64_t tolerance_s, int64_t now_s, outbox_error *err)
{
    (void)secret, (void)msg_id, (void)timestamp, (void)signature, (void)body, (void)body_len;
    (void)tolerance_s, (void)now_s;
    return outbox__error(err, OUTBOX_ENOTBUILT,
                         "webhook verification is not in this build (not built with OpenSSL "
                         "libcrypto)");
}

#endif /* OUTBOX_HAVE_CRYPTO */
