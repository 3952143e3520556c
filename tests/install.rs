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

mod root;

use root::*;

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

#[test]
fn the_installed_line_counts_one_secret_in_the_singular() {
    isolated(|env| {
        let run = env.install(&env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]));
        run.assert_stderr_names(&["installed 1 secret and 0 templates as generation 1"]);
    });
}

#[test]
fn an_unchanged_rerun_compares_with_the_generations_record_not_the_live_files() {
    isolated(|env| {
        let m = two_secrets(env, "app.yaml");
        env.install(&m);
        let record = env.generation(1).join(STATE_FILE);
        assert_mode_owner(&record, 0o400, 0, 0);
        let text = fs::read_to_string(&record).unwrap();
        assert!(!text.contains(MARKER), "the record holds plaintext");
        assert!(text.contains("\"digestKey\""), "{text}");

        // Bytes changed behind the installer's back are not read: the record decides.
        let live = env.generation(1).join("db_password");
        fs::write(&live, b"changed behind our back").unwrap();
        let run = env.install(&m);
        assert!(!run.stdout.contains("modifying"), "{}", run.describe());
        assert_eq!(activation_list("activation-restart-list"), Vec::<String>::new());
        // The new generation has the right bytes all the same.
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));

        // A real change is seen through the digests.
        let run = env.install(&two_secrets(env, "app_v2.yaml"));
        run.assert_printed("modifying secret: db_password");
        assert_eq!(activation_list("activation-restart-list"), ["db.service"]);
    });
}

#[test]
fn a_record_without_digests_makes_the_next_run_read_the_live_copies() {
    isolated(|env| {
        let m = two_secrets(env, "app.yaml");
        env.install(&m);
        // The record as an older version wrote it: no key, no digests, modes or owners.
        let record = env.generation(1).join(STATE_FILE);
        let mut v: Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
        v.as_object_mut().unwrap().remove("digestKey");
        for kind in ["secrets", "templates"] {
            for (_, e) in v[kind].as_object_mut().unwrap() {
                for field in ["digest", "mode", "uid", "gid"] {
                    e.as_object_mut().unwrap().remove(field);
                }
            }
        }
        fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();

        // Without digests the live copy is read: bytes changed behind our back show.
        fs::write(env.generation(1).join("db_password"), b"changed behind our back").unwrap();
        let run = env.install(&m);
        run.assert_printed("modifying secret: db_password");
        // That run wrote a record with digests again, and the next one uses it.
        let mut m2 = two_secrets(env, "app_v2.yaml");
        m2["secrets"][1]["mode"] = json!("0440");
        let run = env.install(&m2);
        run.assert_printed("modifying secrets: api_token, db_password");
        let record = env.generation(3).join(STATE_FILE);
        assert!(fs::read_to_string(&record).unwrap().contains("\"digestKey\""));
    });
}

#[test]
fn a_copy_only_its_owner_may_read_is_linked_when_unchanged() {
    use std::os::unix::fs::MetadataExt;
    isolated(|env| {
        // db_password is secret-test's, mode 0400: root reads it only by its
        // capabilities, and the readers keep no more than CAP_DAC_READ_SEARCH.
        let mut m = two_secrets(env, "app.yaml");
        m["keepGenerations"] = json!(0);
        env.install(&m);
        env.install(&m);
        assert_file(
            &env.generation(2).join("db_password"),
            0o400,
            SECRET_TEST,
            SECRET_TEST,
        );
        let ino = |g: u64| {
            fs::symlink_metadata(env.generation(g).join("db_password"))
                .unwrap()
                .ino()
        };
        assert_eq!(ino(1), ino(2), "the unchanged copy was written anew, not linked");
    });
}

#[test]
fn an_unchanged_secret_is_linked_into_the_next_generation_and_a_changed_one_written() {
    use std::os::unix::fs::MetadataExt;
    isolated(|env| {
        let mut m1 = two_secrets(env, "app.yaml");
        m1["keepGenerations"] = json!(0);
        let mut m2 = two_secrets(env, "app_v2.yaml");
        m2["keepGenerations"] = json!(0);
        env.install(&m1);
        env.install(&m2);
        let ino = |g: u64, name: &str| fs::symlink_metadata(env.generation(g).join(name)).unwrap().ino();
        // api_token is the same in both: one inode, owned and moded as before.
        assert_eq!(ino(1, "api_token"), ino(2, "api_token"));
        assert_eq!(
            fs::metadata(env.generation(2).join("api_token")).unwrap().nlink(),
            2
        );
        assert_content(&env.generation(2).join("api_token"), &expected("app.api_token"));
        // db_password changed: a new file, and generation 1 keeps its old bytes.
        assert_ne!(ino(1, "db_password"), ino(2, "db_password"));
        assert_content(
            &env.generation(1).join("db_password"),
            &expected("app.db_password"),
        );
        assert_content(
            &env.generation(2).join("db_password"),
            &expected("app_v2.db_password"),
        );
        assert_file(
            &env.generation(2).join("db_password"),
            0o400,
            SECRET_TEST,
            SECRET_TEST,
        );

        // An owner change is a change: the file is written anew, the live copy untouched.
        let mut m3 = m2.clone();
        m3["secrets"][1]["owner"] = json!("alice");
        env.install(&m3);
        assert_ne!(ino(2, "api_token"), ino(3, "api_token"));
        assert_eq!(
            fs::metadata(env.generation(2).join("api_token")).unwrap().uid(),
            0
        );
        assert_eq!(
            fs::metadata(env.generation(3).join("api_token")).unwrap().uid(),
            ALICE
        );
    });
}

/// Problems of many files come in the manifest's order, the same every run
/// (whatever order files are worked on), and every good file's values are
/// installed once the broken ones are gone.
#[test]
fn problems_of_many_files_come_in_the_manifests_order_every_run() {
    isolated(|env| {
        let missing = s(&env.path("no-such-file.yaml"));
        let secrets = vec![
            env.secret("ok_yaml", "app.yaml", "app/db_password"),
            env.secret("tampered_secret", "tampered.yaml", "app/db_password"),
            env.secret("ok_json", "app.json", ""),
            env.secret_from("missing_file", &missing, "app/db_password"),
            env.secret("foreign", "other_key.yaml", "other"),
            env.secret("ok_v2", "app_v2.yaml", "app/db_password"),
            env.secret("missing_key", "app_v2.yaml", "no/such/key"),
            env.secret("ok_env", "app.env", ""),
        ];
        let bad = env.manifest(secrets);
        let order = ["tampered_secret", "missing_file", "foreign", "missing_key"];
        let mut first: Option<String> = None;
        for _ in 0..5 {
            let run = assert_refused(env, &bad, &order);
            let at: Vec<usize> = order
                .iter()
                .map(|n| run.stderr.find(&format!("{n:?}")).unwrap())
                .collect();
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "out of order:\n{}",
                run.stderr
            );
            // Each run's manifest has its own file name, on the first line only.
            let problems = run.stderr.split_once('\n').unwrap().1.to_owned();
            match &first {
                None => first = Some(problems),
                Some(f) => assert_eq!(f, &problems, "the report changed between runs"),
            }
        }
        // The same files without the broken ones install every value.
        let good = env.manifest(vec![
            env.secret("ok_yaml", "app.yaml", "app/db_password"),
            env.secret("ok_json", "app.json", ""),
            env.secret("ok_v2", "app_v2.yaml", "app/db_password"),
            env.secret("ok_env", "app.env", ""),
            env.secret("blob", "blob.bin", ""),
        ]);
        env.install(&good);
        assert_content(&env.link.join("ok_yaml"), &expected("app.db_password"));
        assert_content(&env.link.join("ok_v2"), &expected("app_v2.db_password"));
        for name in ["ok_json", "ok_env", "blob"] {
            assert!(
                !fs::read(env.link.join(name)).unwrap().is_empty(),
                "{name} is empty"
            );
        }
    });
}
