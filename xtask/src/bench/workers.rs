//! Short-connection load generators the benchmark runs as child processes (this binary,
//! `bench --*-worker`), because a socket belongs to the cgroup and network namespace of the
//! process that makes it.
//!
//! One connection: the client connects, the server accepts and closes at once (FIN), the
//! client reads that end of file and closes with SO_LINGER 0 (RST). So neither side keeps a
//! TIME_WAIT socket, the server never sends a reset into a 4-tuple the client may already be
//! reusing, and the client only counts a connection the server has really accepted.

use std::{
    io::{self, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Accept queue length: a full queue drops SYNs, which then wait out a 1 s retransmit.
const BACKLOG: i32 = 4096;
/// Threads accepting on the one listener.
const ACCEPT_THREADS: usize = 2;

/// Accepts connections on `addr` and closes each at once, until killed.
pub fn accept(addr: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse().context("accept worker address")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // Listening again only changes the backlog of a listening socket.
    // SAFETY: listen on a socket we own.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("listen backlog");
    }
    println!("ready");
    thread::scope(|scope| {
        for _ in 0..ACCEPT_THREADS {
            scope.spawn(|| {
                // Dropping the accepted stream closes it (FIN); the client resets after.
                for stream in listener.incoming() {
                    drop(stream);
                }
            });
        }
    });
    Ok(())
}

/// Opens short connections to `addr` from `threads` threads for `secs` seconds; prints
/// `connections N failures M`.
pub fn connect(args: &[String]) -> Result<()> {
    let [addr, secs, threads] = args else {
        bail!("connect worker takes ADDR SECS THREADS");
    };
    let addr: SocketAddr = addr.parse().context("connect worker address")?;
    let secs: f64 = secs.parse().context("connect worker seconds")?;
    let threads: usize = threads.parse().context("connect worker threads")?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let results: Vec<Result<(u64, u64)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| scope.spawn(move || connect_until(addr, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a connect thread panicked"))
            })
            .collect()
    });
    let (mut ok, mut failed) = (0, 0);
    for result in results {
        let (o, f) = result?;
        ok += o;
        failed += f;
    }
    println!("connections {ok} failures {failed}");
    Ok(())
}

fn connect_until(addr: SocketAddr, deadline: Instant) -> Result<(u64, u64)> {
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut buf = [0u8; 16];
    while Instant::now() < deadline {
        match one_connection(addr, &mut buf) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((ok, failed))
}

/// Connects, waits for the server's close, and resets.
fn one_connection(addr: SocketAddr, buf: &mut [u8]) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let result = loop {
        match stream.read(buf) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(err) => break Err(err.into()),
        }
    };
    reset_on_close(&stream)?;
    result
}

/// SO_LINGER 0: close sends a reset and leaves no TIME_WAIT socket behind.
fn reset_on_close(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            u32::try_from(size_of::<libc::linger>()).unwrap_or(8),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_LINGER");
    }
    Ok(())
}

/// Parses the worker's summary line.
pub fn parse_connect_output(text: &str) -> Option<(u64, u64)> {
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("connections"), Some(ok), Some("failures"), Some(failed)) => {
            Some((ok.parse().ok()?, failed.parse().ok()?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        assert_eq!(
            parse_connect_output("connections 12 failures 3\n"),
            Some((12, 3))
        );
        assert_eq!(parse_connect_output("garbage"), None);
    }
}
