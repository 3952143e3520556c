//! The installer honours the age identities sops users put in `sops.environment` (issue 16,
//! item 4): `SOPS_AGE_KEY`, `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY_CMD` (run once per run) and
//! `SOPS_AGE_SSH_PRIVATE_KEY_FILE`, each adding to the manifest's own identities.
//!
//! Root tests in private mount namespaces, with the harness of `tests/root/mod.rs`.

mod root;

use root::*;

fn key_text(name: &str) -> String {
    fs::read_to_string(fixtures().join("keys").join(name)).unwrap()
}

#[test]
fn sops_age_key_adds_to_the_manifests_identities() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        // The manifest's own key file opens nothing here.
        m["ageKeyFile"] = json!(s(&fixtures().join("keys/unrelated_age.txt")));
        env.run(&m).assert_failure();
        let key = key_text("age1.txt");
        env.run_with(&m, &[], &[("SOPS_AGE_KEY", &key)]).assert_success();
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
    });
}

#[test]
fn sops_age_key_cmd_runs_once_however_many_files_it_opens() {
    isolated(|env| {
        let count = env.path("key-cmd-runs");
        let script = env.path("bin/print-age-key");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho run >> '{}'\ncat '{}'\n",
                count.display(),
                fixtures().join("keys/age1.txt").display()
            ),
        )
        .unwrap();
        set_mode(&script, 0o755);
        let mut m = env.manifest(vec![
            env.secret("db_password", "app.yaml", "app/db_password"),
            env.secret("json_secret", "app.json", "api/key"),
            env.secret("dotenv", "app.env", ""),
        ]);
        m["ageKeyFile"] = Value::Null;
        // Split into words as sops does: the quoted path stays one word.
        let cmd = format!("'{}'", script.display());
        env.run_with(&m, &[], &[("SOPS_AGE_KEY_CMD", &cmd)])
            .assert_success();
        assert_content(&env.link.join("db_password"), &expected("app.db_password"));
        assert_eq!(lines_of(&count), ["run"], "the command ran once for three files");
    });
}

#[test]
fn a_failing_sops_age_key_cmd_is_named_and_nothing_changes() {
    isolated(|env| {
        let good = env.manifest(vec![env.secret("db_password", "app.yaml", "app/db_password")]);
        env.install(&good);
        let mut m = good.clone();
        m["ageKeyFile"] = Value::Null;
        let before = live_state(env);
        let run = env.run_with(&m, &[], &[("SOPS_AGE_KEY_CMD", "false --no-key-here")]);
        run.assert_failure();
        run.assert_stderr_names(&["SOPS_AGE_KEY_CMD", "false"]);
        assert_eq!(live_state(env), before);
    });
}

#[test]
fn sops_age_ssh_private_key_file_is_an_identity() {
    isolated(|env| {
        let mut m = env.manifest(vec![env.secret("from_host_key", "host.yaml", "host_secret")]);
        m["ageKeyFile"] = Value::Null;
        let key = s(&fixtures().join("keys/host_ed25519"));
        env.run_with(&m, &[], &[("SOPS_AGE_SSH_PRIVATE_KEY_FILE", &key)])
            .assert_success();
        assert_content(&env.link.join("from_host_key"), &expected("host.host_secret"));
    });
}
