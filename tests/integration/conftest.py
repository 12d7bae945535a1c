# Shared machinery of the integration suite: where the binaries are, a daemon on a free loopback
# port with its own data directory and log, posternctl as a library, a raw-socket SMTP client
# that keeps an exact transcript, and the check that a stored message is what the client sent.
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

SRCDIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILDDIR = os.path.abspath(os.environ.get("POSTERN_BUILDDIR") or SRCDIR)
POSTERN = os.path.join(BUILDDIR, "postern")
POSTERNCTL = os.path.join(BUILDDIR, "posternctl")
HOSTNAME = "relay.test.example"

# Lines in a daemon's log that mean a bug, whatever the test was about.
BAD_LOG = re.compile(r"panic|ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error")

# Every secret a test hands Postern (secret files, tokens the test servers issue, passwords
# given to posternctl) is registered here, and no daemon log of the whole suite may contain one
# (not at any verbosity -- so every daemon runs with debug = yes).
SECRETS = set()
SECRET_MIN = 8          # shorter strings could turn up in a log by chance


def register_secret(s):
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    if s and len(s) >= SECRET_MIN:
        SECRETS.add(s)
    return s


def secret_file(path, content):
    """Writes a 0600 secret file (content plus a newline) and registers the secret."""
    register_secret(content)
    with open(path, "w") as f:
        f.write(content + "\n")
    os.chmod(path, 0o600)
    return str(path)


def need_binary(path):
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is not built (set POSTERN_BUILDDIR or run make)")


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The raw SMTP client.

class SMTPError(AssertionError):
    pass


class Reply:
    def __init__(self, lines):
        self.lines = lines                     # list of str (without CRLF)
        self.code = int(lines[-1][:3])
        m = re.match(r"^\d{3}[ -](\d\.\d{1,3}\.\d{1,3})\b", lines[-1])
        self.enhanced = m.group(1) if m else None
        self.text = "\n".join(line[4:] for line in lines)

    def __repr__(self):
        return "Reply(" + " | ".join(self.lines) + ")"

    def queue_id(self):
        m = re.search(r"queued as ([A-Za-z0-9]+)", self.lines[-1])
        return m.group(1) if m else None


class SMTPConn:
    """A client that sends exactly the bytes it is given and reads complete (multi-line)
    replies, keeping a transcript for failure messages."""

    def __init__(self, port, host="127.0.0.1", timeout=15):
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.eof = False
        self.log = []

    # -- transcript
    def transcript(self, limit=4000):
        out = []
        for d, data in self.log:
            s = data if len(data) <= 300 else data[:200] + b"...(%d bytes)..." % len(data) + data[-60:]
            out.append(f"{d} {s!r}")
        text = "\n".join(out)
        return text[-limit:]

    def fail(self, msg):
        raise SMTPError(f"{msg}\n--- transcript ---\n{self.transcript()}")

    # -- I/O
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.log.append((">", data))
        self.sock.sendall(data)

    def _fill(self, timeout):
        self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            self.log.append(("<", b"<EOF>"))
            return False
        self.log.append(("<", d))
        self.buf += d
        return True

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            if self.eof:
                raise EOFError("connection closed before a complete line")
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete line")
            self._fill(left)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def read_reply(self, timeout=None):
        """One complete reply. Raises EOFError if the peer closed first, socket.timeout if
        nothing complete arrived in time."""
        lines = []
        while True:
            line = self.read_line(timeout)
            if not re.match(r"^\d{3}([ -]|$)", line):
                self.fail(f"malformed reply line {line!r}")
            lines.append(line)
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def expect(self, code, enhanced=None, timeout=None):
        try:
            r = self.read_reply(timeout)
        except (EOFError, socket.timeout, OSError) as e:
            self.fail(f"expected {code} {enhanced or ''}, got {type(e).__name__}: {e}")
        if r.code != code or (enhanced is not None and r.enhanced != enhanced):
            self.fail(f"expected {code} {enhanced or ''}, got {r!r}")
        return r

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.read_reply(timeout)

    def cmd_expect(self, line, code, enhanced=None, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.expect(code, enhanced, timeout)

    def pending(self, wait=0.5):
        """Whatever the server says within `wait` seconds (b"" if nothing)."""
        deadline = time.monotonic() + wait
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._fill(left)
            except (socket.timeout, BlockingIOError):
                break
        data, self.buf = self.buf, b""
        return data

    def wait_closed(self, timeout=5):
        """True when the server closes the connection within timeout (data read is discarded)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except socket.timeout:
                return False
            except OSError:
                return True
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- conveniences
    def greet(self, helo="client.test"):
        self.expect(220)
        return self.cmd_expect(f"EHLO {helo}", 250)

    def send_message(self, sender, rcpts, content, mail_params=""):
        """A whole transaction with DATA; content is the message before dot-stuffing.
        Returns the final reply."""
        r = self.cmd_expect(f"MAIL FROM:<{sender}>{(' ' + mail_params) if mail_params else ''}".encode(), 250)
        for rc in rcpts:
            self.cmd_expect(f"RCPT TO:<{rc}>".encode(), 250)
        self.cmd_expect("DATA", 354)
        self.send(dot_stuff(content) + b".\r\n")
        return self.read_reply(timeout=120)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def dot_stuff(content):
    """What goes on the wire for DATA (without the final "."): CRLF content, leading dots
    doubled, a CRLF added if the content does not end with one."""
    if content and not content.endswith(b"\r\n"):
        content += b"\r\n"
    lines = content.split(b"\r\n")
    out = b"\r\n".join((b"." + l) if l.startswith(b".") else l for l in lines)
    return out


# ---------------------------------------------------------------------------------------------
# What a stored message must look like.

ADDED_NAMES = {b"received", b"message-id", b"date"}


def header_names(content):
    """Lower-case names of the header fields of a CRLF message."""
    end = content.find(b"\r\n\r\n")
    head = content if end < 0 else content[:end + 2]
    if content.startswith(b"\r\n"):
        return []
    names = []
    for line in head.split(b"\r\n"):
        if not line or line[:1] in (b" ", b"\t"):
            continue
        if b":" in line:
            names.append(line.split(b":", 1)[0].strip().lower())
    return names


def split_prefix_fields(prefix):
    """Parses the bytes the server put in front of the message into header fields
    [(lower-case name, whole field bytes)]; fails if it is not a sequence of fields."""
    fields = []
    if prefix and not prefix.endswith(b"\r\n"):
        raise AssertionError(f"added header block does not end with CRLF: {prefix[-200:]!r}")
    for line in prefix.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise AssertionError(f"continuation line before any header: {line!r}")
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
            continue
        m = re.match(rb"^([!-9;-~]+):", line)
        if not m:
            raise AssertionError(f"added line is not a header field: {line[:200]!r}")
        fields.append((m.group(1).lower(), line))
    return fields


def _top_fields(stored):
    """Offsets just past each of the leading header fields named Received/Message-ID/Date."""
    offs, names, pos = [], [], 0
    while True:
        m = re.match(rb"(Received|Message-ID|Date):[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", stored[pos:], re.I)
        if not m:
            return offs, names
        names.append(m.group(1).lower())
        pos += m.end()
        offs.append(pos)


def check_stored(stored, sent, submission=True):
    """The stored message must be exactly the bytes the client sent (after SMTP-layer
    unstuffing) plus a Received: header in front and, on a submission listener, the Message-ID:
    and Date: the message lacked — each added either at the top (after Received) or at the end of
    the header section. Everything else byte-for-byte: the remainder's sha256 equals the sent
    one's. Returns {name: [field bytes]} of what was added."""
    assert len(stored) >= len(sent), \
        f"stored message ({len(stored)} bytes) shorter than sent ({len(sent)} bytes)"
    sent_names = header_names(sent)
    hend = sent.find(b"\r\n\r\n")
    head, tail = (sent[:hend + 2], sent[hend + 2:]) if hend >= 0 and not sent.startswith(b"\r\n") else (None, None)
    offs, _ = _top_fields(stored)
    found = None
    for k in range(1, len(offs) + 1):
        rest = stored[offs[k - 1]:]
        if sha256(rest) == sha256(sent):
            found = (stored[:offs[k - 1]], b"", rest)
            break
        if head is not None and len(rest) > len(sent) and rest.startswith(head) and rest.endswith(tail):
            mid = rest[len(head):len(rest) - len(tail)]
            try:
                fields = split_prefix_fields(mid)
            except AssertionError:
                continue
            if fields and all(n in (b"message-id", b"date") for n, _ in fields):
                rebuilt = head + tail
                assert sha256(rebuilt) == sha256(sent)
                found = (stored[:offs[k - 1]], mid, rest)
                break
    if found is None:
        i = 0
        t = stored[-len(sent):] if sent else b""
        while i < len(sent) and t[i] == sent[i]:
            i += 1
        raise AssertionError(
            "stored message is not the sent message plus added Received/Message-ID/Date fields "
            f"(compared from the end, the first difference is at byte {i} of {len(sent)} sent)"
            f"\nstored head: {stored[:700]!r}\nsent head: {sent[:400]!r}")
    top, bottom, _ = found
    fields = split_prefix_fields(top) + split_prefix_fields(bottom)
    names = [n for n, _ in split_prefix_fields(top)]
    assert names[0] == b"received", f"first added field is {names[0]!r}, expected Received"
    all_names = [n for n, _ in fields]
    for n in all_names:
        assert n in ADDED_NAMES, f"unexpected added header field {n!r}"
    for n in (b"message-id", b"date"):
        if n in sent_names:
            assert n not in all_names, f"{n!r} added although the message has one"
        elif submission:
            assert all_names.count(n) == 1, f"{n!r} missing from the message and added {all_names.count(n)} times"
    added = {}
    for n, f in fields:
        added.setdefault(n.decode(), []).append(f)
    return added


# ---------------------------------------------------------------------------------------------
# The daemon.

def render_config(port, data_dir, postern=None, extra=""):
    settings = {
        "hostname": HOSTNAME,
        "data_dir": data_dir,
        "max_message_size": "35M",
        "max_recipients": "100",
        "max_clients": "200",
        "idle_timeout": "5m",
        "max_errors": "10",
        "debug": "yes",            # the most a log can say: still no secret in it
        # the suite runs as root on machines without a postern user: stay root on purpose
        # (a missing user = is refused rather than silently run as root)
        "user": "",
    }
    settings.update(postern or {})
    lines = ["[postern]"]
    lines += [f"{k} = {v}" for k, v in settings.items() if v is not None]
    lines += ["", "[listener submission]", f"address = 127.0.0.1:{port}", "role = submission", ""]
    return "\n".join(lines) + extra


class Daemon:
    def __init__(self, workdir, postern=None, extra="", port=None, data_dir=None):
        need_binary(POSTERN)
        self.workdir = str(workdir)
        self.port = port or free_port()
        self.data_dir = data_dir or os.path.join(self.workdir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.conf = os.path.join(self.workdir, "postern.conf")
        self.logpath = os.path.join(self.workdir, "postern.log")
        self.proc = None
        self.killed = False
        self.starts = 0
        self.write_config(postern, extra)

    def write_config(self, postern=None, extra=""):
        self.settings = postern
        with open(self.conf, "w") as f:
            f.write(render_config(self.port, self.data_dir, postern, extra))

    # -- life cycle
    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        log = open(self.logpath, "ab")
        self.starts += 1
        self.killed = False
        log.write(f"=== test harness: start #{self.starts} ===\n".encode())
        log.flush()
        self.proc = subprocess.Popen([POSTERN, "-c", self.conf, "-f"], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, cwd=self.workdir)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"postern exited with {self.proc.returncode} during start-up\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    # A complete, polite session, so it does not linger in the server.
                    s.settimeout(5)
                    data = b""
                    while b"\r\n" not in data:
                        d = s.recv(4096)
                        if not d:
                            break
                        data += d
                    if data.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        while s.recv(4096):
                            pass
                        return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail(f"postern did not accept connections on port {self.port}\n{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def kill(self):
        """SIGKILL and reap."""
        self.killed = True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout=30):
        """SIGTERM; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"postern did not exit within {timeout}s of SIGTERM\n{self.log_tail()}")
        return self.proc.returncode

    def stop_and_check(self, timeout=30):
        rc = self.stop(timeout)
        assert rc == 0, f"postern exited with {rc} after SIGTERM\n{self.log_tail()}"
        self.check_log()

    def log_text(self):
        try:
            with open(self.logpath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=40):
        lines = self.log_text().splitlines()
        return "--- postern log (tail) ---\n" + "\n".join(lines[-n:])

    def check_log(self):
        text = self.log_text()
        bad = [l for l in text.splitlines() if BAD_LOG.search(l)]
        assert not bad, "postern log shows a bug:\n" + "\n".join(bad[:20]) + "\n" + self.log_tail(80)
        leaked = [x for x in list(SECRETS) if x in text]
        assert not leaked, ("postern log shows a secret: " +
                            ", ".join(f"{x[:3]}...({len(x)} chars)" for x in leaked[:5]))

    def vm_hwm_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    # -- posternctl
    def ctl(self, *args, check=True, timeout=120):
        need_binary(POSTERNCTL)
        p = subprocess.run([POSTERNCTL, "-c", self.conf, *args], capture_output=True, timeout=timeout,
                           cwd=self.workdir)
        if check:
            assert p.returncode == 0, \
                f"posternctl {' '.join(args)} exited {p.returncode}: {p.stderr.decode('utf-8', 'replace')[:2000]}"
        return p

    def queue_list(self):
        p = self.ctl("queue", "list", "--json")
        try:
            data = json.loads(p.stdout)
        except ValueError as e:
            raise AssertionError(f"queue list --json is not JSON ({e}): {p.stdout[:500]!r}")
        assert isinstance(data, list), f"queue list --json is not an array: {p.stdout[:300]!r}"
        return data

    def queue_entry(self, qid):
        for e in self.queue_list():
            if e.get("id") == qid:
                return e
        return None

    def queue_cat(self, qid):
        return self.ctl("queue", "cat", qid).stdout

    def wait_status(self, qid, status="captured", timeout=15):
        """Polls until every recipient of qid has status; returns the entry."""
        deadline = time.monotonic() + timeout
        e = None
        while time.monotonic() < deadline:
            e = self.queue_entry(qid)
            if e and e["recipients"] and all(r["status"] == status for r in e["recipients"]):
                return e
            time.sleep(0.2)
        raise AssertionError(f"message {qid} did not reach status {status}: {e}")

    def stored_ids(self):
        return {e["id"] for e in self.queue_list()}

    def smtp(self, timeout=15):
        return SMTPConn(self.port, timeout=timeout)


def check_entry(entry, body):
    """Consistency of one queue entry with its stored bytes (no half-written entry)."""
    for k in ("id", "sender", "size", "created", "recipients"):
        assert k in entry, f"queue entry without {k!r}: {entry}"
    assert entry["recipients"], f"queue entry {entry['id']} has no recipient"
    for r in entry["recipients"]:
        for k in ("address", "status", "attempts", "last_reply"):
            assert k in r, f"recipient without {k!r}: {r}"
        assert r["status"] in ("queued", "deferred", "sent", "bounced", "held", "captured"), r
    assert entry["size"] == len(body), \
        f"entry {entry['id']}: size {entry['size']} but queue cat gives {len(body)} bytes"
    if entry.get("body_sha256") is not None:
        assert entry["body_sha256"].lower() == sha256(body), \
            f"entry {entry['id']}: body_sha256 {entry['body_sha256']} != sha256 of stored bytes {sha256(body)}"


def good_message(tag):
    return (f"From: good@client.test\r\nTo: rcpt@example.test\r\nSubject: good {tag}\r\n"
            f"Message-ID: <good-{tag}@client.test>\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n"
            f"An ordinary message ({tag}).\r\n").encode()


def assert_serving(d, tag="check"):
    """Another client gets a message accepted and stored intact: the server still serves."""
    content = good_message(tag)
    with d.smtp() as c:
        c.greet()
        r = c.send_message("good@client.test", ["rcpt@example.test"], content)
        if r.code != 250 or not r.queue_id():
            c.fail(f"good message refused while checking the server still serves: {r!r}")
        c.cmd("QUIT")
    check_stored(d.queue_cat(r.queue_id()), content)
    return r.queue_id()


# ---------------------------------------------------------------------------------------------
# Fixtures.

@pytest.fixture
def daemon_factory(tmp_path):
    """make(postern={key: value}, extra="...") -> a started Daemon; all are stopped (SIGTERM,
    exit 0, clean log) at the end of the test."""
    made = []

    def make(postern=None, extra="", start=True, name=None, **kw):
        wd = tmp_path / (name or f"d{len(made)}")
        wd.mkdir()
        d = Daemon(wd, postern, extra, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    errors = []
    for d in made:
        try:
            if d.proc is not None and not d.killed:
                d.stop_and_check()
            elif d.proc is not None:
                d.check_log()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


# ---------------------------------------------------------------------------------------------
# Shared by the suites that talk to upstreams: test certificates, aiosmtpd peers (secret_file is
# near the top, with the registry of secrets no log may show).

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from upstream import Certs
    return Certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def upstreams(tmp_path):
    from upstream import Upstream
    made = []

    def make(**kw):
        up = Upstream(tmp_path / f"sink{len(made)}", **kw).start()
        made.append(up)
        return up

    yield make
    for up in made:
        up.stop()
