/* Inside the console: the HTML writer, the form parser, the embedded assets. */
#ifndef POSTERN_CONSOLE_INT_H
#define POSTERN_CONSOLE_INT_H
#include "lib/buf.h"
#include <stddef.h>

/* ---- the HTML writer (console/html.c) --------------------------------------------------------
 * Markup only ever comes from string literals in the code (html_lit refuses anything else);
 * every dynamic value goes through html_text (element content) or html_attr (a double-quoted
 * attribute value), which escape & < > " ' and replace ill-formed UTF-8 and control
 * characters, or through html_put, whose placeholders do the same. Results: 0, or a
 * BUF_* failure. */
int html_textn(struct buf *b, const char *s, size_t n);
int html_text(struct buf *b, const char *s);             /* NULL writes nothing */
#define html_attr html_text                                /* values are always in "..." */
#define html_lit(b, lit) buf_add((b), "" lit, sizeof(lit) - 1)
int html_num(struct buf *b, long long v);
/* A query-string component: percent-encoded, so it is also attribute-safe. */
int html_urlpart(struct buf *b, const char *s);
/* lit with each {} replaced by the next argument (const char *) escaped as text, each {u} by
 * the next argument percent-encoded (html_urlpart); a NULL argument writes nothing. */
int html_put_(struct buf *b, const char *lit, ...);
#define html_put(b, lit, ...) html_put_((b), "" lit, __VA_ARGS__)

/* ---- forms (console/form.c): application/x-www-form-urlencoded, fuzzed --------------------- */
struct form_field {
  char *name, *value;            /* decoded, NUL-terminated (a NUL in the input ends them) */
};
struct form {
  struct form_field *f;
  size_t n;
};
/* Parses body[0..len) into at most max fields; 0, or -1 (malformed, too many, no memory). */
int form_parse(const char *body, size_t len, size_t max, struct form *out);
void form_free(struct form *fm);
/* The first value of name, or NULL. */
const char *form_get(const struct form *fm, const char *name);

/* ---- the embedded assets (console/assets.c, made from console/assets/ at build time) -------- */
struct console_asset {
  const char *name;              /* "console.css" */
  const unsigned char *data;
  size_t len;
};
extern const struct console_asset console_assets[];
extern const size_t console_nassets;

/* ---- a stored message taken apart for its page (console/mail.c, GMime) --------------------- */
struct mail_part {
  char *type;                    /* "image/png" */
  char *filename;                /* NULL when none */
  int attachment;                /* Content-Disposition: attachment, or a file name */
};
struct mail_view {
  char *subject, *from, *to, *date;   /* decoded to UTF-8; NULL when absent */
  char *text, *html;             /* the first inline text/plain and text/html, UTF-8 */
  struct mail_part *parts;       /* every leaf part, in order */
  size_t nparts;
};
/* 0, or -1 (not a message, no memory). */
int mail_view_parse(const char *msg, size_t len, struct mail_view *out);
void mail_view_free(struct mail_view *v);
/* The decoded bytes of leaf part idx; 0, -1 no such part / no memory. */
int mail_part_bytes(const char *msg, size_t len, size_t idx, struct buf *out);
/* Only the Subject (decoded), read from the header; NULL when none. malloc'd. */
char *mail_subject(const char *msg, size_t len);
/* The length of the header block (up to and with the empty line). */
size_t mail_header_len(const char *msg, size_t len);

#endif
