/* engine/snapshot.c - consistent copies of the state database.
 *
 * Files, in the snapshot directory:
 *
 *   snapshot-<id>.db     a SQLite database: the whole state database as of one
 *                        read transaction (online backup API)
 *   snapshot-<id>.json   its manifest:
 *     {"snapshotId":"20261121T063600123Z-tally-1-4711",  time, instance, last seq
 *      "path":"/var/lib/tally/snapshots/snapshot-20261121T063600123Z-tally-1-4711.db",
 *      "lastSeq":4711,                           highest changelog seq inside
 *      "lastChangelogOffset":{"opb-changelog.0":812,"opb-changelog.1":790},
 *      "createdAt":1795242960123,                epoch ms
 *      "bytes":1048576,                          size of the .db file
 *      "checksum":"9f2c4e1a0b7d3c55",            FNV-1a 64 of the .db file
 *      "database":"orders.db",                   file name of the source database
 *      "instance":"tally-1"}                     --instance-id of the daemon that
 *                                                wrote it ("" offline)
 *
 * Several databases may share one snapshot directory ("database" tells their
 * snapshots apart; recovery only takes its own), and so may several
 * instances of one pipeline (each keeps its own newest `keep`). Partition p of
 * the input is in a snapshot when lastChangelogOffset has the changelog's
 * partition p: its rows (part = p) are then the state as of that offset, and
 * another instance can take them over (adapters/kafka/recovery.c). lastChangelogOffset holds the
 * meta rows kafka.changelog.<topic>.<partition> read in the same read transaction as the copy:
 * replaying the changelog topic from those offsets + 1 brings the copy up to date. Each file is
 * written under a ".tmp" name, fsynced, renamed, and the directory fsynced, so a crash leaves
 * either a complete snapshot or none. The manifest is also a row of the source
 * database's snapshots table (migrations/004_snapshots.sql). */
#include "snapshot.h"

#include "error.h"
#include "store.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int fsync_path(const char *path, int directory)
{
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    int rc;
    if (fd < 0)
        return -1;
    rc = fsync(fd);
    close(fd);
    return rc;
}

/* FNV-1a 64 over the file; also returns its size. */
static int checksum_file(const char *path, char out[17], int64_t *bytes)
{
    unsigned char buf[65536];
    uint64_t h = 14695981039346656037ULL;
    int64_t total = 0;
    ssize_t n;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (ssize_t i = 0; i < n; i++)
            h = (h ^ buf[i]) * 1099511628211ULL;
        total += n;
    }
    close(fd);
    if (n < 0)
        return -1;
    snprintf(out, 17, "%016llx", (unsigned long long)h);
    *bytes = total;
    return 0;
}

int tly_snapshot_manifest_json(const tly_snapshot_manifest *m, char *buf, size_t buflen)
{
    json_object *obj = json_object_new_object(),
                *offsets = json_tokener_parse(m->changelog_offsets);
    int n;

    json_object_object_add(obj, "snapshotId", json_object_new_string(m->snapshot_id));
    json_object_object_add(obj, "path", json_object_new_string(m->path));
    json_object_object_add(obj, "lastSeq", json_object_new_int64(m->last_seq));
    json_object_object_add(obj, "lastChangelogOffset",
                           offsets ? offsets : json_object_new_object());
    json_object_object_add(obj, "createdAt", json_object_new_int64(m->created_ms));
    json_object_object_add(obj, "bytes", json_object_new_int64(m->bytes));
    json_object_object_add(obj, "checksum", json_object_new_string(m->checksum));
    json_object_object_add(obj, "database", json_object_new_string(m->database));
    json_object_object_add(obj, "instance", json_object_new_string(m->instance));
    n = snprintf(buf, buflen, "%s",
                 json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                         JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(obj);
    return n >= 0 && (size_t)n < buflen ? n : -1;
}

static int write_manifest(const tly_snapshot_manifest *m, const char *path, char *errbuf,
                          size_t errlen)
{
    char json[8192];
    FILE *f;

    if (tly_snapshot_manifest_json(m, json, sizeof(json)) < 0)
        return tly_error(errbuf, errlen, "manifest of %s is too large", m->path);
    if (!(f = fopen(path, "w")))
        return tly_error(errbuf, errlen, "cannot create %s: %s", path, strerror(errno));
    if (fprintf(f, "%s\n", json) < 0 || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        fclose(f);
        return tly_error(errbuf, errlen, "cannot write %s: %s", path, strerror(errno));
    }
    fclose(f);
    return 0;
}

/* SQLite's quick_check of a finished copy: 0 if it says "ok", else -1 with
 * its first complaint (or why it could not run). */
static int check_copy(sqlite3 *dest, const char *db_path, char *errbuf, size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    int rc = -1, step;

    if (sqlite3_prepare_v2(dest, "PRAGMA quick_check", -1, &stmt, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot check the copy of %s: %s", db_path, sqlite3_errmsg(dest));
        goto done;
    }
    step = sqlite3_step(stmt);
    if (step != SQLITE_ROW) {
        tly_error(errbuf, errlen,
                  "the copy of %s fails SQLite's quick_check: %s; the database is damaged "
                  "(older snapshots are kept)",
                  db_path, sqlite3_errmsg(dest));
        goto done;
    }
    if (strcmp((const char *)sqlite3_column_text(stmt, 0), "ok") != 0) {
        /* Its first complaint, on one line (it comes as several). */
        char why[512];
        snprintf(why, sizeof(why), "%s", (const char *)sqlite3_column_text(stmt, 0));
        for (char *c = why; *c; c++)
            if (*c == '\n')
                *c = ' ';
        tly_error(errbuf, errlen,
                  "the copy of %s fails SQLite's quick_check: %s; the database is damaged "
                  "(older snapshots are kept)",
                  db_path, why);
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(stmt);
    return rc;
}

/* Copies the database inside one read transaction of its own connection and
 * reads last seq and changelog offsets in that same transaction. */
static int copy_database(const char *db_path, const char *tmp_path, tly_snapshot_manifest *m,
                         char *errbuf, size_t errlen)
{
    sqlite3 *src = NULL, *dest = NULL;
    sqlite3_backup *backup = NULL;
    sqlite3_stmt *stmt = NULL;
    int rc = -1, step;

    if (sqlite3_open_v2(db_path, &src, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot open %s: %s", db_path, src ? sqlite3_errmsg(src) : "?");
        goto done;
    }
    sqlite3_busy_timeout(src, 5000);
    if (sqlite3_exec(src, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(
            src,
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changelog'), 0),"
            " (SELECT coalesce(json_group_object(substr(key, 17), value), '{}') FROM meta"
            "   WHERE key LIKE 'kafka.changelog.%'),"
            " (SELECT value FROM meta WHERE key = 'tally.instance')",
            -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW) {
        tly_error(errbuf, errlen, "cannot read %s: %s", db_path, sqlite3_errmsg(src));
        goto done;
    }
    m->last_seq = sqlite3_column_int64(stmt, 0);
    snprintf(m->changelog_offsets, sizeof(m->changelog_offsets), "%s",
             sqlite3_column_text(stmt, 1));
    if (sqlite3_column_type(stmt, 2) == SQLITE_TEXT)
        snprintf(m->instance, sizeof(m->instance), "%s", sqlite3_column_text(stmt, 2));
    sqlite3_finalize(stmt);
    stmt = NULL;
    if ((step = sqlite3_open(tmp_path, &dest)) != SQLITE_OK ||
        !(backup = sqlite3_backup_init(dest, "main", src, "main"))) {
        tly_error(errbuf, errlen, "cannot start the copy into %s: %s", tmp_path,
                  dest ? sqlite3_errmsg(dest) : sqlite3_errstr(step));
        goto done;
    }
    /* One step copies every page under the read transaction opened above. A
     * failed step sets its code on the backup, not on either connection:
     * sqlite3_errmsg(dest) would say "not an error". */
    if ((step = sqlite3_backup_step(backup, -1)) != SQLITE_DONE) {
        tly_error(errbuf, errlen, "copy of %s into %s failed: %s", db_path, tmp_path,
                  sqlite3_errstr(step));
        goto done;
    }
    step = sqlite3_backup_finish(backup);
    backup = NULL;
    if (step != SQLITE_OK) {
        tly_error(errbuf, errlen, "copy of %s into %s failed: %s", db_path, tmp_path,
                  sqlite3_errstr(step));
        goto done;
    }
    /* A self-contained file: no -wal beside it. */
    if (sqlite3_exec(dest, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL) != SQLITE_OK) {
        tly_error(errbuf, errlen, "cannot finish %s: %s", tmp_path, sqlite3_errmsg(dest));
        goto done;
    }
    /* The backup copies pages as they are, damaged ones too: a snapshot of a
     * corrupt database must fail here, before it is renamed into place, named
     * in a manifest or allowed to prune an older, good one. */
    if (check_copy(dest, db_path, errbuf, errlen) < 0)
        goto done;
    rc = 0;
done:
    if (backup)
        sqlite3_backup_finish(backup);
    sqlite3_finalize(stmt);
    if (src) {
        sqlite3_exec(src, "COMMIT", NULL, NULL, NULL);
        sqlite3_close(src);
    }
    sqlite3_close(dest);
    return rc;
}

/* Removes a temporary copy and whatever SQLite left beside it: a copy that
 * failed half-way (a full disk) can leave its rollback journal. */
static void remove_temporary(const char *tmp_db)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};
    char path[4300];
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(path, sizeof(path), "%s%s", tmp_db, suffixes[i]);
        unlink(path);
    }
}

static void remove_snapshot_files(const char *db_file)
{
    char json_path[4200];
    size_t len = strlen(db_file);
    unlink(db_file);
    if (len > 3 && strcmp(db_file + len - 3, ".db") == 0) {
        snprintf(json_path, sizeof(json_path), "%.*s.json", (int)(len - 3), db_file);
        unlink(json_path);
    }
}

/* Records the manifest in the source database and keeps the newest `keep`. */
static int record_manifest(tly_store *store, const tly_snapshot_manifest *m, int keep, char *errbuf,
                           size_t errlen)
{
    sqlite3_stmt *stmt = NULL;
    sqlite3 *db = tly_store_db(store);
    int rc = -1;

    if (sqlite3_prepare_v2(db, "INSERT INTO snapshots VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)", -1,
                           &stmt, NULL) != SQLITE_OK)
        goto sql_error;
    sqlite3_bind_text(stmt, 1, m->snapshot_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(stmt, 2, m->path, -1, SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 3, m->last_seq);
    sqlite3_bind_text(stmt, 4, m->changelog_offsets, -1, SQLITE_STATIC);
    sqlite3_bind_int64(stmt, 5, m->created_ms);
    sqlite3_bind_int64(stmt, 6, m->bytes);
    sqlite3_bind_text(stmt, 7, m->checksum, -1, SQLITE_STATIC);
    if (sqlite3_step(stmt) != SQLITE_DONE)
        goto sql_error;
    sqlite3_finalize(stmt);
    stmt = NULL;
    if (keep > 0) {
        if (sqlite3_prepare_v2(db,
                               "DELETE FROM snapshots WHERE snapshot_id IN (SELECT snapshot_id "
                               "FROM snapshots ORDER BY created_ms DESC, snapshot_id DESC "
                               "LIMIT -1 OFFSET ?1) RETURNING path",
                               -1, &stmt, NULL) != SQLITE_OK)
            goto sql_error;
        sqlite3_bind_int(stmt, 1, keep);
        while (sqlite3_step(stmt) == SQLITE_ROW)
            remove_snapshot_files((const char *)sqlite3_column_text(stmt, 0));
    }
    rc = 0;
    goto done;
sql_error:
    tly_error(errbuf, errlen, "cannot record the snapshot manifest in %s: %s",
              tly_store_path(store), sqlite3_errmsg(db));
done:
    sqlite3_finalize(stmt);
    return rc;
}

int tly_snapshot_newer_first(const tly_snapshot_manifest *x, const tly_snapshot_manifest *y)
{
    if (x->created_ms != y->created_ms)
        return x->created_ms > y->created_ms ? -1 : 1;
    if (x->last_seq != y->last_seq)
        return x->last_seq > y->last_seq ? -1 : 1;
    return strcmp(y->snapshot_id, x->snapshot_id);
}

static int newest_first(const void *a, const void *b)
{
    return tly_snapshot_newer_first(a, b);
}

/* The table only lists the snapshots this database file wrote: a database
 * restored from a snapshot does not know the newer ones beside it. So the
 * directory, too, keeps only the newest `keep` of this database's snapshots,
 * of this instance: other instances' are theirs to prune. */
static void prune_directory(const char *dir, const char *database, const char *instance, int keep)
{
    tly_snapshot_manifest *list = NULL;
    int n = 0, kept = 0;
    char why[256];

    if (tly_snapshot_list(dir, &list, &n, why, sizeof(why)) < 0)
        return;
    qsort(list, (size_t)n, sizeof(*list), newest_first);
    for (int i = 0; i < n; i++) {
        char file[4200];
        if (strcmp(list[i].database, database) != 0 || strcmp(list[i].instance, instance) != 0)
            continue;
        if (++kept <= keep)
            continue;
        /* The file in this directory, whatever path its manifest names. */
        snprintf(file, sizeof(file), "%s/snapshot-%s.db", dir, list[i].snapshot_id);
        remove_snapshot_files(file);
    }
    free(list);
}

int tly_snapshot_copy(const char *db_path, const char *dir, tly_snapshot_manifest *m, char *errbuf,
                      size_t errlen)
{
    char tmp_db[4200], tmp_json[4200], final_json[4200], stamp[32], absolute[PATH_MAX];
    struct timespec ts;
    struct tm tm;
    int rc = -1;

    memset(m, 0, sizeof(*m));
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return tly_error(errbuf, errlen, "cannot create snapshot directory %s: %s", dir,
                         strerror(errno));
    /* The manifest names the file by an absolute path: it is read from
     * anywhere, by recovery and by tally restore. */
    if (!realpath(dir, absolute))
        return tly_error(errbuf, errlen, "cannot resolve %s: %s", dir, strerror(errno));
    dir = absolute;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    m->created_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    snprintf(tmp_db, sizeof(tmp_db), "%s/.snapshot-%ld.db.tmp", dir, (long)getpid());
    remove_temporary(tmp_db);
    if (copy_database(db_path, tmp_db, m, errbuf, errlen) < 0)
        goto done;
    {
        const char *base = strrchr(db_path, '/');
        snprintf(m->database, sizeof(m->database), "%s", base ? base + 1 : db_path);
    }
    /* <time>[-<instance>]-<last seq>: instances sharing the directory never
     * write the same name, and ids still sort by time */
    {
        char tag[24] = "";
        size_t n = 0, len = strlen(m->instance);
        /* the end of a long id: ids of one deployment tend to differ there */
        const size_t room = sizeof(tag) - 3; /* '-', the characters, NUL */
        for (const char *c = m->instance + (len > room ? len - room : 0); *c && n < room + 1; c++) {
            if (n == 0)
                tag[n++] = '-';
            tag[n++] = (isalnum((unsigned char)*c) || *c == '-' || *c == '_') ? *c : '_';
        }
        tag[n] = '\0';
        if (snprintf(m->snapshot_id, sizeof(m->snapshot_id), "%s%03ldZ%s-%lld", stamp,
                     ts.tv_nsec / 1000000, tag,
                     (long long)m->last_seq) >= (int)sizeof(m->snapshot_id)) {
            tly_error(errbuf, errlen, "snapshot id too long");
            goto done;
        }
    }
    if (snprintf(m->path, sizeof(m->path), "%s/snapshot-%s.db", dir, m->snapshot_id) >=
        (int)sizeof(m->path)) {
        tly_error(errbuf, errlen, "snapshot directory path too long");
        goto done;
    }
    if (fsync_path(tmp_db, 0) != 0 || checksum_file(tmp_db, m->checksum, &m->bytes) != 0) {
        tly_error(errbuf, errlen, "cannot sync %s: %s", tmp_db, strerror(errno));
        goto done;
    }
    snprintf(tmp_json, sizeof(tmp_json), "%s/.snapshot-%ld.json.tmp", dir, (long)getpid());
    snprintf(final_json, sizeof(final_json), "%s/snapshot-%s.json", dir, m->snapshot_id);
    if (write_manifest(m, tmp_json, errbuf, errlen) < 0)
        goto done;
    /* The data file first: a manifest never names a file that is not there. */
    if (rename(tmp_db, m->path) != 0 || rename(tmp_json, final_json) != 0 ||
        fsync_path(dir, 1) != 0) {
        tly_error(errbuf, errlen, "cannot move the snapshot into %s: %s", dir, strerror(errno));
        unlink(m->path);
        goto done;
    }
    rc = 0;
done:
    remove_temporary(tmp_db);
    if (rc < 0)
        unlink(tmp_json);
    return rc;
}

int tly_snapshot_record(tly_store *store, int keep, const tly_snapshot_manifest *m, char *errbuf,
                        size_t errlen)
{
    char dir[4096];
    const char *slash = strrchr(m->path, '/');

    if (record_manifest(store, m, keep, errbuf, errlen) < 0)
        return -1;
    if (keep > 0 && slash) {
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - m->path), m->path);
        prune_directory(dir, m->database, m->instance, keep);
    }
    return 0;
}

int tly_snapshot_write(const char *db_path, const char *dir, int keep, tly_snapshot_manifest *m,
                       char *errbuf, size_t errlen)
{
    tly_store *store = NULL;
    int rc;

    if (tly_snapshot_copy(db_path, dir, m, errbuf, errlen) < 0)
        return -1;
    if (tly_store_open(db_path, NULL, &store, errbuf, errlen) < 0)
        return -1;
    rc = tly_snapshot_record(store, keep, m, errbuf, errlen);
    tly_store_close(store);
    return rc;
}

/* Fills m from a parsed manifest object; what names the source in errors. */
static int manifest_from_json(json_object *obj, const char *what, tly_snapshot_manifest *m,
                              char *errbuf, size_t errlen)
{
    json_object *v;

    memset(m, 0, sizeof(*m));
    if (!obj || !json_object_is_type(obj, json_type_object))
        goto bad;
    if (!json_object_object_get_ex(obj, "snapshotId", &v) ||
        !json_object_is_type(v, json_type_string))
        goto bad;
    snprintf(m->snapshot_id, sizeof(m->snapshot_id), "%s", json_object_get_string(v));
    if (!json_object_object_get_ex(obj, "path", &v) || !json_object_is_type(v, json_type_string))
        goto bad;
    snprintf(m->path, sizeof(m->path), "%s", json_object_get_string(v));
    if (!json_object_object_get_ex(obj, "lastSeq", &v) || !json_object_is_type(v, json_type_int))
        goto bad;
    m->last_seq = json_object_get_int64(v);
    if (!json_object_object_get_ex(obj, "lastChangelogOffset", &v) ||
        !json_object_is_type(v, json_type_object))
        goto bad;
    snprintf(m->changelog_offsets, sizeof(m->changelog_offsets), "%s",
             json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
    if (!json_object_object_get_ex(obj, "createdAt", &v) || !json_object_is_type(v, json_type_int))
        goto bad;
    m->created_ms = json_object_get_int64(v);
    if (!json_object_object_get_ex(obj, "bytes", &v) || !json_object_is_type(v, json_type_int))
        goto bad;
    m->bytes = json_object_get_int64(v);
    if (!json_object_object_get_ex(obj, "checksum", &v) ||
        !json_object_is_type(v, json_type_string) || json_object_get_string_len(v) != 16)
        goto bad;
    snprintf(m->checksum, sizeof(m->checksum), "%s", json_object_get_string(v));
    if (json_object_object_get_ex(obj, "database", &v) && json_object_is_type(v, json_type_string))
        snprintf(m->database, sizeof(m->database), "%s", json_object_get_string(v));
    if (json_object_object_get_ex(obj, "instance", &v) && json_object_is_type(v, json_type_string))
        snprintf(m->instance, sizeof(m->instance), "%s", json_object_get_string(v));
    return 0;
bad:
    return tly_error(errbuf, errlen, "%s is not a snapshot manifest (see engine/snapshot.c)", what);
}

int tly_snapshot_read_manifest(const char *json_path, tly_snapshot_manifest *m, char *errbuf,
                               size_t errlen)
{
    json_object *obj = json_object_from_file(json_path);
    int rc;

    if (!obj) {
        memset(m, 0, sizeof(*m));
        return tly_error(errbuf, errlen, "cannot read manifest %s", json_path);
    }
    rc = manifest_from_json(obj, json_path, m, errbuf, errlen);
    json_object_put(obj);
    return rc;
}

int tly_snapshot_parse_manifest(const char *json, size_t len, tly_snapshot_manifest *m,
                                char *errbuf, size_t errlen)
{
    json_tokener *tok = json_tokener_new();
    json_object *obj;
    int rc;

    if (!tok)
        return tly_error(errbuf, errlen, "out of memory");
    obj = json_tokener_parse_ex(tok, json, (int)len);
    rc = manifest_from_json(json_tokener_get_error(tok) == json_tokener_success ? obj : NULL,
                            "the record", m, errbuf, errlen);
    json_object_put(obj);
    json_tokener_free(tok);
    return rc;
}

int tly_snapshot_list(const char *dir, tly_snapshot_manifest **out, int *count, char *errbuf,
                      size_t errlen)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    tly_snapshot_manifest *list = NULL;
    int n = 0, cap = 0;

    *out = NULL;
    *count = 0;
    if (!d) {
        if (errno == ENOENT)
            return 0;
        return tly_error(errbuf, errlen, "cannot read snapshot directory %s: %s", dir,
                         strerror(errno));
    }
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        char path[4400], why[512];
        /* snapshot-<id>.json; ".snapshot-*.tmp" files are unfinished. */
        if (strncmp(e->d_name, "snapshot-", 9) != 0 || len < 14 ||
            strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        if (n == cap) {
            tly_snapshot_manifest *grown =
                realloc(list, (size_t)(cap ? cap * 2 : 8) * sizeof(*list));
            if (!grown) {
                free(list);
                closedir(d);
                return tly_error(errbuf, errlen, "out of memory");
            }
            list = grown;
            cap = cap ? cap * 2 : 8;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        /* An unreadable manifest is not a snapshot; the others still are. */
        if (tly_snapshot_read_manifest(path, &list[n], why, sizeof(why)) == 0)
            n++;
    }
    closedir(d);
    *out = list;
    *count = n;
    return 0;
}

int tly_snapshot_verify(const tly_snapshot_manifest *m, char *errbuf, size_t errlen)
{
    char checksum[17];
    int64_t bytes;
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int rc = -1;

    if (checksum_file(m->path, checksum, &bytes) != 0)
        return tly_error(errbuf, errlen, "cannot read snapshot %s: %s", m->path, strerror(errno));
    if (bytes != m->bytes)
        return tly_error(errbuf, errlen, "snapshot %s has %lld bytes, its manifest says %lld",
                         m->path, (long long)bytes, (long long)m->bytes);
    if (strcmp(checksum, m->checksum) != 0)
        return tly_error(errbuf, errlen, "snapshot %s fails its checksum (%s, manifest %s)",
                         m->path, checksum, m->checksum);
    if (sqlite3_open_v2(m->path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &stmt, NULL) != SQLITE_OK ||
        sqlite3_step(stmt) != SQLITE_ROW ||
        strcmp((const char *)sqlite3_column_text(stmt, 0), "ok") != 0) {
        tly_error(errbuf, errlen, "snapshot %s fails SQLite's check: %s", m->path,
                  stmt && sqlite3_column_text(stmt, 0) ? (const char *)sqlite3_column_text(stmt, 0)
                                                       : sqlite3_errmsg(db));
        goto done;
    }
    rc = 0;
done:
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return rc;
}

int tly_snapshot_restore(const tly_snapshot_manifest *m, const char *new_db_path, char *errbuf,
                         size_t errlen)
{
    char tmp[4200], buf[65536];
    int in = -1, out = -1, rc = -1;
    ssize_t n;

    if (access(new_db_path, F_OK) == 0)
        return tly_error(errbuf, errlen, "%s exists; restore only into a new file", new_db_path);
    if (tly_snapshot_verify(m, errbuf, errlen) < 0)
        return -1;
    snprintf(tmp, sizeof(tmp), "%s.restore.tmp", new_db_path);
    if ((in = open(m->path, O_RDONLY)) < 0 ||
        (out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644)) < 0) {
        tly_error(errbuf, errlen, "cannot restore into %s: %s", new_db_path, strerror(errno));
        goto done;
    }
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n) {
            n = -1;
            break;
        }
    if (n < 0 || fsync(out) != 0 || rename(tmp, new_db_path) != 0) {
        tly_error(errbuf, errlen, "cannot restore into %s: %s", new_db_path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    unlink(tmp);
    return rc;
}

int tly_snapshot_list_recorded(const char *db_path, tly_snapshot_manifest **out, int *count,
                               char *errbuf, size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    tly_snapshot_manifest *list = NULL;
    const char *base = strrchr(db_path, '/');
    int n = 0, cap = 0, rc = -1;

    *out = NULL;
    *count = 0;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(
            db,
            "SELECT snapshot_id, path, last_seq, changelog_offsets, created_ms, bytes,"
            " checksum FROM snapshots",
            -1, &stmt, NULL) != SQLITE_OK) {
        rc = 0; /* no database, or not one with snapshots: none recorded */
        goto done;
    }
    while (sqlite3_step(stmt) == SQLITE_ROW) {
        tly_snapshot_manifest *m;
        if (n == cap) {
            tly_snapshot_manifest *grown =
                realloc(list, (size_t)(cap ? cap * 2 : 8) * sizeof(*list));
            if (!grown) {
                tly_error(errbuf, errlen, "out of memory");
                goto done;
            }
            list = grown;
            cap = cap ? cap * 2 : 8;
        }
        m = &list[n++];
        memset(m, 0, sizeof(*m));
        snprintf(m->snapshot_id, sizeof(m->snapshot_id), "%s", sqlite3_column_text(stmt, 0));
        snprintf(m->path, sizeof(m->path), "%s", sqlite3_column_text(stmt, 1));
        m->last_seq = sqlite3_column_int64(stmt, 2);
        snprintf(m->changelog_offsets, sizeof(m->changelog_offsets), "%s",
                 sqlite3_column_text(stmt, 3));
        m->created_ms = sqlite3_column_int64(stmt, 4);
        m->bytes = sqlite3_column_int64(stmt, 5);
        snprintf(m->checksum, sizeof(m->checksum), "%s", sqlite3_column_text(stmt, 6));
        snprintf(m->database, sizeof(m->database), "%s", base ? base + 1 : db_path);
    }
    *out = list;
    *count = n;
    list = NULL;
    rc = 0;
done:
    free(list);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return rc;
}

int64_t tly_snapshot_newest_recorded(tly_store *store)
{
    return tly_store_query_int(tly_store_db(store),
                               "SELECT coalesce(max(last_seq), 0) FROM snapshots", 0);
}
