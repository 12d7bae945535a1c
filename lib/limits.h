/* Every cap Postern puts on input, in one place, so that a reader finds every bound here.
 * Pre-authentication sessions and webhooks get the tighter ones. */
#ifndef POSTERN_LIMITS_H
#define POSTERN_LIMITS_H

#define LIM_SMTP_COMMAND_LINE   512      /* RFC 5321 4.5.3.1.4, including CRLF */
#define LIM_SMTP_TEXT_LINE      1000     /* RFC 5321 4.5.3.1.6, including CRLF: what goes out */
#define LIM_SMTP_CONTENT_LINE   (4u * 1024u * 1024u) /* one line of received content, kept as
                                            legacy applications write it (one-line HTML, CSV);
                                            never more than max_message_size */
#define LIM_SMTP_REPLY_LINE     512      /* RFC 5321 4.5.3.1.5 */
#define LIM_SMTP_PATH           256      /* RFC 5321 4.5.3.1.3 */
#define LIM_SMTP_LOCALPART      64
#define LIM_SMTP_DOMAIN         255
#define LIM_SMTP_HELO           255
#define LIM_SMTP_ERRORS         10       /* bad commands before 421 and close */
#define LIM_SMTP_IDLE_SECONDS   300      /* RFC 5321 4.5.3.2.7: at least 5 minutes */
#define LIM_SMTP_SESSION_SECONDS 3600    /* total session deadline */
#define LIM_SMTP_PREAUTH_COMMANDS 100    /* commands before MAIL for an unauthenticated peer */
#define LIM_SMTP_AUTH_LINE      12288    /* RFC 4954 4: an AUTH command or response line, CRLF
                                            included; only where AUTH is offered */
#define LIM_SASL_B64_IN         (1u << 20)  /* base64 through Cyrus: far beyond any SMTP line,
                                            and within its unsigned lengths */
#define LIM_AUTH_FAILURES_DEFAULT 5      /* failed AUTHs from one address before 421 and close */
#define LIM_AUTH_FAILURES_FREE  3        /* failures answered at once; later ones wait 1s, 2s... */
#define LIM_AUTH_DELAY_SECONDS  16       /* the longest wait before a failure reply */
#define LIM_AUTH_FAILURE_MEMORY 600      /* seconds an address's failures are remembered */
#define LIM_AUTH_FAILURE_ADDRS  4096     /* clients remembered (the oldest unlocked one is
                                            forgotten first, a locked one never) */
#define LIM_AUTH_LOCKOUT_DEFAULT 600     /* seconds a client is locked out after
                                            max_auth_failures */
#define LIM_ANVIL_CLIENTS       8192     /* clients (per listener) whose sessions and rates
                                            are counted */
#define LIM_ANVIL_PER_IP_MX     20       /* max_clients_per_ip defaults */
#define LIM_ANVIL_PER_IP_SUBMISSION 50
#define LIM_TLS_HANDSHAKE_SECONDS 60     /* a TLS handshake, within the session deadline */
#define LIM_SMTP_CLIENT_LINE    4096     /* one reply line from an upstream, CRLF included
                                            (RFC 5321 says 512: servers send longer) */
#define LIM_SASL_CHALLENGE      (64u * 1024u)  /* one decoded SASL challenge from an upstream */
#define LIM_SMTP_BDAT_CHUNK     (64u * 1024u * 1024u)
#define LIM_SMTP_RCPT_DEFAULT   100
#define LIM_SMTP_RCPT_OVERSHOOT 1000     /* RCPTs past max_recipients answered 452 before they
                                          * count as errors (Postfix's overshoot limit) */
#define LIM_SMTP_TRANSACTIONS_DEFAULT 100 /* MAIL transactions in one session */
#define LIM_SMTP_HELO_TIMEOUT_MX 30      /* seconds from connect to HELO/EHLO on an mx listener */
#define LIM_MESSAGE_SIZE_DEFAULT (35u * 1024u * 1024u)
#define LIM_MESSAGE_SIZE_MAX    (900u * 1024u * 1024u)  /* SQLite keeps a value under 10^9 bytes */
#define LIM_CLIENTS_DEFAULT     200
#define LIM_LOG_FIELD           200      /* attacker bytes in one log field */
#define LIM_CONFIG_VALUE        4096
#define LIM_QUEUE_ID            24
#define LIM_PRUNE_KEY           32   /* a key the store's pruner carries: a queue id or a rowid */
#define LIM_HEADER_SCAN         (256u * 1024u) /* header section examined for Message-ID/Date */
/* a failure DSN asked for with RET=FULL returns the whole message up to this size, and only
 * its header section above it (Postfix's bounce_size_limit does the same, at 50 KB) */
#define LIM_DSN_RETURN_FULL     (1024u * 1024u)

/* webhooks (inbound/http.c): the body cap is [inbound] max_http_size */
#define LIM_WEBHOOK_FIELD       (64u * 1024u)  /* one form field kept in memory (envelope, ...) */
#define LIM_WEBHOOK_FIELDS      200      /* form fields in one request */
#define LIM_WEBHOOK_EVENTS      10000    /* events in one Event Webhook batch */
#define LIM_WEBHOOK_EVENTS_BODY (1024u * 1024u)  /* an Event Webhook batch */
#define LIM_WEBHOOK_SMS_BODY    (64u * 1024u)    /* a Twilio SMS post (1600 characters, media URLs) */
/* /emailInbound without max_http_size: the message (raw mode's email field, or parsed mode's
 * decoded parts) plus the other fields and the multipart framing */
#define LIM_WEBHOOK_FORM_OVERHEAD (1024u * 1024u)
#define LIM_WEBHOOK_SIGNED      (64u * 1024u * 1024u)  /* the text a Twilio signature covers
                                            (the URL and the sorted parameters) */
#define LIM_WEBHOOK_TIMEOUT_SECONDS 120  /* an idle HTTP connection */
/* read past a body's cap (chunked: no length to refuse up front) to answer 413 at its end;
 * beyond this the connection is closed unanswered */
#define LIM_WEBHOOK_DISCARD     (1024u * 1024u)

/* the web console (console/) */
#define LIM_CONSOLE_PAGE        (96u * 1024u * 1024u)  /* one answer (a raw message included) */
#define LIM_CONSOLE_SESSIONS    256      /* logged-in sessions at once; the oldest goes first */
#define LIM_CONSOLE_USERS       64       /* [console] users and users_file entries */
#define LIM_CONSOLE_FORM_FIELDS 1100     /* fields of one posted form (a bulk action's ids) */
#define LIM_CONSOLE_PAGE_ROWS   50       /* queue rows per page */
#define LIM_DOWNLOAD_NAME       200      /* bytes of an attachment's name a download keeps */

/* MIME -> correspondence records (inbound/mime.c): a message past these still becomes a record,
 * with what was read before the cap and a parse_error saying which cap */
#define LIM_MIME_PARTS          1000     /* entities (parts, multiparts) walked in one message */
#define LIM_MIME_DEPTH          64       /* nesting of multiparts and attached messages walked */
#define LIM_MIME_NESTING        128      /* multipart/message Content-Type fields handed to GMime,
                                            whose parser recurses once per level */
#define LIM_MIME_BOUNDARY_LINES 4096     /* lines starting "--" handed to GMime (bounds its part
                                            objects: a 35 MB message of empty parts is ~5M) */
#define LIM_MIME_HEADER         (64u * 1024u)  /* one header field's value read into a field */
#define LIM_MIME_ADDRESSES      1000     /* addresses kept from one To/Cc/Reply-To field */
#define LIM_MIME_REFERENCES     500      /* message ids kept from References */
#define LIM_MIME_DSN_RECIPIENTS 1000     /* per-recipient groups read from one DSN */

/* correspondence records (inbound/records.c) */
#define LIM_INBOUND_ROW         (1024u * 1024u)  /* the text fields of one stored inbound row */
#define LIM_RECORD_REFS         100      /* References ids tried when threading a reply */
#define LIM_FORWARD_ANSWER      (64u * 1024u)    /* what is kept of forward_url's answer */
#define LIM_FORWARD_TIMEOUT_SECONDS 60   /* one POST to forward_url */

/* the control socket (daemon/control.c, tools/ctl_control.c) */
#define LIM_CONTROL_LINE        512      /* one command line, LF included */
#define LIM_CONTROL_REPLY       4096     /* one JSON reply line */

/* HTTP clients (global/http.h) */
#define LIM_AWS_REGION          32       /* an AWS region name ("us-gov-west-1") */
#define LIM_HTTP_BODY           (64u * 1024u)    /* what is kept of an API's answer */
#define LIM_OAUTH2_BODY         (64u * 1024u)    /* a token endpoint's answer; a certificate */
#define LIM_OAUTH2_LIFETIME_SECONDS (7L * 24 * 3600)  /* expires_in believed at most */
#define LIM_OAUTH2_REFRESH_MIN_MS 1000           /* between two refreshes of one identity */
#define LIM_OAUTH2_DEVICE_INTERVAL_SECONDS 60    /* the longest wait between device code polls */
#define LIM_OAUTH2_DEVICE_CODE_SECONDS 3600      /* the longest a device code is waited for */

/* metrics (global/metrics.c): label values come from the configuration, so their number is known
 * at start; past the cap (or for a name never registered) they count as "other" */
#define LIM_METRICS_NAMES       64       /* listeners, upstreams or OAuth2 identities each */
#define LIM_METRICS_NAME        64       /* bytes of one label value */
#define LIM_METRICS_BODY        (1024u * 1024u)  /* the whole /metrics exposition */

#endif
