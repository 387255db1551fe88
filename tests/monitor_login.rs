//! `drbridge monitor-login`: a presence monitor's first refresh token through the device
//! authorization grant, run as a child process against the identity platform stand-in
//! (tests/common/graph.rs). The test reads the user code from drbridge's stdout, plays the user
//! at the stand-in (approve as some UPN, or decline) and checks the exit status, what was
//! printed and the token file.
//!
//! Every wait is bounded and wakes on the child's output or the stand-in's requests; the
//! stand-in answers `interval = 1`, so a sign-in takes about one to two seconds.

mod common;

use common::config::PresenceSpec;
use common::graph::{GraphStub, DEVICE_CODE_GRANT, DEVICE_LOGIN_PAGE};
use common::util::{free_port, loopback};
use common::LabConfig;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TENANT: &str = "contoso.example";
const CLIENT_ID: &str = "0d7f1e2c-3b4a-4c5d-8e9f-a0b1c2d3e4f5";
const SECRET: &str = "lab-client-secret~not-a-real-one";
const MONITOR: &str = "presence-monitor-1@lab.drbridge.test";
const OTHER_MONITOR: &str = "presence-monitor-2@lab.drbridge.test";
const ADMIN: &str = "it-admin@lab.drbridge.test";
/// Bound of one step (the code shown, the process ended).
const WAIT: Duration = Duration::from_secs(20);

/// A lab whose `[presence.teams_to_pbx]` has two monitors; their token files do not exist yet
/// (the first one's directory neither).
struct Lab {
    stub: GraphStub,
    cfg: LabConfig,
    token_file: PathBuf,
    other_token_file: PathBuf,
}

async fn lab() -> Lab {
    let stub = GraphStub::start(TENANT, CLIENT_ID, SECRET).await;
    let cfg = LabConfig::with_rcgen_certs();
    let token_file = cfg.dir.join("monitors").join("monitor-1.token");
    let other_token_file = cfg.dir.join("monitor-2.token");
    let admin = loopback(free_port());
    let mut s = PresenceSpec::new(TENANT, CLIENT_ID, SECRET, &stub.identity_base(), &stub.graph_base());
    s.extra = format!(
        "\n[presence.teams_to_pbx]\nenabled = true\nnotification_url = \"http://{admin}/graph/webhook\"\n\
         [[presence.teams_to_pbx.monitors]]\nupn = \"{MONITOR}\"\nrefresh_token_file = \"{}\"\n\
         [[presence.teams_to_pbx.monitors]]\nupn = \"{OTHER_MONITOR}\"\nrefresh_token_file = \"{}\"\n",
        token_file.display(),
        other_token_file.display()
    );
    let mut cfg = cfg.with_presence(s).with_admin(admin, "lab-admin-token-0123456789");
    if let Some(a) = cfg.admin.as_mut() {
        a.webhook_client_state = Some("lab-webhook-client-state-42".into());
    }
    std::fs::write(cfg.config_path(), cfg.to_toml()).expect("write config");
    Lab { stub, cfg, token_file, other_token_file }
}

/// `drbridge monitor-login` running: stdout line by line, stderr collected; killed on drop.
struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: String,
    stderr: mpsc::Receiver<String>,
}

impl Login {
    fn start(config: &Path, monitor: &str) -> Login {
        let mut child = Command::new(common::drbridge::binary())
            .args(["monitor-login", "--config"])
            .arg(config)
            .args(["--monitor", monitor])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn drbridge monitor-login");
        let out = child.stdout.take().expect("stdout pipe");
        let err = child.stderr.take().expect("stderr pipe");
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(err).read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Login { child, lines, stdout: String::new(), stderr }
    }

    /// The next stdout line before `deadline`, kept in `stdout` too.
    fn next_line(&mut self, deadline: Instant) -> Result<String, mpsc::RecvTimeoutError> {
        let line = self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))?;
        self.stdout.push_str(&line);
        self.stdout.push('\n');
        Ok(line)
    }

    /// The next stdout lines until one contains `needle` (bounded by WAIT).
    fn line_containing(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.next_line(deadline) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no stdout line with {needle:?} ({e:?}); stdout so far:\n{}", self.stdout),
            }
        }
    }

    /// The user code from the identity platform's message, as printed.
    fn user_code(&mut self) -> String {
        let line = self.line_containing("enter the code");
        assert!(line.contains(DEVICE_LOGIN_PAGE), "{line}");
        let code = line.split("enter the code ").nth(1).and_then(|r| r.split_whitespace().next()).expect("a code after 'enter the code'");
        code.to_string()
    }

    /// Waits (bounded by WAIT) until the process has ended: (status, all of stdout, stderr).
    fn finish(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + WAIT;
        // stdout and stderr close when the process ends.
        loop {
            match self.next_line(deadline) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("drbridge monitor-login still running after {WAIT:?}; stdout:\n{}", self.stdout),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let stderr = self.stderr.recv_timeout(left).expect("stderr closed");
        let status = self.child.wait().expect("wait for drbridge");
        (status, std::mem::take(&mut self.stdout), stderr)
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `monitor-login` for `monitor`, waits for its code and the first poll (so that the
/// pending answer is exercised), then lets `act` play the user with the code.
async fn login_with(lab: &Lab, monitor: &str, act: impl FnOnce(&GraphStub, &str)) -> (ExitStatus, String, String) {
    let mut run = Login::start(&lab.cfg.config_path(), monitor);
    let code = tokio::task::block_in_place(|| run.user_code());
    let polled = lab.stub.wait_until(WAIT, |s| !s.device_code_polls().is_empty()).await;
    assert!(polled, "drbridge never polled the token endpoint; stub log: {:?}", lab.stub.requests());
    act(&lab.stub, &code);
    tokio::task::block_in_place(|| run.finish())
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("token file").permissions().mode() & 0o777
}

/// The monitor signs in (with its UPN in other letter case): drbridge writes the stand-in's
/// refresh token for the monitor, and nothing else, into the monitor's file (0600, its missing
/// directory created, no temporary file left), says so on stdout, and prints the token nowhere.
/// The file's token then works for the refresh grant drbridge uses at run time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_login_writes_the_monitors_refresh_token() {
    let lab = lab().await;
    let (status, stdout, stderr) = login_with(&lab, MONITOR, |stub, code| assert!(stub.approve_device_code(code, &MONITOR.to_ascii_uppercase()))).await;
    assert!(status.success(), "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let token = lab.stub.monitor_refresh_token(MONITOR).expect("the stand-in issued a refresh token for the monitor");
    assert_eq!(std::fs::read_to_string(&lab.token_file).expect("token file written"), format!("{token}\n"));
    #[cfg(unix)]
    assert_eq!(mode(&lab.token_file), 0o600);
    let dir: Vec<_> = std::fs::read_dir(lab.token_file.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(dir, vec![std::ffi::OsString::from("monitor-1.token")], "no temporary file left");
    assert!(!lab.other_token_file.exists(), "only the named monitor's file");
    assert!(stdout.contains(&format!("monitor {MONITOR} signed in; refresh token written to {}", lab.token_file.display())), "{stdout}");
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains(&token), "the refresh token reached {name}:\n{text}");
        assert!(!text.contains("stub-monitor-token") && !text.contains("stub-device-code") && !text.contains(SECRET), "a secret reached {name}:\n{text}");
    }

    // What drbridge asked: the monitor's scope plus openid, then polls of the device code grant
    // with the app's credentials, at least the answered interval (1 s) apart.
    let asked = lab.stub.device_code_requests();
    assert_eq!(asked.len(), 1);
    let scope = lab.stub.device_auths()[0].scope.clone();
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    for s in ["https://graph.microsoft.com/Presence.Read.All", "offline_access", "openid", "profile"] {
        assert!(scopes.contains(&s), "scope {scope:?} lacks {s}");
    }
    let polls = lab.stub.device_code_polls();
    assert!(polls.len() >= 2, "pending first, then the tokens: {} polls", polls.len());
    assert!(polls.iter().all(|p| p.body.contains(&format!("grant_type={}", common::graph::percent_encode(DEVICE_CODE_GRANT)))));
    let (last, pending) = polls.split_last().unwrap();
    assert!(pending.iter().all(|p| p.status == 400) && last.status == 200, "{:?}", polls.iter().map(|p| p.status).collect::<Vec<_>>());
    for w in polls.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(900), "polled {:?} apart", w[1].at - w[0].at);
    }
    assert!(asked[0].at <= polls[0].at);

    // The written token is a working monitor refresh token.
    let graph = drbridge::presence::graph::GraphClient::new(lab.stub.client_settings(TENANT, CLIENT_ID, SECRET, Duration::from_secs(5))).unwrap();
    let from_file = drbridge::presence::graph::SecretSource::File(lab.token_file.clone()).load().unwrap();
    graph.add_monitor(MONITOR, from_file).await;
    graph.monitor_token(MONITOR).await.expect("refresh grant with the written token");
}

/// Someone else (an administrator, with their own account) signs in with the code: exit 2, the
/// message names both accounts, and no token file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_login_refuses_another_account() {
    let lab = lab().await;
    let (status, stdout, stderr) = login_with(&lab, MONITOR, |stub, code| assert!(stub.approve_device_code(code, ADMIN))).await;
    assert_eq!(status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(&format!("signed in as {ADMIN}, not the monitor {MONITOR}")), "{stderr}");
    assert!(!lab.token_file.exists() && !lab.token_file.parent().unwrap().exists(), "nothing written");
    assert!(!stdout.contains("signed in;"), "{stdout}");
    let issued = lab.stub.monitor_refresh_token(ADMIN).expect("the stand-in issued a token to the admin");
    assert!(!stdout.contains(&issued) && !stderr.contains(&issued), "the refresh token was printed");
}

/// The user declines the sign-in: exit 2 naming authorization_declined, no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_login_declined_exits_2() {
    let lab = lab().await;
    let (status, stdout, stderr) = login_with(&lab, OTHER_MONITOR, |stub, code| assert!(stub.decline_device_code(code))).await;
    assert_eq!(status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("authorization_declined") && stderr.contains(OTHER_MONITOR), "{stderr}");
    assert!(!stderr.contains("AADSTS"), "the identity platform's free text stays out: {stderr}");
    assert!(!lab.other_token_file.exists());
}

/// Nobody signs in before the code expires: exit 2 naming expired_token, no file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_login_expired_code_exits_2() {
    let lab = lab().await;
    lab.stub.set_device_code_lifetime(2);
    let (status, stdout, stderr) = login_with(&lab, MONITOR, |_, _| {}).await;
    assert_eq!(status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("expired_token"), "{stderr}");
    assert!(!lab.token_file.exists());
}

/// A `--monitor` that is not in `[presence.teams_to_pbx]`: exit 2 naming the file and key, and
/// no request to the identity platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_login_unknown_monitor_exits_2() {
    let lab = lab().await;
    let unknown = "nobody@lab.drbridge.test";
    let run = Login::start(&lab.cfg.config_path(), unknown);
    let (status, stdout, stderr) = tokio::task::block_in_place(|| run.finish());
    assert_eq!(status.code(), Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let expected = format!("{}: presence.teams_to_pbx.monitors: no monitor {unknown}", lab.cfg.config_path().display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(lab.stub.requests().is_empty(), "{:?}", lab.stub.requests());
}
