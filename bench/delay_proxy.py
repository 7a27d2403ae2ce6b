"""A loopback TCP proxy that adds a fixed delay to every byte in each direction, as a database
across the internet would (the original's README measured its 63 req/s against a managed host).
Bytes keep their order, and a chunk read at time t is written at t + delay whatever was queued
before it: the link has latency but no bandwidth limit.

    python3 bench/delay_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS
"""
import asyncio
import sys

LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000


async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def pump():
        while True:
            data = await reader.read(65536)
            queue.put_nowait((loop.time() + DELAY, data))
            if not data:
                return

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(pump(), deliver())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def accept(client_reader, client_writer):
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", TARGET)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))


async def main():
    server = await asyncio.start_server(accept, "127.0.0.1", LISTEN, backlog=1024)
    async with server:
        await server.serve_forever()


asyncio.run(main())
