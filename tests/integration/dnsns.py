# A network namespace for the tests that need DNS: loopback up, its own resolv.conf, and dnsmasq
# answering the records a test gives (MX, SRV, A) on the namespace's 127.0.0.1. Programs run in it
# with `ip netns exec NAME`; servers a test starts there (in_netns) are reached on its loopback or
# on addresses added to it, so no packet ever leaves the machine.
import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
import threading
import time

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
CLONE_NEWNET = 0x40000000

_counter = itertools.count()


def _run(*args, **kw):
    return subprocess.run(list(args), capture_output=True, timeout=60, **kw)


@contextlib.contextmanager
def dns_namespace(tmp_path, records, local=("test.example",), addresses=()):
    """records: dnsmasq options (--mx-host=..., --srv-host=..., --host-record=...); local: the
    domains it answers alone (anything else there is NXDOMAIN); addresses: extra addresses put
    on the namespace's loopback (e.g. 192.0.2.25/32), for names outside 127/8. Yields its name."""
    if not os.path.exists(DNSMASQ):
        pytest.fail("dnsmasq is not installed (dnsmasq-base, TEST_PKGS in scripts/dev.sh)")
    name = f"pdns{os.getpid()}x{next(_counter)}"
    p = _run(IP, "netns", "add", name)
    if p.returncode:
        pytest.skip(f"this container cannot create network namespaces: {p.stderr.decode().strip()}")
    etc = f"/etc/netns/{name}"
    dns = None
    try:
        assert _run(IP, "-n", name, "link", "set", "lo", "up").returncode == 0
        for a in addresses:
            p = _run(IP, "-n", name, "addr", "add", a, "dev", "lo")
            assert p.returncode == 0, p.stderr
        os.makedirs(etc, exist_ok=True)
        with open(f"{etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
        dns = subprocess.Popen([IP, "netns", "exec", name, DNSMASQ, "--keep-in-foreground",
                                "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
                                "--pid-file=", "--listen-address=127.0.0.1", "--bind-interfaces",
                                "--port=53", *[f"--local=/{d}/" for d in local], *records],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "wb"))
        deadline = time.monotonic() + 20
        while b":53" not in _run(IP, "netns", "exec", name, "ss", "-Hlun").stdout:
            assert dns.poll() is None, (tmp_path / "dnsmasq.log").read_text()
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)
        yield name
    finally:
        if dns:
            dns.terminate()
            dns.wait(timeout=30)
        _run(IP, "netns", "del", name)
        shutil.rmtree(etc, ignore_errors=True)


def in_netns(name, make):
    """make() run on a thread that has entered namespace name: the sockets it creates, and the
    threads it starts (which inherit the namespace), live there. Returns what make returns."""
    out = {}

    def run():
        libc = ctypes.CDLL(None, use_errno=True)
        there = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(there, CLONE_NEWNET) != 0:
                out["error"] = OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
                return
        finally:
            os.close(there)
        try:
            out["value"] = make()
        except BaseException as e:          # re-raised in the test's own thread
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]
