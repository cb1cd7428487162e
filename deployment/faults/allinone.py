"""Faults injected into the all-in-one `samvad` under steady load, and what users would see.

Senders send at a steady rate over WebSockets (v2.1, acks on), each keeping what the server has
not acked in an outbox that it sends again (same id) after a reconnect or a refusal, as a real
client does; receivers record every message they are handed and ack it cumulatively. Meanwhile
the server is killed with SIGKILL at random moments and started again on the same data, its
writes are made to fail for a while (`prlimit --fsize`, as a full disk would), and one
receiver reads nothing until the server lets it go. At the end the senders stop and everyone
drains; then every message the server acked must have reached every device it was for.

Reported (and the exit status is 1 unless lost, order and stored-twice are all 0):
  sent, acked         messages sent (distinct ids) and acked by the server
  owed, delivered     (message, device) pairs the acks promise, and those that arrived
  lost                owed pairs that never arrived
  redelivered         arrivals of a message a device had already (allowed: same id, same seq)
  order               a new message arriving out of seq order, or past a hole, in its conversation
  stored twice        one id arriving under two seqs
  kills, recovery     SIGKILLs, and the longest time from a kill to the next ack
  slow reader         how the server ended the connection that read nothing (1013: let go;
                      1006: dropped; "still open": not let go within the time)

Run by deployment/scripts/faults, which says how to call it.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake


# How long the lazy receiver reads nothing: long enough for what it is sent to fill the buffers
# on both sides (~2 MB) and for the server to give up (SAMVAD_SLOW_CLIENT_SECS=3).
LAZY_SECS = 15


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


class Server:
    """The real binary on a fixed loopback port and data directory, killed and started again."""

    def __init__(self, binary, data_dir, port, log_path):
        self.binary, self.data_dir, self.port = binary, data_dir, port
        self.log = open(log_path, "ab")
        self.proc = None
        self.base = f"http://127.0.0.1:{port}"

    def start(self):
        env = dict(os.environ)
        env.update({
            "SAMVAD_AUTH_PROVIDER": "dev",
            "SAMVAD_LISTEN": f"127.0.0.1:{self.port}",
            "SAMVAD_DATA_DIR": self.data_dir,
            "SAMVAD_SLOW_CLIENT_SECS": "3",
            "SAMVAD_RATE_LIMIT": "100000",
            "SAMVAD_RATE_BURST": "100000",
            "SAMVAD_DRAIN_SECS": "0",
            "SAMVAD_CLOSE_SPREAD_SECS": "0",
        })
        self.proc = subprocess.Popen([self.binary], env=env, stdout=self.log, stderr=self.log)
        started = time.monotonic()
        while time.monotonic() - started < 60:
            if self.proc.poll() is not None:
                raise SystemExit(f"samvad exited with {self.proc.returncode}; see its log")
            try:
                with urllib.request.urlopen(f"{self.base}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("samvad did not become ready within 60 s")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def limit_file_size(self, limit):
        subprocess.run(["prlimit", "--pid", str(self.proc.pid), f"--fsize={limit}"], check=True)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def call(self, method, path, body=None, key=None):
        request = urllib.request.Request(f"{self.base}{path}", method=method)
        request.add_header("content-type", "application/json")
        if key:
            request.add_header("accesskey", key)
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(request, data=data, timeout=10) as r:
            return json.loads(r.read() or b"null")


class Client:
    """One device's connection, opened again whenever it drops."""

    def __init__(self, server, user, lazy=False):
        self.server, self.user, self.lazy = server, user, lazy
        self.key = server.call("POST", "/v1.0/login", {
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
                sock = socket.create_connection(("127.0.0.1", self.server.port))
                if lazy:
                    # A small window, so that what the server writes backs up at once.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                async with connect(
                    f"ws://127.0.0.1:{self.server.port}/v1.0/wss/?format=text&ack=true",
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
                    async for raw in ws:
                        self.handle(json.loads(raw))
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            self.ws = None
            if not done.is_set():
                await asyncio.sleep(0.1 + random.random() * 0.4)

    async def send(self, id):
        self.outbox[id] = time.monotonic()
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
            top = self.top.get(conv, 0)
            # Every stored message of the conversation is this device's: the next new one is
            # exactly the next seq, whatever came before (membership notices included).
            if seq != top + 1:
                self.order += 1
                log(f"{self.user}: {id} at {conv}#{seq} after #{top}")
            self.top[conv] = max(top, seq)
        self.to_ack[conv] = max(self.to_ack.get(conv, 0), self.top.get(conv, 0))

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

    async def resend_stale(self, older_than=2.0):
        now = time.monotonic()
        for id, at in list(self.outbox.items()):
            if now - at > older_than:
                await self.send(id)


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", required=True, help="the samvad binary")
    p.add_argument("--secs", type=float, default=60, help="how long the load runs")
    p.add_argument("--pairs", type=int, default=10, help="1:1 sender/receiver pairs")
    p.add_argument("--group", type=int, default=4, help="members of one group besides its sender (0: none)")
    p.add_argument("--rate", type=float, default=5, help="messages a second per sender")
    p.add_argument("--kill-every", type=float, nargs=2, default=[5, 15], metavar=("MIN", "MAX"),
                   help="seconds between SIGKILLs, chosen at random between the two")
    p.add_argument("--disk-full", type=float, default=2, help="seconds of failing writes, once, mid-run (0: none)")
    p.add_argument("--drain", type=float, default=30, help="seconds to wait for the last deliveries")
    p.add_argument("--report", help="append the figures as a JSON line to this file")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="samvad-faults-")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(args.bin, os.path.join(work, "data"), port, os.path.join(work, "samvad.log"))
    server.start()
    log(f"samvad on :{port}, data and log in {work}")

    senders, receivers = [], []
    for i in range(args.pairs):
        s, r = Client(server, f"s{i}"), Client(server, f"r{i}", lazy=(i == 0))
        s.to = r.user
        if r.lazy:
            s.padding = 60 * 1024  # to fill, within seconds, what the lazy receiver does not read
        senders.append(s)
        receivers.append(r)
    group_sender = None
    if args.group:
        group_sender = Client(server, "gs")
        members = [Client(server, f"gm{i}") for i in range(args.group)]
        group_sender.group = True
        group_sender.to = server.call("POST", "/v1.0/groups/", {
            "name": "faults", "members": [m.user for m in members]}, key=group_sender.key)["groupId"]
        senders.append(group_sender)
        receivers += members
    clients = senders + receivers

    done, stop_sending = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(c.run(done)) for c in clients]

    async def produce(c):
        n = 0
        while not stop_sending.is_set():
            n += 1
            await c.send(f"{c.user}-{n}")
            await asyncio.sleep(1 / args.rate)

    async def housekeeping():
        while not done.is_set():
            await asyncio.sleep(0.1)
            for c in clients:
                await c.ack_now()
                await c.resend_stale()

    kills = 0

    async def faults():
        nonlocal kills
        started = time.monotonic()
        disk_full_at = args.secs / 2 if args.disk_full > 0 else None
        next_kill = started + random.uniform(*args.kill_every)
        while not stop_sending.is_set():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if disk_full_at is not None and now - started >= disk_full_at:
                disk_full_at = None
                log(f"writes fail for {args.disk_full}s")
                server.limit_file_size("1:unlimited")  # soft: it can be raised again
                await asyncio.sleep(args.disk_full)
                server.limit_file_size("unlimited")
            if now >= next_kill and now - started < args.secs - 2:
                kills += 1
                log(f"kill -9 #{kills}")
                server.kill()
                for c in senders:
                    c.first_ack_after = time.monotonic()
                await asyncio.sleep(random.uniform(0, 1))
                await asyncio.to_thread(server.start)
                next_kill = time.monotonic() + random.uniform(*args.kill_every)

    producers = [asyncio.create_task(produce(c)) for c in senders]
    helpers = [asyncio.create_task(housekeeping()), asyncio.create_task(faults())]
    await asyncio.sleep(args.secs)
    stop_sending.set()
    await asyncio.gather(*producers, helpers[1])

    def owed():
        pairs = []
        for s in senders:
            to = [r for r in receivers if r.user == s.to] if s is not group_sender else receivers[args.pairs:]
            pairs += [(id, r) for id in s.acked for r in to]
        return pairs

    deadline = time.monotonic() + args.drain
    while time.monotonic() < deadline:
        if all(s.outbox == {} for s in senders) and all(id in r.seq_of for id, r in owed()):
            break
        await asyncio.sleep(0.2)
    done.set()
    for t in tasks + helpers:
        t.cancel()
    await asyncio.gather(*tasks, *helpers, return_exceptions=True)
    server.stop()

    pairs = owed()
    lost = [(id, r.user) for id, r in pairs if id not in r.seq_of]
    figures = {
        "secs": args.secs, "pairs": args.pairs, "group": args.group, "rate": args.rate,
        "sent": sum(len(s.sent) for s in senders),
        "acked": sum(len(s.acked) for s in senders),
        "unacked": sum(len(s.outbox) for s in senders),
        "refused": sum(s.refused for s in senders),
        "owed": len(pairs),
        "delivered": len(pairs) - len(lost),
        "lost": len(lost),
        "redelivered": sum(r.redelivered for r in receivers),
        "order": sum(r.order for r in receivers),
        "stored_twice": sum(r.twice for r in receivers),
        "kills": kills,
        "disk_full_secs": args.disk_full,
        "slow_reader_closed_with": next((r.lazy_close for r in receivers if r.lazy), None),
        "max_recovery_secs": round(max((x for s in senders for x in s.recoveries), default=0), 2),
    }
    print(json.dumps(figures))
    if args.report:
        with open(args.report, "a") as f:
            f.write(json.dumps(figures) + "\n")
    for id, user in lost[:20]:
        log(f"lost: {id} for {user}")
    ok = not lost and figures["order"] == 0 and figures["stored_twice"] == 0
    if figures["unacked"]:
        log(f"{figures['unacked']} messages were still unacked at the end")
        ok = False
    log("ok" if ok else f"FAILED; the server's log is {work}/samvad.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
