//! The gateway's upstream client: HTTP/1.1 connections of hyper's (`client::conn::http1`) over
//! rustls (hyper-rustls' connector), pooled here and driven by the task of the call that uses
//! them.
//!
//! Why not a ready-made client: reqwest (which the rest of wxtoken uses for WeChat's token
//! endpoints) or hyper-util's pooled client run every connection as a task of its own, so each
//! forwarded call hands its request to another task and waits for that task to hand back the
//! answer and then each piece of its body, with a wake-up (often of the other core's thread)
//! for each hand-over; and they parse a URL, look up a pool by host and copy header maps per
//! call. On the gateway that was most of its own cost (docs/BENCHMARKS.md, the gateway). Here the
//! calling task polls the connection itself while it waits for the answer and reads it; an idle
//! connection waits in the pool, not polled, until a call takes it. What those clients gave is
//! kept: connect timeout, `TCP_NODELAY`, TLS with WebPKI roots, an idle timeout, a total bound on
//! the call (the body included), no proxy from the environment, no redirect followed, and errors
//! that never carry the URL (it holds the token).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::uri::{Authority, PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a forwarded call sends: a kept body (sent again on a retry) or the caller's, streamed
/// within a limit.
pub(super) type OutBody = Either<Full<Bytes>, Limited<Body>>;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Idle connections kept; more are closed.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed rather than used (WeChat's front ends close idle
/// keep-alive connections after about a minute).
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// An upstream call that did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("no answer within the gateway's timeout")]
    Timeout,
    /// The error's text: hyper's errors name no URL, so the token never reaches a log.
    #[error("{0}")]
    Failed(String),
}

/// An open connection: its request side and the connection itself, which must be polled for
/// anything to move.
struct Conn {
    send: http1::SendRequest<OutBody>,
    conn: http1::Connection<Io, OutBody>,
    idle_since: Instant,
}

pub(super) struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<VecDeque<Box<Conn>>>,
    /// `scheme://authority/` of the base URL, for the connector.
    origin: Uri,
    host: HeaderValue,
    /// The base URL's path without its trailing `/` (empty for WeChat's own).
    prefix: String,
}

/// WeChat's answer to a call.
pub(super) struct Answer {
    pub(super) status: axum::http::StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: AnswerBody,
}

pub(super) enum AnswerBody {
    /// Read whole; `None` when it was over the limit.
    Whole(Option<Bytes>),
    /// Passed on as it comes, bound by the call's deadline.
    Streamed(Body),
}

impl Upstream {
    pub(super) fn new(base: &url::Url, connect_timeout: Duration) -> Result<Self, String> {
        let uri: Uri = base
            .as_str()
            .parse()
            .map_err(|e| format!("upstream.base_url: {e}"))?;
        let scheme: Scheme = uri
            .scheme()
            .cloned()
            .ok_or("upstream.base_url has no scheme")?;
        let authority: Authority = uri
            .authority()
            .cloned()
            .ok_or("upstream.base_url has no host")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| format!("upstream.base_url: {e}"))?;
        let origin = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|e| format!("upstream.base_url: {e}"))?;
        Ok(Self {
            connector,
            idle: Mutex::default(),
            origin,
            host,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Sends `{base}/{path}?{query}` and waits, until `deadline`, for the answer: its body read
    /// whole (up to `limit`) when `whole` says so of its headers, else streamed.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn exchange(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        headers: impl Iterator<Item = (&header::HeaderName, &header::HeaderValue)>,
        body: OutBody,
        deadline: Instant,
        whole: impl Fn(&HeaderMap) -> bool,
        limit: usize,
    ) -> Result<Answer, CallError> {
        let mut target = String::with_capacity(self.prefix.len() + path.len() + query.len() + 2);
        target.push_str(&self.prefix);
        target.push('/');
        target.push_str(path);
        target.push('?');
        target.push_str(query);
        let target = PathAndQuery::try_from(target)
            .map_err(|_| CallError::Failed("the path or query is not a valid URI".into()))?;
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = Uri::from(target);
        let out = request.headers_mut();
        out.insert(header::HOST, self.host.clone());
        for (name, value) in headers {
            out.append(name.clone(), value.clone());
        }
        // One timer for the whole exchange.
        let exchange = async {
            let (answer, mut conn) = self.send(request).await?;
            let (head, incoming) = answer.into_parts();
            let body = if whole(&head.headers) {
                let read = drive(&mut conn.conn, Limited::new(incoming, limit).collect()).await;
                match read {
                    Err(closed) => return Err(CallError::Failed(closed)),
                    Ok(Ok(collected)) => {
                        self.put_idle(conn);
                        AnswerBody::Whole(Some(collected.to_bytes()))
                    }
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        AnswerBody::Whole(None)
                    }
                    Ok(Err(e)) => return Err(CallError::Failed(error_chain(e.as_ref()))),
                }
            } else {
                AnswerBody::Streamed(stream(conn, incoming, deadline))
            };
            Ok(Answer {
                status: head.status,
                headers: head.headers,
                body,
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn send(
        &self,
        mut request: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Box<Conn>), CallError> {
        // An idle connection first: one the server closed meanwhile is found out before the
        // request is handed to it (and then the request is sent on the next, or a new one).
        loop {
            let (mut conn, fresh) = match self.take_idle() {
                Some(conn) => (conn, false),
                None => (self.connect().await?, true),
            };
            let sent = {
                let Conn { send, conn: io, .. } = &mut *conn;
                match drive(io, send.ready()).await {
                    Ok(Ok(())) => drive(io, send.try_send_request(request)).await,
                    Ok(Err(e)) if fresh => return Err(CallError::Failed(error_chain(&e))),
                    Err(closed) if fresh => return Err(CallError::Failed(closed)),
                    // A pooled one the server closed meanwhile.
                    _ => continue,
                }
            };
            match sent {
                Ok(Ok(answer)) => return Ok((answer, conn)),
                Ok(Err(mut e)) => match e.take_message() {
                    // Never written: another connection may take it.
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(CallError::Failed(error_chain(e.error()))),
                },
                Err(closed) => return Err(CallError::Failed(closed)),
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, CallError> {
        let io = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| CallError::Failed(error_chain(e.as_ref())))?;
        let (send, conn) = http1::handshake(io)
            .await
            .map_err(|e| CallError::Failed(error_chain(&e)))?;
        Ok(Box::new(Conn {
            send,
            conn,
            idle_since: Instant::now(),
        }))
    }

    fn take_idle(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock();
        while let Some(conn) = idle.pop_back() {
            if conn.idle_since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, mut conn: Box<Conn>) {
        let now = Instant::now();
        conn.idle_since = now;
        let mut idle = self.idle.lock();
        // The oldest are at the front: close those past the timeout, and the oldest beyond the cap.
        while idle
            .front()
            .is_some_and(|c| now - c.idle_since >= IDLE_TIMEOUT)
            || idle.len() >= MAX_IDLE
        {
            idle.pop_front();
        }
        idle.push_back(conn);
    }
}

/// An answer's body passed on as it comes, bound by the call's deadline; its connection is
/// driven by a task of its own and closed after it.
fn stream(conn: Box<Conn>, body: Incoming, deadline: Instant) -> Body {
    let Conn { send, conn, .. } = *conn;
    // Without its request side, the connection ends after this answer.
    drop(send);
    tokio::spawn(async move {
        let _ = tokio::time::timeout_at(deadline, conn).await;
    });
    Body::new(Deadline::new(body, deadline))
}

/// Polls `conn` and `fut` together until `fut` is done: the connection moves the request out and
/// the answer in. `Err` when the connection ended first (its error, or that it closed).
async fn drive<F: Future>(
    conn: &mut http1::Connection<Io, OutBody>,
    fut: F,
) -> Result<F::Output, String> {
    let mut fut = pin!(fut);
    let mut ended: Option<String> = None;
    poll_fn(|cx| {
        if ended.is_none()
            && let Poll::Ready(end) = Pin::new(&mut *conn).poll(cx)
        {
            ended = Some(match end {
                Ok(()) => "the connection was closed".to_owned(),
                Err(e) => error_chain(&e),
            });
        }
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match &ended {
            Some(why) => Poll::Ready(Err(why.clone())),
            None => Poll::Pending,
        }
    })
    .await
}

/// The kept headers of a request as (name, value) pairs.
pub(super) fn pick<'a>(
    from: &'a HeaderMap,
    names: &'a [header::HeaderName],
) -> impl Iterator<Item = (&'a header::HeaderName, &'a header::HeaderValue)> {
    names
        .iter()
        .filter_map(move |name| from.get(name).map(|value| (name, value)))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The call's time ran out while its body was still moving.
#[derive(Debug, thiserror::Error)]
#[error("no answer within the gateway's timeout")]
pub(super) struct TimedOut;

/// A body that fails once `deadline` has passed: the gateway's bound on a whole call, the
/// upload or the download included. (tower-http's `TimeoutBody` bounds the wait for each frame,
/// not the whole.)
pub(super) struct Deadline<B> {
    inner: B,
    sleep: Pin<Box<Sleep>>,
}

impl<B> Deadline<B> {
    fn new(inner: B, deadline: Instant) -> Self {
        Self {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }
}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(TimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How a test upstream treats a connection after each answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepOpen,
        /// Closes it without saying so (as a server whose keep-alive timeout ran out).
        Close,
        /// Sends the head and half the body, then nothing.
        Stall,
    }

    /// A loopback HTTP/1.1 server answering `{"errcode":0}` to every request; counts connections.
    async fn upstream(after: After) -> (Upstream, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Closing in the same poll as the answer: the close is there before the answer is read.
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = 0;
                    loop {
                        let n = socket.read(&mut buf[have..]).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        have += n;
                        if !buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                            continue;
                        }
                        // The request as the gateway must send it: origin-form under the
                        // base URL's path, with the base URL's host.
                        let expected = format!(
                            "GET /base/cgi-bin/getcallbackip?access_token=T HTTP/1.1\r\nhost: {addr}\r\n"
                        );
                        let body: &[u8] = if buf[..have].starts_with(expected.as_bytes()) {
                            br#"{"errcode":0}"#
                        } else {
                            br#"{"errcode":1}"#
                        };
                        have = 0;
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        socket.write_all(head.as_bytes()).await.unwrap();
                        match after {
                            After::Stall => {
                                socket.write_all(&body[..4]).await.unwrap();
                                std::future::pending::<()>().await;
                            }
                            After::KeepOpen => socket.write_all(body).await.unwrap(),
                            After::Close => {
                                socket.write_all(body).await.unwrap();
                                return;
                            }
                        }
                    }
                });
            }
        });
        let base = url::Url::parse(&format!("http://{addr}/base/")).unwrap();
        (
            Upstream::new(&base, Duration::from_secs(1)).unwrap(),
            accepted,
        )
    }

    async fn get(upstream: &Upstream, timeout: Duration) -> Result<Option<Bytes>, CallError> {
        let answer = upstream
            .exchange(
                &Method::GET,
                "cgi-bin/getcallbackip",
                "access_token=T",
                std::iter::empty(),
                Either::Left(Full::new(Bytes::new())),
                Instant::now() + timeout,
                |_| true,
                1024,
            )
            .await?;
        match answer.body {
            AnswerBody::Whole(body) => Ok(body),
            AnswerBody::Streamed(_) => panic!("a whole answer was asked for"),
        }
    }

    /// Three calls in a row, each answered in full: the connections they took.
    async fn connections_for_three_calls(after: After) -> usize {
        let (upstream, accepted) = upstream(after).await;
        for _ in 0..3 {
            let body = get(&upstream, Duration::from_secs(5)).await.unwrap();
            assert_eq!(body.as_deref(), Some(&br#"{"errcode":0}"#[..]));
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn calls_reuse_one_kept_alive_connection() {
        assert_eq!(connections_for_three_calls(After::KeepOpen).await, 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_passed_over_for_a_new_one() {
        assert_eq!(connections_for_three_calls(After::Close).await, 3);
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_ends_at_the_calls_deadline() {
        let (upstream, _) = upstream(After::Stall).await;
        let err = get(&upstream, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout), "{err:?}");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_an_error_without_the_url() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let base = url::Url::parse(&format!("http://{addr}/")).unwrap();
        let upstream = Upstream::new(&base, Duration::from_secs(1)).unwrap();
        let err = get(&upstream, Duration::from_secs(5)).await.unwrap_err();
        let CallError::Failed(text) = err else {
            panic!("{err:?}")
        };
        assert!(!text.contains("access_token"), "{text}");
    }
}
