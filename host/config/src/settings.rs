//! Runtime settings, checked and ready to use.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server needs, compiled from a [`crate::file::ConfigFile`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub hostname: String,
    pub data_dir: PathBuf,
    /// Free bytes the queue keeps in reserve.
    pub queue_min_free: u64,
    /// The least time between two group commits under concurrent writes.
    pub queue_commit_interval: Duration,
    /// Lowercased.
    pub local_domains: HashSet<String>,
    /// Lowercased.
    pub relay_domains: HashSet<String>,
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    pub users_file: PathBuf,
    pub listeners: Vec<ListenerSettings>,
    /// Where the HTTP listener binds, when there is one.
    pub http_bind: Option<SocketAddr>,
    pub protection: ProtectionSettings,
    pub delivery: DeliverySettings,
    /// Checks of received mail on `mx` listeners; `None`: off.
    pub authentication: Option<AuthenticationSettings>,
    pub dkim: Vec<DkimSettings>,
    pub tracking: Option<TrackingSettings>,
    pub verp: Option<VerpSettings>,
    pub routes: Vec<Route>,
    /// Policy files, resolved against the configuration file's folder.
    pub policies: Option<PathBuf>,
    /// CA certificates (DER) plugin HTTPS requests trust besides the web PKI roots.
    pub plugin_http_roots: Vec<Vec<u8>>,
}

/// See `AuthenticationFile`.
#[derive(Debug, Clone)]
pub struct AuthenticationSettings {
    pub authserv_id: String,
    pub timeout: Duration,
}

/// VERP return paths (`[verp]`); the keys are read at load.
#[derive(Clone)]
pub struct VerpSettings {
    /// Lowercase.
    pub domain: String,
    pub local_part: String,
    pub key: Vec<u8>,
    pub previous_keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for VerpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerpSettings")
            .field("domain", &self.domain)
            .field("local_part", &self.local_part)
            .finish_non_exhaustive()
    }
}

/// See `TrackingFile`; the keys are read at load.
#[derive(Clone)]
pub struct TrackingSettings {
    /// Without a trailing `/`.
    pub base_url: String,
    pub key: Vec<u8>,
    pub previous_keys: Vec<Vec<u8>>,
    pub retention: Duration,
}

impl std::fmt::Debug for TrackingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingSettings")
            .field("base_url", &self.base_url)
            .field("keys", &(1 + self.previous_keys.len()))
            .field("retention", &self.retention)
            .finish()
    }
}

/// See `DkimFile`. The domain is lowercased.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
    pub headers: Vec<String>,
}

impl Settings {
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// The event history's database.
    pub fn history_dir(&self) -> PathBuf {
        self.data_dir.join("history")
    }

    /// The admin API's keys (`sluice api-key`), hashed.
    pub fn api_keys_file(&self) -> PathBuf {
        self.data_dir.join("api-keys.json")
    }

    pub fn maildir(&self) -> PathBuf {
        self.data_dir.join("maildir")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains.contains(&domain.to_ascii_lowercase())
    }

    /// Mail for this domain is accepted from anyone (local or relay domain).
    pub fn accepts_for(&self, domain: &str) -> bool {
        let d = domain.to_ascii_lowercase();
        self.local_domains.contains(&d) || self.relay_domains.contains(&d)
    }

    /// The route for a recipient domain: local domains go to Maildir, then the first
    /// matching route, then MX.
    pub fn route_for(&self, domain: &str) -> Route {
        let domain = domain.to_ascii_lowercase();
        if self.local_domains.contains(&domain) {
            return Route {
                domain: domain.clone(),
                via: Via::Maildir,
                tls: self.delivery.tls,
            };
        }
        for r in &self.routes {
            let hit = r.domain == "*"
                || r.domain == domain
                || (r.domain.starts_with('.') && domain.ends_with(&r.domain));
            if hit {
                // A pattern names many domains: the route goes on with this one (its MX).
                let mut r = r.clone();
                r.domain = domain;
                return r;
            }
        }
        Route {
            domain,
            via: Via::Mx,
            tls: self.delivery.tls,
        }
    }
}

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts mail for local domains from anyone.
    Mx,
    /// Relays for authenticated users.
    Submission,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Mx => "mx",
            Role::Submission => "submission",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    pub bind: SocketAddr,
    pub role: Role,
    pub starttls: bool,
    pub max_connections: usize,
    pub max_recipients: usize,
    pub max_message_size: usize,
    pub max_line_length: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_errors: usize,
}

/// TLS towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    None,
    Opportunistic,
    Required,
    Verify,
}

/// See `ProtectionFile`.
#[derive(Debug, Clone)]
pub struct ProtectionSettings {
    pub auth_failures: u32,
    pub auth_window: Duration,
    pub ban_for: Duration,
    pub connections_per_minute: u32,
    pub network_connections_per_minute: u32,
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub max_connections: usize,
    pub max_connections_per_destination: usize,
    pub max_messages_per_connection: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub transaction_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub expire: Duration,
    pub delay_notify_after: Duration,
    pub tls: TlsPolicy,
    pub mx_port: u16,
    pub nameservers: Vec<SocketAddr>,
    pub dsn_max_original: usize,
    pub event_retry_initial: Duration,
    pub event_retry_max: Duration,
    pub event_expire: Duration,
    pub event_history: Duration,
    pub quarantine_retention: Duration,
}

/// How mail for a domain leaves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Via {
    Mx,
    Smarthost { host: String, port: u16 },
    Maildir,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub domain: String,
    pub via: Via,
    pub tls: TlsPolicy,
}
