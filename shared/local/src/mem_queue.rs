//! An in-process [`JobQueue`] with SQS semantics: at-least-once delivery, a visibility timeout
//! after which an unacknowledged message is delivered again, receipts that expire with their
//! delivery, and a dead-letter limit on receives.

use fhe_batch_core::job::check_message_sizes;
use fhe_batch_core::ports::{Delivery, JobQueue, QueueError};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Queue settings, mirroring the SQS queue and redrive policy of the template.
#[derive(Debug, Clone, Copy)]
pub struct MemQueueConfig {
    pub visibility_timeout: Duration,
    /// A message received this many times without being acknowledged goes to the dead-letter
    /// queue instead of being delivered again (SQS `maxReceiveCount`).
    pub max_receives: u32,
}

impl Default for MemQueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_receives: 5,
        }
    }
}

#[derive(Debug)]
struct Message {
    body: String,
    receive_count: u32,
    /// Bumped on every delivery: a receipt names one delivery.
    generation: u64,
    /// `Some` while in flight: visible again at this instant.
    invisible_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    ready: VecDeque<u64>,
    messages: HashMap<u64, Message>,
    dead: Vec<(u64, String)>,
    sent: u64,
    acked: u64,
}

/// The embedded queue. Cloning shares the queue.
#[derive(Debug, Clone)]
pub struct MemQueue {
    config: MemQueueConfig,
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
}

/// Counters for progress displays and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub sent: u64,
    pub acked: u64,
    pub ready: usize,
    pub in_flight: usize,
    pub dead: usize,
}

impl MemQueue {
    /// How long a delivered message stays hidden unless its visibility is changed.
    pub fn visibility_timeout(&self) -> Duration {
        self.config.visibility_timeout
    }

    pub fn new(config: MemQueueConfig) -> Self {
        Self {
            config,
            state: Arc::new(Mutex::new(State::default())),
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn stats(&self) -> QueueStats {
        let s = self.state.lock().expect("queue lock");
        QueueStats {
            sent: s.sent,
            acked: s.acked,
            ready: s.ready.len(),
            in_flight: s.messages.len() - s.ready.len(),
            dead: s.dead.len(),
        }
    }

    /// Bodies of the messages moved to the dead-letter queue.
    pub fn dead_letters(&self) -> Vec<String> {
        let s = self.state.lock().expect("queue lock");
        s.dead.iter().map(|(_, b)| b.clone()).collect()
    }

    /// True when nothing is waiting and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.state.lock().expect("queue lock").messages.is_empty()
    }

    /// Moves in-flight messages whose visibility timeout has passed back to the ready queue.
    fn expire(&self, s: &mut State, now: Instant) {
        let expired: Vec<u64> = s
            .messages
            .iter()
            .filter(|(_, m)| m.invisible_until.is_some_and(|t| t <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            if let Some(m) = s.messages.get_mut(&id) {
                m.invisible_until = None;
            }
            s.ready.push_back(id);
        }
    }

    fn try_receive(&self, max: usize) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let mut s = self.state.lock().expect("queue lock");
        self.expire(&mut s, now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = s.ready.pop_front() else { break };
            let Some(m) = s.messages.get_mut(&id) else {
                continue;
            };
            if m.receive_count >= self.config.max_receives {
                let m = s.messages.remove(&id).expect("present");
                s.dead.push((id, m.body));
                continue;
            }
            m.receive_count += 1;
            m.generation += 1;
            m.invisible_until = Some(now + self.config.visibility_timeout);
            out.push(Delivery {
                message_id: format!("m-{id}"),
                receipt: format!("{id}:{}", m.generation),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
        }
        let next_visible = s.messages.values().filter_map(|m| m.invisible_until).min();
        (out, next_visible)
    }
}

impl JobQueue for MemQueue {
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        check_message_sizes(&bodies)?;
        {
            let mut s = self.state.lock().expect("queue lock");
            for body in bodies {
                let id = s.next_id;
                s.next_id += 1;
                s.messages.insert(
                    id,
                    Message {
                        body,
                        receive_count: 0,
                        generation: 0,
                        invisible_until: None,
                    },
                );
                s.ready.push_back(id);
                s.sent += 1;
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (got, next_visible) = self.try_receive(max.max(1));
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(got);
            }
            let until = next_visible.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let unknown = || QueueError::UnknownReceipt(receipt.to_string());
        let (id, generation) = parse_receipt(receipt).ok_or_else(unknown)?;
        let mut s = self.state.lock().expect("queue lock");
        match s.messages.get(&id) {
            // Only the current, still-invisible delivery may delete the message.
            Some(m) if m.generation == generation && m.invisible_until.is_some() => {
                s.messages.remove(&id);
                s.acked += 1;
                Ok(())
            }
            _ => Err(unknown()),
        }
    }

    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        let unknown = || QueueError::UnknownReceipt(receipt.to_string());
        let (id, generation) = parse_receipt(receipt).ok_or_else(unknown)?;
        {
            let mut s = self.state.lock().expect("queue lock");
            match s.messages.get_mut(&id) {
                Some(m) if m.generation == generation && m.invisible_until.is_some() => {
                    m.invisible_until = Some(Instant::now() + timeout);
                }
                _ => return Err(unknown()),
            }
        }
        // A shorter timeout may make it visible sooner than a waiting receive expects.
        self.notify.notify_waiters();
        Ok(())
    }
}

/// `id:generation`.
fn parse_receipt(receipt: &str) -> Option<(u64, u64)> {
    let (id, generation) = receipt.split_once(':')?;
    Some((id.parse().ok()?, generation.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(vis_ms: u64, max: u32) -> MemQueue {
        MemQueue::new(MemQueueConfig {
            visibility_timeout: Duration::from_millis(vis_ms),
            max_receives: max,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_once_until_acked() {
        let q = q(1000, 5);
        q.send_batch(vec!["a".into(), "b".into()]).await.unwrap();
        let d = q.receive(10, Duration::ZERO).await.unwrap();
        assert_eq!(d.len(), 2);
        assert!(q.receive(10, Duration::ZERO).await.unwrap().is_empty());
        q.ack(&d[0].receipt).await.unwrap();
        assert!(q.ack(&d[0].receipt).await.is_err());
        let stats = q.stats();
        assert_eq!((stats.sent, stats.acked, stats.in_flight), (2, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn redelivers_after_visibility_timeout_and_old_receipts_expire() {
        let q = q(1000, 5);
        q.send_batch(vec!["a".into()]).await.unwrap();
        let first = q.receive(1, Duration::ZERO).await.unwrap();
        assert_eq!(first[0].receive_count, 1);
        // Waits (in paused time) until the message becomes visible again.
        let second = q.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].receive_count, 2);
        assert_eq!(second[0].message_id, first[0].message_id);
        // The first delivery's receipt can no longer delete the message.
        assert!(q.ack(&first[0].receipt).await.is_err());
        q.ack(&second[0].receipt).await.unwrap();
        assert!(q.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn dead_letters_after_max_receives() {
        let q = q(10, 3);
        q.send_batch(vec!["poison".into()]).await.unwrap();
        for n in 1..=3 {
            let d = q.receive(1, Duration::from_secs(1)).await.unwrap();
            assert_eq!(d[0].receive_count, n);
        }
        assert!(
            q.receive(1, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(q.dead_letters(), vec!["poison".to_string()]);
        assert!(q.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn receive_wakes_on_send() {
        let q = q(1000, 5);
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.receive(1, Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.send_batch(vec!["x".into()]).await.unwrap();
        assert_eq!(h.await.unwrap().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn oversized_messages_are_refused() {
        let q = q(1000, 5);
        assert!(matches!(
            q.send_batch(vec!["x".repeat(fhe_batch_core::job::MAX_MESSAGE_BYTES + 1)])
                .await,
            Err(QueueError::TooLarge { .. })
        ));
    }
}
