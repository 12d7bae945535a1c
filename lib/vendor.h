/* Starting shared third-party libraries once per process (see lib/vendor.c). Call before the
 * first use; cheap after the first call. */
#ifndef POSTERN_VENDOR_H
#define POSTERN_VENDOR_H
void vendor_gmime_start(void);   /* g_mime_init */
void vendor_curl_start(void);    /* curl_global_init(CURL_GLOBAL_DEFAULT) */
#endif
