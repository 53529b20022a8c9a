"""A real HTTP receiver for the offline-delivery webhook (aiohttp), run on its own thread and event loop.

Each request is recorded (headers, raw body, parsed JSON, what was answered); what to answer is scripted: a list of
actions consumed one per request (`200`/`500`/any status, `("sleep", seconds)` to answer 204 that late, or
`("stall_body", seconds)` to answer 200 at once and stall that long in the middle of its body), then `default` for
every later request.
"""
import asyncio
import hashlib
import hmac
import json
import threading
import time

from aiohttp import web


def verify_signature(secret: bytes, header: str, body: bytes, tolerance: int = 300) -> bool:
    """The receiver's check of X-Chat-Signature (t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    t = parts.get("t", "")
    if not t.isdigit() or abs(time.time() - int(t)) > tolerance:
        return False
    expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


class Receiver:
    def __init__(self, port, default=204):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hook"
        self.default = default
        self.plan = []
        self.refused_user = None     # a request carrying a notice for this user is answered 422
        self.requests = []
        self.lock = threading.Lock()
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the webhook receiver did not start"

    def _run(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    async def _handle(self, request):
        body = await request.read()
        with self.lock:
            refused = self.refused_user is not None and any(
                n.get("userId") == self.refused_user for n in json.loads(body).get("notifications", []))
            action = 422 if refused else (self.plan.pop(0) if self.plan else self.default)
            self.requests.append({"headers": dict(request.headers), "body": body, "json": json.loads(body),
                                  "action": action, "at": time.monotonic()})
        if isinstance(action, tuple) and action[0] == "sleep":
            await asyncio.sleep(action[1])
            return web.Response(status=204)
        if isinstance(action, tuple) and action[0] == "stall_body":
            # 200 with its head at once, then 2 of the 10 announced body bytes, then nothing for that long
            response = web.StreamResponse(status=200)
            response.content_length = 10
            await response.prepare(request)
            await response.write(b"ok")
            end = time.monotonic() + action[1]
            while time.monotonic() < end and not self._closing:
                await asyncio.sleep(0.05)
            await response.write(b"12345678")
            return response
        return web.Response(status=action)

    def accepted(self):
        """Requests answered 2xx."""
        with self.lock:
            return [r for r in self.requests
                    if (isinstance(r["action"], int) and 200 <= r["action"] < 300)
                    or (isinstance(r["action"], tuple) and r["action"][0] == "stall_body")]

    def notifications(self, company=None, accepted_only=True):
        reqs = self.accepted() if accepted_only else list(self.all())
        return [n for r in reqs for n in r["json"]["notifications"] if company is None or n["companyId"] == company]

    def all(self):
        with self.lock:
            return list(self.requests)

    def close(self):
        self._closing = True   # a stalled answer ends now
        async def stop():
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
