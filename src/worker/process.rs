//! One task process: spawned in its own process group, its stdout and stderr
//! read concurrently through capped captures, its whole group killed when the
//! task times out, is cancelled or the worker shuts down.
//!
//! This module owns every `kill(2)` the worker sends. It knows nothing of AMQP,
//! of the task message, or of what the process is (script or hook).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::capture::{Captured, read_capped};
use super::live::Live;
use super::scrub::Scrubber;
use crate::protocol::OutputStream;

/// Between SIGTERM and SIGKILL when a task times out or the worker shuts down.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the pipes may stay open after the process ended (a background
/// grandchild may hold them); then reading stops and what was read is kept.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// Spawn retries on ETXTBSY (a freshly written script whose write descriptor a
/// concurrent fork in another thread briefly inherited).
const SPAWN_RETRIES: u32 = 10;

/// What to run.
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment (the worker's own environment minus `BORA_*` is inherited).
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
    /// Written to stdin, then stdin is closed. `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Cap of each captured stream.
    pub stdout_cap: usize,
    pub stderr_cap: usize,
    /// The secrets scrubbed from stdout as it is read (none for a hook,
    /// whose stdout is its JSON answer, scrubbed once parsed).
    pub stdout_scrub: Scrubber,
    /// The secrets scrubbed from stderr as it is read.
    pub stderr_scrub: Scrubber,
    pub timeout: Duration,
    /// Where the output goes as it is read, too (live output).
    pub live: Option<Arc<Live>>,
}

/// Why the worker ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Timeout,
    Cancel,
    Shutdown,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited(i32),
    /// Killed by a signal the worker did not send.
    Signalled(i32),
    /// The worker killed it.
    Stopped(Stop),
}

pub struct Outcome {
    pub ending: Ending,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// The tokens that may end a process early.
#[derive(Clone)]
pub struct Stoppers {
    /// Fired by a cancel for this task: the group is killed at once.
    pub cancel: CancellationToken,
    /// Fired when the shutdown grace is over: SIGTERM, then SIGKILL.
    pub kill_all: CancellationToken,
}

/// Runs `spec` to its end.
///
/// # Errors
/// The process could not be started (missing interpreter, not executable, ...).
pub async fn run(spec: Spec, stoppers: &Stoppers) -> std::io::Result<Outcome> {
    let mut child = spawn(&spec).await?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| std::io::Error::other("spawned process has no pid"))?;

    let stop_reading = CancellationToken::new();
    let out = child.stdout.take().map(|s| {
        let tap = spec.live.clone().map(|l| (l, OutputStream::Stdout));
        tokio::spawn(read_capped(
            s,
            spec.stdout_cap,
            spec.stdout_scrub.clone(),
            stop_reading.clone(),
            tap,
        ))
    });
    let err = child.stderr.take().map(|s| {
        let tap = spec.live.clone().map(|l| (l, OutputStream::Stderr));
        tokio::spawn(read_capped(
            s,
            spec.stderr_cap,
            spec.stderr_scrub.clone(),
            stop_reading.clone(),
            tap,
        ))
    });
    if let (Some(mut stdin), Some(data)) = (child.stdin.take(), spec.stdin) {
        // A process that does not read its stdin gets EPIPE here: not an error.
        tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
    }

    let ended = tokio::select! {
        status = child.wait() => Ok(status?),
        () = tokio::time::sleep(spec.timeout) => Err(Stop::Timeout),
        () = stoppers.cancel.cancelled() => Err(Stop::Cancel),
        () = stoppers.kill_all.cancelled() => Err(Stop::Shutdown),
    };
    let ending = match ended {
        // Leftover members of the group (daemons a script started) are left
        // alone, as heat-config does; only the pipes stop being read.
        Ok(status) => ending_of(status),
        Err(why) => {
            kill_group(&mut child, pgid, why, stoppers).await;
            Ending::Stopped(why)
        }
    };

    let collect = async {
        let stdout = join_capture(out).await;
        let stderr = join_capture(err).await;
        (stdout, stderr)
    };
    tokio::pin!(collect);
    let (stdout, stderr) = match tokio::time::timeout(PIPE_GRACE, &mut collect).await {
        Ok(both) => both,
        Err(_) => {
            stop_reading.cancel();
            collect.await
        }
    };
    Ok(Outcome {
        ending,
        stdout,
        stderr,
    })
}

async fn spawn(spec: &Spec) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.cwd)
            .stdin(if spec.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The worker's own settings (broker credentials) are not the task's business.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BORA_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        die_with_the_worker(&mut cmd);
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < SPAWN_RETRIES => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Has the kernel SIGKILL the task's leader when the worker dies (even by
/// SIGKILL): a crashed worker's attempt is run again elsewhere, so it must not
/// go on running unseen beside the new one. Processes the leader started in
/// the background get no such signal (they are not its children).
///
/// The signal follows the thread that forks; tasks are spawned from the
/// runtime's worker threads, which live as long as the worker.
#[cfg(target_os = "linux")]
fn die_with_the_worker(cmd: &mut Command) {
    let worker = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2) and getppid(2), which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The worker died between fork and prctl: do not start at all.
            if libc::getppid() as u32 != worker {
                return Err(std::io::Error::other("the worker exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_the_worker(_cmd: &mut Command) {}

async fn join_capture(task: Option<tokio::task::JoinHandle<Captured>>) -> Captured {
    match task {
        Some(t) => t.await.unwrap_or_else(|_| Captured::of(b"", 0)),
        None => Captured::of(b"", 0),
    }
}

/// Kills the whole group: at once with SIGKILL on a cancel (the slot must free
/// now), else SIGTERM and SIGKILL after [`TERM_GRACE`]. Returns once the leader
/// is reaped.
async fn kill_group(child: &mut Child, pgid: i32, why: Stop, stoppers: &Stoppers) {
    if why != Stop::Cancel {
        signal_group(pgid, libc::SIGTERM);
        tokio::select! {
            _ = tokio::time::sleep(TERM_GRACE) => {},
            _ = child.wait() => {},
            // A cancel during the grace still means "now".
            () = stoppers.cancel.cancelled() => {},
        }
    }
    // SIGKILL also after a graceful leader exit: grandchildren may ignore SIGTERM.
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait().await;
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no
    // memory of ours. ESRCH (group already gone) is fine.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn ending_of(status: ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(sig)) => Ending::Signalled(sig),
        (None, None) => Ending::Exited(-1),
    }
}

/// A signal's name for messages (`SIGKILL`), or its number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("signal {sig} ({name})")
}
