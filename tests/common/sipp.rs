//! SIPp for the PBX side: UDP (`-t u1`), always under `timeout -k 5 N` because SIPp's own
//! `-timeout` does not stop a run with hung calls. Every run records its messages
//! (`-trace_msg`), errors and scenario logs in a temporary directory, returned to the test.
//!
//! UAC runs are bounded with `-m 1`. UAS runs are not: SIPp in server mode makes a call of every
//! unknown Call-ID, so drbridge's OPTIONS keep-alives would use up `-m 1`; our uas_*.xml answer
//! an out-of-dialog OPTIONS and end the run themselves (`stop_gracefully`) after the real call.
//! Both use `-aa`, so unexpected INFO/NOTIFY/OPTIONS/UPDATE are answered 200.

use super::util::{free_udp_port, have_program, loopback, TempDir};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn scenario_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("sipp")
}

/// True when `sipp` is on PATH. Tests that need it print a notice and return when it is not
/// (tests/run.sh installs it, so CI always has it).
pub fn available() -> bool {
    have_program("sipp")
}

/// Returns false (after printing why) when SIPp is missing: `if !sipp::require("name") { return; }`
pub fn require(test: &str) -> bool {
    if available() {
        return true;
    }
    // In CI a missing SIPp is a failure, not a skip: the suite would pass without its peers.
    assert!(std::env::var_os("CI").is_none(), "{test}: sipp not installed in CI (tests/run.sh installs sip-tester)");
    eprintln!("SKIPPED {test}: sipp not installed (bash tests/run.sh installs the sip-tester package)");
    false
}

#[derive(Clone, Debug)]
pub struct Sipp {
    scenario: String,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    service: Option<String>,
    pause_ms: u64,
    limit: Duration,
    recv_timeout_ms: u64,
    extra: Vec<String>,
}

/// What one SIPp run left behind.
#[derive(Debug)]
pub struct SippResult {
    pub scenario: String,
    pub status: ExitStatus,
    /// Every message sent and received (`-trace_msg`).
    pub messages: String,
    /// `-trace_err` output: unexpected messages, timeouts.
    pub errors: String,
    /// `<log>` actions of the scenario (`-trace_logs`).
    pub logs: String,
    pub stdout: String,
    pub stderr: String,
}

impl SippResult {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    /// Panics with everything SIPp left when the run failed.
    pub fn assert_success(&self) {
        assert!(self.success(), "SIPp {} failed ({}):\n{}", self.scenario, self.status, self.report());
    }
    pub fn report(&self) -> String {
        format!(
            "--- errors ---\n{}\n--- logs ---\n{}\n--- messages ---\n{}\n--- stderr ---\n{}\n--- stdout (tail) ---\n{}",
            self.errors,
            self.logs,
            self.messages,
            self.stderr,
            tail(&self.stdout, 40)
        )
    }
    /// The SIP messages SIPp received (each with its start line), from the message log.
    pub fn received(&self) -> Vec<String> {
        split_trace(&self.messages, "received")
    }
    pub fn sent(&self) -> Vec<String> {
        split_trace(&self.messages, "sent")
    }
    /// Only the bytes SIPp received (for topology-hiding assertions).
    pub fn received_text(&self) -> String {
        self.received().join("\n")
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Splits a `-trace_msg` file into messages; keeps those whose header line says `dir`.
fn split_trace(trace: &str, dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for block in trace.split("----------------------------------------------- ") {
        let mut lines = block.lines();
        let _date = lines.next();
        let Some(what) = lines.next() else { continue };
        if what.contains(&format!("message {dir}")) {
            out.push(lines.collect::<Vec<_>>().join("\n").trim().to_string());
        }
    }
    out
}

impl Sipp {
    /// A UAC run of `scenario` (file name in tests/sipp) calling `service` at `remote`, bound
    /// to `local` (the PBX trunk address drbridge knows).
    pub fn uac(scenario: &str, local: SocketAddr, remote: SocketAddr, service: &str) -> Sipp {
        Sipp { remote: Some(remote), service: Some(service.to_string()), ..Sipp::base(scenario, local) }
    }

    /// A UAS run of `scenario` listening on `local`.
    pub fn uas(scenario: &str, local: SocketAddr) -> Sipp {
        Sipp::base(scenario, local)
    }

    fn base(scenario: &str, local: SocketAddr) -> Sipp {
        Sipp {
            scenario: scenario.to_string(),
            local,
            remote: None,
            service: None,
            pause_ms: 200,
            limit: Duration::from_secs(30),
            recv_timeout_ms: 10_000,
            extra: Vec::new(),
        }
    }

    /// `-d`: the length of `<pause/>` in the scenario.
    pub fn pause_ms(mut self, ms: u64) -> Sipp {
        self.pause_ms = ms;
        self
    }
    /// Hard limit of the whole run (`timeout -k 5 N`; SIPp's `-timeout` is set a little lower).
    pub fn limit(mut self, d: Duration) -> Sipp {
        self.limit = d;
        self
    }
    /// `-recv_timeout`: how long one expected message may take.
    pub fn recv_timeout_ms(mut self, ms: u64) -> Sipp {
        self.recv_timeout_ms = ms;
        self
    }
    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.to_string());
        self
    }

    /// The simple form: `Sipp::run("uac_call.xml", &["-s", "123", "127.0.0.1:5060"])` runs the
    /// scenario with the harness defaults plus `args`, on a free local port.
    pub fn run_raw(scenario: &str, args: &[&str]) -> SippResult {
        let mut s = Sipp::base(scenario, loopback(free_udp_port()));
        s.extra = args.iter().map(|a| a.to_string()).collect();
        s.run()
    }

    /// Runs to the end (blocking).
    pub fn run(self) -> SippResult {
        self.start().wait()
    }

    /// Starts in the background and returns once SIPp has bound its port (bounded).
    pub fn start(self) -> SippRun {
        let dir = TempDir::new("drbridge-sipp");
        let secs = self.limit.as_secs().max(3);
        let scenario = scenario_dir().join(&self.scenario);
        assert!(scenario.exists(), "no scenario {}", scenario.display());
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &secs.to_string(), "sipp"]);
        cmd.arg("-sf").arg(&scenario);
        cmd.args(["-nostdin", "-t", "u1", "-i", "127.0.0.1"]);
        cmd.args(["-p", &self.local.port().to_string()]);
        cmd.args(["-mp", &free_udp_port().to_string()]);
        cmd.args(["-aa", "-d", &self.pause_ms.to_string()]);
        cmd.args(["-timeout", &(secs.saturating_sub(2).max(1)).to_string(), "-timeout_error"]);
        cmd.args(["-recv_timeout", &self.recv_timeout_ms.to_string()]);
        cmd.args(["-trace_msg", "-message_file"]).arg(dir.join("messages.log"));
        cmd.args(["-trace_err", "-error_file"]).arg(dir.join("errors.log"));
        cmd.args(["-trace_logs", "-log_file"]).arg(dir.join("logs.log"));
        if let Some(s) = &self.service {
            cmd.args(["-s", s]);
        }
        cmd.args(&self.extra);
        if let Some(r) = self.remote {
            cmd.args(["-m", "1"]);
            cmd.arg(r.to_string());
        }
        cmd.current_dir(dir.path()).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn timeout/sipp");
        let run = SippRun { child: Some(child), dir, scenario: self.scenario.clone() };
        run.wait_bound(self.local, Duration::from_secs(5));
        run
    }
}

/// A SIPp run in the background.
pub struct SippRun {
    child: Option<Child>,
    dir: TempDir,
    scenario: String,
}

impl SippRun {
    /// Readiness check: SIPp holds `addr` once a test bind of it fails (bounded, polled).
    fn wait_bound(&self, addr: SocketAddr, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match UdpSocket::bind(addr) {
                Err(_) => return,
                Ok(s) => drop(s),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: SIPp {} did not bind {addr} within {limit:?}", self.scenario);
    }

    /// Waits for the end (bounded by the `timeout` wrapper) and collects the logs.
    pub fn wait(mut self) -> SippResult {
        let child = self.child.take().expect("child");
        let out = child.wait_with_output().expect("wait sipp");
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        SippResult {
            scenario: self.scenario.clone(),
            status: out.status,
            messages: read("messages.log"),
            errors: read("errors.log"),
            logs: read("logs.log"),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `wait` on a blocking thread, for async tests.
    pub async fn wait_async(self) -> SippResult {
        tokio::task::spawn_blocking(move || self.wait()).await.expect("join sipp waiter")
    }
}

impl Drop for SippRun {
    /// A run dropped before `wait` (a test failed early): SIGTERM to our `timeout` process,
    /// which passes it on to SIPp (and SIGKILLs it 5 s later if needed).
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}
