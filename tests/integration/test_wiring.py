# posternctl sendgrid setup|check and twilio check|setup against a small SendGrid-like and
# Twilio-like API on loopback that keeps state and records every request, shaped as the providers
# document them. The SendGrid checks run inside a network namespace the test creates, where
# dnsmasq serves the MX records (the API server listens on that namespace's loopback); the key
# setup stores must then verify real signed event batches posted to a running Postern.
import base64
import json
import os
import shutil
import stat
import subprocess
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import POSTERNCTL, need_binary
from dnsns import IP, dns_namespace, in_netns
from test_inbound import batch, events, post, secret, sign, wait_http, free_port

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

SG_KEY = "SG.wiring-test-key"
ALL_SCOPES = ["mail.send", "user.webhooks.parse.settings.read", "user.webhooks.parse.settings.create",
              "user.webhooks.parse.settings.update", "user.webhooks.event.settings.read",
              "user.webhooks.event.settings.update", "whitelabel.read"]
EVENTS = ["processed", "delivered", "deferred", "dropped", "bounce", "open", "click", "spam_report",
          "unsubscribe", "group_unsubscribe", "group_resubscribe"]
TW_SID = "AC" + "0123456789abcdef" * 2
TW_TOKEN = "twilio-auth-token-0123456789"
PN = "PN" + "a" * 32
MG = "MG" + "b" * 32
NUMBER = "+15005550006"
# the webhook password holds characters a URL must escape
HTTP_PASSWORD = "p@ss:w/rd 1"
GOOD_HOST = "reply.test.example"      # MX mx.sendgrid.net in the namespace's DNS
WRONG_HOST = "wrong.test.example"     # MX elsewhere


# ---------------------------------------------------------------------------------------------
# The provider: one state, served on two ports (the API host and Twilio's messaging host).

class Provider:
    def __init__(self, tmp_path, netns=None):
        self.tmp = tmp_path
        self.lock = threading.Lock()
        self.requests = []
        self.scopes = list(ALL_SCOPES)
        self.parse = {}                 # hostname -> setting
        self.webhooks = {}              # id -> event webhook
        self.privkeys = {}              # id -> private key file (to sign events with)
        self.domains = []
        self.numbers = {PN: {"sid": PN, "account_sid": TW_SID, "phone_number": NUMBER,
                             "sms_url": "https://demo.twilio.com/welcome/sms/reply",
                             "sms_method": "POST", "voice_url": "", "sms_application_sid": None}}
        # Twilio accepts the primary and the secondary Auth Token on its API; it signs webhooks
        # with the primary, which the account resource shows as auth_token
        self.tw_tokens = [TW_TOKEN]
        self.tw_primary = TW_TOKEN
        self.apps = {}                  # TwiML Apps: AP sid -> resource
        self.services = {}
        self.servers = [self._server(netns), self._server(netns)]
        self.url, self.msg_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self.servers)
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def _server(self, netns):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                port = self.server.server_address[1]
                kind = "messaging" if provider.servers[1].server_address[1] == port else "api"
                with provider.lock:
                    provider.requests.append((self.command, self.path, kind, body))
                    try:
                        status, payload = provider.answer(self.command, self.path, kind,
                                                          self.headers, body)
                    except Exception as e:          # a bug of the test server: visible
                        status, payload = 500, {"message": repr(e)}
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        if not netns:
            return ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # posternctl, run in the namespace, reaches it on that namespace's loopback
        return in_netns(netns, lambda: ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    def stop(self):
        for s in self.servers:
            s.shutdown()
            s.server_close()

    def changes(self):
        with self.lock:
            return [(m, p) for m, p, _, _ in self.requests if m not in ("GET", "HEAD")]

    def new_key(self, wid):
        priv = self.tmp / f"sg-{wid}.pem"
        subprocess.run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                        str(priv)], check=True)
        der = subprocess.run([OPENSSL, "ec", "-in", str(priv), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.privkeys[wid] = priv
        return base64.b64encode(der).decode()

    # -- SendGrid v3 and Twilio, as documented (only what Postern uses)
    def answer(self, method, path, kind, headers, body):
        u = urllib.parse.urlsplit(path)
        p, q = u.path, urllib.parse.parse_qs(u.query)
        if kind == "api" and p.startswith("/v3/"):
            if headers.get("Authorization") != f"Bearer {SG_KEY}":
                return 401, {"errors": [{"field": None, "message": "authorization required"}]}
            return self.sendgrid(method, p, json.loads(body) if body else None)
        auths = ["Basic " + base64.b64encode(f"{TW_SID}:{t}".encode()).decode() for t in self.tw_tokens]
        if headers.get("Authorization") not in auths:
            return 401, {"code": 20003, "message": "Authenticate", "more_info":
                         "https://www.twilio.com/docs/errors/20003", "status": 401}
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}
        return self.twilio(method, p, kind, q, form)

    def sendgrid(self, method, p, j):
        parse = "/v3/user/webhooks/parse/settings"
        ev = "/v3/user/webhooks/event/settings"
        if method == "GET" and p == "/v3/scopes":
            return 200, {"scopes": self.scopes}
        if method == "GET" and p == parse:
            return 200, {"result": list(self.parse.values())}
        if p.startswith(parse + "/"):
            host = p[len(parse) + 1:]
            if host not in self.parse:
                return 404, {"errors": [{"field": None, "message": "setting not found"}]}
            if method == "GET":
                return 200, self.parse[host]
            if method == "PATCH":
                self.parse[host].update({k: j[k] for k in ("url", "spam_check", "send_raw") if k in j})
                return 200, self.parse[host]
        if method == "POST" and p == parse:
            if j["hostname"] in self.parse:
                return 400, {"errors": [{"field": "hostname", "message": "hostname already exists"}]}
            self.parse[j["hostname"]] = {k: j.get(k, False) for k in ("url", "hostname", "spam_check", "send_raw")}
            return 201, self.parse[j["hostname"]]
        if method == "GET" and p == ev + "/all":
            return 200, {"max_allowed": 5, "webhooks": list(self.webhooks.values())}
        if method == "POST" and p == ev:
            wid = str(uuid.uuid4())
            w = {"id": wid, "enabled": bool(j.get("enabled")), "url": j["url"],
                 "friendly_name": j.get("friendly_name"), "public_key": "",
                 "oauth_client_id": "", "oauth_token_url": "",
                 "created_date": "2026-12-06T10:00:00Z", "updated_date": "2026-12-06T10:00:00Z"}
            w.update({e: bool(j.get(e)) for e in EVENTS})
            self.webhooks[wid] = w
            return 201, w
        if method == "PATCH" and p.startswith(ev + "/signed/"):
            w = self.webhooks.get(p[len(ev + "/signed/"):])
            if not w:
                return 404, {"errors": [{"message": "webhook not found"}]}
            w["public_key"] = self.new_key(w["id"]) if j.get("enabled") else ""
            return 200, {"id": w["id"], "public_key": w["public_key"]}
        if method == "PATCH" and p.startswith(ev + "/"):
            w = self.webhooks.get(p[len(ev) + 1:])
            if not w:
                return 404, {"errors": [{"message": "webhook not found"}]}
            w.update({k: v for k, v in j.items() if k == "url" or k == "enabled" or k in EVENTS})
            return 200, w
        if method == "GET" and p == "/v3/whitelabel/domains":
            return 200, self.domains
        return 404, {"errors": [{"message": f"no route {method} {p}"}]}

    def twilio(self, method, p, kind, q, form):
        acct = f"/2010-04-01/Accounts/{TW_SID}/IncomingPhoneNumbers"
        apps = f"/2010-04-01/Accounts/{TW_SID}/Applications/"
        if kind == "api" and method == "GET" and p == f"/2010-04-01/Accounts/{TW_SID}.json":
            return 200, {"sid": TW_SID, "friendly_name": "Clinic", "status": "active",
                         "type": "Full", "auth_token": self.tw_primary, "owner_account_sid": TW_SID}
        if kind == "api" and p.startswith(apps) and p.endswith(".json"):
            app = self.apps.get(p[len(apps):-5])
            if not app:
                return 404, {"code": 20404, "message": "not found", "status": 404}
            for f, k in (("SmsUrl", "sms_url"), ("SmsMethod", "sms_method")):
                if method == "POST" and f in form:
                    app[k] = form[f]
            return 200, app
        if kind == "api" and method == "GET" and p == acct + ".json":
            nums = [n for n in self.numbers.values()
                    if "PhoneNumber" not in q or n["phone_number"] == q["PhoneNumber"][0]]
            return 200, {"incoming_phone_numbers": nums, "page": 0, "page_size": 50,
                         "next_page_uri": None, "uri": p}
        if kind == "api" and method == "POST" and p.startswith(acct + "/") and p.endswith(".json"):
            n = self.numbers.get(p[len(acct) + 1:-5])
            if not n:
                return 404, {"code": 20404, "message": "not found", "status": 404}
            for f, k in (("SmsUrl", "sms_url"), ("SmsMethod", "sms_method"),
                         ("SmsApplicationSid", "sms_application_sid")):
                if f in form:
                    n[k] = form[f] or None
            return 200, n
        if kind == "messaging" and method == "GET" and p == "/v1/Services":
            return 200, {"services": [{k: v for k, v in s.items() if k != "numbers"}
                                      for s in self.services.values()],
                         "meta": {"page": 0, "page_size": 50, "next_page_url": None, "key": "services"}}
        if kind == "messaging" and p.startswith("/v1/Services/"):
            rest = p[len("/v1/Services/"):].split("/")
            s = self.services.get(rest[0])
            if not s:
                return 404, {"code": 20404, "message": "not found", "status": 404}
            if method == "GET" and rest[1:] == ["PhoneNumbers"]:
                return 200, {"phone_numbers": [{"sid": pn, "service_sid": s["sid"],
                                                "phone_number": self.numbers[pn]["phone_number"]}
                                               for pn in s["numbers"]],
                             "meta": {"page": 0, "next_page_url": None, "key": "phone_numbers"}}
            if method == "POST" and len(rest) == 1:
                if "UseInboundWebhookOnNumber" in form:
                    s["use_inbound_webhook_on_number"] = form["UseInboundWebhookOnNumber"] == "true"
                return 200, {k: v for k, v in s.items() if k != "numbers"}
        return 404, {"code": 20404, "message": f"no route {method} {p}", "status": 404}


# ---------------------------------------------------------------------------------------------
# The namespace with its resolver.

@pytest.fixture
def netns(tmp_path):
    """A network namespace with loopback up and dnsmasq answering the MX records on it."""
    with dns_namespace(tmp_path, [f"--mx-host={GOOD_HOST},mx.sendgrid.net,10",
                                  f"--mx-host={WRONG_HOST},mx.elsewhere.example,10"]) as name:
        yield name


def ctl(conf, *args, netns=None):
    need_binary(POSTERNCTL)
    pre = [IP, "netns", "exec", netns] if netns else []
    p = subprocess.run(pre + [POSTERNCTL, "-c", conf, *args], capture_output=True, timeout=120)
    out, err = p.stdout.decode(), p.stderr.decode()
    # nothing secret is ever printed or logged
    for s in (SG_KEY, TW_TOKEN, "twilio-secondary-token-987654", HTTP_PASSWORD,
              urllib.parse.quote(HTTP_PASSWORD, safe="")):
        assert s not in out and s not in err, f"a secret leaked: {out}{err}"
    return p.returncode, out, err


def findings(out):
    return [i for i in json.loads(out) if i["status"] == "finding"]


# ---------------------------------------------------------------------------------------------
# SendGrid.

@pytest.fixture
def sendgrid(tmp_path, netns, daemon_factory):
    prov = Provider(tmp_path, netns)
    port = free_port()
    key = secret(tmp_path, "sg.key", SG_KEY)
    pw = secret(tmp_path, "inbound.secret", HTTP_PASSWORD)
    pem = tmp_path / "keys" / "sendgrid-event.pem"
    pem.parent.mkdir()
    d = daemon_factory(start=False, extra=f"""
[upstream sendgrid]
type = sendgrid
api_key_file = {key}
api_url = {prov.url}

[inbound]
domains = {GOOD_HOST}
http_address = 127.0.0.1:{port}
http_user = sendgrid
http_password_file = {pw}
event_public_key_file = {pem}
public_url = http://127.0.0.1:{port}/
""")
    d.http = f"http://127.0.0.1:{port}"
    d.pem = pem
    d.netns = netns
    prov.domains = [{"id": 17, "user_id": 1, "subdomain": "em1234", "domain": GOOD_HOST,
                     "username": "clinic", "ips": [], "custom_spf": False, "default": True,
                     "legacy": False, "automatic_security": False, "valid": True, "dns": {}}]
    yield prov, d
    prov.stop()


def parse_url(d):
    return (f"http://sendgrid:{urllib.parse.quote(HTTP_PASSWORD, safe='')}@127.0.0.1:"
            f"{d.http.rsplit(':', 1)[1]}/emailInbound")


def test_sendgrid_setup_stores_a_key_that_verifies_events(sendgrid):
    prov, d = sendgrid
    rc, out, err = ctl(d.conf, "sendgrid", "setup", "--inbound-host", GOOD_HOST, netns=d.netns)
    assert rc == 0, out + err
    # the parse setting: our URL with the webhook credentials, spam check off, parsed
    assert prov.parse == {GOOD_HOST: {"hostname": GOOD_HOST, "url": parse_url(d),
                                      "spam_check": False, "send_raw": False}}
    (w,) = prov.webhooks.values()
    assert w["url"] == d.http + "/events" and w["enabled"]
    assert all(w[e] for e in EVENTS)
    assert w["public_key"]
    assert [m for m, _ in prov.changes()] == ["POST", "POST", "PATCH"]
    assert ("PATCH", f"/v3/user/webhooks/event/settings/signed/{w['id']}") in prov.changes()
    # the key, as PEM, 0600, the same key SendGrid returned
    st = os.stat(d.pem)
    assert stat.S_IMODE(st.st_mode) == 0o600
    text = d.pem.read_text()
    assert text.startswith("-----BEGIN PUBLIC KEY-----\n")
    der = subprocess.run([OPENSSL, "pkey", "-pubin", "-outform", "DER"], input=text.encode(),
                         capture_output=True, check=True).stdout
    assert base64.b64encode(der).decode() == w["public_key"]
    assert not [f for f in os.listdir(d.pem.parent) if f != d.pem.name]   # no temp file left
    assert "created" in out and "signature turned on" in out
    assert "request method=POST" in err and "/v3/user/webhooks/parse/settings" in err

    # the daemon reads that key: events signed by SendGrid's private key verify, others do not
    d.start()
    wait_http(d)
    priv = prov.privkeys[w["id"]]
    ts = str(int(time.time()))
    body = batch("wire-1", "wire-2")
    hdr = {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": ts}
    code, _, text = post(d.http + "/events", body,
                         dict(hdr, **{"X-Twilio-Email-Event-Webhook-Signature": sign(priv, ts, body)}))
    assert code == 200, text
    assert [e["event_key"] for e in events(d)] == ["wire-1", "wire-2"]
    other = d.pem.parent.parent / "other.pem"
    subprocess.run([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out",
                    str(other)], check=True)
    body = batch("wire-3")
    code, _, _ = post(d.http + "/events", body,
                      dict(hdr, **{"X-Twilio-Email-Event-Webhook-Signature": sign(other, ts, body)}))
    assert code == 403

    # a second run changes nothing: no POST, no PATCH, the key file untouched
    before = len(prov.changes())
    rc, out, err = ctl(d.conf, "sendgrid", "setup", "--inbound-host", GOOD_HOST, netns=d.netns)
    assert rc == 0, out + err
    assert prov.changes()[before:] == []
    assert os.stat(d.pem).st_ino == st.st_ino
    assert "changed" not in out

    # and check finds everything right
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", netns=d.netns)
    assert rc == 0, out + err
    items = json.loads(out)
    assert {i["status"] for i in items} == {"ok"}
    assert {i["check"] for i in items} >= {"scopes", "inbound-parse", "mx", "domains",
                                          "event-webhook", "event-signature", "event-key"}
    assert any(i["check"] == "mx" and "mx.sendgrid.net" in i["detail"] for i in items)

    # --raw switches the same setting to raw: one PATCH of it, nothing else
    before = len(prov.changes())
    rc, out, err = ctl(d.conf, "sendgrid", "setup", "--inbound-host", GOOD_HOST, "--raw",
                       netns=d.netns)
    assert rc == 0, out + err
    assert prov.changes()[before:] == [("PATCH", f"/v3/user/webhooks/parse/settings/{GOOD_HOST}")]
    assert prov.parse[GOOD_HOST]["send_raw"] is True


def test_sendgrid_check_reports_each_fault_with_its_fix(sendgrid):
    prov, d = sendgrid
    # no wiring at all yet
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", "--inbound-host", WRONG_HOST,
                       netns=d.netns)
    assert rc == 1, out + err
    got = {f["check"] for f in findings(out)}
    assert got >= {"inbound-parse", "mx", "event-webhook"}

    # set it up, then plant one fault of each kind
    assert ctl(d.conf, "sendgrid", "setup", "--inbound-host", WRONG_HOST, netns=d.netns)[0] == 0
    prov.domains[0]["automatic_security"] = True
    prov.domains[0]["domain"] = WRONG_HOST
    prov.parse[WRONG_HOST]["url"] = "https://other.example/hooks/parse"
    (w,) = prov.webhooks.values()
    w["public_key"] = ""
    prov.scopes.remove("mail.send")
    before = len(prov.changes())
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", "--inbound-host", WRONG_HOST,
                       netns=d.netns)
    assert rc == 1, out + err
    f = {x["check"]: x for x in findings(out)}
    assert set(f) == {"scopes", "inbound-parse", "mx", "domains", "event-signature"}, out
    assert "mail.send" in f["scopes"]["detail"] and "Mail Send" in f["scopes"]["fix"]
    assert "https://other.example/hooks/parse" in f["inbound-parse"]["detail"]
    assert f"posternctl sendgrid setup --inbound-host {WRONG_HOST}" in f["inbound-parse"]["fix"]
    assert "mx.elsewhere.example" in f["mx"]["detail"]
    assert f"{WRONG_HOST}. MX 10 mx.sendgrid.net." in f["mx"]["fix"]
    assert "AUTOMATED SECURITY ON" in f["domains"]["detail"]
    assert "Automated Security OFF" in f["domains"]["fix"] and "/v3/whitelabel/domains/17" in f["domains"]["fix"]
    assert "not signed" in f["event-signature"]["detail"]
    # the text form says the same, loudly, with the fixes
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--inbound-host", WRONG_HOST, netns=d.netns)
    assert rc == 1
    assert out.count("PROBLEM") == 5 and out.count("fix: ") == 5
    assert "5 problems, 0 unchecked" in out
    # each finding is logged too
    assert err.count("status=finding") == 5
    # check only looks
    assert len(prov.changes()) == before

    # a key file that is not the webhook's
    prov.scopes.append("mail.send")
    w["public_key"] = prov.new_key(w["id"])
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", "--inbound-host", WRONG_HOST,
                       netns=d.netns)
    f = {x["check"]: x for x in findings(out)}
    assert "event-key" in f and "403" in f["event-key"]["detail"]


def test_sendgrid_automated_security_on_the_parent_domain_is_fine(sendgrid):
    # test.example authenticated with Automated Security on, replies to reply.test.example:
    # SendGrid's CNAMEs (em1234., s1._domainkey., s2._domainkey.) do not touch the reply host,
    # whose MX alone brings replies to Inbound Parse (SendGrid's domain authentication and
    # Inbound Parse documentation) — check says so instead of leaving the user to wonder
    prov, d = sendgrid
    assert ctl(d.conf, "sendgrid", "setup", "--inbound-host", GOOD_HOST, netns=d.netns)[0] == 0
    parent = GOOD_HOST.split(".", 1)[1]
    prov.domains[0].update(domain=parent, automatic_security=True)
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", "--inbound-host", GOOD_HOST,
                       netns=d.netns)
    assert rc == 0, out + err
    items = json.loads(out)
    assert not findings(out), out
    assert any(i["check"] == "domains" and "Automated Security on" in i["detail"]
               and GOOD_HOST in i["detail"] and "em1234." in i["detail"] for i in items), out
    # the reply host itself authenticated with Automated Security on is still flagged
    prov.domains[0].update(domain=GOOD_HOST)
    rc, out, err = ctl(d.conf, "sendgrid", "check", "--json", "--inbound-host", GOOD_HOST,
                       netns=d.netns)
    assert rc == 1 and "AUTOMATED SECURITY ON" in out, out


def test_sendgrid_could_not_check(sendgrid, tmp_path):
    prov, d = sendgrid
    # a key SendGrid refuses: exit 2 with the reason
    with open(tmp_path / "sg.key", "w") as f:
        f.write("SG.not-the-key\n")
    rc, out, err = ctl(d.conf, "sendgrid", "check", netns=d.netns)
    assert rc == 2, out + err
    assert "401" in out and "api_key_file" in out and "SG.not-the-key" not in out + err
    # no API at all
    conf = open(d.conf).read().replace(prov.url, f"http://127.0.0.1:{free_port()}")
    other = tmp_path / "unreachable.conf"
    other.write_text(conf)
    rc, out, err = ctl(str(other), "sendgrid", "setup", "--inbound-host", GOOD_HOST, netns=d.netns)
    assert rc == 2 and "no answer" in out
    assert not d.pem.exists()
    # a usage error is neither
    rc, out, err = ctl(d.conf, "sendgrid", "setup", netns=d.netns)
    assert rc == 64 and "--inbound-host" in err


# ---------------------------------------------------------------------------------------------
# Twilio.

@pytest.fixture
def twilio(tmp_path, daemon_factory):
    prov = Provider(tmp_path)
    tok = secret(tmp_path, "twilio.token", TW_TOKEN)
    d = daemon_factory(start=False, extra=f"""
[inbound]
domains = {GOOD_HOST}
twilio_auth_token_file = {tok}
twilio_account_sid = {TW_SID}
twilio_api_url = {prov.url}
twilio_messaging_url = {prov.msg_url}/
public_url = https://relay.test.example
""")
    prov.services[MG] = {"sid": MG, "account_sid": TW_SID, "friendly_name": "Clinic notifications",
                         "inbound_request_url": "https://app.example/old-inbound",
                         "inbound_method": "POST", "use_inbound_webhook_on_number": False,
                         "numbers": [PN]}
    yield prov, d, tok
    prov.stop()


def test_twilio_check_and_setup(twilio):
    prov, d, _ = twilio
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--json")
    assert rc == 1, out + err
    f = {x["check"]: x for x in findings(out)}
    assert set(f) == {"sms-url", "messaging-service"}
    assert "demo.twilio.com" in f["sms-url"]["detail"]
    assert "https://relay.test.example/sms" in f["sms-url"]["detail"]
    assert MG in f["messaging-service"]["detail"] and "replies get lost" in f["messaging-service"]["detail"]
    assert "--fix-service" in f["messaging-service"]["fix"]
    assert any(i["check"] == "auth-token" and i["status"] == "ok" for i in json.loads(out))
    assert prov.changes() == []
    # the lookup asked for the number (the + escaped) on the API host, the services elsewhere
    assert any(p.endswith("IncomingPhoneNumbers.json?PhoneNumber=%2B15005550006") and k == "api"
               for _, p, k, _ in prov.requests)
    assert any(p.startswith("/v1/Services") and k == "messaging" for _, p, k, _ in prov.requests)

    # setup sets the webhook; the service still needs --fix-service
    rc, out, err = ctl(d.conf, "twilio", "setup", NUMBER)
    assert rc == 1, out + err
    assert prov.numbers[PN]["sms_url"] == "https://relay.test.example/sms"
    assert prov.changes() == [("POST", f"/2010-04-01/Accounts/{TW_SID}/IncomingPhoneNumbers/{PN}.json")]
    body = [b for m, p, _, b in prov.requests if m == "POST"][0]
    assert urllib.parse.parse_qs(body.decode()) == {"SmsUrl": ["https://relay.test.example/sms"],
                                                    "SmsMethod": ["POST"]}
    assert prov.services[MG]["use_inbound_webhook_on_number"] is False

    rc, out, err = ctl(d.conf, "twilio", "setup", NUMBER, "--fix-service")
    assert rc == 0, out + err
    assert prov.services[MG]["use_inbound_webhook_on_number"] is True
    assert prov.changes()[1:] == [("POST", f"/v1/Services/{MG}")]

    # all good now, and a second setup changes nothing
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER)
    assert rc == 0, out + err
    assert "0 problems" in out
    rc, out, err = ctl(d.conf, "twilio", "setup", NUMBER, "--fix-service")
    assert rc == 0 and len(prov.changes()) == 2


def test_twilio_number_outside_services_and_not_found(twilio):
    prov, d, _ = twilio
    prov.services[MG]["numbers"] = []
    prov.numbers[PN]["sms_url"] = "https://relay.test.example/sms"
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER)
    assert rc == 0, out + err
    assert "in no Messaging Service" in out
    rc, out, err = ctl(d.conf, "twilio", "check", "+15005550007", "--json")
    assert rc == 1
    (f,) = findings(out)
    assert "not a number of account" in f["detail"]


TW_SECONDARY = "twilio-secondary-token-987654"
AP = "AP" + "c" * 32


def test_twilio_secondary_token_is_a_problem(twilio):
    # the secondary Auth Token passes every API call, but Twilio signs webhooks with the
    # primary only: check used to say "ok auth-token: ... the one Twilio signs webhooks with"
    # and every /sms post would then get 403
    prov, d, tok = twilio
    prov.tw_tokens = [TW_TOKEN, TW_SECONDARY]
    prov.services[MG]["numbers"] = []
    prov.numbers[PN]["sms_url"] = "https://relay.test.example/sms"
    with open(tok, "w") as f:
        f.write(TW_SECONDARY + "\n")
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--json")
    assert rc == 1, out + err
    (f,) = findings(out)
    assert f["check"] == "auth-token" and "not the account's primary Auth Token" in f["detail"]
    assert "PRIMARY Auth Token" in f["fix"] and "twilio_auth_token_file" in f["fix"]
    assert TW_SECONDARY not in out + err and TW_TOKEN not in out + err
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER)
    assert rc == 1 and "PROBLEM" in out and "fix: " in out
    # the primary: ok
    with open(tok, "w") as f:
        f.write(TW_TOKEN + "\n")
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--json")
    assert rc == 0, out + err
    assert any(i["check"] == "auth-token" and i["status"] == "ok" and "primary" in i["detail"]
               for i in json.loads(out))


def test_twilio_twiml_app_is_judged_and_set(twilio):
    # the number is bound to a TwiML App (SmsApplicationSid): Twilio posts its SMS to the
    # App's SmsUrl and ignores the number's. check used to judge the number's own URL and setup
    # to change it and say "changed" although Twilio would not use it
    prov, d, _ = twilio
    prov.services[MG]["numbers"] = []
    prov.numbers[PN].update(sms_url="https://relay.test.example/sms", sms_application_sid=AP)
    prov.apps[AP] = {"sid": AP, "account_sid": TW_SID, "friendly_name": "Clinic app",
                     "sms_url": "https://app.example/twiml/sms", "sms_method": "GET",
                     "voice_url": "https://app.example/twiml/voice"}
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--json")
    assert rc == 1, out + err
    (f,) = findings(out)
    assert f["check"] == "sms-url" and AP in f["detail"] and "https://app.example/twiml/sms" in f["detail"]
    assert "--detach-app" in f["fix"]
    assert any(p == f"/2010-04-01/Accounts/{TW_SID}/Applications/{AP}.json" for _, p, _, _ in prov.requests)

    # setup sets the App's SMS URL and method, and nothing on the number
    rc, out, err = ctl(d.conf, "twilio", "setup", NUMBER)
    assert rc == 0, out + err
    assert prov.changes() == [("POST", f"/2010-04-01/Accounts/{TW_SID}/Applications/{AP}.json")]
    assert prov.apps[AP]["sms_url"] == "https://relay.test.example/sms"
    assert prov.apps[AP]["sms_method"] == "POST"
    assert "TwiML App" in out and "changed" in out
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER)
    assert rc == 0 and "uses TwiML App" in out, out + err

    # --detach-app: the number alone goes back to its own webhook
    prov.apps[AP]["sms_url"] = "https://app.example/twiml/sms"
    before = len(prov.changes())
    rc, out, err = ctl(d.conf, "twilio", "setup", NUMBER, "--detach-app")
    assert rc == 0, out + err
    assert prov.changes()[before:] == [("POST", f"/2010-04-01/Accounts/{TW_SID}/IncomingPhoneNumbers/{PN}.json")]
    body = [b for m, _, _, b in prov.requests if m == "POST"][-1]
    assert urllib.parse.parse_qs(body.decode(), keep_blank_values=True) == {
        "SmsUrl": ["https://relay.test.example/sms"], "SmsMethod": ["POST"], "SmsApplicationSid": [""]}
    assert prov.numbers[PN]["sms_application_sid"] is None
    assert prov.apps[AP]["sms_url"] == "https://app.example/twiml/sms"     # the App untouched
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER)
    assert rc == 0 and "TwiML App" not in out, out + err
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--detach-app")
    assert rc == 64


def test_twilio_wrong_token_cannot_check(twilio):
    prov, d, tok = twilio
    with open(tok, "w") as f:
        f.write("not-the-token\n")
    rc, out, err = ctl(d.conf, "twilio", "check", NUMBER, "--json")
    assert rc == 2, out + err
    (i,) = json.loads(out)
    assert i["check"] == "auth-token" and i["status"] == "unchecked"
    assert "401" in i["detail"] and "twilio_auth_token_file" in i["fix"]
    assert "not-the-token" not in out + err
    rc, out, err = ctl(d.conf, "twilio", "check", "15551234567")
    assert rc == 64
