/* MIME -> correspondence record throughput (BENCHMARKS.md): records per second and MB/s
 * of inbound_mime_parse over generated messages, and the process's peak memory (VmHWM).
 *   bench_mime small [N]   N realistic ~10 KB replies (default 20000): headers of a real
 *                          delivery path, text and HTML in quoted-printable, quoted history
 *   bench_mime large [N]   N ~10 MB messages (default 20): text, HTML, two base64 attachments
 *   bench_mime text [N]    N ~10 MB messages (default 20) that are all text: a 5 MB text/plain
 *                          and a 5 MB text/html of quoted history
 * A third argument is record_text_max in bytes (default 1 MiB; 0 keeps all text). Each parse is
 * followed by what the record builder does with the result (the JSON read back and written
 * again), so VmHWM is the builder's peak for one such message.
 * Run each mode in its own process so VmHWM is that mode's. Not part of the test suite; the
 * figures go to BENCHMARKS.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>
#include "inbound/inbound.h"
#include "lib/buf.h"

static double now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long vm_kib(const char *field)
{
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long v = -1;
  size_t n = strlen(field);
  while(f && fgets(line, sizeof(line), f))
    if(!strncmp(line, field, n))
      v = strtol(line + n + 1, NULL, 10);
  if(f)
    fclose(f);
  return v;
}

static unsigned long long rnd = 88172645463325252ull;
static unsigned rand32(void)
{
  rnd ^= rnd << 13;
  rnd ^= rnd >> 7;
  rnd ^= rnd << 17;
  return (unsigned)rnd;
}

static const char *words[] = {"appointment", "Tuesday", "clinic", "thank", "you", "the", "and",
                              "please", "confirm", "parking", "results", "form", "signed",
                              "caf\xc3\xa9", "r\xc3\xa9sum\xc3\xa9", "next", "week", "at", "9:00"};

static void add_words(struct buf *b, size_t n, const char *prefix)
{
  size_t i, col = 0;
  for(i = 0; i < n; i++) {
    const char *w = words[rand32() % (sizeof(words) / sizeof(words[0]))];
    if(col == 0)
      buf_addstr(b, prefix);
    buf_addstr(b, w);
    col += strlen(w) + 1;
    if(col > 60) {
      buf_addstr(b, "\r\n");
      col = 0;
    }
    else
      buf_addstr(b, " ");
  }
  buf_addstr(b, "\r\n");
}

static void base64_block(struct buf *b, size_t bytes)
{
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i, line = 0;
  for(i = 0; i < bytes / 3 * 4; i++) {
    char ch = tab[rand32() & 63];
    buf_add(b, &ch, 1);
    if(++line == 76) {
      buf_addstr(b, "\r\n");
      line = 0;
    }
  }
  buf_addstr(b, "\r\n");
}

static void message(struct buf *b, size_t i, int large)
{
  buf_addf(b, "Return-Path: <pat%zu@example.net>\r\n"
              "Received: from mail-wr1-f41.google.example (mail-wr1-f41.google.example [209.85.221.41])\r\n"
              "\tby mx.reply.clinic.example (Postern) with ESMTPS id 4F2A91C3\r\n"
              "\tfor <reply+t0k3n%zu@reply.clinic.example>; Tue, 3 Mar 2026 10:02:35 +0100\r\n"
              "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=20230601;\r\n"
              " h=to:subject:message-id:date:from:in-reply-to:references:mime-version;\r\n"
              " bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
              " b=Xk3mJq0aV1bN2cD3eF4gH5iJ6kL7mN8oP9qR0sT1uV2wX3yZ4aB5cD6eF7gH8iJ9kL0mN1oP2qR3sT4uV5wX6\r\n"
              "Message-ID: <CAGm%zu@mail.example.net>\r\n"
              "Date: Tue, 03 Mar 2026 10:02:33 +0100\r\n"
              "From: =?UTF-8?Q?Pat_Volunt=C3=A9er?= <pat%zu@example.net>\r\n"
              "To: Clinic Reminders <reply+t0k3n%zu@reply.clinic.example>\r\n"
              "In-Reply-To: <appt-%zu@relay.clinic.example>\r\n"
              "References: <appt-%zu@relay.clinic.example>\r\n"
              "Subject: Re: Your appointment on 10 March\r\n"
              "MIME-Version: 1.0\r\n"
              "Content-Type: multipart/%s; boundary=\"000000000000a1b2c3%zu\"\r\n\r\n",
           i, i, i, i, i, i, i, large ? "mixed" : "alternative", i);
  if(large)
    buf_addf(b, "--000000000000a1b2c3%zu\r\nContent-Type: multipart/alternative; boundary=\"alt%zu\"\r\n\r\n--alt%zu\r\n",
             i, i, i);
  else
    buf_addf(b, "--000000000000a1b2c3%zu\r\n", i);
  buf_addstr(b, "Content-Type: text/plain; charset=\"UTF-8\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
  add_words(b, 120, "");
  buf_addstr(b, "\r\nOn Mon, 2 Mar 2026 at 16:00, Clinic Reminders <reminders@clinic.example> wrote:\r\n\r\n");
  add_words(b, large == 2 ? 700000 : 520, "> ");
  buf_addf(b, "--%s%zu\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n<div dir=3D\"ltr\">",
           large ? "alt" : "000000000000a1b2c3", i);
  add_words(b, 120, "<br>");
  buf_addstr(b, "</div><br><div class=3D\"gmail_quote\"><div class=3D\"gmail_attr\">On Mon, 2 Mar 2026 "
                "at 16:00, Clinic Reminders wrote:<br></div><blockquote class=3D\"gmail_quote\">\r\n");
  add_words(b, large == 2 ? 700000 : 520, "<br>");
  buf_addstr(b, "</blockquote></div>\r\n");
  if(large == 2)
    buf_addf(b, "--alt%zu--\r\n\r\n", i);
  if(large == 1) {
    buf_addf(b, "--alt%zu--\r\n\r\n--000000000000a1b2c3%zu\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
                "Content-Disposition: attachment; filename=\"scan.pdf\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n", i, i);
    base64_block(b, 6 * 1024 * 1024);
    buf_addf(b, "--000000000000a1b2c3%zu\r\nContent-Type: image/jpeg; name=\"photo.jpg\"\r\n"
                "Content-Disposition: attachment; filename=\"photo.jpg\"\r\nContent-ID: <photo%zu>\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n", i, i);
    base64_block(b, 3 * 1024 * 1024 / 2);
  }
  buf_addf(b, "--000000000000a1b2c3%zu--\r\n", i);
}

int main(int argc, char **argv)
{
  int large = argc < 2 ? 0 : !strcmp(argv[1], "large") ? 1 : !strcmp(argv[1], "text") ? 2 : 0;
  size_t n = argc > 2 ? strtoul(argv[2], NULL, 10) : (large ? 20 : 20000), i, distinct, bytes = 0;
  size_t text_max = argc > 3 ? strtoul(argv[3], NULL, 10) : 1024 * 1024;
  struct buf *msgs;
  double t0, secs;
  long base;
  if(argc < 2 || (!large && strcmp(argv[1], "small")) || !n) {
    fprintf(stderr, "usage: %s small|large|text [N [RECORD_TEXT_MAX]]\n", argv[0]);
    return 2;
  }
  /* a handful of distinct messages, parsed round-robin (the generator is not what is timed) */
  distinct = large ? 2 : 64;
  msgs = calloc(distinct, sizeof(*msgs));
  for(i = 0; i < distinct; i++) {
    buf_init(&msgs[i], 64u * 1024u * 1024u);
    message(&msgs[i], i, large);
  }
  base = vm_kib("VmHWM:");
  {
    /* one warm-up parse: GMime's start-up is not part of the figures */
    struct inbound_mime *m;
    if(inbound_mime_parse(msgs[0].ptr, msgs[0].len, text_max, &m))
      return 1;
    inbound_mime_free(m);
  }
  t0 = now();
  for(i = 0; i < n; i++) {
    struct inbound_mime *m;
    const struct buf *b = &msgs[i % distinct];
    json_t *rec;
    char *again;
    if(inbound_mime_parse(b->ptr, b->len, text_max, &m)) {
      fprintf(stderr, "out of memory\n");
      return 1;
    }
    /* the builder reads the fields back and writes the record (records.c record_make) */
    rec = json_loads(m->json, 0, NULL);
    again = rec ? json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(rec);
    free(again);
    if(!i && strstr(m->json, "\"parse_error\":null") == NULL)
      fprintf(stderr, "warning: %s\n", m->json);
    bytes += b->len;
    inbound_mime_free(m);
  }
  secs = now() - t0;
  printf("%s: %zu messages of %.1f KB average in %.2f s: %.0f records/s, %.1f MB/s; "
         "VmHWM %ld KiB (%ld KiB before parsing, inputs held)\n",
         large == 2 ? "text" : large ? "large" : "small", n, (double)bytes / (double)n / 1024.0, secs,
         (double)n / secs, (double)bytes / secs / 1e6, vm_kib("VmHWM:"), base);
  for(i = 0; i < distinct; i++)
    buf_free(&msgs[i]);
  free(msgs);
  return 0;
}
