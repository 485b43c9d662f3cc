//! A real pseudo-terminal for end-to-end tests: `kiln` runs with the pty's slave as its
//! controlling terminal and stdio, the test types into the master and reads what kiln shows.

#![allow(dead_code)]

use std::io::Write as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A pty pair; everything written to the master side by the program is collected.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    output: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl Pty {
    pub fn open() -> Pty {
        let mut master = -1;
        let mut slave = -1;
        let size = libc::winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty fills two fds
        let result = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(result, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fds from openpty, owned here
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [master.as_raw_fd(), slave.as_raw_fd()] {
            // SAFETY: sets close-on-exec on an fd we own
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        let output = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let master = master.try_clone().expect("dup master");
            let output = output.clone();
            let stop = stop.clone();
            std::thread::spawn(move || read_master(master, output, stop))
        };
        Pty {
            master,
            slave,
            output,
            stop,
            reader: Some(reader),
        }
    }

    /// Spawns `command` in a new session whose controlling terminal is this pty, with the pty
    /// as stdin, stdout and stderr.
    pub fn spawn(&self, command: &mut Command) -> Child {
        let stdio = || Stdio::from(self.slave.try_clone().expect("dup slave"));
        command.stdin(stdio()).stdout(stdio()).stderr(stdio());
        // SAFETY: only async-signal-safe calls between fork and exec
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().expect("spawning under the pty")
    }

    /// Types `bytes` (as a user at the terminal would).
    pub fn type_text(&self, bytes: &[u8]) {
        let mut master = std::fs::File::from(self.master.try_clone().expect("dup master"));
        master.write_all(bytes).expect("writing to the pty");
    }

    /// Everything shown so far.
    pub fn output(&self) -> String {
        let bytes = self.output.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until the output contains `text`; panics with the output after `timeout`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} did not appear within {timeout:?}; the terminal shows:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The terminal's current settings (the slave's, as the program left them).
    pub fn termios(&self) -> libc::termios {
        // SAFETY: tcgetattr fills a termios for a valid fd
        unsafe {
            let mut termios: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(self.slave.as_raw_fd(), &mut termios), 0);
            termios
        }
    }

    pub fn echo_is_on(&self) -> bool {
        self.termios().c_lflag & libc::ECHO != 0
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn read_master(master: OwnedFd, output: Arc<Mutex<Vec<u8>>>, stop: Arc<AtomicBool>) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let mut poll = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one fd we own, then read into a local buffer
        let ready = unsafe { libc::poll(&mut poll, 1, 50) };
        if ready <= 0 || poll.revents & libc::POLLIN == 0 {
            if poll.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            continue;
        }
        let read =
            unsafe { libc::read(master.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
        if read > 0 {
            output
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buffer[..read as usize]);
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits for `child` at most `timeout`; kills it (by pid) and panics when it takes longer.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for kiln") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
