"""Men in the middle for link tests: a TCP relay that records every byte it forwards (a passive
eavesdropper) or, switched to impostor mode, terminates TLS with its own certificate and relays the
plaintext to the real node (an active attacker holding a key the chain does not list); and a sink that
records whatever is sent to it (a proxy that *_PROXY variables might point at)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from typing import Any


class _LoopThread:
    """An asyncio loop in a daemon thread; servers run there while the test drives the client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Wiretap(_LoopThread):
    """Listens on 127.0.0.1:`port` and forwards each connection to 127.0.0.1:`upstream`.

    Passive (default): bytes are relayed unchanged and recorded in both directions. Impostor
    (`impostor_tls` set): the client's TLS ends here with that server context, a new TLS connection goes
    on to the node, and the plaintext passing through is recorded.
    """

    def __init__(self, port: int, upstream: int):
        super().__init__()
        self.port = port
        self.upstream = upstream
        self.recorded = bytearray()
        self.connections = 0
        self.impostor_tls: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._server = self.run(asyncio.start_server(self._handle, "127.0.0.1", port))

    def clear(self) -> None:
        with self._lock:
            self.recorded.clear()
            self.connections = 0

    def seen(self) -> bytes:
        with self._lock:
            return bytes(self.recorded)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        impostor = self.impostor_tls
        try:
            if impostor is not None:
                await writer.start_tls(impostor)
                onward = ssl.create_default_context()
                onward.check_hostname = False
                onward.verify_mode = ssl.CERT_NONE
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream, ssl=onward)
            else:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except (OSError, ssl.SSLError):
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    self.recorded += data
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def close(self) -> None:
        self._server.close()
        self.stop()


class Sink(_LoopThread):
    """A listener that accepts connections, records what arrives and answers nothing."""

    def __init__(self, port: int):
        super().__init__()
        self.port = port
        self.recorded = bytearray()
        self.connections = 0
        self._server = self.run(asyncio.start_server(self._handle, "127.0.0.1", port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(OSError):
            self.recorded += await asyncio.wait_for(reader.read(65536), 2.0)
        writer.close()

    def close(self) -> None:
        self._server.close()
        self.stop()
