#!/usr/bin/python3
# Throughput of the sendgrid transport: smtp-source -> Postern -> SendGrid-shaped HTTP sink on
# loopback (tests/bench/http_sink.py), at 1 and 8 delivery workers, over HTTPS (a self-signed
# certificate named in ca_file: the real APIs' case) and plain HTTP, with connection reuse (one
# libcurl handle per worker, keep-alive: how Postern runs) and without it (the
# POSTERN_BENCH_HTTP_NO_REUSE knob: a new connection, and TLS handshake, per request). Not part
# of the test suite; the figures go to BENCHMARKS.md.
#
#   tests/bench/bench_sendgrid.py                     # binaries from $POSTERN_BUILDDIR, else .
#   MESSAGES=2000 WORKERS="1 8" SCHEMES="https http" SESSIONS=8 SIZE=4096 REPEAT=3 \
#     tests/bench/bench_sendgrid.py
#
# Two figures per run: end to end (smtp-source's first connection until the store has no
# recipient left pending, like the relay table of bench.sh) and delivery alone (the sink's
# first to last mail/send request). Each is the median of REPEAT runs; "connections" is what
# the sink accepted for the runs of that row, the key check included.
import json
import os
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("POSTERN_BUILDDIR") or ".")
POSTERN = os.path.join(BUILD, "postern")
SOURCE = os.environ.get("SMTP_SOURCE", "/usr/sbin/smtp-source")
MESSAGES = int(os.environ.get("MESSAGES", "2000"))
WORKERS = [int(w) for w in os.environ.get("WORKERS", "1 8").split()]
SESSIONS = int(os.environ.get("SESSIONS", "8"))
SIZE = int(os.environ.get("SIZE", "4096"))
REPEAT = int(os.environ.get("REPEAT", "3"))
SCHEMES = os.environ.get("SCHEMES", "https http").split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"bench: process {proc.args[0]} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listens on 127.0.0.1:{port}")


def sink_get(port, path, scheme):
    ctx = ssl._create_unverified_context() if scheme == "https" else None
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", timeout=10,
                                context=ctx) as r:
        return json.loads(r.read())


def pending(db):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return c.execute("select count(*) from recipients where status in "
                         "('queued','deferred')").fetchone()[0]


def sent(db):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as c:
        return c.execute("select count(*) from recipients where status = 'sent'").fetchone()[0]


def make_cert(work):
    crt, key = os.path.join(work, "sink.pem"), os.path.join(work, "sink.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt, "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return crt, key


def row(work, workers, reuse, scheme, cert):
    sink_port, port = free_port(), free_port()
    sink = subprocess.Popen(["/usr/bin/python3", os.path.join(HERE, "http_sink.py"),
                             str(sink_port)] + (list(cert) if scheme == "https" else []),
                            stdout=subprocess.DEVNULL)
    data = tempfile.mkdtemp(dir=work, prefix=f"{scheme}-w{workers}-{'reuse' if reuse else 'fresh'}-")
    where = (f"api_url = https://localhost:{sink_port}\nca_file = {cert[0]}" if scheme == "https"
             else f"api_url = http://127.0.0.1:{sink_port}")
    key = os.path.join(data, "sg.key")
    with open(key, "w") as f:
        f.write("SG.bench\n")
    os.chmod(key, 0o600)
    conf = os.path.join(data, "postern.conf")
    with open(conf, "w") as f:
        f.write(f"""[postern]
user =
hostname = bench.test.example
data_dir = {data}/data
max_clients = 500
delivery_workers = {workers}
retry_min = 1s

[listener submission]
address = 127.0.0.1:{port}
role = submission

[upstream sg]
type = sendgrid
api_key_file = {key}
{where}

[route default]
upstream = sg
""")
    env = dict(os.environ)
    env.pop("POSTERN_BENCH_HTTP_NO_REUSE", None)
    if not reuse:
        env["POSTERN_BENCH_HTTP_NO_REUSE"] = "1"
    log = open(os.path.join(data, "postern.log"), "wb")
    postern = subprocess.Popen([POSTERN, "-c", conf, "-f"], stderr=log, env=env)
    try:
        wait_port(sink_port, sink)
        wait_port(port, postern)
        db = os.path.join(data, "data", "postern.db")
        e2e, delivery, conns = [], [], 0
        for _ in range(REPEAT):
            sink_get(sink_port, "/reset", scheme)
            before = sent(db) if os.path.exists(db) else 0
            t0 = time.monotonic()
            subprocess.run([SOURCE, "-s", str(SESSIONS), "-d", "-l", str(SIZE), "-m",
                            str(MESSAGES), "-f", "bench@clinic.test", "-t", "rcpt@example.test",
                            "-M", "bench.client.test", f"127.0.0.1:{port}"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
            while pending(db):
                time.sleep(0.01)
            t1 = time.monotonic()
            st = sink_get(sink_port, "/stats", scheme)
            if sent(db) - before != MESSAGES or st["sends"] != MESSAGES:
                print(f"bench: WARNING: {sent(db) - before} sent, {st['sends']} requests for "
                      f"{MESSAGES} messages", file=sys.stderr)
            e2e.append(MESSAGES / (t1 - t0))
            if st["last"] > st["first"]:
                delivery.append((st["sends"] - 1) / (st["last"] - st["first"]))
            conns += st["connections"] - 1          # less the /stats request's own
        return statistics.median(e2e), statistics.median(delivery) if delivery else 0, conns
    finally:
        postern.terminate()
        postern.wait(timeout=60)
        sink.terminate()
        sink.wait(timeout=10)
        log.close()


def main():
    for b in (POSTERN, SOURCE):
        if not os.access(b, os.X_OK):
            sys.exit(f"bench: {b} not found (build Postern; apt-get install postfix for smtp-source)")
    work = tempfile.mkdtemp(dir=BUILD, prefix="bench-sendgrid.")
    try:
        print(f"sendgrid transport: {MESSAGES} messages of {SIZE} bytes per run from "
              f"{SESSIONS} smtp-source sessions, median of {REPEAT}; {os.cpu_count()} CPUs")
        print(f"{'scheme':>6} {'workers':>7} {'reuse':>5} {'end-to-end msg/s':>17} "
              f"{'delivery msg/s':>15} {'connections':>12}")
        cert = make_cert(work)
        for scheme in SCHEMES:
            for w in WORKERS:
                for reuse in (True, False):
                    e2e, dl, conns = row(work, w, reuse, scheme, cert)
                    print(f"{scheme:>6} {w:>7} {'yes' if reuse else 'no':>5} {e2e:>17.0f} "
                          f"{dl:>15.0f} {conns:>12}", flush=True)
    finally:
        if os.environ.get("KEEP") == "1":
            print(f"bench: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
