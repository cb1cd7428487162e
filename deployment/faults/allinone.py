"""Faults injected into the all-in-one `samvad` under steady load, and what users would see.

The load, its clients and its ledger are load.py's: senders send at a steady rate over
WebSockets, each sending again (same id) what the server has not acked, as a real client does;
receivers record every message they are handed and ack it cumulatively. Meanwhile the server is
killed with SIGKILL at random moments and started again on the same data, its writes are made
to fail for a while (`prlimit --fsize`, as a full disk would), and one receiver reads nothing
until the server lets it go. At the end the senders stop and everyone drains; then every
message the server acked must have reached every device it was for.

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
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from load import Load, log, report


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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(args.bin, os.path.join(work, "data"), port, os.path.join(work, "samvad.log"))
    server.start()
    log(f"samvad on :{port}, data and log in {work}")

    load = Load(port, args.pairs, args.group, args.rate, lazy=True)
    load.start()
    kills = 0

    async def faults():
        nonlocal kills
        started = time.monotonic()
        disk_full_at = args.secs / 2 if args.disk_full > 0 else None
        next_kill = started + random.uniform(*args.kill_every)
        while not load.stop_sending.is_set():
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
                load.faulted()
                await asyncio.sleep(random.uniform(0, 1))
                await asyncio.to_thread(server.start)
                next_kill = time.monotonic() + random.uniform(*args.kill_every)

    injector = asyncio.create_task(faults())
    await asyncio.sleep(args.secs)
    load.stop_sending.set()
    await injector
    await load.finish(args.drain)
    server.stop()

    figures = {
        "secs": args.secs, "pairs": args.pairs, "group": args.group, "rate": args.rate,
        **load.figures(),
        "kills": kills,
        "disk_full_secs": args.disk_full,
        "slow_reader_closed_with": next((r.lazy_close for r in load.receivers if r.lazy), None),
        "max_recovery_secs": load.max_recovery(),
    }
    return report(load, figures, args.report, f"the server's log is {work}/samvad.log")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
