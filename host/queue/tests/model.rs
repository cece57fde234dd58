//! The sled queue against the in-memory model, over random operations and restarts.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_core::{Envelope, Recipient, Reply};
use sluice_queue::{MemQueue, MessageMeta, Queue, SledQueue, Status, new_id};

fn random_meta(rng: &mut StdRng) -> (MessageMeta, Vec<u8>) {
    let n = rng.random_range(1..4);
    let env = Envelope {
        sender: format!("s{}@example.com", rng.random_range(0..100)),
        recipients: (0..n)
            .map(|i| Recipient::new(format!("r{i}@example.net")))
            .collect(),
        ..Envelope::default()
    };
    let len = rng.random_range(0..70_000);
    let body: Vec<u8> = (0..len).map(|_| rng.random_range(b'a'..=b'z')).collect();
    (MessageMeta::new(new_id(), &env, body.len()), body)
}

async fn assert_same(sled: &SledQueue, model: &MemQueue) {
    let a = sled.list().unwrap();
    let b = model.list().unwrap();
    assert_eq!(a, b);
    for m in &b {
        assert_eq!(sled.body(&m.id).unwrap(), model.body(&m.id).unwrap());
    }
}

#[tokio::test]
async fn sled_queue_matches_model_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5_1u64);
    let model = MemQueue::new();
    let mut q = SledQueue::open(dir.path()).unwrap();
    for step in 0..400 {
        let ids: Vec<String> = model.list().unwrap().into_iter().map(|m| m.id).collect();
        match rng.random_range(0..10) {
            0..=4 => {
                let (m, body) = random_meta(&mut rng);
                q.enqueue(&m, &body).await.unwrap();
                model.enqueue(&m, &body).await.unwrap();
            }
            5 | 6 if !ids.is_empty() => {
                let id = &ids[rng.random_range(0..ids.len())];
                let mut m = model.get(id).unwrap().unwrap();
                let r = rng.random_range(0..m.recipients.len());
                m.recipients[r].attempts += 1;
                m.recipients[r].status = Status::Deferred {
                    next_attempt: rng.random(),
                };
                m.recipients[r].last_reply = Some(Reply::new(451, "4.3.0", "try later"));
                q.update(&m).unwrap();
                model.update(&m).unwrap();
            }
            7 if !ids.is_empty() => {
                let id = &ids[rng.random_range(0..ids.len())];
                q.remove(id).unwrap();
                model.remove(id).unwrap();
            }
            8 => {
                // Restart: everything synced must come back.
                q.sync().await.unwrap();
                drop(q);
                q = SledQueue::open(dir.path()).unwrap();
                assert_same(&q, &model).await;
            }
            _ => assert_same(&q, &model).await,
        }
        if step % 50 == 0 {
            assert_same(&q, &model).await;
        }
    }
}

#[tokio::test]
async fn concurrent_enqueues_share_flushes_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    let q = SledQueue::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let env = Envelope {
                sender: "a@b.c".into(),
                recipients: vec![Recipient::new(format!("x{i}@d.e"))],
                ..Envelope::default()
            };
            let m = MessageMeta::new(new_id(), &env, 5);
            q.enqueue(&m, b"hello").await.unwrap();
            m.id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    drop(q);
    let q = SledQueue::open(dir.path()).unwrap();
    assert_eq!(q.list().unwrap().len(), 64);
    for id in ids {
        assert_eq!(q.body(&id).unwrap().as_deref(), Some(&b"hello"[..]));
    }
}

#[tokio::test]
async fn body_segments_are_deleted_when_their_messages_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let q = SledQueue::open(dir.path()).unwrap();
    let body = vec![b'x'; 100_000];
    let mut ids = Vec::new();
    for i in 0..400 {
        let env = Envelope {
            sender: "a@b.c".into(),
            recipients: vec![Recipient::new(format!("x{i}@d.e"))],
            ..Envelope::default()
        };
        let m = MessageMeta::new(new_id(), &env, body.len());
        q.enqueue(&m, &body).await.unwrap();
        ids.push(m.id);
    }
    assert!(q.body_segments() >= 3, "{} segments", q.body_segments());
    for id in &ids {
        q.remove(id).unwrap();
    }
    assert_eq!(
        q.body_segments(),
        1,
        "only the segment being appended to is left"
    );
    drop(q);
    let q = SledQueue::open(dir.path()).unwrap();
    assert!(q.list().unwrap().is_empty());
    assert_eq!(q.body_segments(), 1);
}

#[tokio::test]
async fn a_record_whose_body_is_damaged_has_no_body() {
    let dir = tempfile::tempdir().unwrap();
    let q = SledQueue::open(dir.path()).unwrap();
    let env = Envelope {
        sender: "a@b.c".into(),
        recipients: vec![Recipient::new("x@d.e")],
        ..Envelope::default()
    };
    let m = MessageMeta::new(new_id(), &env, 5);
    q.enqueue(&m, b"hello").await.unwrap();
    drop(q);
    // Damage the body in its segment.
    for entry in std::fs::read_dir(dir.path().join("bodies")).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if !data.is_empty() {
            std::fs::write(&path, b"jello").unwrap();
        }
    }
    let q = SledQueue::open(dir.path()).unwrap();
    assert!(q.get(&m.id).unwrap().is_some());
    assert_eq!(q.body(&m.id).unwrap(), None);
}
