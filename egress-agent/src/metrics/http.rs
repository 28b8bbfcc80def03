//! A minimal HTTP/1.1 server for the metrics port: `GET /metrics`, `/healthz` (the agent
//! answers) and `/readyz` (enforcement is in place). One request per connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use crate::control::handler::Call;

/// A client gets this long to send its request, and the agent to answer a scrape.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads longer than this are refused.
const MAX_HEAD: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("binding the metrics endpoint {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Serves until the task is dropped. `ready` tells `/readyz` whether enforcement is in place.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Call>, ready: Arc<AtomicBool>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let calls = calls.clone();
                let ready = Arc::clone(&ready);
                tokio::spawn(async move {
                    if let Err(err) = serve_one(stream, &calls, &ready).await {
                        tracing::debug!(%err, "metrics client");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a metrics client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_one(
    mut stream: TcpStream,
    calls: &mpsc::Sender<Call>,
    ready: &AtomicBool,
) -> std::io::Result<()> {
    let (read, mut write) = stream.split();
    let mut reader = BufReader::new(read.take(MAX_HEAD));
    let mut request_line = String::new();
    let head = async {
        reader.read_line(&mut request_line).await?;
        // The rest of the head is read and ignored: no header changes the answer.
        let mut header = String::new();
        loop {
            header.clear();
            if reader.read_line(&mut header).await? == 0 || header.trim().is_empty() {
                return Ok::<_, std::io::Error>(());
            }
        }
    };
    if tokio::time::timeout(TIMEOUT, head).await.is_err() {
        return Ok(());
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match scrape(calls).await {
            Some(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            None => ("503 Service Unavailable", "text/plain", "busy\n".into()),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET", "/readyz") if ready.load(Ordering::Acquire) => {
            ("200 OK", "text/plain", "ready\n".into())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "enforcement is not in place yet\n".into(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await?;
    write.write_all(body.as_bytes()).await?;
    write.shutdown().await
}

async fn scrape(calls: &mpsc::Sender<Call>) -> Option<String> {
    let (reply, answer) = oneshot::channel();
    calls.send(Call::Metrics { reply }).await.ok()?;
    tokio::time::timeout(TIMEOUT, answer).await.ok()?.ok()
}
