#!/usr/bin/env python3
"""scripts/tls-proxy.py — a TLS-terminating proxy on loopback, for tests.

    scripts/tls-proxy.py LISTEN_PORT UPSTREAM_PORT CERT KEY [LIFETIME_S]

Accepts TLS on 127.0.0.1:LISTEN_PORT with CERT/KEY (PEM) and forwards the
plain bytes to 127.0.0.1:UPSTREAM_PORT (a node's admin API), as nginx or a
cloud load balancer in front of the admin API would. Prints "ready" once it
listens; exits after LIFETIME_S seconds (default 120) so a forgotten proxy
never outlives its test. Standard library only.
"""
import select
import socket
import ssl
import sys
import threading
import time


def pump(client: ssl.SSLSocket, upstream_port: int, deadline: float) -> None:
    """Copies bytes both ways until either side closes or the deadline."""
    try:
        upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=5)
    except OSError:
        client.close()
        return
    sockets = [client, upstream]
    try:
        while time.monotonic() < deadline:
            readable, _, _ = select.select(sockets, [], [], 0.5)
            if client in readable or client.pending():
                data = client.recv(16384)
                if not data:
                    break
                upstream.sendall(data)
            if upstream in readable:
                data = upstream.recv(16384)
                if not data:
                    break
                client.sendall(data)
    except (OSError, ssl.SSLError):
        pass
    finally:
        upstream.close()
        client.close()


def main() -> int:
    listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    cert, key = sys.argv[3], sys.argv[4]
    lifetime_s = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    deadline = time.monotonic() + lifetime_s
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listen_port))
    listener.listen(16)
    listener.settimeout(0.5)
    print("ready", flush=True)
    while time.monotonic() < deadline:
        try:
            raw, _ = listener.accept()
        except socket.timeout:
            continue
        raw.settimeout(5)
        try:
            client = context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()  # a client that refused our certificate
            continue
        threading.Thread(target=pump, args=(client, upstream_port, deadline), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
