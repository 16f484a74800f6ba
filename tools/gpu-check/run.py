#!/usr/bin/env python3
"""The `run` part of scripts/gpu-check.sh: the GPU checks in priority order, each stage with its
own time cap, written so that a run killed at any moment still brings its finished stages back.

    python3 tools/gpu-check/run.py --bundle DIR --out OUT [--mode gpu|emulated]
                                   [--only STAGE[,STAGE...]] [--fake-libs LIST] [--scratch DIR]
    python3 tools/gpu-check/run.py --verify OUT [--expect-device emulated]

Stages (caps in seconds on a GPU; they sum to at most TOTAL_CAP_S):
  1 parity     bin/parity: every rule and kernel against the CPU reference
  2 bench      bin/cuda_kernels --bench: the kernel table against copy bandwidth (bench.json)
  3 nn         bin/cuda_parity, bin/cuda_step (nn-step.json) and PyTorch eager beside it
               (anchors/torch_gpu_resnet.py, torch-resnet.json) when torch sees a GPU
  4 cli        bin/cuda_training with SAMKIT_BIN=bin/samkit: the `samkit --device cuda` trainer
  5 sanitizer  compute-sanitizer memcheck, racecheck, synccheck, initcheck on a small parity run

Everything is written to a scratch folder (not under OUT). OUT gets at most 5 files, no folders:
summary.json and logs.tar.gz (every log and small file of the scratch), rewritten after every
stage, and the tables bench.json, nn-step.json, torch-resnet.json as they appear.

Stage verdicts: pass, fail, timeout (its cap ran out), skipped-no-device (the binaries saw no
device), not-run (not reached or not selected), interrupted (the runner was killed during it);
the sanitizer stage: pass (every tool clean), fail (a tool found errors), inconclusive (no
errors, but not every tool ran clean), skipped-no-tool (compute-sanitizer absent).
Sanitizer tools: clean, errors (with the count of its ERROR SUMMARY), tool-failed (a non-zero
exit without an error summary: it could not attach, the device was refused), timeout, absent.
`ok` is true when every selected stage of 1-4 passed and no sanitizer tool found errors.

Caps: GPU_CHECK_CAPS="parity=120,bench=80,..." overrides stages and parts (nn-parity, nn-step,
torch, memcheck, ...); the stage caps must sum to at most GPU_CHECK_TOTAL_S (default 420).
Time a stage leaves unused passes to the next one. GPU_CHECK_SANITIZER=<path>|none picks the
tool.
"""
import argparse
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

TOTAL_CAP_S = int(os.environ.get("GPU_CHECK_TOTAL_S", "420"))
STAGES = ["parity", "bench", "nn", "cli", "sanitizer"]
TOOLS = ["memcheck", "racecheck", "synccheck", "initcheck"]
# What may come back from the GPU machine: 8 files, 16 MiB each.
MAX_OUT_FILES = 8
MAX_OUT_FILE_BYTES = 16 << 20
# logs.tar.gz stays well under the 16 MiB a returned file may have: files of the scratch over
# SMALL_FILE are left out (checkpoints), logs over it are cut to their head and tail.
SMALL_FILE = 4 << 20
LOG_HEAD = 1 << 20
LOG_TAIL = 3 << 20
TABLES = ["bench.json", "nn-step.json", "torch-resnet.json"]
# Seconds between SIGTERM and SIGKILL for a part past its cap.
KILL_GRACE_S = 3
# The smallest cap a part is started with; below it the part is marked timeout unstarted.
MIN_PART_S = 2
# The small configuration of the sanitizer runs: layouts of at most this many parameters.
SANITIZER_PARITY_MAX = "100000"
SANITIZER_FILTERS = ["every_rule", "top_k", "ssam_d", "non_finite", "norm_and_dot"]

# Per mode: stage caps, and the parts' caps and arguments. GPU: the H200 lease (caps sum to
# 420 s). Emulated: the rehearsal on the CPU emulation, bounded to a few minutes, on small
# configurations (the full emulated suites run in `cargo test`).
PROFILES = {
    "gpu": {
        "caps": {"parity": 120, "bench": 80, "nn": 100, "cli": 60, "sanitizer": 60},
        "parts": {"nn-parity": 50, "nn-step": 25, "torch": 25,
                  "memcheck": 15, "racecheck": 15, "synccheck": 15, "initcheck": 15},
        "parity_args": ["--test-threads=4"],
        "parity_env": {},
        # The criterion bench over the ResNet-18 layout (bin/cuda_kernels).
        "bench_argv": None,
        "bench_args": ["--bench"],
        "nn_parity_args": ["--test-threads=4"],
        "step_args": [],
        "torch_args": [],
        "cli_args": ["--test-threads=1"],
    },
    "emulated": {
        "caps": {"parity": 120, "bench": 100, "nn": 60, "cli": 60, "sanitizer": 20},
        "parts": {"nn-parity": 40, "nn-step": 15, "torch": 5,
                  "memcheck": 5, "racecheck": 5, "synccheck": 5, "initcheck": 5},
        "parity_args": ["--test-threads=2"],
        "parity_env": {"SAMKIT_PARITY_MAX": "100000"},
        # The criterion bench of the bundle on a width-4 ResNet-18 layout with few, short
        # samples (the 11.2M layout takes minutes per kernel on the emulator).
        "bench_argv": None,
        "bench_args": ["--bench"],
        "bench_env": {"SAMKIT_BENCH_WIDTH": "4", "SAMKIT_BENCH_QUICK": "1"},
        "nn_parity_args": ["--test-threads=2", "linear_matches_cpu", "mlp_matches_cpu",
                           "device_loss_matches_samkit_core", "relu_add_activations"],
        # The emulated cuDNN's algorithm search: no large workspace to clear per shape.
        "step_args": ["--batch", "2", "--width", "4", "--steps", "1", "--warmup", "0",
                      "--optimizers", "sgd,sam", "--workspace-mb", "4"],
        "torch_args": ["--batch", "2", "--reps", "1"],
        # The device probe of every CLI test (`samkit bench --device cuda` on a tiny model,
        # which must succeed under SAMKIT_REQUIRE_CUDA=1); the trainer comparisons take minutes
        # here and run in `cargo test` (tests/cuda_emulated.rs).
        "cli_args": ["--test-threads=1", "without_a_device_cuda_is_refused_clearly"],
        # The emulated cuDNN's algorithm search: no large workspace to clear per shape.
        "cli_env": {"SAMKIT_TEST_CUDA_FLAGS": "--cudnn-workspace-mb 4"},
    },
}

VERDICTS = {"pass", "fail", "timeout", "skipped-no-device", "not-run", "interrupted",
            "inconclusive", "skipped-no-tool"}
TOOL_VERDICTS = {"clean", "errors", "tool-failed", "timeout", "absent", "not-run", "interrupted"}


class Interrupted(Exception):
    """The runner got SIGTERM or SIGINT (the device call's limit)."""


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def log(msg):
    print(f"gpu-check: {msg}", flush=True)


# -------------------------------------------------------------------------------------------
# Reading the outputs


def test_counts(text):
    """Sums of the `test result:` lines of a libtest run, and the skip lines of its tests."""
    c = {"passed": 0, "failed": 0, "ignored": 0, "filtered_out": 0, "results": 0}
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored;"
                         r"(?: \d+ measured;)?(?: (\d+) filtered out)?", text):
        c["passed"] += int(m.group(1))
        c["failed"] += int(m.group(2))
        c["ignored"] += int(m.group(3))
        c["filtered_out"] += int(m.group(4) or 0)
        c["results"] += 1
    c["skipped"] = len(re.findall(r"^skip: ", text, re.M))
    c["skipped_no_device"] = len(re.findall(r"^skip: no (?:CUDA|usable CUDA)", text, re.M))
    return c


def tests_verdict(rc, counts):
    """Verdict of a libtest binary's run (rc: exit code, or 'timeout' / 'interrupted')."""
    if rc in ("timeout", "interrupted"):
        return rc, None
    if rc != 0:
        return "fail", f"exit {rc}"
    if counts["results"] == 0:
        return "fail", "no test result line"
    if counts["skipped_no_device"] > 0:
        return "skipped-no-device", f"{counts['skipped_no_device']} tests skipped: no device"
    if counts["passed"] == 0:
        return "fail", "no test ran (a filter that matches nothing?)"
    return "pass", None


def sanitizer_verdict(rc, text):
    """(verdict, error count) of one compute-sanitizer run (rc: exit code, 'timeout', ...)."""
    counts = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) errors?", text)]
    # racecheck also reports hazards: "RACECHECK SUMMARY: 1 hazard displayed (1 error, 0
    # warnings)".
    counts += [int(n) for n in re.findall(r"RACECHECK SUMMARY: .*?\((\d+) errors?,", text)]
    if counts and max(counts) > 0:
        return "errors", max(counts)
    if rc in ("timeout", "interrupted"):
        return rc, None
    if counts:
        # Zero errors; a failing test under the tool shows in its exit code, recorded beside.
        return "clean", 0
    return "tool-failed", None


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


# -------------------------------------------------------------------------------------------
# The environment


def python_nvidia_libs():
    """lib folders of the pip packages nvidia-* (CUDA 12: nvidia/<pkg>/lib, 13: nvidia/cu13/lib)."""
    seen = []
    for p in sys.path:
        for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib"))):
            if os.path.isdir(d) and d not in seen:
                seen.append(d)
    return seen


def find_sanitizer():
    """compute-sanitizer: GPU_CHECK_SANITIZER, PATH, the CUDA toolkit folders, pip's
    nvidia-cuda-sanitizer-api (nvidia/cuda_sanitizer_api/compute-sanitizer/, nvidia/cu13/...)."""
    forced = os.environ.get("GPU_CHECK_SANITIZER")
    if forced:
        return None if forced == "none" else forced
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    cands = []
    for pat in ["/usr/local/cuda*/bin/compute-sanitizer",
                "/usr/local/cuda*/compute-sanitizer/compute-sanitizer",
                "/opt/cuda*/bin/compute-sanitizer",
                "/opt/nvidia/*/compute-sanitizer/compute-sanitizer",
                "/usr/lib/nvidia-cuda-toolkit/bin/compute-sanitizer"]:
        cands += sorted(glob.glob(pat), reverse=True)
    roots = list(sys.path) + glob.glob("/usr/local/lib/python3*/dist-packages") + \
        glob.glob("/usr/lib/python3*/dist-packages") + glob.glob("/opt/*/.venv/lib/python3*/site-packages")
    for p in roots:
        for pat in ["nvidia/*/compute-sanitizer/compute-sanitizer",
                    "nvidia/*/*/compute-sanitizer/compute-sanitizer",
                    "nvidia/*/bin/compute-sanitizer",
                    "nvidia/*/*/bin/compute-sanitizer"]:
            cands += sorted(glob.glob(os.path.join(p, pat)))
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def command_output(argv, timeout=20):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, str(e)


# -------------------------------------------------------------------------------------------
# The runner


class Runner:
    def __init__(self, args):
        self.bundle = os.path.abspath(args.bundle)
        self.out = os.path.abspath(args.out)
        self.mode = args.mode
        self.profile = PROFILES[self.mode]
        self.only = [s for s in (args.only or ",".join(STAGES)).split(",") if s]
        for s in self.only:
            if s not in STAGES:
                raise SystemExit(f"gpu-check: unknown stage {s!r} (stages: {', '.join(STAGES)})")
        self.caps = dict(self.profile["caps"])
        self.part_caps = dict(self.profile["parts"])
        for item in filter(None, os.environ.get("GPU_CHECK_CAPS", "").split(",")):
            k, _, v = item.partition("=")
            k = k.strip()
            if k in self.caps:
                self.caps[k] = int(v)
            elif k in self.part_caps:
                self.part_caps[k] = int(v)
            else:
                raise SystemExit(f"gpu-check: GPU_CHECK_CAPS: unknown stage or part {k!r}")
        total = sum(self.caps.values())
        if total > TOTAL_CAP_S:
            raise SystemExit(f"gpu-check: the stage caps sum to {total} s, over {TOTAL_CAP_S} s")
        os.makedirs(self.out, exist_ok=True)
        # A table of an earlier run left in OUT would read as this run's.
        for f in ["summary.json", "logs.tar.gz", *TABLES]:
            if os.path.isfile(os.path.join(self.out, f)):
                os.remove(os.path.join(self.out, f))
        if args.scratch:
            self.scratch = os.path.abspath(args.scratch)
            os.makedirs(self.scratch, exist_ok=True)
        else:
            self.scratch = tempfile.mkdtemp(prefix="gpu-check-", dir=os.environ.get("TMPDIR", "/tmp"))
        if os.path.commonpath([self.scratch, self.out]) == self.out:
            raise SystemExit("gpu-check: the scratch folder must not be inside OUT")
        self.fake_libs = []
        if args.fake_libs:
            with open(args.fake_libs) as f:
                self.fake_libs = [line.strip() for line in f if line.strip()]
        self.t0 = time.monotonic()
        self.carry = 0.0
        self.summary = self.new_summary()
        self.current = None
        self.stage_t0 = self.t0

    # --- environment -----------------------------------------------------------------------

    def setup_env(self):
        env = os.environ
        libs = python_nvidia_libs()
        path = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if self.mode == "emulated":
            if len(self.fake_libs) != 3:
                raise SystemExit("gpu-check: --mode emulated needs --fake-libs (driver, cuBLAS, cuDNN)")
            fake_dirs = []
            for lib in self.fake_libs:
                d = os.path.dirname(lib)
                if d not in fake_dirs:
                    fake_dirs.append(d)
            # The fake driver first, so every binary's loader opens it (not a real libcuda).
            path = fake_dirs + libs + path
            env["SAMKIT_CUBLAS_LIB"] = self.fake_libs[1]
            env["SAMKIT_CUDNN_LIB"] = self.fake_libs[2]
        else:
            path = libs + path
        env["LD_LIBRARY_PATH"] = ":".join(path)
        for d in libs:
            if glob.glob(os.path.join(d, "libnvrtc.so.1[23]")) and os.path.isdir(os.path.join(d, "..", "include")):
                env.setdefault("SAMKIT_CUDA_ROOT", os.path.realpath(os.path.join(d, "..")))
        env["SAMKIT_CUDA_CUBIN_DIR"] = os.path.join(self.bundle, "cubins")
        env["SAMKIT_CUDA_CACHE"] = os.path.join(self.scratch, "kernel-cache")
        env["RUST_BACKTRACE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"

        lines = [f"mode: {self.mode}", f"bundle: {self.bundle}", f"scratch: {self.scratch}"]
        rc, smi = command_output(["nvidia-smi", "-L"])
        gpus = [l for l in smi.splitlines() if l.startswith("GPU ")] if rc == 0 else []
        lines.append(f"nvidia-smi -L: {smi if rc is not None else 'not found'}")
        rc2, q = command_output(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                                 "clocks.max.sm,clocks.max.mem", "--format=csv"])
        if rc2 == 0:
            lines.append(q)
        lines.append(f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']}")
        for k in ("SAMKIT_CUDA_ROOT", "SAMKIT_CUBLAS_LIB", "SAMKIT_CUDNN_LIB"):
            if k in env:
                lines.append(f"{k}={env[k]}")
        self.sanitizer = find_sanitizer()
        if self.sanitizer:
            _, v = command_output([self.sanitizer, "--version"])
            lines.append(f"compute-sanitizer: {self.sanitizer}\n{v}")
            self.summary["sanitizer"]["path"] = self.sanitizer
            self.summary["sanitizer"]["version"] = v.splitlines()[-1] if v else None
        else:
            lines.append("compute-sanitizer: absent")
        with open(os.path.join(self.scratch, "device.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        if self.mode == "emulated":
            self.summary["device"] = "emulated"
        else:
            self.summary["device"] = gpus[0] if gpus else "none"
        self.summary["gpus"] = gpus

    # --- summary and files ------------------------------------------------------------------

    def new_summary(self):
        rev = read_text(os.path.join(self.bundle, "revision")).strip() or None
        s = {
            "schema": 1,
            "revision": rev,
            "mode": self.mode,
            "device": None,
            "device_name_seen": None,
            "complete": False,
            "ok": False,
            "seconds": 0,
            "caps_total_s": sum(self.caps.values()),
            "scratch": self.scratch,
            "selected": self.only,
            "stages": {},
            "sanitizer": {"path": None, "version": None,
                          "config": {"SAMKIT_PARITY_MAX": SANITIZER_PARITY_MAX,
                                     "filters": SANITIZER_FILTERS},
                          **{t: {"verdict": "not-run", "errors": None} for t in TOOLS}},
            "tables": {},
        }
        for i, name in enumerate(STAGES, 1):
            s["stages"][name] = {"name": name, "order": i, "cap_s": self.caps[name],
                                 "limit_s": None, "seconds": 0, "exit": None,
                                 "verdict": "not-run",
                                 "note": None if name in self.only else "not selected",
                                 "tests": None, "parts": []}
        return s

    def compute_ok(self):
        s = self.summary
        sel = [n for n in STAGES if n in self.only and n != "sanitizer"]
        ok = all(s["stages"][n]["verdict"] == "pass" for n in sel)
        if any(s["sanitizer"][t]["verdict"] == "errors" for t in TOOLS):
            ok = False
        if s["device"] in (None, "none"):
            ok = False
        if s.get("device_mismatch"):
            ok = False
        s["ok"] = ok

    def write_outputs(self):
        """summary.json, logs.tar.gz and the tables into OUT, each written under a temporary
        name and renamed, so a kill in the middle leaves the previous complete file."""
        self.summary["seconds"] = round(time.monotonic() - self.t0, 1)
        self.compute_ok()
        for t in TABLES:
            src = os.path.join(self.scratch, t)
            if os.path.isfile(src) and os.path.getsize(src) <= MAX_OUT_FILE_BYTES:
                tmp = os.path.join(self.out, f".{t}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, os.path.join(self.out, t))
                self.summary["tables"][t.rsplit(".", 1)[0]] = t
        self.write_logs()
        tmp = os.path.join(self.out, ".summary.json.tmp")
        with open(tmp, "w") as f:
            json.dump(self.summary, f, indent=2)
        os.replace(tmp, os.path.join(self.out, "summary.json"))

    def write_logs(self):
        tmp = os.path.join(self.out, ".logs.tar.gz.tmp")
        left_out = []
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for dirpath, dirnames, filenames in os.walk(self.scratch):
                dirnames[:] = sorted(d for d in dirnames if d != "kernel-cache")
                for fn in sorted(filenames):
                    p = os.path.join(dirpath, fn)
                    rel = os.path.relpath(p, self.scratch)
                    arc = os.path.join("gpu-check", rel)
                    try:
                        size = os.path.getsize(p)
                    except OSError:
                        continue
                    if size <= SMALL_FILE:
                        tar.add(p, arcname=arc, recursive=False)
                    elif fn.endswith(".log"):
                        with open(p, "rb") as f:
                            head = f.read(LOG_HEAD)
                            f.seek(size - LOG_TAIL)
                            tail = f.read()
                        data = head + f"\n[... {size - LOG_HEAD - LOG_TAIL} bytes cut ...]\n".encode() + tail
                        info = tarfile.TarInfo(arc)
                        info.size = len(data)
                        info.mtime = int(time.time())
                        tar.addfile(info, io.BytesIO(data))
                    else:
                        left_out.append(f"{rel} ({size} bytes)")
        self.summary["logs_left_out"] = left_out
        os.replace(tmp, os.path.join(self.out, "logs.tar.gz"))

    # --- running a part ---------------------------------------------------------------------

    def run_part(self, name, argv, cap, log_name, env=None):
        """Runs argv with its output in scratch/log_name, killed (its process group) past cap
        seconds. Returns (rc or 'timeout' / 'interrupted', seconds)."""
        log_path = os.path.join(self.scratch, log_name)
        full_env = dict(os.environ)
        full_env.update(env or {})
        t = time.monotonic()
        if cap < MIN_PART_S:
            with open(log_path, "w") as f:
                f.write(f"gpu-check: {name} not started: {cap:.0f} s left of its cap\n")
            return "timeout", 0.0
        log(f"{name}: {' '.join(os.path.relpath(a, self.bundle) if a.startswith(self.bundle) else a for a in argv)}"
            f" (cap {cap:.0f} s)")
        with open(log_path, "w") as f:
            f.write(f"$ {' '.join(argv)}\n")
            for k, v in sorted((env or {}).items()):
                f.write(f"$ env {k}={v}\n")
            f.flush()
            try:
                p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True, cwd=self.scratch)
            except OSError as e:
                f.write(f"gpu-check: could not start: {e}\n")
                return 127, time.monotonic() - t
            try:
                try:
                    rc = p.wait(timeout=cap)
                except subprocess.TimeoutExpired:
                    rc = "timeout"
                    f.write(f"\ngpu-check: killed at its cap of {cap:.0f} s\n")
            except Interrupted:
                self.kill(p)
                f.write("\ngpu-check: interrupted\n")
                raise
            if rc == "timeout":
                self.kill(p)
        secs = time.monotonic() - t
        log(f"{name}: exit {rc} after {secs:.1f} s")
        return rc, secs

    @staticmethod
    def kill(p):
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                p.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def bin(self, name):
        return os.path.join(self.bundle, "bin", name)

    # --- the stages -------------------------------------------------------------------------

    def stage_parity(self, st, limit):
        p = self.profile
        env = {"SAMKIT_REQUIRE_CUDA": "1", **p["parity_env"]}
        rc, secs = self.run_part("parity", [self.bin("parity"), "--nocapture", *p["parity_args"]],
                                 limit, "parity.log", env)
        c = test_counts(read_text(os.path.join(self.scratch, "parity.log")))
        v, note = tests_verdict(rc, c)
        if v == "pass" and self.mode == "emulated" and c["skipped"] > 0:
            v, note = "fail", f"{c['skipped']} parity tests skipped on the emulated device"
        return [self.part("parity", rc, secs, limit, v, note, "parity.log", c)]

    def stage_bench(self, st, limit):
        p = self.profile
        out = os.path.join(self.scratch, "bench.json")
        if os.path.exists(out):
            os.remove(out)
        env = {"SAMKIT_BENCH_JSON": out, **p.get("bench_env", {})}
        if p["bench_argv"]:
            argv = [a.format(bin=os.path.join(self.bundle, "bin"), json=out) for a in p["bench_argv"]]
        else:
            argv = [self.bin("cuda_kernels"), *p["bench_args"]]
        rc, secs = self.run_part("bench", argv, limit, "bench.log", env)
        text = read_text(os.path.join(self.scratch, "bench.log"))
        table = load_json(out)
        # bin/cuda_kernels writes {"device", "rows": [...]}, `samkit bench-kernels` the rows.
        rows = table if isinstance(table, list) else (table or {}).get("rows")
        extra = {}
        if rc in ("timeout", "interrupted"):
            v, note = rc, None
        elif rc != 0:
            v, note = "fail", f"exit {rc}"
        elif "no CUDA device: skipping" in text:
            v, note = "skipped-no-device", "the bench saw no device"
        elif not rows:
            v, note = "fail", "no kernel table (bench.json)"
        else:
            v, note = "pass", None
            extra = {"rows": len(rows),
                     "variant_rows": [r.get("kernel") for r in rows if "[" in str(r.get("kernel"))],
                     "table": "bench.json"}
            if isinstance(table, dict):
                self.note_device(table.get("device"))
        return [self.part("bench", rc, secs, limit, v, note, "bench.log", None, extra)]

    def stage_nn(self, st, limit):
        p = self.profile
        parts = []
        start = time.monotonic()
        later = {"nn-parity": ["nn-step", "torch"], "nn-step": ["torch"], "torch": []}

        def cap(name):
            left = limit - (time.monotonic() - start)
            return max(0.0, left - sum(self.part_caps[n] for n in later[name]))

        c_lim = cap("nn-parity")
        rc, secs = self.run_part("nn-parity", [self.bin("cuda_parity"), "--nocapture", *p["nn_parity_args"]],
                                 c_lim, "nn-parity.log", {"SAMKIT_REQUIRE_CUDA": "1"})
        c = test_counts(read_text(os.path.join(self.scratch, "nn-parity.log")))
        v, note = tests_verdict(rc, c)
        parts.append(self.part("nn-parity", rc, secs, c_lim, v, note, "nn-parity.log", c))

        step_json = os.path.join(self.scratch, "nn-step.json")
        c_lim = cap("nn-step")
        rc, secs = self.run_part("nn-step", [self.bin("cuda_step"), "--out", step_json, *p["step_args"]],
                                 c_lim, "nn-step.log")
        step = load_json(step_json)
        if rc in ("timeout", "interrupted"):
            v, note = rc, None
        elif rc != 0:
            v, note = "fail", f"exit {rc}"
        elif step is None:
            v, note = "fail", "no nn-step.json"
        elif "skipped" in step:
            v, note = "skipped-no-device", step["skipped"]
        else:
            v, note = "pass", None
            self.note_device(step.get("device"))
        extra = {}
        if step and "optimizers" in step:
            extra["median_step_ms"] = {k: o.get("median_step_ms") for k, o in step["optimizers"].items()}
        parts.append(self.part("nn-step", rc, secs, c_lim, v, note, "nn-step.log", None, extra))

        anchor = os.path.join(self.bundle, "anchors", "torch_gpu_resnet.py")
        c_lim = cap("torch")
        trc, probe = command_output([sys.executable, "-c",
                                     "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"],
                                    timeout=max(5, min(60, c_lim)))
        torch_json = os.path.join(self.scratch, "torch-resnet.json")
        if self.mode == "emulated" or trc != 0:
            why = "the emulated device is not visible to PyTorch" if self.mode == "emulated" else \
                ("torch sees no GPU" if trc == 3 else f"torch not importable: {probe[-300:]}")
            with open(os.path.join(self.scratch, "torch-resnet.log"), "w") as f:
                f.write(f"gpu-check: PyTorch anchor skipped: {why}\n")
            parts.append(self.part("torch", "skipped", 0, c_lim, "skipped-no-torch", why,
                                   "torch-resnet.log", None))
        else:
            c_lim = cap("torch")
            argv = [sys.executable, anchor, "--out", torch_json, *p["torch_args"]]
            if step and "optimizers" in step:
                argv[2:2] = ["--samkit", step_json]
            rc, secs = self.run_part("torch", argv, c_lim, "torch-resnet.log")
            res = load_json(torch_json)
            if rc in ("timeout", "interrupted"):
                v, note = rc, None
            elif rc != 0 or res is None:
                v, note = "fail", f"exit {rc}" if rc != 0 else "no torch-resnet.json"
            else:
                v, note = "pass", None
            extra = {"samkit_vs_torch": (res or {}).get("samkit_vs_torch")}
            parts.append(self.part("torch", rc, secs, c_lim, v, note, "torch-resnet.log", None, extra))
        return parts

    def stage_cli(self, st, limit):
        p = self.profile
        env = {"SAMKIT_BIN": self.bin("samkit"), "SAMKIT_TEST_TMP": os.path.join(self.scratch, "cli-runs"),
               "SAMKIT_REQUIRE_CUDA": "1", **p.get("cli_env", {})}
        os.makedirs(env["SAMKIT_TEST_TMP"], exist_ok=True)
        rc, secs = self.run_part("cli", [self.bin("cuda_training"), "--nocapture", *p["cli_args"]],
                                 limit, "cli.log", env)
        c = test_counts(read_text(os.path.join(self.scratch, "cli.log")))
        v, note = tests_verdict(rc, c)
        return [self.part("cli", rc, secs, limit, v, note, "cli.log", c)]

    def stage_sanitizer(self, st, limit):
        parts = []
        start = time.monotonic()
        for i, tool in enumerate(TOOLS):
            rec = self.summary["sanitizer"][tool]
            left = limit - (time.monotonic() - start)
            c_lim = max(0.0, left - sum(self.part_caps[t] for t in TOOLS[i + 1:]))
            if not self.sanitizer:
                rec.update(verdict="absent", errors=None, exit=None, seconds=0, cap_s=round(c_lim))
                parts.append(self.part(tool, None, 0, c_lim, "absent", "compute-sanitizer not found", None, None))
                continue
            log_name = f"{tool}.log"
            argv = [self.sanitizer, "--tool", tool, "--error-exitcode", "9", "--print-limit", "50",
                    self.bin("parity"), "--test-threads=1", *SANITIZER_FILTERS]
            self.summary["sanitizer"][tool]["verdict"] = "interrupted"
            self.write_outputs()
            rc, secs = self.run_part(tool, argv, c_lim, log_name,
                                     {"SAMKIT_PARITY_MAX": SANITIZER_PARITY_MAX})
            v, n = sanitizer_verdict(rc, read_text(os.path.join(self.scratch, log_name)))
            rec.update(verdict=v, errors=n, exit=rc, seconds=round(secs, 1), cap_s=round(c_lim), log=log_name)
            parts.append(self.part(tool, rc, secs, c_lim, v, None, log_name, None, {"errors": n}))
        return parts

    # --- bookkeeping ------------------------------------------------------------------------

    @staticmethod
    def part(name, rc, secs, cap, verdict, note, log_name, counts, extra=None):
        d = {"name": name, "exit": rc, "seconds": round(secs, 1), "cap_s": round(cap),
             "verdict": verdict, "note": note, "log": log_name}
        if counts is not None:
            d["tests"] = {k: counts[k] for k in ("passed", "failed", "ignored", "filtered_out", "skipped")}
        d.update(extra or {})
        return d

    def note_device(self, name):
        """The device the binaries saw, checked against the mode: the emulator must not pass
        for a GPU, nor a GPU for the emulator."""
        if not name:
            return
        self.summary["device_name_seen"] = name
        fake = "fake" in name.lower() or "emulation" in name.lower()
        if fake != (self.mode == "emulated"):
            self.summary["device_mismatch"] = f"mode {self.mode} but the binaries saw {name!r}"

    @staticmethod
    def stage_verdict(name, parts):
        vs = [p["verdict"] for p in parts]
        if name == "sanitizer":
            if "errors" in vs:
                return "fail"
            if "interrupted" in vs:
                return "interrupted"
            if vs and all(v == "absent" for v in vs):
                return "skipped-no-tool"
            if vs and all(v == "clean" for v in vs):
                return "pass"
            return "inconclusive"
        vs = [v for v in vs if v != "skipped-no-torch"]
        for v in ("fail", "interrupted", "timeout", "skipped-no-device"):
            if v in vs:
                return v
        return "pass" if vs else "fail"

    def run(self):
        self.setup_env()
        self.write_outputs()
        log(f"device: {self.summary['device']}; scratch {self.scratch}; caps {self.caps} "
            f"(sum {sum(self.caps.values())} s)")
        for name in STAGES:
            if name not in self.only:
                continue
            st = self.summary["stages"][name]
            limit = self.caps[name] + self.carry
            st.update(limit_s=round(limit), verdict="interrupted",
                      note="the run was killed during this stage")
            self.current = name
            self.write_outputs()
            t = self.stage_t0 = time.monotonic()
            parts = getattr(self, f"stage_{name}")(st, limit)
            secs = time.monotonic() - t
            self.carry = max(0.0, limit - secs)
            st["parts"] = parts
            st["seconds"] = round(secs, 1)
            st["verdict"] = self.stage_verdict(name, parts)
            st["note"] = "; ".join(f"{p['name']}: {p['note']}" for p in parts if p.get("note")) or None
            codes = [p["exit"] for p in parts if isinstance(p["exit"], int)]
            st["exit"] = next((c for c in codes if c != 0), codes[-1] if codes else None)
            tests = [p["tests"] for p in parts if p.get("tests")]
            if tests:
                st["tests"] = {k: sum(t[k] for t in tests) for k in tests[0]}
            self.current = None
            self.write_outputs()
            log(f"stage {name}: {st['verdict']} in {secs:.1f} s (cap {st['cap_s']} s, limit {st['limit_s']} s)")
        self.summary["complete"] = True
        self.write_outputs()
        brief = {n: s["verdict"] for n, s in self.summary["stages"].items()}
        brief.update({t: self.summary["sanitizer"][t]["verdict"] for t in TOOLS})
        log(f"ok={self.summary['ok']} {json.dumps(brief)} in {self.summary['seconds']} s")
        return 0 if self.summary["ok"] else 1

    def interrupted(self, why):
        log(f"interrupted ({why})")
        if self.current:
            st = self.summary["stages"][self.current]
            st["verdict"] = "interrupted"
            st["seconds"] = round(time.monotonic() - self.stage_t0, 1)
            st["note"] = f"the run was stopped during this stage ({why})"
        self.summary["interrupted"] = why
        # A signal inside write_outputs can leave a temporary file: it would come back too.
        for f in glob.glob(os.path.join(self.out, ".*.tmp")):
            os.remove(f)
        try:
            self.write_outputs()
        except Interrupted:
            pass
        return 143


# -------------------------------------------------------------------------------------------
# Checking what comes back


def verify(out, expect_device=None, require_ok=False):
    """Problems with OUT as the GPU machine would return it (an empty list: none)."""
    problems = []
    files = []
    for dirpath, dirnames, filenames in os.walk(out):
        depth = os.path.relpath(dirpath, out).count(os.sep) + (0 if dirpath == out else 1)
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            files.append(p)
            if depth > 2:
                problems.append(f"{os.path.relpath(p, out)}: more than 2 folders down")
            if not re.fullmatch(r"[A-Za-z0-9._-]+", fn):
                problems.append(f"{os.path.relpath(p, out)}: a name the GPU machine does not return")
            if os.path.getsize(p) > MAX_OUT_FILE_BYTES:
                problems.append(f"{os.path.relpath(p, out)}: over 16 MiB")
    if len(files) > MAX_OUT_FILES:
        problems.append(f"{len(files)} files in OUT, at most {MAX_OUT_FILES} come back")
    s = load_json(os.path.join(out, "summary.json"))
    if s is None:
        return problems + ["no readable summary.json"]
    for name in STAGES:
        st = s.get("stages", {}).get(name)
        if not st:
            problems.append(f"summary: stage {name} missing")
            continue
        for k in ("name", "seconds", "cap_s", "exit", "verdict", "tests"):
            if k not in st:
                problems.append(f"summary: stage {name} has no {k}")
        if st.get("verdict") not in VERDICTS:
            problems.append(f"summary: stage {name}: verdict {st.get('verdict')!r}")
    if sum(st.get("cap_s", 0) for st in s.get("stages", {}).values()) > TOTAL_CAP_S:
        problems.append(f"summary: the stage caps sum to more than {TOTAL_CAP_S} s")
    for t in TOOLS:
        v = s.get("sanitizer", {}).get(t, {}).get("verdict")
        if v not in TOOL_VERDICTS:
            problems.append(f"summary: sanitizer {t}: verdict {v!r}")
    if "ok" not in s:
        problems.append("summary: no ok")
    if expect_device and s.get("device") != expect_device:
        problems.append(f"summary: device {s.get('device')!r}, expected {expect_device!r}")
    if require_ok:
        if not s.get("complete"):
            problems.append("summary: the run did not complete")
        if not s.get("ok"):
            bad = {n: st.get("verdict") for n, st in s.get("stages", {}).items()}
            problems.append(f"summary: ok is false ({bad}; {s.get('device_mismatch') or ''})")
        par = s.get("stages", {}).get("parity", {}).get("tests") or {}
        if not par.get("passed") or par.get("skipped"):
            problems.append(f"summary: the parity stage ran no test on the device: {par}")
    try:
        with tarfile.open(os.path.join(out, "logs.tar.gz")) as tar:
            names = tar.getnames()
        for stage_log in ("device.txt",):
            if not any(n.endswith(stage_log) for n in names):
                problems.append(f"logs.tar.gz has no {stage_log}")
        for name in STAGES:
            st = s.get("stages", {}).get(name, {})
            for part in st.get("parts", []):
                if part.get("log") and not any(n.endswith("/" + part["log"]) for n in names):
                    problems.append(f"logs.tar.gz has no {part['log']}")
    except (OSError, tarfile.TarError) as e:
        problems.append(f"logs.tar.gz: {e}")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle")
    ap.add_argument("--out")
    ap.add_argument("--mode", choices=sorted(PROFILES), default="gpu")
    ap.add_argument("--only", help="comma-separated stages: " + ",".join(STAGES))
    ap.add_argument("--fake-libs", help="file listing the fake driver, cuBLAS and cuDNN (emulated mode)")
    ap.add_argument("--scratch", help="the scratch folder (default: a new one under TMPDIR)")
    ap.add_argument("--verify", metavar="OUT", help="check OUT as the GPU machine would return it")
    ap.add_argument("--expect-device")
    ap.add_argument("--require-ok", action="store_true")
    args = ap.parse_args()
    if args.verify:
        problems = verify(args.verify, args.expect_device, args.require_ok)
        for p in problems:
            print(f"gpu-check: verify: {p}", file=sys.stderr)
        if not problems:
            n = sum(len(f) for _, _, f in os.walk(args.verify))
            log(f"verify: {args.verify} holds {n} files, summary.json complete")
        return 1 if problems else 0
    if not (args.bundle and args.out):
        ap.error("--bundle and --out are needed (or --verify OUT)")
    runner = Runner(args)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return runner.run()
    except Interrupted as e:
        return runner.interrupted(str(e))


if __name__ == "__main__":
    sys.exit(main())
