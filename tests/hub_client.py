"""Talk to a JupyterHub as its instructor service would: the hub's REST API to start a
student's server, that server's REST API (through the hub's proxy) to start a kernel,
and the kernel's websocket to run a cell, as JupyterLab does in the student's browser."""

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid


class HubAPI:
    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token

    def request(self, method: str, path: str, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            text = reply.read().decode()
            return reply.status, (json.loads(text) if text.strip() else None)

    def wait_until_up(self, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", "/hub/api/")
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def start_server(self, user: str, timeout=180) -> dict:
        """POST /hub/api/users/{user}/server, then wait until the hub says it is ready."""
        status, _ = self.request("POST", f"/hub/api/users/{user}/server")
        assert status in (201, 202), status
        deadline = time.monotonic() + timeout
        while True:
            _, model = self.request("GET", f"/hub/api/users/{user}")
            server = model.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if time.monotonic() > deadline:
                raise TimeoutError(f"{user}'s server not ready after {timeout} s: {model}")
            time.sleep(0.5)

    def start_kernel(self, user: str, name="labkit") -> str:
        status, model = self.request("POST", f"/user/{user}/api/kernels", {"name": name})
        assert status == 201, status
        return model["id"]

    def kernel(self, user: str, kernel_id: str) -> "KernelSocket":
        websocket = self.url.replace("http://", "ws://", 1)
        return KernelSocket(f"{websocket}/user/{user}/api/kernels/{kernel_id}/channels", self.token)


class Reply:
    """What one execute request produced: streams, error (ename, evalue) and status."""

    def __init__(self):
        self.stdout, self.stderr, self.error, self.status, self.idle = "", "", None, None, False

    def __repr__(self):
        return f"Reply(status={self.status!r}, stdout={self.stdout!r}, stderr={self.stderr!r}, error={self.error!r})"


class KernelSocket:
    """One kernel's channels over Jupyter's websocket (JSON messages, one per frame)."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token
        self.connection = None
        self.replies = {}
        self.waiters = {}
        self.session = uuid.uuid4().hex

    async def connect(self):
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        request = HTTPRequest(self.url, headers={"Authorization": f"token {self.token}"})
        self.connection = await websocket_connect(request)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while True:
            text = await self.connection.read_message()
            if text is None:
                return
            message = json.loads(text)
            parent = message.get("parent_header", {}).get("msg_id")
            reply = self.replies.get(parent)
            if reply is None:
                continue
            kind, content = message["header"]["msg_type"], message["content"]
            if kind == "stream":
                setattr(reply, content["name"], getattr(reply, content["name"]) + content["text"])
            elif kind == "error":
                reply.error = (content["ename"], content["evalue"])
            elif kind == "execute_reply":
                reply.status = content["status"]
            elif kind == "status" and content["execution_state"] == "idle":
                reply.idle = True
            # iopub's idle and shell's reply come on two channels, in either order: done at both
            if reply.idle and reply.status is not None:
                self.waiters[parent].set()

    def send(self, code: str) -> str:
        """Send an execute request; returns its id for `wait`."""
        msg_id = uuid.uuid4().hex
        self.replies[msg_id] = Reply()
        self.waiters[msg_id] = asyncio.Event()
        header = {"msg_id": msg_id, "msg_type": "execute_request", "session": self.session,
                  "username": "instructor", "version": "5.3", "date": ""}
        self.connection.write_message(json.dumps({
            "channel": "shell", "header": header, "parent_header": {}, "metadata": {},
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        return msg_id

    async def wait(self, msg_id: str, timeout=180) -> Reply:
        await asyncio.wait_for(self.waiters[msg_id].wait(), timeout)
        return self.replies[msg_id]

    async def run(self, code: str, timeout=180) -> Reply:
        return await self.wait(self.send(code), timeout)

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.reader.cancel()
