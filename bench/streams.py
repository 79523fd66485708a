#!/usr/bin/env python3
"""Says whether every change stream of a benchmark run saw exactly what it should.

    streams.py report OUT GROUP EXPECTED

OUT is what bench/stream-client wrote for run (s): one line per stream, "<group> <events>
<distinct scanIds> <foreign>" followed by the sorted scan ids it received ("foreign" counts events
of another group). It compares every stream of GROUP with EXPECTED (one scan id per line: the
changes of GROUP that committed) and checks that streams of other groups received nothing (no
change was made there); prints "key value" lines: streams, busy (streams of GROUP), complete
(streams that saw exactly what they should, each change once), missing_max, duplicates, foreign.
"""
import sys


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
    if len(sys.argv) != 5 or sys.argv[1] != "report":
        raise SystemExit(__doc__)
    report(sys.argv[2], sys.argv[3], sys.argv[4])
