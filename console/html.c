/* The HTML writer: the only way the console writes a page, so that nothing from a message, a
 * peer or a user reaches the browser unescaped. */
#include "console/console_int.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int html_textn(struct buf *b, const char *s, size_t n)
{
  size_t i = 0;
  int r = 0;
  while(!r && i < n) {
    unsigned char ch = (unsigned char)s[i];
    size_t run = i, len;
    /* copy the longest run that needs nothing */
    while(run < n && (ch = (unsigned char)s[run]) >= 0x20 && ch < 0x7f && ch != '&' &&
          ch != '<' && ch != '>' && ch != '"' && ch != '\'')
      run++;
    if(run > i)
      r = buf_add(b, s + i, run - i);
    i = run;
    if(r || i >= n)
      break;
    ch = (unsigned char)s[i];
    switch(ch) {
    case '&': r = html_lit(b, "&amp;"); i++; continue;
    case '<': r = html_lit(b, "&lt;"); i++; continue;
    case '>': r = html_lit(b, "&gt;"); i++; continue;
    case '"': r = html_lit(b, "&quot;"); i++; continue;
    case '\'': r = html_lit(b, "&#39;"); i++; continue;
    case '\n': case '\t': r = buf_add(b, s + i, 1); i++; continue;
    case '\r': i++; continue;
    default: break;
    }
    if(ch >= 0x80 && (len = str_utf8_seq(s + i, n - i)) > 0) {
      /* C1 controls (U+0080..U+009F) are not shown as themselves */
      if(len == 2 && ch == 0xc2 && (unsigned char)s[i + 1] < 0xa0)
        r = html_lit(b, "\xef\xbf\xbd");
      else
        r = buf_add(b, s + i, len);
      i += len;
      continue;
    }
    r = html_lit(b, "\xef\xbf\xbd");   /* U+FFFD for a control or an ill-formed byte */
    i++;
  }
  return r;
}

int html_text(struct buf *b, const char *s)
{
  return s ? html_textn(b, s, strlen(s)) : 0;
}

int html_num(struct buf *b, long long v)
{
  return buf_addf(b, "%lld", v);
}

int html_urlpart(struct buf *b, const char *s)
{
  static const char hex[] = "0123456789ABCDEF";
  int r = 0;
  for(; s && *s && !r; s++) {
    unsigned char ch = (unsigned char)*s;
    if((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
       ch == '-' || ch == '.' || ch == '_' || ch == '~')
      r = buf_add(b, s, 1);
    else {
      char e[3] = { '%', hex[ch >> 4], hex[ch & 15] };
      r = buf_add(b, e, 3);
    }
  }
  return r;
}

int html_put_(struct buf *b, const char *lit, ...)
{
  va_list ap;
  const char *p = lit, *q;
  int r = 0;
  va_start(ap, lit);
  while(!r && (q = strchr(p, '{')) != NULL) {
    if(q[1] == '}') {
      r = buf_add(b, p, (size_t)(q - p));
      if(!r)
        r = html_text(b, va_arg(ap, const char *));
      p = q + 2;
    }
    else if(q[1] == 'u' && q[2] == '}') {
      r = buf_add(b, p, (size_t)(q - p));
      if(!r)
        r = html_urlpart(b, va_arg(ap, const char *));
      p = q + 3;
    }
    else {
      r = buf_add(b, p, (size_t)(q - p) + 1);
      p = q + 1;
    }
  }
  if(!r)
    r = buf_addstr(b, p);
  va_end(ap);
  return r;
}
