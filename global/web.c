/* The response half of global/web.h. */
#include "global/web.h"
#include <stdlib.h>
#include <string.h>

int web_header(struct web_response *r, const char *name, const char *value)
{
  char *v;
  if(r->nheaders >= WEB_HEADERS_MAX || !(v = str_dup_n(value, strlen(value))))
    return -1;
  r->headers[r->nheaders].name = name;
  r->headers[r->nheaders].value = v;
  r->nheaders++;
  return 0;
}

void web_response_free(struct web_response *r)
{
  size_t i;
  for(i = 0; i < r->nheaders; i++)
    free(r->headers[i].value);
  r->nheaders = 0;
  buf_free(&r->body);
}
