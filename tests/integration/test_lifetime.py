# Every message ends: queue_lifetime bounces mail held by a refused login and mail waiting for
# an upstream's rate limit too (not only mail that keeps failing), and delay_warning tells the
# sender once, with an RFC 3464 delay notification, that a message is still being retried.
# Real peers on loopback: aiosmtpd upstreams (one refusing the login, one down, one rate
# limited) and a sink upstream the notifications to the sender's domain are routed to.
import email
import email.policy
import re
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


def submit_dsn(d, rcpts, content, mail_options=()):
    """rcpts: [(address, [rcpt options])]."""
    import smtplib
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        code, resp = s.mail("app@client.test", list(mail_options))
        assert code == 250, resp
        for a, opts in rcpts:
            code, resp = s.rcpt(a, list(opts))
            assert code == 250, resp
        code, resp = s.data(content)
        assert code == 250, resp
    return re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()


def report_parts(text):
    msg = email.message_from_string(text, policy=email.policy.compat32)
    return [p.get_content_type() for p in msg.get_payload()], msg


def test_ret_full_returns_the_whole_message_up_to_a_cap(daemon_factory, upstreams):
    up = upstreams(reject=("gone@example.net",))
    sink = upstreams()
    d = daemon_factory(dict(FAST, delay_warning="0"), routed(
        upstream_section("up", up.port, host="127.0.0.1", tls="none"), sink.port))
    big = message("full-big").replace(b"Body of full-big.",
                                      b"Body of full-big.\r\n" + (b"x" * 76 + b"\r\n") * 15000)
    for tag, opts, content in (("full", ["RET=FULL"], message("full")),
                               ("hdrs", ["RET=HDRS"], message("hdrs")),
                               ("none", [], message("none")),
                               ("full-big", ["RET=FULL"], big)):
        qid = submit_dsn(d, [("gone@example.net", [])], content, opts)
        wait_rcpt(d, qid, "gone@example.net", "bounced")
    got = {}
    for subject, text in wait_reports(sink, 4, d):
        parts, msg = report_parts(text)
        tag = re.search(r"Subject: test ([a-z-]+)", text).group(1)
        got[tag] = (parts, text, msg)
    parts, text, msg = got["full"]
    assert parts == ["text/plain", "message/delivery-status", "message/rfc822"], parts
    assert "Body of full." in text and "a line that starts with a dot" in text
    assert "The message is attached below" in text
    inner = msg.get_payload()[2].get_payload()[0]
    assert inner["Message-ID"] == "<full@client.test>"
    for tag in ("hdrs", "none", "full-big"):
        parts, text, _ = got[tag]
        assert parts == ["text/plain", "message/delivery-status", "text/rfc822-headers"], \
            (tag, parts)
        assert f"Body of {tag}." not in text, tag
        assert f"Message-ID: <{tag}@client.test>" in text, tag
    assert len(got["full-big"][1]) < 64 * 1024


def test_notify_success_gets_a_relayed_report_when_the_upstream_does_not_speak_dsn(
        daemon_factory, upstreams):
    up = upstreams()                         # aiosmtpd: no DSN extension
    sink = upstreams()
    d = daemon_factory(dict(FAST, delay_warning="0"), routed(
        upstream_section("up", up.port, host="127.0.0.1", tls="none"), sink.port))
    qid = submit_dsn(d, [("someone@example.net", ["NOTIFY=SUCCESS,FAILURE",
                                                  "ORCPT=rfc822;someone@example.net"]),
                         ("other@example.net", []),
                         ("quiet@example.net", ["NOTIFY=NEVER"])],
                     message("success"), ["ENVID=env-42"])
    for a in ("someone@example.net", "other@example.net", "quiet@example.net"):
        wait_rcpt(d, qid, a, "sent")
    (subject, text), = wait_reports(sink, 1, d)
    assert subject == "Successful Mail Delivery Report"
    assert text.count("Action: relayed") == 1, text
    assert "Final-Recipient: rfc822; someone@example.net" in text
    assert "Original-Recipient: rfc822;someone@example.net" in text
    assert "Original-Envelope-Id: env-42" in text
    assert "Status: 2.0.0" in text and "Diagnostic-Code: smtp; 250 2.0.0" in text, text
    assert "other@example.net" not in text and "quiet@example.net" not in text
    parts, _ = report_parts(text)
    assert parts[-1] == "text/rfc822-headers" and "Body of success." not in text
    assert f"{qid}: sender success notification:" in d.log_text()
    time.sleep(2)
    assert len(reports(sink)) == 1           # once


def test_notify_success_is_left_to_an_upstream_that_speaks_dsn(daemon_factory, upstreams,
                                                               tmp_path):
    import os
    import subprocess
    from conftest import need_binary
    need_binary("/usr/sbin/smtp-sink")
    sink = upstreams()
    port = free_port()
    user = ["-u", "nobody"] if os.getuid() == 0 else []
    # smtp-sink offers DSN (and takes NOTIFY= on to the destination)
    dsn_up = subprocess.Popen(["/usr/sbin/smtp-sink", *user, f"127.0.0.1:{port}", "16"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d = daemon_factory(dict(FAST, delay_warning="0"), routed(
            upstream_section("up", port, host="127.0.0.1", tls="none"), sink.port))
        qid = submit_dsn(d, [("someone@example.net", ["NOTIFY=SUCCESS"])],
                         message("dsn-upstream"))
        wait_rcpt(d, qid, "someone@example.net", "sent")
        time.sleep(3)
        assert reports(sink) == []
        assert "success notification" not in d.log_text()
    finally:
        dsn_up.terminate()
        dsn_up.wait(timeout=10)


def damage_pages(d, table):
    """Breaks the overflow chains of a table's rows on disk (a bad sector, a torn restore):
    SQLite then reports corruption when such a row's large column is read."""
    import sqlite3
    path = f"{d.data_dir}/postern.db"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = con.execute("PRAGMA page_size").fetchone()[0]
        pages = [p for (p,) in con.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'overflow'", (table,))]
    finally:
        con.close()
    assert pages, "no overflow page to damage"
    with open(path, "r+b") as f:
        for p in pages:
            f.seek((p - 1) * size)
            f.write(b"\x7f\xff\xff\xf0")       # the next page of the chain: past the file's end


def test_damaged_message_does_not_stop_delay_warnings(daemon_factory, upstreams):
    # the sweeps walk the queue in order and stop at a message they cannot deal with yet: one
    # whose stored copy the database reports damaged must not keep every later sender from
    # hearing of their delayed mail
    sink = upstreams()
    down = free_port()
    conf = routed(upstream_section("up", down, host="127.0.0.1", tls="none"), sink.port)
    d = daemon_factory(dict(FAST, delay_warning="0"), conf)
    big = submit(d, ["someone@example.net"], message("big") + b"x" * 70 + b"\r\n" * 1 +
                 (b"y" * 70 + b"\r\n") * 900)
    small = submit(d, ["someone@example.net"], message("small"))
    for qid in (big, small):
        wait_rcpt(d, qid, "someone@example.net", "deferred")
        wait_for(lambda: d.ctl("correspondence", "show", qid, check=False).returncode == 0, 30,
                 f"the record of {qid}")
    d.stop_and_check()
    damage_pages(d, "messages")
    d.write_config(dict(FAST, delay_warning="2s"), conf)
    d.start()
    (subject, text), = wait_reports(sink, 1, d)
    assert f"X-Postern-Queue-ID: {small}" in text, text
    assert subject == "Delayed Mail (still being retried)"
