/* reply_text: the new words of a reply, without the quoted history and the signature the
 * common clients append (Gmail, Outlook, Apple Mail, Thunderbird, '>' quoting, "-- "). An
 * HTML-only reply is first rendered to text here (tags dropped, entities decoded, blockquotes
 * as '>' lines): a small linear pass, since only the line structure matters. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "inbound/inbound.h"
#include "lib/buf.h"

/* ---- HTML -> text -------------------------------------------------------------------------- */

static const struct {
  const char *name;
  unsigned cp;
} entities[] = {
  {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", 0xa0},
  {"copy", 0xa9}, {"reg", 0xae}, {"trade", 0x2122}, {"hellip", 0x2026}, {"mdash", 0x2014},
  {"ndash", 0x2013}, {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201c},
  {"rdquo", 0x201d}, {"laquo", 0xab}, {"raquo", 0xbb}, {"bull", 0x2022}, {"middot", 0xb7},
  {"euro", 0x20ac}, {"pound", 0xa3}, {"eacute", 0xe9}, {"egrave", 0xe8}, {"agrave", 0xe0},
  {"ccedil", 0xe7}, {"uuml", 0xfc}, {"ouml", 0xf6}, {"auml", 0xe4}, {"szlig", 0xdf},
  {"zwnj", 0x200c}, {"zwj", 0x200d}, {"shy", 0xad},
};

struct render {
  struct buf out;
  int quote;           /* blockquote depth */
  int at_line_start;
  int space;           /* white space pending */
  int skip;            /* inside <style>, <script>, <head>, <title> */
};

static int put_cp(struct buf *o, unsigned cp)
{
  char u[4];
  if(cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
    cp = 0xfffd;
  if(cp < 0x80) {
    u[0] = (char)cp;
    return buf_add(o, u, 1);
  }
  if(cp < 0x800) {
    u[0] = (char)(0xc0 | (cp >> 6));
    u[1] = (char)(0x80 | (cp & 0x3f));
    return buf_add(o, u, 2);
  }
  if(cp < 0x10000) {
    u[0] = (char)(0xe0 | (cp >> 12));
    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    u[2] = (char)(0x80 | (cp & 0x3f));
    return buf_add(o, u, 3);
  }
  u[0] = (char)(0xf0 | (cp >> 18));
  u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
  u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
  u[3] = (char)(0x80 | (cp & 0x3f));
  return buf_add(o, u, 4);
}

static int newline(struct render *r)
{
  r->space = 0;
  r->at_line_start = 1;
  return buf_add(&r->out, "\n", 1);
}

/* text bytes (already UTF-8) with HTML's white-space collapsing */
static int emit(struct render *r, const char *p, size_t n)
{
  size_t i;
  for(i = 0; i < n; i++) {
    char ch = p[i];
    if(ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f') {
      r->space = 1;
      continue;
    }
    if(r->at_line_start) {
      size_t q;
      for(q = 0; q < (size_t)r->quote && q < 8; q++)
        if(buf_add(&r->out, "> ", 2))
          return -1;
      r->at_line_start = 0;
      r->space = 0;
    }
    else if(r->space && buf_add(&r->out, " ", 1))
      return -1;
    r->space = 0;
    if(buf_add(&r->out, &ch, 1))
      return -1;
  }
  return 0;
}

static int emit_cp(struct render *r, unsigned cp)
{
  struct buf tmp;
  int res;
  if(cp == 0xa0)
    cp = ' ';
  buf_init(&tmp, 8);
  res = put_cp(&tmp, cp) || emit(r, tmp.ptr, tmp.len);
  buf_free(&tmp);
  return res;
}

/* an entity at p (after '&'): its length including ';' when decoded, 0 when not one */
static size_t entity(const char *p, size_t n, unsigned *cp)
{
  size_t i = 0, k;
  if(n && p[0] == '#') {
    unsigned long v = 0;
    int hex = n > 1 && (p[1] == 'x' || p[1] == 'X');
    i = hex ? 2 : 1;
    k = i;
    while(i < n && i < 10) {
      char ch = p[i];
      if(ch >= '0' && ch <= '9')
        v = v * (hex ? 16 : 10) + (unsigned long)(ch - '0');
      else if(hex && ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f'))
        v = v * 16 + (unsigned long)((ch | 0x20) - 'a' + 10);
      else
        break;
      i++;
    }
    if(i == k)
      return 0;
    *cp = v > 0x10ffff ? 0xfffd : (unsigned)v;
    return i < n && p[i] == ';' ? i + 1 : i;
  }
  for(k = 0; k < sizeof(entities) / sizeof(entities[0]); k++) {
    size_t len = strlen(entities[k].name);
    if(n > len && !strncmp(p, entities[k].name, len) && p[len] == ';') {
      *cp = entities[k].cp;
      return len + 1;
    }
  }
  return 0;
}

static int tag_is(const char *name, size_t n, const char *want)
{
  return strlen(want) == n && !strncasecmp(name, want, n);
}

static int block_tag(const char *name, size_t n)
{
  static const char *const blocks[] = {"div", "tr", "li", "ul", "ol", "table", "h1", "h2",
                                       "h3", "h4", "h5", "h6", "pre", "section", "article",
                                       "header", "footer", "dl", "dt", "dd", "address"};
  size_t i;
  for(i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++)
    if(tag_is(name, n, blocks[i]))
      return 1;
  return 0;
}

static int render_html(const char *h, size_t n, struct buf *out)
{
  struct render r;
  size_t i = 0;
  memset(&r, 0, sizeof(r));
  buf_init(&r.out, SIZE_MAX / 2);
  r.at_line_start = 1;
  while(i < n) {
    if(h[i] == '<') {
      size_t j = i + 1, ns, ne;
      int closing = 0;
      if(n - i >= 4 && !strncmp(h + i, "<!--", 4)) {
        const char *e = NULL;
        size_t k;
        for(k = i + 4; k + 3 <= n; k++)
          if(!strncmp(h + k, "-->", 3)) {
            e = h + k;
            break;
          }
        i = e ? (size_t)(e - h) + 3 : n;
        continue;
      }
      if(j < n && h[j] == '/') {
        closing = 1;
        j++;
      }
      ns = j;
      while(j < n && ((h[j] >= 'a' && h[j] <= 'z') || (h[j] >= 'A' && h[j] <= 'Z') ||
                      (h[j] >= '0' && h[j] <= '9')))
        j++;
      ne = j;
      if(ne == ns) {            /* not a tag: a literal '<' */
        if(!r.skip && emit(&r, "<", 1))
          goto nomem;
        i++;
        continue;
      }
      /* to the end of the tag, quoted attribute values skipped whole */
      {
        char q = 0;
        while(j < n && (q || h[j] != '>')) {
          if(q && h[j] == q)
            q = 0;
          else if(!q && (h[j] == '"' || h[j] == '\''))
            q = h[j];
          j++;
        }
      }
      i = j < n ? j + 1 : n;
      if(tag_is(h + ns, ne - ns, "style") || tag_is(h + ns, ne - ns, "script") ||
         tag_is(h + ns, ne - ns, "head") || tag_is(h + ns, ne - ns, "title")) {
        r.skip = closing ? 0 : 1;
        continue;
      }
      if(r.skip)
        continue;
      if(tag_is(h + ns, ne - ns, "br")) {
        if(newline(&r))
          goto nomem;
      }
      else if(tag_is(h + ns, ne - ns, "blockquote")) {
        if(!r.at_line_start && newline(&r))
          goto nomem;
        if(closing) {
          if(r.quote > 0)
            r.quote--;
        }
        else if(r.quote < 1000)
          r.quote++;
      }
      else if(tag_is(h + ns, ne - ns, "hr")) {
        /* Outlook separates the quoted message with a rule: keep it as its text form */
        if((!r.at_line_start && newline(&r)) || emit(&r, "________________________________", 32) ||
           newline(&r))
          goto nomem;
      }
      else if(tag_is(h + ns, ne - ns, "p")) {
        /* a paragraph is set off by a blank line */
        if(!r.at_line_start && newline(&r))
          goto nomem;
        if(r.out.len >= 1 && !(r.out.len >= 2 && r.out.ptr[r.out.len - 2] == '\n') &&
           newline(&r))
          goto nomem;
      }
      else if(block_tag(h + ns, ne - ns)) {
        if(!r.at_line_start && newline(&r))
          goto nomem;
      }
      continue;
    }
    if(r.skip) {
      i++;
      continue;
    }
    if(h[i] == '&') {
      unsigned cp;
      size_t k = entity(h + i + 1, n - i - 1, &cp);
      if(k) {
        if(emit_cp(&r, cp))
          goto nomem;
        i += k + 1;
        continue;
      }
    }
    {
      size_t k = i;
      while(k < n && h[k] != '<' && h[k] != '&')
        k++;
      if(k == i)
        k++;
      if(emit(&r, h + i, k - i))
        goto nomem;
      i = k;
    }
  }
  *out = r.out;
  return 0;
nomem:
  buf_free(&r.out);
  return -1;
}

/* ---- the reply's own lines ----------------------------------------------------------------- */

struct line {
  const char *p;
  size_t n;
};

static void trim(const char **p, size_t *n)
{
  while(*n && ((unsigned char)**p == ' ' || **p == '\t' || **p == '\r'))
    (*p)++, (*n)--;
  /* U+00A0 from &nbsp; */
  while(*n >= 2 && (unsigned char)(*p)[0] == 0xc2 && (unsigned char)(*p)[1] == 0xa0)
    (*p) += 2, (*n) -= 2;
  while(*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\r'))
    (*n)--;
}

static int starts(const char *p, size_t n, const char *s)
{
  size_t k = strlen(s);
  return n >= k && !strncasecmp(p, s, k);
}

static int ends(const char *p, size_t n, const char *s)
{
  size_t k = strlen(s);
  return n >= k && !strncasecmp(p + n - k, s, k);
}

/* "On ... wrote:" and its translations, as Gmail, Apple Mail and Thunderbird write it */
static int attribution(const char *p, size_t n)
{
  static const char *const tails[] = {"wrote:", "writes:", "a écrit :", "a écrit:",
                                      "schrieb:", "escribió:", "ha scritto:", "schreef:",
                                      "skrev:", "napisał:", "escreveu:", "kirjoitti:"};
  size_t i;
  for(i = 0; i < sizeof(tails) / sizeof(tails[0]); i++)
    if(ends(p, n, tails[i]))
      return 1;
  return 0;
}

/* a field line of Outlook's quoted header block, "*From:*" in its text rendering */
static int outlook_field(const char *p, size_t n, const char *name)
{
  if(n && *p == '*')
    p++, n--;
  return starts(p, n, name);
}

static int dashes_around(const char *p, size_t n, const char *words)
{
  size_t k = 0, e;
  while(k < n && p[k] == '-')
    k++;
  if(k < 2)
    return 0;
  while(k < n && p[k] == ' ')
    k++;
  if(!starts(p + k, n - k, words))
    return 0;
  e = k + strlen(words);
  while(e < n && p[e] == ' ')
    e++;
  while(e < n && p[e] == '-')
    e++;
  return e == n;
}

/* Does the quoted history (or the signature) begin at line i? */
static int cut_here(const struct line *l, size_t nl, size_t i)
{
  const char *p = l[i].p;
  size_t n = l[i].n, k;
  trim(&p, &n);
  if(!n)
    return 0;
  if(attribution(p, n))
    return 1;
  /* a wrapped attribution: "On Tue, 3 Mar 2026 at 10:02, Alex Example <" / "a@b> wrote:" */
  if(starts(p, n, "On ") && i + 1 < nl) {
    const char *q = l[i + 1].p;
    size_t m = l[i + 1].n;
    trim(&q, &m);
    if(attribution(q, m))
      return 1;
  }
  if(dashes_around(p, n, "Original Message") || dashes_around(p, n, "Forwarded Message") ||
     dashes_around(p, n, "Forwarded message") || starts(p, n, "Begin forwarded message:"))
    return 1;
  /* Outlook: a rule of underscores, then its header block */
  if(n >= 10) {
    for(k = 0; k < n && p[k] == '_'; k++)
      ;
    if(k == n)
      return 1;
  }
  if(outlook_field(p, n, "From:")) {
    size_t j;
    for(j = i + 1; j < nl && j <= i + 4; j++) {
      const char *q = l[j].p;
      size_t m = l[j].n;
      trim(&q, &m);
      if(outlook_field(q, m, "Sent:") || outlook_field(q, m, "Date:"))
        return 1;
    }
  }
  /* the signature separator ("-- ", often with its space lost) and mobile signatures */
  if((n == 2 && p[0] == '-' && p[1] == '-') || starts(p, n, "Sent from my ") ||
     starts(p, n, "Get Outlook for "))
    return 1;
  return 0;
}

char *inbound_reply_text(const char *text, size_t textlen, const char *html, size_t htmllen)
{
  struct buf rendered, out;
  const char *src = text;
  size_t srclen = textlen, i, nl = 0, cap = 0, first, last;
  struct line *lines = NULL;
  char *res = NULL;
  int only_space = 1;

  buf_init(&rendered, SIZE_MAX / 2);
  buf_init(&out, SIZE_MAX / 2);
  for(i = 0; text && i < textlen && only_space; i++)
    if(text[i] != ' ' && text[i] != '\t' && text[i] != '\r' && text[i] != '\n')
      only_space = 0;
  if(only_space && html && htmllen) {
    if(render_html(html, htmllen, &rendered))
      goto out;
    src = rendered.ptr;
    srclen = rendered.len;
  }
  /* split into lines */
  for(i = 0; src && i <= srclen;) {
    const char *e = i < srclen ? memchr(src + i, '\n', srclen - i) : NULL;
    size_t n = e ? (size_t)(e - (src + i)) : srclen - i;
    if(nl == cap) {
      size_t nc = cap ? cap * 2 : 64;
      struct line *nlp = realloc(lines, nc * sizeof(*lines));
      if(!nlp)
        goto out;
      lines = nlp;
      cap = nc;
    }
    lines[nl].p = src + i;
    lines[nl].n = n;
    nl++;
    i += n + 1;
    if(!e)
      break;
  }
  /* up to the first cut, without '>' lines (and the attribution just above a '>' block
   * that has no wording we know, "Alex <a@b>:" being too loose to cut on alone) */
  for(i = 0; i < nl && !cut_here(lines, nl, i); i++) {
    const char *p = lines[i].p;
    size_t n = lines[i].n;
    trim(&p, &n);
    if(n && *p == '>')
      continue;
    if(buf_add(&out, p, n) || buf_add(&out, "\n", 1))
      goto out;
  }
  /* blank lines at either end go */
  first = 0;
  while(first < out.len && (out.ptr[first] == '\n' || out.ptr[first] == ' '))
    first++;
  last = out.len;
  while(last > first && (out.ptr[last - 1] == '\n' || out.ptr[last - 1] == ' '))
    last--;
  res = malloc(last - first + 1);
  if(!res)
    goto out;
  if(last > first)
    memcpy(res, out.ptr + first, last - first);
  res[last - first] = '\0';
  /* blank-line runs inside collapse to one blank line */
  {
    size_t r, w = 0, run = 0;
    for(r = 0; res[r]; r++) {
      run = res[r] == '\n' ? run + 1 : 0;
      if(run <= 2)
        res[w++] = res[r];
    }
    res[w] = '\0';
  }
out:
  free(lines);
  buf_free(&rendered);
  buf_free(&out);
  return res;
}
