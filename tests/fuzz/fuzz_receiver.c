/*
 * fuzz_receiver.c - the webhook receiver's request handling
 * (outbox__receiver_handle, src/consumer/receiver.c): method, headers and
 * body -> signature check -> CloudEvents binary mode -> message -> inbox
 * -> handler, as an HTTP request reaches it, without the socket.
 *
 * Input: fields separated by NUL bytes: a mode ("s": the target signs the
 * request itself with the receiver's secret and the current time, so that
 * inputs get past the signature check; anything else: sent as given), the
 * method, the headers ("name: value" lines separated by '\n'), and the
 * body (the rest, NUL bytes included).
 *
 * Unlike the other targets this one has state: the receiver (created once,
 * on an in-memory SQLite database, its HTTP daemon bound to 127.0.0.1 and
 * idle) keeps its inbox between runs, so a message id seen before is a
 * duplicate, and signing reads the clock.  Beyond memory errors it checks
 * the status: a 2xx, 4xx or 5xx code, and 2xx only for a signed request.
 */
#include "fuzz.h"
#include "internal.h"

#ifdef OUTBOX_HAVE_MHD

#include <strings.h>
#include <time.h>

#define SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

static outbox_webhook_receiver *receiver;

/* Fails the message when its payload says so, to reach the rollback. */
static int handler(void *user, sqlite3 *db, const outbox_msg *msg, outbox_error *err)
{
    (void)user;
    (void)db;
    if (strstr(outbox_msg_payload(msg), "\"fail\"") != NULL)
        return outbox__error(err, OUTBOX_EPUBLISH, "the payload asked to fail");
    return OUTBOX_OK;
}

static void start(void)
{
    outbox_webhook_receiver_options o;
    outbox_error err;
    outbox_log_set(NULL, NULL, OUTBOX_LOG_ERROR);
    outbox_webhook_receiver_options_init(&o);
    o.secret = SECRET;
    o.db_path = ":memory:";
    o.consumer = "fuzz";
    o.handler = handler;
    if (outbox_webhook_receiver_new(&receiver, &o, &err) != OUTBOX_OK) {
        fprintf(stderr, "fuzz_receiver: cannot start the receiver: %s\n", err.message);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum { MAX_HEADERS = 40 };
    outbox_receiver_header headers[MAX_HEADERS + 3];
    outbox_receiver_request rq;
    fuzz_fields f;
    char *lines, *line, *save = NULL, why[600], stamp[32], sig[OUTBOX_WEBHOOK_SIGNATURE_SIZE];
    const char *id = NULL;
    unsigned status;
    int signed_ok = 0;
    outbox_error err;

    if (size > 65536) return 0;
    if (receiver == NULL) start();
    if (fuzz_fields_split(&f, data, size, 4) != 0) return 0;
    memset(&rq, 0, sizeof rq);
    rq.method = f.field[1];
    rq.headers = headers;
    rq.body = f.field[3];
    rq.body_len = f.count == 4 ? f.last_len : 0;

    lines = strdup(f.field[2]);
    if (lines == NULL) abort();
    for (line = strtok_r(lines, "\n", &save); line && rq.header_count < MAX_HEADERS;
         line = strtok_r(NULL, "\n", &save)) {
        char *colon = strchr(line, ':');
        if (colon == NULL) continue;
        *colon++ = '\0';
        while (*colon == ' ')
            colon++;
        headers[rq.header_count].name = line;
        headers[rq.header_count].value = colon;
        if (strcasecmp(line, "ce-id") == 0 || strcasecmp(line, "webhook-id") == 0)
            if (id == NULL) id = colon;
        rq.header_count++;
    }
    if (strcmp(f.field[0], "s") == 0 && id != NULL && *id != '\0') {
        int64_t now = (int64_t)time(NULL);
        snprintf(stamp, sizeof stamp, "%lld", (long long)now);
        if (outbox_webhook_sign(SECRET, id, now, rq.body, rq.body_len, sig, &err) == OUTBOX_OK) {
            headers[rq.header_count++] = (outbox_receiver_header){"webhook-timestamp", stamp};
            headers[rq.header_count++] = (outbox_receiver_header){"webhook-signature", sig};
            headers[rq.header_count++] = (outbox_receiver_header){"webhook-id", id};
            signed_ok = 1;
        }
    }
    status = outbox__receiver_handle(receiver, &rq, why, sizeof why);
    if (status < 200 || status > 599) abort();
    if (status < 300 && !signed_ok) abort(); /* accepted without a valid signature */
    if (strlen(why) >= sizeof why) abort();
    free(lines);
    fuzz_fields_free(&f);
    return 0;
}

#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    (void)data;
    (void)size;
    return 0; /* built without libmicrohttpd: no receiver */
}
#endif
