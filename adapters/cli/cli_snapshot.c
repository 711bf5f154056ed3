/* adapters/cli/cli_snapshot.c - tally snapshot and tally restore. */
#include "cli_common.h"
#include "commands.h"

#include "snapshot.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static const char snapshot_usage[] =
    "usage: tally snapshot --db PATH --snapshot-dir DIR [--keep N]\n"
    "\n"
    "Writes a consistent copy of the state database with SQLite's online backup API\n"
    "(its own connection, one read transaction: a running writer is not blocked) as\n"
    "DIR/snapshot-<id>.db plus its manifest DIR/snapshot-<id>.json, records the\n"
    "manifest in the database's snapshots table and keeps the newest N (default 3).\n"
    "Prints the manifest.\n";

static const char restore_usage[] =
    "usage: tally restore --snapshot ID|PATH --db NEW [--snapshot-dir DIR]\n"
    "\n"
    "Checks a snapshot (size, checksum, SQLite's check) against its manifest and copies\n"
    "it to the new database NEW (which must not exist). --snapshot is a snapshot id\n"
    "(looked up in --snapshot-dir), a snapshot .db file or its .json manifest; the\n"
    "two files travel together (the .db next to the manifest is the one restored).\n";

static void print_manifest(const tly_snapshot_manifest *m)
{
    char json[8192];
    if (tly_snapshot_manifest_json(m, json, sizeof(json)) >= 0)
        printf("%s\n", json);
}

int cmd_snapshot(int argc, char **argv)
{
    static const struct option options[] = {{"db", required_argument, NULL, 'd'},
                                            {"snapshot-dir", required_argument, NULL, 's'},
                                            {"keep", required_argument, NULL, 'k'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *db = NULL, *dir = NULL;
    int64_t keep = 3;
    tly_snapshot_manifest m;
    char err[1024];
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'd': db = optarg; break;
        case 's': dir = optarg; break;
        case 'k':
            if (cli_parse_int64("snapshot", "--keep", optarg, 1, 1000000, &keep) < 0)
                return CLI_EXIT_USAGE;
            break;
        case 'h': fputs(snapshot_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("snapshot", opt, argv, optind);
        }
    }
    if (!db || !dir)
        return cli_usage_error("snapshot", "--db and --snapshot-dir are required");
    if (optind < argc)
        return cli_usage_error("snapshot", "unexpected argument \"%s\"", argv[optind]);
    if (access(db, F_OK) != 0) {
        fprintf(stderr, "tally snapshot: %s does not exist\n", db);
        return CLI_EXIT_FAILURE;
    }
    if (tly_snapshot_write(db, dir, (int)keep, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally snapshot: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    print_manifest(&m);
    return CLI_EXIT_OK;
}

int cmd_restore(int argc, char **argv)
{
    static const struct option options[] = {{"snapshot", required_argument, NULL, 's'},
                                            {"db", required_argument, NULL, 'd'},
                                            {"snapshot-dir", required_argument, NULL, 'D'},
                                            {"help", no_argument, NULL, 'h'},
                                            {NULL, 0, NULL, 0}};
    const char *snapshot = NULL, *db = NULL, *dir = ".";
    char manifest_path[4200], err[1024];
    tly_snapshot_manifest m;
    size_t len;
    int opt;

    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 's': snapshot = optarg; break;
        case 'd': db = optarg; break;
        case 'D': dir = optarg; break;
        case 'h': fputs(restore_usage, stdout); return CLI_EXIT_OK;
        default: return cli_bad_option("restore", opt, argv, optind);
        }
    }
    if (!snapshot || !db)
        return cli_usage_error("restore", "--snapshot and --db are required");
    if (optind < argc)
        return cli_usage_error("restore", "unexpected argument \"%s\"", argv[optind]);
    len = strlen(snapshot);
    if (len > 5 && strcmp(snapshot + len - 5, ".json") == 0)
        snprintf(manifest_path, sizeof(manifest_path), "%s", snapshot);
    else if (len > 3 && strcmp(snapshot + len - 3, ".db") == 0)
        snprintf(manifest_path, sizeof(manifest_path), "%.*s.json", (int)(len - 3), snapshot);
    else
        snprintf(manifest_path, sizeof(manifest_path), "%s/snapshot-%s.json", dir, snapshot);
    if (tly_snapshot_read_manifest(manifest_path, &m, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally restore: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    /* The .db next to the manifest is the snapshot, wherever the pair has been
     * copied or moved since the manifest was written. */
    snprintf(m.path, sizeof(m.path), "%.*s.db", (int)(strlen(manifest_path) - 5), manifest_path);
    if (tly_snapshot_restore(&m, db, err, sizeof(err)) < 0) {
        fprintf(stderr, "tally restore: %s\n", err);
        return CLI_EXIT_FAILURE;
    }
    printf("restored snapshot=%s last_seq=%lld db=%s\n", m.snapshot_id, (long long)m.last_seq, db);
    return CLI_EXIT_OK;
}
