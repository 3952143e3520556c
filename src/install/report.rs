//! What a run tells: log lines, change lines, the generation it installed,
//! and the problems that made it fail. Every stage adds to one [`Report`],
//! which reaches the journal whether the run succeeds or not.

use crate::units;

/// One thing that stopped the run, with journal fields naming what it is about.
#[derive(Debug)]
pub struct Problem {
    /// What is wrong and what to do (never a secret value).
    pub message: String,
    /// `("secret", name)`, `("file", path)`.
    pub fields: Vec<(&'static str, String)>,
}

impl From<String> for Problem {
    fn from(message: String) -> Problem {
        Problem {
            message,
            fields: Vec::new(),
        }
    }
}

impl Problem {
    pub(super) fn about(message: String, fields: &[(&'static str, &str)]) -> Problem {
        Problem {
            message,
            fields: fields.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }
}

/// Problems collected along the way.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn push(&mut self, p: impl Into<Problem>) {
        self.0.push(p.into());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Every problem that stopped the run.
#[derive(Debug)]
pub struct Failed(pub Vec<Problem>);

impl Failed {
    pub(super) fn one(message: String) -> Failed {
        Failed(vec![message.into()])
    }
}

/// One message for the log, with fields for the journal.
#[derive(Debug)]
pub struct LogLine {
    /// How serious.
    pub priority: crate::log::Priority,
    /// The text (never a secret value).
    pub message: String,
    /// Journal fields: `("secret", name)`, `("file", path)`.
    pub fields: Vec<(&'static str, String)>,
}

impl LogLine {
    pub(super) fn warning(message: String) -> LogLine {
        LogLine {
            priority: crate::log::Priority::Warning,
            message,
            fields: Vec::new(),
        }
    }

    pub(super) fn info(message: String, fields: Vec<(&'static str, String)>) -> LogLine {
        LogLine {
            priority: crate::log::Priority::Info,
            message,
            fields,
        }
    }
}

/// What a run did and saw, for the caller to print, whether it succeeded or not.
#[derive(Debug, Default)]
pub struct Report {
    /// Messages for the log (warnings, key imports).
    pub log: Vec<LogLine>,
    /// sops-nix's change lines, for stdout.
    pub changes: Vec<String>,
    /// The generation now live (none in dry runs and check modes).
    pub generation: Option<u64>,
    /// Units of new or changed secrets and templates.
    pub requests: units::Requests,
}

/// How a run ended: what it did and saw (warnings, change lines, the
/// generation it installed), and the problems that made it fail, if any. The
/// report is kept on failure too, so that every warning and change line
/// reaches the journal whatever the outcome.
#[derive(Debug)]
pub struct Outcome {
    /// Everything the run logged or changed.
    pub report: Report,
    /// `Err` with every problem when the run failed (possibly after installing).
    pub result: Result<(), Failed>,
}

/// "1 secret", "2 secrets".
pub(super) fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
