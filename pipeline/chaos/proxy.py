"""A TCP proxy in front of PostgreSQL that breaks connections mid-stream, two ways:

* **reset**: after a random number of client bytes the connection is reset (RST, not FIN);
* **silent partition**: after a random number of client bytes the proxy stops forwarding in
  both directions and holds both sockets open: neither side hears a reset or a close, as when
  a network partition drops packets. Only timeouts (the server's statement and
  idle-in-transaction timeouts, the importer's watchdog) end such a connection.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading


class ResettingProxy:
    """Listens on 127.0.0.1:<port>, forwards to ``upstream``; with probability ``reset_rate`` a
    connection is reset after a random number of client bytes (so mid-COPY, mid-transaction),
    with probability ``silence_rate`` it goes silent instead."""

    def __init__(self, upstream: tuple[str, int], reset_rate: float, seed: int, silence_rate: float = 0.0):
        self.upstream, self.reset_rate, self.silence_rate = upstream, reset_rate, silence_rate
        self.rng = random.Random(seed)
        self.resets = 0
        self.silences = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []
        self._states: list[dict] = []
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
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
                draw = self.rng.random()
                fault = (
                    "reset"
                    if draw < self.reset_rate
                    else "silence"
                    if draw < self.reset_rate + self.silence_rate
                    else None
                )
                budget = self.rng.randint(2_000, 200_000) if fault else None
            state = {"budget": budget, "fault": fault, "done": False, "silent": threading.Event()}
            with self._lock:
                self._states.append(state)
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
                if state["silent"].is_set():  # partitioned: hold the sockets, forward nothing
                    with self._lock:
                        self._held.extend([source, target])
                    return
                data = source.recv(65536)
                if not data:
                    break
                if state["silent"].is_set():
                    continue
                if upstream and state["budget"] is not None:
                    state["budget"] -= len(data)
                    if state["budget"] <= 0:
                        if state["fault"] == "reset":
                            with self._lock:
                                self.resets += 1
                            state["done"] = True
                            self._reset(source, target)
                            return
                        with self._lock:
                            self.silences += 1
                        state["silent"].set()
                        state["budget"] = None
                        continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            if not state["silent"].is_set():
                state["done"] = True
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.close()

    def silence_all(self) -> None:
        """Partition every open connection now (as if the network between them went dark)."""
        with self._lock:
            for state in self._states:
                if not state["done"] and not state["silent"].is_set():
                    state["silent"].set()
                    self.silences += 1

    def close(self) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            for sock in self._held:  # shutdown first: it wakes a thread blocked in recv on it
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
