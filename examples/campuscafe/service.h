/*
 * service.h - what the files of the service runner share: the common
 * options (service_options.c), the event endpoint's front
 * (service_front.c) and the relay side (service_relay.c), which
 * cafe_service_main (service.c) puts together.  What the services
 * themselves use is in cafe.h.  Only in builds with libmicrohttpd and
 * libcurl.
 */
#ifndef CAFE_SERVICE_H
#define CAFE_SERVICE_H

#include "cafe.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

/* The service of this process, for the lines the library and the relay
 * thread log (set by cafe_service_main; NULL outside it). */
extern const cafe_service *cafe_log_service;

/* Parses the common options into svc->cfg (svc->def set): 0, or the exit
 * code (2 usage, or -1 for --help handled). */
int cafe_parse_options(cafe_service *svc, int argc, char **argv);

/* ------------------------------------------------------------------------
 * Event endpoint front (service_front.c)
 * ---------------------------------------------------------------------- */

typedef struct cafe_front {
    cafe_service *svc;
    unsigned receiver_port; /* outbox mode: the library receiver; 0 otherwise */
    CURL *curl;             /* used by the single serving thread only */
} cafe_front;

/* The front's route for cafe_httpd_start (user: the cafe_front): GET
 * /stats, and POST /events handed to the receiver, the naive receiver or
 * refused (NATS bus). */
void cafe_front_route(void *user, const cafe_request *req, cafe_response *res);

/* ------------------------------------------------------------------------
 * Relay side (service_relay.c): an in-process thread or an `outbox relay`
 * child
 * ---------------------------------------------------------------------- */

typedef struct cafe_relay_side {
    outbox_relay *relay;
    pthread_t thread;
    int thread_started;
    volatile int stopping;
    pid_t child;
    char store_url[4200];
    char to_url[1024];
    char *opts[16]; /* "key=value", malloc'd */
    size_t nopts;
} cafe_relay_side;

/* Fills the destination URL and options; 0 or -1 with err filled. */
int cafe_relay_destination(cafe_service *svc, cafe_relay_side *rs, outbox_error *err);
/* Starts the relay on a thread of this process; 0 or -1 with err filled. */
int cafe_relay_start_inproc(cafe_service *svc, cafe_relay_side *rs, outbox_error *err);
/* Starts an `outbox relay` child (killed with us); 0 or -1 with err filled. */
int cafe_relay_start_process(cafe_service *svc, cafe_relay_side *rs, outbox_error *err);
/* Stops the relay, thread or child, and frees its options. */
void cafe_relay_stop(cafe_relay_side *rs);

#endif /* CAFE_SERVICE_H */
