"""A minimal LSP client for the tests: `cnnc lsp` in a subprocess, JSON-RPC over its stdin and stdout."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from typing import Any


class LspClient:
    def __init__(self, cwd: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "cnnc", "lsp"], cwd=cwd, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.notifications: list[dict[str, Any]] = []
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = 0
            while True:
                header = stream.readline()
                if not header:
                    return
                if header in (b"\r\n", b"\n"):
                    break
                name, _, value = header.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            self.messages.put(json.loads(stream.read(length)))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.process.stdin is not None
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def request(self, method: str, params: dict[str, Any], timeout: float = 30) -> Any:
        self.next_id += 1
        self._send({"id": self.next_id, "method": method, "params": params})
        while True:
            message = self.messages.get(timeout=timeout)
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message["error"]
                return message.get("result")
            self.notifications.append(message)

    def wait_for(self, method: str, uri: str, timeout: float = 30) -> dict[str, Any]:
        """The next notification of `method` about `uri` (published diagnostics)."""
        while True:
            message = self.messages.get(timeout=timeout)
            if message.get("method") == method and message["params"].get("uri") == uri:
                return message["params"]
            self.notifications.append(message)

    def close(self) -> int:
        self.request("shutdown", {})
        self.notify("exit", {})
        return self.process.wait(timeout=30)
