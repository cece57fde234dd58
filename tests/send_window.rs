//! Send windows: outside its hours a message waits in the queue (each attempt deferred with
//! the next opening named); once the window is open (here: the policy reloaded with one)
//! the next attempt delivers it.

mod support;

use sluice_test_plugins::SEND_WINDOW;
use std::time::Duration;
use support::{Client, Sink, Sluice, wait_until};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn policy(days: &[&str]) -> String {
    let days: Vec<String> = days.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[[pipeline]]\nname = \"all\"\n[[pipeline.step]]\nname = \"window\"\nplugin = \"{}\"\nsha256 = \"{}\"\nstages = [\"delivery\"]\n[pipeline.step.config]\ntime_zone = \"UTC\"\nwindows = [{{ days = [{}], start = \"00:00\", end = \"00:00\" }}]\n",
        SEND_WINDOW.path,
        SEND_WINDOW.sha256,
        days.join(", ")
    )
}

#[test]
fn mail_waits_for_the_window_and_leaves_when_it_opens() {
    let today = {
        // Days since 1970-01-01, a Thursday.
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86400;
        DAYS[((days + 3) % 7) as usize]
    };
    let closed: Vec<&str> = DAYS.iter().copied().filter(|d| *d != today).collect();
    let sink = Sink::start();
    let s = Sluice::configure_with(
        "policies = \"policy.toml\"\nrelay_domains = [\"remote.test\"]",
        "",
        &support::route_to(sink.port),
    );
    std::fs::write(s.dir.path().join("policy.toml"), policy(&closed)).unwrap();
    let s = s.spawn();
    let mut c = Client::connect(s.mx_port);
    c.cmd("EHLO client.test");
    let r = c.send_mail(
        "app@example.com",
        &["x@remote.test"],
        "From: app@example.com\r\nSubject: later\r\n\r\nHeld until the window.\r\n",
    );
    assert!(r.starts_with("250"), "{r}");
    assert!(
        wait_until(Duration::from_secs(10), || s
            .log()
            .contains("Outside the send window until")),
        "{}",
        s.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(sink.messages().is_empty(), "delivered outside the window");

    std::fs::write(s.dir.path().join("policy.toml"), policy(&DAYS)).unwrap();
    s.cli_ok(&["reload"]);
    assert!(
        wait_until(Duration::from_secs(20), || sink.messages().len() == 1),
        "{}",
        s.log()
    );
}
