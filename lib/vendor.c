/* Process-wide start of the libraries whose global initialisers are not safe to run twice at
 * once (GMime counts its callers without a lock; curl_global_init is only conditionally
 * thread-safe): one once-guard per library for the whole process, whichever layer asks first. */
#include "lib/vendor.h"
#include <pthread.h>
#include <curl/curl.h>
#include <gmime/gmime.h>

static pthread_once_t gmime_once = PTHREAD_ONCE_INIT;
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void gmime_start(void)
{
  g_mime_init();
}

static void curl_start(void)
{
  curl_global_init(CURL_GLOBAL_DEFAULT);
}

void vendor_gmime_start(void)
{
  pthread_once(&gmime_once, gmime_start);
}

void vendor_curl_start(void)
{
  pthread_once(&curl_once, curl_start);
}
