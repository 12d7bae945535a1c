/* The headers every console answer carries, and its short answers. */
#include "console/pages.h"

/* every page: nothing from elsewhere, no inline script, framed by nobody */
#define CSP_PAGE "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " \
  "frame-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; " \
  "frame-ancestors 'none'"
/* a captured message's HTML, inside <iframe sandbox>: no script, nothing fetched from anywhere
 * (remote images stay blocked), inline styles allowed since mail is written with them */
#define CSP_MAIL "default-src 'none'; img-src data:; style-src 'unsafe-inline'; " \
  "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"

void console_security_headers(struct web_response *out, int mail_frame)
{
  web_header(out, "Content-Security-Policy", mail_frame ? CSP_MAIL : CSP_PAGE);
  web_header(out, "X-Frame-Options", mail_frame ? "SAMEORIGIN" : "DENY");
  web_header(out, "X-Content-Type-Options", "nosniff");
  web_header(out, "Referrer-Policy", "no-referrer");
  web_header(out, "Cache-Control", "no-store");
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

