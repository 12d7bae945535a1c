/* A stored message taken apart for the message page: its subject and addresses decoded, the
 * text and HTML bodies converted to UTF-8 (GMime's text parts do the charset work), and its
 * leaf parts for downloads. GMime is set up once per process through lib/vendor.c. */
#include "console/console_int.h"
#include "lib/vendor.h"
#include <gmime/gmime.h>
#include <stdlib.h>
#include <string.h>

static char *dup_g(const char *s)
{
  return s ? str_dup_n(s, strlen(s)) : NULL;
}

static GMimeMessage *parse(const char *msg, size_t len)
{
  GMimeStream *s;
  GMimeParser *p;
  GMimeMessage *m;
  vendor_gmime_start();
  s = g_mime_stream_mem_new_with_buffer(msg, len);
  if(!s)
    return NULL;
  p = g_mime_parser_new_with_stream(s);
  g_object_unref(s);
  if(!p)
    return NULL;
  m = g_mime_parser_construct_message(p, NULL);
  g_object_unref(p);
  return m;
}

struct walk {
  struct mail_view *v;
  size_t idx, want;              /* mail_part_bytes: the part wanted */
  GMimePart *found;
  int oom;
};

static void leaf(GMimeObject *parent, GMimeObject *part, gpointer data)
{
  struct walk *w = data;
  struct mail_view *v = w->v;
  GMimeContentType *ct;
  GMimeContentDisposition *cd;
  const char *fn;
  int att;
  (void)parent;
  if(!GMIME_IS_PART(part))
    return;
  if(!v) {
    if(w->idx++ == w->want)
      w->found = GMIME_PART(part);
    return;
  }
  ct = g_mime_object_get_content_type(part);
  cd = g_mime_object_get_content_disposition(part);
  fn = g_mime_part_get_filename(GMIME_PART(part));
  att = (cd && g_mime_content_disposition_is_attachment(cd)) || fn;
  if(!att && GMIME_IS_TEXT_PART(part) && ct && g_mime_content_type_is_type(ct, "text", "*")) {
    char **slot = g_mime_content_type_is_type(ct, "text", "html") ? &v->html :
                  g_mime_content_type_is_type(ct, "text", "plain") ? &v->text : NULL;
    if(slot && !*slot) {
      char *t = g_mime_text_part_get_text(GMIME_TEXT_PART(part));
      *slot = dup_g(t ? t : "");
      g_free(t);
      if(!*slot)
        w->oom = 1;
    }
  }
  {
    struct mail_part *np = realloc(v->parts, (v->nparts + 1) * sizeof(*np));
    char *type = ct ? g_mime_content_type_get_mime_type(ct) : NULL;
    if(!np) {
      g_free(type);
      w->oom = 1;
      return;
    }
    v->parts = np;
    np[v->nparts].type = dup_g(type ? type : "application/octet-stream");
    np[v->nparts].filename = dup_g(fn);
    np[v->nparts].attachment = att;
    v->nparts++;
    g_free(type);
  }
}

static char *addresses(GMimeMessage *m, GMimeAddressType t)
{
  InternetAddressList *l = g_mime_message_get_addresses(m, t);
  char *s, *out;
  if(!l || internet_address_list_length(l) == 0)
    return NULL;
  s = internet_address_list_to_string(l, NULL, FALSE);
  out = dup_g(s);
  g_free(s);
  return out;
}

int mail_view_parse(const char *msg, size_t len, struct mail_view *out)
{
  GMimeMessage *m;
  struct walk w = { 0 };
  GDateTime *d;
  memset(out, 0, sizeof(*out));
  if(!(m = parse(msg, len)))
    return -1;
  w.v = out;
  out->subject = dup_g(g_mime_message_get_subject(m));
  out->from = addresses(m, GMIME_ADDRESS_TYPE_FROM);
  out->to = addresses(m, GMIME_ADDRESS_TYPE_TO);
  if((d = g_mime_message_get_date(m)) != NULL) {
    char *s = g_date_time_format(d, "%Y-%m-%d %H:%M:%S %z");
    out->date = dup_g(s);
    g_free(s);
  }
  g_mime_message_foreach(m, leaf, &w);
  g_object_unref(m);
  if(w.oom) {
    mail_view_free(out);
    return -1;
  }
  return 0;
}

void mail_view_free(struct mail_view *v)
{
  size_t i;
  free(v->subject);
  free(v->from);
  free(v->to);
  free(v->date);
  free(v->text);
  free(v->html);
  for(i = 0; i < v->nparts; i++) {
    free(v->parts[i].type);
    free(v->parts[i].filename);
  }
  free(v->parts);
  memset(v, 0, sizeof(*v));
}

int mail_part_bytes(const char *msg, size_t len, size_t idx, struct buf *out)
{
  GMimeMessage *m = parse(msg, len);
  struct walk w = { 0 };
  GMimeDataWrapper *dw;
  GMimeStream *s;
  GByteArray *ba;
  int result = -1;
  if(!m)
    return -1;
  w.want = idx;
  g_mime_message_foreach(m, leaf, &w);
  if(w.found && (dw = g_mime_part_get_content(w.found)) != NULL &&
     (s = g_mime_stream_mem_new()) != NULL) {
    if(g_mime_data_wrapper_write_to_stream(dw, s) >= 0) {
      ba = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(s));
      result = buf_add(out, ba->data, ba->len) ? -1 : 0;
    }
    g_object_unref(s);
  }
  g_object_unref(m);
  return result;
}

size_t mail_header_len(const char *msg, size_t len)
{
  size_t i;
  for(i = 0; i < len; i++)
    if(msg[i] == '\n' && (i + 1 < len && (msg[i + 1] == '\n' ||
       (msg[i + 1] == '\r' && i + 2 < len && msg[i + 2] == '\n'))))
      return i + 1 + (msg[i + 1] == '\r' ? 2 : 1);
  return len;
}

char *mail_subject(const char *msg, size_t len)
{
  size_t hl = mail_header_len(msg, len);
  GMimeMessage *m = parse(msg, hl);
  char *out = NULL;
  if(m) {
    out = dup_g(g_mime_message_get_subject(m));
    g_object_unref(m);
  }
  return out;
}
