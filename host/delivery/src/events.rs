//! The event dispatcher: runs the policy's event chain over every event in the outbox,
//! acknowledging or rescheduling each with exponential backoff until it expires.

use sluice_config::Settings;
use sluice_core::{EventOutcome, Pipelines};
use sluice_queue::{Outbox, OutboxEntry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Events run at once.
const BATCH: usize = 64;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs until `shutdown` turns true. Events left in the outbox are picked up after a
/// restart: delivery to event steps is at least once.
pub async fn dispatch(
    outbox: Outbox,
    pipelines: Arc<dyn Pipelines>,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) {
    let wake = outbox.notified();
    outbox.set_ttl(settings.delivery.event_expire);
    loop {
        // Checked here too: with a backlog the loop never reaches the wait below.
        if *shutdown.borrow() {
            tracing::debug!("event dispatcher stopped");
            return;
        }
        let now = now_ms();
        let due = match outbox.due(now, BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the event outbox");
                Vec::new()
            }
        };
        let full = due.len() == BATCH;
        let pipeline = pipelines.current();
        let runs = due.into_iter().map(|entry| {
            let pipeline = pipeline.clone();
            async move {
                // In a task of its own: a panic there must not end the dispatcher.
                let event = entry.event.clone();
                let outcome = tokio::spawn(async move { pipeline.event(&event).await })
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "event chain panicked");
                        EventOutcome::Retry(sluice_core::Reply::new(
                            451,
                            "4.3.0",
                            "event chain failed",
                        ))
                    });
                (entry, outcome)
            }
        });
        for (entry, outcome) in futures::future::join_all(runs).await {
            settle(&outbox, &settings, entry, outcome);
        }
        if full {
            continue;
        }
        let wait = match outbox.next_due() {
            Ok(Some(at)) => Duration::from_millis(at.saturating_sub(now_ms())),
            _ => Duration::from_secs(60),
        }
        .min(Duration::from_secs(60));
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => {
                tracing::debug!("event dispatcher stopped");
                return;
            }
        }
    }
}

fn settle(outbox: &Outbox, settings: &Settings, entry: OutboxEntry, outcome: EventOutcome) {
    let id = entry.event.id.clone();
    let handled = &sluice_metrics::global().events_handled;
    let result = match outcome {
        EventOutcome::Ack => {
            handled.with_label_values(&["acknowledged"]).inc();
            outbox.ack(&entry)
        }
        EventOutcome::Retry(reply) => {
            let now = now_ms();
            if now >= entry.expires_ms {
                handled.with_label_values(&["expired"]).inc();
                tracing::warn!(%id, kind = entry.event.kind.name(), attempts = entry.attempts + 1, %reply, "event expired unacknowledged");
                outbox.ack(&entry)
            } else {
                let d = &settings.delivery;
                let factor = 2u32.saturating_pow(entry.attempts.min(20));
                let wait = d
                    .event_retry_initial
                    .saturating_mul(factor)
                    .min(d.event_retry_max);
                handled.with_label_values(&["deferred"]).inc();
                tracing::info!(%id, kind = entry.event.kind.name(), %reply, retry_in = ?wait, "event deferred");
                outbox
                    .retry(&entry, now + wait.as_millis() as u64)
                    .map(|_| ())
            }
        }
    };
    if let Err(e) = result {
        tracing::error!(%id, error = %e, "cannot update the event outbox");
    }
}
