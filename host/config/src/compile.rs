//! Turns a [`ConfigFile`] into [`Settings`], collecting every problem before failing.

use crate::error::{ConfigError, Problem, line_of, locate};
use crate::file::{ConfigFile, RouteFile, TrackingFile, VerpFile};
use crate::settings::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

/// Reads and compiles a configuration file.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    let mut settings = load_str(&source, &file)?;
    if let (Some(p), Some(dir)) = (&settings.policies, path.parent()) {
        settings.policies = Some(dir.join(p));
    }
    Ok(settings)
}

/// Compiles configuration source; `file` names it in problems.
pub fn load_str(source: &str, file: &str) -> Result<Settings, ConfigError> {
    let parsed: ConfigFile = toml::from_str(source).map_err(|e| {
        let (line, key) = match e.span() {
            Some(span) => (line_of(source, span.start), key_at(source, span)),
            None => (0, String::new()),
        };
        ConfigError::Invalid(vec![Problem {
            file: file.to_string(),
            line,
            key,
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut c = Compiler {
        source,
        file,
        problems: Vec::new(),
    };
    let settings = c.compile(parsed);
    if c.problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError::Invalid(c.problems))
    }
}

/// The key a parse error points at: the text of the span's line up to `=`.
fn key_at(source: &str, span: std::ops::Range<usize>) -> String {
    let start = source[..span.start.min(source.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = source[start..].lines().next().unwrap_or("");
    line.split('=').next().unwrap_or("").trim().to_string()
}

struct Compiler<'a> {
    source: &'a str,
    file: &'a str,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn problem(&mut self, key: String, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            line: locate(self.source, &key),
            key,
            message: message.into(),
        });
    }

    fn tls_policy(&mut self, key: String, value: &str) -> TlsPolicy {
        match value {
            "none" => TlsPolicy::None,
            "opportunistic" => TlsPolicy::Opportunistic,
            "required" => TlsPolicy::Required,
            "verify" => TlsPolicy::Verify,
            other => {
                self.problem(
                    key,
                    format!(
                        "unknown TLS policy `{other}`: expected none, opportunistic, required or verify"
                    ),
                );
                TlsPolicy::Opportunistic
            }
        }
    }

    fn compile(&mut self, f: ConfigFile) -> Settings {
        if f.hostname.trim().is_empty() || f.hostname.contains(char::is_whitespace) {
            self.problem("hostname".into(), "must be a host name without spaces");
        }
        if f.queue_commit_interval > std::time::Duration::from_millis(100) {
            self.problem(
                "queue_commit_interval".into(),
                "at most 100ms (it is added to the time to a 250 under load)",
            );
        }
        let local_domains = self.domains("local_domains", &f.local_domains);
        let relay_domains = self.domains("relay_domains", &f.relay_domains);
        for d in local_domains.intersection(&relay_domains) {
            self.problem(
                "relay_domains".into(),
                format!("`{d}` is also in local_domains"),
            );
        }
        let tls_cert = match (&f.tls.cert, &f.tls.key) {
            (Some(c), Some(k)) => {
                for (key, path) in [("tls.cert", c), ("tls.key", k)] {
                    if !path.exists() {
                        self.problem(key.into(), format!("{} does not exist", path.display()));
                    }
                }
                Some((c.clone(), k.clone()))
            }
            (None, None) => None,
            (Some(_), None) => {
                self.problem("tls.cert".into(), "`tls.key` must be set with `tls.cert`");
                None
            }
            (None, Some(_)) => {
                self.problem("tls.key".into(), "`tls.cert` must be set with `tls.key`");
                None
            }
        };

        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        let mut binds = HashSet::new();
        if f.listener.is_empty() {
            self.problem("listener".into(), "at least one [[listener]] is needed");
        }
        for (i, l) in f.listener.iter().enumerate() {
            let k = |field: &str| format!("listener[{i}].{field}");
            if l.name.is_empty() {
                self.problem(k("name"), "a listener needs a name");
            } else if !names.insert(l.name.clone()) {
                self.problem(
                    k("name"),
                    format!("listener name `{}` is used twice", l.name),
                );
            }
            let bind = match l.bind.parse::<SocketAddr>() {
                Ok(a) => {
                    if !binds.insert(a) {
                        self.problem(k("bind"), format!("{a} is bound by another listener"));
                    }
                    a
                }
                Err(_) => {
                    self.problem(
                        k("bind"),
                        format!("`{}` is not an address:port such as 127.0.0.1:2525", l.bind),
                    );
                    SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            let role = match l.role.as_str() {
                "mx" => Role::Mx,
                "submission" => Role::Submission,
                other => {
                    self.problem(
                        k("role"),
                        format!("unknown role `{other}`: expected mx or submission"),
                    );
                    Role::Mx
                }
            };
            if l.max_line_length < 512 {
                self.problem(k("max_line_length"), "must be at least 512 (RFC 5321)");
            }
            for (field, v) in [
                ("max_connections", l.max_connections),
                ("max_recipients", l.max_recipients),
                ("max_message_size", l.max_message_size),
                ("max_errors", l.max_errors),
            ] {
                if v == 0 {
                    self.problem(k(field), "must be greater than 0");
                }
            }
            listeners.push(ListenerSettings {
                name: l.name.clone(),
                bind,
                role,
                starttls: l.starttls,
                max_connections: l.max_connections,
                max_recipients: l.max_recipients,
                max_message_size: l.max_message_size,
                max_line_length: l.max_line_length,
                command_timeout: l.command_timeout,
                data_timeout: l.data_timeout,
                max_errors: l.max_errors,
            });
        }

        let d = &f.delivery;
        let tls = self.tls_policy("delivery.tls".into(), &d.tls);
        for (field, v) in [
            ("max_connections", d.max_connections),
            (
                "max_connections_per_destination",
                d.max_connections_per_destination,
            ),
            ("max_messages_per_connection", d.max_messages_per_connection),
        ] {
            if v == 0 {
                self.problem(format!("delivery.{field}"), "must be greater than 0");
            }
        }
        if d.retry_initial.is_zero() {
            self.problem("delivery.retry_initial".into(), "must be greater than 0");
        }
        if d.event_retry_initial.is_zero() {
            self.problem(
                "delivery.event_retry_initial".into(),
                "must be greater than 0",
            );
        }
        if d.event_retry_max < d.event_retry_initial {
            self.problem(
                "delivery.event_retry_max".into(),
                "must not be shorter than `event_retry_initial`",
            );
        }
        if d.retry_max < d.retry_initial {
            self.problem(
                "delivery.retry_max".into(),
                "must not be shorter than `retry_initial`",
            );
        }
        let mut nameservers = Vec::new();
        for (i, n) in d.nameservers.iter().enumerate() {
            match n.parse::<SocketAddr>() {
                Ok(a) => nameservers.push(a),
                Err(_) => self.problem(
                    format!("delivery.nameservers[{i}]"),
                    format!("`{n}` is not an ip:port address such as 127.0.0.1:53"),
                ),
            }
        }
        let http_bind = f
            .http
            .as_ref()
            .and_then(|h| match h.bind.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.problem(
                        "http.bind".into(),
                        format!("`{}` is not an address:port such as 127.0.0.1:8025", h.bind),
                    );
                    None
                }
            });
        let delivery = DeliverySettings {
            max_connections: d.max_connections,
            max_connections_per_destination: d.max_connections_per_destination,
            max_messages_per_connection: d.max_messages_per_connection,
            idle_timeout: d.idle_timeout,
            connect_timeout: d.connect_timeout,
            command_timeout: d.command_timeout,
            transaction_timeout: d.transaction_timeout,
            retry_initial: d.retry_initial,
            retry_max: d.retry_max,
            event_retry_initial: d.event_retry_initial,
            event_retry_max: d.event_retry_max,
            event_expire: d.event_expire,
            event_history: d.event_history,
            quarantine_retention: d.quarantine_retention,
            expire: d.expire,
            delay_notify_after: d.delay_notify_after,
            tls,
            mx_port: d.mx_port,
            nameservers,
            dsn_max_original: d.dsn_max_original,
        };

        let p = &f.protection;
        if p.auth_failures > 0 && p.auth_window.is_zero() {
            self.problem(
                "protection.auth_window".into(),
                "must be greater than 0 when auth_failures is set",
            );
        }
        let protection = ProtectionSettings {
            auth_failures: p.auth_failures,
            auth_window: p.auth_window,
            ban_for: p.ban_for,
            connections_per_minute: p.connections_per_minute,
            network_connections_per_minute: p.network_connections_per_minute,
        };

        let authentication = f.authentication.as_ref().map(|a| {
            if a.timeout.is_zero() {
                self.problem("authentication.timeout".into(), "must be greater than 0");
            }
            AuthenticationSettings {
                authserv_id: a.authserv_id.clone().unwrap_or_else(|| f.hostname.clone()),
                timeout: a.timeout,
            }
        });
        let mut dkim = Vec::new();
        for (i, k) in f.dkim.iter().enumerate() {
            let key = self.relative(&k.key);
            if k.domain.is_empty() || k.domain.contains(['@', ' ', '/']) {
                self.problem(
                    format!("dkim[{i}].domain"),
                    format!("`{}` is not a domain", k.domain),
                );
            }
            if k.selector.is_empty() || k.selector.contains(['@', ' ', '/', ';']) {
                self.problem(
                    format!("dkim[{i}].selector"),
                    format!("`{}` is not a selector", k.selector),
                );
            }
            if !key.is_file() {
                self.problem(
                    format!("dkim[{i}].key"),
                    format!("{}: no such file", key.display()),
                );
            }
            dkim.push(DkimSettings {
                domain: k.domain.to_ascii_lowercase(),
                selector: k.selector.clone(),
                key,
                headers: k.headers.clone(),
            });
        }

        let tracking = f
            .tracking
            .as_ref()
            .and_then(|t| self.tracking(t, http_bind.is_some()));

        let verp = f.verp.as_ref().and_then(|v| self.verp(v, &local_domains));

        let routes = f
            .route
            .iter()
            .enumerate()
            .map(|(i, r)| self.route(i, r, tls))
            .collect();

        let plugin_http_roots = self.http_roots(&f.plugins.http_ca);
        Settings {
            hostname: f.hostname.clone(),
            users_file: f
                .auth
                .users_file
                .clone()
                .unwrap_or_else(|| f.data_dir.join("users")),
            data_dir: f.data_dir,
            queue_min_free: f.queue_min_free,
            queue_commit_interval: f.queue_commit_interval,
            local_domains,
            relay_domains,
            tls_cert,
            listeners,
            protection,
            delivery,
            authentication,
            dkim,
            tracking,
            verp,
            routes,
            policies: f.policies.clone(),
            http_bind,
            plugin_http_roots,
        }
    }

    /// The certificates of `[plugins] http_ca`, each file holding at least one.
    fn http_roots(&mut self, paths: &[std::path::PathBuf]) -> Vec<Vec<u8>> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let key = format!("plugins.http_ca[{i}]");
            let path = self.relative(p);
            let certs = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())
                });
            match certs {
                Ok(c) if c.is_empty() => {
                    self.problem(key, format!("{}: no PEM certificate", path.display()))
                }
                Ok(c) => roots.extend(c.into_iter().map(|c| c.to_vec())),
                Err(e) => self.problem(key, format!("{}: {e}", path.display())),
            }
        }
        roots
    }

    fn tracking(&mut self, t: &TrackingFile, http: bool) -> Option<TrackingSettings> {
        let mut ok = true;
        if !http {
            self.problem(
                "tracking".into(),
                "needs the HTTP listener ([http]) that serves the tracking endpoints",
            );
            ok = false;
        }
        let base = t.base_url.trim_end_matches('/');
        let lower = base.to_ascii_lowercase();
        let host = lower
            .strip_prefix("https://")
            .or_else(|| lower.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains(['?', '#', ' '])) {
            self.problem(
                "tracking.base_url".into(),
                format!(
                    "`{}` is not an http(s) URL such as https://t.example.com",
                    t.base_url
                ),
            );
            ok = false;
        }
        if t.retention.is_zero() {
            self.problem("tracking.retention".into(), "must be greater than 0");
        }
        let (key, previous_keys) = self.keys("tracking", &t.key, &t.previous_keys);
        let previous_keys = previous_keys?;
        Some(TrackingSettings {
            base_url: base.to_string(),
            key: key.filter(|_| ok)?,
            previous_keys,
            retention: t.retention,
        })
    }

    /// A signing key file and its predecessors (`<table>.key`, `<table>.previous_keys`):
    /// at least 32 bytes each, surrounding whitespace ignored.
    fn keys(
        &mut self,
        table: &str,
        key: &Path,
        previous: &[std::path::PathBuf],
    ) -> (Option<Vec<u8>>, Option<Vec<Vec<u8>>>) {
        let key_path = self.relative(key);
        let previous_paths: Vec<std::path::PathBuf> =
            previous.iter().map(|p| self.relative(p)).collect();
        let mut read = |key: String, path: &Path| match std::fs::read(path) {
            Ok(bytes) => {
                let secret = bytes.trim_ascii().to_vec();
                if secret.len() < 32 {
                    self.problem(
                        key,
                        format!("{}: a key needs at least 32 bytes", path.display()),
                    );
                    None
                } else {
                    Some(secret)
                }
            }
            Err(e) => {
                self.problem(key, format!("{}: {e}", path.display()));
                None
            }
        };
        let current = read(format!("{table}.key"), &key_path);
        let previous: Vec<Option<Vec<u8>>> = previous_paths
            .iter()
            .enumerate()
            .map(|(i, p)| read(format!("{table}.previous_keys[{i}]"), p))
            .collect();
        (current, previous.into_iter().collect())
    }

    fn verp(&mut self, v: &VerpFile, local: &HashSet<String>) -> Option<VerpSettings> {
        let domain = v.domain.trim().to_ascii_lowercase();
        let mut ok = true;
        if !local.contains(&domain) {
            self.problem(
                "verp.domain".into(),
                format!("`{domain}` must be one of local_domains: the bounces arrive there"),
            );
            ok = false;
        }
        let lp = &v.local_part;
        if lp.is_empty()
            || lp.len() > 16
            || !lp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            self.problem(
                "verp.local_part".into(),
                format!("`{lp}`: 1 to 16 letters, digits, '-' or '_'"),
            );
            ok = false;
        }
        let (key, previous_keys) = self.keys("verp", &v.key, &v.previous_keys);
        Some(VerpSettings {
            domain,
            local_part: lp.clone(),
            key: key.filter(|_| ok)?,
            previous_keys: previous_keys?,
        })
    }

    /// A path from the configuration, relative to the configuration file's folder.
    fn relative(&self, path: &Path) -> std::path::PathBuf {
        Path::new(self.file)
            .parent()
            .unwrap_or(Path::new(""))
            .join(path)
    }

    fn domains(&mut self, key: &str, list: &[String]) -> HashSet<String> {
        let mut out = HashSet::new();
        for (i, d) in list.iter().enumerate() {
            if d.is_empty() || d.contains(['@', ' ', '/']) {
                self.problem(format!("{key}[{i}]"), format!("`{d}` is not a domain"));
            }
            out.insert(d.to_ascii_lowercase());
        }
        out
    }

    fn route(&mut self, i: usize, r: &RouteFile, default_tls: TlsPolicy) -> Route {
        let k = |field: &str| format!("route[{i}].{field}");
        if r.domain.is_empty() {
            self.problem(k("domain"), "a route needs a domain (`*` matches all)");
        }
        let tls = match &r.tls {
            Some(t) => self.tls_policy(k("tls"), t),
            None => default_tls,
        };
        let via = match r.via.as_str() {
            "mx" => Via::Mx,
            "maildir" => Via::Maildir,
            "smarthost" => match r.host.as_deref().map(split_host_port) {
                Some(Some((host, port))) => Via::Smarthost { host, port },
                Some(None) => {
                    self.problem(k("host"), "expected host:port");
                    Via::Mx
                }
                None => {
                    self.problem(k("host"), "a smarthost route needs `host = \"host:port\"`");
                    Via::Mx
                }
            },
            other => {
                self.problem(
                    k("via"),
                    format!("unknown route `{other}`: expected mx, smarthost or maildir"),
                );
                Via::Mx
            }
        };
        Route {
            domain: r.domain.to_ascii_lowercase(),
            via,
            tls,
        }
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EMBEDDED_DEFAULT;

    #[test]
    fn embedded_default_compiles() {
        let s = load_str(EMBEDDED_DEFAULT, "default").unwrap();
        assert_eq!(s.listeners.len(), 2);
        assert!(s.is_local_domain("LocalHost"));
        assert_eq!(s.route_for("localhost").via, Via::Maildir);
        assert_eq!(s.route_for("example.com").via, Via::Mx);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let src = "hostname = \"a\"\n\n[[listener]]\nname = \"x\"\nbindd = \"1\"\n";
        let err = load_str(src, "s.toml").unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.line, 5, "{p}");
        assert_eq!(p.key, "bindd");
        assert!(p.message.contains("unknown field `bindd`"), "{p}");
    }

    #[test]
    fn all_semantic_problems_reported_at_once() {
        let src = r#"
hostname = "mx.example"
queue_commit_interval = "1s"
[[listener]]
name = "a"
bind = "nonsense"
role = "mx"

[[listener]]
name = "a"
bind = "127.0.0.1:25"
role = "relay"
max_line_length = 100

[delivery]
tls = "maybe"

[[route]]
domain = "example.com"
via = "smarthost"
"#;
        let err = load_str(src, "s.toml").unwrap_err();
        let got: Vec<(usize, &str)> = err
            .problems()
            .iter()
            .map(|p| (p.line, p.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, "queue_commit_interval"),
                (6, "listener[0].bind"),
                (10, "listener[1].name"),
                (12, "listener[1].role"),
                (13, "listener[1].max_line_length"),
                (16, "delivery.tls"),
                (18, "route[0].host"),
            ],
            "{err}"
        );
    }

    #[test]
    fn tracking_keys_are_read_next_to_the_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.key"), "k".repeat(40) + "\n").unwrap();
        std::fs::write(dir.path().join("short.key"), "short").unwrap();
        let file = dir.path().join("sluice.toml");
        let file = file.to_str().unwrap();
        let listener = "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:25\"\nrole = \"mx\"\n";
        let src = format!(
            "hostname = \"a\"\n{listener}[http]\nbind = \"127.0.0.1:8025\"\n[tracking]\nbase_url = \"https://t.example/\"\nkey = \"good.key\"\nprevious_keys = [\"good.key\"]\n"
        );
        let s = load_str(&src, file).unwrap();
        let t = s.tracking.unwrap();
        assert_eq!(t.base_url, "https://t.example");
        assert_eq!(t.key, "k".repeat(40).into_bytes());
        assert_eq!(t.previous_keys.len(), 1);

        let src = format!(
            "hostname = \"a\"\n{listener}[tracking]\nbase_url = \"ftp://t\"\nkey = \"short.key\"\nprevious_keys = [\"missing.key\"]\n"
        );
        let err = load_str(&src, file).unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            got,
            vec![
                "tracking",
                "tracking.base_url",
                "tracking.key",
                "tracking.previous_keys[0]"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn plugin_http_cas_are_read_next_to_the_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        // Any well-formed PEM certificate block: the DER is checked when the pool is built.
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let file = dir.path().join("sluice.toml");
        let file = file.to_str().unwrap();
        let listener = "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:25\"\nrole = \"mx\"\n";
        let s = load_str(
            &format!("{listener}[plugins]\nhttp_ca = [\"ca.pem\"]\n"),
            file,
        )
        .unwrap();
        assert_eq!(s.plugin_http_roots, vec![vec![0, 1, 2, 3]]);
        let err = load_str(
            &format!(
                "{listener}[plugins]\nhttp_ca = [\"ca.pem\", \"empty.pem\", \"missing.pem\"]\n"
            ),
            file,
        )
        .unwrap_err();
        let got: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            got,
            vec!["plugins.http_ca[1]", "plugins.http_ca[2]"],
            "{err}"
        );
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
