# MIME -> correspondence record (inbound/mime.c, inbound/reply.c): every message of the corpus
# tests/corpus/mime/NAME.eml gives the record NAME.json, compared field by field; hostile shapes
# (2,000 parts, 100 levels, endless nesting, huge headers) stay within time and memory bounds;
# Inbound Parse posts, as curl sends them, give records in raw and parsed mode.
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import BUILDDIR, SRCDIR, need_binary

DUMP = os.path.join(BUILDDIR, "tests", "unit", "mime_dump")
CORPUS = os.path.join(SRCDIR, "tests", "corpus", "mime")
CURL = "/usr/bin/curl"


def corpus_names():
    return sorted(f[:-4] for f in os.listdir(CORPUS) if f.endswith(".eml"))


def dump(path, *args, timeout=60):
    """Runs mime_dump; returns (record, attachment bytes list, seconds, peak RSS in KiB)."""
    need_binary(DUMP)
    attdir = args[args.index("--att") + 1] if "--att" in args else None
    t0 = time.monotonic()
    p = subprocess.Popen([DUMP, *args, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outs = {}
    readers = [threading.Thread(target=lambda k, f: outs.__setitem__(k, f.read()), args=(k, f))
               for k, f in (("out", p.stdout), ("err", p.stderr))]
    for r in readers:
        r.start()
    # wait4 gives this child's own peak RSS (RUSAGE_CHILDREN would be the largest of all)
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            p.kill()
            os.wait4(p.pid, 0)
            pytest.fail(f"mime_dump {path} took more than {timeout}s")
        time.sleep(0.01)
    p.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    out, err = outs["out"], outs["err"]
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, f"mime_dump failed ({p.returncode}): {err.decode(errors='replace')}"
    assert b"ERROR: AddressSanitizer" not in err and b"runtime error" not in err, err.decode()
    rec = json.loads(out)
    atts = []
    if attdir:
        for i in range(len(rec["attachments"])):
            with open(os.path.join(attdir, str(i)), "rb") as f:
                atts.append(f.read())
    return rec, atts, elapsed, ru.ru_maxrss


def diff_records(want, got):
    """Field-by-field differences, one readable line each."""
    lines = []
    for k in list(want) + [k for k in got if k not in want]:
        w, g = want.get(k, "<absent>"), got.get(k, "<absent>")
        if k == "attachments" and isinstance(w, list) and isinstance(g, list):
            if len(w) != len(g):
                lines.append(f"attachments: expected {len(w)}, got {len(g)}: "
                             f"{[a.get('content_type') for a in g]}")
            for i, (wa, ga) in enumerate(zip(w, g)):
                for ak in sorted(set(wa) | set(ga)):
                    if wa.get(ak) != ga.get(ak):
                        lines.append(f"attachments[{i}].{ak}: expected {wa.get(ak)!r}, got {ga.get(ak)!r}")
        elif w != g:
            lines.append(f"{k}: expected {w!r}\n{' ' * (len(k) + 2)}     got {g!r}")
    return lines


def test_corpus_is_complete():
    names = corpus_names()
    assert len(names) >= 40, f"only {len(names)} messages in {CORPUS}"
    missing = [n for n in names if not os.path.exists(os.path.join(CORPUS, n + ".json"))]
    assert not missing, f"messages without an expected record: {missing}"


@pytest.mark.parametrize("name", corpus_names())
def test_corpus_record(name, tmp_path):
    rec, atts, _, _ = dump(os.path.join(CORPUS, name + ".eml"), "--att", str(tmp_path))
    with open(os.path.join(CORPUS, name + ".json"), encoding="utf-8") as f:
        want = json.load(f)
    problems = diff_records(want, rec)
    assert not problems, f"{name}.eml:\n  " + "\n  ".join(problems)
    # the bytes handed to the store are the ones the record describes
    for a, data in zip(rec["attachments"], atts):
        assert a["size"] == len(data) and a["sha256"] == hashlib.sha256(data).hexdigest(), a


def test_attached_message_is_exact(tmp_path):
    """An attached message/rfc822 is its bytes as they arrived, not GMime's rewriting of them
    (odd spacing in a header kept, CRLF kept, up to the CRLF before the closing boundary)."""
    path = os.path.join(CORPUS, "message_rfc822_attachment.eml")
    raw = open(path, "rb").read()
    rec, atts, _, _ = dump(path, "--att", str(tmp_path))
    start = raw.index(b"From: Clinic Reminders")
    end = raw.index(b"\r\n--outer22--")
    assert atts[0] == raw[start:end]
    assert b"Content-Type: text/plain;   charset=utf-8\r\n" in atts[0]


def test_attached_message_without_header_or_with_content_fields(tmp_path):
    """An attached message/rfc822 is the part's body byte for byte even when it has no header
    section ("Message removed" in a Postfix bounce) or begins with Content-* fields."""
    for name, first, last in [("rfc822_message_removed", b"Message removed", b"Message removed"),
                              ("rfc822_leading_content_fields", b"Content-Type: text/plain",
                               b"All values are in range.")]:
        path = os.path.join(CORPUS, name + ".eml")
        raw = open(path, "rb").read()
        rec, atts, _, _ = dump(path, "--att", str(tmp_path))
        start = raw.rindex(first)
        assert atts[0] == raw[start:raw.index(last) + len(last)], name
        assert rec["parse_error"] is None, rec["parse_error"]


def test_obsolete_reference_phrases():
    """In-Reply-To and References: every <id> token, phrases between them skipped (RFC 5322
    4.5.4), an id ending in "." does not end the list, white space inside an id removed."""
    rec, _, _, _ = dump(os.path.join(CORPUS, "obsolete_in_reply_to.eml"))
    assert rec["in_reply_to"] == "200208261822.g7QIMk7P005756@turing-police.cc.vt.example.edu"
    assert rec["references"] == ["first-1@relay.clinic.example", "thread-007.@example.org",
                                 "200208261822.g7QIMk7P005756@turing-police.cc.vt.example.edu"]
    rec, _, _, _ = dump(os.path.join(CORPUS, "message_id_space.eml"))
    assert rec["message_id"] == "Pine.LNX.4.44.0303031002330.1234@watcher.mithral.com"
    assert rec["in_reply_to"] == "appt-42@relay.clinic.example"


def test_from_shapes():
    """From: a phrase of one ".", 8-bit bytes that are not UTF-8, an encoded word inside the
    address (decoded in the display name only, the address kept as written)."""
    rec, _, _, _ = dump(os.path.join(CORPUS, "from_dot_phrase.eml"))
    assert rec["from"] == {"address": "user@example.com", "name": "."}
    assert [a["address"] for a in rec["to"]] == ["appointments@reply.clinic.example",
                                                 "desk@reply.clinic.example"]
    rec, _, _, _ = dump(os.path.join(CORPUS, "from_8bit_local_part.eml"))
    assert rec["from"] == {"address": "j\u00fcrgen@example.de", "name": "J\u00fcrgen M\u00fcller"}
    assert rec["cc"] == [{"address": "m\u00fcller@example.de", "name": ""}]
    rec, _, _, _ = dump(os.path.join(CORPUS, "from_encoded_word_address.eml"))
    assert rec["from"] == {"address": "=?utf-8?q?j=C3=BCrgen?=@example.de", "name": "J\u00fcrgen"}


def test_quoted_printable_trailing_white_space():
    """RFC 2045 6.7: white space at the end of an encoded line is deleted, so "=" followed by
    spaces is a soft line break; an encoded =20 stays."""
    rec, _, _, _ = dump(os.path.join(CORPUS, "qp_trailing_whitespace.eml"))
    assert rec["text"] == ("A line a gateway padded\nA soft break with spaces after the equals "
                           "sign, and one with a tab here.\nAn encoded trailing space is kept: \n"
                           "Last line")


def test_invalid_content_type_is_text(tmp_path):
    """RFC 2045 5.2: an unreadable Content-Type is text/plain, not an attachment."""
    rec, _, _, _ = dump(os.path.join(CORPUS, "invalid_content_type.eml"))
    assert rec["text"] == "Please call me back.\n" and rec["attachments"] == []
    for ct in (b'"text/plain"', b"; charset=utf-8", b"text"):
        path = tmp_path / "ct.eml"
        path.write_bytes(b"From: a@example.net\r\nContent-Type: " + ct + b"\r\n\r\nhello\r\n")
        rec, _, _, _ = dump(str(path))
        assert rec["text"] == "hello\n" and rec["attachments"] == [], ct


def test_utf7_and_uuencode(tmp_path):
    rec, _, _, _ = dump(os.path.join(CORPUS, "utf7_body.eml"))
    assert rec["text"].startswith("Merci, c\u00e9tait parfait.\n\n> On 3/1/19 Clinic wrote:\n")
    assert rec["reply_text"] == "Merci, c\u00e9tait parfait."
    rec, atts, _, _ = dump(os.path.join(CORPUS, "uuencode_attachment.eml"), "--att", str(tmp_path))
    assert rec["attachments"][0]["filename"] == "form.txt"
    assert atts[0] == b"Patient: Pat\nResult: negative\n" * 4


def test_reply_text_cases(tmp_path):
    """reply_text on the client shapes, from the corpus records."""
    want = {
        "gmail_reply": "Yes, 10 March at 9:00 works for me. See you then!\n\nPat",
        "gmail_reply_wrapped": "Can we move it to the afternoon?",
        "outlook_reply": "I can\u2019t make it \u2013 could we try the \u201cweek after\u201d?\n\nPat",
        "outlook_original_message": "Confirmed, thank you.\n\nRegards,\nPat",
        "apple_mail_reply": "Running 10 minutes late, sorry!",
        "thunderbird_reply": "Thanks for the reminder. I will bring the forms.",
        "html_only_reply": "Yes & thank you \u2014 see you on the 10th.\n\nPat",
        "html_only_outlook": "That\u2019s fine.",
        "quoted_inline": "Yes.\nI will bring it signed.",
        "signature_dashdash": "Is there parking near the clinic?",
        "gmail_forward": "FYI, see below.",
    }
    for name, text in want.items():
        rec, _, _, _ = dump(os.path.join(CORPUS, name + ".eml"))
        assert rec["reply_text"] == text, name


def test_record_text_max(tmp_path):
    """record_text_max: text, html and reply_text keep at most that many bytes each, cut at a
    character, and "truncated" names those cut; a body is decoded only as far as that, so a 10 MB
    message of text costs far less memory than with no cap."""
    line = "Caf\u00e9 \u2013 r\u00e9sum\u00e9 of the visit, line after line.\r\n"
    text = line * (5 * 1024 * 1024 // len(line.encode()))
    msg = (HEAD + "Content-Type: multipart/alternative; boundary=\"t\"\r\n\r\n"
           "--t\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           + text + "--t\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>" + text +
           "</p>\r\n--t--\r\n")
    path = tmp_path / "big.eml"
    path.write_bytes(msg.encode())
    full, _, _, _ = dump(str(path), "--text-max", "0")
    assert full["truncated"] == [] and len(full["text"].encode()) > 5 * 1000 * 1000
    for cap in (1000, 1001, 1002, 1024 * 1024):
        rec, _, _, _ = dump(str(path), "--text-max", str(cap))
        for field in ("text", "html", "reply_text"):
            n = len(rec[field].encode())
            assert cap - 3 <= n <= cap, (field, cap, n)
        assert full["text"].startswith(rec["text"]) and full["html"].startswith(rec["html"])
        # reply_text is read from the text kept: it is listed only when it is cut itself
        assert rec["truncated"] == ["text", "html"], rec["truncated"]
        assert rec["parse_error"] is None
    hwm = {}
    for cap in ("0", str(1024 * 1024)):
        p = subprocess.run([DUMP, "--hwm", "--text-max", cap, str(path)], capture_output=True,
                           timeout=60, check=True)
        hwm[cap] = int(p.stderr.split(b"VmHWM:")[1].split()[0])
    # about half in a release build (51 against 110 MiB), less of a difference under ASan,
    # whose own bookkeeping grows with every allocation
    assert hwm[str(1024 * 1024)] < hwm["0"] * 0.75, hwm
    # below the cap nothing is marked
    rec, _, _, _ = dump(os.path.join(CORPUS, "gmail_reply.eml"), "--text-max", "1000")
    assert rec["truncated"] == []


CHARSETS = [
    # (label, body bytes, text a reader sees) -- WHATWG Encoding Standard readings
    ("iso-8859-1", b"\x93quoted\x94 \x80", "\u201cquoted\u201d \u20ac"),
    ("Latin1", b"caf\xe9", "caf\u00e9"),
    ("us-ascii", b"it\x92s", "it\u2019s"),
    ("ANSI_X3.4-1968", b"\x85", "\u2026"),
    ("windows-1252", b"\x81\x8d\x8f\x90\x9d", "\u0081\u008d\u008f\u0090\u009d"),
    ("iso-8859-15", b"\xa4 5", "\u20ac 5"),
    ("iso-8859-2", b"\xb1", "\u0105"),
    ("iso-8859-9", b"\x80\xfd", "\u20ac\u0131"),       # read as windows-1254
    ("koi8-r", b"\xf0\xd2\xc9\xd7\xc5\xd4", "\u041f\u0440\u0438\u0432\u0435\u0442"),
    ("gb2312", "\u4f60\u597d".encode("gbk"), "\u4f60\u597d"),
    ("big5", "\u4f60\u597d".encode("big5"), "\u4f60\u597d"),
    ("ks_c_5601-1987", "\uc548\ub155".encode("cp949"), "\uc548\ub155"),
    ("euc-jp", "\u65e5\u672c".encode("euc_jp"), "\u65e5\u672c"),
    ("utf-16le", "hi\u00e9".encode("utf-16-le"), "hi\u00e9"),
    ("iso-2022-kr", b"\x1b$)Cabc", "\ufffd"),              # WHATWG: replacement
    ("x-no-such-charset", "na\u00efve".encode(), "na\u00efve"),   # unknown: undeclared, UTF-8
    ("x-no-such-charset", b"na\xefve", "na\u00efve"),       # ... not UTF-8: windows-1252
    ("utf-8", b"bad \xff\xfe end", "bad \ufffd\ufffd end"),
]


@pytest.mark.parametrize("label,body,text", CHARSETS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CHARSETS)])
def test_charset_labels(label, body, text, tmp_path):
    path = tmp_path / "cs.eml"
    path.write_bytes(b"From: a@example.net\r\nSubject: cs\r\nMIME-Version: 1.0\r\n"
                     b"Content-Type: text/plain; charset=\"" + label.encode() + b"\"\r\n"
                     b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    rec, _, _, _ = dump(str(path))
    assert rec["text"] == text


@pytest.mark.parametrize("name", ["nested_mixed_alt_related", "outlook_reply", "dsn_bounce"])
def test_parse_in_threads(name):
    """Eight threads parse at once from a cold start (GMime started once, options per call)
    and every record equals the one made alone."""
    rec, _, _, _ = dump(os.path.join(CORPUS, name + ".eml"), "--threads", "8")
    assert rec["message_id"]


# ---- limits -------------------------------------------------------------------------------

HEAD = ("From: a@example.net\r\nTo: b@example.org\r\nSubject: limits\r\nMIME-Version: 1.0\r\n")


def test_two_thousand_parts(tmp_path):
    parts = "".join(f"--p\r\nContent-Type: application/octet-stream; name=\"f{i}.bin\"\r\n"
                     f"Content-Disposition: attachment; filename=\"f{i}.bin\"\r\n\r\nbytes {i}\r\n"
                     for i in range(2000))
    msg = (HEAD + "Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n"
           "--p\r\nContent-Type: text/plain\r\n\r\nfirst\r\n" + parts + "--p--\r\n")
    path = tmp_path / "parts.eml"
    path.write_bytes(msg.encode())
    rec, _, secs, rss = dump(str(path))
    assert secs < 20, f"{secs:.1f}s for 2,000 parts"
    assert rss < 200 * 1024, f"peak RSS {rss} KiB"
    assert rec["text"] == "first"
    # the cap (LIM_MIME_PARTS = 1000 entities) is said, the parts before it are listed
    assert 990 <= len(rec["attachments"]) < 1000
    assert rec["attachments"][0]["filename"] == "f0.bin"
    assert "more than 1000 MIME parts" in rec["parse_error"]


def test_hundred_deep(tmp_path):
    body = "Content-Type: text/plain\r\n\r\nbottom\r\n"
    for i in range(100):
        body = (f"Content-Type: multipart/mixed; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n" + body +
                f"--d{i}--\r\n")
    path = tmp_path / "deep.eml"
    path.write_bytes((HEAD + body).encode())
    rec, _, secs, rss = dump(str(path))
    assert secs < 20 and (rss < 200 * 1024), (secs, rss)
    assert rec["text"] == ""
    assert "nested deeper than 64" in rec["parse_error"]
    assert rec["subject"] == "limits"


@pytest.mark.parametrize("shape", ["nesting", "empty_parts", "long_header", "many_rfc822"])
def test_hostile_shapes_are_bounded(shape, tmp_path):
    """Shapes that would make GMime recurse 20,000 levels, build a million objects or keep a
    megabyte header: each still gives a record, quickly, with parse_error saying what was cut."""
    if shape == "nesting":
        body = "".join(f"Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n"
                       for i in range(20000)) + "Content-Type: text/plain\r\n\r\nx\r\n"
        msg, cut = HEAD + body, "multipart or message parts"
    elif shape == "empty_parts":
        msg = HEAD + "Content-Type: multipart/mixed; boundary=\"e\"\r\n\r\n" + "--e\r\n\r\n" * 1000000
        cut = "boundary lines"
    elif shape == "long_header":
        msg = HEAD.replace("Subject: limits", "Subject: " + "s" * (1024 * 1024)) + "\r\nbody\r\n"
        cut = "longer than the limit"
    else:
        msg = HEAD + "Content-Type: multipart/digest; boundary=\"g\"\r\n\r\n" + \
            "--g\r\n\r\nSubject: inner\r\nContent-Type: message/rfc822\r\n\r\nFrom: x@y\r\n\r\nz\r\n" * 5000
        cut = "parts"
    path = tmp_path / "hostile.eml"
    path.write_bytes(msg.encode())
    rec, _, secs, rss = dump(str(path))
    assert secs < 30, f"{secs:.1f}s"
    assert rss < 400 * 1024, f"peak RSS {rss} KiB"
    assert rec["parse_error"] and cut in rec["parse_error"], rec["parse_error"]
    if shape == "long_header":
        assert 60 * 1024 < len(rec["subject"]) <= 64 * 1024


# ---- Inbound Parse posts, as curl sends them -------------------------------------------------

class Capture(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    got = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        Capture.got.append((self.headers.get("Content-Type"), self.rfile.read(n)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def capture():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    Capture.got = []
    yield f"http://127.0.0.1:{srv.server_address[1]}/emailInbound", Capture.got
    srv.shutdown()
    srv.server_close()


def curl_post(url, got, fields, files=()):
    args = [CURL, "-sS", "-o", "/dev/null", "--max-time", "30"]
    for k, v in fields:
        args += [b"--form-string", k.encode() + b"=" + (v if isinstance(v, bytes) else v.encode())]
    for k, path, ctype in files:
        args += ["-F", f"{k}=@{path};type={ctype}"]
    subprocess.run(args + [url], check=True, timeout=60)
    return got.pop()


def post_record(ctype, body, tmp_path, name="post"):
    path = tmp_path / name
    path.write_bytes(body)
    return dump(str(path), "--post", ctype, "--att", str(tmp_path))


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d4944415478da63f8cfc0f01f0005000201a1e8b2d70000000049454e44ae426082")


def test_parsed_mode_post(capture, tmp_path):
    url, got = capture
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 report\n")
    (tmp_path / "logo.png").write_bytes(PNG)
    fields = [
        ("headers", "Received: from mx by sendgrid\nMessage-ID: <CAGm9@mail.example.net>\n"
                    "In-Reply-To: <appt-42@relay.clinic.example>\n"
                    "References: <appt-42@relay.clinic.example>\nDate: Tue, 03 Mar 2026 10:02:33 +0100\n"
                    "From: Pat <pat@example.net>\nTo: reply+t0k3n@reply.clinic.example\n"
                    "Subject: Re: results\n"),
        ("from", "=?utf-8?q?Zo=C3=AB?= <zoe@example.net>"),
        ("to", "reply+t0k3n@reply.clinic.example"),
        ("cc", '"Doe, Jane" <jane@example.org>'),
        ("subject", "Re: r\u00e9sultats".encode("utf-8")),
        # SendGrid's text in the charset it names; iso-8859-1 is read as windows-1252
        ("text", b"Merci, c\x92est re\xe7u.\n\nOn Mon, 2 Mar 2026 at 16:00, Clinic wrote:\n> results\n"),
        ("html", "<p>Merci, c\u2019est re\u00e7u.</p>".encode("utf-8")),
        ("envelope", json.dumps({"to": ["reply+t0k3n@reply.clinic.example"], "from": "zoe@example.net"})),
        ("attachments", "2"),
        ("attachment-info", json.dumps({
            "attachment1": {"filename": "rapport.pdf", "name": "rapport.pdf", "type": "application/pdf"},
            "attachment2": {"filename": "logo.png", "type": "image/png", "content-id": "ii_logo"}})),
        ("charsets", json.dumps({"to": "UTF-8", "subject": "UTF-8", "text": "iso-8859-1",
                                 "html": "utf-8", "from": "UTF-8"})),
        ("SPF", "pass"),
    ]
    ctype, body = curl_post(url, got, fields, [("attachment1", tmp_path / "report.pdf", "application/pdf"),
                                              ("attachment2", tmp_path / "logo.png", "image/png")])
    assert ctype.startswith("multipart/form-data; boundary=")
    rec, atts, _, _ = post_record(ctype, body, tmp_path)
    assert rec["message_id"] == "CAGm9@mail.example.net"
    assert rec["in_reply_to"] == "appt-42@relay.clinic.example"
    assert rec["references"] == ["appt-42@relay.clinic.example"]
    assert rec["date"] == "2026-03-03T09:02:33Z"
    assert rec["from"] == {"address": "zoe@example.net", "name": "Zo\u00eb"}
    assert rec["to"] == [{"address": "reply+t0k3n@reply.clinic.example", "name": ""}]
    assert rec["cc"] == [{"address": "jane@example.org", "name": "Doe, Jane"}]
    assert rec["subject"] == "Re: r\u00e9sultats"
    assert rec["text"].startswith("Merci, c\u2019est re\u00e7u.\n")
    assert rec["html"] == "<p>Merci, c\u2019est re\u00e7u.</p>"
    assert rec["reply_text"] == "Merci, c\u2019est re\u00e7u."
    assert [(a["filename"], a["content_type"], a["content_id"], a["disposition"], a["size"])
            for a in rec["attachments"]] == [
        ("rapport.pdf", "application/pdf", "", "attachment", 16),
        ("logo.png", "image/png", "ii_logo", "inline", len(PNG))]
    assert atts == [b"%PDF-1.4 report\n", PNG]
    assert rec["parse_error"] is None and rec["auto_submitted"] is False


def test_parsed_mode_auto_reply_and_bad_charsets(capture, tmp_path):
    url, got = capture
    fields = [("headers", "From: a@example.net\nSubject: Out of office\nAuto-Submitted: auto-replied\n"),
              ("subject", "Out of office"), ("text", "Away until Monday."),
              ("charsets", "{not json")]
    ctype, body = curl_post(url, got, fields)
    rec, _, _, _ = post_record(ctype, body, tmp_path)
    assert rec["auto_submitted"] is True
    assert rec["from"] == {"address": "a@example.net", "name": ""}
    assert rec["text"] == "Away until Monday."
    assert "charsets field is not JSON" in rec["parse_error"]


def test_raw_mode_post(capture, tmp_path):
    url, got = capture
    raw = open(os.path.join(CORPUS, "nested_mixed_alt_related.eml"), "rb").read()
    ctype, body = curl_post(url, got, [("email", raw), ("envelope", "{}"), ("charsets", "{}")])
    rec, _, _, _ = post_record(ctype, body, tmp_path)
    with open(os.path.join(CORPUS, "nested_mixed_alt_related.json"), encoding="utf-8") as f:
        want = json.load(f)
    problems = diff_records(want, rec)
    assert not problems, "\n".join(problems)


def test_post_that_is_not_a_form(tmp_path):
    rec, _, _, _ = post_record("application/json", b'{"a": 1}', tmp_path)
    assert "not multipart/form-data" in rec["parse_error"]
    assert rec["text"] == "" and rec["attachments"] == []


def test_overlong_attachment_type(tmp_path):
    """A Content-Type longer than any real one (RFC 6838: 127 + 1 + 127) on an attachment is
    the sender's, not a shortage of memory: the file is listed as application/octet-stream,
    parse_error says why, and the rest of the record is made."""
    msg = (HEAD + "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
           "--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
           "--b\r\nContent-Type: application/" + "x" * 300 + "\r\n"
           "Content-Disposition: attachment; filename=a.bin\r\n\r\ndata\r\n--b--\r\n")
    path = tmp_path / "longtype.eml"
    path.write_bytes(msg.encode())
    rec, atts, _, _ = dump(str(path))
    assert rec["text"].strip() == "hello"
    (att,) = rec["attachments"]
    assert att["filename"] == "a.bin" and att["content_type"] == "application/octet-stream", att
    assert "Content-Type" in (rec["parse_error"] or ""), rec["parse_error"]
