#!/usr/bin/env python3
"""A TCP relay that adds a fixed delay to every chunk in both directions.

The fairness rows of bench/gateway.sh need one upstream that answers late. `tc netem` would
do it on a veth link, but this machine's kernel has no netem qdisc, so the delay is added
here instead: each chunk is held DELAY_MS before it is passed on, in order, so a request and
its answer each arrive DELAY_MS late, like netem's `delay` on both ends of a link.

    delay_relay.py LISTEN_PORT TARGET_HOST:TARGET_PORT DELAY_MS

Listens on 127.0.0.1 only. Stops on SIGTERM/SIGINT.
"""

import asyncio
import sys


async def pipe(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        # Chunks leave in arrival order, each no earlier than its arrival plus the delay, so
        # back-to-back chunks are not delayed twice.
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                break
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.create_task(forward())
    try:
        while True:
            chunk = await reader.read(65536)
            await queue.put((loop.time() + delay, chunk or None))
            if not chunk:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        sender.cancel()
        writer.close()


async def main():
    listen_port, target, delay_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    host, port = target.rsplit(":", 1)
    delay = delay_ms / 1000.0

    async def handle(client_reader, client_writer):
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, upstream_writer, delay),
            pipe(upstream_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
