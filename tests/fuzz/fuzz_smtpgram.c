/* Fuzz target for the SMTP grammar: every parser of global/smtpgram.c gets the same bytes (command
 * lines, MAIL/RCPT arguments, reply lines, mailboxes, HELO names), and the results are checked
 * against the invariants callers rely on. */
#include "global/smtpgram.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *p = (const char *)data;
  struct smtp_command cmd;
  struct smtp_path_params pp;
  struct smtp_reply r;
  int more, is_mail;
  size_t dl = 0;

  if(!smtp_command_parse(p, size, &cmd)) {
    if(cmd.arg < p || cmd.arg + cmd.arglen > p + size)
      abort();
    /* what a session does next with the argument */
    for(is_mail = 0; is_mail < 2; is_mail++) {
      if(smtp_path_parse(cmd.arg, cmd.arglen, is_mail, &pp, &r) == SMTP_PATH_OK) {
        if(pp.pathlen != strlen(pp.path) || pp.pathlen > LIM_SMTP_PATH)
          abort();
        if(is_mail && !pp.smtputf8 && !smtp_text_is_ascii(pp.path, pp.pathlen))
          abort();
        if(pp.pathlen && smtp_address_domain(pp.path, pp.pathlen, &dl) && dl > pp.pathlen)
          abort();
      }
      else if(r.code < 500 || r.code > 559 || !r.enh[0] || strlen(r.text) >= sizeof(r.text))
        abort();
    }
    (void)smtp_helo_valid(cmd.arg, cmd.arglen);
  }
  /* the raw bytes too: the parsers must not depend on the command parser's filtering */
  for(is_mail = 0; is_mail < 2; is_mail++)
    if(smtp_path_parse(p, size, is_mail, &pp, &r) == SMTP_PATH_OK &&
       (pp.pathlen != strlen(pp.path) || pp.pathlen > LIM_SMTP_PATH))
      abort();
  if(!smtp_reply_parse_line(p, size, &r, &more)) {
    if(r.code < 200 || r.code > 599 || strlen(r.text) >= sizeof(r.text) || (more & ~1))
      abort();
    if(r.enh[0] && r.enh[0] != p[0])
      abort();
  }
  (void)smtp_mailbox_valid(p, size, 0);
  (void)smtp_mailbox_valid(p, size, 1);
  (void)smtp_helo_valid(p, size);
  if(smtp_address_domain(p, size, &dl) && (dl == 0 || dl >= size))
    abort();
  return 0;
}
