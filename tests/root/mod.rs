//! The harness of the root integration tests: a private mount namespace per test, test users
//! in a private `/etc/passwd` and `/etc/group`, a fake `systemctl`, manifest builders, a runner that
//! checks no plaintext reached the binary's output, and assertions on owners, modes and trees.
//!
//! Used by `tests/install.rs` and the other root test files (`mod root; use root::*;`); see
//! `tests/install.rs` for how the isolation works.
#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeMap;
pub use std::fs;
pub use std::io::Read;
pub use std::os::unix::fs::{MetadataExt, PermissionsExt, chown, lchown, symlink};
pub use std::os::unix::process::CommandExt;
pub use std::path::{Path, PathBuf};
pub use std::process::{Command, ExitStatus, Stdio};
pub use std::time::{Duration, Instant};

pub use nix::mount::{MntFlags, MsFlags, mount, umount2};
pub use nix::sched::{CloneFlags, unshare};
pub use nix::sys::statvfs::FsFlags;
pub use serde_json::{Value, json};

/// Test users and groups, added to the private /etc/passwd and /etc/group.
pub const SECRET_TEST: u32 = 4001; // user `secret-test`, group `secret-test`
pub const ALICE: u32 = 4002; // user `alice`, group `alice`
pub const KEYS_GID: u32 = 4096; // group `keys`
pub const NOGROUP_GID: u32 = 65534; // group `nogroup`
pub const NOBODY: u32 = 65534;
/// Neither a user nor a group in the private files: numeric owners are applied as they are.
pub const UNNAMED_UID: u32 = 4005;
pub const UNNAMED_GID: u32 = 4006;

pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// Contained in every plaintext value of the fixtures; must never appear in the binary's output.
pub const MARKER: &str = "PLAINTEXT";
pub const TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn s(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_owned()
}

/// Absolute path of an encrypted fixture (tests/fixtures/install/enc/NAME).
pub fn enc(name: &str) -> String {
    s(&fixtures().join("install/enc").join(name))
}

/// What real `sops -d [--extract]` printed (tests/fixtures/install/expected/NAME.out).
pub fn expected(name: &str) -> Vec<u8> {
    let p = fixtures().join("install/expected").join(format!("{name}.out"));
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn expected_str(name: &str) -> String {
    String::from_utf8(expected(name)).unwrap()
}

pub fn age_key_file() -> String {
    s(&fixtures().join("keys/age1.txt"))
}

pub fn binary() -> PathBuf {
    std::env::var_os("SOPS_INSTALL_SECRETS_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sops-install-secrets")))
}

pub fn format_of(sops_file: &str) -> &'static str {
    match Path::new(sops_file).extension().and_then(|e| e.to_str()) {
        Some("json") => "json",
        Some("env") => "dotenv",
        Some("ini") => "ini",
        Some("bin") => "binary",
        _ => "yaml",
    }
}

pub fn placeholder(secret: &str) -> String {
    format!("<SOPS:placeholder-of-{secret}:PLACEHOLDER>")
}

/// Sets the manifest's templates and, as the module does when there are templates, a placeholder
/// for every secret.
pub fn with_templates(m: &mut Value, templates: Vec<Value>) {
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
pub struct Setup {
    /// Whether the private /etc/group has a `keys` group (else only `nogroup`).
    pub keys_group: bool,
    /// Whether /run/nixos exists (it is where the activation lists go).
    pub run_nixos: bool,
}

pub const DEFAULT: Setup = Setup {
    keys_group: true,
    run_nixos: true,
};

pub fn isolated(test: impl FnOnce(&Env) + Send + 'static) {
    isolated_with(DEFAULT, test)
}

/// Runs `test` on a new thread in a private mount namespace (see the module docs).
pub fn isolated_with(setup: Setup, test: impl FnOnce(&Env) + Send + 'static) {
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

pub struct Env {
    /// The temporary directory everything of the test lives in (canonical path).
    pub root: PathBuf,
    /// `secretsMountPoint` and `symlinkPath` of the default manifest.
    pub mount: PathBuf,
    pub link: PathBuf,
    /// HOME of the binary: an empty directory, so no identity of the developer is picked up.
    pub home: PathBuf,
    /// First on the binary's PATH: holds the fake `systemctl`, which appends its arguments as one
    /// line to `systemctl_log`.
    pub bin: PathBuf,
    pub systemctl_log: PathBuf,
    pub manifests: std::cell::Cell<usize>,
    // Dropped last, after `Drop for Env` has detached the mounts below it.
    pub _dir: tempfile::TempDir,
}

impl Env {
    pub fn new(setup: Setup) -> Result<Env, String> {
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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    // --- manifests ----------------------------------------------------------------------------

    /// A secret as sops-nix's NixOS module writes it (default owner root, mode 0400, no units),
    /// from tests/fixtures/install/enc/SOPS_FILE.
    pub fn secret(&self, name: &str, sops_file: &str, key: &str) -> Value {
        self.secret_from(name, &enc(sops_file), key)
    }

    /// Same, with the sops file given by its path.
    pub fn secret_from(&self, name: &str, sops_path: &str, key: &str) -> Value {
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
    pub fn template(&self, name: &str, content: &str) -> Value {
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

    pub fn manifest(&self, secrets: Vec<Value>) -> Value {
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

    pub fn write_manifest(&self, m: &Value) -> PathBuf {
        self.write_manifest_text(&serde_json::to_string_pretty(m).unwrap())
    }

    pub fn write_manifest_text(&self, text: &str) -> PathBuf {
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
    pub fn command(&self, program: &Path, manifest: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
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

    pub fn run_with(&self, m: &Value, args: &[&str], envs: &[(&str, &str)]) -> Run {
        execute(self.command(&binary(), &self.write_manifest(m), args, envs))
    }

    pub fn run(&self, m: &Value) -> Run {
        self.run_with(m, &[], &[])
    }

    #[track_caller]
    pub fn install(&self, m: &Value) -> Run {
        let run = self.run(m);
        run.assert_success();
        run
    }

    /// A copy of the binary that any user can run (the build directory may not be reachable).
    pub fn public_binary(&self) -> PathBuf {
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
    pub fn public_copy(&self, name: &str) -> String {
        self.public_copy_of(Path::new(&enc(name)))
    }

    /// A world-readable copy of a fixture file.
    pub fn public_copy_of(&self, source: &Path) -> String {
        let dir = self.path("public-sops");
        fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let p = dir.join(source.file_name().unwrap());
        fs::copy(source, &p).unwrap();
        set_mode(&p, 0o644);
        s(&p)
    }

    // --- looking at the result ----------------------------------------------------------------

    pub fn generation(&self, n: u64) -> PathBuf {
        self.mount.join(n.to_string())
    }

    #[track_caller]
    pub fn assert_live(&self, n: u64) {
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
    pub fn generations(&self) -> Vec<u64> {
        let mut g: Vec<u64> = entries(&self.mount)
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        g.sort_unstable();
        g
    }

    /// Nothing but numbered generation directories in the mount point (no key file, no leftover).
    #[track_caller]
    pub fn assert_only_generations(&self) {
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

    pub fn systemctl_calls(&self) -> Vec<String> {
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

pub fn bind(source: &Path, target: &Path) {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .unwrap_or_else(|e| panic!("bind {} over {}: {e}", source.display(), target.display()));
}

/// (mount point, file system type) of this thread's mount namespace.
pub fn mount_table() -> Vec<(PathBuf, String)> {
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

pub fn unescape_mountinfo(field: &str) -> String {
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
pub fn mounts_at(p: &Path) -> Vec<String> {
    mount_table()
        .into_iter()
        .filter(|(m, _)| m == p)
        .map(|(_, t)| t)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "the installer failed:\n{}",
            self.describe()
        );
    }

    /// Non-zero exit with a message on stderr.
    #[track_caller]
    pub fn assert_failure(&self) {
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
    pub fn assert_stderr_names(&self, words: &[&str]) {
        for w in words {
            assert!(
                self.stderr.contains(w),
                "stderr does not name {w:?}:\n{}",
                self.describe()
            );
        }
    }

    pub fn printed(&self, line: &str) -> bool {
        self.stdout.lines().any(|l| l.trim() == line)
    }

    #[track_caller]
    pub fn assert_printed(&self, line: &str) {
        assert!(
            self.printed(line),
            "stdout lacks the line {line:?}:\n{}",
            self.describe()
        );
    }
}

/// Runs `cmd` (stdin closed, output captured) with a time limit, and checks that no plaintext
/// reached its output.
pub fn execute(mut cmd: Command) -> Run {
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

pub fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

#[track_caller]
pub fn meta(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Permission bits, uid and gid of `p` itself (not following a symlink).
#[track_caller]
pub fn assert_mode_owner(p: &Path, mode: u32, uid: u32, gid: u32) {
    let m = meta(p);
    assert_eq!(
        (format!("{:04o}", m.mode() & 0o7777), m.uid(), m.gid()),
        (format!("{mode:04o}"), uid, gid),
        "mode, uid and gid of {}",
        p.display()
    );
}

#[track_caller]
pub fn assert_dir(p: &Path, mode: u32, uid: u32, gid: u32) {
    assert!(meta(p).is_dir(), "{} is not a directory", p.display());
    assert_mode_owner(p, mode, uid, gid);
}

#[track_caller]
pub fn assert_file(p: &Path, mode: u32, uid: u32, gid: u32) {
    assert!(meta(p).is_file(), "{} is not a regular file", p.display());
    assert_mode_owner(p, mode, uid, gid);
}

/// `p` is a symlink to `target`, itself owned by uid:gid.
#[track_caller]
pub fn assert_symlink(p: &Path, target: &Path, uid: u32, gid: u32) {
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
pub fn assert_content(p: &Path, want: &[u8]) {
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
pub const STATE_FILE: &str = ".sops-install-secrets.json";

/// The secrets and directories of a generation: its entries without the record.
pub fn secret_entries(dir: &Path) -> Vec<String> {
    entries(dir).into_iter().filter(|e| e != STATE_FILE).collect()
}

pub fn entries(dir: &Path) -> Vec<String> {
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
pub fn lines_of(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Lines of /run/nixos/NAME sorted (empty if absent): the units requested so far.
pub fn activation_list(name: &str) -> Vec<String> {
    let mut v = lines_of(&Path::new("/run/nixos").join(name));
    v.sort();
    v
}

pub fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Everything under `roots` (not following symlinks): kind, mode, owner, symlink target, content,
/// and for files and symlinks the inode and mtime, so that a rewrite with the same bytes shows.
pub fn tree(roots: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    pub fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
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

pub fn statfs_magic(p: &Path) -> u64 {
    (nix::sys::statfs::statfs(p).unwrap().filesystem_type().0 as u64) & 0xffff_ffff
}

// ---------------------------------------------------------------------------------------------
// Shared scenarios
// ---------------------------------------------------------------------------------------------

/// db_password (restart db.service, reload db-reload.service) and api_token (restart
/// api.service, reload api-reload.service, linked from custom/api_token), both from app.yaml.
pub fn two_secrets(env: &Env, db_file: &str) -> Value {
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
pub fn live_state(env: &Env) -> (BTreeMap<PathBuf, String>, Vec<Vec<String>>, Vec<String>) {
    let t = tree(&[env.mount.clone(), env.link.clone(), env.path("custom")]);
    let lists = ["activation-restart-list", "activation-reload-list"]
        .map(activation_list)
        .to_vec();
    (t, lists, env.systemctl_calls())
}

/// Installs the two-secret manifest (generation 1 live) and returns it.
pub fn install_baseline(env: &Env) -> Value {
    let good = two_secrets(env, "app.yaml");
    env.install(&good);
    env.assert_live(1);
    good
}

/// Runs `bad` against a live generation: it must fail, name `mentions` on stderr and leave the
/// live tree, the activation lists and systemd alone.
#[track_caller]
pub fn assert_refused(env: &Env, bad: &Value, mentions: &[&str]) -> Run {
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
