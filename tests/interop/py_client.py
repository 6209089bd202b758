"""wsgate against the Python `websockets` client (asyncio implementation).

Usage: py_client.py --ws ws://127.0.0.1:PORT --wss wss://localhost:PORT --ca ca.crt --small-max BYTES

Routes expected (run.sh writes them): /echo (echo, 16 MiB), /chat (echo, subprotocols [chat.v1]),
/small (echo, max_message_size BYTES), /relay and /passthrough (the Python upstream echo server;
skipped while they answer 501).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import traceback

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

results: list[tuple[str, str, str]] = []  # (status, name, detail)


async def check(name: str, coro) -> None:
    try:
        detail = await asyncio.wait_for(coro, 60)
        results.append(("ok", name, detail or ""))
        print(f"  ok    {name}{': ' + detail if detail else ''}", flush=True)
    except Skip as s:
        results.append(("skip", name, str(s)))
        print(f"  skip  {name}: {s}", flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
        results.append(("FAIL", name, repr(e)))
        print(f"  FAIL  {name}: {e!r}", flush=True)
        traceback.print_exc(limit=3)


class Skip(Exception):
    pass


def opts(**kw):
    # No compression (wsgate negotiates none anyway), no client pings, big messages allowed.
    base = dict(compression=None, ping_interval=None, max_size=32 * 1024 * 1024, open_timeout=10)
    base.update(kw)
    return base


async def echo_roundtrip(url: str, ssl_ctx=None, skip_501: bool = False) -> str:
    try:
        async with connect(url, ssl=ssl_ctx, **opts()) as ws:
            texts = ["hello", "héllo wörld ✓ 🚀", ""]
            for t in texts:
                await ws.send(t)
                got = await ws.recv()
                assert got == t, f"text echo: sent {t!r}, got {got!r}"
            blobs = [bytes(range(256)) * 4, os.urandom(200_000), b""]
            for b in blobs:
                await ws.send(b)
                got = await ws.recv()
                assert isinstance(got, bytes) and got == b, f"binary echo of {len(b)} bytes differs"
            # A fragmented text message (3 frames) comes back whole.
            await ws.send(["frag", "mented ", "✓"])
            got = await ws.recv()
            assert got == "fragmented ✓", f"fragmented echo: got {got!r}"
            # Ping gets a Pong.
            pong = await ws.ping(b"are you there")
            latency = await asyncio.wait_for(pong, 5)
            await ws.close()
            assert ws.close_code == 1000, f"close code {ws.close_code}"
        return f"{len(texts)} text + {len(blobs)} binary + 1 fragmented message, ping {latency * 1000:.1f} ms, close 1000"
    except InvalidStatus as e:
        if skip_501 and e.response.status_code == 501:
            raise Skip("route answers 501 (not implemented yet)") from e
        raise


async def big_message(url: str) -> str:
    async with connect(url, **opts()) as ws:
        data = os.urandom(8 * 1024 * 1024)
        await ws.send(data)
        got = await ws.recv()
        assert got == data, "8 MiB binary echo differs"
    return "8 MiB binary echoed"


async def subprotocol(base: str) -> str:
    async with connect(base + "/chat", subprotocols=["chat.v0", "chat.v1"], **opts()) as ws:
        assert ws.subprotocol == "chat.v1", f"offered chat.v0, chat.v1: got {ws.subprotocol!r}"
        await ws.send("sub")
        assert await ws.recv() == "sub"
    # Nothing listed offered: the connection opens without a subprotocol.
    try:
        async with connect(base + "/chat", subprotocols=["other.v9"], **opts()) as ws:
            none_case = f"offered other.v9: opened with {ws.subprotocol!r}"
            assert ws.subprotocol is None, none_case
    except InvalidStatus as e:
        none_case = f"offered other.v9: refused with {e.response.status_code}"
    # No offer at all: no subprotocol.
    async with connect(base + "/chat", **opts()) as ws:
        assert ws.subprotocol is None, f"no offer: got {ws.subprotocol!r}"
    return f"chat.v1 negotiated; {none_case}; no offer -> none"


async def close_code(url: str, skip_501: bool = False) -> str:
    try:
        async with connect(url, **opts()) as ws:
            await ws.send("before close")
            assert await ws.recv() == "before close"
            await ws.close(code=4001, reason="interop bye")
            rcvd = ws.protocol.close_rcvd
            assert rcvd is not None, "no Close frame received"
            assert rcvd.code == 4001, f"sent 4001, received {rcvd.code} {rcvd.reason!r}"
        return f"sent 4001, received {rcvd.code} {rcvd.reason!r}"
    except InvalidStatus as e:
        if skip_501 and e.response.status_code == 501:
            raise Skip("route answers 501 (not implemented yet)") from e
        raise


async def too_big(base: str, limit: int) -> str:
    url = base + "/small"
    # Exactly the limit is echoed.
    async with connect(url, **opts()) as ws:
        await ws.send(b"x" * limit)
        assert len(await ws.recv()) == limit
    # One byte more in one frame: Close 1009.
    async with connect(url, **opts()) as ws:
        await ws.send(b"x" * (limit + 1))
        try:
            got = await ws.recv()
            raise AssertionError(f"a {limit + 1}-byte message was echoed ({len(got)} bytes)")
        except ConnectionClosedError as e:
            assert e.rcvd is not None and e.rcvd.code == 1009, f"closed with {e.rcvd}"
            single = f"{e.rcvd.code} {e.rcvd.reason!r}"
    # Over the limit across fragments that are each well under it: also 1009.
    async with connect(url, **opts()) as ws:
        chunk = "y" * (limit // 4)
        await ws.send([chunk] * 5)
        try:
            await ws.recv()
            raise AssertionError("a fragmented message over the limit was echoed")
        except ConnectionClosedError as e:
            assert e.rcvd is not None and e.rcvd.code == 1009, f"closed with {e.rcvd}"
    return f"{limit} B echoed; {limit + 1} B -> {single}; 5 x {limit // 4} B fragments -> 1009"


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", required=True)
    p.add_argument("--wss", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--small-max", type=int, required=True)
    a = p.parse_args()
    tls = ssl.create_default_context(cafile=a.ca)

    await check("echo text/binary/fragmented/ping over ws://", echo_roundtrip(a.ws + "/echo"))
    await check("echo over wss:// (TLS, verified against the test CA)", echo_roundtrip(a.wss + "/echo", tls))
    await check("8 MiB message", big_message(a.ws + "/echo"))
    await check("subprotocol negotiation", subprotocol(a.ws))
    await check("close code 4001 echoed", close_code(a.ws + "/echo"))
    await check("max_message_size exceeded -> 1009", too_big(a.ws, a.small_max))
    for mode in ("relay", "passthrough"):
        await check(f"{mode}: echo through the upstream", echo_roundtrip(a.ws + f"/{mode}", skip_501=True))
        await check(f"{mode}: close code 4001", close_code(a.ws + f"/{mode}", skip_501=True))

    failed = [r for r in results if r[0] == "FAIL"]
    passed = [r for r in results if r[0] == "ok"]
    skipped = [r for r in results if r[0] == "skip"]
    print(f"  python websockets: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
