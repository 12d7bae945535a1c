# Every message ends: queue_lifetime bounces mail held by a refused login and mail waiting for
# an upstream's rate limit too (not only mail that keeps failing), and delay_warning tells the
# sender once, with an RFC 3464 delay notification, that a message is still being retried.
# Real peers on loopback: aiosmtpd upstreams (one refusing the login, one down, one rate
# limited) and a sink upstream the notifications to the sender's domain are routed to.
import email
import email.policy
import time

from conftest import secret_file
from test_upstream import FAST, message, rcpt_statuses, submit, wait_for, wait_rcpt
from upstream import free_port, upstream_section

PASSWORD = "s3cret-Passw0rd"


def routed(up_section, sink_port):
    """Notifications to the sender's domain go to the sink; everything else to up."""
    return (up_section + upstream_section("sink", sink_port, host="127.0.0.1", tls="none") +
            "\n[route notices]\nrecipient = *@client.test\nupstream = sink\n"
            "\n[route default]\nupstream = up\n")


def reports(sink):
    out = []
    for m in sink.received():
        msg = email.message_from_bytes(m["data"], policy=email.policy.compat32)
        if msg.get_content_type() == "multipart/report":
            out.append((msg["Subject"], m["data"].decode("utf-8", "replace")))
    return out


def wait_reports(sink, n, d, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = reports(sink)
        if len(got) >= n:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{len(reports(sink))} report(s) at the sink, expected {n}\n"
                         f"{d.log_tail(60)}")


def test_held_mail_expires_after_queue_lifetime(daemon_factory, upstreams, tmp_path):
    up = upstreams(users={"app": PASSWORD}, auth_require_tls=False, mechs=("CRAM-MD5",))
    sink = upstreams()
    pw = secret_file(tmp_path / "pw", "wrong")
    d = daemon_factory(dict(FAST, queue_lifetime="4s", delay_warning="0"), routed(
        upstream_section("up", up.port, host="127.0.0.1", tls="none", auth="cram-md5",
                         username="app", password_file=pw), sink.port))
    qid = submit(d, ["someone@example.net"], message("held-expires"))
    r = wait_rcpt(d, qid, "someone@example.net", "held")
    assert r["last_reply"].startswith("535"), r
    r = wait_rcpt(d, qid, "someone@example.net", "bounced", timeout=30)
    assert r["last_reply"].startswith("451 4.4.7 Message expired after queue_lifetime (535"), r
    (subject, text), = wait_reports(sink, 1, d)
    assert subject == "Undelivered Mail Returned to Sender"
    assert "Action: failed" in text and "Status: 5.4.7" in text, text
    assert "Final-Recipient: rfc822; someone@example.net" in text
    assert not up.received()
    time.sleep(2.5)
    assert len(reports(sink)) == 1          # bounced once


def test_rate_waiting_mail_expires_after_queue_lifetime(daemon_factory, upstreams):
    up = upstreams()
    sink = upstreams()
    d = daemon_factory(dict(FAST, queue_lifetime="3s", delay_warning="0"), routed(
        upstream_section("up", up.port, host="127.0.0.1", tls="none", rate="1/h"), sink.port))
    first = submit(d, ["someone@example.net"], message("rate-first"))
    wait_rcpt(d, first, "someone@example.net", "sent")
    second = submit(d, ["someone@example.net"], message("rate-second"))
    r = wait_rcpt(d, second, "someone@example.net", "bounced", timeout=30)
    assert r["last_reply"].startswith("451 4.4.7 Message expired after queue_lifetime"), r
    assert "rate limit" in r["last_reply"], r
    assert r["attempts"] == 0, r             # it was never tried
    (subject, text), = wait_reports(sink, 1, d)
    assert "Status: 5.4.7" in text and "rate-second" in text
    assert len(up.received()) == 1


def test_delay_warning_is_sent_once(daemon_factory, upstreams):
    sink = upstreams()
    down = free_port()
    d = daemon_factory(dict(FAST, delay_warning="2s"), routed(
        upstream_section("up", down, host="127.0.0.1", tls="none"), sink.port))
    qid = submit(d, ["someone@example.net", "other@example.net"], message("delayed"))
    wait_rcpt(d, qid, "someone@example.net", "deferred")
    (subject, text), = wait_reports(sink, 1, d)
    assert subject == "Delayed Mail (still being retried)"
    assert "THIS IS A WARNING ONLY" in text
    assert text.count("Action: delayed") == 2 and "Will-Retry-Until:" in text, text
    assert "Status: 4.4.7" in text and "Final-Recipient: rfc822; other@example.net" in text
    assert f"X-Postern-Queue-ID: {qid}" in text
    time.sleep(4)                            # several sweeps later: still one
    assert len(reports(sink)) == 1
    assert rcpt_statuses(d, qid)["someone@example.net"]["status"] == "deferred"
    assert "sender delay notification" in d.log_text()


def test_delay_warning_respects_notify(daemon_factory, upstreams):
    # NOTIFY=FAILURE (no DELAY): no warning; the message is only marked as warned
    import smtplib
    sink = upstreams()
    down = free_port()
    d = daemon_factory(dict(FAST, delay_warning="1s"), routed(
        upstream_section("up", down, host="127.0.0.1", tls="none"), sink.port))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.mail("app@client.test")[0] == 250
        assert s.rcpt("someone@example.net", ["NOTIFY=FAILURE"])[0] == 250
        assert s.data(message("no-delay-notice"))[0] == 250
    time.sleep(5)
    assert reports(sink) == []


def damage_body(d, qid, how):
    """Changes the stored copy behind Postern's back, as a damaged disk or a bad restore would."""
    import sqlite3
    con = sqlite3.connect(f"{d.data_dir}/postern.db", isolation_level=None)
    try:
        (body,), = con.execute("SELECT body FROM messages WHERE id = ?", (qid,)).fetchall()
        if how == "truncated":
            body = body[:len(body) // 2]
        else:                                  # same length, one byte changed
            body = body[:-3] + bytes([body[-3] ^ 0x20]) + body[-2:]
        con.execute("UPDATE messages SET body = ? WHERE id = ?", (body, qid))
    finally:
        con.close()


def test_unreadable_stored_copy_is_set_aside(daemon_factory, upstreams):
    # a message whose stored copy is not the one accepted is held with the reason, once, instead
    # of being tried at every pass (or sent damaged); the others go out
    up = upstreams()
    down = free_port()
    d = daemon_factory(dict(FAST, delay_warning="0"),
                       upstream_section("up", down, host="127.0.0.1", tls="none"))
    cut = submit(d, ["someone@example.net"], message("truncated"))
    flipped = submit(d, ["someone@example.net", "other@example.net"], message("flipped"))
    fine = submit(d, ["someone@example.net"], message("fine"))
    for qid in (cut, flipped, fine):
        wait_rcpt(d, qid, "someone@example.net", "deferred")
    d.stop_and_check()
    damage_body(d, cut, "truncated")
    damage_body(d, flipped, "flipped")
    d.write_config(dict(FAST, delay_warning="0"),
                   upstream_section("up", up.port, host="127.0.0.1", tls="none"))
    d.start()
    d.ctl("queue", "flush")
    wait_rcpt(d, fine, "someone@example.net", "sent")
    r = wait_rcpt(d, cut, "someone@example.net", "held")
    assert r["last_reply"].startswith("451 4.3.0 Set aside: the stored copy of the message "
                                      "cannot be read"), r
    assert "bytes are there" in r["last_reply"], r
    for a in ("someone@example.net", "other@example.net"):
        r = wait_rcpt(d, flipped, a, "held")
        assert "SHA-256 digest" in r["last_reply"], r
    attempts = {q: {a: r["attempts"] for a, r in rcpt_statuses(d, q).items()}
                for q in (cut, flipped)}
    time.sleep(4)                            # several passes and sweeps later: nothing moved
    assert {q: {a: r["attempts"] for a, r in rcpt_statuses(d, q).items()}
            for q in (cut, flipped)} == attempts
    assert all(r["status"] == "held" for q in (cut, flipped)
               for r in rcpt_statuses(d, q).values())
    text = d.log_text()
    assert text.count(f"{cut}: its stored copy cannot be read") == 1, d.log_tail(60)
    assert text.count(f"{flipped}: its stored copy cannot be read") == 1, d.log_tail(60)
    got = [m["data"] for m in up.received()]
    assert len(got) == 1 and b"Body of fine." in got[0]
    # the operator sees why in the plain listing too
    listing = d.ctl("queue", "list").stdout.decode()
    assert "Set aside: the stored copy of the message cannot be read" in listing, listing
    # released by hand, it is looked at again, and set aside again: never sent damaged
    d.ctl("queue", "release", cut)
    wait_for(lambda: d.log_text().count(f"{cut}: its stored copy cannot be read") == 2, 15,
             "set aside again after release")
    wait_rcpt(d, cut, "someone@example.net", "held")
    assert len(up.received()) == 1
