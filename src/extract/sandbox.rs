//! The PDF and HTML parsers run in a child process (`recall extract --worker`), one per file, with an
//! address-space limit, a CPU-time limit and a wall-clock deadline after which it is killed. A file that
//! makes a parser loop, recurse without end or allocate without bound costs that child, never the
//! server or the ingest that asked; the caller gets an error naming which bound it hit. At most
//! `max_workers` children run at once, so a burst of uploads cannot multiply the memory bound.

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use super::{extract_in_process, ExtractError, Extracted, Format, Hint};
use crate::domain::{DocumentContent, Limits, Metadata};

/// How much one file may cost to extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// The largest original accepted (`RECALL_MAX_FILE_BYTES`).
    pub max_file_bytes: u64,
    /// Wall-clock time for one file (`RECALL_EXTRACT_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// Address space of the worker (`RECALL_EXTRACT_MEMORY_MB`).
    pub memory_bytes: u64,
    /// Workers at once (`RECALL_EXTRACT_WORKERS`).
    pub max_workers: usize,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_file_bytes: 64 * 1024 * 1024,
            timeout: Duration::from_secs(60),
            memory_bytes: 1024 * 1024 * 1024,
            max_workers: 2,
        }
    }
}

impl ExtractLimits {
    /// The defaults, overridden by the RECALL_* variables that are set; a malformed value is an error.
    pub fn from_env() -> Result<Self, String> {
        fn var(name: &str) -> Result<Option<u64>, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| format!("{name} must be a positive whole number, not {v:?}")),
                Err(_) => Ok(None),
            }
        }
        let d = ExtractLimits::default();
        Ok(ExtractLimits {
            max_file_bytes: var("RECALL_MAX_FILE_BYTES")?.unwrap_or(d.max_file_bytes),
            timeout: var("RECALL_EXTRACT_TIMEOUT")?
                .map(Duration::from_secs)
                .unwrap_or(d.timeout),
            memory_bytes: var("RECALL_EXTRACT_MEMORY_MB")?
                .map(|mb| mb.saturating_mul(1024 * 1024))
                .unwrap_or(d.memory_bytes),
            max_workers: var("RECALL_EXTRACT_WORKERS")?
                .map(|n| n as usize)
                .unwrap_or(d.max_workers),
        })
    }
}

/// Turns original files into documents, running the risky parsers in bounded child processes.
#[derive(Debug, Clone)]
pub struct Extractor {
    program: Option<PathBuf>,
    limits: ExtractLimits,
    text: Limits,
    turns: Arc<Semaphore>,
}

impl Extractor {
    /// `program` is a `recall` binary (it runs `program extract --worker`); without one, PDF and HTML are
    /// refused with a message saying how to name it.
    pub fn new(program: Option<PathBuf>, limits: ExtractLimits, text: Limits) -> Self {
        Extractor {
            program,
            limits,
            text,
            turns: Arc::new(Semaphore::new(limits.max_workers.max(1))),
        }
    }

    /// The extractor the environment configures: `program_from_env` and `ExtractLimits::from_env`.
    pub fn from_env(text: Limits) -> Result<Self, String> {
        Ok(Extractor::new(
            Self::program_from_env(),
            ExtractLimits::from_env()?,
            text,
        ))
    }

    /// `RECALL_EXTRACT_PROGRAM`, else this process's own binary when it is `recall`.
    pub fn program_from_env() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("RECALL_EXTRACT_PROGRAM") {
            return Some(PathBuf::from(p));
        }
        std::env::current_exe()
            .ok()
            .filter(|p| p.file_stem().is_some_and(|s| s == "recall"))
    }

    pub fn limits(&self) -> &ExtractLimits {
        &self.limits
    }

    /// The text and structure of one file.
    pub async fn extract(&self, bytes: &[u8], hint: &Hint) -> Result<Extracted, ExtractError> {
        if bytes.len() as u64 > self.limits.max_file_bytes {
            return Err(ExtractError::TooLarge {
                bytes: bytes.len() as u64,
                limit: self.limits.max_file_bytes,
            });
        }
        match Format::sniff(bytes, hint) {
            format @ (Format::Markdown | Format::Text) => extract_in_process(bytes, format, &self.text),
            format => self.in_worker(bytes, format).await,
        }
    }

    /// One file as a document: extracted, titled (its own title, else `fallback_title`) and checked.
    pub async fn document(
        &self,
        bytes: &[u8],
        hint: &Hint,
        fallback_title: &str,
        metadata: Metadata,
    ) -> Result<(Format, DocumentContent), ExtractError> {
        let extracted = self.extract(bytes, hint).await?;
        let format = extracted.format;
        Ok((
            format,
            extracted.into_content(bytes, fallback_title, metadata, &self.text)?,
        ))
    }

    async fn in_worker(&self, bytes: &[u8], format: Format) -> Result<Extracted, ExtractError> {
        let label = format.name().to_uppercase();
        let timed_out = |format: String| ExtractError::TimedOut {
            format,
            seconds: self.limits.timeout.as_secs(),
        };
        let Some(program) = &self.program else {
            return Err(ExtractError::NoWorker {
                program: String::new(),
                detail: "this process is not the recall binary".into(),
            });
        };
        let _turn = self.turns.acquire().await.expect("the semaphore is never closed");
        let cpu_seconds = self.limits.timeout.as_secs().max(1) + 1;
        let mut child = tokio::process::Command::new(program)
            .args(["extract", "--worker", format.name()])
            .args(["--memory-bytes", &self.limits.memory_bytes.to_string()])
            .args(["--cpu-seconds", &cpu_seconds.to_string()])
            .args(["--max-text-bytes", &self.text.max_text_bytes.to_string()])
            .env("RECALL_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ExtractError::NoWorker {
                program: program.display().to_string(),
                detail: e.to_string(),
            })?;
        let (mut stdin, mut stdout, mut stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        // The answer is the text and its spans as JSON: bounded by a multiple of the text limit.
        let answer_cap = self.text.max_text_bytes as u64 * 8 + (1 << 20);
        let exchange = async {
            let write = async {
                // A worker that dies early closes its end; what it says on the way out is the answer.
                let _ = stdin.write_all(bytes).await;
                drop(stdin);
            };
            let mut out = Vec::new();
            let mut err = Vec::new();
            let mut stdout = (&mut stdout).take(answer_cap);
            let mut stderr = (&mut stderr).take(64 * 1024);
            let read_out = stdout.read_to_end(&mut out);
            let read_err = stderr.read_to_end(&mut err);
            let _ = tokio::join!(write, read_out, read_err);
            (out, err)
        };
        let (out, err) = match tokio::time::timeout(self.limits.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                let _ = child.kill().await;
                return Err(timed_out(label));
            }
        };
        let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            Ok(Ok(status)) => status,
            _ => {
                let _ = child.kill().await;
                return Err(timed_out(label));
            }
        };
        if status.success() {
            return serde_json::from_slice::<Result<Extracted, ExtractError>>(&out).map_err(|e| {
                ExtractError::ParserFailed {
                    format: label,
                    detail: format!("its worker answered something unreadable ({e})"),
                }
            })?;
        }
        let stderr = String::from_utf8_lossy(&err);
        use std::os::unix::process::ExitStatusExt;
        Err(match status.signal() {
            Some(libc::SIGXCPU) | Some(libc::SIGKILL) => timed_out(label),
            _ if stderr.contains("memory allocation") || stderr.contains("out of memory") => {
                ExtractError::OutOfMemory {
                    format: label,
                    mib: self.limits.memory_bytes / (1024 * 1024),
                }
            }
            _ => ExtractError::ParserFailed {
                format: label,
                detail: match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
                    Some(line) => super::truncate(line.trim(), 300),
                    None => format!("its worker ended with {status}"),
                },
            },
        })
    }
}

/// What `recall extract --worker` was asked to do.
#[derive(Debug, Clone, Copy)]
pub struct WorkerArgs {
    pub format: Format,
    pub memory_bytes: u64,
    pub cpu_seconds: u64,
    pub max_text_bytes: usize,
}

/// The worker's side: bound this process, read the file from stdin, write
/// `{"Ok": Extracted} | {"Err": ExtractError}` to stdout. Runs without an async runtime or threads.
pub fn run_worker(args: WorkerArgs) -> ExitCode {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let bound = |resource, n: u64| {
        setrlimit(
            resource,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )
    };
    if let Err(e) = bound(Resource::As, args.memory_bytes).and(bound(Resource::Cpu, args.cpu_seconds)) {
        eprintln!("cannot bound the worker: {e}");
        return ExitCode::FAILURE;
    }
    // The parsers' panics are answered as errors; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes) {
        eprintln!("cannot read the file from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let limits = Limits {
        max_text_bytes: args.max_text_bytes,
    };
    let answer = extract_in_process(&bytes, args.format, &limits).map_err(|e| match e {
        // Not produced by the PDF and HTML parsers; said in words if it ever is.
        ExtractError::Invalid(error) => ExtractError::ParserFailed {
            format: args.format.name().to_uppercase(),
            detail: error.to_string(),
        },
        other => other,
    });
    drop(bytes);
    let json = serde_json::to_vec(&answer).expect("an extraction result serialises");
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}
