/* Capped, growable byte buffers and the bounded string helpers that replace the unbounded C
 * library calls DESIGN.md bans. */
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
