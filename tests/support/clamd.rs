//! A real clamd (Debian's clamav-daemon) on 127.0.0.1 with a signature database written here:
//! an MD5 signature of the EICAR test file, so no download is needed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The EICAR anti-virus test file.
pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
/// The name clamd reports for it with the database below.
pub const SIGNATURE: &str = "Sluice-Test-EICAR.UNOFFICIAL";

pub struct Clamd {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Clamd {
    pub fn start() -> Clamd {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir_all(&db).unwrap();
        let md5 = {
            let out = Command::new("sigtool")
                .arg("--md5")
                .arg(write(&dir.path().join("eicar.com"), EICAR))
                .output()
                .expect("sigtool (clamav, installed by scripts/setup.sh)");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let (hash, size) = {
            let mut f = md5.split(':');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        };
        std::fs::write(
            db.join("test.hdb"),
            format!("{hash}:{size}:Sluice-Test-EICAR\n"),
        )
        .unwrap();
        let port = super::free_port();
        let conf = write(
            &dir.path().join("clamd.conf"),
            &format!(
                "Foreground yes\nTCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {}\nLogFile {}\n",
                db.display(),
                dir.path().join("clamd.log").display()
            ),
        );
        let child = Command::new("clamd")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("clamd (clamav-daemon, installed by scripts/setup.sh)");
        let up = super::wait_until(Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "clamd did not start");
        Clamd {
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    /// Stops clamd (by its PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &std::path::Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}
