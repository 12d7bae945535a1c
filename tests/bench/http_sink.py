#!/usr/bin/python3
# A minimal SendGrid-shaped HTTP/1.1 sink for tests/bench/bench_sendgrid.py: keep-alive, answers
# GET /v3/scopes with 200 and POST /v3/mail/send with 202 and an X-Message-Id, and counts the
# connections and mail/send requests it served (GET /stats; GET /reset zeroes them). asyncio, one process: fast enough
# that Postern, not the sink, is what the benchmark measures.
import asyncio
import json
import ssl
import sys
import time

stats = {"connections": 0, "sends": 0, "first": 0.0, "last": 0.0}


async def serve(reader, writer):
    stats["connections"] += 1
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            extra = ""
            if method == "POST" and path == "/v3/mail/send":
                stats["sends"] += 1
                stats["last"] = time.monotonic()
                if stats["sends"] == 1:
                    stats["first"] = stats["last"]
                status, body, extra = "202 Accepted", b"", f"X-Message-Id: b{stats['sends']}\r\n"
            elif path == "/v3/scopes":
                status, body = "200 OK", b'{"scopes":["mail.send"]}'
            elif path == "/stats":
                status, body = "200 OK", json.dumps(stats).encode()
            elif path == "/reset":
                stats.update(connections=0, sends=0, first=0.0, last=0.0)
                status, body = "200 OK", b"{}"
            else:
                status, body = "404 Not Found", b'{"errors":[{"message":"not found"}]}'
            writer.write(f"HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(port, cert=None, key=None):
    ctx = None
    if cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=512, ssl=ctx)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # http_sink.py PORT [CERT KEY]: with a certificate, HTTPS (HTTP/1.1 over TLS)
    asyncio.run(main(int(sys.argv[1]), *sys.argv[2:4]))
