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
};

void console_security_headers(struct web_response *out, int mail_frame);
void console_redirect(struct web_response *out, const char *to);
void console_plain(struct web_response *out, unsigned status, const char *text);

void pages_login(struct buf *b, const char *token, const char *message);
void pages_route(struct pages_ctx *pc, const char *path, struct web_response *out);

#endif
