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
