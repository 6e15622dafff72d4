//! Server processes: children that die with this process, run as another user, waited for until
//! ready, and (for servers a whole test binary shares) stopped when the process exits.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::{Error, append_log, tail};

/// How many log lines a start-up failure quotes.
pub(crate) const LOG_LINES: usize = 30;

/// A user to run a child as: PostgreSQL refuses to run as root.
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    /// The user id.
    pub uid: libc::uid_t,
    /// The primary group id.
    pub gid: libc::gid_t,
}

/// Makes `cmd`'s child run as `run_as` (when given) and get SIGKILL when the thread that spawned
/// it dies, so it does not outlive this process even when that is killed. Changing credentials
/// clears the death signal, so it is set after `setuid`.
pub fn die_with_parent(cmd: &mut Command, run_as: Option<RunAs>) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe functions
    // (setgroups, setgid, setuid, prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if let Some(user) = run_as
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0)
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would send the signal.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Starts a server: stdin closed, stdout and stderr appended to `log`, run as `run_as`, dying with
/// this process.
pub(crate) fn spawn_server(
    mut cmd: Command,
    log: &Path,
    run_as: Option<RunAs>,
) -> Result<Child, Error> {
    let program = Path::new(cmd.get_program()).display().to_string();
    cmd.stdin(Stdio::null())
        .stdout(append_log(log)?)
        .stderr(append_log(log)?);
    die_with_parent(&mut cmd, run_as);
    spawn_long_lived(cmd).map_err(|e| Error::new(format!("cannot run {program}: {e}")))
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns a child that must live longer than the calling thread. The death signal fires when the
/// *thread* that forked the child exits (every test runs on a thread that exits when the test
/// ends; a runtime may retire its blocking threads), so servers are forked by one thread that
/// never exits.
fn spawn_long_lived(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the server-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("the server-spawner thread is gone");
    reply_rx.recv().expect("the server-spawner thread is gone")
}

/// Polls `ready` every `interval` until it holds. Fails, quoting the tail of `log`, when `child`
/// exits first or `timeout` passes (then the child is killed).
pub(crate) fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
    interval: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::new(format!(
                "{what} exited with {status} during start-up; its log ({}) ends with:\n{}",
                log.display(),
                tail(log, LOG_LINES)
            )));
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::new(format!(
                "{what} was not ready within {timeout:?}; its log ({}) ends with:\n{}",
                log.display(),
                tail(log, LOG_LINES)
            )));
        }
        std::thread::sleep(interval);
    }
}

/// Sends `sig` to `child` unless it has exited: once reaped, its pid may be another process's.
pub(crate) fn signal(child: &mut Child, sig: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: a plain syscall on the pid of our child, which has not been reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    }
}

/// Waits up to `timeout` for `child` to exit; true if it did.
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return false,
        }
    }
}

static AT_EXIT: Mutex<Vec<Box<dyn Send>>> = Mutex::new(Vec::new());

/// Keeps `server` (a [`super::Cluster`] or [`super::Emulator`]) until this process exits, then
/// drops it, which stops the server and removes its directory. For servers a whole test binary
/// shares: statics are never dropped.
pub fn keep_until_exit(server: impl Send + 'static) {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        let rc = unsafe { libc::atexit(drop_kept_servers) };
        assert_eq!(rc, 0, "atexit failed");
    });
    AT_EXIT
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Box::new(server));
}

extern "C" fn drop_kept_servers() {
    let servers = std::mem::take(&mut *AT_EXIT.lock().unwrap_or_else(|e| e.into_inner()));
    drop(servers);
}
