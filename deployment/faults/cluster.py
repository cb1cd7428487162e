"""Faults injected into the cluster shape under steady load through nginx, and what users would see.

The cluster is the local one (deployment/scripts/cluster, already up: every service its own
process, two ws-gateways, the bus, MongoDB-wire, Redis, nginx in front). The load, its clients
and its ledger are load.py's: 1:1 pairs and a group, senders sending at a steady rate over
WebSockets through nginx and sending again (same id) what is not acked, receivers acking
cumulatively, every client pinging now and then as real clients do. Meanwhile the faults are
injected one at a time, in turn:

  kill:SERVICE      kill -9 of one service process (ws-gateway-1, delivery, …), then started
                    again at once, as an orchestrator would
  restart:broker    the bus stopped and started again: NATS; on Kafka only when named, as
                    the stand-in, tansu 0.6.0, breaks for good on it (docs/RELIABILITY.md)
  restart:redis     Redis stopped and started again (it keeps nothing on disk: presence gone)
  flush:redis       FLUSHALL on the running Redis
  restart:mongo     the MongoDB-wire server stopped and started again
  pause:ws-gateway  SIGSTOP for --pause seconds, then SIGCONT (a stalled process, not a dead
                    one), of the gateway holding the most WebSockets (pause:SERVICE: that one)

After each, the run waits until the cluster delivers again — every receiver has had a message
sent after the fault began — and lets the load run steadily for --settle seconds before the
next. At the end the senders stop and everyone drains; then every message the cluster acked
must have reached every device it was for.

Reported (and the exit status is 1 unless lost, order and stored-twice are all 0 and the
cluster recovered from every fault): sent, acked, owed, delivered, lost, redelivered, order,
stored twice as allinone.py says, and per fault, from the moment it took effect:
  down                until its process was back (a service ready, a dependency listening)
  recovery            until every receiver had had a message sent after that moment

Run by deployment/scripts/faults --cluster, which starts the cluster and tears it down.
"""

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from load import Load, log, report


SERVICES = ["ws-gateway-1", "ws-gateway-2", "rest-gateway", "profile", "group", "message-router",
            "group-router", "delivery", "push", "assets"]
FAULTS = ([f"kill:{s}" for s in SERVICES]
          + ["pause:ws-gateway", "flush:redis", "restart:redis", "restart:mongo", "restart:broker"])


class Cluster:
    """The running local cluster of deployment/scripts/cluster (SAMVAD_CLUSTER_DIR and
    SAMVAD_CLUSTER_PORT from the environment), its processes broken and mended."""

    def __init__(self, scripts):
        self.scripts = scripts
        self.dir = os.environ["SAMVAD_CLUSTER_DIR"]
        self.port = int(os.environ.get("SAMVAD_CLUSTER_PORT", "18000"))
        self.bus = self.run("deps", "bus").strip()

    def run(self, script, *args):
        """One of the scripts' commands; its output, or SystemExit with it if it failed."""
        done = subprocess.run([os.path.join(self.scripts, script), *args],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{script} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def pid(self, name):
        with open(os.path.join(self.dir, "pids", f"{name}.pid")) as f:
            return int(f.read())

    def inject(self, fault):
        """Breaks what `fault` names; returns, once it has taken effect, the process broken."""
        kind, name = fault.split(":")
        if kind == "kill":
            self.run("cluster", "kill", name)
        elif kind == "restart":
            name = self.bus if name == "broker" else name
            self.run("deps", "stop", name)
        elif kind == "flush":
            with socket.create_connection(("127.0.0.1", self.port + 11), timeout=5) as redis:
                redis.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
                if not redis.recv(64).startswith(b"+OK"):
                    raise SystemExit("redis did not answer FLUSHALL with OK")
        elif kind == "pause":
            if name == "ws-gateway":
                name = max(["ws-gateway-1", "ws-gateway-2"], key=self.connections)
            os.kill(self.pid(name), signal.SIGSTOP)
        else:
            raise SystemExit(f"no such fault: {fault}")
        return name

    def mend(self, fault, name, pause):
        """Mends what `fault` broke in process `name`, as an orchestrator or an operator would;
        returns when the process was back (a service ready, a dependency listening)."""
        kind = fault.split(":")[0]
        if kind == "kill":
            time.sleep(random.uniform(0, 1))
            self.run("cluster", "start", name)
        elif kind == "restart":
            self.run("deps", "up")
        elif kind == "pause":
            time.sleep(pause)
            os.kill(self.pid(name), signal.SIGCONT)
        return time.monotonic()

    def connections(self, gateway):
        """The WebSockets `gateway` holds, from its /metrics."""
        port = self.port + int(gateway.rsplit("-", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("samvad_ws_connections "):
                    return float(line.split()[1])
        return 0


async def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faults", help=f"the faults, comma-separated, in the order injected (default: {','.join(FAULTS)})")
    p.add_argument("--rounds", type=int, default=1, help="times through the list of faults")
    # The stand-ins (tansu, the Python SecantusDB) deliver ~100 messages a second on this
    # machine's two cores: the default load is a fifth of that, so that a fault, not a
    # backlog, is what is measured.
    p.add_argument("--pairs", type=int, default=5, help="1:1 sender/receiver pairs")
    p.add_argument("--group", type=int, default=3, help="members of one group besides its sender (0: none)")
    p.add_argument("--rate", type=float, default=2, help="messages a second per sender")
    p.add_argument("--settle", type=float, default=5, help="seconds of steady load before the first fault and after each")
    p.add_argument("--pause", type=float, default=8, help="seconds a paused process stays stopped")
    p.add_argument("--recover-within", type=float, default=120,
                   help="seconds the cluster has to deliver again after a fault before the run gives up")
    p.add_argument("--ping", type=float, default=30, help="seconds between a client's pings")
    p.add_argument("--drain", type=float, default=60, help="seconds to wait for the last deliveries")
    p.add_argument("--report", help="append the figures as a JSON line to this file")
    args = p.parse_args()

    cluster = Cluster(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
    if args.faults:
        faults = args.faults.split(",")
    else:
        faults = [f for f in FAULTS if cluster.bus != "kafka" or f != "restart:broker"]
    faults *= args.rounds
    load = Load(cluster.port, args.pairs, args.group, args.rate, ping_every=args.ping)
    load.start()
    log(f"load on the cluster at :{cluster.port} ({cluster.bus}); {len(faults)} faults to come")
    started = time.monotonic()
    await asyncio.sleep(args.settle)

    outcomes = []
    for fault in faults:
        log(fault)
        outcome = {"fault": fault, "process": None, "down_secs": None, "recovery_secs": None}
        outcomes.append(outcome)
        try:
            name = await asyncio.to_thread(cluster.inject, fault)
            t0 = time.monotonic()
            load.faulted()
            outcome["process"] = name
            mending = asyncio.create_task(asyncio.to_thread(cluster.mend, fault, name, args.pause))
            while not load.delivering_since(t0) and time.monotonic() - t0 < args.recover_within:
                await asyncio.sleep(0.1)
            if load.delivering_since(t0):
                outcome["recovery_secs"] = round(time.monotonic() - t0, 2)
            outcome["down_secs"] = round(await mending - t0, 2)
        except SystemExit as e:  # a process that did not come back
            log(e)
        log(f"{fault}: " + ", ".join(f"{k} {v}" for k, v in outcome.items() if k not in ("fault", "process")))
        if None in outcome.values():
            break
        await asyncio.sleep(args.settle)
    secs = time.monotonic() - started
    await load.finish(args.drain)

    recoveries = [o["recovery_secs"] for o in outcomes]
    figures = {
        "shape": "cluster", "bus": cluster.bus, "secs": round(secs), "pairs": args.pairs,
        "group": args.group, "rate": args.rate,
        **load.figures(),
        "faults": len(outcomes),
        "never_recovered": [o["fault"] for o in outcomes if None in o.values()],
        "max_recovery_secs": max((r for r in recoveries if r is not None), default=0),
        "max_ack_gap_secs": load.max_recovery(),
        "per_fault": outcomes,
    }
    problems = [f"the cluster did not recover from {f} within {args.recover_within} s"
                for f in figures["never_recovered"]]
    if len(outcomes) < len(faults):
        problems.append(f"{len(faults) - len(outcomes)} faults were not injected")
    return report(load, figures, args.report, f"the cluster's logs are in {cluster.dir}/logs", problems)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
