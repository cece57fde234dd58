//! HTTP for plugins (feature `http`): a POST over wasi:http to an origin the step is
//! granted (`http` capability), with timeouts, and the request signature Sluice's webhook
//! plugins send: `X-Sluice-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.

/// The parts of an http(s) URL a request needs.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Splits an absolute http(s) URL; refuses user info, fragments and spaces.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!("url: `{url}` is not an http(s) URL"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() || authority.contains(['@', ' ', '#']) || path.contains([' ', '#']) {
        return Err(format!("url: `{url}` is not a usable URL"));
    }
    Ok(Target {
        https,
        authority: authority.to_string(),
        path,
    })
}

/// `v1=` and the hex HMAC-SHA256, keyed with `secret`, of `<timestamp>.<body>`.
/// Computed by the host (`host.hmac-sha256`), which has the CPU's SHA instructions.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(body.len() + 21);
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mac = crate::host::hmac_sha256(secret.as_bytes(), &signed);
    format!("v1={}", hex::encode(mac))
}

/// Unix seconds now.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The start of the response body (at most the `excerpt` bytes asked for).
    pub body: Vec<u8>,
}

/// POSTs `body` to `url` with `headers`; each of connect, first byte and between bytes
/// may take `timeout_ms`. Reads at most `excerpt` bytes of the response body.
pub fn post(
    url: &str,
    headers: &[(&str, String)],
    body: &[u8],
    timeout_ms: u64,
    excerpt: usize,
) -> Result<Response, String> {
    use wasi::http::outgoing_handler;
    use wasi::http::types::{Fields, Method, OutgoingRequest, RequestOptions, Scheme};
    let target = parse_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value.as_bytes())
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    fields
        .append("content-length", body.len().to_string().as_bytes())
        .map_err(|e| format!("content-length: {e:?}"))?;
    let request = OutgoingRequest::new(fields);
    request.set_method(&Method::Post).map_err(|_| "method")?;
    request
        .set_scheme(Some(if target.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|_| "scheme")?;
    request
        .set_authority(Some(&target.authority))
        .map_err(|_| "authority")?;
    request
        .set_path_with_query(Some(&target.path))
        .map_err(|_| "path")?;
    let outgoing = request.body().map_err(|_| "body")?;
    let options = RequestOptions::new();
    let ns = timeout_ms.saturating_mul(1_000_000);
    let _ = options.set_connect_timeout(Some(ns));
    let _ = options.set_first_byte_timeout(Some(ns));
    let _ = options.set_between_bytes_timeout(Some(ns));
    let response =
        outgoing_handler::handle(request, Some(options)).map_err(|e| format!("{e:?}"))?;
    let sent = send(outgoing, body, &response);
    // Wait for the answer even when sending failed: an endpoint may answer (413, 401, ...)
    // and close before it has read the body; once every byte is written, the request can
    // complete before the flush returns (the stream then says "closed", and the answer is
    // the endpoint's); and when the request failed, the response says why (refused, reset,
    // timed out) where the body stream only says "closed".
    response.subscribe().block();
    let incoming = match (response.get(), sent) {
        (Some(Ok(Ok(r))), Sent::All | Sent::Unfinished(_)) => r,
        (Some(Ok(Ok(r))), Sent::Part(e)) if (200..300).contains(&r.status()) => {
            return Err(format!(
                "the endpoint answered {} before it had the whole body ({e})",
                r.status()
            ));
        }
        (Some(Ok(Ok(r))), Sent::Part(_)) => r,
        (Some(Ok(Err(code))), Sent::All) => return Err(format!("{code:?}")),
        (Some(Ok(Err(code))), Sent::Part(e) | Sent::Unfinished(e)) => {
            return Err(format!("{e}: {code:?}"));
        }
        (Some(Err(())) | None, Sent::Part(e) | Sent::Unfinished(e)) => return Err(e),
        (Some(Err(())) | None, Sent::All) => return Err("no response".into()),
    };
    let status = incoming.status();
    let mut read = Vec::new();
    if excerpt > 0
        && let Ok(body) = incoming.consume()
        && let Ok(stream) = body.stream()
    {
        while read.len() < excerpt {
            match stream.blocking_read((excerpt - read.len()) as u64) {
                Ok(bytes) if !bytes.is_empty() => read.extend_from_slice(&bytes),
                _ => break,
            }
        }
    }
    Ok(Response { status, body: read })
}

/// How far [`send`] got.
enum Sent {
    /// Every byte written, the body finished.
    All,
    /// Every byte written; the flush or the finish failed.
    Unfinished(String),
    /// Not every byte was written.
    Part(String),
}

/// Writes `body` to the request and finishes it; on an error, or when the endpoint answers
/// while the body still waits for room (it may neither read nor close), the request is
/// abandoned.
fn send(
    outgoing: wasi::http::types::OutgoingBody,
    body: &[u8],
    response: &wasi::http::types::FutureIncomingResponse,
) -> Sent {
    use wasi::http::types::OutgoingBody;
    {
        let Ok(stream) = outgoing.write() else {
            return Sent::Part("no body stream".into());
        };
        let sending = |e| format!("sending the body: {e:?}");
        // As much per write as the host takes (`check-write`), not `blocking-write-and-
        // flush`'s 4096 bytes: a 70 KB body was 18 host calls and 18 HTTP body frames.
        let mut rest = body;
        while !rest.is_empty() {
            let n = match stream.check_write() {
                Ok(n) => n as usize,
                Err(e) => return Sent::Part(sending(e)),
            };
            if n == 0 {
                let (room, answer) = (stream.subscribe(), response.subscribe());
                if wasi::io::poll::poll(&[&room, &answer]).contains(&1) {
                    return Sent::Part(
                        "the endpoint answered before it took the whole body".into(),
                    );
                }
                continue;
            }
            let (now, later) = rest.split_at(n.min(rest.len()));
            if let Err(e) = stream.write(now) {
                return Sent::Part(sending(e));
            }
            rest = later;
        }
        if let Err(e) = stream.blocking_flush() {
            return Sent::Unfinished(sending(e));
        }
    }
    match OutgoingBody::finish(outgoing, None) {
        Ok(()) => Sent::All,
        Err(e) => Sent::Unfinished(format!("finishing the body: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://hooks.example.com/a/b?c=1").unwrap(),
            Target {
                https: true,
                authority: "hooks.example.com".into(),
                path: "/a/b?c=1".into()
            }
        );
        assert_eq!(parse_url("http://127.0.0.1:8080").unwrap().path, "/");
        assert_eq!(parse_url("http://h.example?x=1").unwrap().path, "/?x=1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://user@x/").is_err());
        assert!(parse_url("https:///x").is_err());
    }
}
