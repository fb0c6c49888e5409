//! `cairn kopiaexecutor <op> --flag value ...`, also reached as `/kopiaexecutor <op> ...`
//! (the binary under that name, as KDMP's job image holds it): the KDMP executor contract,
//! whose logic is cairn-kube's [`cairn_kube::kdmp`]; the engine is cairn-core
//! ([`CoreEngine`]).
//!
//! Exit status: 0 when the operation succeeded, 1 when it failed (the reason is in KDMP's
//! object and on standard error), 2 for a command line KDMP would not build.

use anyhow::{Context, Result};
use cairn_engine::CoreEngine;
use cairn_kube::kdmp::{self, ExecutorEnv, KdmpCommand};
use clap::Args;
use std::process::ExitCode;
use std::sync::Arc;

/// The name the binary answers to as KDMP's executor.
pub const EXECUTOR_NAME: &str = "kopiaexecutor";

#[derive(Args, Debug)]
pub struct KopiaExecutorArgs {
    /// The operation and its flags exactly as KDMP builds them: backup, restore, delete or
    /// maintenance (docs/KDMP.md).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "OP FLAGS"
    )]
    pub args: Vec<String>,
}

/// Whether the process was started under the executor's name (`/kopiaexecutor`).
pub fn invoked_as_executor() -> bool {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|n| n == EXECUTOR_NAME)
        })
        .unwrap_or(false)
}

/// `/kopiaexecutor <op> ...`: logs at info level (a job pod's log is the only trace), as
/// text unless CAIRN_LOG_FORMAT=json.
pub fn main_as_executor() -> ExitCode {
    let format = match std::env::var("CAIRN_LOG_FORMAT").as_deref() {
        Ok("json") => crate::common::LogFormat::Json,
        _ => crate::common::LogFormat::Text,
    };
    crate::common::init_logging(1, false, format);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(KopiaExecutorArgs { args }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(a: KopiaExecutorArgs) -> Result<ExitCode> {
    let command = match KdmpCommand::parse(&a.args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if matches!(command, KdmpCommand::Backup(_)) {
        crate::malloc::restart_with_malloc_setting();
    }
    let env = match ExecutorEnv::from_env(&|name| std::env::var(name).ok()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let client = kube::Client::try_default().await.map_err(|e| e.to_string());
        kdmp::run(command, &env, Arc::new(CoreEngine), client).await
    });
    match result {
        Ok(summary) => {
            outln!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
