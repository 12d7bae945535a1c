# Nothing waits behind deliveries: with 4 deliveries held 15 s each by a slow upstream on
# loopback, a reload swaps the configuration at once (each delivery keeps the snapshot it
# started with), the next message already follows the new one, and SIGTERM is handled while
# the deliveries run; every message still arrives once.
import signal
import time

from test_upstream import FAST, message, submit, wait_rcpt
from upstream import upstream_section


def test_reload_does_not_wait_for_deliveries(daemon_factory, upstreams):
    slow = upstreams(data_delay=15)
    fast = upstreams()
    conf = upstream_section("up", slow.port, host="127.0.0.1", tls="none") + \
        "\n[route default]\nupstream = up\n"
    d = daemon_factory(dict(FAST, delivery_workers="5"), conf)
    ids = [submit(d, ["someone@example.net"], message(f"slow{i}")) for i in range(4)]
    deadline = time.monotonic() + 20
    while slow.mail_attempts < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slow.mail_attempts == 4, "the 4 deliveries did not start"

    # the same upstream name now points at the fast one
    d.write_config(dict(FAST, delivery_workers="5"),
                   upstream_section("up", fast.port, host="127.0.0.1", tls="none") +
                   "\n[route default]\nupstream = up\n")
    t0 = time.monotonic()
    p = d.ctl("reload")
    took = time.monotonic() - t0
    assert b"reloaded" in p.stdout
    assert took < 5, f"the reload waited {took:.1f} s for deliveries in flight"
    assert not slow.received(), "the slow deliveries should still be running"
    qid = submit(d, ["someone@example.net"], message("after-reload"))
    fast.wait_messages(1, timeout=20)
    wait_rcpt(d, qid, "someone@example.net", "sent")

    # SIGHUP the same way, then SIGTERM while the slow deliveries still run
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while d.log_text().count("reload -- configuration") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.log_text().count("reload -- configuration") == 2, d.log_tail(30)
    sigterm_during = not slow.received()
    d.stop_and_check(timeout=40)
    assert sigterm_during, "the slow deliveries ended before SIGTERM: the test proves nothing"
    # the slow upstream got each of the four once, the fast one only the new message
    assert len(slow.received()) == 4 and len(fast.received()) == 1
    d.start()
    for q in ids:
        wait_rcpt(d, q, "someone@example.net", "sent")
    time.sleep(1)
    assert len(slow.received()) == 4 and len(fast.received()) == 1
