"""Steady chat load over real WebSockets, and the ledger of what its users saw: the part the
fault runs share (allinone.py against the all-in-one server, cluster.py against the cluster
shape through nginx).

Senders send at a steady rate over WebSockets (v2.1, acks on), each keeping what the server has
not acked in an outbox that it sends again (same id) after a reconnect, a refusal or a while
without an ack, as a real client does; receivers record every message they are handed and ack
it cumulatively. At the end the senders stop and everyone drains; then every message the server
acked must have reached every device it was for, each new one at the next seq of its
conversation, and no id under two seqs.
"""

import asyncio
import json
import random
import socket
import time
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


# How long the lazy receiver reads nothing: long enough for what it is sent to fill the buffers
# on both sides (~2 MB) and for the server to give up (SAMVAD_SLOW_CLIENT_SECS=3).
LAZY_SECS = 15


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def call(port, method, path, body=None, key=None):
    """One JSON request to 127.0.0.1:`port`, its JSON answer."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    request.add_header("content-type", "application/json")
    if key:
        request.add_header("accesskey", key)
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(request, data=data, timeout=10) as r:
        return json.loads(r.read() or b"null")


class Client:
    """One device's connection to 127.0.0.1:`port`, opened again whenever it drops.

    `first_sent` (id -> when first sent) is shared by every client of a load, so that a
    receiver can tell a message sent after some moment from one sent before."""

    def __init__(self, port, user, first_sent, lazy=False, ping_every=None):
        self.port, self.user, self.lazy = port, user, lazy
        self.first_sent, self.ping_every = first_sent, ping_every
        self.key = call(port, "POST", "/v1.0/login", {
            "username": user, "authToken": "dev", "deviceId": "d1", "notificationToken": ""})["accesskey"]
        self.ws = None
        # Sender side: whom it writes to, a group or not, and bytes of padding per message.
        self.to, self.group, self.padding = None, False, 0
        # Sender side: the outbox (id -> when last sent), and what the server acked.
        self.outbox, self.acked, self.sent = {}, set(), set()
        self.first_ack_after = None  # set at a kill; the time of the next ack is the recovery
        self.recoveries = []
        # Receiver side: what arrived, per conversation.
        self.seq_of = {}       # id -> seq first seen
        self.arrivals = []     # (when, id) of each first arrival, in arrival order
        self.top = {}          # conv -> highest seq of a new message, in order
        self.redelivered = self.order = self.twice = 0
        self.to_ack = {}       # conv -> seq
        self.lazy_close = None  # how the server ended the connection that read nothing
        self.refused = 0  # error frames: messages the server could not take (then sent again)
        self.reading = not lazy

    async def run(self, done):
        while not done.is_set():
            try:
                lazy = not self.reading
                sock = socket.create_connection(("127.0.0.1", self.port))
                if lazy:
                    # A small window, so that what the server writes backs up at once.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                async with connect(
                    f"ws://127.0.0.1:{self.port}/v1.0/wss/?format=text&ack=true",
                    sock=sock, additional_headers={"accesskey": self.key},
                    max_queue=1 if lazy else 64, open_timeout=5, ping_interval=None,
                ) as ws:
                    self.ws = ws
                    for id in list(self.outbox):
                        await self.send(id)
                    if lazy:
                        # Read nothing for a while: the server should let the connection go
                        # rather than hold buffers for it, and lose nothing by that. Then read
                        # what it had sent, and connect again as anyone would.
                        await asyncio.sleep(LAZY_SECS)
                        self.reading = True
                        try:
                            async with asyncio.timeout(5):
                                async for raw in ws:
                                    self.handle(json.loads(raw))
                            self.lazy_close = ws.close_code
                        except ConnectionClosed as e:
                            self.lazy_close = e.rcvd.code if e.rcvd else 1006
                        except TimeoutError:
                            self.lazy_close = "still open"
                        continue
                    pinger = asyncio.create_task(self.ping(ws)) if self.ping_every else None
                    try:
                        async for raw in ws:
                            if raw != "pong":
                                self.handle(json.loads(raw))
                    finally:
                        if pinger:
                            pinger.cancel()
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            self.ws = None
            if not done.is_set():
                await asyncio.sleep(0.1 + random.random() * 0.4)

    async def ping(self, ws):
        """The text `ping` real clients send now and then (the server answers `pong`)."""
        while True:
            await asyncio.sleep(self.ping_every)
            try:
                await ws.send("ping")
            except ConnectionClosed:
                return

    async def send(self, id):
        self.outbox[id] = time.monotonic()
        self.first_sent.setdefault(id, self.outbox[id])
        self.sent.add(id)
        head = {"type": "group" if self.group else "chat", "to": self.to, "from": self.user,
                "contentType": "text"}
        body = {"text": id, "padding": "x" * self.padding}
        if self.ws is not None:
            try:
                await self.ws.send(json.dumps({"_v": 2.1, "id": id, "head": head, "meta": {}, "body": body}))
            except ConnectionClosed:
                pass

    def handle(self, f):
        head = f.get("head") or {}
        if head.get("contentType") == "SERVER_ACK":
            if f["id"] in self.outbox:
                del self.outbox[f["id"]]
                self.acked.add(f["id"])
                if self.first_ack_after is not None:
                    self.recoveries.append(time.monotonic() - self.first_ack_after)
                    self.first_ack_after = None
            return
        meta = f.get("meta") or {}
        if "error" in f:
            self.refused += 1  # sent again from the outbox
            return
        if "seq" not in meta:
            return  # a notice without a place
        conv, seq, id = meta["conv"], int(meta["seq"]), f["id"]
        if id in self.seq_of:
            self.redelivered += 1
            if self.seq_of[id] != seq:
                self.twice += 1
        else:
            self.seq_of[id] = seq
            self.arrivals.append((time.monotonic(), id))
            top = self.top.get(conv, 0)
            # Every stored message of the conversation is this device's: the next new one is
            # exactly the next seq, whatever came before (membership notices included).
            if seq != top + 1:
                self.order += 1
                log(f"{self.user}: {id} at {conv}#{seq} after #{top}")
            self.top[conv] = max(top, seq)
        self.to_ack[conv] = max(self.to_ack.get(conv, 0), self.top.get(conv, 0))

    def has_sent_since(self, t):
        """Whether a message first sent at `t` or later has reached this device."""
        for arrived, id in reversed(self.arrivals):
            if arrived < t:
                return False
            if self.first_sent.get(id, 0) >= t:
                return True
        return False

    async def ack_now(self):
        if self.ws is None:
            return
        for conv, seq in list(self.to_ack.items()):
            frame = {"_v": 2.1, "id": f"ack-{conv}-{seq}", "meta": {"conv": conv, "seq": seq},
                     "head": {"type": "chat", "to": "server", "from": self.user,
                              "contentType": "CLIENT_ACK", "ephemeral": True}}
            try:
                await self.ws.send(json.dumps(frame))
            except ConnectionClosed:
                return
        self.to_ack.clear()

    async def resend_stale(self, older_than):
        now = time.monotonic()
        for id, at in list(self.outbox.items()):
            if now - at > older_than:
                await self.send(id)


class Load:
    """1:1 pairs and one group, the senders sending at `rate` a second each from `start` until
    `finish`, with everything the fault runs count.

    `lazy`: the first pair's receiver reads nothing for a while, and its sender pads each
    message to 60 KB to fill what it does not read. `ping_every`: seconds between the clients'
    text pings (None: no pings). `resend_after`: seconds without an ack before a sender sends a
    message again on its open connection."""

    def __init__(self, port, pairs, group, rate, lazy=False, ping_every=None, resend_after=2.0):
        self.rate, self.resend_after = rate, resend_after
        first_sent = {}

        def client(user, lazy=False):
            return Client(port, user, first_sent, lazy=lazy, ping_every=ping_every)

        # Each sender, and the receivers its acks are owed to.
        self.owed_to = {}
        for i in range(pairs):
            s, r = client(f"s{i}"), client(f"r{i}", lazy=(lazy and i == 0))
            s.to = r.user
            if r.lazy:
                s.padding = 60 * 1024  # to fill, within seconds, what the lazy receiver does not read
            self.owed_to[s] = [r]
        if group:
            s = client("gs")
            members = [client(f"gm{i}") for i in range(group)]
            s.group = True
            s.to = call(port, "POST", "/v1.0/groups/", {
                "name": "faults", "members": [m.user for m in members]}, key=s.key)["groupId"]
            self.owed_to[s] = members
        self.senders = list(self.owed_to)
        self.receivers = [r for rs in self.owed_to.values() for r in rs]
        self.clients = self.senders + self.receivers
        self.done, self.stop_sending = asyncio.Event(), asyncio.Event()
        self.tasks = []

    def start(self):
        """Connects everyone and starts sending."""
        self.tasks = [asyncio.create_task(c.run(self.done)) for c in self.clients]
        self.producers = [asyncio.create_task(self.produce(c)) for c in self.senders]
        self.tasks.append(asyncio.create_task(self.housekeeping()))

    async def produce(self, c):
        n = 0
        while not self.stop_sending.is_set():
            n += 1
            await c.send(f"{c.user}-{n}")
            await asyncio.sleep(1 / self.rate)

    async def housekeeping(self):
        while not self.done.is_set():
            await asyncio.sleep(0.1)
            for c in self.clients:
                await c.ack_now()
                await c.resend_stale(self.resend_after)

    def faulted(self):
        """Marks a fault: each sender's next ack counts as its recovery."""
        for c in self.senders:
            c.first_ack_after = time.monotonic()

    def delivering_since(self, t):
        """Whether every receiver has had a message first sent at `t` or later."""
        return all(r.has_sent_since(t) for r in self.receivers)

    def owed(self):
        """(id, receiver) pairs the server's acks promise."""
        return [(id, r) for s, rs in self.owed_to.items() for id in s.acked for r in rs]

    async def finish(self, drain):
        """Stops sending, waits up to `drain` seconds for everything acked to arrive and
        everything sent to be acked, then disconnects everyone."""
        self.stop_sending.set()
        await asyncio.gather(*self.producers)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            if all(s.outbox == {} for s in self.senders) and all(id in r.seq_of for id, r in self.owed()):
                break
            await asyncio.sleep(0.2)
        self.done.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def lost(self):
        """(id, user) of every owed pair that never arrived."""
        return [(id, r.user) for id, r in self.owed() if id not in r.seq_of]

    def figures(self):
        """What every fault run reports, once finished."""
        lost = len(self.lost())
        owed = len(self.owed())
        return {
            "sent": sum(len(s.sent) for s in self.senders),
            "acked": sum(len(s.acked) for s in self.senders),
            "unacked": sum(len(s.outbox) for s in self.senders),
            "refused": sum(s.refused for s in self.senders),
            "owed": owed,
            "delivered": owed - lost,
            "lost": lost,
            "redelivered": sum(r.redelivered for r in self.receivers),
            "order": sum(r.order for r in self.receivers),
            "stored_twice": sum(r.twice for r in self.receivers),
        }

    def max_recovery(self):
        """The longest time from a fault to a sender's next ack, in seconds."""
        return round(max((x for s in self.senders for x in s.recoveries), default=0), 2)


def report(load, figures, path, where_logs, problems=()):
    """Prints the figures as a JSON line (and appends it to `path`), says what was lost; the
    exit status: 0 only if nothing was lost, out of order, stored twice or left unacked, and
    there are no other `problems` (sentences saying what else went wrong). `where_logs` ends
    the verdict on a failure (where to look)."""
    print(json.dumps(figures))
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")
    lost = load.lost()
    for id, user in lost[:20]:
        log(f"lost: {id} for {user}")
    ok = not lost and figures["order"] == 0 and figures["stored_twice"] == 0
    if figures["unacked"]:
        log(f"{figures['unacked']} messages were still unacked at the end")
        ok = False
    for problem in problems:
        log(problem)
        ok = False
    log("ok" if ok else f"FAILED; {where_logs}")
    return 0 if ok else 1
