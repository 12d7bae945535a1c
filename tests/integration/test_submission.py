# Real clients (swaks, curl, Python's smtplib, and a raw socket for exact transcripts) submit
# messages; `posternctl queue list --json` / `queue cat` must then show each one with the sent
# bytes intact (sha256 compared), a Received: header in front, and Message-ID:/Date: added only
# when missing.
import base64
import json
import email.utils
import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import HOSTNAME, Daemon, SMTPConn, check_entry, check_stored, dot_stuff

SWAKS = shutil.which("swaks") or "/usr/bin/swaks"
CURL = shutil.which("curl") or "/usr/bin/curl"


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    dm = Daemon(tmp_path_factory.mktemp("submission"))
    dm.start()
    yield dm
    dm.stop_and_check()


# ---------------------------------------------------------------------------------------------
# Messages. Each builder returns (sender, recipients, content, mail_options); content is CRLF
# text ending with CRLF, as the server must store it after unstuffing.

def crlf(text):
    if isinstance(text, str):
        text = text.encode("utf-8")
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def m_ascii(client):
    return ("app@clinic.test", ["pat@example.test"], crlf(
        f"From: App <app@clinic.test>\nTo: pat@example.test\nSubject: plain ascii via {client}\n\n"
        "Hello,\n\nthis is a plain ASCII message.\n\t(tab-indented line)\nBye.\n"), [])


def m_8bit(client):
    body = ("From: app@clinic.test\nTo: pat@example.test\n"
            "Subject: 8bit via " + client + " \xe9t\xe9\n"
            "MIME-Version: 1.0\nContent-Type: text/plain; charset=iso-8859-1\n"
            "Content-Transfer-Encoding: 8bit\n\n"
            "Gr\xfc\xdfe aus K\xf6ln: \xe0 bient\xf4t, \xa9 \xbd \xff\xfe\xfd\n"
            + "".join(chr(c) for c in range(0xa0, 0x100)) + "\n")
    return ("app@clinic.test", ["pat@example.test"], crlf(body.encode("latin-1")), ["BODY=8BITMIME"])


def m_utf8(client):
    # swaks cannot ask for SMTPUTF8: an ASCII envelope with UTF-8 headers and body.
    # curl asks for SMTPUTF8 by itself when an address is not ASCII; it would turn a non-ASCII
    # domain into punycode, so its addresses keep an ASCII domain.
    if client == "swaks":
        sender, rcpt, opts = "app@clinic.test", "pat@example.test", ["BODY=8BITMIME"]
    elif client == "curl":
        sender, rcpt, opts = "jürgen@clinic.test", "josé.müller@example.test", ["SMTPUTF8"]
    else:
        sender, rcpt, opts = "jürgen@clinic.test", "θέμις@εxample.test", ["SMTPUTF8", "BODY=8BITMIME"]
    content = crlf(
        f"From: Jürgen Groß <{sender}>\nTo: José Müller <{rcpt}>\n"
        f"Subject: Grüße, 你好, привет ✓ via {client}\n"
        "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\n"
        "Ünïcödé body: 日本語のテキスト, emoji 📨, math ∑∞≠.\n")
    return sender, [rcpt], content, opts


def m_dots(client):
    return ("app@clinic.test", ["pat@example.test"], crlf(
        f"From: app@clinic.test\nTo: pat@example.test\nSubject: dots via {client}\n\n"
        ".\n..\n...\n.leading dot\n..two leading dots\n . space first\nx.\n.\n"
        "last line before the end\n"), [])


def m_multi(client):
    rcpts = ["one@example.test", "two@example.net", "three@other.example.org", "four@example.test"]
    return ("app@clinic.test", rcpts, crlf(
        f"From: app@clinic.test\nTo: one@example.test, two@example.net\nCc: three@other.example.org\n"
        f"Subject: four recipients via {client}\n\nTo several people.\n"), [])


_BIG = {}


def m_big(client):
    # 30 MB of 76-octet lines (well under the 1000-octet text-line limit), deterministic.
    if "content" not in _BIG:
        rnd = random.Random(30)
        raw = rnd.randbytes(30 * 1024 * 1024 * 3 // 4 - 200)
        b64 = base64.encodebytes(raw).replace(b"\n", b"\r\n")
        _BIG["content"] = (b"From: app@clinic.test\r\nTo: pat@example.test\r\nSubject: 30 MB\r\n"
                           b"MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
                           b"Content-Transfer-Encoding: base64\r\n\r\n" + b64)
        assert len(_BIG["content"]) >= 30 * 1024 * 1024 - 1024
    return "app@clinic.test", ["pat@example.test"], _BIG["content"], ["SIZE=%d" % len(_BIG["content"])]


KINDS = {"ascii": m_ascii, "8bit": m_8bit, "utf8": m_utf8, "dots": m_dots, "multi": m_multi,
         "30MB": m_big}


# ---------------------------------------------------------------------------------------------
# Clients. Each returns (queue id, the exact content the server should have stored).

def via_smtplib(d, sender, rcpts, content, opts, tmp_path):
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.test", timeout=120) as s:
        s.ehlo()
        code, msg = s.mail(sender, opts)
        assert code == 250, (code, msg)
        for r in rcpts:
            code, msg = s.rcpt(r, [])
            assert code == 250, (r, code, msg)
        code, msg = s.data(content)
        assert code == 250, (code, msg)
    m = re.search(rb"queued as ([A-Za-z0-9]+)", msg)
    assert m, f"no queue id in the reply {msg!r}"
    return m.group(1).decode(), content


def via_curl(d, sender, rcpts, content, opts, tmp_path):
    path = tmp_path / "curl-message"
    path.write_bytes(content)
    args = [CURL, "-sS", "-v", "--max-time", "180", f"smtp://127.0.0.1:{d.port}/client.test",
            "--mail-from", sender, "--upload-file", str(path)]
    for r in rcpts:
        args += ["--mail-rcpt", r]
    p = subprocess.run(args, capture_output=True, timeout=200)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, f"curl exited {p.returncode}\n{err[-3000:]}"
    m = re.search(r"< 250[ -].*queued as ([A-Za-z0-9]+)", err)
    assert m, f"no queue id in curl's transcript\n{err[-3000:]}"
    return m.group(1), content


def via_swaks(d, sender, rcpts, content, opts, tmp_path):
    # swaks appends CRLF "." CRLF to the data it is given: hand it the message without its final
    # CRLF. It also substitutes %TOKENS% and strips a leading "From " line: the messages have none.
    assert b"%" not in content and not content.startswith(b"From ")
    path = tmp_path / "swaks-message"
    path.write_bytes(content[:-2])
    args = [SWAKS, "--server", "127.0.0.1", "--port", str(d.port), "--helo", "client.test",
            "--from", sender, "--to", ",".join(rcpts), "--data", "@" + str(path), "--timeout", "180"]
    p = subprocess.run(args, capture_output=True, timeout=300)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, f"swaks exited {p.returncode}\n{out[-3000:]}\n{p.stderr[-2000:]!r}"
    m = re.search(r"<~?-* *250[ -].*queued as ([A-Za-z0-9]+)", out)
    assert m, f"no queue id in swaks' transcript\n{out[-3000:]}"
    return m.group(1), content


CLIENTS = {"smtplib": via_smtplib, "curl": via_curl, "swaks": via_swaks}


def verify(d, qid, sender, rcpts, sent):
    body = d.queue_cat(qid)
    added = check_stored(body, sent)
    e = d.wait_status(qid, "captured")
    check_entry(e, body)
    assert e["sender"] == sender, f"sender {e['sender']!r} != {sender!r}"
    assert [r["address"] for r in e["recipients"]] == rcpts, \
        f"recipients {[r['address'] for r in e['recipients']]} != {rcpts}"
    return body, added


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("client", list(CLIENTS))
def test_client_delivers_intact(d, client, kind, tmp_path):
    sender, rcpts, content, opts = KINDS[kind](client)
    qid, sent = CLIENTS[client](d, sender, rcpts, content, opts, tmp_path)
    verify(d, qid, sender, rcpts, sent)


# ---------------------------------------------------------------------------------------------
# Exact transcripts with the raw client.

def test_ehlo_and_simple_commands(d):
    with d.smtp() as c:
        g = c.expect(220)
        assert HOSTNAME in g.lines[0], f"greeting does not name the host: {g!r}"
        r = c.cmd_expect("EHLO client.test", 250)
        ext = {l[4:].split(" ")[0].upper(): l[4:] for l in r.lines[1:]}
        for kw in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING", "SIZE"):
            assert kw in ext, f"EHLO does not announce {kw}: {r!r}"
        assert ext["SIZE"].split() == ["SIZE", str(35 * 1024 * 1024)], f"SIZE announcement: {ext['SIZE']!r}"
        c.cmd_expect("NOOP", 250)
        c.cmd_expect("VRFY someone", 252)
        c.cmd_expect("HELP", 214)
        c.cmd_expect("RSET", 250)
        c.cmd_expect("HELO again.test", 250)
        c.cmd_expect("QUIT", 221)
        assert c.wait_closed(5), "server did not close the connection after QUIT"


def test_helo_session_delivers(d):
    content = crlf("From: old@clinic.test\nTo: pat@example.test\nSubject: HELO only\n\nplain SMTP\n")
    with d.smtp() as c:
        c.expect(220)
        c.cmd_expect("HELO legacy.test", 250)
        r = c.send_message("old@clinic.test", ["pat@example.test"], content)
        if r.code != 250:
            c.fail(f"message refused: {r!r}")
        assert r.enhanced == "2.0.0" and r.lines[-1].startswith("250 2.0.0 Ok: queued as "), r
        c.cmd_expect("QUIT", 221)
    verify(d, r.queue_id(), "old@clinic.test", ["pat@example.test"], content)


def test_pipelined_session(d):
    content = crlf("From: pipe@clinic.test\nTo: a@example.test, b@example.test\nSubject: pipelined\n\n"
                   "sent in one go\n.dot line\n")
    content2 = crlf("From: pipe@clinic.test\nTo: c@example.test\nSubject: pipelined 2\n\nsecond\n")
    with d.smtp() as c:
        r = c.greet()
        assert any("PIPELINING" in l for l in r.lines)
        c.send(b"MAIL FROM:<pipe@clinic.test>\r\nRCPT TO:<a@example.test>\r\n"
               b"RCPT TO:<b@example.test>\r\nDATA\r\n")
        for code in (250, 250, 250, 354):
            c.expect(code)
        c.send(c_stuffed(content))
        r1 = c.expect(250)
        # Second transaction: the whole of it, content included, in one write.
        c.send(b"RSET\r\nMAIL FROM:<pipe@clinic.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        for code in (250, 250, 250, 354):
            c.expect(code)
        c.send(c_stuffed(content2) + b"QUIT\r\n")
        r2 = c.expect(250)
        c.expect(221)
    assert r1.queue_id() and r2.queue_id() and r1.queue_id() != r2.queue_id()
    verify(d, r1.queue_id(), "pipe@clinic.test", ["a@example.test", "b@example.test"], content)
    verify(d, r2.queue_id(), "pipe@clinic.test", ["c@example.test"], content2)


def c_stuffed(content):
    return dot_stuff(content) + b".\r\n"


def bdat_content():
    rnd = random.Random(3030)
    lines = [b"From: chunky@clinic.test", b"To: pat@example.test", b"Subject: BDAT \xe2\x9c\x93",
             b"MIME-Version: 1.0", b"Content-Type: application/x-test; charset=binary",
             b"Content-Transfer-Encoding: 8bit", b""]
    # 8-bit and control octets, lines that DATA would have to stuff: BDAT stores them verbatim.
    allowed = bytes(b for b in range(1, 256) if b not in (10, 13))
    for i in range(300):
        n = rnd.randrange(0, 200)
        lines.append(bytes(rnd.choice(allowed) for _ in range(n)))
        if i % 37 == 0:
            lines += [b".", b"..", b".\t.", b""]
    return b"\r\n".join(lines) + b"\r\n"


def test_bdat_session(d):
    content = bdat_content()
    # Chunk boundaries at awkward places: inside a CRLF, right after a dot line, and tiny chunks.
    cr = content.index(b"\r\n", 500) + 1                 # between CR and LF
    dot = content.index(b"\r\n.\r\n") + 3                # after "\r\n." of a dot line
    cuts = sorted({1, 7, cr, dot, len(content) // 2, len(content) - 3})
    chunks = [content[a:b] for a, b in zip([0] + cuts, cuts + [len(content)])]
    with d.smtp() as c:
        r = c.greet()
        assert any("CHUNKING" in l for l in r.lines), f"no CHUNKING: {r!r}"
        c.cmd_expect("MAIL FROM:<chunky@clinic.test> BODY=8BITMIME", 250)
        c.cmd_expect("RCPT TO:<pat@example.test>", 250)
        for ch in chunks[:-1]:
            c.send(b"BDAT %d\r\n" % len(ch) + ch)
            c.expect(250)
        last = chunks[-1]
        c.send(b"BDAT %d LAST\r\n" % len(last) + last)
        r = c.expect(250)
        assert r.queue_id(), r
        # A second message, every chunk pipelined in one write, ending with an empty LAST chunk.
        c.cmd_expect("MAIL FROM:<chunky@clinic.test> BODY=8BITMIME", 250)
        c.cmd_expect("RCPT TO:<pat@example.test>", 250)
        c.send(b"".join(b"BDAT %d\r\n" % len(ch) + ch for ch in chunks) + b"BDAT 0 LAST\r\n")
        for _ in chunks:
            c.expect(250)
        r2 = c.expect(250)
        assert r2.queue_id() and r2.queue_id() != r.queue_id(), r2
        c.cmd_expect("QUIT", 221)
    verify(d, r.queue_id(), "chunky@clinic.test", ["pat@example.test"], content)
    verify(d, r2.queue_id(), "chunky@clinic.test", ["pat@example.test"], content)


def test_headers_added_when_missing(d):
    content = crlf("From: app@clinic.test\nTo: pat@example.test\nSubject: no id, no date\n\nbody\n")
    with d.smtp() as c:
        c.greet()
        r = c.send_message("app@clinic.test", ["pat@example.test"], content)
        if r.code != 250:
            c.fail(f"refused: {r!r}")
    body, added = verify(d, r.queue_id(), "app@clinic.test", ["pat@example.test"], content)
    rec = added["received"][0].decode("utf-8", "replace")
    assert re.search(r"\bby " + re.escape(HOSTNAME) + r"\b", rec), f"Received has no 'by {HOSTNAME}': {rec}"
    assert "127.0.0.1" in rec, f"Received does not name the client address: {rec}"
    mid = added["message-id"][0].decode()
    assert re.match(r"^Message-ID:\s*<[^<>@\s]+@" + re.escape(HOSTNAME) + r">$", mid, re.I), mid
    date = added["date"][0].decode().split(":", 1)[1].strip()
    when = email.utils.parsedate_to_datetime(date)
    assert abs(when.timestamp() - time.time()) < 300, f"added Date is not now: {date}"
    # Exactly one of each in the whole header section.
    names = [l.split(b":")[0].lower() for l in body.split(b"\r\n\r\n")[0].split(b"\r\n") if l[:1] not in (b" ", b"\t")]
    assert names.count(b"message-id") == 1 and names.count(b"date") == 1, names


def test_headers_not_duplicated_when_present(d):
    content = crlf("Date: Tue, 02 Jan 2024 10:00:00 +0100\nFrom: app@clinic.test\nTo: pat@example.test\n"
                   "Message-Id: <present.1@clinic.test>\nSubject: has both\n\nbody\n")
    with d.smtp() as c:
        c.greet()
        r = c.send_message("app@clinic.test", ["pat@example.test"], content)
        if r.code != 250:
            c.fail(f"refused: {r!r}")
    body, added = verify(d, r.queue_id(), "app@clinic.test", ["pat@example.test"], content)
    assert set(added) == {"received"}, f"added {set(added)} to a message that has Message-ID and Date"
    head = body.split(b"\r\n\r\n")[0]
    assert head.lower().count(b"\r\nmessage-id:") == 1 and head.lower().count(b"\r\ndate:") == 1, head


def test_json_entry_fields(d):
    content = crlf("From: app@clinic.test\nTo: pat@example.test\nSubject: fields\n\nbody\n")
    with d.smtp() as c:
        c.greet()
        before = time.time()
        r = c.send_message("app@clinic.test", ["pat@example.test", "other@example.test"], content)
        if r.code != 250:
            c.fail(f"refused: {r!r}")
    e = d.wait_status(r.queue_id(), "captured")
    body = d.queue_cat(r.queue_id())
    check_entry(e, body)
    for rc in e["recipients"]:
        assert isinstance(rc["attempts"], int) and rc["attempts"] >= 0, rc
    # created: a timestamp of now, in whatever form (epoch seconds/ms or ISO 8601).
    cr = e["created"]
    if isinstance(cr, (int, float)):
        t = cr / 1000 if cr > 1e11 else cr
        assert abs(t - before) < 120, f"created {cr} is not now"
    else:
        assert re.match(r"^\d{4}-\d{2}-\d{2}", str(cr)), f"created {cr!r} is not a date"
    # queue show ID --json describes the same message.
    p = d.ctl("queue", "show", r.queue_id(), "--json")
    shown = json.loads(p.stdout)
    shown = shown[0] if isinstance(shown, list) else shown
    assert shown["id"] == r.queue_id() and shown["sender"] == "app@clinic.test", shown
    # delete removes it, and only it.
    d.ctl("queue", "delete", r.queue_id())
    assert r.queue_id() not in d.stored_ids()
    p = d.ctl("queue", "cat", r.queue_id(), check=False)
    assert p.returncode != 0, "queue cat of a deleted message succeeded"


def test_log_lines(d):
    content = crlf("From: log@clinic.test\nTo: pat@example.test\nSubject: log\n\nbody\n")
    with d.smtp() as c:
        c.greet()
        r = c.send_message("log@clinic.test", ["pat@example.test", "pat2@example.test"], content)
        assert r.code == 250, r
    qid = r.queue_id()
    d.wait_status(qid, "captured")
    deadline = time.monotonic() + 5
    while True:
        log = d.log_text()
        tos = re.findall(re.escape(qid) + r": to=<([^>]*)>, relay=capture, delay=[\d.]+, dsn=2\.0\.0, "
                         r"status=captured\b", log)
        if len(tos) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert re.search(re.escape(qid) + r": from=<log@clinic\.test>, size=\d+, nrcpt=2\b", log), \
        f"no Postfix-shaped from= line for {qid}\n{d.log_tail()}"
    assert sorted(tos) == ["pat2@example.test", "pat@example.test"], \
        f"no Postfix-shaped to= lines for {qid}: {tos}\n{d.log_tail()}"


def test_log_escapes_attacker_bytes(d):
    with d.smtp() as c:
        c.expect(220)
        c.send(b"EHLO evil\x1b[31m\x07\x7f.test\r\n")
        c.read_reply()
        c.send(b"MAIL FROM:<x\x1b]0;pwned\x07@clinic.test>\r\n")
        c.read_reply()
        c.send(b"XYZZY \x1b[2J\x08\x00\x01\r\n")
        c.read_reply()
        c.cmd_expect("EHLO client.test", 250)
        # Valid UTF-8, a C1 control (U+009B, CSI) in an SMTPUTF8 address: accepted and logged.
        r = c.send_message("csi\u009b31m@clinic.test", ["pat@example.test"],
                           b"Subject: c1\r\n\r\nbody\r\n", mail_params="SMTPUTF8")
        assert r.code == 250, r
        c.cmd("QUIT")
    time.sleep(0.3)
    with open(d.logpath, "rb") as f:
        raw = f.read()
    ctl = sorted({b for b in raw if (b < 0x20 and b not in (0x0a, 0x09)) or b == 0x7f})
    assert not ctl, f"raw control bytes {[hex(b) for b in ctl]} reached the log"
    assert b"\xc2\x9b" not in raw, "a raw C1 control (CSI) reached the log"


def test_ipv6_loopback_and_second_address(daemon_factory):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port6 = s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"no ::1 here: {e}")
    dm = daemon_factory(extra=f"address = [::1]:{port6}\n")
    content = crlf("From: six@clinic.test\nTo: pat@example.test\nSubject: over IPv6\n\nbody\n")
    with SMTPConn(port6, host="::1") as c:
        c.greet()
        r = c.send_message("six@clinic.test", ["pat@example.test"], content)
        assert r.code == 250, r
    body, added = verify(dm, r.queue_id(), "six@clinic.test", ["pat@example.test"], content)
    assert b"::1" in added["received"][0], added["received"][0]
    with dm.smtp() as c:       # the IPv4 address of the same listener still works
        c.greet()
        c.cmd_expect("QUIT", 221)


def test_command_sequence(d):
    with d.smtp() as c:
        c.expect(220)
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 503)          # before HELO/EHLO
        c.cmd_expect("EHLO client.test", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 503)           # before MAIL
        c.cmd_expect("DATA", 503)                               # before MAIL
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 503)          # nested MAIL
        c.cmd_expect("DATA", 503)                               # no recipient yet
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.cmd_expect("RSET", 250)
        c.cmd_expect("DATA", 503)                               # RSET forgot the transaction
        c.cmd_expect("MAIL FROM:<a@clinic.test>", 250)
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        c.send(b"BDAT 5\r\nHello")
        c.expect(250)
        c.cmd_expect("DATA", 503)                               # DATA after BDAT
        c.cmd_expect("RSET", 250)
        c.cmd_expect("MAIL FROM:<>", 250)                       # the null reverse-path
        c.cmd_expect("RCPT TO:<b@example.test>", 250)
        content = b"Subject: bounce-like\r\n\r\nnull sender\r\n"
        c.cmd_expect("DATA", 354)
        c.send(dot_stuff(content) + b".\r\n")
        r = c.expect(250)
        c.cmd_expect("QUIT", 221)
    verify(d, r.queue_id(), "", ["b@example.test"], content)
