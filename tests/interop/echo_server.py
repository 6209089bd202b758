"""An independent WebSocket echo server (Python `websockets`), the upstream app behind wsgate's
relay and passthrough routes in the interop suite.

Binds 127.0.0.1 on a port the OS chooses and writes that port to --port-file once it is
listening. Echoes every message with its type, accepts messages up to 16 MiB (Autobahn's 9.x
cases send 16 MiB messages), negotiates no extension and sends no keep-alive pings of its own, so
what Autobahn sees through wsgate is wsgate's doing. Plain HTTP requests get a small 200 answer
(so wsgate's HTTP proxy and health checks have something to reach).

Two of websockets 17's own choices would fail Autobahn cases in passthrough mode (where Autobahn
talks to this server through wsgate's raw tunnel), so they are undone here:
- it fails a connection whose message has more than 4096 fragments with 1009 "too many fragments"
  (cases 9.3.1, 9.3.2, 9.4.1, 9.4.2 send 4 MiB in 64- and 256-byte fragments): the limit is raised
  through its WEBSOCKETS_MAX_FRAGMENTS variable;
- it answers a Close that arrives in the middle of a fragmented message with 1002 "incomplete
  fragmented message" (case 7.1.5 expects the ordinary closing handshake with 1000; RFC 6455
  allows control frames between fragments): the incomplete message is dropped instead.
"""

from __future__ import annotations

import argparse
import asyncio
import http
import os
import signal

# Read by websockets when it is imported: 16 MiB in 64-byte fragments is 262144 of them.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.protocol import Protocol

MAX_SIZE = 16 * 1024 * 1024

_recv_frame = Protocol.recv_frame


def _recv_frame_close_mid_message(self: Protocol, frame) -> None:
    if frame.opcode is Opcode.CLOSE and self.current_size is not None:
        self.current_size = None  # drop the incomplete message, then close as usual
    _recv_frame(self, frame)


Protocol.recv_frame = _recv_frame_close_mid_message  # type: ignore[method-assign]


async def echo(ws: ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


def plain_http(conn: ServerConnection, request: Request) -> Response | None:
    # Requests that are not upgrades get a plain answer instead of websockets' 426.
    if "upgrade" not in request.headers.get("Connection", "").lower():
        body = b"interop upstream ok\n"
        headers = Headers(
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return Response(http.HTTPStatus.OK.value, "OK", headers, body)
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)

    async with serve(
        echo,
        "127.0.0.1",
        0,
        max_size=MAX_SIZE,
        max_queue=4,
        compression=None,
        ping_interval=None,
        ping_timeout=None,
        close_timeout=5,
        process_request=plain_http,
        server_header="interop-upstream (python websockets)",
    ) as server:
        port = server.sockets[0].getsockname()[1]
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
        await stop


if __name__ == "__main__":
    asyncio.run(main())
