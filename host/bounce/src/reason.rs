//! Why a recipient failed, from its enhanced status code (RFC 3463) and the diagnostic text
//! the remote server gave. The text wins over the code when it names a cause: servers put
//! `5.0.0` or `5.5.0` on everything, and many say "mailbox full" with `5.1.1`.

/// The cause of a failure, in classes an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The mailbox does not exist.
    UserUnknown,
    /// The domain does not exist or has no mail host.
    HostUnknown,
    /// The recipient moved (RFC 3463 5.1.6).
    HasMoved,
    /// The domain accepts no mail at all (null MX, RFC 7505).
    NotAccept,
    MailboxFull,
    MessageTooBig,
    /// The mailbox exists but is disabled or suspended.
    Suspended,
    /// Refused by policy, reputation, authentication (SPF/DKIM/DMARC), blocklists or as spam.
    Blocked,
    /// Given up after retrying (RFC 3463 4.4.7 / 5.4.7).
    Expired,
    /// Network, DNS or remote system trouble.
    SystemError,
    /// Delivered after all, or an auto-reply rather than a failure.
    NotAFailure,
    Undefined,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::UserUnknown => "user-unknown",
            Reason::HostUnknown => "host-unknown",
            Reason::HasMoved => "has-moved",
            Reason::NotAccept => "not-accept",
            Reason::MailboxFull => "mailbox-full",
            Reason::MessageTooBig => "message-too-big",
            Reason::Suspended => "suspended",
            Reason::Blocked => "blocked",
            Reason::Expired => "expired",
            Reason::SystemError => "system-error",
            Reason::NotAFailure => "not-a-failure",
            Reason::Undefined => "undefined",
        }
    }

    /// Whether sending to the address again is pointless: the address or its domain does
    /// not exist, moved, or takes no mail. Everything else (full, blocked, too big,
    /// expired, ...) may pass another day. A temporary report of an unknown user ("450
    /// 4.1.1 User unknown") counts as hard too: the remote is only slower to say it (the
    /// labelled corpus in `tests/corpus.rs` agrees); a domain that does not resolve is hard
    /// only in a permanent report.
    pub fn is_hard(self, permanent: bool) -> bool {
        match self {
            Reason::UserUnknown | Reason::HasMoved => true,
            // A domain that fails to resolve now may resolve tomorrow: hard only when the
            // report says it is final.
            Reason::HostUnknown | Reason::NotAccept => permanent,
            _ => false,
        }
    }
}

/// Phrases (lowercase) naming a cause, tried in order: the first that occurs wins.
const PHRASES: &[(Reason, &[&str])] = &[
    (
        Reason::NotAFailure,
        &[
            "auto-reply",
            "autoreply",
            "out of the office",
            "out of office",
            "on vacation",
        ],
    ),
    (
        Reason::HasMoved,
        &[
            "has been moved",
            "has moved",
            "address has changed",
            "no longer valid; please use",
        ],
    ),
    (
        Reason::NotAccept,
        &[
            "does not accept mail",
            "doesn't accept mail",
            "null mx",
            "accepts no mail",
            "no mx found",
        ],
    ),
    (
        Reason::UserUnknown,
        &[
            "user unknown",
            "unknown user",
            "unknown recipient",
            "recipient unknown",
            "no such user",
            "no such mailbox",
            "no such recipient",
            "no such address",
            "no such account",
            "user not found",
            "mailbox not found",
            "recipient not found",
            "address not found",
            "account does not exist",
            "address does not exist",
            "mailbox does not exist",
            "user does not exist",
            "recipient does not exist",
            "does not exist",
            "doesn't exist",
            "not exist",
            "invalid recipient",
            "invalid mailbox",
            "invalid address",
            "is not a valid mailbox",
            "not a valid user",
            "no mailbox",
            "inactive email address",
            "address couldn't be found",
            "couldn't be found",
            "invalid final delivery userid",
            "no valid recipients",
            "please check if address is correct",
            "mailbox unavailable",
            "mailbox not available",
            "unknown local part",
            "unknown or illegal alias",
            "user invalid",
            "bad destination mailbox",
            "address rejected",
            "recipient address rejected",
            "undeliverable address",
            "addressee unknown",
            "not our customer",
            "no account by that name",
            "not listed",
            "user doesn't have",
        ],
    ),
    (
        Reason::MailboxFull,
        &[
            "mailbox full",
            "mailbox is full",
            "mailbox size limit",
            "mailbox has exceeded",
            "over quota",
            "overquota",
            "quota exceeded",
            "exceeded storage",
            "exceeds the quota",
            "exceed the quota",
            "exceeded the quota",
            "quota exceed",
            "out of storage",
            "not enough space",
            "insufficient disk space",
            "user is over",
            "is full",
            "too many messages",
            "mail box full",
            "disk quota",
            "quota",
        ],
    ),
    (
        Reason::MessageTooBig,
        &[
            "message too big",
            "message too large",
            "message is too large",
            "message size exceeds",
            "exceeds size limit",
            "size limit",
            "message length exceeds",
            "too big for",
            "message size",
        ],
    ),
    (
        Reason::Suspended,
        &[
            "account disabled",
            "account has been disabled",
            "has been disabled",
            "is disabled",
            "account is disabled",
            "suspended",
            "inactive",
            "not active",
            "account expired",
            "deactivated",
            "mailbox unavailable or access denied",
            "is locked",
            "account locked",
            "temporarily unavailable",
        ],
    ),
    (
        Reason::HostUnknown,
        &[
            "host unknown",
            "unknown host",
            "host not found",
            "domain not found",
            "no such domain",
            "domain does not exist",
            "domain name not found",
            "unrouteable address",
            "unroutable address",
            "name or service not known",
            "host or domain name not found",
            "no mx",
            "mx record",
            "unknown domain",
            "domain is not valid",
            "nxdomain",
            "illegal host/domain",
            "couldn't find a mail exchanger",
            "invalid domain",
            "domain is not reachable",
        ],
    ),
    (
        Reason::Expired,
        &[
            "expired",
            "retry timeout exceeded",
            "retry time not reached",
            "giving up",
            "gave up",
            "could not be delivered for",
            "delivery time",
            "been delayed",
            "too long",
            "timed out",
        ],
    ),
    (
        Reason::Blocked,
        &[
            "spam",
            "blocked",
            "blacklist",
            "blocklist",
            "block list",
            "black list",
            "rejected",
            "refused",
            "denied",
            "policy",
            "reputation",
            "not allowed",
            "spf",
            "dkim",
            "dmarc",
            "authentication",
            "relay",
            "virus",
            "content",
            "reverse",
            "ptr",
            "rate limit",
            "too many",
            "filtered",
            "prohibited",
            "unsolicited",
            "banned",
        ],
    ),
    (
        Reason::SystemError,
        &[
            "connection",
            "network",
            "dns",
            "system error",
            "server error",
            "internal error",
            "temporary",
            "local error",
            "i/o error",
            "loop",
            "too many hops",
        ],
    ),
];

/// Where in the SMTP dialogue the remote refused, when the text says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Mail,
    Rcpt,
    Data,
}

/// The command the refusal at byte `at` of `lower` answered: the last one named before it
/// (a transcript: `>>> RCPT TO` then `<<< 550 ...`), or else the first one named after it
/// (`550 ... (in reply to end of DATA command)`).
fn command(lower: &str, at: usize) -> Option<Command> {
    const PATTERNS: &[(Command, &[&str])] = &[
        (
            Command::Data,
            &[
                "end of data",
                "after data",
                ">>> data",
                "in reply to data",
                "smtp command data",
                "command data",
            ],
        ),
        (
            Command::Mail,
            &[
                "after mail from",
                "in reply to mail from",
                ">>> mail from",
                "[mail_from]",
            ],
        ),
        (
            Command::Rcpt,
            &[
                "after rcpt to",
                "in reply to rcpt to",
                ">>> rcpt to",
                "rcpt to response",
            ],
        ),
    ];
    let named: Vec<(usize, Command)> = PATTERNS
        .iter()
        .flat_map(|(c, ps)| {
            ps.iter()
                .flat_map(move |p| lower.match_indices(p).map(move |(i, _)| (i, *c)))
        })
        .collect();
    named
        .iter()
        .filter(|(i, _)| *i < at)
        .max_by_key(|(i, _)| *i)
        .or_else(|| {
            named
                .iter()
                .filter(|(i, _)| *i >= at)
                .min_by_key(|(i, _)| *i)
        })
        .map(|(_, c)| *c)
}

/// Phrases about the sender, not the recipient.
const SENDER_PHRASES: &[&str] = &[
    "sender address rejected",
    "domain of sender address",
    "sender rejected",
    "sender domain",
    "sender verify failed",
    "sender is not allowed",
    "my name was rejected",
];

/// Phrases no filter uses: the mailbox is not there, whatever the command or status.
const UNMISTAKABLE: &[&str] = &[
    "invalid recipient",
    "doesn't have a",
    "inactive email address",
];

/// Domains whose servers refuse mail their filters stop with a "user unknown" that names
/// no address (`550 : User unknown`, au/KDDI's ezweb.ne.jp), while a real unknown user gets
/// `550 <address>: User unknown`.
const FILTER_SAYS_UNKNOWN: &[&str] = &["ezweb.ne.jp"];

/// [`classify`] for a recipient, with `context` (more of the report about it, read for
/// the refused SMTP command): some domains' words mean something else.
pub fn classify_for(recipient: &str, status: &str, text: &str, context: &str) -> Reason {
    let reason = classify_in(status, text, context);
    let domain = recipient.rsplit('@').next().unwrap_or_default();
    if reason == Reason::UserUnknown
        && FILTER_SAYS_UNKNOWN.contains(&domain)
        && text.to_ascii_lowercase().contains(" : user unknown")
    {
        return Reason::Blocked;
    }
    reason
}

/// The cause from `status` (such as "5.1.1"; may be empty) and `text` (any case).
pub fn classify(status: &str, text: &str) -> Reason {
    classify_in(status, text, "")
}

/// Like [`classify`], with `context`: more of the report about this recipient (an SMTP
/// transcript), read only for the command the remote refused at.
fn classify_in(status: &str, text: &str, context: &str) -> Reason {
    let lower = text.to_ascii_lowercase();
    // Specific status codes a server only sends for that cause.
    match status {
        "5.1.6" => return Reason::HasMoved,
        "5.1.10" | "5.7.27" => return Reason::NotAccept,
        "4.4.7" | "5.4.7" => return Reason::Expired,
        "5.1.7" | "5.1.8" | "4.1.7" | "4.1.8" => return Reason::Blocked,
        "5.2.2" | "4.2.2" => return Reason::MailboxFull,
        _ => {}
    }
    if SENDER_PHRASES.iter().any(|p| lower.contains(p)) {
        return Reason::Blocked;
    }
    let found = PHRASES.iter().find_map(|(r, phrases)| {
        phrases
            .iter()
            .filter_map(|p| lower.find(p))
            .min()
            .map(|at| (*r, at))
    });
    if let Some((reason, at)) = found {
        if matches!(reason, Reason::UserUnknown | Reason::HostUnknown) {
            // "User unknown" after the message was sent, or to the sender, is a filter
            // speaking; with a status about the mailbox, policy or system, the status says
            // more than the words.
            let context = format!("{lower}\n{}", context.to_ascii_lowercase());
            let subject = status.split('.').nth(1).unwrap_or_default();
            // An address status (X.1.X) is about the address, whatever the command.
            if UNMISTAKABLE.iter().any(|p| lower.contains(p)) {
                return reason;
            }
            if subject != "1"
                && matches!(command(&context, at), Some(Command::Data | Command::Mail))
            {
                return Reason::Blocked;
            }
            if matches!(subject, "3" | "7") {
                return by_status(status);
            }
        }
        return reason;
    }
    by_status(status)
}

fn by_status(status: &str) -> Reason {
    if status.starts_with('2') {
        return Reason::NotAFailure;
    }
    match status.split('.').take(2).collect::<Vec<_>>().as_slice() {
        [_, "1"] => match status {
            "5.1.2" | "4.1.2" => Reason::HostUnknown,
            _ => Reason::UserUnknown,
        },
        [_, "2"] => match status {
            "5.2.2" | "4.2.2" => Reason::MailboxFull,
            "5.2.3" | "4.2.3" => Reason::MessageTooBig,
            "5.2.1" | "4.2.1" => Reason::Suspended,
            _ => Reason::Blocked,
        },
        [_, "3"] => match status {
            "5.3.4" | "4.3.4" => Reason::MessageTooBig,
            _ => Reason::SystemError,
        },
        [_, "4"] => Reason::SystemError,
        [_, "7"] => Reason::Blocked,
        [c, _] if *c == "2" => Reason::NotAFailure,
        _ => Reason::Undefined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_the_cause_before_the_code() {
        assert_eq!(
            classify("5.1.1", "550 5.1.1 User unknown"),
            Reason::UserUnknown
        );
        assert_eq!(classify("5.1.1", "552 mailbox full"), Reason::MailboxFull);
        assert_eq!(classify("5.0.0", "550 Host unknown"), Reason::HostUnknown);
        assert_eq!(classify("5.7.1", "554 rejected as spam"), Reason::Blocked);
        assert_eq!(classify("5.4.7", "delivery expired"), Reason::Expired);
        assert_eq!(classify("5.1.10", "null MX"), Reason::NotAccept);
        assert_eq!(classify("5.2.2", ""), Reason::MailboxFull);
        assert_eq!(classify("", "something odd"), Reason::Undefined);
    }

    #[test]
    fn only_dead_addresses_are_hard() {
        assert!(Reason::UserUnknown.is_hard(false));
        assert!(Reason::HostUnknown.is_hard(true));
        assert!(!Reason::HostUnknown.is_hard(false));
        assert!(!Reason::MailboxFull.is_hard(true));
        assert!(!Reason::Blocked.is_hard(true));
        assert_eq!(
            classify(
                "5.0.0",
                "550 Unknown user (in reply to end of DATA command)"
            ),
            Reason::Blocked
        );
        assert_eq!(
            classify(
                "5.1.8",
                "553 5.1.8 Domain of sender address x does not exist"
            ),
            Reason::Blocked
        );
    }
}
