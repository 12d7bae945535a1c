/* The console's pages (console/pages.c) and what console/console.c gives them. */
#ifndef POSTERN_CONSOLE_PAGES_H
#define POSTERN_CONSOLE_PAGES_H
#include "console/console_int.h"
#include "global/web.h"
#include "store/store.h"

#define CONSOLE_TOKEN_HEX 64       /* session ids and CSRF tokens: 32 random bytes in hex */

struct console_session {
  int used;
  char id[CONSOLE_TOKEN_HEX + 1];
  char csrf[CONSOLE_TOKEN_HEX + 1];
  char user[64];
  long long last_ms;               /* monotonic */
};

struct pages_ctx {
  struct store *st;
  const struct console_session *session;
  const struct web_request *rq;
  const struct form *form;         /* a POST's fields (its CSRF token checked); NULL for GET */
  /* from the configuration (a copy: a reload may replace it meanwhile) */
  char **upstreams;                /* the [upstream]s mail can be released to (not capture) */
  char **oauth2;                   /* each one's [oauth2] identity, or NULL */
  size_t nupstreams;
  char **sources;                  /* where inbound mail comes in, one line each */
  size_t nsources;
};

/* What an answer is, for its Content-Security-Policy: a console page, a mail's HTML (nothing
 * fetched), or a mail's HTML whose remote images the reader asked for. */
enum console_frame { FRAME_PAGE, FRAME_MAIL, FRAME_MAIL_IMAGES };
/* 1 when the request asks for the mail's remote images (?images=1) */
int console_wants_images(const struct web_request *rq);
void console_security_headers(struct web_response *out, enum console_frame mail_frame);
/* Content-Disposition: attachment with filename (as the mail names it, made safe), or
 * part-IDX; 0, or -1 (no room). */
int console_disposition(struct web_response *out, const char *filename, long idx);
void console_redirect(struct web_response *out, const char *to);
void console_plain(struct web_response *out, unsigned status, const char *text);

/* Wall-clock ms as "YYYY-MM-DD HH:MM:SS" (UTC), "-" for none. */
void console_when(long long ms, char out[32]);
/* The frame of every page: head, navigation (active: its key) and the h1; s NULL before a
 * login. */
void console_page_begin(struct buf *b, const char *title, const struct console_session *s,
                        const char *active);
void console_page_end(struct buf *b);
void console_done_html(struct web_response *out);

/* console/threads.c: correspondence threads */
void threads_list(struct pages_ctx *pc, struct web_response *out);
void threads_one(struct pages_ctx *pc, struct web_response *out);

/* console/overview.c: throughput chart, upstream health, inbound sources, warnings */
void overview_more(struct pages_ctx *pc, struct buf *b, long long now_ms);

void pages_login(struct buf *b, const char *token, const char *message);
void pages_route(struct pages_ctx *pc, const char *path, struct web_response *out);

#endif
