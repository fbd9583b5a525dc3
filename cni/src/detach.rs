//! Kernel work that a plugin hands off instead of waiting for it.
//!
//! Some requests finish long after their effect is visible (deleting a
//! link; closing a netfilter socket after a transaction that removed
//! something, which waits for an RCU grace period). In-process a thread of
//! its own does the waiting. That is no use to a plugin executable: its
//! runtime waits for the whole process, and a process ends only when its
//! last thread has returned from the kernel. So an executable forks a child
//! to hold the request or the socket instead; the runtime waits for the
//! plugin only, and the child, once orphaned, is reaped by init (or by the
//! runtime's subreaper, if it has one).
//!
//! The children run nothing but system calls on memory prepared before the
//! fork: the plugin is multithreaded (netlink runtimes, namespace threads),
//! and a child of such a process may not take locks or allocate.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

static EXECUTABLE: AtomicBool = AtomicBool::new(false);

/// Marks this process as a plugin executable, which ends right after its
/// command: from then on, waits are handed to child processes.
pub fn set_executable() {
    EXECUTABLE.store(true, Ordering::Relaxed);
}

/// Whether this process is a plugin executable (see [`set_executable`]).
pub fn is_executable() -> bool {
    EXECUTABLE.load(Ordering::Relaxed)
}

/// In a forked child: closes every descriptor but `keep` (ascending), so
/// that the child holds none of the runtime's pipes open.
fn close_all_but(keep: [RawFd; 2]) {
    let mut from: libc::c_uint = 0;
    for k in keep {
        let Ok(k) = libc::c_uint::try_from(k) else {
            continue;
        };
        if k > from {
            // SAFETY: close_range(2) only closes descriptors; this child has
            // no other thread using them. Errors leave descriptors open,
            // which costs the runtime a wait at worst.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = from.max(k.saturating_add(1));
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) };
}

/// Sends `request` on the socket `fd` from a child process, which ends when
/// the kernel has handled it; the answer arrives on the socket as usual.
/// Returns false (nothing sent) when no child could be made.
pub(crate) fn send_from_child(fd: RawFd, request: &[u8]) -> bool {
    // SAFETY: the child calls only async-signal-safe system calls on `fd`
    // and on `request`, both valid in it (fork copies the memory and the
    // descriptor table), then _exit, which runs no destructors or handlers.
    match unsafe { libc::fork() } {
        0 => {
            close_all_but([fd, fd]);
            // SAFETY: `request` is valid for its length; the result has no
            // one to go to (the parent reads the kernel's answer).
            unsafe {
                libc::send(fd, request.as_ptr().cast(), request.len(), 0);
                libc::_exit(0)
            }
        }
        -1 => false,
        _ => true,
    }
}

/// Closes `owner`'s descriptor in a child process once this one has ended,
/// so that the close's wait is the child's: this process's own close, no
/// longer the last reference, returns at once. Hands `owner` back when no
/// child could be made.
pub(crate) fn close_after_exit<T: AsRawFd>(owner: T) -> Result<(), T> {
    let fd = owner.as_raw_fd();
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(owner);
    }
    let [read_end, write_end] = pipe;
    // SAFETY: as in send_from_child: the child makes system calls only, on
    // descriptors it inherited, then _exit.
    match unsafe { libc::fork() } {
        0 => {
            close_all_but(if fd < read_end {
                [fd, read_end]
            } else {
                [read_end, fd]
            });
            let mut byte = 0u8;
            // The parent never writes: the read returns at its end, when
            // the last copy of the write end (the parent's; it is
            // close-on-exec, so no program it runs holds one) closes.
            loop {
                // SAFETY: a one-byte read into a local.
                let n = unsafe { libc::read(read_end, (&raw mut byte).cast(), 1) };
                if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            // SAFETY: closes the inherited descriptors, then ends.
            unsafe {
                libc::close(fd);
                libc::_exit(0)
            }
        }
        -1 => {
            // SAFETY: both descriptors came from pipe2 above and are ours.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(owner)
        }
        _ => {
            // The write end stays open until this process ends.
            // SAFETY: the read end came from pipe2 above and is ours.
            unsafe { libc::close(read_end) };
            drop(owner);
            Ok(())
        }
    }
}
