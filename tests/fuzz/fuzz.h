/* tests/fuzz/fuzz.h - what the libFuzzer harnesses share: a failed oracle
 * aborts (libFuzzer saves the input), and an input as a path SQLite and
 * fopen can read without a file on disk. */
#ifndef TLY_FUZZ_H
#define TLY_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* An oracle that failed: the message, then abort() (libFuzzer writes the
 * input to its artifact directory). */
#define FUZZ_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: oracle failed: %s: ", __FILE__, __LINE__, #cond);              \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Puts size bytes in an anonymous memory file; *path becomes
 * "/proc/self/fd/N" (a '/' in it: tally takes it for a pipeline file).
 * Returns the descriptor to close, or -1. */
static inline int fuzz_memfile(const uint8_t *data, size_t size, char *path, size_t pathlen)
{
    int fd = memfd_create("tally-fuzz", 0);
    size_t done = 0;
    if (fd < 0)
        return -1;
    while (done < size) {
        ssize_t n = write(fd, data + done, size - done);
        if (n <= 0) {
            close(fd);
            return -1;
        }
        done += (size_t)n;
    }
    snprintf(path, pathlen, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
