/*
 * clock.c - wall and monotonic clocks in microseconds, sleeping, RFC 3339
 * formatting, and a fast per-thread random generator (xoshiro256**) seeded
 * from the operating system, used for backoff jitter and UUID bits.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Wall clock, microseconds since the Unix epoch. */
int64_t outbox__now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* CLOCK_MONOTONIC in microseconds (for timeouts and intervals). */
int64_t outbox__monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Sleeps us microseconds (<= 0: returns at once), resuming after signals. */
void outbox__sleep_us(int64_t us)
{
    struct timespec ts, rem;
    if (us <= 0) return;
    ts.tv_sec = (time_t)(us / 1000000);
    ts.tv_nsec = (long)(us % 1000000) * 1000;
    while (nanosleep(&ts, &rem) != 0 && errno == EINTR)
        ts = rem;
}

/* Writes v as exactly width decimal digits at p (v < 10^width). */
static void put_digits(char *p, unsigned v, int width)
{
    while (width-- > 0) {
        p[width] = (char)('0' + v % 10);
        v /= 10;
    }
}

/* "2026-11-28T00:40:27.123456Z" into buf (32 bytes).  Values outside
 * years 1970..9999 are clamped to that range.  Plain arithmetic (days to
 * the proleptic Gregorian calendar, in 400-year eras): the destinations
 * format one time per message, and gmtime_r takes glibc's time-zone lock
 * on every call. */
void outbox_time_format(int64_t unix_us, char buf[32])
{
    int64_t sec, days, rem;
    unsigned era_day, year_of_era, day_of_year, mp, year, month, day;
    if (unix_us < 0) unix_us = 0;
    if (unix_us > INT64_C(253402300799999999)) unix_us = INT64_C(253402300799999999);
    sec = unix_us / 1000000;
    days = sec / 86400;
    rem = sec % 86400;
    days += 719468; /* from 0000-03-01, so the leap day ends a year */
    era_day = (unsigned)(days % 146097);
    year_of_era = (era_day - era_day / 1460 + era_day / 36524 - era_day / 146096) / 365;
    day_of_year = era_day - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    mp = (5 * day_of_year + 2) / 153; /* month from March = 0 */
    day = day_of_year - (153 * mp + 2) / 5 + 1;
    month = mp < 10 ? mp + 3 : mp - 9;
    year = (unsigned)(days / 146097) * 400 + year_of_era + (month <= 2);
    put_digits(buf, year, 4);
    buf[4] = '-';
    put_digits(buf + 5, month, 2);
    buf[7] = '-';
    put_digits(buf + 8, day, 2);
    buf[10] = 'T';
    put_digits(buf + 11, (unsigned)(rem / 3600), 2);
    buf[13] = ':';
    put_digits(buf + 14, (unsigned)(rem / 60 % 60), 2);
    buf[16] = ':';
    put_digits(buf + 17, (unsigned)(rem % 60), 2);
    buf[19] = '.';
    put_digits(buf + 20, (unsigned)(unix_us % 1000000), 6);
    buf[26] = 'Z';
    buf[27] = '\0';
}

/* Fills p with n bytes from the OS; falls back to /dev/urandom, then to
 * clock and address bits (never fails). */
static void os_random(void *p, size_t n)
{
    unsigned char *out = p;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(out + got, n - got, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got < n) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            while (got < n) {
                ssize_t r = read(fd, out + got, n - got);
                if (r < 0 && errno == EINTR) continue;
                if (r <= 0) break;
                got += (size_t)r;
            }
            close(fd);
        }
    }
    if (got < n) {
        uint64_t x = (uint64_t)outbox__now_us() ^ ((uint64_t)outbox__monotonic_us() << 20) ^
                     (uint64_t)(uintptr_t)&x ^ ((uint64_t)getpid() << 40);
        while (got < n) {
            x += 0x9e3779b97f4a7c15ULL;
            out[got++] = (unsigned char)((x ^ (x >> 31)) * 0xbf58476d1ce4e5b9ULL >> 56);
        }
    }
}

static _Thread_local uint64_t rng_state[4];
static _Thread_local int rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* Random 64-bit value (xoshiro256**), per-thread state seeded from the OS. */
uint64_t outbox__random64(void)
{
    uint64_t *s = rng_state, result, t;
    if (!rng_seeded) {
        do {
            os_random(rng_state, sizeof rng_state);
        } while ((s[0] | s[1] | s[2] | s[3]) == 0);
        rng_seeded = 1;
    }
    result = rotl(s[1] * 5, 7) * 9;
    t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Used by uuid.c for the random bits of ids: straight from the OS. */
void outbox__random_bytes(void *p, size_t n)
{
    os_random(p, n);
}

/* RFC 3339 UTC ("2026-11-28T00:40:27.123456Z"; fraction optional, Z or
 * +00:00) -> Unix microseconds in *out; 0, or -1 when malformed. */
int outbox_time_parse(const char *s, int64_t *out)
{
    struct tm tm;
    int y, mo, d, h, mi, sec, n = 0;
    int64_t frac = 0;
    const char *p;
    int digits = 0;
    time_t t;

    /* sscanf's %d also takes a sign and leading blanks ("-999-01-01...",
     * "2026- 1-01..."), which RFC 3339 does not: its fields are exactly
     * these digits, so the shape is checked first. */
    for (n = 0; n < 19; n++) {
        char want = "0000-00-00T00:00:00"[n];
        if (want == '0' ? s[n] < '0' || s[n] > '9' : s[n] != want) return -1;
    }
    n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return -1;
    p = s + n;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (digits < 6) {
                frac = frac * 10 + (*p - '0');
                digits++;
            }
            p++;
        }
        if (digits == 0) return -1;
        while (digits < 6) {
            frac *= 10;
            digits++;
        }
    }
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0) return -1;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return -1;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    *out = (int64_t)t * 1000000 + frac;
    return 0;
}
