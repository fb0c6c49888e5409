//! A TCP latency line for benchmarks on one machine (benches/latency.sh), where `tc netem`
//! is not available: it accepts connections, opens one to the upstream server for each,
//! and forwards every byte in both directions a fixed delay after it arrived.
//!
//! Usage:
//!   cairn-delay-proxy LISTEN UPSTREAM DELAY_MS
//!       LISTEN     address to accept on, such as 127.0.0.1:0 (a free port)
//!       UPSTREAM   server address, such as 127.0.0.1:9000
//!       DELAY_MS   one-way delay in milliseconds (a round trip adds twice this)
//!
//! Prints `listening on ADDR` on stdout once it accepts, then runs until killed.
//!
//! What the line does: bytes read at time t are written at t + D, in order, on each
//! direction of each connection; connections are independent (no shared queue), and
//! nothing caps throughput (reads go on while earlier bytes wait out their delay, up to
//! [`IN_FLIGHT`] reads per direction). Half-closes are forwarded after the same delay.
//! Both sockets of a pair have TCP_NODELAY, so the proxy adds no Nagle wait of its own.

use anyhow::{bail, Context, Result};
use cairn_benches::delay::{serve, DelayLine};
use std::time::Duration;
use tokio::net::TcpListener;

/// Reads of one direction waiting out their delay at once; a sender faster than this
/// many reads per delay is slowed by TCP's own flow control.
const IN_FLIGHT: usize = 4096;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: cairn-delay-proxy LISTEN UPSTREAM DELAY_MS (for example 127.0.0.1:0 127.0.0.1:9000 10)");
    }
    let delay_ms: u64 = args[3].parse().with_context(|| {
        format!(
            "DELAY_MS must be a whole number of milliseconds, not {:?}",
            args[3]
        )
    })?;
    let line = DelayLine {
        delay: Duration::from_millis(delay_ms),
        in_flight: IN_FLIGHT,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args[1])
            .await
            .with_context(|| format!("cannot listen on {}", args[1]))?;
        let upstream = args[2].clone();
        // Scripts read the port from this line.
        println!("listening on {}", listener.local_addr()?);
        serve(listener, upstream, line).await
    })
}
