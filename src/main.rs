//! The `sops-install-secrets` command line.
//!
//! Subcommands:
//! - `decrypt [--age-key-file F]... [--ssh-key F]... [--input-type T] [--output-type T] [--extract PATH] FILE`
//!   prints what `sops -d` prints, so any file can be checked against real sops;
//! - `ssh-to-age [-private-key] [-i FILE] [-o FILE]` prints the age recipients of
//!   OpenSSH Ed25519 public keys (or the identity of a private key), as Mic92's
//!   ssh-to-age does.
//! - `ssh-to-pgp [-i FILE] [-o FILE] [--private-key]` prints an RSA SSH key as an
//!   OpenPGP key (its fingerprint on stderr), for `.sops.yaml` `pgp:` rules.
//!
//! - `[-check-mode=off|manifest|sopsfile] [-ignore-passwd] manifest.json`
//!   installs a manifest, exactly as sops-nix's installer is invoked.

use std::process::ExitCode;

mod cli;

use cli::{Args, DEMO_HELP, USAGE, UsageError, VERSION};

fn main() -> ExitCode {
    // Before anything is read: no core dump may carry a decrypted value.
    if let Err(e) = sops_install_secrets::hardening::forbid_core_dumps() {
        eprintln!("sops-install-secrets: cannot disable core dumps: {e}");
        return ExitCode::FAILURE;
    }
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    let result = match argv[0].as_str() {
        "decrypt" => {
            argv.remove(0);
            cli::decrypt::decrypt(Args {
                rest: argv.into_iter(),
            })
        }
        "ssh-to-age" => {
            argv.remove(0);
            cli::ssh::ssh_to_age(Args {
                rest: argv.into_iter(),
            })
        }
        "ssh-to-pgp" => {
            argv.remove(0);
            cli::ssh::ssh_to_pgp(Args {
                rest: argv.into_iter(),
            })
        }
        "demo" if argv.len() > 1 => {
            if matches!(argv[1].as_str(), "-h" | "-help" | "--help") {
                println!("usage: sops-install-secrets demo\n\n{DEMO_HELP}");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(UsageError(format!("demo takes no arguments (got {:?})", argv[1])))
            }
        }
        "demo" => match cli::demo::demo() {
            Ok(text) => {
                print!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("sops-install-secrets: demo failed: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        "-h" | "-help" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        "-version" | "--version" | "version" => {
            println!("{VERSION}");
            Ok(ExitCode::SUCCESS)
        }
        _ => cli::install::install_manifest(argv),
    };
    match result {
        Ok(code) => code,
        Err(UsageError(msg)) => {
            eprintln!("sops-install-secrets: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
