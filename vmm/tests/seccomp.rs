//! The seccomp filters let through what vCPU and API threads do and stop
//! the rest: a blocked syscall ends the process with lithe's exit status
//! after reporting it. Each case runs in a forked child, so the filter and
//! the exit hit the child only.
#![cfg(not(loom))]

use vmm::seccomp::{Filter, Filters, BLOCKED_SYSCALL_EXIT};

const NOT_INSTALLED: i32 = 90;

/// Installs `filter` in a forked child, runs `body` there, and returns the
/// child's exit status.
fn in_child(filter: &Filter, body: impl FnOnce()) -> i32 {
    // SAFETY: the child only installs the filter (prctl + seccomp, no
    // allocation on success), makes raw syscalls and `_exit`s; the parent
    // waits for it.
    unsafe {
        match libc::fork() {
            -1 => panic!("fork failed"),
            0 => {
                if filter.apply().is_err() {
                    libc::_exit(NOT_INSTALLED);
                }
                body();
                libc::_exit(0);
            }
            pid => {
                let mut status = 0;
                assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                assert!(libc::WIFEXITED(status), "child did not exit normally: status {status:#x}");
                libc::WEXITSTATUS(status)
            }
        }
    }
}

fn syscall(nr: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) {
    // SAFETY: the calls below pass invalid fds or null pointers with zero
    // lengths: the kernel rejects them without touching our memory.
    unsafe { libc::syscall(nr, a, b, c) };
}

/// In the child: opening a file that exists fails with EACCES (the thread
/// goes on; glibc's malloc opens one file on its own and copes with that).
fn open_fails_with_eacces() {
    // SAFETY: a NUL-terminated path and plain flags; the kernel only reads the path.
    let fd = unsafe { libc::open(c"/proc/sys/vm/overcommit_memory".as_ptr(), libc::O_RDONLY) };
    let errno = std::io::Error::last_os_error().raw_os_error();
    if fd >= 0 || errno != Some(libc::EACCES) {
        // SAFETY: ends the forked child at once.
        unsafe { libc::_exit(1) };
    }
}

const KVM_RUN: libc::c_long = 0xae80;
const TCGETS: libc::c_long = 0x5401;

#[test]
fn vcpu_threads_may_run_kvm_and_write_but_nothing_else() {
    let f = Filters::new().expect("filters");
    // What a vCPU thread does: KVM_RUN, eventfd/console writes, futexes.
    let allowed = in_child(&f.vcpu, || {
        syscall(libc::SYS_ioctl, -1, KVM_RUN, 0);
        syscall(libc::SYS_write, -1, 0, 0);
        syscall(libc::SYS_futex, 0, libc::FUTEX_WAKE as libc::c_long, 0);
    });
    assert_eq!(allowed, 0);
    // Any other ioctl, even on the same fd.
    assert_eq!(in_child(&f.vcpu, || syscall(libc::SYS_ioctl, -1, TCGETS, 0)), BLOCKED_SYSCALL_EXIT);
    // Opening files fails; making sockets or starting programs ends lithe.
    assert_eq!(in_child(&f.vcpu, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.vcpu, || syscall(libc::SYS_socket, libc::AF_UNIX as _, 1, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.vcpu, || syscall(libc::SYS_execve, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
}

#[test]
fn api_threads_may_serve_sockets_but_not_open_files_or_touch_kvm() {
    let f = Filters::new().expect("filters");
    let allowed = in_child(&f.api, || {
        syscall(libc::SYS_accept4, -1, 0, 0);
        syscall(libc::SYS_recvfrom, -1, 0, 0);
        syscall(libc::SYS_sendto, -1, 0, 0);
        syscall(libc::SYS_shutdown, -1, 0, 0);
    });
    assert_eq!(allowed, 0);
    assert_eq!(in_child(&f.api, || syscall(libc::SYS_ioctl, -1, KVM_RUN, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.api, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.monitor, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.api, || syscall(libc::SYS_connect, -1, 0, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.api, || syscall(libc::SYS_execve, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
}

#[test]
fn device_threads_may_do_file_io_and_wait_but_not_ioctl_or_spawn() {
    let f = Filters::new().expect("filters");
    // What a virtio worker does: its event loop, eventfds, positional I/O, flushes.
    let allowed = in_child(&f.device, || {
        syscall(libc::SYS_epoll_create1, 0, 0, 0);
        syscall(libc::SYS_epoll_wait, -1, 0, 0);
        syscall(libc::SYS_read, -1, 0, 0);
        syscall(libc::SYS_pread64, -1, 0, 0);
        syscall(libc::SYS_pwrite64, -1, 0, 0);
        syscall(libc::SYS_fdatasync, -1, 0, 0);
    });
    assert_eq!(allowed, 0);
    assert_eq!(in_child(&f.device, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.device, || syscall(libc::SYS_ioctl, -1, KVM_RUN, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.device, || syscall(libc::SYS_socket, libc::AF_UNIX as _, 1, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.device, || syscall(libc::SYS_clone, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.device, || syscall(libc::SYS_execve, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
}

#[test]
fn the_vsock_thread_may_use_unix_sockets_only() {
    let f = Filters::new().expect("filters");
    let allowed = in_child(&f.vsock, || {
        syscall(libc::SYS_socket, libc::AF_UNIX as _, libc::SOCK_STREAM as _, 0);
        syscall(libc::SYS_accept4, -1, 0, 0);
        syscall(libc::SYS_connect, -1, 0, 0);
        syscall(libc::SYS_ioctl, -1, libc::FIONBIO as _, 0);
        syscall(libc::SYS_recvfrom, -1, 0, 0);
        syscall(libc::SYS_sendto, -1, 0, 0);
        syscall(libc::SYS_pread64, -1, 0, 0);
    });
    assert_eq!(allowed, 0);
    assert_eq!(in_child(&f.vsock, || syscall(libc::SYS_socket, libc::AF_INET as _, 1, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.vsock, || syscall(libc::SYS_ioctl, -1, KVM_RUN, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.vsock, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.vsock, || syscall(libc::SYS_execve, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
}

#[test]
fn the_net_thread_may_read_write_and_set_offloads_only() {
    let f = Filters::new().expect("filters");
    const TUNSETOFFLOAD: libc::c_long = 0x4004_54d0;
    const TUNSETIFF: libc::c_long = 0x4004_54ca;
    let allowed = in_child(&f.net, || {
        syscall(libc::SYS_epoll_wait, -1, 0, 0);
        syscall(libc::SYS_read, -1, 0, 0);
        syscall(libc::SYS_write, -1, 0, 0);
        syscall(libc::SYS_ioctl, -1, TUNSETOFFLOAD, 0);
    });
    assert_eq!(allowed, 0);
    // Not another TAP, not a socket, not KVM, not a file.
    assert_eq!(in_child(&f.net, || syscall(libc::SYS_ioctl, -1, TUNSETIFF, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.net, || syscall(libc::SYS_ioctl, -1, KVM_RUN, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.net, || syscall(libc::SYS_socket, libc::AF_INET as _, 1, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.net, open_fails_with_eacces), 0);
}

#[test]
fn the_fs_thread_may_talk_vhost_user_on_unix_sockets_only() {
    let f = Filters::new().expect("filters");
    let allowed = in_child(&f.fs, || {
        syscall(libc::SYS_socket, libc::AF_UNIX as _, libc::SOCK_STREAM as _, 0);
        syscall(libc::SYS_connect, -1, 0, 0);
        syscall(libc::SYS_sendmsg, -1, 0, 0);
        syscall(libc::SYS_recvmsg, -1, 0, 0);
        syscall(libc::SYS_recvfrom, -1, 0, 0);
        syscall(libc::SYS_setsockopt, -1, 0, 0);
        syscall(libc::SYS_shutdown, -1, 0, 0);
        syscall(libc::SYS_epoll_wait, -1, 0, 0);
    });
    assert_eq!(allowed, 0);
    // Not a network socket, no listening, no ioctl, no files, no processes.
    assert_eq!(in_child(&f.fs, || syscall(libc::SYS_socket, libc::AF_INET as _, 1, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.fs, || syscall(libc::SYS_accept4, -1, 0, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.fs, || syscall(libc::SYS_ioctl, -1, KVM_RUN, 0)), BLOCKED_SYSCALL_EXIT);
    assert_eq!(in_child(&f.fs, open_fails_with_eacces), 0);
    assert_eq!(in_child(&f.fs, || syscall(libc::SYS_execve, 0, 0, 0)), BLOCKED_SYSCALL_EXIT);
}

#[test]
fn every_thread_may_ask_whether_a_descriptor_is_open_and_no_more() {
    // What Rust's std does before closing an fd in a debug build.
    let f = Filters::new().expect("filters");
    for filter in [&f.vcpu, &f.api, &f.monitor, &f.device, &f.vsock, &f.net, &f.fs] {
        assert_eq!(in_child(filter, || syscall(libc::SYS_fcntl, 0, libc::F_GETFD as _, 0)), 0);
    }
    for filter in [&f.vcpu, &f.device, &f.net] {
        let dup = || syscall(libc::SYS_fcntl, 0, libc::F_DUPFD_CLOEXEC as _, 3);
        assert_eq!(in_child(filter, dup), BLOCKED_SYSCALL_EXIT);
    }
}
