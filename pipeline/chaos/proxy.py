"""A TCP proxy in front of PostgreSQL that resets connections mid-stream (RST, not FIN)."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading


class ResettingProxy:
    """Listens on 127.0.0.1:<port>, forwards to ``upstream``; with probability ``reset_rate`` a
    connection is reset after a random number of client bytes (so mid-COPY, mid-transaction)."""

    def __init__(self, upstream: tuple[str, int], reset_rate: float, seed: int):
        self.upstream, self.reset_rate = upstream, reset_rate
        self.rng = random.Random(seed)
        self.resets = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, name="chaos-proxy", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                budget = self.rng.randint(2_000, 200_000) if self.rng.random() < self.reset_rate else None
            state = {"budget": budget, "done": False}
            threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, state, False), daemon=True).start()

    def _reset(self, *socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def _pump(self, source: socket.socket, target: socket.socket, state: dict, upstream: bool) -> None:
        try:
            while not state["done"]:
                data = source.recv(65536)
                if not data:
                    break
                if upstream and state["budget"] is not None:
                    state["budget"] -= len(data)
                    if state["budget"] <= 0:
                        with self._lock:
                            self.resets += 1
                        state["done"] = True
                        self._reset(source, target)
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            state["done"] = True
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()
