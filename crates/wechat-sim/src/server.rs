//! The TCP side: an `axum::serve::Listener` whose connections can be reset on purpose (the
//! `reset` fault). Each accepted stream is wrapped in [`ConnIo`]; the handler gets a [`ConnCtl`]
//! (through `ConnectInfo`) that flips the connection's flag. From then on every read and write
//! fails, hyper drops the connection, and `ConnIo`'s `Drop` sets `SO_LINGER` to zero first so the
//! kernel sends RST rather than FIN: the client sees "connection reset by peer" and no response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections and wraps them in [`ConnIo`].
pub(crate) struct ResettableListener {
    inner: TcpListener,
}

impl ResettableListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

impl axum::serve::Listener for ResettableListener {
    type Io = ConnIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = ConnIo {
                        stream,
                        reset: Arc::new(AtomicBool::new(false)),
                    };
                    return (io, addr);
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP stream that can be told to fail and reset.
pub(crate) struct ConnIo {
    stream: TcpStream,
    reset: Arc<AtomicBool>,
}

impl ConnIo {
    fn failed(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset by fault injection",
    )
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.failed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.failed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.failed() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.failed() {
            // Linger 0: closing the socket sends RST instead of FIN.
            let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Per-connection handle given to handlers (as `ConnectInfo<ConnCtl>` in request extensions).
#[derive(Clone, Debug)]
pub(crate) struct ConnCtl {
    reset: Arc<AtomicBool>,
}

impl ConnCtl {
    /// Make the connection fail and reset: the pending response is never written.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

impl Connected<IncomingStream<'_, ResettableListener>> for ConnCtl {
    fn connect_info(stream: IncomingStream<'_, ResettableListener>) -> Self {
        ConnCtl {
            reset: stream.io().reset.clone(),
        }
    }
}
