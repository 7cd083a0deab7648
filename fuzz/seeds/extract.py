#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/.

Seeds come from the captured frames in shared/spec/*.md and the test vectors
made by the real Node libraries (tests/vectors/*.json, the committed copies of
shared/vectors), plus a few hand-written inputs for formats neither covers
(IPC frames, filter records). Each seed is named by a hash of its bytes, as
libFuzzer names corpus files, so re-running is idempotent.

Usage: fuzz/seeds/extract.py [SPEC_DIR]   (default: /work/shared/spec, then ../shared/spec)
Re-run it after the spec or the vectors change, and commit the result.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import struct
import sys

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(FUZZ)
SEEDS = os.path.join(FUZZ, "seeds")


def spec_dir():
    if len(sys.argv) > 1:
        return sys.argv[1]
    for candidate in ["/work/shared/spec", os.path.join(ROOT, "..", "shared", "spec")]:
        if os.path.isdir(candidate):
            return candidate
    sys.exit("no spec directory found; pass it as the first argument")


def captured_frames(path):
    """The text after `C→S ` / `S→C ` in code blocks, without the trailing (comment)."""
    frames = []
    in_block = False
    with open(path, encoding="utf-8") as spec:
        for line in spec:
            line = line.rstrip("\n")
            if line.startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                continue
            match = re.match(r"^(?:C→S|S→C) ?(.*)$", line)
            if match:
                frame = re.sub(r"\s{2,}\(.*\)\s*$", "", match.group(1)).rstrip()
                frames.append(frame)
    return frames


def inline_spans(path):
    with open(path, encoding="utf-8") as spec:
        return re.findall(r"`([^`\n]+)`", spec.read())


def request_heads(path):
    """Request heads in code blocks (a first line like `GET /... HTTP/1.1`), CRLF-terminated."""
    heads = []
    lines = []
    in_block = False
    with open(path, encoding="utf-8") as spec:
        for line in spec:
            line = line.rstrip("\n")
            if line.startswith("```"):
                if in_block and lines and re.match(r"^[A-Z]+ \S+ HTTP/1\.[01]$", lines[0]):
                    headers = [l for l in lines if re.match(r"^[A-Za-z0-9-]+: ", l)]
                    heads.append("\r\n".join([lines[0]] + headers) + "\r\n\r\n")
                in_block = not in_block
                lines = []
                continue
            if in_block:
                lines.append(line)
    return heads


def write(target, seeds):
    directory = os.path.join(SEEDS, target)
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    unique = {}
    for seed in seeds:
        data = seed.encode("utf-8") if isinstance(seed, str) else bytes(seed)
        unique[hashlib.sha1(data).hexdigest()] = data
    for name, data in sorted(unique.items()):
        with open(os.path.join(directory, name), "wb") as out:
            out.write(data)
    print(f"{target}: {len(unique)} seeds")


def vectors(name):
    with open(os.path.join(ROOT, "tests", "vectors", name), encoding="utf-8") as file:
        return json.load(file)


def strings_named(value, keys):
    """Every string under one of `keys`, anywhere in a JSON document."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in keys and isinstance(item, str):
                yield item
            else:
                yield from strings_named(item, keys)
    elif isinstance(value, list):
        for item in value:
            yield from strings_named(item, keys)


def main():
    spec = spec_dir()
    sc_spec = os.path.join(spec, "socketcluster-protocol.md")
    sio_spec = os.path.join(spec, "socketio-protocol.md")

    # SocketCluster: captured frames both ways (the decoder must cope with either), pings.
    sc = [f for f in captured_frames(sc_spec) if f.lstrip(" \t").startswith(("{", "["))]
    sc += [s for s in inline_spans(sc_spec) if s.startswith(("{", "["))]
    write("socketcluster_frame", sc + ["", "#1", "#2", " \n[]"])

    # Socket.IO: Engine.IO frames as captured; packets are the text after the `4`.
    sio = [f for f in captured_frames(sio_spec) if re.match(r"^[0-6b]", f)]
    sio += [s for s in inline_spans(sio_spec) if re.match(r"^4[0-6]", s)]
    binary = ['451-["upload",{"_placeholder":true,"num":0}]', "bAQID/w==",
              '461-/admin,7[{"_placeholder":true,"num":0}]']
    write("socketio_frames", sio + binary + [
        # A binary event, its attachment as a binary frame (invalid UTF-8), then a publish.
        '451-["publish",{"channel":"c","data":{"_placeholder":true,"num":0}}]\x00\xff\xfe',
    ])
    packets = [f[1:] for f in sio + binary if f.startswith("4") and len(f) > 1]
    write("socketio_packet", packets + ['2["subscribe","news"]', '2["publish",{"channel":"news","data":1}]'])

    # Engine.IO polling payloads: captured frames joined by the record separator.
    payloads = ["\x1e".join(sio[i:i + 3]) for i in range(0, len(sio), 3)]
    payloads += ["4hello\x1ebAQIDBA==\x1e2", "b" + base64.b64encode(b"\x00\x01\xff").decode(), "6"]
    write("engineio_payload", payloads)

    # Cookies: every Cookie header and cookie value in the session vectors; with a query value.
    sessions = vectors("sessions.json")
    cookies = set(strings_named(sessions, {"cookie_header", "cookie_value", "cookie_value_url_encoded",
                                           "cookie_value_decoded", "header", "signed"}))
    cookie_seeds = sorted(cookies)
    cookie_seeds += ["a=1\rconnect.sid=x; connect.sid=y\n" + sorted(cookies)[0]]
    write("session_cookie", cookie_seeds)

    # JWT: mode 0 is the token as sent; mode 1 is clock + header JSON + `\n` + claims JSON.
    jwt = vectors("jwt.json")
    now = jwt["verify_at"]
    jwt_seeds = []
    for case in jwt["cases"]:
        jwt_seeds.append(b"\x00" + case["token"].encode())
        header = json.dumps(case["header"], separators=(",", ":")).encode()
        payload = json.dumps(case["payload"], separators=(",", ":")).encode()
        jwt_seeds.append(b"\x01" + struct.pack("<Q", now) + header + b"\n" + payload)
    write("jwt_verify", jwt_seeds)

    # Filters: the documented examples against a socket record as the admin API builds it.
    record = {
        "id": "sock-1", "node": "n1", "worker": 1, "protocol": "socketio", "logged_in": True,
        "user": {"id": 42, "role": "admin", "age": 30, "tags": ["a", "b"]},
        "auth": {"sub": 42, "iat": 1767222000},
        "session": {"cart": [1, 2], "prefs": {"theme": "dark"}},
        "channels": ["room:1", "user:42"],
        "remote_addr": "127.0.0.1:51234", "connected_at": "2026-11-22T14:00:00Z",
    }
    filters = [
        {}, {"user.role": "admin", "user.age": {"$gte": 18}}, {"channels": "room:1"},
        {"user.id": {"$in": [42, "42", 7.0]}}, {"auth.sub": 42, "user.id": 42},
        {"session.prefs": {"theme": "dark"}}, {"user.tags.0": {"$ne": "b"}},
        {"connected_at": {"$lt": "2027-01-01T00:00:00Z"}}, {"logged_in": {"$exists": True}},
        {"channels": "{room}", "user.id": {"$ne": "{user}"}},
    ]
    record_text = json.dumps(record, separators=(",", ":"))
    write("admin_filter", [json.dumps(f, separators=(",", ":")) + "\n" + record_text + "\nroom,user\nroom:1,42"
                           for f in filters])

    # IPC: one frame of each common message kind, and two frames in one stream.
    def frame(message):
        body = json.dumps(message, separators=(",", ":")).encode()
        return struct.pack(">I", len(body)) + body
    messages = [
        "ready", "drain", {"subscribe": {"channel": "news"}}, {"publish": {"channel": "news", "data": {"n": 1}}},
        {"users": {"joined": ["42"], "left": []}}, {"deliver": {"channel": "news", "data": [1, "x"]}},
        {"metrics_request": {"request": 7}},
        {"cluster": {"request": 1, "command": {"query": {"filter": {"user.id": 42}, "limit": 100}}}},
        {"cluster": {"request": 2, "command": {"kick": {"filter": {}, "reason": "bye"}}}},
        {"cluster": {"request": 3, "reply": {"emit": {"delivered": 2}}}},
        {"poll_call": {"request": 4, "from": 1, "call": {"sid": "abc", "method": "POST", "body": "4hi"}}},
        {"poll_answer": {"request": 4, "to": 1, "answer": {"status": 200, "content_type": "text/plain", "body": "ok"}}},
        {"node_address": {"request": 5, "node": 1234}},
    ]
    ipc = [b"\n" + frame(m) for m in messages]
    ipc.append(b"\x01\x03\n" + frame("ready") + frame({"subscribe": {"channel": "a"}}))
    write("ipc_frames", ipc)

    # HTTP heads: the captured upgrade requests, a polling POST with each body framing, the admin API.
    heads = request_heads(sio_spec) + request_heads(sc_spec)
    for header in sorted(cookies)[:4]:
        heads.append(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: h\r\nCookie: {header}\r\n\r\n")
    heads += [
        "POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n4hello",
        "POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;x=y\r\n4hello\r\n0\r\nTrailer: 1\r\n\r\n",
        "POST /api/sockets/query HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t0k3n\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        "GET /socketcluster/?foo=bar&list=a&list=b HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ]
    write("http_head", [b"\x04\n" + h.encode() for h in heads] + [b"\x00\x07\x01\n" + heads[0].encode()])

    # WebSocket frames as a client sends them (masked): captured protocol frames, one per frame
    # and pipelined, a fragmented message around a ping, and the edge cases a server must refuse.
    # The first byte picks the reads' size and what was read ahead with the head.
    def ws(first, payload, masked=True):
        mask = b"\x12\x34\x56\x78"
        n = len(payload)
        bit = 0x80 if masked else 0
        if n < 126:
            head = bytes([first, bit | n])
        elif n <= 0xFFFF:
            head = bytes([first, bit | 126]) + struct.pack(">H", n)
        else:
            head = bytes([first, bit | 127]) + struct.pack(">Q", n)
        if not masked:
            return head + payload
        return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    texts = [f.encode() for f in sc[:8] + sio[:8]]
    streams = [ws(0x81, t) for t in texts] + [b"".join(ws(0x81, t) for t in texts)]
    streams += [
        ws(0x82, bytes(range(256))),
        ws(0x01, "h\u00e9".encode()[:2]) + ws(0x89, b"ping") + ws(0x80, "h\u00e9llo".encode()[2:]),
        ws(0x89, b"hi") + ws(0x8A, b"") + ws(0x88, b"\x03\xe8bye") + ws(0x81, b"late"),
        ws(0x88, b"\x03\xed"),
        ws(0x88, b"\x03"),
        bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40),
        ws(0x81, b"x", masked=False),
        ws(0x81, b"\xff\xfe"),
        ws(0xC1, b"x"),
        ws(0x09, b""),
    ]
    write("websocket_frames", [bytes([(i * 37) & 0xFF]) + b for i, b in enumerate(streams)])


if __name__ == "__main__":
    main()
