//! Prints the single-core rate of each backup stage and the pipeline limit
//! they imply, as a Markdown table for docs/PERFORMANCE.md.
//!
//! Usage: cairn-limits [CORES] [MIB] [SECONDS_PER_STAGE] [terse]
//! `terse` prints only the two pipeline limits (text, binary) in MiB/s.

use cairn_benches::limits::{compress_ratio, measure, DataKind};
use std::time::Duration;

fn mib_s(rate: f64) -> String {
    format!("{:.0}", rate / (1 << 20) as f64)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cores: usize = match args.first() {
        Some(c) => c.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mib: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let secs: f64 = args.get(2).map_or(Ok(1.0), |s| s.parse())?;
    let min_time = Duration::from_secs_f64(secs);
    if args.get(3).map(String::as_str) == Some("terse") {
        let text = measure(DataKind::Text, mib << 20, min_time);
        let bin = measure(DataKind::Binary, mib << 20, min_time);
        println!(
            "{} {}",
            mib_s(text.pipeline_limit(cores)),
            mib_s(bin.pipeline_limit(cores))
        );
        return Ok(());
    }
    println!("| stage (one core, MiB/s) | text | binary |");
    println!("|---|---:|---:|");
    let text = measure(DataKind::Text, mib << 20, min_time);
    let bin = measure(DataKind::Binary, mib << 20, min_time);
    type Stage = fn(&cairn_benches::limits::StageRates) -> f64;
    let rows: [(&str, Stage); 5] = [
        ("chunk (FastCDC)", |r| r.chunk),
        ("zero check", |r| r.zero_check),
        ("hash (keyed BLAKE3)", |r| r.hash),
        ("compress (zstd: level 3 text, -1 binary)", |r| r.compress),
        ("encrypt (AES-256-GCM)", |r| r.encrypt),
    ];
    for (name, f) in rows {
        println!("| {name} | {} | {} |", mib_s(f(&text)), mib_s(f(&bin)));
    }
    println!(
        "| serial stage: chunk + zero check + hash | {} | {} |",
        mib_s(text.serial()),
        mib_s(bin.serial())
    );
    println!(
        "| all stages on one core | {} | {} |",
        mib_s(text.one_core()),
        mib_s(bin.one_core())
    );
    println!(
        "| **pipeline limit on {cores} cores** | **{}** | **{}** |",
        mib_s(text.pipeline_limit(cores)),
        mib_s(bin.pipeline_limit(cores))
    );
    println!(
        "| compressed size / plain size | {:.2} | {:.2} |",
        compress_ratio(DataKind::Text, 8 << 20),
        compress_ratio(DataKind::Binary, 8 << 20)
    );
    Ok(())
}
