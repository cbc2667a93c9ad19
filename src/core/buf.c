/*
 * buf.c - a growable NUL-terminated byte buffer for building JSON and
 * SQL text.  An allocation failure sets b->oom and turns later appends into
 * no-ops, so callers check once at the end instead of after every append.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Initialises an empty buffer (no allocation). */
void outbox__buf_init(outbox_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->oom = 0;
}

/* Frees the memory and leaves b empty and reusable. */
void outbox__buf_free(outbox_buf *b)
{
    outbox__free(b->data);
    outbox__buf_init(b);
}

/* Empties b, keeping its memory (and clearing oom). */
void outbox__buf_reset(outbox_buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->data) b->data[0] = '\0';
}

/* Makes room for n more bytes plus the NUL; 0 on success. */
static int reserve(outbox_buf *b, size_t n)
{
    size_t need, cap;
    char *p;
    if (b->oom) return -1;
    if (n > SIZE_MAX - b->len - 1) goto fail;
    need = b->len + n + 1;
    if (need <= b->cap) return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > SIZE_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    p = outbox__realloc(b->data, cap);
    if (!p) goto fail;
    b->data = p;
    b->cap = cap;
    return 0;
fail:
    b->oom = 1;
    return -1;
}

/* Appends n bytes of s. */
void outbox__buf_append(outbox_buf *b, const char *s, size_t n)
{
    if (reserve(b, n) != 0) return;
    if (n) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

/* Appends the NUL-terminated string s. */
void outbox__buf_puts(outbox_buf *b, const char *s)
{
    outbox__buf_append(b, s, strlen(s));
}

/* Appends printf-formatted text. */
void outbox__buf_printf(outbox_buf *b, const char *fmt, ...)
{
    va_list ap;
    int n;
    if (reserve(b, 64) != 0) return;
    va_start(ap, fmt);
    n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->data[b->len] = '\0';
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        if (reserve(b, (size_t)n) != 0) {
            b->data[b->len] = '\0';
            return;
        }
        va_start(ap, fmt);
        n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->data[b->len] = '\0';
            return;
        }
    }
    b->len += (size_t)n;
}

/* Appends s as a JSON string literal: quotes, \" \\ and control characters
 * escaped; bytes >= 0x80 copied as they are (s is valid UTF-8). */
void outbox__buf_json_string(outbox_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    const unsigned char *run = p;
    if (reserve(b, strlen(s) + 2) != 0) return;
    outbox__buf_append(b, "\"", 1);
    for (;; p++) {
        unsigned char c = *p;
        char esc[7];
        size_t n = 2;
        if (c >= 0x20 && c != '"' && c != '\\') continue; /* DEL needs no escape */
        outbox__buf_append(b, (const char *)run, (size_t)(p - run));
        if (c == '\0') break;
        esc[0] = '\\';
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        outbox__buf_append(b, esc, n);
        run = p + 1;
    }
    outbox__buf_append(b, "\"", 1);
}
