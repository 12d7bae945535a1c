/* Fuzz target for the console's form parser (console/form.c: request bodies and query strings
 * from browsers) and its HTML writer (console/html.c): every field decoded within the body's
 * length, and every value written as text or attribute holds no markup character. */
#include "console/console_int.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_escaped(const char *s)
{
  struct buf b;
  size_t i;
  buf_init(&b, 16u * 1024u * 1024u);
  if(html_text(&b, s) == 0)
    for(i = 0; i < b.len; i++)
      if(b.ptr[i] == '<' || b.ptr[i] == '>' || b.ptr[i] == '"' || b.ptr[i] == '\'' ||
         (b.ptr[i] == '&' && strncmp(b.ptr + i, "&amp;", 5) && strncmp(b.ptr + i, "&lt;", 4) &&
          strncmp(b.ptr + i, "&gt;", 4) && strncmp(b.ptr + i, "&quot;", 6) &&
          strncmp(b.ptr + i, "&#39;", 5)))
        abort();
  buf_reset(&b);
  if(html_urlpart(&b, s) == 0)
    for(i = 0; i < b.len; i++)
      if(strchr("<>\"'& ", b.ptr[i]))
        abort();
  buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct form fm;
  size_t i;
  if(form_parse((const char *)data, size, 64, &fm))
    return 0;
  if(fm.n > 64)
    abort();
  for(i = 0; i < fm.n; i++) {
    if(strlen(fm.f[i].name) > size || strlen(fm.f[i].value) > size)
      abort();
    check_escaped(fm.f[i].name);
    check_escaped(fm.f[i].value);
  }
  form_free(&fm);
  {
    /* the raw bytes too, as a page shows a message's header or source */
    char *copy = str_dup_n(data, size);
    if(copy) {
      check_escaped(copy);
      free(copy);
    }
  }
  return 0;
}
