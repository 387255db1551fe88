//! Small helpers: temporary directories, free loopback ports, default timeouts.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Default bound for one protocol step in a test (a request and its answer).
pub const STEP: Duration = Duration::from_secs(5);

/// A fresh directory under the system temp dir, removed on drop unless DRBRIDGE_KEEP_TMP is set
/// or the thread is panicking (then its path is printed, to look at the logs).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("DRBRIDGE_KEEP_TMP").is_some() {
            eprintln!("test files kept in {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Ports handed out to tests come from 10000..19999, below the kernel's ephemeral range
/// (32768..60999) and drbridge's lab media ranges (20000..29999): a port the kernel gives to
/// some other socket meanwhile can then not collide with one a test picked and released. Each
/// test process walks the range from its own offset and never hands out a port twice.
fn next_candidate() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Steps of 4: SIPp also binds the three ports after its media port (-mp), so a port handed
    // out is never next to another one handed out.
    let start = (std::process::id() % 97) * 100;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    10_000 + (NEXT.fetch_add(4, Ordering::SeqCst) % 10_000) as u16
}

/// A loopback port free for both UDP and TCP at the time of the call (drbridge's PBX listener
/// binds both on one port).
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = next_candidate();
        let a = loopback(port);
        if UdpSocket::bind(a).is_ok() && TcpListener::bind(a).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A loopback port free for UDP.
pub fn free_udp_port() -> u16 {
    for _ in 0..1000 {
        let port = next_candidate();
        if UdpSocket::bind(loopback(port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback UDP port");
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Random token of `n` lowercase hex digits (tags, branches, Call-IDs).
pub fn token(n: usize) -> String {
    use rand::Rng;
    let mut r = rand::rng();
    (0..n).map(|_| char::from_digit(r.random_range(0..16), 16).unwrap_or('0')).collect()
}

/// Standard base64 (for SDES keys in test SDPs).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// True when `program` is on PATH.
pub fn have_program(program: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} >/dev/null 2>&1"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_known() {
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"fo"), "Zm8=");
    }
}
