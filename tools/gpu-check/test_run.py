#!/usr/bin/env python3
"""Tests of tools/gpu-check/run.py's readings of test, bench and sanitizer output, and of its
check of OUT (`python3 tools/gpu-check/test_run.py`; scripts/gpu-check.sh rehearse runs them).
The sanitizer logs are shaped like compute-sanitizer's: the rehearsal has no sanitizer, so
these are what proves its verdicts before a GPU lease."""
import json
import os
import sys
import tarfile
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

LIBTEST_OK = """
running 3 tests
skip: NVRTC not available (x)
test a ... ok
test b ... ok
test c ... ok

test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 9 filtered out; finished in 1.20s
"""

LIBTEST_NO_DEVICE = """
running 2 tests
skip: no CUDA device (the CUDA driver library (libcuda.so) is not installed)
skip: no CUDA device (the CUDA driver library (libcuda.so) is not installed)
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
"""


class Counts(unittest.TestCase):
    def test_sums_every_result_line(self):
        c = run.test_counts(LIBTEST_OK + LIBTEST_OK)
        self.assertEqual((c["passed"], c["ignored"], c["filtered_out"], c["results"]), (6, 2, 18, 2))
        self.assertEqual((c["skipped"], c["skipped_no_device"]), (2, 0))

    def test_verdicts(self):
        self.assertEqual(run.tests_verdict(0, run.test_counts(LIBTEST_OK))[0], "pass")
        self.assertEqual(run.tests_verdict(0, run.test_counts(LIBTEST_NO_DEVICE))[0], "skipped-no-device")
        self.assertEqual(run.tests_verdict(101, run.test_counts(LIBTEST_OK))[0], "fail")
        self.assertEqual(run.tests_verdict("timeout", run.test_counts(""))[0], "timeout")
        # A filter that matches nothing is not a pass.
        none = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 12 filtered out; finished in 0.00s"
        self.assertEqual(run.tests_verdict(0, run.test_counts(none))[0], "fail")
        self.assertEqual(run.tests_verdict(0, run.test_counts("thread main panicked"))[0], "fail")


class Sanitizer(unittest.TestCase):
    def test_clean(self):
        log = "========= COMPUTE-SANITIZER\ntest result: ok.\n========= ERROR SUMMARY: 0 errors\n"
        self.assertEqual(run.sanitizer_verdict(0, log), ("clean", 0))

    def test_errors_counted_whatever_the_exit(self):
        log = "========= Invalid __global__ write of size 4 bytes\n========= ERROR SUMMARY: 3 errors\n"
        self.assertEqual(run.sanitizer_verdict(9, log), ("errors", 3))
        self.assertEqual(run.sanitizer_verdict("timeout", log), ("errors", 3))
        one = "========= ERROR SUMMARY: 1 error\n"
        self.assertEqual(run.sanitizer_verdict(9, one), ("errors", 1))

    def test_racecheck_hazards(self):
        log = "========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n"
        self.assertEqual(run.sanitizer_verdict(9, log), ("errors", 2))
        clean = "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"
        self.assertEqual(run.sanitizer_verdict(0, clean), ("clean", 0))

    def test_tool_failed_and_timeout(self):
        refused = "========= Error: Device not supported\n========= Error: Target application returned an error\n"
        self.assertEqual(run.sanitizer_verdict(1, refused), ("tool-failed", None))
        self.assertEqual(run.sanitizer_verdict("timeout", "========= COMPUTE-SANITIZER\n"), ("timeout", None))

    def test_stage_verdicts(self):
        sv = run.Runner.stage_verdict
        parts = lambda *vs: [{"verdict": v} for v in vs]  # noqa: E731
        self.assertEqual(sv("sanitizer", parts("clean", "clean", "clean", "clean")), "pass")
        self.assertEqual(sv("sanitizer", parts("clean", "errors", "timeout", "clean")), "fail")
        self.assertEqual(sv("sanitizer", parts("clean", "tool-failed", "timeout", "clean")), "inconclusive")
        self.assertEqual(sv("sanitizer", parts(*["absent"] * 4)), "skipped-no-tool")
        self.assertEqual(sv("nn", parts("pass", "pass", "skipped-no-torch")), "pass")
        self.assertEqual(sv("nn", parts("pass", "timeout", "fail")), "fail")
        self.assertEqual(sv("nn", parts("skipped-no-device", "skipped-no-device")), "skipped-no-device")


class Verify(unittest.TestCase):
    def summary(self):
        s = {"ok": True, "complete": True, "device": "emulated",
             "stages": {n: {"name": n, "seconds": 1, "cap_s": 10, "exit": 0, "verdict": "pass",
                            "tests": {"passed": 1, "skipped": 0}, "parts": []} for n in run.STAGES},
             "sanitizer": {t: {"verdict": "absent"} for t in run.TOOLS}}
        return s

    def write(self, out, s, extra_files=0):
        with open(os.path.join(out, "summary.json"), "w") as f:
            json.dump(s, f)
        with tarfile.open(os.path.join(out, "logs.tar.gz"), "w:gz") as tar:
            p = os.path.join(out, "device.txt")
            with open(p, "w") as f:
                f.write("x")
            tar.add(p, arcname="gpu-check/device.txt")
            os.remove(p)
        for i in range(extra_files):
            open(os.path.join(out, f"t{i}.csv"), "w").close()

    def test_a_good_out_passes(self):
        with tempfile.TemporaryDirectory() as out:
            self.write(out, self.summary())
            self.assertEqual(run.verify(out, "emulated", True), [])

    def test_too_many_files_and_deep_folders_fail(self):
        with tempfile.TemporaryDirectory() as out:
            self.write(out, self.summary(), extra_files=7)
            os.makedirs(os.path.join(out, "a", "b", "c"))
            open(os.path.join(out, "a", "b", "c", "x.log"), "w").close()
            problems = run.verify(out)
            self.assertTrue(any("files in OUT" in p for p in problems), problems)
            self.assertTrue(any("2 folders down" in p for p in problems), problems)

    def test_missing_fields_fail(self):
        with tempfile.TemporaryDirectory() as out:
            s = self.summary()
            del s["stages"]["cli"]
            s["sanitizer"]["racecheck"]["verdict"] = "weird"
            s["stages"]["parity"]["tests"] = {"passed": 0, "skipped": 4}
            self.write(out, s)
            problems = run.verify(out, "emulated", True)
            self.assertTrue(any("stage cli missing" in p for p in problems), problems)
            self.assertTrue(any("racecheck" in p for p in problems), problems)
            self.assertTrue(any("parity stage ran no test" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
