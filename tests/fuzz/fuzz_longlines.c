/* Fuzz target for the long-line re-encoder (relay/longlines.c): a message without a line over
 * 998 octets is left alone; any other either stays as it is (not MIME GMime can rewrite) or
 * comes back as a message whose every line ends in CRLF. */
#include "relay/relay_int.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int longest_line(const char *p, size_t n)
{
  size_t i, start = 0, best = 0, line;
  for(i = 0; i <= n; i++)
    if(i == n || p[i] == '\n') {
      line = i - start;
      if(line && i < n && p[i - 1] == '\r')
        line--;
      if(line > best)
        best = line;
      start = i + 1;
    }
  return best > 998;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *out = NULL;
  size_t outlen = 0, i;
  if(longlines_encode((const char *)data, size, &out, &outlen))
    return 0;                      /* out of memory */
  if(out && !longest_line((const char *)data, size))
    abort();                       /* a message that fits was changed */
  for(i = 0; out && i < outlen; i++)
    if(out[i] == '\n' && (i == 0 || out[i - 1] != '\r'))
      abort();                     /* a bare LF on the wire */
  free(out);
  return 0;
}
