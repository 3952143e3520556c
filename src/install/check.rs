//! Stage for the build: `-check-mode=manifest` and `-check-mode=sopsfile`.
//! The manifest was checked by parsing it; `sopsfile` also reads every sops
//! file (no decryption: sops keeps keys in the clear) and checks key paths,
//! and, given `hostPubKeys`, that the host will be able to open each file.

use super::CheckMode;
use super::plan::{files_by_use, secret_names};
use super::report::{Failed, Problem, Problems};
use crate::manifest::{Manifest, TemplateSource};
use crate::safe_path::Trust;
use crate::sops::tree::parse_slash_path;
use crate::sops::{EncryptedFile, Format};

/// The build-time checks: the manifest was already checked by parsing it;
/// `sopsfile` also reads every sops file (no decryption) and checks key paths,
/// and, given `hostPubKeys`, that the host will be able to open each file.
pub fn check(manifest: &Manifest, mode: CheckMode, earlier: Vec<String>) -> Result<(), Failed> {
    let mut problems = Problems(earlier.into_iter().map(Problem::from).collect());
    let files = files_by_use(manifest, &mut problems);
    let mut host = Vec::new();
    for k in &manifest.host_pub_keys {
        match crate::keys::host_keys::parse_host_key(k) {
            Ok(h) => host.push(h),
            Err(e) => problems.push(format!("hostPubKeys: {e}")),
        }
    }
    if mode == CheckMode::SopsFile {
        for (path, format, users) in &files {
            let file = match crate::safe_path::read(path, Trust::build_check())
                .map_err(|e| format!("sopsFile: {e}"))
                .and_then(|b| EncryptedFile::parse_owned(b, *format).map_err(|e| e.to_string()))
            {
                Ok(f) => f,
                Err(e) => {
                    problems.push(format!(
                        "{} (used by {}): {e}",
                        path.display(),
                        secret_names(manifest, users)
                    ));
                    continue;
                }
            };
            if !host.is_empty()
                && let Err(e) = crate::keys::host_keys::host_opens(
                    &file.metadata,
                    &host,
                    !manifest.ssh_key_paths.is_empty(),
                )
            {
                let shown = path.display().to_string();
                problems.push(Problem::about(
                    format!("{shown} (used by {}): {e}", secret_names(manifest, users)),
                    &[("file", &shown)],
                ));
            }
            if matches!(format, Format::Yaml | Format::Json) {
                for &i in users {
                    let s = &manifest.secrets[i];
                    if s.key.is_empty() {
                        continue;
                    }
                    // Keys are stored in the clear, so the path can be checked without a key.
                    if let Err(e) = file.branches[0].lookup(&parse_slash_path(&s.key)) {
                        problems.push(format!(
                            "secret {:?}: {} has no key path {:?} ({})",
                            s.name.as_str(),
                            path.display(),
                            s.key,
                            crate::sops::ExtractError::NotFound(e)
                        ));
                    }
                }
            }
        }
    }
    for t in &manifest.templates {
        if let TemplateSource::File(f) = &t.source
            && let Err(e) = std::fs::metadata(f)
        {
            problems.push(format!(
                "template {:?}: cannot read {}: {e}",
                t.name.as_str(),
                f.display()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failed(problems.0))
    }
}
