"""Readiness probe for the test broker: one Kafka Metadata request.

Usage: python3 metadata_probe.py HOST PORT   (exit 0 = broker listed itself)

Why not a Kafka CLI tool: each JVM costs 2-3 s on a 2-core CI machine, and
this runs in a poll loop. A Kafka broker only starts processing requests on
its listeners once it has caught up with the metadata log and been unfenced,
so any well-formed Metadata answer that lists a broker means "ready".

Wire format: Metadata v4 (the oldest version Kafka 4 still accepts, and
non-flexible, so plain int16-length strings), request header v1.
"""
import socket
import struct
import sys

API_METADATA, VERSION, CORRELATION_ID = 3, 4, 0x4B7E57


def kstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("broker closed the connection")
        buf += chunk
    return buf


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    request = (
        struct.pack(">hhi", API_METADATA, VERSION, CORRELATION_ID)
        + kstring("kafka-broker.sh-probe")
        # topics = null (all topics), allow_auto_topic_creation = false
        + struct.pack(">i?", -1, False)
    )
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", recv_exact(sock, 4))
            body = recv_exact(sock, size)
    except (OSError, EOFError) as e:
        print(f"metadata probe: {e}", file=sys.stderr)
        return 1
    # response header v0 (correlation id), then throttle_time_ms, brokers[]
    correlation, _throttle, brokers = struct.unpack_from(">iii", body, 0)
    if correlation != CORRELATION_ID:
        print(f"metadata probe: unexpected correlation id {correlation}", file=sys.stderr)
        return 1
    if brokers < 1:
        print("metadata probe: broker answered but lists no brokers yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
