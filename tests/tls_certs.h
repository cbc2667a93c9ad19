/*
 * tls_certs.h - test certificates made with the openssl command, shared by
 * the TLS tests of the webhook and NATS destinations: a CA, a server
 * certificate for 127.0.0.1/localhost, and one for other.example only (a
 * host-name mismatch), all in the test's temp dir.
 */
#ifndef OUTBOX_TLS_CERTS_H
#define OUTBOX_TLS_CERTS_H

#include "test.h"

static char tls_ca[600], tls_cert[600], tls_key[600];
static char tls_other_cert[600], tls_other_key[600]; /* for other.example only */

/* Makes ca.pem, server.pem, server.key with the openssl command; 0, or -1
 * when it is not installed. */
static int make_certs(void)
{
    char cmd[4096];
    const char *d = test_dir();
    if (system("openssl version >/dev/null 2>&1") != 0) return -1;
    snprintf(cmd, sizeof cmd,
             "cd '%s' && ("
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n"
             "basicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > server.ext && "
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout ca.key -out ca.pem -days 2 -subj '/CN=outbox test CA' && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout server.key -out server.csr -subj '/CN=127.0.0.1' && "
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out server.pem -days 2 -extfile server.ext && "
             "printf 'subjectAltName=DNS:other.example\\n' > other.ext && "
             "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
             "-keyout other.key -out other.csr -subj '/CN=other.example' && "
             "openssl x509 -req -in other.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
             "-out other.pem -days 2 -extfile other.ext) >openssl.log 2>&1",
             d);
    if (system(cmd) != 0) {
        snprintf(cmd, sizeof cmd, "cat '%s/openssl.log' >&2", d);
        if (system(cmd) != 0) fprintf(stderr, "(no openssl.log)\n");
        TEST_FAIL_("openssl could not make the test certificates (its output is above)");
    }
    snprintf(tls_ca, sizeof tls_ca, "%s", test_path("ca.pem"));
    snprintf(tls_cert, sizeof tls_cert, "%s", test_path("server.pem"));
    snprintf(tls_key, sizeof tls_key, "%s", test_path("server.key"));
    snprintf(tls_other_cert, sizeof tls_other_cert, "%s", test_path("other.pem"));
    snprintf(tls_other_key, sizeof tls_other_key, "%s", test_path("other.key"));
    return 0;
}

#endif /* OUTBOX_TLS_CERTS_H */
