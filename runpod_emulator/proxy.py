"""The pod proxy: a pod's http ports as RunPod serves them, ``https://<podId>-<port>.proxy.runpod.net/...``.

Here the same thing is ``<emulator url>/proxy/<podId>-<port>/...``: HTTP requests and WebSockets are passed
to the pod's process and back (close codes included), for every port the pod declares as ``/http``. As on
RunPod, the proxy answers 502 while nothing serves the port (the pod is starting, stopped, or its process is
not listening yet) and 524 when the pod takes longer than ``proxy_timeout_seconds`` (RunPod's 100 s). Always
on; with ``http_proxy_only`` it is the only way in, because the runtime then reports http ports on an
address where nothing listens (``addressing.py``). tcp ports are never proxied (RunPod maps them directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from fastapi import APIRouter, Request, WebSocket
from starlette.responses import Response
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from runpod_emulator.addressing import PROXY_PREFIX
from runpod_emulator.emulator import Emulator
from runpod_emulator.fleet import PodState
from runpod_emulator.messages import GATEWAY_HTML, PROXY_TIMEOUT_HTML

log = logging.getLogger("runpod_emulator")
router = APIRouter(prefix=PROXY_PREFIX, include_in_schema=False)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
# Hop-by-hop headers (RFC 9110 7.6.1) and those httpx sets itself are not passed on.
_DROP = {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
         "content-length", "content-encoding"}


class Unreachable(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status, self.body = status, body

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type="text/html")


def upstream(emulator: Emulator, target: str) -> tuple[str, int]:
    """(host, port) the pod's process serves ``<podId>-<port>`` on; raises ``Unreachable``."""
    pod_id, _, port = target.rpartition("-")
    pod = emulator.fleet.pods.get(pod_id)
    if pod is None or pod.state is PodState.TERMINATED or not port.isdigit():
        # RunPod's answer for an unknown pod id is not recorded.
        raise Unreachable(404, "<html><body>404 Not Found</body></html>")
    private = int(port)
    if not any(p.private == private and p.kind == "http" for p in pod.ports):
        raise Unreachable(404, "<html><body>404 Not Found: the pod exposes no such http port</body></html>")
    public = pod.public_ports.get(private)
    if pod.state is not PodState.RUNNING or public is None:
        raise Unreachable(502, GATEWAY_HTML)  # documented: 502 while nothing is listening yet
    return emulator.settings.pod_host, public


@router.api_route("/{target}", methods=METHODS)
@router.api_route("/{target}/{path:path}", methods=METHODS)
async def proxy_http(target: str, request: Request, path: str = "") -> Response:
    emulator: Emulator = request.app.state.emulator
    client: httpx.AsyncClient = request.app.state.proxy_client
    await emulator.tick()
    try:
        host, port = upstream(emulator, target)
    except Unreachable as e:
        return e.response()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    try:
        answer = await client.request(
            request.method,
            f"http://{host}:{port}/{path}",
            params=request.query_params,
            headers=headers,
            content=await request.body(),
            timeout=emulator.settings.proxy_timeout_seconds,
        )
    except httpx.TimeoutException:
        return Response(PROXY_TIMEOUT_HTML, status_code=524, media_type="text/html")
    except httpx.TransportError:
        return Response(GATEWAY_HTML, status_code=502, media_type="text/html")
    passed = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP}
    return Response(answer.content, status_code=answer.status_code, headers=passed)


@router.websocket("/{target}/{path:path}")
async def proxy_websocket(websocket: WebSocket, target: str, path: str) -> None:
    emulator: Emulator = websocket.app.state.emulator
    await emulator.tick()
    try:
        host, port = upstream(emulator, target)
    except Unreachable:
        await websocket.close(code=1008)  # before accept: the client sees the handshake refused
        return
    query = websocket.url.query
    url = f"ws://{host}:{port}/{path}" + (f"?{query}" if query else "")
    passed = {k: v for k, v in websocket.headers.items() if k.lower() in ("authorization", "cookie", "origin")}
    subprotocols = websocket.scope.get("subprotocols") or None
    try:
        pod_socket = await connect(url, additional_headers=passed, subprotocols=subprotocols, open_timeout=10,
                                   max_size=None, proxy=None)
    except (OSError, InvalidHandshake, TimeoutError):
        await websocket.close(code=1011)
        return
    async with pod_socket:
        await websocket.accept(subprotocol=pod_socket.subprotocol)
        await _pump(websocket, pod_socket)


async def _pump(client: WebSocket, pod: ClientConnection) -> None:
    async def client_to_pod() -> None:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                await pod.close(message.get("code", 1000))
                return
            if message.get("bytes") is not None:
                await pod.send(message["bytes"])
            elif message.get("text") is not None:
                await pod.send(message["text"])

    async def pod_to_client() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in pod:
                if isinstance(message, bytes):
                    await client.send_bytes(message)
                else:
                    await client.send_text(message)
        code = pod.close_code or 1000
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await client.close(code=1000 if code in (1005, 1006) else code, reason=pod.close_reason or "")

    tasks = [asyncio.create_task(client_to_pod(), name="proxy-client-to-pod"),
             asyncio.create_task(pod_to_client(), name="proxy-pod-to-client")]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception) and not isinstance(result, ConnectionClosed | WebSocketDisconnect):
            log.warning("pod proxy: a WebSocket relay failed: %r", result)
