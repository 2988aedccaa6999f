"""A consumer on the Python client that prints, for every beat,
    beat 42 · work · window 3f2a… · position 42.003 · next downbeat in 1.25 s

When no pulse answers it prints one line naming the server, the subject and
the wait, and exits 1.

    pip install nats-py   (or: make test-python, which makes .venv)
    PYTHONPATH=clients/python python3 examples/python/consumer.py [nats://127.0.0.1:4222] [cluster] [timeout s]
"""
import asyncio
import sys

from backbeat_client import BackbeatClient, NoPulseError


async def main(url: str, cluster: str, timeout: float) -> None:
    try:
        client = await BackbeatClient.connect(url, cluster=cluster, connect_timeout=timeout)
    except NoPulseError as e:
        print(f"consumer: {e}", file=sys.stderr)
        sys.exit(1)
    now = client.beat()  # known one round trip after connecting, before any frame
    print(f"joined at beat {now.index} · {now.phase}", flush=True)
    async for event in client.events():
        if event.kind == "beat":
            f = event.frame
            seconds = (client.next_downbeat(f.scheduled_ns).instant_ns - client.now()) / 1e9
            print(f"beat {f.beat_index} · {f.phase} · window {f.window_id[:4]}… · position "
                  f"{client.beat_at_time(event.received_ns):.3f} · next downbeat in {seconds:.2f} s", flush=True)
        elif event.kind == "gap":
            print(f"gap: beats {event.missed[0]}...{event.missed[1]} never arrived", flush=True)
        elif event.kind == "leader_changed":
            print(f"new leader {event.reason}, term {event.term}", flush=True)
        elif event.kind in ("tempo_scheduled", "tempo_changed"):
            print(f"{event.kind.replace('_', ' ')}: {event.bpm} bpm at beat {event.at_beat}", flush=True)
        elif event.kind == "refused":
            print(f"refused a frame: {event.reason}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "nats://127.0.0.1:4222",
                     sys.argv[2] if len(sys.argv) > 2 else "chorus-aus-01",
                     float(sys.argv[3]) if len(sys.argv) > 3 else 5.0))
