/* engine/embedded_sql.h - the SQL files compiled into the binary.
 *
 * cmake/embed_sql.cmake generates the definitions from the files in migrations/ and
 * sql/ at build time. Both tables are sorted by file name and end with an
 * entry whose name is NULL. */
#ifndef TLY_EMBEDDED_SQL_H
#define TLY_EMBEDDED_SQL_H

struct tly_embedded_sql {
    const char *name; /* file name, e.g. "001_core.sql" */
    const char *text; /* whole file, NUL-terminated */
};

extern const struct tly_embedded_sql tly_embedded_migrations[];
extern const struct tly_embedded_sql tly_embedded_pipelines[];

#endif
