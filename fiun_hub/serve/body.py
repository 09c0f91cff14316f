"""Reading a request body: piece by piece with a deadline between pieces, under a size limit, as JSON."""

from __future__ import annotations

import asyncio

from .common import DRAIN_LIMIT, JSON_LIMIT, REFUSED_DRAIN_LIMIT, HTTPError, Request, loads


class BodyReader:
    """Request bodies (mixed into :class:`~fiun_hub.serve.app._Server`; ``self.body_timeout``)."""

    async def _chunks(self, request: "Request"):
        """The request body piece by piece; more than ``body_timeout`` seconds without a piece is a 408 (and the
        connection is closed). Sets ``request.state.body_done`` once the body was read to its end."""
        request.state.body_started = True
        stream = request.stream().__aiter__()
        while True:
            try:
                if hasattr(asyncio, "timeout"):  # Python 3.11+: no task per piece, as wait_for makes
                    async with asyncio.timeout(self.body_timeout):
                        chunk = await stream.__anext__()
                else:  # pragma: no cover - Python 3.10
                    chunk = await asyncio.wait_for(stream.__anext__(), self.body_timeout)
            except StopAsyncIteration:
                request.state.body_done = True
                return
            except asyncio.TimeoutError:
                raise HTTPError(408, f"no part of the request body came for {self.body_timeout:g}s; closing the "
                                     "connection") from None
            yield chunk

    async def _drain_refused(self, request: "Request") -> bool:
        """Read and drop the body of a request refused before its body was read (a wrong token, say), when it
        declares at most :data:`REFUSED_DRAIN_LIMIT` bytes; True when it was read to its end. Closing the
        connection with the body unread instead makes the kernel reset it, and the client can lose the answer
        (``connection reset`` while reading a 401)."""
        declared = request.headers.get("content-length", "")
        if getattr(request.state, "body_started", False) or not declared.isdigit() \
                or int(declared) > REFUSED_DRAIN_LIMIT:
            return False
        try:
            async for _ in self._chunks(request):
                pass
        except Exception:  # noqa: BLE001 - too slow, or gone: the answer then closes the connection
            return False
        return bool(getattr(request.state, "body_done", False))

    async def _body(self, request: "Request", limit: int) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + DRAIN_LIMIT:
            raise HTTPError(413, f"request body of {int(declared)} bytes is over this server's limit of {limit}")
        buf = bytearray()
        n = 0
        async for chunk in self._chunks(request):
            n += len(chunk)
            if n > limit + DRAIN_LIMIT:
                break  # read and dropped enough (a chunked body declares no length): answer now, then close
            if n <= limit:
                buf += chunk
        if n > limit:
            raise HTTPError(413, f"request body is over this server's limit of {limit} bytes (--max-upload-mb)")
        return bytes(buf)

    async def _json(self, request: "Request") -> dict:
        data = loads(await self._body(request, JSON_LIMIT))
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        return data
