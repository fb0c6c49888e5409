//! Helpers the CLI integration tests share: a stand-in Kubernetes API on 127.0.0.1 that the
//! binary reaches through a kubeconfig, a readable dump of a command's output,
//! deterministic bytes, and the FUSE availability check, mount-table lookup and mount guard
//! of the mount tests.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a mount may take to appear before a test gives up (a liveness bound, not a
/// performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Whether FUSE mounts can run here (/dev/fuse and fusermount3); says why not when not.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: /dev/fuse or fusermount3 is missing (apt-get install fuse3)");
    }
    ok
}

/// One HTTP request the stand-in API received.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    /// `GET`, `PATCH`, ...
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    /// The Content-Type header, empty without one.
    pub content_type: String,
    /// The body, as long as Content-Length said.
    pub body: Vec<u8>,
}

/// What the stand-in API answers a request with: a status line ("200 OK") and a JSON body.
pub type ApiReply = (&'static str, Value);

/// Starts a Kubernetes API stand-in on a free port of 127.0.0.1 and returns the port. Every
/// request, read whole, goes to `answer`; its reply is sent as `application/json`. A
/// connection is served until the client closes it.
pub fn serve_api<F>(answer: F) -> u16
where
    F: Fn(ApiRequest) -> ApiReply + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    // The accept loop ends with the test process; it holds no child process or mount.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || serve(stream, &*answer));
        }
    });
    port
}

/// Serves HTTP/1.1 requests on one connection until the client closes it.
fn serve(stream: TcpStream, answer: &dyn Fn(ApiRequest) -> ApiReply) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let (status, reply) = answer(request);
        let reply = reply.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(reply.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// Reads one request: the request line, headers up to the empty line, and the body.
/// `None` once the client has closed the connection (or closed it mid-request).
fn read_request(reader: &mut impl BufRead) -> Option<ApiRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default().to_string();
    let (mut length, mut content_type) = (0, String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(ApiRequest {
        method,
        path,
        content_type,
        body,
    })
}

/// Writes `dir/kubeconfig`: its only cluster is the stand-in API on `port`, without
/// credentials, with `namespace` as the context's default namespace when given.
pub fn kubeconfig(dir: &Path, port: u16, namespace: Option<&str>) -> PathBuf {
    let path = dir.join("kubeconfig");
    let namespace = namespace
        .map(|ns| format!("    namespace: {ns}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\n{namespace}\
         current-context: mock\nusers:\n- name: mock\n  user: {{}}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A command's exit status, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `len` bytes of xorshift64 from the state `start` (not 0), bits 24..32 of each step:
/// deterministic, so failures reproduce, and incompressible.
pub fn xorshift_bytes(start: u64, len: usize) -> Vec<u8> {
    let mut x = start;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The mount entry (source, i.e. fsname) at `dir`, if `dir` is a mount point.
pub fn mount_source(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4).map(|mp| mp.as_bytes()) != Some(dir.as_os_str().as_bytes()) {
            return None;
        }
        // After the optional fields: "-", the filesystem type, the source.
        let dash = fields.iter().position(|f| *f == "-")?;
        fields.get(dash + 2).map(|s| s.to_string())
    })
}

/// Whether `dir` is a mount point.
pub fn is_mounted(dir: &Path) -> bool {
    mount_source(dir).is_some()
}

/// A live mount at `dir`, served by `child` (`cairn mount` or `cairn kube mount`, stderr
/// piped) or by a daemon the test does not hold (`None`); Drop always unmounts and reaps it.
pub struct Mounted {
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl Mounted {
    /// Spawns `cmd` (stdout discarded, stderr kept for failures) and waits until `dir` is
    /// a mount point.
    pub fn spawn(mut cmd: Command, dir: &Path) -> Mounted {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the mount process");
        let mut m = Mounted {
            dir: dir.to_path_buf(),
            child: Some(child),
        };
        m.wait_mounted();
        m
    }

    /// Waits until `dir` is a mount point; panics with the process's stderr if it exits
    /// first, or after [`PATIENCE`].
    fn wait_mounted(&mut self) {
        let start = Instant::now();
        while !is_mounted(&self.dir) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let (_, err) = self.wait_exit();
                panic!("the mount process exited ({status}) before mounting: {err}");
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no mount at {} after {PATIENCE:?}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the mount process to exit; returns its status and stderr.
    pub fn wait_exit(&mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("child");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (child.wait().expect("wait"), err)
    }

    /// The mount process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child").id()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
