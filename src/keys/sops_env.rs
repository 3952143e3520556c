//! The age identities sops takes from its environment.
//!
//! sops users name their keys in variables, and sops-nix users pass them to
//! the installer through `sops.environment`: `SOPS_AGE_KEY` (key file text),
//! `SOPS_AGE_KEY_FILE` (a key file), `SOPS_AGE_KEY_CMD` (a command whose
//! standard output is key file text; split like a shell would, but run
//! without one, as sops does) and `SOPS_AGE_SSH_PRIVATE_KEY_FILE` (an OpenSSH
//! private key). Each adds to the identities; none replaces another.
//!
//! The command runs once per run, whatever the number of files, under a
//! deadline: a boot must not hang on a command that waits for a PIN.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use super::Keyring;

/// How long `SOPS_AGE_KEY_CMD` may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// The sops variables of one process environment. `Debug` shows which are
/// set, never a value.
#[derive(Clone, Default)]
pub struct SopsAgeEnv {
    /// `SOPS_AGE_KEY`.
    pub key: Option<Zeroizing<String>>,
    /// `SOPS_AGE_KEY_FILE`.
    pub key_file: Option<PathBuf>,
    /// `SOPS_AGE_KEY_CMD`.
    pub key_cmd: Option<String>,
    /// `SOPS_AGE_SSH_PRIVATE_KEY_FILE`.
    pub ssh_private_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for SopsAgeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SopsAgeEnv")
            .field("SOPS_AGE_KEY", &self.key.as_ref().map(|_| "<set>"))
            .field("SOPS_AGE_KEY_FILE", &self.key_file)
            .field("SOPS_AGE_KEY_CMD", &self.key_cmd.as_ref().map(|_| "<set>"))
            .field("SOPS_AGE_SSH_PRIVATE_KEY_FILE", &self.ssh_private_key_file)
            .finish()
    }
}

/// Why an identity named in the environment could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SopsEnvError {
    /// A key, key file or SSH key was unusable.
    #[error("{variable}: {source}")]
    Key {
        /// The variable.
        variable: &'static str,
        /// Why.
        source: super::KeyError,
    },
    /// The command could not be split into words.
    #[error("SOPS_AGE_KEY_CMD cannot be split into words (check its quotes)")]
    CommandSyntax,
    /// The command could not be started, failed or ran too long.
    #[error("SOPS_AGE_KEY_CMD ({program}) {why}; it must print age identities on its standard output")]
    Command {
        /// The program it names.
        program: String,
        /// What went wrong (never its output).
        why: String,
    },
}

fn non_empty(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

impl SopsAgeEnv {
    /// Reads the variables of this process.
    pub fn from_process() -> SopsAgeEnv {
        SopsAgeEnv {
            key: std::env::var("SOPS_AGE_KEY")
                .ok()
                .filter(|v| !v.is_empty())
                .map(Zeroizing::new),
            key_file: non_empty("SOPS_AGE_KEY_FILE").map(PathBuf::from),
            key_cmd: std::env::var("SOPS_AGE_KEY_CMD")
                .ok()
                .filter(|v| !v.trim().is_empty()),
            ssh_private_key_file: non_empty("SOPS_AGE_SSH_PRIVATE_KEY_FILE").map(PathBuf::from),
        }
    }

    /// Whether any identity is named.
    pub fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.key_file.is_none()
            && self.key_cmd.is_none()
            && self.ssh_private_key_file.is_none()
    }

    /// Adds every identity the variables name to `keyring`; `SOPS_AGE_KEY_FILE`
    /// only if `with_key_file` (the installer uses it only when the manifest
    /// names no age identity, as sops-nix did). Every problem is returned,
    /// not only the first.
    pub fn add_to(&self, keyring: &mut Keyring, with_key_file: bool) -> Vec<SopsEnvError> {
        let mut problems = Vec::new();
        let key = |variable, source| SopsEnvError::Key { variable, source };
        if let Some(text) = &self.key
            && let Err(e) = keyring.add_age_keys_text(text, "SOPS_AGE_KEY")
        {
            problems.push(key("SOPS_AGE_KEY", e));
        }
        if with_key_file
            && let Some(f) = &self.key_file
            && let Err(e) = keyring.add_age_key_file(f)
        {
            problems.push(key("SOPS_AGE_KEY_FILE", e));
        }
        if let Some(cmd) = &self.key_cmd {
            match run_key_command(cmd) {
                Ok(text) => {
                    if let Err(e) = keyring.add_age_keys_text(&text, "SOPS_AGE_KEY_CMD") {
                        problems.push(key("SOPS_AGE_KEY_CMD", e));
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if let Some(f) = &self.ssh_private_key_file
            && let Err(e) = keyring.add_ssh_key(f)
        {
            problems.push(key("SOPS_AGE_SSH_PRIVATE_KEY_FILE", e));
        }
        problems
    }
}

/// Runs `SOPS_AGE_KEY_CMD` once and returns what it printed.
fn run_key_command(cmd: &str) -> Result<Zeroizing<String>, SopsEnvError> {
    let words = shlex::split(cmd)
        .filter(|w| !w.is_empty())
        .ok_or(SopsEnvError::CommandSyntax)?;
    let program = words[0].clone();
    let fail = |why: String| SopsEnvError::Command {
        program: program.clone(),
        why,
    };
    let mut command = std::process::Command::new(&words[0]);
    command.args(&words[1..]);
    let out = crate::process::run(&mut command, b"", COMMAND_DEADLINE).map_err(|e| match e {
        crate::process::RunError::Spawn(e) => fail(format!("cannot be started: {e}")),
        crate::process::RunError::TimedOut(t) => fail(format!(
            "was still running after {} s and was stopped",
            t.as_secs()
        )),
        crate::process::RunError::Wait(e) => fail(format!("could not be waited for: {e}")),
    })?;
    if !out.status.success() {
        // Its output is not shown: a key command's output is key material.
        return Err(fail(format!("failed ({})", out.status)));
    }
    let text =
        std::str::from_utf8(&out.stdout).map_err(|_| fail("printed something that is not UTF-8".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test key of the fixtures (made by age-keygen), not a real one.
    const KEY_FILE: &str = include_str!("../../tests/fixtures/keys/unrelated_age.txt");

    fn identity() -> &'static str {
        KEY_FILE
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
    }

    #[test]
    fn debug_shows_which_variables_are_set_but_no_value() {
        let env = SopsAgeEnv {
            key: Some(Zeroizing::new(identity().to_owned())),
            key_cmd: Some("pass show age".into()),
            ..SopsAgeEnv::default()
        };
        let shown = format!("{env:?}");
        assert!(!shown.contains("AGE-SECRET-KEY"), "{shown}");
        assert!(!shown.contains("pass show"), "{shown}");
        assert!(shown.contains("<set>"), "{shown}");
    }

    #[test]
    fn the_key_command_is_split_like_a_shell_and_its_output_is_used() {
        let env = SopsAgeEnv {
            key_cmd: Some(format!("printf '%s\\n' '{}'", identity())),
            ..SopsAgeEnv::default()
        };
        let mut keyring = Keyring::new();
        assert!(env.add_to(&mut keyring, true).is_empty());
        assert_eq!(keyring.offered().len(), 1);
        assert_eq!(keyring.offered()[0].origin, "SOPS_AGE_KEY_CMD");
    }

    #[test]
    fn a_failing_key_command_is_named_without_its_output() {
        let env = SopsAgeEnv {
            key_cmd: Some(format!("sh -c 'echo {0}; echo {0} >&2; exit 3'", identity())),
            ..SopsAgeEnv::default()
        };
        let problems = env.add_to(&mut Keyring::new(), true);
        assert_eq!(problems.len(), 1);
        let msg = problems[0].to_string();
        assert!(msg.contains("SOPS_AGE_KEY_CMD (sh) failed"), "{msg}");
        assert!(!msg.contains("AGE-SECRET-KEY"), "{msg}");
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        let env = SopsAgeEnv {
            key_cmd: Some("cat 'unterminated".into()),
            ..SopsAgeEnv::default()
        };
        let problems = env.add_to(&mut Keyring::new(), true);
        assert!(matches!(problems[..], [SopsEnvError::CommandSyntax]));
    }
}
