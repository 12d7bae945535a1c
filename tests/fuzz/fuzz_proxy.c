/* Fuzz target for the PROXY protocol header parser (global/proxy.c): any bytes, whole and in
 * every prefix; what callers rely on is checked: a header that parses is never longer than
 * the input or the caps, a prefix of a valid header asks for more (never a different answer),
 * and the addresses come with a known family. */
#include "global/proxy.h"
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct proxy_info pi, pj;
  size_t used = 0, u2 = 0, k;
  enum proxy_result r = proxy_parse(data, size, &pi, &used);
  if(r == PROXY_OK) {
    if(!used || used > size || used > PROXY_V2_MAX)
      abort();
    if(!pi.local && pi.family != AF_INET && pi.family != AF_INET6)
      abort();
    if(pi.src_port > 65535 || pi.dst_port > 65535)
      abort();
    /* every shorter prefix of a complete header is an incomplete one */
    for(k = 0; k < used; k++)
      if(proxy_parse(data, k, &pj, &u2) != PROXY_MORE)
        abort();
    /* what follows the header does not change it */
    if(proxy_parse(data, used, &pj, &u2) != PROXY_OK || u2 != used)
      abort();
  }
  else if(r == PROXY_MORE && size > PROXY_V2_MAX)
    abort();
  return 0;
}
