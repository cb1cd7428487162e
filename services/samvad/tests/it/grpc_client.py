"""A gRPC client of Samvad's published schema (libs/protocol/proto/chat.proto), for the tests:
grpcio with stubs that grpcio-tools generates from the .proto at start, nothing of Samvad's.

Messages cross as the base64 of their v3 bytes, so the Rust test reads them with its own codec.

    grpc_client.py ADDR KEY connect [sync]   stdin: {"send": B64} | {"end": true} (half-close)
                                             stdout: {"message": B64} | {"refusal": {...}}
                                                     | {"status": CODE, "details": TEXT} at the end
    grpc_client.py ADDR KEY paused SECS      a Connect call that takes one event, then none for
                                             SECS, then the rest: {"events": N, "status", ...}
    grpc_client.py ADDR KEY send B64...      {"acks": [B64...]} or {"status", "details"}
    grpc_client.py ADDR KEY conversations    {"conversations": [{...}]}
    grpc_client.py ADDR KEY history CONV (latest|before|after) SEQ LIMIT
                                             {"messages": [B64...], "more": BOOL}
    grpc_client.py ADDR KEY garbage HEX      a Connect call whose first message is these bytes
                                             {"status", "details"}
    grpc_client.py ADDR - health SERVICE     {"status": "SERVING" | ...}
    grpc_client.py ADDR - reflect            {"services": [...], "chat_methods": [...]}
"""

import base64
import json
import os
import queue
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc

PROTOS = os.path.join(os.path.dirname(__file__), "../../../../libs/protocol/proto")


def stubs():
    out = tempfile.mkdtemp()
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", "-I" + PROTOS, "-I" + include, "--python_out=" + out,
                        "--grpc_python_out=" + out, "message.proto", "chat.proto"])
    assert code == 0, "protoc failed"
    sys.path.insert(0, out)
    import chat_pb2, chat_pb2_grpc, message_pb2
    return chat_pb2, chat_pb2_grpc, message_pb2


def say(**what):
    print(json.dumps(what), flush=True)


def b64(message):
    return base64.b64encode(message.SerializeToString()).decode()


def ended(error):
    say(status=error.code().name, details=error.details())


def main():
    addr, key, command, *args = sys.argv[1:]
    channel = grpc.insecure_channel(addr)
    metadata = [("authorization", "Bearer " + key)]
    if command == "health":
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            got = stub.Check(health_pb2.HealthCheckRequest(service=args[0]), timeout=10)
            say(status=health_pb2.HealthCheckResponse.ServingStatus.Name(got.status))
        except grpc.RpcError as e:
            ended(e)
        return
    if command == "reflect":
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        from google.protobuf import descriptor_pb2
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="samvad.chat.v1.Chat")]
        answers = list(stub.ServerReflectionInfo(iter(asks), timeout=10))
        services = [s.name for s in answers[0].list_services_response.service]
        methods = []
        for raw in answers[1].file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for service in file.service:
                methods += [m.name for m in service.method]
        say(services=services, chat_methods=methods)
        return

    if command == "garbage":
        connect = channel.stream_stream("/samvad.chat.v1.Chat/Connect",
                                        request_serializer=lambda raw: raw,
                                        response_deserializer=lambda raw: raw)
        try:
            for _ in connect(iter([bytes.fromhex(args[0])]), metadata=metadata, timeout=10):
                pass
            say(status="OK", details="")
        except grpc.RpcError as e:
            ended(e)
        return

    chat_pb2, chat_pb2_grpc, message_pb2 = stubs()
    stub = chat_pb2_grpc.ChatStub(channel)
    if command == "paused":
        events = iter(stub.Connect(iter([]), metadata=metadata))
        taken = 0
        try:
            next(events)
            taken = 1
            time.sleep(float(args[0]))
            # Read on for 30 s at most: a call the server did not end stays open.
            deadline = time.monotonic() + 30
            for _ in events:
                taken += 1
                if time.monotonic() > deadline:
                    say(events=taken, status="STILL_OPEN", details="")
                    return
            say(events=taken, status="OK", details="")
        except grpc.RpcError as e:
            say(events=taken, status=e.code().name, details=e.details())
        return
    if command == "connect":
        if "sync" in args:
            metadata.append(("sync", "true"))
        outgoing = queue.Queue()

        def requests():
            while True:
                item = outgoing.get()
                if item is None:
                    return
                yield item

        def read_stdin():
            for line in sys.stdin:
                asked = json.loads(line)
                if "send" in asked:
                    outgoing.put(message_pb2.Message.FromString(base64.b64decode(asked["send"])))
                elif asked.get("end"):
                    outgoing.put(None)
            outgoing.put(None)

        threading.Thread(target=read_stdin, daemon=True).start()
        call = stub.Connect(requests(), metadata=metadata)
        try:
            for event in call:
                if event.HasField("message"):
                    say(message=b64(event.message))
                else:
                    r = event.refusal
                    say(refusal={"id": r.id, "error": r.error, "retry": r.retry,
                                 "forbidden": r.forbidden})
            say(status="OK", details="")
        except grpc.RpcError as e:
            ended(e)
        return
    try:
        if command == "send":
            messages = [message_pb2.Message.FromString(base64.b64decode(a)) for a in args]
            reply = stub.Send(chat_pb2.SendRequest(messages=messages), metadata=metadata,
                              timeout=10)
            say(acks=[b64(m) for m in reply.acks])
        elif command == "conversations":
            reply = stub.Conversations(chat_pb2.ConversationsRequest(), metadata=metadata,
                                       timeout=10)
            say(conversations=[{"conv": c.conv, "last_seq": c.last_seq, "read_seq": c.read_seq,
                                "unread": c.unread} for c in reply.conversations])
        elif command == "history":
            conv, page, seq, limit = args
            request = chat_pb2.HistoryRequest(conv=conv, limit=int(limit))
            if page != "latest":
                setattr(request, page, int(seq))
            reply = stub.History(request, metadata=metadata, timeout=10)
            say(messages=[b64(m) for m in reply.messages], more=reply.more)
        else:
            raise SystemExit("unknown command " + command)
    except grpc.RpcError as e:
        ended(e)


if __name__ == "__main__":
    main()
