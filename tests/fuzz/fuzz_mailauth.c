/* Fuzz target for what Postern reads itself in DKIM and DMARC work: the header walker and the
 * RFC 6376 tag-list reader of global/mailauth.c (the signer's "signed already?" test, the key
 * records posternctl compares), the Authentication-Results reader of the record builder and
 * the remover of fields that claim our name (inbound/auth_results.c). Signatures, keys and DMARC records themselves are libopendkim's
 * and libopendmarc's. Every answer must lie inside the input and the walk must advance. */
#include "global/mailauth.h"
#include "inbound/inbound.h"
#include "lib/buf.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void inside(const char *base, size_t size, const char *p, size_t n)
{
  if(n && (p < base || p + n > base + size))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static const char *const tags[] = { "v", "a", "b", "bh", "c", "d", "h", "i", "k", "l", "p",
                                      "s", "t", "x" };
  const char *msg = (const char *)data, *n, *v, *t;
  size_t pos = 0, last = 0, nl, vl, tl, i, fields = 0;
  json_t *j;
  struct buf out;

  while(mailauth_header_next(msg, size, &pos, &n, &nl, &v, &vl)) {
    if(pos <= last || pos > size)
      abort();
    last = pos;
    inside(msg, size, n, nl);
    inside(msg, size, v, vl);
    for(i = 0; i < sizeof(tags) / sizeof(tags[0]); i++)
      if(!mailauth_tag_find(v, vl, tags[i], &t, &tl))
        inside(v, vl, t, tl);
    if(++fields > size)
      abort();
  }
  /* the whole input as one tag-list too (a DNS key record) */
  for(i = 0; i < sizeof(tags) / sizeof(tags[0]); i++)
    if(!mailauth_tag_find(msg, size, tags[i], &t, &tl))
      inside(msg, size, t, tl);
  j = inbound_auth_record(msg, size, "relay.test.example");
  if(j && !json_is_array(json_object_get(j, "dkim")))
    abort();
  json_decref(j);
  /* only whole fields go: what is left is the input less some of its bytes */
  buf_init(&out, size + 1);
  if(inbound_auth_strip(msg, size, "relay.test.example", &out, &i) || out.len > size ||
     (i == 0) != (out.len == size) || out.len < size - pos ||
     (size > pos && memcmp(out.ptr + out.len - (size - pos), msg + pos, size - pos)))
    abort();
  buf_free(&out);
  return 0;
}
