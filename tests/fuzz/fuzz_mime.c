/* Fuzz target for MIME -> correspondence record: any bytes give a record (a JSON object that
 * jansson reads back, attachments whose sizes and hashes agree with their bytes), as a message
 * and as an Inbound Parse post; and reply_text of any text or HTML is a C string. */
#include "inbound/inbound.h"
#include "tls/tls.h"
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const struct inbound_mime *m)
{
  json_t *j = json_loads(m->json, 0, NULL), *atts;
  size_t i;
  if(!j || !json_is_object(j))
    abort();
  atts = json_object_get(j, "attachments");
  if(json_array_size(atts) != m->natt)
    abort();
  for(i = 0; i < m->natt; i++) {
    char sha[TLS_SHA256_HEX_LEN + 1];
    if(tls_sha256_hex(m->att[i].data ? (const void *)m->att[i].data : "", m->att[i].size, sha) ||
       strcmp(sha, m->att[i].sha256) ||
       (size_t)json_integer_value(json_object_get(json_array_get(atts, i), "size")) != m->att[i].size)
      abort();
  }
  json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct inbound_mime *m = NULL;
  char *r;
  /* a text cap below the input's size now and then: the cut lands anywhere in a character */
  if(!inbound_mime_parse(data, size, size > 64 && (data[0] & 1) ? size / 3 : 0, &m)) {
    check(m);
    inbound_mime_free(m);
  }
  m = NULL;
  if(!inbound_mime_parse_post(data, size, "multipart/form-data; boundary=xYzZY", 0, &m)) {
    check(m);
    inbound_mime_free(m);
  }
  r = inbound_reply_text((const char *)data, size, NULL, 0);
  free(r);
  r = inbound_reply_text("", 0, (const char *)data, size);
  free(r);
  return 0;
}
