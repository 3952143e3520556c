//! `sops-install-secrets demo`: the whole pipeline on bundled example files,
//! in user mode, into a temporary directory. The first thing to run.
//!
//! The bundled key and sops file are the test fixtures made by real sops
//! (`tests/fixtures/`); the key is public test material, never a real secret.

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sops_install_secrets::install::{self, CheckMode, Options};
use sops_install_secrets::manifest::Manifest;

const AGE_KEY: &[u8] = include_bytes!("../../tests/fixtures/keys/age1.txt");
const SOPS_FILE: &[u8] = include_bytes!("../../tests/fixtures/enc/ssh_keys.yaml");
const JSON_FILE: &[u8] = include_bytes!("../../tests/fixtures/enc/basic.json");

fn manifest_json(dir: &Path, template: &str) -> String {
    let d = dir.display();
    format!(
        r#"{{
  "secrets": [
    {{"name": "ssh_keys/private_key", "key": "ssh_keys/private_key", "sopsFile": "{d}/secrets.yaml",
      "format": "yaml", "mode": "0400", "restartUnits": ["sshd.service"], "reloadUnits": []}},
    {{"name": "db_password", "key": "database/credentials/password", "sopsFile": "{d}/secrets.json",
      "format": "json", "mode": "0440", "path": "{d}/app/db_password", "restartUnits": ["postgresql.service"]}}
  ],
  "templates": [
    {{"name": "app.env", "content": {template:?}, "mode": "0400", "restartUnits": ["app.service"]}}
  ],
  "placeholderBySecretName": {{"ssh_keys/private_key": "<SOPS:ssh>", "db_password": "<SOPS:db>"}},
  "secretsMountPoint": "{d}/secrets.d",
  "symlinkPath": "{d}/secrets",
  "keepGenerations": 1,
  "ageKeyFile": "{d}/age-key.txt",
  "userMode": true,
  "logging": {{"keyImport": true, "secretChanges": true}}
}}"#
    )
}

fn tree(root: &Path, dir: &Path, out: &mut String) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
        let user = nix::unistd::User::from_uid(meta.uid().into())
            .ok()
            .flatten()
            .map_or(meta.uid().to_string(), |u| u.name);
        let group = nix::unistd::Group::from_gid(meta.gid().into())
            .ok()
            .flatten()
            .map_or(meta.gid().to_string(), |g| g.name);
        let owner = format!("{user}:{group}");
        let kind = if meta.file_type().is_symlink() {
            format!(
                " -> {}",
                std::fs::read_link(&path)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )
        } else if meta.is_dir() {
            "/".into()
        } else if is_installed_value(&rel) {
            // The demo's values are public test material: show that they were decrypted.
            format!("  ({} bytes: {})", meta.len(), first_bytes(&path))
        } else {
            format!("  ({} bytes)", meta.len())
        };
        let _ = writeln!(
            out,
            "  {:04o} {owner:<16} {rel}{kind}",
            meta.permissions().mode() & 0o7777
        );
        if meta.is_dir() {
            tree(root, &path, out);
        }
    }
}

/// A secret or rendered template of a generation (not the generation's own record).
fn is_installed_value(rel: &str) -> bool {
    rel.starts_with("secrets.d/") && !rel.ends_with(sops_install_secrets::install::state::FILE)
}

/// The first bytes of a demo value, escaped, e.g. `"-----BEGIN OPE"...`.
fn first_bytes(path: &Path) -> String {
    const SHOWN: usize = 14;
    let bytes = std::fs::read(path).unwrap_or_default();
    let head: String = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)])
        .escape_debug()
        .collect();
    let more = if bytes.len() > SHOWN { "..." } else { "" };
    format!("\"{head}\"{more}")
}

fn run(dir: &Path, template: &str, out: &mut String) -> Result<(), String> {
    std::fs::write(dir.join("manifest.json"), manifest_json(dir, template)).map_err(|e| e.to_string())?;
    let manifest = Manifest::load(&dir.join("manifest.json"), dir.to_str()).map_err(|e| e.to_string())?;
    let opts = Options {
        check_mode: CheckMode::Off,
        ignore_passwd: false,
        dry_run: false,
        restart_via_systemctl: false,
        nixos_run_dir: dir.join("no-nixos"),
        sops_env: Default::default(),
        gpg_exec: None,
        lock_wait: install::lock::DEFAULT_WAIT,
        keys_group: install::KeysGroup::when_asked(),
        early_files: install::EarlyFiles::none(),
    };
    let outcome = install::install(&manifest, &opts, Vec::new());
    outcome
        .result
        .map_err(|f| f.0.into_iter().map(|p| p.message).collect::<Vec<_>>().join("\n"))?;
    let report = outcome.report;
    for line in report.log.iter().map(|l| &l.message).chain(&report.changes) {
        let _ = writeln!(out, "  {line}");
    }
    if !report.requests.restart.is_empty() {
        let _ = writeln!(
            out,
            "  units that would restart: {}",
            report.requests.restart.join(", ")
        );
    }
    Ok(())
}

/// Runs the demo and returns what to print.
pub fn demo() -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("sops-install-secrets-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for (name, bytes) in [
        ("age-key.txt", AGE_KEY),
        ("secrets.yaml", SOPS_FILE),
        ("secrets.json", JSON_FILE),
    ] {
        std::fs::write(dir.join(name), bytes).map_err(|e| e.to_string())?;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Installing the example manifest {}/manifest.json (user mode):",
        dir.display()
    );
    run(&dir, "DB_PASSWORD=<SOPS:db>\n", &mut out)?;
    let _ = writeln!(
        out,
        "\nThe installed tree (mode, owner:group, path; the demo's values are test material, so their first bytes are shown):"
    );
    tree(&dir, &dir, &mut out);
    let _ = writeln!(out, "\nChanging the template and installing again:");
    run(&dir, "DB_PASSWORD=<SOPS:db>\nDB_HOST=db.internal\n", &mut out)?;
    let _ = writeln!(
        out,
        "\nNow live: {}",
        std::fs::read_link(dir.join("secrets"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "Everything is under {}; remove it with `rm -r {}`.",
        dir.display(),
        dir.display()
    );
    Ok(out)
}
