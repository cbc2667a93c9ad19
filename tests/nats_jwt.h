/*
 * nats_jwt.h - NATS decentralized-auth material made by the tests
 * themselves: nkeys, operator/account/user JWTs and .creds files, so that
 * test_nats can run a nats-server in operator mode without nsc.
 *
 * - An nkey is an ed25519 key pair (OpenSSL's libcrypto).  Its public key
 *   is written as base32 (RFC 4648 alphabet, no padding) of
 *   [type byte][32 key bytes][CRC-16/XMODEM of the former, little endian]:
 *   type 14<<3 gives "O..." (operator), 0 "A..." (account), 20<<3 "U..."
 *   (user).  A seed is [18<<3 | type>>5][(type & 31)<<3][32 seed bytes]
 *   [CRC16], base32: "SO...", "SA...", "SU...".
 * - A JWT is base64url (no padding) of the header
 *   {"typ":"JWT","alg":"ed25519-nkey"}, '.', base64url of the claims
 *   {jti, iat, iss, name, sub, nats:{..., type, version: 2}}, '.', and
 *   base64url of the issuer's ed25519 signature of the first two parts.
 *   jti is base32 of the SHA-512/256 hash of the claims without nats.
 * - A .creds file holds the user JWT and the user seed, each between
 *   "-----BEGIN ...-----" / "------END ...------" lines.
 *
 * Everything is static and returns 0 / a pointer, or -1 / NULL when
 * libcrypto refuses (callers skip: an OpenSSL without ed25519).  Only
 * built with OUTBOX_HAVE_CRYPTO (libcrypto found by CMake).
 */
#ifndef OUTBOX_NATS_JWT_H
#define OUTBOX_NATS_JWT_H

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum {
    NJ_OPERATOR = 14 << 3,
    NJ_ACCOUNT = 0,
    NJ_USER = 20 << 3,
    NJ_SEED = 18 << 3,
};

typedef struct nj_key {
    unsigned char seed[32];
    unsigned char pub[32];
    char public_key[64]; /* "O...", "A..." or "U...", 56 characters */
    char seed_text[64];  /* "SO...", "SA..." or "SU...", 58 characters */
    EVP_PKEY *pkey;
} nj_key;

/* CRC-16/XMODEM (polynomial 0x1021, initial value 0), bit by bit. */
static uint16_t nj_crc16(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

/* RFC 4648 base32 without padding into out (cap bytes, NUL-terminated). */
static int nj_base32(const unsigned char *p, size_t n, char *out, size_t cap)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    size_t o = 0;
    unsigned bits = 0, nbits = 0;
    for (size_t i = 0; i < n; i++) {
        bits = (bits << 8) | p[i];
        nbits += 8;
        while (nbits >= 5) {
            if (o + 1 >= cap) return -1;
            out[o++] = abc[(bits >> (nbits - 5)) & 31];
            nbits -= 5;
        }
    }
    if (nbits > 0) {
        if (o + 1 >= cap) return -1;
        out[o++] = abc[(bits << (5 - nbits)) & 31];
    }
    out[o] = '\0';
    return 0;
}

/* base64url without padding; malloc'd, NULL when out of memory. */
static char *nj_base64url(const unsigned char *p, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(n / 3 * 4 + 5);
    size_t o = 0, i;
    if (out == NULL) return NULL;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = abc[v >> 6 & 63];
        out[o++] = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = abc[v >> 6 & 63];
    }
    out[o] = '\0';
    return out;
}

/* Encodes key bytes with their type and checksum (see the top). */
static int nj_encode(const unsigned char *head, size_t head_len, const unsigned char key[32],
                     char *out, size_t cap)
{
    unsigned char raw[36];
    uint16_t crc;
    memcpy(raw, head, head_len);
    memcpy(raw + head_len, key, 32);
    crc = nj_crc16(raw, head_len + 32);
    raw[head_len + 32] = (unsigned char)(crc & 0xff);
    raw[head_len + 33] = (unsigned char)(crc >> 8);
    return nj_base32(raw, head_len + 34, out, cap);
}

static void nj_key_free(nj_key *k)
{
    if (k->pkey) EVP_PKEY_free(k->pkey);
    memset(k, 0, sizeof *k);
}

/* A fresh random key pair of this type (NJ_OPERATOR, NJ_ACCOUNT, NJ_USER);
 * free with nj_key_free.  -1 when libcrypto has no ed25519. */
static int nj_key_new(nj_key *k, int type)
{
    unsigned char head[2];
    size_t len = sizeof k->pub;
    memset(k, 0, sizeof *k);
    if (RAND_bytes(k->seed, sizeof k->seed) != 1) return -1;
    k->pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, k->seed, sizeof k->seed);
    if (k->pkey == NULL || EVP_PKEY_get_raw_public_key(k->pkey, k->pub, &len) != 1 ||
        len != sizeof k->pub) {
        nj_key_free(k);
        return -1;
    }
    head[0] = (unsigned char)type;
    if (nj_encode(head, 1, k->pub, k->public_key, sizeof k->public_key) != 0) goto fail;
    head[0] = (unsigned char)(NJ_SEED | (type >> 5));
    head[1] = (unsigned char)((type & 31) << 3);
    if (nj_encode(head, 2, k->seed, k->seed_text, sizeof k->seed_text) != 0) goto fail;
    return 0;
fail:
    nj_key_free(k);
    return -1;
}

/* ed25519 signature of data by k into sig. */
static int nj_sign(const nj_key *k, const void *data, size_t n, unsigned char sig[64])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t len = 64;
    int ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) == 1 &&
             EVP_DigestSign(ctx, sig, &len, data, n) == 1 && len == 64;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

/* A JWT about `subject` (a public key) issued and signed by `issuer`, with
 * `nats` (taken, whatever happens) as its "nats" claims object; malloc'd,
 * NULL on failure. */
static char *nj_jwt(const nj_key *issuer, const char *subject, const char *name, json_t *nats)
{
    json_t *claims = json_object();
    char *text = NULL, *head = NULL, *body = NULL, *sig64 = NULL, *signing = NULL, *jwt = NULL;
    unsigned char md[EVP_MAX_MD_SIZE], sig[64];
    unsigned int md_len = 0;
    char jti[128];
    size_t n;
    static const char header[] = "{\"typ\":\"JWT\",\"alg\":\"ed25519-nkey\"}";

    if (claims == NULL || nats == NULL) goto out;
    json_object_set_new(claims, "jti", json_string(""));
    json_object_set_new(claims, "iat", json_integer((json_int_t)time(NULL)));
    json_object_set_new(claims, "iss", json_string(issuer->public_key));
    json_object_set_new(claims, "name", json_string(name));
    json_object_set_new(claims, "sub", json_string(subject));
    /* jti: hash of the claims with an empty jti and without "nats". */
    text = json_dumps(claims, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text == NULL || EVP_Digest(text, strlen(text), md, &md_len, EVP_sha512_256(), NULL) != 1 ||
        nj_base32(md, md_len, jti, sizeof jti) != 0)
        goto out;
    free(text);
    json_object_set_new(claims, "jti", json_string(jti));
    json_object_set(claims, "nats", nats);
    text = json_dumps(claims, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text == NULL) goto out;
    head = nj_base64url((const unsigned char *)header, strlen(header));
    body = nj_base64url((const unsigned char *)text, strlen(text));
    if (head == NULL || body == NULL) goto out;
    n = strlen(head) + strlen(body) + 2;
    signing = malloc(n);
    if (signing == NULL) goto out;
    snprintf(signing, n, "%s.%s", head, body);
    if (nj_sign(issuer, signing, strlen(signing), sig) != 0) goto out;
    sig64 = nj_base64url(sig, sizeof sig);
    if (sig64 == NULL) goto out;
    n = strlen(signing) + strlen(sig64) + 2;
    jwt = malloc(n);
    if (jwt != NULL) snprintf(jwt, n, "%s.%s", signing, sig64);
out:
    json_decref(nats);
    json_decref(claims);
    free(text);
    free(head);
    free(body);
    free(signing);
    free(sig64);
    return jwt;
}

/* The "nats" claims of an account: unlimited, JetStream enabled (any
 * storage, streams and consumers) when jetstream is set. */
static json_t *nj_account_claims(int jetstream)
{
    json_t *limits =
        json_pack("{s:i, s:i, s:i, s:i, s:i, s:b, s:i, s:i}", "subs", -1, "data", -1, "payload", -1,
                  "imports", -1, "exports", -1, "wildcards", 1, "conn", -1, "leaf", -1);
    if (limits && jetstream) {
        json_object_set_new(limits, "mem_storage", json_integer(-1));
        json_object_set_new(limits, "disk_storage", json_integer(-1));
        json_object_set_new(limits, "streams", json_integer(-1));
        json_object_set_new(limits, "consumer", json_integer(-1));
    }
    return json_pack("{s:o?, s:{s:{}, s:{}}, s:s, s:i}", "limits", limits, "default_permissions",
                     "pub", "sub", "type", "account", "version", 2);
}

/* The "nats" claims of a user without limits or permission restrictions. */
static json_t *nj_user_claims(void)
{
    return json_pack("{s:{}, s:{}, s:i, s:i, s:i, s:s, s:i}", "pub", "sub", "subs", -1, "data", -1,
                     "payload", -1, "type", "user", "version", 2);
}

/* Writes a .creds file with this user JWT and seed text; 0 or -1. */
static int nj_creds_write(const char *path, const char *jwt, const char *seed_text)
{
    FILE *f = fopen(path, "w");
    int rc;
    if (f == NULL) return -1;
    fprintf(f,
            "-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n",
            jwt, seed_text);
    rc = ferror(f) ? -1 : 0;
    if (fclose(f) != 0) rc = -1;
    return rc;
}

#endif /* OUTBOX_NATS_JWT_H */
