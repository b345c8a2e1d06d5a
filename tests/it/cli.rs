//! The CLI around the server: commands that print end quietly when their reader
//! goes away (`berth check-config | head -1`).

use std::process::Command;
use std::process::Stdio;

use crate::berth_binary;

#[test]
fn check_config_into_a_closed_pipe_exits_without_a_panic() {
    let mut child = Command::new(berth_binary())
        .arg("check-config")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth check-config");
    // The reader is gone before the first line is written, as `| head -1` is after
    // its line: every write fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let code = out.status.code();
    assert!(code == Some(0) || code == Some(141), "exit {:?}: {stderr}", out.status);
}
