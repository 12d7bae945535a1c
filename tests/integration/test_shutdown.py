"""SIGTERM tells idle sessions at once (421) instead of waiting out the grace period, while a
session inside a transaction may finish it."""
import signal
import time


def test_sigterm_idle_session_told_at_once(daemon_factory):
    d = daemon_factory({"shutdown_grace": "20s"})
    with d.smtp() as c:
        c.greet()
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        r = c.read_reply(10)
        took = time.monotonic() - t0
        assert r.code == 421 and r.enhanced == "4.3.2", r
    assert took < 3, f"idle session told of the shutdown only after {took:.1f}s"
    rc = d.proc.wait(timeout=15)
    assert rc == 0, d.log_tail()
    d.check_log()


def test_sigterm_open_transaction_may_finish(daemon_factory):
    d = daemon_factory({"shutdown_grace": "20s"})
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        d.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert d.running(), d.log_tail()
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        c.send(b"Subject: late\r\n\r\nbody\r\n.\r\n")
        r = c.read_reply(10)
        assert r.code == 250, r
        qid = r.queue_id()
        r = c.cmd("NOOP", timeout=5)
        assert r.code == 421, r
    rc = d.proc.wait(timeout=15)
    assert rc == 0, d.log_tail()
    d.start()
    assert d.queue_entry(qid) is not None


def _submit_one(d, subject):
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("EHLO client.test", 250)
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        c.send(b"Subject: " + subject + b"\r\n\r\nbody\r\n.\r\n")
        r = c.read_reply(10)
        assert r.code == 250, r
        c.cmd_expect("QUIT", 221)
        return r.queue_id()


def _stop_bounded_and_queued(d, qid, said):
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=25)
    took = time.monotonic() - t0
    assert rc == 0, d.log_tail()
    assert took < 15, f"the stop waited {took:.1f}s for a silent upstream"
    assert said in d.log_text(), d.log_tail()
    d.check_log()
    d.start()
    entry = d.queue_entry(qid)
    assert entry is not None and entry["recipients"][0]["status"] in ("queued", "deferred"), entry


def test_sigterm_does_not_wait_for_a_silent_upstream(daemon_factory):
    """An upstream that takes the connection and never says a word (or stalls a TLS handshake)
    must not hold the stop: the delivery is cut after its few seconds, the daemon exits 0 and
    the mail is still queued for the restart."""
    import socket
    from upstream import upstream_section
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    held = []
    try:
        for tls in ("none", "implicit"):
            conf = (upstream_section("mute", port, host="127.0.0.1", tls=tls, verify="none") +
                    "\n[route default]\nupstream = mute\n")
            d = daemon_factory({"shutdown_grace": "2s", "debug": "yes"}, conf, name=f"mute-{tls}")
            qid = _submit_one(d, b"to a mute upstream")
            conn, _ = silent.accept()        # the delivery is now waiting for a greeting
            held.append(conn)
            _stop_bounded_and_queued(d, qid, "still busy")
            d.signal(signal.SIGTERM)      # it connects again: the same cut, the same clean stop
            assert d.proc.wait(timeout=25) == 0, d.log_tail()
    finally:
        for conn in held:
            conn.close()
        silent.close()


def test_sigterm_cuts_an_upstream_silent_after_the_message_last(daemon_factory, upstreams):
    """An upstream that has the whole message and does not answer is cut only at the end of
    the grace (cutting earlier could make it send the message twice); the daemon still exits
    and the message stays queued."""
    from upstream import upstream_section
    stalled = upstreams(data_delay=120)
    conf = (upstream_section("slow", stalled.port, host="127.0.0.1", tls="none") +
            "\n[route default]\nupstream = slow\n")
    d = daemon_factory({"shutdown_grace": "2s", "debug": "yes"}, conf)
    qid = _submit_one(d, b"to an upstream that stalls after the dot")
    deadline = time.monotonic() + 20
    while stalled.mail_attempts < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stalled.mail_attempts >= 1, d.log_tail()
    time.sleep(0.5)                       # the body goes, the wait for its answer begins
    _stop_bounded_and_queued(d, qid, "still waiting for an upstream's answer")
