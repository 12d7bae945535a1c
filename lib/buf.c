/* Capped, growable byte buffers and the bounded string helpers that replace the unbounded C
 * library calls tests/check-source bans. */
#include "lib/buf.h"
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>

void buf_init(struct buf *b, size_t max)
{
  /* a cap of 0 is a forgotten cap, not a buffer meant to stay empty */
  assert(max > 0);
  b->ptr = NULL;
  b->len = 0;
  b->alloc = 0;
  b->max = max;
}

void buf_free(struct buf *b)
{
  free(b->ptr);
  b->ptr = NULL;
  b->len = 0;
  b->alloc = 0;
}

void buf_reset(struct buf *b)
{
  b->len = 0;
  if(b->ptr)
    b->ptr[0] = '\0';
}

int buf_reserve(struct buf *b, size_t extra)
{
  size_t need, nalloc;
  char *p;
  if(extra > b->max || b->len > b->max - extra)
    return BUF_TOO_BIG;
  need = b->len + extra + 1;               /* room for the convenience NUL */
  if(need <= b->alloc)
    return BUF_OK;
  nalloc = b->alloc ? b->alloc : 64;
  while(nalloc < need)
    nalloc = (nalloc > SIZE_MAX / 2) ? need : nalloc * 2;
  if(nalloc > b->max + 1)
    nalloc = b->max + 1;                   /* never allocate past the cap */
  if(nalloc < need)
    nalloc = need;
  p = realloc(b->ptr, nalloc);
  if(!p)
    return BUF_NOMEM;
  b->ptr = p;
  b->alloc = nalloc;
  return BUF_OK;
}

int buf_add(struct buf *b, const void *p, size_t n)
{
  int result = buf_reserve(b, n);
  if(result)
    return result;
  if(n)
    memcpy(b->ptr + b->len, p, n);
  b->len += n;
  b->ptr[b->len] = '\0';
  return BUF_OK;
}

int buf_addstr(struct buf *b, const char *s)
{
  return buf_add(b, s, strlen(s));
}

int buf_vaddf(struct buf *b, const char *fmt, va_list ap)
{
  va_list ap2;
  int n;
  int result;
  va_copy(ap2, ap);
  n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if(n < 0)
    return BUF_NOMEM;
  result = buf_reserve(b, (size_t)n);
  if(result)
    return result;
  vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
  b->len += (size_t)n;
  return BUF_OK;
}

int buf_addf(struct buf *b, const char *fmt, ...)
{
  va_list ap;
  int result;
  va_start(ap, fmt);
  result = buf_vaddf(b, fmt, ap);
  va_end(ap);
  return result;
}

char *buf_steal(struct buf *b, size_t *len)
{
  char *p = b->ptr;
  if(!p) {
    p = malloc(1);
    if(p)
      p[0] = '\0';
  }
  if(len)
    *len = b->len;
  b->ptr = NULL;
  b->len = 0;
  b->alloc = 0;
  return p;
}

int buf_addrepr(struct buf *b, const void *p, size_t n, size_t cap)
{
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = p;
  size_t i, take = n > cap ? cap : n;
  int result = BUF_OK;
  for(i = 0; i < take && !result; i++) {
    unsigned char c = s[i];
    if(c == '\\')
      result = buf_add(b, "\\\\", 2);
    else if(c >= 0x20 && c < 0x7f)
      result = buf_add(b, &c, 1);
    else {
      char esc[4] = { '\\', 'x', hex[c >> 4], hex[c & 15] };
      result = buf_add(b, esc, 4);
    }
  }
  if(!result && take < n)
    result = buf_add(b, "...", 3);
  return result;
}

/* The length of the well-formed UTF-8 sequence at p (no overlongs, surrogates or values past
 * U+10FFFF), 0 when there is none. */
size_t str_utf8_seq(const void *s, size_t n)
{
  const unsigned char *p = s;
  unsigned char c;
  if(!n)
    return 0;
  c = p[0];
  if(c < 0x80)
    return 1;
  if(c >= 0xc2 && c <= 0xdf)
    return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
  if(c >= 0xe0 && c <= 0xef) {
    if(n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
      return 0;
    if((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0))
      return 0;
    return 3;
  }
  if(c >= 0xf0 && c <= 0xf4) {
    if(n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
      return 0;
    if((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90))
      return 0;
    return 4;
  }
  return 0;
}

/* the control characters a UTF-8 terminal acts on rather than shows: C0, DEL, C1, every
 * bidirectional control of Unicode's Bidi_Control set (they reorder what follows them: a subject
 * could pose as another; U+061C ARABIC LETTER MARK is one of them), and the line and paragraph
 * separators U+2028/U+2029, which some terminals and pagers take for a line end */
static int utf8_control(unsigned long cp)
{
  return cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp == 0x061c || cp == 0x200e ||
         cp == 0x200f || cp == 0x2028 || cp == 0x2029 ||
         (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

int buf_addrepr_utf8(struct buf *b, const void *p, size_t n, size_t cap)
{
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = p;
  size_t i = 0, take = n > cap ? cap : n;
  int result = BUF_OK;
  while(i < take && !result) {
    size_t k = str_utf8_seq(s + i, n - i), j;
    unsigned long cp;
    if(k > 1 && i + k > take)
      break;                       /* the cap falls inside a character */
    if(!k) {
      char esc[4] = { '\\', 'x', hex[s[i] >> 4], hex[s[i] & 15] };
      result = buf_add(b, esc, 4);
      i++;
      continue;
    }
    cp = k == 1 ? s[i] : k == 2 ? (s[i] & 0x1fu) : k == 3 ? (s[i] & 0x0fu) : (s[i] & 0x07u);
    for(j = 1; j < k; j++)
      cp = (cp << 6) | (s[i + j] & 0x3fu);
    if(cp == '\\')
      result = buf_add(b, "\\\\", 2);
    else if(cp < 0x80 && utf8_control(cp)) {
      char esc[4] = { '\\', 'x', hex[cp >> 4], hex[cp & 15] };
      result = buf_add(b, esc, 4);
    }
    else if(utf8_control(cp))
      result = buf_addf(b, "\\u{%04lx}", cp);
    else
      result = buf_add(b, s + i, k);
    i += k;
  }
  if(!result && i < n)
    result = buf_add(b, "...", 3);
  return result;
}

size_t str_copy(char *dst, size_t dstsz, const char *src)
{
  size_t n = strlen(src);
  if(!dstsz)
    return n;
  if(n >= dstsz)
    n = dstsz - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
  return n;
}

int str_to_long(const char *s, size_t n, long min, long max, long *out)
{
  size_t i = 0;
  int neg = 0;
  unsigned long long v = 0;
  if(!n)
    return -1;
  if(s[0] == '-' || s[0] == '+') {
    neg = s[0] == '-';
    i = 1;
    if(n == 1)
      return -1;
  }
  for(; i < n; i++) {
    unsigned d;
    if(s[i] < '0' || s[i] > '9')
      return -1;
    d = (unsigned)(s[i] - '0');
    /* checked before the multiplication: with 20 digits v * 10 would wrap (to 0 for
     * "92233720368547758080") and come out as a small, valid number */
    if(v > ((unsigned long long)LONG_MAX + 1 - d) / 10)
      return -1;
    v = v * 10 + d;
  }
  if(neg) {
    if(v > (unsigned long long)LONG_MAX + 1)
      return -1;
    if(v == (unsigned long long)LONG_MAX + 1) {
      if(min != LONG_MIN)
        return -1;
      *out = LONG_MIN;
      return 0;
    }
    if(-(long)v < min)
      return -1;
    *out = -(long)v;
    return 0;
  }
  if(v > (unsigned long long)LONG_MAX || (long)v > max || (long)v < min)
    return -1;
  *out = (long)v;
  return 0;
}

int str_casecmp_n(const char *a, size_t alen, const char *b)
{
  size_t i;
  for(i = 0; i < alen; i++) {
    unsigned char ca = (unsigned char)a[i], cb = (unsigned char)b[i];
    if(!cb)
      return 1;
    if(ca >= 'A' && ca <= 'Z')
      ca += 32;
    if(cb >= 'A' && cb <= 'Z')
      cb += 32;
    if(ca != cb)
      return ca < cb ? -1 : 1;
  }
  return b[alen] ? -1 : 0;
}

char *str_dup_n(const void *p, size_t n)
{
  char *s = malloc(n + 1);
  if(!s)
    return NULL;
  if(n)
    memcpy(s, p, n);
  s[n] = '\0';
  return s;
}
