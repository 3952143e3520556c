#!/usr/bin/env python3
"""First install against unchanged re-run, for one or more installer binaries side by side.

    python3 bench/rerun_bench.py BINARY [BINARY...]      # as root
    python3 bench/rerun_bench.py --rounds 9 A B

An unchanged re-run (activation with nothing changed, or `systemctl restart sops-nix`) must not
cost more than a first install. For 1,000 secrets in 10 sops files and 20,000 in 50 (sops 3.11
files made with bench/install_bench.py's generator; the 20,000/50 set is made here the same way),
each round, interleaved across the binaries given:

- first install: a fresh mount point and link, the manifest installed once;
- unchanged re-run: the same manifest installed again over that live generation (the diff finds
  nothing; the previous generation is pruned);
- the floor (bench/floor): the same number of files created with create+fchown+fchmod+write+close,
  one X25519 per file and one AES-GCM per secret.

Prints medians and ratios and writes bench/RERUN.md. Workloads live in bench/work (git-ignored).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import install_bench as ib  # noqa: E402

WORKLOADS = [(1000, 10), (20000, 50)]
OUT = ib.BENCH / "RERUN.md"


def ensure_workload(sops, n, f):
    """Generates n secrets over f sops files if the install benchmark's generator has not."""
    final = ib.wl_dir(n, f)
    if final.exists():
        return
    print(f"generating {n} secrets in {f} sops files (sops 3.11)", flush=True)
    rcpt = ib.recipient()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(ib.WORK / "no-home")}
    part = final.with_name(final.name + ".part")
    subprocess.run(["rm", "-rf", str(part)], check=True)
    part.mkdir(parents=True)

    def encrypt(k):
        plain = part / f"{k:03}.plain.yaml"
        plain.write_text("".join(f"s{i:05}: {ib.value(i)}\n" for i in ib.members(n, f, k)))
        with open(part / f"{k:03}.yaml", "wb") as out:
            subprocess.run([sops, "encrypt", "--age", rcpt, "--input-type", "yaml", "--output-type", "yaml",
                            str(plain)], stdout=out, env=env, check=True)
        plain.unlink()

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(encrypt, range(f)))
    part.rename(final)


def manifest(binary_tag, n, f, round_no):
    base = ib.RUN / f"{binary_tag}-n{n}-f{f}-r{round_no}"
    base.mkdir(parents=True)
    link = base / "secrets"
    m = {
        "secrets": [ib.secret_entry(n, f, i, link) for i in range(n)],
        "templates": [],
        "placeholderBySecretName": {},
        "secretsMountPoint": str(base / "secrets.d"),
        "symlinkPath": str(link),
        "keepGenerations": 1,
        "sshKeyPaths": [],
        "gnupgHome": None,
        "ageKeyFile": str(ib.WORK / "key.txt"),
        "ageSshKeyPaths": [],
        "useTmpfs": False,
        "userMode": False,
        "logging": {"keyImport": False, "secretChanges": True},
    }
    path = base / "manifest.json"
    path.write_text(json.dumps(m, separators=(",", ":")))
    return base, path


def inside(args):
    ib.private_run()
    binaries = [Path(b).resolve() for b in args.binaries]
    results = {}
    for n, f in [w for w in WORKLOADS if not args.workload or f"{w[0]}/{w[1]}" in args.workload]:
        first = {b: [] for b in binaries}
        rerun = {b: [] for b in binaries}
        floor = []
        fl = ib.Floor(n, f, 64)
        for r in range(args.rounds):
            order = binaries if r % 2 == 0 else list(reversed(binaries))
            for i, b in enumerate(order):
                base, m = manifest(f"b{binaries.index(b)}", n, f, r)
                first[b].append(ib.must([str(b), str(m)], what=str(b)))
                rerun[b].append(ib.must([str(b), str(m)], what=str(b)))
                out = subprocess.run([str(b), str(m)], capture_output=True, text=True)
                if "modifying" in out.stdout or "adding" in out.stdout:
                    sys.exit(f"{b}: an unchanged re-run reported changes: {out.stdout}")
                subprocess.run(["umount", "-l", str(base / "secrets.d")], check=False)
                ib.rmtree(base)
                Path("/run/nixos/activation-restart-list").unlink(missing_ok=True)
            floor.append(fl.run())
        results[f"{n}/{f}"] = {
            "floor": ib.median(floor),
            "binaries": {str(b): {"first": ib.median(first[b]), "rerun": ib.median(rerun[b]),
                                  "paired": ib.median([r / f for f, r in zip(first[b], rerun[b])])}
                         for b in binaries},
        }
        print(f"{n}/{f}: floor {ib.median(floor) * 1000:.1f} ms", flush=True)
        for b in binaries:
            fi, re_ = ib.median(first[b]), ib.median(rerun[b])
            print(f"  {b}: first {fi * 1000:.1f} ms ({fi / ib.median(floor):.2f}x floor), "
                  f"unchanged re-run {re_ * 1000:.1f} ms ({re_ / ib.median(floor):.2f}x floor, "
                  f"{re_ / fi:.2f}x first; paired {results[f'{n}/{f}']['binaries'][str(b)]['paired']:.2f}x)",
                  flush=True)
    write(results, args)


def write(results, args):
    lines = [
        "# First install against unchanged re-run",
        "",
        f"Made by `python3 bench/rerun_bench.py` ({args.rounds} rounds, medians, whole process wall-clock, "
        "binaries interleaved round by round; the floor is bench/floor). \"re-run / first\" divides the "
        "medians; \"paired\" is the median of each round's re-run divided by that round's first install, "
        "which the host's drift between rounds moves less.",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {os.cpu_count()} cores",
        "",
        "| secrets / files | binary | first install | × floor | unchanged re-run | × floor | re-run / first "
        "| re-run / first, paired |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for wl, r in results.items():
        fl = r["floor"]
        for b, t in r["binaries"].items():
            lines.append(f"| {wl} | `{Path(b).name if len(r['binaries']) == 1 else b}` | "
                         f"{t['first'] * 1000:.1f} ms | {t['first'] / fl:.2f}× | {t['rerun'] * 1000:.1f} ms | "
                         f"{t['rerun'] / fl:.2f}× | {t['rerun'] / t['first']:.2f}× | {t['paired']:.2f}× |")
        lines.append(f"| {wl} | floor | {fl * 1000:.1f} ms | 1.00× | | | | |")
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binaries", nargs="+", help="installer binaries to compare")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workload", action="append", help="only this workload (1000/10 or 20000/50); repeatable")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark mounts ramfs in a private mount namespace")
    if args.inside:
        inside(args)
        return
    sops = ib.ensure_tools()
    if not ib.FLOOR.exists():
        subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path",
                        str(ib.BENCH / "floor" / "Cargo.toml")], check=True)
    ib.generate(sops)
    for n, f in WORKLOADS:
        ensure_workload(sops, n, f)
    inner = ["unshare", "-m", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
             "--inside", "--rounds", str(args.rounds)]
    inner += [a for w in args.workload or [] for a in ("--workload", w)] + args.binaries
    sys.exit(subprocess.run(inner).returncode)


if __name__ == "__main__":
    main()
