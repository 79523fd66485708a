#!/usr/bin/env python3
"""Holds many change streams open on the service during a benchmark run, and says what each saw.

    streams.py open URL KEY OUT FOLLOW:COUNT [FOLLOW:COUNT ...]

opens COUNT streams of GET /v1/accounts/<FOLLOW>/signals/scans/changes for each account group FOLLOW,
prints "ready" once every stream has received its opening `retry:`, and reads until SIGTERM. Then it
writes OUT: one line per stream, "<group> <events> <distinct scanIds> <foreign>" followed by the
sorted scan ids it received ("foreign" counts events of another group: it must be 0).

    streams.py report OUT GROUP EXPECTED

compares every stream of GROUP with EXPECTED (one scan id per line: the changes of GROUP that
committed) and checks that streams of other groups received nothing (no change was made there);
prints "key value" lines: streams, busy (streams of GROUP), complete (streams that saw exactly what
they should, each change once), missing_max, duplicates, foreign.
"""
import asyncio
import signal
import sys


async def follow(host, port, path, key, ready, stop, result):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
         "Accept: text/event-stream\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise SystemExit(f"stream refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # response headers
    opened = False
    group = path.split("/")[3].encode()
    stop_task = asyncio.ensure_future(stop.wait())
    while True:
        line_task = asyncio.ensure_future(reader.readline())
        done, _ = await asyncio.wait({line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if line_task not in done:
            line_task.cancel()
            break
        line = line_task.result()
        if not line:
            break
        # The body is chunked: chunk-size lines are neither fields nor blank, and are skipped.
        if line.startswith(b"retry:") and not opened:
            opened = True
            ready.release()
        elif line.startswith(b"data: "):
            data = line[6:]
            scan = data[data.index(b'"scanId":"') + 10:][:24]
            if b'"accountGroupId":"' + group not in data:
                result["foreign"] += 1
            result["scans"].append(scan.decode())
    writer.close()


async def open_streams(url, key, out, follows):
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    ready = asyncio.Semaphore(0)
    results, tasks = [], []
    for follow_arg in follows:
        group, count = follow_arg.split(":")
        for _ in range(int(count)):
            result = {"group": group, "scans": [], "foreign": 0}
            results.append(result)
            path = f"/v1/accounts/{group}/signals/scans/changes"
            tasks.append(asyncio.ensure_future(follow(host, int(port), path, key, ready, stop, result)))
    for _ in tasks:
        await ready.acquire()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    with open(out, "w") as f:
        for r in results:
            scans = sorted(r["scans"])
            f.write(f"{r['group']} {len(scans)} {len(set(scans))} {r['foreign']} {' '.join(scans)}\n")


def report(out, busy_group, expected_file):
    expected = sorted(line.strip() for line in open(expected_file) if line.strip())
    expected_set = set(expected)
    streams = busy = complete = duplicates = foreign = missing_max = 0
    for line in open(out):
        group, events, distinct, foreign_n, *scans = line.split()
        streams += 1
        foreign += int(foreign_n)
        duplicates += int(events) - int(distinct)
        should = expected if group == busy_group else []
        busy += group == busy_group
        missing_max = max(missing_max, len(set(should) - set(scans)))
        complete += scans == should
    print(f"streams {streams}\nbusy {busy}\ncomplete {complete}\nmissing_max {missing_max}\n"
          f"duplicates {duplicates}\nforeign {foreign}")


if __name__ == "__main__":
    if sys.argv[1] == "open":
        asyncio.run(open_streams(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]))
    elif sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
