//! A network namespace a test makes and removes (with every TAP in it), so
//! network tests reach only addresses they created: lithe can run in it
//! (`Launch::netns`), a thread can join it to open TAPs or connections.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

pub struct Netns(pub String);

impl Netns {
    /// A fresh namespace named after `test`; `None` (after
    /// `prereq::missing`) where `ip` or the privilege is missing.
    pub fn new(test: &str) -> Option<Netns> {
        if !Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success()) {
            prereq::missing(test, "ip(8) (Debian: iproute2)");
            return None;
        }
        let name = format!("lithe-{test}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success());
        if !ok {
            prereq::missing(test, "a network namespace (`ip netns add` needs CAP_SYS_ADMIN)");
            return None;
        }
        Some(Netns(name))
    }

    /// `ip netns exec NS ip ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").args(["netns", "exec", &self.0, "ip"]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Runs `f` on a thread that joined the namespace.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on an open namespace fd, for this thread only.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
            f()
        })
        .join()
        .unwrap()
    }

    /// A TCP connection to `addr` from inside the namespace.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> TcpStream {
        self.within(move || TcpStream::connect_timeout(&addr, timeout).unwrap())
    }

    /// A TAP named `name` in the namespace, opened as Kata opens the TAPs it
    /// hands the VMM (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`); it lasts while
    /// an fd of it is open.
    pub fn open_tap(&self, name: &str) -> OwnedFd {
        let name = name.to_string();
        self.within(move || {
            #[repr(C)]
            struct IfReq {
                name: [u8; 16],
                flags: i16,
                _pad: [u8; 22],
            }
            let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").unwrap();
            let mut req = IfReq { name: [0; 16], flags: 0x0002 | 0x1000 | 0x4000, _pad: [0; 22] };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads and writes the `IfReq` we pass, which lives across the call.
            let r = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, &mut req) };
            assert_eq!(r, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
            OwnedFd::from(tun)
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Sends one HTTP request to the API socket with `fds` in an `SCM_RIGHTS`
/// message, as Kata's clh driver sends `vm.add-net`; the status.
pub fn put_with_fds(socket: &std::path::Path, endpoint: &str, body: &str, fds: &[&OwnedFd]) -> u16 {
    use std::io::Read;
    let req = format!(
        "PUT /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut iov = libc::iovec { iov_base: req.as_ptr() as *mut libc::c_void, iov_len: req.len() };
    // Room for up to 8 fds, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE((raw.len() * 4) as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` has a control buffer of `space` bytes, enough for one
    // header and `raw`; the macros point inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast::<i32>(), raw.len());
    }
    // SAFETY: `msg` and everything it points to are valid for the call.
    let sent = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) };
    assert_eq!(sent, req.len() as isize, "sendmsg: {}", std::io::Error::last_os_error());
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
