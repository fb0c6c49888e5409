//! Helpers of the behaviour suite: a fresh storage per test, deterministic
//! test data, and tiny loopback servers that misbehave on purpose.

use bytes::Bytes;
use cairn_storage::testing::{fresh_location, TestLocation};
use cairn_storage::{open_with, DynStorage, StorageOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Options for tests: production behaviour, shorter waits.
pub fn test_options() -> StorageOptions {
    StorageOptions {
        retry_base_delay: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(50),
        ..StorageOptions::default()
    }
}

/// A fresh location on the chosen backend and the production stack on it.
pub fn open_fresh(name: &str) -> (TestLocation, DynStorage) {
    let loc = fresh_location(name).expect("choose the test backend");
    let storage = open_with(loc.location(), &test_options()).expect("open the test storage");
    (loc, storage)
}

/// `len` bytes that differ for every `seed` and every position.
pub fn pattern(seed: u8, len: usize) -> Bytes {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A loopback HTTP server that answers every request with one canned
/// response; stopped (and joined) on drop.
pub struct CannedHttp {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The request line and headers of every request answered so far.
    heads: Arc<Mutex<Vec<String>>>,
}

impl CannedHttp {
    pub fn start(status: &str, body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        let heads = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = stop.clone();
            let heads = heads.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        // A client that hangs up early is not our concern.
                        if let Ok(head) = answer(stream, response.as_bytes()) {
                            heads.lock().unwrap().push(head);
                        }
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            thread: Some(thread),
            heads,
        }
    }

    /// The request line and headers of every request answered so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads one request (headers and any body), writes `response` and returns the request
/// line and headers.
fn answer(stream: TcpStream, response: &[u8]) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut content_length = 0usize;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    let mut stream = reader.into_inner();
    stream.write_all(response)?;
    stream.flush()?;
    Ok(head)
}

impl Drop for CannedHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A loopback port whose connections are accepted by the kernel but never
/// answered: requests to it hang until the client's timeout.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: TcpListener,
}

impl Blackhole {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        Self {
            addr: listener.local_addr().expect("local addr"),
            _listener: listener,
        }
    }
}
