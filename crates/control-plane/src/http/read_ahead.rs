//! A TCP connection read ahead of TLS in large chunks, with the buffer held
//! only while bytes are coming in.
//!
//! rustls reads its socket 4 KiB at a time, so an agent relaying 300 MB/s
//! cost the control plane 75,000 `recv` calls a second: at 64 KiB per call,
//! the JSONL drain took 15-25% less of its CPU per record (docs/PERFORMANCE.md).
//! tokio's `BufReader` does the same but holds its buffer for the life of the
//! connection, from before the handshake: 64 KiB per idle agent, and per
//! half-open connection of a flood. Here the buffer is dropped whenever the
//! socket has nothing more, so an idle connection holds none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes asked of the socket at a time.
pub const CHUNK: usize = 64 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    /// [`CHUNK`] bytes while the connection is busy, none while it is idle.
    buf: Vec<u8>,
    /// Read but not yet handed over: `buf[at..end]`.
    at: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            at: 0,
            end: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> ReadAhead<S> {
    /// Refill the drained buffer with one read of up to [`CHUNK`] bytes.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            // Zeroed once per busy spell (the crate forbids `unsafe`, so no
            // uninitialized reads), then reused until the socket runs dry.
            self.buf = vec![0; CHUNK];
        }
        let mut read = ReadBuf::new(&mut self.buf);
        let polled = Pin::new(&mut self.inner).poll_read(cx, &mut read);
        (self.at, self.end) = (0, read.filled().len());
        if !matches!(polled, Poll::Ready(Ok(()))) || self.end == 0 {
            // Nothing came (idle, EOF or an error): hold no memory meanwhile.
            self.buf = Vec::new();
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at == this.end {
            if out.remaining() >= CHUNK {
                // A large read gains nothing from a copy.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            ready!(this.fill(cx))?;
        }
        let n = out.remaining().min(this.end - this.at);
        out.put_slice(&this.buf[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn hands_over_every_byte_in_order_in_small_reads_and_large() {
        let (mut tx, rx) = tokio::io::duplex(CHUNK * 4);
        let sent: Vec<u8> = (0..CHUNK * 3 + 17).map(|i| (i * 7 % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for part in sent.chunks(10_000) {
                    tx.write_all(part).await.unwrap();
                }
            })
        };
        let mut r = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        let mut large = vec![0u8; CHUNK * 2];
        let mut turn = 0;
        loop {
            turn += 1;
            let buf: &mut [u8] = if turn % 3 == 0 {
                &mut large
            } else {
                &mut small
            };
            let n = r.read(buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn holds_no_buffer_while_idle() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut r = ReadAhead::new(rx);
        tx.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(r.buf.len(), CHUNK, "kept while bytes come in");
        // Idle: the read that finds nothing drops the buffer.
        let idle = tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut buf));
        assert!(idle.await.is_err(), "nothing was sent");
        assert_eq!(r.buf.capacity(), 0);
        tx.write_all(b"again").await.unwrap();
        r.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
    }

    #[tokio::test]
    async fn writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = ReadAhead::new(a);
        w.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
}
