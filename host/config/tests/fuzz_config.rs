//! Property-based fuzzing of configuration loading: documents assembled from real keys with
//! random values, junk lines and random text. Properties: loading never panics; a refused
//! document reports at least one problem, each naming the file, with a line inside the
//! document (or 0 when none applies).
//!
//! CI runs `FUZZ_CASES` cases (default 64); a long run:
//! `FUZZ_CASES=20000 cargo test --release -p sluice-config --test fuzz_config`.

use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"127.0.0.1:2525\"".to_string()),
        Just("\"[::1]:25\"".to_string()),
        Just("\"mx\"".to_string()),
        Just("\"submission\"".to_string()),
        Just("\"5s\"".to_string()),
        Just("\"-1s\"".to_string()),
        Just("\"*\"".to_string()),
        Just("[\"localhost\", \"\"]".to_string()),
        Just("[]".to_string()),
        Just("true".to_string()),
        Just("{ a = 1 }".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u16>().prop_map(|n| n.to_string()),
        "\"[ -~]{0,20}\"".prop_map(|s| s.replace('\\', "")),
    ]
}

fn line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "hostname",
        "data_dir",
        "queue_min_free",
        "queue_commit_interval",
        "local_domains",
        "relay_domains",
        "policies",
        "name",
        "bind",
        "role",
        "max_connections",
        "max_recipients",
        "max_message_size",
        "max_line_length",
        "command_timeout",
        "data_timeout",
        "retry_initial",
        "retry_max",
        "expire",
        "tls",
        "mx_port",
        "nameservers",
        "domain",
        "via",
        "host",
        "users_file",
        "cert",
        "key",
        "no_such_key",
    ]);
    let tables = prop::sample::select(vec![
        "[[listener]]",
        "[delivery]",
        "[[route]]",
        "[tls]",
        "[auth]",
        "[listener]",
        "[[delivery]]",
        "[unknown]",
    ]);
    prop_oneof![
        6 => (keys, value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => tables.prop_map(str::to_string),
        1 => "[ -~]{0,40}",
        1 => Just("=".to_string()),
        1 => Just("\u{0}\u{feff}é".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn loading_never_panics_and_problems_are_located(lines in prop::collection::vec(line(), 0..30)) {
        let source = lines.join("\n");
        let total_lines = source.lines().count();
        if let Err(e) = sluice_config::load_str(&source, "fuzz.toml") {
            let problems = e.problems();
            prop_assert!(!problems.is_empty(), "an error without problems: {e}");
            for p in problems {
                prop_assert_eq!(&p.file, "fuzz.toml");
                prop_assert!(p.line <= total_lines.max(1), "line {} of {}: {}", p.line, total_lines, p);
                prop_assert!(!p.message.is_empty());
            }
        }
    }
}
