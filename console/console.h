/* The web console: the queue, captured mail and the daemon's counters in a browser, served
 * under /console/ by the HTTP listener (which hands requests over through global/web.h).
 * Security model: its own users ([console] users / users_file, crypt(3) hashes), a random
 * session id in an HttpOnly SameSite=Strict cookie, a CSRF token on every POST, a strict
 * Content-Security-Policy on every answer, no resource from outside (the CSS and JS are in
 * the binary), and every dynamic value escaped by the HTML writer (console/html.c). */
#ifndef POSTERN_CONSOLE_H
#define POSTERN_CONSOLE_H
#include <stdio.h>
#include "global/config.h"
#include "global/web.h"
#include "store/store.h"

struct console;

/* Problems of [console] (users unreadable, a password that is not a crypt hash) written to
 * errs as FILE:LINE: message; returns how many. */
int console_check_config(const struct config *cfg, FILE *errs);

/* A console over st with cfg's [console]; -1 when its users cannot be read (logged). */
int console_new(const struct config *cfg, struct store *st, struct console **out);
/* A reload: users, session timeout and cookie settings from cfg; sessions stay. 0, or -1 (the
 * old users stay). */
int console_reload(struct console *c, const struct config *cfg);
void console_free(struct console *c);

/* The web_handler to mount under /console/ (arg: the struct console). */
void console_handle(void *arg, const struct web_request *rq, struct web_response *out);

#endif
