#!/usr/bin/python3
# SMTP accept latency at SESSIONS concurrent sessions, without and with a browser keeping the
# console's overview open (headless chromium through chromedriver and python3-selenium: its
# page holds the Server-Sent Events stream, which reads the store's counters every second).
# A third column holds only the overview's event stream open (a plain HTTP client, no
# browser): what the daemon pays, without the browser's own CPU on the same machine. Rounds
# cycle through the three, so that a machine whose load changes meanwhile weighs on every
# column alike. Each message is timed from MAIL FROM to the 250 after its
# data (the store's durable commit included). Capture route. Not part of the suite; the
# figures go to BENCHMARKS.md.
#
#   POSTERN_BUILDDIR=_build/release SESSIONS=10 MESSAGES=40 ROUNDS=4 \
#     tests/bench/bench_console_accept.py
import http.client
import os
import re
import shutil
import smtplib
import socket
import statistics
import sys
import threading
import time

SESSIONS = int(os.environ.get("SESSIONS", "10"))
MESSAGES = int(os.environ.get("MESSAGES", "40"))      # per session and round
ROUNDS = int(os.environ.get("ROUNDS", "4"))            # each: one of every column
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_console import PASSWORD, start_daemon, stop_daemon  # noqa: E402
BODY = ("From: app@bench.test\r\nTo: someone@example.test\r\nSubject: bench\r\n\r\n" +
        "x" * 70 + "\r\n") * 28                       # about 2 KB


def session(sp, out):
    with smtplib.SMTP("127.0.0.1", sp, timeout=60) as s:
        s.ehlo("bench.test")
        for _ in range(MESSAGES):
            t = time.monotonic()
            assert s.mail("app@bench.test")[0] == 250
            assert s.rcpt("someone@example.test")[0] == 250
            code, _ = s.data(BODY.encode())
            assert code == 250
            out.append((time.monotonic() - t) * 1000)


def one_round(sp):
    times, threads = [], []
    for _ in range(SESSIONS):
        th = threading.Thread(target=session, args=(sp, times))
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    return times


def browser(hp):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    opts = Options()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--window-size=1280,900",
              "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(shutil.which("chromedriver") or
                                           "/usr/bin/chromedriver"), options=opts)
    base = f"http://127.0.0.1:{hp}"
    drv.get(base + "/console/login")
    drv.find_element(By.ID, "user").send_keys("bench")
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.CSS_SELECTOR, "form.login button").click()
    deadline = time.monotonic() + 30
    while drv.current_url != base + "/console/" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert drv.current_url == base + "/console/", drv.current_url
    return drv


def login_cookie(hp):
    c = http.client.HTTPConnection("127.0.0.1", hp, timeout=30)
    c.request("GET", "/console/login")
    r = c.getresponse()
    page = r.read().decode()
    login = [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie"][0]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    c.request("POST", "/console/login", f"csrf={token}&user=bench&password={PASSWORD}",
              {"Content-Type": "application/x-www-form-urlencoded", "Cookie": login})
    r = c.getresponse()
    r.read()
    assert r.status == 303, r.status
    return [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and
            v.startswith("postern_console=")][0]


class Stream:
    """/console/events held open and read, as the overview's script does."""

    def __init__(self, hp, cookie):
        self.conn = http.client.HTTPConnection("127.0.0.1", hp, timeout=30)
        self.conn.request("GET", "/console/events", headers={"Cookie": cookie})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200
        self.events = 0
        self.stop = False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        try:
            while not self.stop:
                line = self.resp.readline()
                if not line:
                    return
                self.events += line.startswith(b"event: counts")
        except (OSError, AttributeError, http.client.HTTPException):
            return                                 # closed under it by close()

    def close(self):
        self.stop = True
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    work, d, sp, hp = start_daemon("bench-console-accept.",
                                   "message_rate = 0\nrecipient_rate = 0\n")
    without, with_stream, with_browser = [], [], []
    drv = None
    try:
        one_round(sp)                                  # warm-up, not counted
        cookie = login_cookie(hp)
        for r in range(ROUNDS):
            without += one_round(sp)
            st = Stream(hp, cookie)
            time.sleep(2)
            with_stream += one_round(sp)
            assert st.events >= 2, st.events       # it followed the counters meanwhile
            st.close()
            drv = browser(hp)
            time.sleep(2)                              # its event stream is open
            with_browser += one_round(sp)
            assert re.search(r'data-count="captured"', drv.page_source)
            drv.quit()
            drv = None
            print(f"round {r + 1}/{ROUNDS} done", flush=True)
        print(f"{SESSIONS} sessions, {len(without)} messages per column, ms from MAIL FROM to "
              "the 250 after the data")
        print("| | median | p90 | p99 |\n| --- | ---: | ---: | ---: |")
        for name, xs in (("nothing open", without),
                         ("the overview's event stream open (no browser)", with_stream),
                         ("the overview open in headless chromium", with_browser)):
            print(f"| {name} | {statistics.median(xs):.1f} | {pct(xs, 0.9):.1f} | "
                  f"{pct(xs, 0.99):.1f} |")
    finally:
        if drv:
            drv.quit()
        stop_daemon(work, d)


if __name__ == "__main__":
    sys.exit(main())
