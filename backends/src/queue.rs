//! Work queues with SQS semantics.
//!
//! A received message becomes invisible for the visibility timeout; if it is not deleted before the
//! timeout runs out it is delivered again with a higher receive count. Once a message has been
//! received `max_receive_count` times and comes back again, it moves to the dead-letter queue
//! instead (SQS's redrive policy). A consumer can also dead-letter a message at once with a reason
//! (a body that does not decode). Every delivery has its own receipt; deleting or extending with an
//! old receipt is a no-op, as on SQS, so a slow consumer cannot delete a redelivered copy.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BackendError, Result};

#[cfg(feature = "aws")]
mod sqs;
#[cfg(feature = "aws")]
pub use sqs::SqsQueue;

/// SQS's default maximum message size (a larger task's payload goes to the files store and the
/// message carries its key).
pub const SQS_DEFAULT_MAX_BYTES: usize = 256 * 1024;

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    /// Valid for this delivery only.
    pub receipt: String,
    pub body: String,
    /// 1 on the first delivery.
    pub receive_count: u32,
}

/// A message in the dead-letter queue and why it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    pub reason: String,
    pub receive_count: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub visible: usize,
    pub in_flight: usize,
    pub dead: usize,
}

#[async_trait]
pub trait Queue: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &str;
    /// How many deliveries a message gets before the queue dead-letters it (the redrive policy's
    /// `maxReceiveCount`), when known. A consumer on the last delivery dead-letters a message it
    /// cannot finish itself, so the reason travels with it.
    fn max_receive_count(&self) -> Option<u32> {
        None
    }
    /// Enqueues bodies; returns their message ids in order.
    async fn send_batch(&self, bodies: Vec<String>) -> Result<Vec<String>>;
    /// Up to `max` messages, waiting up to `wait` for the first one (long polling).
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>>;
    /// Removes the message if `receipt` is its latest delivery.
    async fn delete(&self, receipt: &str) -> Result<()>;
    /// Deletes several deliveries at once (the same message may appear twice, with two receipts).
    async fn delete_batch(&self, receipts: &[String]) -> Result<()> {
        for r in receipts {
            self.delete(r).await?;
        }
        Ok(())
    }
    /// Keeps the message invisible for `timeout` from now (the visibility heartbeat).
    async fn extend_visibility(&self, receipt: &str, timeout: Duration) -> Result<()>;
    /// Moves the message to the dead-letter queue now, with a reason.
    async fn dead_letter(&self, receipt: &str, reason: &str) -> Result<()>;
    async fn depth(&self) -> Result<QueueDepth>;
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>>;
}

#[derive(Debug)]
struct Entry {
    body: String,
    receive_count: u32,
    /// `None` when visible.
    invisible_until: Option<Instant>,
    delivery: u64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    order: VecDeque<String>,
    entries: HashMap<String, Entry>,
    dead: Vec<DeadLetter>,
}

/// The in-process queue of local runs.
#[derive(Debug)]
pub struct MemoryQueue {
    name: String,
    visibility_timeout: Duration,
    max_receive_count: u32,
    inner: Mutex<Inner>,
    notify: tokio::sync::Notify,
}

impl MemoryQueue {
    pub fn new(
        name: impl Into<String>,
        visibility_timeout: Duration,
        max_receive_count: u32,
    ) -> Self {
        MemoryQueue {
            name: name.into(),
            visibility_timeout,
            max_receive_count: max_receive_count.max(1),
            inner: Mutex::new(Inner::default()),
            notify: tokio::sync::Notify::new(),
        }
    }

    fn parse_receipt(&self, receipt: &str) -> Result<(String, u64)> {
        let (id, delivery) = receipt
            .rsplit_once('#')
            .ok_or_else(|| BackendError::Queue {
                queue: self.name.clone(),
                detail: format!("malformed receipt handle {receipt:?}"),
            })?;
        let delivery = delivery.parse().map_err(|_| BackendError::Queue {
            queue: self.name.clone(),
            detail: format!("malformed receipt handle {receipt:?}"),
        })?;
        Ok((id.to_string(), delivery))
    }

    fn try_receive(&self, max: usize) -> Vec<Received> {
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("queue lock");
        let inner = &mut *inner;
        let mut out = Vec::new();
        let mut i = 0;
        while i < inner.order.len() && out.len() < max {
            let id = inner.order[i].clone();
            let entry = inner.entries.get_mut(&id).expect("ordered entry exists");
            let visible = entry.invisible_until.is_none_or(|t| t <= now);
            if !visible {
                i += 1;
                continue;
            }
            if entry.receive_count >= self.max_receive_count {
                // Redrive: delivered too often without being deleted.
                let entry = inner.entries.remove(&id).expect("entry");
                inner.order.remove(i);
                inner.dead.push(DeadLetter {
                    message_id: id,
                    reason: format!(
                        "received {} times without being deleted (max_receive_count {})",
                        entry.receive_count, self.max_receive_count
                    ),
                    body: entry.body,
                    receive_count: entry.receive_count,
                });
                continue;
            }
            entry.receive_count += 1;
            entry.delivery += 1;
            entry.invisible_until = Some(now + self.visibility_timeout);
            out.push(Received {
                message_id: id.clone(),
                receipt: format!("{id}#{}", entry.delivery),
                body: entry.body.clone(),
                receive_count: entry.receive_count,
            });
            i += 1;
        }
        out
    }

    /// Soonest time an invisible message becomes visible again.
    fn next_wakeup(&self) -> Option<Instant> {
        let inner = self.inner.lock().expect("queue lock");
        inner
            .entries
            .values()
            .filter_map(|e| e.invisible_until)
            .min()
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_receive_count(&self) -> Option<u32> {
        Some(self.max_receive_count)
    }

    async fn send_batch(&self, bodies: Vec<String>) -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(bodies.len());
        {
            let mut inner = self.inner.lock().expect("queue lock");
            for body in bodies {
                inner.next_id += 1;
                let id = format!("m{:08}", inner.next_id);
                inner.order.push_back(id.clone());
                inner.entries.insert(
                    id.clone(),
                    Entry {
                        body,
                        receive_count: 0,
                        invisible_until: None,
                        delivery: 0,
                    },
                );
                ids.push(id);
            }
        }
        self.notify.notify_waiters();
        Ok(ids)
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let got = self.try_receive(max.max(1));
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let mut until = deadline;
            if let Some(t) = self.next_wakeup() {
                until = until.min(t.max(now + Duration::from_millis(1)));
            }
            let _ = tokio::time::timeout(until - now, notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        let (id, delivery) = self.parse_receipt(receipt)?;
        let mut inner = self.inner.lock().expect("queue lock");
        if inner
            .entries
            .get(&id)
            .is_some_and(|e| e.delivery == delivery)
        {
            inner.entries.remove(&id);
            inner.order.retain(|x| *x != id);
        }
        Ok(())
    }

    async fn extend_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
        let (id, delivery) = self.parse_receipt(receipt)?;
        let mut inner = self.inner.lock().expect("queue lock");
        match inner.entries.get_mut(&id) {
            Some(e) if e.delivery == delivery => {
                e.invisible_until = Some(Instant::now() + timeout);
                Ok(())
            }
            _ => Err(BackendError::Queue {
                queue: self.name.clone(),
                detail: format!(
                    "receipt {receipt:?} is no longer valid (message deleted or redelivered)"
                ),
            }),
        }
    }

    async fn dead_letter(&self, receipt: &str, reason: &str) -> Result<()> {
        let (id, delivery) = self.parse_receipt(receipt)?;
        let mut inner = self.inner.lock().expect("queue lock");
        if inner
            .entries
            .get(&id)
            .is_some_and(|e| e.delivery == delivery)
        {
            let e = inner.entries.remove(&id).expect("entry");
            inner.order.retain(|x| *x != id);
            inner.dead.push(DeadLetter {
                message_id: id,
                body: e.body,
                reason: reason.to_string(),
                receive_count: e.receive_count,
            });
        }
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let now = Instant::now();
        let inner = self.inner.lock().expect("queue lock");
        let in_flight = inner
            .entries
            .values()
            .filter(|e| e.invisible_until.is_some_and(|t| t > now))
            .count();
        Ok(QueueDepth {
            visible: inner.entries.len() - in_flight,
            in_flight,
            dead: inner.dead.len(),
        })
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        Ok(self.inner.lock().expect("queue lock").dead.clone())
    }
}

/// The shared test suite every [`Queue`] implementation must pass. `visibility` is the queue's
/// visibility timeout (keep it short, ~1 s) and `max_receive` its redrive count (2).
pub mod suite {
    use super::*;

    pub async fn run_all(make: &dyn Fn() -> Box<dyn Queue>, visibility: Duration) {
        send_receive_delete(&*make()).await;
        long_poll_waits_for_a_message(&*make()).await;
        unacked_message_reappears_with_higher_count(&*make(), visibility).await;
        stale_receipt_delete_is_accepted(&*make(), visibility).await;
        heartbeat_keeps_message_invisible(&*make(), visibility).await;
        redrive_after_max_receives(&*make(), visibility).await;
        explicit_dead_letter_keeps_reason(&*make()).await;
    }

    pub async fn send_receive_delete(q: &dyn Queue) {
        let ids = q
            .send_batch((0..15).map(|i| format!("m{i}")).collect())
            .await
            .unwrap();
        assert_eq!(ids.len(), 15);
        let mut bodies = Vec::new();
        while bodies.len() < 15 {
            let got = q.receive(10, Duration::from_millis(200)).await.unwrap();
            assert!(!got.is_empty() && got.len() <= 10, "got {}", got.len());
            for m in got {
                assert_eq!(m.receive_count, 1);
                q.delete(&m.receipt).await.unwrap();
                bodies.push(m.body);
            }
        }
        bodies.sort();
        let mut want: Vec<_> = (0..15).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!(bodies, want);
        assert!(
            q.receive(10, Duration::from_millis(50))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    pub async fn long_poll_waits_for_a_message(q: &dyn Queue) {
        let t0 = Instant::now();
        assert!(
            q.receive(1, Duration::from_millis(150))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
        q.send_batch(vec!["late".into()]).await.unwrap();
        let got = q.receive(1, Duration::from_secs(2)).await.unwrap();
        assert_eq!(got[0].body, "late");
        q.delete(&got[0].receipt).await.unwrap();
    }

    pub async fn unacked_message_reappears_with_higher_count(q: &dyn Queue, vis: Duration) {
        q.send_batch(vec!["x".into()]).await.unwrap();
        let first = q.receive(1, Duration::from_millis(100)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(
            q.receive(1, Duration::ZERO).await.unwrap().is_empty(),
            "invisible while in flight"
        );
        let again = q.receive(1, vis * 3).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message_id, first[0].message_id);
        assert_eq!(again[0].receive_count, 2);
        q.delete(&again[0].receipt).await.unwrap();
    }

    /// A delete with the receipt of an earlier delivery is accepted. Whether it removes the
    /// redelivered message is up to the implementation (SQS documents that it may not; moto
    /// and in practice SQS do remove it), so nothing may depend on either: redone work is
    /// idempotent and completions are deduplicated by shard.
    pub async fn stale_receipt_delete_is_accepted(q: &dyn Queue, vis: Duration) {
        q.send_batch(vec!["y".into()]).await.unwrap();
        let first = q.receive(1, Duration::from_millis(100)).await.unwrap();
        let second = q.receive(1, vis * 3).await.unwrap();
        assert_ne!(first[0].receipt, second[0].receipt);
        q.delete(&first[0].receipt).await.unwrap();
        q.delete(&second[0].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    pub async fn heartbeat_keeps_message_invisible(q: &dyn Queue, vis: Duration) {
        q.send_batch(vec!["z".into()]).await.unwrap();
        let m = q
            .receive(1, Duration::from_millis(100))
            .await
            .unwrap()
            .remove(0);
        for _ in 0..3 {
            tokio::time::sleep(vis / 2).await;
            q.extend_visibility(&m.receipt, vis).await.unwrap();
        }
        assert!(q.receive(1, Duration::ZERO).await.unwrap().is_empty());
        q.delete(&m.receipt).await.unwrap();
        assert!(q.extend_visibility(&m.receipt, vis).await.is_err());
    }

    pub async fn redrive_after_max_receives(q: &dyn Queue, vis: Duration) {
        q.send_batch(vec!["poison".into()]).await.unwrap();
        let mut receives = 0;
        let deadline = Instant::now() + vis * 10;
        while Instant::now() < deadline && q.depth().await.unwrap().dead == 0 {
            receives += q.receive(1, vis).await.unwrap().len();
        }
        assert_eq!(receives, 2, "max_receive_count is 2");
        let dead = q.dead_letters().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].body, "poison");
        assert!(
            dead[0].reason.contains("received 2 times"),
            "{}",
            dead[0].reason
        );
    }

    pub async fn explicit_dead_letter_keeps_reason(q: &dyn Queue) {
        q.send_batch(vec!["garbage".into(), "fine".into()])
            .await
            .unwrap();
        let got = q.receive(10, Duration::from_millis(100)).await.unwrap();
        let bad = got.iter().find(|m| m.body == "garbage").unwrap();
        q.dead_letter(&bad.receipt, "body is not JSON: expected value at line 1")
            .await
            .unwrap();
        let dead = q.dead_letters().await.unwrap();
        assert_eq!(
            dead.last().unwrap().reason,
            "body is not JSON: expected value at line 1"
        );
        let d = q.depth().await.unwrap();
        assert_eq!((d.in_flight, d.dead), (1, dead.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_queue_passes_the_suite() {
        let vis = Duration::from_millis(300);
        suite::run_all(&|| Box::new(MemoryQueue::new("test", vis, 2)), vis).await;
    }

    #[tokio::test]
    async fn memory_queue_keeps_a_redelivery_from_a_stale_delete() {
        let vis = Duration::from_millis(200);
        let q = MemoryQueue::new("q", vis, 5);
        q.send_batch(vec!["y".into()]).await.unwrap();
        let first = q.receive(1, Duration::from_millis(100)).await.unwrap();
        let second = q.receive(1, vis * 3).await.unwrap();
        q.delete(&first[0].receipt).await.unwrap(); // stale: accepted, but no effect
        assert_eq!(q.depth().await.unwrap().in_flight, 1);
        q.delete(&second[0].receipt).await.unwrap();
        assert_eq!(q.depth().await.unwrap(), QueueDepth::default());
    }

    #[tokio::test]
    async fn malformed_receipts_are_errors() {
        let q = MemoryQueue::new("q", Duration::from_secs(1), 3);
        let err = q.delete("nonsense").await.unwrap_err().to_string();
        assert!(err.contains("queue q") && err.contains("nonsense"), "{err}");
    }
}
