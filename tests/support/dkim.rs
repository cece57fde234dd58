//! DKIM test keys (`openssl genpkey`) and dkimpy, the independent verifier, with a lookup
//! function serving the test records (its CLI would need DNS).

use std::path::{Path, PathBuf};

/// `openssl genpkey` output and the public key as a DKIM record's `p=`.
pub fn keypair(dir: &Path, name: &str, algorithm: &[&str]) -> (PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let ok = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(algorithm)
        .arg("-out")
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .unwrap()
        .stdout;
    // Ed25519 records carry the raw 32-byte key, RSA ones the SubjectPublicKeyInfo.
    let public = if algorithm.contains(&"ed25519") {
        der[der.len() - 32..].to_vec()
    } else {
        der
    };
    use base64::Engine;
    (
        key,
        base64::engine::general_purpose::STANDARD.encode(public),
    )
}

/// An RSA-2048 key pair.
pub fn rsa(dir: &Path, name: &str) -> (PathBuf, String) {
    keypair(
        dir,
        name,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
}

/// dkimpy on `message`, keys served by a lookup function; one result per signature.
pub fn dkimpy(message: &[u8], records: &[(&str, String)], dir: &Path) -> Vec<bool> {
    let file = dir.join("signed.eml");
    std::fs::write(&file, message).unwrap();
    let keys: Vec<String> = records
        .iter()
        .map(|(name, rec)| format!("{name:?}: {rec:?}"))
        .collect();
    let script = format!(
        r#"
import dkim, sys
keys = {{{keys}}}
def dns(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = keys.get(n.rstrip('.'))
    return v.encode() if v else None
msg = open(sys.argv[1], 'rb').read()
d = dkim.DKIM(msg)
for i in range(msg.count(b'\nDKIM-Signature:') + msg.startswith(b'DKIM-Signature:')):
    try:
        print(d.verify(idx=i, dnsfunc=dns))
    except dkim.DKIMException as e:
        print(False, e)
"#,
        keys = keys.join(", ")
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim() == "True")
        .collect()
}
