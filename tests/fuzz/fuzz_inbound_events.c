/* Fuzz target for the SendGrid Event Webhook body (inbound_events_parse): whatever the bytes,
 * a parsed batch has a key and a payload for every event, and nothing leaks. */
#include "inbound/inbound.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct inbound_events *e = NULL;
  const struct store_event *ev = NULL;
  const char *why = NULL;
  size_t n = 0, i;
  if(!inbound_events_parse((const char *)data, size, 1000, &e, &ev, &n, &why)) {
    for(i = 0; i < n; i++)
      if(!ev[i].key || !ev[i].key[0] || !ev[i].payload ||
         strlen(ev[i].payload) != ev[i].payloadlen)
        abort();
    inbound_events_free(e);
  }
  else if(!why)
    abort();
  return 0;
}
