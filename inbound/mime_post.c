/* An Inbound Parse post (the whole multipart/form-data body, as inbound/http.c stored it) ->
 * a record. Raw mode carries the message in its "email" field; parsed mode carries SendGrid's
 * reading of it: headers, from, to, cc, subject, text, html (each in the charset the
 * "charsets" field names) and attachment files described by "attachment-info". GMime reads
 * the form itself: form-data is MIME. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <gmime/gmime.h>
#include <jansson.h>
#include "inbound/inbound.h"
#include "inbound/mime_int.h"
#include "tls/tls.h"
#include "lib/buf.h"
#include "lib/limits.h"

static const char *field_name(GMimeObject *o)
{
  return g_mime_object_get_content_disposition_parameter(o, "name");
}

/* the first part called name, NULL when there is none */
static GMimeObject *field(GMimeMultipart *form, const char *name)
{
  int i, n = g_mime_multipart_get_count(form);
  for(i = 0; i < n; i++) {
    GMimeObject *o = g_mime_multipart_get_part(form, i);
    const char *fn = field_name(o);
    if(fn && !strcmp(fn, name) && GMIME_IS_PART(o))
      return o;
  }
  return NULL;
}

/* a field's value in UTF-8, converted from the charset charsets gives for it (-1 nomem) */
static int field_text(GMimeMultipart *form, json_t *charsets, const char *name, struct buf *out,
                      int *present)
{
  GMimeObject *o = field(form, name);
  struct buf raw;
  const char *cs = json_string_value(json_object_get(charsets, name));
  int r;
  *present = o != NULL;
  if(!o)
    return 0;
  buf_init(&raw, SIZE_MAX / 2);
  r = mime_part_bytes(GMIME_PART(o), &raw) ||
      mime_add_text(out, cs, raw.ptr ? raw.ptr : "", raw.len) ? -1 : 0;
  buf_free(&raw);
  return r;
}

/* SendGrid's own DKIM and SPF verdicts ("dkim", "SPF"), kept as SendGrid's; a field past the
 * cap leaves them out rather than the record */
static void authentication_sendgrid(GMimeMultipart *form, json_t *rec)
{
  struct buf dkim, spf;
  int has_dkim, has_spf, r;
  buf_init(&dkim, LIM_WEBHOOK_FIELD);
  buf_init(&spf, LIM_WEBHOOK_FIELD);
  r = field_text(form, NULL, "dkim", &dkim, &has_dkim) || field_text(form, NULL, "SPF", &spf,
                                                                     &has_spf) ? -1 : 0;
  if(!r && (has_dkim || has_spf))
    json_object_set_new(rec, "authentication",
                        inbound_auth_sendgrid(has_dkim ? dkim.ptr : NULL, dkim.len,
                                              has_spf ? spf.ptr : NULL, spf.len));
  buf_free(&dkim);
  buf_free(&spf);
}

/* *hm: the posted header section as GMime read it (the caller unrefs it) */
static int parsed_mode(struct mime_ctx *c, GMimeMultipart *form, json_t *rec, GMimeMessage **hmp)
{
  struct buf v, hdr;
  json_t *charsets = NULL, *info = NULL;
  GMimeMessage *hm = NULL;
  int present, i, n, result = -1;

  buf_init(&v, SIZE_MAX / 2);
  buf_init(&hdr, SIZE_MAX / 2);
  if(field_text(form, NULL, "charsets", &v, &present))
    goto out;
  if(present && !(charsets = json_loadb(v.ptr ? v.ptr : "", v.len, 0, NULL)))
    mime_note(c, "the charsets field is not JSON");
  if(charsets && !json_is_object(charsets)) {
    json_decref(charsets);
    charsets = NULL;
    mime_note(c, "the charsets field is not a JSON object");
  }
  buf_reset(&v);
  if(field_text(form, NULL, "attachment-info", &v, &present))
    goto out;
  if(present && !(info = json_loadb(v.ptr ? v.ptr : "", v.len, 0, NULL)))
    mime_note(c, "the attachment-info field is not JSON");

  /* the header section SendGrid passes on: ids, dates, threading, auto-reply markers */
  if(field_text(form, charsets, "headers", &hdr, &present) || buf_add(&hdr, "\n\n", 2))
    goto out;
  {
    GByteArray *ba = g_byte_array_new();
    g_byte_array_append(ba, (const guint8 *)hdr.ptr, (guint)hdr.len);
    hm = *hmp = mime_gmime_parse(c, ba);
    g_byte_array_unref(ba);
  }
  mime_header_fields(c, hm ? GMIME_OBJECT(hm) : NULL, rec);

  /* the posted fields win over the header section: they are SendGrid's decoding */
  buf_reset(&v);
  if(field_text(form, charsets, "from", &v, &present))
    goto out;
  if(present && v.len) {
    json_t *l = mime_address_list(c, v.ptr);
    json_object_set_new(rec, "from", json_array_size(l) ? json_incref(json_array_get(l, 0))
                                                        : json_null());
    json_decref(l);
  }
  {
    static const char *const lists[] = {"to", "cc"};
    for(i = 0; i < 2; i++) {
      buf_reset(&v);
      if(field_text(form, charsets, lists[i], &v, &present))
        goto out;
      if(present && v.len)
        json_object_set_new(rec, lists[i], mime_address_list(c, v.ptr));
    }
  }
  buf_reset(&v);
  if(field_text(form, charsets, "subject", &v, &present))
    goto out;
  if(present)
    json_object_set_new(rec, "subject", mime_decode_unstructured(c, v.ptr ? v.ptr : ""));
  authentication_sendgrid(form, rec);
  if(field_text(form, charsets, "text", &c->text, &present) ||
     field_text(form, charsets, "html", &c->html, &present))
    goto out;

  /* the files, in the order posted */
  n = g_mime_multipart_get_count(form);
  for(i = 0; i < n && c->natt < LIM_MIME_PARTS; i++) {
    GMimeObject *o = g_mime_multipart_get_part(form, i);
    const char *name = field_name(o), *fn, *type, *cid;
    json_t *ai;
    struct buf data;
    char *ct = NULL;
    size_t len;
    if(!name || !GMIME_IS_PART(o) || !g_mime_object_get_content_disposition_parameter(o, "filename"))
      continue;
    ai = json_object_get(info, name);
    fn = json_string_value(json_object_get(ai, "filename"));
    if(!fn)
      fn = mime_part_filename(o);
    type = json_string_value(json_object_get(ai, "type"));
    if(!type) {
      GMimeContentType *t = g_mime_object_get_content_type(o);
      ct = t ? g_mime_content_type_get_mime_type(t) : NULL;
      type = ct;
    }
    cid = json_string_value(json_object_get(ai, "content-id"));
    buf_init(&data, SIZE_MAX / 2);
    if(mime_part_bytes(GMIME_PART(o), &data)) {
      buf_free(&data);
      g_free(ct);
      goto out;
    }
    {
      char *bytes = buf_steal(&data, &len);
      int r = mime_attach(c, fn, type, cid, cid && *cid ? "inline" : "attachment",
                          (unsigned char *)bytes, len);
      g_free(ct);
      if(r)
        goto out;
    }
  }
  if(c->natt >= LIM_MIME_PARTS)
    mime_note(c, "more than " G_STRINGIFY(LIM_MIME_PARTS) " files: the rest are not listed");
  result = 0;
out:
  json_decref(charsets);
  json_decref(info);
  buf_free(&v);
  buf_free(&hdr);
  return result;
}

/* What a parsed-mode post is known by when SendGrid posts it again (its boundary may change):
 * the SHA-256 of the posted header section as GMime read it, the text and the html. */
static int mime_content_hash(struct mime_ctx *c, GMimeObject *hm, char *out)
{
  struct buf all;
  char *h = hm ? g_mime_object_get_headers(hm, NULL) : NULL;
  int result;
  buf_init(&all, SIZE_MAX / 2);
  result = buf_addstr(&all, h ? h : "") || buf_add(&all, "", 1) ||
           (c->text.len && buf_add(&all, c->text.ptr, c->text.len)) || buf_add(&all, "", 1) ||
           (c->html.len && buf_add(&all, c->html.ptr, c->html.len)) ||
           tls_sha256_hex(all.ptr ? all.ptr : "", all.len, out) ? -1 : 0;
  g_free(h);
  buf_free(&all);
  return result;
}

int inbound_mime_parse_post(const void *body, size_t len, const char *content_type,
                            size_t text_max, struct inbound_mime **out)
{
  struct mime_ctx c;
  GByteArray *ba = NULL;
  GMimeMessage *m = NULL, *hm = NULL;
  GMimeObject *top;
  json_t *rec = NULL;
  const char *why = NULL;
  char content[TLS_SHA256_HEX_LEN + 1] = "";
  size_t cut;
  int result = -1;

  *out = NULL;
  if(mime_ctx_init(&c))
    goto out;
  c.text_max = text_max;
  if(!body)
    body = "";
  cut = mime_prescan(body, len, &why);
  if(why)
    mime_note(&c, why);
  if(cut > G_MAXUINT / 2)
    cut = G_MAXUINT / 2;
  /* the form as a MIME entity: its content type, a blank line, the body */
  ba = g_byte_array_new();
  {
    static const char ct[] = "Content-Type: ";
    const char *t = content_type ? content_type : "";
    size_t tl = strcspn(t, "\r\n");
    g_byte_array_append(ba, (const guint8 *)ct, sizeof(ct) - 1);
    g_byte_array_append(ba, (const guint8 *)t, (guint)(tl < LIM_MIME_HEADER ? tl : LIM_MIME_HEADER));
    g_byte_array_append(ba, (const guint8 *)"\r\n\r\n", 4);
    g_byte_array_append(ba, body, (guint)cut);
  }
  m = mime_gmime_parse(&c, ba);
  top = m ? g_mime_message_get_mime_part(m) : NULL;
  if(top && GMIME_IS_MULTIPART(top)) {
    GMimeObject *email = field(GMIME_MULTIPART(top), "email");
    if(email) {
      /* raw mode: the message itself, exactly as posted */
      struct buf raw;
      buf_init(&raw, SIZE_MAX / 2);
      if(!mime_part_bytes(GMIME_PART(email), &raw))
        result = inbound_mime_parse(raw.ptr ? raw.ptr : "", raw.len, text_max, out);
      if(!result)          /* kept for DKIM and DMARC, checked on it as on an MX message */
        (*out)->email = buf_steal(&raw, &(*out)->emaillen);
      buf_free(&raw);
      goto out;
    }
  }
  rec = json_object();
  if(!rec)
    goto out;
  if(top && GMIME_IS_MULTIPART(top)) {
    if(parsed_mode(&c, GMIME_MULTIPART(top), rec, &hm))
      goto out;
  }
  else {
    mime_note(&c, "the post is not multipart/form-data");
    mime_header_fields(&c, NULL, rec);
  }
  if(mime_content_hash(&c, hm ? GMIME_OBJECT(hm) : NULL, content))
    goto out;
  result = mime_finish(&c, rec, hm ? GMIME_OBJECT(hm) : NULL, out);
  if(!result)
    memcpy((*out)->content_sha256, content, sizeof(content));
out:
  json_decref(rec);
  if(hm)
    g_object_unref(hm);
  if(m)
    g_object_unref(m);
  if(ba)
    g_byte_array_unref(ba);
  mime_ctx_free(&c);
  return result;
}
