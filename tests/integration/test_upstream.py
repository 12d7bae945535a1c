# Upstream delivery through the smtp transport, against a real SMTP server on loopback (aiosmtpd,
# see upstream.py) with certificates made here with openssl: TLS modes and verification, AUTH
# mechanisms, retries, bounces with their DSN, per-recipient results, connection reuse, rate
# limits and holds after a refused login. Every test asserts what the upstream received.
import email
import email.policy
import os
import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import POSTERN, need_binary, secret_file, sha256
from upstream import Upstream, free_port, upstream_section

SENDER = "app@client.test"
PASSWORD = "s3cret-Passw0rd"





def upstream_conf(port, host="localhost", tls="starttls", verify="peer", ca=None, auth=None,
                  username=None, password_file=None, rate=None, name="up", extra=""):
    return (upstream_section(name, port, host=host, tls=tls, verify=verify, ca=ca, auth=auth,
                             username=username, password_file=password_file, rate=rate)
            + f"\n[route default]\nupstream = {name}\n" + extra)


FAST = {"retry_min": "1s", "retry_max": "2s", "debug": "yes"}


def message(tag, extra_headers=""):
    return (f"From: App <{SENDER}>\r\nTo: someone@example.net\r\nSubject: test {tag}\r\n"
            f"Message-ID: <{tag}@client.test>\r\n{extra_headers}\r\n"
            f"Body of {tag}.\r\n.a line that starts with a dot\r\n").encode()


def submit(d, rcpts, content, sender=SENDER):
    """Sends one message to the daemon; returns its queue id."""
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        code, resp = s.mail(sender)
        assert code == 250, resp
        for r in rcpts:
            code, resp = s.rcpt(r)
            assert code == 250, resp
        code, resp = s.data(content)
        assert code == 250, resp
    m = re.search(rb"queued as ([0-9A-F]+)", resp)
    assert m, resp
    return m.group(1).decode()


def submit_many(d, n, rcpt="someone@example.net", tag="m"):
    ids = []
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        for i in range(n):
            s.mail(SENDER)
            s.rcpt(rcpt)
            code, resp = s.data(message(f"{tag}{i}"))
            assert code == 250, resp
            ids.append(re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode())
    return ids


def wait_for(pred, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def rcpt_statuses(d, qid):
    e = d.queue_entry(qid)
    return {r["address"]: r for r in e["recipients"]} if e else {}


def wait_rcpt(d, qid, address, status, timeout=20):
    def ok():
        r = rcpt_statuses(d, qid).get(address)
        return r if r and r["status"] == status else None
    try:
        return wait_for(ok, timeout, f"{qid} {address} -> {status}")
    except AssertionError:
        raise AssertionError(f"{qid} <{address}> did not become {status}: "
                             f"{rcpt_statuses(d, qid)}\n{d.log_tail(60)}")


def stored_body_matches(d, qid, received):
    """What the upstream received is exactly the stored message."""
    stored = d.queue_cat(qid)
    assert sha256(received) == sha256(stored), \
        f"upstream got {len(received)} bytes, the store holds {len(stored)}\n{received[:300]!r}\n{stored[:300]!r}"


# ---------------------------------------------------------------------------------------------
# AUTH mechanisms over STARTTLS and over implicit TLS.

@pytest.mark.parametrize("tls", ["starttls", "implicit"])
@pytest.mark.parametrize("auth,expect", [("plain", "PLAIN"), ("login", "LOGIN"),
                                         ("cram-md5", "CRAM-MD5"), ("auto", "CRAM-MD5")])
def test_auth_mechanisms(daemon_factory, upstreams, certs, tmp_path, tls, auth, expect):
    up = upstreams(tls=tls, cert=certs.good, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, tls=tls, ca=certs.ca, auth=auth,
                                           username="app", password_file=pw))
    content = message(f"{tls}-{auth}")
    qid = submit(d, ["someone@example.net"], content)
    got = up.wait_messages(1)[0]
    assert got["tls"], "delivered without TLS"
    assert got["auth"] == "app"
    assert got["mail_from"] == SENDER and got["rcpts"] == ["someone@example.net"]
    assert [(m, u, ok) for m, u, ok, _ in up.auths] == [(expect, "app", True)], up.auths
    assert all(t for *_, t in up.auths), "AUTH before TLS"
    wait_rcpt(d, qid, "someone@example.net", "sent")
    stored_body_matches(d, qid, got["data"])
    assert PASSWORD.encode() not in d.log_text().encode(), "the password is in the log"


# ---------------------------------------------------------------------------------------------
# Certificate verification.

@pytest.mark.parametrize("which,why", [("wrongname", r"certificate verify failed.*(hostname|name)"),
                                       ("selfsigned", r"certificate verify failed.*(self.signed|issuer|unable to get)")])
def test_verify_peer_refuses(daemon_factory, upstreams, certs, tmp_path, which, why):
    up = upstreams(tls="starttls", cert=getattr(certs, which), users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, ca=certs.ca, auth="plain", username="app",
                                           password_file=pw))
    qid = submit(d, ["someone@example.net"], message(which))
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert re.search(why, r["last_reply"], re.I), r["last_reply"]
    assert r["last_reply"].startswith("451 4.7.5 TLS handshake with localhost"), r["last_reply"]
    log = d.log_text()
    assert re.search(r"status=deferred \(451 4\.7\.5 TLS handshake with localhost\[[0-9.:a-f]+\]:%d failed: certificate verify failed"
                     % up.port, log), d.log_tail()
    time.sleep(0.5)
    assert not up.received() and not up.auth_commands, "mail or password went to an unverified server"


@pytest.mark.parametrize("which", ["wrongname", "selfsigned"])
def test_verify_none_accepts(daemon_factory, upstreams, certs, tmp_path, which):
    up = upstreams(tls="starttls", cert=getattr(certs, which), users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, verify="none", auth="plain", username="app",
                                           password_file=pw))
    qid = submit(d, ["someone@example.net"], message(which))
    up.wait_messages(1)
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert re.search(r"warn.*upstream up: verify = none", d.log_text(), re.I), d.log_tail()


def test_starttls_required_but_not_offered(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False)   # offers AUTH in clear
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, tls="starttls", auth="plain", username="app",
                                           password_file=pw))
    qid = submit(d, ["someone@example.net"], message("nostarttls"))
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert "does not offer STARTTLS" in r["last_reply"], r["last_reply"]
    time.sleep(1.5)     # a retry or two
    raw = up.raw_bytes()
    assert not up.auth_commands, f"AUTH was sent: {up.auth_commands}"
    assert PASSWORD.encode() not in raw
    assert b"MAIL FROM" not in raw.upper()
    assert not up.received()


def test_opportunistic_without_starttls_sends_no_password_in_clear(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False, mechs=("PLAIN", "LOGIN"))
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, tls="opportunistic", auth="auto",
                                           username="app", password_file=pw))
    qid = submit(d, ["someone@example.net"], message("opportunistic"))
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert "unencrypted" in r["last_reply"], r["last_reply"]
    assert not up.auth_commands and PASSWORD.encode() not in up.raw_bytes()


def test_cleartext_password_config_refused(tmp_path):
    need_binary(POSTERN)
    conf = tmp_path / "p.conf"
    conf.write_text(upstream_conf(2525, tls="none", auth="plain", username="app",
                                  password_file="/nonexistent/pw"))
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == 1
    assert re.search(r"p\.conf:1: upstream up: auth = plain with tls = none", p.stderr), p.stderr


# ---------------------------------------------------------------------------------------------
# Retries and bounces.

def test_upstream_down_then_up(daemon_factory, upstreams, tmp_path):
    port = free_port()
    d = daemon_factory(FAST, upstream_conf(port, host="127.0.0.1", tls="none"))
    content = message("downup") + (b"x" * 70 + b"\r\n") * 40 + b"\xc3\xa9 8-bit line\r\n"
    qid = submit(d, ["someone@example.net"], content)
    r = wait_rcpt(d, qid, "someone@example.net", "deferred")
    assert r["last_reply"].startswith("451 4.4.1 connect to 127.0.0.1[127.0.0.1]:%d: Connection refused" % port), r
    up = upstreams(port=port)
    got = up.wait_messages(1, timeout=30)
    wait_rcpt(d, qid, "someone@example.net", "sent")
    stored_body_matches(d, qid, got[0]["data"])
    time.sleep(2.5)
    assert len(up.received()) == 1, "delivered more than once"


def test_temporary_failure_then_success(daemon_factory, upstreams):
    up = upstreams(fail_first=1)
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    qid = submit(d, ["someone@example.net"], message("4xx"))
    r = wait_rcpt(d, qid, "someone@example.net", "sent")
    assert r["attempts"] == 2, r
    assert len(up.wait_messages(1)) == 1
    assert re.search(r"to=<someone@example.net>.*dsn=4\.3\.0, status=deferred \(451 4\.3\.0", d.log_text())


def parse(data):
    return email.message_from_bytes(data, policy=email.policy.compat32)


def test_bounce_sends_dsn_and_mixed_recipients(daemon_factory, upstreams):
    up = upstreams(reject={"nobody@example.net"}, defer={"busy@example.net"})
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    content = message("bounce")
    qid = submit(d, ["ok@example.net", "nobody@example.net", "busy@example.net"], content)
    wait_rcpt(d, qid, "ok@example.net", "sent")
    b = wait_rcpt(d, qid, "nobody@example.net", "bounced")
    assert b["last_reply"].startswith("550 5.1.1 <nobody@example.net>"), b
    assert b["attempts"] == 1
    busy = rcpt_statuses(d, qid)["busy@example.net"]
    assert busy["status"] in ("deferred", "queued") and busy["last_reply"].startswith("450 4.2.1"), busy
    # the message itself went to ok@ only; then the DSN to the sender, through the same upstream
    msgs = up.wait_messages(2)
    orig = [m for m in msgs if m["mail_from"] == SENDER]
    assert orig and orig[0]["rcpts"] == ["ok@example.net"]
    dsns = [m for m in msgs if m["mail_from"] == ""]
    assert len(dsns) == 1, msgs
    dsn = dsns[0]
    assert dsn["rcpts"] == [SENDER]
    raw = dsn["data"]
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF in the DSN"
    m = parse(raw)
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    assert m["Auto-Submitted"] == "auto-replied"
    assert "MAILER-DAEMON@relay.test.example" in m["From"]
    assert m["To"].strip("<> ") == SENDER
    parts = m.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                      "text/rfc822-headers"]
    human = parts[0].get_payload(decode=True).decode()
    assert "nobody@example.net" in human and "550 5.1.1" in human
    status = raw.decode().replace("\r\n", "\n").split("Content-Type: message/delivery-status", 1)[1]
    status = status.split("Content-Type: text/rfc822-headers", 1)[0]
    for needle in ("Reporting-MTA: dns; relay.test.example", "Arrival-Date: ",
                   "Final-Recipient: rfc822; nobody@example.net", "Action: failed",
                   "Status: 5.1.1", "Remote-MTA: dns; 127.0.0.1",
                   "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>"):
        assert needle in status, f"{needle!r} not in\n{status}"
    assert "ok@example.net" not in status and "busy@example.net" not in status
    headers = parts[2].get_payload(decode=True) if not parts[2].is_multipart() else b""
    if isinstance(headers, str):
        headers = headers.encode()
    assert b"Subject: test bounce" in headers and b"Body of bounce" not in headers
    # the DSN is in the queue like any message: null sender, source dsn, delivered
    entries = [e for e in d.queue_list() if e["sender"] == ""]
    assert len(entries) == 1
    assert d.wait_status(entries[0]["id"], "sent")


def test_dsn_original_recipient_is_the_decoded_orcpt(daemon_factory, upstreams):
    """ORCPT comes as xtext (RFC 3461 4.2); the DSN's Original-Recipient carries the address
    decoded, its type as given."""
    up = upstreams(reject={"nobody@example.net"})
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn")
        assert s.mail(SENDER)[0] == 250
        code, resp = s.rcpt("nobody@example.net",
                            ["NOTIFY=FAILURE", "ORCPT=rfc822;old+2Bname+40example.net"])
        assert code == 250, resp
        code, resp = s.data(message("orcpt"))
        assert code == 250, resp
    dsns = [m for m in up.wait_messages(1) if m["mail_from"] == ""]
    assert len(dsns) == 1
    status = dsns[0]["data"].decode().replace("\r\n", "\n")
    status = status.split("Content-Type: message/delivery-status", 1)[1]
    assert "Original-Recipient: rfc822;old+name@example.net\n" in status, status
    assert "Final-Recipient: rfc822; nobody@example.net\n" in status, status


def test_no_dsn_to_the_null_sender(daemon_factory, upstreams):
    up = upstreams(reject={"nobody@example.net"})
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    qid = submit(d, ["nobody@example.net"], message("nullsender"), sender="")
    wait_rcpt(d, qid, "nobody@example.net", "bounced")
    time.sleep(1.5)
    assert not up.received()
    assert len(d.queue_list()) == 1
    assert "null sender" in d.log_text()


def test_size_limit_bounces_at_once(daemon_factory, upstreams):
    up = upstreams(size=3000)
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    qid = submit(d, ["someone@example.net"], message("big") + (b"y" * 70 + b"\r\n") * 60)
    r = wait_rcpt(d, qid, "someone@example.net", "bounced")
    assert r["last_reply"].startswith("552 5.3.4 Message size"), r
    assert r["attempts"] == 1
    dsn = up.wait_messages(1)[0]
    assert dsn["mail_from"] == "" and dsn["rcpts"] == [SENDER]
    assert b"Status: 5.3.4" in dsn["data"]


# ---------------------------------------------------------------------------------------------
# Connection reuse and rate limits.

def test_twenty_messages_one_connection(daemon_factory, upstreams, certs, tmp_path):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(dict(FAST, delivery_workers="1"),
                       upstream_conf(up.port, ca=certs.ca, auth="login", username="app",
                                     password_file=pw))
    ids = submit_many(d, 20, tag="reuse")
    up.wait_messages(20, timeout=60)
    for q in ids:
        wait_rcpt(d, q, "someone@example.net", "sent")
    assert up.connections == 1, f"{up.connections} connections for 20 messages"
    assert len(up.auths) == 1, f"{len(up.auths)} logins for 20 messages"


def test_kept_connection_without_rset(daemon_factory, upstreams):
    """After the reply to the end of data the upstream has reset itself (RFC 5321 4.1.1.4):
    the next message on the kept connection starts with MAIL, not RSET (with an upstream that
    does not pipeline, as this one, an RSET costs a round trip per message). A kept connection
    the upstream has closed meanwhile is noticed at MAIL and the message goes out on a new one,
    sent at its first attempt, never deferred."""
    up = upstreams()
    d = daemon_factory(dict(FAST, delivery_workers="1"),
                       upstream_conf(up.port, host="127.0.0.1", tls="none"))
    ids = submit_many(d, 5, tag="norset")
    up.wait_messages(5, timeout=60)
    for q in ids:
        wait_rcpt(d, q, "someone@example.net", "sent")
    raw = up.raw_bytes()
    assert up.connections == 1, f"{up.connections} connections for 5 messages"
    assert raw.count(b"MAIL FROM:") == 5 and b"RSET" not in raw, raw
    # the upstream goes away and comes back on the same port: the kept connection is dead
    up.stop()
    up.start()
    qid = submit(d, ["someone@example.net"], message("after-restart"))
    up.wait_messages(1, timeout=60)
    r = wait_rcpt(d, qid, "someone@example.net", "sent")
    assert r["attempts"] == 1, r
    assert "status=deferred" not in d.log_text(), d.log_tail()


def test_rate_limit(daemon_factory, upstreams):
    up = upstreams()
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none", rate="10/s"))
    ids = submit_many(d, 50, tag="rate")
    msgs = up.wait_messages(50, timeout=60)
    span = msgs[-1]["time"] - msgs[0]["time"]
    assert span >= 4.0, f"50 messages at 10/s took only {span:.2f} s"
    assert span < 15, f"50 messages at 10/s took {span:.2f} s"
    # none failed, none was counted as an attempt while it waited
    for q in ids:
        r = wait_rcpt(d, q, "someone@example.net", "sent")
        assert r["attempts"] == 1, r
    assert "status=deferred" not in d.log_text()


def test_throttle_reply_slows_down(daemon_factory, upstreams):
    up = upstreams(throttle_first=1)
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    qid = submit(d, ["someone@example.net"], message("throttle"))
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert re.search(r"upstream up asks us to slow down", d.log_text()), d.log_tail()


# ---------------------------------------------------------------------------------------------
# A refused login holds the mail; fixing the password releases it.

def test_auth_failure_holds_then_releases(daemon_factory, upstreams, certs, tmp_path):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", "wrong-password")
    d = daemon_factory(FAST, upstream_conf(up.port, ca=certs.ca, auth="plain", username="app",
                                           password_file=pw))
    ids = [submit(d, ["someone@example.net"], message(f"held{i}")) for i in range(3)]
    for q in ids:
        r = wait_rcpt(d, q, "someone@example.net", "held")
        assert r["last_reply"].startswith("535 5.7.8"), r
    time.sleep(2.5)          # retry_min passes: still held, never bounced, nothing delivered
    for q in ids:
        assert rcpt_statuses(d, q)["someone@example.net"]["status"] == "held"
    assert not up.received()
    log = d.log_text()
    assert len(re.findall(r"ALARM upstream up: authentication failed", log)) == 1, d.log_tail(60)
    assert "wrong-password" not in log
    logins_while_held = len(up.auths)
    assert logins_while_held < 6, f"{logins_while_held} login attempts while held"
    # the operator fixes the password file and reloads; nothing else
    secret_file(tmp_path / "pw", PASSWORD)
    d.signal(signal.SIGHUP)
    up.wait_messages(3, timeout=30)
    for q in ids:
        wait_rcpt(d, q, "someone@example.net", "sent")
    assert re.search(r"upstream up: login works again; released 3 held recipient", d.log_text())


def test_held_mail_released_without_reload(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False, mechs=("CRAM-MD5",))
    pw = secret_file(tmp_path / "pw", "wrong")
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none", auth="cram-md5",
                                           username="app", password_file=pw))
    qid = submit(d, ["someone@example.net"], message("held-nohup"))
    wait_rcpt(d, qid, "someone@example.net", "held")
    secret_file(tmp_path / "pw", PASSWORD)
    up.wait_messages(1, timeout=30)
    wait_rcpt(d, qid, "someone@example.net", "sent")


def test_held_mail_survives_restart(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False, mechs=("CRAM-MD5",))
    pw = secret_file(tmp_path / "pw", "wrong")
    d = daemon_factory(dict(FAST, retry_min="1m", retry_max="1h"),
                       upstream_conf(up.port, host="127.0.0.1", tls="none", auth="cram-md5",
                                     username="app", password_file=pw))
    qid = submit(d, ["someone@example.net"], message("held-restart"))
    wait_rcpt(d, qid, "someone@example.net", "held")
    d.stop_and_check()
    secret_file(tmp_path / "pw", PASSWORD)
    d.start()
    up.wait_messages(1, timeout=30)
    wait_rcpt(d, qid, "someone@example.net", "sent")


def test_hold_by_hand_is_not_released(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False, mechs=("CRAM-MD5",))
    pw = secret_file(tmp_path / "pw", "wrong")
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none", auth="cram-md5",
                                           username="app", password_file=pw))
    held = submit(d, ["someone@example.net"], message("auth-held"))
    wait_rcpt(d, held, "someone@example.net", "held")
    mine = submit(d, ["other@example.net"], message("hand-held"))
    d.ctl("queue", "hold", mine)
    secret_file(tmp_path / "pw", PASSWORD)
    up.wait_messages(1, timeout=30)
    wait_rcpt(d, held, "someone@example.net", "sent")
    time.sleep(1)
    assert rcpt_statuses(d, mine)["other@example.net"]["status"] == "held"


# ---------------------------------------------------------------------------------------------
# The provider presets are working configurations.

@pytest.mark.parametrize("preset", ["office365", "gmail", "ses", "sendgrid-smtp", "smarthost-465"])
def test_presets_pass_check(preset):
    need_binary(POSTERN)
    path = os.path.join(os.path.dirname(__file__), "..", "..", "conf", f"{preset}.conf")
    p = subprocess.run([POSTERN, "-n", "-c", path], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = open(path).read()
    assert "type = smtp" in text and "[route default]" in text
    assert re.search(r"^; What you must do on the .* side:", text, re.M), "no provider-side steps"


# ---------------------------------------------------------------------------------------------
# IPv6: an upstream on ::1 given as an address literal, its certificate checked against the IP.

def ipv6_loopback():
    import socket
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_upstream(daemon_factory, upstreams, certs, tmp_path):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD}, host="::1")
    pw = secret_file(tmp_path / "pw", PASSWORD)
    d = daemon_factory(FAST, upstream_conf(up.port, host="::1", ca=certs.ca, auth="plain",
                                           username="app", password_file=pw))
    qid = submit(d, ["someone@example.net"], message("ipv6"))
    got = up.wait_messages(1)[0]
    assert got["tls"] and got["auth"] == "app"
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert re.search(r"relay=::1\[::1\]:%d" % up.port, d.log_text()), d.log_tail()


# ---------------------------------------------------------------------------------------------
# An [upstream] without a [route]. It used to be silently unused: postern -n passed, the daemon
# answered 250 and kept every message in the store as "captured".

def test_one_upstream_without_route_carries_all_mail(daemon_factory, upstreams, certs, tmp_path):
    up = upstreams(tls="starttls", cert=certs.good, users={"app": PASSWORD})
    pw = secret_file(tmp_path / "pw", PASSWORD)
    section = upstream_section("office365", up.port, ca=certs.ca, auth="plain", username="app",
                               password_file=pw)
    d = daemon_factory(FAST, "\n" + section, start=False)
    p = subprocess.run([POSTERN, "-n", "-c", d.conf], capture_output=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr.decode()
    d.start()
    qid = submit(d, ["someone@example.net"], message("no-route"))
    got = up.wait_messages(1)[0]
    assert got["rcpts"] == ["someone@example.net"] and got["auth"] == "app"
    wait_rcpt(d, qid, "someone@example.net", "sent")
    # the start-up log says where mail goes, in one line
    assert re.search(rf"all mail -> upstream office365, localhost:{up.port} STARTTLS, PLAIN",
                     d.log_text()), d.log_tail()


def test_several_upstreams_without_route_fail_the_check(tmp_path, upstreams):
    need_binary(POSTERN)
    conf = tmp_path / "p.conf"
    conf.write_text(f"[postern]\ndata_dir = {tmp_path / 'data'}\n\n"
                    f"[listener s]\naddress = 127.0.0.1:{free_port()}\n\n"
                    + upstream_section("office365", 587, tls="starttls")
                    + "\n" + upstream_section("backup", 25, tls="none"))
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert re.search(rf"^{re.escape(str(conf))}:\d+: 2 upstreams \(office365, backup\) and no "
                     r"\[route\].*\[route default\] with upstream = office365", err, re.M), err
    # the daemon does not start on it either
    p = subprocess.run([POSTERN, "-f", "-c", str(conf)], capture_output=True, timeout=30)
    assert p.returncode == 1 and "no [route]" in p.stderr.decode(), p.stderr.decode()
    # one of them the other's fallback: the other carries the mail, nothing to warn about
    conf.write_text(conf.read_text().replace("[upstream office365]\n",
                                             "[upstream office365]\nfallback = backup\n"))
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr.decode()


def test_unrouted_upstream_is_a_warning(daemon_factory, upstreams, tmp_path):
    up = upstreams()
    extra = ("\n" + upstream_section("used", up.port, tls="none")
             + "\n" + upstream_section("forgotten", 25, tls="none")
             + "\n[route default]\nrecipient = *@example.net\nupstream = used\n")
    d = daemon_factory(FAST, extra, start=False)
    p = subprocess.run([POSTERN, "-n", "-c", d.conf], capture_output=True, timeout=30)
    err = p.stderr.decode()
    assert p.returncode == 0, err
    assert re.search(rf"^warning: {re.escape(d.conf)}:\d+: upstream forgotten carries no mail",
                     err, re.M), err
    assert "upstream used" not in err, err
    d.start()
    # the start-up lines may follow the listener's first 220: wait for them, then read
    route = (rf"route default \(recipient \*@example\.net\) -> upstream used, "
             rf"localhost:{up.port} no TLS, no AUTH; other mail is deferred")
    wait_for(lambda: re.search(route, d.log_text()), 20, "the start-up line saying where mail goes")
    log = d.log_text()
    assert re.search(r"warning: .*upstream forgotten carries no mail", log), log
    # a fallback is reached: no warning for it
    d.stop()
    d.write_config(FAST, extra.replace("[upstream used]\n", "[upstream used]\nfallback = forgotten\n"))
    p = subprocess.run([POSTERN, "-n", "-c", d.conf], capture_output=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr.decode()


def test_lf_smuggling_carrier_relayed_as_one_message(daemon_factory, upstreams):
    """A DATA content with "\\n.\\n" and a smuggled transaction after it is taken as one message
    (a bare LF is a line end, the end of data only CR LF . CR LF). The lone dot it now holds
    as a line is dot-stuffed on the way out, so the upstream, too, sees one message from the
    real sender with the smuggled text as content and never a second transaction."""
    up = upstreams()
    d = daemon_factory(FAST, upstream_conf(up.port, host="127.0.0.1", tls="none"))
    content = (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: carrier\r\n"
               "Message-ID: <carrier@client.test>\r\n\r\nharmless line\n.\n"
               "MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
               "Subject: SMUGGLED\r\n\r\nSMUGGLED-BODY\r\n").encode()
    with socket.create_connection(("127.0.0.1", d.port), timeout=30) as s:
        f = s.makefile("rb")
        def cmd(line, code):
            if line is not None:
                s.sendall(line)
            while True:
                r = f.readline()
                if r[3:4] != b"-":
                    break
            assert r[:3] == str(code).encode(), (line, r)
            return r
        cmd(None, 220)
        cmd(b"EHLO client.test\r\n", 250)
        cmd(f"MAIL FROM:<{SENDER}>\r\n".encode(), 250)
        cmd(b"RCPT TO:<someone@example.net>\r\n", 250)
        cmd(b"DATA\r\n", 354)
        r = cmd(content + b".\r\n", 250)
        cmd(b"QUIT\r\n", 221)
    qid = re.search(rb"queued as ([0-9A-F]+)", r).group(1).decode()
    got = up.wait_messages(1)
    wait_rcpt(d, qid, "someone@example.net", "sent")
    time.sleep(1)
    assert len(up.received()) == 1, up.received()
    assert got[0]["mail_from"] == SENDER and got[0]["rcpts"] == ["someone@example.net"]
    stored_body_matches(d, qid, got[0]["data"])
    assert b"harmless line\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n" in got[0]["data"]
    assert b"harmless line\r\n..\r\nMAIL FROM:" in bytes(up.raw), "the lone dot went out unstuffed"


# ---------------------------------------------------------------------------------------------
# Lines over 998 octets. A legacy application's one-line HTML goes in through postern-sendmail
# as PHP's mail() sends it (sendmail -t -i, LF line ends). The listener keeps the line; a strict
# upstream (aiosmtpd, like Postfix's smtpd, answers "500 Line too long" at the end of DATA)
# used to get it as it was stored and refuse the message.

def php_mail_message(html):
    # what PHP's mail($to, $subject, $html, "MIME-Version: 1.0\r\nContent-type: text/html;
    # charset=UTF-8\r\nFrom: ...") pipes into sendmail -t -i
    return (f"To: someone@example.net\nSubject: Monthly report\nX-PHP-Originating-Script: "
            f"33:report.php\nMIME-Version: 1.0\nContent-type: text/html; charset=UTF-8\n"
            f"From: App <{SENDER}>\n\n{html}\n").encode()


def test_long_lines_reencoded_for_a_strict_upstream(daemon_factory, upstreams, tmp_path):
    import random
    up = upstreams()
    rnd = random.Random(17)
    cells = "".join(f"<td class=\"c{i}\">{rnd.randrange(10**6)} \u20ac \u00e9t\u00e9 =x</td>"
                    for i in range(2500))
    html = f"<html><body><table><tr>{cells}</tr></table></body></html>"
    assert len(html.encode()) > 100_000 and "\n" not in html
    # the upstream really refuses such a line: the message as stored, sent directly
    with smtplib.SMTP("127.0.0.1", up.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail(SENDER)
        s.rcpt("someone@example.net")
        code, resp = s.data(php_mail_message(html).replace(b"\n", b"\r\n"))
    assert code == 500 and b"Line too long" in resp, (code, resp)
    assert not up.messages

    d = daemon_factory(FAST, upstream_conf(up.port, tls="none"))
    p = subprocess.run([os.path.join(os.path.dirname(POSTERN), "postern-sendmail"), "-C", d.conf,
                        "-t", "-i", "-f", SENDER], input=php_mail_message(html),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    got = up.wait_messages(1)[0]
    assert got["rcpts"] == ["someone@example.net"]
    assert max(len(line) for line in got["data"].split(b"\r\n")) <= 998
    msg = email.message_from_bytes(got["data"], policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content_type() == "text/html"
    assert msg.get_content().rstrip("\r\n") == html, "the body a reader sees changed"
    assert msg["Subject"] == "Monthly report" and msg["X-PHP-Originating-Script"]
    qid = re.search(r"([0-9A-F]+): lines over 998 octets re-encoded", d.log_text()).group(1)
    wait_rcpt(d, qid, "someone@example.net", "sent")
    # the store keeps the message as it came
    assert html.encode() in d.queue_cat(qid)



def relayed_fitting(daemon_factory, up, raw):
    """raw relayed to the strict upstream up: what it got, every line within 998 octets, and
    that parsed."""
    d = daemon_factory(FAST, upstream_conf(up.port, tls="none"))
    qid = submit(d, ["someone@example.net"], raw)
    got = up.wait_messages(1)[0]
    wait_rcpt(d, qid, "someone@example.net", "sent")
    assert max(len(line) for line in got["data"].split(b"\r\n")) <= 998
    return got, email.message_from_bytes(got["data"], policy=email.policy.default)


def test_long_lines_in_encoded_parts_and_around_them(daemon_factory, upstreams):
    """What PHP scripts build by hand: an attachment from base64_encode() with no chunk_split
    (one 6,000-octet line), an HTML part declared quoted-printable but written without soft line
    breaks, and a prologue on one long line. Each part is encoded again in its own encoding,
    in short lines, and decodes to the same octets; the prologue (for readers without MIME)
    goes. The upstream refuses any line over 998 octets."""
    import base64
    import random
    up = upstreams()
    pdf = bytes(random.Random(5).randrange(256) for _ in range(4500))
    html = "<p>" + "caf\u00e9 ".join(str(i) for i in range(400)) + "</p>"
    qp = html.replace("=", "=3D").encode().replace("\u00e9".encode(), b"=C3=A9")
    raw = (f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: invoice\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n"
           + "This is a MIME message. " * 60 + "\r\n--XYZ\r\n"
           "Content-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable"
           "\r\n\r\n").encode() + qp + (
           "\r\n--XYZ\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
           "Content-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\r\n").encode() + \
        base64.b64encode(pdf) + b"\r\n--XYZ--\r\n"
    assert len(base64.b64encode(pdf)) > 998 and len(qp) > 998
    got, out = relayed_fitting(daemon_factory, up, raw)
    text, att = list(out.iter_parts())
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert text.get_content().rstrip("\r\n") == html
    assert att["Content-Transfer-Encoding"] == "base64" and att.get_filename() == "invoice.pdf"
    assert att.get_payload(decode=True) == pdf
    assert b"This is a MIME message." not in got["data"]

def test_long_lines_multipart_and_long_header(daemon_factory, upstreams):
    # a CSV attachment on one long line inside multipart/mixed, a short text part left alone,
    # and a References header of one 1,500-octet line
    up = upstreams()
    csv = ";".join(f"{i},{i * i}" for i in range(400)).encode()
    refs = " ".join(f"<m{i}.{'x' * 20}@client.test>" for i in range(45))
    assert len(refs) > 1000
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = SENDER, "someone@example.net", "csv"
    m["References"] = refs
    m.set_content("See the attached file.\n")
    m.add_attachment(csv, maintype="text", subtype="csv", filename="data.csv", cte="8bit")
    raw = m.as_bytes(policy=email.policy.SMTP.clone(max_line_length=0))
    assert max(len(line) for line in raw.split(b"\r\n")) > 1000
    got, out = relayed_fitting(daemon_factory, up, raw)
    text, att = list(out.iter_parts())
    assert text.get_content().rstrip() == "See the attached file." and text["Content-Transfer-Encoding"] != "quoted-printable"
    assert att["Content-Transfer-Encoding"] == "quoted-printable"
    assert att.get_payload(decode=True).rstrip(b"\r\n") == csv
    assert " ".join(out["References"].split()) == refs


def test_short_lines_go_byte_for_byte(daemon_factory, upstreams):
    up = upstreams()
    d = daemon_factory(FAST, upstream_conf(up.port, tls="none"))
    content = message("short", "X-Long-But-Fine: " + "y" * 900 + "\r\n")
    qid = submit(d, ["someone@example.net"], content)
    got = up.wait_messages(1)[0]
    wait_rcpt(d, qid, "someone@example.net", "sent")
    stored_body_matches(d, qid, got["data"])
    assert "re-encoded" not in d.log_text()
