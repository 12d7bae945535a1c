/* Capped, growable byte buffers: every buffer is created with its maximum and growing past it
 * is an error the caller must answer (curl's dynbuf, Postfix's VSTRING). */
#ifndef POSTERN_BUF_H
#define POSTERN_BUF_H
#include <stddef.h>
#include <stdarg.h>

struct buf {
  char *ptr;       /* always NUL-terminated for convenience; never relied on for length */
  size_t len;
  size_t alloc;
  size_t max;      /* len may never exceed this */
};

enum buf_result { BUF_OK = 0, BUF_TOO_BIG = 1, BUF_NOMEM = 2 };

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);                 /* len = 0, memory kept */
int  buf_add(struct buf *b, const void *p, size_t n);
int  buf_addstr(struct buf *b, const char *s);
int  buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int  buf_vaddf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
int  buf_reserve(struct buf *b, size_t extra);
char *buf_steal(struct buf *b, size_t *len);   /* hands over the memory; b is left empty */

/* Appends p[0..n) escaped for a log line: printable ASCII as is, everything else as \xNN,
 * cut at cap bytes of input with "..." (redis's sdscatrepr). */
int  buf_addrepr(struct buf *b, const void *p, size_t n, size_t cap);

/* The same for a UTF-8 terminal: well-formed UTF-8 as is, only control characters (C0, DEL,
 * C1 as \xNN or \u{NNNN}, and the bidirectional controls) and ill-formed bytes escaped; the cap
 * never splits a character. */
int  buf_addrepr_utf8(struct buf *b, const void *p, size_t n, size_t cap);

/* The length of the well-formed UTF-8 sequence at s[0..n) (no overlongs, surrogates or values
 * past U+10FFFF), 0 when there is none. */
size_t str_utf8_seq(const void *s, size_t n);

/* bounded string helpers used instead of strcpy/strcat/sprintf/atoi */
size_t str_copy(char *dst, size_t dstsz, const char *src);          /* truncates, always NUL-terminates */
int    str_to_long(const char *s, size_t n, long min, long max, long *out); /* 0 ok, -1 bad */
int    str_casecmp_n(const char *a, size_t alen, const char *b);   /* a[0..alen) vs NUL-terminated b */
char  *str_dup_n(const void *p, size_t n);

#endif
