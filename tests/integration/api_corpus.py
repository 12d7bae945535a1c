# The corpus of messages the API transports are tested with: each has its envelope, its exact
# bytes, and what SendGrid must be told about it (from, subject, content in order, attachments,
# who is To/Cc/Bcc, which headers pass). Also written out as the fuzz seed corpus
# (python3 api_corpus.py DIR).
import base64
import os
import sys

SENDER = "app@client.test"

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 3 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 2


def b64(data):
    s = base64.b64encode(data).decode()
    return "\r\n".join(s[i:i + 76] for i in range(0, len(s), 76))


def msg(headers, body):
    return ("\r\n".join(headers) + "\r\n\r\n").encode("utf-8") + body


def text_body(s, charset="utf-8"):
    return s.encode(charset)


def corpus():
    C = []

    def add(name, rcpts, data, **expect):
        expect.setdefault("from", (SENDER, "App"))
        C.append({"name": name, "rcpts": rcpts, "data": data, "expect": expect})

    base = ["From: App <app@client.test>", "To: Pat <pat@example.net>"]

    add("plain", ["pat@example.net"],
        msg(base + ["Subject: plain text"], b"Hello Pat.\r\nSecond line.\r\n"),
        subject="plain text", content=[("text/plain", "Hello Pat.\r\nSecond line.\r\n")],
        to=["pat@example.net"], names={"pat@example.net": "Pat"})

    add("utf8-8bit", ["pat@example.net"],
        msg(base + ["Subject: 8bit", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
            "Grüße, Zoë — ça va? 日本語\r\n".encode()),
        subject="8bit", content=[("text/plain", "Grüße, Zoë — ça va? 日本語\r\n")])

    add("latin1-qp", ["pat@example.net"],
        msg(base + ["Subject: qp", "MIME-Version: 1.0",
                    "Content-Type: text/plain; charset=iso-8859-1",
                    "Content-Transfer-Encoding: quoted-printable"],
            b"Caf=E9 cr=E8me br=FBl=E9e\r\n"),
        subject="qp", content=[("text/plain", "Café crème brûlée\r\n")])

    alt = ("MIME-Version: 1.0", 'Content-Type: multipart/alternative; boundary="ALT"')
    add("alternative", ["pat@example.net"],
        msg(base + ["Subject: alternative", *alt],
            b"--ALT\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPlain part\r\n"
            b"--ALT\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>HTML part</p>\r\n"
            b"--ALT--\r\n"),
        subject="alternative",
        content=[("text/plain", "Plain part"), ("text/html", "<p>HTML part</p>")])

    add("alternative-html-first", ["pat@example.net"],
        msg(base + ["Subject: html first", *alt],
            b"--ALT\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<b>Fett</b>\r\n"
            b"--ALT\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFett\r\n"
            b"--ALT--\r\n"),
        subject="html first", content=[("text/plain", "Fett"), ("text/html", "<b>Fett</b>")])

    add("html-only", ["pat@example.net"],
        msg(base + ["Subject: html only", "MIME-Version: 1.0",
                    "Content-Type: text/html; charset=utf-8"], b"<h1>Only HTML</h1>\r\n"),
        subject="html only", content=[("text/html", "<h1>Only HTML</h1>")])

    mixed = ("MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="MIX"')
    add("attachment-pdf", ["pat@example.net"],
        msg(base + ["Subject: report", *mixed],
            b"--MIX\r\nContent-Type: text/plain\r\n\r\nSee the report.\r\n"
            b"--MIX\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"report.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PDF).encode() + b"\r\n--MIX--\r\n"),
        subject="report", content=[("text/plain", "See the report.")],
        attachments=[{"filename": "report.pdf", "type": "application/pdf",
                      "disposition": "attachment", "data": PDF}])

    add("two-attachments-rfc2231", ["pat@example.net"],
        msg(base + ["Subject: two files", *mixed],
            b"--MIX\r\nContent-Type: text/plain\r\n\r\nTwo files.\r\n"
            b"--MIX\r\nContent-Type: text/csv\r\n"
            b"Content-Disposition: attachment; filename*=utf-8''R%C3%A9sum%C3%A9%20%C3%BCber.csv\r\n"
            b"\r\na,b\r\n1,2\r\n"
            b"--MIX\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Disposition: attachment; filename=\"data.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(bytes(range(256))).encode() +
            b"\r\n--MIX--\r\n"),
        subject="two files", content=[("text/plain", "Two files.")],
        attachments=[{"filename": "Résumé über.csv", "type": "text/csv",
                      "disposition": "attachment", "data": b"a,b\r\n1,2"},
                     {"filename": "data.bin", "type": "application/octet-stream",
                      "disposition": "attachment", "data": bytes(range(256))}])

    add("inline-image", ["pat@example.net"],
        msg(base + ["Subject: logo", "MIME-Version: 1.0",
                    'Content-Type: multipart/related; boundary="REL"'],
            b"--REL\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<img src=\"cid:logo123@client.test\">\r\n"
            b"--REL\r\nContent-Type: image/png\r\nContent-ID: <logo123@client.test>\r\n"
            b"Content-Disposition: inline; filename=\"logo.png\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PNG).encode() + b"\r\n--REL--\r\n"),
        subject="logo", content=[("text/html", '<img src="cid:logo123@client.test">')],
        attachments=[{"filename": "logo.png", "type": "image/png", "disposition": "inline",
                      "content_id": "logo123@client.test", "data": PNG}])

    add("nested-everything", ["pat@example.net"],
        msg(base + ["Subject: newsletter", *mixed],
            b"--MIX\r\nContent-Type: multipart/alternative; boundary=\"ALT\"\r\n\r\n"
            b"--ALT\r\nContent-Type: text/plain\r\n\r\nNews (text)\r\n"
            b"--ALT\r\nContent-Type: multipart/related; boundary=\"REL\"\r\n\r\n"
            b"--REL\r\nContent-Type: text/html\r\n\r\n<p>News <img src=\"cid:pic\"></p>\r\n"
            b"--REL\r\nContent-Type: image/png\r\nContent-ID: <pic>\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PNG).encode() + b"\r\n--REL--\r\n"
            b"--ALT--\r\n"
            b"--MIX\r\nContent-Type: application/pdf\r\n"
            b"Content-Disposition: attachment; filename=\"terms.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(PDF).encode() + b"\r\n--MIX--\r\n"),
        subject="newsletter",
        content=[("text/plain", "News (text)"), ("text/html", '<p>News <img src="cid:pic"></p>')],
        attachments=[{"type": "image/png", "disposition": "inline", "content_id": "pic",
                      "data": PNG},
                     {"filename": "terms.pdf", "type": "application/pdf",
                      "disposition": "attachment", "data": PDF}])

    add("subject-utf8-b", ["pat@example.net"],
        msg(base + ["Subject: =?UTF-8?B?" + base64.b64encode("Grüße aus Köln ✓".encode()).decode() + "?="],
            b"x\r\n"),
        subject="Grüße aus Köln ✓", content=[("text/plain", "x")])

    add("subject-latin1-q", ["pat@example.net"],
        msg(base + ["Subject: =?ISO-8859-1?Q?R=E9union_=E0_15h?="], b"x\r\n"),
        subject="Réunion à 15h")

    add("subject-iso2022jp", ["pat@example.net"],
        msg(base + ["Subject: =?ISO-2022-JP?B?" +
                    base64.b64encode("会議の予定".encode("iso-2022-jp")).decode() + "?="], b"x\r\n"),
        subject="会議の予定")

    add("subject-folded-mixed", ["pat@example.net"],
        msg(base + ["Subject: =?windows-1252?Q?Preis=3A_100_=80?=\r\n =?UTF-8?Q?_und_mehr_=E2=80=A6?="],
            b"x\r\n"),
        subject="Preis: 100 € und mehr …")

    add("from-name-koi8r", ["pat@example.net"],
        msg(["From: =?KOI8-R?B?" + base64.b64encode("Иван Петров".encode("koi8-r")).decode() +
             "?= <ivan@client.test>", "To: Pat <pat@example.net>", "Subject: name"], b"x\r\n"),
        subject="name", **{"from": ("ivan@client.test", "Иван Петров")})

    add("to-name-gb2312", ["li@example.net"],
        msg(["From: App <app@client.test>",
             "To: =?GB2312?B?" + base64.b64encode("李华".encode("gb2312")).decode() + "?= <li@example.net>",
             "Subject: name"], b"x\r\n"),
        to=["li@example.net"], names={"li@example.net": "李华"})

    add("cc-and-bcc", ["pat@example.net", "kim@example.net", "hidden@example.org",
                       "Pat@Example.NET"],
        msg(["From: App <app@client.test>", "To: Pat <pat@example.net>, Nobody <nobody@example.net>",
             "Cc: Kim <kim@example.net>", "Subject: cc bcc"], b"x\r\n"),
        to=["pat@example.net"], cc=["kim@example.net"], bcc=["hidden@example.org"],
        names={"kim@example.net": "Kim"})

    add("undisclosed", ["a@example.net", "b@example.net", "c@example.net"],
        msg(["From: App <app@client.test>", "To: undisclosed-recipients:;", "Subject: bulk"],
            b"x\r\n"),
        each=["a@example.net", "b@example.net", "c@example.net"])

    add("group-to", ["m1@example.net", "m2@example.net"],
        msg(["From: App <app@client.test>",
             "To: Team: One <m1@example.net>, Two <m2@example.net>;", "Subject: group"], b"x\r\n"),
        to=["m1@example.net", "m2@example.net"], names={"m1@example.net": "One"})

    add("reply-to", ["pat@example.net"],
        msg(base + ["Reply-To: =?UTF-8?Q?B=C3=BCro?= <office@client.test>", "Subject: rt"], b"x\r\n"),
        reply_to=("office@client.test", "Büro"))

    add("headers", ["pat@example.net"],
        msg(base + ["Subject: headers", "X-Custom: value 1",
                    "X-Folded: first\r\n second", "Received: from somewhere",
                    "DKIM-Signature: v=1; a=rsa-sha256", "X-SG-ID: forged",
                    "Content-Transfer-Encoding: 7bit", "List-Unsubscribe: <mailto:u@client.test>",
                    "In-Reply-To: <orig@client.test>"], b"x\r\n"),
        headers={"X-Custom": "value 1", "X-Folded": "first second",
                 "List-Unsubscribe": "<mailto:u@client.test>", "In-Reply-To": "<orig@client.test>"},
        no_headers=["Received", "DKIM-Signature", "X-SG-ID", "Content-Transfer-Encoding",
                    "To", "From", "Subject", "Cc", "Bcc", "Reply-To", "Content-Type"])

    add("attached-message", ["pat@example.net"],
        msg(base + ["Subject: fwd", *mixed],
            b"--MIX\r\nContent-Type: text/plain\r\n\r\nForwarded.\r\n"
            b"--MIX\r\nContent-Type: message/rfc822\r\n\r\n"
            b"From: x@y.test\r\nSubject: inner\r\n\r\ninner body\r\n--MIX--\r\n"),
        content=[("text/plain", "Forwarded.")],
        attachments=[{"type": "message/rfc822", "disposition": "attachment",
                      "contains": b"inner body"}])

    add("empty-body", ["pat@example.net"], msg(base + ["Subject: empty"], b""),
        subject="empty", content=[("text/plain", " ")])

    add("no-subject-calendar", ["pat@example.net"],
        msg(base + ["MIME-Version: 1.0", *alt[1:]],
            b"--ALT\r\nContent-Type: text/plain\r\n\r\nInvite\r\n"
            b"--ALT\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
            b"--ALT--\r\n"),
        subject=None, content=[("text/plain", "Invite"), ("text/calendar", "BEGIN:VCALENDAR")])

    add("filename-rfc2047-cp1252", ["pat@example.net"],
        msg(base + ["Subject: cp1252 name", *mixed],
            b"--MIX\r\nContent-Type: text/plain\r\n\r\nFile.\r\n"
            b"--MIX\r\nContent-Type: application/octet-stream; name=\"=?windows-1252?Q?Kosten=FCbersicht_=80.txt?=\"\r\n"
            b"Content-Disposition: attachment\r\n\r\n1 EUR\r\n--MIX--\r\n"),
        attachments=[{"filename": "Kostenübersicht €.txt", "type": "application/octet-stream",
                      "disposition": "attachment", "data": b"1 EUR"}])

    return C


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for c in corpus():
        with open(os.path.join(out, c["name"]), "wb") as f:
            f.write(c["data"])
