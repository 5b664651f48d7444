"""`SandboxServer`: the sandbox app served by uvicorn over real loopback HTTP, in a background thread."""

import asyncio
import contextlib
import socket
import threading
import time
from types import TracebackType

import uvicorn

from bridge.sandbox.app import create_sandbox_app
from bridge.sandbox.state import SandboxState

_LOOPBACK = ("127.0.0.1", "localhost")


class _PromptServer(uvicorn.Server):
    """A uvicorn server that stops when told, not at its next 0.1 s tick (tests start many)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        ticks = 0
        # on_tick refreshes the Date header every 10th tick and reports should_exit.
        while not await self.on_tick(ticks):
            ticks += 10
            with contextlib.suppress(TimeoutError):  # a quiet second: just refresh the Date header
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # the graceful path, with its 0.1 s grace period
            return
        # Nothing in flight (clients already closed): skip the grace period.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()

    def request_exit(self) -> None:
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


class SandboxServer:
    def __init__(self, state: SandboxState, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"the sandbox only binds to loopback, not {host!r}")
        self.state = state
        self.host = "127.0.0.1"
        self.port = port
        self._server: _PromptServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox server is not started")
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "SandboxServer":
        if self._server is not None:
            raise RuntimeError("the sandbox server is already started")
        # Binding here (port 0 → a free port) makes the port known now and a bind error ours to raise.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        self.port = listener.getsockname()[1]
        config = uvicorn.Config(
            create_sandbox_app(self.state),
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="none",  # no websocket stack: nothing here needs it
            timeout_graceful_shutdown=1,
        )
        server = _PromptServer(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="sandbox-server", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._server = self._thread = None
                listener.close()
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_exit()
        thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> "SandboxServer":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
