//! Outgoing HTTP for plugins (`wasi:http`): one keep-alive connection pool per server.
//!
//! wasmtime-wasi-http's default sender opens a new TCP connection for every request and,
//! for HTTPS, builds a new TLS configuration with the whole web PKI root store and does a
//! full handshake. Event webhooks and forwarded mail send one request per event or message
//! to the same few endpoints, so every request paid a connect (and a handshake), and a busy
//! server left thousands of sockets in `TIME_WAIT`. Here connections to an origin are kept
//! and reused (hyper's pool); HTTPS checks certificates against the web PKI roots like
//! outbound SMTP's `verify` mode ([`sluice_net::client_tls::verified`]), plus the CA
//! certificates of the server's `[plugins] http_ca`.
//!
//! Names are resolved by [`PublicOnly`]: a name that does not resolve, or whose answer holds
//! any address that is not public, is refused (`HttpRequestDenied`), and the connection goes
//! to the very addresses checked, so no later DNS answer can turn a grant by name into a way
//! to the host's own network (origins granted by IP literal are connected to directly).
//!
//! The guest's timeouts keep their meaning: connecting and waiting for the response head are
//! bounded by `connect-timeout + first-byte-timeout`, and each response body frame by
//! `between-bytes-timeout`. [`crate::step::HttpGrant`] checks origins and limits before a
//! request gets here.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Idle connections kept per origin.
const IDLE_PER_ORIGIN: usize = 64;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Used when the guest sets no timeout and the step has no wall-clock limit.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

type Connector = hyper_rustls::HttpsConnector<HttpConnector<PublicOnly>>;

/// The connector's resolver: the system's, refusing (as `PermissionDenied`) a name that does
/// not resolve or whose answer has an address that is not public ([`crate::step::is_global`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PublicOnly;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for PublicOnly {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        Box::pin(async move {
            let denied =
                |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|e| denied(format!("{}: {e}", name.as_str())))?
                .collect();
            if addrs.is_empty() {
                return Err(denied(format!("{}: no address", name.as_str())));
            }
            if let Some(a) = addrs.iter().find(|a| !crate::step::is_global(a.ip())) {
                return Err(denied(format!(
                    "{} resolves to {}, not a public address",
                    name.as_str(),
                    a.ip()
                )));
            }
            Ok(addrs.into_iter())
        })
    }
}

/// The pool; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, WasiBody>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// Trusting the web PKI roots.
    pub fn new() -> HttpClient {
        HttpClient::with_roots(&[]).expect("no extra roots to refuse")
    }

    /// Trusting the web PKI roots and `extra` CA certificates (DER).
    pub fn with_roots(extra: &[Vec<u8>]) -> Result<HttpClient, rustls::Error> {
        let tls = sluice_net::client_tls::verified_with(extra)?;
        let mut http = HttpConnector::new_with_resolver(PublicOnly);
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(IDLE_PER_ORIGIN)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Ok(HttpClient { client })
    }

    /// Sends `request` (absolute URI) and returns the response with its body bounded by the
    /// between-bytes timeout. The connection is driven by the pool, so the I/O future the
    /// caller gets resolves at once.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<http::Response<WasiBody>, Error> {
        let o = options.unwrap_or_default();
        let head_timeout = o.connect_timeout.unwrap_or(DEFAULT_TIMEOUT)
            + o.first_byte_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let between = o.between_bytes_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let response = match tokio::time::timeout(head_timeout, self.client.request(request)).await
        {
            Err(_) => return Err(Error::ConnectionTimeout),
            Ok(Err(e)) => return Err(client_error(&e)),
            Ok(Ok(r)) => r,
        };
        Ok(response.map(|incoming| {
            let mut timeout = tokio::time::interval(between);
            timeout.reset();
            Timed { incoming, timeout }.boxed_unsync()
        }))
    }
}

/// What a failed request tells the guest (`wasi:http` error codes).
fn client_error(e: &hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    if e.is_connect() {
        // The connector's error chain ends in the I/O error (refused, unreachable, TLS).
        let mut source = e.source();
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::PermissionDenied => Error::HttpRequestDenied,
                    std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                    std::io::ErrorKind::InvalidData => Error::TlsCertificateError,
                    _ => Error::DestinationUnavailable,
                };
            }
            source = s.source();
        }
        return Error::DestinationUnavailable;
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                Error::HttpResponseIncomplete
            } else {
                Error::HttpProtocolError
            };
        }
        source = s.source();
    }
    Error::HttpProtocolError
}

/// A response body whose frames must each come within the between-bytes timeout.
struct Timed {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::Hyper(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    /// A name answering with a loopback address is refused by the connector itself, whatever
    /// the grant check before it saw; an IP literal is connected to as it is.
    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = HttpClient::new();
        // Bounded, so that a regression fails instead of hanging on the silent listener.
        let quick = Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(2)),
            first_byte_timeout: Some(Duration::from_secs(2)),
            between_bytes_timeout: Some(Duration::from_secs(2)),
        });
        let request = |url: String| {
            http::Request::get(url)
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                .unwrap()
        };
        let by_name = client
            .send(request(format!("http://localhost:{port}/")), quick)
            .await;
        assert!(
            matches!(by_name, Err(Error::HttpRequestDenied)),
            "{by_name:?}"
        );
        // The literal reaches the listener (which accepts and then drops the connection).
        let accept = std::thread::spawn(move || listener.accept().is_ok());
        let by_ip = client
            .send(request(format!("http://127.0.0.1:{port}/")), quick)
            .await;
        assert!(accept.join().unwrap(), "no connection to the literal");
        assert!(!matches!(by_ip, Err(Error::HttpRequestDenied)), "{by_ip:?}");
    }
}
