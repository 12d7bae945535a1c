/* Reading message headers and DKIM tag-lists (global/mailauth.c). */
#ifndef POSTERN_MAILAUTH_H
#define POSTERN_MAILAUTH_H
#include <stddef.h>

/* The header section of msg[0..len), one field at a time from *pos (start at 0): 1 with the
 * name (trailing blanks off) and the value (folded lines included, without the final line
 * end), 0 at the end of the header section. */
int mailauth_header_next(const char *msg, size_t len, size_t *pos, const char **name,
                         size_t *namelen, const char **value, size_t *valuelen);
/* The value of tag in an RFC 6376 3.2 tag-list ("v=DKIM1; k=rsa; p=..."), surrounding blanks
 * and folding off: 0 found, -1 not. */
int mailauth_tag_find(const char *v, size_t len, const char *tag, const char **out,
                      size_t *outlen);

#endif
