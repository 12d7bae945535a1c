/* Fuzz target for the message content scanner (global/smtpgram.c) that DATA and every BDAT
 * chunk go through: the same bytes fed whole and cut at points the input chooses must give
 * the same stored content, the same verdict and the same end, and what is stored never holds a
 * bare CR, a bare LF or a NUL. Input: a mode byte (bit 0: DATA), a cut-seed byte, content. */
#include "global/smtpgram.h"
#include "lib/buf.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t scan_in_pieces(struct smtp_content *sc, const char *p, size_t n, unsigned seed,
                             struct buf *out)
{
  size_t at = 0;
  while(at < n && !sc->ended) {
    size_t piece = 1 + (seed % 7 == 0 ? 0 : seed % 13);
    seed = seed * 1103515245u + 12345u;
    if(piece > n - at)
      piece = n - at;
    at += smtp_content_scan(sc, p + at, piece, out);
  }
  return at;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  struct smtp_content whole, cut;
  struct buf a, b;
  size_t used_a, used_b, i;
  int dot;
  unsigned seed;
  const char *p;
  if(size < 2)
    return 0;
  dot = data[0] & 1;
  seed = data[1];
  p = (const char *)data + 2;
  size -= 2;
  buf_init(&a, 1u << 20);
  buf_init(&b, 1u << 20);
  /* small caps so that the line and size verdicts are reached too */
  smtp_content_init(&whole, dot, 64 + (data[0] >> 1), 4096);
  smtp_content_init(&cut, dot, 64 + (data[0] >> 1), 4096);
  used_a = smtp_content_scan(&whole, p, size, &a);
  used_b = scan_in_pieces(&cut, p, size, seed, &b);
  if(!dot) {
    smtp_content_finish(&whole);
    smtp_content_finish(&cut);
  }
  if(used_a != used_b || whole.ended != cut.ended || whole.bad != cut.bad ||
     whole.size != cut.size)
    abort();
  if(!whole.bad && (a.len != b.len || (a.len && memcmp(a.ptr, b.ptr, a.len))))
    abort();
  if(used_a > size || (!dot && (used_a != size || whole.ended)))
    abort();
  /* DATA ends right after CR LF "." CR LF (or a first line "." CR LF), nowhere else */
  if(dot && whole.ended) {
    if(used_a < 3 || memcmp(p + used_a - 3, ".\r\n", 3))
      abort();
    if(used_a > 3 && (used_a < 5 || memcmp(p + used_a - 5, "\r\n", 2)))
      abort();
  }
  if(!whole.bad) {
    if(a.len != whole.size)
      abort();
    for(i = 0; i < a.len; i++) {
      if(a.ptr[i] == '\0')
        abort();
      if(a.ptr[i] == '\r' && (i + 1 == a.len || a.ptr[i + 1] != '\n'))
        abort();
      if(a.ptr[i] == '\n' && (i == 0 || a.ptr[i - 1] != '\r'))
        abort();
    }
  }
  buf_free(&a);
  buf_free(&b);
  return 0;
}
