//! Manifests that a careless or hostile configuration could produce: modes with a sign, ids that
//! `fchown` ignores, names too long for the kernel or holding control characters, unit names that
//! would add lines of their own to `activation-restart-list`, owners that are paths. The binary
//! refuses each of them, naming the secret or template, the field and what to write instead, and
//! lists every problem of a manifest in one run.
//!
//! The first tests run `-check-mode=manifest` (the check the manifest derivation runs at build
//! time), which needs no root. The last ones install as root with the harness of `tests/root/`
//! and show that a refused manifest leaves the live generation, the activation lists and systemd
//! alone; like `tests/install.rs` they skip without root, and fail under CI.
//!
//! Manifests sops-nix's module writes for valid configurations must keep passing: see
//! `sops_nix_modes_owners_and_units_are_accepted`.

mod root;

use root::*;

/// A secret as sops-nix's module writes it, for the check-mode tests (nothing is read from
/// `/run`; the sops file is a real fixture).
fn secret(name: &str) -> Value {
    json!({
        "name": name,
        "key": "app/db_password",
        "path": format!("/run/secrets/{name}"),
        "owner": null,
        "uid": 0,
        "group": null,
        "gid": 0,
        "sopsFile": enc("app.yaml"),
        "format": "yaml",
        "mode": "0400",
        "restartUnits": [],
        "reloadUnits": [],
    })
}

/// A template as the module writes it (inline content, no file to read).
fn template(name: &str) -> Value {
    json!({
        "name": name,
        "content": "password=<SOPS:placeholder-of-db:PLACEHOLDER>\n",
        "file": null,
        "path": format!("/run/secrets/rendered/{name}"),
        "mode": "0400",
        "owner": null,
        "uid": 0,
        "group": null,
        "gid": 0,
        "restartUnits": [],
        "reloadUnits": [],
    })
}

fn manifest(secrets: Vec<Value>, templates: Vec<Value>) -> Value {
    let mut m = json!({
        "secrets": secrets,
        "templates": [],
        "placeholderBySecretName": {},
        "secretsMountPoint": "/run/secrets.d",
        "symlinkPath": "/run/secrets",
        "keepGenerations": 1,
        "sshKeyPaths": [],
        "gnupgHome": null,
        "ageKeyFile": null,
        "ageSshKeyPaths": [],
        "useTmpfs": false,
        "userMode": false,
        "logging": { "keyImport": true, "secretChanges": true },
    });
    if !templates.is_empty() {
        with_templates(&mut m, templates);
    }
    m
}

/// `-check-mode=manifest` on `m`: (success, stderr).
fn check(m: &Value) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    fs::write(&path, serde_json::to_vec(m).unwrap()).unwrap();
    let out = Command::new(binary())
        .arg("-check-mode=manifest")
        .arg(&path)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `m` fails the check, and stderr holds every one of `lines` (the problems, each naming its
/// secret or template and field).
#[track_caller]
fn assert_check_refuses(m: &Value, lines: &[&str]) {
    let (ok, stderr) = check(m);
    assert!(!ok, "the manifest was accepted:\n{m:#}");
    for line in lines {
        assert!(stderr.contains(line), "stderr lacks {line:?}:\n{stderr}");
    }
}

#[track_caller]
fn assert_check_accepts(m: &Value) {
    let (ok, stderr) = check(m);
    assert!(ok, "the manifest was refused:\n{stderr}\n{m:#}");
}

// ---------------------------------------------------------------------------------------------
// Without root: the build-time check refuses
// ---------------------------------------------------------------------------------------------

#[test]
fn sops_nix_modes_owners_and_units_are_accepted() {
    let mut secrets = Vec::new();
    for (i, mode) in ["0400", "400", "0755", "0440", "0", "7777", "4750"]
        .iter()
        .enumerate()
    {
        let mut s = secret(&format!("mode{i}"));
        s["mode"] = json!(mode);
        secrets.push(s);
    }
    let mut named = secret("named");
    named["owner"] = json!("nginx");
    named["group"] = json!("nginx");
    named["restartUnits"] = json!(["nginx.service", "foo@bar.service", "getty@tty1.service"]);
    named["reloadUnits"] = json!(["sshd.socket", "var-lib-x\\x2dy.mount", "backup.timer"]);
    secrets.push(named);
    let mut numeric = secret("numeric/deep/name");
    // uid null (the option is nullOr int) means 0, as in sops-nix.
    numeric["uid"] = json!(null);
    numeric["gid"] = json!(1000);
    secrets.push(numeric);
    let mut longest = secret(&"n".repeat(255));
    longest["uid"] = json!(4294967294u32);
    secrets.push(longest);
    let mut t = template("app/config.toml");
    t["mode"] = json!("0440");
    t["owner"] = json!("app-user_1");
    t["group"] = json!("app.group");
    t["restartUnits"] = json!(["app.service"]);
    t["reloadUnits"] = json!(["nginx.service"]);
    assert_check_accepts(&manifest(secrets, vec![t]));
}

#[test]
fn modes_that_are_not_one_to_four_octal_digits_are_refused() {
    for mode in ["+400", "-400", "0o400", "00400", " 400", "4OO", "", "0x1ff"] {
        let mut s = secret("db");
        s["mode"] = json!(mode);
        assert_check_refuses(
            &manifest(vec![s], vec![]),
            &[&format!(
                r#"secret "db": mode {mode:?} is not an octal mode of 1 to 4 digits (like "0400")"#
            )],
        );
        let mut t = template("app.conf");
        t["mode"] = json!(mode);
        assert_check_refuses(
            &manifest(vec![secret("db")], vec![t]),
            &[&format!(
                r#"template "app.conf": mode {mode:?} is not an octal mode"#
            )],
        );
    }
}

#[test]
fn uid_and_gid_that_fchown_ignores_are_refused() {
    // fchown(fd, -1, -1) changes nothing: the file would stay root's, silently.
    let mut by_uid = secret("by_uid");
    by_uid["uid"] = json!(4294967295u32);
    let mut by_gid = secret("by_gid");
    by_gid["gid"] = json!(4294967295u32);
    let mut negative = secret("negative");
    negative["uid"] = json!(-1);
    let mut t = template("rendered.conf");
    t["uid"] = json!(4294967295u32);
    t["gid"] = json!(4294967295u32);
    assert_check_refuses(
        &manifest(vec![by_uid, by_gid, negative], vec![t]),
        &[
            r#"secret "by_uid": uid 4294967295 is the id fchown(2) takes as "leave unchanged""#,
            r#"secret "by_gid": gid 4294967295 is the id fchown(2) takes as "leave unchanged""#,
            r#"secret "negative": uid -1 is not an id (a whole number from 0 to 4294967294)"#,
            r#"template "rendered.conf": uid 4294967295"#,
            r#"template "rendered.conf": gid 4294967295"#,
        ],
    );
}

#[test]
fn names_longer_than_name_max_or_path_max_are_refused() {
    let component = "c".repeat(256);
    // 21 components of 200 bytes: every one fits NAME_MAX, the whole does not fit PATH_MAX.
    let deep = vec!["d".repeat(200); 21].join("/");
    assert_check_refuses(
        &manifest(
            vec![secret(&format!("dir/{component}")), secret(&deep)],
            vec![template(&component), template(&deep)],
        ),
        &[
            &format!(
                r#"secret "dir/{}...": the path component "{}..." is 256 bytes long; a file name can have at most 255 (NAME_MAX)"#,
                &component[..76],
                &component[..80]
            ),
            &format!(r#"template "{}...": the path component"#, &component[..80]),
            &format!(
                r#"secret "{}...": the name's full path "/run/secrets/"#,
                &deep[..80]
            ),
            "is 4233 bytes long; a path can have at most 4095 (PATH_MAX); choose a shorter name",
            &format!(
                r#"template "{}...": the name's full path "/run/secrets/rendered/"#,
                &deep[..80]
            ),
        ],
    );
}

#[test]
fn names_with_control_characters_are_refused() {
    for (name, shown) in [
        ("db\nforged", r"'\n'"),
        ("db\r", r"'\r'"),
        ("tab\there", r"'\t'"),
        ("red\u{1b}[31m", r"'\u{1b}'"),
        ("del\u{7f}", r"'\u{7f}'"),
        ("next\u{85}line", r"'\u{85}'"),
    ] {
        let label = format!("{name:?}");
        assert_check_refuses(
            &manifest(vec![secret(name)], vec![]),
            &[&format!(
                "secret {label}: the name contains the control character {shown}"
            )],
        );
        assert_check_refuses(
            &manifest(vec![secret("db")], vec![template(name)]),
            &[&format!(
                "template {label}: the name contains the control character {shown}"
            )],
        );
    }
}

#[test]
fn unit_names_systemd_would_not_accept_are_refused() {
    let mut forged = secret("db");
    forged["restartUnits"] = json!(["db.service\nforged.service"]);
    let mut bare = secret("api");
    bare["reloadUnits"] = json!(["nginx", "x.services"]);
    let mut t = template("app.conf");
    t["restartUnits"] = json!(["getty@.service", "@x.service"]);
    t["reloadUnits"] = json!(["a b.service", format!("{}.service", "u".repeat(248))]);
    assert_check_refuses(
        &manifest(vec![forged, bare], vec![t]),
        &[
            r#"secret "db": restartUnits entry "db.service\nforged.service" is not a systemd unit name: it contains '\n'"#,
            r#"secret "api": reloadUnits entry "nginx" is not a systemd unit name: it has no unit type; write the whole name, like "nginx.service""#,
            r#"secret "api": reloadUnits entry "x.services" is not a systemd unit name: ".services" is not a unit type"#,
            r#"template "app.conf": restartUnits entry "getty@.service" is not a systemd unit name: it is a template, which cannot be restarted; name an instance, like "getty@example.service""#,
            r#"template "app.conf": restartUnits entry "@x.service" is not a systemd unit name: it starts with `@`"#,
            r#"template "app.conf": reloadUnits entry "a b.service" is not a systemd unit name: it contains ' '"#,
            "is not a systemd unit name: it is 256 bytes long; systemd allows at most 255",
        ],
    );
}

#[test]
fn owner_and_group_names_with_control_characters_or_paths_are_refused() {
    let mut a = secret("a");
    a["owner"] = json!("root\nforged");
    let mut b = secret("b");
    b["group"] = json!("../../etc/shadow");
    let mut c = secret("c");
    c["owner"] = json!("");
    let mut t = template("t");
    t["owner"] = json!("/etc/passwd");
    t["group"] = json!("wheel:x:0");
    assert_check_refuses(
        &manifest(vec![a, b, c], vec![t]),
        &[
            r#"secret "a": owner "root\nforged" is not a user name: it contains the control character '\n'"#,
            r#"secret "b": group "../../etc/shadow" is not a group name: it contains `/`"#,
            r#"secret "c": owner "" is not a user name: it is empty"#,
            r#"template "t": owner "/etc/passwd" is not a user name: it contains `/`"#,
            r#"template "t": group "wheel:x:0" is not a group name: it contains `:`"#,
        ],
    );
}

#[test]
fn paths_with_control_characters_are_refused() {
    let mut s = secret("db");
    s["path"] = json!("/etc/db\nforged");
    let mut t = template("t");
    t["path"] = json!("/etc/t\u{1b}");
    let mut m = manifest(vec![s], vec![t]);
    m["symlinkPath"] = json!("/run/secrets\nforged");
    m["secretsMountPoint"] = json!("/run/secrets.d\t");
    assert_check_refuses(
        &m,
        &[
            r#"symlinkPath "/run/secrets\nforged" contains the control character '\n'"#,
            r#"secretsMountPoint "/run/secrets.d\t" contains the control character '\t'"#,
            r#"secret "db": path "/etc/db\nforged" contains the control character '\n'"#,
            r#"template "t": path "/etc/t\u{1b}" contains the control character '\u{1b}'"#,
        ],
    );
    // Each problem once: the bad symlinkPath is not repeated for every name below it.
    let (_, stderr) = check(&m);
    assert_eq!(stderr.matches("control character").count(), 4, "{stderr}");
}

#[test]
fn every_problem_of_a_manifest_is_reported_at_once() {
    let mut s = secret("db\nx");
    s["mode"] = json!("+400");
    s["uid"] = json!(4294967295u32);
    s["restartUnits"] = json!(["a\nb.service"]);
    let mut other = secret("other");
    other["group"] = json!("g/h");
    other["reloadUnits"] = json!(["nginx"]);
    let mut t = template("t");
    t["mode"] = json!("0o600");
    t["gid"] = json!(4294967295u32);
    let (ok, stderr) = check(&manifest(vec![s, other], vec![t]));
    assert!(!ok);
    for needle in [
        r#"secret "db\nx": the name contains the control character"#,
        r#"secret "db\nx": mode "+400""#,
        r#"secret "db\nx": path "/run/secrets/db\nx" contains the control character"#,
        r#"secret "db\nx": uid 4294967295"#,
        r#"secret "db\nx": restartUnits entry "a\nb.service""#,
        r#"secret "other": group "g/h""#,
        r#"secret "other": reloadUnits entry "nginx""#,
        r#"template "t": mode "0o600""#,
        r#"template "t": gid 4294967295"#,
    ] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}:\n{stderr}");
    }
    // Each problem on a line of its own: no name or unit broke a line.
    let problems = stderr.lines().filter(|l| l.starts_with("  ")).count();
    assert_eq!(problems, 9, "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// As root: a refused manifest changes nothing
// ---------------------------------------------------------------------------------------------

#[test]
fn newline_in_a_unit_name_does_not_forge_the_restart_list() {
    isolated(|env| {
        install_baseline(env);
        // db_password changes, so its units would be requested.
        let mut bad = two_secrets(env, "app_v2.yaml");
        bad["secrets"][0]["restartUnits"] = json!(["db.service\nforged.service"]);
        bad["secrets"][0]["reloadUnits"] = json!(["db-reload.service\nforged-reload.service"]);
        assert_refused(
            env,
            &bad,
            &[
                r#"secret "db_password": restartUnits entry "db.service\nforged.service" is not a systemd unit name"#,
                r#"secret "db_password": reloadUnits entry "db-reload.service\nforged-reload.service""#,
            ],
        );
        env.assert_live(1);
        for list in ["activation-restart-list", "activation-reload-list"] {
            assert_eq!(activation_list(list), Vec::<String>::new(), "{list}");
        }

        // Nor through systemctl, when running as sops-nix.service.
        let run = env.run_with(&bad, &[], &[("SOPS_RESTART_UNITS_VIA_SYSTEMCTL", "1")]);
        run.assert_failure();
        assert_eq!(env.systemctl_calls(), Vec::<String>::new());
        env.assert_live(1);
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn a_signed_mode_leaves_the_live_generation_untouched() {
    isolated(|env| {
        install_baseline(env);
        let mut bad = two_secrets(env, "app_v2.yaml");
        bad["secrets"][0]["mode"] = json!("+400");
        assert_refused(
            env,
            &bad,
            &[r#"secret "db_password": mode "+400" is not an octal mode of 1 to 4 digits (like "0400")"#],
        );
        env.assert_live(1);
    });
}

#[test]
fn an_id_fchown_ignores_leaves_the_live_generation_untouched() {
    isolated(|env| {
        install_baseline(env);
        let mut bad = two_secrets(env, "app_v2.yaml");
        bad["secrets"][1]["uid"] = json!(4294967295u32);
        bad["secrets"][1]["gid"] = json!(4294967295u32);
        assert_refused(
            env,
            &bad,
            &[
                r#"secret "api_token": uid 4294967295"#,
                r#"secret "api_token": gid 4294967295"#,
            ],
        );
        env.assert_live(1);
    });
}

#[test]
fn a_control_character_in_a_name_leaves_the_live_generation_untouched() {
    isolated(|env| {
        let good = install_baseline(env);
        let mut bad = good.clone();
        let mut forged = env.secret("new\nmodifying secret: api_token", "app.yaml", "app/api_token");
        forged["path"] = json!(s(&env.path("forged")));
        bad["secrets"].as_array_mut().unwrap().push(forged);
        let run = assert_refused(
            env,
            &bad,
            &[r#"secret "new\nmodifying secret: api_token": the name contains the control character '\n'"#],
        );
        assert!(
            !run.stdout.lines().any(|l| l == "modifying secret: api_token"),
            "a forged change line:\n{}",
            run.describe()
        );
        env.assert_live(1);
    });
}

#[test]
fn a_forged_unit_in_an_older_generations_record_is_not_written_to_the_restart_list() {
    isolated(|env| {
        let good = install_baseline(env);
        // A record as an installer without the unit-name check could have left it.
        let record = env.generation(1).join(STATE_FILE);
        let mut state: Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
        state["secrets"]["api_token"]["restartUnits"] = json!(["api.service\nforged.service"]);
        fs::write(&record, serde_json::to_vec(&state).unwrap()).unwrap();

        // api_token goes away, so the units recorded for it would be restarted.
        let mut without_api = good.clone();
        without_api["secrets"].as_array_mut().unwrap().truncate(1);
        let run = env.run(&without_api);
        run.assert_failure();
        run.assert_stderr_names(&[r#"unit "api.service\nforged.service" is not a systemd unit name"#]);
        for list in ["activation-restart-list", "activation-reload-list"] {
            assert!(
                !activation_list(list).iter().any(|l| l.contains("forged")),
                "{list}: {:?}",
                activation_list(list)
            );
        }
    });
}
