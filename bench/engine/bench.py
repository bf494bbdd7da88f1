#!/usr/bin/env python3
"""forge vs DVC on the same 10-stage shell pipeline over 2 GB of inputs.

Builds, in a fresh temp dir, one chain of stages s0..s9: stage i reads data/part-i.bin (200 MB of
random bytes) with `wc -c <` (an fstat, so the engines dominate), appends its param k, and
prepends stage i-1's output. The same pipeline is written as dvc.yaml + params.yaml (DVC) and as
forge.yaml (forge); the input files are generated once and hardlinked into both workspaces.

Measured, side by side, as wall time of the whole process:
  first run        `dvc repro` vs `forge run` from nothing (inputs in the page cache)
  hashing          `dvc status` / `forge status` with the hash cache deleted (DVC's site cache
                   dir, forge's cache/stat-cache) and the inputs in the page cache → GB/s
  no-op run        `dvc repro` vs `forge run` with nothing to do (median of --runs)
  status           `dvc status` vs `forge status` with nothing stale (median of --runs)
  param edit       set s5's k to a new value (params.yaml / forge.yaml), rerun: s5..s9 rerun
                   in both, checked from their output (median of --edits)

Every measurement is verified: outputs are compared byte for byte between the two engines and
each engine's own report must say exactly which stages ran.

Usage: bash bench/engine/setup.sh && bench/.venv/bin/python bench/engine/bench.py [--help]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STAGES = 10
EDITED = 5  # the stage whose param the edit benchmark changes

TARGET_SPEEDUP = 20.0
TARGET_MS = 50.0
TARGET_GBPS = 1.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---------------------------------------------------------------- pipeline definitions


def forge_yaml(ks: list[int]) -> str:
    out = ["stages:"]
    for i, k in enumerate(ks):
        if i == 0:
            cmd = "wc -c < data/part-0.bin > ${out}/n; echo ${params.k} >> ${out}/n"
        else:
            cmd = (
                f"cat ${{stages.s{i - 1}}}/n > ${{out}}/n; "
                f"wc -c < data/part-{i}.bin >> ${{out}}/n; echo ${{params.k}} >> ${{out}}/n"
            )
        out += [
            f"  s{i}:",
            f"    cmd: {json.dumps(cmd)}",
            f"    deps: [data/part-{i}.bin]",
            f"    params: {{k: {k}}}",
        ]
    return "\n".join(out) + "\n"


def dvc_yaml() -> str:
    out = ["stages:"]
    for i in range(STAGES):
        o = f"out/s{i}.txt"
        if i == 0:
            cmd = f"wc -c < data/part-0.bin > {o}; echo ${{s0.k}} >> {o}"
            deps = ["data/part-0.bin"]
        else:
            cmd = (
                f"cat out/s{i - 1}.txt > {o}; "
                f"wc -c < data/part-{i}.bin >> {o}; echo ${{s{i}.k}} >> {o}"
            )
            deps = [f"data/part-{i}.bin", f"out/s{i - 1}.txt"]
        out += [
            f"  s{i}:",
            f"    cmd: {json.dumps(cmd)}",
            f"    deps: [{', '.join(deps)}]",
            f"    params: [s{i}.k]",
            f"    outs: [{o}]",
        ]
    return "\n".join(out) + "\n"


def params_yaml(ks: list[int]) -> str:
    return "".join(f"s{i}:\n  k: {k}\n" for i, k in enumerate(ks))


def expected_output(ks: list[int], part_bytes: int) -> bytes:
    return "".join(f"{part_bytes}\n{k}\n" for k in ks).encode()


# ---------------------------------------------------------------- running and timing


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path):
        self.args = args
        self.root = root
        self.forge_bin = str(Path(args.forge).resolve())
        self.dvc_bin = str(Path(args.dvc).resolve())
        self.fws = root / "forge"
        self.dws = root / "dvc"
        self.src = root / "data-src"
        self.part_bytes = args.mb * 1_000_000
        self.total_bytes = self.part_bytes * STAGES
        self.ks = [1] * STAGES
        self.env = dict(os.environ, DVC_NO_ANALYTICS="1", DVC_NO_UPDATER="1")
        self.site_cache = root / "dvc-site-cache"
        self.loads: dict[str, str] = {}

    def sh(self, argv: list[str], cwd: Path, check: bool = True) -> tuple[float, str]:
        """Runs argv; returns (wall seconds, stdout+stderr)."""
        t = time.perf_counter()
        p = subprocess.run(
            argv,
            cwd=cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        dt = time.perf_counter() - t
        if check and p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} (in {cwd}) exited {p.returncode}:\n{p.stdout}")
        return dt, p.stdout

    def forge(self, *a: str) -> tuple[float, str]:
        return self.sh([self.forge_bin, *a], self.fws)

    def dvc(self, *a: str) -> tuple[float, str]:
        return self.sh([self.dvc_bin, *a], self.dws)

    # -- setup

    def make_data(self) -> None:
        self.src.mkdir()
        t = time.perf_counter()
        chunk = 1 << 24
        for i in range(STAGES):
            with open(self.src / f"part-{i}.bin", "wb") as f:
                left = self.part_bytes
                while left:
                    n = min(chunk, left)
                    f.write(os.urandom(n))
                    left -= n
        os.sync()  # no writeback of 2 GB of dirty pages during the measurements
        # Backdate the inputs: forge does not trust a stat-cache entry for a file modified in the
        # last 2 s (racy mtime), and in real use inputs are old.
        old = time.time() - 3600
        for i in range(STAGES):
            os.utime(self.src / f"part-{i}.bin", (old, old))
        log(f"generated {self.total_bytes / 1e9:.1f} GB in {time.perf_counter() - t:.1f}s")

    def warm(self) -> None:
        """Reads every input once so all of them sit in the page cache."""
        for i in range(STAGES):
            with open(self.src / f"part-{i}.bin", "rb", buffering=0) as f:
                while f.read(1 << 24):
                    pass

    def resident_pct(self) -> str:
        if not shutil.which("fincore"):
            return "?"
        files = [str(self.src / f"part-{i}.bin") for i in range(STAGES)]
        p = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *files],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            return "?"
        res = sum(int(x) for x in p.stdout.split())
        return f"{100 * res / self.total_bytes:.0f}%"

    def setup_workspaces(self) -> None:
        for ws in (self.fws, self.dws):
            (ws / "data").mkdir(parents=True)
            for i in range(STAGES):
                os.link(self.src / f"part-{i}.bin", ws / "data" / f"part-{i}.bin")
        (self.fws / "forge.yaml").write_text(forge_yaml(self.ks))

        if self.args.dvc_git:
            self.sh(["git", "init", "-q"], self.dws)
            self.dvc("init", "-q")
        else:
            self.dvc("init", "-q", "--no-scm")
        self.dvc("config", "core.analytics", "false")
        self.dvc("config", "core.check_update", "false")
        self.dvc("config", "core.site_cache_dir", str(self.site_cache))
        (self.dws / "out").mkdir()
        (self.dws / "dvc.yaml").write_text(dvc_yaml())
        (self.dws / "params.yaml").write_text(params_yaml(self.ks))
        if self.args.dvc_git:
            self.sh(["git", "add", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore"], self.dws)
            self.sh(
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost",
                 "commit", "-qm", "pipeline"],
                self.dws,
            )

    # -- verification

    def forge_states(self, out: str) -> dict[str, str]:
        states = {}
        for line in out.splitlines():
            m = re.match(r"^(ran|fresh|restored|failed|skipped|stale|never-run)\s+(s\d+)\b", line)
            if m:
                states[m.group(2)] = m.group(1)
        return states

    def dvc_ran(self, out: str) -> set[str]:
        return set(re.findall(r"Running stage '(s\d+)'", out))

    def check_forge(self, out: str, ran: set[str], other: str) -> None:
        want = {f"s{i}": ("ran" if f"s{i}" in ran else other) for i in range(STAGES)}
        got = self.forge_states(out)
        if got != want:
            raise SystemExit(f"forge: expected {want}, got {got}:\n{out}")

    def check_dvc(self, out: str, ran: set[str]) -> None:
        got = self.dvc_ran(out)
        if got != ran:
            raise SystemExit(f"dvc: expected to run {sorted(ran)}, ran {sorted(got)}:\n{out}")

    def check_outputs(self) -> None:
        want = expected_output(self.ks, self.part_bytes)
        f = (self.fws / "artifacts" / f"s{STAGES - 1}" / "n").read_bytes()
        d = (self.dws / "out" / f"s{STAGES - 1}.txt").read_bytes()
        if f != want or d != want:
            raise SystemExit(f"outputs differ from expected:\nwant {want!r}\nforge {f!r}\ndvc {d!r}")

    # -- measurements

    def first_run(self) -> dict:
        self.warm()
        log(f"inputs resident in page cache: {self.resident_pct()}")
        all_stages = {f"s{i}" for i in range(STAGES)}
        tf, out = self.forge("run")
        self.check_forge(out, all_stages, "-")
        td, out = self.dvc("repro")
        self.check_dvc(out, all_stages)
        self.check_outputs()
        return {"dvc": td, "forge": tf}

    def hashing(self) -> dict:
        """`status` with the hash cache gone and the inputs in the page cache."""
        tf, td = [], []
        for _ in range(self.args.hash_reps):
            self.warm()
            (self.fws / "cache" / "stat-cache").unlink(missing_ok=True)
            t, out = self.forge("status")
            self.check_forge(out, set(), "fresh")
            tf.append(t)
            self.warm()
            shutil.rmtree(self.site_cache, ignore_errors=True)
            t, out = self.dvc("status")
            if "up to date" not in out:
                raise SystemExit(f"dvc status after deleting its site cache:\n{out}")
            td.append(t)
        # Leave both hash caches populated for what follows.
        self.forge("status")
        self.dvc("status")
        return {"dvc": td, "forge": tf}

    def repeated(self, forge_args: list[str], dvc_args: list[str]) -> dict:
        tf, td = [], []
        for r in range(self.args.runs):
            # Alternate who goes first so drift in machine load hits both alike.
            order = ("forge", "dvc") if r % 2 == 0 else ("dvc", "forge")
            for who in order:
                if who == "forge":
                    t, out = self.forge(*forge_args)
                    self.check_forge(out, set(), "fresh")
                    tf.append(t)
                else:
                    t, out = self.dvc(*dvc_args)
                    if forge_args[0] == "run":
                        self.check_dvc(out, set())
                    if "up to date" not in out:
                        raise SystemExit(f"dvc {' '.join(dvc_args)}: not up to date:\n{out}")
                    td.append(t)
        return {"dvc": td, "forge": tf}

    def param_edit(self) -> dict:
        tf, td = [], []
        rerun = {f"s{i}" for i in range(EDITED, STAGES)}
        for j in range(self.args.edits):
            # A value neither engine has seen, so neither run cache can restore it.
            self.ks[EDITED] = 100 + j
            order = ("forge", "dvc") if j % 2 == 0 else ("dvc", "forge")
            for who in order:
                if who == "forge":
                    (self.fws / "forge.yaml").write_text(forge_yaml(self.ks))
                    t, out = self.forge("run")
                    self.check_forge(out, rerun, "fresh")
                    tf.append(t)
                else:
                    (self.dws / "params.yaml").write_text(params_yaml(self.ks))
                    t, out = self.dvc("repro")
                    self.check_dvc(out, rerun)
                    td.append(t)
            self.check_outputs()
        return {"dvc": td, "forge": tf}


# ---------------------------------------------------------------- report


def ms(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 10 else f"{t:.1f} s"


def spread(ts: list[float]) -> str:
    return f"{ms(min(ts))}–{ms(max(ts))}"


def report(res: dict, b: Bench, meta: dict) -> str:
    med = {k: {e: statistics.median(v[e]) if isinstance(v[e], list) else v[e] for e in v}
           for k, v in res.items() if k in ("first", "hash", "noop", "status", "edit")}
    gb = b.total_bytes / 1e9
    gbps = {e: gb / med["hash"][e] for e in ("dvc", "forge")}
    rows = [
        (f"first run (10 stages, {gb:g} GB hashed)", res["first"], "1"),
        (f"`status`, hash cache deleted: {gb:g} GB hashed (median of {b.args.hash_reps})", res["hash"],
         str(b.args.hash_reps)),
        (f"no-op `repro` / `run` (median of {b.args.runs})", res["noop"], str(b.args.runs)),
        (f"`status` (median of {b.args.runs})", res["status"], str(b.args.runs)),
        (f"edit s5's param, rerun s5..s9 (median of {b.args.edits})", res["edit"],
         str(b.args.edits)),
    ]
    lines = [
        "| measurement | DVC | forge | DVC/forge | DVC range | forge range |",
        "|---|---:|---:|---:|---|---|",
    ]
    for label, v, _ in rows:
        d = statistics.median(v["dvc"]) if isinstance(v["dvc"], list) else v["dvc"]
        f = statistics.median(v["forge"]) if isinstance(v["forge"], list) else v["forge"]
        dr = spread(v["dvc"]) if isinstance(v["dvc"], list) else ""
        fr = spread(v["forge"]) if isinstance(v["forge"], list) else ""
        lines.append(f"| {label} | {ms(d)} | {ms(f)} | {d / f:.1f}× | {dr} | {fr} |")
    lines.append(
        f"| hashing throughput ({gb:g} GB / wall time of that `status`) | {gbps['dvc']:.2f} GB/s | "
        f"{gbps['forge']:.2f} GB/s | {gbps['forge'] / gbps['dvc']:.1f}× (forge/DVC) | | |"
    )

    def verdict(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    noop_x = med["noop"]["dvc"] / med["noop"]["forge"]
    stat_x = med["status"]["dvc"] / med["status"]["forge"]
    fn, fs = med["noop"]["forge"] * 1000, med["status"]["forge"] * 1000
    targets = [
        "",
        f"forge no-op run: {fn:.1f} ms absolute, {noop_x:.1f}× faster than DVC — "
        f"target ≥{TARGET_SPEEDUP:.0f}× and <{TARGET_MS:.0f} ms: "
        f"{verdict(noop_x >= TARGET_SPEEDUP and fn < TARGET_MS)}",
        f"forge status:    {fs:.1f} ms absolute, {stat_x:.1f}× faster than DVC — "
        f"target ≥{TARGET_SPEEDUP:.0f}× and <{TARGET_MS:.0f} ms: "
        f"{verdict(stat_x >= TARGET_SPEEDUP and fs < TARGET_MS)}",
        f"forge hashing:   {gbps['forge']:.2f} GB/s on {meta['nproc']} cores, inputs in page cache — "
        f"target ≥{TARGET_GBPS:.0f} GB/s: {verdict(gbps['forge'] >= TARGET_GBPS)}",
    ]
    return "\n".join(lines + targets)


def meta_info(b: Bench) -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    dvc_version = subprocess.run([b.dvc_bin, "--version"], capture_output=True, text=True,
                                 env=b.env).stdout.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "dvc": dvc_version,
        "forge_commit": commit,
        "forge_bin": b.forge_bin,
        "dvc_scm": "git" if b.args.dvc_git else "--no-scm",
        "part_mb": b.args.mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--forge", default=str(REPO / "target/release/forge"))
    ap.add_argument("--dvc", default=str(Path(sys.executable).parent / "dvc"))
    ap.add_argument("--mb", type=int, default=200, help="MB per input file (10 files)")
    ap.add_argument("--runs", type=int, default=15, help="no-op run / status repetitions")
    ap.add_argument("--edits", type=int, default=3, help="param edits")
    ap.add_argument("--hash-reps", type=int, default=3, help="cold-hash-cache status repetitions")
    ap.add_argument("--dvc-git", action="store_true",
                    help="DVC repo inside git (default: dvc init --no-scm)")
    ap.add_argument("--dir", help="parent of the temp dir (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--json", help="also write raw timings to this file")
    args = ap.parse_args()
    for p, what in ((args.forge, "forge (cargo build --release)"),
                    (args.dvc, "dvc (bash bench/engine/setup.sh)")):
        if not os.access(p, os.X_OK):
            raise SystemExit(f"{p}: not found; build {what}")

    root = Path(tempfile.mkdtemp(prefix="forge-bench-", dir=args.dir))
    b = Bench(args, root)
    meta = meta_info(b)
    log(f"workspace {root}; dvc {meta['dvc']} ({meta['dvc_scm']}); forge {meta['forge_commit']}")
    try:
        res: dict = {}
        b.loads["start"] = loadavg()
        b.make_data()
        b.setup_workspaces()
        log("first run ...")
        b.loads["first"] = loadavg()
        res["first"] = b.first_run()
        log("hashing ...")
        b.loads["hash"] = loadavg()
        res["hash"] = b.hashing()
        log("no-op runs ...")
        b.loads["noop"] = loadavg()
        res["noop"] = b.repeated(["run"], ["repro"])
        log("status ...")
        b.loads["status"] = loadavg()
        res["status"] = b.repeated(["status"], ["status"])
        log("param edits ...")
        b.loads["edit"] = loadavg()
        res["edit"] = b.param_edit()
        b.loads["end"] = loadavg()
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    meta["loadavg"] = b.loads
    print(f"date {meta['date']}; {meta['nproc']} cores, {meta['cpu']}; {meta['dvc']} "
          f"({meta['dvc_scm']}); forge {meta['forge_commit']}")
    print("load average (1/5/15 min) at each phase: "
          + "; ".join(f"{k} {v}" for k, v in b.loads.items()))
    print()
    print(report(res, b, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": res}, indent=2))


if __name__ == "__main__":
    main()
