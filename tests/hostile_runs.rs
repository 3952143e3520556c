//! The installer under races, crashes and failures (issue 17, items 1, 5, 7, 8 and 9): two runs at
//! once, a run that waits for another, a failed run that still tells what it saw, a crash that must
//! not leave a core dump, a failed run that must not hide the live secrets under a filesystem it
//! mounted, and the capabilities left to the steps after the mount.
//!
//! Root tests in private mount namespaces, with the harness of `tests/root/mod.rs`.

mod root;

use root::*;

/// `count` secrets named `{prefix}000`, `{prefix}001`, ... all from app.yaml.
fn many(env: &Env, prefix: &str, count: usize) -> Value {
    let secrets = (0..count)
        .map(|i| env.secret(&format!("{prefix}{i:03}"), "app.yaml", "app/db_password"))
        .collect();
    env.manifest(secrets)
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}{i:03}")).collect()
}

/// Starts the binary on `manifest` without waiting for it.
fn spawn(env: &Env, manifest: &Path, envs: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = env.command(&binary(), manifest, &[], envs);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().expect("start the installer")
}

#[test]
fn two_runs_at_once_leave_exactly_one_complete_generation_live() {
    isolated(|env| {
        const COUNT: usize = 150;
        let a = env.write_manifest(&many(env, "a", COUNT));
        let b = env.write_manifest(&many(env, "b", COUNT));
        let (want_a, want_b) = (names("a", COUNT), names("b", COUNT));
        for round in 0..12 {
            let first = spawn(env, &a, &[]);
            let second = spawn(env, &b, &[]);
            for (which, child) in [("a", first), ("b", second)] {
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "round {round}: run {which} failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let live = fs::read_link(&env.link).expect("the link exists");
            let got = secret_entries(&live);
            assert!(
                got == want_a || got == want_b,
                "round {round}: the live generation {} holds {} entries, not exactly one manifest's {COUNT}",
                live.display(),
                got.len()
            );
            for name in &got {
                assert_content(&live.join(name), &expected("app.db_password"));
            }
            env.assert_only_generations();
            let live_number: u64 = live.file_name().unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(
                env.generations(),
                [live_number],
                "round {round}: a stray generation remains beside the live one"
            );
        }
    });
}

#[test]
fn a_run_waits_for_another_and_then_fails_naming_its_pid() {
    isolated(|env| {
        let m = two_secrets(env, "app.yaml");
        env.install(&m);
        let before = live_state(env);

        // Another run holds the lock: this test process plays it.
        let lock_path = env.path("secrets.d.lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&lock_path)
            .unwrap();
        use std::io::Write;
        writeln!(file, "{}", std::process::id()).unwrap();
        let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .expect("lock the mount's lock file");

        let changed = two_secrets(env, "app_v2.yaml");
        let started = Instant::now();
        let run = env.run_with(&changed, &[], &[("SOPS_INSTALL_SECRETS_LOCK_TIMEOUT", "1")]);
        let waited = started.elapsed();
        run.assert_failure();
        run.assert_stderr_names(&[
            &format!("pid {}", std::process::id()),
            "secrets.d.lock",
            "SOPS_INSTALL_SECRETS_LOCK_TIMEOUT",
        ]);
        assert!(
            waited >= Duration::from_secs(1) && waited < Duration::from_secs(20),
            "waited {waited:?} for a 1 s limit"
        );
        assert_eq!(
            live_state(env),
            before,
            "a run that could not lock changed the live secrets"
        );

        // Once the other run is done, the same run goes through.
        drop(held);
        env.install(&changed);
        env.assert_live(2);
    });
}

#[test]
fn a_run_that_fails_still_logs_its_warnings() {
    isolated(|env| {
        let missing_key = env.path("no-such-host-key");
        let mut m = env.manifest(vec![
            env.secret("db_password", "app.yaml", "app/db_password"),
            env.secret("other", "other_key.yaml", "other"),
        ]);
        m["ageSshKeyPaths"] = json!([s(&missing_key)]);
        let run = env.run(&m);
        run.assert_failure();
        run.assert_stderr_names(&["other_key.yaml", &s(&missing_key)]);
    });
}

#[test]
fn a_partly_failed_keep_previous_run_prints_its_changes_and_the_generation_it_installed() {
    isolated(|env| {
        let mut m = env.manifest(vec![
            env.secret("db_password", "app.yaml", "app/db_password"),
            env.secret("api_token", "app.yaml", "app/api_token"),
        ]);
        m["onFailure"] = json!("keep-previous");
        env.install(&m);

        let mut m2 = env.manifest(vec![
            env.secret("db_password", "app_v2.yaml", "app/db_password"),
            env.secret("api_token", "other_key.yaml", "other"),
        ]);
        m2["onFailure"] = json!("keep-previous");
        let run = env.run(&m2);
        run.assert_failure();
        env.assert_live(2);
        run.assert_printed("modifying secret: db_password");
        run.assert_stderr_names(&["as generation 2", "api_token", "other_key.yaml"]);
    });
}

#[test]
fn a_crash_leaves_no_core_dump() {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED: SOPS_INSTALL_SECRETS_TEST_CRASH_AFTER is honoured only by debug builds");
        return;
    }
    isolated(|env| {
        let m = two_secrets(env, "app.yaml");
        let manifest = env.write_manifest(&m);
        let unlimited = || {
            use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
            setrlimit(Resource::RLIMIT_CORE, RLIM_INFINITY, RLIM_INFINITY).map_err(std::io::Error::from)
        };

        // While it waits for the lock, the running process shows its core limit.
        let lock_path = env.path("secrets.d.lock");
        let file = fs::File::create(&lock_path).unwrap();
        let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        let mut cmd = env.command(&binary(), &manifest, &[], &[]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe { cmd.pre_exec(unlimited) };
        let mut child = cmd.spawn().unwrap();
        let limits_path = format!("/proc/{}/limits", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        let core_line = loop {
            // Wait until the binary has exec'd and set its limits (the line changes from the
            // unlimited one set before exec).
            let text = fs::read_to_string(&limits_path).unwrap_or_default();
            let line = text
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
            if let Some(l) = &line
                && !l.contains("unlimited")
            {
                break l.clone();
            }
            if Instant::now() > deadline {
                break line.unwrap_or_default();
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = child.kill();
        let _ = child.wait();
        drop(held);
        assert_eq!(
            core_line, "Max core file size 0 0 bytes",
            "the installer's core limit"
        );

        // And a real crash (the debug-build hook aborts after the first file) leaves no core.
        let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
        let pattern = pattern.trim();
        let mut cmd = env.command(
            &binary(),
            &manifest,
            &[],
            &[("SOPS_INSTALL_SECRETS_TEST_CRASH_AFTER", "1")],
        );
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as above.
        unsafe { cmd.pre_exec(unlimited) };
        let status = cmd.status().unwrap();
        assert!(!status.success(), "the crash hook did not fire");
        if pattern.starts_with('|') || pattern.contains('/') {
            eprintln!(
                "core_pattern {pattern:?} does not write into the working directory; checked the limit only"
            );
            return;
        }
        let cores: Vec<String> = entries(&env.root)
            .into_iter()
            .filter(|n| n.starts_with("core"))
            .collect();
        assert!(cores.is_empty(), "the crash left core dumps: {cores:?}");
    });
}

#[test]
fn a_run_that_fails_after_mounting_unmounts_and_the_live_secrets_stay_reachable() {
    isolated(|env| {
        // The link lives in a directory of its own, so that the swap alone can be made to fail.
        let link_dir = env.path("linkdir");
        fs::create_dir(&link_dir).unwrap();
        let link = link_dir.join("secrets");
        let with = |db_file: &str, tmpfs: bool| {
            let mut m = env.manifest(vec![env.secret("db_password", db_file, "app/db_password")]);
            m["symlinkPath"] = json!(s(&link));
            m["secrets"][0]["path"] = json!(s(&link.join("db_password")));
            m["useTmpfs"] = json!(tmpfs);
            m
        };
        env.install(&with("app.yaml", false));
        assert_eq!(mounts_at(&env.mount), ["ramfs"]);

        // A read-only directory: creating the new link fails, after the new filesystem is mounted.
        bind(&link_dir, &link_dir);
        mount(
            None::<&str>,
            &link_dir,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        let run = env.run(&with("app_v2.yaml", true));
        run.assert_failure();
        run.assert_stderr_names(&["unmounted again"]);
        assert_eq!(
            mounts_at(&env.mount),
            ["ramfs"],
            "the tmpfs this failed run mounted is still there"
        );
        assert_content(&link.join("db_password"), &expected("app.db_password"));
    });
}

/// Parses a `CapXxx:` line of /proc/PID/status.
fn cap_bits(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

#[test]
fn steps_after_the_mount_cannot_mount() {
    isolated(|env| {
        // systemctl, run after the swap, shows what the installer left it: its capability sets,
        // and whether it can mount a filesystem.
        let target = env.path("mount-attempt");
        fs::create_dir(&target).unwrap();
        let report = env.path("systemctl-caps");
        let script = format!(
            "#!/bin/sh\ngrep '^Cap' /proc/self/status > '{report}'\n\
             if mount -t tmpfs none '{target}' 2>/dev/null; then echo mounted >> '{report}'; \
             else echo refused >> '{report}'; fi\n",
            report = report.display(),
            target = target.display()
        );
        fs::write(env.bin.join("systemctl"), script).unwrap();
        set_mode(&env.bin.join("systemctl"), 0o755);

        let via = [("SOPS_RESTART_UNITS_VIA_SYSTEMCTL", "1")];
        env.run_with(&two_secrets(env, "app.yaml"), &[], &via)
            .assert_success();
        env.run_with(&two_secrets(env, "app_v2.yaml"), &[], &via)
            .assert_success();
        let status = fs::read_to_string(&report).expect("systemctl ran after the swap");
        const CAP_SYS_ADMIN: u64 = 1 << 21;
        const CAP_CHOWN: u64 = 1;
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(
                cap_bits(&status, field) & CAP_SYS_ADMIN,
                0,
                "{field} still has CAP_SYS_ADMIN:\n{status}"
            );
        }
        assert_ne!(
            cap_bits(&status, "CapBnd:") & CAP_CHOWN,
            0,
            "what the links need is kept:\n{status}"
        );
        assert!(
            status.ends_with("refused\n"),
            "a later step could mount:\n{status}"
        );
        assert_eq!(mounts_at(&target), Vec::<String>::new());
        // The secrets themselves still got their owners (CAP_CHOWN was kept while writing).
        assert_file(&env.link.join("db_password"), 0o400, SECRET_TEST, SECRET_TEST);
    });
}

#[test]
fn the_lock_file_is_an_ordinary_file_beside_the_mount() {
    isolated(|env| {
        env.install(&two_secrets(env, "app.yaml"));
        let lock = env.path("secrets.d.lock");
        let meta = fs::symlink_metadata(&lock).expect("the lock file exists after a run");
        assert!(meta.is_file());
        assert_mode_owner(&lock, 0o600, 0, 0);
        assert!(
            !entries(&env.mount).iter().any(|e| e.contains("lock")),
            "nothing of the lock inside the secrets mount"
        );
    });
}

#[test]
fn an_alias_bomb_as_a_sops_file_is_refused_by_the_installer_and_the_live_generation_stays() {
    isolated(|env| {
        let good = two_secrets(env, "app.yaml");
        env.install(&good);
        // Nine levels of nine aliases each, before a real sops-written file: whoever can edit a
        // sops file in git can write this; parsing it must stay bounded.
        let mut bomb = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            bomb.push_str(&format!(
                "l{i}: &l{i} [{}]\n",
                vec![format!("*l{}", i - 1); 9].join(", ")
            ));
        }
        let real = fs::read_to_string(enc("app.yaml")).unwrap();
        let file = env.path("bomb.yaml");
        fs::write(&file, format!("{bomb}{real}")).unwrap();
        let mut bad = good.clone();
        bad["secrets"][0]["sopsFile"] = json!(s(&file));
        bad["secrets"][1]["sopsFile"] = json!(s(&file));
        let started = Instant::now();
        assert_refused(env, &bad, &[&s(&file), "excessive aliasing", "db_password"]);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        env.assert_live(1);
    });
}
