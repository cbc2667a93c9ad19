/*
 * pg_wal.h - what WAL capture's two halves share: the operator side
 * (pg_wal_admin.c: the slot and publication names, setting them up,
 * dropping them, the slot's lag) and the relay reading the replication
 * stream (pg_wal_capture.c).  Private to the PostgreSQL store.  The names
 * need no libpq (the store's properties are read in every build); the
 * rest is there only with OUTBOX_HAVE_LIBPQ.  The feature is described
 * for users in docs/WAL.md.
 */
#ifndef OUTBOX_PG_WAL_H
#define OUTBOX_PG_WAL_H

#include "internal.h"

#include <stdint.h>

/* The oldest server WAL capture accepts: pgoutput's `messages` option
 * (logical decoding messages on the stream) came with PostgreSQL 14. */
#define OUTBOX_PG_WAL_MIN_SERVER 140000

/* 1 when name is a slot or publication name capture accepts: 1 to 63
 * characters [a-z0-9_] (what PostgreSQL allows in a slot name). */
int outbox__pg_wal_valid_name(const char *name);

/* Fills slot and publication names for a store: slot_opt and pub_opt when
 * given (non-NULL, non-empty: the URL's slot= and publication=, checked
 * with outbox__pg_wal_valid_name), else the default outbox_<schema>,
 * lower-cased (slot names have no capitals) and cut to 63 characters. */
void outbox__pg_wal_names(const char *schema, const char *slot_opt, const char *pub_opt,
                          char slot[64], char pub[64]);

#ifdef OUTBOX_HAVE_LIBPQ

#include <libpq-fe.h>

/* On a normal (not replication) connection c, outside a transaction:
 * checks the server (version >= 14, wal_level logical, UTF8 database, the
 * role has REPLICATION or is superuser, max_wal_senders > 0) and creates
 * the publication (empty: pgoutput needs one, `messages 'true'` delivers
 * the logical messages regardless of its tables) and the pgoutput slot
 * when missing.  Idempotent: a slot or publication that exists is kept
 * (the slot must be a logical pgoutput slot of this database).  *created
 * (may be NULL) gets 1 when this call created the slot, else 0.
 * OUTBOX_ECONFIG, naming what to set and how, when the server or the role
 * does not allow it or no slot is free; libpq errors as outbox__pg_fail. */
int outbox__pg_wal_setup(PGconn *c, const char *slot, const char *pub, int *created,
                         outbox_error *err);

/* On a normal connection: drops the slot and the publication (either may
 * be missing already: OUTBOX_OK).  OUTBOX_EBUSY, dropping nothing, while a
 * walsender streams from the slot (a relay is running): the message names
 * its backend pid and says to stop that relay first.  The publication is
 * kept (*pub_kept = 1, pub_kept may be NULL) while another pgoutput slot of
 * the database exists: a relay may stream with it. */
int outbox__pg_wal_drop(PGconn *c, const char *slot, const char *pub, int *pub_kept,
                        outbox_error *err);

/* A slot's state, as outbox__pg_wal_lag reads it. */
typedef struct outbox_pg_wal_lag {
    int exists;           /* the slot exists */
    int active;           /* a walsender streams from it now */
    int active_pid;       /* its backend pid, 0 when none */
    int64_t lag_bytes;    /* pg_current_wal_lsn() - confirmed_flush_lsn */
    int64_t lag_us;       /* age of the oldest unconfirmed emitted message, 0 when none/unknown
                             (how it is measured: at outbox__pg_wal_lag) */
    int64_t keep_size_mb; /* max_slot_wal_keep_size, -1 = unlimited */
} outbox_pg_wal_lag;

/* On a normal connection: fills *out for slot (all 0, keep_size_mb set,
 * when the slot does not exist).  Reads only catalog views: no rights
 * beyond connecting are needed.  libpq errors as outbox__pg_fail. */
int outbox__pg_wal_lag(PGconn *c, const char *slot, outbox_pg_wal_lag *out, outbox_error *err);

struct pg_store;

/* For outbox__pg_status: fills out's wal_* fields when the store's slot
 * exists (leaves them "" and 0 otherwise).  On st's connection, in the
 * status's transaction or outside one. */
int outbox__pg_wal_status(struct pg_store *st, outbox_status *out, outbox_error *err);

#endif /* OUTBOX_HAVE_LIBPQ */

#endif /* OUTBOX_PG_WAL_H */
