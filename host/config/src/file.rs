//! The configuration file as written by an operator. Each field's doc comment is its
//! documentation; each default is written once, in the `Default` impl of its struct.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Name this server uses in its greeting, EHLO reply, Received headers and DSNs.
    pub hostname: String,
    /// Folder for the queue, the users file, the generated TLS key and Maildir delivery.
    /// A relative path is taken from the working directory.
    pub data_dir: PathBuf,
    /// Free space (bytes) kept in reserve on the queue's filesystem: below it, new mail gets
    /// `452 4.3.1` until space returns (Postfix's `queue_minfree`). 0 turns the check off.
    pub queue_min_free: u64,
    /// While writers come faster than the disk syncs, the least time between the starts
    /// of two of the queue's group commits: writes arriving meanwhile share one round of
    /// fsyncs, so each message costs fewer (more messages per second for up to this much
    /// more time to a `250`). Writers one at a time do not wait. `0s` turns it off; at most `100ms`.
    #[serde(with = "humantime_serde")]
    pub queue_commit_interval: Duration,
    /// Domains whose mail is accepted on `mx` listeners and delivered to Maildir.
    pub local_domains: Vec<String>,
    /// Domains whose mail is accepted on `mx` listeners from anyone and passed on by the
    /// routes (an inbound gateway or backup MX), like Postfix's `relay_domains`.
    pub relay_domains: Vec<String>,
    /// TLS certificate for STARTTLS.
    pub tls: TlsFile,
    /// SMTP AUTH users.
    pub auth: AuthFile,
    /// SMTP listeners.
    pub listener: Vec<ListenerFile>,
    /// The HTTP listener (`/healthz`, `/readyz`, `/metrics`). Without it, none.
    pub http: Option<HttpFile>,
    /// Protection at connect: bans after failed AUTH, connection rates.
    pub protection: ProtectionFile,
    /// Outbound delivery.
    pub delivery: DeliveryFile,
    /// Checks of received mail on `mx` listeners: SPF at MAIL FROM; DKIM, ARC and DMARC at
    /// the end of data, recorded in an `Authentication-Results` header that plugins read.
    /// DNS goes to `delivery.nameservers` (or the system's resolver). Without this table
    /// no check runs.
    pub authentication: Option<AuthenticationFile>,
    /// DKIM signing keys. Mail from an authenticated client (or made by Sluice itself)
    /// whose `From:` domain has keys is signed with each of them at delivery, after
    /// per-recipient rendering. Several keys for one domain (a rotation) all sign.
    pub dkim: Vec<DkimFile>,
    /// Tracked links, open pixels and one-click unsubscribe (the `tracking` capability of
    /// policy steps, served on the HTTP listener's `/c/`, `/o/` and `/u/`). Needs `[http]`.
    pub tracking: Option<TrackingFile>,
    /// VERP return paths for mail from authenticated clients (asynchronous bounces matched
    /// to message and recipient).
    pub verp: Option<VerpFile>,
    /// Routes by recipient domain, tried in order; the first match wins. Without a match
    /// mail goes to the domain's MX hosts.
    pub route: Vec<RouteFile>,
    /// Policy files (a folder of `*.toml`, or one file) declaring the plugin chains. A
    /// relative path is taken from the configuration file's folder. Without it no plugin
    /// runs.
    pub policies: Option<PathBuf>,
    /// How plugins reach the network.
    pub plugins: PluginsFile,
}

/// `[plugins]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsFile {
    /// PEM files of CA certificates that plugin HTTPS requests trust besides the web PKI
    /// roots (an internal webhook receiver's CA). Relative paths are taken from the
    /// configuration file's folder.
    pub http_ca: Vec<PathBuf>,
}

impl Default for ConfigFile {
    fn default() -> Self {
        ConfigFile {
            hostname: "localhost".into(),
            data_dir: PathBuf::from("data"),
            queue_min_free: 64 * 1024 * 1024,
            queue_commit_interval: Duration::from_millis(2),
            local_domains: Vec::new(),
            relay_domains: Vec::new(),
            tls: TlsFile::default(),
            auth: AuthFile::default(),
            listener: Vec::new(),
            http: None,
            protection: ProtectionFile::default(),
            delivery: DeliveryFile::default(),
            authentication: None,
            dkim: Vec::new(),
            tracking: None,
            verp: None,
            route: Vec::new(),
            policies: None,
            plugins: PluginsFile::default(),
        }
    }
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFile {
    /// Address and port to listen on, such as `127.0.0.1:8025`. Bind it to loopback or a
    /// private network: `/metrics` has no authentication.
    pub bind: String,
}

/// Tracking links.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingFile {
    /// The public URL the HTTP listener is reached at by recipients, such as
    /// `https://t.example.com` (usually through a reverse proxy terminating TLS).
    pub base_url: String,
    /// A file holding the secret that signs tracking tokens (at least 32 bytes; for example
    /// `head -c 48 /dev/urandom | base64 > tracking.key`), relative to this file's folder.
    pub key: PathBuf,
    /// Earlier keys: links signed with them keep working after a rotation.
    #[serde(default)]
    pub previous_keys: Vec<PathBuf>,
    /// How long the host remembers a tracked message's context (message id, sender,
    /// metadata) for the events of its hits. Links keep working after it, with less in
    /// their events.
    #[serde(default = "default_tracking_retention", with = "humantime_serde")]
    pub retention: Duration,
}

fn default_tracking_retention() -> Duration {
    Duration::from_secs(90 * 86400)
}

/// VERP return paths for outbound mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerpFile {
    /// The bounce domain: mail from authenticated clients is sent with the envelope sender
    /// `<local_part>+<token>@<domain>`, one transaction per recipient, so that a bounce
    /// arriving later names the message and recipient. It must be one of `local_domains`,
    /// with a pipeline for it that runs the `bounces` plugin.
    pub domain: String,
    #[serde(default = "default_verp_local")]
    pub local_part: String,
    /// A file holding the secret that signs the tokens (at least 32 bytes), relative to
    /// this file's folder.
    pub key: PathBuf,
    /// Earlier keys: bounces to return paths signed with them are still recognised.
    #[serde(default)]
    pub previous_keys: Vec<PathBuf>,
}

fn default_verp_local() -> String {
    "bounces".into()
}

/// Authentication checks of received mail.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthenticationFile {
    /// The authserv-id in `Authentication-Results` (RFC 8601). Headers claiming it that
    /// arrive from outside are removed. Default: `hostname`.
    pub authserv_id: Option<String>,
    /// Longest time the checks of one message (or one MAIL FROM) may take; past it the
    /// unfinished results are `temperror`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AuthenticationFile {
    fn default() -> Self {
        AuthenticationFile {
            authserv_id: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One DKIM signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimFile {
    /// The signing domain (`d=`): mail whose `From:` address is in this domain is signed.
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8, 2048 bits or more) or Ed25519 (PKCS#8),
    /// relative to this file's folder.
    pub key: PathBuf,
    /// Header fields to sign. Default: From (over-signed), Reply-To, Subject, Date,
    /// Message-ID, To, Cc, MIME-Version, Content-Type, Content-Transfer-Encoding,
    /// In-Reply-To, References, List-Unsubscribe, List-Unsubscribe-Post. Naming a field
    /// twice over-signs it (a copy added in transit breaks the signature).
    #[serde(default)]
    pub headers: Vec<String>,
}

/// Protection at connect (what Fail2Ban and per-client rate limits do, built in). Bans are
/// kept in `<data_dir>/bans.json` and outlive a restart; failure counts and connection
/// rates start afresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtectionFile {
    /// Failed AUTH attempts from one address within `auth_window` that ban it. 0 turns
    /// banning off.
    pub auth_failures: u32,
    #[serde(with = "humantime_serde")]
    pub auth_window: Duration,
    /// How long a banned address gets `421 4.7.1` at connect.
    #[serde(with = "humantime_serde")]
    pub ban_for: Duration,
    /// New connections per minute from one address; more get `421 4.7.0`. 0: no limit.
    pub connections_per_minute: u32,
    /// New connections per minute from one network (/24 for IPv4, /64 for IPv6). 0: no
    /// limit.
    pub network_connections_per_minute: u32,
}

impl Default for ProtectionFile {
    fn default() -> Self {
        ProtectionFile {
            auth_failures: 5,
            auth_window: Duration::from_secs(600),
            ban_for: Duration::from_secs(3600),
            connections_per_minute: 0,
            network_connections_per_minute: 0,
        }
    }
}

/// STARTTLS certificate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    /// PEM certificate chain. With neither `cert` nor `key`, a self-signed certificate for
    /// `hostname` is made at first start and kept in `data_dir/tls/`.
    pub cert: Option<PathBuf>,
    /// PEM private key matching `cert`.
    pub key: Option<PathBuf>,
}

/// SMTP AUTH.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthFile {
    /// File of `user:argon2id-hash` lines, managed with `sluice user`. Default:
    /// `data_dir/users`.
    pub users_file: Option<PathBuf>,
}

/// One SMTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerFile {
    /// Name used in logs and policies.
    pub name: String,
    /// Address and port to listen on, such as `127.0.0.1:2525`.
    pub bind: String,
    /// `mx` (accepts mail for `local_domains` only) or `submission` (relays for
    /// authenticated users only).
    pub role: String,
    /// Offer STARTTLS. AUTH is only offered once TLS is up.
    pub starttls: bool,
    /// Concurrent connections; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Largest message in bytes, announced with SIZE; larger ones get `552 5.3.4`.
    pub max_message_size: usize,
    /// Longest command line in bytes, CRLF included (at least 512, RFC 5321 §4.5.3.1.4).
    pub max_line_length: usize,
    /// Time to wait for a command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Time to wait for each read while receiving message data.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Failed commands before the connection is closed with `421 4.7.0`.
    pub max_errors: usize,
}

impl Default for ListenerFile {
    fn default() -> Self {
        ListenerFile {
            name: String::new(),
            bind: String::new(),
            role: String::new(),
            starttls: true,
            max_connections: 1000,
            max_recipients: 100,
            max_message_size: 50 * 1024 * 1024,
            max_line_length: 4096,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_errors: 10,
        }
    }
}

/// Outbound delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryFile {
    /// Delivery attempts running at once, over all destinations.
    pub max_connections: usize,
    /// Connections at once to one destination (one smarthost, or one domain's MX set).
    pub max_connections_per_destination: usize,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: usize,
    /// How long an idle outbound connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Timeout for connecting to the next hop.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout for each reply of the next hop, and for writing each 64 KB of message data
    /// (the reply to end of data may take 10 minutes, RFC 5321 §4.5.3.2).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Longest one message's transaction on a connection may take, however slowly the next
    /// hop answers within its timeouts (a tarpit cannot hold a connection slot for ever).
    #[serde(with = "humantime_serde")]
    pub transaction_timeout: Duration,
    /// First retry delay after a temporary failure; doubled after every attempt.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Age after which a message that still fails temporarily is bounced.
    #[serde(with = "humantime_serde")]
    pub expire: Duration,
    /// Age after which a delay DSN is sent to recipients that asked with NOTIFY=DELAY.
    #[serde(with = "humantime_serde")]
    pub delay_notify_after: Duration,
    /// TLS to MX hosts: `opportunistic`, `required` (encrypted, certificate not checked),
    /// `verify` (encrypted and certificate checked against the web PKI roots) or `none`.
    pub tls: String,
    /// Port used for MX hosts.
    pub mx_port: u16,
    /// DNS servers (`ip:port`) for MX and address lookups; empty: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// DSNs carry the whole original message up to this size, headers only beyond.
    pub dsn_max_original: usize,
    /// First retry delay of an event an `event` step deferred; doubled after every try.
    #[serde(with = "humantime_serde")]
    pub event_retry_initial: Duration,
    /// Longest retry delay of an event.
    #[serde(with = "humantime_serde")]
    pub event_retry_max: Duration,
    /// Age after which an event no `event` step acknowledged is dropped (and logged).
    #[serde(with = "humantime_serde")]
    pub event_expire: Duration,
    /// How long every event (queued, each delivery attempt with the remote's reply,
    /// bounces, opens, ...) stays in the history that `sluice events`, `sluice queue
    /// history` and the API read; `0s` keeps none.
    #[serde(with = "humantime_serde")]
    pub event_history: Duration,
    /// How long a quarantined message is kept for an operator to release it; after that it
    /// is deleted (no notice to the sender), counted in `sluice_store_purged_total{store=
    /// "quarantine"}`. `0s` keeps quarantined mail until released or deleted.
    #[serde(with = "humantime_serde")]
    pub quarantine_retention: Duration,
}

impl Default for DeliveryFile {
    fn default() -> Self {
        DeliveryFile {
            max_connections: 200,
            max_connections_per_destination: 10,
            max_messages_per_connection: 100,
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            transaction_timeout: Duration::from_secs(30 * 60),
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(3600),
            expire: Duration::from_secs(5 * 86400),
            delay_notify_after: Duration::from_secs(4 * 3600),
            tls: "opportunistic".into(),
            mx_port: 25,
            nameservers: Vec::new(),
            dsn_max_original: 256 * 1024,
            event_retry_initial: Duration::from_secs(5),
            event_retry_max: Duration::from_secs(600),
            event_expire: Duration::from_secs(3 * 86400),
            event_history: Duration::from_secs(45 * 86400),
            quarantine_retention: Duration::from_secs(30 * 86400),
        }
    }
}

/// One route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteFile {
    /// Recipient domain: `example.com` (exactly), `.example.com` (its subdomains) or `*`.
    pub domain: String,
    /// `mx`, `smarthost` or `maildir`.
    pub via: String,
    /// For `smarthost`: `host:port`.
    pub host: Option<String>,
    /// TLS for this route, as `delivery.tls`; default: `delivery.tls`.
    pub tls: Option<String>,
}
