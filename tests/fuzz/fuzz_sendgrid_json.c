/* Fuzz target for the MIME -> SendGrid JSON mapping (relay/sendgrid_json.c): any message bytes
 * either are refused with a reason or give a request that is JSON with the members SendGrid
 * requires, each envelope recipient once and no forbidden header. */
#include "relay/relay_int.h"
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const rcpts[] = {
  "to@example.net", "TO@example.net", "cc@example.net", "bcc@example.net", "x@y.z",
};

static void check(const char *json, size_t len, size_t nrcpt)
{
  json_t *root = json_loadb(json, len, 0, NULL), *pers, *p, *h;
  size_t i, total = 0;
  const char *k;
  if(!root || !json_is_object(json_object_get(root, "from")) ||
     !json_is_string(json_object_get(json_object_get(root, "from"), "email")))
    abort();
  pers = json_object_get(root, "personalizations");
  if(!json_is_array(pers) || !json_array_size(pers) || json_array_size(pers) > 1000)
    abort();
  json_array_foreach(pers, i, p) {
    const char *kinds[] = { "to", "cc", "bcc" };
    size_t j;
    if(!json_is_array(json_object_get(p, "to")) || !json_array_size(json_object_get(p, "to")))
      abort();
    for(j = 0; j < 3; j++)
      total += json_array_size(json_object_get(p, kinds[j]));
  }
  /* "to@" and "TO@" are one address: each address once */
  if(total != nrcpt - (nrcpt >= 2))
    abort();
  h = json_object_get(root, "headers");
  json_object_foreach(h, k, p) {
    if(!strcasecmp(k, "to") || !strcasecmp(k, "content-type") || !strcasecmp(k, "received") ||
       !json_is_string(p))
      abort();
  }
  if(!json_is_string(json_object_get(json_object_get(root, "custom_args"), "postern_id")))
    abort();
  json_decref(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct sendgrid_msg *sm = NULL;
  char why[300], *json;
  size_t len = 0, nrcpt = size ? 1 + data[0] % 5 : 1;
  int result;

  result = sendgrid_msg_parse((const char *)data, size, "FUZZ1", "sender@example.org", &sm, why,
                              sizeof(why));
  if(result) {
    if(sm || !why[0])
      abort();
    return 0;
  }
  json = sendgrid_msg_request(sm, rcpts, nrcpt, &len, why, sizeof(why));
  if(json) {
    check(json, len, nrcpt);
    free(json);
  }
  else if(!why[0])
    abort();
  sendgrid_msg_free(sm);
  return 0;
}
