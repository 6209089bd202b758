#!/usr/bin/env python3
"""Writes the committed seed corpora under corpus/<target>/ (the seed-* files) and the
libFuzzer dictionaries under dict/. Re-run after editing; the fuzzers' own finds are other
file names and are not committed (see .gitignore)."""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- config_loader
for f in sorted(os.listdir(os.path.join(ROOT, "config"))):
    if f.endswith(".yaml"):
        with open(os.path.join(ROOT, "config", f), "rb") as src:
            write("config_loader", f, src.read())
MIN = "listen:\n  - address: 127.0.0.1:5000\n"
write("config_loader", "minimal.yaml", MIN)
write("config_loader", "crlf.yaml", MIN.replace("\n", "\r\n") + "routes:\r\n  - path: /ws\r\n")
write("config_loader", "lone-cr.yaml", MIN.replace("\n", "\r") + "bogus: 1\r")
write("config_loader", "empty.yaml", "")
write("config_loader", "comment-only.yaml", "# nothing\n")
write("config_loader", "tab-indent.yaml", "listen:\n\t- address: 127.0.0.1:5000\n")
write("config_loader", "duplicate-key.yaml", MIN + "health_path: /a\nhealth_path: /b\n")
write("config_loader", "bad-duration.yaml", MIN + "websockets:\n  keep_alive_interval: 2 minutes\n")
write("config_loader", "bad-size.yaml", MIN + "websockets:\n  max_message_size: 99999999999999999999GiB\n")
write("config_loader", "unknown-key.yaml", MIN + "websocket:\n  enabled: true\n")
write("config_loader", "alias.yaml", "a: &x 1\nlisten: *x\n")
write("config_loader", "two-docs.yaml", MIN + "---\n" + MIN)
write("config_loader", "tag.yaml", "listen: !!str x\n")
write("config_loader", "control-key.yaml", MIN + '"bad\\nkey": 1\n')
# Found by fuzzing (fixed in 19f3596): a YAML escape put U+2029 into a key, and so a line
# break into the one-line error message.
write("config_loader", "u2029-key.yaml", '"\\P": 1\n')
write("config_loader", "u2028-route-key.yaml", MIN + 'routes:\n  - path: /ws\n    "\\Lx": 1\n')
write("config_loader", "unterminated.yaml", 'listen: [ "127.0.0.1:5000\n')
write("config_loader", "flow.yaml", '{listen: [{address: "[::1]:0", proxy_protocol: true}], routes: [{path: /, upstreams: ["http://a:1/b"], balance: cookie}]}\n')
write("config_loader", "no-newline-at-end.yaml", MIN + "routes:\n  - path: /ws\n    websocket: relay")
write("config_loader", "route-overrides.yaml", MIN + "websockets:\n  enabled: false\nroutes:\n  - path: /ws\n    host: '*.example.com'\n    websocket: echo\n    max_message_size: 0\n    allowed_origins: ['https://*.x.com', 'nope']\n")
write("config_loader", "tls-missing-files.yaml", "listen:\n  - address: 0.0.0.0:443\n    tls:\n      certificates:\n        - { cert: a.crt, key: a.key }\n")
write("config_loader", "limits.yaml", MIN + "limits:\n  max_connections: 18446744073709551616\n  message_rate: -1\ntrusted_proxies: [10.0.0.0/33, '::1/128']\nadmin:\n  address: localhost:9\n")

# ---------------------------------------------------------------- handshake
RFC_REQ = (
    "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
write("handshake", "rfc6455-request", RFC_REQ)
write("handshake", "keep-alive-upgrade", RFC_REQ.replace("Connection: Upgrade", "Connection: keep-alive, Upgrade"))
write("handshake", "version-8", RFC_REQ.replace("Version: 13", "Version: 8"))
write("handshake", "version-13-twice", RFC_REQ.replace("Version: 13\r\n", "Version: 13\r\nSec-WebSocket-Version: 13\r\n"))
write("handshake", "version-list", RFC_REQ.replace("Version: 13", "Version: 13, 8"))
write("handshake", "no-key", RFC_REQ.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""))
write("handshake", "two-keys", RFC_REQ.replace("Origin:", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin:"))
write("handshake", "short-key", RFC_REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="))
write("handshake", "noncanonical-key", RFC_REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZR=="))
write("handshake", "unpadded-key", RFC_REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ"))
write("handshake", "post", RFC_REQ.replace("GET ", "POST "))
write("handshake", "lowercase-get", RFC_REQ.replace("GET ", "get "))
write("handshake", "http10", RFC_REQ.replace("HTTP/1.1", "HTTP/1.0"))
write("handshake", "http2", RFC_REQ.replace("HTTP/1.1", "HTTP/2"))
write("handshake", "no-connection", RFC_REQ.replace("Connection: Upgrade\r\n", ""))
write("handshake", "connection-close", RFC_REQ.replace("Connection: Upgrade", "Connection: close"))
write("handshake", "obs-text", RFC_REQ.replace("Connection: Upgrade", "Connection: Upgrade, \xff").encode("latin-1"))

# ---------------------------------------------------------------- upstream_response
RFC_RESP = (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
)
write("upstream_response", "rfc6455-101", RFC_RESP)
write("upstream_response", "200", RFC_RESP.replace("101 Switching Protocols", "200 OK"))
write("upstream_response", "h2c", RFC_RESP.replace("Upgrade: websocket", "Upgrade: h2c"))
write("upstream_response", "upgrade-list", RFC_RESP.replace("Upgrade: websocket", "Upgrade: h2c, WebSocket"))
write("upstream_response", "no-upgrade", RFC_RESP.replace("Upgrade: websocket\r\n", ""))
write("upstream_response", "no-connection", RFC_RESP.replace("Connection: Upgrade\r\n", ""))
write("upstream_response", "connection-list", RFC_RESP.replace("Connection: Upgrade", "Connection: keep-alive,\tupgrade "))
write("upstream_response", "wrong-accept", RFC_RESP.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "S3PPLMBITXAQ9KYGZZHZRBK+XOO="))
write("upstream_response", "accept-twice", RFC_RESP.replace("Sec-WebSocket-Protocol", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol"))
write("upstream_response", "no-accept", RFC_RESP.replace("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", ""))
write("upstream_response", "302", "HTTP/1.1 302 Found\r\nLocation: /login\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")

# ---------------------------------------------------------------- frames
MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload, fin=True, mask=MASK, rsv=0):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


TEXT, BIN, CONT, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10
EURO = "\u20ac".encode()
write("frames", "text-hello", frame(TEXT, "Hello"))  # RFC 6455 5.7: 81 85 37 fa 21 3d 7f 9f 4d 51 58
write("frames", "text-unmasked", frame(TEXT, "Hello", mask=None))
write("frames", "fragmented-text", frame(TEXT, "Hel", fin=False) + frame(CONT, "lo") + frame(CLOSE, b"\x03\xe8bye"))
write("frames", "fragmented-ping-inside", frame(TEXT, "Hel", fin=False) + frame(PING, "p") + frame(CONT, "lo"))
write("frames", "euro-split", frame(TEXT, EURO[:1], fin=False) + frame(CONT, EURO[1:2], fin=False) + frame(CONT, EURO[2:]))
write("frames", "utf8-invalid-fragment", frame(TEXT, b"\xe2", fin=False) + frame(CONT, b"\x28", fin=False) + frame(CONT, b"x"))
write("frames", "utf8-truncated-at-end", frame(TEXT, b"ok", fin=False) + frame(CONT, EURO[:2]))
write("frames", "utf8-invalid-single", frame(TEXT, b"\xff\xfe"))
write("frames", "binary-256", frame(BIN, bytes(range(256))) + frame(PONG, "") + frame(CLOSE, ""))
write("frames", "binary-at-cap", frame(BIN, b"\0" * 1024))
write("frames", "binary-over-cap", frame(BIN, b"\0" * 1025))
write("frames", "fragments-over-cap", frame(BIN, b"\0" * 600, fin=False) + frame(CONT, b"\0" * 425))
write("frames", "fragments-at-cap", frame(TEXT, b"a" * 600, fin=False) + frame(CONT, b"b" * 424) + frame(TEXT, "next"))
write("frames", "ping-126", frame(PING, b"\0" * 126))
write("frames", "pong-126", frame(PONG, b"\0" * 126))
write("frames", "close-126", frame(CLOSE, b"\x03\xe8" + b"a" * 124))
write("frames", "close-1-byte", frame(CLOSE, b"\x03"))
write("frames", "close-1005", frame(CLOSE, struct.pack(">H", 1005)))
write("frames", "close-4999-reason", frame(CLOSE, struct.pack(">H", 4999) + "\u00e9t\u00e9".encode()))
write("frames", "close-bad-reason", frame(CLOSE, b"\x03\xe8\xff\xfe"))
write("frames", "continuation-first", frame(CONT, "x"))
write("frames", "new-message-inside", frame(TEXT, "a", fin=False) + frame(BIN, "b"))
write("frames", "fragmented-ping", frame(PING, "p", fin=False))
write("frames", "rsv1", frame(TEXT, "x", rsv=0x40))
write("frames", "opcode-3", frame(3, "x"))
write("frames", "length-64bit", bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + MASK)
write("frames", "length-126-short", bytes([0x82, 0xFE, 0x00, 0x05]) + MASK + b"hello")
write("frames", "eof-mid-payload", frame(BIN, "abcdef")[:-2])

# ---------------------------------------------------------------- dictionaries
os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)


def dictionary(target, words):
    with open(os.path.join(HERE, "dict", target + ".dict"), "w") as f:
        for w in words:
            esc = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c) for c in w)
            f.write('"%s"\n' % esc)


CONFIG_KEYS = """listen address tls certificates cert key proxy_protocol health_path sample_page
shutdown_grace drain_delay log_level log_format http header_read_timeout tls_handshake_timeout
max_header_size keep_alive websockets enabled keep_alive_interval keep_alive_timeout
close_timeout receive_buffer_size max_message_size allowed_origins require_origin routes path
host websocket upstreams balance health_check interval timeout unhealthy_after healthy_after
subprotocols upstream_timeout ca admin on_route_change close_spread max_connection_age limits
max_connections max_connections_per_ip connection_rate_per_ip message_rate trusted_proxies""".split()
dictionary(
    "config_loader",
    [k + ":" for k in CONFIG_KEYS]
    + ["echo", "relay", "passthrough", "reject", "round_robin", "least_connections", "ip_hash",
       "cookie", "keep", "drain", "json", "text", "true", "false", "null", "~",
       "127.0.0.1:5000", "[::1]:0", "localhost:0", "0.0.0.0:443", "http://", "https://", "ws://",
       "wss://", "*.example.com", "https://*.", "10.0.0.0/8", "::/0", "30s", "2m", "1h", "500ms",
       "0", "4KiB", "1MiB", "1GiB", "18446744073709551615", "\n  - ", "\n    ", ": ", "- ", "[",
       "]", "{", "}", ",", "'", '"', "#", "---", "...", "&a", "*a", "!!str", "|", ">", "\r\n",
       "\t", "?", "%YAML 1.2"],
)
HEADERS = ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
           "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Sec-WebSocket-Accept", "Origin"]
COMMON = ["\r\n"] + [h + ": " for h in HEADERS] + [
    "websocket", "WebSocket", "upgrade", "Upgrade", "keep-alive, Upgrade", "h2c", ", ", ",", " ",
    "\t", "\xff", "HTTP/1.1", "HTTP/1.0", "HTTP/2"]
dictionary("handshake", COMMON + ["GET", "POST", "get", "13", "8", "13, 8",
                                   "dGhlIHNhbXBsZSBub25jZQ==", "AAAAAAAAAAAAAAAAAAAAAA==", "==", "=",
                                   "chat", "superchat"])
dictionary("upstream_response", COMMON + ["101", "200", "101 Switching Protocols",
                                          "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "chat",
                                          "permessage-deflate"])
