#!/usr/bin/env python3
"""Do the thin peer and run (a2) still send the service's cancel statement?

  statement-drift.py SERVICE_RS THIN_PEER_RS A2_PGBENCH

SERVICE_RS is src/store/postgres.rs: its statement is the one string literal that both locks the
scan (`WITH current AS`) and writes the audit row (`INSERT INTO signal_scan_events`). THIN_PEER_RS
holds the same text in its CANCEL constant. A2_PGBENCH has it with the parameters written as
literals; they are mapped back to $1..$6. The three are compared without comments and with
whitespace collapsed. Prints nothing when they match; otherwise one line per difference (and exits 0:
drift is reported in the results, it does not stop the benchmark).
"""

import re
import sys

STRING_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
# (a2)'s literals for the service's parameters, in bench/service-cancel.pgbench.
A2_PARAMETERS = [
    ("(SELECT lpad(to_hex(nextval('bench_ids')), 24, '0'))", "$1"),
    (":group::text", "$2::text"),
    ("'cancelled'::text", "$3::text"),
    ("'{queued,running}'::text[]", "$4::text[]"),
    ("'00000000-0000-4000-8000-00000000be4c'::uuid", "$5"),
    ("'0000000000000000000000000000be4c'", "$6"),
]


def normal(sql):
    sql = re.sub(r"--[^\n]*", "", sql)
    sql = re.sub(r"\s+", " ", sql).strip()
    return sql.rstrip(";").strip()


def rust_statements(path):
    with open(path) as f:
        source = f.read()
    found = []
    for m in STRING_LITERAL.finditer(source):
        text = m.group(1).replace('\\"', '"').replace("\\\\", "\\")
        if "WITH current AS" in text and "INSERT INTO signal_scan_events" in text:
            found.append(text)
    return found


def a2_statement(path):
    with open(path) as f:
        sql = "".join(line for line in f if not line.lstrip().startswith(("--", "\\")))
    for literal, parameter in A2_PARAMETERS:
        sql = sql.replace(literal, parameter)
    return sql


def main(argv):
    if len(argv) != 4:
        sys.exit(__doc__)
    service_rs, thin_rs, a2_path = argv[1:]
    service = rust_statements(service_rs)
    if len(service) != 1:
        print(f"found {len(service)} cancel statements in {service_rs}, expected 1: compare by hand")
        return
    service = normal(service[0])
    if "pg_notify" in service:
        print(f"the service's statement ({service_rs}) still calls pg_notify; the thin peer and (a2) do not")
    thin = rust_statements(thin_rs)
    if len(thin) != 1:
        print(f"found {len(thin)} cancel statements in {thin_rs}, expected 1")
    elif normal(thin[0]) != service:
        print(f"the thin peer's statement ({thin_rs}) differs from the service's ({service_rs})")
    if normal(a2_statement(a2_path)) != service:
        print(f"(a2)'s statement ({a2_path}) differs from the service's ({service_rs})")


if __name__ == "__main__":
    main(sys.argv)
