//! A FIFO queue through the mapping loop and the real handler: after a failure, the rest of
//! the group is reported with the group's backoff, and the group resumes after that backoff
//! (seconds), not after the queue's visibility timeout (here 120 s); order holds per group.
//! The StartExecution client is in memory (it records the order of starts); the queue is
//! `local_stack::sim::SimQueue` with SQS FIFO's group blocking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use local_stack::sim::{drive, Mapping, SimQueue, DEFAULT_BATCHING_WINDOW};
use sfn_pacer::start::{StartError, StartExecution, StartRequest, Started};
use sfn_pacer::{Config, Starter};

/// Starts executions in memory; the first attempt of `fail_once` answers 500.
#[derive(Default)]
struct Recorder {
    fail_once: String,
    failed: Mutex<bool>,
    started: Mutex<Vec<String>>,
}

#[async_trait]
impl StartExecution for Recorder {
    async fn start_execution(&self, request: &StartRequest) -> Result<Started, StartError> {
        let name = request.name.clone().unwrap_or_default();
        let mut failed = self.failed.lock().unwrap();
        if name == self.fail_once && !*failed {
            *failed = true;
            return Err(StartError::Service {
                code: String::new(),
                message: "injected".into(),
                status: Some(500),
            });
        }
        self.started.lock().unwrap().push(name.clone());
        Ok(Started {
            execution_arn: format!("arn:aws:states:us-east-1:123456789012:execution:m:{name}"),
        })
    }
}

#[tokio::test]
async fn a_fifo_group_resumes_after_its_backoff_not_the_queues_timeout() {
    let queue = SimQueue::new("work.fifo", 10, Duration::from_secs(120));
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..6 {
        for group in ["a", "b"] {
            let id = queue.send_to_group(group, format!("{{\"{group}\":{i}}}"));
            groups.entry(group.to_string()).or_default().push(id);
        }
    }
    let recorder = Arc::new(Recorder {
        fail_once: groups["a"][1].clone(),
        ..Recorder::default()
    });
    let config = Config::from_lookup(|k| {
        match k {
            "STATE_MACHINE_ARN" => Some("arn:aws:states:us-east-1:123456789012:stateMachine:m"),
            "MAX_ATTEMPTS" => Some("1"),
            "RETRY_BASE_SECONDS" => Some("1"),
            "RETRY_MAX_SECONDS" => Some("2"),
            _ => None,
        }
        .map(String::from)
    })
    .unwrap();
    let starter = Arc::new(Starter::new(config, recorder.clone(), queue.clone()));
    let mapping = Mapping {
        batch_size: 10,
        batching_window: DEFAULT_BATCHING_WINDOW,
        function_timeout: Duration::from_secs(10),
        short_deadline: None,
        max_run: Duration::from_secs(60),
        idle_poll: Duration::from_millis(20),
    };
    let t0 = Instant::now();
    let run = drive(queue.clone(), vec![starter], mapping).await;
    let elapsed = t0.elapsed();
    assert!(run.drained, "{run:?}");
    // The failed message's backoff is at most 2 s (its first receive: under the 1 s base).
    assert!(elapsed < Duration::from_secs(20), "the group waited {elapsed:?}");
    assert!(run.function.deferred > 0, "the rest of group a was deferred: {run:?}");
    let started = recorder.started.lock().unwrap().clone();
    assert_eq!(started.len(), 12, "every message once: {started:?}");
    for ids in groups.values() {
        let order: Vec<usize> = ids
            .iter()
            .map(|id| started.iter().position(|s| s == id).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "group order: {order:?}");
    }
}
