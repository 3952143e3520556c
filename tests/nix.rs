//! The Nix side, as far as it runs without nixpkgs: every `.nix` file in the
//! repository parses, and the pure manifest builder (`nixos-module/manifest.nix`,
//! which both modules call) turns the examples in `tests/fixtures/nix/` into
//! manifests that the real installer accepts with `-check-mode=manifest` and
//! `-check-mode=sopsfile`, the checks the manifest derivation runs at build time.
//!
//! Needs `nix-instantiate` (Debian's `nix-bin`). Without it each test prints a
//! notice and passes, unless `CI` is set: then it fails, so CI cannot skip them
//! by accident. Evaluation uses `--read-write-mode` because the builder names
//! sops files by their store path (builtins.toJSON copies them into the store)
//! and the sopsfile check must find them there.
//!
//! The NixOS VM tests (`vm-tests/nixos/`) need nixpkgs and a VM; they run with
//! `nix flake check`, not here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> PathBuf {
    repo().join("tests/fixtures/nix")
}

/// Whether `program --version` runs; panics in CI when it cannot (CI must install it).
fn have_tool(program: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{program} is missing; CI must install it (apt-get install -y {package})");
        }
        eprintln!("skipping: {program} not found (apt-get install {package})");
    }
    found
}

/// Whether `nix-instantiate` can run; panics in CI when it cannot.
fn have_nix() -> bool {
    have_tool("nix-instantiate", "nix-bin")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `nix-instantiate --eval --strict --json` on a file or (with `expr`) an expression.
///
/// The tests run side by side, and each evaluation may add paths to the
/// store: Nix 2.8 can then fail at once with "SQLite database ... is busy"
/// where another `nix-instantiate` holds the store's database. That, and
/// only that, is tried again.
fn nix_eval(args: &[&str]) -> Result<Value, String> {
    let mut attempt = 0;
    loop {
        let out = Command::new("nix-instantiate")
            .args(["--read-write-mode", "--eval", "--strict", "--json"])
            .args(args)
            .current_dir(repo())
            .output()
            .expect("nix-instantiate runs");
        if out.status.success() {
            return Ok(serde_json::from_slice(&out.stdout).expect("nix-instantiate --json prints JSON"));
        }
        let err = text(&out.stderr);
        attempt += 1;
        if !(err.contains("SQLite database") && err.contains("is busy")) || attempt == 10 {
            return Err(err);
        }
        std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
    }
}

fn eval_example(name: &str) -> Value {
    let file = examples().join(name);
    nix_eval(&[file.to_str().unwrap()]).unwrap_or_else(|e| panic!("{name} does not evaluate:\n{e}"))
}

/// The builder called on `args` (a Nix attribute set, as source text).
fn eval_builder(args: &str) -> Result<Value, String> {
    let builder = repo().join("nixos-module/manifest.nix");
    let expr = format!("import {} ({args})", builder.display());
    nix_eval(&["--expr", &expr])
}

/// Runs the installer's check mode on a manifest.
fn check(manifest: &Value, mode: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, serde_json::to_vec(manifest).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sops-install-secrets"))
        .arg(format!("-check-mode={mode}"))
        .arg(&path)
        // `%r` in user-mode manifests needs a runtime directory to expand to,
        // as in the home-manager module's build-time check.
        .env("XDG_RUNTIME_DIR", "/run/user/1000")
        .output()
        .unwrap()
}

fn assert_checks_pass(name: &str, manifest: &Value) {
    for mode in ["manifest", "sopsfile"] {
        let out = check(manifest, mode);
        assert!(
            out.status.success(),
            "{name}: -check-mode={mode} refused the manifest:\n{}\n{manifest:#}",
            text(&out.stderr)
        );
    }
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            if !name.starts_with('.') && name != "target" {
                nix_files(&path, found);
            }
        } else if name.ends_with(".nix") {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    if !have_nix() {
        return;
    }
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    files.sort();
    for expected in [
        "flake.nix",
        "nixos-module/default.nix",
        "nixos-module/manifest.nix",
    ] {
        assert!(files.contains(&repo().join(expected)), "{expected} not found");
    }
    let mut broken = Vec::new();
    for file in &files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .unwrap();
        if !out.status.success() {
            broken.push(format!("{}:\n{}", file.display(), text(&out.stderr)));
        }
    }
    assert!(
        broken.is_empty(),
        "these .nix files do not parse:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_example_manifest_passes_both_check_modes() {
    if !have_nix() {
        return;
    }
    let mut names: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nix") && !n.starts_with("fail-"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "too few examples: {names:?}");
    for name in &names {
        assert_checks_pass(name, &eval_example(name));
    }
}

#[test]
fn first_configuration_manifest_field_by_field() {
    if !have_nix() {
        return;
    }
    let m = eval_example("first-configuration.nix");
    assert_eq!(
        keys(&m),
        BTreeSet::from([
            "secrets",
            "templates",
            "placeholderBySecretName",
            "secretsMountPoint",
            "symlinkPath",
            "keepGenerations",
            "sshKeyPaths",
            "gnupgHome",
            "ageKeyFile",
            "ageSshKeyPaths",
            "useTmpfs",
            "userMode",
            "logging",
            "onFailure",
            "hostPubKeys",
        ])
    );
    // Our additions keep sops-nix's behaviour by default.
    assert_eq!(m["onFailure"], "abort");
    assert_eq!(m["hostPubKeys"], json!([]));
    assert_eq!(m["templates"], json!([]));
    assert_eq!(m["placeholderBySecretName"], json!({}));
    assert_eq!(m["secretsMountPoint"], "/run/secrets.d");
    assert_eq!(m["symlinkPath"], "/run/secrets");
    assert_eq!(m["keepGenerations"], 1);
    assert_eq!(m["sshKeyPaths"], json!(["/etc/ssh/ssh_host_rsa_key"]));
    assert_eq!(m["gnupgHome"], Value::Null);
    assert_eq!(m["ageKeyFile"], Value::Null);
    assert_eq!(m["ageSshKeyPaths"], json!(["/etc/ssh/ssh_host_ed25519_key"]));
    assert_eq!(m["useTmpfs"], false);
    assert_eq!(m["userMode"], false);
    assert_eq!(m["logging"], json!({ "keyImport": true, "secretChanges": true }));

    let secrets = m["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 1);
    let s = &secrets[0];
    assert_eq!(s["credential"], false);
    assert_eq!(
        keys(s),
        BTreeSet::from([
            "credential",
            "name",
            "key",
            "path",
            "owner",
            "uid",
            "group",
            "gid",
            "sopsFile",
            "format",
            "mode",
            "restartUnits",
            "reloadUnits",
        ])
    );
    assert_eq!(s["name"], "ssh_keys/private_key");
    assert_eq!(s["key"], "ssh_keys/private_key");
    assert_eq!(s["path"], "/run/secrets/ssh_keys/private_key");
    assert_eq!(s["owner"], "secret-test");
    assert_eq!(s["uid"], 0);
    assert_eq!(s["group"], "secret-test");
    assert_eq!(s["gid"], 0);
    assert_eq!(s["format"], "yaml");
    assert_eq!(s["mode"], "0400");
    assert_eq!(s["restartUnits"], json!(["secret-test.service"]));
    assert_eq!(s["reloadUnits"], json!([]));
    // The sops file was copied into the store, unchanged.
    let sops_file = s["sopsFile"].as_str().unwrap();
    assert!(
        sops_file.starts_with("/nix/store/") && sops_file.ends_with("-ssh_keys.yaml"),
        "{sops_file}"
    );
    assert_eq!(
        std::fs::read(sops_file).unwrap(),
        std::fs::read(repo().join("tests/fixtures/enc/ssh_keys.yaml")).unwrap()
    );

    assert_checks_pass("first-configuration.nix", &m);
}

#[test]
fn builder_defaults_are_the_nixos_option_defaults() {
    if !have_nix() {
        return;
    }
    let m = eval_builder(r#"{ secrets.db.sopsFile = "/var/lib/secrets.yaml"; }"#).unwrap();
    assert_eq!(
        m["secrets"],
        json!([{
            "name": "db", "key": "db", "path": "/run/secrets/db",
            "owner": null, "uid": 0, "group": null, "gid": 0,
            "sopsFile": "/var/lib/secrets.yaml", "format": "yaml", "mode": "0400",
            "restartUnits": [], "reloadUnits": [], "credential": false
        }])
    );
    assert_eq!(m["keepGenerations"], 1);
    assert_eq!(m["logging"], json!({ "keyImport": true, "secretChanges": true }));
    assert_eq!(m["secretsMountPoint"], "/run/secrets.d");
    assert_eq!(m["symlinkPath"], "/run/secrets");
    assert_eq!(m["useTmpfs"], false);
    assert_eq!(m["userMode"], false);
    assert_eq!(m["sshKeyPaths"], json!([]));
    assert_eq!(m["ageSshKeyPaths"], json!([]));
}

#[test]
fn every_option_reaches_the_manifest() {
    if !have_nix() {
        return;
    }
    let m = eval_example("every-option.nix");
    assert_eq!(m["secretsMountPoint"], "/run/app-secrets.d");
    assert_eq!(m["symlinkPath"], "/run/app-secrets");
    assert_eq!(m["keepGenerations"], 5);
    assert_eq!(m["ageKeyFile"], "/var/lib/sops-nix/key.txt");
    assert_eq!(m["ageSshKeyPaths"], json!(["/etc/ssh/ssh_host_ed25519_key"]));
    assert_eq!(m["useTmpfs"], true);
    assert_eq!(m["logging"], json!({ "keyImport": false, "secretChanges": true }));

    let secret = |name: &str| -> Value {
        m["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no secret {name}"))
            .clone()
    };
    let db = secret("db_password");
    assert_eq!(db["key"], "database/credentials/password");
    assert_eq!(
        (db["owner"].clone(), db["group"].clone()),
        (json!("postgres"), json!("postgres"))
    );
    assert_eq!(db["mode"], "0440");
    assert_eq!(db["restartUnits"], json!(["postgresql.service"]));
    assert_eq!(db["reloadUnits"], json!(["pgbouncer.service"]));
    assert_eq!(
        db["path"], "/run/app-secrets/db_password",
        "default path follows symlinkPath"
    );
    let replica = secret("db/replica-host");
    assert_eq!(
        (replica["uid"].clone(), replica["gid"].clone()),
        (json!(1000), json!(100))
    );
    assert_eq!(replica["owner"], Value::Null);
    assert_eq!(replica["path"], "/var/lib/app/replica-host");
    assert_eq!(secret("whole")["key"], "");
    for (name, format) in [
        ("json_password", "json"),
        ("dotenv", "dotenv"),
        ("ini", "ini"),
        ("blob", "binary"),
    ] {
        assert_eq!(secret(name)["format"], format, "{name}");
    }

    // Placeholders are keyed by the secret's name, which is what the
    // installer looks up, not by its attribute name.
    let placeholders = keys(&m["placeholderBySecretName"]);
    assert!(placeholders.contains("db/replica-host") && !placeholders.contains("replica"));
    assert_eq!(placeholders.len(), 7);

    let templates = m["templates"].as_array().unwrap();
    let template = |name: &str| templates.iter().find(|t| t["name"] == name).unwrap().clone();
    let config = template("app/config.toml");
    assert_eq!(
        keys(&config),
        BTreeSet::from([
            "name",
            "content",
            "file",
            "path",
            "mode",
            "owner",
            "uid",
            "group",
            "gid",
            "restartUnits",
            "reloadUnits",
        ])
    );
    assert!(config["content"].as_str().unwrap().contains(":PLACEHOLDER>"));
    assert_eq!(config["file"], Value::Null);
    assert_eq!(config["path"], "/run/app-secrets/rendered/app/config.toml");
    assert_eq!(config["mode"], "0440");
    assert_eq!(config["restartUnits"], json!(["app.service"]));
    assert_eq!(config["reloadUnits"], json!(["nginx.service"]));
    let from_file = template("from_file");
    // A template `file` wins: its content is left empty for the installer.
    assert_eq!(from_file["content"], "");
    assert!(from_file["file"].as_str().unwrap().ends_with("-template.conf"));
    assert_eq!(
        (from_file["uid"].clone(), from_file["gid"].clone()),
        (json!(420), json!(420))
    );
    assert_eq!(from_file["path"], "/etc/app/from-file.conf");
}

#[test]
fn missing_key_fails_the_build_time_check_and_names_it() {
    if !have_nix() {
        return;
    }
    let m = eval_example("fail-missing-key.nix");
    assert!(
        check(&m, "manifest").status.success(),
        "the manifest itself is fine"
    );
    let out = check(&m, "sopsfile");
    assert!(
        !out.status.success(),
        "a missing key must fail -check-mode=sopsfile"
    );
    let err = text(&out.stderr);
    assert!(err.contains(r#"secret "absent""#), "{err}");
    assert!(
        err.contains(r#"has no key path "ssh_keys/does_not_exist""#),
        "{err}"
    );
    assert!(!err.contains(r#"secret "present""#), "{err}");
}

#[test]
fn unreadable_sops_files_fail_evaluation_with_validation_on() {
    if !have_nix() {
        return;
    }
    let file = examples().join("fail-not-in-store.nix");
    let err = nix_eval(&[file.to_str().unwrap()]).expect_err("evaluation must fail");
    assert!(err.contains("sops.validateSopsFiles = false"), "{err}");
    assert!(err.contains(r#"sops.secrets."outside".sopsFile"#), "{err}");
    assert!(err.contains("is not in the Nix store"), "{err}");
    assert!(err.contains(r#"sops.secrets."missing".sopsFile"#), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    // The same file is accepted, as given, once validation is off.
    let m = eval_builder(
        r#"{ secrets.outside.sopsFile = "/var/lib/secrets/outside.yaml"; validateSopsFiles = false; }"#,
    )
    .unwrap();
    assert_eq!(m["secrets"][0]["sopsFile"], "/var/lib/secrets/outside.yaml");
    assert!(check(&m, "manifest").status.success());
}

#[test]
fn manifest_for_users_and_user_mode_keep_their_own_paths() {
    if !have_nix() {
        return;
    }
    let users = eval_example("needed-for-users.nix");
    assert_eq!(users["secretsMountPoint"], "/run/secrets-for-users.d");
    assert_eq!(users["symlinkPath"], "/run/secrets-for-users");
    assert_eq!(users["templates"], json!([]));
    assert_eq!(
        users["secrets"][0]["path"],
        "/run/secrets-for-users/alice_password_hash"
    );

    let home = eval_example("home-manager.nix");
    assert_eq!(home["userMode"], true);
    assert_eq!(home["secretsMountPoint"], "/run/user/1000/secrets.d");
    assert_eq!(home["symlinkPath"], "/run/user/1000/secrets");
    let runtime = home["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "runtime")
        .unwrap();
    assert_eq!(
        runtime["path"], "%r/runtime-secret",
        "`%r` is left for the installer to expand"
    );
}

/// Values for each field the module checks at evaluation (nixos-module/grammar.nix) and the
/// installer checks again: (field, value, whether it is good).
fn grammar_cases() -> Vec<(&'static str, Value, bool)> {
    let mut cases = Vec::new();
    let mut add = |field, good: bool, values: Vec<Value>| {
        cases.extend(values.into_iter().map(|v| (field, v, good)));
    };
    add(
        "name",
        true,
        vec![
            json!("db"),
            json!("ssh_keys/private_key"),
            json!("ünïcode/名前"),
            json!("n".repeat(255)),
        ],
    );
    add(
        "name",
        false,
        vec![
            json!(""),
            json!("/abs"),
            json!("a/../b"),
            json!("./a"),
            json!("a//b"),
            json!("db\nforged"),
            json!("tab\there"),
            json!("del\u{7f}"),
            json!("c1\u{85}x"),
            json!("x".repeat(256)),
            json!(format!("d/{}", "y".repeat(256))),
        ],
    );
    add(
        "mode",
        true,
        ["0400", "400", "0755", "0", "7777", "0440"]
            .map(Value::from)
            .to_vec(),
    );
    add(
        "mode",
        false,
        ["+400", "-400", "00400", "", " 400", "0o400", "8", "4OO", "0x1ff"]
            .map(Value::from)
            .to_vec(),
    );
    add(
        "unit",
        true,
        vec![
            json!("nginx.service"),
            json!("foo@bar.service"),
            json!("getty@tty1.service"),
            json!("var-lib-x\\x2dy.mount"),
            json!("a@b@c.service"),
            json!("foo@..service"),
            json!("sshd.socket"),
            json!("backup.timer"),
            json!("machine.slice"),
            json!(format!("{}.service", "u".repeat(247))),
        ],
    );
    add(
        "unit",
        false,
        vec![
            json!(""),
            json!("nginx"),
            json!(".service"),
            json!("x.services"),
            json!("foo@.service"),
            json!("@x.service"),
            json!("a b.service"),
            json!("db.service\nforged.service"),
            json!("ngïnx.service"),
            json!("a/b.service"),
            json!(format!("{}.service", "u".repeat(248))),
        ],
    );
    add(
        "owner",
        true,
        ["nginx", "app-user_1", "app.group", "root"]
            .map(Value::from)
            .to_vec(),
    );
    add(
        "owner",
        false,
        [
            "",
            "root\nforged",
            "/etc/passwd",
            "../x",
            "wheel:x:0",
            "del\u{7f}",
        ]
        .map(Value::from)
        .to_vec(),
    );
    add("uid", true, vec![json!(0), json!(1000), json!(4294967294u32)]);
    add(
        "uid",
        false,
        vec![json!(4294967295u32), json!(-1), json!(4294967296u64)],
    );
    cases
}

/// A manifest whose only secret has `value` in `field`.
fn manifest_with(field: &str, value: &Value) -> Value {
    let mut secret = json!({
        "name": "db", "key": "db", "path": "/run/secrets/db",
        "owner": null, "uid": 0, "group": null, "gid": 0,
        "sopsFile": "/var/lib/secrets.yaml", "format": "yaml", "mode": "0400",
        "restartUnits": [], "reloadUnits": [],
    });
    match field {
        "name" => {
            secret["name"] = value.clone();
            secret.as_object_mut().unwrap().remove("path");
        }
        "unit" => secret["restartUnits"] = json!([value]),
        other => secret[other] = value.clone(),
    }
    json!({
        "secrets": [secret],
        "secretsMountPoint": "/run/secrets.d",
        "symlinkPath": "/run/secrets",
    })
}

#[test]
fn the_module_refuses_at_evaluation_what_the_installer_refuses() {
    if !have_nix() {
        return;
    }
    let cases = grammar_cases();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    let values: Vec<(&str, &Value)> = cases.iter().map(|(f, v, _)| (*f, v)).collect();
    std::fs::write(&file, serde_json::to_vec(&values).unwrap()).unwrap();
    let grammar = repo().join("nixos-module/grammar.nix");
    let expr = format!(
        r#"let
          g = import {};
          problem = {{ name = g.nameProblem; mode = g.modeProblem; unit = g.unitProblem;
                      owner = g.ownerNameProblem; uid = g.idProblem; }};
        in map (c: problem.${{builtins.elemAt c 0}} (builtins.elemAt c 1))
          (builtins.fromJSON (builtins.readFile {}))"#,
        grammar.display(),
        file.display()
    );
    let verdicts = nix_eval(&["--expr", &expr]).unwrap_or_else(|e| panic!("{e}"));
    let verdicts = verdicts.as_array().unwrap();
    assert_eq!(verdicts.len(), cases.len());
    let mut wrong = Vec::new();
    for ((field, value, good), nix) in cases.iter().zip(verdicts) {
        let out = check(&manifest_with(field, value), "manifest");
        let binary_accepts = out.status.success();
        let nix_accepts = nix.is_null();
        if binary_accepts != *good || nix_accepts != *good {
            wrong.push(format!(
                "{field} {value}: expected {}, the installer {}, the module {} ({nix})\n{}",
                if *good { "good" } else { "bad" },
                if binary_accepts { "accepts" } else { "refuses" },
                if nix_accepts { "accepts" } else { "refuses" },
                text(&out.stderr)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn module_assertions_name_the_option_and_the_value() {
    if !have_nix() {
        return;
    }
    // lib.nix hands the modules grammar.nix's assertions; nixpkgs' lib is not needed for them.
    let lib = repo().join("nixos-module/lib.nix");
    let expr = format!(
        r#"let sopsLib = import {} {{ lib = throw "nixpkgs lib is not needed here"; }};
        in map (a: a.message) (builtins.filter (a: !a.assertion) (sopsLib.entryAssertions "sops.secrets.\"db\"" {{
          name = "db"; mode = "+400"; owner = "root\nforged"; uid = 0; group = null; gid = 4294967295;
          restartUnits = [ "nginx.service" "db.service\nforged.service" ]; reloadUnits = [ "nginx" ];
        }}))
        ++ [ (sopsLib.nameProblem "db\nforged") ]"#,
        lib.display()
    );
    let messages = nix_eval(&["--expr", &expr]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        messages,
        json!([
            r#"sops.secrets."db".mode = "+400" is not an octal mode of 1 to 4 digits (like "0400")."#,
            r#"sops.secrets."db".restartUnits = "db.service\nforged.service" contains a character other than ASCII letters, digits and `:-_.\@`."#,
            r#"sops.secrets."db".reloadUnits = "nginx" has no unit type; write the whole name, like "nginx.service"."#,
            r#"sops.secrets."db".owner = "root\nforged" contains a control character."#,
            r#"sops.secrets."db".gid = 4294967295 is not an id from 0 to 4294967294 (4294967295 would leave the file root's)."#,
            "contains a control character (a newline would forge lines in logs and restart lists)",
        ])
    );
    // The defaults sops-nix's options give every entry pass.
    let expr = format!(
        r#"(import {}).entryAssertions "sops.secrets.\"db\"" {{
          mode = "0400"; owner = null; uid = 0; group = null; gid = 0; restartUnits = [ ]; reloadUnits = [ ];
        }}"#,
        repo().join("nixos-module/grammar.nix").display()
    );
    let all = nix_eval(&["--expr", &expr]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        all.as_array().unwrap().iter().all(|a| a["assertion"] == true),
        "{all}"
    );
}

// ---------------------------------------------------------------------------
// The flake, the nix-darwin module, home-manager on macOS, the NixOS unit's
// name, and the helper packages (issue 16). The modules are evaluated with
// the stand-in `lib` and option declarations of tests/fixtures/nix/modules/
// (builtins only), the flake with a stand-in nixpkgs.

fn modules_dir() -> PathBuf {
    examples().join("modules")
}

/// `import tests/fixtures/nix/modules/<file> <args>`, evaluated.
fn eval_module_fixture(file: &str, args: &str) -> Value {
    let path = modules_dir().join(file);
    let expr = if args.is_empty() {
        format!("import {}", path.display())
    } else {
        format!("import {} ({args})", path.display())
    };
    nix_eval(&["--expr", &expr]).unwrap_or_else(|e| panic!("{file} {args} does not evaluate:\n{e}"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

fn string_set(value: &Value) -> BTreeSet<&str> {
    strings(value).into_iter().collect()
}

/// tests/fixtures/nix/sops-nix-flake-outputs.txt: kind -> names, in order.
fn sops_nix_flake_outputs() -> std::collections::BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(examples().join("sops-nix-flake-outputs.txt")).unwrap();
    let mut kinds = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap().to_owned();
        let name = words.next().unwrap_or_else(|| panic!("no name: {line}"));
        // `alias A = B` keeps both sides.
        let name = if kind == "alias" {
            let target = words
                .nth(1)
                .unwrap_or_else(|| panic!("alias without target: {line}"));
            format!("{name}={target}")
        } else {
            name.to_owned()
        };
        kinds.entry(kind).or_default().push(name);
    }
    kinds
}

#[test]
fn flake_outputs_have_sops_nix_names() {
    if !have_nix() {
        return;
    }
    let list = sops_nix_flake_outputs();
    let of = |kind: &str| -> BTreeSet<&str> {
        list.get(kind)
            .unwrap_or_else(|| panic!("no `{kind}` lines in the list"))
            .iter()
            .map(String::as_str)
            .collect()
    };
    let flake = eval_module_fixture("flake-outputs.nix", "");

    // Top level: exactly sops-nix's public outputs; its CI-only ones are absent.
    assert_eq!(string_set(&flake["outputs"]), of("output"), "top-level outputs");
    for absent in of("not-provided") {
        assert!(
            !string_set(&flake["outputs"]).contains(absent),
            "{absent} is listed as not provided"
        );
    }

    // Every system, darwin included, has packages, checks and a shell.
    let systems = of("system");
    assert!(systems.contains("aarch64-darwin") && systems.contains("x86_64-linux"));
    assert_eq!(keys(&flake["packages"]), systems, "packages systems");
    assert_eq!(string_set(&flake["checks"]), systems, "checks systems");
    assert_eq!(keys(&flake["devShells"]), systems, "devShells systems");
    for system in &systems {
        let mut expected = of("package");
        if system.ends_with("-linux") {
            expected.extend(of("package-linux"));
        }
        assert_eq!(
            string_set(&flake["packages"][system]),
            expected,
            "packages.{system}"
        );
        assert_eq!(
            string_set(&flake["devShells"][system]),
            of("devshell"),
            "devShells.{system}"
        );
        // The same meaning: `default` is sops-init-gpg-key, ssh-to-pgp is nixpkgs' own.
        assert_eq!(
            flake["defaults"][system], "sops-init-gpg-key.nix",
            "packages.{system}.default"
        );
        assert_eq!(
            flake["sshToPgp"][system], "ssh-to-pgp",
            "packages.{system}.ssh-to-pgp"
        );
    }

    for module in of("module") {
        let (class, name) = module.split_once('.').unwrap();
        assert!(
            string_set(&flake["modules"][class]).contains(name),
            "{module} missing"
        );
    }
    for class in ["nixosModules", "homeManagerModules", "darwinModules"] {
        let listed: BTreeSet<&str> = of("module")
            .into_iter()
            .filter_map(|m| m.strip_prefix(class)?.strip_prefix('.'))
            .collect();
        assert_eq!(string_set(&flake["modules"][class]), listed, "{class}");
    }
    let paths = &flake["modulePaths"];
    assert_eq!(paths["nixosModules.sops"], "nixos-module");
    assert_eq!(paths["homeManagerModules.sops"], "nixos-module/home-manager.nix");
    assert_eq!(paths["darwinModules.sops"], "nixos-module/darwin.nix");
    for (class, file) in [
        ("nixosModules", "nixos-module"),
        ("homeManagerModules", "nixos-module/home-manager.nix"),
        ("darwinModules", "nixos-module/darwin.nix"),
    ] {
        assert_eq!(paths[format!("{class}.default")], file, "{class}.default");
        assert!(repo().join(file).exists(), "{file}");
    }
    for alias in of("alias") {
        match alias {
            "homeManagerModule=homeManagerModules.sops" => {
                assert_eq!(paths["homeManagerModule"], paths["homeManagerModules.sops"])
            }
            "homeModules=homeManagerModules" => assert_eq!(flake["homeModulesIsHomeManagerModules"], true),
            other => panic!("the test does not know the alias {other}"),
        }
    }

    assert_eq!(string_set(&flake["overlay"]), of("overlay"), "overlays.default");
    assert_eq!(
        flake["overlaySshToPgp"], "nixpkgs-ssh-to-pgp",
        "the overlay keeps nixpkgs' ssh-to-pgp"
    );
}

#[test]
fn darwin_module_installs_from_activation_and_a_boot_daemon() {
    if !have_nix() {
        return;
    }
    let d = eval_module_fixture("darwin.nix", "{ }");
    assert_eq!(d["failedAssertions"], json!([]));

    // sops-nix's darwin paths and defaults.
    let m = &d["manifest"];
    assert_eq!(m["secretsMountPoint"], "/run/secrets.d");
    assert_eq!(m["symlinkPath"], "/run/secrets");
    assert_eq!(m["userMode"], false);
    assert_eq!(m["useTmpfs"], false);
    assert_eq!(m["ageKeyFile"], "/var/lib/sops-nix/key.txt");
    assert_eq!(m["ageSshKeyPaths"], json!(["/etc/ssh/ssh_host_ed25519_key"]));
    assert_eq!(m["sshKeyPaths"], json!(["/etc/ssh/ssh_host_rsa_key"]));
    let secret = |name: &str| -> Value {
        m["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no secret {name} in {m:#}"))
            .clone()
    };
    let db = secret("db_password");
    assert_eq!(
        (db["owner"].clone(), db["group"].clone(), db["mode"].clone()),
        (json!("root"), json!("staff"), json!("0400")),
        "root:staff 0400 by default, as in sops-nix's darwin module"
    );
    assert_eq!(db["path"], "/run/secrets/db_password");
    let owned = secret("owned");
    assert_eq!(owned["key"], "test_key");
    assert_eq!(
        (owned["owner"].clone(), owned["group"].clone()),
        (json!("_postgres"), json!("_postgres"))
    );
    assert_eq!(
        m["secrets"].as_array().unwrap().len(),
        2,
        "neededForUsers stays out"
    );
    assert_eq!(m["templates"][0]["path"], "/run/secrets/rendered/app.conf");
    assert!(
        m["placeholderBySecretName"]["db_password"]
            .as_str()
            .unwrap()
            .ends_with(":PLACEHOLDER>")
    );
    let users = &d["manifestForUsers"];
    assert_eq!(users["secretsMountPoint"], "/run/secrets-for-users.d");
    assert_eq!(users["symlinkPath"], "/run/secrets-for-users");
    assert_eq!(
        users["secrets"][0]["path"],
        "/run/secrets-for-users/alice_password_hash"
    );
    assert_eq!(users["templates"], json!([]));
    assert_checks_pass("darwin manifest", m);
    assert_checks_pass("darwin manifest for users", users);
    assert!(
        d["manifestCheck"]
            .as_str()
            .unwrap()
            .contains("-check-mode=sopsfile"),
        "the build checks the manifest"
    );

    // Installed at activation and, since /run does not survive a reboot, by a
    // launchd daemon at boot, under sops-nix's names.
    let daemons = &d["daemons"];
    assert_eq!(
        keys(daemons),
        BTreeSet::from(["sops-install-secrets", "sops-install-secrets-for-users"])
    );
    let daemon = &daemons["sops-install-secrets"];
    assert_eq!(daemon["serviceConfig"]["RunAtLoad"], true);
    assert_eq!(daemon["serviceConfig"]["KeepAlive"], false);
    let script = daemon["script"].as_str().unwrap();
    assert!(
        script.contains("/bin/sops-install-secrets /nix/store/"),
        "{script}"
    );
    assert!(script.contains("-manifest.json"), "{script}");
    let users_script = daemons["sops-install-secrets-for-users"]["script"]
        .as_str()
        .unwrap();
    assert!(
        users_script.contains("sops-install-secrets -ignore-passwd /nix/store/"),
        "{users_script}"
    );
    assert!(
        users_script.contains("-manifest-for-users.json"),
        "{users_script}"
    );
    let activation = d["activation"].as_str().unwrap();
    let (for_users, regular) = (
        activation
            .find(users_script.trim())
            .expect("for-users install in activation"),
        activation.find(script.trim()).expect("install in activation"),
    );
    assert!(for_users < regular, "secrets for users first:\n{activation}");

    assert_eq!(
        d["paths"]["alice_password_hash"],
        "/run/secrets-for-users/alice_password_hash"
    );
    assert_eq!(d["defaults"]["environment"], json!({}));
}

#[test]
fn darwin_module_refuses_what_sops_nix_refuses_and_more() {
    if !have_nix() {
        return;
    }
    let failed = |extra: &str| -> Vec<String> {
        let d = eval_module_fixture("darwin.nix", &format!("{{ extra = {extra}; }}"));
        strings(&d["failedAssertions"])
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let both_gpg = failed(r#"{ sops.gnupg.home = "/var/root/.gnupg"; }"#);
    assert!(
        both_gpg
            .iter()
            .any(|m| m.contains("sops.gnupg.home and sops.gnupg.sshKeyPaths cannot both be set")),
        "{both_gpg:?}"
    );
    let bad_name = failed(r#"{ sops.secrets."../escape".key = "db_password"; }"#);
    assert!(
        bad_name.iter().any(|m| m.contains("contains a `..` component")),
        "{bad_name:?}"
    );
    let owned_for_users = failed(r#"{ sops.secrets.alice_password_hash.owner = "alice"; }"#);
    assert!(
        owned_for_users
            .iter()
            .any(|m| m.contains("has neededForUsers set, so it is owned by root")),
        "{owned_for_users:?}"
    );
    let no_key = failed(
        r#"{ lib, ... }: { sops.age.keyFile = lib.mkForce null; sops.age.sshKeyPaths = [ ]; sops.gnupg.sshKeyPaths = [ ]; }"#,
    );
    assert!(
        no_key
            .iter()
            .any(|m| m.contains("no key to decrypt it is configured")),
        "{no_key:?}"
    );

    // Templates owned by number, as sops-nix's own darwin check writes them.
    let d = eval_module_fixture(
        "darwin.nix",
        r#"{ extra = { config, ... }: { sops.templates."with-uid.toml" = { content = "password = ${config.sops.placeholder.db_password}"; uid = 1000; }; sops.templates."with-gid.toml" = { content = "x"; gid = 1000; }; }; }"#,
    );
    assert_eq!(d["failedAssertions"], json!([]));
    let templates = d["manifest"]["templates"].as_array().unwrap();
    let template = |name: &str| templates.iter().find(|t| t["name"] == name).unwrap();
    let uid = template("with-uid.toml");
    assert_eq!(
        (uid["uid"].clone(), uid["owner"].clone(), uid["group"].clone()),
        (json!(1000), Value::Null, Value::Null)
    );
    assert_eq!(template("with-gid.toml")["gid"], 1000);
    assert_checks_pass("darwin templates owned by number", &d["manifest"]);

    // With a GnuPG home the installer is told which gpg to run.
    let d = eval_module_fixture(
        "darwin.nix",
        r#"{ extra = { sops.gnupg.home = "/var/root/.gnupg"; sops.gnupg.sshKeyPaths = [ ]; }; }"#,
    );
    assert_eq!(d["failedAssertions"], json!([]));
    let gpg = d["defaults"]["environment"]["SOPS_GPG_EXEC"].as_str().unwrap();
    assert!(gpg.ends_with("-gnupg/bin/gpg"), "{gpg}");
    assert!(
        d["daemons"]["sops-install-secrets"]["script"]
            .as_str()
            .unwrap()
            .contains(&format!("export SOPS_GPG_EXEC='{gpg}'"))
    );
}

#[test]
fn home_manager_module_on_darwin_installs_from_a_launchd_agent() {
    if !have_nix() {
        return;
    }
    let mac = eval_module_fixture("home-manager.nix", r#"{ system = "aarch64-darwin"; }"#);
    assert_eq!(mac["failedAssertions"], json!([]), "macOS is supported");
    assert_eq!(mac["userServices"], json!([]), "no systemd user unit on macOS");
    let agent = &mac["agents"]["sops-nix"];
    assert_eq!(agent["enable"], true);
    let config = &agent["config"];
    assert_eq!(config["Label"], "org.nix-community.home.sops-nix");
    assert_eq!(config["RunAtLoad"], true);
    assert_eq!(config["KeepAlive"], false);
    assert_eq!(
        config["StandardErrorPath"],
        "/Users/alice/Library/Logs/SopsNix/stderr"
    );
    assert_eq!(
        config["StandardOutPath"],
        "/Users/alice/Library/Logs/SopsNix/stdout"
    );
    assert_eq!(config["EnvironmentVariables"]["SOPS_EXTRA"], "set by the test");
    assert_eq!(
        config["EnvironmentVariables"]["PATH"],
        "/usr/bin:/bin:/usr/sbin:/sbin"
    );
    let program = mac["agentScript"].as_str().unwrap();
    assert!(
        program.contains("/bin/sops-install-secrets -ignore-passwd /nix/store/")
            && program.contains("-manifest.json"),
        "{program}"
    );
    let activation = mac["activation"].as_str().unwrap();
    assert!(
        activation.contains(r#"launchctl kickstart -k "gui/$(id -u)/org.nix-community.home.sops-nix""#),
        "{activation}"
    );
    assert!(!activation.contains("systemctl"), "{activation}");
    assert_eq!(mac["symlinkPath"], "/Users/alice/.config/sops-nix/secrets");
    assert_eq!(
        mac["secretPath"],
        "/Users/alice/.config/sops-nix/secrets/home_manager_secret"
    );

    // age plugins come before the system's directories on the agent's PATH.
    let with_plugin = eval_module_fixture(
        "home-manager.nix",
        r#"{ system = "x86_64-darwin"; extra = { sops.age.plugins = [ { type = "derivation"; name = "age-plugin-yubikey"; outPath = "/nix/store/00000000000000000000000000000000-age-plugin-yubikey"; } ]; }; }"#,
    );
    assert_eq!(
        with_plugin["agents"]["sops-nix"]["config"]["EnvironmentVariables"]["PATH"],
        "/nix/store/00000000000000000000000000000000-age-plugin-yubikey/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    );

    // Linux keeps the systemd user unit and makes no agent.
    let linux = eval_module_fixture("home-manager.nix", r#"{ system = "x86_64-linux"; }"#);
    assert_eq!(linux["failedAssertions"], json!([]));
    assert_eq!(linux["userServices"], json!(["sops-nix"]));
    assert_eq!(linux["agents"], json!({}));
    assert_eq!(linux["unitScript"], mac["agentScript"]);
    assert!(
        linux["activation"]
            .as_str()
            .unwrap()
            .contains("systemctl --user restart sops-nix.service")
    );
}

#[test]
fn nixos_unit_settings_under_sops_nix_unit_name_configure_our_unit() {
    if !have_nix() {
        return;
    }
    // sops-nix's unit is systemd.services.sops-install-secrets; settings a
    // configuration made for it land on this module's unit.
    let n = eval_module_fixture(
        "nixos-unit.nix",
        r#"{ extra = { systemd.services.sops-install-secrets = { after = [ "var-lib-keys.mount" ]; serviceConfig.TimeoutStartSec = "5min"; }; }; }"#,
    );
    assert_eq!(n["failedAssertions"], json!([]));
    assert_eq!(
        n["services"],
        json!(["sops-install-secrets"]),
        "one service, not two"
    );
    assert_eq!(n["units"], json!(["sops-nix.service"]), "one unit file");
    let unit = &n["installer"];
    assert_eq!(unit["name"], "sops-nix.service");
    assert_eq!(unit["aliases"], json!(["sops-install-secrets.service"]));
    let after = strings(&unit["after"]);
    assert!(
        after.contains(&"var-lib-keys.mount") && after.contains(&"local-fs.target"),
        "{after:?}"
    );
    assert_eq!(unit["serviceConfig"]["TimeoutStartSec"], "5min");
    assert_eq!(unit["serviceConfig"]["Type"], "oneshot");
    assert!(
        unit["serviceConfig"]["ExecStart"]
            .as_str()
            .unwrap()
            .contains("/bin/sops-install-secrets /nix/store/")
    );
    assert_eq!(n["targetRequires"], json!(["sops-nix.service"]));

    // Settings under this module's unit file name would make a second
    // definition of sops-nix.service: refused, naming where they go.
    let n = eval_module_fixture(
        "nixos-unit.nix",
        r#"{ extra = { systemd.services.sops-nix.after = [ "var-lib-keys.mount" ]; }; }"#,
    );
    let failed = strings(&n["failedAssertions"]);
    assert!(
        failed
            .iter()
            .any(|m| m.contains("systemd.services.sops-nix is set")
                && m.contains("systemd.services.sops-install-secrets")),
        "{failed:?}"
    );
}

/// Whether gpg can run; panics in CI when it cannot.
fn have_gpg() -> bool {
    have_tool("gpg", "gnupg")
}

fn run_pkgs_script(script: &str, args: &[&std::ffi::OsStr], cwd: &Path) -> Output {
    Command::new("bash")
        .arg(repo().join("nixos-module/pkgs").join(script))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[test]
fn sops_init_gpg_key_creates_a_home_with_one_key_for_the_host() {
    if !have_gpg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("keys/gnupg");
    let out = run_pkgs_script(
        "sops-init-gpg-key.sh",
        &[
            "--hostname".as_ref(),
            "server01".as_ref(),
            "--gpghome".as_ref(),
            home.as_os_str(),
            "--keytype".as_ref(),
            "Curve25519".as_ref(),
        ],
        dir.path(),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(text(&out.stdout).starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Nothing is left beside the home.
    let beside: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("gnupg")]);

    let listed = Command::new("gpg")
        .arg("--homedir")
        .arg(&home)
        .args(["--batch", "--with-colons", "--list-secret-keys"])
        .output()
        .unwrap();
    let listed = text(&listed.stdout);
    let fingerprint = listed
        .lines()
        .find_map(|l| {
            l.starts_with("fpr:")
                .then(|| l.split(':').nth(9).unwrap().to_owned())
        })
        .expect("a key in the new home");
    assert!(listed.contains("server01 <root@server01>"), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ssb:") && l.contains(":cv25519:")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("sec:") && l.contains(":ed25519:")),
        "{listed}"
    );
    assert!(
        stderr.contains(&format!("fingerprint: {fingerprint}")),
        "{stderr}"
    );
    let _ = Command::new("gpgconf")
        .arg("--homedir")
        .arg(&home)
        .args(["--kill", "gpg-agent"])
        .output();

    // An existing home is never touched.
    let again = run_pkgs_script(
        "sops-init-gpg-key.sh",
        &["--gpghome".as_ref(), home.as_os_str()],
        dir.path(),
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );

    let bad = run_pkgs_script(
        "sops-init-gpg-key.sh",
        &[
            "--keytype".as_ref(),
            "DSA".as_ref(),
            "--gpghome".as_ref(),
            dir.path().join("other").as_os_str(),
        ],
        dir.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("unknown key type 'DSA'"));
    assert!(!dir.path().join("other").exists());
}

#[test]
fn setup_hooks_import_keys_and_export_their_fingerprints() {
    if !have_gpg() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = run_pkgs_script("hooks-test.sh", &[], dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for check in [
        "ok: sops-pgp-hook imports both keys and sets SOPS_PGP_FP=",
        "ok: sops-pgp-hook extends an existing SOPS_PGP_FP",
        "ok: sops-import-keys-hook imports both keys into a private GNUPGHOME",
        "ok: sops-import-keys-hook defaults the private home to .git/gnupg",
    ] {
        assert!(stdout.contains(check), "{check} missing from:\n{stdout}");
    }
}
