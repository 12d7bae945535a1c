/* Shared by the MIME record files (mime.c: a message; mime_post.c: an Inbound Parse post).
 * Private to inbound/. */
#ifndef POSTERN_INBOUND_MIME_INT_H
#define POSTERN_INBOUND_MIME_INT_H
#include <stddef.h>
#include <gmime/gmime.h>
#include <jansson.h>
#include "inbound/inbound.h"
#include "lib/buf.h"

struct bounds {                  /* boundaries of the enclosing multiparts, innermost first */
  const char *b;
  size_t len;
  const struct bounds *up;
};

/* one record being built */
struct mime_ctx {
  GMimeParserOptions *opts;
  const unsigned char *orig;     /* the caller's bytes (attached messages are copied from it) */
  size_t origlen;
  size_t parsedlen;              /* how much of them GMime was given */
  json_t *atts;
  struct inbound_attachment *att;
  size_t natt, attcap;
  struct buf text, html;
  int have_text, have_html;
  size_t text_max;               /* record_text_max: bytes kept of text, html, reply_text; 0 all */
  int text_cut, html_cut;        /* a body was cut at text_max */
  size_t entities;
  unsigned warn;                 /* GMime's critical warnings seen (bits) */
  gint64 bad_header[8];          /* where GMime found invalid header lines (the first few) */
  size_t nbad;                   /* how many it found */
  struct buf err;                /* parse_error, "; "-joined */
  json_t *dsn;
  int nomem;
};

void mime_gmime_start(void);
/* -1 when memory runs out */
int mime_ctx_init(struct mime_ctx *c);
void mime_ctx_free(struct mime_ctx *c);
void mime_note(struct mime_ctx *c, const char *what);

/* WHATWG label -> iconv name ("UTF-8", "WINDOWS-1252", "REPLACEMENT", ...), NULL unknown */
const char *mime_charset_name(const char *label, size_t n);
int mime_utf8_valid(const void *s, size_t n);
/* UTF-8 with ill-formed bytes and NUL as U+FFFD */
int mime_add_utf8(struct buf *o, const void *s, size_t n);
/* text in charset label (NULL: undeclared) as UTF-8 with LF line ends */
int mime_add_text(struct buf *o, const char *label, const void *s, size_t n);
/* decoded value of an unstructured field (RFC 2047, WHATWG labels) */
json_t *mime_decode_unstructured(struct mime_ctx *c, const char *v);
/* an address list text as [{address, name}] */
json_t *mime_address_list(struct mime_ctx *c, const char *v);

/* decoded content of a leaf part (transfer encoding undone, bad base64 padding tolerated) */
int mime_part_bytes(GMimePart *p, struct buf *out);
/* the same, stopping at max bytes; *cut (if given) set when there was more */
int mime_part_bytes_max(GMimePart *p, struct buf *out, size_t max, int *cut);
/* filename, RFC 2231 filename* first */
const char *mime_part_filename(GMimeObject *o);
/* how much of p to hand GMime (caps of lib/limits.h); why says what was cut */
size_t mime_prescan(const unsigned char *p, size_t n, const char **why);
/* GMime's tree of ba, parsed with c's options (c->warn collects its warnings) */
GMimeMessage *mime_gmime_parse(struct mime_ctx *c, GByteArray *ba);

/* the fields read from a header section: message_id ... date (mo may be NULL) */
void mime_header_fields(struct mime_ctx *c, GMimeObject *mo, json_t *rec);
/* takes data (malloc'd) in every case */
int mime_attach(struct mime_ctx *c, const char *filename, const char *type, const char *cid,
                const char *disposition, unsigned char *data, size_t len);
/* text, html, reply_text, attachments, auto_submitted, parse_error, dsn; then the result */
int mime_finish(struct mime_ctx *c, json_t *rec, GMimeObject *mo, struct inbound_mime **out);

#endif
