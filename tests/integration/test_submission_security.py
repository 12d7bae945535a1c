# Submission security with real clients on loopback: STARTTLS and implicit TLS (swaks, curl,
# Python's smtplib and ssl), AUTH PLAIN/LOGIN/CRAM-MD5 against users added with posternctl,
# the relay policy, the STARTTLS injection class, failure throttling, sender ownership,
# certificate reload on SIGHUP, privilege dropping and `postern -n` on TLS settings.
import base64
import hashlib
import hmac
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time

import pytest

from conftest import (HOSTNAME, POSTERN, POSTERNCTL, Daemon, SMTPConn, check_stored, free_port,
                      register_secret,
                      need_binary)

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
CURL = shutil.which("curl") or "/usr/bin/curl"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

PASSWORD = "s3cret pass,word"          # a blank and a comma: passed exactly, never split
NOBODY_NET = "203.0.113.7/32"           # trusted_networks that no test client is in


# ---------------------------------------------------------------------------------------------
# Certificates: one test CA, leaves for relay.test.example and 127.0.0.1.

def _run(args, **kw):
    p = subprocess.run(args, capture_output=True, timeout=60, **kw)
    assert p.returncode == 0, f"{args[0]} failed: {p.stderr.decode('utf-8', 'replace')[-2000:]}"
    return p


def make_leaf(ca, d, name):
    key, csr, cert, ext = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "pem", "ext"))
    with open(ext, "w") as f:
        f.write(f"subjectAltName=DNS:{HOSTNAME},IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={HOSTNAME}"])
    _run([OPENSSL, "x509", "-req", "-in", csr, "-CA", ca["cert"], "-CAkey", ca["key"],
          "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
          "-out", cert, "-extfile", ext])
    os.chmod(key, 0o600)
    return {"cert": cert, "key": key, "fp": der_fp(cert)}


def der_fp(pem_path):
    with open(pem_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if not os.access(OPENSSL, os.X_OK):
        pytest.skip("openssl is not installed")
    d = str(tmp_path_factory.mktemp("pki"))
    ca = {"cert": os.path.join(d, "ca.pem"), "key": os.path.join(d, "ca.key")}
    _run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
          "-nodes", "-keyout", ca["key"], "-out", ca["cert"], "-days", "2",
          "-subj", "/CN=Postern Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return {"dir": d, "ca": ca["cert"], "a": make_leaf(ca, d, "a"), "b": make_leaf(ca, d, "b")}


def client_ctx(pki=None):
    """Verifying against the test CA when pki is given, else accepting anything (as legacy
    clients with "verify certificate: off" do)."""
    if pki:
        return ssl.create_default_context(cafile=pki["ca"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------------------------------------
# Daemons, users and clients.

def listener(name, port, addr="127.0.0.1", **keys):
    lines = ["", f"[listener {name}]", f"address = {addr}:{port}", "role = submission"]
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def tls_keys(pki, which="a", mode="starttls"):
    return {"tls": mode, "tls_cert": pki[which]["cert"], "tls_key": pki[which]["key"]}


def main_keys(**keys):
    """Keys added to the harness's own [listener submission] (it comes last but one)."""
    return "".join(f"{k} = {v}\n" for k, v in keys.items())


def ctl_user(conf, *args, password=None, check=True):
    need_binary(POSTERNCTL)
    register_secret(password)
    p = subprocess.run([POSTERNCTL, "-c", conf, "user", *args], capture_output=True, timeout=60,
                       input=None if password is None else (password + "\n").encode())
    if check:
        assert p.returncode == 0, \
            f"posternctl user {' '.join(args)} exited {p.returncode}: {p.stderr.decode()[-2000:]}"
    return p


def make_daemon(daemon_factory, extra="", postern=None, users=(("alice", PASSWORD),), **kw):
    d = daemon_factory(postern=postern, extra=extra, start=False, **kw)
    for name, pw in users:
        ctl_user(d.conf, "add", name, password=pw)
    d.start()
    return d


class Client(SMTPConn):
    """SMTPConn with a source address, STARTTLS and AUTH helpers."""

    def __init__(self, port, source="127.0.0.1", timeout=15, implicit=None):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        if implicit is not None:
            self.sock = implicit.wrap_socket(self.sock, server_hostname=HOSTNAME)
        self.buf = b""
        self.eof = False
        self.log = []

    def starttls(self, ctx=None):
        self.cmd_expect("STARTTLS", 220, "2.0.0")
        assert self.buf == b"", f"bytes after the 220 before the handshake: {self.buf!r}"
        self.sock = (ctx or client_ctx()).wrap_socket(self.sock, server_hostname=HOSTNAME)
        return self.sock

    def ehlo(self, helo="client.test"):
        r = self.cmd_expect(f"EHLO {helo}", 250)
        return r, ehlo_keywords(r)

    def auth_plain(self, user, password):
        ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {ir}")


def ehlo_keywords(r):
    kw = {}
    for line in r.lines[1:]:
        words = line[4:].split()
        if words:
            kw[words[0].upper()] = words[1:]
    return kw


def peer_fp(sock):
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def message(tag):
    return (f"From: alice@clinic.test\r\nTo: pat@example.test\r\nSubject: {tag}\r\n"
            f"Message-ID: <{tag}@clinic.test>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n"
            f"Body of {tag}.\r\n").encode()


def received_of(d, qid):
    body = d.queue_cat(qid)
    m = re.match(rb"Received:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", body)
    assert m, f"no Received: at the top: {body[:300]!r}"
    return m.group(0).decode(), body


def swaks(port, *opts, sender="alice@clinic.test", rcpt="pat@example.test", data=None, tmp=None):
    need = [SWAKS, "--server", "127.0.0.1", "--port", str(port), "--helo", "client.test",
            "--from", sender, "--to", rcpt, "--timeout", "60"]
    if data is not None:
        path = os.path.join(tmp, "swaks-data")
        with open(path, "wb") as f:
            f.write(data[:-2])
        need += ["--data", "@" + path]
    p = subprocess.run(need + list(opts), capture_output=True, timeout=120)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def queue_id(text):
    m = re.search(r"queued as ([A-Za-z0-9]+)", text)
    return m.group(1) if m else None


def assert_no_secret(d, *secrets):
    text = d.log_text()
    for s in secrets:
        assert s not in text, f"a secret ({s[:4]}...) appears in the log"


# ---------------------------------------------------------------------------------------------
# swaks: every mechanism, with and without STARTTLS, and implicit TLS.

@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory, pki):
    """Loopback listeners: STARTTLS (harness port) and implicit TLS, trusting no client net, so
    only AUTH lets anyone relay."""
    wd = tmp_path_factory.mktemp("tls-daemon")
    port465 = free_port()
    extra = main_keys(trusted_networks=NOBODY_NET, **tls_keys(pki)) + \
        listener("smtps", port465, trusted_networks=NOBODY_NET, **tls_keys(pki, mode="implicit")) + \
        "\n[user restricted]\nsenders = owner@clinic.test @app.clinic.test\n"
    d = Daemon(wd, extra=extra)
    for name in ("alice", "restricted"):
        ctl_user(d.conf, "add", name, password=PASSWORD)
    d.port465 = port465
    d.start()
    yield d
    assert_no_secret(d, PASSWORD, base64.b64encode(PASSWORD.encode()).decode())
    d.stop_and_check()


@pytest.mark.parametrize("tls", ["plain", "starttls", "implicit"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_swaks_auth(tls_daemon, mech, tls, tmp_path):
    d = tls_daemon
    opts = ["--auth", mech, "--auth-user", "alice", "--auth-password", PASSWORD]
    port = d.port
    if tls == "starttls":
        opts.append("--tls")
    elif tls == "implicit":
        opts.append("--tlsc")
        port = d.port465
    content = message(f"swaks-{mech}-{tls}")
    rc, out = swaks(port, *opts, data=content, tmp=str(tmp_path))
    assert rc == 0, f"swaks exited {rc}\n{out[-3000:]}"
    qid = queue_id(out)
    assert qid, out[-2000:]
    rcvd, body = received_of(d, qid)
    check_stored(body, content)
    if tls == "plain":
        assert " with ESMTPA id " in rcvd and "using TLS" not in rcvd, rcvd
    else:
        assert " with ESMTPSA id " in rcvd, rcvd
        assert re.search(r"\(using TLSv1\.[23] with cipher \S+ \(\d+/\d+ bits\)\)", rcvd), rcvd
    e = d.queue_entry(qid)
    assert e.get("auth_user") == "alice", e


# Failures are counted per client address across sessions: each test that fails on purpose
# in the shared daemon comes from an address of its own.

def test_swaks_wrong_password_535(tls_daemon):
    rc, out = swaks(tls_daemon.port, "--tls", "--auth", "PLAIN", "--auth-user", "alice",
                    "--auth-password", "wrong-" + PASSWORD, "--local-interface", "127.0.0.11")
    assert rc != 0
    assert re.search(r"<~\*? +535 5\.7\.8 ", out), out[-2000:]


def test_swaks_unknown_user_535(tls_daemon):
    rc, out = swaks(tls_daemon.port465, "--tlsc", "--auth", "CRAM-MD5", "--auth-user", "mallory",
                    "--auth-password", PASSWORD, "--local-interface", "127.0.0.12")
    assert rc != 0
    assert re.search(r"535 5\.7\.8 ", out), out[-2000:]


def test_no_auth_cannot_relay(tls_daemon):
    rc, out = swaks(tls_daemon.port, "--tls")
    assert rc != 0
    assert re.search(r"554 5\.7\.1 .*Relay access denied", out), out[-2000:]


def test_smtplib_starttls_login(tls_daemon, pki):
    content = message("smtplib-starttls")
    with smtplib.SMTP("127.0.0.1", tls_daemon.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=client_ctx(pki))     # verified against the test CA, for 127.0.0.1
        s.ehlo()
        assert not s.has_extn("starttls"), "STARTTLS offered again inside TLS"
        assert "PLAIN" in s.esmtp_features["auth"].split()
        s.login("alice", PASSWORD)
        s.mail("alice@clinic.test")
        code, msg = s.rcpt("pat@example.test")
        assert code == 250, (code, msg)
        code, msg = s.data(content)
        assert code == 250, (code, msg)
    rcvd, body = received_of(tls_daemon, queue_id(msg.decode()))
    assert "ESMTPSA" in rcvd
    check_stored(body, content)


def test_smtplib_implicit_tls_login(tls_daemon, pki):
    with smtplib.SMTP_SSL("127.0.0.1", tls_daemon.port465, local_hostname="client.test",
                          timeout=30, context=client_ctx(pki)) as s:
        s.login("alice", PASSWORD)
        r = s.sendmail("alice@clinic.test", ["pat@example.test"], message("smtplib-465"))
        assert r == {}


@pytest.mark.parametrize("variant", ["starttls-cacert", "implicit-k", "starttls-login"])
def test_curl(tls_daemon, pki, variant, tmp_path):
    content = message(f"curl-{variant}")
    path = tmp_path / "msg"
    path.write_bytes(content)
    if variant == "implicit-k":
        url, extra = f"smtps://127.0.0.1:{tls_daemon.port465}/client.test", ["-k"]
    else:
        url, extra = f"smtp://127.0.0.1:{tls_daemon.port}/client.test", \
            ["--ssl-reqd", "--cacert", pki["ca"]]
    if variant == "starttls-login":
        extra += ["--login-options", "AUTH=LOGIN"]
    args = [CURL, "-sS", "-v", "--max-time", "60", url, "--user", f"alice:{PASSWORD}",
            "--mail-from", "alice@clinic.test", "--mail-rcpt", "pat@example.test",
            "--upload-file", str(path)] + extra
    p = subprocess.run(args, capture_output=True, timeout=90)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, f"curl exited {p.returncode}\n{err[-3000:]}"
    assert re.search(r"< 235 2\.7\.0", err), err[-3000:]
    qid = queue_id(err)
    rcvd, body = received_of(tls_daemon, qid)
    assert "ESMTPSA" in rcvd and "using TLSv1." in rcvd, rcvd
    check_stored(body, content)


def test_curl_wrong_password(tls_daemon, pki, tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(message("curl-wrong"))
    p = subprocess.run([CURL, "-sS", "-v", "--max-time", "60",
                        f"smtp://127.0.0.1:{tls_daemon.port}/client.test", "--ssl-reqd",
                        "--cacert", pki["ca"], "--user", "alice:nope", "--interface", "127.0.0.13",
                        "--mail-from", "alice@clinic.test", "--mail-rcpt", "pat@example.test",
                        "--upload-file", str(path)], capture_output=True, timeout=90)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode != 0
    assert "< 535 5.7.8" in err, err[-3000:]


# ---------------------------------------------------------------------------------------------
# The AUTH and STARTTLS commands, byte by byte.

def test_auth_exchanges_and_errors(tls_daemon):
    d = tls_daemon
    with Client(d.port) as c:
        c.expect(220)
        c.cmd_expect("AUTH PLAIN", 503, "5.5.1")                   # before EHLO
        c.cmd_expect("STARTTLS now", 501, "5.5.4")                 # no arguments allowed
        _, kw = c.ehlo()
        # loopback listener, loopback peer: PLAIN and LOGIN may go in the clear
        assert set(kw["AUTH"]) == {"PLAIN", "LOGIN", "CRAM-MD5"}, kw
        c.cmd_expect("AUTH", 501, "5.5.4")
        c.cmd_expect("AUTH X-UNKNOWN", 504, "5.5.4")
        c.cmd_expect("AUTH PLAIN not*base64", 501, "5.5.2")
        c.cmd_expect("AUTH PLAIN", 334)                             # "334 " then the response
        c.cmd_expect("*", 501, "5.7.0")                             # cancelled
        c.cmd_expect("AUTH LOGIN", 334)
        r = c.cmd_expect(base64.b64encode(b"alice").decode(), 334)
        assert base64.b64decode(r.lines[-1][4:]).lower().startswith(b"password"), r
        c.cmd_expect("%%%", 501, "5.5.2")                           # bad base64 mid-exchange
        # CRAM-MD5 by hand: the challenge is base64, the answer "user hex(hmac)"
        r = c.cmd_expect("AUTH CRAM-MD5", 334)
        chal = base64.b64decode(r.lines[-1][4:])
        digest = hmac.new(PASSWORD.encode(), chal, hashlib.md5).hexdigest()
        c.cmd_expect(base64.b64encode(f"alice {digest}".encode()).decode(), 235, "2.7.0")
        c.cmd_expect("AUTH PLAIN " + base64.b64encode(b"\0alice\0x").decode(), 503, "5.5.1")
        _, kw = c.ehlo()
        assert "AUTH" not in kw, "AUTH offered after a successful AUTH"
        c.cmd_expect("MAIL FROM:<alice@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<pat@example.test>", 250)
        c.cmd("QUIT")


def test_auth_line_may_exceed_512(tls_daemon):
    d = tls_daemon
    with Client(d.port, source="127.0.0.14") as c:     # failures counted apart from the rest
        c.greet()
        long_user = "u" * 700                                        # 900+ octets of base64
        r = c.auth_plain(long_user, PASSWORD)
        assert r.code == 535 and r.enhanced == "5.7.8", r            # read whole, then refused
        c.cmd_expect("NOOP " + "x" * 600, 500, "5.5.2")              # other commands: 512
        c.cmd_expect("AUTH PLAIN =", 535, "5.7.8")                   # "=": an empty response
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("AUTH CRAM-MD5", 503, "5.5.1")                  # inside a transaction
        c.cmd("QUIT")


def test_auth_plain_only_after_tls_on_wildcard_listener(daemon_factory, pki):
    """A listener bound to a wildcard address is not a loopback listener, whoever connects: it
    offers PLAIN and LOGIN only inside TLS (CRAM-MD5 does not show the password)."""
    port = free_port()
    d = make_daemon(daemon_factory, extra=listener("any", port, addr="0.0.0.0",
                                                   trusted_networks=NOBODY_NET, **tls_keys(pki)))
    with Client(port, source="127.0.0.2") as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert "STARTTLS" in kw
        # CRAM-MD5 and SCRAM neither: a password-equivalent exchange in the clear invites
        # offline guessing (auth_plaintext_mechanisms may name them for a legacy client)
        assert "AUTH" not in kw, kw
        r = c.auth_plain("alice", PASSWORD)
        assert (r.code, r.enhanced) == (538, "5.7.11"), r
        c.cmd_expect("AUTH LOGIN", 538, "5.7.11")
        c.cmd_expect("AUTH CRAM-MD5", 538, "5.7.11")
        c.starttls()
        _, kw = c.ehlo()
        assert set(kw["AUTH"]) == {"PLAIN", "LOGIN", "CRAM-MD5"}, kw
        assert "STARTTLS" not in kw
        r = c.auth_plain("alice", PASSWORD)
        assert (r.code, r.enhanced) == (235, "2.7.0"), r
        c.cmd("QUIT")
    # the harness's own listener is on 127.0.0.1: the same peer may use PLAIN there in the clear
    with Client(d.port, source="127.0.0.2") as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert "PLAIN" in kw["AUTH"], kw
        c.cmd("QUIT")


def test_auth_plaintext_mechanisms(daemon_factory, pki):
    """auth_plaintext_mechanisms lets a legacy client on the LAN use CRAM-MD5 before TLS on a
    wildcard listener; PLAIN and LOGIN stay inside TLS whatever it says."""
    port = free_port()
    d = make_daemon(daemon_factory, extra=listener("any", port, addr="0.0.0.0",
                                                   trusted_networks=NOBODY_NET,
                                                   auth_plaintext_mechanisms="CRAM-MD5",
                                                   **tls_keys(pki)))
    with Client(port, source="127.0.0.2") as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert kw.get("AUTH") == ["CRAM-MD5"], kw
        c.cmd_expect("AUTH PLAIN", 538, "5.7.11")
        r = c.cmd_expect("AUTH CRAM-MD5", 334)
        chal = base64.b64decode(r.text)
        mac = hmac.new(PASSWORD.encode(), chal, "md5").hexdigest()
        c.cmd_expect(base64.b64encode(f"alice {mac}".encode()).decode(), 235)
        c.cmd("QUIT")
    assert d.running()


def test_cram_only_listener_waits_for_tls(daemon_factory, pki):
    """A wildcard listener offering only CRAM-MD5 offers nothing before STARTTLS (538 to
    AUTH), and CRAM-MD5 inside TLS."""
    port = free_port()
    make_daemon(daemon_factory, extra=listener("any", port, addr="0.0.0.0",
                                               trusted_networks=NOBODY_NET,
                                               auth_mechanisms="CRAM-MD5", **tls_keys(pki)))
    with Client(port, source="127.0.0.2") as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert "AUTH" not in kw, kw
        c.cmd_expect("AUTH CRAM-MD5", 538, "5.7.11")
        c.starttls()
        _, kw = c.ehlo()
        assert kw.get("AUTH") == ["CRAM-MD5"], kw
        c.cmd("QUIT")


def test_starttls_injection_is_discarded(tls_daemon):
    """RFC 3207 5: a command pipelined after STARTTLS in the same packet must never be answered
    as if it came over TLS."""
    d = tls_daemon
    with Client(d.port) as c:
        c.greet()
        c.send(b"STARTTLS\r\nRSET\r\n")
        c.expect(220, "2.0.0")
        assert c.buf == b"", f"more than the 220 before the handshake: {c.buf!r}"
        c.sock = client_ctx().wrap_socket(c.sock, server_hostname=HOSTNAME)
        c.send(b"EHLO client.test\r\n")
        r = c.read_reply()
        assert r.code == 250 and r.lines[0].startswith("250-" + HOSTNAME), \
            c.fail(f"the first reply inside TLS is not the EHLO's: {r!r}")
        assert c.pending(0.5) == b"", "an answer to the injected RSET arrived"
        c.cmd("QUIT")
    assert re.search(r"STARTTLS from \[127\.0\.0\.1\]: \d+ octets pipelined after STARTTLS "
                     r"discarded", d.log_text())


def test_starttls_resets_the_session(tls_daemon):
    d = tls_daemon
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("alice", PASSWORD).code == 235
        c.cmd_expect("MAIL FROM:<alice@clinic.test>", 250)
        c.cmd_expect("STARTTLS", 503, "5.5.1")                      # not inside a transaction
        c.cmd_expect("RSET", 250)
        c.starttls()
        c.cmd_expect("MAIL FROM:<alice@clinic.test>", 503, "5.5.1")  # HELO forgotten
        c.ehlo()
        c.cmd_expect("MAIL FROM:<alice@clinic.test>", 250)
        # authentication forgotten too: relaying needs it again
        c.cmd_expect("RCPT TO:<pat@example.test>", 554, "5.7.1")
        c.cmd_expect("STARTTLS", 503, "5.5.1")                      # TLS already active
        c.cmd("QUIT")


def test_starttls_not_offered_without_tls(daemon_factory):
    d = make_daemon(daemon_factory)
    with Client(d.port) as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert "STARTTLS" not in kw
        c.cmd_expect("STARTTLS", 502, "5.5.1")
        c.cmd("QUIT")


def test_implicit_tls_handshake_failure_closes(tls_daemon):
    d = tls_daemon
    with Client(d.port465) as c:
        c.send(b"EHLO client.test\r\n")            # plaintext to a TLS port
        assert c.wait_closed(10), "the server kept a failed handshake open"
        assert b"220" not in b"".join(data for way, data in c.log if way == "<")
    deadline = time.monotonic() + 5
    while "TLS handshake failed from [127.0.0.1]" not in d.log_text():
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Relay policy, auth = required, sender ownership.

def test_untrusted_peer_relays_only_after_auth(daemon_factory):
    d = make_daemon(daemon_factory, extra=main_keys(trusted_networks="127.0.0.1/32"))
    # from 127.0.0.1 (trusted): relays without AUTH
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.1", 0), timeout=30) as s:
        s.ehlo("client.test")
        s.mail("app@clinic.test")
        assert s.rcpt("pat@example.test")[0] == 250
    # from 127.0.0.2: no relaying without AUTH...
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.2", 0), timeout=30) as s:
        s.ehlo("client.test")
        s.mail("app@clinic.test")
        code, msg = s.rcpt("pat@example.test")
        assert (code, msg[:5]) == (554, b"5.7.1"), (code, msg)
    # ...and relaying after it
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("127.0.0.2", 0), timeout=30) as s:
        s.ehlo("client.test")
        s.login("alice", PASSWORD)
        s.mail("app@clinic.test")
        assert s.rcpt("pat@example.test")[0] == 250
        code, msg = s.data(message("from-127.0.0.2"))
        assert code == 250, (code, msg)
    qid = queue_id(msg.decode())
    e = d.queue_entry(qid)
    assert e["auth_user"] == "alice" and e["client_addr"] == "127.0.0.2", e
    # swaks too
    rc, out = swaks(d.port, "--local-interface", "127.0.0.2")
    assert rc != 0 and "554 5.7.1" in out, out[-2000:]
    rc, out = swaks(d.port, "--local-interface", "127.0.0.2", "--auth", "LOGIN", "--auth-user",
                    "alice", "--auth-password", PASSWORD)
    assert rc == 0 and queue_id(out), out[-2000:]


def test_auth_required_530(daemon_factory):
    d = make_daemon(daemon_factory, extra=main_keys(auth="required"))
    with Client(d.port) as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<app@clinic.test>", 530, "5.7.0")   # trusted, but not logged in
        assert c.auth_plain("alice", PASSWORD).code == 235
        c.cmd_expect("MAIL FROM:<app@clinic.test>", 250)
        c.cmd("QUIT")
    rc, out = swaks(d.port)
    assert rc != 0 and "530 5.7.0" in out, out[-2000:]


def test_auth_none_offers_no_auth(daemon_factory):
    d = make_daemon(daemon_factory, extra=main_keys(auth="none"))
    with Client(d.port) as c:
        c.expect(220)
        _, kw = c.ehlo()
        assert "AUTH" not in kw
        c.cmd_expect("AUTH PLAIN", 502, "5.5.1")
        c.cmd("QUIT")


def test_sender_restriction(tls_daemon):
    d = tls_daemon
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("restricted", PASSWORD).code == 235
        r = c.cmd_expect("MAIL FROM:<alice@clinic.test>", 553, "5.7.1")
        assert "not owned by user restricted" in r.text, r
        c.cmd_expect("MAIL FROM:<Owner@Clinic.Test>", 250)          # case does not matter
        c.cmd_expect("RSET", 250)
        c.cmd_expect("MAIL FROM:<anyone@app.clinic.test>", 250)     # "@domain"
        c.cmd_expect("RSET", 250)
        c.cmd_expect("MAIL FROM:<x@evil.app.clinic.test>", 553, "5.7.1")
        c.cmd_expect("MAIL FROM:<>", 553, "5.7.1")
        c.cmd("QUIT")
    # a user without a [user] section may use any sender
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("alice", PASSWORD).code == 235
        c.cmd_expect("MAIL FROM:<someone@elsewhere.test>", 250)
        c.cmd("QUIT")
    rc, out = swaks(d.port, "--tls", "--auth", "PLAIN", "--auth-user", "restricted",
                    "--auth-password", PASSWORD, sender="intruder@clinic.test")
    assert rc != 0 and "553 5.7.1" in out, out[-2000:]


# ---------------------------------------------------------------------------------------------
# Repeated failures: delayed, then cut off, and remembered across connections.

def test_repeated_failures_delay_then_close(daemon_factory):
    d = make_daemon(daemon_factory, postern={"max_auth_failures": "5", "auth_lockout": "4s"})
    src = "127.0.0.3"
    with Client(d.port, source=src, timeout=30) as c:
        c.greet()
        times = []
        for i in range(4):
            t = time.monotonic()
            r = c.auth_plain("alice", f"wrong{i}")
            times.append(time.monotonic() - t)
            assert (r.code, r.enhanced) == (535, "5.7.8"), r
        assert max(times[:3]) < 0.8, times              # typing errors are answered at once
        assert times[3] >= 0.9, times                   # the fourth waits 1 s
        t = time.monotonic()
        r = c.auth_plain("alice", "wrong4")
        assert time.monotonic() - t >= 1.8              # the fifth 2 s, then the end
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        assert c.wait_closed(5)
    # reconnecting does not start the count again: the client is locked out, and while it is
    # nothing it sends is checked: wrong or right, the answer is 454 at once
    with Client(d.port, source=src, timeout=30) as c:
        c.greet()
        t = time.monotonic()
        r = c.auth_plain("alice", "wrong5")
        assert time.monotonic() - t < 0.8
        assert (r.code, r.enhanced) == (454, "4.7.0"), r
        r = c.auth_plain("alice", PASSWORD)
        assert (r.code, r.enhanced) == (454, "4.7.0"), r
        c.cmd_expect("NOOP", 250)
    # another address is not punished
    with Client(d.port, source="127.0.0.4") as c:
        c.greet()
        t = time.monotonic()
        assert c.auth_plain("alice", "wrong").code == 535
        assert time.monotonic() - t < 0.8
    # once the lockout is over, the right password works for this one again
    time.sleep(4.5)
    with Client(d.port, source=src) as c:
        c.greet()
        assert c.auth_plain("alice", PASSWORD).code == 235
        c.cmd("QUIT")
    assert "too many authentication failures from [127.0.0.3]" in d.log_text()
    assert_no_secret(d, PASSWORD, "wrong4", base64.b64encode(b"\0alice\0wrong4").decode())


def daemon_cpu_seconds(d):
    """User plus system CPU time of the daemon's process so far (/proc/PID/stat)."""
    with open(f"/proc/{d.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_refusing_a_brute_force_keeps_the_cpu_low(daemon_factory):
    """While it refuses a brute force the daemon does little work per attempt: 300 connections
    over the client's connection_rate (421 4.7.0 at connect) and 150 sessions of a locked-out
    client each trying the right password (454 4.7.0, nothing checked). What is measured is the
    daemon's own CPU time (utime + stime from /proc, not a wall clock), against a bound far
    above what a refusal costs (tens of microseconds): a refusal that spun, slept in a busy
    loop, logged a line each time or checked the password would show."""
    d = make_daemon(daemon_factory, extra="limits_exempt = none\nconnection_rate = 170\n",
                    postern={"max_auth_failures": "2", "auth_lockout": "10m"})
    src = "127.0.0.5"
    for i in range(2):
        with Client(d.port, source=src) as c:
            c.greet()
            c.auth_plain("alice", f"wrong{i}")
    locked = refused = 0
    before = daemon_cpu_seconds(d)
    for _ in range(150):
        with Client(d.port, source=src) as c:
            c.greet()
            r = c.auth_plain("alice", PASSWORD)
            locked += (r.code, r.enhanced) == (454, "4.7.0")
    for _ in range(300):
        with socket.create_connection(("127.0.0.1", d.port), timeout=15,
                                      source_address=(src, 0)) as s:
            refused += s.recv(512).startswith(b"421 4.7.0")
    used = daemon_cpu_seconds(d) - before
    assert locked == 150 and refused >= 280, (locked, refused)
    assert used <= 450 * 0.004, f"{used:.2f} s of CPU for 450 refusals"
    assert d.log_text().count("refused on listener submission") <= 2
    assert_no_secret(d, PASSWORD)


# ---------------------------------------------------------------------------------------------
# SIGHUP: new connections get the new certificate, older ones keep working.

def test_sighup_reloads_certificate(daemon_factory, pki, tmp_path):
    cert, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(pki["a"]["cert"], cert)
    shutil.copy(pki["a"]["key"], key)
    os.chmod(key, 0o600)
    port465 = free_port()
    d = make_daemon(daemon_factory,
                    extra=main_keys(tls="starttls", tls_cert=cert, tls_key=key) +
                    listener("smtps", port465, tls="implicit", tls_cert=cert, tls_key=key))
    old = Client(d.port)
    old.greet()
    assert peer_fp(old.starttls()) == pki["a"]["fp"]
    old.ehlo()
    assert old.auth_plain("alice", PASSWORD).code == 235
    old_465 = Client(port465, implicit=client_ctx())
    assert peer_fp(old_465.sock) == pki["a"]["fp"]
    old_465.greet()
    waiting = Client(d.port)                     # connected before the reload, TLS after it
    waiting.greet()

    shutil.copy(pki["b"]["cert"], cert + ".new")
    shutil.copy(pki["b"]["key"], key + ".new")
    os.chmod(key + ".new", 0o600)
    os.replace(key + ".new", key)
    os.replace(cert + ".new", cert)
    n = d.log_text().count("reload -- configuration")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while d.log_text().count("reload -- configuration") <= n:
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)

    with Client(d.port) as c:
        c.greet()
        assert peer_fp(c.starttls(client_ctx(pki))) == pki["b"]["fp"]
        c.cmd("QUIT")
    with Client(port465, implicit=client_ctx(pki)) as c:
        assert peer_fp(c.sock) == pki["b"]["fp"]
        c.greet()
        c.cmd("QUIT")
    # sessions that started before carry on, with what they had
    content = message("after-reload")
    r = old.send_message("alice@clinic.test", ["pat@example.test"], content)
    assert r.code == 250, r
    old.cmd("QUIT")
    old.close()
    old_465.cmd_expect("NOOP", 250)
    old_465.cmd("QUIT")
    old_465.close()
    waiting.starttls()
    waiting.ehlo()
    waiting.cmd("QUIT")
    waiting.close()
    check_stored(d.queue_cat(queue_id(r.lines[-1])), content)


def test_sighup_with_broken_certificate_keeps_the_old(daemon_factory, pki, tmp_path):
    cert, key = str(tmp_path / "live.pem"), str(tmp_path / "live.key")
    shutil.copy(pki["a"]["cert"], cert)
    shutil.copy(pki["a"]["key"], key)
    os.chmod(key, 0o600)
    d = make_daemon(daemon_factory, extra=main_keys(tls="starttls", tls_cert=cert, tls_key=key))
    shutil.copy(pki["b"]["key"], key)                # the key no longer matches the certificate
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "keeping the running configuration" not in d.log_text():
        assert time.monotonic() < deadline, d.log_tail()
        time.sleep(0.05)
    assert "does not match certificate" in d.log_text()
    with Client(d.port) as c:
        c.greet()
        assert peer_fp(c.starttls()) == pki["a"]["fp"]
        c.cmd("QUIT")


# ---------------------------------------------------------------------------------------------
# postern -n and start-up refusals.

def check_config(tmp_path, body):
    need_binary(POSTERN)
    conf = tmp_path / "check.conf"
    conf.write_text(body)
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, timeout=30)
    return p.returncode, p.stderr.decode("utf-8", "replace"), str(conf)


def test_check_reports_missing_certificate(tmp_path, pki):
    body = (f"[postern]\ndata_dir = {tmp_path}/data\n\n[listener submission]\n"
            f"address = 127.0.0.1:{free_port()}\ntls = starttls\n"
            f"tls_cert = {tmp_path}/missing.pem\ntls_key = {pki['a']['key']}\n")
    rc, err, conf = check_config(tmp_path, body)
    assert rc == 1, err
    assert re.search(rf"^{re.escape(conf)}:4: listener submission: .*{re.escape(str(tmp_path))}"
                     r"/missing\.pem.*No such file", err, re.M), err


def test_check_reports_tls_problems(tmp_path, pki):
    base = (f"[postern]\ndata_dir = {tmp_path}/data\n\n[listener submission]\n"
            f"address = 127.0.0.1:{free_port()}\n")
    rc, err, conf = check_config(tmp_path, base + "tls = implicit\n")
    assert rc == 1 and re.search(rf"^{re.escape(conf)}:4: .*needs tls_cert and tls_key", err, re.M), err
    rc, err, conf = check_config(tmp_path, base + f"tls = starttls\ntls_cert = {pki['a']['cert']}\n"
                                 f"tls_key = {pki['b']['key']}\n")
    assert rc == 1 and re.search(rf"^{re.escape(conf)}:4: .*does not match", err, re.M), err
    loose = str(tmp_path / "loose.key")
    shutil.copy(pki["a"]["key"], loose)
    os.chmod(loose, 0o644)
    rc, err, conf = check_config(tmp_path, base + f"tls = starttls\ntls_cert = {pki['a']['cert']}\n"
                                 f"tls_key = {loose}\n")
    assert rc == 1 and re.search(rf"^{re.escape(conf)}:4: .*tls_key .* may be read .* by others",
                                 err, re.M), err
    rc, err, conf = check_config(tmp_path, base + f"tls = starttls\ntls_cert = {pki['a']['cert']}\n"
                                 f"tls_key = {pki['a']['key']}\n")
    assert rc == 0, err


def start_refused(d):
    """Runs the daemon of d, which must refuse to start; returns what it said."""
    p = subprocess.run([POSTERN, "-f", "-c", d.conf], capture_output=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    out = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, f"postern exited {p.returncode}\n{out[-2000:]}"
    return out


def test_refuses_data_dir_writable_by_others(daemon_factory):
    d = daemon_factory(start=False)
    os.chmod(d.data_dir, 0o777)
    assert "writable by others" in start_refused(d)


def test_refuses_sasldb_readable_by_others(daemon_factory):
    d = daemon_factory(start=False)
    ctl_user(d.conf, "add", "alice", password=PASSWORD)
    os.chmod(os.path.join(d.data_dir, "sasldb2"), 0o644)
    assert "chmod 600" in start_refused(d)


# ---------------------------------------------------------------------------------------------
# Running as root: binding, then becoming `user`.

def test_drops_root_to_user(daemon_factory, pki):
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon must start as root to drop to another user")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this system")
    # data_dir must be reachable by nobody: not under pytest's 0700 temporary directory
    base = tempfile.mkdtemp(prefix="postern-priv-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        data = os.path.join(base, "data")
        port465 = free_port()
        d = daemon_factory(postern={"user": "nobody"}, start=False, data_dir=data,
                           extra=listener("smtps", port465, tls="implicit",
                                          tls_cert=pki["a"]["cert"], tls_key=pki["a"]["key"]))
        shutil.rmtree(data)                   # posternctl makes it, as the daemon would
        ctl_user(d.conf, "add", "alice", password=PASSWORD)
        sasldb = os.path.join(data, "sasldb2")
        assert os.stat(sasldb).st_uid == nobody.pw_uid, "posternctl did not give the sasldb away"
        assert stat.S_IMODE(os.stat(sasldb).st_mode) == 0o600
        d.start()
        with open(f"/proc/{d.proc.pid}/status") as f:
            status = f.read()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        assert uids == [str(nobody.pw_uid)] * 4, status
        assert gids == [str(nobody.pw_gid)] * 4, status
        assert os.stat(data).st_uid == nobody.pw_uid
        assert stat.S_IMODE(os.stat(data).st_mode) & 0o002 == 0
        # the key was read before dropping root; AUTH reads the sasldb as nobody
        with smtplib.SMTP_SSL("127.0.0.1", port465, context=client_ctx(pki), timeout=30) as s:
            s.login("alice", PASSWORD)
            assert s.sendmail("alice@clinic.test", ["pat@example.test"], message("nobody")) == {}
        assert os.stat(os.path.join(data, "postern.db")).st_uid == nobody.pw_uid
        d.stop_and_check()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# posternctl user.

def test_posternctl_user_commands(daemon_factory):
    d = make_daemon(daemon_factory, users=(),
                    extra="\n[user app@clinic.test]\nsenders = *@clinic.test\n")
    p = ctl_user(d.conf, "list", "--json")
    assert json.loads(p.stdout) == []
    ctl_user(d.conf, "add", "alice", password="first")
    ctl_user(d.conf, "add", "app@clinic.test", password=PASSWORD)
    sasldb = os.path.join(d.data_dir, "sasldb2")
    assert stat.S_IMODE(os.stat(sasldb).st_mode) == 0o600
    users = {u["name"]: u for u in json.loads(ctl_user(d.conf, "list", "--json").stdout)}
    assert set(users) == {"alice", "app@clinic.test"}, users
    assert users["app@clinic.test"]["senders"] == ["*@clinic.test"]
    assert users["alice"]["senders"] is None
    text = ctl_user(d.conf, "list").stdout.decode()
    assert re.search(r"^alice$", text, re.M) and "app@clinic.test" in text, text
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("alice", "first").code == 235
        c.cmd("QUIT")
    # a new password replaces the old one at once, the daemon still running
    ctl_user(d.conf, "add", "alice", password=PASSWORD)
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("alice", "first").code == 535
        assert c.auth_plain("alice", PASSWORD).code == 235
        c.cmd("QUIT")
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("app@clinic.test", PASSWORD).code == 235
        c.cmd_expect("MAIL FROM:<x@other.test>", 553, "5.7.1")
        c.cmd("QUIT")
    ctl_user(d.conf, "delete", "alice")
    with Client(d.port) as c:
        c.greet()
        assert c.auth_plain("alice", PASSWORD).code == 535
        c.cmd("QUIT")
    p = ctl_user(d.conf, "delete", "alice", check=False)
    assert p.returncode == 1 and b"no user alice" in p.stderr, p
    assert [u["name"] for u in json.loads(ctl_user(d.conf, "list", "--json").stdout)] == \
        ["app@clinic.test"]


def test_posternctl_user_refuses_password_argument_and_empty(daemon_factory):
    d = daemon_factory(start=False)
    p = ctl_user(d.conf, "add", "alice", "hunter2", check=False)
    assert p.returncode == 64 and b"standard input" in p.stderr, p
    p = ctl_user(d.conf, "add", "alice", password="", check=False)
    assert p.returncode != 0 and b"empty password" in p.stderr, p
    p = ctl_user(d.conf, "add", check=False)
    assert p.returncode == 64, p
    assert not os.path.exists(os.path.join(d.data_dir, "sasldb2"))
