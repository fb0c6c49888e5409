//! Prints the single-core rate of each backup stage and the pipeline limit
//! they imply, as a Markdown table for docs/PERFORMANCE.md.
//!
//! Usage: cairn-limits [--data DIR] [--terse] [CORES] [MIB] [SECONDS_PER_STAGE]
//!
//! Without `--data` the stages run on MIB of generated text and of
//! generated binary data, each one long file. With `--data DIR` they run
//! on about MIB of DIR's own files, each chunked on its own as a backup
//! chunks it. `--terse` prints only the pipeline limits in MiB/s (text and
//! binary, or DIR's).

use anyhow::{bail, Context};
use cairn_benches::limits::{measure_sample, sample_compress_ratio, DataKind, Sample, StageRates};
use std::path::PathBuf;
use std::time::Duration;

fn mib_s(rate: f64) -> String {
    format!("{:.0}", rate / (1 << 20) as f64)
}

struct Args {
    data: Option<PathBuf>,
    terse: bool,
    cores: usize,
    mib: usize,
    secs: f64,
}

fn parse() -> anyhow::Result<Args> {
    let mut data = None;
    let mut terse = false;
    let mut positional = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => {
                data = Some(PathBuf::from(
                    args.next().context("--data needs a directory")?,
                ))
            }
            "--terse" => terse = true,
            s if s.starts_with('-') => {
                bail!("unknown option {s}; usage: cairn-limits [--data DIR] [--terse] [CORES] [MIB] [SECONDS_PER_STAGE]")
            }
            _ => positional.push(a),
        }
    }
    let number = |i: usize, what: &str| -> anyhow::Result<Option<f64>> {
        positional
            .get(i)
            .map(|s| {
                s.parse::<f64>()
                    .with_context(|| format!("{what} must be a number, not {s:?}"))
            })
            .transpose()
    };
    let cores = match number(0, "CORES")? {
        Some(c) if c >= 1.0 => c as usize,
        Some(_) => bail!("CORES must be at least 1"),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(Args {
        data,
        terse,
        cores,
        mib: number(1, "MIB")?.map_or(64, |m| m.max(1.0) as usize),
        secs: number(2, "SECONDS_PER_STAGE")?.unwrap_or(1.0),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let min_time = Duration::from_secs_f64(args.secs);
    let samples: Vec<(String, Sample)> = match &args.data {
        Some(dir) => {
            let sample = Sample::from_dir(dir, args.mib << 20)
                .with_context(|| format!("cannot sample the files under {}", dir.display()))?;
            vec![(dir.display().to_string(), sample)]
        }
        None => vec![
            (
                "text".into(),
                Sample::generated(DataKind::Text, args.mib << 20),
            ),
            (
                "binary".into(),
                Sample::generated(DataKind::Binary, args.mib << 20),
            ),
        ],
    };
    let rates: Vec<StageRates> = samples
        .iter()
        .map(|(_, s)| measure_sample(s, min_time))
        .collect();
    let row = |name: &str, f: &dyn Fn(&StageRates) -> String| {
        let cells: Vec<String> = rates.iter().map(f).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    if args.terse {
        let limits: Vec<String> = rates
            .iter()
            .map(|r| mib_s(r.pipeline_limit(args.cores)))
            .collect();
        println!("{}", limits.join(" "));
        return Ok(());
    }
    let names: Vec<&str> = samples.iter().map(|(n, _)| n.as_str()).collect();
    println!("| stage (one core, MiB/s) | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    row("chunk (FastCDC)", &|r| mib_s(r.chunk));
    row("zero check", &|r| mib_s(r.zero_check));
    row("hash (keyed BLAKE3)", &|r| mib_s(r.hash));
    row(
        "compress (zstd: text at the default level, small text in bundles; -1 dense binary)",
        &|r| mib_s(r.compress),
    );
    row("encrypt (AES-256-GCM)", &|r| mib_s(r.encrypt));
    row("serial stage: chunk + zero check + hash", &|r| {
        mib_s(r.serial())
    });
    row("all stages on one core", &|r| mib_s(r.one_core()));
    row(
        &format!("**pipeline limit on {} cores**", args.cores),
        &|r| format!("**{}**", mib_s(r.pipeline_limit(args.cores))),
    );
    let ratios: Vec<String> = samples
        .iter()
        .map(|(_, s)| format!("{:.2}", sample_compress_ratio(s)))
        .collect();
    println!("| compressed size / plain size | {} |", ratios.join(" | "));
    Ok(())
}
