/* Lines over 998 octets on the way out. The listener keeps what legacy applications write (an
 * HTML template on one line, a CSV body), but RFC 5321 4.5.3.1.6 caps a line at 1,000 octets
 * with its CRLF and strict upstreams refuse more (Postfix's smtpd answers 500 5.6.0 at the end
 * of DATA). Before such a message goes to an SMTP upstream, each MIME part holding a longer
 * line is re-encoded as quoted-printable — what a reader sees is unchanged — and a header field
 * with a longer line is folded. Messages without such a line go out byte for byte. */
#include "relay/relay_int.h"
#include "lib/limits.h"
#include "lib/vendor.h"
#include <gmime/gmime.h>
#include <stdlib.h>
#include <string.h>

#define LONGLINE_MAX (LIM_SMTP_TEXT_LINE - 2)      /* octets of a line without its CRLF */

/* Does p[0..n) hold a line longer than LONGLINE_MAX octets (its CR LF not counted)? */
static int has_long_line(const char *p, size_t n)
{
  const char *end, *nl;
  size_t line;
  if(!p || !n)
    return 0;
  end = p + n;
  while(p < end) {
    nl = memchr(p, '\n', (size_t)(end - p));
    line = (size_t)((nl ? nl : end) - p);
    if(line && p[line - 1] == '\r')
      line--;
    if(line > LONGLINE_MAX)
      return 1;
    if(!nl)
      break;
    p = nl + 1;
  }
  return 0;
}

/* The part's content as it is encoded now (what goes on the wire) has a long line. */
static int part_has_long_line(GMimePart *part)
{
  GMimeDataWrapper *dw = g_mime_part_get_content(part);
  GMimeStream *raw, *mem;
  GByteArray *ba;
  int found = 0;
  if(!dw || !(raw = g_mime_data_wrapper_get_stream(dw)))
    return 0;
  mem = g_mime_stream_mem_new();
  if(!mem)
    return -1;
  g_mime_stream_reset(raw);
  if(g_mime_stream_write_to_stream(raw, mem) < 0)
    found = -1;
  else if((ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem))))
    found = has_long_line((const char *)ba->data, ba->len);
  g_mime_stream_reset(raw);
  g_object_unref(mem);
  return found;
}

/* A part already encoded (base64 or quoted-printable) with a long line: what a script writes
 * with base64_encode() and no line breaks. Its content is replaced by the decoded octets, so
 * GMime encodes them again, in the same encoding, in lines of 76. */
static int part_reencode(GMimePart *part)
{
  GMimeDataWrapper *dw = g_mime_part_get_content(part), *plain;
  GMimeStream *mem = g_mime_stream_mem_new();
  int result = -1;
  if(!mem)
    return -1;
  if(g_mime_data_wrapper_write_to_stream(dw, mem) < 0)
    goto out;
  g_mime_stream_reset(mem);
  plain = g_mime_data_wrapper_new_with_stream(mem, GMIME_CONTENT_ENCODING_DEFAULT);
  if(!plain)
    goto out;
  g_mime_part_set_content(part, plain);
  g_object_unref(plain);
  result = 0;
out:
  g_object_unref(mem);
  return result;
}

/* The text around a multipart's parts is for readers without MIME, and ignored by the rest:
 * a long line there goes, not the message. */
static void multipart_trim(GMimeObject *obj)
{
  GMimeMultipart *mp;
  const char *pro, *epi;
  if(!GMIME_IS_MULTIPART(obj))
    return;
  mp = GMIME_MULTIPART(obj);
  pro = g_mime_multipart_get_prologue(mp);
  epi = g_mime_multipart_get_epilogue(mp);
  if(pro && has_long_line(pro, strlen(pro)))
    g_mime_multipart_set_prologue(mp, NULL);
  if(epi && has_long_line(epi, strlen(epi)))
    g_mime_multipart_set_epilogue(mp, NULL);
}

/* Folds the header fields of obj that have a long line: set again from their value, which
 * GMime's formatter writes folded (and, where one word is longer than a line, as RFC 2047
 * encoded words it can split). */
static void headers_fold(GMimeObject *obj)
{
  GMimeHeaderList *hl = g_mime_object_get_header_list(obj);
  int i, n = hl ? g_mime_header_list_get_count(hl) : 0;
  for(i = 0; i < n; i++) {
    GMimeHeader *h = g_mime_header_list_get_header_at(hl, i);
    const char *raw = g_mime_header_get_raw_value(h), *name = g_mime_header_get_name(h);
    char *value;
    /* "Name:" and the first line of the raw value share a line */
    if(!raw || !name || (strlen(name) + 1 + strcspn(raw, "\n") <= LONGLINE_MAX &&
                         !has_long_line(raw, strlen(raw))))
      continue;
    value = g_strdup(g_mime_header_get_value(h));
    if(value)
      g_mime_header_set_value(h, NULL, value, "utf-8");
    g_free(value);
  }
}

int longlines_encode(const char *body, size_t len, char **out, size_t *outlen)
{
  GMimeStream *src = NULL, *filtered = NULL, *mem = NULL;
  GMimeFilter *dos2unix = NULL;
  GMimeParser *parser = NULL;
  GMimeMessage *msg = NULL;
  GMimePartIter *it = NULL;
  GMimeFormatOptions *fmt = NULL;
  GByteArray *ba;
  guint i;
  int result = -1, changed = 0, found;

  *out = NULL;
  *outlen = 0;
  if(!has_long_line(body, len))
    return 0;
  vendor_gmime_start();
  /* parsed in LF form, so quoted-printable sees line ends and not CRs to encode; written
   * back with CRLF */
  src = g_mime_stream_mem_new_with_buffer(body, len);
  dos2unix = g_mime_filter_dos2unix_new(FALSE);
  filtered = src && dos2unix ? g_mime_stream_filter_new(src) : NULL;
  if(!filtered)
    goto out;
  g_mime_stream_filter_add(GMIME_STREAM_FILTER(filtered), dos2unix);
  parser = g_mime_parser_new_with_stream(filtered);
  msg = parser ? g_mime_parser_construct_message(parser, NULL) : NULL;
  if(!msg) {
    result = 0;                  /* not MIME we can rewrite: it goes as it is */
    goto out;
  }
  headers_fold(GMIME_OBJECT(msg));
  if(g_mime_message_get_mime_part(msg)) {
    multipart_trim(g_mime_message_get_mime_part(msg));    /* the walk starts below it */
    it = g_mime_part_iter_new(GMIME_OBJECT(msg));
    do {
      GMimeObject *cur = it ? g_mime_part_iter_get_current(it) : NULL;
      GMimeContentEncoding enc;
      if(!cur)
        break;
      headers_fold(cur);
      multipart_trim(cur);
      if(!GMIME_IS_PART(cur))
        continue;
      found = part_has_long_line(GMIME_PART(cur));
      if(found < 0)
        goto out;
      if(!found)
        continue;
      enc = g_mime_part_get_content_encoding(GMIME_PART(cur));
      if(enc == GMIME_CONTENT_ENCODING_DEFAULT || enc == GMIME_CONTENT_ENCODING_7BIT ||
         enc == GMIME_CONTENT_ENCODING_8BIT || enc == GMIME_CONTENT_ENCODING_BINARY)
        g_mime_part_set_content_encoding(GMIME_PART(cur), GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
      else if(part_reencode(GMIME_PART(cur)))
        goto out;
      changed = 1;
    } while(g_mime_part_iter_next(it));
  }
  /* a Content-Transfer-Encoding means something only under MIME-Version */
  if(changed && !g_mime_object_get_header(GMIME_OBJECT(msg), "MIME-Version"))
    g_mime_object_set_header(GMIME_OBJECT(msg), "MIME-Version", "1.0", NULL);
  fmt = g_mime_format_options_new();
  mem = g_mime_stream_mem_new();
  if(!fmt || !mem)
    goto out;
  g_mime_format_options_set_newline_format(fmt, GMIME_NEWLINE_FORMAT_DOS);
  if(g_mime_object_write_to_stream(GMIME_OBJECT(msg), fmt, mem) < 0)
    goto out;
  ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(mem));
  if(!ba || !ba->len) {
    result = 0;
    goto out;
  }
  /* every line end CRLF, as the store holds them: GMime writes some raw text (a multipart
   * it could not split, say) without its newline filter */
  *out = malloc(2 * (size_t)ba->len);
  if(!*out)
    goto out;
  for(i = 0; i < ba->len; i++) {
    if(ba->data[i] == '\n' && (i == 0 || ba->data[i - 1] != '\r'))
      (*out)[(*outlen)++] = '\r';
    (*out)[(*outlen)++] = (char)ba->data[i];
  }
  result = 0;
out:
  if(it)
    g_mime_part_iter_free(it);
  if(fmt)
    g_mime_format_options_free(fmt);
  if(mem)
    g_object_unref(mem);
  if(msg)
    g_object_unref(msg);
  if(parser)
    g_object_unref(parser);
  if(filtered)
    g_object_unref(filtered);
  if(dos2unix)
    g_object_unref(dos2unix);
  if(src)
    g_object_unref(src);
  return result;
}
