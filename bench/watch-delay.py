#!/usr/bin/env python3
"""How fast and how completely `signal-scans scans watch` delivered the changes of a bench/run.sh run.

  watch-delay.py stamp                  stdin -> stdout: each line prefixed with the wall-clock
                                        microseconds at which it was read, and a tab
  watch-delay.py report STAMPED EVENTS FIRST LAST
                                        compares the stamped watch lines with EVENTS (the audit rows
                                        of changes, one "scan_id<TAB>to_status" per line) for the
                                        scans FIRST..LAST (id numbers); prints "key value" lines

Delay is receipt time minus the change's `at` (stamped by PostgreSQL's clock_timestamp() on the same
machine, so both are the same clock). Missing: an audit row the watch never printed. Duplicated: a
(scanId, to) printed more than once. Extra: printed for a scan of the range with no such audit row,
i.e. a change that did not commit.
"""

import calendar
import json
import os
import re
import sys
import time

RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$"
)


def stamp():
    # Raw reads: each returns as soon as the watch has written something, and its lines are stamped
    # right then. Written out at once, so run.sh can count what has arrived.
    fd = sys.stdin.fileno()
    out = sys.stdout.buffer
    pending = b""
    while chunk := os.read(fd, 65536):
        now = time.time_ns() // 1000
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            out.write(b"%d\t%s\n" % (now, line))
        out.flush()
    if pending:
        out.write(b"%d\t%s\n" % (time.time_ns() // 1000, pending))
    out.flush()


def epoch_us(text):
    m = RFC3339.match(text)
    if not m:
        raise ValueError(f"not RFC 3339: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    fraction = (m.group(7) or "0")[:6].ljust(6, "0")
    offset = 0
    if m.group(8) != "Z":
        sign = 1 if m.group(8)[0] == "+" else -1
        offset = sign * (int(m.group(8)[1:3]) * 3600 + int(m.group(8)[4:6]) * 60)
    return (seconds - offset) * 1_000_000 + int(fraction)


def percentile(sorted_values, q):
    """Nearest rank, as run.sh computes pgbench's percentiles."""
    if not sorted_values:
        return None
    k = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(k) - 1]


def report(stamped_path, events_path, first, last):
    expected = set()
    with open(events_path) as f:
        for line in f:
            if line.strip():
                scan_id, to = line.rstrip("\n").split("\t")
                expected.add((scan_id, to))
    seen = {}
    delays = []
    lines = outside = unparsed = 0
    with open(stamped_path) as f:
        for line in f:
            lines += 1
            try:
                received, text = line.rstrip("\n").split("\t", 1)
                change = json.loads(text)
                scan_id, to = change["scanId"], change["to"]
                at = epoch_us(change["at"])
            except (ValueError, KeyError, TypeError):
                unparsed += 1
                continue
            if not first <= int(scan_id, 16) <= last:
                outside += 1
                continue
            key = (scan_id, to)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] == 1:
                delays.append(int(received) - at)
    delays.sort()
    duplicated = sum(n - 1 for n in seen.values())
    missing = len(expected - seen.keys())
    extra = len(seen.keys() - expected)

    def ms(us):
        return "null" if us is None else f"{us / 1000:.2f}"

    print(f"lines {lines}")
    print(f"unparsed {unparsed}")
    print(f"outside_range {outside}")
    print(f"expected {len(expected)}")
    print(f"printed_unique {len(seen)}")
    print(f"missing {missing}")
    print(f"duplicated {duplicated}")
    print(f"extra {extra}")
    print(f"delay_p50_ms {ms(percentile(delays, 50))}")
    print(f"delay_p99_ms {ms(percentile(delays, 99))}")
    print(f"delay_max_ms {ms(delays[-1] if delays else None)}")


def main(argv):
    if len(argv) == 2 and argv[1] == "stamp":
        stamp()
    elif len(argv) == 6 and argv[1] == "report":
        report(argv[2], argv[3], int(argv[4]), int(argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
