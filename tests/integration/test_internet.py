# The SMTP listeners as the internet sees them, from many client addresses: a network namespace
# of the test's own holds the daemon and IPv6 addresses of several /64s on its loopback, so a
# brute force from 32 addresses of one /64, and a flood from 200 different /64s, come from real
# sockets with real source addresses and nothing leaves the namespace.
import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import POSTERN, POSTERNCTL, Daemon, need_binary, register_secret

IP = shutil.which("ip") or "/usr/sbin/ip"
PASSWORD = "brute-Force-target-9"

# Runs inside the namespace: a list of steps (source address, what to do) -> their results.
CLIENT = textwrap.dedent(r'''
    import base64, hmac, json, socket, sys, time
    port, steps = int(sys.argv[1]), json.loads(sys.argv[2])
    out, held = [], []

    def reply(f):
        lines = []
        while True:
            l = f.readline()
            if not l:
                return lines, None
            lines.append(l.decode().rstrip())
            if l[3:4] != b"-":
                return lines, int(l[:3])

    for src, what, arg in steps:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(20)
        s.bind((src, 0))
        s.connect(("2001:db8:ffff::1", port))
        f = s.makefile("rb")
        lines, code = reply(f)
        if what == "hold":
            held.append(s)
            out.append(code)
            continue
        if code != 220:
            out.append(code)
            s.close()
            continue
        s.sendall(b"EHLO client.test\r\n")
        reply(f)
        t = time.monotonic()
        # CRAM-MD5: the listener offers it before TLS (auth_plaintext_mechanisms)
        s.sendall(b"AUTH CRAM-MD5\r\n")
        lines, code = reply(f)
        if code == 334:
            chal = base64.b64decode(lines[-1][4:])
            mac = hmac.new(arg.encode(), chal, "md5").hexdigest()
            s.sendall(base64.b64encode(("alice " + mac).encode()) + b"\r\n")
            lines, code = reply(f)
        out.append([code, round(time.monotonic() - t, 2)])
        s.sendall(b"QUIT\r\n")
        s.close()
    if held:
        # the submission listener, still answering while all this is held open
        s = socket.create_connection(("127.0.0.1", int(sys.argv[3])), timeout=20)
        f = s.makefile("rb")
        lines, code = reply(f)
        out.append(["submission", code])
        s.sendall(b"QUIT\r\n")
        s.close()
    print(json.dumps(out))
''')


@pytest.fixture
def ns(tmp_path):
    name = f"pinet{os.getpid()}"
    p = subprocess.run([IP, "netns", "add", name], capture_output=True)
    if p.returncode:
        pytest.skip(f"this container cannot create network namespaces: {p.stderr.decode().strip()}")
    try:
        cmds = ["link set lo up", "addr add 2001:db8:ffff::1/128 dev lo"]
        # 32 addresses of one /64, one address in each of 200 other /64s
        cmds += [f"addr add 2001:db8:1:1::{i + 1:x}/128 dev lo" for i in range(32)]
        cmds += [f"addr add 2001:db8:2:{i + 1:x}::1/128 dev lo" for i in range(200)]
        batch = tmp_path / "ip.batch"
        batch.write_text("\n".join(cmds) + "\n")
        p = subprocess.run([IP, "-n", name, "-batch", str(batch)], capture_output=True)
        assert p.returncode == 0, p.stderr.decode()
        yield name
    finally:
        subprocess.run([IP, "netns", "del", name], capture_output=True)


class NsDaemon(Daemon):
    """The harness's daemon, started inside the namespace."""

    def __init__(self, ns, *a, **kw):
        self.ns = ns
        super().__init__(*a, **kw)

    def start(self, wait=True):
        log = open(self.logpath, "ab")
        self.proc = subprocess.Popen([IP, "netns", "exec", self.ns, POSTERN, "-c", self.conf, "-f"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     cwd=self.workdir)
        log.close()
        deadline = time.monotonic() + 20
        while "daemon started" not in self.log_text():
            assert self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.05)
        return self

    def run_client(self, port, steps):
        p = subprocess.run([IP, "netns", "exec", self.ns, sys.executable, "-c", CLIENT, str(port),
                            json.dumps(steps), str(self.port)],
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr.decode()[-3000:]
        return json.loads(p.stdout)


def make(ns, tmp_path, postern, extra):
    need_binary(POSTERNCTL)
    d = NsDaemon(ns, tmp_path / "d", postern=postern, extra=extra)
    register_secret(PASSWORD)
    p = subprocess.run([POSTERNCTL, "-c", d.conf, "user", "add", "alice"], capture_output=True,
                       input=(PASSWORD + "\n").encode(), timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return d.start()


def test_lockout_counts_an_ipv6_64_as_one_client(ns, tmp_path):
    """Five wrong passwords spread over addresses of one /64 lock the whole /64 out: the right
    password from 32 further addresses of it gets 454 4.7.0 (nothing checked, no delay) until
    auth_lockout is over, then 235; a client in another /64 is not affected."""
    sub = 2525
    d = make(ns, tmp_path, {"max_auth_failures": "5", "auth_lockout": "8s"},
             f"\n[listener lan]\naddress = [2001:db8:ffff::1]:{sub}\nrole = submission\n"
             "trusted_networks = 203.0.113.7/32\nauth_plaintext_mechanisms = CRAM-MD5\n")
    try:
        block = [f"2001:db8:1:1::{i + 1:x}" for i in range(32)]
        wrong = [[block[i], "auth", f"wrong{i}"] for i in range(5)]
        right = [[a, "auth", PASSWORD] for a in block]
        res = d.run_client(sub, wrong + right + [["2001:db8:2:1::1", "auth", PASSWORD]])
        assert [c for c, _ in res[:5]] == [535, 535, 535, 535, 421], res[:5]
        locked = res[5:37]
        assert all(c == 454 for c, _ in locked), locked
        assert max(t for _, t in locked) < 0.8, "a locked client's AUTH was delayed or checked"
        assert res[37][0] == 235, "another /64 was locked out too"
        time.sleep(8.5)
        res = d.run_client(sub, [[block[31], "auth", PASSWORD]])
        assert res[0][0] == 235, res
        assert d.log_text().count("too many authentication failures from") == 1
    finally:
        d.stop()


def test_flood_from_one_client_and_from_many_64s(ns, tmp_path):
    """200 silent connections from one IPv6 client to the mx listener: 20 (its per-client
    limit) get 220, the rest 421 4.7.0, and the submission listener on 127.0.0.1 still answers
    220. From 200 different /64s the mx listener is bounded by its own max_clients."""
    mx = 2525
    d = make(ns, tmp_path, {"max_clients": "300"},
             f"\n[listener mx]\naddress = [2001:db8:ffff::1]:{mx}\nrole = mx\nmax_clients = 50\n"
             "\n[inbound]\ndomains = reply.clinic.test\n")
    try:
        res = d.run_client(mx, [["2001:db8:1:1::1", "hold", ""]] * 200)
        codes, sub = res[:-1], res[-1]
        assert codes.count(220) == 20 and codes.count(421) == 180, codes
        assert sub == ["submission", 220], sub
        res = d.run_client(mx, [[f"2001:db8:2:{i + 1:x}::1", "hold", ""] for i in range(200)])
        codes, sub = res[:-1], res[-1]
        assert codes.count(220) == 50 and codes.count(421) == 150, codes
        assert sub == ["submission", 220], sub
        # 150 refusals of a full listener, one line: a flood does not flood the log
        assert d.log_text().count("too many connections on listener mx (max_clients=50)") == 1
    finally:
        d.stop()


# ---------------------------------------------------------------------------------------------
# PROXY protocol: a load balancer in front of a listener names the client.

def proxy_v1(src, port=40000):
    return f"PROXY TCP4 {src} 127.0.0.1 {port} 25\r\n".encode()


def proxy_v2(src, port=40000):
    import socket as _s
    import struct
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return (sig + bytes([0x21, 0x11]) + struct.pack(">H", 12) + _s.inet_aton(src)
            + _s.inet_aton("127.0.0.1") + struct.pack(">HH", port, 25))


def test_proxy_protocol(daemon_factory):
    """From proxy_networks the header names the client: it is the client of Received, the logs,
    trusted_networks and the per-client limits; a bad header closes the connection without a
    greeting; a client outside proxy_networks is an ordinary client whose "PROXY" line is just
    an unknown command."""
    import socket
    from conftest import SMTPConn, free_port
    port = free_port()
    d = daemon_factory(extra=f"\n[listener lb]\naddress = 127.0.0.1:{port}\nrole = submission\n"
                             "proxy_protocol = yes\nproxy_networks = 127.0.0.1/32\n"
                             "trusted_networks = 192.0.2.0/24\nmax_clients_per_ip = 2\n"
                             "limits_exempt = none\nhelo_timeout = 3s\n")

    ids = []
    for hdr in (proxy_v1("192.0.2.5"), proxy_v2("192.0.2.6")):
        with SMTPConn(port) as c:
            c.send(hdr)
            c.greet()
            r = c.send_message("app@clinic.test", ["pat@example.test"],
                               b"Subject: via balancer\r\n\r\nbody\r\n")
            assert r.code == 250, r
            ids.append(r.queue_id())
            c.cmd("QUIT")
    assert b"[192.0.2.5]" in d.queue_cat(ids[0]).split(b"\r\n\r\n")[0]
    assert b"[192.0.2.6]" in d.queue_cat(ids[1]).split(b"\r\n\r\n")[0]
    assert "connect from 192.0.2.5" in d.log_text()
    # the per-client limit counts the named client, not the balancer
    held = []
    try:
        for _ in range(2):
            c = SMTPConn(port)
            c.send(proxy_v1("198.51.100.7"))
            c.expect(220)
            held.append(c)
        c = SMTPConn(port)
        c.send(proxy_v1("198.51.100.7"))
        r = c.read_reply()
        assert (r.code, r.enhanced) == (421, "4.7.0"), r
        c.close()
        c = SMTPConn(port)
        c.send(proxy_v1("198.51.100.8"))
        c.expect(220)
        held.append(c)
    finally:
        for c in held:
            c.close()
    # no header, a broken one, or none in time: closed without a greeting
    for bad in (b"EHLO client.test\r\n", b"PROXY TCP4 300.1.1.1 127.0.0.1 1 25\r\n", b""):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(bad)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        s.close()
        assert not data.startswith(b"220"), (bad, data)
    assert "no valid PROXY protocol header" in d.log_text()
    assert "timeout before the PROXY header ended" in d.log_text()
    # from outside proxy_networks the connection is the client itself
    s = socket.socket()
    s.bind(("127.0.0.2", 0))
    s.connect(("127.0.0.1", port))
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(proxy_v1("192.0.2.5"))
    assert f.readline().startswith(b"500")
    s.close()
    assert_serving_port(d)


def assert_serving_port(d):
    from conftest import assert_serving
    assert_serving(d, "proxy")


def test_proxy_protocol_needs_proxy_networks(tmp_path):
    conf = tmp_path / "p.conf"
    conf.write_text(f"[postern]\ndata_dir = {tmp_path}\n\n[listener lb]\naddress = 127.0.0.1:2525\n"
                    "proxy_protocol = yes\n")
    p = subprocess.run([POSTERN, "-n", "-c", str(conf)], capture_output=True, timeout=60)
    assert p.returncode == 1
    assert "proxy_protocol = yes needs proxy_networks" in p.stderr.decode() + p.stdout.decode()


# ---------------------------------------------------------------------------------------------
# The lockout against guesses already on their way: exchanges begun before the limit was
# reached, and a burst of them answered at once.

def _session(port, src):
    """A greeted session from src."""
    import socket
    from conftest import SMTPConn
    c = SMTPConn.__new__(SMTPConn)
    c.timeout = 30
    c.sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(src, 0))
    c.buf, c.eof, c.log = b"", False, []
    c.greet()
    return c


def _login_prompt(port, src):
    """A session from src waiting for the password of AUTH LOGIN."""
    b64 = base64
    from conftest import SMTPConn
    c = _session(port, src)
    c.send(b"AUTH LOGIN\r\n")
    assert c.read_reply().code == 334
    c.send(b64.b64encode(b"alice") + b"\r\n")
    assert c.read_reply().code == 334
    return c


def test_lockout_holds_for_exchanges_under_way(daemon_factory):
    """AUTH LOGIN exchanges begun before the client reached max_auth_failures have their
    passwords checked only while it is not locked out, and a burst of passwords sent at once on
    many sessions gets no more than max_auth_failures of them checked: the right password after
    the limit gets 454 4.7.0, never 235."""
    b64 = base64
    d = daemon_factory(postern={"max_auth_failures": "3", "auth_lockout": "6s"}, start=False)
    register_secret(PASSWORD)
    p = subprocess.run([POSTERNCTL, "-c", d.conf, "user", "add", "alice"], capture_output=True,
                       input=(PASSWORD + "\n").encode(), timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    d.start()
    src = "127.0.0.9"
    # a burst: twelve sessions at the password prompt, twelve wrong passwords sent together:
    # three are checked, the rest refused unchecked
    sessions = [_login_prompt(d.port, src) for _ in range(12)]
    for i, c in enumerate(sessions):
        c.send(b64.b64encode(f"wrong{i}".encode()) + b"\r\n")
    codes = [c.read_reply(timeout=30).code for c in sessions]
    checked = [x for x in codes if x in (535, 421)]
    assert len(checked) == 3, codes
    assert codes.count(421) == 1, codes
    assert all(x in (535, 421, 454) for x in codes), codes
    for c in sessions:
        c.close()
    # exchanges begun during the lockout's last moments... and before it: prompts opened while
    # not locked, the lock reached on other sessions, then the right password: 454
    time.sleep(6.5)
    sessions = [_login_prompt(d.port, src) for _ in range(4)]
    for i, c in enumerate(sessions[:3]):
        c.send(b64.b64encode(f"again{i}".encode()) + b"\r\n")
        assert c.read_reply(timeout=30).code == (421 if i == 2 else 535)
    sessions[3].send(b64.b64encode(PASSWORD.encode()) + b"\r\n")
    r = sessions[3].read_reply(timeout=30)
    assert (r.code, r.enhanced) == (454, "4.7.0"), r
    for c in sessions:
        c.close()
    # refusals of a locked client are logged once a minute, not once per session
    ir = b64.b64encode(f"\0alice\0{PASSWORD}".encode())
    for _ in range(5):
        c = _session(d.port, src)
        c.send(b"AUTH PLAIN " + ir + b"\r\n")
        assert c.read_reply().code == 454
        c.close()
    assert d.log_text().count(f"AUTH from [{src}] refused: locked out") == 1, d.log_tail()
    time.sleep(6.5)
    c = _session(d.port, src)
    c.send(b"AUTH PLAIN " + ir + b"\r\n")
    assert c.read_reply().code == 235
    c.close()
