/* What DKIM signing (relay/), checking (inbound/) and posternctl read themselves: a message's
 * header fields one by one, and RFC 6376 tag=value lists (DKIM-Signature fields, key records).
 * Bounded by explicit lengths: the input is network data. */
#include "global/mailauth.h"
#include <string.h>

/* The next header field of msg[0..len) from *pos: name and the value (folded lines included,
 * without the final CRLF). 0 at the end of the header section (or of msg). */
int mailauth_header_next(const char *msg, size_t len, size_t *pos, const char **name,
                         size_t *namelen, const char **value, size_t *valuelen)
{
  size_t p = *pos, colon, end;
  if(p >= len || msg[p] == '\r' || msg[p] == '\n')
    return 0;
  for(colon = p; colon < len && msg[colon] != ':' && msg[colon] != '\n'; colon++)
    ;
  if(colon >= len || msg[colon] != ':')
    return 0;                      /* not a field: the body starts here */
  end = colon;
  for(;;) {
    while(end < len && msg[end] != '\n')
      end++;
    if(end >= len || end + 1 >= len || (msg[end + 1] != ' ' && msg[end + 1] != '\t'))
      break;
    end++;
  }
  *name = msg + p;
  *namelen = colon - p;
  while(*namelen && (msg[p + *namelen - 1] == ' ' || msg[p + *namelen - 1] == '\t'))
    (*namelen)--;
  *value = msg + colon + 1;
  *valuelen = end - colon - 1;
  if(*valuelen && (*value)[*valuelen - 1] == '\r')
    (*valuelen)--;
  *pos = end < len ? end + 1 : len;
  return 1;
}

/* The value of tag in a tag-list (RFC 6376 3.2: "d=example.com; s=sel"), blanks around it
 * taken off. 0 found, -1 not. */
int mailauth_tag_find(const char *v, size_t len, const char *tag, const char **out,
                      size_t *outlen)
{
  size_t i = 0, tl = strlen(tag);
  while(i < len) {
    size_t start, eq, end;
    while(i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n'))
      i++;
    start = i;
    while(i < len && v[i] != ';')
      i++;
    end = i;
    i++;                            /* past the ';' */
    for(eq = start; eq < end && v[eq] != '='; eq++)
      ;
    if(eq >= end)
      continue;
    {
      size_t ne = eq;
      while(ne > start && (v[ne - 1] == ' ' || v[ne - 1] == '\t' || v[ne - 1] == '\r' ||
                           v[ne - 1] == '\n'))
        ne--;
      if(ne - start != tl || memcmp(v + start, tag, tl))
        continue;
    }
    eq++;
    while(eq < end && (v[eq] == ' ' || v[eq] == '\t' || v[eq] == '\r' || v[eq] == '\n'))
      eq++;
    while(end > eq && (v[end - 1] == ' ' || v[end - 1] == '\t' || v[end - 1] == '\r' ||
                       v[end - 1] == '\n'))
      end--;
    *out = v + eq;
    *outlen = end - eq;
    return 0;
  }
  return -1;
}
