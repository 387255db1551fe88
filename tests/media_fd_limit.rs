//! The media engine when the process runs out of file descriptors (EMFILE): an allocation that
//! cannot bind a new pair fails at once, after one failed bind, instead of trying every other
//! unbound pair of the range (each failing the same way); pairs bound before are still used.
//!
//! A test binary of its own: it lowers the process's open-file limit, which would starve any
//! test running beside it.

use drbridge::config::Trunk;
use drbridge::media::{MediaControl, MediaEngine, MediaEngineConfig, MediaError};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::time::Duration;

/// Open descriptors of this process now.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0)
}

#[test]
fn out_of_descriptors_fails_the_call_after_one_bind_and_bound_pairs_are_reused() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = MediaEngineConfig {
        // 100 pairs per side, far more than the descriptors left below
        teams_ports: 46000..=46199,
        pbx_ports: 46200..=46399,
        inactivity_timeout: Duration::from_secs(30),
        max_sessions: 1000,
        threads: 1,
        ..Default::default()
    };
    let (mut engine, _events) = MediaEngine::new(cfg, rt.handle().clone());

    let before = getrlimit(Resource::Nofile);
    // room for about ten sessions (a Teams pair binds one socket with rtcp-mux, a PBX pair two)
    let soft = open_fds() + 30;
    setrlimit(Resource::Nofile, Rlimit { current: Some(soft), maximum: before.maximum }).expect("lower the soft limit");

    let mut ok = Vec::new();
    let mut failed = 0;
    for _ in 0..60 {
        match engine.allocate(Trunk::Pbx, Trunk::Teams) {
            Ok(id) => ok.push(id),
            Err(MediaError::Exhausted(_)) => failed += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let stats = engine.stats();
    // free one: its pairs are bound, and the next allocation takes them without a bind
    let freed = ok.pop().expect("some sessions before the limit");
    engine.free(freed);
    let again = engine.allocate(Trunk::Pbx, Trunk::Teams);
    setrlimit(Resource::Nofile, before).expect("restore the limit");

    assert!(ok.len() >= 3, "sessions before the limit: {}", ok.len());
    assert!(failed > 0, "the limit was never reached");
    // one failed bind per failed allocation (two when the Teams pair bound and the PBX pair did
    // not), not one per unbound pair left in the range
    assert!(stats.bind_failures <= 2 * failed as u64, "{} failed binds for {failed} failed allocations", stats.bind_failures);
    assert!(again.is_ok(), "a freed bound pair is reused at the limit: {again:?}");
}
