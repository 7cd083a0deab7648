//! Starting a worker process: fork, then exec at once.
//!
//! The master runs a tokio runtime, so it must never fork and keep running
//! Rust code in the child. The child here performs only async-signal-safe
//! system calls (dup, dup2, prctl, sigprocmask, getppid, execv, _exit) on
//! values prepared before the fork, then becomes a fresh `sockhive worker`
//! process with its sockets at fixed descriptor numbers.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::libc;
use nix::unistd::{fork, ForkResult, Pid};
use sockhive_shared::config::LogFormat;
use sockhive_shared::handoff::WORKER_HANDOFF_FD;
use sockhive_shared::ipc::{WORKER_IPC_FD, WORKER_LISTENER_FD};

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The path of our own executable is unknown.
    #[error("cannot find the sockhive executable: {0}")]
    Executable(std::io::Error),
    /// `fork` failed (process limit, memory).
    #[error("fork failed: {0}")]
    Fork(nix::Error),
}

/// The exec arguments of a worker, prepared before the fork (the child may not allocate).
pub struct WorkerCommand {
    program: CString,
    args: Vec<CString>,
}

impl WorkerCommand {
    /// `sockhive worker --slot N --log-format F`, using this very executable.
    pub fn new(slot: u16, log_format: LogFormat) -> Result<WorkerCommand, SpawnError> {
        let exe = std::env::current_exe().map_err(SpawnError::Executable)?;
        let program = CString::new(exe.into_os_string().into_encoded_bytes())
            .map_err(|e| SpawnError::Executable(std::io::Error::other(e)))?;
        let log_format = match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let args = [
            "sockhive-worker",
            "worker",
            "--slot",
            &slot.to_string(),
            "--log-format",
            log_format,
        ]
        .iter()
        .map(|a| CString::new(*a).expect("no NUL in fixed arguments"))
        .collect();
        Ok(WorkerCommand { program, args })
    }

    /// Forks and execs the worker with `listener` at fd 3, `ipc` at fd 4 and
    /// `handoff` (its end of the connection hand-off pair) at fd 5.
    ///
    /// Must be called from the thread that lives as long as the master (its
    /// main thread): Linux delivers the parent-death signal when the *thread*
    /// that forked exits, not the process.
    pub fn spawn(
        &self,
        listener: BorrowedFd<'_>,
        ipc: BorrowedFd<'_>,
        handoff: BorrowedFd<'_>,
    ) -> Result<Pid, SpawnError> {
        let mut argv: Vec<*const libc::c_char> = self.args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let master = std::process::id() as libc::pid_t;
        let fds = [listener.as_raw_fd(), ipc.as_raw_fd(), handoff.as_raw_fd()];
        // SAFETY: in the child only async-signal-safe calls run, on values
        // computed above (no allocation, no locks, no Rust runtime state), and
        // the child either execs or calls _exit. The parent branch is ordinary.
        match unsafe { fork() }.map_err(SpawnError::Fork)? {
            ForkResult::Parent { child } => Ok(child),
            ForkResult::Child => unsafe {
                exec_worker(self.program.as_ptr(), argv.as_ptr(), fds, master)
            },
        }
    }
}

/// The child side of [`WorkerCommand::spawn`]; never returns.
///
/// # Safety
/// Only to be called in a freshly forked child; see the module comment.
unsafe fn exec_worker(
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    fds: [i32; 3],
    master: libc::pid_t,
) -> ! {
    // Move every descriptor above the target numbers first, so that placing
    // one at fd 3 cannot clobber another that happened to sit there.
    let targets = [WORKER_LISTENER_FD, WORKER_IPC_FD, WORKER_HANDOFF_FD];
    let mut high = [-1; 3];
    for (index, fd) in fds.iter().enumerate() {
        high[index] = libc::fcntl(*fd, libc::F_DUPFD, 10);
        if high[index] < 0 {
            libc::_exit(126);
        }
    }
    for (index, target) in targets.iter().enumerate() {
        if libc::dup2(high[index], *target) < 0 {
            libc::_exit(126);
        }
        // The duplicates above fd 10 have no CLOEXEC flag; close them so the
        // worker holds exactly one descriptor per socket.
        libc::close(high[index]);
    }
    // No orphans: if the master dies, even by SIGKILL, the kernel kills us.
    libc::prctl(
        libc::PR_SET_PDEATHSIG,
        libc::SIGKILL as libc::c_ulong,
        0,
        0,
        0,
    );
    // The master may have died between fork and prctl; then nobody will.
    if libc::getppid() != master {
        libc::_exit(1);
    }
    // exec keeps the signal mask; start the worker with nothing blocked.
    let mut none: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut none);
    libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    libc::execv(program, argv);
    libc::_exit(127);
}
