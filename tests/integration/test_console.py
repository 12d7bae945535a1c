# The web console (console/): its security model checked over plain HTTP (no credentials, no
# CSRF token, wrong passwords, the headers of every answer) and its pages in a real browser
# (Debian's chromium through chromedriver and python3-selenium, headless) against a daemon
# that takes real SMTP submissions. Screenshots of each page go to $POSTERN_BUILDDIR/screenshots.
import html
import http.client
import http.server
import os
import re
import shutil
import smtplib
import subprocess
import threading
import time
import urllib.parse
from email.message import EmailMessage

import pytest

from test_correspondence import (corr_daemon, mx_send, send_out, sent_message, sg_events,  # noqa: F401
                                 sink, spf_env, wait_record, wait_records)
from conftest import (BUILDDIR, POSTERN, SRCDIR, free_port, need_binary, register_secret,
                      secret_file)

PASSWORD = register_secret("console-Pass-w0rd")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SHOTS = os.path.join(BUILDDIR, "screenshots")
XSS = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>"


def crypt_hash(password):
    """A sha512-crypt hash, as `openssl passwd -6` makes one (what doc/postern.conf.5 shows)."""
    p = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password.encode(),
                       capture_output=True, check=True)
    h = p.stdout.decode().strip()
    assert h.startswith("$6$"), h
    return h


def console_conf(http_port, dead_port, users=None, extra_console=""):
    users = users or f"admin:{crypt_hash(PASSWORD)}"
    return (f"\n[upstream down]\ntype = smtp\nhost = 127.0.0.1\nport = {dead_port}\n"
            "tls = none\nhelo = relay.test.example\n\n"
            "[route slow]\nrecipient = *@slow.test\nupstream = down\n\n"
            "[route default]\nupstream = capture\n\n"
            f"[inbound]\ndomains = reply.test\nhttp_address = 127.0.0.1:{http_port}\n"
            "http_auth = none\n"
            # loopback is exempt from the per-client limits by default; these tests are the
            # client the limits are for
            "http_exempt_networks = 192.0.2.0/24\nhttp_auth_failures = 3\n"
            "http_auth_lockout = 10m\nhttp_request_rate = 100000\n\n"
            f"[console]\nenabled = yes\nusers = {users}\n" + extra_console)


@pytest.fixture
def console(daemon_factory):
    http_port, dead_port = free_port(), free_port()
    d = daemon_factory(postern={"retry_min": "1h", "retry_max": "2h"},
                       extra=console_conf(http_port, dead_port))
    d.http_port = http_port
    return d


class Client:
    """A browser-less client: cookies kept by hand, redirects not followed."""

    def __init__(self, port):
        self.port = port
        self.cookies = {}

    def request(self, method, path, fields=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if fields is not None:
            body = urllib.parse.urlencode(fields, doseq=True)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                value = rest.split(";", 1)[0]
                if "Max-Age=0" in v:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = value
        c.close()
        r.text = data.decode("utf-8", "replace")
        return r

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, fields):
        return self.request("POST", path, fields)

    def csrf(self, text):
        m = re.search(r'name="csrf" value="([0-9a-f]{64})"', text)
        assert m, f"no CSRF token in the page:\n{text[:2000]}"
        return m.group(1)

    def login(self, user="admin", password=PASSWORD):
        token = self.csrf(self.get("/console/login").text)
        return self.post("/console/login", {"csrf": token, "user": user, "password": password})


def submit(d, sender, rcpts, subject="hello", html=None, attach_name=None, from_name=None):
    m = EmailMessage()
    m["From"] = f'"{from_name}" <{sender}>' if from_name else sender
    m["To"] = ", ".join(rcpts)
    m["Subject"] = subject
    m.set_content("plain text body\n")
    if html:
        m.add_alternative(html, subtype="html")
    if attach_name:
        m.add_attachment(b"attached bytes\n", maintype="application", subtype="octet-stream",
                         filename=attach_name)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=15) as s:
        s.ehlo("client.test")
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, resp = s.data(m.as_bytes())
        assert code == 250, resp
    # the id of what was just accepted, from the answer to DATA
    return re.search(rb"queued as ([0-9A-F]+)", resp).group(1).decode()


def wait_state(d, qid, states, timeout=15):
    deadline = time.monotonic() + timeout
    e = None
    while time.monotonic() < deadline:
        e = d.queue_entry(qid)
        if e and all(r["status"] in states for r in e["recipients"]):
            return e
        time.sleep(0.2)
    raise AssertionError(f"{qid} did not reach {states}: {e}")


# ---- the security model, over plain HTTP -----------------------------------------------------

def test_refused_without_credentials(console):
    qid = submit(console, "alice@client.test", ["bob@example.test"], subject="secret-subject")
    c = Client(console.http_port)
    for path in ("/console/", "/console/queue", "/console/captured", f"/console/msg/{qid}",
                 f"/console/msg/{qid}/raw", f"/console/msg/{qid}/html", "/console/events"):
        r = c.get(path)
        assert r.status == 303 and r.getheader("Location") == "/console/login", (path, r.status)
        assert "secret-subject" not in r.text and qid not in r.text, path
    # a session id that is not one
    c.cookies["postern_console"] = "0" * 64
    assert c.get("/console/queue").status == 303
    r = c.post("/console/action", {"action": "delete", "id": qid, "csrf": "0" * 64})
    assert r.status == 403, r.status
    assert console.queue_entry(qid), "a refused POST deleted the message"
    # what is served without a login: the login page and the two embedded assets
    assert c.get("/console/login").status == 200
    css = c.get("/console/assets/console.css")
    assert css.status == 200 and css.getheader("Content-Type").startswith("text/css")
    with open(os.path.join(SRCDIR, "console", "assets", "console.css")) as f:
        assert css.text == f.read(), "the CSS served is not the one in console/assets/"


def test_every_post_needs_its_csrf_token(console):
    qid = submit(console, "alice@client.test", ["carol@slow.test"])
    wait_state(console, qid, ("queued", "deferred"))
    c = Client(console.http_port)
    assert c.login().status == 303
    page = c.get(f"/console/msg/{qid}")
    assert page.status == 200, page.status
    token = c.csrf(page.text)
    for fields in ({"action": "hold", "id": qid},
                   {"action": "hold", "id": qid, "csrf": ""},
                   {"action": "hold", "id": qid, "csrf": "0" * 64},
                   {"action": "hold", "id": qid, "csrf": token[:-1]}):
        r = c.post("/console/action", fields)
        assert r.status == 403, (fields, r.status)
        assert all(x["status"] != "held" for x in console.queue_entry(qid)["recipients"])
    for path in ("/console/logout", "/console/action", "/console/release-to"):
        assert c.post(path, {"action": "delete", "id": qid}).status == 403
    assert console.queue_entry(qid), "deleted without a token"
    # a login without the token its form carries is refused too
    other = Client(console.http_port)
    r = other.post("/console/login", {"user": "admin", "password": PASSWORD})
    assert r.status == 403 and "postern_console" not in other.cookies
    # with the token the same action works (so the refusals above are the token's doing)
    r = c.post("/console/action", {"action": "hold", "id": qid, "csrf": token,
                                   "back": f"/console/msg/{qid}"})
    assert r.status == 303 and r.getheader("Location") == f"/console/msg/{qid}"
    wait_state(console, qid, ("held",))
    assert re.search(rf"console: admin: hold {qid}: done", console.log_text())
    # the overview counts it, held, on the upstream that last had it
    assert re.search(r'>down</a></th><td>0</td><td>0</td><td>1</td>', c.get("/console/").text)
    # an open redirect is not offered
    r = c.post("/console/action", {"action": "release", "id": qid, "csrf": token,
                                   "back": "//evil.example/"})
    assert r.getheader("Location") == "/console/queue"
    # log out ends the session on the server: the old cookie no longer opens a page
    sid = c.cookies["postern_console"]
    assert c.post("/console/logout", {"csrf": token}).status == 303
    c.cookies["postern_console"] = sid
    assert c.get("/console/queue").status == 303


def test_headers_and_cookie(console):
    qid = submit(console, "alice@client.test", ["bob@example.test"],
                 html="<meta HTTP-Equiv='refresh' content='0;url=http://127.0.0.1:9/'>"
                      "<p>hi<img src='http://127.0.0.1:9/x.png'></p>")
    c = Client(console.http_port)
    r = c.get("/console/login")
    csp = r.getheader("Content-Security-Policy")
    for part in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                 "img-src 'self' data:", "frame-src 'self'", "frame-ancestors 'none'"):
        assert part in csp, csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert r.getheader("X-Frame-Options") == "DENY"
    assert r.getheader("X-Content-Type-Options") == "nosniff"
    token = c.csrf(r.text)
    c2 = http.client.HTTPConnection("127.0.0.1", console.http_port, timeout=15)
    c2.request("POST", "/console/login",
               urllib.parse.urlencode({"csrf": token, "user": "admin", "password": PASSWORD}),
               {"Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"postern_console_login={c.cookies['postern_console_login']}"})
    r = c2.getresponse()
    r.read()
    cookie = [v for k, v in r.getheaders() if k.lower() == "set-cookie" and
              v.startswith("postern_console=")][0]
    assert re.match(r"postern_console=[0-9a-f]{64}; ", cookie), cookie
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/console/"):
        assert flag in cookie, cookie
    assert "Secure" not in cookie      # secure_cookie = no: the listener speaks plain HTTP
    c.cookies["postern_console"] = cookie.split(";")[0].split("=", 1)[1]
    # the mail's HTML: its own answer, with a CSP that fetches nothing and runs nothing
    r = c.get(f"/console/msg/{qid}/html")
    assert r.status == 200 and "<p>hi" in r.text
    assert "http-equiv" not in r.text.lower() and "x-no-equiv" in r.text
    csp = r.getheader("Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp and "sandbox" in csp, csp
    assert "script-src" not in csp
    page = c.get(f"/console/msg/{qid}").text
    assert re.search(r'<iframe class="mail" sandbox src="/console/msg/' + qid + '/html"', page)
    assert f'href="/console/msg/{qid}?images=1#hb">Load remote images</a>' in page
    # remote images when asked: images from anywhere, still no script, frame or style sheet
    r = c.get(f"/console/msg/{qid}/html?images=1")
    assert r.status == 200 and "<p>hi" in r.text
    csp = r.getheader("Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data: http: https:" in csp, csp
    assert "sandbox" in csp and "script-src" not in csp and "frame-src" not in csp, csp
    page = c.get(f"/console/msg/{qid}?images=1").text
    assert re.search(r'<iframe class="mail" sandbox src="/console/msg/' + qid +
                     r'/html\?images=1"', page)
    assert "Block remote images" in page
    for other in ("/console/queue?images=1", f"/console/msg/{qid}/raw?images=1"):
        assert "img-src 'self' data:;" in c.get(other).getheader("Content-Security-Policy")
    # downloads are never rendered in the console's origin
    r = c.get(f"/console/msg/{qid}/part/0")
    assert r.getheader("Content-Disposition", "").startswith("attachment")
    assert r.getheader("Content-Type") == "application/octet-stream"


def _disposition_name(value):
    """The file name a browser takes from Content-Disposition: filename* (RFC 5987) first."""
    m = re.search(r"filename\*=UTF-8''([^;\s]+)", value)
    assert m, value
    return urllib.parse.unquote(m.group(1), errors="strict")


def test_download_keeps_the_attachments_name(console):
    """An attachment downloads under its own name, made safe: only its last path component,
    no control character, no leading dot, non-ASCII through filename* (RFC 5987) with an ASCII
    fallback, and nothing of the name unencoded in the header."""
    names = {"r\u00e9sum\u00e9 \u2713.pdf": "r\u00e9sum\u00e9 \u2713.pdf",
             "../../etc/passwd": "passwd",
             "..\\win\\boot.ini": "boot.ini",
             '"; filename=evil.exe; x="': '"; filename=evil.exe; x="',
             ".bashrc": "bashrc"}
    for name, want in names.items():
        m = EmailMessage()
        m["From"] = "alice@client.test"
        m["To"] = "bob@example.test"
        m["Subject"] = "attachment " + want
        m.set_content("see the attachment\n")
        m.add_attachment(b"attached bytes\n", maintype="application",
                         subtype="octet-stream", filename=name)
        with smtplib.SMTP("127.0.0.1", console.port, timeout=15) as s:
            s.sendmail("alice@client.test", ["bob@example.test"], m.as_bytes())
    c = Client(console.http_port)
    assert c.login().status == 303
    for e in console.queue_list():
        page = c.get(f"/console/msg/{e['id']}").text
        subject = re.search(r"<h1>attachment (.*?)</h1>", page).group(1)
        want = html.unescape(subject)
        r = c.get(f"/console/msg/{e['id']}/part/1")
        assert r.status == 200 and r.text == "attached bytes\n", (r.status, r.text)
        value = r.getheader("Content-Disposition")
        assert value.startswith('attachment; filename="'), value
        assert _disposition_name(value) == want, (value, want)
        # the quoted fallback is one quoted-string of printable ASCII, then filename*
        fallback = re.fullmatch(r'attachment; filename="([\x20-\x7e]*)"; filename\*=\S+', value)
        assert fallback and '"' not in fallback.group(1) and "\\" not in fallback.group(1), value
        assert value.isascii() and "\r" not in value and "\n" not in value
    # a part without a name is part-N
    r = c.get(f"/console/msg/{e['id']}/part/0")
    assert _disposition_name(r.getheader("Content-Disposition")) == "part-0"


def test_sessions_outlive_a_reload_not_a_restart(console):
    """As doc/postern.conf.5 says: sessions are in the daemon's memory; SIGHUP keeps them, a
    restart ends them (the browser is sent to the login page, nothing is shown)."""
    import signal as sig
    c = Client(console.http_port)
    assert c.login().status == 303
    assert c.get("/console/queue").status == 200
    console.signal(sig.SIGHUP)
    deadline = time.monotonic() + 15
    while "reload -- configuration" not in console.log_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "reload -- configuration" in console.log_text()
    assert c.get("/console/queue").status == 200, "a reload ended the session"
    assert console.stop() == 0
    console.start()
    r = c.get("/console/queue")
    assert r.status == 303 and r.getheader("Location") == "/console/login"
    assert c.login().status == 303 and c.get("/console/queue").status == 200


def test_wrong_password_is_rate_limited(console):
    c = Client(console.http_port)
    token = c.csrf(c.get("/console/login").text)
    for i in range(3):
        r = c.post("/console/login", {"csrf": token, "user": "admin", "password": f"wrong-{i}"})
        assert r.status == 403 and "Wrong user name or password" in r.text, r.status
        assert "postern_console" not in c.cookies
    # locked out: even the right password is not looked at now, nor any page
    r = c.post("/console/login", {"csrf": token, "user": "admin", "password": PASSWORD})
    assert r.status == 429, r.status
    assert c.get("/console/login").status == 429
    assert "postern_console" not in c.cookies
    assert r.getheader("Retry-After")
    log = console.log_text()
    assert "console: a wrong user name or password from 127.0.0.1" in log
    assert "locked out" in log
    assert "wrong-0" not in log


def test_plain_password_refused(tmp_path):
    need_binary(POSTERN)
    conf = tmp_path / "postern.conf"
    conf.write_text("[postern]\nhostname = relay.test\ndata_dir = " + str(tmp_path / "data") +
                    "\n\n[listener submission]\naddress = 127.0.0.1:2525\n" +
                    console_conf(free_port(), free_port(), users="admin:hunter2hunter2"))
    p = subprocess.run([POSTERN, "-c", str(conf), "-n"], capture_output=True, text=True)
    assert p.returncode != 0
    assert "not a crypt(3) hash" in p.stderr and "hunter2" not in p.stderr, p.stderr


# ---- in a browser ------------------------------------------------------------------------------

def _browser_missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "python3-selenium is not installed (apt-get install python3-selenium)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


class Hits(http.server.BaseHTTPRequestHandler):
    """A test host on loopback: anything a message's script or image would fetch lands here."""
    seen = []

    def do_GET(self):
        Hits.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def browser():
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
              "--no-pings", "--dns-prefetch-disable", "--window-size=1280,900",
              # nothing leaves loopback: every other host goes to a proxy that is not there
              "--proxy-server=http://127.0.0.1:9"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    os.makedirs(SHOTS, exist_ok=True)
    yield drv
    drv.quit()


@pytest.fixture
def browser_optional(request):
    """The browser when there is one (for screenshots), else None: the test runs without."""
    if _browser_missing():
        return None
    return request.getfixturevalue("browser")


def shot(drv, name):
    drv.save_screenshot(os.path.join(SHOTS, f"console-{name}.png"))


def no_alert(drv):
    from selenium.common.exceptions import NoAlertPresentException
    try:
        text = drv.switch_to.alert.text
    except NoAlertPresentException:
        return
    raise AssertionError(f"a script ran: alert({text!r})")


def browser_login(drv, console):
    from selenium.webdriver.common.by import By
    base = f"http://127.0.0.1:{console.http_port}"
    drv.get(base + "/console/")
    assert drv.current_url.endswith("/console/login")
    shot(drv, "login")
    drv.find_element(By.ID, "user").send_keys("admin")
    drv.find_element(By.ID, "password").send_keys(PASSWORD)
    drv.find_element(By.CSS_SELECTOR, "form.login button").click()
    # the click may return before the answer (crypt(3) is slow, slower under ASan)
    try:
        wait_for(lambda: drv.current_url == base + "/console/", "the overview after logging in")
    except AssertionError:
        raise AssertionError(f"still at {drv.current_url} after logging in\n{console.log_tail(30)}")
    return base


def wait_for(cond, what, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def state_text(drv):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    try:
        return drv.find_element(By.CSS_SELECTOR, ".state").text
    except WebDriverException:      # between two pages
        return None


def test_browser_queue_live_open_hold_release(console, browser):
    from selenium.webdriver.common.by import By
    drv = browser
    first = submit(console, "alice@client.test", ["bob@example.test"], subject="first one")
    base = browser_login(drv, console)
    assert drv.find_element(By.CSS_SELECTOR, '[data-count="captured"]').text == "1"
    shot(drv, "overview")
    # the queue page open, a message arrives: its row appears without a reload
    drv.get(base + "/console/queue")
    assert first in drv.page_source
    drv.execute_script("window.notReloaded = true;")
    qid = submit(console, "alice@client.test", ["dave@slow.test"], subject="live arrival")
    wait_for(lambda: drv.find_elements(By.LINK_TEXT, qid), "the new row to appear live")
    assert drv.execute_script("return window.notReloaded === true;"), "the page was reloaded"
    shot(drv, "queue")
    # open it, hold it, release it
    drv.find_element(By.LINK_TEXT, qid).click()
    assert drv.find_element(By.TAG_NAME, "h1").text == "live arrival"
    assert "dave@slow.test" in drv.page_source
    shot(drv, "message")
    wait_state(console, qid, ("queued", "deferred"))
    drv.find_element(By.CSS_SELECTOR, 'button[value="hold"]').click()
    wait_state(console, qid, ("held",))
    # the store may say so before the browser has the page the POST redirected to
    wait_for(lambda: state_text(drv) == "held", "the message page to show held")
    drv.find_element(By.CSS_SELECTOR, 'button[value="release"]').click()
    wait_state(console, qid, ("queued", "deferred"))
    wait_for(lambda: state_text(drv) in ("queued", "deferred"), "the message page to show it waiting")
    log = console.log_text()
    assert f"console: admin: hold {qid}: done" in log
    assert f"console: admin: release {qid}: done" in log
    # bulk: tick both, hold the one that can be held
    drv.get(base + "/console/queue")
    for box in drv.find_elements(By.CSS_SELECTOR, 'input[name="id"]'):
        box.click()
    drv.find_element(By.CSS_SELECTOR, '#bulk button[value="hold"]').click()
    wait_state(console, qid, ("held",))
    # on a phone's width
    drv.set_window_size(390, 844)
    drv.get(base + "/console/queue")
    width = drv.execute_script("return document.documentElement.scrollWidth;")
    assert width <= 400, f"the queue page is {width}px wide on a phone"
    shot(drv, "queue-phone")
    drv.set_window_size(1280, 900)


def test_browser_captured_html_is_inert(console, browser):
    from selenium.webdriver.common.by import By
    drv = browser
    hits_port = free_port()
    Hits.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", hits_port), Hits)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        host = f"http://127.0.0.1:{hits_port}"
        html = (f"<html><head><meta http-equiv='refresh' content='0;url={host}/refresh'>"
                f"<META HTTP-EQUIV=\"Refresh\" CONTENT=\"1; URL={host}/refresh2\">"
                f"<link rel='stylesheet' href='{host}/style.css'></head>"
                f"<body><h2 id='mailhead'>Hello from the mail</h2>"
                f"<script>alert('mail');parent.document.title='pwned';"
                f"fetch('{host}/script');</script>"
                f"<img src='{host}/remote.png' alt='remote'>"
                f"<img src=x onerror=\"new Image().src='{host}/onerror'\">"
                f"<a id='js' href=\"javascript:alert('link')\">click</a>"
                f"<iframe src='{host}/frame'></iframe></body></html>")
        qid = submit(console, "mallory@client.test", ["victim@example.test"],
                     subject=XSS + " javascript:alert(5)", html=html,
                     attach_name='"><img src=x onerror=alert(3)>.txt', from_name=XSS)
        base = browser_login(drv, console)
        pages = ["/console/", "/console/queue", "/console/captured",
                 "/console/captured?q=" + urllib.parse.quote("<script>"),
                 f"/console/msg/{qid}"]
        for p in pages:
            drv.get(base + p)
            time.sleep(0.5)
            no_alert(drv)
            assert drv.title.endswith("Postern") and "pwned" not in drv.title, drv.title
            # the payloads are text on the page, never elements
            assert not drv.find_elements(By.CSS_SELECTOR, 'main img[src="x"], main script')
        assert drv.find_element(By.TAG_NAME, "h1").text == XSS + " javascript:alert(5)"
        assert XSS in drv.find_element(By.TAG_NAME, "main").text   # the From name, as text
        assert '"><img src=x onerror=alert(3)>.txt' in drv.find_element(By.CSS_SELECTOR,
                                                                          "ul.parts").text
        # the HTML in its sandbox: shown, its script not run, nothing fetched
        frame = drv.find_element(By.CSS_SELECTOR, "iframe.mail")
        assert frame.get_attribute("sandbox") == ""
        drv.switch_to.frame(frame)
        assert drv.find_element(By.ID, "mailhead").text == "Hello from the mail"
        drv.find_element(By.ID, "js").click()
        drv.switch_to.default_content()
        time.sleep(1)
        no_alert(drv)
        assert "pwned" not in drv.title
        shot(drv, "message-html")
        drv.get(base + "/console/captured")
        shot(drv, "captured")
        assert Hits.seen == [], f"the message reached the test host: {Hits.seen}"
        # the frame's URL opened on its own is sandboxed by its CSP too
        drv.get(base + f"/console/msg/{qid}/html")
        time.sleep(0.5)
        no_alert(drv)
        assert Hits.seen == [], f"the message reached the test host: {Hits.seen}"
        # asked for, the remote image loads, and only it: still no script, style sheet,
        # frame or refresh
        drv.get(base + f"/console/msg/{qid}")
        drv.find_element(By.LINK_TEXT, "Load remote images").click()
        wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, 'iframe.mail[src$="?images=1"]'),
                 "the message page with remote images")
        wait_for(lambda: "/remote.png" in Hits.seen, "the remote image to be fetched")
        time.sleep(1.5)             # the refresh would have come after a second
        no_alert(drv)
        assert "pwned" not in drv.title
        assert Hits.seen == ["/remote.png"], f"more than the image was fetched: {Hits.seen}"
        shot(drv, "message-images")
        drv.find_element(By.LINK_TEXT, "Block remote images").click()
        wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, 'iframe.mail[src$="/html"]'),
                 "the message page without remote images")
    finally:
        srv.shutdown()
        srv.server_close()


def test_event_stream_counts_and_shutdown(console):
    """/console/events sends the counters when they change, and an open stream does not hold
    up the daemon's exit."""
    c = Client(console.http_port)
    assert c.login().status == 303
    conn = http.client.HTTPConnection("127.0.0.1", console.http_port, timeout=15)
    conn.request("GET", "/console/events",
                 headers={"Cookie": f"postern_console={c.cookies['postern_console']}"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    first = r.readline() + r.readline()
    assert first.startswith(b"event: counts\ndata: {") and b'"captured":0' in first, first
    r.readline()
    submit(console, "alice@client.test", ["bob@example.test"])
    deadline = time.monotonic() + 15
    seen = b""
    while b'"captured":1' not in seen and time.monotonic() < deadline:
        seen += r.readline()
    assert b'"captured":1' in seen, seen
    started = time.monotonic()
    assert console.stop(timeout=20) == 0
    assert time.monotonic() - started < 10, "an open event stream held up the exit"
    conn.close()
    console.check_log()


@pytest.fixture
def console_sink(daemon_factory, upstreams):
    """A console whose capture route keeps everything, and a real SMTP server on loopback as
    [upstream sink] that no route uses: captured mail can be released to it by hand."""
    up = upstreams()
    http_port, dead_port = free_port(), free_port()
    d = daemon_factory(postern={"retry_min": "1h", "retry_max": "2h"},
                       extra=f"\n[upstream sink]\ntype = smtp\nhost = 127.0.0.1\nport = {up.port}\n"
                             "tls = none\nhelo = relay.test.example\n" +
                             console_conf(http_port, dead_port))
    d.http_port = http_port
    d.sink = up
    return d


def test_release_to_upstream_needs_token_and_confirmation(console_sink):
    d = console_sink
    qid = submit(d, "alice@client.test", ["bob@example.test"], subject="captured one")
    wait_state(d, qid, ("captured",))
    c = Client(d.http_port)
    assert c.login().status == 303
    page = c.get(f"/console/msg/{qid}").text
    token = c.csrf(page)
    # offered: the configured upstreams, not capture
    assert sorted(re.findall(r"<option>([^<]*)</option>", page.split('id="release-upstream"')[1]
                             .split("</select>")[0])) == ["down", "sink"]
    # without the token: refused, nothing changes
    for fields in ({"id": qid, "upstream": "sink", "confirm": "yes"},
                   {"id": qid, "upstream": "sink", "confirm": "yes", "csrf": "0" * 64}):
        assert c.post("/console/release-to", fields).status == 403
    # with it but not confirmed: the page that asks, nothing changes
    r = c.post("/console/release-to", {"id": qid, "upstream": "sink", "csrf": token})
    assert r.status == 200 and "Release to upstream sink</button>" in r.text, r.text[-2000:]
    assert "bob@example.test" in r.text
    # an upstream that is not configured, or capture itself, is refused
    for bad in ("nowhere", "capture", ""):
        r = c.post("/console/release-to", {"id": qid, "upstream": bad, "csrf": token,
                                           "confirm": "yes"})
        assert r.status == 400, (bad, r.status)
    time.sleep(1)
    assert all(x["status"] == "captured" for x in d.queue_entry(qid)["recipients"])
    assert d.sink.received() == []
    # confirmed: delivered by the sink, logged with the console user
    r = c.post("/console/release-to", {"id": qid, "upstream": "sink", "csrf": token,
                                       "confirm": "yes"})
    assert r.status == 303 and r.getheader("Location") == f"/console/msg/{qid}"
    got = d.sink.wait_messages(1)
    assert got[0]["rcpts"] == ["bob@example.test"] and b"captured one" in got[0]["data"]
    wait_state(d, qid, ("sent",))
    assert re.search(rf"console: admin: release {qid} to upstream sink: done \(1 captured",
                     d.log_text())
    assert 'id="release-upstream"' not in c.get(f"/console/msg/{qid}").text


def test_browser_release_to_upstream(console_sink, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    d, drv = console_sink, browser
    qid = submit(d, "alice@client.test", ["carol@example.test"], subject="release me")
    wait_state(d, qid, ("captured",))
    base = browser_login(drv, d)
    drv.get(base + f"/console/msg/{qid}")
    Select(drv.find_element(By.ID, "release-upstream")).select_by_visible_text("sink")
    drv.find_element(By.ID, "release-to").click()
    wait_for(lambda: drv.find_elements(By.ID, "confirm"), "the page that asks to confirm")
    assert "carol@example.test" in drv.find_element(By.TAG_NAME, "main").text
    shot(drv, "release-confirm")
    assert d.sink.received() == [], "released before it was confirmed"
    drv.find_element(By.ID, "confirm").click()
    wait_for(lambda: drv.current_url == base + f"/console/msg/{qid}",
             "the message page after the release")
    got = d.sink.wait_messages(1)
    assert got[0]["rcpts"] == ["carol@example.test"]
    wait_state(d, qid, ("sent",))
    drv.refresh()
    wait_for(lambda: state_text(drv) == "sent", "the message page to show it sent")


def test_overview_chart_health_sources_warnings(daemon_factory, upstreams, certs, tmp_path,
                                                browser_optional):
    """The overview from the daemon's own counters: the last hour's throughput as an SVG
    chart, each upstream's last result and credential hold, the inbound sources, and a
    warning that names the fix when an upstream refuses the login."""
    from upstream import upstream_section
    up = upstreams(tls="starttls", cert=certs.good, users={"app": "right-Passw0rd"})
    paced = upstreams()
    pw = secret_file(tmp_path / "pw", "wrong-password")
    http_port, dead_port, mx = free_port(), free_port(), free_port()
    conf = (upstream_section("locked", up.port, ca=certs.ca, auth="plain", username="app",
                             password_file=pw) +
            "\n[route locked]\nrecipient = *@locked.test\nupstream = locked\n\n" +
            upstream_section("paced", paced.port, host="127.0.0.1", tls="none", rate="1/m") +
            "\n[route paced]\nrecipient = *@paced.test\nupstream = paced\n" +
            f"\n[listener mx]\naddress = 127.0.0.1:{mx}\nrole = mx\n" +
            console_conf(http_port, dead_port))
    d = daemon_factory(postern={"retry_min": "1h", "retry_max": "2h"}, extra=conf)
    captured = [submit(d, "alice@client.test", [f"bob{i}@example.test"]) for i in range(2)]
    deferred = submit(d, "alice@client.test", ["carol@slow.test"])
    held = submit(d, "alice@client.test", ["dan@locked.test"])
    # one a minute: the first goes, the second waits for its slot
    submit(d, "alice@client.test", ["erin@paced.test"])
    submit(d, "alice@client.test", ["fred@paced.test"])
    paced.wait_messages(1)
    for q in captured:
        wait_state(d, q, ("captured",))
    wait_state(d, deferred, ("deferred",))
    wait_state(d, held, ("held",))
    c = Client(http_port)
    assert c.login().status == 303
    page = c.get("/console/").text
    # the chart: bars drawn by the server, totals in the caption
    assert '<figure class="chart"><svg' in page and "<script" not in page.split("</head>")[1]
    flows = dict(re.findall(r'data-flow="(\w+)">(\d+)<', page))
    assert flows == {"accepted": "6", "delivered": "3", "failed": "2"}, flows
    assert len(re.findall(r'<rect class="accepted"', page)) >= 1
    assert len(re.findall(r'<rect class="delivered"', page)) >= 1
    # upstream health: last result, the credential hold
    rows = dict(re.findall(r'<tr><th scope="row"><a href="/console/queue\?upstream=\w+">(\w+)'
                           r'</a></th>(.*?)</tr>', page.split('class="health"')[1]))
    assert rows["capture"].startswith("<td>captured at "), rows["capture"]
    assert rows["down"].startswith("<td>deferred at "), rows["down"]
    assert "<td>held: its login failed</td>" in rows["locked"], rows["locked"]
    assert "<td>no</td>" in rows["down"]
    assert rows["down"].endswith("<td>none</td>"), rows["down"]
    assert re.search(r"<td>next message at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>$",
                     rows["paced"]), rows["paced"]
    # inbound sources: the MX listener and the HTTP listener
    assert f"SMTP (MX) listener mx on 127.0.0.1:{mx}" in page
    assert f"HTTP listener on 127.0.0.1:{http_port}" in page
    assert re.search(r'data-inbound="mx">0<', page)
    # the warning names the fix, as the log does
    warnings = page.split('id="wn"')[1]
    assert "Upstream locked refused the login: its mail is held, not bounced." in warnings
    assert "password_file" in warnings and "SIGHUP" in warnings
    assert "wrong-password" not in page
    # a message through the MX listener is counted
    with smtplib.SMTP("127.0.0.1", mx, timeout=15) as s:
        s.sendmail("pat@example.test", ["app@reply.test"],
                   b"From: pat@example.test\r\nSubject: in\r\n\r\nhello\r\n")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if re.search(r'data-inbound="mx">1<', c.get("/console/").text):
            break
        time.sleep(0.3)
    assert re.search(r'data-inbound="mx">1<', c.get("/console/").text)
    if browser_optional:
        drv = browser_optional
        base = browser_login(drv, type("D", (), {"http_port": http_port}))
        from selenium.webdriver.common.by import By
        bars = drv.find_elements(By.CSS_SELECTOR, "figure.chart svg rect")
        assert bars and all(b.size["height"] > 0 for b in bars)
        no_alert(drv)
        drv.set_window_size(1280, 1300)       # the whole page, for README's picture
        shot(drv, "overview-health")
        drv.set_window_size(1280, 900)


def test_thread_with_a_reply(daemon_factory, browser_optional):
    """An outbound message and the reply that answers it (through the MX listener) are one
    thread on the correspondence pages, the reply's own text shown without the quote."""
    http_port, dead_port, mx = free_port(), free_port(), free_port()
    conf = console_conf(http_port, dead_port).replace(
        "[inbound]\ndomains = reply.test\n", "[inbound]\ndomains = reply.test\nspf = off\n")
    d = daemon_factory(postern={"retry_min": "1h", "retry_max": "2h"},
                       extra=f"\n[listener mx]\naddress = 127.0.0.1:{mx}\nrole = mx\n" + conf)
    qid = submit(d, "app@clinic.test", ["pat@example.test"], subject="Appointment " + XSS)
    raw = d.queue_cat(qid).decode()
    msgid = re.search(r"^Message-ID: (<[^>]+>)", raw, re.M | re.I).group(1)
    reply = (f"From: Pat <pat@example.test>\r\nTo: <app@reply.test>\r\n"
             f"Subject: Re: Appointment\r\nMessage-ID: <r1@example.test>\r\n"
             f"In-Reply-To: {msgid}\r\nReferences: {msgid}\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\n"
             "Tuesday works <b>fine</b>.\r\n\r\nOn Mon, Clinic wrote:\r\n> quoted text\r\n")
    with smtplib.SMTP("127.0.0.1", mx, timeout=15) as s:
        s.sendmail("pat@example.test", ["app@reply.test"], reply.encode())
    c = Client(http_port)
    assert c.login().status == 303
    deadline = time.monotonic() + 30
    page = ""
    while time.monotonic() < deadline:
        page = c.get("/console/threads").text
        if "<td>2</td>" in page:
            break
        time.sleep(0.3)
    assert "<td>2</td>" in page, page[-3000:]
    assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    link = re.search(r'href="(/console/thread\?id=[^"]+)"', page).group(1)
    thread = c.get(link.replace("&amp;", "&"))
    assert thread.status == 200
    assert "Reply text" in thread.text and "Tuesday works &lt;b&gt;fine&lt;/b&gt;." in thread.text
    assert "quoted text" not in thread.text.split("Reply text", 1)[1].split("</pre>", 1)[0]
    assert f'href="/console/msg/{qid}"' in thread.text
    assert c.get("/console/threads?q=nothing-like-this").text.count("/console/thread?id=") == 0
    if browser_optional:
        base = browser_login(browser_optional, type("D", (), {"http_port": http_port}))
        browser_optional.get(base + link.replace("&amp;", "&"))
        no_alert(browser_optional)
        shot(browser_optional, "thread")


def test_queue_pages_by_key(console):
    """55 messages: the queue's first page has 50 and a link to the next, which has the other
    5; together every message once. The captured inbox lists the newest first."""
    with smtplib.SMTP("127.0.0.1", console.port, timeout=30) as s:
        for i in range(55):
            s.sendmail("pager@client.test", ["bob@example.test"],
                       f"From: pager@client.test\r\nSubject: page {i}\r\n\r\nbody {i}\r\n")
    ids = [e["id"] for e in sorted(console.queue_list(), key=lambda e: (e["created"], e["id"]))]
    assert len(ids) == 55
    c = Client(console.http_port)
    assert c.login().status == 303
    row = re.compile(r'<td><a href="/console/msg/([0-9A-F]+)">')
    first = c.get("/console/queue").text
    page1 = row.findall(first)
    assert len(page1) == 50, len(page1)
    nxt = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert nxt.startswith("?after=")
    second = c.get("/console/queue" + nxt).text
    page2 = row.findall(second)
    assert len(page2) == 5 and 'rel="next"' not in second, page2
    walked = page1 + page2
    assert len(set(walked)) == 55 and set(walked) == set(ids), "a message missed or twice"
    # the inbox is the same order backwards (queue list's times are in seconds: the pages'
    # order, by created_ms then id, is the reference)
    inbox = row.findall(c.get("/console/captured").text)
    assert inbox == list(reversed(walked))[:50]
    hits = row.findall(c.get("/console/captured?q=page+54").text)
    assert len(hits) == 1 and "page 54" in c.get(f"/console/msg/{hits[0]}").text, hits
    assert c.get("/console/queue?after=garbage").status == 400


def test_browser_thread_with_reply_and_sendgrid_events(daemon_factory, tmp_path, sink, spf_env,
                                                       browser):
    """An outbound message, the reply through the MX listener, and SendGrid's signed events
    posted to the real /events webhook: the browser opens the thread and sees all of it."""
    from selenium.webdriver.common.by import By
    d = corr_daemon(daemon_factory, tmp_path, sink, inbound_extra=(
        f"\n[console]\nenabled = yes\nusers = admin:{crypt_hash(PASSWORD)}\n"))
    qid = send_out(d, subject="Appointment reminder")
    raw, msgid, reply_to = sent_message(sink, 1)
    wait_record(d, qid, lambda r: r["status"] == "sent")
    mx_send(d, "pat@pass.test", reply_to,
            (f"From: Pat <pat@pass.test>\r\nTo: <{reply_to}>\r\n"
             f"Subject: Re: Appointment reminder\r\nMessage-ID: <r1@pass.test>\r\n"
             f"In-Reply-To: <{msgid}>\r\nReferences: <{msgid}>\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\n"
             "Tuesday suits me.\r\n\r\nOn Mon, Clinic wrote:\r\n> quoted\r\n").encode())
    wait_records(d, 2)
    now = int(time.time())
    sg_events(d, [{"email": "pat@example.test", "event": "delivered", "sg_event_id": "ev-d",
                   "sg_message_id": "sgid1.filter0001", "timestamp": now, "postern_id": qid}])
    sg_events(d, [{"email": "pat@example.test", "event": "open", "sg_event_id": "ev-o",
                   "sg_message_id": "sgid1.filter0001", "timestamp": now + 5,
                   "postern_id": qid}])
    wait_record(d, qid, lambda r: r["status"] == "opened")
    drv = browser
    base = browser_login(drv, type("D", (), {"http_port": int(d.http.rsplit(":", 1)[1])}))
    drv.get(base + "/console/threads")
    link = drv.find_element(By.CSS_SELECTOR, 'a[href^="/console/thread?id="]')
    link.click()
    wait_for(lambda: "/console/thread?id=" in drv.current_url and
             drv.find_elements(By.CSS_SELECTOR, "article.record"), "the thread page")
    records = drv.find_elements(By.CSS_SELECTOR, "article.record")
    assert len(records) == 2, [r.text for r in records]
    out, reply = records[0].text, records[1].text
    events = [e.text.split()[0] for e in
              records[0].find_elements(By.CSS_SELECTOR, "ul.events li")]
    assert events == ["sent", "delivered", "open"], events
    assert "pat@example.test" in out
    assert "Reply text" in reply and "Tuesday suits me." in reply
    assert "quoted" not in reply.split("Reply text", 1)[1].split("Text", 1)[0]
    no_alert(drv)
    shot(drv, "thread-events")


def test_login_over_a_tunnel_is_rate_limited(daemon_factory):
    """An SSH tunnel arrives from loopback, which http_exempt_networks spares by default: the
    connection and request limits, not the lockout after wrong passwords."""
    http_port, dead_port = free_port(), free_port()
    conf = console_conf(http_port, dead_port).replace("http_exempt_networks = 192.0.2.0/24\n", "")
    assert "http_exempt_networks" not in conf
    d = daemon_factory(extra=conf)
    c = Client(http_port)
    token = c.csrf(c.get("/console/login").text)
    for i in range(3):
        r = c.post("/console/login", {"csrf": token, "user": "admin", "password": f"wrong-{i}"})
        assert r.status == 403, r.status
    r = c.post("/console/login", {"csrf": token, "user": "admin", "password": PASSWORD})
    assert r.status == 429 and r.getheader("Retry-After"), r.status
    assert "postern_console" not in c.cookies
    # the pages themselves (no password in them) are not refused to loopback
    assert c.get("/console/login").status == 200
    assert "console: 127.0.0.1 sent wrong credentials 3 times" in d.log_text()
    assert "wrong-0" not in d.log_text()


def test_reload_ends_sessions_of_removed_users_and_changed_passwords(daemon_factory, tmp_path):
    """A reload keeps sessions, except those of a user it removed or gave another password:
    taking a user out (or changing a leaked password) locks the holder out at once, not when
    the session times out."""
    import signal as sig
    http_port, dead_port = free_port(), free_port()
    other = register_secret("other-Pass-w0rd")
    users_file = tmp_path / "console.users"
    users_file.write_text(f"ops:{crypt_hash(other)}\n")
    users_file.chmod(0o600)
    settings = {"retry_min": "1h", "retry_max": "2h"}

    def conf(admin_hash):
        return console_conf(http_port, dead_port, users=f"admin:{admin_hash}",
                            extra_console=f"users_file = {users_file}\n")
    admin_hash = crypt_hash(PASSWORD)
    d = daemon_factory(postern=settings, extra=conf(admin_hash))
    admin, ops = Client(http_port), Client(http_port)
    assert admin.login().status == 303
    assert ops.login(user="ops", password=other).status == 303
    assert admin.get("/console/queue").status == 200 and ops.get("/console/queue").status == 200

    def reload(admin_hash):
        n = d.log_text().count("reload -- configuration")
        d.write_config(settings, conf(admin_hash))
        d.signal(sig.SIGHUP)
        deadline = time.monotonic() + 15
        while d.log_text().count("reload -- configuration") == n and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.log_text().count("reload -- configuration") == n + 1, d.log_tail(20)

    users_file.write_text("# ops has left\n")
    reload(admin_hash)
    r = ops.get("/console/queue")
    assert r.status == 303 and r.getheader("Location") == "/console/login"
    assert admin.get("/console/queue").status == 200, "an unchanged user lost the session"
    assert "the session of ops ended: the user was removed" in d.log_text()

    reload(crypt_hash("a-New-Pass-w0rd-x"))               # admin's password changed
    r = admin.get("/console/queue")
    assert r.status == 303 and r.getheader("Location") == "/console/login"
    assert "the session of admin ended: the user was given another password hash" in d.log_text()
