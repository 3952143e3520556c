//! Running a helper program (gpg, an AWS `credential_process`, the Azure CLI)
//! with a deadline: a boot must not hang on a helper that waits for input or
//! a network that is not there.

use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// What a helper printed. Its standard output may hold key material.
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Standard output, wiped on drop.
    pub stdout: Zeroizing<Vec<u8>>,
    /// Standard error (diagnostics; helpers do not print secrets there).
    pub stderr: String,
}

/// Why a helper gave no output.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started (`NotFound`: not on `PATH`).
    Spawn(std::io::Error),
    /// It was still running at the deadline and was killed.
    TimedOut(Duration),
    /// Waiting for it failed.
    Wait(std::io::Error),
}

/// Runs `cmd` with `stdin` as its input, killing it after `timeout`. Output
/// is read while it runs, so a full pipe cannot stall it.
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Result<Output, RunError> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Spawn)?;
    let mut input = child.stdin.take().expect("piped");
    let stdin = Zeroizing::new(stdin.to_vec());
    // A helper that exits without reading its input closes the pipe: ignore that.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut(timeout));
            }
            Err(e) => {
                let _ = child.kill();
                return Err(RunError::Wait(e));
            }
        }
    };
    let _ = writer.join();
    // The readers end when the pipes close, which they do when the helper
    // exits (daemons it starts, such as gpg-agent, detach from them).
    let stdout = out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_input_and_exit_status_come_back() {
        let out = run(
            Command::new("sh").args(["-c", "cat; echo oops >&2; exit 3"]),
            b"data key",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(*out.stdout, b"data key");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn a_helper_that_hangs_is_killed_at_the_deadline() {
        let start = Instant::now();
        let err = run(Command::new("sleep").arg("30"), b"", Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(matches!(err, RunError::TimedOut(_)), "{err:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(
            &mut Command::new("/nonexistent/helper"),
            b"",
            Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(matches!(err, RunError::Spawn(ref e) if e.kind() == std::io::ErrorKind::NotFound));
    }

    #[test]
    fn large_output_does_not_stall_the_helper() {
        let out = run(
            Command::new("sh").args(["-c", "head -c 1000000 /dev/zero"]),
            b"",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
    }
}
