#!/usr/bin/python3
# The console's queue page over a big queue: MESSAGES messages submitted with Postfix's
# smtp-source (capture route), then the time the console takes to answer its pages, median of
# REPEAT requests each, measured from a client on loopback. Not part of the suite; the figures
# go to BENCHMARKS.md.
#
#   POSTERN_BUILDDIR=_build/release MESSAGES=100000 tests/bench/bench_console.py
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

BUILD = os.path.abspath(os.environ.get("POSTERN_BUILDDIR", "."))
MESSAGES = int(os.environ.get("MESSAGES", "100000"))
REPEAT = int(os.environ.get("REPEAT", "20"))
SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
PASSWORD = "bench-password"


def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(hp, method, path, cookies, fields=None):
    c = http.client.HTTPConnection("127.0.0.1", hp, timeout=120)
    h = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}
    body = None
    if fields is not None:
        body = urllib.parse.urlencode(fields)
        h["Content-Type"] = "application/x-www-form-urlencoded"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    text = r.read().decode("utf-8", "replace")
    for k, v in r.getheaders():
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            cookies[name] = rest.split(";", 1)[0]
    c.close()
    return r.status, text


def start_daemon(prefix, listener_extra=""):
    """A daemon in a fresh directory under BUILD with a submission listener and the console
    (user bench); returns (work, process, smtp port, http port) once it accepts connections."""
    work = tempfile.mkdtemp(prefix=prefix, dir=BUILD)
    sp, hp = port(), port()
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=PASSWORD.encode(),
                            capture_output=True, check=True).stdout.decode().strip()
    conf = os.path.join(work, "postern.conf")
    with open(conf, "w") as f:
        f.write(f"[postern]\nuser =\nhostname = bench.test\ndata_dir = {work}/data\nmax_clients = 200\n\n"
                f"[listener submission]\naddress = 127.0.0.1:{sp}\nrole = submission\n"
                "max_clients_per_ip = 200\n" + listener_extra + "\n"
                f"[inbound]\nhttp_address = 127.0.0.1:{hp}\nhttp_auth = none\n\n"
                f"[console]\nenabled = yes\nusers = bench:{hashed}\n")
    log = open(os.path.join(work, "postern.log"), "wb")
    d = subprocess.Popen([os.path.join(BUILD, "postern"), "-c", conf, "-f"], stdout=log,
                         stderr=log)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", sp), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return work, d, sp, hp


def stop_daemon(work, d):
    d.send_signal(signal.SIGTERM)
    d.wait(timeout=60)
    if not os.environ.get("KEEP"):
        shutil.rmtree(work, ignore_errors=True)


def main():
    work, d, sp, hp = start_daemon("bench-console.")
    try:
        t = time.monotonic()
        subprocess.run([SOURCE, "-s", "50", "-m", str(MESSAGES), "-l", "2048", "-f",
                        "app@bench.test", "-t", "someone@example.test", f"127.0.0.1:{sp}"],
                       check=True)
        print(f"submitted {MESSAGES} messages in {time.monotonic() - t:.1f} s", flush=True)
        cookies = {}
        _, page = request(hp, "GET", "/console/login", cookies)
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        status, _ = request(hp, "POST", "/console/login", cookies,
                            {"csrf": token, "user": "bench", "password": PASSWORD})
        assert status == 303, status
        # a cursor near the end: the page a reader reaches after paging through everything
        _, page = request(hp, "GET", "/console/captured", cookies)
        newest = re.search(r'href="/console/msg/([0-9A-F]+)"', page).group(1)
        cases = {
            "queue, first page": "/console/queue",
            "queue, state filter": "/console/queue?state=captured",
            "queue, sender glob matching none": "/console/queue?sender=nobody*",
            "captured inbox, newest first": "/console/captured",
            "overview": "/console/",
            "one message": f"/console/msg/{newest}",
        }
        _, page = request(hp, "GET", "/console/queue", cookies)
        nxt = re.search(r'rel="next" href="\?after=([0-9]+\.[0-9A-F]+)', page)
        if nxt:
            cases["queue, second page (keyset)"] = "/console/queue?after=" + nxt.group(1)
        print(f"| page | median ms | max ms |\n| --- | ---: | ---: |")
        for name, path in cases.items():
            times = []
            for _ in range(REPEAT):
                t = time.monotonic()
                status, _ = request(hp, "GET", path, cookies)
                times.append((time.monotonic() - t) * 1000)
                assert status == 200, (path, status)
            print(f"| {name} | {statistics.median(times):.1f} | {max(times):.1f} |", flush=True)
    finally:
        stop_daemon(work, d)


if __name__ == "__main__":
    sys.exit(main())
