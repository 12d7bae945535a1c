# A real upstream SMTP server on loopback for the relay tests: Debian's aiosmtpd with STARTTLS or
# implicit TLS, AUTH PLAIN/LOGIN/CRAM-MD5 against given credentials, and failure modes (4xx for
# the first N messages, 5xx or 4xx for chosen recipients, a 4.7.x throttle, a SIZE limit). It counts
# connections, records every AUTH and every byte received, and writes each message to a directory.
# With xoauth2=CHECK (or oauthbearer=CHECK, RFC 7628) it offers AUTH XOAUTH2 (OAUTHBEARER) and
# accepts a bearer token only when CHECK(token) is true (the OAuth2 tests' token endpoint says
# which tokens are currently valid).
# Also runnable on its own:  python3 upstream.py --port 2526 --dir /tmp/sink [--tls starttls ...]
import argparse
import asyncio
import base64
import hmac
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, MISSING


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Certificates, made with the openssl command line.

class Certs:
    """A CA and leaves under dir: 'good' (localhost, 127.0.0.1, ::1, signed by the CA),
    'wrongname' (mail.other.example, signed by the CA), 'selfsigned' (localhost, its own
    issuer)."""

    def __init__(self, d):
        self.dir = str(d)
        os.makedirs(self.dir, exist_ok=True)
        self.ca = os.path.join(self.dir, "ca.pem")
        self.ca_key = os.path.join(self.dir, "ca.key")
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
                  "-subj", "/CN=Postern Test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self.leaf("good", "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1")
        self.leaf("wrongname", "mail.other.example", "DNS:mail.other.example")
        self.leaf("selfsigned", "localhost", "DNS:localhost,IP:127.0.0.1", selfsigned=True)

    def _run(self, *args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def leaf(self, name, cn, san, selfsigned=False):
        key = os.path.join(self.dir, f"{name}.key")
        crt = os.path.join(self.dir, f"{name}.pem")
        if selfsigned:
            self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={cn}",
                      "-addext", f"subjectAltName={san}")
        else:
            csr = os.path.join(self.dir, f"{name}.csr")
            ext = os.path.join(self.dir, f"{name}.ext")
            with open(ext, "w") as f:
                f.write(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
                        "basicConstraints=CA:FALSE\n")
            self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                      "-keyout", key, "-out", csr, "-subj", f"/CN={cn}")
            self._run("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
                      "-CAcreateserial", "-out", crt, "-days", "2", "-extfile", ext)
        setattr(self, name, (crt, key))
        return crt, key


def _login(session):
    data = getattr(session, "auth_data", None)
    login = getattr(data, "login", None)
    return login.decode("utf-8", "replace") if isinstance(login, bytes) else login


async def _initial_response(server, args):
    """An AUTH command's initial response, inline or after an empty 334: the decoded bytes, or
    the AuthResult that ends the exchange."""
    if len(args) > 1:
        try:
            return base64.b64decode(args[1], validate=True)
        except ValueError:
            return AuthResult(success=False, handled=False)
    raw = await server.challenge_auth("")
    return AuthResult(success=False, handled=True) if raw is MISSING else raw


def server_context(cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert[0], cert[1])
    return ctx


# ---------------------------------------------------------------------------------------------
# The server.

class Upstream:
    """tls: None | 'starttls' | 'implicit'; cert: (pem, key) when tls is set.
    users: {login: password} enables AUTH (mechs: which of PLAIN LOGIN CRAM-MD5 to offer).
    fail_first: the first N messages get temp_reply at the end of DATA.
    reject: recipients answered 550; defer: recipients answered 450.
    throttle_first: the first N MAIL commands get 421 4.7.0 (the connection stays).
    size: the SIZE limit announced and enforced.
    auth_fail_reply: what a refused AUTH is answered with (a provider's 535/534/550 line; may
    hold CRLF for a multi-line reply) instead of aiosmtpd's 535 5.7.8.
    require_starttls: every command but EHLO/HELO/NOOP/QUIT/STARTTLS gets 530 before TLS.
    auth_silent: seconds the server says nothing after an AUTH command before it closes the
    connection (a provider that hangs on the login).
    data_delay: seconds each end of DATA takes before its answer (a slow provider)."""

    def __init__(self, directory, tls=None, cert=None, users=None, mechs=("PLAIN", "LOGIN", "CRAM-MD5"),
                 auth_require_tls=True, fail_first=0, temp_reply="451 4.3.0 Temporary failure, try again later",
                 reject=(), defer=(), throttle_first=0, size=None, port=None, host="127.0.0.1",
                 xoauth2=None, auth_fail_reply=None, require_starttls=False, oauthbearer=None,
                 auth_silent=0, data_delay=0):
        self.dir = str(directory)
        self.data_delay = data_delay
        self.auth_silent = auth_silent
        os.makedirs(self.dir, exist_ok=True)
        self.tls = tls
        self.cert = cert
        self.users = dict(users or {})
        self.mechs = set(mechs)
        self.auth_require_tls = auth_require_tls
        self.fail_first = fail_first
        self.temp_reply = temp_reply
        self.reject = {a.lower() for a in reject}
        self.defer = {a.lower() for a in defer}
        self.throttle_first = throttle_first
        self.size = size
        self.xoauth2 = xoauth2
        self.auth_fail_reply = auth_fail_reply
        self.require_starttls = require_starttls
        self.xoauth2_auths = []      # (user, token, ok)
        self.oauthbearer = oauthbearer
        self.oauthbearer_auths = []  # (authzid, token, ok, host, port, dummy reply after the error)
        self.host = host
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.connections = 0
        self.auth_commands = []      # mechanism names of every AUTH command received
        self.auths = []              # (mechanism, login, ok, tls)
        self.messages = []           # dicts: mail_from, rcpts, data, tls, auth, time
        self.data_attempts = 0
        self.mail_attempts = 0
        self.raw = bytearray()       # every byte received, for "was the password ever sent?"
        self.controller = None

    # -- life cycle
    def start(self):
        up = self

        class Handler:
            async def handle_MAIL(self, server, session, envelope, address, mail_options):
                with up.lock:
                    up.mail_attempts += 1
                    n = up.mail_attempts
                if n <= up.throttle_first:
                    return "421 4.7.0 Too many messages, slow down"
                envelope.mail_from = address      # "<>" for the null sender
                envelope.mail_options.extend(mail_options)
                return "250 2.1.0 Ok"

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                a = address.lower()
                if a in up.reject:
                    return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
                if a in up.defer:
                    return f"450 4.2.1 <{address}>: Mailbox busy, try again later"
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.append(rcpt_options)
                return "250 2.1.5 Ok"

            async def handle_DATA(self, server, session, envelope):
                if up.data_delay:
                    await asyncio.sleep(up.data_delay)
                with up.lock:
                    up.data_attempts += 1
                    n = up.data_attempts
                if n <= up.fail_first:
                    return up.temp_reply
                msg = {
                    "mail_from": "" if envelope.mail_from == "<>" else envelope.mail_from,
                    "mail_options": list(envelope.mail_options),
                    "rcpts": list(envelope.rcpt_tos),
                    "data": envelope.original_content if envelope.original_content is not None else envelope.content,
                    "tls": session.ssl is not None,
                    "auth": _login(session),
                    "time": time.monotonic(),
                }
                with up.lock:
                    up.messages.append(msg)
                    k = len(up.messages)
                with open(os.path.join(up.dir, f"{k:05d}.eml"), "wb") as f:
                    f.write(msg["data"])
                with open(os.path.join(up.dir, f"{k:05d}.json"), "w") as f:
                    json.dump({k2: v for k2, v in msg.items() if k2 != "data"}, f)
                return "250 2.0.0 Ok: queued as %05d" % k

            if up.xoauth2 is not None:
                async def auth_XOAUTH2(self, server, args):
                    # "user=U^Aauth=Bearer T^A^A", base64, inline or after an empty 334
                    raw = await _initial_response(server, args)
                    if isinstance(raw, AuthResult):
                        return raw
                    fields = dict(f.split("=", 1) for f in raw.decode("utf-8", "replace").split("\x01")
                                  if "=" in f)
                    user = fields.get("user", "")
                    auth = fields.get("auth", "")
                    token = auth[7:] if auth.startswith("Bearer ") else ""
                    ok = bool(token) and bool(up.xoauth2(token))
                    with up.lock:
                        up.xoauth2_auths.append((user, token, ok))
                        up.auths.append(("XOAUTH2", user, ok, server.session.ssl is not None))
                    return AuthResult(success=ok, handled=False,
                                      auth_data=LoginPassword(user.encode(), b""))

            if up.oauthbearer is not None:
                async def auth_OAUTHBEARER(self, server, args):
                    # RFC 7628: "n,a=U,^Ahost=H^Aport=P^Aauth=Bearer T^A^A"; a refusal is a 334
                    # with a JSON error, the client's ^A, then 535
                    raw = await _initial_response(server, args)
                    if isinstance(raw, AuthResult):
                        return raw
                    text = raw.decode("utf-8", "replace")
                    gs2, _, rest = text.partition("\x01")
                    parts = gs2.split(",")
                    authzid = ""
                    if len(parts) >= 2 and parts[1].startswith("a="):
                        authzid = parts[1][2:].replace("=2C", ",").replace("=3D", "=")
                    fields = dict(f.split("=", 1) for f in rest.split("\x01") if "=" in f)
                    auth = fields.get("auth", "")
                    token = auth[7:] if auth.startswith("Bearer ") else ""
                    ok = parts[0] == "n" and text.endswith("\x01\x01") and bool(token) and \
                        bool(up.oauthbearer(token))
                    dummy = None
                    if not ok:
                        err = json.dumps({"status": "invalid_token", "scope": "mail",
                                          "schemes": "bearer"}).encode()
                        dummy = await server.challenge_auth(err)
                    with up.lock:
                        up.oauthbearer_auths.append((authzid, token, ok, fields.get("host"),
                                                     fields.get("port"), dummy))
                        up.auths.append(("OAUTHBEARER", authzid, ok, server.session.ssl is not None))
                    if dummy is MISSING:
                        return AuthResult(success=False, handled=True)
                    return AuthResult(success=ok, handled=False,
                                      auth_data=LoginPassword(authzid.encode(), b""))

        def authenticator(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode("utf-8", "replace")
            ok = up.users.get(login) is not None and up.users[login].encode() == auth_data.password
            with up.lock:
                up.auths.append((mechanism, login, ok, session.ssl is not None))
            return AuthResult(success=ok, handled=False, auth_data=auth_data,
                              message=None if ok else up.auth_fail_reply)

        class CountingSMTP(SMTP):
            def connection_made(self, transport):
                # called again on the same connection once STARTTLS is done: count it once
                if self._original_transport is None:
                    with up.lock:
                        up.connections += 1
                super().connection_made(transport)
                if up.tls == "implicit" and self.session.ssl is None:
                    self.session.ssl = transport.get_extra_info("ssl_object")

            def data_received(self, data):
                with up.lock:
                    up.raw.extend(data)
                super().data_received(data)

            async def smtp_AUTH(self, arg):
                with up.lock:
                    up.auth_commands.append(arg.split()[0].upper() if arg else "")
                if up.auth_silent:
                    await asyncio.sleep(up.auth_silent)
                    self.transport.close()
                    return
                return await super().smtp_AUTH(arg)

            async def auth_CRAM__MD5(self, _, args):
                challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@localhost>".encode()
                resp = await self.challenge_auth(challenge)
                if resp is MISSING:
                    return AuthResult(success=False, handled=True)
                try:
                    login, digest = resp.split(b" ", 1)
                except ValueError:
                    return AuthResult(success=False, handled=False)
                name = login.decode("utf-8", "replace")
                pw = up.users.get(name)
                ok = pw is not None and hmac.compare_digest(
                    hmac.new(pw.encode(), challenge, "md5").hexdigest().encode(), digest.strip())
                with up.lock:
                    up.auths.append(("CRAM-MD5", name, ok, self.session.ssl is not None))
                return AuthResult(success=ok, handled=False, auth_data=LoginPassword(login, b""))

        class UpController(Controller):
            def factory(self):
                return CountingSMTP(self.handler, **self.SMTP_kwargs)

        kwargs = dict(hostname=self.host, port=self.port, ready_timeout=20,
                      server_hostname="localhost", decode_data=False, enable_SMTPUTF8=True,
                      data_size_limit=self.size or 0, ident="upstream.test ESMTP")
        if self.users:
            kwargs["authenticator"] = authenticator
            # aiosmtpd only knows of STARTTLS: on an implicit-TLS port it would hide AUTH
            kwargs["auth_require_tls"] = self.auth_require_tls and self.tls != "implicit"
            exclude = [m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m not in self.mechs]
            if exclude:
                kwargs["auth_exclude_mechanism"] = exclude
        else:
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN", "CRAM-MD5"]
        if self.tls == "starttls":
            kwargs["tls_context"] = server_context(self.cert)
            kwargs["require_starttls"] = self.require_starttls
        elif self.tls == "implicit":
            kwargs["ssl_context"] = server_context(self.cert)
        self.controller = UpController(Handler(), **kwargs)
        self.controller.start()
        with self.lock:
            # the controller's own readiness probe is not a client
            self.connections = 0
            self.raw.clear()
        return self

    def stop(self):
        if self.controller:
            try:
                self.controller.stop()
            except Exception:
                pass
            self.controller = None

    # -- what happened
    def wait_messages(self, n, timeout=40):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            raise AssertionError(f"upstream received {len(self.messages)} message(s), expected {n}")

    def received(self):
        with self.lock:
            return list(self.messages)

    def raw_bytes(self):
        with self.lock:
            return bytes(self.raw)


def main():
    ap = argparse.ArgumentParser(description="aiosmtpd upstream for Postern's tests and benchmarks")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--tls", choices=["starttls", "implicit"])
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--user", action="append", default=[], help="LOGIN:PASSWORD")
    args = ap.parse_args()
    users = dict(u.split(":", 1) for u in args.user)
    up = Upstream(args.dir, tls=args.tls, cert=(args.cert, args.key) if args.cert else None,
                  users=users, port=args.port).start()
    print("READY", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        up.stop()


if __name__ == "__main__":
    main()


def upstream_section(name, port, host="localhost", tls="starttls", verify="peer", ca=None,
                     auth=None, username=None, password_file=None, rate=None):
    """One [upstream NAME] section of type smtp, as the tests write them, newline-terminated."""
    lines = [f"[upstream {name}]", "type = smtp", f"host = {host}", f"port = {port}",
             f"tls = {tls}", f"verify = {verify}", "helo = relay.test.example"]
    for key, value in (("ca_file", ca), ("auth", auth), ("username", username),
                       ("password_file", password_file), ("rate", rate)):
        if value:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"
