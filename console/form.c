/* application/x-www-form-urlencoded bodies and query strings of the console's forms. */
#include "console/console_int.h"
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
  if(c >= '0' && c <= '9')
    return c - '0';
  if(c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if(c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* Decodes s[0..n) (+ is a space, %XX a byte; a malformed escape is kept as it is). */
static char *decode(const char *s, size_t n)
{
  char *out = malloc(n + 1);
  size_t i, o = 0;
  if(!out)
    return NULL;
  for(i = 0; i < n; i++) {
    int hi, lo;
    if(s[i] == '+')
      out[o++] = ' ';
    else if(s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0) {
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    }
    else
      out[o++] = s[i];
  }
  out[o] = '\0';
  return out;
}

int form_parse(const char *body, size_t len, size_t max, struct form *out)
{
  size_t i = 0;
  memset(out, 0, sizeof(*out));
  while(i < len) {
    size_t end = i, eq;
    struct form_field *f;
    while(end < len && body[end] != '&')
      end++;
    if(end > i) {
      if(out->n >= max)
        goto bad;
      if(!out->f && !(out->f = calloc(max ? max : 1, sizeof(*out->f))))
        goto bad;
      for(eq = i; eq < end && body[eq] != '='; eq++)
        ;
      f = &out->f[out->n];
      f->name = decode(body + i, eq - i);
      f->value = decode(body + (eq < end ? eq + 1 : end), eq < end ? end - eq - 1 : 0);
      out->n++;
      if(!f->name || !f->value)
        goto bad;
    }
    i = end + 1;
  }
  return 0;
bad:
  form_free(out);
  return -1;
}

void form_free(struct form *fm)
{
  size_t i;
  for(i = 0; i < fm->n; i++) {
    free(fm->f[i].name);
    free(fm->f[i].value);
  }
  free(fm->f);
  fm->f = NULL;
  fm->n = 0;
}

const char *form_get(const struct form *fm, const char *name)
{
  size_t i;
  for(i = 0; i < fm->n; i++)
    if(!strcmp(fm->f[i].name, name))
      return fm->f[i].value;
  return NULL;
}
