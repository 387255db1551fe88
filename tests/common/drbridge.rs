//! The drbridge process: started with a lab configuration, stderr captured, killed on drop.

use super::config::LabConfig;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long drbridge may take to print `drbridge ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_drbridge")
}

#[derive(Default)]
struct Log {
    text: Mutex<String>,
    grew: Condvar,
}

pub struct Drbridge {
    child: Child,
    log: Arc<Log>,
    pub cfg: LabConfig,
}

impl Drbridge {
    /// Writes `cfg` to `<lab dir>/drbridge.toml`, runs `drbridge run --config` and waits
    /// (at most READY_TIMEOUT) for the `drbridge ready` line. Panics with the log otherwise.
    ///
    /// drbridge's own listen ports are picked free before it starts; another process on the
    /// machine can take one in between. Then they are picked again (a few times): read the ports
    /// from `Drbridge::cfg` afterwards, not from the config given.
    pub fn start(cfg: &LabConfig) -> Drbridge {
        let mut cfg = cfg.clone();
        let mut last = String::new();
        for _ in 0..5 {
            match Drbridge::try_start(&cfg) {
                Ok(d) => return d,
                Err(e) if e.contains("Address already in use") => {
                    last = e;
                    cfg.teams_listen = super::util::loopback(super::util::free_port());
                    cfg.pbx_listen = super::util::loopback(super::util::free_port());
                    if let Some(a) = cfg.admin.as_mut() {
                        a.listen = super::util::loopback(super::util::free_port());
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}")
    }

    pub fn try_start(cfg: &LabConfig) -> Result<Drbridge, String> {
        let path = cfg.config_path();
        std::fs::write(&path, cfg.to_toml()).map_err(|e| format!("write config: {e}"))?;
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,drbridge=debug".to_string());
        let mut child = Command::new(binary())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary()))?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let log = Arc::new(Log::default());
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            let mut ready = Some(ready_tx);
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if line.contains("drbridge ready") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                if let Ok(mut t) = log2.text.lock() {
                    t.push_str(&line);
                }
                log2.grew.notify_all();
            }
            // EOF: dropping `ready` wakes the starter if drbridge died before being ready.
            log2.grew.notify_all();
        });
        let d = Drbridge { child, log, cfg: cfg.clone() };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => Ok(d),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("drbridge not ready after {READY_TIMEOUT:?}; stderr:\n{}", d.stderr()))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let mut d = d;
                let status = d.child.wait().ok();
                Err(format!("drbridge exited ({status:?}) before ready; stderr:\n{}", d.stderr()))
            }
        }
    }

    /// Everything drbridge wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits (blocking, bounded) until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_log_count(needle, 1, timeout)
    }

    /// Waits (blocking, bounded) until stderr contains `needle` at least `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut t) = self.log.text.lock() else { return false };
        loop {
            if t.matches(needle).count() >= n {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.log.grew.wait_timeout(t, deadline - now) {
                Ok((g, _)) => t = g,
                Err(_) => return false,
            }
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `drbridge check --config FILE` on `config_text` (written to a temp file beside
    /// nothing else, so relative paths in it resolve in an empty directory). Returns the exit
    /// status and stdout+stderr.
    pub fn check(config_text: &str) -> (ExitStatus, String) {
        let dir = super::util::TempDir::new("drbridge-check");
        let path = dir.join("check.toml");
        std::fs::write(&path, config_text).expect("write config");
        Drbridge::check_file(&path)
    }

    pub fn check_file(path: &std::path::Path) -> (ExitStatus, String) {
        let out = Command::new(binary())
            .arg("check")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .output()
            .expect("run drbridge check");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status, text)
    }
}

impl Drop for Drbridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("DRBRIDGE_SHOW_LOG").is_some() {
            eprintln!("----- drbridge stderr -----\n{}----- end of drbridge stderr -----", self.stderr());
        }
    }
}
