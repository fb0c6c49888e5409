//! The latency line of `cairn-delay-proxy`: TCP forwarding that releases every byte a
//! fixed delay after it arrived, per direction, in order, without a throughput cap.

use anyhow::{Context, Result};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How bytes cross the proxy.
#[derive(Debug, Clone, Copy)]
pub struct DelayLine {
    /// One-way delay: bytes read at t are written at t + delay.
    pub delay: Duration,
    /// Reads of one direction waiting out their delay at once (the line's length in
    /// reads); when it is full the proxy stops reading and TCP flow control slows the
    /// sender.
    pub in_flight: usize,
}

/// Size of one read; a read returns what has arrived, up to this.
const READ_SIZE: usize = 256 << 10;

/// Accepts connections on `listener` forever, each forwarded to `upstream` on its own
/// tasks. A connection whose upstream cannot be reached is closed and reported on stderr;
/// the proxy goes on.
pub async fn serve(listener: TcpListener, upstream: String, line: DelayLine) -> Result<()> {
    loop {
        let (client, _) = listener.accept().await.context("accept")?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &upstream, line).await {
                eprintln!("cairn-delay-proxy: connection to {upstream}: {e:#}");
            }
        });
    }
}

/// Forwards one accepted connection until both directions are closed.
async fn forward(client: TcpStream, upstream: &str, line: DelayLine) -> Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("cannot connect to the upstream {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(direction(client_read, server_write, line));
    let down = tokio::spawn(direction(server_read, client_write, line));
    // A reset on one side is how connections end under load; neither is an error of
    // the proxy's.
    let _ = up.await;
    let _ = down.await;
    Ok(())
}

/// One direction: a reader stamping each read with its release time, a writer sleeping
/// until that time and writing. `None` carries the end of the stream (a half-close).
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, line: DelayLine) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Bytes>)>(line.in_flight.max(1));
    let reader = async move {
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let n = from.read(&mut buf).await.unwrap_or(0);
            let due = Instant::now() + line.delay;
            let item = (n > 0).then(|| Bytes::copy_from_slice(&buf[..n]));
            if tx.send((due, item)).await.is_err() || n == 0 {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, item)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match item {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server, and a proxy with `delay` in front of it; returns the proxy's address.
    async fn echo_behind_proxy(delay: Duration) -> std::net::SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let line = DelayLine {
            delay,
            in_flight: 64,
        };
        tokio::spawn(serve(proxy, echo_addr.to_string(), line));
        proxy_addr
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_twice_the_delay_and_bytes_arrive_intact() {
        let delay = Duration::from_millis(50);
        let addr = echo_behind_proxy(delay).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // 8 MiB of varied bytes: many reads, so order across reads is tested too.
        let sent: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let start = Instant::now();
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&sent).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let mut first_byte = None;
        let read = async {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = r.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                first_byte.get_or_insert_with(Instant::now);
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::join!(write, read);
        let first = first_byte.expect("no byte came back") - start;
        assert!(first >= 2 * delay, "first byte back after {first:?}");
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes changed on the way");
        // No throughput cap: 8 MiB through a 100 ms round trip takes about the round
        // trip, far less than one round trip per read would.
        let total = start.elapsed();
        assert!(total < 40 * delay, "8 MiB took {total:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_not_serialized() {
        let delay = Duration::from_millis(100);
        let addr = echo_behind_proxy(delay).await;
        let start = Instant::now();
        let mut rounds = Vec::new();
        for i in 0..8u8 {
            rounds.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(&[i; 100]).await.unwrap();
                let mut back = [0u8; 100];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(back, [i; 100]);
            }));
        }
        for r in rounds {
            r.await.unwrap();
        }
        // Eight round trips of 200 ms at once: about 200 ms, never 8 x 200 ms.
        let total = start.elapsed();
        assert!(total >= 2 * delay, "{total:?}");
        assert!(total < 8 * delay, "{total:?}");
    }
}
