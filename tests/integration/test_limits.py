# Every input limit answered with the right code, and the server still serving other clients
# while (and after) an offending session misbehaves. Nothing refused may end up in the store.
import base64
import os
import random
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import assert_serving, check_stored, dot_stuff, good_message
from test_inbound import mx_daemon, spf_env, swaks  # noqa: F401 (spf_env is a fixture)

MSG = b"From: a@clinic.test\r\nTo: b@example.test\r\nSubject: limits\r\n\r\nbody\r\n"


def sendall_bg(c, data):
    """Sends data from a thread (the server may stop reading or close); returns the thread and a
    list that receives the exception, if any."""
    errs = []

    def run():
        try:
            c.sock.sendall(data)
        except OSError as e:
            errs.append(e)
    c.log.append((">", data[:100] + b"...(%d bytes)" % len(data)))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errs


def test_command_line_limit(daemon):
    d = daemon
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("NOOP " + "x" * 505, 250)             # 512 octets with CRLF: the limit
        c.cmd_expect("NOOP " + "x" * 506, 500, "5.5.2")    # 513 octets
        cmd = "MAIL FROM:<" + "a" * 574 + "@clinic.test>"
        assert len(cmd) + 2 == 600
        c.cmd_expect(cmd, 500, "5.5.2")
        assert_serving(d, "cmdline")                        # while this session is open
        # The tail of an overlong line is not taken as a command; the session goes on.
        c.cmd_expect("NOOP " + "y" * 1500 + " RSET", 500, "5.5.2")
        assert c.pending(0.5) == b"", "more than one reply to one overlong line"
        r = c.send_message("a@clinic.test", ["b@example.test"], MSG)
        assert r.code == 250, r
        c.cmd_expect("QUIT", 221)
    check_stored(d.queue_cat(r.queue_id()), MSG)


def test_max_recipients(daemon):
    d = daemon    # max_recipients = 100
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        rcpts = [f"r{i}@example.test" for i in range(101)]
        for r in rcpts[:100]:
            c.cmd_expect(f"RCPT TO:<{r}>", 250)
        c.cmd_expect(f"RCPT TO:<{rcpts[100]}>", 452, "4.5.3")
        c.cmd_expect(f"RCPT TO:<{rcpts[100]}>", 452, "4.5.3")
        assert_serving(d, "rcpts")
        c.cmd_expect("DATA", 354)
        c.send(dot_stuff(MSG) + b".\r\n")
        r = c.expect(250)
        c.cmd_expect("QUIT", 221)
    e = d.queue_entry(r.queue_id())
    assert [x["address"] for x in e["recipients"]] == rcpts[:100], \
        f"stored {len(e['recipients'])} recipients, expected the first 100"


def test_size_parameter(daemon):
    d = daemon
    limit = 35 * 1024 * 1024
    with d.smtp() as c:
        r = c.greet()
        assert f"250-SIZE {limit}" in [l for l in r.lines] or f"250 SIZE {limit}" in r.lines, r
        c.cmd_expect(f"MAIL FROM:<a@clinic.test> SIZE={limit + 1}", 552, "5.3.4")
        c.cmd_expect(f"MAIL FROM:<a@clinic.test> SIZE={10 ** 15}", 552, "5.3.4")
        assert_serving(d, "sizeparam")
        c.cmd_expect(f"MAIL FROM:<a@clinic.test> SIZE={limit}", 250)
        c.cmd_expect("RSET", 250)
        c.cmd_expect("QUIT", 221)


def big_body(n):
    line = b"0123456789" * 7 + b"abcd\r\n"                # 76 octets
    return MSG + line * (n // len(line))


def test_message_size_enforced(daemon_factory):
    d = daemon_factory({"max_message_size": "1M"})
    before = d.stored_ids()
    with d.smtp(timeout=30) as c:
        r = c.greet()
        assert any(l[4:] == "SIZE 1048576" for l in r.lines), f"SIZE not announced as 1M: {r!r}"
        # Under the limit (leaving room for the added headers): accepted.
        small = big_body(1024 * 1024 - 16 * 1024)
        r = c.send_message("a@clinic.test", ["b@example.test"], small)
        assert r.code == 250, r
        ok_id = r.queue_id()
        # Over it, without SIZE=: refused after the data, the session goes on.
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        t, errs = sendall_bg(c, dot_stuff(big_body(1300 * 1024)) + b".\r\n")
        c.expect(552, "5.3.4", timeout=30)
        t.join(30)
        assert not errs, f"server stopped reading the oversized message: {errs}"
        assert_serving(d, "bigdata")
        c.cmd_expect("RSET", 250)
        # The same with BDAT.
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        chunk = big_body(1300 * 1024)
        t, errs = sendall_bg(c, b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        c.expect(552, "5.3.4", timeout=30)
        t.join(30)
        c.cmd_expect("RSET", 250)
        c.cmd_expect("NOOP", 250)
        c.cmd_expect("QUIT", 221)
    check_stored(d.queue_cat(ok_id), small)
    new = d.stored_ids() - before
    assert len(new) == 2, f"expected the small message and the serving check only, store has {new}"


def test_too_many_errors(daemon_factory):
    d = daemon_factory({"max_errors": "5"})
    with d.smtp() as c:
        c.greet()
        codes = []      # per bad command: the codes of the replies it drew
        for i in range(7):
            try:
                c.send(b"XYZZY %d\r\n" % i)
                got = [c.read_reply(10).code]
            except EOFError:
                codes.append([])
                break
            if got[0] != 421:
                # A 421 may follow the 5xx of the last allowed error at once.
                more = c.pending(0.3)
                got += [int(l[:3]) for l in more.split(b"\r\n") if l[:3].isdigit()]
            codes.append(got)
            if 421 in got:
                break
        flat = [x for g in codes for x in g]
        if 421 not in flat:
            c.fail(f"no 421 after {len(codes)} bad commands (max_errors = 5): {codes}")
        first421 = next(i for i, g in enumerate(codes) if 421 in g)
        if not 4 <= first421 <= 5:
            c.fail(f"421 came with bad command #{first421 + 1}, expected #5 or #6: {codes}")
        if not all(g and all(500 <= x < 600 for x in g) for g in codes[:first421]):
            c.fail(f"bad commands before the 421 not each answered 5xx: {codes}")
        if not c.wait_closed(5):
            c.fail("connection still open after 421")
    assert_serving(d, "errors")


def test_idle_timeout(daemon_factory):
    d = daemon_factory({"idle_timeout": "2s"})
    idle = d.smtp()
    busy = d.smtp()
    try:
        idle.greet()
        busy.greet()
        t0 = time.monotonic()
        time.sleep(1.0)
        assert idle.pending(0) == b"", "idle session answered before the idle timeout"
        # A session that keeps talking is not idle.
        while time.monotonic() - t0 < 4.5:
            busy.cmd_expect("NOOP", 250)
            time.sleep(0.5)
        r = idle.expect(421, "4.4.2", timeout=5)
        if not idle.wait_closed(5):
            idle.fail("connection still open after the idle-timeout 421")
        busy.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        busy.cmd_expect("RSET", 250)
        assert_serving(d, "idle")
    finally:
        idle.close()
        busy.close()


def test_session_deadline(daemon_factory):
    d = daemon_factory({"idle_timeout": "2s", "session_timeout": "4s"})
    with d.smtp() as c:
        c.greet()
        t0 = time.monotonic()
        got = None
        while time.monotonic() - t0 < 12:
            try:
                c.send(b"NOOP\r\n")
                r = c.read_reply(5)
            except (EOFError, OSError):
                break
            if r.code == 421:
                got = time.monotonic() - t0
                break
            assert r.code == 250, r
            time.sleep(0.4)
        if got is None:
            c.fail("no 421 from a session older than session_timeout = 4s")
        assert 3.0 <= got <= 9, f"session ended after {got:.1f}s, session_timeout is 4s"
        if not c.wait_closed(5):
            c.fail("connection still open after the session-deadline 421")
    assert_serving(d, "deadline")


def test_max_clients(daemon_factory):
    d = daemon_factory({"max_clients": "3"})
    held = []
    try:
        # The readiness probe's session may take a moment to be counted out: allow a retry.
        deadline = time.monotonic() + 5
        while len(held) < 3:
            c = d.smtp()
            r = c.read_reply()
            if r.code == 220:
                held.append(c)
                continue
            c.close()
            assert time.monotonic() < deadline, f"only {len(held)} sessions accepted with max_clients = 3: {r!r}"
            time.sleep(0.1)
        for c in held:
            c.cmd_expect("EHLO client.test", 250)
        with d.smtp() as extra:
            r = extra.read_reply()
            if r.code != 421:
                extra.fail(f"fourth client got {r!r} with max_clients = 3")
            if not extra.wait_closed(5):
                extra.fail("fourth client's connection still open after 421")
        # The held sessions are still served.
        r = held[0].send_message("a@clinic.test", ["b@example.test"], MSG)
        assert r.code == 250, r
        check_stored(d.queue_cat(r.queue_id()), MSG)
        # Once one leaves, a new client gets in.
        held[1].cmd_expect("QUIT", 221)
        held[1].close()
        deadline = time.monotonic() + 5
        while True:
            with d.smtp() as c:
                r = c.read_reply()
                if r.code == 220:
                    c.cmd_expect("QUIT", 221)
                    break
            assert time.monotonic() < deadline, f"no room after a client left: {r!r}"
            time.sleep(0.1)
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------------------------------------
# SMTP smuggling and other malformed DATA.

SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
            b"From: ceo@clinic.test\r\nSubject: SMUGGLED\r\n\r\nSMUGGLED-BODY\r\n")

# Bare CR in any position is refused; a bare LF is a line end (Postfix's
# smtpd_forbid_bare_newline = normalize), so the LF variants are neutralised instead: the end of
# data is still only CR LF . CR LF, and what follows the fake end stays content of the one message.
SMUGGLE_REFUSED = {
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "bare-cr": b"\rx\r\n",
}
SMUGGLE_NEUTRALISED = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "bare-lf": b"\nx\r\n",
}
SMUGGLE_VARIANTS = {**SMUGGLE_REFUSED, **SMUGGLE_NEUTRALISED}


def normalised(raw):
    """What the server stores for raw DATA-free content: every bare LF a CR LF."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def refused_data(d, c, payload, expect_code=550, expect_enh="5.6.0", label=""):
    """Sends a transaction whose content is payload (sent raw, no stuffing) + CRLF.CRLF; checks
    the content is not ended early, gets exactly one refusal, and the session goes on."""
    c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
    c.cmd_expect("RCPT TO:<b@example.test>", 250)
    c.cmd_expect("DATA", 354)
    c.send(payload)
    early = c.pending(1.0)
    if early:
        c.fail(f"{label}: the server answered before the real end of data: {early!r}")
    c.send(b"\r\n.\r\n")
    r = c.read_reply(30)
    if r.code != expect_code and not (expect_code is None and 500 <= r.code < 600):
        c.fail(f"{label}: expected {expect_code or '5xx'} {expect_enh or ''}, got {r!r}")
    if expect_enh and r.enhanced != expect_enh:
        c.fail(f"{label}: expected enhanced code {expect_enh}, got {r!r}")
    extra = c.pending(0.7)
    if extra:
        c.fail(f"{label}: replies after the refusal (smuggled commands executed?): {extra!r}")
    c.cmd_expect("RSET", 250)
    c.cmd_expect("NOOP", 250)
    return r


def neutralised_data(d, c, payload, label=""):
    """As refused_data, but the content is accepted as ONE message: one 250 after the real end,
    no reply to any smuggled command. Returns the queue id."""
    c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
    c.cmd_expect("RCPT TO:<b@example.test>", 250)
    c.cmd_expect("DATA", 354)
    c.send(payload)
    early = c.pending(1.0)
    if early:
        c.fail(f"{label}: the server answered before the real end of data: {early!r}")
    c.send(b"\r\n.\r\n")
    r = c.read_reply(30)
    if r.code != 250 or not r.queue_id():
        c.fail(f"{label}: expected the one message accepted, got {r!r}")
    extra = c.pending(0.7)
    if extra:
        c.fail(f"{label}: replies after the end (smuggled commands executed?): {extra!r}")
    c.cmd_expect("NOOP", 250)
    return r.queue_id()


def assert_nothing_with(d, marker, known):
    for e in d.queue_list():
        if e["id"] in known:
            continue
        body = d.queue_cat(e["id"])
        assert marker not in body, f"message {e['id']} holds refused content {marker!r}"
        assert e["sender"] != "evil@attacker.test", f"smuggled message stored: {e}"


def assert_one_carrier(d, qid, payload, known):
    """The carrier was stored as one message from its real sender, the smuggled transaction
    inside it as content lines, every line ended CR LF; no other message exists."""
    stored = d.queue_cat(qid)
    check_stored(stored, normalised(payload) + b"\r\n")
    assert b"\n" not in stored.replace(b"\r\n", b""), "a bare LF was stored"
    entries = [e for e in d.queue_list() if e["id"] not in known]
    assert [e["id"] for e in entries] == [qid], f"more than the one carrier stored: {entries}"
    assert entries[0]["sender"] == "a@clinic.test", entries[0]


@pytest.mark.parametrize("variant", list(SMUGGLE_VARIANTS))
def test_smuggling_refused(daemon, variant):
    d = daemon
    seq = SMUGGLE_VARIANTS[variant]
    payload = (b"From: a@clinic.test\r\nSubject: carrier\r\n\r\nharmless line" + seq + SMUGGLED)
    with d.smtp() as c:
        c.greet()
        if variant in SMUGGLE_REFUSED:
            refused_data(d, c, payload, label=variant)
            carrier = None
        else:
            carrier = neutralised_data(d, c, payload, label=variant)
        good = assert_serving(d, "smuggle")
        c.cmd_expect("QUIT", 221)
    if carrier is None:
        assert_nothing_with(d, b"SMUGGLED", {good})
    else:
        assert_one_carrier(d, carrier, payload, {good})


def bdat_split_every_byte(c, payload, marker_at, marker_len):
    """Sends payload as BDAT chunks, once for every cut position inside the end marker (and
    one before and after it); returns the replies to LAST."""
    out = []
    for cut in range(marker_at, marker_at + marker_len + 1):
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        a, b = payload[:cut], payload[cut:]
        c.send(b"BDAT %d\r\n" % len(a) + a)
        c.expect(250)
        c.send(b"BDAT %d LAST\r\n" % len(b) + b)
        r = c.read_reply(30)
        extra = c.pending(0.3)
        if extra:
            c.fail(f"cut {cut}: replies after LAST (smuggled commands executed?): {extra!r}")
        out.append(r)
    return out


@pytest.mark.parametrize("variant", list(SMUGGLE_VARIANTS))
def test_bdat_smuggling(daemon, variant):
    """The DATA smuggling cases sent as BDAT chunks, split at every byte of the fake end marker:
    a bare CR is refused at LAST with DATA's code, a bare LF is stored as CR LF, and a smuggled
    transaction is never a second message."""
    d = daemon
    seq = SMUGGLE_VARIANTS[variant]
    # Both the content and what follows it, as a client that lost sync might put them.
    payload = (b"From: a@clinic.test\r\nSubject: carrier\r\n\r\nharmless line" + seq + SMUGGLED
               + b".\r\n")
    at = payload.index(seq)
    with d.smtp() as c:
        c.greet()
        replies = bdat_split_every_byte(c, payload, at, len(seq))
        c.cmd_expect("NOOP", 250)
        good = assert_serving(d, "bdat-smuggle")
        c.cmd_expect("QUIT", 221)
    if variant in SMUGGLE_REFUSED:
        for r in replies:
            assert (r.code, r.enhanced) == (550, "5.6.0"), replies
        assert_nothing_with(d, b"SMUGGLED", {good})
        return
    ids = [r.queue_id() for r in replies]
    assert all(r.code == 250 for r in replies) and all(ids), replies
    entries = [e for e in d.queue_list() if e["id"] != good]
    assert sorted(e["id"] for e in entries) == sorted(ids), "a smuggled message was stored"
    assert all(e["sender"] == "a@clinic.test" for e in entries), entries
    for qid in ids:
        check_stored(d.queue_cat(qid), normalised(payload))


def test_bdat_bad_content_refused_at_last(daemon):
    """NUL, bare CR (also one split from its would-be LF by a chunk boundary, and one ending
    the last chunk) and an over-long line in BDAT: 250 to each chunk, DATA's refusal at LAST,
    nothing stored, the session in sync."""
    d = daemon
    cases = [
        ([b"Subject: x\r\n\r\nNUL\x00", b"BDAT-BAD-A\r\n"], 550),
        ([b"Subject: x\r\n\r\nBDAT-BAD-B\r", b"x\r\n"], 550),
        ([b"Subject: x\r\n\r\nBDAT-BAD-C\r\n", b"tail\r"], 550),
        ([b"Subject: x\r\n\r\nBDAT-BAD-D ", b"y" * (5 * 1024 * 1024) + b"\r\n"], 500),
    ]
    with d.smtp(timeout=60) as c:
        c.greet()
        for chunks, code in cases:
            c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
            c.cmd_expect("RCPT TO:<b@example.test>", 250)
            for ch in chunks[:-1]:
                c.send(b"BDAT %d\r\n" % len(ch) + ch)
                c.expect(250)
            c.sock.sendall(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
            r = c.read_reply(60)
            assert (r.code, r.enhanced) == (code, "5.6.0"), r
            c.cmd_expect("NOOP", 250)
        good = assert_serving(d, "bdat-bad")
    assert_nothing_with(d, b"BDAT-BAD", {good})


def test_nul_refused(daemon):
    d = daemon
    payload = b"From: a@clinic.test\r\nSubject: nul\r\n\r\nbefore\x00after NUL-MARKER\r\nmore"
    with d.smtp() as c:
        c.greet()
        refused_data(d, c, payload, label="NUL")
        good = assert_serving(d, "nul")
    assert_nothing_with(d, b"NUL-MARKER", {good})


def test_long_lines_accepted(daemon):
    """Lines past RFC 5321's 1,000 octets, as legacy applications write them (one-line HTML,
    CSV), are accepted and stored as sent up to a generous cap; past the cap the message is
    refused whole, and the session goes on."""
    d = daemon
    with d.smtp(timeout=60) as c:
        c.greet()
        kept = []
        for n in (998, 999, 5000, 100 * 1024, 200000):
            msg = (b"From: a@clinic.test\r\nSubject: %d\r\n\r\n" % n + b"x" * n
                   + b"\r\nend\r\n")
            r = c.send_message("a@clinic.test", ["b@example.test"], msg)
            assert r.code == 250, f"a line of {n + 2} octets was refused: {r!r}"
            kept.append((r.queue_id(), msg))
        payload = (b"From: a@clinic.test\r\nSubject: LONG-LINE\r\n\r\n" + b"y" * (5 * 1024 * 1024)
                   + b"\r\nafter")
        r = refused_data(d, c, payload, expect_code=500, expect_enh="5.6.0", label="5 MB line")
        assert "line longer than" in r.text, r
        good = assert_serving(d, "textline")
        c.cmd_expect("QUIT", 221)
    for qid, msg in kept:
        check_stored(d.queue_cat(qid), msg)
    assert_nothing_with(d, b"LONG-LINE", {good} | {q for q, _ in kept})


def test_lf_only_message_stored_with_crlf(daemon):
    """A script that ends its lines with a bare LF (and CRLF.CRLF at the end) gets its message
    accepted and stored with CR LF line ends; its dot-stuffed lines are unstuffed as usual."""
    d = daemon
    raw = (b"From: script@clinic.test\nTo: b@example.test\nSubject: LF only\n\n"
           b"line one\n..leading dot\n\nlast\r\n")
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<script@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        c.send(raw + b".\r\n")
        r = c.expect(250)
        c.cmd_expect("QUIT", 221)
    stored = d.queue_cat(r.queue_id())
    want = (b"From: script@clinic.test\r\nTo: b@example.test\r\nSubject: LF only\r\n\r\n"
            b"line one\r\n.leading dot\r\n\r\nlast\r\n")
    check_stored(stored, want)
    assert b"\n" not in stored.replace(b"\r\n", b""), stored


def test_garbage_input(daemon):
    d = daemon
    rnd = random.Random(1234)
    garbage = rnd.randbytes(256 * 1024)
    with d.smtp(timeout=10) as c:
        c.expect(220)
        t, errs = sendall_bg(c, garbage)
        deadline = time.monotonic() + 20
        while not c.eof and time.monotonic() < deadline:
            try:
                c._fill(1)
            except (socket.timeout, OSError):
                pass
        t.join(10)
        replies = [l for l in c.buf.split(b"\r\n") if l[:3].isdigit()]
        assert replies or c.eof, "no reply at all to 256 KB of garbage"
        accepted = [l for l in replies if l[:1] == b"2"]
        assert not accepted, f"garbage accepted as commands: {accepted[:5]}"
    assert d.running(), "daemon died on garbage input\n" + d.log_tail()
    assert_serving(d, "garbage")


def test_endless_command_line(daemon):
    d = daemon
    with d.smtp(timeout=10) as c:
        c.greet()
        t, errs = sendall_bg(c, b"A" * (4 * 1024 * 1024) + b"\r\n")
        deadline = time.monotonic() + 20
        while not c.eof and time.monotonic() < deadline:
            try:
                c._fill(1)
            except (socket.timeout, OSError):
                pass
            if b"\r\n" in c.buf and not t.is_alive():
                break
        t.join(10)
        rest = c.pending(0.5)
        replies = [l for l in rest.split(b"\r\n") if l[:3].isdigit()]
        assert replies or c.eof, "neither an answer nor a close after a 4 MB line"
        assert all(l[:1] in (b"4", b"5") for l in replies), f"4 MB line accepted: {replies[:5]}"
        if not c.eof:
            c.cmd_expect("NOOP", 250)
    assert d.running(), "daemon died on a 4 MB line\n" + d.log_tail()
    assert_serving(d, "endless")


def test_endless_data_line_memory(daemon):
    """48 MB without a newline inside DATA: refused, and the daemon's peak memory does not
    grow with it."""
    d = daemon
    assert_serving(d, "warm-up")
    hwm0 = d.vm_hwm_kb()
    with d.smtp(timeout=30) as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("DATA", 354)
        block = b"Z" * (1024 * 1024)
        closed = False
        for _ in range(48):
            try:
                c.sock.sendall(block)
            except OSError:
                closed = True
                break
        if not closed:
            try:
                c.send(b"\r\n.\r\n")
                r = c.read_reply(30)
                assert 500 <= r.code < 600, f"48 MB line accepted: {r!r}"
            except (EOFError, OSError):
                pass
    grown = d.vm_hwm_kb() - hwm0
    assert grown < 24 * 1024, f"daemon peak memory grew by {grown} kB for a 48 MB line"
    assert d.running()
    assert_serving(d, "endless-data")


# ---------------------------------------------------------------------------------------------
# Store errors.

def test_store_locked_gives_451(daemon):
    """Another process holds the database's write lock longer than the store waits: 451 4.3.0,
    never 250, and once the lock is gone mail flows again."""
    d = daemon
    db = sqlite3.connect(os.path.join(d.data_dir, "postern.db"), timeout=5, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        with d.smtp(timeout=60) as c:
            c.greet()
            content = good_message("locked").replace(b"good locked", b"LOCKED-MARKER")
            t0 = time.monotonic()
            r = c.send_message("a@clinic.test", ["b@example.test"], content)
            if (r.code, r.enhanced) != (451, "4.3.0"):
                c.fail(f"store locked: expected 451 4.3.0, got {r!r} after {time.monotonic() - t0:.1f}s")
            db.execute("ROLLBACK")
            r = c.send_message("a@clinic.test", ["b@example.test"], good_message("unlocked"))
            assert r.code == 250, f"no mail accepted after the lock was released: {r!r}"
    finally:
        db.close()
    assert_nothing_with(d, b"LOCKED-MARKER", set())
    assert_serving(d, "after-lock")


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the full-disk test needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_full_disk_gives_452(small_tmpfs, daemon_factory):
    d = daemon_factory(data_dir=small_tmpfs)
    assert_serving(d, "tmpfs-start")
    # Fill the file system, leaving ~400 KB, so the store runs into ENOSPC after a few messages.
    st = os.statvfs(small_tmpfs)
    free = st.f_bavail * st.f_frsize
    filler = os.path.join(small_tmpfs, "filler")
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - 400 * 1024))
    accepted, full = {}, 0
    rnd = random.Random(452)
    with d.smtp(timeout=60) as c:
        c.greet()
        for i in range(40):
            content = (f"From: a@clinic.test\r\nSubject: FULL-{i}\r\n\r\n".encode()
                       + base64.encodebytes(rnd.randbytes(75 * 1024)).replace(b"\n", b"\r\n"))
            r = c.send_message("a@clinic.test", ["b@example.test"], content)
            if r.code == 250:
                accepted[r.queue_id()] = content
                continue
            if (r.code, r.enhanced) != (452, "4.3.1"):
                c.fail(f"disk full: expected 452 4.3.1, got {r!r}")
            full += 1
            if full >= 3:
                break
            c.cmd_expect("RSET", 250)
        assert full, f"the 4 MB file system never filled up ({len(accepted)} messages accepted)"
        # Free the space: mail flows again, in the same session and in new ones.
        os.unlink(filler)
        c.cmd_expect("RSET", 250)
        content = good_message("after-full")
        r = c.send_message("a@clinic.test", ["b@example.test"], content)
        assert r.code == 250, f"still refusing after space was freed: {r!r}"
        accepted[r.queue_id()] = content
    assert_serving(d, "tmpfs-freed")
    # Every acknowledged message intact; nothing else (no half-stored message from the refusals).
    entries = {e["id"]: e for e in d.queue_list()}
    for qid, content in accepted.items():
        assert qid in entries, f"acknowledged message {qid} missing"
        check_stored(d.queue_cat(qid), content)
    for qid, e in entries.items():
        body = d.queue_cat(qid)
        if qid not in accepted:
            assert b"Subject: FULL-" not in body, f"refused message stored as {qid}"


def test_dsn_parameters_with_controls_refused(daemon):
    """ENVID and ORCPT whose xtext decodes to CR, LF, NUL or another control: 501 5.5.4 (RFC 3461
    allows printable US-ASCII only; such a value would end up in the header fields of a DSN),
    the session stays in sync, nothing is stored. Printable encoded values still pass."""
    d = daemon
    with d.smtp() as c:
        c.greet()
        for bad in ("ENVID=x+0D+0Ay", "ENVID=x+00", "ENVID=+0ABcc:+20evil@x", "ENVID=a+7F"):
            c.cmd_expect(f"MAIL FROM:<a@clinic.test> {bad}", 501, "5.5.4")
        c.cmd_expect("NOOP", 250)
        c.cmd_expect("MAIL FROM:<a@clinic.test> ENVID=ok+2Bfine", 250)
        for bad in ("ORCPT=rfc822;b@example.test+0D+0ABcc:+20x@y", "ORCPT=rfc822;b+00@example.test",
                    "ORCPT=rfc822;b+09@example.test"):
            c.cmd_expect(f"RCPT TO:<b@example.test> {bad}", 501, "5.5.4")
        c.cmd_expect("RSET", 250)
        # 20-digit numbers: SIZE is simply too big, a BDAT count cannot be read (and the chunk
        # not delimited): 501 and the session ends rather than read content as commands
        c.cmd_expect("MAIL FROM:<a@clinic.test> SIZE=92233720368547758080", 552, "5.3.4")
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.send(b"BDAT 92233720368547758080 LAST\r\nMAIL FROM:<evil@attacker.test>\r\n")
        r = c.read_reply()
        assert (r.code, r.enhanced) == (501, "5.5.4"), r
        c.wait_closed()
    good = assert_serving(d, "dsn")
    assert [e["id"] for e in d.queue_list()] == [good]


# ---------------------------------------------------------------------------------------------
# Facing the internet: per-command deadlines, slots per listener, per-client limits.

def open_silent(port, n, host="127.0.0.1", source=None):
    """n connections that never say anything; returns (sockets, their first reply lines)."""
    socks, firsts = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if source:
            s.bind((source, 0))
        s.settimeout(10)
        s.connect((host, port))
        socks.append(s)
    for s in socks:
        try:
            firsts.append(s.recv(200).split(b"\r\n")[0])
        except OSError:
            firsts.append(b"")
    return socks, firsts


def test_slowloris_command_cut_off(daemon_factory):
    """idle_timeout bounds the whole command line, not the gap between two bytes: a client that
    sends one byte every second is cut off once idle_timeout has passed, with 421 4.4.2. The
    same inside DATA, per line."""
    d = daemon_factory({"idle_timeout": "3s"})
    for inside_data in (False, True):
        with d.smtp(timeout=30) as c:
            c.greet()
            if inside_data:
                c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
                c.cmd_expect("RCPT TO:<b@example.test>", 250)
                c.cmd_expect("DATA", 354)
            start = time.monotonic()
            line = b"NOOP" + b"x" * 100 if not inside_data else b"Subject: " + b"y" * 100
            got = b""
            for ch in line:
                try:
                    c.sock.sendall(bytes([ch]))
                except OSError:
                    break
                time.sleep(1)
                got += c.pending(0.01)
                if got or time.monotonic() - start > 40:
                    break
            got += c.pending(2)
            assert got.startswith(b"421 4.4.2"), f"dribbling client not cut off: {got!r}"
            assert time.monotonic() - start < 40
    assert "timeout after" in d.log_text()
    assert_serving(d, "slowloris")


def test_helo_timeout_on_mx(daemon_factory):
    """An mx listener gives a client helo_timeout (default 30s; here 2s) to introduce itself,
    however busy it keeps the line with other commands; after EHLO the idle timeout rules."""
    mx = free_port_local()
    d = daemon_factory({"idle_timeout": "30s"},
                       extra=f"\n[listener mx]\naddress = 127.0.0.1:{mx}\nrole = mx\nhelo_timeout = 2s\n"
                             "\n[inbound]\ndomains = reply.clinic.test\n")
    from conftest import SMTPConn
    with SMTPConn(mx, timeout=15) as c:
        c.expect(220)
        start = time.monotonic()
        for _ in range(3):
            c.cmd_expect("NOOP", 250)
            time.sleep(0.5)
        got = c.pending(4)
        assert got.startswith(b"421 4.4.2"), got
        assert time.monotonic() - start < 10
    with SMTPConn(mx, timeout=15) as c:
        c.greet()
        time.sleep(3)
        c.cmd_expect("NOOP", 250)
        c.cmd_expect("QUIT", 221)


def free_port_local():
    from conftest import free_port
    return free_port()


def test_max_transactions(daemon_factory):
    d = daemon_factory({"max_transactions": "3"})
    with d.smtp() as c:
        c.greet()
        for i in range(3):
            r = c.send_message("a@clinic.test", ["b@example.test"], MSG)
            assert r.code == 250, r
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 421, "4.7.0")
        assert c.wait_closed(5)
    assert_serving(d, "transactions")


def test_mx_flood_does_not_starve_submission(daemon_factory):
    """200 silent connections to the mx listener from one client: its per-client limit (20 on
    mx) and the listener's own max_clients refuse the rest with 421 4.7.0 at connect, while
    submission on 127.0.0.1 still answers 220 and delivers. Refusals are counted in /metrics
    and logged once a minute, not once per connection."""
    mx = free_port_local()
    d = daemon_factory({"max_clients": "100"},
                       extra=f"\n[listener mx]\naddress = 127.0.0.1:{mx}\nrole = mx\nmax_clients = 30\n"
                             "\n[inbound]\ndomains = reply.clinic.test\n")
    socks, firsts = open_silent(mx, 200, source="127.0.0.9")
    try:
        ok = [f for f in firsts if f.startswith(b"220")]
        refused = [f for f in firsts if f.startswith(b"421 4.7.0")]
        assert len(ok) == 20, f"{len(ok)} sessions from one client on mx (limit 20)"
        assert len(refused) == 180, firsts[:30]
        # from other clients the mx listener fills up to its own max_clients only
        socks2, firsts2 = [], []
        for i in range(20):
            s2, f2 = open_silent(mx, 1, source=f"127.0.1.{i + 1}")
            socks2 += s2
            firsts2 += f2
        assert sum(f.startswith(b"220") for f in firsts2) == 10, firsts2
        assert all(f.startswith(b"421 4.3.2") for f in firsts2 if not f.startswith(b"220")), firsts2
        # submission is untouched
        assert_serving(d, "flood")
        log = d.log_text()
        assert log.count("client [127.0.0.9] refused on listener mx") == 1, \
            "per-client refusals not logged once a minute"
        # ten refusals of a full listener: one line (one timer for the daemon), not ten
        assert log.count("too many connections on listener mx (max_clients=30)") == 1, log
    finally:
        for s in socks + locals().get("socks2", []):
            s.close()


def test_per_client_rates(daemon_factory):
    """connection_rate, message_rate and recipient_rate per client and minute on a listener
    whose limits spare nobody: past them 421 4.7.0 at connect, 421 4.7.0 at MAIL (the session
    ends), 452 4.7.0 at RCPT. Another client is not affected; refusals are logged once a minute."""
    from conftest import SMTPConn
    port = free_port_local()
    d = daemon_factory(extra=f"\n[listener lan]\naddress = 127.0.0.1:{port}\nrole = submission\n"
                             "limits_exempt = none\nconnection_rate = 3\nmessage_rate = 2\n"
                             "recipient_rate = 3\n")

    def connect(source):
        c = SMTPConn.__new__(SMTPConn)
        c.timeout = 10
        c.sock = socket.create_connection(("127.0.0.1", port), timeout=10,
                                          source_address=(source, 0))
        c.buf, c.log, c.eof = b"", [], False
        return c

    c = connect("127.0.0.21")
    c.greet()
    for i in range(2):
        r = c.send_message("a@clinic.test", ["b@example.test"], MSG)
        assert r.code == 250, r
    c.cmd_expect("MAIL FROM:<a@clinic.test>", 421, "4.7.0")
    c.close()
    for _ in range(2):
        c = connect("127.0.0.21")
        c.greet()
        c.cmd_expect("RSET", 250)
        c.close()
    c = connect("127.0.0.21")          # the fourth connection this minute
    r = c.read_reply()
    assert (r.code, r.enhanced) == (421, "4.7.0"), r
    c.close()
    c = connect("127.0.0.22")          # another client
    c.greet()
    c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
    for i in range(3):
        c.cmd_expect(f"RCPT TO:<b{i}@example.test>", 250)
    c.cmd_expect("RCPT TO:<b3@example.test>", 452, "4.7.0")
    c.cmd_expect("RCPT TO:<b4@example.test>", 452, "4.7.0")
    c.cmd_expect("RSET", 250)
    c.close()
    log = d.log_text()
    assert log.count("recipient rate limit exceeded for [127.0.0.22]") == 1, log[-2000:]
    assert "message rate limit exceeded for [127.0.0.21]" in log
    assert "client [127.0.0.21] refused on listener lan: connection_rate exceeded" in log


def refusals_until_close(c, line, most):
    """Sends line up to most times, one at a time: the codes of its replies until the server
    closed the session."""
    codes = []
    for _ in range(most):
        try:
            r = c.cmd(line, timeout=10)
        except (EOFError, OSError):
            break
        codes.append(r.code)
        if r.code == 421:
            break
    return codes


def test_temporary_refusals_count_as_errors(daemon_factory, spf_env):
    """A sender whose SPF look-ups fail is answered 451 (spf = reject) and, as in Postfix, each
    such refusal is an error: the session ends at max_errors instead of having its SPF run
    again for every MAIL without end."""
    d = mx_daemon(daemon_factory, spf="reject")
    from conftest import SMTPConn
    with SMTPConn(d.mx_port) as c:
        c.greet()
        codes = refusals_until_close(c, "MAIL FROM:<x@temp.test>", 50)
        assert codes[-1] == 421 and set(codes[:-1]) == {451}, codes
        assert len(codes) <= 11, codes          # max_errors = 10
        assert c.wait_closed(5)
    rc, out = swaks(d.mx_port, "alice@pass.test", "bob@reply.test")
    assert rc == 0, out


def test_recipient_overshoot(daemon):
    """RCPTs past max_recipients are answered 452 and logged once per transaction; a client that
    never stops is closed once they pass Postfix's overshoot limit (1000), not answered (and
    logged) for as long as it likes."""
    d = daemon    # max_recipients = 100
    with d.smtp() as c:
        c.greet()
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        for i in range(100):
            c.cmd_expect(f"RCPT TO:<r{i}@example.test>", 250)
        codes = refusals_until_close(c, "RCPT TO:<over@example.test>", 1100)
        assert codes[-1] == 421, (len(codes), codes[-3:])
        assert set(codes[:-1]) == {452} and 1000 < len(codes) < 1100, (len(codes), codes[-3:])
        assert c.wait_closed(5)
    assert d.log_text().count("Error: too many recipients") == 1
    assert_serving(d, "overshoot")
