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
    use wasi::http::types::{
        Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
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
    {
        // As much per write as the host takes (`check-write`), not `blocking-write-and-
        // flush`'s 4096 bytes: a 70 KB body was 18 host calls and 18 HTTP body frames.
        let stream = outgoing.write().map_err(|_| "body stream")?;
        let sending = |e| format!("sending the body: {e:?}");
        let mut rest = body;
        while !rest.is_empty() {
            let n = stream.check_write().map_err(sending)? as usize;
            if n == 0 {
                stream.subscribe().block();
                continue;
            }
            let (now, later) = rest.split_at(n.min(rest.len()));
            stream.write(now).map_err(sending)?;
            rest = later;
        }
        stream.blocking_flush().map_err(sending)?;
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))?;
    response.subscribe().block();
    let incoming = match response.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) | None => return Err("no response".into()),
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
