/*
 * test_io_sweep.c - I/O-failure sweeps (SQLite's I/O error tests): fail the
 * N-th write, sync, read or truncate, for N = 1, 2, ... until a run reaches
 * fewer than N of them, and check after every injected failure, with
 * everything closed and opened again (the restart), that
 *
 *   - the database is intact (PRAGMA integrity_check says ok);
 *   - every message whose enqueue returned OK (and whose transaction
 *     committed) exists, pending or sent;
 *   - no message marked sent is missing from the destination file, and every
 *     line of that file is a complete JSON object (no torn line);
 *   - fault-free relay runs then publish everything (lost 0 over the whole
 *     sweep) and set nothing Failed.
 *
 * SQLite: a shim VFS registered as the default wraps the real one: every
 * file SQLite opens (database, WAL, journal) goes through it, and the N-th
 * xWrite, xSync, xRead or xTruncate call (one kind per sweep) fails with
 * SQLITE_IOERR_WRITE, SQLITE_FULL (after writing half), SQLITE_IOERR_FSYNC,
 * SQLITE_IOERR_READ or SQLITE_IOERR_TRUNCATE; the persistent sweeps fail
 * every call of the kind from the N-th on (a disk that stays full, a bad
 * sector) until the restart.  The run under the sweep: IN_TXN messages by
 * outbox_enqueue_sqlite in the caller's transaction, BY_STORE through
 * outbox_store_enqueue, then an in-process relay --once to file: over those
 * and BEFORE enqueued earlier.
 *
 * file: destination: the fault points file_sys_write, file_sys_fsync and
 * file_sys_truncate (src/transport/file.c) fail its N-th write(), fsync()
 * or ftruncate() with ENOSPC or EIO (a failing write() writes just over half
 * its bytes first: the file is torn inside a line) during a relay --once of
 * two batches onto a file that already holds lines; also the calls that cut
 * a failed batch off (after a first failure), and a relay stopped while
 * that cut has failed.
 *
 * Every N is tried at scale 1 (every 8th in the persistent sweeps, whose
 * relay retries its store for seconds before it gives up); OUTBOX_TEST_SCALE
 * below 1 (the sanitizer run) divides by the scale, from a random offset
 * (printed).  As in test_alloc_sweep: OUTBOX_SWEEP_STRIDE=K sets the stride,
 * OUTBOX_SWEEP_FROM=N starts at N, OUTBOX_SWEEP_ONLY=<case> runs one case.
 * The points swept per kind are printed at the end (docs/RELIABILITY.md).
 */
#include "internal.h"
#include "support/chaos.h"

#include <errno.h>

#ifndef OUTBOX_FAULT_INJECTION
int main(void)
{
    SKIP("needs a build with OUTBOX_FAULT_INJECTION=ON (the file: destination's fault points)");
}
#else

#define BEFORE 4   /* messages enqueued (fault-free) before the swept run */
#define IN_TXN 3   /* by outbox_enqueue_sqlite, in one caller transaction */
#define BY_STORE 2 /* by outbox_store_enqueue */
enum { MAX_IDS = BEFORE + IN_TXN + BY_STORE };

static outbox_error err_storage;
static outbox_error *err = &err_storage;

typedef struct swept {
    char what[96];
    uint64_t points, tried, unsure, lost;
    uint64_t failed[3]; /* runs where the caller's enqueue, the store's, the relay failed */
} swept;
static swept results[16];
static int nresults;

/* ---- the shim VFS ---------------------------------------------------------- */

enum { IO_WRITE, IO_SYNC, IO_READ, IO_TRUNCATE };

typedef struct shim_file {
    sqlite3_file base;  /* pMethods = &shim_io */
    sqlite3_file *real; /* the real VFS's file, in the same allocation after this */
} shim_file;

#define REAL(f) (((shim_file *)(f))->real)

static sqlite3_vfs *real_vfs;
static sqlite3_vfs shim_vfs;

/* Armed: the at-th call of kind fails with code (at 0: nothing fails), and
 * when persistent every later one too.  The relay's threads reach the VFS
 * too, hence the atomics. */
static atomic_int armed_kind, armed_code, armed_persistent;
static atomic_uint_fast64_t armed_at, io_calls, io_injected;

static int io_fault(int kind)
{
    uint64_t call, at = atomic_load(&armed_at);
    if (at == 0 || atomic_load(&armed_kind) != kind) return SQLITE_OK;
    call = atomic_fetch_add(&io_calls, 1) + 1;
    if (call != at && !(call > at && atomic_load(&armed_persistent))) return SQLITE_OK;
    atomic_fetch_add(&io_injected, 1);
    return atomic_load(&armed_code);
}

static void io_arm(int kind, int code, int persistent, uint64_t n)
{
    atomic_store(&armed_at, 0);
    atomic_store(&armed_kind, kind);
    atomic_store(&armed_code, code);
    atomic_store(&armed_persistent, persistent);
    atomic_store(&io_calls, 0);
    atomic_store(&io_injected, 0);
    atomic_store(&armed_at, n);
}

/* Disarms; 1 when the armed failure was injected. */
static int io_disarm(void)
{
    atomic_store(&armed_at, 0);
    return atomic_load(&io_injected) > 0;
}

static int shim_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}

static int shim_read(sqlite3_file *f, void *buf, int amount, sqlite3_int64 offset)
{
    int rc = io_fault(IO_READ);
    return rc ? rc : REAL(f)->pMethods->xRead(REAL(f), buf, amount, offset);
}

static int shim_write(sqlite3_file *f, const void *buf, int amount, sqlite3_int64 offset)
{
    int rc = io_fault(IO_WRITE);
    if (rc == SQLITE_FULL && amount > 1) /* a disk that fills up during the write */
        REAL(f)->pMethods->xWrite(REAL(f), buf, amount / 2, offset);
    return rc ? rc : REAL(f)->pMethods->xWrite(REAL(f), buf, amount, offset);
}

static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    int rc = io_fault(IO_TRUNCATE);
    return rc ? rc : REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int shim_sync(sqlite3_file *f, int flags)
{
    int rc = io_fault(IO_SYNC);
    return rc ? rc : REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int shim_lock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xLock(REAL(f), level);
}

static int shim_unlock(sqlite3_file *f, int level)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), level);
}

static int shim_check_reserved_lock(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int shim_file_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int shim_sector_size(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int shim_device_characteristics(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int shim_shm_map(sqlite3_file *f, int region, int size, int extend, void volatile **out)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), region, size, extend, out);
}

static int shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void shim_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int shim_shm_unmap(sqlite3_file *f, int delete_flag)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), delete_flag);
}

/* Memory-mapped reads would go around xRead: SQLite falls back to xRead
 * when xFetch gives no page (and mmap_size is 0 by default anyway). */
static int shim_fetch(sqlite3_file *f, sqlite3_int64 offset, int amount, void **out)
{
    *out = NULL;
    return SQLITE_OK;
}

static int shim_unfetch(sqlite3_file *f, sqlite3_int64 offset, void *p)
{
    return SQLITE_OK;
}

static const sqlite3_io_methods shim_io = {
    3,
    shim_close,
    shim_read,
    shim_write,
    shim_truncate,
    shim_sync,
    shim_file_size,
    shim_lock,
    shim_unlock,
    shim_check_reserved_lock,
    shim_file_control,
    shim_sector_size,
    shim_device_characteristics,
    shim_shm_map,
    shim_shm_lock,
    shim_shm_barrier,
    shim_shm_unmap,
    shim_fetch,
    shim_unfetch,
};

static int shim_open(sqlite3_vfs *vfs, sqlite3_filename name, sqlite3_file *f, int flags,
                     int *out_flags)
{
    shim_file *p = (shim_file *)f;
    int rc;
    p->real = (sqlite3_file *)(p + 1);
    rc = real_vfs->xOpen(real_vfs, name, p->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        if (p->real->pMethods) p->real->pMethods->xClose(p->real);
        p->base.pMethods = NULL;
        return rc;
    }
    /* The shim forwards the shm methods: a real file without them (an old
     * VFS) would not get here with WAL, which needs them. */
    p->base.pMethods = &shim_io;
    return SQLITE_OK;
}

/* Registers the shim as the default VFS, before any connection opens.
 * Everything else (delete, access, full path name, randomness, time) is
 * the real VFS's, which does not look at the vfs pointer it is given. */
static void shim_install(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    if (real_vfs == NULL) TEST_FAIL_("no default SQLite VFS");
    shim_vfs = *real_vfs;
    shim_vfs.zName = "iosweep";
    shim_vfs.szOsFile = (int)sizeof(shim_file) + real_vfs->szOsFile;
    shim_vfs.pNext = NULL;
    shim_vfs.xOpen = shim_open;
    if (sqlite3_vfs_register(&shim_vfs, 1) != SQLITE_OK) TEST_FAIL_("sqlite3_vfs_register");
}

/* ---- sweep bookkeeping ----------------------------------------------------- */

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 10) : dflt;
}

/* Every factor-th point at scale 1, every (factor/scale)-th below (see the
 * top). */
static uint64_t sweep_stride(uint64_t factor)
{
    uint64_t s = env_u64("OUTBOX_SWEEP_STRIDE", factor * 100 / (uint64_t)test_scaled(100, 1));
    return s < 1 ? 1 : s;
}

static int sweep_selected(const char *name)
{
    const char *only = getenv("OUTBOX_SWEEP_ONLY");
    return only == NULL || *only == '\0' || strcmp(only, name) == 0;
}

static swept *report(const char *what)
{
    swept *s = &results[nresults < 15 ? nresults++ : 15];
    memset(s, 0, sizeof *s);
    snprintf(s->what, sizeof s->what, "%s", what);
    return s;
}

/* ---- messages, the outbox and the destination file ------------------------ */

typedef struct ids {
    char v[MAX_IDS][37];
    int n;
} ids;

/* Copies a message id (36 characters) into dst. */
static void copy_id(char dst[37], const char *id)
{
    size_t len = strnlen(id, 36);
    memcpy(dst, id, len);
    dst[len] = '\0';
}

static void ids_add(ids *s, const char *id)
{
    if (s->n < MAX_IDS) copy_id(s->v[s->n++], id);
}

static void new_msg(outbox_msg **m, int i)
{
    char payload[64];
    snprintf(payload, sizeof payload, "{\"n\":%d}", i);
    ASSERT_OK(outbox_msg_new(m, "order.created", "Order", i % 2 ? "o-1" : "o-2", payload, err),
              err);
}

/* A fresh outbox at path holding `before` messages (fault-free), whose ids
 * go to committed. */
static void fresh_outbox(const char *path, int before, ids *committed)
{
    char side[CH_PATH + 8];
    sqlite3 *db;
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-journal", path);
    unlink(side);
    db = ch_db_open(path);
    ch_db_exec(db, "PRAGMA journal_mode=WAL");
    ASSERT_OK(outbox_schema_init_sqlite(db, err), err);
    ch_db_exec(db, "BEGIN");
    for (int i = 0; i < before; i++) {
        outbox_msg *m;
        new_msg(&m, i);
        ASSERT_OK(outbox_enqueue_sqlite(db, m, err), err);
        ids_add(committed, outbox_msg_id(m));
        outbox_msg_free(m);
    }
    ch_db_exec(db, "COMMIT");
    sqlite3_close(db);
}

/* The ids in the destination file at path (none when it is absent); fails
 * the test on a line that is not a whole JSON object with an id.  The
 * caller frees *out. */
static size_t file_ids(const char *path, char (**out)[37])
{
    size_t len, n = 0, cap = 16;
    char *text = test_read_file(path, &len), *line, *save = NULL;
    char(*v)[37] = malloc(cap * sizeof *v);
    if (v == NULL) TEST_FAIL_("out of memory");
    if (text != NULL && len > 0 && text[len - 1] != '\n')
        TEST_FAIL_("%s ends in the middle of a line", path);
    for (line = text ? strtok_r(text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        json_error_t jerr;
        json_t *ev = json_loads(line, 0, &jerr);
        const char *id = ev ? json_string_value(json_object_get(ev, "id")) : NULL;
        if (id == NULL) TEST_FAIL_("%s holds a line that is not a whole event: %s", path, line);
        if (n == cap && (v = realloc(v, (cap *= 2) * sizeof *v)) == NULL)
            TEST_FAIL_("out of memory");
        copy_id(v[n++], id);
        json_decref(ev);
    }
    free(text);
    *out = v;
    return n;
}

static int has_id(char (*v)[37], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], id) == 0) return 1;
    return 0;
}

/* One relay run (new, run --once, free) from the outbox at db to file:out.
 * wait: stand by for a lease a failed run could not give back. */
static int relay_once(const char *db, const char *out, int wait)
{
    outbox_relay_options o;
    outbox_relay *relay = NULL;
    char store[CH_PATH + 8], to[CH_PATH + 8];
    int rc;

    ch_sweep_relay_options(&o);
    o.wait_for_lease = wait;
    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(to, sizeof to, "file:%s", out);
    rc = outbox_relay_new(&relay, store, to, &o, err);
    if (rc == OUTBOX_OK) rc = outbox_relay_run(relay, err);
    outbox_relay_free(relay);
    return rc;
}

static int64_t count_id(sqlite3 *db, const char *id, const char *status)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    const char *sql = status ? "SELECT count(*) FROM outbox WHERE id = ?1 AND status = ?2"
                             : "SELECT count(*) FROM outbox WHERE id = ?1";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        TEST_FAIL_("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    if (status) sqlite3_bind_text(st, 2, status, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) == SQLITE_ROW) v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* The ids of a destination file, for ch_check_sent. */
typedef struct file_view {
    char (*v)[37];
    size_t n;
} file_view;

static int file_view_has(void *user, const char *id)
{
    file_view *f = user;
    return has_id(f->v, f->n, id);
}

/* Every message marked sent in the outbox is in the file (which holds only
 * whole lines); returns how many are sent. */
static int64_t check_sent_in_file(sqlite3 *db, const char *out, const char *label)
{
    file_view f;
    char where[CH_PATH + 200];
    int64_t sent;
    f.n = file_ids(out, &f.v);
    snprintf(where, sizeof where, "in %s (%s)", out, label);
    sent = ch_check_sent(db, file_view_has, &f, where);
    free(f.v);
    return sent;
}

/* The restart after an injected failure (everything is closed, the fault
 * disarmed): the checks at the top of the file.  Returns the committed
 * messages missing from the file at the end (lost). */
static uint64_t restart_and_check(const char *db_path, const char *out, const ids *committed,
                                  const char *label)
{
    sqlite3 *db = ch_db_open(db_path);
    sqlite3_stmt *st = NULL;
    char(*v)[37];
    size_t n;
    uint64_t lost = 0;
    int tries, rc = OUTBOX_OK;

    ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
    if (strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0)
        TEST_FAIL_("%s: integrity_check: %s", label, sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    for (int i = 0; i < committed->n; i++)
        if (count_id(db, committed->v[i], NULL) != 1)
            TEST_FAIL_("%s: message %s was enqueued (OK, committed) but is not in the outbox",
                       label, committed->v[i]);
    check_sent_in_file(db, out, label);
    sqlite3_close(db);

    for (tries = 0; tries < 50 && ch_outbox_count(db_path, "pending") > 0; tries++)
        rc = relay_once(db_path, out, 1);
    if (tries == 50)
        TEST_FAIL_("%s: %lld messages left pending by fault-free runs: %d %s", label,
                   (long long)ch_outbox_count(db_path, "pending"), rc, err->message);
    if (ch_outbox_count(db_path, "failed") != 0) TEST_FAIL_("%s: a message was set Failed", label);

    db = ch_db_open(db_path);
    ASSERT_EQ(check_sent_in_file(db, out, label), ch_outbox_count(db_path, NULL));
    sqlite3_close(db);
    n = file_ids(out, &v);
    for (int i = 0; i < committed->n; i++)
        if (!has_id(v, n, committed->v[i])) {
            fprintf(stderr, "%s: message %s lost\n", label, committed->v[i]);
            lost++;
        }
    free(v);
    return lost;
}

/* The restart and its checks after one run of a sweep; 1 when the run
 * reached no failure (the sweep is over). */
static int sweep_step_done(swept *s, const char *db, const char *out, const ids *committed,
                           const char *label, int injected, uint64_t n)
{
    s->lost += restart_and_check(db, out, committed, label);
    s->tried++;
    if (injected) s->points = n;
    return !injected;
}

/* ---- SQLite under the shim -------------------------------------------------- */

/* IN_TXN messages by outbox_enqueue_sqlite in one transaction on a
 * connection of the test's; committed ids go to c, the others count in
 * *unsure (their transaction failed: SQLite may still have made it
 * durable, the classic uncertain commit).  0, or 1 when something failed. */
static int enqueue_in_txn(const char *path, ids *c, uint64_t *unsure)
{
    sqlite3 *db = NULL;
    char id[IN_TXN][37];
    int rc = sqlite3_open(path, &db), i = 0;

    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    }
    for (; rc == SQLITE_OK && i < IN_TXN; i++) {
        outbox_msg *m;
        new_msg(&m, BEFORE + i);
        copy_id(id[i], outbox_msg_id(m));
        rc = outbox_enqueue_sqlite(db, m, err);
        outbox_msg_free(m);
        if (rc > 0) TEST_FAIL_("outbox_enqueue_sqlite returned %d, not an outbox code", rc);
    }
    if (rc == SQLITE_OK) rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        for (int j = 0; j < IN_TXN; j++)
            ids_add(c, id[j]);
    else
        *unsure += (uint64_t)i;
    if (db && !sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    return rc != SQLITE_OK;
}

/* BY_STORE messages through a store handle, each its own transaction. */
static int enqueue_by_store(const char *path, ids *c, uint64_t *unsure)
{
    outbox_store *store = NULL;
    char url[CH_PATH + 8];
    int rc, failed = 0;

    snprintf(url, sizeof url, "sqlite:%s", path);
    rc = outbox_store_open(url, &store, err);
    if (rc != OUTBOX_OK) return 1;
    for (int i = 0; i < BY_STORE; i++) {
        outbox_msg *m;
        new_msg(&m, BEFORE + IN_TXN + i);
        rc = outbox_store_enqueue(store, m, err);
        if (rc > 0) TEST_FAIL_("outbox_store_enqueue returned %d, not an outbox code", rc);
        if (rc == OUTBOX_OK)
            ids_add(c, outbox_msg_id(m));
        else {
            (*unsure)++;
            failed = 1;
        }
        outbox_msg_free(m);
    }
    outbox_store_close(store);
    return failed;
}

typedef struct vfs_kind {
    const char *name; /* for OUTBOX_SWEEP_ONLY */
    int kind, code;
    int persistent; /* every call from the N-th on fails, until the restart */
    const char *what;
} vfs_kind;

static void sweep_vfs(const vfs_kind *k)
{
    char db[CH_PATH], out[CH_PATH], label[160];
    /* A relay whose store keeps failing retries for seconds before it gives
     * up: the persistent sweeps try every 8th point (runs together cover
     * them all). */
    uint64_t stride = sweep_stride(k->persistent ? 8 : 1), n = env_u64("OUTBOX_SWEEP_FROM", 1);
    swept *s = report(k->what);

    if (stride > 1) n += outbox__random64() % stride;
    ch_path(db, "vfs.db");
    ch_path(out, "vfs.jsonl");
    fprintf(stderr, "   %s: every %llu. point from %llu\n", k->what, (unsigned long long)stride,
            (unsigned long long)n);
    for (;; n += stride) {
        ids committed = {.n = 0};
        int failed[3], rc, injected;

        fresh_outbox(db, BEFORE, &committed);
        unlink(out);
        snprintf(label, sizeof label, "%s n=%llu", k->what, (unsigned long long)n);

        io_arm(k->kind, k->code, k->persistent, n);
        failed[0] = enqueue_in_txn(db, &committed, &s->unsure);
        failed[1] = enqueue_by_store(db, &committed, &s->unsure);
        rc = relay_once(db, out, 0);
        if (rc > 0) TEST_FAIL_("%s: the relay returned %d, not an outbox code", label, rc);
        failed[2] = rc != OUTBOX_OK;
        injected = io_disarm();
        for (int i = 0; i < 3; i++) {
            if (failed[i] && !injected)
                TEST_FAIL_("%s: a call failed with no failure injected: %s", label, err->message);
            s->failed[i] += (uint64_t)failed[i];
        }

        if (sweep_step_done(s, db, out, &committed, label, injected, n)) break;
    }
    ASSERT_EQ(s->lost, 0);
}

static const vfs_kind vfs_kinds[] = {
    {"vfs_write", IO_WRITE, SQLITE_IOERR_WRITE, 0, "SQLite xWrite -> SQLITE_IOERR_WRITE"},
    {"vfs_full", IO_WRITE, SQLITE_FULL, 0, "SQLite xWrite -> SQLITE_FULL (half written)"},
    {"vfs_full_persistent", IO_WRITE, SQLITE_FULL, 1,
     "SQLite xWrite -> SQLITE_FULL from the N-th on (the disk stays full)"},
    {"vfs_sync", IO_SYNC, SQLITE_IOERR_FSYNC, 0, "SQLite xSync -> SQLITE_IOERR_FSYNC"},
    {"vfs_read", IO_READ, SQLITE_IOERR_READ, 0, "SQLite xRead -> SQLITE_IOERR_READ"},
    {"vfs_read_persistent", IO_READ, SQLITE_IOERR_READ, 1,
     "SQLite xRead -> SQLITE_IOERR_READ from the N-th on"},
    {"vfs_truncate", IO_TRUNCATE, SQLITE_IOERR_TRUNCATE, 0,
     "SQLite xTruncate -> SQLITE_IOERR_TRUNCATE"},
};

/* ---- the file: destination ---------------------------------------------------- */

typedef struct file_kind {
    const char *name;  /* for OUTBOX_SWEEP_ONLY */
    const char *point; /* fault point in src/transport/file.c */
    const char *errnum;
    const char *what;
    /* NULL, or a failure that fires first in every run (then the sweep goes
     * over the calls of the recovery from it: cutting the batch off). */
    const char *first;
} file_kind;

static void sweep_file(const file_kind *k)
{
    char db[CH_PATH], out[CH_PATH], label[160], spec[128];
    uint64_t n = env_u64("OUTBOX_SWEEP_FROM", 1);
    swept *s = report(k->what);

    /* A handful of calls per run: every one is tried, whatever the scale. */
    ch_path(db, "file.db");
    ch_path(out, "file.jsonl");
    for (;; n++) {
        ids committed = {.n = 0};
        outbox_msg *m;
        sqlite3 *h;
        int rc, injected;

        /* Lines already in the file, then the messages of the swept run. */
        fresh_outbox(db, 2, &committed);
        unlink(out);
        ASSERT_OK(relay_once(db, out, 0), err);
        h = ch_db_open(db);
        ch_db_exec(h, "BEGIN");
        for (int i = 0; i < MAX_IDS - 2; i++) {
            new_msg(&m, i);
            ASSERT_OK(outbox_enqueue_sqlite(h, m, err), err);
            ids_add(&committed, outbox_msg_id(m));
            outbox_msg_free(m);
        }
        ch_db_exec(h, "COMMIT");
        sqlite3_close(h);
        snprintf(label, sizeof label, "%s n=%llu", k->what, (unsigned long long)n);

        snprintf(spec, sizeof spec, "%s%s%s:error=%s:%llu", k->first ? k->first : "",
                 k->first ? "," : "", k->point, k->errnum, (unsigned long long)n);
        outbox__fault_set(spec);
        rc = relay_once(db, out, 0);
        injected = outbox__fault_fired() > (k->first ? 1u : 0u);
        outbox__fault_set(NULL);
        if (rc != OUTBOX_OK && !injected)
            TEST_FAIL_("%s: the relay failed with no failure injected: %s", label, err->message);
        /* A relay rides a destination's failure out: its run still ends OK. */
        if (rc != OUTBOX_OK) TEST_FAIL_("%s: the relay returned %d: %s", label, rc, err->message);

        if (sweep_step_done(s, db, out, &committed, label, injected, n)) break;
    }
    ASSERT_EQ(s->lost, 0);
}

static const file_kind file_kinds[] = {
    {"file_write_enospc", "file_sys_write", "ENOSPC", "file: write() -> ENOSPC (torn line)", NULL},
    {"file_write_eio", "file_sys_write", "EIO", "file: write() -> EIO (torn line)", NULL},
    {"file_fsync_eio", "file_sys_fsync", "EIO", "file: fsync() -> EIO", NULL},
    {"file_fsync_enospc", "file_sys_fsync", "ENOSPC", "file: fsync() -> ENOSPC", NULL},
    {"file_cut_truncate_eio", "file_sys_truncate", "EIO",
     "file: after a write() ENOSPC, ftruncate() -> EIO", "file_sys_write:error=ENOSPC:1"},
    {"file_cut_fsync_eio", "file_sys_fsync", "EIO", "file: after a write() ENOSPC, fsync() -> EIO",
     "file_sys_write:error=ENOSPC:1"},
    {"file_cut_write_enospc", "file_sys_write", "ENOSPC",
     "file: after an fsync() EIO, write() -> ENOSPC", "file_sys_fsync:error=EIO:1"},
};

/* A relay stopped while its destination is down, right after cutting a
 * failed batch off the file failed too: the torn batch must not
 * stay in the file (a restart would find a broken line there). */
static outbox_relay *stop_target;

static void stop_when_down(void *user, int level, const char *component, const char *message)
{
    if (strstr(message, " is down: ") != NULL && stop_target != NULL)
        outbox_relay_stop(stop_target);
}

static void stop_while_cut_failed(void)
{
    char db[CH_PATH], out[CH_PATH], store[CH_PATH + 8], to[CH_PATH + 8];
    ids committed = {.n = 0};
    outbox_relay_options o;
    swept *s = report("file: write() ENOSPC, ftruncate() EIO, relay stopped");

    ch_path(db, "stop.db");
    ch_path(out, "stop.jsonl");
    fresh_outbox(db, 2, &committed);
    unlink(out);
    ASSERT_OK(relay_once(db, out, 0), err);
    fresh_outbox(db, MAX_IDS, &committed);
    committed.n = 0; /* the first file's messages are gone with its outbox */
    ch_sweep_relay_options(&o);
    snprintf(store, sizeof store, "sqlite:%s", db);
    snprintf(to, sizeof to, "file:%s", out);
    ASSERT_OK(outbox_relay_new(&stop_target, store, to, &o, err), err);
    outbox__fault_set("file_sys_write:error=ENOSPC:1,file_sys_truncate:error=EIO:1");
    outbox_log_set(stop_when_down, NULL, OUTBOX_LOG_WARN);
    ASSERT_OK(outbox_relay_run(stop_target, err), err);
    ASSERT_EQ(outbox__fault_fired(), 2);
    outbox_relay_free(stop_target);
    stop_target = NULL;
    outbox_log_set(NULL, NULL, OUTBOX_LOG_ERROR);
    outbox__fault_set(NULL);
    s->lost += restart_and_check(db, out, &committed, s->what);
    s->tried = s->points = 1;
    ASSERT_EQ(s->lost, 0);
}

int main(void)
{
    size_t i;
    /* Hundreds of fresh databases: on tmpfs when there is one. */
    if (getenv("TMPDIR") == NULL && access("/dev/shm", W_OK) == 0) setenv("TMPDIR", "/dev/shm", 1);
    shim_install();
    outbox_log_set(NULL, NULL, OUTBOX_LOG_ERROR);
    for (i = 0; i < sizeof vfs_kinds / sizeof vfs_kinds[0]; i++)
        if (sweep_selected(vfs_kinds[i].name)) {
            fprintf(stderr, "-- %s\n", vfs_kinds[i].name);
            sweep_vfs(&vfs_kinds[i]);
        }
    for (i = 0; i < sizeof file_kinds / sizeof file_kinds[0]; i++)
        if (sweep_selected(file_kinds[i].name)) {
            fprintf(stderr, "-- %s\n", file_kinds[i].name);
            sweep_file(&file_kinds[i]);
        }
    if (sweep_selected("file_stop_while_cut_failed")) {
        fprintf(stderr, "-- file_stop_while_cut_failed\n");
        stop_while_cut_failed();
    }
    fprintf(stderr, "I/O failures swept: points, runs tried; runs whose caller enqueue / store "
                    "enqueue / relay failed; enqueues left uncertain; lost\n");
    for (int r = 0; r < nresults; r++) {
        const swept *w = &results[r];
        fprintf(stderr, "  %5llu %5llu  %4llu %4llu %4llu  %4llu  %llu  %s\n",
                (unsigned long long)w->points, (unsigned long long)w->tried,
                (unsigned long long)w->failed[0], (unsigned long long)w->failed[1],
                (unsigned long long)w->failed[2], (unsigned long long)w->unsure,
                (unsigned long long)w->lost, w->what);
    }
    return 0;
}
#endif
