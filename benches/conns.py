#!/usr/bin/env python3
"""Connection-holding load for benches/compare.sh, where wrk and h2load do not fit.

  conns.py idle HOST:PORT N        open N HTTP/1.1 keep-alive connections, send one
                                   GET on each, read its answer, print "ready", then
                                   hold them open until stdin closes
  conns.py sse HOST:PORT N PATH    open N connections each reading an SSE stream; print
                                   "ready" once every one has its first event, hold
                                   until stdin closes
  conns.py sse-backend PORT        an SSE server: one "data: tok" event a second,
                                   for as long as the client stays

Standard library only, so it runs on a fresh machine.
"""
import asyncio
import sys


def _request(host, path):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n").encode()


async def _read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head


async def _open(host, port, attempts=50):
    for i in range(attempts):
        try:
            return await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05 * (i + 1))
    raise OSError(f"cannot connect to {host}:{port}")


async def _hold():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def idle(addr, n):
    host, port = addr.rsplit(":", 1)
    sem = asyncio.Semaphore(200)  # don't overflow the listen backlog

    async def one():
        async with sem:
            r, w = await _open(host, int(port))
            w.write(_request(addr, "/"))
            await _read_response(r)
            return w

    writers = await asyncio.gather(*(one() for _ in range(n)))
    print("ready", flush=True)
    await _hold()
    for w in writers:
        w.close()


async def sse(addr, n, path):
    host, port = addr.rsplit(":", 1)
    sem = asyncio.Semaphore(200)

    async def one():
        async with sem:
            r, w = await _open(host, int(port))
            w.write(_request(addr, path))
            await r.readuntil(b"\r\n\r\n")
            await r.readuntil(b"\n\n")
        return r, w

    streams = await asyncio.gather(*(one() for _ in range(n)))
    print("ready", flush=True)

    async def drain(r):
        while await r.read(65536):
            pass

    tasks = [asyncio.create_task(drain(r)) for r, _ in streams]
    await _hold()
    for t in tasks:
        t.cancel()
    for _, w in streams:
        w.close()


async def sse_backend(port):
    async def serve(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                while True:
                    event = b"data: tok\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(1)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main():
    cmd = sys.argv[1]
    if cmd == "idle":
        asyncio.run(idle(sys.argv[2], int(sys.argv[3])))
    elif cmd == "sse":
        asyncio.run(sse(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    elif cmd == "sse-backend":
        asyncio.run(sse_backend(int(sys.argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
