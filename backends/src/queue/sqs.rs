//! Amazon SQS behind the [`Queue`] trait.
//!
//! * `send_batch`: `SendMessageBatch` in tens; entries that fail are retried on their own with
//!   backoff (throttled or internal errors), a sender fault fails the call with the entry's error.
//! * `receive`: `ReceiveMessage` with long polling (`WaitTimeSeconds`), asking for
//!   `ApproximateReceiveCount`, which becomes [`Received::receive_count`].
//! * `extend_visibility`: `ChangeMessageVisibility` (the worker's heartbeat).
//! * `delete_batch`: `DeleteMessageBatch` with entry ids `0..n`, never message ids, so the same
//!   message delivered twice (two receipts) in one batch is still a valid request.
//! * Dead letters: the queue's redrive policy moves a message after `maxReceiveCount` receives;
//!   `dead_letter(receipt, reason)` moves one at once, sending it to the dead-letter queue with
//!   the reason as a message attribute (`tributary-reason`) and then deleting the original.
//! * Bodies over `max_inline_bytes` (SQS allows 256 KiB by default) are stored in the object store
//!   under `payloads/` and the message carries a pointer; `receive` resolves it transparently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use serde::{Deserialize, Serialize};

use super::{DeadLetter, Queue, QueueDepth, Received};
use crate::aws::classify;
use crate::object_store::ObjectStore;
use crate::{BackendError, Result};

const REASON_ATTR: &str = "tributary-reason";
const COUNT_ATTR: &str = "tributary-receive-count";
const ORIGINAL_ID_ATTR: &str = "tributary-original-id";
use super::SQS_DEFAULT_MAX_BYTES;

/// A body stored in the object store because it is too large for SQS.
#[derive(Debug, Serialize, Deserialize)]
struct PayloadPointer {
    tributary_payload: String,
    bytes: usize,
}

/// One SQS queue and its dead-letter queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    dlq_url: Option<String>,
    name: String,
    /// The redrive policy's maxReceiveCount (for the reason of redriven messages).
    max_receive_count: Option<u32>,
    visibility: Duration,
    payloads: Option<Arc<dyn ObjectStore>>,
    max_inline_bytes: usize,
    /// Payload keys of received pointer messages, by receipt, deleted with the message.
    pending_payloads: Arc<Mutex<HashMap<String, String>>>,
    /// What each outstanding receipt delivered (id, body, receive count), for `dead_letter`:
    /// SQS cannot move a message, so it is re-sent to the dead-letter queue and deleted.
    recent: Arc<Mutex<HashMap<String, Recent>>>,
}

#[derive(Debug, Clone)]
struct Recent {
    message_id: String,
    body: String,
    receive_count: u32,
    at: std::time::Instant,
}

impl SqsQueue {
    /// Connects to the queue at `url`, reading its redrive policy to find its dead-letter queue
    /// (unless `dlq_url` is given). Fails with a clear error when the queue does not exist or the
    /// endpoint cannot be reached.
    pub async fn connect(
        client: Client,
        url: &str,
        dlq_url: Option<String>,
        visibility: Duration,
    ) -> Result<Self> {
        let attrs = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| classify("SQS", "GetQueueAttributes", url, e))?;
        let mut max_receive_count = None;
        let mut found_dlq = None;
        if let Some(policy) = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        {
            let v: serde_json::Value = serde_json::from_str(policy).unwrap_or_default();
            max_receive_count = v["maxReceiveCount"]
                .as_u64()
                .or_else(|| v["maxReceiveCount"].as_str().and_then(|s| s.parse().ok()))
                .map(|n| n as u32);
            if let Some(arn) = v["deadLetterTargetArn"].as_str() {
                // arn:aws:sqs:REGION:ACCOUNT:NAME → the URL, through GetQueueUrl.
                let name = arn.rsplit(':').next().unwrap_or_default();
                let account = arn.split(':').nth(4).unwrap_or_default();
                let got = client
                    .get_queue_url()
                    .queue_name(name)
                    .queue_owner_aws_account_id(account)
                    .send()
                    .await
                    .map_err(|e| classify("SQS", "GetQueueUrl", arn, e))?;
                found_dlq = got.queue_url().map(str::to_string);
            }
        }
        let name = url.rsplit('/').next().unwrap_or(url).to_string();
        Ok(SqsQueue {
            client,
            url: url.to_string(),
            dlq_url: dlq_url.or(found_dlq),
            name,
            max_receive_count,
            visibility,
            payloads: None,
            max_inline_bytes: SQS_DEFAULT_MAX_BYTES,
            pending_payloads: Arc::default(),
            recent: Arc::default(),
        })
    }

    /// Stores bodies larger than `max_inline_bytes` in `store` (under `payloads/`).
    pub fn with_payload_store(
        mut self,
        store: Arc<dyn ObjectStore>,
        max_inline_bytes: usize,
    ) -> Self {
        self.payloads = Some(store);
        self.max_inline_bytes = max_inline_bytes;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn dead_letter_url(&self) -> Option<&str> {
        self.dlq_url.as_deref()
    }

    fn err(&self, detail: impl Into<String>) -> BackendError {
        BackendError::Queue {
            queue: self.url.clone(),
            detail: detail.into(),
        }
    }

    async fn inline_or_pointer(&self, body: String) -> Result<String> {
        if body.len() <= self.max_inline_bytes {
            return Ok(body);
        }
        let Some(store) = &self.payloads else {
            return Err(BackendError::Queue {
                queue: self.url.clone(),
                detail: format!(
                    "message of {} bytes is over the {}-byte limit and no payload store is configured",
                    body.len(),
                    self.max_inline_bytes
                ),
            });
        };
        let key = format!(
            "payloads/{}/{:016x}-{:08x}.json",
            self.name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64,
            rand_u32()
        );
        let bytes = body.len();
        store.put(&key, body.into_bytes()).await?;
        Ok(serde_json::to_string(&PayloadPointer {
            tributary_payload: key,
            bytes,
        })
        .expect("pointer serialises"))
    }

    async fn resolve(&self, body: String, receipt: &str) -> Result<String> {
        if !body.starts_with("{\"tributary_payload\"") {
            return Ok(body);
        }
        let Ok(p) = serde_json::from_str::<PayloadPointer>(&body) else {
            return Ok(body);
        };
        let Some(store) = &self.payloads else {
            return Err(self.err(format!(
                "message points to stored payload {} but no payload store is configured",
                p.tributary_payload
            )));
        };
        let bytes = store.get(&p.tributary_payload).await?;
        self.pending_payloads
            .lock()
            .expect("payload map")
            .insert(receipt.to_string(), p.tributary_payload.clone());
        String::from_utf8(bytes).map_err(|_| {
            self.err(format!(
                "stored payload {} is not UTF-8",
                p.tributary_payload
            ))
        })
    }

    async fn forget_payload(&self, receipt: &str) {
        let key = self
            .pending_payloads
            .lock()
            .expect("payload map")
            .remove(receipt);
        if let (Some(key), Some(store)) = (key, &self.payloads) {
            let _ = store.delete(&key).await;
        }
    }

    async fn send_to(
        &self,
        url: &str,
        bodies: Vec<(String, Vec<(String, String)>)>,
    ) -> Result<Vec<String>> {
        let mut ids = vec![String::new(); bodies.len()];
        for (chunk_no, chunk) in bodies.chunks(10).enumerate() {
            let base = chunk_no * 10;
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let mut attempt = 0u32;
            while !pending.is_empty() {
                attempt += 1;
                let mut req = self.client.send_message_batch().queue_url(url);
                for &i in &pending {
                    let (body, attrs) = &chunk[i];
                    let mut e = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.clone());
                    for (k, v) in attrs {
                        e = e.message_attributes(
                            k.clone(),
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(v.clone())
                                .build()
                                .map_err(|e| self.err(e.to_string()))?,
                        );
                    }
                    req = req.entries(e.build().map_err(|e| self.err(e.to_string()))?);
                }
                let out = req
                    .send()
                    .await
                    .map_err(|e| classify("SQS", "SendMessageBatch", url, e))?;
                for ok in out.successful() {
                    if let Ok(i) = ok.id().parse::<usize>() {
                        ids[base + i] = ok.message_id().to_string();
                    }
                }
                let mut retry = Vec::new();
                for f in out.failed() {
                    if f.sender_fault() {
                        return Err(self.err(format!(
                            "SendMessageBatch entry {} rejected: {} {}",
                            f.id(),
                            f.code(),
                            f.message().unwrap_or("")
                        )));
                    }
                    if let Ok(i) = f.id().parse::<usize>() {
                        retry.push(i);
                    }
                }
                if !retry.is_empty() && attempt >= 8 {
                    return Err(self.err(format!(
                        "SendMessageBatch: {} entries still failing after {attempt} attempts",
                        retry.len()
                    )));
                }
                if !retry.is_empty() {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                pending = retry;
            }
        }
        Ok(ids)
    }

    /// Peeks at every message of the dead-letter queue without taking it (receives with a
    /// visibility timeout of 0 until no new message shows up).
    async fn peek_dead_letters(&self, url: &str) -> Result<Vec<DeadLetter>> {
        let mut seen: HashMap<String, DeadLetter> = HashMap::new();
        let mut quiet_rounds = 0;
        while quiet_rounds < 3 {
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .wait_time_seconds(0)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| classify("SQS", "ReceiveMessage", url, e))?;
            let mut new = 0;
            for m in out.messages() {
                let id = m.message_id().unwrap_or_default().to_string();
                if seen.contains_key(&id) {
                    continue;
                }
                new += 1;
                let attr = |k: &str| {
                    m.message_attributes()
                        .and_then(|a| a.get(k))
                        .and_then(|v| v.string_value())
                        .map(str::to_string)
                };
                let reason = attr(REASON_ATTR).unwrap_or_else(|| {
                    format!(
                        "received {} times without being deleted (redrive policy maxReceiveCount)",
                        self.max_receive_count
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "too many".into())
                    )
                });
                let receive_count = attr(COUNT_ATTR)
                    .and_then(|s| s.parse().ok())
                    .or(self.max_receive_count)
                    .unwrap_or(0);
                let body = self
                    .resolve(m.body().unwrap_or_default().to_string(), "")
                    .await
                    .unwrap_or_else(|_| m.body().unwrap_or_default().to_string());
                seen.insert(
                    id.clone(),
                    DeadLetter {
                        message_id: attr(ORIGINAL_ID_ATTR).unwrap_or(id),
                        body,
                        reason,
                        receive_count,
                    },
                );
            }
            if new == 0 {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
            }
        }
        self.pending_payloads
            .lock()
            .expect("payload map")
            .remove("");
        let mut out: Vec<DeadLetter> = seen.into_values().collect();
        out.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        Ok(out)
    }

    async fn approx(&self, url: &str) -> Result<(usize, usize)> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| classify("SQS", "GetQueueAttributes", url, e))?;
        let get = |n: QueueAttributeName| {
            out.attributes()
                .and_then(|a| a.get(&n))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(50u64 << attempt.min(6));
    base + Duration::from_millis(u64::from(rand_u32() % 50))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    h.finish() as u32
}

fn secs(d: Duration) -> i32 {
    d.as_secs().min(43_200) as i32
}

#[async_trait]
impl Queue for SqsQueue {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_receive_count(&self) -> Option<u32> {
        self.max_receive_count
    }

    async fn send_batch(&self, bodies: Vec<String>) -> Result<Vec<String>> {
        let mut prepared = Vec::with_capacity(bodies.len());
        for b in bodies {
            prepared.push((self.inline_or_pointer(b).await?, Vec::new()));
        }
        self.send_to(&self.url, prepared).await
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Received>> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(secs(self.visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify("SQS", "ReceiveMessage", &self.url, e))?;
        let mut got = Vec::new();
        for m in out.messages() {
            let receipt = m.receipt_handle().unwrap_or_default().to_string();
            let receive_count = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let body = self
                .resolve(m.body().unwrap_or_default().to_string(), &receipt)
                .await?;
            let message_id = m.message_id().unwrap_or_default().to_string();
            {
                let mut recent = self.recent.lock().expect("recent map");
                // A receipt is useless after the longest visibility timeout SQS allows (12 h).
                recent.retain(|_, r| r.at.elapsed() < Duration::from_secs(43_200));
                recent.insert(
                    receipt.clone(),
                    Recent {
                        message_id: message_id.clone(),
                        body: body.clone(),
                        receive_count,
                        at: std::time::Instant::now(),
                    },
                );
            }
            got.push(Received {
                message_id,
                receipt,
                body,
                receive_count,
            });
        }
        if got.is_empty() && wait > Duration::ZERO && wait < Duration::from_secs(1) {
            // SQS long polling works in whole seconds; honour a shorter wait.
            tokio::time::sleep(wait).await;
        }
        Ok(got)
    }

    async fn delete(&self, receipt: &str) -> Result<()> {
        self.delete_batch(&[receipt.to_string()]).await
    }

    async fn delete_batch(&self, receipts: &[String]) -> Result<()> {
        for chunk in receipts.chunks(10) {
            let mut req = self.client.delete_message_batch().queue_url(&self.url);
            for (i, r) in chunk.iter().enumerate() {
                req = req.entries(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| self.err(e.to_string()))?,
                );
            }
            let out = req
                .send()
                .await
                .map_err(|e| classify("SQS", "DeleteMessageBatch", &self.url, e))?;
            for f in out.failed() {
                // An expired receipt (ReceiptHandleIsInvalid) means the message was redelivered:
                // the newer delivery owns it now. Anything else is an error.
                if f.code() != "ReceiptHandleIsInvalid" {
                    return Err(self.err(format!(
                        "DeleteMessageBatch entry {}: {} {}",
                        f.id(),
                        f.code(),
                        f.message().unwrap_or("")
                    )));
                }
            }
            for r in chunk {
                self.recent.lock().expect("recent map").remove(r);
                self.forget_payload(r).await;
            }
        }
        Ok(())
    }

    async fn extend_visibility(&self, receipt: &str, timeout: Duration) -> Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(secs(timeout))
            .send()
            .await
            .map_err(|e| classify("SQS", "ChangeMessageVisibility", &self.url, e))?;
        Ok(())
    }

    async fn dead_letter(&self, receipt: &str, reason: &str) -> Result<()> {
        let Some(dlq) = self.dlq_url.clone() else {
            return Err(self.err(format!(
                "cannot dead-letter a message ({reason}): the queue has no redrive policy and no dead_letter_url is configured"
            )));
        };
        let Some(r) = self
            .recent
            .lock()
            .expect("recent map")
            .get(receipt)
            .cloned()
        else {
            return Err(self.err(format!(
                "cannot dead-letter: receipt {receipt:?} was not received through this queue handle"
            )));
        };
        let attrs = vec![
            (REASON_ATTR.to_string(), truncate(reason, 4000)),
            (ORIGINAL_ID_ATTR.to_string(), r.message_id.clone()),
            (COUNT_ATTR.to_string(), r.receive_count.to_string()),
        ];
        let inline = self.inline_or_pointer(r.body).await?;
        self.send_to(&dlq, vec![(inline, attrs)]).await?;
        self.delete(receipt).await
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let (visible, in_flight) = self.approx(&self.url).await?;
        let dead = match &self.dlq_url {
            Some(d) => {
                let (v, f) = self.approx(d).await?;
                v + f
            }
            None => 0,
        };
        Ok(QueueDepth {
            visible,
            in_flight,
            dead,
        })
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        match &self.dlq_url {
            Some(d) => self.peek_dead_letters(d).await,
            None => Ok(Vec::new()),
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
