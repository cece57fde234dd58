use super::*;

/// Opens the archive, waiting for a dropped one's sled threads to let go of the lock.
fn open(dir: &Path) -> Archive {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Archive::open(dir) {
            Ok(a) => return a,
            Err(e) if std::time::Instant::now() < until && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn attrs(qid: &str, from: &str, to: &[&str], subject: &str) -> Vec<(String, String)> {
    let mut a = vec![
        (keys::QUEUE_ID.to_string(), qid.to_string()),
        (keys::MESSAGE_ID.to_string(), format!("<{qid}@example.org>")),
        (keys::SENDER.to_string(), from.to_string()),
        (keys::SUBJECT.to_string(), subject.to_string()),
    ];
    for t in to {
        a.push((keys::RECIPIENT.to_string(), t.to_string()));
    }
    a
}

/// `n` messages Q0.. from a@a.test to b@b.test, kept 45 days.
fn fill(a: &Archive, n: usize) {
    for i in 0..n {
        a.put(
            "in",
            &message(i),
            attrs(&format!("Q{i}"), "a@a.test", &["b@b.test"], "x"),
            45,
        )
        .unwrap();
    }
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: a@example.org\r\nSubject: test {n}\r\n\r\n{}\r\n",
        "line of text\r\n".repeat(50 + n)
    )
    .into_bytes()
}

fn ids(p: &Page) -> Vec<u64> {
    p.entries.iter().map(|e| e.id).collect()
}

#[test]
fn put_get_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let e1 = a
        .put(
            "in",
            &message(1),
            attrs(
                "Q1",
                "Alice@Example.org",
                &["bob@b.test"],
                "Invoice for March",
            ),
            45,
        )
        .unwrap();
    let e2 = a
        .put(
            "in",
            &message(2),
            attrs(
                "Q2",
                "carol@c.test",
                &["bob@b.test", "dan@d.test"],
                "Re: invoice",
            ),
            45,
        )
        .unwrap();
    let e3 = a
        .put(
            "out",
            &message(3),
            attrs("Q3", "alice@example.org", &["erin@d.test"], "Hello"),
            45,
        )
        .unwrap();
    assert_eq!((e1.id, e2.id, e3.id), (1, 2, 3));
    let (got, raw) = a.get(2).unwrap().unwrap();
    assert_eq!(got, e2);
    assert_eq!(raw, message(2));
    assert!(a.get(9).unwrap().is_none());

    let q = |f: &dyn Fn(&mut Query)| {
        let mut q = Query::default();
        f(&mut q);
        ids(&a.search(&q).unwrap())
    };
    assert_eq!(q(&|q| q.recipient = Some("BOB@b.test".into())), [2, 1]);
    assert_eq!(q(&|q| q.recipient = Some("@d.test".into())), [3, 2]);
    assert_eq!(q(&|q| q.sender = Some("alice@example.org".into())), [3, 1]);
    assert_eq!(q(&|q| q.sender = Some("@example.org".into())), [3, 1]);
    assert_eq!(q(&|q| q.subject = Some("INVOICE".into())), [2, 1]);
    assert_eq!(q(&|q| q.subject = Some("invoice march".into())), [1]);
    assert_eq!(
        q(&|q| q.subject = Some("invoice april".into())),
        Vec::<u64>::new()
    );
    assert_eq!(q(&|q| q.message_id = Some("Q3@example.org".into())), [3]);
    assert_eq!(q(&|q| q.queue_id = Some("Q2".into())), [2]);
    assert_eq!(q(&|q| q.namespace = Some("in".into())), [2, 1]);
    assert_eq!(
        q(&|q| {
            q.recipient = Some("bob@b.test".into());
            q.sender = Some("carol@c.test".into());
        }),
        [2]
    );
    assert_eq!(q(&|_| {}), [3, 2, 1]);
    // Dates: everything was created now.
    let now = now_ms() / 1000;
    assert_eq!(q(&|q| q.since = Some(now - 60)), [3, 2, 1]);
    assert_eq!(q(&|q| q.since = Some(now + 60)), Vec::<u64>::new());
    assert_eq!(q(&|q| q.until = Some(now - 60)), Vec::<u64>::new());
    assert_eq!(q(&|q| q.until = Some(now + 60)), [3, 2, 1]);
    assert_eq!(
        q(&|q| q.subject = Some("a !".into())),
        [3, 2, 1],
        "nothing to narrow by"
    );
    // Paging.
    let page = a
        .search(&Query {
            limit: 2,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&page), [3, 2]);
    assert_eq!(page.next, Some(2));
    let page = a
        .search(&Query {
            limit: 2,
            before: page.next,
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&page), [1]);
    assert_eq!(page.next, None);
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.messages, 3);
    assert_eq!(v.head.as_ref().map(|h| h.0), Some(3));
}

#[test]
fn date_ranges_find_the_id_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    // One entry per second (created times only grow, from the last one): the boundaries
    // fall between entries, so the binary search over ids has work to do.
    let base = now_ms();
    for i in 0..40 {
        a.writer.lock().unwrap().last_ms = base + 1000 * i;
        a.put(
            "in",
            &message(i as usize),
            attrs(&format!("Q{i}"), "a@a.test", &["b@b.test"], "x"),
            30,
        )
        .unwrap();
    }
    let all: Vec<Entry> = a.list(None, None, 100).unwrap();
    assert_eq!(all.len(), 40);
    let seconds: std::collections::HashSet<u64> = all.iter().map(|e| e.created_ms / 1000).collect();
    assert_eq!(seconds.len(), 40);
    // Every boundary at an entry's creation time splits the list there.
    for e in &all {
        let secs = e.created_ms / 1000;
        let newer = a
            .search(&Query {
                since: Some(secs),
                limit: 1000,
                ..Query::default()
            })
            .unwrap();
        let want = all.iter().filter(|x| x.created_ms >= secs * 1000).count();
        assert_eq!(newer.entries.len(), want);
    }
}

#[test]
fn a_retried_queue_id_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    let e1 = a
        .put(
            "in",
            &message(1),
            attrs("Q1", "a@a.test", &["b@b.test"], "x"),
            45,
        )
        .unwrap();
    let again = a
        .put(
            "in",
            &message(1),
            attrs("Q1", "a@a.test", &["b@b.test"], "x"),
            45,
        )
        .unwrap();
    assert_eq!(e1, again);
    // Another namespace keeps its own copy.
    let other = a
        .put(
            "out",
            &message(1),
            attrs("Q1", "a@a.test", &["b@b.test"], "x"),
            45,
        )
        .unwrap();
    assert_eq!(other.id, 2);
}

#[test]
fn verify_finds_altered_messages_metadata_and_removed_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = open(dir.path());
        fill(&a, 5);
        assert!(a.verify().unwrap().problems.is_empty());
        // A changed byte in a stored message (the record's CRC is recomputed, as a careful
        // forger would).
        let (entry, slot) = a.index.live(3).unwrap().unwrap();
        let path = a.segments().join(slot.seg.file_name());
        let mut f = File::open(&path).unwrap();
        let (record, _) = segment::read_at(&mut f, slot.offset, slot.len).unwrap();
        let mut forged = message(2);
        forged[10] ^= 1;
        let body = zstd::bulk::compress(&forged, 3).unwrap();
        let bytes = segment::encode(&record, &body).unwrap();
        let mut data = std::fs::read(&path).unwrap();
        data.splice(
            slot.offset as usize..(slot.offset + u64::from(slot.len)) as usize,
            bytes.iter().copied(),
        );
        std::fs::write(&path, &data).unwrap();
        // Later records moved: re-point the index at them, as a forger would.
        drop(f);
        let shift = bytes.len() as i64 - i64::from(slot.len);
        for id in 3..=5 {
            let (e, mut s) = a.index.live(id).unwrap().unwrap();
            let (_, _, chain) = match a.index.stored(id).unwrap().unwrap() {
                index::Stored::Live(e, s, c) => (e, s, c),
                _ => unreachable!(),
            };
            if id == 3 {
                s.len = bytes.len() as u32;
            } else {
                s.offset = (s.offset as i64 + shift) as u64;
            }
            a.index.insert(&Record { entry: e, chain }, s, 0).unwrap();
        }
        let v = a.verify().unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("entry 3") && p.contains("SHA-256")),
            "{:?}",
            v.problems
        );
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        let _ = entry;
    }
    {
        let a = open(dir.path());
        // Metadata changed in the index and the segment alike: the chain breaks.
        let (mut e, slot) = a.index.live(2).unwrap().unwrap();
        let chain = match a.index.stored(2).unwrap().unwrap() {
            index::Stored::Live(_, _, c) => c,
            _ => unreachable!(),
        };
        e.attributes[2].1 = "mallory@evil.test".into();
        a.index
            .insert(&Record { entry: e, chain }, slot, 0)
            .unwrap();
        let v = a.verify().unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("entry 2: the hash chain is broken")),
            "{:?}",
            v.problems
        );
        // An entry removed from the index.
        let (e4, s4) = a.index.live(4).unwrap().unwrap();
        a.index.remove_live(&e4, s4).unwrap();
        let v = a.verify().unwrap();
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("entries 4 to 4 are missing")),
            "{:?}",
            v.problems
        );
        assert!(
            v.problems
                .iter()
                .any(|p| p.contains("entry 5: the hash chain is broken")),
            "{:?}",
            v.problems
        );
    }
}

#[test]
fn purge_removes_expired_segments_and_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    for i in 0..3 {
        a.put(
            "in",
            &message(i),
            attrs(&format!("S{i}"), "a@a.test", &["b@b.test"], "short"),
            7,
        )
        .unwrap();
    }
    for i in 0..2 {
        a.put(
            "in",
            &message(i),
            attrs(&format!("L{i}"), "a@a.test", &["b@b.test"], "long"),
            365,
        )
        .unwrap();
    }
    a.put(
        "in",
        &message(9),
        attrs("S9", "a@a.test", &["c@b.test"], "short"),
        7,
    )
    .unwrap();
    let now = now_ms() / 1000;
    assert_eq!(a.purge(now + 7 * DAY - DAY).unwrap(), 0);
    assert_eq!(a.purge(now + 9 * DAY).unwrap(), 4);
    assert_eq!(a.purge(now + 9 * DAY).unwrap(), 0);
    let left = a.search(&Query::default()).unwrap();
    assert_eq!(ids(&left), [5, 4]);
    assert!(a.get(1).unwrap().is_none());
    assert!(
        a.search(&Query {
            recipient: Some("c@b.test".into()),
            ..Query::default()
        })
        .unwrap()
        .entries
        .is_empty()
    );
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(
        (v.messages, v.tombstones),
        (2, 1),
        "ids 1-3 folded into the checkpoint, 6 a tombstone"
    );
    // Numbering and the chain go on, across a reopen too.
    drop(a);
    let a = open(dir.path());
    let e = a
        .put(
            "in",
            &message(7),
            attrs("N", "a@a.test", &["b@b.test"], "x"),
            45,
        )
        .unwrap();
    assert_eq!(e.id, 7);
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.head.as_ref().map(|h| h.0), Some(7));
    assert_eq!(a.purge(now + 400 * DAY).unwrap(), 3);
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!((v.messages, v.tombstones), (0, 0));
    assert_eq!(v.head.as_ref().map(|h| h.0), Some(7));
    drop(a);
    let a = open(dir.path());
    assert_eq!(
        a.put(
            "in",
            &message(8),
            attrs("M", "a@a.test", &["b@b.test"], "x"),
            45
        )
        .unwrap()
        .id,
        8
    );
    assert!(a.verify().unwrap().problems.is_empty());
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segs.len(), 1);
    segs.pop().unwrap()
}

#[test]
fn recovery_cuts_torn_tails_and_drops_entries_that_never_reached_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = open(dir.path());
        fill(&a, 4);
    }
    let seg = only_segment(dir.path());
    let len = std::fs::metadata(&seg).unwrap().len();
    // A torn tail: half a record of garbage.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(b"SLAR\x10\x00\x00\x00garbage").unwrap();
    drop(f);
    {
        let a = open(dir.path());
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        assert_eq!(ids(&a.search(&Query::default()).unwrap()), [4, 3, 2, 1]);
        assert!(a.verify().unwrap().problems.is_empty());
    }
    // The index saw entry 4 but its record never reached the disk (power cut before the
    // sync): cut the segment before it and mark nothing as synced past entry 3.
    let (slot4, chain3) = {
        let a = open(dir.path());
        let (_, slot) = a.index.live(4).unwrap().unwrap();
        let chain3 = a.index.head().unwrap().unwrap();
        a.index.mark_synced(3, &[(slot.seg, slot.offset)]).unwrap();
        (slot, chain3)
    };
    let _ = chain3;
    truncate_to(&seg, slot4.offset + 5);
    {
        let a = open(dir.path());
        assert_eq!(ids(&a.search(&Query::default()).unwrap()), [3, 2, 1]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), slot4.offset);
        let e = a
            .put(
                "in",
                &message(9),
                attrs("Q9", "a@a.test", &["b@b.test"], "x"),
                45,
            )
            .unwrap();
        assert_eq!(e.id, 4);
        assert!(a.verify().unwrap().problems.is_empty());
    }
}

fn truncate_to(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn a_lost_index_is_rebuilt_from_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let head = {
        let a = open(dir.path());
        for i in 0..6 {
            a.put(
                "in",
                &message(i),
                attrs(
                    &format!("Q{i}"),
                    "a@a.test",
                    &[&format!("r{i}@b.test")],
                    "word",
                ),
                30 + i as u32,
            )
            .unwrap();
        }
        a.verify().unwrap().head
    };
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let a = open(dir.path());
    assert_eq!(
        ids(&a
            .search(&Query {
                recipient: Some("r4@b.test".into()),
                ..Query::default()
            })
            .unwrap()),
        [5]
    );
    assert_eq!(
        ids(&a
            .search(&Query {
                subject: Some("word".into()),
                ..Query::default()
            })
            .unwrap()),
        [6, 5, 4, 3, 2, 1]
    );
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.head, head);
    assert_eq!(
        a.put(
            "in",
            &message(1),
            attrs("Z", "a@a.test", &["b@b.test"], "x"),
            45
        )
        .unwrap()
        .id,
        7
    );
}

#[test]
fn concurrent_writers_get_consecutive_ids_and_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    a.put(
                        "in",
                        &message(i),
                        attrs(&format!("T{t}-{i}"), "a@a.test", &["b@b.test"], "x"),
                        10 + t,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let v = a.verify().unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(v.messages, 320);
    assert_eq!(v.head.map(|h| h.0), Some(320));
}

#[test]
fn segment_names_round_trip() {
    let seg = SegId { day: 20_000, n: 3 };
    assert_eq!(seg.file_name(), "20241004-0003.seg");
    assert_eq!(SegId::parse(&seg.file_name()), Some(seg));
    assert_eq!(SegId::parse("junk.seg"), None);
    assert_eq!(parse_time("2024-10-04"), Some(20_000 * 86400));
    assert_eq!(
        parse_time("2024-10-04T00:00:10Z"),
        Some(20_000 * 86400 + 10)
    );
    assert_eq!(parse_time("1728000000"), Some(1_728_000_000));
    assert_eq!(parse_time("yesterday"), None);
}

#[test]
fn damage_inside_the_synced_part_is_reported_not_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = open(dir.path());
        fill(&a, 3);
    }
    let seg = only_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    // The index lost how far it had read the segment: recovery re-reads it from the start
    // and meets the damaged record before the synced end.
    open(dir.path())
        .index
        .forget_indexed(SegId::parse(&seg.file_name().unwrap().to_string_lossy()).unwrap())
        .unwrap();
    let a = open(dir.path());
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "nothing cut");
    assert_eq!(ids(&a.search(&Query::default()).unwrap()), [3, 2, 1]);
    let v = a.verify().unwrap();
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(v.problems[0].starts_with("entry 1:"), "{:?}", v.problems);
}

#[test]
fn searches_drive_by_the_shortest_list_and_empty_ranges_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(dir.path());
    for i in 0..30 {
        let to = if i == 17 {
            "rare@b.test"
        } else {
            "common@b.test"
        };
        a.put(
            "in",
            &message(i),
            attrs(&format!("Q{i}"), "a@a.test", &[to], "report"),
            30,
        )
        .unwrap();
    }
    let page = a
        .search(&Query {
            sender: Some("@a.test".into()),
            subject: Some("report".into()),
            recipient: Some("rare@b.test".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(ids(&page), [18]);
    let page = a
        .search(&Query {
            since: Some(now_ms() / 1000 + 100),
            until: Some(10),
            before: Some(0),
            ..Query::default()
        })
        .unwrap();
    assert!(page.entries.is_empty());
}
