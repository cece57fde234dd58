//! Local delivery to Maildir: `<root>/<domain>/<local part>/{tmp,new,cur}`.
//!
//! The message is written to `tmp/`, synced, and renamed into `new/`, so a reader never
//! sees half a message and a crash leaves at most a file in `tmp/`.

use crate::Outcome;
use sluice_core::Reply;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The mailbox folder of an address, or `None` when the address cannot name one safely.
pub fn mailbox_path(root: &Path, address: &str) -> Option<PathBuf> {
    let (local, domain) = address.rsplit_once('@')?;
    let ok = |s: &str| {
        !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']) && s.len() <= 255
    };
    let (local, domain) = (local.to_lowercase(), domain.to_ascii_lowercase());
    (ok(&local) && ok(&domain)).then(|| root.join(domain).join(local))
}

/// Delivers one copy. Blocking: call from a blocking thread.
pub fn deliver(root: &Path, hostname: &str, sender: &str, recipient: &str, body: &[u8]) -> Outcome {
    let Some(mailbox) = mailbox_path(root, recipient) else {
        return Outcome::Failed {
            reply: Reply::new(
                550,
                "5.1.3",
                format!("cannot deliver to mailbox name {recipient}"),
            ),
            remote: None,
        };
    };
    match write(&mailbox, hostname, sender, recipient, body) {
        Ok(name) => Outcome::Delivered {
            reply: Reply::new(250, "2.0.0", format!("delivered to maildir as {name}")),
            remote: None,
            dsn_passed_on: false,
            final_delivery: true,
        },
        Err(e) => Outcome::Deferred {
            reply: Reply::new(451, "4.3.0", format!("maildir write failed: {e}")),
            remote: None,
        },
    }
}

fn write(
    mailbox: &Path,
    hostname: &str,
    sender: &str,
    recipient: &str,
    body: &[u8],
) -> std::io::Result<String> {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(mailbox.join(sub))?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        hostname.replace(['/', ':'], "_"),
    );
    let tmp = mailbox.join("tmp").join(&name);
    let mut f = std::fs::File::create(&tmp)?;
    write!(
        f,
        "Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n"
    )?;
    f.write_all(body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, mailbox.join("new").join(&name))?;
    std::fs::File::open(mailbox.join("new"))?.sync_all()?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_path_tricks() {
        let root = Path::new("/m");
        assert_eq!(
            mailbox_path(root, "Bob@LocalHost"),
            Some(PathBuf::from("/m/localhost/bob"))
        );
        assert_eq!(mailbox_path(root, "../x@localhost"), None);
        assert_eq!(mailbox_path(root, "a/b@localhost"), None);
        assert_eq!(mailbox_path(root, "a@.."), None);
    }

    #[test]
    fn delivers_into_new() {
        let dir = tempfile::tempdir().unwrap();
        let out = deliver(
            dir.path(),
            "h",
            "s@x",
            "u@localhost",
            b"Subject: x\r\n\r\nhi\r\n",
        );
        assert!(matches!(out, Outcome::Delivered { .. }), "{out:?}");
        let new = dir.path().join("localhost/u/new");
        let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
        assert_eq!(files.len(), 1);
        let text = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
        assert!(text.starts_with("Return-Path: <s@x>\r\nDelivered-To: u@localhost\r\n"));
        assert!(text.ends_with("hi\r\n"));
    }
}
