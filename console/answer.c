/* The headers every console answer carries, and its short answers. */
#include "console/pages.h"
#include <stdio.h>
#include <string.h>
#include <time.h>

/* every page: nothing from elsewhere, no inline script, framed by nobody */
#define CSP_PAGE "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
  "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; " \
  "frame-ancestors 'none'"
/* a captured message's HTML, inside <iframe sandbox>: no script, nothing fetched from anywhere
 * (remote images stay blocked), inline styles allowed since mail is written with them */
#define CSP_MAIL "default-src 'none'; img-src data:; style-src 'unsafe-inline'; " \
  "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"

/* the same once the reader has asked for the remote images: images from anywhere, still
 * nothing else (no script, no style sheet, no frame, no font, no fetch) */
#define CSP_MAIL_IMAGES "default-src 'none'; img-src data: http: https:; " \
  "style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; " \
  "sandbox"

int console_wants_images(const struct web_request *rq)
{
  const char *v = rq->value(rq->ctx, WEB_QUERY, "images");
  return v && !strcmp(v, "1");
}

void console_security_headers(struct web_response *out, enum console_frame mail_frame)
{
  web_header(out, "Content-Security-Policy", mail_frame == FRAME_MAIL_IMAGES ? CSP_MAIL_IMAGES :
             mail_frame == FRAME_MAIL ? CSP_MAIL : CSP_PAGE);
  web_header(out, "X-Frame-Options", mail_frame ? "SAMEORIGIN" : "DENY");
  web_header(out, "X-Content-Type-Options", "nosniff");
  web_header(out, "Referrer-Policy", "no-referrer");
  web_header(out, "Cache-Control", "no-store");
  if(mail_frame)    /* not even a DNS look-up for the mail's links */
    web_header(out, "X-DNS-Prefetch-Control", "off");
}

/* A download's Content-Disposition (RFC 6266): the part's own file name, cut to its last path
 * component, twice: as a quoted ASCII fallback (printable ASCII but " and \, each other
 * character one _) and as filename* (RFC 5987: UTF-8, every byte outside attr-char
 * percent-encoded), so no byte of the mail's name reaches the header unencoded. Without a
 * usable name: part-IDX. */
int console_disposition(struct web_response *out, const char *filename, long idx)
{
  static const char hex[] = "0123456789ABCDEF";
  char v[64 + 4 * LIM_DOWNLOAD_NAME], fallback[32];
  const char *base = filename, *p;
  size_t n, i, o = 0;
  if(base)
    for(p = filename; *p; p++)
      if(*p == '/' || *p == '\\')
        base = p + 1;
  n = base ? strlen(base) : 0;
  if(n > LIM_DOWNLOAD_NAME) {
    n = LIM_DOWNLOAD_NAME;
    while(n && ((unsigned char)base[n] & 0xC0) == 0x80)    /* not inside a UTF-8 character */
      n--;
  }
  for(i = 0; i < n && ((unsigned char)base[i] <= ' ' || base[i] == 0x7f || base[i] == '.'); i++)
    ;
  base += i;                   /* no hidden file, no name that starts blank */
  n -= i;
  if(!n) {                     /* nothing but dots, spaces and controls: no name */
    snprintf(fallback, sizeof(fallback), "part-%ld", idx);
    base = fallback;
    n = strlen(base);
  }
  o = str_copy(v, sizeof(v), "attachment; filename=\"");
  for(i = 0; i < n; i++) {
    unsigned char c = (unsigned char)base[i];
    if(c < 0x20 || c == 0x7f || (c & 0xC0) == 0x80)   /* controls; a character is one _ */
      continue;
    v[o++] = c >= 0x80 || c == '"' || c == '\\' ? '_' : (char)c;
  }
  o += str_copy(v + o, sizeof(v) - o, "\"; filename*=UTF-8''");
  for(i = 0; i < n; i++) {
    unsigned char c = (unsigned char)base[i];
    if(c < 0x20 || c == 0x7f)
      continue;
    if((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
       (c < 0x80 && strchr("!#$&+-.^_`|~", c)))
      v[o++] = (char)c;
    else {
      v[o++] = '%';
      v[o++] = hex[c >> 4];
      v[o++] = hex[c & 15];
    }
  }
  v[o] = '\0';
  return web_header(out, "Content-Disposition", v);
}

void console_redirect(struct web_response *out, const char *to)
{
  out->status = 303;
  out->content_type = "text/plain; charset=utf-8";
  web_header(out, "Location", to);
  buf_addstr(&out->body, "see other\n");
}

void console_plain(struct web_response *out, unsigned status, const char *text)
{
  out->status = status;
  out->content_type = "text/plain; charset=utf-8";
  buf_reset(&out->body);
  buf_addstr(&out->body, text);
}


void console_when(long long ms, char out[32])
{
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if(ms <= 0 || !gmtime_r(&t, &tm) || !strftime(out, 32, "%Y-%m-%d %H:%M:%S", &tm))
    str_copy(out, 32, "-");
}

/* ---- the frame of every page --------------------------------------------------------------- */

void console_page_begin(struct buf *b, const char *title, const struct console_session *s,
                       const char *active)
{
  html_put(b, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
           "<title>{} \xc2\xb7 Postern</title>"
           "<link rel=\"stylesheet\" href=\"/console/assets/console.css\">"
           "<script src=\"/console/assets/console.js\" defer></script></head>\n<body>"
           "<a class=\"skip\" href=\"#main\">Skip to content</a>", title);
  if(s) {
    static const struct { const char *key, *href, *label; } nav[] = {
      { "overview", "/console/", "Overview" },
      { "queue", "/console/queue", "Queue" },
      { "captured", "/console/captured", "Captured mail" },
      { "threads", "/console/threads", "Correspondence" },
    };
    size_t i;
    html_lit(b, "<header><nav aria-label=\"Console\"><span class=\"brand\">Postern</span>");
    for(i = 0; i < sizeof(nav) / sizeof(nav[0]); i++) {
      if(!strcmp(active, nav[i].key))
        html_put(b, "<a href=\"{}\" aria-current=\"page\">{}</a>", nav[i].href, nav[i].label);
      else
        html_put(b, "<a href=\"{}\">{}</a>", nav[i].href, nav[i].label);
    }
    html_put(b, "<form method=\"post\" action=\"/console/logout\" class=\"logout\">"
             "<input type=\"hidden\" name=\"csrf\" value=\"{}\">"
             "<button type=\"submit\">Log out {}</button></form></nav></header>",
             s->csrf, s->user);
  }
  html_put(b, "<main id=\"main\"><h1>{}</h1>\n", title);
}

void console_page_end(struct buf *b)
{
  html_lit(b, "</main></body></html>\n");
}

void console_done_html(struct web_response *out)
{
  out->status = out->body.len && !out->status ? 200 : out->status;
  out->content_type = "text/html; charset=utf-8";
}

