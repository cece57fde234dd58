//! VERP return paths: `<local>+<token>@<bounce domain>` (RFC 5321 allows any local part; the
//! `+` keeps the base address readable). Delivery sends each recipient of an outbound
//! message with its own envelope sender, so a bounce or auto-reply arriving days later names
//! the message and the recipient, whatever the report inside says (forwarding addresses,
//! prose bounces, missing returned headers).
//!
//! The token is `<queue id>.<recipient index, hex>.<tag>`, the tag being the first 6 bytes
//! of HMAC-SHA256 over both under the current key (hex), checked under every key (rotation).
//! A forged or altered address decodes to nothing. Local parts stay under RFC 5321's 64
//! octets (`bounces+` and a 20-character queue id: 44). Decoding ignores case: some MTAs
//! change it.

use crate::Keys;
use aws_lc_rs::hmac;

const TAG_BYTES: usize = 6;

fn signed(queue_id: &str, index: usize) -> Vec<u8> {
    format!("verp\0{queue_id}\0{index}").into_bytes()
}

fn tag(key: &hmac::Key, queue_id: &str, index: usize) -> hmac::Tag {
    hmac::sign(key, &signed(queue_id, index))
}

/// The return path for recipient `index` of message `queue_id`.
pub fn address(keys: &Keys, local: &str, domain: &str, queue_id: &str, index: usize) -> String {
    format!(
        "{local}+{queue_id}.{index:x}.{}@{domain}",
        hex::encode(&tag(&keys.keys[0], queue_id, index).as_ref()[..TAG_BYTES])
    )
}

/// The queue id and recipient index of one of our VERP addresses; none for any other
/// address, or one whose tag is wrong.
pub fn decode(keys: &Keys, local: &str, domain: &str, address: &str) -> Option<(String, usize)> {
    let (lp, d) = address.rsplit_once('@')?;
    if !d.eq_ignore_ascii_case(domain) {
        return None;
    }
    let (prefix, token) = lp.split_once('+')?;
    if !prefix.eq_ignore_ascii_case(local) {
        return None;
    }
    let mut parts = token.split('.');
    let queue_id = parts.next()?.to_ascii_uppercase();
    let index = usize::from_str_radix(parts.next()?, 16).ok()?;
    let given = hex::decode(parts.next()?).ok()?;
    if parts.next().is_some()
        || queue_id.is_empty()
        || queue_id.len() > 64
        || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric())
        || given.len() != TAG_BYTES
    {
        return None;
    }
    keys.keys
        .iter()
        .any(|k| crate::same_mac(&tag(k, &queue_id, index).as_ref()[..TAG_BYTES], &given))
        .then_some((queue_id, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef", &[])
    }

    #[test]
    fn addresses_decode_to_message_and_recipient() {
        let k = keys();
        let a = address(
            &k,
            "bounces",
            "bounces.example.com",
            "0191A2B3C4D5E6F708A1",
            3,
        );
        assert!(a.starts_with("bounces+0191A2B3C4D5E6F708A1.3."), "{a}");
        assert!(a.split('@').next().unwrap().len() <= 64);
        assert_eq!(
            decode(&k, "bounces", "bounces.example.com", &a),
            Some(("0191A2B3C4D5E6F708A1".to_string(), 3))
        );
        // Case changed on the way: still ours.
        assert_eq!(
            decode(
                &k,
                "bounces",
                "bounces.example.com",
                &a.to_ascii_lowercase()
            ),
            Some(("0191A2B3C4D5E6F708A1".to_string(), 3))
        );
    }

    #[test]
    fn forged_or_foreign_addresses_decode_to_nothing() {
        let k = keys();
        let a = address(
            &k,
            "bounces",
            "bounces.example.com",
            "0191A2B3C4D5E6F708A1",
            3,
        );
        let other_index = a.replace(".3.", ".4.");
        assert_eq!(
            decode(&k, "bounces", "bounces.example.com", &other_index),
            None
        );
        assert_eq!(decode(&k, "bounces", "other.example.com", &a), None);
        assert_eq!(decode(&k, "returns", "bounces.example.com", &a), None);
        let other_key = Keys::new(b"another key of thirty-two bytes!!", &[]);
        assert_eq!(
            decode(&other_key, "bounces", "bounces.example.com", &a),
            None
        );
        // Rotation: a previous key still decodes.
        let rotated = Keys::new(
            b"another key of thirty-two bytes!!",
            &[b"0123456789abcdef0123456789abcdef".to_vec()],
        );
        assert!(decode(&rotated, "bounces", "bounces.example.com", &a).is_some());
        for bad in [
            "bounces@bounces.example.com",
            "bounces+x@bounces.example.com",
            "bounces+a.b.c.d@bounces.example.com",
            "x",
        ] {
            assert_eq!(
                decode(&k, "bounces", "bounces.example.com", bad),
                None,
                "{bad}"
            );
        }
    }
}
