//! Background work: every long-running job of a node (upload expiry today; garbage
//! collection, retention and replication next) is a [`Worker`] driven by one
//! [`Workers`] runner.
//!
//! A worker does its work in bounded steps. Between steps the runner decides what
//! comes next: another step at once while the worker says it is busy, a pause of the
//! worker's interval when it is idle or failed, nothing at all on a node that does
//! not lead when the worker is leader-only. Steps are never cut off in the middle:
//! shutdown cancels the runner's waits and then waits (bounded) for running steps to
//! end, so a worker only has to keep each step's effects consistent on its own.
//! After every step the runner records the worker's [`WorkerStatus`], which the admin
//! API shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::RegistryError;
use crate::now_ms;

/// What a step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work is waiting: step again at once.
    Busy,
    /// Nothing left for now: wait for the interval (or a [`Workers::wake`]).
    Idle,
}

/// A background job made of bounded steps.
#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    /// A stable name, unique per node (it keys the status and the log's spans).
    fn name(&self) -> String;

    /// Runs only on the leader (work on the shared state that one node must do).
    fn leader_only(&self) -> bool {
        false
    }

    /// The pause after an idle or failed step.
    fn interval(&self) -> Duration;

    /// Do one bounded piece of work.
    async fn step(&mut self) -> Result<Step, RegistryError>;

    /// Counters of what the worker did (since the node started), for its status.
    fn progress(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

/// What a worker is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// In a step.
    Running,
    /// Waiting for its next step.
    Idle,
    /// Leader-only, on a node that does not lead.
    Standby,
    /// Its last step failed; it tries again after its interval.
    Failed,
    /// Stopped with the node.
    Stopped,
}

/// A worker's status, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub state: WorkerState,
    pub leader_only: bool,
    /// Steps run since the node started.
    pub steps: u64,
    /// When the last step ended (ms since the Unix epoch).
    pub last_step_at: Option<u64>,
    /// How long the last step took, in milliseconds.
    pub last_step_ms: Option<u64>,
    pub last_error: Option<String>,
    /// When the last error happened (ms since the Unix epoch).
    pub last_error_at: Option<u64>,
    pub progress: BTreeMap<String, u64>,
}

/// Runs a node's workers and keeps their status.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Runner>,
}

/// Tells whether this node leads the cluster now.
pub type Leadership = Arc<dyn Fn() -> bool + Send + Sync>;

struct Runner {
    is_leader: Leadership,
    status: Mutex<BTreeMap<String, WorkerStatus>>,
    wakers: Mutex<BTreeMap<String, Arc<Notify>>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// How often a leader-only worker on a follower looks whether this node leads now.
const STANDBY_CHECK: Duration = Duration::from_secs(1);

impl Workers {
    /// A runner whose leader-only workers step while `is_leader` says so.
    pub fn new(is_leader: Leadership) -> Workers {
        Workers {
            inner: Arc::new(Runner {
                is_leader,
                status: Mutex::new(BTreeMap::new()),
                wakers: Mutex::new(BTreeMap::new()),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Run `worker` until the node stops.
    pub fn spawn(&self, worker: impl Worker) {
        let name = worker.name();
        let waker = Arc::new(Notify::new());
        lock(&self.inner.wakers).insert(name.clone(), waker.clone());
        lock(&self.inner.status).insert(
            name.clone(),
            WorkerStatus {
                name: name.clone(),
                state: WorkerState::Idle,
                leader_only: worker.leader_only(),
                steps: 0,
                last_step_at: None,
                last_step_ms: None,
                last_error: None,
                last_error_at: None,
                progress: worker.progress(),
            },
        );
        let runner = self.inner.clone();
        let span = tracing::info_span!("worker", worker = %name);
        self.inner.tasks.spawn(runner.drive(worker, waker).instrument(span));
    }

    /// Start the next step of the worker `name` now instead of after its pause.
    /// False when no such worker runs here.
    pub fn wake(&self, name: &str) -> bool {
        match lock(&self.inner.wakers).get(name) {
            Some(w) => {
                w.notify_one();
                true
            }
            None => false,
        }
    }

    /// Every worker's status, by name.
    pub fn status(&self) -> Vec<WorkerStatus> {
        lock(&self.inner.status).values().cloned().collect()
    }

    /// Stop every worker: no new step starts, and running steps get up to `deadline`
    /// to end. Returns false when some did not end in time (they are abandoned).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        tokio::time::timeout(deadline, self.inner.tasks.wait()).await.is_ok()
    }
}

impl Runner {
    async fn drive(self: Arc<Self>, mut worker: impl Worker, waker: Arc<Notify>) {
        let name = worker.name();
        let interval = worker.interval();
        loop {
            if worker.leader_only() && !(self.is_leader)() {
                self.set_state(&name, WorkerState::Standby);
                if !self.pause(STANDBY_CHECK.min(interval), &waker).await {
                    break;
                }
                continue;
            }
            self.set_state(&name, WorkerState::Running);
            let started = Instant::now();
            let outcome = worker.step().await;
            let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let pause = self.record(&name, &outcome, took, worker.progress());
            if self.stop.is_cancelled() {
                break;
            }
            if pause && !self.pause(interval, &waker).await {
                break;
            }
        }
        self.set_state(&name, WorkerState::Stopped);
    }

    /// Record a step's outcome; true when the worker should pause before the next.
    fn record(
        &self,
        name: &str,
        outcome: &Result<Step, RegistryError>,
        took: u64,
        progress: BTreeMap<String, u64>,
    ) -> bool {
        let now = now_ms();
        let mut all = lock(&self.status);
        let Some(s) = all.get_mut(name) else {
            return true;
        };
        s.steps = s.steps.saturating_add(1);
        s.last_step_at = Some(now);
        s.last_step_ms = Some(took);
        s.progress = progress;
        match outcome {
            Ok(Step::Busy) => {
                s.state = WorkerState::Running;
                false
            }
            Ok(Step::Idle) => {
                s.state = WorkerState::Idle;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "worker step failed");
                s.state = WorkerState::Failed;
                s.last_error = Some(e.to_string());
                s.last_error_at = Some(now);
                true
            }
        }
    }

    fn set_state(&self, name: &str, state: WorkerState) {
        if let Some(s) = lock(&self.status).get_mut(name) {
            // A failure stays visible until the next step ends.
            if !(s.state == WorkerState::Failed && state == WorkerState::Idle) {
                s.state = state;
            }
        }
    }

    /// Wait `d`, or less when woken; false when the node stops meanwhile.
    async fn pause(&self, d: Duration, waker: &Notify) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
            _ = waker.notified() => true,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map update: a panic in one cannot leave the
    // map half-changed, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use super::*;

    /// Busy for `busy` steps, then idle; fails on the steps listed in `fail_at`.
    struct Counter {
        name: &'static str,
        leader_only: bool,
        busy: u64,
        fail_at: Vec<u64>,
        steps: Arc<AtomicU64>,
        interval: Duration,
    }

    impl Counter {
        fn new(name: &'static str, steps: Arc<AtomicU64>) -> Counter {
            Counter {
                name,
                leader_only: false,
                busy: 0,
                fail_at: Vec::new(),
                steps,
                interval: Duration::from_secs(3600),
            }
        }
    }

    #[async_trait::async_trait]
    impl Worker for Counter {
        fn name(&self) -> String {
            self.name.to_string()
        }
        fn leader_only(&self) -> bool {
            self.leader_only
        }
        fn interval(&self) -> Duration {
            self.interval
        }
        async fn step(&mut self) -> Result<Step, RegistryError> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail_at.contains(&n) {
                return Err(RegistryError::Internal(format!("step {n} failed")));
            }
            Ok(if n <= self.busy { Step::Busy } else { Step::Idle })
        }
        fn progress(&self) -> BTreeMap<String, u64> {
            BTreeMap::from([("steps".to_string(), self.steps.load(Ordering::SeqCst))])
        }
    }

    fn always_leader() -> Leadership {
        Arc::new(|| true)
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for: {what}");
    }

    fn status_of(w: &Workers, name: &str) -> WorkerStatus {
        w.status().into_iter().find(|s| s.name == name).expect("worker listed")
    }

    #[tokio::test]
    async fn a_busy_worker_steps_again_at_once_and_an_idle_one_waits_for_its_interval() {
        let workers = Workers::new(always_leader());
        let steps = Arc::new(AtomicU64::new(0));
        let mut w = Counter::new("counter", steps.clone());
        w.busy = 5;
        workers.spawn(w);
        eventually("six steps", || steps.load(Ordering::SeqCst) == 6).await;
        eventually("idle", || status_of(&workers, "counter").state == WorkerState::Idle).await;
        // The interval is an hour: no seventh step comes by itself.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 6);
        let s = status_of(&workers, "counter");
        assert_eq!(s.steps, 6);
        assert_eq!(s.progress.get("steps"), Some(&6));
        assert!(s.last_step_at.is_some());
        assert!(workers.wake("counter"));
        assert!(!workers.wake("nobody"));
        eventually("the woken step", || steps.load(Ordering::SeqCst) == 7).await;
        assert!(workers.shutdown(Duration::from_secs(5)).await);
        assert_eq!(status_of(&workers, "counter").state, WorkerState::Stopped);
    }

    #[tokio::test]
    async fn a_failed_step_is_shown_and_retried_after_the_interval() {
        let workers = Workers::new(always_leader());
        let steps = Arc::new(AtomicU64::new(0));
        let mut w = Counter::new("flaky", steps.clone());
        w.fail_at = vec![1];
        w.interval = Duration::from_millis(50);
        workers.spawn(w);
        eventually("the failure shown", || {
            status_of(&workers, "flaky").state == WorkerState::Failed
        })
        .await;
        let failed = status_of(&workers, "flaky");
        assert_eq!(failed.last_error.as_deref(), Some("internal error: step 1 failed"));
        assert!(failed.last_error_at.is_some());
        eventually("a later step succeeded", || {
            status_of(&workers, "flaky").state == WorkerState::Idle
        })
        .await;
        // The last error stays on record after the recovery.
        assert!(status_of(&workers, "flaky").last_error.is_some());
        assert!(workers.shutdown(Duration::from_secs(5)).await);
    }

    #[tokio::test]
    async fn a_leader_only_worker_waits_on_a_follower_and_starts_once_it_leads() {
        let leading = Arc::new(AtomicBool::new(false));
        let workers = Workers::new({
            let leading = leading.clone();
            Arc::new(move || leading.load(Ordering::SeqCst))
        });
        let steps = Arc::new(AtomicU64::new(0));
        let mut w = Counter::new("gc", steps.clone());
        w.leader_only = true;
        w.interval = Duration::from_millis(20);
        workers.spawn(w);
        eventually("standby", || status_of(&workers, "gc").state == WorkerState::Standby).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 0, "a follower runs no leader-only step");
        leading.store(true, Ordering::SeqCst);
        eventually("a step on the leader", || steps.load(Ordering::SeqCst) > 0).await;
        assert!(status_of(&workers, "gc").leader_only);
        assert!(workers.shutdown(Duration::from_secs(5)).await);
    }

    /// A step that takes `hold` and records whether it ran to its end.
    struct Slow {
        hold: Duration,
        finished: Arc<AtomicBool>,
        started: Arc<AtomicBool>,
    }

    #[async_trait::async_trait]
    impl Worker for Slow {
        fn name(&self) -> String {
            "slow".into()
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(3600)
        }
        async fn step(&mut self) -> Result<Step, RegistryError> {
            self.started.store(true, Ordering::SeqCst);
            tokio::time::sleep(self.hold).await;
            self.finished.store(true, Ordering::SeqCst);
            Ok(Step::Idle)
        }
    }

    #[tokio::test]
    async fn shutdown_lets_a_running_step_finish_within_the_deadline() {
        let workers = Workers::new(always_leader());
        let finished = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicBool::new(false));
        workers.spawn(Slow {
            hold: Duration::from_millis(200),
            finished: finished.clone(),
            started: started.clone(),
        });
        eventually("the step started", || started.load(Ordering::SeqCst)).await;
        assert!(workers.shutdown(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst), "the step was not cut off");
    }

    #[tokio::test]
    async fn shutdown_gives_up_on_a_step_that_outlasts_the_deadline() {
        let workers = Workers::new(always_leader());
        let started = Arc::new(AtomicBool::new(false));
        workers.spawn(Slow {
            hold: Duration::from_secs(3600),
            finished: Arc::new(AtomicBool::new(false)),
            started: started.clone(),
        });
        eventually("the step started", || started.load(Ordering::SeqCst)).await;
        assert!(!workers.shutdown(Duration::from_millis(50)).await);
    }
}
