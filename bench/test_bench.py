"""Tests of the benchmark's own logic: what it counts, what it checks, what it fails on.

    python3 -m unittest discover -s bench -p 'test_*.py'

No process, database or network here: these are the functions that decide whether a run passed and what
its figures are. `bench/run.py --smoke` and `bench/soak.py --smoke` run the rest end to end (CI does both).
"""

import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import run  # noqa: E402
import soak  # noqa: E402
from harness import Failed, WrkRun  # noqa: E402


def wrk(requests=100, non2xx=0, beyond=0, socket_errors=0):
    return WrkRun(requests=requests, duration_us=2_000_000, non2xx=non2xx, socket_errors=socket_errors,
                  beyond_range=beyond, latency_max_us=9000, percentiles_us={50.0: 1500, 99.0: 4200})


class Numbers(unittest.TestCase):
    def test_scan_ids_are_24_hex_digits(self):
        self.assertEqual(harness.hex_id(255), "0000000000000000000000ff")
        self.assertEqual(len(harness.hex_id(run.measured_first(6))), 24)

    def test_nearest_rank_percentiles(self):
        values = list(range(1, 101))
        self.assertEqual(harness.nearest_rank(values, 50), 50)
        self.assertEqual(harness.nearest_rank(values, 99), 99)
        self.assertEqual(harness.nearest_rank(values, 99.5), 100)
        self.assertEqual(harness.nearest_rank([7], 1), 7)
        self.assertIsNone(harness.nearest_rank([], 50))

    def test_ratio_is_none_without_a_denominator(self):
        self.assertEqual(harness.ratio(6029.4, 6554.7), 0.92)
        self.assertIsNone(harness.ratio(1, 0))
        self.assertIsNone(harness.ratio(None, 3))

    def test_wrk_rate_and_2xx(self):
        run_ = wrk(requests=1000, non2xx=10)
        self.assertEqual(run_.ok, 990)
        self.assertEqual(run_.rate, 500.0)
        self.assertEqual(run_.ms(99), 4.2)

    def test_cancel_lua_output_is_parsed(self):
        kv = harness.parse_kv("requests 12\nduration_us 2000000\nlatency_mean_us 812.5\np 50 700\np 99.9 2100\n")
        self.assertEqual(kv["requests"], 12)
        self.assertEqual(kv["latency_mean_us"], 812.5)
        self.assertEqual(kv["p"], {50.0: 700, 99.9: 2100})


class Ranges(unittest.TestCase):
    def test_ranges_of_slots_never_touch(self):
        for slot in range(1, 8):
            self.assertLess(run.warmup_first(slot) + 50_000 * 10, run.measured_first(slot))
            self.assertLess(run.measured_first(slot) + 10**8, run.warmup_first(slot + 1))

    def test_a_range_is_sized_from_the_fastest_rate_seen(self):
        ranges = run.Ranges(seed_factor=3)
        self.assertEqual(ranges.size(20), run.MIN_RANGE)
        ranges.saw(14000.0)
        ranges.saw(6000.0)  # a slower run does not shrink the ranges after it
        self.assertEqual(ranges.size(20), 14000 * 20 * 3 + 1)

    def test_settings_defaults_and_refusals(self):
        full, smoke = run.settings_from({}, smoke=False), run.settings_from({}, smoke=True)
        self.assertEqual((full.connections, full.seconds, full.streams, full.pairs), (32, 20, 500, 4))
        self.assertEqual((smoke.connections, smoke.seconds, smoke.db), (4, 2, "signal_scans_bench_smoke"))
        self.assertTrue(full.pg_restart)
        self.assertFalse(smoke.pg_restart)
        self.assertEqual(run.settings_from({"BENCH_CONNECTIONS": "1"}, smoke=True).threads, 1)
        for bad in ("0", "-3", "ten", ""):
            with self.assertRaises(Failed):
                run.settings_from({"BENCH_SECONDS": bad}, smoke=False)


class Turns(unittest.TestCase):
    def test_windows_take_turns_so_that_a_steady_drift_weighs_on_both(self):
        self.assertEqual(run.turns("b", "c", 4), ["b", "c", "c", "b", "b", "c", "c", "b"])
        self.assertEqual(run.turns("s0", "s", 1), ["s0", "s"])

    def test_pair_ratios_put_the_named_side_on_top_whichever_ran_first(self):
        order = run.turns("b", "c", 2)
        self.assertEqual(run.pair_ratios(order, [100.0, 120.0, 150.0, 100.0], "c"), [1.2, 1.5])
        self.assertEqual(run.pair_ratios(order, [100.0, 120.0, 150.0, 100.0], "b"), [0.83, 0.67])


class RunChecks(unittest.TestCase):
    def test_a_clean_run_passes(self):
        run.check_http_run("b", wrk(requests=100), changed_rows=101, not_found=0, recancels=0)

    def test_every_way_a_run_can_cheat_fails(self):
        cases = {
            "ran out of scans": dict(w=wrk(beyond=3), changed=100, not_found=0, recancels=0),
            "answered 404": dict(w=wrk(), changed=100, not_found=2, recancels=0),
            "re-cancelled": dict(w=wrk(), changed=100, not_found=0, recancels=1),
            "changed nothing": dict(w=wrk(requests=100), changed=99, not_found=0, recancels=0),
            "zero 2xx": dict(w=wrk(requests=5, non2xx=5), changed=0, not_found=0, recancels=0),
            "were not 2xx": dict(w=wrk(requests=100, non2xx=1), changed=99, not_found=0, recancels=0),
            "socket errors": dict(w=wrk(requests=100, socket_errors=2), changed=100, not_found=0, recancels=0),
            "no request": dict(w=wrk(requests=0), changed=0, not_found=0, recancels=0),
        }
        for message, c in cases.items():
            with self.subTest(message), self.assertRaisesRegex(Failed, message):
                run.check_http_run("b", c["w"], c["changed"], c["not_found"], c["recancels"])

    def test_pgbench_must_change_one_scan_per_transaction_within_its_range(self):
        run.check_pgbench("a", used=500, count=500, transactions=500, changed=500, setting="X")
        with self.assertRaisesRegex(Failed, "ran out"):
            run.check_pgbench("a", used=501, count=500, transactions=500, changed=500, setting="X")
        with self.assertRaisesRegex(Failed, "changed nothing"):
            run.check_pgbench("a", used=500, count=500, transactions=500, changed=498, setting="X")

    def test_the_services_own_counters_are_read_from_metrics(self):
        text = "\n".join([
            '# TYPE http_requests_total counter',
            'http_requests_total{method="POST",route="/v1/.../cancel",status="200"} 120',
            'http_requests_total{method="POST",route="/v1/.../cancel",status="404"} 3',
            'http_requests_total{method="GET",route="/v1/.../scans",status="200"} 999',
            'scan_cancels_total{previous_status="queued"} 100',
            'scan_cancels_total{previous_status="cancelled"} 2',
        ])
        self.assertEqual(run.metrics_count(text, "2"), 120)
        self.assertEqual(run.metrics_count(text, "404"), 3)
        self.assertEqual(run.metrics_recancels(text), 2)


class BatchMean(unittest.TestCase):
    def test_changes_per_commit_come_from_the_histograms_deltas(self):
        before = "scan_write_batch_size_sum 10\nscan_write_batch_size_count 10\n"
        after = 'scan_write_batch_size_bucket{le="1"} 12\nscan_write_batch_size_sum 410\nscan_write_batch_size_count 30\n'
        self.assertEqual(run.batch_mean(before, after), 20.0)
        self.assertIsNone(run.batch_mean(after, after), "no commit in the run: no mean")


class StatementA2(unittest.TestCase):
    def test_a2_is_the_services_statement_with_literals(self):
        script = run.a2_script(harness.CANCEL_SQL.read_text())
        self.assertNotRegex(script, r"\$\d")
        # A batch of one: each parameter an array of one element.
        self.assertIn("unnest(ARRAY[(SELECT lpad(to_hex(nextval('bench_ids')), 24, '0'))]::text[]", script)
        self.assertIn("ARRAY[:group]::text[]", script)
        self.assertIn("ARRAY['queued,running']::text[]", script)
        self.assertTrue(script.endswith(");\n") or script.endswith(";\n"))
        body = [line for line in script.splitlines() if not line.startswith("--")]
        self.assertFalse(any("--" in line for line in body), "comments inside the statement are dropped")

    def test_a_statement_with_a_new_parameter_is_refused(self):
        with self.assertRaisesRegex(Failed, r"\$8"):
            run.a2_script("SELECT $1, $2, $3, $4, $5, $6, $7, $8")

    def test_pgbench_percentiles_match_wrks_points(self):
        p = run.pgbench_percentiles(list(range(1000, 0, -1)))
        self.assertEqual((p[50.0], p[99.0], p[99.9], p[100.0]), (500, 990, 999, 1000))
        self.assertEqual(len(p), 99 + 3 + 1)


class Watch(unittest.TestCase):
    def line(self, scan, to="cancelled", at="2026-12-02T10:00:00.000000Z"):
        return f'{{"scanId":"{scan}","to":"{to}","at":"{at}"}}'

    def test_delivery_is_compared_with_the_audit_trail(self):
        a, b, c, outside = (harness.hex_id(n) for n in (10, 11, 12, 99))
        at_us = run.epoch_us("2026-12-02T10:00:00Z")
        stamped = [(at_us + 5000, self.line(a)), (at_us + 7000, self.line(b)), (at_us + 9000, self.line(b)),
                   (at_us + 1, self.line(outside)), (at_us + 1, "not json"), (at_us + 3000, self.line(c, "running"))]
        expected = {(a, "cancelled"), (b, "cancelled"), (c, "cancelled")}
        r = run.watch_report(stamped, expected, 10, 12)
        self.assertEqual((r["missing"], r["duplicated"], r["extra"]), (1, 1, 1))
        self.assertEqual((r["outside_range"], r["unparsed"], r["printed_unique"]), (1, 1, 3))
        self.assertEqual((r["delay_p50_ms"], r["delay_max_ms"]), (5.0, 7.0))

    def test_timestamps_keep_their_microseconds_and_offsets(self):
        self.assertEqual(run.epoch_us("1970-01-01T00:00:01.000007Z"), 1_000_007)
        self.assertEqual(run.epoch_us("1970-01-01T01:00:00+01:00"), 0)
        with self.assertRaises(ValueError):
            run.epoch_us("yesterday")


class Streams(unittest.TestCase):
    def test_each_stream_must_see_exactly_its_changes_once(self):
        changed = ["a1", "a2", "a3"]
        seen = [
            ("g", 3, 3, 0, ["a1", "a2", "a3"]),         # complete
            ("g", 4, 3, 0, ["a1", "a2", "a2", "a3"]),   # a repeat
            ("g", 2, 2, 0, ["a1", "a3"]),               # a miss
            ("quiet", 0, 0, 0, []),                     # complete: nothing happened there
            ("quiet", 1, 1, 1, ["zz"]),                 # another group's change
        ]
        v = harness.stream_verdict(seen, lambda label: changed if label == "g" else [])
        self.assertEqual((v["streams"], v["complete"], v["duplicates"], v["missing_max"], v["foreign"], v["extra"]),
                         (5, 2, 1, 1, 1, 1))

    def test_a_filtered_stream_expects_only_its_scans(self):
        scans = [harness.hex_id(n) for n in (5, 9)]
        label = soak.filtered_label(scans)
        self.assertTrue(label.startswith(soak.GROUP + "?scanId="))
        changed = [harness.hex_id(n) for n in range(1, 12)]
        expected = soak.expected_for(changed)
        self.assertEqual(expected(label), scans)
        self.assertEqual(expected(soak.GROUP), changed)


class SoakMemory(unittest.TestCase):
    def samples(self, rss_by_second):
        return [soak.Sample(t=t, rss_kb=rss, fds=20, db_connections=12, changes=0) for t, rss in rss_by_second]

    def test_flat_memory_passes_whatever_the_first_third_did(self):
        s = self.samples([(0, 9000), (15, 14000), (30, 20000), (45, 20100), (60, 20200), (75, 20300), (90, 20300)])
        v = soak.rss_verdict(s, 90)
        self.assertTrue(v["flat"])
        self.assertEqual((v["middle_peak_kb"], v["last_peak_kb"]), (20100, 20300))  # [30, 60) and [60, 90]

    def test_a_slope_fails(self):
        # 20 bytes a request at 2,700 requests a second: 53 kB a second, the growth.
        s = self.samples([(t, 14000 + 53 * t) for t in range(0, 301, 15)])
        self.assertFalse(soak.rss_verdict(s, 300)["flat"])

    def test_the_margin_is_ten_percent_plus_two_megabytes(self):
        middle_peak = 20000
        limit = middle_peak * 1.10 + 2048
        ok = self.samples([(35, middle_peak), (70, int(limit))])
        too_much = self.samples([(35, middle_peak), (70, int(limit) + 1)])
        self.assertTrue(soak.rss_verdict(ok, 90)["flat"])
        self.assertFalse(soak.rss_verdict(too_much, 90)["flat"])

    def test_too_few_samples_is_an_error_not_a_pass(self):
        with self.assertRaises(Failed):
            soak.rss_verdict(self.samples([(0, 1), (80, 1)]), 90)


class Docs(unittest.TestCase):
    def test_only_the_section_between_the_markers_is_replaced(self):
        text = "# B\nkeep\n<!-- x:begin -->\nold\n<!-- x:end -->\nkeep too\n"
        out = harness.replace_between(text, "<!-- x:begin -->", "<!-- x:end -->", "new\n")
        self.assertEqual(out, "# B\nkeep\n<!-- x:begin -->\n\nnew\n\n<!-- x:end -->\nkeep too\n")
        with self.assertRaises(Failed):
            harness.replace_between("no markers", "<!-- x:begin -->", "<!-- x:end -->", "new")


if __name__ == "__main__":
    unittest.main()
