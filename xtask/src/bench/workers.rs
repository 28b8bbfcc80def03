//! Load generators the benchmark runs as child processes (this binary, `bench --*-worker`),
//! because a socket belongs to the cgroup and network namespace of the process that makes it.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Accepts and closes connections on `addr` until killed.
pub fn accept(addr: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse().context("accept worker address")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    println!("ready");
    for stream in listener.incoming().flatten() {
        // Reset rather than close: a closing server would hold TIME_WAIT sockets whose
        // 4-tuples the clients reuse, and their SYNs would then wait out a retransmit.
        let _ = reset_on_close(&stream);
    }
    Ok(())
}

/// Opens and closes TCP connections to `addr` for `secs` seconds, one at a time; prints
/// `connections N failures M`.
pub fn connect(args: &[String]) -> Result<()> {
    let [addr, secs] = args else {
        anyhow::bail!("connect worker takes ADDR SECS");
    };
    let addr: SocketAddr = addr.parse().context("connect worker address")?;
    let secs: f64 = secs.parse().context("connect worker seconds")?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut ok, mut failed) = (0u64, 0u64);
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => {
                ok += 1;
                reset_on_close(&stream)?;
            }
            Err(_) => failed += 1,
        }
    }
    println!("connections {ok} failures {failed}");
    Ok(())
}

/// SO_LINGER 0: close sends a reset and leaves no TIME_WAIT socket behind, so thousands of
/// connections a second do not run out of local ports.
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
