/* Fuzz target for the webhook parsers of form data: Twilio's urlencoded body (and the signature
 * over it) and the Inbound Parse envelope JSON. Parameters stay inside their block, and a
 * recipient list never smuggles a line break of its own. */
#include "inbound/inbound.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *p = (const char *)data;
  struct inbound_param *params = NULL;
  char *hold = NULL, *from = NULL, *to = NULL, sig[64];
  size_t n = 0, i;
  if(!inbound_form_parse(p, size, 50, &params, &n, &hold)) {
    if(n > 50)
      abort();
    for(i = 0; i < n; i++)
      if(params[i].namelen > size || params[i].valuelen > size ||
         params[i].name[params[i].namelen] || params[i].value[params[i].valuelen])
        abort();
    if(inbound_twilio_signature("token", 5, "https://x.test/sms", params, n, sig, sizeof(sig)) ||
       strlen(sig) != 28)
      abort();
    free(params);
    free(hold);
  }
  if(!inbound_parse_envelope(p, size, &from, &to)) {
    if(!to || (from && strpbrk(from, "\r\n")) || strchr(to, '\r'))
      abort();
    free(from);
    free(to);
  }
  return 0;
}
