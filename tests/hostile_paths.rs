//! Paths named by the manifest that another user tampered with (issue 17, items 3 and 6).
//!
//! The installer runs as root. A path the manifest names may pass through a directory a user owns;
//! if root followed a symlink that user planted there, it would read a root-only file and install it
//! as a secret the user can read, or mount over and chown a directory of the user's choosing. Every
//! such path is opened component by component with `O_NOFOLLOW`, following only links owned by root
//! (or, in user mode, by the user running the installer); the very same link owned by root is still
//! followed. Input files must be regular files, opened without blocking: a FIFO does not hang the run.
//!
//! Root tests on the harness of `tests/root/mod.rs` (private mount namespace, users `alice` =
//! ALICE and `secret-test` = SECRET_TEST).

mod root;

use root::*;

/// A directory alice owns, where she plants links.
fn alice_dir(env: &Env) -> PathBuf {
    let d = env.path("alice");
    if !d.exists() {
        fs::create_dir(&d).unwrap();
        set_mode(&d, 0o755);
        chown(&d, Some(ALICE), Some(ALICE)).unwrap();
    }
    d
}

/// A directory only root may enter, holding copies that are root's alone.
fn root_only(env: &Env) -> PathBuf {
    let d = env.path("root-only");
    if !d.exists() {
        fs::create_dir(&d).unwrap();
        set_mode(&d, 0o700);
    }
    d
}

/// A root-only (0600) copy of `source` in the root-only directory.
fn root_only_copy(env: &Env, source: &Path) -> PathBuf {
    let p = root_only(env).join(source.file_name().unwrap());
    fs::copy(source, &p).unwrap();
    set_mode(&p, 0o600);
    p
}

/// `link` → `target`, the link itself owned by `owner`.
fn plant(link: &Path, target: &Path, owner: u32) {
    let _ = fs::remove_file(link);
    symlink(target, link).unwrap();
    lchown(link, Some(owner), Some(owner)).unwrap();
}

/// The refusal of a link alice planted: the run fails, names the manifest field, the link and
/// alice's uid, and installs nothing.
#[track_caller]
fn assert_link_refused(env: &Env, run: &Run, field: &str, link: &Path) {
    run.assert_failure();
    run.assert_stderr_names(&[field, &s(link), &ALICE.to_string(), "refusing to follow"]);
    assert!(
        fs::symlink_metadata(&env.link).is_err(),
        "a generation went live:\n{}",
        run.describe()
    );
}

#[test]
fn a_sops_file_reached_through_a_users_symlink_is_refused_and_a_root_owned_one_is_followed() {
    isolated(|env| {
        let secret_file = root_only_copy(env, Path::new(&enc("app.yaml")));
        let link = alice_dir(env).join("app.yaml");
        plant(&link, &secret_file, ALICE);
        let mut db = env.secret_from("db_password", &s(&link), "app/db_password");
        db["owner"] = json!("alice");
        let m = env.manifest(vec![db]);
        let run = env.run(&m);
        assert_link_refused(env, &run, "sopsFile", &link);

        // A planted link to a directory, anywhere along the path, is refused the same way.
        let dir_link = alice_dir(env).join("store");
        plant(&dir_link, &root_only(env), ALICE);
        let mut via_dir = env.secret_from("db_password", &s(&dir_link.join("app.yaml")), "app/db_password");
        via_dir["owner"] = json!("alice");
        let run = env.run(&env.manifest(vec![via_dir]));
        assert_link_refused(env, &run, "sopsFile", &dir_link);

        // Owned by root (as the Nix store's links are), the same link is followed.
        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn a_template_file_reached_through_a_users_symlink_is_refused_and_a_root_owned_one_is_followed() {
    isolated(|env| {
        let private = root_only(env).join("shadow.conf");
        fs::write(&private, "root-only-content\n").unwrap();
        set_mode(&private, 0o600);
        let link = alice_dir(env).join("app.conf");
        plant(&link, &private, ALICE);
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        let mut t = env.template("app.conf", "");
        t["content"] = json!("");
        t["file"] = json!(s(&link));
        t["owner"] = json!("alice");
        with_templates(&mut m, vec![t]);
        let run = env.run(&m);
        assert_link_refused(env, &run, "file", &link);
        run.assert_stderr_names(&["app.conf"]);

        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        assert_content(&env.link.join("rendered/app.conf"), b"root-only-content\n");
    });
}

#[test]
fn an_age_key_file_reached_through_a_users_symlink_is_refused_and_a_root_owned_one_is_followed() {
    isolated(|env| {
        let key = root_only_copy(env, Path::new(&age_key_file()));
        let link = alice_dir(env).join("keys.txt");
        plant(&link, &key, ALICE);
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["ageKeyFile"] = json!(s(&link));
        let run = env.run(&m);
        assert_link_refused(env, &run, "ageKeyFile", &link);

        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn an_age_ssh_key_reached_through_a_users_symlink_is_refused_and_a_root_owned_one_is_followed() {
    isolated(|env| {
        let key = root_only_copy(env, &fixtures().join("keys/host_ed25519"));
        let link = alice_dir(env).join("ssh_host_ed25519_key");
        plant(&link, &key, ALICE);
        let mut m = env.manifest(vec![env.secret("from_host_key", "host.yaml", "host_secret")]);
        m["ageKeyFile"] = Value::Null;
        m["ageSshKeyPaths"] = json!([s(&link)]);
        let run = env.run(&m);
        assert_link_refused(env, &run, "ageSshKeyPaths", &link);

        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        assert_content(&env.link.join("from_host_key"), &expected("host.host_secret"));
    });
}

#[test]
fn an_ssh_rsa_key_for_gpg_reached_through_a_users_symlink_is_refused_and_a_root_owned_one_is_followed() {
    isolated(|env| {
        let key = root_only_copy(env, &fixtures().join("keys/host_rsa"));
        let link = alice_dir(env).join("ssh_host_rsa_key");
        plant(&link, &key, ALICE);
        let mut m = env.manifest(vec![env.secret_from(
            "db_password",
            &s(&fixtures().join("pgp/enc/ssh_rsa.yaml")),
            "database/password",
        )]);
        m["ageKeyFile"] = Value::Null;
        m["sshKeyPaths"] = json!([s(&link)]);
        let run = env.run(&m);
        assert_link_refused(env, &run, "sshKeyPaths", &link);

        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        assert_eq!(fs::read(env.link.join("db_password")).unwrap(), b"hunter2-pgp");
    });
}

#[test]
fn a_gnupg_home_reached_through_a_users_symlink_is_refused_before_gpg_runs() {
    isolated(|env| {
        let home = root_only(env).join("gnupg");
        fs::create_dir(&home).unwrap();
        set_mode(&home, 0o700);
        let link = alice_dir(env).join("gnupg");
        plant(&link, &home, ALICE);
        // A stand-in for gpg that records how it was called and fails.
        let calls = env.path("gpg-calls");
        let fake = env.bin.join("fake-gpg");
        fs::write(
            &fake,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexit 2\n",
                calls.display()
            ),
        )
        .unwrap();
        set_mode(&fake, 0o755);
        let mut m = env.manifest(vec![env.secret_from(
            "token",
            &s(&fixtures().join("pgp/enc/pgp.yaml")),
            "api_token",
        )]);
        m["ageKeyFile"] = Value::Null;
        m["gnupgHome"] = json!(s(&link));
        let run = env.run_with(&m, &[], &[("SOPS_GPG_EXEC", &s(&fake))]);
        assert_link_refused(env, &run, "gnupgHome", &link);
        assert!(
            !calls.exists(),
            "gpg ran with the planted home: {:?}",
            lines_of(&calls)
        );

        // Owned by root, the link is followed: gpg runs with the home it leads to.
        lchown(&link, Some(0), Some(0)).unwrap();
        let run = env.run_with(&m, &[], &[("SOPS_GPG_EXEC", &s(&fake))]);
        run.assert_failure();
        assert!(!run.stderr.contains("refusing to follow"), "{}", run.describe());
        let called = lines_of(&calls);
        assert_eq!(called.len(), 1, "{called:?}");
        let homedir = called[0].split(' ').nth(1).unwrap();
        assert_eq!(fs::canonicalize(homedir).unwrap(), home);
    });
}

#[test]
fn a_mount_point_that_is_a_symlink_is_refused_whoever_owns_it_and_nothing_is_mounted_or_chowned() {
    isolated(|env| {
        // alice's own directory, which a mount would hide and a chown would take from her.
        let victim = env.path("alice-data");
        fs::create_dir(&victim).unwrap();
        set_mode(&victim, 0o700);
        chown(&victim, Some(ALICE), Some(ALICE)).unwrap();
        let link = alice_dir(env).join("secrets.d");
        let m = |mount: &Path| {
            let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
            m["secretsMountPoint"] = json!(s(mount));
            m
        };
        for owner in [ALICE, 0] {
            plant(&link, &victim, owner);
            let run = env.run(&m(&link));
            assert_eq!(mounts_at(&victim), Vec::<String>::new(), "{}", run.describe());
            assert_dir(&victim, 0o700, ALICE, ALICE);
            run.assert_failure();
            run.assert_stderr_names(&["secretsMountPoint", &s(&link), "symlink"]);
            assert!(fs::symlink_metadata(&env.link).is_err());
        }

        // A link alice planted in a parent directory of the mount point is refused too.
        let parent_link = alice_dir(env).join("run");
        plant(&parent_link, &env.path("alice-data"), ALICE);
        let inner = victim.join("secrets.d");
        fs::create_dir(&inner).unwrap();
        set_mode(&inner, 0o700);
        chown(&inner, Some(ALICE), Some(ALICE)).unwrap();
        let run = env.run(&m(&parent_link.join("secrets.d")));
        assert_link_refused(env, &run, "secretsMountPoint", &parent_link);
        assert_eq!(mounts_at(&inner), Vec::<String>::new());
        assert_dir(&inner, 0o700, ALICE, ALICE);

        // A root-owned link in a parent (like /var/run → /run) is followed.
        let real_run = env.path("real-run");
        fs::create_dir(&real_run).unwrap();
        set_mode(&real_run, 0o755);
        plant(&env.path("run-link"), &real_run, 0);
        env.install(&m(&env.path("run-link/secrets.d")));
        assert_eq!(mounts_at(&real_run.join("secrets.d")), ["ramfs"]);
        assert_dir(&real_run.join("secrets.d"), 0o751, 0, KEYS_GID);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn a_symlink_path_under_a_users_symlink_is_refused_and_under_a_root_owned_one_followed() {
    isolated(|env| {
        let link = alice_dir(env).join("run");
        plant(&link, &root_only(env), ALICE);
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["symlinkPath"] = json!(s(&link.join("secrets")));
        let run = env.run(&m);
        run.assert_failure();
        run.assert_stderr_names(&["symlinkPath", &s(&link), &ALICE.to_string(), "refusing to follow"]);
        assert_eq!(
            entries(&root_only(env)),
            Vec::<String>::new(),
            "the live link was made in root's directory:\n{}",
            run.describe()
        );

        lchown(&link, Some(0), Some(0)).unwrap();
        env.install(&m);
        let live = root_only(env).join("secrets");
        assert_eq!(fs::read_link(&live).unwrap(), env.generation(1));
        assert_content(&live.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn the_build_time_check_as_a_user_follows_links_of_any_owner_but_not_as_root() {
    isolated(|env| {
        // In the Nix build sandbox, root's store links appear owned by the overflow uid: the
        // unprivileged check, which installs nothing, follows them.
        let link = alice_dir(env).join("app.yaml");
        plant(&link, Path::new(&env.public_copy("app.yaml")), ALICE);
        let mut m = env.manifest(vec![env.secret_from("db_password", &s(&link), "app/db_password")]);
        m["ageKeyFile"] = Value::Null;
        let manifest = env.write_manifest(&m);
        let manifest_link = alice_dir(env).join("manifest.json");
        plant(&manifest_link, &manifest, ALICE);
        let mut cmd = env.command(
            &env.public_binary(),
            &manifest_link,
            &["-check-mode=sopsfile"],
            &[],
        );
        cmd.uid(NOBODY).gid(NOBODY);
        execute(cmd).assert_success();

        // As root, a user's link is not followed, even to check.
        let run = execute(env.command(&binary(), &manifest_link, &["-check-mode=sopsfile"], &[]));
        run.assert_failure();
        run.assert_stderr_names(&["manifest", &s(&manifest_link), &ALICE.to_string()]);
        let run = execute(env.command(&binary(), &manifest, &["-check-mode=sopsfile"], &[]));
        run.assert_failure();
        run.assert_stderr_names(&["sopsFile", &s(&link), &ALICE.to_string()]);
    });
}

#[test]
fn a_credstore_dir_under_a_users_symlink_is_refused_and_nothing_is_created_there() {
    isolated(|env| {
        let link = alice_dir(env).join("run");
        plant(&link, &root_only(env), ALICE);
        let mut token = env.secret("api_token", "app.yaml", "app/api_token");
        token["credential"] = json!(true);
        let mut m = env.manifest(vec![token]);
        m["credstoreDir"] = json!(s(&link.join("credstore")));
        let run = env.run(&m);
        run.assert_failure();
        run.assert_stderr_names(&[
            "credstoreDir",
            &s(&link),
            &ALICE.to_string(),
            "refusing to follow",
        ]);
        assert_eq!(
            entries(&root_only(env)),
            Vec::<String>::new(),
            "a directory was created through alice's link:\n{}",
            run.describe()
        );
    });
}

/// A user-mode setup: `secret-test`'s runtime directory, a world-writable directory holding an
/// age key and a link to it (`ageKeyFile`), and the manifest home-manager would write.
struct UserMode {
    runtime: PathBuf,
    keys: PathBuf,
    key_link: PathBuf,
    manifest: Value,
}

fn user_mode(env: &Env) -> UserMode {
    let runtime = env.path("xdg-runtime");
    fs::create_dir(&runtime).unwrap();
    set_mode(&runtime, 0o700);
    chown(&runtime, Some(SECRET_TEST), Some(SECRET_TEST)).unwrap();
    let keys = env.path("user-keys");
    fs::create_dir(&keys).unwrap();
    set_mode(&keys, 0o777);
    fs::copy(age_key_file(), keys.join("age.txt")).unwrap();
    set_mode(&keys.join("age.txt"), 0o644);
    let key_link = keys.join("link.txt");
    let sops_file = env.public_copy("app.yaml");
    let manifest = json!({
        "secrets": [
            { "name": "db_password", "key": "app/db_password", "path": "%r/secrets/db_password",
              "format": "yaml", "mode": "0400", "sopsFile": sops_file },
        ],
        "templates": [],
        "secretsMountPoint": "%r/secrets.d",
        "symlinkPath": "%r/secrets",
        "keepGenerations": 1,
        "gnupgHome": null,
        "sshKeyPaths": [],
        "ageKeyFile": s(&key_link),
        "ageSshKeyPaths": [],
        "placeholderBySecretName": {},
        "userMode": true,
        "logging": { "keyImport": false, "secretChanges": false },
    });
    UserMode {
        runtime,
        keys,
        key_link,
        manifest,
    }
}

/// Runs `m` as `secret-test` in user mode.
fn run_as_user(env: &Env, u: &UserMode, m: &Value) -> Run {
    let mut cmd = env.command(
        &env.public_binary(),
        &env.write_manifest(m),
        &["-ignore-passwd"],
        &[],
    );
    cmd.env("XDG_RUNTIME_DIR", &u.runtime)
        .uid(SECRET_TEST)
        .gid(SECRET_TEST);
    execute(cmd)
}

#[test]
fn in_user_mode_the_users_own_links_are_followed_and_another_users_are_not() {
    isolated(|env| {
        let u = user_mode(env);
        plant(&u.key_link, &u.keys.join("age.txt"), ALICE);
        let run = run_as_user(env, &u, &u.manifest);
        run.assert_failure();
        run.assert_stderr_names(&[
            "ageKeyFile",
            &s(&u.key_link),
            &ALICE.to_string(),
            "refusing to follow",
        ]);
        assert!(fs::symlink_metadata(u.runtime.join("secrets")).is_err());

        plant(&u.key_link, &u.keys.join("age.txt"), SECRET_TEST);
        run_as_user(env, &u, &u.manifest).assert_success();
        assert_content(
            &u.runtime.join("secrets/db_password"),
            &expected("app.db_password"),
        );
    });
}

#[test]
fn in_user_mode_a_mount_point_under_another_users_link_is_refused_and_nothing_is_created_there() {
    isolated(|env| {
        let u = user_mode(env);
        plant(&u.key_link, &u.keys.join("age.txt"), SECRET_TEST);
        let elsewhere = env.path("alice-runtime");
        fs::create_dir(&elsewhere).unwrap();
        set_mode(&elsewhere, 0o777);
        plant(&u.runtime.join("linked"), &elsewhere, ALICE);
        let mut m = u.manifest.clone();
        m["secretsMountPoint"] = json!("%r/linked/secrets.d");
        let run = run_as_user(env, &u, &m);
        assert_eq!(
            entries(&elsewhere),
            Vec::<String>::new(),
            "a directory was created through alice's link:\n{}",
            run.describe()
        );
        run.assert_failure();
        run.assert_stderr_names(&[
            "secretsMountPoint",
            &s(&u.runtime.join("linked")),
            &ALICE.to_string(),
        ]);
    });
}

// ---------------------------------------------------------------------------------------------
// Input files that are not regular files
// ---------------------------------------------------------------------------------------------

/// How long a refusal of a FIFO may take; the old installer waited for a writer forever.
const QUICK: Duration = Duration::from_secs(10);

/// Runs `cmd`, killing it if it is still running after QUICK.
fn run_quickly(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > QUICK {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the installer was still running after {QUICK:?}: it waits on a FIFO");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: String::from_utf8_lossy(&out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

fn fifo(env: &Env, name: &str) -> PathBuf {
    let p = env.path(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    p
}

#[track_caller]
fn assert_fifo_refused(env: &Env, m: &Value, field: &str, fifo: &Path) {
    let run = run_quickly(env.command(&binary(), &env.write_manifest(m), &[], &[]));
    run.assert_failure();
    run.assert_stderr_names(&[field, &s(fifo), "FIFO", "not a regular file"]);
    assert!(fs::symlink_metadata(&env.link).is_err());
}

#[test]
fn a_fifo_as_sops_file_is_refused_at_once() {
    isolated(|env| {
        let f = fifo(env, "secrets.yaml");
        let m = env.manifest(vec![env.secret_from("db_password", &s(&f), "app/db_password")]);
        assert_fifo_refused(env, &m, "sopsFile", &f);
        // The build-time check reads sops files too.
        let run =
            run_quickly(env.command(&binary(), &env.write_manifest(&m), &["-check-mode=sopsfile"], &[]));
        run.assert_failure();
        run.assert_stderr_names(&["sopsFile", &s(&f), "FIFO", "not a regular file"]);
    });
}

#[test]
fn a_fifo_as_template_file_is_refused_at_once() {
    isolated(|env| {
        let f = fifo(env, "app.conf");
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        let mut t = env.template("app.conf", "");
        t["content"] = json!("");
        t["file"] = json!(s(&f));
        with_templates(&mut m, vec![t]);
        assert_fifo_refused(env, &m, "file", &f);
    });
}

#[test]
fn a_fifo_as_age_key_file_is_refused_at_once() {
    isolated(|env| {
        let f = fifo(env, "keys.txt");
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["ageKeyFile"] = json!(s(&f));
        assert_fifo_refused(env, &m, "ageKeyFile", &f);
    });
}

#[test]
fn a_fifo_as_the_manifest_is_refused_at_once() {
    isolated(|env| {
        let f = fifo(env, "manifest.json");
        let run = run_quickly(env.command(&binary(), &f, &[], &[]));
        run.assert_failure();
        run.assert_stderr_names(&["manifest", &s(&f), "FIFO", "not a regular file"]);
    });
}

#[test]
fn a_directory_as_sops_file_is_refused_as_not_a_regular_file() {
    isolated(|env| {
        let d = env.path("secrets.yaml");
        fs::create_dir(&d).unwrap();
        let m = env.manifest(vec![env.secret_from("db_password", &s(&d), "app/db_password")]);
        let run = env.run(&m);
        run.assert_failure();
        run.assert_stderr_names(&["sopsFile", &s(&d), "a directory, not a regular file"]);
        assert!(fs::symlink_metadata(&env.link).is_err());
    });
}

#[test]
fn a_record_behind_a_users_link_at_symlink_path_is_not_believed() {
    isolated(|env| {
        // symlinkPath in a directory alice owns: she can replace the live link with her own.
        let link = alice_dir(env).join("secrets");
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        m["symlinkPath"] = json!(s(&link));
        m["secrets"][0]["path"] = json!(s(&link.join("db_password")));
        env.install(&m);

        // Her link points at a generation of her making, whose record says a secret with her
        // units was installed and is now gone: believed, those units would be restarted.
        let forged = alice_dir(env).join("forged");
        fs::create_dir(&forged).unwrap();
        let record = json!({
            "secrets": {
                "gone": {
                    "path": s(&link.join("gone")),
                    "restartUnits": ["forged.service"],
                    "reloadUnits": ["forged-reload.service"],
                }
            },
            "templates": {}
        });
        fs::write(forged.join(STATE_FILE), serde_json::to_vec(&record).unwrap()).unwrap();
        chown(&forged, Some(ALICE), Some(ALICE)).unwrap();
        chown(forged.join(STATE_FILE), Some(ALICE), Some(ALICE)).unwrap();
        plant(&link, &forged, ALICE);

        let run = env.run(&m);
        assert!(
            !activation_list("activation-restart-list").contains(&"forged.service".to_owned())
                && !activation_list("activation-reload-list").contains(&"forged-reload.service".to_owned()),
            "units named by a record behind alice's link were requested:\n{}",
            run.describe()
        );
    });
}
