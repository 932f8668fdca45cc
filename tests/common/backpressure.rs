//! Back-pressure on demand: another connection takes SQLite's write lock so that the writer
//! stalls on its next delivery, and deliveries are sent until the writer holds one and its
//! queue is full, as the writer queue depth gauge shows.

use super::{PASSWORD, TestApp, USER, WAIT, customer_event, metric_value, metrics_text};
use std::path::Path;
use std::time::Instant;
use tokio::task::JoinHandle;

pub const QUEUE_DEPTH: &str = "rebilly_webhookd_writer_queue_depth";

/// SQLite's write lock, held by another connection on its own thread until released.
pub struct WriteLock {
    release: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<()>,
}

impl WriteLock {
    /// Takes the lock; returns once it is held.
    pub fn take(db: &Path) -> WriteLock {
        let db = db.to_owned();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
            conn.execute_batch("COMMIT").unwrap();
        });
        locked_rx.recv().expect("the write lock is taken");
        WriteLock { release, holder }
    }

    pub fn release(self) {
        let _ = self.release.send(());
        self.holder.join().unwrap();
    }
}

/// A delivery's answer: status and `Retry-After`.
pub type Answer = (u16, Option<String>);

/// Posts a new customer's first revision in a task of its own.
pub fn spawn_delivery(app: &TestApp, customer: &str) -> JoinHandle<Answer> {
    let client = app.client.clone();
    let url = app.url("/webhooks/rebilly");
    let body = customer_event("customer-created", customer, 1, serde_json::json!({}));
    tokio::spawn(async move {
        let response = client
            .post(url)
            .basic_auth(USER, Some(PASSWORD))
            .body(body)
            .send()
            .await
            .expect("the daemon answers");
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (response.status().as_u16(), retry_after)
    })
}

pub async fn queue_depth(app: &TestApp) -> f64 {
    metric_value(&metrics_text(app).await, QUEUE_DEPTH, &[])
}

/// The writer stalled with one delivery and `capacity` more queued behind it.
pub struct Filled {
    /// The deliveries held: in the writer or its queue, unanswered.
    pub held: Vec<JoinHandle<Answer>>,
    /// Deliveries refused (503) while filling, when one arrived before the writer took its
    /// first: they count among the refusals.
    pub refused: usize,
}

/// With the write lock held, sends deliveries (customers `{prefix}_N`) until `capacity + 1` of
/// them are unanswered and the queue depth gauge reads `capacity`: the writer holds one and
/// the queue is full. The state must be seen on three polls in a row, so that a writer about
/// to take its first delivery is not mistaken for one that has.
pub async fn fill_writer(app: &TestApp, capacity: usize, prefix: &str) -> Filled {
    let deadline = Instant::now() + WAIT;
    let mut held: Vec<JoinHandle<Answer>> = Vec::new();
    let mut refused = 0;
    let mut sent = 0;
    let mut seen = 0;
    while seen < 3 {
        assert!(
            Instant::now() < deadline,
            "the writer never held a delivery with a full queue behind it"
        );
        let mut still = Vec::new();
        for task in held {
            if task.is_finished() {
                let answer = task.await.unwrap();
                assert_eq!(answer, (503, Some("1".to_owned())), "refused while filling");
                refused += 1;
            } else {
                still.push(task);
            }
        }
        held = still;
        while held.len() < capacity + 1 {
            held.push(spawn_delivery(app, &format!("{prefix}_{sent}")));
            sent += 1;
        }
        let depth = queue_depth(app).await;
        if depth == capacity as f64 && held.iter().all(|t| !t.is_finished()) {
            seen += 1;
        } else {
            seen = 0;
        }
        tokio::time::sleep(super::POLL).await;
    }
    Filled { held, refused }
}
