# The inbound path with real peers on loopback: swaks to a role = mx listener (our domains only,
# SPF from a hermetic libspf2 zone), curl posting SendGrid Inbound Parse requests in both modes,
# signed Event Webhook batches (SendGrid's published vector and keys made with openssl), Twilio
# SMS signatures, and a daemon killed in the middle of a burst of webhook posts.
import base64
import hashlib
import hmac
import json
import os
import signal
import shutil
import sqlite3
import smtplib
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import free_port, secret_file

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
CURL = shutil.which("curl") or "/usr/bin/curl"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

# SendGrid's published Event Webhook test vector (the one its libraries test against)
SG_KEY = ("MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBcepxo7"
          "yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA==")
SG_SIG = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0="
SG_TS = "1588788367"
SG_BODY = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'

ZONE = """\
pass.test TXT v=spf1 ip4:192.0.2.10 -all
fail.test TXT v=spf1 ip4:198.51.100.1 -all
soft.test TXT v=spf1 ~all
temp.test TEMPFAIL
client.test TXT v=spf1 ip4:192.0.2.10 -all
"""


def db_rows(d, sql, args=()):
    con = sqlite3.connect(f"file:{d.data_dir}/postern.db?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def inbound(d, **where):
    rows = db_rows(d, "SELECT * FROM inbound_messages ORDER BY received_ms, id")
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


@pytest.fixture
def spf_env(tmp_path, monkeypatch):
    zone = tmp_path / "spf.zone"
    zone.write_text(ZONE)
    monkeypatch.setenv("POSTERN_SPF_ZONE_FILE", str(zone))
    monkeypatch.setenv("POSTERN_SPF_TEST_CLIENT_IP", "192.0.2.10")


def mx_daemon(daemon_factory, spf="tag", extra=""):
    port = free_port()
    d = daemon_factory(extra=f"\n[listener mx]\naddress = 127.0.0.1:{port}\nrole = mx\n\n"
                             f"[inbound]\ndomains = reply.test, other-reply.test\nspf = {spf}\n" + extra)
    d.mx_port = port
    return d


def swaks(port, sender, rcpt, helo="client.test", body="Subject: hi\n\nhello\n"):
    p = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(port), "--helo", helo,
                        "--from", sender, "--to", rcpt, "--body", body, "--timeout", "30"],
                       capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# The MX listener.

def test_mx_accepts_our_domain_with_spf_tag(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory)
    rc, out = swaks(d.mx_port, "alice@pass.test", "bob@Reply.Test")
    assert rc == 0, out
    assert "AUTH" not in out.split("EHLO", 1)[1].split("MAIL FROM", 1)[0]
    rows = inbound(d, source="mx")
    assert len(rows) == 1
    r = rows[0]
    assert r["envelope_from"] == "alice@pass.test"
    assert r["envelope_to"] == "bob@Reply.Test"
    assert r["helo"] == "client.test"
    assert r["client_addr"] == "127.0.0.1"
    assert r["spf"] == "pass"
    body = db_rows(d, "SELECT body FROM inbound_messages WHERE id = ?", (r["id"],))[0]["body"]
    assert body.startswith(b"Received-SPF: pass (relay.test.example: domain of \"pass.test\" designates 192.0.2.10")
    assert b"identity=mailfrom" in body.split(b"\r\n\r\n")[0]
    assert b"\r\nReceived: " in body
    assert hashlib.sha256(body).hexdigest() == r["body_sha256"]
    # the submission queue is untouched: inbound mail is not relayed
    assert d.queue_list() == []
    # posternctl shows what was received
    (j,) = json.loads(d.ctl("inbound", "list", "--json").stdout)
    assert j["id"] == r["id"] and j["source"] == "mx" and j["spf"] == "pass"
    assert j["envelope_from"] == "alice@pass.test" and j["envelope_to"] == ["bob@Reply.Test"]
    assert j["size"] == len(body) and j["body_sha256"] == r["body_sha256"]
    text = d.ctl("inbound", "list").stdout.decode()
    assert r["id"] in text and "alice@pass.test -> bob@Reply.Test  spf=pass" in text


def test_mx_refuses_other_domains(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory)
    rc, out = swaks(d.mx_port, "alice@pass.test", "bob@elsewhere.test")
    assert rc != 0
    assert "550 5.7.1" in out and "Relaying denied" in out
    assert inbound(d) == []


def test_mx_spf_fail_tagged_not_refused(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory, spf="tag")
    rc, out = swaks(d.mx_port, "mallory@fail.test", "bob@reply.test")
    assert rc == 0, out
    (r,) = inbound(d)
    assert r["spf"] == "fail"


def test_mx_spf_reject(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory, spf="reject")
    rc, out = swaks(d.mx_port, "mallory@fail.test", "bob@reply.test")
    assert rc != 0
    assert "550 5.7.23" in out
    rc, out = swaks(d.mx_port, "x@temp.test", "bob@reply.test")
    assert rc != 0
    assert "451 4.7.24" in out
    assert inbound(d) == []
    rc, out = swaks(d.mx_port, "alice@pass.test", "bob@reply.test")
    assert rc == 0, out
    rc, out = swaks(d.mx_port, "carol@soft.test", "bob@reply.test")
    assert rc == 0, out
    assert [r["spf"] for r in inbound(d)] == ["pass", "softfail"]


def test_mx_null_sender_checks_helo(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory, spf="reject")
    rc, out = swaks(d.mx_port, "<>", "bob@reply.test", helo="client.test")
    assert rc == 0, out
    (r,) = inbound(d)
    assert r["envelope_from"] == "" and r["spf"] == "pass"
    body = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
    assert b"identity=helo" in body.split(b"\r\n\r\n")[0]


def test_mx_spf_off(daemon_factory, spf_env):
    d = mx_daemon(daemon_factory, spf="off")
    rc, out = swaks(d.mx_port, "mallory@fail.test", "bob@reply.test")
    assert rc == 0, out
    (r,) = inbound(d)
    assert r["spf"] is None
    body = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
    assert not body.startswith(b"Received-SPF:")


def test_mx_forged_authentication_results_removed_without_dmarc(daemon_factory, spf_env):
    """With dmarc = off no verdict of ours goes on, yet a field claiming our authserv-id is
    still taken out (RFC 8601 5): a reader further on would take it for ours. Others stay."""
    d = mx_daemon(daemon_factory, spf="off", extra="dmarc = off\n")
    body = (b"Authentication-Results: relay.test.example; dkim=pass header.d=fail.test\r\n"
            b"Authentication-Results: mx.other.example; spf=pass\r\n"
            b"authentication-results : (c) RELAY.TEST.EXAMPLE;\r\n dmarc=pass\r\n"
            b"Subject: forged\r\n\r\nhello\r\n")
    with smtplib.SMTP("127.0.0.1", d.mx_port, timeout=30) as s:
        s.ehlo("client.test")
        s.sendmail("mallory@fail.test", ["bob@reply.test"], body)
    (r,) = inbound(d)
    stored = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
    head = stored.split(b"\r\n\r\n")[0]
    assert b"relay.test.example;" not in head.lower() and b"dmarc=pass" not in head, head
    assert b"Authentication-Results: mx.other.example; spf=pass\r\n" in head
    assert stored.startswith(b"Received: ") and stored.endswith(b"\r\nSubject: forged\r\n\r\nhello\r\n")
    assert "removed 2 Authentication-Results fields" in d.log_text()


def mx_tls_daemon(daemon_factory, tmp_path, listener_extra=""):
    """An mx listener with STARTTLS (a fresh self-signed certificate): (daemon, port, client
    context that takes that certificate)."""
    import ssl
    cert, key = tmp_path / "mx.pem", tmp_path / "mx.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
                    "-subj", "/CN=relay.test.example"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    port = free_port()
    d = daemon_factory(extra=f"\n[listener mx]\naddress = 127.0.0.1:{port}\nrole = mx\n"
                             f"tls = starttls\ntls_cert = {cert}\ntls_key = {key}\n{listener_extra}\n"
                             "[inbound]\ndomains = reply.test\n")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return d, port, ctx


def test_mx_starttls_without_auth(daemon_factory, spf_env, tmp_path):
    # auth = optional is the listener default: an MX offers no AUTH whatever it says
    d, port, ctx = mx_tls_daemon(daemon_factory, tmp_path)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=ctx)
        s.ehlo()
        assert not s.has_extn("auth")
        s.sendmail("alice@pass.test", ["bob@reply.test"], b"Subject: tls\r\n\r\nover TLS\r\n")
    (r,) = inbound(d)
    assert r["spf"] == "pass"
    body = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
    assert b"TLS" in body.split(b"\r\n\r\n")[0]


def test_mx_starttls_after_helo_timeout(daemon_factory, spf_env, tmp_path):
    """STARTTLS starts the session over (RFC 3207 4.2), and its new EHLO gets a helo_timeout of
    its own: a client that said EHLO in time, then took longer than helo_timeout before
    STARTTLS, is not cut off at once after the handshake."""
    d, port, ctx = mx_tls_daemon(daemon_factory, tmp_path, "helo_timeout = 2s\n")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as s:
        s.ehlo()
        time.sleep(3)
        s.starttls(context=ctx)
        assert s.ehlo()[0] == 250
        s.sendmail("alice@pass.test", ["bob@reply.test"], b"Subject: tls\r\n\r\nlate TLS\r\n")
    (r,) = inbound(d)
    assert "timeout after" not in d.log_text()


def test_mx_needs_domains(tmp_path):
    from conftest import POSTERN, render_config
    conf = tmp_path / "p.conf"
    conf.write_text(render_config(free_port(), str(tmp_path / "data")) +
                    f"\n[listener mx]\naddress = 127.0.0.1:{free_port()}\nrole = mx\n")
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True)
    assert p.returncode == 1
    assert b"needs [inbound] domains" in p.stderr


# ---------------------------------------------------------------------------------------------
# The HTTP listener.

def secret(tmp_path, name, value):
    return secret_file(tmp_path / name, value)


def http_daemon(daemon_factory, tmp_path, settings=""):
    port = free_port()
    d = daemon_factory(extra=f"\n[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{port}\n"
                             + settings)
    d.http = f"http://127.0.0.1:{port}"
    wait_http(d)
    return d


def wait_http(d, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(d.http + "/healthz", timeout=5) as r:
                assert r.status == 200 and r.read() == b"ok\n"
                return
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise


def post(url, body, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
CSV = b"id,name\n1,Alice\n2,Bob\n"
ENVELOPE = json.dumps({"to": ["reply+abc@reply.test"], "from": "pat@example.test"})


def parse_files(tmp_path):
    paths = {}
    for name, data in (("report.pdf", PDF), ("list.csv", CSV), ("logo.png", PNG)):
        p = tmp_path / name
        p.write_bytes(data)
        paths[name] = str(p)
    return paths


def curl_parse(d, fields, files=(), user=None, password=None):
    args = [CURL, "-sS", "-o", "/dev/stdout", "-w", "\n%{http_code}", "--max-time", "30"]
    for k, v in fields:
        args += ["--form-string", f"{k}={v}"]
    for k, path, ctype in files:
        args += ["-F", f"{k}=@{path};type={ctype}"]
    if user is not None:
        args += ["-u", f"{user}:{password}"]
    args.append(d.http + "/emailInbound")
    p = subprocess.run(args, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text, code = p.stdout.rsplit(b"\n", 1)
    return int(code), text


def parsed_fields(attachments=3):
    return [
        ("headers", "From: Pat <pat@example.test>\nTo: reply+abc@reply.test\nSubject: Re: results\n"),
        ("dkim", "{@example.test : pass}"),
        ("content-ids", json.dumps({"ii_logo": "attachment3"})),
        ("to", "reply+abc@reply.test"),
        ("from", "Pat <pat@example.test>"),
        ("cc", ""),
        ("subject", "Re: results"),
        ("text", "Thanks, see attached.\n\n> original\n"),
        ("html", '<p>Thanks, see attached.</p><img src="cid:ii_logo">'),
        ("sender_ip", "203.0.113.7"),
        ("spam_report", "Spam detection software... 0.0"),
        ("spam_score", "0.0"),
        ("envelope", ENVELOPE),
        ("attachments", str(attachments)),
        ("attachment-info", json.dumps({
            "attachment1": {"filename": "report.pdf", "name": "report.pdf", "type": "application/pdf"},
            "attachment2": {"filename": "list.csv", "name": "list.csv", "type": "text/csv"},
            "attachment3": {"filename": "logo.png", "name": "logo.png", "type": "image/png",
                            "content-id": "ii_logo"}})),
        ("charsets", json.dumps({"to": "UTF-8", "subject": "UTF-8", "text": "utf-8", "html": "utf-8"})),
        ("SPF", "pass"),
    ]


def raw_email():
    b64 = lambda b: base64.encodebytes(b).decode()
    return ("From: Pat <pat@example.test>\r\nTo: reply+abc@reply.test\r\nSubject: Re: results\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
            "--outer\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
            "--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            "<p>Thanks</p><img src=\"cid:ii_logo\">\r\n"
            "--rel\r\nContent-Type: image/png\r\nContent-ID: <ii_logo>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + b64(PNG) + "--rel--\r\n"
            "--outer\r\nContent-Type: application/pdf; name=report.pdf\r\nContent-Disposition: attachment; filename=report.pdf\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64(PDF) +
            "--outer\r\nContent-Type: text/csv; name=list.csv\r\nContent-Disposition: attachment; filename=list.csv\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n" + b64(CSV) + "--outer--\r\n")


def test_inbound_parse_both_modes(daemon_factory, tmp_path):
    pw = secret(tmp_path, "inbound.secret", "s3cret-Parse")
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_user = sendgrid\nhttp_password_file = {pw}\n")
    files = parse_files(tmp_path)
    attach = [("attachment1", files["report.pdf"], "application/pdf"),
              ("attachment2", files["list.csv"], "text/csv"),
              ("attachment3", files["logo.png"], "image/png")]

    # without credentials, or with wrong ones: 401 and nothing stored
    code, _ = curl_parse(d, parsed_fields(), attach)
    assert code == 401
    code, _ = curl_parse(d, parsed_fields(), attach, "sendgrid", "wrong")
    assert code == 401
    code, _ = curl_parse(d, parsed_fields(), attach, "other", "s3cret-Parse")
    assert code == 401
    assert inbound(d) == []

    # the parsed form
    code, text = curl_parse(d, parsed_fields(), attach, "sendgrid", "s3cret-Parse")
    assert code == 200, text
    (r,) = inbound(d)
    assert r["source"] == "inbound-parse"
    assert r["envelope_from"] == "pat@example.test"
    assert r["envelope_to"] == "reply+abc@reply.test"
    assert r["spf"] == "pass"
    assert r["client_addr"] == "203.0.113.7"
    assert r["content_type"].startswith("multipart/form-data; boundary=")
    body = db_rows(d, "SELECT body FROM inbound_messages")[0]["body"]
    assert PDF in body and CSV in body and PNG in body and b"cid:ii_logo" in body
    assert hashlib.sha256(body).hexdigest() == r["body_sha256"]

    # the raw mode: the full MIME message in the email field
    fields = [("dkim", "{@example.test : pass}"), ("email", raw_email()),
              ("to", "reply+abc@reply.test"), ("from", "Pat <pat@example.test>"),
              ("subject", "Re: results"), ("sender_ip", "203.0.113.8"), ("spam_score", "0.0"),
              ("envelope", ENVELOPE), ("charsets", json.dumps({"to": "UTF-8"})), ("SPF", "softfail")]
    code, text = curl_parse(d, fields, (), "sendgrid", "s3cret-Parse")
    assert code == 200, text
    rows = inbound(d)
    assert len(rows) == 2
    r = rows[1]
    assert r["spf"] == "softfail" and r["client_addr"] == "203.0.113.8"
    body = db_rows(d, "SELECT body FROM inbound_messages WHERE id = ?", (r["id"],))[0]["body"]
    assert raw_email().encode() in body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") or \
        raw_email().encode() in body


def test_sighup_reloads_http_credentials(daemon_factory, tmp_path):
    """A new http_password_file takes effect on SIGHUP, without a restart."""
    pw = secret(tmp_path, "inbound.secret", "first-Secret")
    d = http_daemon(daemon_factory, tmp_path, f"http_user = sendgrid\nhttp_password_file = {pw}\n")
    fields = [("email", raw_email()), ("envelope", ENVELOPE)]
    code, _ = curl_parse(d, fields, (), "sendgrid", "first-Secret")
    assert code == 200
    secret(tmp_path, "inbound.secret", "second-Secret")
    pid = d.proc.pid
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while curl_parse(d, fields, (), "sendgrid", "first-Secret")[0] != 401:
        assert time.monotonic() < deadline, "old password still accepted 10 s after SIGHUP"
        time.sleep(0.2)
    fields = [("email", raw_email().replace("Re: results", "Re: results, again")),
              ("envelope", ENVELOPE)]
    code, _ = curl_parse(d, fields, (), "sendgrid", "second-Secret")
    assert code == 200
    assert d.running() and d.proc.pid == pid
    assert len(inbound(d)) == 2


def test_inbound_parse_malformed(daemon_factory, tmp_path):
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\n")
    files = parse_files(tmp_path)
    # no email and no headers field
    code, text = curl_parse(d, [("subject", "x")])
    assert code == 400 and b"email" in text
    # attachments says 3, one file posted
    code, text = curl_parse(d, parsed_fields(3), [("attachment1", files["report.pdf"], "application/pdf")])
    assert code == 400 and b"attachments" in text
    # an envelope that is not JSON
    fields = [f if f[0] != "envelope" else ("envelope", "{not json") for f in parsed_fields(0)]
    code, text = curl_parse(d, fields)
    assert code == 400 and b"envelope" in text
    # not a form at all
    code, _, text = post(d.http + "/emailInbound", b"hello", {"Content-Type": "text/plain"})
    assert code == 400
    # wrong method, unknown path
    code, _, _ = post(d.http + "/nope", b"x")
    assert code == 404
    req = urllib.request.Request(d.http + "/emailInbound")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    assert inbound(d) == []
    wait_http(d)


def test_inbound_parse_size_cap(daemon_factory, tmp_path):
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\nmax_http_size = 4K\n")
    fields = parsed_fields(0) + [("text", "x" * 8000)]
    code, _ = curl_parse(d, fields)
    assert code == 413
    # chunked, with no Content-Length to refuse up front: cut while streaming
    p = subprocess.run([CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                        "--form-string", "headers=" + "y" * 10000, d.http + "/emailInbound"],
                       capture_output=True, timeout=60)
    assert p.stdout == b"413", p
    assert inbound(d) == []
    code, _ = curl_parse(d, parsed_fields(0))
    assert code == 200


# ---------------------------------------------------------------------------------------------
# The Event Webhook.

def events(d):
    return db_rows(d, "SELECT * FROM inbound_events ORDER BY event_key")


def test_events_published_vector(daemon_factory, tmp_path):
    key = tmp_path / "sg.key"
    key.write_text(SG_KEY + "\n")
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_auth = none\nevent_public_key_file = {key}\nevent_max_age = 0\n")
    hdr = {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Signature": SG_SIG,
           "X-Twilio-Email-Event-Webhook-Timestamp": SG_TS}
    code, _, text = post(d.http + "/events", SG_BODY, hdr)
    assert code == 200, text
    (e,) = events(d)
    assert e["event"] == "test_event" and e["event_key"].startswith("sha256:")
    # replayed: stored once
    code, _, text = post(d.http + "/events", SG_BODY, hdr)
    assert code == 200, text
    assert len(events(d)) == 1
    tampered = SG_BODY.replace(b"test_event", b"test_evenT")
    code, _, _ = post(d.http + "/events", tampered, hdr)
    assert code == 403
    code, _, _ = post(d.http + "/events", SG_BODY, dict(hdr, **{"X-Twilio-Email-Event-Webhook-Timestamp": "1588788368"}))
    assert code == 403
    code, _, _ = post(d.http + "/events", SG_BODY, {"Content-Type": "application/json"})
    assert code == 403
    assert len(events(d)) == 1


def make_key(tmp_path):
    priv = tmp_path / "ec.pem"
    pub = tmp_path / "ec.pub.pem"
    subprocess.run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(priv)], check=True)
    subprocess.run([OPENSSL, "ec", "-in", str(priv), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True)
    return priv, pub


def sign(priv, ts, body):
    p = subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", str(priv)], input=ts.encode() + body,
                       capture_output=True, check=True)
    return base64.b64encode(p.stdout).decode()


def batch(*ids):
    return json.dumps([{"email": "pat@example.test", "event": "delivered", "sg_event_id": i,
                        "sg_message_id": "msg1.filter0001", "timestamp": 1700000000} for i in ids]).encode()


def test_events_openssl_keys(daemon_factory, tmp_path):
    priv, pub = make_key(tmp_path)
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_auth = none\nevent_public_key_file = {pub}\nevent_max_age = 10m\n")

    def send(body, ts=None, sig=None):
        ts = ts or str(int(time.time()))
        sig = sig or sign(priv, ts, body)
        return post(d.http + "/events", body, {"Content-Type": "application/json",
                                               "X-Twilio-Email-Event-Webhook-Signature": sig,
                                               "X-Twilio-Email-Event-Webhook-Timestamp": ts})[0]

    body = batch("ev-1", "ev-2", "ev-3")
    assert send(body) == 200
    assert [e["event_key"] for e in events(d)] == ["ev-1", "ev-2", "ev-3"]
    # a replayed batch (SendGrid retries) stores nothing twice
    assert send(body) == 200
    assert send(batch("ev-3", "ev-4")) == 200
    assert [e["event_key"] for e in events(d)] == ["ev-1", "ev-2", "ev-3", "ev-4"]
    e = events(d)[0]
    assert e["event"] == "delivered" and e["sg_message_id"] == "msg1.filter0001"
    assert json.loads(e["payload"])["email"] == "pat@example.test"
    # tampered body, stale or future timestamp, garbage signature
    ts = str(int(time.time()))
    assert send(batch("ev-9"), ts, sign(priv, ts, batch("ev-8"))) == 403
    old = str(int(time.time()) - 3600)
    assert send(batch("ev-9"), old) == 403
    assert send(batch("ev-9"), str(int(time.time()) + 3600)) == 403
    assert send(batch("ev-9"), sig="!!!") == 403
    # signed but not a batch of events
    assert send(b'"not events"') == 400
    assert send(b"[1,2]") == 400
    assert len(events(d)) == 4


# ---------------------------------------------------------------------------------------------
# Twilio SMS.

def twilio_sig(token, url, params):
    data = url + "".join(k + v for k, v in sorted(params.items()))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_twilio_published_vector():
    # the same vector as tests/unit/test_inbound.c, through this file's helper
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert twilio_sig("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == \
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_sms(daemon_factory, tmp_path):
    tok = secret(tmp_path, "twilio.token", "tw-token-123")
    d = http_daemon(daemon_factory, tmp_path,
                    f"http_auth = none\ntwilio_auth_token_file = {tok}\n"
                    "public_url = https://relay.test.example/hooks/\n")
    params = {"MessageSid": "SM0123456789", "From": "+14158675309", "To": "+18005551212",
              "Body": "Yes, Tuesday works & thanks!", "NumMedia": "0", "Empty": ""}
    body = urllib.parse.urlencode(params).encode()
    sig = twilio_sig("tw-token-123", "https://relay.test.example/hooks/sms", params)
    hdr = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig}
    code, ctype, text = post(d.http + "/sms", body, hdr)
    assert code == 200, text
    assert ctype.startswith("text/xml") and text.endswith(b"<Response/>")
    (r,) = inbound(d, source="sms")
    assert r["envelope_from"] == "+14158675309" and r["envelope_to"] == "+18005551212"
    assert r["external_id"] == "SM0123456789"
    assert db_rows(d, "SELECT body FROM inbound_messages")[0]["body"] == body
    # Twilio retries: the same MessageSid is stored once
    code, _, _ = post(d.http + "/sms", body, hdr)
    assert code == 200
    assert len(inbound(d)) == 1
    # a wrong signature, a changed parameter, no signature
    code, _, _ = post(d.http + "/sms", body, dict(hdr, **{"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="}))
    assert code == 403
    code, _, _ = post(d.http + "/sms", body.replace(b"Tuesday", b"Monday"), hdr)
    assert code == 403
    code, _, _ = post(d.http + "/sms", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert code == 403
    assert len(inbound(d)) == 1


# ---------------------------------------------------------------------------------------------
# Durability: a 200 means committed.

def test_kill_during_webhook_burst(daemon_factory, tmp_path):
    # unsigned, unauthenticated events (said so explicitly): the test is about durability
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\nevents_auth = basic\n")
    acked, lock = [], threading.Lock()
    stop = threading.Event()

    def worker(w):
        for i in range(63):
            if stop.is_set():
                return
            key = f"burst-{w}-{i}"
            try:
                code, _, _ = post(d.http + "/events", batch(key), {"Content-Type": "application/json"},
                                  timeout=10)
            except (OSError, urllib.error.URLError):
                continue
            if code == 200:
                with lock:
                    acked.append(key)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]   # 504 posts
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.005)
    d.kill()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 150
    stored = {e["event_key"] for e in events(d)}
    lost = [k for k in acked if k not in stored]
    assert not lost, f"{len(lost)} acknowledged events lost: {lost[:5]}"
    # the store is sound and the daemon comes back
    d.start(wait=True)
    wait_http(d)


def test_store_error_is_not_acknowledged(daemon_factory, tmp_path, spf_env):
    # a trigger makes every inbound write fail: nothing may be acknowledged (SendGrid and Twilio
    # retry on 5xx, SMTP clients on 4xx)
    port = free_port()
    d = http_daemon(daemon_factory, tmp_path, "http_auth = none\nevents_auth = basic\n"
                    f"\n[listener mx]\naddress = 127.0.0.1:{port}\nrole = mx\n")
    con = sqlite3.connect(f"{d.data_dir}/postern.db")
    con.executescript("CREATE TRIGGER t1 BEFORE INSERT ON inbound_messages BEGIN SELECT RAISE(ABORT, 'test'); END;"
                      "CREATE TRIGGER t2 BEFORE INSERT ON inbound_events BEGIN SELECT RAISE(ABORT, 'test'); END;")
    con.close()
    code, _ = curl_parse(d, parsed_fields(0))
    assert code == 503
    code, _, _ = post(d.http + "/events", batch("ev-x"), {"Content-Type": "application/json"})
    assert code == 503
    rc, out = swaks(port, "alice@pass.test", "bob@reply.test")
    assert rc != 0 and "451 4.3.0" in out
    con = sqlite3.connect(f"{d.data_dir}/postern.db")
    con.executescript("DROP TRIGGER t1; DROP TRIGGER t2;")
    con.close()
    code, _ = curl_parse(d, parsed_fields(0))
    assert code == 200
    rc, out = swaks(port, "alice@pass.test", "bob@reply.test")
    assert rc == 0, out
    assert len(inbound(d)) == 2


def test_mx_spf_cached_within_a_session(daemon_factory, spf_env):
    """A session that sends several transactions from one sender has SPF evaluated once (the
    record is the sender's choice and may cost ten look-ups each time); another sender is
    evaluated on its own, and every stored message carries its Received-SPF."""
    d = mx_daemon(daemon_factory)
    with smtplib.SMTP("127.0.0.1", d.mx_port, timeout=30) as s:
        s.ehlo("client.test")
        for i in range(3):
            s.sendmail("alice@pass.test", ["bob@reply.test"], f"Subject: {i}\r\n\r\nx\r\n")
        s.sendmail("carol@fail.test", ["bob@reply.test"], "Subject: f\r\n\r\nx\r\n")
        s.sendmail("alice@pass.test", ["bob@reply.test"], "Subject: 4\r\n\r\nx\r\n")
    log = d.log_text()
    assert log.count("SPF evaluated for <alice@pass.test>") == 1, log[-3000:]
    assert log.count("SPF evaluated for <carol@fail.test>") == 1
    rows = inbound(d, source="mx")
    assert sorted(r["spf"] for r in rows) == ["fail", "pass", "pass", "pass", "pass"], rows
    for r in rows:
        body = db_rows(d, "SELECT body FROM inbound_messages WHERE id = ?", (r["id"],))[0]["body"]
        assert body.startswith(b"Received-SPF: " + r["spf"].encode()), body[:200]
