#!/usr/bin/env python3
"""forge push/pull vs s5cmd against SeaweedFS's S3 gateway on loopback.

Two artifacts, each the output of one forge stage, generated once in workspace A by `forge run`:
  large   one file of --large-mb MB (default 2,000 MB = 2 GB) of random bytes
  small   --files files (default 10,000) of --file-kib KiB (default 4) of random bytes each,
          all different, so nothing deduplicates

Measured, as wall time of the whole client process (taken from Python), for each artifact:
  forge push   `forge --remote s3://bench/P push STAGE` in A, against an empty prefix P
               (HEAD + PUT per object, files > 16 MiB as multipart uploads of 16 MiB parts,
               8 objects at a time; then the run entry)
  forge pull   `forge --remote s3://bench/P pull STAGE` in a fresh workspace B holding only
               forge.yaml and the stage's inputs (GET per object, every object re-hashed with
               blake3 before it enters B's store, then linked into artifacts/STAGE)
  s5cmd up     `s5cmd --endpoint-url URL --no-sign-request [--numworkers N] cp 'DIR/*' s3://bench/P/`
               with DIR = A/artifacts/STAGE (the very same bytes forge pushes: hardlinks of A's
               store objects)
  s5cmd down   `s5cmd ... cp 's3://bench/P/*' DEST/` into a fresh, empty directory
s5cmd runs twice: with its default --numworkers (256) and with --numworkers 8 (forge's parallel
transfers). Each rep runs the tools in a rotated order; `sync` (untimed) before every
measurement so no tool pays for another's dirty pages. Every transfer is checked: the downloaded
tree must be byte-identical to the source, forge's own report must name the expected number of
objects, and the remote must list the expected number of objects after each upload.

Also recorded per measurement: the client's CPU time (user+sys of the child process) and the
server's (weed's, from /proc), and the load average.

Usage: bash bench/remote/setup.sh && python3 bench/remote/bench.py --forge target/release/forge
       [--reps 3] [--large-mb 2000] [--files 10000] [--file-kib 4] [--json OUT] [--keep]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bench"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(p: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False


def pick_port(taken: set[int]) -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port) is free too."""
    while True:
        p = free_port()
        if p < 55000 and p not in taken and p + 10000 not in taken and port_free(p + 10000):
            taken.update({p, p + 10000})
            return p


class Seaweed:
    """`weed server` (master, volume, filer, S3 gateway in one process) on loopback."""

    def __init__(self, weed: Path, root: Path):
        root.mkdir(parents=True)
        self.root = root
        taken: set[int] = set()
        self.master, volume, filer, self.s3 = (pick_port(taken) for _ in range(4))
        self.log_path = root / "weed.log"
        (root / "data").mkdir()
        self.proc = subprocess.Popen(
            [
                str(weed),
                "server",
                f"-dir={root / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-filer",
                "-s3",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-master.port={self.master}",
                f"-volume.port={volume}",
                f"-filer.port={filer}",
                f"-s3.port={self.s3}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),
        )
        self.url = f"http://127.0.0.1:{self.s3}"
        t = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"weed exited; its log: {self.log_path}")
            try:
                req = urllib.request.Request(f"{self.url}/{BUCKET}", method="PUT", data=b"")
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception as e:  # not up yet, or BucketAlreadyExists
                if "BucketAlreadyExists" in str(getattr(e, "read", lambda: b"")()):
                    break
            if time.monotonic() - t > 120:
                self.stop()
                sys.exit(f"SeaweedFS did not come up; its log: {self.log_path}")
            time.sleep(0.5)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def vacuum(self) -> None:
        """Reclaims the space of deleted objects (untimed, between reps)."""
        url = f"http://127.0.0.1:{self.master}/vol/vacuum?garbageThreshold=0.0001"
        try:
            urllib.request.urlopen(url, timeout=600).read()
        except Exception as e:
            log(f"  (vacuum failed: {e})")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------- measuring


def timed(cmd: list[str], server: Seaweed, cwd: Path | None = None, env=None) -> dict:
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0, srv0 = loadavg(), server.cpu_s()
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    srv1, load1 = server.cpu_s(), loadavg()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    return {
        "wall_s": wall,
        "client_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "server_cpu_s": srv1 - srv0,
        "load": [load0, load1],
        "out": p.stdout + p.stderr,
    }


def same_tree(a: Path, b: Path) -> None:
    """Byte-identical trees (flat directories here)."""
    na, nb = sorted(os.listdir(a)), sorted(os.listdir(b))
    if na != nb:
        sys.exit(f"{b} does not hold the same names as {a} ({len(nb)} vs {len(na)})")
    match, mismatch, errors = filecmp.cmpfiles(a, b, na, shallow=False)
    if mismatch or errors:
        sys.exit(f"{b} differs from {a}: {mismatch[:5]} {errors[:5]}")


def remote_count(s5: list[str], pattern: str) -> int:
    p = subprocess.run(s5 + ["ls", pattern], capture_output=True, text=True)
    if p.returncode != 0 and "no object found" not in p.stderr:
        sys.exit(f"s5cmd ls {pattern} failed: {p.stderr}")
    return sum(1 for line in p.stdout.splitlines() if line.strip() and " DIR " not in line)


# ---------------------------------------------------------------- the workspaces

GEN_SMALL = """\
import os, sys
out, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    with open(os.path.join(out, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
"""


def forge_yaml(large_bytes: int, files: int, file_bytes: int) -> str:
    return f"""\
stages:
  large:
    cmd: head -c {large_bytes} /dev/urandom > ${{out}}/big.bin
  small:
    cmd: python3 gen_small.py ${{out}} {files} {file_bytes}
    deps: [gen_small.py]
"""


def new_workspace(path: Path, yaml: str) -> None:
    path.mkdir(parents=True)
    (path / "forge.yaml").write_text(yaml)
    (path / "gen_small.py").write_text(GEN_SMALL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forge", default=str(REPO / "target/release/forge"))
    ap.add_argument("--s5cmd", default=str(REPO / "bench/.venv-remote/bin/s5cmd"))
    ap.add_argument("--weed", default=str(REPO / "target/test-assets/servers/bin/weed"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--large-mb", type=int, default=2000, help="size of the large file, MB (10^6)")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--file-kib", type=int, default=4)
    ap.add_argument("--only", choices=["large", "small"], help="one artifact only")
    ap.add_argument("--tmp", default=None, help="where the temp dir goes (default: $TMPDIR)")
    ap.add_argument("--json", help="write every measurement here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()

    forge = str(Path(args.forge).resolve())
    large_bytes = args.large_mb * 1_000_000
    file_bytes = args.file_kib * 1024
    tmp = Path(tempfile.mkdtemp(prefix="forge-remote-bench-", dir=args.tmp))
    log(f"temp dir {tmp}; load {loadavg()}")
    server = Seaweed(Path(args.weed), tmp / "weed")
    results: list[dict] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ENDPOINT_URL=server.url, AWS_REGION="us-east-1")
        s5 = [args.s5cmd, "--endpoint-url", server.url, "--no-sign-request"]

        yaml = forge_yaml(large_bytes, args.files, file_bytes)
        a = tmp / "A"
        new_workspace(a, yaml)
        log("generating the artifacts with `forge run` in workspace A ...")
        subprocess.run([forge, "run"], cwd=a, env=env, check=True, capture_output=True)
        sizes = {
            "large": (1, large_bytes),
            "small": (args.files, args.files * file_bytes),
        }
        for stage, (n, size) in sizes.items():
            files = list((a / "artifacts" / stage).iterdir())
            assert len(files) == n and sum(f.stat().st_size for f in files) == size, stage
            for f in files:  # into the page cache, for every tool alike
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass

        tools = ["forge", "s5cmd", "s5cmd-8"]
        artifacts = [args.only] if args.only else ["large", "small"]
        for rep in range(args.reps):
            order = tools[rep % 3 :] + tools[: rep % 3]
            for stage in artifacts:
                n, size = sizes[stage]
                src = a / "artifacts" / stage
                for tool in order:
                    prefix = f"r{rep}-{tool}-{stage}"
                    dest = tmp / f"pull-{prefix}"
                    if tool == "forge":
                        url = f"s3://{BUCKET}/{prefix}"
                        up = timed([forge, "--remote", url, "push", stage], server, a, env)
                        if f"{n} objects" not in up["out"]:
                            sys.exit(f"forge push did not report {n} objects:\n{up['out']}")
                        got = remote_count(s5, f"s3://{BUCKET}/{prefix}/objects/*")
                        new_workspace(dest, yaml)
                        down = timed([forge, "--remote", url, "pull", stage], server, dest, env)
                        if f"{n} objects" not in down["out"] or "pulled" not in down["out"]:
                            sys.exit(f"forge pull did not report {n} objects:\n{down['out']}")
                        same_tree(src, dest / "artifacts" / stage)
                    else:
                        workers = ["--numworkers", "8"] if tool == "s5cmd-8" else []
                        up = timed(
                            s5 + workers + ["cp", f"{src}/*", f"s3://{BUCKET}/{prefix}/"],
                            server,
                        )
                        got = remote_count(s5, f"s3://{BUCKET}/{prefix}/*")
                        dest.mkdir()
                        down = timed(
                            s5 + workers + ["cp", f"s3://{BUCKET}/{prefix}/*", f"{dest}/"],
                            server,
                        )
                        same_tree(src, dest)
                    if got != n:
                        sys.exit(f"{tool} left {got} objects on the remote, not {n}")
                    shutil.rmtree(dest)
                    for direction, m in (("push", up), ("pull", down)):
                        m.pop("out")
                        m.update(rep=rep, tool=tool, artifact=stage, direction=direction,
                                 objects=n, bytes=size)
                        results.append(m)
                        log(f"  rep {rep} {stage:5} {tool:7} {direction}: {m['wall_s']:7.2f} s "
                            f"{size / m['wall_s'] / 1e6:8.1f} MB/s {n / m['wall_s']:8.0f} obj/s "
                            f"(client cpu {m['client_cpu_s']:.1f} s, server cpu "
                            f"{m['server_cpu_s']:.1f} s, load {m['load'][0]:.1f}→{m['load'][1]:.1f})")
            # Free the server's disk between reps (untimed): delete, let the filer drop the
            # chunks, then vacuum the volumes.
            subprocess.run(s5 + ["rm", f"s3://{BUCKET}/r{rep}-*"], capture_output=True)
            time.sleep(3)
            server.vacuum()
    finally:
        server.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report(results)


def fmt_rate(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:,.0f}"


def report(results: list[dict]) -> None:
    def cell(tool, art, d):
        ms = [r for r in results if (r["tool"], r["artifact"], r["direction"]) == (tool, art, d)]
        walls = sorted(r["wall_s"] for r in ms)
        med = statistics.median(walls)
        return {
            "med": med,
            "lo": walls[0],
            "hi": walls[-1],
            "n": len(walls),
            "bytes": ms[0]["bytes"],
            "objects": ms[0]["objects"],
            "client": statistics.median(r["client_cpu_s"] for r in ms),
            "server": statistics.median(r["server_cpu_s"] for r in ms),
        }

    names = {"forge": "forge", "s5cmd": "s5cmd (256 workers)", "s5cmd-8": "s5cmd --numworkers 8"}
    loads = [x for r in results for x in r["load"]]
    print(f"load average (1 min) during the run: {min(loads):.1f}–{max(loads):.1f}\n")
    print("| artifact | direction | tool | time (median) | range | MB/s | objects/s "
          "| forge time ÷ this | client CPU | server CPU |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|")
    arts = [a for a in ("large", "small") if any(r["artifact"] == a for r in results)]
    for art in arts:
        for d in ("push", "pull"):
            f = cell("forge", art, d)
            for tool in ("forge", "s5cmd", "s5cmd-8"):
                c = cell(tool, art, d)
                ratio = "" if tool == "forge" else f"{f['med'] / c['med']:.2f}×"
                print(
                    f"| {art} | {d} | {names[tool]} | {c['med']:.2f} s | "
                    f"{c['lo']:.2f}–{c['hi']:.2f} s | {c['bytes'] / c['med'] / 1e6:.0f} | "
                    f"{fmt_rate(c['objects'] / c['med'])} | "
                    f"{ratio} | "
                    f"{c['client']:.1f} s | {c['server']:.1f} s |"
                )


if __name__ == "__main__":
    main()
