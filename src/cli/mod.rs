//! The command line's shared parts: usage text, the argument splitter that
//! takes sops-nix's Go spellings (`-flag`) and GNU ones (`--flag`), and the
//! subcommands, one file each.

pub mod decrypt;
pub mod demo;
pub mod install;
pub mod ssh;

/// The usage text of the whole command.
pub const USAGE: &str = "usage:
  sops-install-secrets demo        (installs bundled examples into a temporary directory)
  sops-install-secrets [-check-mode=off|manifest|sopsfile] [-ignore-passwd] manifest.json
  sops-install-secrets decrypt [--age-key-file FILE]... [--ssh-key FILE]...
                               [--gnupg-home DIR] [--gpg-ssh-key RSA_KEY_FILE]...
                               [--input-type yaml|json|dotenv|ini|binary]
                               [--output-type yaml|json|dotenv|ini|binary]
                               [--extract a/b/c | --extract '[\"a\"][\"b\"][0]'] FILE
  sops-install-secrets ssh-to-age [-private-key] [-i FILE] [-o FILE]
  sops-install-secrets ssh-to-pgp [-i RSA_KEY_FILE] [-o OUT] [--private-key]
  sops-install-secrets --version

Each subcommand takes --help.

decrypt: with no --age-key-file/--ssh-key/--gnupg-home/--gpg-ssh-key, identities come from
SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, SOPS_AGE_KEY_CMD, SOPS_AGE_SSH_PRIVATE_KEY_FILE, ~/.config/sops/age/keys.txt
and the GnuPG home (GNUPGHOME or ~/.gnupg, through gpg or SOPS_GPG_EXEC), as sops does.";

/// What `--version` prints.
pub const VERSION: &str = concat!("sops-install-secrets ", env!("CARGO_PKG_VERSION"));

pub const DEMO_HELP: &str =
    "Installs bundled example secrets (encrypted by real sops to a bundled demo key) into a
temporary directory, as the installer would under /run/secrets, and prints what it made.
Needs no root and touches nothing outside the temporary directory.";

/// A command-line mistake: printed with the usage text.
pub struct UsageError(pub String);

/// Splits `--flag=value` / `--flag value`; single-dash Go spellings are accepted too.
pub struct Args {
    /// The arguments not yet taken.
    pub rest: std::vec::IntoIter<String>,
}

impl Args {
    /// The next flag as (name without dashes, inline value); a positional
    /// argument comes as ("", Some(it)).
    pub fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.rest.next()?;
        if !arg.starts_with('-') || arg == "-" {
            return Some((String::new(), Some(arg)));
        }
        let name = arg.trim_start_matches('-');
        Some(match name.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (name.to_owned(), None),
        })
    }

    /// The flag's value: inline (`--flag=v`) or the next argument.
    pub fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, UsageError> {
        inline
            .or_else(|| self.rest.next())
            .ok_or_else(|| UsageError(format!("--{flag} needs a value")))
    }
}
