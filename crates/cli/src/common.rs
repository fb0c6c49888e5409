//! Options every command shares: where the repository is, how to get the
//! password, and opening the repository with them.

use anyhow::{bail, Context, Result};
use cairn_core::{OpenOptions, Repository};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Global options.
#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Repository location: a path, file://PATH, s3://bucket/prefix, ...
    #[arg(long, short = 'r', env = "CAIRN_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Read the password from this file (first line).
    #[arg(long, env = "CAIRN_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Directory of the local cache (default: $XDG_CACHE_HOME/cairn).
    #[arg(long, env = "CAIRN_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Keep no local cache (everything is fetched again each run).
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// More log output (-v info, -vv debug).
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Log lines as text, or as one JSON object per line (for log collectors).
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Limit uploads to this many bytes per second (e.g. 10MiB).
    #[arg(long, global = true, value_parser = parse_size)]
    pub limit_upload: Option<u64>,
    /// Limit downloads to this many bytes per second (e.g. 10MiB).
    #[arg(long, global = true, value_parser = parse_size)]
    pub limit_download: Option<u64>,
}

/// Parses `1048576`, `512KiB`, `10MB`, `1.5GiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{s:?} is not a size (examples: 1048576, 512KiB, 10MB): {e}"))
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, the event's other
    /// fields, and `span`/`spans` with the resource's `namespace` and `name`.
    Json,
}

impl LogFormat {
    /// The value of `--log-format` (and `CAIRN_LOG_FORMAT`) that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Sets up logging to stderr; `RUST_LOG` overrides the level.
pub fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only on a terminal: a job pod's log (and the termination message Kubernetes
    // cuts from its tail) is a file, where escape codes are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

impl GlobalOpts {
    /// The repository location, or a clear error.
    pub fn location(&self) -> Result<&str> {
        match self.repo.as_deref() {
            Some(r) if !r.is_empty() => Ok(r),
            _ => bail!("no repository given: pass --repo LOCATION or set CAIRN_REPOSITORY"),
        }
    }

    /// Storage options (throttles) for opening.
    pub fn storage_options(&self) -> cairn_storage::StorageOptions {
        cairn_storage::StorageOptions {
            limit_upload: self.limit_upload,
            limit_download: self.limit_download,
            ..Default::default()
        }
    }

    /// Storage at the repository location.
    pub fn storage(&self) -> Result<cairn_storage::DynStorage> {
        Ok(cairn_storage::open_with(
            self.location()?,
            &self.storage_options(),
        )?)
    }

    /// Cache options for opening.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions {
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir
                    .clone()
                    .or_else(OpenOptions::default_cache_dir)
            },
            // A damaged index segment costs only the blobs it describes
            // (named in a warning; `cairn repair index` rebuilds it): reads
            // restore the rest, backups store those blobs again. Garbage
            // collection syncs the index strictly on its own.
            tolerate_damage: true,
        }
    }

    /// The repository password: CAIRN_PASSWORD, --password-file, or a prompt.
    pub fn password(&self) -> Result<String> {
        read_password(
            "CAIRN_PASSWORD",
            self.password_file.as_ref(),
            "repository password: ",
        )
    }

    /// Opens the repository.
    pub fn open(&self) -> Result<Repository> {
        let storage = self.storage()?;
        let password = self.password()?;
        Ok(Repository::open(storage, &password, &self.open_options())?)
    }
}

/// Reads a password from env var `var`, else `file`, else the terminal.
pub fn read_password(var: &str, file: Option<&PathBuf>, prompt: &str) -> Result<String> {
    if let Ok(p) = std::env::var(var) {
        return Ok(p);
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading password file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("password file {} is empty", f.display());
        }
        return Ok(line);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .context("reading the password from the terminal");
    }
    bail!("no password: set {var}, pass a password file, or run on a terminal to be asked")
}
