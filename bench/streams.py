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
import re
import signal
import sys


# One `data:` line of an event. The body is chunked: each event is a whole chunk, so an event's
# lines are never split by a chunk-size line.
DATA_LINE = re.compile(rb"^data: ", re.M)
# The scan id of an event's data (only data lines carry one).
SCAN_ID = re.compile(rb'"scanId":"([0-9a-f]{24})"')


async def follow(host, port, path, key, ready, result):
    """Reads one stream in large blocks and finds its events with one regular expression per
    block: the client shares the service's cores, so it must cost far less per event than the
    service (a line-by-line reader took a whole core for 10 busy streams at 8,000 changes/s)."""
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
    group_field = b'"accountGroupId":"' + path.split("/")[3].encode() + b'"'
    unfinished = b""
    # Read until cancelled (the end of the run) or the stream ends; a plain read per wake-up: a
    # task and a wait per read cost more than the events they brought.
    while True:
        try:
            block = await reader.read(1 << 16)
        except asyncio.CancelledError:
            break
        if not block:
            break
        # Whole lines only; a line cut by the read waits for the next block.
        block = unfinished + block
        cut = block.rfind(b"\n") + 1
        block, unfinished = block[:cut], block[cut:]
        if not opened and b"retry:" in block:
            opened = True
            ready.release()
        # Per block, not per event, and all in the regular expression engine: an event costs the
        # client about a microsecond, against several in Python per line.
        events = len(DATA_LINE.findall(block))
        scans = SCAN_ID.findall(block)
        if len(scans) != events:
            raise SystemExit(f"{events} events but {len(scans)} scan ids in a block of {path}")
        result["scans"].extend(scans)
        # Each event names its group once; any event that does not is another group's.
        result["foreign"] += events - block.count(group_field)
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
            tasks.append(asyncio.ensure_future(follow(host, int(port), path, key, ready, result)))
    for _ in tasks:
        await ready.acquire()
    print("ready", flush=True)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks)
    with open(out, "w") as f:
        for r in results:
            scans = sorted(scan.decode() for scan in r["scans"])
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
