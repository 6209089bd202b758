"""Autobahn|Testsuite conformance of the client side of wsgate's relay (its upstream leg): kosoku's
fuzzingserver (Autobahn's own case files) is the upstream of a relay route, and a driver plays
the Autobahn testee client through wsgate.

Usage: autobahn_client.py --wsgate BIN --out DIR --golden FILE [--update-golden [--golden-runs N]]
                          [--direct]

Each run starts a fuzzingserver on 127.0.0.1:0 (cases 1-10; 12.x and 13.x are
permessage-deflate, which wsgate does not negotiate), then a wsgate of its own (BIN) with one
relay route, `/runCase`, whose upstream is that fuzzingserver, also on 127.0.0.1:0 (the bound
address is read from its `listening address=... tls=false` log line). The driver asks the
fuzzingserver for /getCaseCount, opens /runCase?case=N&agent=wsgate-relay on wsgate, 2 cases at a
time (wsgate forwards the path and query to the upstream as they are), echoes every frame it
gets back with its opcode and FIN bit, and ends the run with /updateReports. So the
fuzzingserver talks to wsgate's client-role leg and judges it: masking, Pongs, close handshake,
failing the connection on bad frames (1002, 1007). The control connections (/getCaseCount,
/updateReports) go to the fuzzingserver directly.

The driver validates nothing and fixes nothing: it is a raw socket client that echoes frames
(masked, as a client must), answers a Close with the same code and then waits for wsgate to
close the TCP connection. So every verdict is wsgate's own; `--direct` drives the fuzzingserver
without wsgate to show it (about a third of the cases FAIL then). What wsgate sends its client is
checked too: a masked frame, RSV bits, a bad opcode, fragments out of order, a text message that
is not UTF-8, a connection dropped without a Close, or an upgrade that is not 101 fails the run,
and so does wsgate not exiting 0 on SIGTERM or logging a panic.

Verdicts, the golden file (mode "relay" in FILE), re-runs of a differing case and the Autobahn-
format reports (DIR/relay/) are autobahn.py's. Each run (a recording run, a re-run) gets a new
fuzzingserver and so a new wsgate: its upstream port is only known once the fuzzingserver is up.
wsgate's logs go to DIR/wsgate.log, the last run's config to DIR/wsgate.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import importlib.util
import os
import re
import signal
import struct
import sys
import time
from pathlib import Path

from kosoku import FailureError, run_fuzzingserver
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed



def load_autobahn_py():
    """autobahn.py, under another name: `autobahn` is taken by the package of Autobahn's code that
    kosoku's case files import (kosoku's shim), and must stay free in sys.modules."""
    spec = importlib.util.spec_from_file_location("wsgate_autobahn", Path(__file__).with_name("autobahn.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ab = load_autobahn_py()
try:
    from websockets.speedups import apply_mask  # C; 16 MiB frames are masked here
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

AGENT = "wsgate-relay"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CASE_TIMEOUT = 120  # seconds for one case's connection, as a last resort; kosoku's are shorter
CLOSE_TIMEOUT = 10  # after the Close is answered, wsgate must close the TCP connection by then
ABOUT = (
    "Autobahn|Testsuite behaviors of the client side of wsgate's relay (cases 1-10, kosoku's"
    " fuzzingserver as the relay's upstream, driven by autobahn_client.py); a list holds the"
    " behaviors a timing-dependent case showed over the recording runs. tests/interop/run.sh"
    " fails on any other behavior. Regenerate with tests/interop/run.sh --only autobahn-client"
    " --update-golden."
)


# ---------------------------------------------------------------- the driver: a raw echo client


def client_frame(fin: bool, opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + apply_mask(payload, mask)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, int, bool, bytes]:
    """(fin, rsv bits, opcode, masked, payload unmasked)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if mask is not None:
        payload = apply_mask(payload, mask)
    return bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F, mask is not None, payload


async def drive(host: str, port: int, target: str) -> dict:
    """Runs one case through wsgate: {"close": code wsgate sent us, "anomalies": [...]}."""
    seen: dict = {"close": None, "anomalies": []}
    odd = seen["anomalies"].append
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if status.split(" ")[1:2] != ["101"]:
            odd(f"upgrade answered {status!r}")
            return seen
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        if not re.search(rb"(?im)^sec-websocket-accept:\s*" + re.escape(accept) + rb"\s*$", head):
            odd("wrong Sec-WebSocket-Accept")
        message = None  # opcode of the message in progress
        text = bytearray()
        while True:
            try:
                fin, rsv, opcode, masked, payload = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                odd("connection dropped without a Close")
                return seen
            if masked or rsv:
                odd(f"frame opcode {opcode} with masked={masked} rsv={rsv}")
            if opcode in (0x0, 0x1, 0x2):
                if (opcode == 0x0) != (message is not None):
                    odd(f"data frame opcode {opcode} out of order")
                message = message if opcode == 0x0 else opcode
                if message == 0x1:
                    text += payload
                if fin:
                    if message == 0x1:
                        try:
                            text.decode("utf-8")
                        except UnicodeDecodeError:
                            odd("text message that is not UTF-8")
                        text.clear()
                    message = None
                writer.write(client_frame(fin, opcode, payload))
            elif opcode == 0x9:
                writer.write(client_frame(True, 0xA, payload))
            elif opcode == 0xA:
                continue
            elif opcode == 0x8:
                seen["close"] = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                writer.write(client_frame(True, 0x8, payload[:2]))
                await writer.drain()
                try:
                    rest = await asyncio.wait_for(reader.read(), CLOSE_TIMEOUT)
                    if rest:
                        odd(f"{len(rest)} bytes after the Close")
                except asyncio.TimeoutError:
                    odd(f"TCP connection still open {CLOSE_TIMEOUT}s after the closing handshake")
                except ConnectionError as e:
                    odd(f"{e!r} after the closing handshake")
                return seen
            else:
                odd(f"reserved opcode {opcode}")
                return seen
            await writer.drain()
    except ConnectionError as e:
        odd(f"{e!r}")
        return seen
    finally:
        writer.close()


# ---------------------------------------------------------------- wsgate and the fuzzingserver


WSGATE_CONFIG = """\
# Generated by tests/interop/autobahn_client.py.
listen:
  - address: 127.0.0.1:0
shutdown_grace: 5s
log_level: info
websockets:
  keep_alive_interval: 0     # no pings of wsgate's own in Autobahn's exchanges
  max_message_size: 16MiB    # Autobahn 9.x sends 16 MiB messages
  close_timeout: 5s
routes:
  - path: /runCase           # Autobahn's case URL, forwarded to the upstream as it is
    websocket: relay
    upstreams: ["ws://127.0.0.1:{port}"]
"""


class Wsgate:
    """A wsgate process with a relay route to one fuzzingserver."""

    def __init__(self, binary: str, out: Path, upstream_port: int) -> None:
        self.binary, self.out, self.upstream_port = binary, out, upstream_port
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> tuple[str, int]:
        # wsgate watches its config file: it stays, unchanged, until this wsgate has exited (the
        # next run's wsgate gets it rewritten).
        config = self.out / "wsgate.yaml"
        config.write_text(WSGATE_CONFIG.format(port=self.upstream_port))
        log = self.out / "wsgate.log"
        self.log_start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as f:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, "--config", str(config), stdin=asyncio.subprocess.DEVNULL,
                stdout=f, stderr=f,
            )
        for _ in range(200):
            m = re.search(r"listening address=(\S+):(\d+) tls=false", self.new_log())
            if m:
                return m.group(1), int(m.group(2))
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"wsgate did not report its listener:\n{self.new_log()}")

    def new_log(self) -> str:
        with (self.out / "wsgate.log").open("rb") as f:
            f.seek(self.log_start)
            return f.read().decode(errors="replace")

    async def stop(self) -> list[str]:
        """SIGTERM; the problems seen (exit status, panics)."""
        problems = []
        if self.proc is None:
            return problems
        if self.proc.returncode is not None:
            problems.append(f"wsgate died during the run (exit {self.proc.returncode})")
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                rc = await self.proc.wait()
            if rc != 0:
                problems.append(f"wsgate exited {rc} on SIGTERM")
        if re.search(r"panicked", self.new_log(), re.I):
            problems.append("wsgate logged a panic (see wsgate.log)")
        return problems


class Runs:
    """The Runner for autobahn.check: one fuzzingserver run per call, driven through wsgate."""

    def __init__(self, binary: str | None, out: Path) -> None:
        self.binary, self.out = binary, out
        self.problems: list[str] = []

    async def __call__(self, cases: list[str] | None) -> list:
        try:
            return await asyncio.wait_for(self.run(cases), ab.MODE_TIMEOUT)
        except Exception as e:  # a run that breaks is a problem of the mode, not a traceback
            self.problems.append(f"run of {'cases ' + ', '.join(cases) if cases else 'cases 1-10'}"
                                 f" broke: {e!r}")
            return []

    async def run(self, cases: list[str] | None) -> list:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        server = run_fuzzingserver(cases, None if cases else ab.EXCLUDE, host="127.0.0.1", port=0)
        async with server as fs:
            wsgate = Wsgate(self.binary, self.out, fs.port) if self.binary else None
            try:
                host, port = await wsgate.start() if wsgate else (fs.address, fs.port)
                # kosoku's fuzzingserver knows /getCaseCount, /runCase and /updateReports; any
                # other URL (Autobahn's /getCaseInfo, /getCaseStatus) runs case 1, so none is used.
                control = f"ws://{fs.address}:{fs.port}"
                async with connect(f"{control}/getCaseCount", compression=None) as ws:
                    count = int(await ws.recv())
                results = asyncio.ensure_future(fs.get_result())
                slots = asyncio.Semaphore(ab.CONCURRENCY)

                async def one(n: int) -> dict:
                    async with slots:
                        target = f"/runCase?case={n}&agent={AGENT}"
                        try:
                            return await asyncio.wait_for(drive(host, port, target), CASE_TIMEOUT)
                        except asyncio.TimeoutError:
                            return {"close": None, "anomalies": [f"not over in {CASE_TIMEOUT}s"]}

                seen = await asyncio.gather(*(one(n) for n in range(1, count + 1)))
                try:  # kosoku ends the run and drops this connection without a Close
                    async with connect(f"{control}/updateReports?agent={AGENT}", compression=None) as ws:
                        await ws.recv()
                except ConnectionClosed:
                    pass
                try:
                    got = await asyncio.wait_for(results, 60)
                except FailureError as failure:
                    got = failure.results
            finally:
                if wsgate:
                    self.problems += await wsgate.stop()
        ids = {r.case_index: r.case_id for r in got}
        for n, s in enumerate(seen, 1):
            for a in s["anomalies"]:
                self.problems.append(f"{ids.get(n, f'case #{n}')}: wsgate sent its client: {a}"
                                     if wsgate else f"{ids.get(n, f'case #{n}')}: {a}")
        closes = collections.Counter(s["close"] for s in seen)
        shown = ", ".join(f"{c}x{n}" for c, n in sorted(closes.items(), key=lambda kv: -kv[1]))
        via = f"wsgate 127.0.0.1:{port} -> " if wsgate else ""
        print(f"   run: {len(seen)} cases, {via}fuzzingserver {fs.address}:{fs.port},"
              f" {time.monotonic() - started:.1f}s; Close codes the driver got: {shown}", flush=True)
        return got


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ab.add_common_args(parser)
    parser.add_argument("--wsgate", required=True, help="the wsgate binary")
    parser.add_argument("--direct", action="store_true",
                        help="drive the fuzzingserver without wsgate (shows the driver checks nothing)")
    args = parser.parse_args()
    runs = Runs(None if args.direct else args.wsgate, args.out)
    if args.direct:
        name, what = "direct", "the driver alone against kosoku's fuzzingserver"
    else:
        name, what = "relay", "kosoku's fuzzingserver as the upstream of a wsgate relay route"
    mode = ab.Mode(name, what, runs, racy=not args.direct, issues=lambda: runs.problems)
    return await ab.check([mode], args, "autobahn-client", ABOUT)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
