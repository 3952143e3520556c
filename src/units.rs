//! What changed since the live generation, and which units must restart or reload.
//!
//! At activation, switch-to-configuration restarts the units listed in
//! `/run/nixos/activation-restart-list` (and reloads `...-reload-list`); when
//! the installer runs as the `sops-nix.service` unit it asks systemd itself
//! with `systemctl --no-block try-restart` instead, because by then those
//! lists have already been read.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Changes of one kind of file (secrets, or rendered templates).
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Changes {
    /// Present now, absent before.
    pub added: Vec<String>,
    /// Present before and now, with different content.
    pub modified: Vec<String>,
    /// Present before, absent now.
    pub removed: Vec<String>,
}

/// Units to act on.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Requests {
    /// Units to restart.
    pub restart: Vec<String>,
    /// Units to reload.
    pub reload: Vec<String>,
    seen_restart: std::collections::HashSet<String>,
    seen_reload: std::collections::HashSet<String>,
}

impl Requests {
    /// Adds units, keeping first-seen order and dropping duplicates.
    pub fn add(&mut self, restart: &[String], reload: &[String]) {
        for (list, seen, units) in [
            (&mut self.restart, &mut self.seen_restart, restart),
            (&mut self.reload, &mut self.seen_reload, reload),
        ] {
            for u in units {
                if seen.insert(u.clone()) {
                    list.push(u.clone());
                }
            }
        }
    }
}

/// The change lines sops-nix prints, e.g. `modifying secrets: a, b`.
pub fn describe(changes: &Changes, noun: &str, dry: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for (list, verb, dry_verb) in [
        (&changes.added, "adding", "would add"),
        (&changes.modified, "modifying", "would modify"),
        (&changes.removed, "removing", "would remove"),
    ] {
        if list.is_empty() {
            continue;
        }
        let mut names = list.clone();
        names.sort();
        let plural = if names.len() == 1 { "" } else { "s" };
        let verb = if dry { dry_verb } else { verb };
        lines.push(format!("{verb} {noun}{plural}: {}", names.join(", ")));
    }
    lines
}

/// Hands the requests to systemd, the way the current activation expects.
pub fn request(
    req: &Requests,
    dry: bool,
    via_systemctl: bool,
    nixos_run_dir: &Path,
) -> Result<Vec<String>, String> {
    // The manifest's units were checked when it was read; units also come
    // from the record of an older generation, which an older installer may
    // have written without that check. A newline here would be a line of its
    // own in the activation list, so nothing is requested then.
    if let Some((u, why)) = req
        .restart
        .iter()
        .chain(&req.reload)
        .find_map(|u| crate::manifest::unit_name_problem(u).map(|why| (u, why)))
    {
        return Err(format!(
            "unit {u:?} is not a systemd unit name ({why}); no unit was restarted or reloaded"
        ));
    }
    let mut log = Vec::new();
    if via_systemctl {
        for (verb, units) in [
            ("try-restart", &req.restart),
            ("try-reload-or-restart", &req.reload),
        ] {
            if units.is_empty() {
                continue;
            }
            if dry {
                let what = if verb == "try-restart" {
                    "restart"
                } else {
                    "reload"
                };
                log.extend(units.iter().map(|u| format!("would {what} {u}")));
                continue;
            }
            let status = Command::new("systemctl")
                .arg("--no-block")
                .arg(verb)
                .args(units)
                .status()
                .map_err(|e| format!("cannot run systemctl: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "systemctl --no-block {verb} {} failed ({status})",
                    units.join(" ")
                ));
            }
        }
        return Ok(log);
    }
    let prefix = if dry { "dry-activation" } else { "activation" };
    for (kind, units) in [("restart", &req.restart), ("reload", &req.reload)] {
        if units.is_empty() || !nixos_run_dir.is_dir() {
            continue;
        }
        let file = nixos_run_dir.join(format!("{prefix}-{kind}-list"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let text: String = units.iter().map(|u| format!("{u}\n")).collect();
        f.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_match_sops_nix() {
        let c = Changes {
            added: vec!["b".into(), "a".into()],
            modified: vec!["c".into()],
            removed: vec![],
        };
        assert_eq!(
            describe(&c, "secret", false),
            ["adding secrets: a, b", "modifying secret: c"]
        );
        assert_eq!(
            describe(&c, "rendered secret", true),
            [
                "would add rendered secrets: a, b",
                "would modify rendered secret: c"
            ]
        );
    }

    #[test]
    fn a_unit_name_with_a_newline_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Requests::default();
        r.add(&["a.service".into()], &["b.service\nforged.service".into()]);
        let err = request(&r, false, false, dir.path()).unwrap_err();
        assert!(err.contains(r#""b.service\nforged.service""#), "{err}");
        assert!(!dir.path().join("activation-restart-list").exists());
        assert!(!dir.path().join("activation-reload-list").exists());
    }

    #[test]
    fn restart_lists_are_appended_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Requests::default();
        r.add(&["a.service".into(), "b.service".into()], &[]);
        r.add(&["a.service".into()], &["c.service".into()]);
        request(&r, false, false, dir.path()).unwrap();
        let restart = std::fs::read_to_string(dir.path().join("activation-restart-list")).unwrap();
        assert_eq!(restart, "a.service\nb.service\n");
        request(&r, true, false, dir.path()).unwrap();
        let dry = std::fs::read_to_string(dir.path().join("dry-activation-reload-list")).unwrap();
        assert_eq!(dry, "c.service\n");
    }
}
