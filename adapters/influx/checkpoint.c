/* adapters/influx/checkpoint.c - the checkpoint file.
 *
 * Format: one line of ASCII text,
 *
 *   tally-checkpoint 1 end_ms=1732170000000\n
 *
 * "tally-checkpoint" names the file's kind, "1" its format version, and
 * end_ms is the exclusive end, in milliseconds since the Unix epoch, of the
 * last time range whose records were all delivered. Anything else (another
 * version, trailing text, a number out of range) is refused when read.
 *
 * A write goes to "<path>.tmp" (created 0644, truncated), which is fsynced,
 * renamed over <path>, and then the directory is fsynced so the rename itself
 * survives a power loss. */
#include "checkpoint.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAGIC "tally-checkpoint 1 end_ms="
#define MAX_FILE 128

int tly_checkpoint_read(const char *path, int64_t *end_ms, char *errbuf, size_t errlen)
{
    char text[MAX_FILE + 1], *end;
    ssize_t n;
    long long value;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        return tly_error(errbuf, errlen, "cannot open checkpoint %s: %m", path);
    }
    n = read(fd, text, MAX_FILE);
    close(fd);
    if (n < 0)
        return tly_error(errbuf, errlen, "cannot read checkpoint %s: %m", path);
    text[n] = '\0';
    if (strncmp(text, MAGIC, strlen(MAGIC)) != 0)
        return tly_error(errbuf, errlen,
                         "%s is not a tally checkpoint (expected \"" MAGIC "<ms>\"); move it "
                         "away to start from --lookback, or fix it",
                         path);
    errno = 0;
    value = strtoll(text + strlen(MAGIC), &end, 10);
    if (errno || end == text + strlen(MAGIC) || strcmp(end, "\n") != 0 || value < 0)
        return tly_error(errbuf, errlen, "checkpoint %s is damaged: \"%.60s\"", path, text);
    *end_ms = value;
    return 1;
}

/* fsync of the directory that holds path, so a rename in it is durable. */
static int sync_parent(const char *path, char *errbuf, size_t errlen)
{
    char *copy = strdup(path);
    int fd, rc = 0;
    if (!copy)
        return tly_error(errbuf, errlen, "out of memory");
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
        rc = tly_error(errbuf, errlen, "cannot sync the directory of %s: %m", path);
    if (fd >= 0)
        close(fd);
    free(copy);
    return rc;
}

int tly_checkpoint_write(const char *path, int64_t end_ms, char *errbuf, size_t errlen)
{
    char tmp[4096], text[MAX_FILE];
    int fd = -1, len, rc = -1;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return tly_error(errbuf, errlen, "checkpoint path too long: %s", path);
    len = snprintf(text, sizeof(text), MAGIC "%" PRId64 "\n", end_ms);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        tly_error(errbuf, errlen, "cannot create %s: %m", tmp);
        goto done;
    }
    if (write(fd, text, (size_t)len) != len) {
        tly_error(errbuf, errlen, "cannot write %s: %m", tmp);
        goto done;
    }
    if (fsync(fd) < 0) {
        tly_error(errbuf, errlen, "cannot sync %s: %m", tmp);
        goto done;
    }
    if (close(fd) < 0) {
        fd = -1;
        tly_error(errbuf, errlen, "cannot close %s: %m", tmp);
        goto done;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        tly_error(errbuf, errlen, "cannot rename %s to %s: %m", tmp, path);
        goto done;
    }
    rc = sync_parent(path, errbuf, errlen);
done:
    if (fd >= 0)
        close(fd);
    if (rc < 0)
        unlink(tmp); /* the old checkpoint, if any, is untouched */
    return rc;
}
