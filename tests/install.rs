//! The installer end to end: the real binary installs manifests as root, in a private mount
//! namespace, on a real ramfs, with test users in a private `/etc/passwd` and `/etc/group`.
//!
//! Every test runs on a thread of its own that first calls `unshare(CLONE_NEWNS)`: what is mounted
//! there (bind mounts of our passwd and group files over /etc/passwd and /etc/group, a tmpfs over
//! /run so that /run/nixos is ours and nscd's socket is hidden, the ramfs the binary mounts) is seen
//! only by that thread and the processes it starts, and goes away with it. The manifest's
//! `secretsMountPoint` and `symlinkPath` point into a temporary directory.
//!
//! Without root, or where unshare is refused, a test prints a skip notice and passes; under CI
//! (`CI` set) it fails instead.
//!
//! Fixtures: tests/fixtures/install/ (made by its generate.sh with real sops 3.11). Every plaintext
//! value there contains the word PLAINTEXT, and every run of the binary checks that its stdout and
//! stderr do not.
//!
//! `SOPS_INSTALL_SECRETS_TEST_BIN=/path/to/binary` runs the tests against another binary (for
//! example sops-nix's Go installer, to compare behaviour).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::statvfs::FsFlags;
use serde_json::{Value, json};

/// Test users and groups, added to the private /etc/passwd and /etc/group.
const SECRET_TEST: u32 = 4001; // user `secret-test`, group `secret-test`
const ALICE: u32 = 4002; // user `alice`, group `alice`
const KEYS_GID: u32 = 4096; // group `keys`
const NOGROUP_GID: u32 = 65534; // group `nogroup`
const NOBODY: u32 = 65534;
/// Neither a user nor a group in the private files: numeric owners are applied as they are.
const UNNAMED_UID: u32 = 4005;
const UNNAMED_GID: u32 = 4006;

const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;
/// Contained in every plaintext value of the fixtures; must never appear in the binary's output.
const MARKER: &str = "PLAINTEXT";
const TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn s(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

/// Absolute path of an encrypted fixture (tests/fixtures/install/enc/NAME).
fn enc(name: &str) -> String {
    s(&fixtures().join("install/enc").join(name))
}

/// What real `sops -d [--extract]` printed (tests/fixtures/install/expected/NAME.out).
fn expected(name: &str) -> Vec<u8> {
    let p = fixtures().join("install/expected").join(format!("{name}.out"));
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn expected_str(name: &str) -> String {
    String::from_utf8(expected(name)).unwrap()
}

fn age_key_file() -> String {
    s(&fixtures().join("keys/age1.txt"))
}

fn binary() -> PathBuf {
    std::env::var_os("SOPS_INSTALL_SECRETS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sops-install-secrets")))
}

fn format_of(sops_file: &str) -> &'static str {
    match Path::new(sops_file).extension().and_then(|e| e.to_str()) {
        Some("json") => "json",
        Some("env") => "dotenv",
        Some("ini") => "ini",
        Some("bin") => "binary",
        _ => "yaml",
    }
}

fn placeholder(secret: &str) -> String {
    format!("<SOPS:placeholder-of-{secret}:PLACEHOLDER>")
}

/// Sets the manifest's templates and, as the module does when there are templates, a placeholder
/// for every secret.
fn with_templates(m: &mut Value, templates: Vec<Value>) {
    let placeholders: serde_json::Map<String, Value> = m["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap().to_owned();
            let p = placeholder(&name);
            (name, Value::String(p))
        })
        .collect();
    m["templates"] = Value::Array(templates);
    m["placeholderBySecretName"] = Value::Object(placeholders);
}

// ---------------------------------------------------------------------------------------------
// The isolated environment
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Setup {
    /// Whether the private /etc/group has a `keys` group (else only `nogroup`).
    keys_group: bool,
    /// Whether /run/nixos exists (it is where the activation lists go).
    run_nixos: bool,
}

const DEFAULT: Setup = Setup {
    keys_group: true,
    run_nixos: true,
};

fn isolated(test: impl FnOnce(&Env) + Send + 'static) {
    isolated_with(DEFAULT, test)
}

/// Runs `test` on a new thread in a private mount namespace (see the module docs).
fn isolated_with(setup: Setup, test: impl FnOnce(&Env) + Send + 'static) {
    let outcome = std::thread::spawn(move || -> Result<(), String> {
        let env = Env::new(setup)?;
        test(&env);
        Ok(())
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            if std::env::var_os("CI").is_some() {
                panic!("the installer tests need root and a private mount namespace: {why}");
            }
            eprintln!("SKIPPED: the installer tests need root and a private mount namespace: {why}");
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

struct Env {
    /// The temporary directory everything of the test lives in (canonical path).
    root: PathBuf,
    /// `secretsMountPoint` and `symlinkPath` of the default manifest.
    mount: PathBuf,
    link: PathBuf,
    /// HOME of the binary: an empty directory, so no identity of the developer is picked up.
    home: PathBuf,
    /// First on the binary's PATH: holds the fake `systemctl`, which appends its arguments as one
    /// line to `systemctl_log`.
    bin: PathBuf,
    systemctl_log: PathBuf,
    manifests: std::cell::Cell<usize>,
    // Dropped last, after `Drop for Env` has detached the mounts below it.
    _dir: tempfile::TempDir,
}

impl Env {
    fn new(setup: Setup) -> Result<Env, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root".into());
        }
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| format!("making / a private mount: {e}"))?;

        // From here on a failure is a failure of the test, not a reason to skip it.
        let base = std::env::temp_dir();
        // /run is replaced below; the temporary directory must not be in it.
        let base = if base.starts_with("/run") {
            PathBuf::from("/tmp")
        } else {
            base
        };
        let dir = tempfile::Builder::new()
            .prefix("sops-install-test.")
            .tempdir_in(&base)
            .unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        set_mode(&root, 0o755);

        let etc = root.join("etc-private");
        fs::create_dir(&etc).unwrap();
        let ours = ["secret-test", "alice", "keys", "nogroup"];
        let keep = |line: &&str| !ours.contains(&line.split(':').next().unwrap_or(""));
        let mut passwd: Vec<String> = fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .filter(keep)
            .map(str::to_owned)
            .collect();
        passwd.push(format!(
            "secret-test:x:{SECRET_TEST}:{SECRET_TEST}:sops test:/nonexistent:/bin/false"
        ));
        passwd.push(format!("alice:x:{ALICE}:{ALICE}:alice:/nonexistent:/bin/false"));
        let mut group: Vec<String> = fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .filter(keep)
            .map(str::to_owned)
            .collect();
        group.push(format!("secret-test:x:{SECRET_TEST}:"));
        group.push(format!("alice:x:{ALICE}:"));
        group.push(format!("nogroup:x:{NOGROUP_GID}:"));
        if setup.keys_group {
            group.push(format!("keys:x:{KEYS_GID}:"));
        }
        fs::write(etc.join("passwd"), passwd.join("\n") + "\n").unwrap();
        fs::write(etc.join("group"), group.join("\n") + "\n").unwrap();
        set_mode(&etc.join("passwd"), 0o644);
        set_mode(&etc.join("group"), 0o644);
        bind(&etc.join("passwd"), Path::new("/etc/passwd"));
        bind(&etc.join("group"), Path::new("/etc/group"));

        // A /run of our own: /run/nixos receives the activation lists, and nscd's socket
        // (/run/nscd, /var/run/nscd) is hidden so that user lookups read the files above.
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .expect("mount a tmpfs on /run");
        if setup.run_nixos {
            fs::create_dir("/run/nixos").unwrap();
            set_mode(Path::new("/run/nixos"), 0o755);
        }

        let bin = root.join("bin");
        fs::create_dir(&bin).unwrap();
        set_mode(&bin, 0o755);
        let systemctl_log = root.join("systemctl.log");
        let fake = bin.join("systemctl");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n",
                systemctl_log.display()
            ),
        )
        .unwrap();
        set_mode(&fake, 0o755);
        let home = root.join("home");
        fs::create_dir(&home).unwrap();
        set_mode(&home, 0o755);

        Ok(Env {
            mount: root.join("secrets.d"),
            link: root.join("secrets"),
            home,
            bin,
            systemctl_log,
            manifests: std::cell::Cell::new(0),
            root,
            _dir: dir,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    // --- manifests ----------------------------------------------------------------------------

    /// A secret as sops-nix's NixOS module writes it (default owner root, mode 0400, no units),
    /// from tests/fixtures/install/enc/SOPS_FILE.
    fn secret(&self, name: &str, sops_file: &str, key: &str) -> Value {
        self.secret_from(name, &enc(sops_file), key)
    }

    /// Same, with the sops file given by its path.
    fn secret_from(&self, name: &str, sops_path: &str, key: &str) -> Value {
        json!({
            "name": name,
            "key": key,
            "path": s(&self.link.join(name)),
            "owner": null,
            "uid": 0,
            "group": null,
            "gid": 0,
            "sopsFile": sops_path,
            "format": format_of(sops_path),
            "mode": "0400",
            "restartUnits": [],
            "reloadUnits": [],
            // Also written by the module; the installer ignores them.
            "sopsFileHash": "",
            "neededForUsers": false,
        })
    }

    /// A template as the module writes it: `file` holds the content too (the module writes the
    /// content to the store and always passes both).
    fn template(&self, name: &str, content: &str) -> Value {
        let file = self.root.join(format!("template-{}", name.replace('/', "_")));
        fs::write(&file, content).unwrap();
        set_mode(&file, 0o644);
        json!({
            "name": name,
            "content": content,
            "file": s(&file),
            "path": s(&self.link.join("rendered").join(name)),
            "mode": "0400",
            "owner": null,
            "uid": 0,
            "group": null,
            "gid": 0,
            "restartUnits": [],
            "reloadUnits": [],
        })
    }

    fn manifest(&self, secrets: Vec<Value>) -> Value {
        json!({
            "secrets": secrets,
            "templates": [],
            "placeholderBySecretName": {},
            "secretsMountPoint": s(&self.mount),
            "symlinkPath": s(&self.link),
            "keepGenerations": 1,
            "sshKeyPaths": [],
            "gnupgHome": null,
            "ageKeyFile": age_key_file(),
            "ageSshKeyPaths": [],
            "useTmpfs": false,
            "userMode": false,
            "logging": { "keyImport": false, "secretChanges": true },
        })
    }

    fn write_manifest(&self, m: &Value) -> PathBuf {
        self.write_manifest_text(&serde_json::to_string_pretty(m).unwrap())
    }

    fn write_manifest_text(&self, text: &str) -> PathBuf {
        let n = self.manifests.get() + 1;
        self.manifests.set(n);
        let dir = self.path("manifests");
        if !dir.exists() {
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, 0o755);
        }
        let p = dir.join(format!("manifest-{n}.json"));
        fs::write(&p, text).unwrap();
        set_mode(&p, 0o644);
        p
    }

    // --- running the binary -------------------------------------------------------------------

    /// The binary with a clean environment: PATH (fake systemctl first), an empty HOME, nothing
    /// from the developer's sops setup.
    fn command(&self, program: &Path, manifest: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    self.bin.display()
                ),
            )
            .env("HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .current_dir(&self.root)
            .args(args)
            .arg(manifest);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd
    }

    fn run_with(&self, m: &Value, args: &[&str], envs: &[(&str, &str)]) -> Run {
        execute(self.command(&binary(), &self.write_manifest(m), args, envs))
    }

    fn run(&self, m: &Value) -> Run {
        self.run_with(m, &[], &[])
    }

    #[track_caller]
    fn install(&self, m: &Value) -> Run {
        let run = self.run(m);
        run.assert_success();
        run
    }

    /// A copy of the binary that any user can run (the build directory may not be reachable).
    fn public_binary(&self) -> PathBuf {
        let dir = self.path("public-bin");
        let p = dir.join("sops-install-secrets");
        if !p.exists() {
            fs::create_dir_all(&dir).unwrap();
            set_mode(&dir, 0o755);
            fs::copy(binary(), &p).unwrap();
            set_mode(&p, 0o755);
        }
        p
    }

    /// A world-readable copy of tests/fixtures/install/enc/NAME.
    fn public_copy(&self, name: &str) -> String {
        self.public_copy_of(Path::new(&enc(name)))
    }

    /// A world-readable copy of a fixture file.
    fn public_copy_of(&self, source: &Path) -> String {
        let dir = self.path("public-sops");
        fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let p = dir.join(source.file_name().unwrap());
        fs::copy(source, &p).unwrap();
        set_mode(&p, 0o644);
        s(&p)
    }

    // --- looking at the result ----------------------------------------------------------------

    fn generation(&self, n: u64) -> PathBuf {
        self.mount.join(n.to_string())
    }

    #[track_caller]
    fn assert_live(&self, n: u64) {
        let target = fs::read_link(&self.link)
            .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", self.link.display()));
        assert_eq!(
            target,
            self.generation(n),
            "{} must point at generation {n}",
            self.link.display()
        );
    }

    /// The numbered generations in the mount point.
    fn generations(&self) -> Vec<u64> {
        let mut g: Vec<u64> = entries(&self.mount)
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        g.sort_unstable();
        g
    }

    /// Nothing but numbered generation directories in the mount point (no key file, no leftover).
    #[track_caller]
    fn assert_only_generations(&self) {
        for name in entries(&self.mount) {
            let p = self.mount.join(&name);
            assert!(
                name.parse::<u64>().is_ok() && meta(&p).is_dir(),
                "unexpected entry {} in the secrets mount point (all: {:?})",
                p.display(),
                entries(&self.mount)
            );
        }
    }

    fn systemctl_calls(&self) -> Vec<String> {
        lines_of(&self.systemctl_log)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Detach what is mounted below our directory (the binary's ramfs), deepest first, so that
        // the directory can be removed.
        let mut points: Vec<PathBuf> = mount_table()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with(&self.root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = umount2(&p, MntFlags::MNT_DETACH);
        }
    }
}

fn bind(source: &Path, target: &Path) {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind {} over {}: {e}", source.display(), target.display()));
}

/// (mount point, file system type) of this thread's mount namespace.
fn mount_table() -> Vec<(PathBuf, String)> {
    // thread-self: /proc/self would show the main thread's namespace.
    let text = fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((
                PathBuf::from(unescape_mountinfo(fields[4])),
                fields.get(sep + 1)?.to_string(),
            ))
        })
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File system types mounted exactly at `p`, oldest first.
fn mounts_at(p: &Path) -> Vec<String> {
    mount_table()
        .into_iter()
        .filter(|(m, _)| m == p)
        .map(|(_, t)| t)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn assert_success(&self) {
        assert!(
            self.status.success(),
            "the installer failed:\n{}",
            self.describe()
        );
    }

    /// Non-zero exit with a message on stderr.
    #[track_caller]
    fn assert_failure(&self) {
        assert!(
            !self.status.success(),
            "the installer should have refused:\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "refused without a message on stderr:\n{}",
            self.describe()
        );
    }

    #[track_caller]
    fn assert_stderr_names(&self, words: &[&str]) {
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr does not name {w:?}:\n{}",
                self.describe()
            );
        }
    }

    fn printed(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l.trim() == line)
    }

    #[track_caller]
    fn assert_printed(&self, line: &str) {
        assert!(
            self.printed(line),
            "stdout lacks the line {line:?}:\n{}",
            self.describe()
        );
    }
}

/// Runs `cmd` (stdin closed, output captured) with a time limit, and checks that no plaintext
/// reached its output.
fn execute(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A binary copied while another test thread forks can be briefly held
    // open for writing by that child (ETXTBSY until it execs): try again.
    let mut tries = 0;
    let mut child = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        }
    };
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the installer did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = Run {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    };
    assert!(
        !run.stdout.contains(MARKER),
        "plaintext on stdout:\n{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains(MARKER),
        "plaintext on stderr:\n{}",
        run.describe()
    );
    run
}

// ---------------------------------------------------------------------------------------------
// File system helpers
// ---------------------------------------------------------------------------------------------

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[track_caller]
fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Permission bits, uid and gid of `p` itself (not following a symlink).
#[track_caller]
fn assert_mode_owner(p: &Path, mode: u32, uid: u32, gid: u32) {
    let m = meta(p);
    assert_eq!(
        (format!("{:04o}", m.mode() & 0o7777), m.uid(), m.gid()),
        (format!("{mode:04o}"), uid, gid),
        "mode, uid and gid of {}",
        p.display()
    );
}

#[track_caller]
fn assert_dir(p: &Path, mode: u32, uid: u32, gid: u32) {
    assert!(meta(p).is_dir(), "{} is not a directory", p.display());
    assert_mode_owner(p, mode, uid, gid);
}

#[track_caller]
fn assert_file(p: &Path, mode: u32, uid: u32, gid: u32) {
    assert!(meta(p).is_file(), "{} is not a regular file", p.display());
    assert_mode_owner(p, mode, uid, gid);
}

/// `p` is a symlink to `target`, itself owned by uid:gid.
#[track_caller]
fn assert_symlink(p: &Path, target: &Path, uid: u32, gid: u32) {
    let m = meta(p);
    assert!(m.file_type().is_symlink(), "{} is not a symlink", p.display());
    assert_eq!(fs::read_link(p).unwrap(), target, "target of {}", p.display());
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "owner of the symlink {}",
        p.display()
    );
}

#[track_caller]
fn assert_content(p: &Path, want: &[u8]) {
    let got = fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(
        got == want,
        "content of {}:\n got: {:?}\nwant: {:?}",
        p.display(),
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want)
    );
}

/// Sorted names in a directory (empty if it does not exist).
/// The root-only record each generation keeps of its secrets' units and paths.
const STATE_FILE: &str = ".sops-install-secrets.json";

/// The secrets and directories of a generation: its entries without the record.
fn secret_entries(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().filter(|e| e != STATE_FILE).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Lines of a file, empty if it does not exist.
fn lines_of(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Lines of /run/nixos/NAME sorted (empty if absent): the units requested so far.
fn activation_list(name: &str) -> Vec<String> {
    let mut v = lines_of(&Path::new("/run/nixos").join(name));
    v.sort();
    v
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Everything under `roots` (not following symlinks): kind, mode, owner, symlink target, content,
/// and for files and symlinks the inode and mtime, so that a rewrite with the same bytes shows.
fn tree(roots: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(m) = fs::symlink_metadata(p) else {
            out.insert(p.to_path_buf(), "absent".into());
            return;
        };
        let common = format!("{:04o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid());
        let ft = m.file_type();
        let desc = if ft.is_dir() {
            format!("dir {common}")
        } else if ft.is_symlink() {
            format!(
                "symlink {common} ino {} -> {}",
                m.ino(),
                fs::read_link(p).unwrap().display()
            )
        } else if ft.is_file() {
            let content = fs::read(p).unwrap();
            format!(
                "file {common} ino {} mtime {}.{:09} {:?}",
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                String::from_utf8_lossy(&content)
            )
        } else {
            format!("other {common}")
        };
        out.insert(p.to_path_buf(), desc);
        if ft.is_dir() {
            for name in entries(p) {
                walk(&p.join(name), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    for r in roots {
        walk(r, &mut out);
    }
    out
}

fn statfs_magic(p: &Path) -> u64 {
    (nix::sys::statfs::statfs(p).unwrap().filesystem_type().0 as u64) & 0xffff_ffff
}

// ---------------------------------------------------------------------------------------------
// Shared scenarios
// ---------------------------------------------------------------------------------------------

/// db_password (restart db.service, reload db-reload.service) and api_token (restart
/// api.service, reload api-reload.service, linked from custom/api_token), both from app.yaml.
fn two_secrets(env: &Env, db_file: &str) -> Value {
    let mut db = env.secret("db_password", db_file, "app/db_password");
    db["restartUnits"] = json!(["db.service"]);
    db["reloadUnits"] = json!(["db-reload.service"]);
    db["owner"] = json!("secret-test");
    db["group"] = json!("secret-test");
    let mut api = env.secret("api_token", "app.yaml", "app/api_token");
    api["restartUnits"] = json!(["api.service"]);
    api["reloadUnits"] = json!(["api-reload.service"]);
    api["path"] = json!(s(&env.path("custom/api_token")));
    env.manifest(vec![db, api])
}

/// What a refused run must leave alone.
fn live_state(env: &Env) -> (BTreeMap<PathBuf, String>, Vec<Vec<String>>, Vec<String>) {
    let t = tree(&[env.mount.clone(), env.link.clone(), env.path("custom")]);
    let lists = ["activation-restart-list", "activation-reload-list"]
        .map(activation_list)
        .to_vec();
    (t, lists, env.systemctl_calls())
}

/// Installs the two-secret manifest (generation 1 live) and returns it.
fn install_baseline(env: &Env) -> Value {
    let good = two_secrets(env, "app.yaml");
    env.install(&good);
    env.assert_live(1);
    good
}

/// Runs `bad` against a live generation: it must fail, name `mentions` on stderr and leave the
/// live tree, the activation lists and systemd alone.
#[track_caller]
fn assert_refused(env: &Env, bad: &Value, mentions: &[&str]) -> Run {
    let before = live_state(env);
    let run = env.run(bad);
    run.assert_failure();
    run.assert_stderr_names(mentions);
    assert_eq!(
        live_state(env),
        before,
        "a refused run changed the live secrets:\n{}",
        run.describe()
    );
    run
}

// ---------------------------------------------------------------------------------------------
// Layout, owners, modes, contents
// ---------------------------------------------------------------------------------------------

#[test]
fn generation_files_and_dirs_get_the_manifests_owners_groups_and_modes() {
    isolated(|env| {
        let mut db = env.secret("db_password", "app.yaml", "app/db_password");
        db["owner"] = json!("secret-test");
        db["group"] = json!("secret-test");
        db["mode"] = json!("0440");
        let mut api = env.secret("api_token", "app.yaml", "app/api_token");
        api["owner"] = json!("alice");
        api["group"] = json!("keys");
        let mut key = env.secret("ssh_keys/private_key", "ssh_keys.yaml", "private_key");
        key["owner"] = json!("alice");
        key["group"] = json!("alice");
        key["mode"] = json!("0600");
        // Group-writable: a mode the usual umask 022 would spoil if it were relied on.
        let mut shared = env.secret("shared", "app.yaml", "multiline");
        shared["owner"] = json!("secret-test");
        shared["group"] = json!("keys");
        shared["mode"] = json!("0660");
        let mut rootfile = env.secret("root_only", "app.yaml", "nested/deep/value");
        rootfile["owner"] = json!("root");
        rootfile["group"] = json!("root");
        env.install(&env.manifest(vec![db, api, key, shared, rootfile]));

        assert_dir(&env.mount, 0o751, 0, KEYS_GID);
        env.assert_live(1);
        assert_eq!(
            entries(&env.mount),
            ["1"],
            "the mount point holds only the generation"
        );
        let g = env.generation(1);
        assert_dir(&g, 0o751, 0, KEYS_GID);
        assert_eq!(
            secret_entries(&g),
            ["api_token", "db_password", "root_only", "shared", "ssh_keys"]
        );
        // The generation's record of units and paths: root-only, no secrets in it.
        assert_file(&g.join(STATE_FILE), 0o400, 0, 0);
        assert!(
            !fs::read_to_string(g.join(STATE_FILE))
                .unwrap()
                .contains("PLAINTEXT")
        );
        assert_file(&g.join("db_password"), 0o440, SECRET_TEST, SECRET_TEST);
        assert_file(&g.join("api_token"), 0o400, ALICE, KEYS_GID);
        assert_dir(&g.join("ssh_keys"), 0o751, 0, KEYS_GID);
        assert_eq!(entries(&g.join("ssh_keys")), ["private_key"]);
        assert_file(&g.join("ssh_keys/private_key"), 0o600, ALICE, ALICE);
        assert_file(&g.join("shared"), 0o660, SECRET_TEST, KEYS_GID);
        assert_file(&g.join("root_only"), 0o400, 0, 0);
        // Through the live link too.
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn mount_point_and_generation_group_is_nogroup_without_a_keys_group() {
    isolated_with(
        Setup {
            keys_group: false,
            ..DEFAULT
        },
        |env| {
            let mut nested = env.secret("dir/db_password", "app.yaml", "app/db_password");
            nested["owner"] = json!("secret-test");
            nested["group"] = json!("secret-test");
            env.install(&env.manifest(vec![nested]));
            assert_dir(&env.mount, 0o751, 0, NOGROUP_GID);
            assert_dir(&env.generation(1), 0o751, 0, NOGROUP_GID);
            assert_dir(&env.generation(1).join("dir"), 0o751, 0, NOGROUP_GID);
            assert_file(
                &env.generation(1).join("dir/db_password"),
                0o400,
                SECRET_TEST,
                SECRET_TEST,
            );
        },
    );
}

#[test]
fn nested_secret_from_a_file_where_only_private_key_is_encrypted() {
    isolated(|env| {
        let private = env.secret("ssh_keys/private_key", "ssh_keys.yaml", "private_key");
        let mut public = env.secret("ssh_keys/public_key", "ssh_keys.yaml", "public_key");
        public["mode"] = json!("0444");
        env.install(&env.manifest(vec![private, public]));
        let dir = env.generation(1).join("ssh_keys");
        assert_dir(&dir, 0o751, 0, KEYS_GID);
        assert_eq!(entries(&dir), ["private_key", "public_key"]);
        assert_file(&dir.join("private_key"), 0o400, 0, 0);
        assert_file(&dir.join("public_key"), 0o444, 0, 0);
        assert_content(&dir.join("private_key"), &expected("ssh_keys.private_key"));
        assert_content(&dir.join("public_key"), &expected("ssh_keys.public_key"));
        assert_content(
            &env.link.join("ssh_keys/private_key"),
            &expected("ssh_keys.private_key"),
        );
    });
}

#[test]
fn numeric_uid_and_gid_are_applied_without_passwd_entries() {
    isolated(|env| {
        let mut db = env.secret("db_password", "app.yaml", "app/db_password");
        db["uid"] = json!(UNNAMED_UID);
        db["gid"] = json!(UNNAMED_GID);
        let mut nested = env.secret("numeric/api_token", "app.yaml", "app/api_token");
        nested["uid"] = json!(SECRET_TEST);
        nested["gid"] = json!(KEYS_GID);
        nested["mode"] = json!("0440");
        env.install(&env.manifest(vec![db, nested]));
        assert_file(
            &env.generation(1).join("db_password"),
            0o400,
            UNNAMED_UID,
            UNNAMED_GID,
        );
        assert_file(
            &env.generation(1).join("numeric/api_token"),
            0o440,
            SECRET_TEST,
            KEYS_GID,
        );
    });
}

#[test]
fn format_and_mode_default_to_yaml_and_0400() {
    isolated(|env| {
        let mut no_format = env.secret("no_format", "app.yaml", "app/db_password");
        no_format.as_object_mut().unwrap().remove("format");
        no_format["mode"] = json!("0440");
        let mut empty_format = env.secret("empty_format", "app.yaml", "app/api_token");
        empty_format["format"] = json!("");
        let mut no_mode = env.secret("no_mode", "app.yaml", "multiline");
        no_mode.as_object_mut().unwrap().remove("mode");
        env.install(&env.manifest(vec![no_format, empty_format, no_mode]));
        assert_file(&env.link.join("no_format"), 0o440, 0, 0);
        assert_content(&env.link.join("no_format"), &expected("app.db_password"));
        assert_content(&env.link.join("empty_format"), &expected("app.api_token"));
        assert_file(&env.link.join("no_mode"), 0o400, 0, 0);
        assert_content(&env.link.join("no_mode"), &expected("app.multiline"));
    });
}

#[test]
fn contents_are_byte_equal_to_what_sops_decrypt_prints() {
    isolated(|env| {
        let cases = [
            ("db_password", "app.yaml", "app/db_password", "app.db_password"),
            ("api_token", "app.yaml", "app/api_token", "app.api_token"),
            ("multiline", "app.yaml", "multiline", "app.multiline"),
            ("deep", "app.yaml", "nested/deep/value", "app.nested_deep_value"),
            ("whole_yaml", "app.yaml", "", "app.whole"),
            ("json_key", "app.json", "api/key", "app_json.api_key"),
            ("json_whole", "app.json", "", "app_json.whole"),
            // dotenv and binary secrets are always the whole file, whatever the key says (the
            // module's default key is the secret's name).
            ("dotenv", "app.env", "dotenv", "app_env.whole"),
            ("binary", "blob.bin", "binary", "blob_bin.whole"),
        ];
        let secrets = cases
            .iter()
            .map(|(name, file, key, _)| env.secret(name, file, key))
            .collect();
        env.install(&env.manifest(secrets));
        for (name, _, _, want) in cases {
            assert_content(&env.generation(1).join(name), &expected(want));
            assert_content(&env.link.join(name), &expected(want));
        }
    });
}

#[test]
fn ssh_host_key_is_an_identity_and_nothing_is_written_for_it() {
    isolated(|env| {
        let mut m = env.manifest(vec![
            env.secret("from_host_key", "host.yaml", "host_secret"),
            env.secret("from_age_key", "app.yaml", "app/db_password"),
        ]);
        m["ageSshKeyPaths"] = json!([s(&fixtures().join("keys/host_ed25519"))]);
        env.install(&m);
        assert_content(&env.link.join("from_host_key"), &expected("host.host_secret"));
        assert_content(&env.link.join("from_age_key"), &expected("app.db_password"));
        // sops-nix writes age-keys.txt into the mount point; we keep derived keys in memory.
        assert_eq!(entries(&env.mount), ["1"]);
        assert_eq!(
            secret_entries(&env.generation(1)),
            ["from_age_key", "from_host_key"]
        );

        // The SSH key alone.
        let mut m = env.manifest(vec![env.secret("from_host_key", "host.yaml", "host_secret")]);
        m["ageKeyFile"] = Value::Null;
        m["ageSshKeyPaths"] = json!([s(&fixtures().join("keys/host_ed25519"))]);
        env.install(&m);
        assert_content(&env.link.join("from_host_key"), &expected("host.host_secret"));
    });
}

#[test]
fn sops_age_key_file_from_the_environment_is_an_identity() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["ageKeyFile"] = Value::Null;
        env.run_with(&m, &[], &[("SOPS_AGE_KEY_FILE", &age_key_file())])
            .assert_success();
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

// ---------------------------------------------------------------------------------------------
// The mount
// ---------------------------------------------------------------------------------------------

#[test]
fn secrets_live_on_a_ramfs_mounted_nodev_nosuid_noexec() {
    isolated(|env| {
        env.install(&env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]));
        assert_eq!(mounts_at(&env.mount), ["ramfs"]);
        assert_eq!(
            statfs_magic(&env.mount),
            RAMFS_MAGIC,
            "statfs magic of {}",
            env.mount.display()
        );
        assert_eq!(statfs_magic(&env.generation(1).join("db_password")), RAMFS_MAGIC);
        let flags = nix::sys::statvfs::statvfs(&env.mount).unwrap().flags();
        for (flag, name) in [
            (FsFlags::ST_NODEV, "nodev"),
            (FsFlags::ST_NOSUID, "nosuid"),
            (FsFlags::ST_NOEXEC, "noexec"),
        ] {
            assert!(flags.contains(flag), "the secrets mount is not {name}");
        }
        // A second run reuses the mount instead of stacking another one on it.
        env.install(&env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]));
        assert_eq!(mounts_at(&env.mount), ["ramfs"]);
        env.assert_live(2);
    });
}

#[test]
fn use_tmpfs_mounts_a_tmpfs_nodev_nosuid_noexec_instead() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["useTmpfs"] = json!(true);
        env.install(&m);
        assert_eq!(mounts_at(&env.mount), ["tmpfs"]);
        assert_eq!(statfs_magic(&env.mount), TMPFS_MAGIC);
        let flags = nix::sys::statvfs::statvfs(&env.mount).unwrap().flags();
        assert!(flags.contains(FsFlags::ST_NODEV | FsFlags::ST_NOSUID | FsFlags::ST_NOEXEC));
        assert_dir(&env.mount, 0o751, 0, KEYS_GID);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn an_existing_ramfs_at_the_mount_point_is_used_not_mounted_over() {
    isolated(|env| {
        fs::create_dir(&env.mount).unwrap();
        mount(
            Some("none"),
            &env.mount,
            Some("ramfs"),
            MsFlags::empty(),
            Some("mode=0751"),
        )
        .unwrap();
        fs::write(env.mount.join("already-here"), "x").unwrap();
        env.install(&env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]));
        assert_eq!(
            mounts_at(&env.mount),
            ["ramfs"],
            "a second ramfs was mounted over the first"
        );
        assert!(
            env.mount.join("already-here").exists(),
            "the existing ramfs was hidden"
        );
        env.assert_live(1);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

// ---------------------------------------------------------------------------------------------
// Generations, changes, restarts
// ---------------------------------------------------------------------------------------------

#[test]
fn second_run_with_a_changed_secret_goes_live_as_generation_2_and_prunes_generation_1() {
    isolated(|env| {
        env.install(&two_secrets(env, "app.yaml"));
        env.assert_live(1);
        assert_eq!(
            activation_list("activation-restart-list"),
            Vec::<String>::new(),
            "first install"
        );
        assert_eq!(
            activation_list("activation-reload-list"),
            Vec::<String>::new(),
            "first install"
        );

        let run = env.install(&two_secrets(env, "app_v2.yaml"));
        env.assert_live(2);
        assert_eq!(
            env.generations(),
            [2],
            "keepGenerations = 1 keeps only the live generation"
        );
        env.assert_only_generations();
        assert_content(&env.link.join("db_password"), &expected("app_v2.db_password"));
        assert_content(&env.link.join("api_token"), &expected("app.api_token"));
        run.assert_printed("modifying secret: db_password");
        assert!(
            !run.stdout.contains("api_token"),
            "api_token did not change:\n{}",
            run.describe()
        );
        assert_eq!(activation_list("activation-restart-list"), ["db.service"]);
        assert_eq!(activation_list("activation-reload-list"), ["db-reload.service"]);
        assert_eq!(
            env.systemctl_calls(),
            Vec::<String>::new(),
            "systemctl is only for unit mode"
        );
    });
}

#[test]
fn keep_generations_0_keeps_every_generation() {
    isolated(|env| {
        let mut m1 = two_secrets(env, "app.yaml");
        m1["keepGenerations"] = json!(0);
        let mut m2 = two_secrets(env, "app_v2.yaml");
        m2["keepGenerations"] = json!(0);
        env.install(&m1);
        env.install(&m2);
        env.install(&m2);
        env.assert_live(3);
        assert_eq!(env.generations(), [1, 2, 3]);
        assert_content(
            &env.generation(1).join("db_password"),
            &expected("app.db_password"),
        );
        assert_content(
            &env.generation(2).join("db_password"),
            &expected("app_v2.db_password"),
        );
        assert_content(
            &env.generation(3).join("db_password"),
            &expected("app_v2.db_password"),
        );
    });
}

#[test]
fn keep_generations_2_keeps_the_two_newest() {
    isolated(|env| {
        let mut m = two_secrets(env, "app.yaml");
        m["keepGenerations"] = json!(2);
        env.install(&m);
        env.install(&m);
        assert_eq!(env.generations(), [1, 2]);
        env.install(&m);
        env.assert_live(3);
        assert_eq!(env.generations(), [2, 3]);
    });
}

#[test]
fn added_modified_and_removed_secrets_are_reported_and_only_new_changed_or_removed_ones_restart() {
    isolated(|env| {
        let unit = |mut v: Value, name: &str| {
            v["restartUnits"] = json!([format!("{name}.service")]);
            v["reloadUnits"] = json!([format!("{name}-reload.service")]);
            v
        };
        let m1 = env.manifest(vec![
            unit(env.secret("changing", "app.yaml", "app/db_password"), "changing"),
            unit(env.secret("same", "app.yaml", "app/api_token"), "same"),
            unit(env.secret("going", "app.yaml", "multiline"), "going"),
        ]);
        env.install(&m1);
        let m2 = env.manifest(vec![
            unit(
                env.secret("changing", "app_v2.yaml", "app/db_password"),
                "changing",
            ),
            unit(env.secret("same", "app.yaml", "app/api_token"), "same"),
            unit(env.secret("new_one", "app.yaml", "nested/deep/value"), "new_one"),
            unit(env.secret("new_two", "app.json", "api/key"), "new_two"),
        ]);
        let run = env.install(&m2);
        run.assert_printed("adding secrets: new_one, new_two");
        run.assert_printed("modifying secret: changing");
        run.assert_printed("removing secret: going");
        assert!(
            !run.stdout.contains("same"),
            "`same` did not change:\n{}",
            run.describe()
        );
        // Unlike sops-nix, the units of a removed secret restart too: their file is gone.
        assert_eq!(
            activation_list("activation-restart-list"),
            sorted(&[
                "changing.service",
                "going.service",
                "new_one.service",
                "new_two.service"
            ])
        );
        assert_eq!(
            activation_list("activation-reload-list"),
            sorted(&[
                "changing-reload.service",
                "going-reload.service",
                "new_one-reload.service",
                "new_two-reload.service"
            ])
        );
        assert!(
            !env.link.join("going").exists(),
            "a removed secret is not in the new generation"
        );
    });
}

#[test]
fn changes_are_not_printed_without_logging_secret_changes_but_units_are_still_requested() {
    isolated(|env| {
        let mut m1 = two_secrets(env, "app.yaml");
        m1["logging"]["secretChanges"] = json!(false);
        let mut m2 = two_secrets(env, "app_v2.yaml");
        m2["logging"]["secretChanges"] = json!(false);
        env.install(&m1);
        let run = env.install(&m2);
        assert!(!run.stdout.contains("modifying"), "{}", run.describe());
        assert_eq!(activation_list("activation-restart-list"), ["db.service"]);
    });
}

#[test]
fn restarts_go_through_systemctl_in_unit_mode() {
    isolated(|env| {
        let via = [("SOPS_RESTART_UNITS_VIA_SYSTEMCTL", "1")];
        let mut m1 = two_secrets(env, "app.yaml");
        m1["secrets"][0]["restartUnits"] = json!(["db.service", "db-worker.service"]);
        let mut m2 = two_secrets(env, "app_v2.yaml");
        m2["secrets"][0]["restartUnits"] = json!(["db.service", "db-worker.service"]);

        env.run_with(&m1, &[], &via).assert_success();
        assert_eq!(
            env.systemctl_calls(),
            Vec::<String>::new(),
            "nothing to restart on first install"
        );

        env.run_with(&m2, &[], &via).assert_success();
        env.assert_live(2);
        let mut calls = env.systemctl_calls();
        calls.sort();
        assert_eq!(
            calls,
            sorted(&[
                "--no-block try-restart db.service db-worker.service",
                "--no-block try-reload-or-restart db-reload.service",
            ])
        );
        assert_eq!(activation_list("activation-restart-list"), Vec::<String>::new());
        assert_eq!(activation_list("activation-reload-list"), Vec::<String>::new());
    });
}

#[test]
fn activation_lists_are_skipped_when_run_nixos_does_not_exist() {
    isolated_with(
        Setup {
            run_nixos: false,
            ..DEFAULT
        },
        |env| {
            env.install(&two_secrets(env, "app.yaml"));
            env.install(&two_secrets(env, "app_v2.yaml"));
            env.assert_live(2);
            assert!(
                !Path::new("/run/nixos").exists(),
                "the installer created /run/nixos"
            );
        },
    );
}

#[test]
fn dry_activation_changes_nothing_and_writes_only_the_dry_activation_lists() {
    isolated(|env| {
        env.install(&two_secrets(env, "app.yaml"));
        let before = tree(&[env.mount.clone(), env.link.clone(), env.path("custom")]);

        let mut m2 = two_secrets(env, "app_v2.yaml");
        let mut new = env.secret("new_secret", "app.yaml", "multiline");
        new["path"] = json!(s(&env.path("custom/new_secret")));
        new["restartUnits"] = json!(["new.service"]);
        // Owners are not looked up when dry: users of the new configuration may not exist yet.
        new["owner"] = json!("user-created-by-this-activation");
        m2["secrets"].as_array_mut().unwrap().push(new);
        let run = env.run_with(&m2, &[], &[("NIXOS_ACTION", "dry-activate")]);
        run.assert_success();
        run.assert_printed("would modify secret: db_password");
        run.assert_printed("would add secret: new_secret");

        assert_eq!(
            tree(&[env.mount.clone(), env.link.clone(), env.path("custom")]),
            before
        );
        assert_eq!(mounts_at(&env.mount), ["ramfs"]);
        assert_eq!(
            activation_list("dry-activation-restart-list"),
            sorted(&["db.service", "new.service"])
        );
        assert_eq!(
            activation_list("dry-activation-reload-list"),
            ["db-reload.service"]
        );
        assert_eq!(activation_list("activation-restart-list"), Vec::<String>::new());
        assert_eq!(activation_list("activation-reload-list"), Vec::<String>::new());
        assert_eq!(env.systemctl_calls(), Vec::<String>::new());
    });
}

// ---------------------------------------------------------------------------------------------
// Templates and symlinks
// ---------------------------------------------------------------------------------------------

#[test]
fn templates_are_rendered_under_rendered_with_every_placeholder_replaced() {
    isolated(|env| {
        let db = env.secret("db_password", "app.yaml", "app/db_password");
        let api = env.secret("api_token", "app.yaml", "app/api_token");
        let (pdb, papi) = (placeholder("db_password"), placeholder("api_token"));

        let mut conf = env.template(
            "app.conf",
            &format!("password = {pdb}\ntoken={papi}\nagain: {pdb}\n"),
        );
        conf["owner"] = json!("secret-test");
        conf["group"] = json!("keys");
        conf["mode"] = json!("0440");
        // Only `file`, as when sops.templates.<name>.file is set.
        let mut from_file = env.template("nested/file.env", &format!("TOKEN={papi}\n"));
        from_file["content"] = json!("");
        let mut linked = env.template("linked.conf", &format!("[{pdb}]"));
        linked["owner"] = json!("alice");
        linked["group"] = json!("alice");
        linked["path"] = json!(s(&env.path("custom/etc/linked.conf")));

        let mut m = env.manifest(vec![db, api]);
        m["templates"] = json!([conf, from_file, linked]);
        m["placeholderBySecretName"] = json!({ "db_password": pdb, "api_token": papi });
        env.install(&m);

        let (vdb, vapi) = (expected_str("app.db_password"), expected_str("app.api_token"));
        let rendered = env.generation(1).join("rendered");
        assert_dir(&rendered, 0o751, 0, KEYS_GID);
        assert_eq!(entries(&rendered), ["app.conf", "linked.conf", "nested"]);
        assert_file(&rendered.join("app.conf"), 0o440, SECRET_TEST, KEYS_GID);
        assert_content(
            &rendered.join("app.conf"),
            format!("password = {vdb}\ntoken={vapi}\nagain: {vdb}\n").as_bytes(),
        );
        assert_dir(&rendered.join("nested"), 0o751, 0, KEYS_GID);
        assert_file(&rendered.join("nested/file.env"), 0o400, 0, 0);
        assert_content(
            &rendered.join("nested/file.env"),
            format!("TOKEN={vapi}\n").as_bytes(),
        );
        assert_file(&rendered.join("linked.conf"), 0o400, ALICE, ALICE);
        assert_content(
            &env.link.join("rendered/app.conf"),
            format!("password = {vdb}\ntoken={vapi}\nagain: {vdb}\n").as_bytes(),
        );

        let custom = env.path("custom/etc/linked.conf");
        assert_symlink(&custom, &env.link.join("rendered/linked.conf"), ALICE, ALICE);
        assert_content(&custom, format!("[{vdb}]").as_bytes());
        // Secrets are unaffected by rendering.
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn a_changed_secret_rerenders_its_template_and_requests_the_templates_units() {
    isolated(|env| {
        let manifest = |db_file: &str| {
            let mut m = env.manifest(vec![
                env.secret("db_password", db_file, "app/db_password"),
                env.secret("api_token", "app.yaml", "app/api_token"),
            ]);
            let mut t = env.template("app.conf", &format!("pw={}\n", placeholder("db_password")));
            t["restartUnits"] = json!(["app.service"]);
            t["reloadUnits"] = json!(["app-reload.service"]);
            let mut other = env.template("other.conf", &format!("tok={}\n", placeholder("api_token")));
            other["restartUnits"] = json!(["other.service"]);
            with_templates(&mut m, vec![t, other]);
            m
        };
        env.install(&manifest("app.yaml"));
        let run = env.install(&manifest("app_v2.yaml"));
        run.assert_printed("modifying secret: db_password");
        run.assert_printed("modifying rendered secret: app.conf");
        assert!(!run.stdout.contains("other.conf"), "{}", run.describe());
        assert_content(
            &env.link.join("rendered/app.conf"),
            format!("pw={}\n", expected_str("app_v2.db_password")).as_bytes(),
        );
        assert_eq!(activation_list("activation-restart-list"), ["app.service"]);
        assert_eq!(activation_list("activation-reload-list"), ["app-reload.service"]);
    });
}

#[test]
fn a_custom_path_becomes_a_symlink_into_the_live_generation_owned_by_the_secrets_owner() {
    isolated(|env| {
        let mut token = env.secret("api_token", "app.yaml", "app/api_token");
        token["owner"] = json!("alice");
        token["group"] = json!("keys");
        token["path"] = json!(s(&env.path("custom/etc/myapp/token")));
        let mut nested = env.secret("deep/db_password", "app.yaml", "app/db_password");
        nested["uid"] = json!(UNNAMED_UID);
        nested["gid"] = json!(UNNAMED_GID);
        nested["path"] = json!(s(&env.path("custom/db_password")));
        let m = env.manifest(vec![token, nested]);
        env.install(&m);

        let link = env.path("custom/etc/myapp/token");
        assert_symlink(&link, &env.link.join("api_token"), ALICE, KEYS_GID);
        assert_content(&link, &expected("app.api_token"));
        let link2 = env.path("custom/db_password");
        assert_symlink(
            &link2,
            &env.link.join("deep/db_password"),
            UNNAMED_UID,
            UNNAMED_GID,
        );
        assert_content(&link2, &expected("app.db_password"));
        // A secret at its default path gets no other link: its path is in the generation.
        assert!(meta(&env.generation(1).join("api_token")).is_file());

        // Still right after the next generation.
        env.install(&m);
        env.assert_live(2);
        assert_symlink(&link, &env.link.join("api_token"), ALICE, KEYS_GID);
        assert_content(&link, &expected("app.api_token"));
    });
}

#[test]
fn a_symlink_planted_in_a_custom_paths_parent_is_not_followed() {
    isolated(|env| {
        // alice owns her home and plants .config -> a root-owned directory elsewhere.
        let home = env.path("home-alice");
        fs::create_dir(&home).unwrap();
        set_mode(&home, 0o755);
        chown(&home, Some(ALICE), Some(ALICE)).unwrap();
        let outside = env.path("outside");
        fs::create_dir(&outside).unwrap();
        set_mode(&outside, 0o755);
        symlink(&outside, home.join(".config")).unwrap();
        lchown(home.join(".config"), Some(ALICE), Some(ALICE)).unwrap();

        let mut token = env.secret("token", "app.yaml", "app/api_token");
        token["owner"] = json!("alice");
        token["group"] = json!("alice");
        token["path"] = json!(s(&home.join(".config/app/token")));
        let mut direct = env.secret("direct", "app.yaml", "app/db_password");
        direct["owner"] = json!("alice");
        direct["path"] = json!(s(&home.join(".config/direct")));
        let run = env.run(&env.manifest(vec![token, direct]));

        assert_eq!(
            entries(&outside),
            Vec::<String>::new(),
            "the planted symlink was followed:\n{}",
            run.describe()
        );
        assert!(
            run.stderr.contains("token") || run.stderr.contains(".config"),
            "neither a failure nor a warning names the refused path:\n{}",
            run.describe()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Refused manifests and sops files: the live generation stays as it was
// ---------------------------------------------------------------------------------------------

#[test]
fn names_that_would_escape_the_generation_are_refused() {
    isolated(|env| {
        let good = install_baseline(env);
        let absolute = s(&env.path("abs-escape"));
        for name in ["../escape", absolute.as_str(), "ssh_keys/../../escape", ".."] {
            let mut bad = good.clone();
            bad["secrets"]
                .as_array_mut()
                .unwrap()
                .push(env.secret(name, "app.yaml", "app/db_password"));
            assert_refused(env, &bad, &[name]);
            assert!(!env.mount.join("escape").exists());
            assert!(!env.path("escape").exists());
            assert!(!env.path("abs-escape").exists());
        }
        // Template names too (they live under rendered/).
        for name in ["../escape", "../../escape", absolute.as_str()] {
            let mut bad = good.clone();
            with_templates(&mut bad, vec![env.template(name, "static")]);
            assert_refused(env, &bad, &[name]);
            assert!(!env.mount.join("escape").exists());
            assert!(!env.path("abs-escape").exists());
        }
    });
}

#[test]
fn names_with_empty_or_dot_components_or_nul_are_refused() {
    isolated(|env| {
        let good = install_baseline(env);
        for name in ["", ".", "a//b", "./a", "a/./b", "a/", "a\0b"] {
            let mut bad = good.clone();
            bad["secrets"]
                .as_array_mut()
                .unwrap()
                .push(env.secret(name, "app.yaml", "app/db_password"));
            let mention: &[&str] = if name.is_empty() || name.contains('\0') {
                &[]
            } else {
                &[name]
            };
            assert_refused(env, &bad, mention);
        }
    });
}

#[test]
fn malformed_manifest_json_is_refused() {
    isolated(|env| {
        install_baseline(env);
        // Truncated, empty, an array instead of an object (serde would happily read a struct from
        // `[]`), a field of the wrong type.
        for text in ["{\"secrets\": [", "", "[]", "{\"secrets\": {}}"] {
            let before = live_state(env);
            let manifest = env.write_manifest_text(text);
            let run = execute(env.command(&binary(), &manifest, &[], &[]));
            run.assert_failure();
            assert_eq!(live_state(env), before, "manifest {text:?}");
        }
        // A manifest that does not exist.
        let run = execute(env.command(&binary(), &env.path("no-such-manifest.json"), &[], &[]));
        run.assert_failure();
        run.assert_stderr_names(&["no-such-manifest.json"]);
    });
}

#[test]
fn a_mode_that_is_not_octal_is_refused() {
    isolated(|env| {
        let good = install_baseline(env);
        for mode in ["0948", "rw-r-----", "", "0x1ff"] {
            let mut bad = good.clone();
            bad["secrets"][1]["mode"] = json!(mode);
            assert_refused(env, &bad, &["api_token"]);
        }
        let mut bad = good.clone();
        let mut t = env.template("bad-mode.conf", "static");
        t["mode"] = json!("9");
        with_templates(&mut bad, vec![t]);
        assert_refused(env, &bad, &["bad-mode.conf"]);
    });
}

#[test]
fn an_unknown_format_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["secrets"][1]["format"] = json!("toml");
        assert_refused(env, &bad, &["api_token"]);
    });
}

#[test]
fn duplicate_secret_names_are_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["secrets"]
            .as_array_mut()
            .unwrap()
            .push(env.secret("db_password", "app.yaml", "app/api_token"));
        assert_refused(env, &bad, &["db_password"]);
    });
}

#[test]
fn a_template_with_neither_content_nor_file_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        let mut t = env.template("empty.conf", "");
        t["file"] = json!("");
        with_templates(&mut bad, vec![t]);
        assert_refused(env, &bad, &["empty.conf"]);
    });
}

#[test]
fn a_missing_placeholder_is_refused_when_there_are_templates() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["templates"] = json!([env.template("app.conf", &format!("pw={}", placeholder("db_password")))]);
        bad["placeholderBySecretName"] = json!({ "db_password": placeholder("db_password") });
        assert_refused(env, &bad, &["api_token"]);
    });
}

#[test]
fn a_missing_sops_file_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        let missing = s(&env.path("no-such-file.yaml"));
        bad["secrets"]
            .as_array_mut()
            .unwrap()
            .push(env.secret_from("ghost", &missing, "app/db_password"));
        assert_refused(env, &bad, &["ghost", "no-such-file.yaml"]);
    });
}

#[test]
fn a_tampered_sops_file_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["secrets"].as_array_mut().unwrap().push(env.secret(
            "tampered_secret",
            "tampered.yaml",
            "app/db_password",
        ));
        assert_refused(env, &bad, &["tampered_secret", "tampered.yaml"]);
    });
}

#[test]
fn a_sops_file_without_a_matching_identity_is_refused() {
    isolated(|env| {
        let good = install_baseline(env);
        // Encrypted only to another age key.
        let mut bad = good.clone();
        bad["secrets"]
            .as_array_mut()
            .unwrap()
            .push(env.secret("foreign", "other_key.yaml", "other"));
        assert_refused(env, &bad, &["foreign", "other_key.yaml"]);
        // No identity at all.
        let mut bad = good.clone();
        bad["ageKeyFile"] = Value::Null;
        assert_refused(env, &bad, &["db_password", "app.yaml"]);
        // An SSH key that is not a recipient.
        let mut bad = good.clone();
        bad["ageKeyFile"] = Value::Null;
        bad["ageSshKeyPaths"] = json!([s(&fixtures().join("keys/host_ed25519"))]);
        assert_refused(env, &bad, &["db_password", "app.yaml"]);
    });
}

#[test]
fn an_unknown_owner_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["secrets"][1]["owner"] = json!("no-such-user");
        assert_refused(env, &bad, &["api_token", "no-such-user"]);
    });
}

#[test]
fn an_unknown_group_is_refused() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        bad["secrets"][1]["group"] = json!("no-such-group");
        assert_refused(env, &bad, &["api_token", "no-such-group"]);
    });
}

#[test]
fn a_key_path_that_does_not_exist_is_refused() {
    isolated(|env| {
        let good = install_baseline(env);
        for key in ["app/no_such_key", "no_such_top/x", "app/db_password/deeper"] {
            let mut bad = good.clone();
            bad["secrets"][1]["key"] = json!(key);
            assert_refused(env, &bad, &["api_token"]);
        }
    });
}

#[test]
fn every_manifest_problem_is_reported_not_only_the_first() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        let secrets = bad["secrets"].as_array_mut().unwrap();
        let mut s1 = env.secret("bad_mode", "app.yaml", "app/db_password");
        s1["mode"] = json!("0948");
        let mut s2 = env.secret("bad_format", "app.yaml", "app/db_password");
        s2["format"] = json!("toml");
        let mut s3 = env.secret("bad_owner", "app.yaml", "app/db_password");
        s3["owner"] = json!("no-such-user");
        let mut s4 = env.secret("bad_group", "app.yaml", "app/db_password");
        s4["group"] = json!("no-such-group");
        let s5 = env.secret("../bad_name", "app.yaml", "app/db_password");
        secrets.extend([s1, s2, s3, s4, s5]);
        assert_refused(
            env,
            &bad,
            &["bad_mode", "bad_format", "bad_owner", "bad_group", "../bad_name"],
        );
    });
}

#[test]
fn every_decryption_problem_is_reported_not_only_the_first() {
    isolated(|env| {
        let mut bad = install_baseline(env);
        let missing = s(&env.path("no-such-file.yaml"));
        bad["secrets"].as_array_mut().unwrap().extend([
            env.secret("missing_key", "app.yaml", "app/no_such_key"),
            env.secret("tampered_secret", "tampered.yaml", "app/db_password"),
            env.secret_from("missing_file", &missing, "app/db_password"),
            env.secret("foreign", "other_key.yaml", "other"),
        ]);
        assert_refused(
            env,
            &bad,
            &[
                "missing_key",
                "tampered_secret",
                "tampered.yaml",
                "missing_file",
                "no-such-file.yaml",
                "foreign",
                "other_key.yaml",
            ],
        );
    });
}

// ---------------------------------------------------------------------------------------------
// -ignore-passwd, secrets for users, user mode
// ---------------------------------------------------------------------------------------------

#[test]
fn ignore_passwd_makes_everything_root_owned() {
    isolated(|env| {
        let mut db = env.secret("db_password", "app.yaml", "app/db_password");
        db["owner"] = json!("secret-test");
        db["group"] = json!("keys");
        db["mode"] = json!("0440");
        let mut nested = env.secret("dir/api_token", "app.yaml", "app/api_token");
        nested["uid"] = json!(UNNAMED_UID);
        nested["gid"] = json!(UNNAMED_GID);
        nested["path"] = json!(s(&env.path("custom/api_token")));
        // Not looked up at all: users may not exist yet.
        let mut unknown = env.secret("unknown_owner", "app.yaml", "multiline");
        unknown["owner"] = json!("no-such-user");
        unknown["group"] = json!("no-such-group");
        let mut m = env.manifest(vec![db, nested, unknown]);
        let mut t = env.template("app.conf", &format!("pw={}", placeholder("db_password")));
        t["owner"] = json!("alice");
        t["group"] = json!("alice");
        with_templates(&mut m, vec![t]);
        env.run_with(&m, &["-ignore-passwd"], &[]).assert_success();

        let g = env.generation(1);
        assert_dir(&env.mount, 0o751, 0, 0);
        assert_dir(&g, 0o751, 0, 0);
        assert_dir(&g.join("dir"), 0o751, 0, 0);
        assert_dir(&g.join("rendered"), 0o751, 0, 0);
        assert_file(&g.join("db_password"), 0o440, 0, 0);
        assert_file(&g.join("dir/api_token"), 0o400, 0, 0);
        assert_file(&g.join("unknown_owner"), 0o400, 0, 0);
        assert_file(&g.join("rendered/app.conf"), 0o400, 0, 0);
        assert_symlink(
            &env.path("custom/api_token"),
            &env.link.join("dir/api_token"),
            0,
            0,
        );
        assert_content(&g.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn needed_for_users_manifest_installs_beside_the_regular_one() {
    isolated(|env| {
        // The regular /run/secrets first, then /run/secrets-for-users as sops-nix's
        // secrets-for-users module runs it: its own mount and link, -ignore-passwd.
        env.install(&two_secrets(env, "app.yaml"));
        let mount = env.path("secrets-for-users.d");
        let link = env.path("secrets-for-users");
        let mut pw = env.secret("alice-password", "app.yaml", "app/db_password");
        pw["neededForUsers"] = json!(true);
        pw["path"] = json!(s(&link.join("alice-password")));
        let mut m = env.manifest(vec![pw]);
        m["secretsMountPoint"] = json!(s(&mount));
        m["symlinkPath"] = json!(s(&link));
        env.run_with(&m, &["-ignore-passwd"], &[]).assert_success();

        assert_eq!(mounts_at(&mount), ["ramfs"]);
        assert_eq!(statfs_magic(&mount), RAMFS_MAGIC);
        assert_eq!(fs::read_link(&link).unwrap(), mount.join("1"));
        assert_dir(&mount.join("1"), 0o751, 0, 0);
        assert_file(&mount.join("1/alice-password"), 0o400, 0, 0);
        assert_content(&link.join("alice-password"), &expected("app.db_password"));
        // The regular secrets are untouched.
        env.assert_live(1);
        assert_eq!(mounts_at(&env.mount), ["ramfs"]);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
        assert_eq!(entries(&env.mount), ["1"]);
    });
}

#[test]
fn user_mode_installs_under_xdg_runtime_dir_without_a_mount_owned_by_the_invoking_user() {
    isolated(|env| {
        let runtime = env.path("xdg-runtime");
        fs::create_dir(&runtime).unwrap();
        set_mode(&runtime, 0o700);
        chown(&runtime, Some(SECRET_TEST), Some(SECRET_TEST)).unwrap();
        let keys = env.path("user-keys");
        fs::create_dir(&keys).unwrap();
        set_mode(&keys, 0o755);
        fs::copy(age_key_file(), keys.join("age.txt")).unwrap();
        set_mode(&keys.join("age.txt"), 0o600);
        chown(keys.join("age.txt"), Some(SECRET_TEST), Some(SECRET_TEST)).unwrap();
        let sops_file = env.public_copy("app.yaml");

        // The shape home-manager's module writes: no owners, no units.
        let m = json!({
            "secrets": [
                { "name": "db_password", "key": "app/db_password", "path": "%r/secrets/db_password",
                  "format": "yaml", "mode": "0400", "sopsFile": sops_file },
                { "name": "tokens/api", "key": "app/api_token", "path": "%r/custom/api_token",
                  "format": "yaml", "mode": "0440", "sopsFile": sops_file },
            ],
            "templates": [],
            "secretsMountPoint": "%r/secrets.d",
            "symlinkPath": "%r/secrets",
            "keepGenerations": 1,
            "gnupgHome": null,
            "sshKeyPaths": [],
            "ageKeyFile": s(&keys.join("age.txt")),
            "ageSshKeyPaths": [],
            "placeholderBySecretName": {},
            "userMode": true,
            "logging": { "keyImport": false, "secretChanges": false },
        });
        let mut cmd = env.command(
            &env.public_binary(),
            &env.write_manifest(&m),
            &["-ignore-passwd"],
            &[],
        );
        cmd.env("XDG_RUNTIME_DIR", &runtime)
            .uid(SECRET_TEST)
            .gid(SECRET_TEST);
        execute(cmd).assert_success();

        let mount = runtime.join("secrets.d");
        let link = runtime.join("secrets");
        assert!(meta(&mount).is_dir());
        assert_eq!(
            mounts_at(&mount),
            Vec::<String>::new(),
            "user mode mounts nothing"
        );
        assert_eq!(fs::read_link(&link).unwrap(), mount.join("1"));
        let g = mount.join("1");
        assert_eq!(meta(&g).uid(), SECRET_TEST);
        assert_eq!(meta(&g.join("tokens")).uid(), SECRET_TEST);
        assert_file(&g.join("db_password"), 0o400, SECRET_TEST, SECRET_TEST);
        assert_file(&g.join("tokens/api"), 0o440, SECRET_TEST, SECRET_TEST);
        assert_content(&link.join("db_password"), &expected("app.db_password"));
        let custom = runtime.join("custom/api_token");
        assert!(meta(&custom).file_type().is_symlink());
        assert_eq!(fs::read_link(&custom).unwrap(), link.join("tokens/api"));
        assert_content(&custom, &expected("app.api_token"));
        assert!(!env.path("%r").exists(), "%r was taken literally");
    });
}

// ---------------------------------------------------------------------------------------------
// Check modes (what the module runs at build time: no root, no keys, no users)
// ---------------------------------------------------------------------------------------------

/// Runs the world-runnable binary as nobody with the given flag.
fn check_as_nobody(env: &Env, m: &Value, flag: &str) -> Run {
    let mut cmd = env.command(&env.public_binary(), &env.write_manifest(m), &[flag], &[]);
    cmd.uid(NOBODY).gid(NOBODY);
    execute(cmd)
}

#[test]
fn check_mode_manifest_validates_without_root_keys_users_or_sops_files() {
    isolated(|env| {
        let mut a = env.secret("db_password", "app.yaml", "app/db_password");
        // Users of the target system do not exist where the manifest is checked.
        a["owner"] = json!("user-of-the-target-system");
        a["group"] = json!("group-of-the-target-system");
        // Key paths are not looked at, nor are the sops files (validateSopsFiles = false).
        let b = env.secret("not_checked", "app.yaml", "no/such/key");
        let c = env.secret_from("not_read", &s(&env.path("absent.yaml")), "x");
        let mut m = env.manifest(vec![a, b, c]);
        m["ageKeyFile"] = Value::Null;
        for flag in ["-check-mode=manifest", "--check-mode=manifest"] {
            check_as_nobody(env, &m, flag).assert_success();
        }
        assert!(!env.mount.exists(), "check mode created the mount point");
        assert!(!env.link.exists(), "check mode created the symlink");
        assert_eq!(mounts_at(&env.mount), Vec::<String>::new());

        // Invalid manifests fail the check.
        let bad_cases: Vec<(Value, &str)> = {
            let mut mode = m.clone();
            mode["secrets"][0]["mode"] = json!("0948");
            let mut format = m.clone();
            format["secrets"][0]["format"] = json!("toml");
            let mut dup = m.clone();
            dup["secrets"]
                .as_array_mut()
                .unwrap()
                .push(env.secret("db_password", "app.yaml", "x"));
            let mut name = m.clone();
            name["secrets"]
                .as_array_mut()
                .unwrap()
                .push(env.secret("../escape", "app.yaml", "x"));
            let mut template = m.clone();
            let mut t = env.template("t.conf", "");
            t["file"] = json!("");
            with_templates(&mut template, vec![t]);
            vec![
                (mode, "db_password"),
                (format, "db_password"),
                (dup, "db_password"),
                (name, "../escape"),
                (template, "t.conf"),
            ]
        };
        for (bad, mention) in bad_cases {
            let run = check_as_nobody(env, &bad, "-check-mode=manifest");
            run.assert_failure();
            run.assert_stderr_names(&[mention]);
        }
        assert!(!env.mount.exists());
    });
}

#[test]
fn check_mode_sopsfile_checks_key_paths_and_formats_without_decrypting() {
    isolated(|env| {
        let app = env.public_copy("app.yaml");
        let foreign = env.public_copy("other_key.yaml");
        let secrets = vec![
            env.secret_from("db_password", &app, "app/db_password"),
            env.secret_from("deep", &app, "nested/deep/value"),
            env.secret_from("whole", &app, ""),
            env.secret_from("private_key", &env.public_copy("ssh_keys.yaml"), "private_key"),
            env.secret_from("json_key", &env.public_copy("app.json"), "api/key"),
            env.secret_from("dotenv", &env.public_copy("app.env"), "dotenv"),
            env.secret_from("binary", &env.public_copy("blob.bin"), "binary"),
            // Nobody here can decrypt this one; the check must not need to.
            env.secret_from("foreign", &foreign, "other"),
        ];
        let mut m = env.manifest(secrets);
        m["ageKeyFile"] = Value::Null;
        check_as_nobody(env, &m, "-check-mode=sopsfile").assert_success();
        check_as_nobody(env, &m, "--check-mode=sopsfile").assert_success();
        assert!(
            !env.mount.exists() && !env.link.exists(),
            "check mode touched the secrets"
        );

        // A key path that is not in the file: fine for the manifest check, not for this one.
        let mut missing_key = m.clone();
        missing_key["secrets"][1]["key"] = json!("nested/deep/nope");
        check_as_nobody(env, &missing_key, "-check-mode=manifest").assert_success();
        let run = check_as_nobody(env, &missing_key, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["deep", "app.yaml"]);

        // Two secrets that disagree on the format of one file.
        let mut formats = m.clone();
        formats["secrets"][1]["format"] = json!("json");
        let run = check_as_nobody(env, &formats, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["deep", "app.yaml"]);

        // A sops file that does not exist.
        let mut absent = m.clone();
        absent["secrets"][0]["sopsFile"] = json!(s(&env.path("absent.yaml")));
        let run = check_as_nobody(env, &absent, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["db_password", "absent.yaml"]);
        assert!(!env.mount.exists());
    });
}

// ---------------------------------------------------------------------------------------------
// Crash safety
// ---------------------------------------------------------------------------------------------

#[test]
fn a_crash_while_writing_leaves_the_live_generation_and_the_next_run_cleans_up() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: SOPS_INSTALL_SECRETS_TEST_CRASH_AFTER is honoured only by debug builds");
        return;
    }
    isolated(|env| {
        let manifest = |db_file: &str| {
            let mut m = two_secrets(env, db_file);
            m["secrets"]
                .as_array_mut()
                .unwrap()
                .push(env.secret("third", "app.yaml", "multiline"));
            // Keep every generation, so that pruning cannot hide a leftover.
            m["keepGenerations"] = json!(0);
            m
        };
        env.install(&manifest("app.yaml"));
        let live = [env.link.clone(), env.generation(1), env.path("custom")];
        let before = tree(&live);
        let generation_1 = tree(&[env.generation(1)]);

        let crash = env.run_with(
            &manifest("app_v2.yaml"),
            &[],
            &[("SOPS_INSTALL_SECRETS_TEST_CRASH_AFTER", "1")],
        );
        assert!(
            !crash.status.success(),
            "the crash hook did not fire:\n{}",
            crash.describe()
        );
        assert_eq!(tree(&live), before, "the crash changed the live generation");
        env.assert_live(1);
        assert_eq!(activation_list("activation-restart-list"), Vec::<String>::new());

        let run = env.install(&manifest("app_v2.yaml"));
        run.assert_printed("modifying secret: db_password");
        env.assert_only_generations();
        let gens = env.generations();
        assert_eq!(
            gens.len(),
            2,
            "generation 1 and the new one, nothing partial: {gens:?}"
        );
        let newest = *gens.last().unwrap();
        assert_ne!(newest, 1);
        env.assert_live(newest);
        let g = env.generation(newest);
        assert_eq!(secret_entries(&g), ["api_token", "db_password", "third"]);
        assert_content(&g.join("db_password"), &expected("app_v2.db_password"));
        assert_content(&g.join("api_token"), &expected("app.api_token"));
        assert_content(&g.join("third"), &expected("app.multiline"));
        assert_eq!(tree(&[env.generation(1)]), generation_1, "generation 1 changed");
        assert_eq!(activation_list("activation-restart-list"), ["db.service"]);
    });
}

// ---------------------------------------------------------------------------------------------
// What we do that sops-nix does not
// ---------------------------------------------------------------------------------------------

fn public_key_of(age_key_file: &str) -> String {
    let text = fs::read_to_string(fixtures().join("keys").join(age_key_file)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_owned()
}

#[test]
fn host_pub_keys_turn_an_unopenable_sops_file_into_a_build_failure() {
    isolated(|env| {
        let app = env.public_copy("app.yaml");
        let host = env.public_copy("host.yaml");
        let foreign = env.public_copy("other_key.yaml");
        let ssh_pub = fs::read_to_string(fixtures().join("keys/host_ed25519.pub")).unwrap();

        // age1 opens app.yaml; the SSH host key opens host.yaml through its ssh-to-age recipient.
        let mut m = env.manifest(vec![
            env.secret_from("db_password", &app, "app/db_password"),
            env.secret_from("host_secret", &host, "host_secret"),
        ]);
        m["hostPubKeys"] = json!([public_key_of("age1.txt"), ssh_pub.trim()]);
        check_as_nobody(env, &m, "-check-mode=sopsfile").assert_success();

        // Without the SSH key, host.yaml cannot be opened by this host: the build fails.
        let mut only_age = m.clone();
        only_age["hostPubKeys"] = json!([public_key_of("age1.txt")]);
        let run = check_as_nobody(env, &only_age, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["host.yaml", "host_secret", "sops updatekeys"]);

        // A file encrypted only to another key names that key.
        let mut with_foreign = m.clone();
        with_foreign["secrets"]
            .as_array_mut()
            .unwrap()
            .push(env.secret_from("foreign", &foreign, "other"));
        let run = check_as_nobody(env, &with_foreign, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["other_key.yaml", &public_key_of("age2.txt"), "sops updatekeys"]);

        // The manifest check alone does not read sops files, so it cannot tell.
        check_as_nobody(env, &with_foreign, "-check-mode=manifest").assert_success();
    });
}

#[test]
fn a_change_of_owner_group_or_mode_restarts_the_secrets_units() {
    isolated(|env| {
        let unit = |mut v: Value, name: &str| {
            v["restartUnits"] = json!([format!("{name}.service")]);
            v
        };
        let base = vec![
            unit(env.secret("owner", "app.yaml", "app/db_password"), "owner"),
            unit(env.secret("group", "app.yaml", "app/api_token"), "group"),
            unit(env.secret("mode", "app.yaml", "multiline"), "mode"),
            unit(env.secret("same", "app.yaml", "nested/deep/value"), "same"),
        ];
        env.install(&env.manifest(base.clone()));

        let mut changed = base;
        changed[0]["owner"] = json!("alice");
        changed[1]["group"] = json!("keys");
        changed[2]["mode"] = json!("0440");
        let run = env.install(&env.manifest(changed));
        run.assert_printed("modifying secrets: group, mode, owner");
        assert_eq!(
            activation_list("activation-restart-list"),
            sorted(&["group.service", "mode.service", "owner.service"]),
            "only the units of secrets whose owner, group or mode changed:\n{}",
            run.describe()
        );
        assert_file(&env.link.join("owner"), 0o400, ALICE, 0);
        assert_file(&env.link.join("group"), 0o400, 0, KEYS_GID);
        assert_file(&env.link.join("mode"), 0o440, 0, 0);
    });
}

#[test]
fn a_template_whose_mode_changed_restarts_its_units() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        let mut t = env.template("app.conf", &format!("password={}\n", placeholder("db_password")));
        t["restartUnits"] = json!(["app.service"]);
        with_templates(&mut m, vec![t.clone()]);
        env.install(&m);

        t["mode"] = json!("0444");
        with_templates(&mut m, vec![t]);
        let run = env.install(&m);
        run.assert_printed("modifying rendered secret: app.conf");
        assert_eq!(activation_list("activation-restart-list"), ["app.service"]);
    });
}

#[test]
fn a_dropped_secret_leaves_no_dangling_link_at_its_custom_path() {
    isolated(|env| {
        let mut token = env.secret("api_token", "app.yaml", "app/api_token");
        token["path"] = json!(s(&env.path("custom/token")));
        let mut other = env.secret("db_password", "app.yaml", "app/db_password");
        other["path"] = json!(s(&env.path("custom/db_password")));
        env.install(&env.manifest(vec![token, other.clone()]));
        assert_symlink(&env.path("custom/token"), &env.link.join("api_token"), 0, 0);

        // Someone else's link at another path must survive, even if it points into our tree.
        symlink(env.link.join("db_password"), env.path("custom/theirs")).unwrap();

        env.install(&env.manifest(vec![other]));
        assert!(
            fs::symlink_metadata(env.path("custom/token")).is_err(),
            "the link of the dropped secret is still there"
        );
        assert_symlink(
            &env.path("custom/db_password"),
            &env.link.join("db_password"),
            0,
            0,
        );
        assert!(
            fs::symlink_metadata(env.path("custom/theirs")).is_ok(),
            "a link we did not make was removed"
        );
    });
}

#[test]
fn a_dropped_secrets_link_replaced_by_a_file_is_left_alone() {
    isolated(|env| {
        let mut token = env.secret("api_token", "app.yaml", "app/api_token");
        token["path"] = json!(s(&env.path("custom/token")));
        env.install(&env.manifest(vec![token]));
        // The admin replaced our link with a file of their own.
        fs::remove_file(env.path("custom/token")).unwrap();
        fs::write(env.path("custom/token"), "mine").unwrap();

        env.install(&env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]));
        assert_eq!(fs::read_to_string(env.path("custom/token")).unwrap(), "mine");
    });
}

#[test]
fn keep_previous_installs_the_others_and_keeps_the_failed_secrets_old_bytes() {
    isolated(|env| {
        let unit = |mut v: Value, name: &str| {
            v["restartUnits"] = json!([format!("{name}.service")]);
            v
        };
        let mut token = unit(env.secret("api_token", "app.yaml", "app/api_token"), "api");
        token["owner"] = json!("alice");
        token["mode"] = json!("0440");
        let mut m = env.manifest(vec![
            unit(env.secret("db_password", "app.yaml", "app/db_password"), "db"),
            token,
        ]);
        m["onFailure"] = json!("keep-previous");
        env.install(&m);

        // db_password changes (v2); api_token's file is now one this host cannot open;
        // a brand-new secret from that file has nothing to keep.
        let mut m2 = env.manifest(vec![
            unit(env.secret("db_password", "app_v2.yaml", "app/db_password"), "db"),
            // The failing version would also change its owner and mode: neither applies.
            unit(env.secret("api_token", "other_key.yaml", "other"), "api"),
            unit(env.secret("brand_new", "other_key.yaml", "other"), "new"),
        ]);
        m2["onFailure"] = json!("keep-previous");
        let run = env.run(&m2);
        run.assert_failure();
        run.assert_stderr_names(&["api_token", "brand_new", "other_key.yaml"]);
        env.assert_live(2);
        assert_content(&env.link.join("db_password"), &expected("app_v2.db_password"));
        assert_content(&env.link.join("api_token"), &expected("app.api_token"));
        assert_file(&env.generation(2).join("api_token"), 0o440, ALICE, 0);
        assert!(
            fs::symlink_metadata(env.link.join("brand_new")).is_err(),
            "a secret with nothing to keep appeared"
        );
        // Only the secret that really changed restarts its units.
        assert_eq!(activation_list("activation-restart-list"), ["db.service"]);

        // The default stays all-or-nothing: nothing is installed.
        let mut abort = m2.clone();
        abort["onFailure"] = Value::Null;
        let (tree_before, _, _) = live_state(env);
        env.run(&abort).assert_failure();
        assert_eq!(live_state(env).0, tree_before);
        env.assert_live(2);
    });
}

#[test]
fn a_credential_secret_is_linked_into_the_credstore_for_load_credential() {
    isolated(|env| {
        let credstore = env.path("credstore");
        let mut token = env.secret("api_token", "app.yaml", "app/api_token");
        token["credential"] = json!(true);
        token["owner"] = json!("alice");
        let plain = env.secret("db_password", "app.yaml", "app/db_password");
        let mut m = env.manifest(vec![token, plain.clone()]);
        m["credstoreDir"] = json!(s(&credstore));
        env.install(&m);

        assert_dir(&credstore, 0o700, 0, 0);
        assert_symlink(&credstore.join("api_token"), &env.link.join("api_token"), 0, 0);
        assert_content(&credstore.join("api_token"), &expected("app.api_token"));
        assert_eq!(
            entries(&credstore),
            ["api_token"],
            "only secrets marked as credentials"
        );
        // The secret itself keeps its owner and mode.
        assert_file(&env.link.join("api_token"), 0o400, ALICE, 0);

        // No longer a credential: the link goes.
        let mut m2 = env.manifest(vec![env.secret("api_token", "app.yaml", "app/api_token"), plain]);
        m2["credstoreDir"] = json!(s(&credstore));
        env.install(&m2);
        assert_eq!(entries(&credstore), Vec::<String>::new());
    });
}

#[test]
fn a_credential_name_with_a_slash_is_refused() {
    isolated(|env| {
        let mut nested = env.secret("ssh/key", "app.yaml", "app/api_token");
        nested["credential"] = json!(true);
        let mut m = env.manifest(vec![nested]);
        m["credstoreDir"] = json!(s(&env.path("credstore")));
        assert_refused(env, &m, &["ssh/key", "credential"]);
    });
}

#[test]
fn a_failed_install_is_marked_in_the_journal_even_from_an_activation_script() {
    isolated(|env| {
        // The test's private /run: a journal socket of our own.
        fs::create_dir_all("/run/systemd/journal").unwrap();
        let _ = fs::remove_file("/run/systemd/journal/socket");
        let journal = std::os::unix::net::UnixDatagram::bind("/run/systemd/journal/socket").unwrap();
        journal
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();

        let m = env.manifest(vec![env.secret("foreign", "other_key.yaml", "other")]);
        let run = env.run(&m);
        run.assert_failure();

        let mut buf = vec![0u8; 65536];
        let n = journal.recv(&mut buf).expect("no journal entry for the failure");
        let entry = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            entry.contains("SOPS_EVENT=sops-install-secrets-failed\n"),
            "{entry}"
        );
        assert!(entry.contains("PRIORITY=3\n"), "{entry}");
        assert!(!entry.contains("PLAINTEXT"), "{entry}");
    });
}

// --- GPG keys (issue 7) ----------------------------------------------------------------------

fn pgp_fixture(rel: &str) -> String {
    s(&fixtures().join("pgp").join(rel))
}

#[test]
fn an_ssh_rsa_host_key_in_ssh_key_paths_opens_pgp_files_and_logs_its_fingerprint() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret_from(
            "db_password",
            &pgp_fixture("enc/ssh_rsa.yaml"),
            "database/password",
        )]);
        m["ageKeyFile"] = Value::Null;
        m["sshKeyPaths"] = json!([s(&fixtures().join("keys/host_rsa"))]);
        m["logging"]["keyImport"] = json!(true);
        let run = env.install(&m);
        assert_eq!(fs::read(env.link.join("db_password")).unwrap(), b"hunter2-pgp");
        assert!(
            run.stderr
                .contains("as GPG key with fingerprint 52347B17CB87CF7B724FEACF3E54A544D8560FBD"),
            "{}",
            run.describe()
        );
        // Nothing but the secrets was written to the mount: no keyring.
        let mut names: Vec<String> = fs::read_dir(env.generation(1))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [STATE_FILE, "db_password"]);
    });
}

#[test]
fn a_gnupg_home_opens_pgp_files_with_gpg() {
    let gpg_present = Command::new("gpg").arg("--version").output().is_ok();
    if !gpg_present {
        assert!(std::env::var_os("CI").is_none(), "gpg is required in CI");
        return;
    }
    isolated(|env| {
        let home = env.path("gnupg");
        fs::create_dir(&home).unwrap();
        set_mode(&home, 0o700);
        let import = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--quiet", "--import"])
            .arg(fixtures().join("pgp/keys/alice.sec.asc"))
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "{}",
            String::from_utf8_lossy(&import.stderr)
        );
        let mut m = env.manifest(vec![
            env.secret_from("token", &pgp_fixture("enc/pgp.yaml"), "api_token"),
            env.secret_from(
                "shared",
                &pgp_fixture("enc/pgp_and_age.yaml"),
                "database/password",
            ),
        ]);
        m["ageKeyFile"] = Value::Null;
        m["gnupgHome"] = json!(s(&home));
        let run = env.install(&m);
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "gpg-agent"])
            .output();
        assert_eq!(
            fs::read(env.link.join("token")).unwrap(),
            b"tok_7f3a9c",
            "{}",
            run.describe()
        );
        assert_eq!(fs::read(env.link.join("shared")).unwrap(), b"hunter2-pgp");
    });
}

#[test]
fn a_pgp_file_without_a_gpg_key_on_the_host_is_refused_naming_the_fingerprint() {
    isolated(|env| {
        let m = env.manifest(vec![env.secret_from(
            "token",
            &pgp_fixture("enc/pgp.yaml"),
            "api_token",
        )]);
        let run = env.run(&m);
        run.assert_failure();
        let alice = fs::read_to_string(fixtures().join("pgp/keys/alice.fingerprint")).unwrap();
        run.assert_stderr_names(&[
            "token",
            "enc/pgp.yaml",
            &format!("pgp {}", alice.trim()),
            "this host offers no GPG key",
        ]);
        assert!(!env.link.exists());
    });
}

#[test]
fn gnupg_home_together_with_ssh_key_paths_is_refused() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("multiline", "app.yaml", "multiline")]);
        m["ageKeyFile"] = Value::Null;
        m["gnupgHome"] = json!(s(&env.path("gnupg")));
        m["sshKeyPaths"] = json!([s(&fixtures().join("keys/host_rsa"))]);
        let run = env.run(&m);
        run.assert_failure();
        run.assert_stderr_names(&["gnupgHome", "sshKeyPaths", "mutually exclusive"]);
    });
}

// --- age plugins (issue 7; issue 10: one plugin session per file) ----------------------------

#[test]
fn a_plugin_runs_once_per_file_however_many_secrets_use_it() {
    isolated(|env| {
        // The test plugin (built by `cargo test` as an example) on the installer's PATH.
        let plugin = binary().parent().unwrap().join("examples/age-plugin-sitest");
        assert!(plugin.is_file(), "{} is not built", plugin.display());
        fs::copy(&plugin, env.bin.join("age-plugin-sitest")).unwrap();
        let log = env.path("plugin.log");
        let one = s(&fixtures().join("plugin/enc/one.yaml"));
        let two = s(&fixtures().join("plugin/enc/two.yaml"));
        let mut m = env.manifest(vec![
            env.secret_from("wifi_psk", &one, "wifi/psk"),
            env.secret_from("backup", &one, "backup_passphrase"),
            env.secret_from("deploy", &one, "deploy_token"),
            env.secret_from("grafana", &two, "grafana_admin"),
        ]);
        m["ageKeyFile"] = json!(s(&fixtures().join("plugin/keys/sitest.txt")));
        let run = env.run_with(&m, &[], &[("SITEST_LOG", &s(&log))]);
        run.assert_success();
        assert_eq!(
            fs::read(env.link.join("wifi_psk")).unwrap(),
            b"correct-horse-battery"
        );
        assert_eq!(fs::read(env.link.join("deploy")).unwrap(), b"dt_91c2");
        assert_eq!(fs::read(env.link.join("grafana")).unwrap(), b"admin-pw-2");
        let sessions = fs::read_to_string(&log).unwrap().lines().count();
        assert_eq!(sessions, 2, "one plugin session per sops file, not per secret");
    });
}

#[test]
fn an_ssh_rsa_host_public_key_counts_for_pgp_stanzas_when_the_host_uses_ssh_keys_as_gpg_keys() {
    isolated(|env| {
        let to_host = env.public_copy_of(&fixtures().join("pgp/enc/ssh_rsa.yaml"));
        let to_alice = env.public_copy_of(&fixtures().join("pgp/enc/pgp.yaml"));
        let rsa_pub = fs::read_to_string(fixtures().join("keys/host_rsa.pub")).unwrap();
        let mut m = env.manifest(vec![env.secret_from("db", &to_host, "database/password")]);
        m["ageKeyFile"] = Value::Null;
        m["sshKeyPaths"] = json!(["/etc/ssh/ssh_host_rsa_key"]);
        m["hostPubKeys"] = json!([rsa_pub.trim()]);
        check_as_nobody(env, &m, "-check-mode=sopsfile").assert_success();

        // A file for someone else's PGP key names the host's fingerprint among what it has.
        let mut other = m.clone();
        other["secrets"] = json!([env.secret_from("token", &to_alice, "api_token")]);
        let run = check_as_nobody(env, &other, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&[
            "pgp.yaml",
            "pgp 52347B17CB87CF7B724FEACF3E54A544D8560FBD",
            "sops updatekeys",
        ]);

        // Without sshKeyPaths the host has no GPG key, whatever its RSA key would derive.
        let mut no_gpg = m.clone();
        no_gpg["sshKeyPaths"] = json!([]);
        no_gpg["ageKeyFile"] = json!(age_key_file());
        let run = check_as_nobody(env, &no_gpg, "-check-mode=sopsfile");
        run.assert_failure();
        run.assert_stderr_names(&["ssh_rsa.yaml", "sops updatekeys"]);
    });
}
