//! A minimal keep-alive HTTP/1.1 load generator for the benchmarks (the simulator's and
//! wxtoken's): N connections, each sending its next request as soon as the previous answer is read,
//! every latency recorded. Written by hand because the benches must run on a fresh machine without
//! wrk, and a general HTTP client spends more CPU per request than the servers being measured —
//! on 2 cores the generator's own cost is part of every figure.
//!
//! It understands exactly what the servers send: a status line, headers with `Content-Length`, a
//! body. No chunked encoding, no pipelining.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes request `i` of connection `c` into the buffer.
pub type MakeRequest = Arc<dyn Fn(u64, u64, &mut Vec<u8>) + Send + Sync>;
/// Whether an answer (status, body) counts as a success.
pub type Check = Arc<dyn Fn(u16, &[u8]) -> bool + Send + Sync>;

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub bad: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl LoadReport {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// A GET request with optional extra header lines (each ending in `\r\n`).
pub fn get(path: &str, headers: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n").as_bytes(),
    );
}

/// A POST request with a JSON body.
pub fn post(path: &str, headers: &str, body: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(
        format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body.as_bytes());
}

/// Sends one request and reads the whole answer: (status, the body's range in `buf`).
pub async fn roundtrip(
    stream: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, Range<usize>)> {
    stream.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad_answer())?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad_answer)?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + 4 + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, end + 4..end + 4 + len));
    }
}

fn bad_answer() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP/1.1 answer")
}

/// One request on a fresh connection: (status, body).
pub async fn call(addr: SocketAddr, req: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    let (status, body) = roundtrip(&mut stream, req, &mut buf).await?;
    Ok((status, buf[body].to_vec()))
}

/// Drives `conns` keep-alive connections for `duration`; `make(conn, i, out)` writes each request
/// and `check` judges each answer. Panics if a connection fails (a benchmark with a broken
/// connection measures nothing).
pub async fn drive(
    addr: SocketAddr,
    conns: u64,
    duration: Duration,
    make: MakeRequest,
    check: Check,
) -> LoadReport {
    drive_at(addr, conns, duration, None, make, check).await
}

/// Like [`drive`], but offering `rate` requests per second in all (each connection sends its
/// next request on its own schedule, the connections spread over the period) instead of as many
/// as the server answers: the latency of a server that is not saturated. A latency counts from
/// when its request went out; a request whose slot passed while the previous answer was awaited
/// goes out at once.
pub async fn drive_paced(
    addr: SocketAddr,
    conns: u64,
    rate: f64,
    duration: Duration,
    make: MakeRequest,
    check: Check,
) -> LoadReport {
    let period = Duration::from_secs_f64(conns as f64 / rate);
    drive_at(addr, conns, duration, Some(period), make, check).await
}

async fn drive_at(
    addr: SocketAddr,
    conns: u64,
    duration: Duration,
    period: Option<Duration>,
    make: MakeRequest,
    check: Check,
) -> LoadReport {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (make, check) = (make.clone(), check.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).ok();
            let mut buf = Vec::with_capacity(4096);
            let mut req = Vec::with_capacity(1024);
            let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut i = 0;
            // This connection's first slot, spread over the period among the connections.
            let first = period.map(|p| started + p.mul_f64(c as f64 / conns as f64));
            loop {
                if let (Some(first), Some(period)) = (first, period) {
                    let slot = first + period.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
                    tokio::time::sleep_until(slot.into()).await;
                }
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                make(c, i, &mut req);
                let (status, body) = roundtrip(&mut stream, &req, &mut buf)
                    .await
                    .unwrap_or_else(|e| panic!("connection {c} failed: {e}"));
                latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                if check(status, &buf[body]) {
                    ok += 1;
                } else {
                    bad += 1;
                }
                i += 1;
            }
            (ok, bad, latencies)
        }));
    }
    let (mut ok, mut bad, mut all) = (0, 0, Vec::new());
    for t in tasks {
        let (o, b, l) = t.await.expect("load task");
        ok += o;
        bad += b;
        all.extend(l);
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .map_or(Duration::ZERO, |&us| Duration::from_micros(u64::from(us)))
    };
    LoadReport {
        ok,
        bad,
        elapsed,
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}
